//! Architecture-neutral unwinding results and the per-task dispatcher.

use serde::{Deserialize, Serialize};

use crate::dump::{CoreDump, Registers, Task};
pub use crate::riscv::ScanBudget;
use crate::symbols::Firmware;

/// How a frame was recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameOrigin {
    /// Registers saved in the dump (frame 0).
    Registers,
    /// Xtensa windowed-ABI base save area.
    WindowSaveArea,
    /// DWARF call-frame information.
    Cfi,
    /// Leaf assumption (no CFI; caller from the return-address register).
    ReturnAddress,
    /// Stack scan for a return address into firmware code (heuristic; used
    /// to step over ROM functions without unwind information).
    StackScan,
}

/// One unwound frame before symbolisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// Program counter (frame 0) or return address.
    pub pc: u32,
    /// Stack pointer of the frame.
    pub sp: u32,
    /// How it was found.
    pub origin: FrameOrigin,
}

/// Maximum frames unwound per task.
pub const MAX_FRAMES: usize = 64;

/// Unwind one task. Returns the frames and an optional note on why the walk stopped. RISC-V
/// stack scans spend `budget` (see [`ScanBudget`]).
pub fn unwind_task(
    dump: &CoreDump,
    task: &Task,
    fw: &Firmware,
    budget: &mut ScanBudget,
) -> (Vec<RawFrame>, Option<String>) {
    match &task.registers {
        Registers::Xtensa(r) => (crate::xtensa::unwind(dump, r), None),
        Registers::RiscV(r) => crate::riscv::unwind(dump, task, r, fw, budget),
    }
}
