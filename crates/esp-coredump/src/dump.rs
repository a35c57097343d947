//! The decoded dump model: tasks, registers, memory and ESP notes.

use serde::{Deserialize, Serialize};

use crate::bytes::{c_string, slice_at, u32_at};
use crate::chip::{Arch, Chip};
use crate::error::DumpError;
use crate::header::{ChecksumKind, DataFormat, DumpHeader, DumpVersion};
use crate::input::InputFormat;

/// Offset of `pcTaskName` in the ESP-IDF FreeRTOS TCB (IDF 4.4 and 5.x).
pub const DEFAULT_TCB_NAME_OFFSET: u32 = 52;
/// Length of `pcTaskName` (configMAX_TASK_NAME_LEN).
pub const TCB_NAME_LEN: usize = 16;

/// One memory region captured in the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySegment {
    /// Target address of the first byte.
    pub addr: u32,
    /// The bytes.
    pub data: Vec<u8>,
}

impl MemorySegment {
    /// True when `addr` lies inside this segment.
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.addr && ((addr - self.addr) as usize) < self.data.len()
    }
    /// End address (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.addr as u64 + self.data.len() as u64
    }
}

/// Xtensa registers of one task, in gdb's register-set order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct XtensaRegisters {
    /// Program counter.
    pub pc: u32,
    /// Processor state.
    pub ps: u32,
    /// Loop begin.
    pub lbeg: u32,
    /// Loop end.
    pub lend: u32,
    /// Loop count.
    pub lcount: u32,
    /// Shift amount register.
    pub sar: u32,
    /// WINDOWSTART (usually 0 in dumps).
    pub windowstart: u32,
    /// WINDOWBASE (usually 0 in dumps).
    pub windowbase: u32,
    /// a0..a15 of the current window.
    pub a: [u32; 16],
}

/// RISC-V registers of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RiscvRegisters {
    /// Program counter (mepc for the crashed task).
    pub pc: u32,
    /// x0..x31 (x0 is always 0; x1 = ra, x2 = sp, ...).
    pub x: [u32; 32],
}

/// RISC-V ABI register names x0..x31 (gdb spells x8 as `fp`).
pub const RISCV_REG_NAMES: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

/// Registers of a task, per architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum Registers {
    /// Xtensa register set.
    Xtensa(XtensaRegisters),
    /// RISC-V register set.
    #[serde(rename = "riscv")]
    RiscV(RiscvRegisters),
}

impl Registers {
    /// Program counter.
    pub fn pc(&self) -> u32 {
        match self {
            Registers::Xtensa(r) => r.pc,
            Registers::RiscV(r) => r.pc,
        }
    }
    /// Stack pointer (a1 / x2).
    pub fn sp(&self) -> u32 {
        match self {
            Registers::Xtensa(r) => r.a[1],
            Registers::RiscV(r) => r.x[2],
        }
    }
    /// Named register values in the order gdb's `info registers` shows them.
    pub fn named(&self) -> Vec<(String, u32)> {
        match self {
            Registers::Xtensa(r) => {
                let mut v = vec![
                    ("pc".to_string(), r.pc),
                    ("lbeg".to_string(), r.lbeg),
                    ("lend".to_string(), r.lend),
                    ("lcount".to_string(), r.lcount),
                    ("sar".to_string(), r.sar),
                    ("ps".to_string(), r.ps),
                ];
                for (i, a) in r.a.iter().enumerate() {
                    v.push((format!("a{i}"), *a));
                }
                v
            }
            Registers::RiscV(r) => {
                let mut v: Vec<(String, u32)> = (1..32)
                    .map(|i| (RISCV_REG_NAMES[i].to_string(), r.x[i]))
                    .collect();
                v.push(("pc".to_string(), r.pc));
                v
            }
        }
    }
}

/// One FreeRTOS task captured in the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// TCB address (the task handle; gdb's `process <tcb>`).
    pub tcb_addr: u32,
    /// `pcTaskName` read from the dumped TCB, when the TCB is in the dump.
    pub name: Option<String>,
    /// Lowest address of the dumped stack (the saved stack pointer).
    pub stack_start: u32,
    /// End (exclusive) of the dumped stack.
    pub stack_end: u32,
    /// Saved registers.
    pub registers: Registers,
}

/// Xtensa exception registers from the EXTRA_INFO note (or the binary
/// format's exception frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct XtensaExceptionRegs {
    /// EXCCAUSE.
    pub exccause: u32,
    /// EXCVADDR (faulting address).
    pub excvaddr: u32,
    /// EPC1..EPC7 as (n, value), in note order.
    pub epc: Vec<(u8, u32)>,
    /// EPS2..EPS7 as (n, value), in note order.
    pub eps: Vec<(u8, u32)>,
}

/// A fully decoded core dump (no firmware ELF needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreDump {
    /// How the input was given.
    pub input_format: InputFormat,
    /// Binary or ELF data.
    pub data_format: DataFormat,
    /// The header (absent for ELF core input).
    pub header: Option<DumpHeader>,
    /// Version word (header, or the ESP_CORE_DUMP_INFO note).
    pub version: Option<DumpVersion>,
    /// The checksum that was verified (None for ELF core input).
    pub checksum: Option<ChecksumKind>,
    /// Chip.
    pub chip: Chip,
    /// Architecture.
    pub arch: Arch,
    /// Chip revision (major*100+minor) when recorded.
    pub chip_rev: Option<u32>,
    /// Tasks, crashed task first as written by the firmware.
    pub tasks: Vec<Task>,
    /// TCB of the crashed task; None when the firmware could not identify it (0xDEADBEEF).
    pub crashed_tcb: Option<u32>,
    /// Crash happened in an ISR (None when the dump does not say).
    pub isr_context: Option<bool>,
    /// App ELF SHA-256 hex prefix from ESP_CORE_DUMP_INFO.
    pub app_elf_sha256_prefix: Option<String>,
    /// ESP_PANIC_DETAILS text.
    pub panic_details: Option<String>,
    /// Xtensa exception registers.
    pub xtensa_exception: Option<XtensaExceptionRegs>,
    /// All dumped memory.
    pub segments: Vec<MemorySegment>,
}

/// The most tasks a dump may hold. ESP-IDF's `CONFIG_ESP_COREDUMP_MAX_TASKS_NUM` defaults to 64,
/// and no ESP32 has the memory for hundreds of tasks.
pub const MAX_TASKS: usize = 256;

/// The most memory segments (empty ones not counted) a dump may hold: two per task, and the
/// few memory regions a dump may add.
pub const MAX_SEGMENTS: usize = 2048;

impl CoreDump {
    /// The dump as parsed, checked against [`MAX_TASKS`] and [`MAX_SEGMENTS`], empty segments
    /// dropped, and its task names filled in. Every task is unwound, and every read of the
    /// dumped memory searches its segments: a crafted dump of 1 MiB with thousands of both
    /// would take minutes of CPU and a report of tens of megabytes.
    pub(crate) fn bounded(mut self) -> Result<Self, DumpError> {
        self.segments.retain(|s| !s.data.is_empty());
        if self.tasks.len() > MAX_TASKS {
            return Err(DumpError::malformed(format!(
                "the dump holds {} tasks; at most {MAX_TASKS} are read",
                self.tasks.len()
            )));
        }
        if self.segments.len() > MAX_SEGMENTS {
            return Err(DumpError::malformed(format!(
                "the dump holds {} memory segments; at most {MAX_SEGMENTS} are read",
                self.segments.len()
            )));
        }
        self.fill_task_names(self.guess_tcb_name_offset());
        Ok(self)
    }

    /// Read `len` bytes at `addr` from the dumped memory (single segment).
    pub fn read(&self, addr: u32, len: usize) -> Option<&[u8]> {
        let seg = self.segments.iter().find(|s| s.contains(addr))?;
        slice_at(&seg.data, (addr - seg.addr) as usize, len)
    }

    /// Read a little-endian word from the dumped memory.
    pub fn read_u32(&self, addr: u32) -> Option<u32> {
        u32_at(self.read(addr, 4)?, 0)
    }

    /// The segment containing `addr`.
    pub fn segment_at(&self, addr: u32) -> Option<&MemorySegment> {
        self.segments.iter().find(|s| s.contains(addr))
    }

    /// The crashed task, if identified and present.
    pub fn crashed_task(&self) -> Option<&Task> {
        let tcb = self.crashed_tcb?;
        self.tasks.iter().find(|t| t.tcb_addr == tcb)
    }

    /// Read a task name from a TCB at `tcb + name_offset`.
    pub fn read_task_name(&self, tcb: u32, name_offset: u32) -> Option<String> {
        let bytes = self.read(tcb.checked_add(name_offset)?, TCB_NAME_LEN)?;
        let name = c_string(bytes);
        if name.chars().all(|c| !c.is_control()) {
            Some(name)
        } else {
            Some(name.chars().filter(|c| !c.is_control()).collect())
        }
    }

    /// Guess the `pcTaskName` offset without the firmware's DWARF: 52 in
    /// IDF 5.x, 56 in some IDF 4.x Xtensa builds. Picks the candidate giving the
    /// most non-empty, printable names.
    pub fn guess_tcb_name_offset(&self) -> u32 {
        let score = |off: u32| {
            self.tasks
                .iter()
                .filter(|t| {
                    self.read(t.tcb_addr.wrapping_add(off), TCB_NAME_LEN)
                        .is_some_and(|b| {
                            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                            end > 0 && b[..end].iter().all(|c| (0x20..0x7f).contains(c))
                        })
                })
                .count()
        };
        let mut best = (score(DEFAULT_TCB_NAME_OFFSET), DEFAULT_TCB_NAME_OFFSET);
        for off in [56u32, 48, 60] {
            let s = score(off);
            if s > best.0 {
                best = (s, off);
            }
        }
        best.1
    }

    /// Fill task names from the TCBs with the given `pcTaskName` offset.
    pub fn fill_task_names(&mut self, name_offset: u32) {
        let names: Vec<Option<String>> = self
            .tasks
            .iter()
            .map(|t| self.read_task_name(t.tcb_addr, name_offset))
            .collect();
        for (t, n) in self.tasks.iter_mut().zip(names) {
            t.name = n;
        }
    }
}
