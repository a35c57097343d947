//! Legacy binary dump format (versions 0x0001..0x0003): task records
//! (task header, TCB, stack) then memory segments; registers are recovered
//! from the saved frame at the start of each stack.

use crate::bytes::{align4, slice_at, u32_at, words};
use crate::chip::Arch;
use crate::dump::{
    CoreDump, MemorySegment, Registers, RiscvRegisters, Task, XtensaExceptionRegs, XtensaRegisters,
};
use crate::error::DumpError;
use crate::header::{DataFormat, DumpHeader};
use crate::input::InputFormat;
use crate::xtensa::exccause_name;

/// Number of words of an Xtensa XtExcFrame that esp-coredump reads.
const XT_STK_FRMSZ: usize = 25;

/// Registers (and, for an exception frame, EXCCAUSE/EXCVADDR) recovered from
/// the frame at the bottom of a dumped stack, as esp-coredump does.
pub(crate) fn regs_from_stack(
    arch: Arch,
    stack: &[u8],
) -> Result<(Registers, Option<XtensaExceptionRegs>), DumpError> {
    match arch {
        Arch::Xtensa => {
            if stack.len() < XT_STK_FRMSZ * 4 {
                return Err(DumpError::malformed(format!(
                    "stack of {} bytes too small for an exception frame",
                    stack.len()
                )));
            }
            let w = words(&stack[..XT_STK_FRMSZ * 4]);
            let mut r = XtensaRegisters::default();
            if w[0] != 0 {
                // XtExcFrame: exit, pc, ps, a0..a15, sar, exccause, excvaddr, lbeg, lend, lcount
                r.pc = w[1];
                r.ps = w[2];
                r.a.copy_from_slice(&w[3..19]);
                r.sar = w[19];
                r.lbeg = w[22];
                r.lend = w[23];
                r.lcount = w[24];
                if r.ps & (1 << 5) != 0 {
                    r.ps &= !(1 << 4);
                }
                let exccause = if exccause_name(w[20]).is_some() {
                    w[20]
                } else {
                    0xFFFF
                };
                let ex = XtensaExceptionRegs {
                    exccause,
                    excvaddr: w[21],
                    epc: (1..=7).map(|n| (n, 0)).collect(),
                    eps: (2..=7).map(|n| (n, 0)).collect(),
                };
                Ok((Registers::Xtensa(r), Some(ex)))
            } else {
                // XtSolFrame: exit, pc, ps, next, a0..a3
                r.pc = w[1];
                r.ps = w[2];
                r.a[..4].copy_from_slice(&w[4..8]);
                Ok((Registers::Xtensa(r), None))
            }
        }
        Arch::RiscV => {
            if stack.len() < 32 * 4 {
                return Err(DumpError::malformed(format!(
                    "stack of {} bytes too small for a RISC-V frame",
                    stack.len()
                )));
            }
            let w = words(&stack[..128]);
            let mut x = [0u32; 32];
            x[1..].copy_from_slice(&w[1..32]);
            Ok((Registers::RiscV(RiscvRegisters { pc: w[0], x }), None))
        }
    }
}

/// Decode the data part of a binary-format dump.
pub(crate) fn core_from_binary(
    data: &[u8],
    header: DumpHeader,
    input_format: InputFormat,
) -> Result<CoreDump, DumpError> {
    let chip = header.version.chip();
    let arch = chip.arch().ok_or_else(|| {
        DumpError::malformed(format!(
            "unknown chip id {} in binary dump",
            header.version.chip_id()
        ))
    })?;
    let tcb_sz = header.tcb_size as usize;
    // Refused before reading any: see `CoreDump::bounded`.
    if header.task_num as usize > crate::dump::MAX_TASKS {
        return Err(DumpError::malformed(format!(
            "the dump holds {} tasks; at most {} are read",
            header.task_num,
            crate::dump::MAX_TASKS
        )));
    }
    let max_tasks = data.len() / 12;
    if header.task_num as usize > max_tasks {
        return Err(DumpError::malformed(format!(
            "task count {} impossible for {} data bytes",
            header.task_num,
            data.len()
        )));
    }
    let mut off = 0usize;
    let mut tasks = Vec::new();
    let mut segments = Vec::new();
    let mut xtensa_exception = None;
    for i in 0..header.task_num as usize {
        let th = slice_at(data, off, 12)
            .ok_or_else(|| DumpError::truncated(format!("task {i} header beyond data")))?;
        let tcb_addr = u32_at(th, 0).unwrap_or(0);
        let stack_top = u32_at(th, 4).unwrap_or(0);
        let stack_end = u32_at(th, 8).unwrap_or(0);
        off += 12;
        let tcb = slice_at(data, off, tcb_sz)
            .ok_or_else(|| DumpError::truncated(format!("task {i} TCB beyond data")))?;
        off = off.saturating_add(align4(tcb_sz));
        let stack_len = stack_top.abs_diff(stack_end) as usize;
        let stack = slice_at(data, off, stack_len)
            .ok_or_else(|| DumpError::truncated(format!("task {i} stack beyond data")))?;
        off = off.saturating_add(align4(stack_len));
        let start = stack_top.min(stack_end);
        let end = stack_top.max(stack_end);
        if stack_end <= stack_top && stack_len > 0 {
            return Err(DumpError::malformed(format!(
                "task {i}: growing-up stacks are not supported"
            )));
        }
        let (registers, ex) = regs_from_stack(arch, stack)?;
        if i == 0 {
            xtensa_exception = ex;
        }
        segments.push(MemorySegment {
            addr: tcb_addr,
            data: tcb.to_vec(),
        });
        segments.push(MemorySegment {
            addr: start,
            data: stack.to_vec(),
        });
        tasks.push(Task {
            tcb_addr,
            name: None,
            stack_start: start,
            stack_end: end,
            registers,
        });
    }
    for i in 0..header.mem_seg_num as usize {
        let start = u32_at(data, off)
            .ok_or_else(|| DumpError::truncated(format!("memory segment {i} header")))?;
        let size = u32_at(data, off + 4)
            .ok_or_else(|| DumpError::truncated(format!("memory segment {i} header")))?
            as usize;
        off += 8;
        let bytes = slice_at(data, off, size)
            .ok_or_else(|| DumpError::truncated(format!("memory segment {i} data")))?;
        off = off.saturating_add(size);
        segments.push(MemorySegment {
            addr: start,
            data: bytes.to_vec(),
        });
    }
    let crashed_tcb = tasks.first().map(|t| t.tcb_addr);
    let chip_rev = header.chip_rev;
    let version = Some(header.version);
    let checksum = Some(header.kind.checksum());
    let dump = CoreDump {
        input_format,
        data_format: DataFormat::Binary,
        header: Some(header),
        version,
        checksum,
        chip,
        arch,
        chip_rev,
        tasks,
        crashed_tcb,
        isr_context: None,
        app_elf_sha256_prefix: None,
        panic_details: None,
        xtensa_exception: if arch == Arch::Xtensa {
            xtensa_exception
        } else {
            None
        },
        segments,
    };
    dump.bounded()
}
