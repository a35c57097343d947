//! Xtensa specifics: EXCCAUSE names and the windowed-ABI backtrace walk
//! (caller pc from a0 with the window bits replaced, caller a0/a1 from the
//! base save area at sp-16/sp-12 of the callee).

use crate::dump::{CoreDump, XtensaRegisters};
use crate::unwind::{FrameOrigin, RawFrame, MAX_FRAMES};

/// Name and description of an Xtensa EXCCAUSE value (ISA table plus ESP
/// pseudo-causes), as esp-coredump's table has them.
pub fn exccause_name(cause: u32) -> Option<(&'static str, &'static str)> {
    Some(match cause {
        0 => ("IllegalInstructionCause", "Illegal instruction"),
        1 => ("SyscallCause", "SYSCALL instruction"),
        2 => ("InstructionFetchErrorCause", "Processor internal physical address or data error during instruction fetch"),
        3 => ("LoadStoreErrorCause", "Processor internal physical address or data error during load or store"),
        4 => ("Level1InterruptCause", "Level-1 interrupt as indicated by set level-1 bits in the INTERRUPT register"),
        5 => ("AllocaCause", "MOVSP instruction, if caller's registers are not in the register file"),
        6 => ("IntegerDivideByZeroCause", "QUOS, QUOU, REMS or REMU divisor operand is zero"),
        8 => ("PrivilegedCause", "Attempt to execute a privileged operation when CRING != 0"),
        9 => ("LoadStoreAlignmentCause", "Load or store to an unaligned address"),
        12 => ("InstrPIFDataErrorCause", "PIF data error during instruction fetch"),
        13 => ("LoadStorePIFDataErrorCause", "Synchronous PIF data error during LoadStore access"),
        14 => ("InstrPIFAddrErrorCause", "PIF address error during instruction fetch"),
        15 => ("LoadStorePIFAddrErrorCause", "Synchronous PIF address error during LoadStore access"),
        16 => ("InstTLBMissCause", "Error during Instruction TLB refill"),
        17 => ("InstTLBMultiHitCause", "Multiple instruction TLB entries matched"),
        18 => ("InstFetchPrivilegeCause", "An instruction fetch referenced a virtual address at a ring level less than CRING"),
        20 => ("InstFetchProhibitedCause", "An instruction fetch referenced a page mapped with an attribute that does not permit instruction fetch"),
        24 => ("LoadStoreTLBMissCause", "Error during TLB refill for a load or store"),
        25 => ("LoadStoreTLBMultiHitCause", "Multiple TLB entries matched for a load or store"),
        26 => ("LoadStorePrivilegeCause", "A load or store referenced a virtual address at a ring level less than CRING"),
        28 => ("LoadProhibitedCause", "A load referenced a page mapped with an attribute that does not permit loads"),
        29 => ("StoreProhibitedCause", "A store referenced a page mapped with an attribute that does not permit stores"),
        32 => ("Coprocessor0Disabled", "Coprocessor 0 instruction when cp0 disabled"),
        33 => ("Coprocessor1Disabled", "Coprocessor 1 instruction when cp1 disabled"),
        34 => ("Coprocessor2Disabled", "Coprocessor 2 instruction when cp2 disabled"),
        35 => ("Coprocessor3Disabled", "Coprocessor 3 instruction when cp3 disabled"),
        36 => ("Coprocessor4Disabled", "Coprocessor 4 instruction when cp4 disabled"),
        37 => ("Coprocessor5Disabled", "Coprocessor 5 instruction when cp5 disabled"),
        38 => ("Coprocessor6Disabled", "Coprocessor 6 instruction when cp6 disabled"),
        39 => ("Coprocessor7Disabled", "Coprocessor 7 instruction when cp7 disabled"),
        0xFFFF => ("InvalidCauseRegister", "Invalid EXCCAUSE register value or current task is broken and was skipped"),
        64 => ("UnknownException", "Unknown exception"),
        65 => ("DebugException", "Unhandled debug exception"),
        66 => ("DoubleException", "Double exception"),
        67 => ("KernelException", "Unhandled kernel exception"),
        68 => ("CoprocessorException", "Coprocessor exception"),
        69 => ("InterruptWDTTimoutCPU0", "Interrupt wdt timeout on CPU0"),
        70 => ("InterruptWDTTimoutCPU1", "Interrupt wdt timeout on CPU1"),
        71 => ("CacheError", "Cache disabled but cached memory region accessed"),
        _ => return None,
    })
}

/// Convert a windowed return address to a pc. Its top two bits hold the call's window size;
/// every ESP Xtensa chip runs code from 0x4000_0000..0x8000_0000, so they become `01` (as
/// ESP-IDF's own backtrace does). gdb takes them from the current pc instead, which after a call
/// through a bad pointer (pc 0 or a data address) puts every caller outside code.
pub fn ra_to_pc(ra: u32) -> u32 {
    (ra & 0x3FFF_FFFF) | 0x4000_0000
}

/// Walk the windowed-ABI call chain using the spilled base save areas.
pub fn unwind(dump: &CoreDump, regs: &XtensaRegisters) -> Vec<RawFrame> {
    let mut frames = vec![RawFrame {
        pc: regs.pc,
        sp: regs.a[1],
        origin: FrameOrigin::Registers,
    }];
    let mut sp = regs.a[1];
    let mut ra = regs.a[0];
    while frames.len() < MAX_FRAMES {
        if ra & 0x3FFF_FFFF == 0 || ra & 0xC000_0000 == 0 {
            // 0: end of chain; top bits 00: not a windowed call.
            break;
        }
        let caller_pc = ra_to_pc(ra);
        let (Some(next_ra), Some(next_sp)) = (
            dump.read_u32(sp.wrapping_sub(16)),
            dump.read_u32(sp.wrapping_sub(12)),
        ) else {
            // Save area not dumped: report the caller, stop after it.
            frames.push(RawFrame {
                pc: caller_pc,
                sp,
                origin: FrameOrigin::ReturnAddress,
            });
            break;
        };
        frames.push(RawFrame {
            pc: caller_pc,
            sp: next_sp,
            origin: FrameOrigin::WindowSaveArea,
        });
        if next_sp <= sp || dump.segment_at(next_sp).is_none() && next_ra != 0 {
            break;
        }
        sp = next_sp;
        ra = next_ra;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chip::{Arch, Chip};
    use crate::dump::MemorySegment;
    use crate::header::DataFormat;
    use crate::input::InputFormat;

    fn dump_of(segments: Vec<MemorySegment>) -> CoreDump {
        CoreDump {
            input_format: InputFormat::ElfCore,
            data_format: DataFormat::Elf,
            header: None,
            version: None,
            checksum: None,
            chip: Chip::Esp32,
            arch: Arch::Xtensa,
            chip_rev: None,
            tasks: Vec::new(),
            crashed_tcb: None,
            isr_context: None,
            app_elf_sha256_prefix: None,
            panic_details: None,
            xtensa_exception: None,
            segments,
        }
    }

    #[test]
    fn the_callers_of_a_call_through_a_bad_pointer_are_in_code() {
        // A call through a NULL function pointer: pc 0, the caller's return address in a0
        // (window size 2 in its top bits), the caller's save area on the stack.
        let sp: u32 = 0x3ffb_0100;
        let mut stack = vec![0u8; 0x200];
        // Base save area below sp: the caller's a0 (its own return address) and a1.
        let area = (sp - 16 - 0x3ffb_0000) as usize;
        stack[area..area + 4].copy_from_slice(&0x800d_5678u32.to_le_bytes());
        stack[area + 4..area + 8].copy_from_slice(&(sp + 0x40).to_le_bytes());
        let dump = dump_of(vec![MemorySegment {
            addr: 0x3ffb_0000,
            data: stack,
        }]);
        let mut regs = XtensaRegisters {
            pc: 0,
            ..Default::default()
        };
        regs.a[0] = 0x800d_1234;
        regs.a[1] = sp;
        let pcs: Vec<u32> = unwind(&dump, &regs).iter().map(|f| f.pc).collect();
        assert_eq!(pcs[..3], [0, 0x400d_1234, 0x400d_5678], "{pcs:x?}");
    }
}
