//! RISC-V specifics: mcause names, recovery of mcause/mtval from the
//! RvExcFrame left on the crashed task's stack, and DWARF-CFI unwinding
//! (`.debug_frame`, then `.eh_frame`) with a stack-scan fallback to step over
//! mask-ROM functions the firmware ELF has no unwind information for.

use gimli::{CfaRule, Register, RegisterRule, UnwindContext};
use serde::{Deserialize, Serialize};

use crate::bytes::u32_at;
use crate::dump::{CoreDump, RiscvRegisters, Task};
use crate::symbols::Firmware;
use crate::unwind::{FrameOrigin, RawFrame, MAX_FRAMES};

/// Name of a RISC-V mcause value (ESP-IDF's panic wording).
pub fn mcause_name(mcause: u32) -> String {
    if mcause & 0x8000_0000 != 0 {
        return format!("Interrupt {}", mcause & 0x7FFF_FFFF);
    }
    match mcause {
        0 => "Instruction address misaligned",
        1 => "Instruction access fault",
        2 => "Illegal instruction",
        3 => "Breakpoint",
        4 => "Load address misaligned",
        5 => "Load access fault",
        6 => "Store address misaligned",
        7 => "Store access fault",
        8 => "Environment call from U-mode",
        9 => "Environment call from S-mode",
        11 => "Environment call from M-mode",
        12 => "Instruction page fault",
        13 => "Load page fault",
        15 => "Store page fault",
        _ => return format!("Unknown exception cause {mcause}"),
    }
    .to_string()
}

/// The CSRs stored after the 32 registers of an RvExcFrame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiscvExceptionFrame {
    /// Address of the frame in the dump.
    pub addr: u32,
    /// mstatus.
    pub mstatus: u32,
    /// mtvec.
    pub mtvec: u32,
    /// mcause.
    pub mcause: u32,
    /// mtval (faulting address or instruction).
    pub mtval: u32,
}

/// Find the RvExcFrame whose first 32 words equal the task's registers.
pub fn find_exception_frame(dump: &CoreDump, regs: &RiscvRegisters) -> Option<RiscvExceptionFrame> {
    let mut want = [0u32; 32];
    want[0] = regs.pc;
    want[1..].copy_from_slice(&regs.x[1..]);
    if want.iter().all(|&w| w == 0) {
        return None;
    }
    for seg in &dump.segments {
        let n = seg.data.len() / 4;
        if n < 36 {
            continue;
        }
        for i in 0..=(n - 36) {
            let off = i * 4;
            let matches = (0..32).all(|k| u32_at(&seg.data, off + 4 * k) == Some(want[k]));
            if matches {
                let w = |k: usize| u32_at(&seg.data, off + 4 * k).unwrap_or(0);
                return Some(RiscvExceptionFrame {
                    addr: seg.addr.wrapping_add(off as u32),
                    mstatus: w(32),
                    mtvec: w(33),
                    mcause: w(34),
                    mtval: w(35),
                });
            }
        }
    }
    None
}

/// True when the instruction before `ra` is a call that links into `ra`
/// (jal/jalr with rd = ra, or compressed c.jal/c.jalr).
fn preceded_by_call(fw: &Firmware, ra: u32) -> bool {
    if let Some(b) = fw.read(ra.wrapping_sub(4), 4) {
        let inst = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let opcode = inst & 0x7F;
        let rd = (inst >> 7) & 0x1F;
        if (opcode == 0x6F || opcode == 0x67) && rd == 1 {
            return true;
        }
    }
    if let Some(b) = fw.read(ra.wrapping_sub(2), 2) {
        let h = u16::from_le_bytes([b[0], b[1]]);
        let c_jalr = h & 0xF07F == 0x9002 && (h >> 7) & 0x1F != 0;
        let c_jal = h & 0xE003 == 0x2001;
        if c_jalr || c_jal {
            return true;
        }
    }
    false
}

/// Result of one CFI step: caller registers and the return address.
struct Step {
    x: [u32; 32],
    ra: u32,
}

fn cfi_step(
    fw: &Firmware,
    ctx: &mut UnwindContext<usize>,
    dump: &CoreDump,
    addr: u32,
    x: &[u32; 32],
) -> Option<Step> {
    let rules = fw.cfi.rules(ctx, addr as u64)?;
    let (cfa_rule, regs, ra_reg) = (rules.cfa, rules.regs, rules.ra_reg);
    let cfa = match cfa_rule {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = *x.get(register.0 as usize)?;
            (base as i64).wrapping_add(offset) as u32
        }
        CfaRule::Expression(_) => return None,
    };
    let mut nx = *x;
    for (reg, rule) in regs {
        let r = reg as usize;
        if r == 0 || r >= 32 {
            continue;
        }
        match rule {
            RegisterRule::Offset(o) => {
                let a = (cfa as i64).wrapping_add(o) as u32;
                match dump.read_u32(a) {
                    Some(v) => nx[r] = v,
                    None if r == ra_reg as usize => return None,
                    None => {}
                }
            }
            RegisterRule::ValOffset(o) => nx[r] = (cfa as i64).wrapping_add(o) as u32,
            RegisterRule::Register(Register(src)) => {
                nx[r] = x.get(src as usize).copied().unwrap_or(0)
            }
            RegisterRule::Undefined => nx[r] = 0,
            _ => {}
        }
    }
    let ra = nx.get(ra_reg as usize).copied().unwrap_or(0);
    nx[2] = cfa;
    Some(Step { x: nx, ra })
}

/// True for addresses in the mask-ROM windows of ESP RISC-V chips
/// (0x4000_0000.. on C2/C3/C5/C6/C61/H2, 0x4fc0_0000.. on P4).
pub fn is_probable_rom(addr: u32) -> bool {
    (0x4000_0000..0x4010_0000).contains(&addr) || (0x4fc0_0000..0x4fd0_0000).contains(&addr)
}

/// True when `ra` could be a genuine return address (or the end marker 0).
fn plausible_return(fw: &Firmware, ra: u32) -> bool {
    ra == 0 || (fw.is_code(ra) && preceded_by_call(fw, ra))
}

/// Length of the chain of plausible frames obtained by unwinding from `pc`
/// (a return address) with registers `x`, if it ends properly: with a return
/// address of 0 at the top of the task's stack.
fn chain_len(
    fw: &Firmware,
    ctx: &mut UnwindContext<usize>,
    dump: &CoreDump,
    task: &Task,
    pc: u32,
    x: &[u32; 32],
) -> Option<usize> {
    let mut pc = pc;
    let mut x = *x;
    for n in 1..MAX_FRAMES {
        let step = cfi_step(fw, ctx, dump, pc.wrapping_sub(1), &x)?;
        if step.x[2] <= x[2] {
            return None;
        }
        if step.ra == 0 {
            // The outermost frame: only genuine if its CFA is the top of the stack.
            let top = task.stack_end <= task.stack_start
                || step.x[2].abs_diff(task.stack_end) <= TOP_OF_STACK_SLACK;
            return top.then_some(n);
        }
        if !plausible_return(fw, step.ra) {
            return None;
        }
        pc = step.ra;
        x = step.x;
    }
    None
}

/// Distance from the stack end within which a frame returning to 0 counts
/// as the task's outermost frame.
const TOP_OF_STACK_SLACK: u32 = 64;

/// Largest ROM frame the stack scan assumes between a return-address slot
/// and the caller's stack pointer.
const MAX_ROM_FRAME: u32 = 256;

/// Scan the stack upwards from `sp` for a return address into firmware code
/// whose caller chain unwinds plausibly; the caller's stack pointer is
/// searched above the slot (ROM frames save ra at varying offsets).
/// Returns the return address and the stack pointer of that caller frame.
fn scan_for_return(
    dump: &CoreDump,
    task: &Task,
    fw: &Firmware,
    ctx: &mut UnwindContext<usize>,
    x: &[u32; 32],
) -> Option<(u32, u32)> {
    let sp = x[2];
    let limit = if task.stack_end > sp {
        task.stack_end.min(sp.saturating_add(2048))
    } else {
        sp.saturating_add(1024)
    };
    // Best candidate: longest valid chain, then the highest slot.
    let mut best: Option<(usize, u32, u32, u32)> = None;
    let mut a = sp;
    while a < limit {
        let Some(w) = dump.read_u32(a) else { break };
        a = a.wrapping_add(4);
        if w & 1 != 0 || !fw.is_code(w) || !preceded_by_call(fw, w) {
            continue;
        }
        let mut s = a;
        while s <= a.saturating_add(MAX_ROM_FRAME) && (task.stack_end <= sp || s <= task.stack_end)
        {
            let mut trial = *x;
            trial[2] = s;
            if let Some(n) = chain_len(fw, ctx, dump, task, w, &trial) {
                if best.is_none_or(|b| n >= b.0) {
                    best = Some((n, a, w, s));
                }
                break;
            }
            s = s.wrapping_add(4);
        }
    }
    best.map(|(_, _, w, s)| (w, s))
}

/// Unwind a RISC-V task from its saved registers.
pub fn unwind(
    dump: &CoreDump,
    task: &Task,
    regs: &RiscvRegisters,
    fw: &Firmware,
) -> (Vec<RawFrame>, Option<String>) {
    let mut x = regs.x;
    let mut pc = regs.pc;
    let mut frames = vec![RawFrame {
        pc,
        sp: x[2],
        origin: FrameOrigin::Registers,
    }];
    let mut ctx = UnwindContext::new();
    let mut note = None;
    while frames.len() < MAX_FRAMES {
        let first = frames.len() == 1;
        let lookup = if first { pc } else { pc.wrapping_sub(1) };
        let sp = x[2];
        let (next_pc, next_x, origin) = match cfi_step(fw, &mut ctx, dump, lookup, &x) {
            Some(step) => (step.ra, step.x, FrameOrigin::Cfi),
            None if first && x[1] != 0 && x[1] != pc => {
                let mut nx = x;
                nx[1] = 0;
                (x[1], nx, FrameOrigin::ReturnAddress)
            }
            None if !fw.is_code(pc) => match scan_for_return(dump, task, fw, &mut ctx, &x) {
                Some((ret, new_sp)) => {
                    let mut nx = x;
                    nx[2] = new_sp;
                    (ret, nx, FrameOrigin::StackScan)
                }
                None => {
                    note = Some(
                        "no unwind information for ROM code; stack scan found no caller".into(),
                    );
                    break;
                }
            },
            None => {
                note = Some(format!("no unwind information for 0x{lookup:08x}"));
                break;
            }
        };
        if next_pc == 0 {
            note = Some("frame did not save the PC".into());
            break;
        }
        if !fw.is_code(next_pc) && !is_probable_rom(next_pc) {
            note = Some(format!("return address 0x{next_pc:08x} is not code"));
            break;
        }
        if next_x[2] < sp || (next_pc == pc && next_x[2] == sp) {
            note = Some("stack pointer did not advance; stopping".into());
            break;
        }
        pc = next_pc;
        x = next_x;
        frames.push(RawFrame {
            pc,
            sp: x[2],
            origin,
        });
    }
    (frames, note)
}
