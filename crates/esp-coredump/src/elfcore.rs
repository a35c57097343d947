//! ELF core decoding: program headers, LOAD segments and the ESP notes
//! (CORE/NT_PRSTATUS per task, ESP_CORE_DUMP_INFO, (ESP_)EXTRA_INFO,
//! ESP_PANIC_DETAILS, ESP_CHIP_REV and the converter's TASK_INFO).

use crate::bytes::{align4, c_string, slice_at, u16_at, u32_at, words};
use crate::chip::{Arch, Chip};
use crate::dump::{
    CoreDump, MemorySegment, Registers, RiscvRegisters, Task, XtensaExceptionRegs, XtensaRegisters,
};
use crate::error::DumpError;
use crate::header::{ChecksumKind, DataFormat, DumpHeader, DumpVersion};
use crate::input::InputFormat;

/// ELF machine number of Xtensa.
pub const EM_XTENSA: u16 = 0x5E;
/// ELF machine number of RISC-V.
pub const EM_RISCV: u16 = 0xF3;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
const NT_ESP_INFO: u32 = 8266;
const NT_EXTRA_INFO: u32 = 677;
const NT_TASK_INFO: u32 = 678;
const NT_PANIC_DETAILS: u32 = 679;

/// Offset of the register block inside a prstatus descriptor.
const PR_REG_OFFSET: usize = 72;
/// Offset of pr_pid (the TCB address) inside a prstatus descriptor.
const PR_PID_OFFSET: usize = 24;

/// Xtensa EXTRA_INFO register ids for EPC1..7 and EPS2..7.
const EPC1_ID: u32 = 177;
const EPC7_ID: u32 = 183;
const EPS2_ID: u32 = 194;
const EPS7_ID: u32 = 199;

/// One ELF note.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub name: String,
    pub ntype: u32,
    pub desc: Vec<u8>,
}

/// The raw contents of an ELF core file.
#[derive(Debug, Clone)]
pub(crate) struct ElfCore {
    pub machine: u16,
    pub loads: Vec<MemorySegment>,
    pub notes: Vec<Note>,
}

/// Parse the ELF container: header, program headers, LOAD data and notes.
pub(crate) fn parse_elf_core(buf: &[u8]) -> Result<ElfCore, DumpError> {
    if !buf.starts_with(b"\x7fELF") {
        return Err(DumpError::malformed("dump data is not an ELF file"));
    }
    if buf.len() < 52 {
        return Err(DumpError::truncated("ELF header shorter than 52 bytes"));
    }
    if buf[4] != 1 || buf[5] != 1 {
        return Err(DumpError::malformed("ELF core is not 32-bit little-endian"));
    }
    let e_type = u16_at(buf, 16).unwrap_or(0);
    if e_type != 4 {
        return Err(DumpError::malformed(format!(
            "ELF type {e_type} is not ET_CORE (4)"
        )));
    }
    let machine = u16_at(buf, 18).unwrap_or(0);
    let phoff = u32_at(buf, 28).unwrap_or(0) as usize;
    let phentsize = u16_at(buf, 42).unwrap_or(0) as usize;
    let phnum = u16_at(buf, 44).unwrap_or(0) as usize;
    if phentsize < 32 {
        return Err(DumpError::malformed("ELF program header entries too small"));
    }
    let mut loads = Vec::new();
    let mut notes = Vec::new();
    // What the segments copied out of the file add up to. A core file's segments do not overlap,
    // so this stays within the file's length; headers that point many segments at the same
    // bytes would otherwise make a small upload allocate without bound.
    let mut copied = 0usize;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.saturating_mul(phentsize))
            .and_then(|o| slice_at(buf, o, 32))
            .ok_or_else(|| DumpError::truncated(format!("program header {i} out of file")))?;
        let p_type = u32_at(ph, 0).unwrap_or(0);
        let offset = u32_at(ph, 4).unwrap_or(0) as usize;
        let vaddr = u32_at(ph, 8).unwrap_or(0);
        let filesz = u32_at(ph, 16).unwrap_or(0) as usize;
        let data = slice_at(buf, offset, filesz).ok_or_else(|| {
            DumpError::truncated(format!(
                "segment {i} ({filesz} bytes at file offset {offset}) beyond end of ELF"
            ))
        })?;
        if matches!(p_type, PT_LOAD | PT_NOTE) {
            copied = copied.saturating_add(data.len());
            if copied > buf.len() {
                return Err(DumpError::malformed(format!(
                    "segment {i} overlaps others: the segments add up to more than the ELF's {} bytes",
                    buf.len()
                )));
            }
        }
        match p_type {
            PT_LOAD if !data.is_empty() => loads.push(MemorySegment {
                addr: vaddr,
                data: data.to_vec(),
            }),
            PT_NOTE => parse_notes(data, &mut notes)?,
            _ => {}
        }
    }
    Ok(ElfCore {
        machine,
        loads,
        notes,
    })
}

fn parse_notes(mut data: &[u8], out: &mut Vec<Note>) -> Result<(), DumpError> {
    while data.len() >= 12 {
        let namesz = u32_at(data, 0).unwrap_or(0) as usize;
        let descsz = u32_at(data, 4).unwrap_or(0) as usize;
        let ntype = u32_at(data, 8).unwrap_or(0);
        let name_off = 12usize;
        let desc_off = name_off.saturating_add(align4(namesz));
        let next = desc_off.saturating_add(align4(descsz));
        let name = slice_at(data, name_off, namesz)
            .ok_or_else(|| DumpError::truncated("note name beyond segment"))?;
        let desc = slice_at(data, desc_off, descsz)
            .ok_or_else(|| DumpError::truncated("note descriptor beyond segment"))?;
        out.push(Note {
            name: c_string(name),
            ntype,
            desc: desc.to_vec(),
        });
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(())
}

fn regs_from_prstatus(arch: Arch, desc: &[u8]) -> Registers {
    let w = |i: usize| u32_at(desc, PR_REG_OFFSET + 4 * i).unwrap_or(0);
    match arch {
        Arch::Xtensa => {
            let mut a = [0u32; 16];
            for (i, slot) in a.iter_mut().enumerate() {
                *slot = w(64 + i);
            }
            Registers::Xtensa(XtensaRegisters {
                pc: w(0),
                ps: w(1),
                lbeg: w(2),
                lend: w(3),
                lcount: w(4),
                sar: w(5),
                windowstart: w(6),
                windowbase: w(7),
                a,
            })
        }
        Arch::RiscV => {
            let mut x = [0u32; 32];
            for (i, slot) in x.iter_mut().enumerate().skip(1) {
                *slot = w(i);
            }
            Registers::RiscV(RiscvRegisters { pc: w(0), x })
        }
    }
}

/// Decode Xtensa EXTRA_INFO words the way esp-coredump does: word 2 is
/// EXCCAUSE, word 4 EXCVADDR, then (id, value) pairs from word 5.
pub(crate) fn xtensa_extra(w: &[u32]) -> XtensaExceptionRegs {
    let mut ex = XtensaExceptionRegs {
        exccause: w.get(2).copied().unwrap_or(0),
        excvaddr: w.get(4).copied().unwrap_or(0),
        ..Default::default()
    };
    let mut i = 5;
    while i + 1 < w.len() {
        let id = w[i];
        if (EPC1_ID..=EPC7_ID).contains(&id) {
            ex.epc.push(((id - EPC1_ID + 1) as u8, w[i + 1]));
        } else if (EPS2_ID..=EPS7_ID).contains(&id) {
            ex.eps.push(((id - EPS2_ID + 2) as u8, w[i + 1]));
        }
        i += 2;
    }
    ex
}

/// Build a [`CoreDump`] from an ELF core (embedded in a dump or given directly).
pub(crate) fn core_from_elf(
    elf: &[u8],
    header: Option<DumpHeader>,
    input_format: InputFormat,
) -> Result<CoreDump, DumpError> {
    let core = parse_elf_core(elf)?;
    let arch = match core.machine {
        EM_XTENSA => Arch::Xtensa,
        EM_RISCV => Arch::RiscV,
        m => {
            return Err(DumpError::malformed(format!(
                "unsupported ELF machine 0x{m:x} (expected Xtensa or RISC-V)"
            )))
        }
    };
    let mut version = header.as_ref().map(|h| h.version);
    let mut chip_rev = header.as_ref().and_then(|h| h.chip_rev);
    let mut app_sha = None;
    let mut panic_details = None;
    let mut extra: Option<Vec<u32>> = None;
    let mut task_info: Vec<(u32, u32, u32)> = Vec::new();
    let mut prstatus: Vec<&Note> = Vec::new();
    let mut binary_origin = false;

    for note in &core.notes {
        match (note.name.as_str(), note.ntype) {
            ("CORE", NT_PRSTATUS) => prstatus.push(note),
            ("ESP_CORE_DUMP_INFO", NT_ESP_INFO) => {
                if let Some(v) = u32_at(&note.desc, 0) {
                    if version.is_none() {
                        version = Some(DumpVersion { raw: v });
                    }
                }
                let sha = c_string(note.desc.get(4..).unwrap_or(&[]));
                let sha = sha.trim().to_string();
                if !sha.is_empty() {
                    app_sha = Some(sha);
                }
            }
            ("ESP_CHIP_REV", NT_ESP_INFO) if chip_rev.is_none() => {
                chip_rev = u32_at(&note.desc, 0);
            }
            ("ESP_EXTRA_INFO" | "EXTRA_INFO", NT_EXTRA_INFO) => {
                extra = Some(words(&note.desc));
            }
            ("ESP_PANIC_DETAILS", NT_PANIC_DETAILS) => {
                let text = c_string(&note.desc);
                panic_details = Some(text.trim_end().to_string());
            }
            ("TASK_INFO", NT_TASK_INFO) => {
                binary_origin = true;
                if let (Some(tcb), Some(start), Some(len)) = (
                    u32_at(&note.desc, 8),
                    u32_at(&note.desc, 12),
                    u32_at(&note.desc, 16),
                ) {
                    task_info.push((tcb, start, start.saturating_add(len)));
                }
            }
            _ => {}
        }
    }

    let min_desc = match arch {
        Arch::Xtensa => PR_REG_OFFSET + 129 * 4 - 4,
        Arch::RiscV => PR_REG_OFFSET + 32 * 4,
    };
    let mut tasks = Vec::new();
    for note in &prstatus {
        if note.desc.len() < min_desc {
            return Err(DumpError::malformed(format!(
                "CORE note of {} bytes is too short for {:?} registers",
                note.desc.len(),
                arch
            )));
        }
        let tcb = u32_at(&note.desc, PR_PID_OFFSET).unwrap_or(0);
        let registers = regs_from_prstatus(arch, &note.desc);
        let sp = registers.sp();
        let (stack_start, stack_end) =
            if let Some(&(_, s, e)) = task_info.iter().find(|(t, _, _)| *t == tcb) {
                (s, e)
            } else if let Some(seg) = core
                .loads
                .iter()
                .find(|s| s.contains(sp) && !s.contains(tcb))
                .or_else(|| {
                    // sp not dumped (task never ran, or corrupt): the firmware
                    // writes the stack segment right after the TCB segment.
                    let i = core.loads.iter().position(|s| s.addr == tcb)?;
                    core.loads.get(i + 1)
                })
            {
                (seg.addr, seg.end().min(u32::MAX as u64) as u32)
            } else {
                (sp, sp)
            };
        tasks.push(Task {
            tcb_addr: tcb,
            name: None,
            stack_start,
            stack_end,
            registers,
        });
    }

    let chip = match version {
        Some(v) => v.chip(),
        None => Chip::Unknown(0xFFFF),
    };
    if let Some(a) = chip.arch() {
        if a != arch {
            return Err(DumpError::malformed(format!(
                "chip {} does not match ELF machine 0x{:x}",
                chip.name(),
                core.machine
            )));
        }
    }

    let first_tcb = tasks.first().map(|t| t.tcb_addr);
    let (crashed_tcb, isr_context, xtensa_exception) = match &extra {
        Some(w) => {
            let tcb = match w.first().copied() {
                Some(0xDEAD_BEEF) => None,
                Some(t) => Some(t),
                None => first_tcb,
            };
            match arch {
                Arch::Xtensa => {
                    let isr = w.get(37).map(|&v| v != 0);
                    (tcb, isr, Some(xtensa_extra(w)))
                }
                Arch::RiscV => (tcb, w.get(1).map(|&v| v != 0), None),
            }
        }
        None => (first_tcb, None, None),
    };

    let data_format = match version.and_then(|v| v.kind()) {
        Some(k) => k.data_format(),
        None if binary_origin => DataFormat::Binary,
        None => DataFormat::Elf,
    };
    let checksum: Option<ChecksumKind> = header.as_ref().map(|h| h.kind.checksum());
    let dump = CoreDump {
        input_format,
        data_format,
        header,
        version,
        checksum,
        chip,
        arch,
        chip_rev,
        tasks,
        crashed_tcb,
        isr_context,
        app_elf_sha256_prefix: app_sha,
        panic_details,
        xtensa_exception,
        segments: core.loads,
    };
    dump.bounded()
}
