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
    (pc, x): (u32, &[u32; 32]),
    budget: &mut ScanBudget,
) -> Option<usize> {
    let mut pc = pc;
    let mut x = *x;
    for n in 1..MAX_FRAMES {
        if !budget.spend_step() {
            return None;
        }
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
/// Each caller candidate tried spends one of `budget`'s trials; a scan that
/// runs out of them finds nothing.
fn scan_for_return(
    dump: &CoreDump,
    task: &Task,
    fw: &Firmware,
    ctx: &mut UnwindContext<usize>,
    x: &[u32; 32],
    budget: &mut ScanBudget,
) -> Option<(u32, u32)> {
    let sp = x[2];
    // Best candidate: longest valid chain, then the highest slot.
    let mut best: Option<(usize, u32, u32, u32)> = None;
    for slot in scan_slots(sp, task.stack_end) {
        let Some(w) = dump.read_u32(slot) else { break };
        if w & 1 != 0 || !fw.is_code(w) || !preceded_by_call(fw, w) {
            continue;
        }
        for s in caller_sps(slot, sp, task.stack_end) {
            // Out of trials part-way: what was found so far may not be the best, so nothing
            // is said rather than a guess (the note says why, see `unwind`).
            if !budget.spend() || budget.steps == 0 {
                return None;
            }
            let mut trial = *x;
            trial[2] = s;
            if let Some(n) = chain_len(fw, ctx, dump, task, (w, &trial), budget) {
                if best.is_none_or(|b| n >= b.0) {
                    best = Some((n, slot, w, s));
                }
                break;
            }
        }
    }
    best.map(|(_, _, w, s)| (w, s))
}

/// The stack slots the scan reads, 4 bytes apart: from `sp` up to the stack
/// end and at most 2 KiB (1 KiB when the stack end is not above `sp`), never
/// past the top of the address space.
fn scan_slots(sp: u32, stack_end: u32) -> impl Iterator<Item = u32> {
    let (sp, end) = (u64::from(sp), u64::from(stack_end));
    let limit = if end > sp {
        end.min(sp + 2048)
    } else {
        sp + 1024
    };
    (sp..limit).step_by(4).map_while(|a| u32::try_from(a).ok())
}

/// The caller stack pointers tried for a return address found in `slot`:
/// from just above the slot up to [`MAX_ROM_FRAME`] further, not past the
/// stack end when it is above `sp`, and never past the top of the address
/// space.
fn caller_sps(slot: u32, sp: u32, stack_end: u32) -> impl Iterator<Item = u32> {
    let first = u64::from(slot) + 4;
    let mut last = first + u64::from(MAX_ROM_FRAME);
    if stack_end > sp {
        last = last.min(u64::from(stack_end));
    }
    (first..=last)
        .step_by(4)
        .map_while(|s| u32::try_from(s).ok())
}

/// How many caller candidates the stack scan may still try while one report
/// is built, and how many CFI steps their unwinds may take in all (each is an
/// unwind of up to [`MAX_FRAMES`] steps, and each step reads the dump). Shared
/// by all tasks of the report: a crafted dump could otherwise have every task
/// scan the same hostile stack, or every trial unwind a full chain.
#[derive(Debug)]
pub struct ScanBudget {
    trials: usize,
    steps: usize,
}

impl ScanBudget {
    /// Trials for one report: a real scan tries a few hundred.
    pub const PER_REPORT: usize = 16_384;
    /// CFI steps for one report's scans: a real scan takes a few thousand.
    pub const STEPS_PER_REPORT: usize = 65_536;

    pub fn new(trials: usize) -> Self {
        ScanBudget {
            trials,
            steps: Self::STEPS_PER_REPORT,
        }
    }

    /// Takes one trial; false when none is left.
    fn spend(&mut self) -> bool {
        take_one(&mut self.trials)
    }

    /// Takes one CFI step; false when none is left.
    fn spend_step(&mut self) -> bool {
        take_one(&mut self.steps)
    }

    /// Whether every trial, or every step, was taken.
    pub fn spent(&self) -> bool {
        self.trials == 0 || self.steps == 0
    }
}

fn take_one(left: &mut usize) -> bool {
    match left.checked_sub(1) {
        Some(rest) => {
            *left = rest;
            true
        }
        None => false,
    }
}

/// Unwind a RISC-V task from its saved registers.
pub fn unwind(
    dump: &CoreDump,
    task: &Task,
    regs: &RiscvRegisters,
    fw: &Firmware,
    budget: &mut ScanBudget,
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
            None if !fw.is_code(pc) => {
                match scan_for_return(dump, task, fw, &mut ctx, &x, budget) {
                    Some((ret, new_sp)) => {
                        let mut nx = x;
                        nx[2] = new_sp;
                        (ret, nx, FrameOrigin::StackScan)
                    }
                    None if budget.spent() => {
                        note = Some(
                        "no unwind information for ROM code; the stack scans of this dump tried as many callers as they may".into(),
                    );
                        break;
                    }
                    None => {
                        note = Some(
                            "no unwind information for ROM code; stack scan found no caller".into(),
                        );
                        break;
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_scan_stops_at_the_top_of_the_address_space() {
        // A stack pointer near the top, with no stack end above it: 64 slots, then the end.
        assert_eq!(scan_slots(0xFFFF_FF00, 0).take(10_000).count(), 64);
        assert_eq!(
            scan_slots(0xFFFF_FF00, 0xFFFF_FFFF).take(10_000).count(),
            64
        );
        let last = caller_sps(0xFFFF_FFF0, 0xFFFF_FF00, 0);
        assert_eq!(
            last.take(10_000).collect::<Vec<_>>(),
            [0xFFFF_FFF4, 0xFFFF_FFF8, 0xFFFF_FFFC]
        );
        assert_eq!(
            caller_sps(0xFFFF_FFFC, 0xFFFF_FF00, 0).take(10_000).count(),
            0
        );
    }

    #[test]
    fn the_stack_scan_stays_below_the_stack_end_and_its_windows() {
        let slots: Vec<u32> = scan_slots(0x3FC8_0000, 0x3FC8_0010).collect();
        assert_eq!(slots, [0x3FC8_0000, 0x3FC8_0004, 0x3FC8_0008, 0x3FC8_000C]);
        // At most 2 KiB above sp below a far stack end, 1 KiB with none above sp.
        assert_eq!(scan_slots(0x3FC8_0000, 0x3FC9_0000).count(), 512);
        assert_eq!(scan_slots(0x3FC8_0000, 0).count(), 256);
        let sps: Vec<u32> = caller_sps(0x3FC8_0000, 0x3FC8_0000, 0x3FC8_0010).collect();
        assert_eq!(sps, [0x3FC8_0004, 0x3FC8_0008, 0x3FC8_000C, 0x3FC8_0010]);
        assert_eq!(caller_sps(0x3FC8_0000, 0x3FC8_0000, 0).count(), 65);
    }

    #[test]
    fn a_scan_budget_gives_as_many_trials_as_it_holds() {
        let mut budget = ScanBudget::new(2);
        assert!(!budget.spent());
        assert!(budget.spend() && budget.spend());
        assert!(budget.spent());
        assert!(!budget.spend());
        // And as many CFI steps, over all its trials.
        let mut budget = ScanBudget::new(2);
        for _ in 0..ScanBudget::STEPS_PER_REPORT {
            assert!(budget.spend_step());
        }
        assert!(!budget.spend_step());
        assert!(budget.spent(), "out of steps with trials left");
    }
}
