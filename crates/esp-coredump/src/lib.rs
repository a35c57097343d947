//! GDB-free ESP-IDF core dump parser.
//!
//! [`parse_dump`] decodes a dump given as raw flash bytes, base64 UART text or
//! an ELF core file (auto-detected), verifies its checksum and extracts the
//! tasks, registers, crashed task and ESP notes. [`analyse`] then unwinds every
//! task's stack (Xtensa windowed ABI or RISC-V DWARF CFI), symbolises the
//! frames with the firmware ELF's DWARF and produces a [`CrashReport`],
//! which serialises with serde and renders as text with
//! [`CrashReport::to_text`]. [`crash_signature`] reduces a report to a stable
//! key for grouping crashes (the reason plus the first application functions
//! of the crashed task). No I/O, no unsafe code, no panics on input data.

#![forbid(unsafe_code)]

mod binary;
mod bytes;
mod cfi;
pub mod chip;
pub mod dump;
mod elfcore;
pub mod error;
pub mod header;
pub mod input;
pub mod report;
pub mod riscv;
pub mod signature;
pub mod symbols;
pub mod tcb;
pub mod unwind;
pub mod xtensa;

pub use chip::{Arch, Chip};
pub use dump::{
    CoreDump, MemorySegment, Registers, RiscvRegisters, Task, XtensaExceptionRegs, XtensaRegisters,
};
pub use error::DumpError;
pub use header::{ChecksumKind, DataFormat, DumpHeader, DumpKind, DumpVersion};
pub use input::InputFormat;
pub use report::{BuildCheck, CrashReport, ExceptionInfo, Frame, RegisterValue, TaskReport};
pub use signature::{
    crash_signature, CrashSignature, OTHER_BUILD, SIGNATURE_FRAMES, SIGNATURE_VERSION,
};
pub use symbols::{Firmware, SymbolInfo};

/// Decode a core dump, auto-detecting raw bytes, base64 text or an ELF core.
///
/// Verifies the CRC32 or SHA-256 checksum of raw and base64 dumps. Bytes after
/// the header's `tot_len` are ignored.
pub fn parse_dump(dump: &[u8]) -> Result<CoreDump, DumpError> {
    let (format, bytes) = input::decode_input(dump)?;
    match format {
        InputFormat::ElfCore => elfcore::core_from_elf(&bytes, None, format),
        InputFormat::Raw | InputFormat::Base64 => {
            let (header, data) = header::parse_raw(&bytes)?;
            match header.kind.data_format() {
                DataFormat::Elf => elfcore::core_from_elf(data, Some(header), format),
                DataFormat::Binary => binary::core_from_binary(data, header, format),
            }
        }
    }
}

/// Unwind and symbolise every task of `dump` with the firmware ELF bytes and
/// build the crash report. A firmware ELF whose SHA-256 differs from the one
/// recorded in the dump still yields a report, with
/// [`BuildCheck::Mismatch`] and a warning.
pub fn analyse(dump: &CoreDump, elf: &[u8]) -> Result<CrashReport, DumpError> {
    let fw = Firmware::new(elf)?;
    analyse_with(dump, &fw)
}

/// Like [`analyse`], with an already loaded [`Firmware`] (reuse it for many dumps).
pub fn analyse_with(dump: &CoreDump, firmware: &Firmware) -> Result<CrashReport, DumpError> {
    report::build(dump, firmware)
}

// A loaded firmware is shared by the threads that analyse dumps of its build.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Firmware>();
};
