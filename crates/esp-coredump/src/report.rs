//! The crash report: structured (serde) facts plus a readable text rendering
//! similar in content to esp-coredump's `info_corefile`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::chip::Arch;
use crate::dump::{CoreDump, Registers, Task};
use crate::error::DumpError;
use crate::header::DataFormat;
use crate::input::InputFormat;
use crate::riscv::{find_exception_frame, mcause_name};
use crate::symbols::{Firmware, SymbolInfo};
use crate::tcb::TcbLayout;
use crate::unwind::{unwind_task, FrameOrigin, ScanBudget};
use crate::xtensa::exccause_name;

/// Result of comparing the dump's app ELF SHA-256 prefix with the firmware ELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildCheck {
    /// The prefix matches the SHA-256 of the given ELF.
    Match,
    /// The prefix differs: the ELF is not the build that crashed (report still produced).
    Mismatch,
    /// The dump records no hash (binary format, or converted ELF core).
    NotRecorded,
}

/// Exception details of the crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ExceptionInfo {
    /// Xtensa EXCCAUSE/EXCVADDR and EPCn/EPSn.
    Xtensa {
        /// EXCCAUSE value.
        exccause: u32,
        /// Cause name (e.g. `StoreProhibitedCause`), if known.
        cause_name: Option<String>,
        /// Cause description.
        description: Option<String>,
        /// EXCVADDR (the faulting data address).
        excvaddr: u32,
        /// EPC1..n as (n, value).
        epc: Vec<(u8, u32)>,
        /// EPS2..n as (n, value).
        eps: Vec<(u8, u32)>,
    },
    /// RISC-V mcause/mtval recovered from the exception frame on the stack.
    #[serde(rename = "riscv")]
    RiscV {
        /// mcause.
        mcause: u32,
        /// mcause meaning (e.g. `Store access fault`).
        cause_name: String,
        /// mtval (faulting address for access faults).
        mtval: u32,
        /// mstatus.
        mstatus: u32,
        /// mepc (the faulting pc).
        mepc: u32,
    },
}

/// One backtrace frame: its address and the functions at that address
/// (innermost inlined function first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Program counter (frame 0) or return address.
    pub pc: u32,
    /// Stack pointer of the frame.
    pub sp: u32,
    /// How the frame was found.
    pub origin: FrameOrigin,
    /// True when the address lies in the firmware's code (not mask ROM).
    pub in_firmware: bool,
    /// Symbols, innermost first; empty for unknown (ROM) addresses.
    pub symbols: Vec<SymbolInfo>,
}

/// A named register value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterValue {
    /// Register name (gdb spelling).
    pub name: String,
    /// Value.
    pub value: u32,
}

/// One task in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// TCB address (task handle).
    pub tcb: u32,
    /// Task name from the TCB.
    pub name: Option<String>,
    /// True for the crashed task.
    pub crashed: bool,
    /// uxPriority.
    pub priority: Option<u32>,
    /// uxBasePriority.
    pub base_priority: Option<u32>,
    /// Bytes of stack in use (|pxEndOfStack - pxTopOfStack|).
    pub stack_used: Option<u32>,
    /// Bytes of stack free (|pxStack - pxTopOfStack|).
    pub stack_free: Option<u32>,
    /// Dumped stack range start.
    pub stack_start: u32,
    /// Dumped stack range end.
    pub stack_end: u32,
    /// Registers in gdb order.
    pub registers: Vec<RegisterValue>,
    /// Backtrace, innermost first.
    pub backtrace: Vec<Frame>,
    /// Why the backtrace stopped early, if known.
    pub backtrace_note: Option<String>,
}

/// The full crash report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Chip name (`esp32`, `esp32c3`, ...).
    pub chip: String,
    /// Architecture.
    pub arch: Arch,
    /// Input encoding.
    pub input_format: InputFormat,
    /// Dump data format.
    pub data_format: DataFormat,
    /// Version word, when known.
    pub dump_version: Option<u32>,
    /// esp-coredump's version name (e.g. `ELF_CRC32_V2_1`).
    pub dump_version_name: Option<String>,
    /// Chip revision (major*100+minor).
    pub chip_rev: Option<u32>,
    /// App ELF SHA-256 prefix recorded in the dump.
    pub app_elf_sha256_prefix: Option<String>,
    /// SHA-256 of the firmware ELF used for symbolisation.
    pub firmware_elf_sha256: String,
    /// Whether the two agree.
    pub build_check: BuildCheck,
    /// Crashed task TCB (None: not identified).
    pub crashed_task_tcb: Option<u32>,
    /// Crashed task name.
    pub crashed_task_name: Option<String>,
    /// Crash happened in an ISR (None: the dump does not say).
    pub isr_context: Option<bool>,
    /// Panic details text from the dump.
    pub panic_reason: Option<String>,
    /// Exception registers.
    pub exception: Option<ExceptionInfo>,
    /// Faulting data address (EXCVADDR or mtval), when there is an exception.
    pub faulting_address: Option<u32>,
    /// One-line summary of why the device crashed.
    pub headline: String,
    /// Tasks, crashed task first.
    pub tasks: Vec<TaskReport>,
    /// Warnings (build mismatch, missing data, ...).
    pub warnings: Vec<String>,
}

fn task_report(
    dump: &CoreDump,
    task: &Task,
    fw: &Firmware,
    layout: &TcbLayout,
    budget: &mut ScanBudget,
) -> TaskReport {
    let (raw, note) = unwind_task(dump, task, fw, budget);
    let backtrace = raw
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let probe = if i == 0 { f.pc } else { f.pc.wrapping_sub(1) };
            Frame {
                pc: f.pc,
                sp: f.sp,
                origin: f.origin,
                in_firmware: fw.is_code(probe),
                symbols: fw.symbolize(probe),
            }
        })
        .collect();
    let info = layout.read(dump, task.tcb_addr);
    TaskReport {
        tcb: task.tcb_addr,
        name: task.name.clone(),
        crashed: dump.crashed_tcb == Some(task.tcb_addr),
        priority: info.priority,
        base_priority: info.base_priority,
        stack_used: info.stack_used,
        stack_free: info.stack_free,
        stack_start: task.stack_start,
        stack_end: task.stack_end,
        registers: task
            .registers
            .named()
            .into_iter()
            .map(|(name, value)| RegisterValue { name, value })
            .collect(),
        backtrace,
        backtrace_note: note,
    }
}

/// Build the report (see [`crate::analyse`]).
pub(crate) fn build(dump: &CoreDump, fw: &Firmware) -> Result<CrashReport, DumpError> {
    let mut warnings = Vec::new();
    let layout = fw.tcb_layout();
    let mut dump = dump.clone();
    if let Some(off) = layout.name {
        dump.fill_task_names(off);
    }
    let dump = &dump;
    let fw_sha = fw.sha256_hex();
    let build_check = match &dump.app_elf_sha256_prefix {
        Some(p) if fw_sha.starts_with(&p.to_ascii_lowercase()) => BuildCheck::Match,
        Some(p) => {
            warnings.push(format!(
                "firmware ELF does not match the dump: dump records app ELF SHA-256 {p}, the given ELF has {}",
                &fw_sha[..p.len().min(fw_sha.len())]
            ));
            BuildCheck::Mismatch
        }
        None => BuildCheck::NotRecorded,
    };
    let crashed = dump.crashed_task();
    if dump.crashed_tcb.is_none() {
        warnings.push("crashed task could not be identified (skipped by the firmware)".into());
    }
    let (exception, faulting_address) = match (dump.arch, crashed) {
        (Arch::Xtensa, _) => match &dump.xtensa_exception {
            Some(ex) => {
                let names = exccause_name(ex.exccause);
                (
                    Some(ExceptionInfo::Xtensa {
                        exccause: ex.exccause,
                        cause_name: names.map(|n| n.0.to_string()),
                        description: names.map(|n| n.1.to_string()),
                        excvaddr: ex.excvaddr,
                        epc: ex.epc.clone(),
                        eps: ex.eps.clone(),
                    }),
                    Some(ex.excvaddr),
                )
            }
            None => (None, None),
        },
        (Arch::RiscV, Some(task)) => match &task.registers {
            Registers::RiscV(r) => match find_exception_frame(dump, r) {
                Some(f) => (
                    Some(ExceptionInfo::RiscV {
                        mcause: f.mcause,
                        cause_name: mcause_name(f.mcause),
                        mtval: f.mtval,
                        mstatus: f.mstatus,
                        mepc: r.pc,
                    }),
                    Some(f.mtval),
                ),
                None => (None, None),
            },
            Registers::Xtensa(_) => (None, None),
        },
        (Arch::RiscV, None) => (None, None),
    };
    let headline = match (&dump.panic_details, &exception) {
        (Some(p), _) if !p.is_empty() => p.clone(),
        (
            _,
            Some(ExceptionInfo::Xtensa {
                exccause,
                cause_name,
                excvaddr,
                ..
            }),
        ) => format!(
            "{} (exccause 0x{exccause:x}) at address 0x{excvaddr:08x}",
            cause_name
                .clone()
                .unwrap_or_else(|| "Unknown exception".into())
        ),
        (
            _,
            Some(ExceptionInfo::RiscV {
                mcause,
                cause_name,
                mtval,
                ..
            }),
        ) => format!("{cause_name} (mcause 0x{mcause:x}), mtval 0x{mtval:08x}"),
        _ => "unknown crash reason".to_string(),
    };
    let mut tasks: Vec<TaskReport> = Vec::new();
    // The crashed task first: it gets the scan trials before the others.
    let mut budget = ScanBudget::new(ScanBudget::PER_REPORT);
    if let Some(t) = crashed {
        tasks.push(task_report(dump, t, fw, layout, &mut budget));
    }
    for t in &dump.tasks {
        if Some(t.tcb_addr) == crashed.map(|c| c.tcb_addr) {
            continue;
        }
        tasks.push(task_report(dump, t, fw, layout, &mut budget));
    }
    Ok(CrashReport {
        chip: dump.chip.name(),
        arch: dump.arch,
        input_format: dump.input_format,
        data_format: dump.data_format,
        dump_version: dump.version.map(|v| v.raw),
        dump_version_name: dump
            .version
            .and_then(|v| v.kind())
            .map(|k| k.name().to_string()),
        chip_rev: dump.chip_rev,
        app_elf_sha256_prefix: dump.app_elf_sha256_prefix.clone(),
        firmware_elf_sha256: fw_sha,
        build_check,
        crashed_task_tcb: dump.crashed_tcb,
        crashed_task_name: crashed.and_then(|t| t.name.clone()),
        isr_context: dump.isr_context,
        panic_reason: dump.panic_details.clone(),
        exception,
        faulting_address,
        headline,
        tasks,
        warnings,
    })
}

fn frame_lines(out: &mut String, frames: &[Frame]) {
    let mut n = 0;
    for f in frames {
        if f.symbols.is_empty() {
            let _ = writeln!(out, "#{n:<2} 0x{:08x} in ?? ()", f.pc);
            n += 1;
            continue;
        }
        for (k, s) in f.symbols.iter().enumerate() {
            let func = s.function.as_deref().unwrap_or("??");
            let loc = match (&s.file, s.line) {
                (Some(file), Some(line)) => format!(" at {file}:{line}"),
                (Some(file), None) => format!(" at {file}"),
                _ => String::new(),
            };
            let scan = if f.origin == FrameOrigin::StackScan && k == 0 {
                " [found by stack scan]"
            } else {
                ""
            };
            if k == 0 {
                let _ = writeln!(out, "#{n:<2} 0x{:08x} in {func} (){loc}{scan}", f.pc);
            } else {
                let _ = writeln!(out, "#{n:<2} {func} (){loc}");
            }
            n += 1;
        }
    }
}

fn opt_u32(v: Option<u32>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
}

impl CrashReport {
    /// The crashed task's report, if identified.
    pub fn crashed_task(&self) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| t.crashed)
    }

    /// Render a readable report (facts in esp-coredump's section order).
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let bar = "=".repeat(63);
        let _ = writeln!(
            o,
            "{bar}\n==================== ESP32 CORE DUMP START ====================\n"
        );
        let _ = writeln!(
            o,
            "Chip: {}{}  Dump: {}{} ({:?} input)",
            self.chip,
            self.chip_rev
                .map(|r| format!(" rev v{}.{}", r / 100, r % 100))
                .unwrap_or_default(),
            self.dump_version_name
                .as_deref()
                .unwrap_or("unknown version"),
            self.dump_version
                .map(|v| format!(" 0x{v:08x}"))
                .unwrap_or_default(),
            self.input_format
        );
        match (&self.app_elf_sha256_prefix, self.build_check) {
            (Some(p), BuildCheck::Match) => {
                let _ = writeln!(o, "App ELF SHA-256: {p} (matches the firmware ELF)");
            }
            (Some(p), _) => {
                let _ = writeln!(
                    o,
                    "WARNING: app ELF SHA-256 in dump {p} does NOT match the firmware ELF {}; symbols may be wrong",
                    &self.firmware_elf_sha256[..16]
                );
            }
            (None, _) => {
                let _ = writeln!(o, "App ELF SHA-256: not recorded in the dump");
            }
        }
        match (self.crashed_task_tcb, &self.crashed_task_name) {
            (Some(tcb), name) => {
                let _ = writeln!(
                    o,
                    "Crashed task handle: 0x{tcb:x}, name: '{}'",
                    name.as_deref().unwrap_or("?")
                );
            }
            (None, _) => {
                let _ = writeln!(o, "Crashed task has been skipped.");
            }
        }
        match self.isr_context {
            Some(true) => {
                let _ = writeln!(o, "Crash happened in the interrupt context");
            }
            Some(false) => {
                let _ = writeln!(o, "Crashed task is not in the interrupt context");
            }
            None => {}
        }
        if let Some(p) = &self.panic_reason {
            let _ = writeln!(o, "Panic reason: {p}");
        }
        let _ = writeln!(o, "Crash reason: {}", self.headline);
        for w in &self.warnings {
            let _ = writeln!(o, "Warning: {w}");
        }
        let _ = writeln!(
            o,
            "\n================== CURRENT THREAD REGISTERS ==================="
        );
        match &self.exception {
            Some(ExceptionInfo::Xtensa {
                exccause,
                cause_name,
                excvaddr,
                epc,
                eps,
                ..
            }) => {
                let _ = writeln!(
                    o,
                    "{:<15}0x{exccause:x} ({})",
                    "exccause",
                    cause_name.as_deref().unwrap_or("Invalid EXCCAUSE code")
                );
                let _ = writeln!(o, "{:<15}0x{excvaddr:x}", "excvaddr");
                for (n, v) in epc {
                    let _ = writeln!(o, "{:<15}0x{v:x}", format!("epc{n}"));
                }
                for (n, v) in eps {
                    let _ = writeln!(o, "{:<15}0x{v:x}", format!("eps{n}"));
                }
            }
            Some(ExceptionInfo::RiscV {
                mcause,
                cause_name,
                mtval,
                mstatus,
                mepc,
            }) => {
                let _ = writeln!(o, "{:<15}0x{mcause:x} ({cause_name})", "mcause");
                let _ = writeln!(o, "{:<15}0x{mtval:x}", "mtval");
                let _ = writeln!(o, "{:<15}0x{mstatus:x}", "mstatus");
                let _ = writeln!(o, "{:<15}0x{mepc:x}", "mepc");
            }
            None => {}
        }
        if let Some(t) = self.crashed_task() {
            for r in &t.registers {
                let _ = writeln!(o, "{:<15}0x{:<16x}{}", r.name, r.value, r.value);
            }
            let _ = writeln!(
                o,
                "\n==================== CURRENT THREAD STACK ====================="
            );
            frame_lines(&mut o, &t.backtrace);
            if let Some(n) = &t.backtrace_note {
                let _ = writeln!(o, "Backtrace stopped: {n}");
            }
        }
        let _ = writeln!(
            o,
            "\n======================== THREADS INFO ========================="
        );
        let _ = writeln!(o, "       TCB             NAME PRIO C/B  STACK USED/FREE");
        let _ = writeln!(o, "---------- ---------------- -------- ----------------");
        for t in &self.tasks {
            let _ = writeln!(
                o,
                "0x{:08x} {:>16} {:>8} {:>16}",
                t.tcb,
                t.name.as_deref().unwrap_or("?"),
                format!("{}/{}", opt_u32(t.priority), opt_u32(t.base_priority)),
                format!("{}/{}", opt_u32(t.stack_used), opt_u32(t.stack_free))
            );
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let _ = writeln!(
                o,
                "\n==================== THREAD {} (TCB: 0x{:x}, name: '{}') =====================",
                i + 1,
                t.tcb,
                t.name.as_deref().unwrap_or("?")
            );
            frame_lines(&mut o, &t.backtrace);
            if let Some(n) = &t.backtrace_note {
                let _ = writeln!(o, "Backtrace stopped: {n}");
            }
        }
        let _ = writeln!(
            o,
            "\n===================== ESP32 CORE DUMP END ====================="
        );
        o
    }
}
