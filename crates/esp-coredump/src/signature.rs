//! Crash signatures: one stable key per distinct crash, used to group core
//! dumps into crash groups (SPEC §15).
//!
//! # The rule (version [`SIGNATURE_VERSION`] = 1)
//!
//! A signature is built from two parts of a [`CrashReport`], by name only:
//!
//! 1. **The reason**, a short class of why the device crashed:
//!    * From the panic text (`ESP_PANIC_DETAILS`, which ESP-IDF writes only for
//!      abort-style panics), classified:
//!      `abort() was called at PC … on core …` → `abort()`;
//!      `assert failed: …` → `assert failed` (the function, file, line and
//!      expression are dropped: the frames already say where, and silent-assert
//!      builds print only an address);
//!      `… stack overflow in task NAME …` → `stack overflow in task NAME`;
//!      `Task watchdog got triggered …` → `task watchdog: A, B` (the tasks that
//!      did not reset the watchdog, sorted; the "currently running" part depends
//!      on scheduling and is dropped). Any other text is kept, normalised (below).
//!    * The panic machinery at the top of the crashed task's backtrace refines or
//!      replaces that text: `_esp_error_check_failed` → `ESP_ERROR_CHECK failed`,
//!      `__assert_func` → `assert failed` (older ESP-IDF asserts reach `abort()`,
//!      so their text says `abort()`), and when the dump has no panic text at all
//!      (binary-format dumps) `abort` → `abort()`,
//!      `vApplicationStackOverflowHook` → `stack overflow in task <crashed task>`
//!      (FreeRTOS checks the outgoing task, which is the task the dump records as
//!      crashed), `panic_abort`/`esp_system_abort` alone → `system abort`. So an
//!      abort looks the same whether the dump is ELF (with text) or binary
//!      (without). The exception registers of an abort are ignored: they describe
//!      the deliberate fault `panic_abort` raises to stop the CPU, which differs
//!      between ESP-IDF versions (StoreProhibited, Illegal instruction, …).
//!    * Otherwise the CPU exception: the Xtensa EXCCAUSE name without its `Cause`
//!      suffix, as ESP-IDF's "Guru Meditation" line prints it (`LoadProhibited`,
//!      `StoreProhibited`, …; the two interrupt-watchdog pseudo causes become
//!      `InterruptWDTTimeout`, because which CPU's watchdog fired is scheduling,
//!      not the bug), or the RISC-V mcause name (`Store access fault`, …). The
//!      names are each architecture's own: a signature never has to match across
//!      architectures, because groups are per device model. A cause code without
//!      a name stays a number (`exccause 42`): it is a category, not a value
//!      that varies between builds.
//!    * Otherwise `unknown`.
//!
//!    **Normalisation.** Every free text that goes into the reason is folded to
//!    one line (whitespace runs become one space), `|` becomes `/`, and every
//!    number token — a word that is `0x` plus hex digits, or starts with a digit
//!    and has only hex digits (`0x3ffb1234`, `42`, `3ffb1234`) — becomes `#`.
//!    Addresses, task handles, line numbers, core numbers and error codes vary
//!    between builds, devices and runs and would otherwise split one crash into
//!    many groups; words that merely contain digits (`IDLE0`, `esp32`, `CPU1`)
//!    are names and are kept. The text is capped at 160 characters.
//!
//! 2. **The frames**: the first [`SIGNATURE_FRAMES`] = 3 application functions
//!    of the crashed task's backtrace, innermost first. A frame is skipped when
//!    its address is not in the firmware's code
//!    ([`in_firmware`](crate::report::Frame::in_firmware) is false: mask ROM,
//!    whose names the app ELF does not have and whose addresses differ per chip
//!    revision) or when it has no function name; a function is skipped
//!    when it is panic machinery (`panic_abort`, `esp_system_abort`, `abort`,
//!    `__assert_func`, `__assert`, `_esp_error_check_failed`,
//!    `vApplicationStackOverflowHook`, `__stack_chk_fail`, `esp_panic_handler`,
//!    `panic_handler`, `_panic_handler`, `panicHandler`, `xt_unhandled_exception`,
//!    the C++ and Rust runtime's way from a throw or a panic to `abort`
//!    (`std::terminate`, `__cxa_throw`, `std::__throw_*`, `core::panicking::*`,
//!    `rust_begin_unwind`, … see `is_language_runtime`; added without a new
//!    version: only signatures that held those frames change, and those merged
//!    every uncaught exception or panic of a model into one group),
//!    `_xt_*` vector and context code) or a task entry trampoline
//!    (`vPortTaskWrapper`, `prvTaskExitError`, `main_task`, which only ever sits
//!    below `app_main`). Inlined functions count as frames of their own, in call
//!    order, so the signature does not change when a compiler version or
//!    optimisation level inlines a call differently. Consecutive repeats of one
//!    function (recursion) collapse into one, since recursion depth depends on
//!    data. Function names are used as given by the symboliser, with build-to-build
//!    noise removed: GCC clone suffixes (`foo.constprop.0`, `foo.part.1`,
//!    `foo.cold`, ` [clone .isra.0]`) and the hash of legacy-mangled Rust symbols
//!    (`17h…E`, `::h…`). No address, offset, file or line is used.
//!
//!    Why three: the innermost frame says where it failed, the next two say which
//!    path led there. One or two frames merge different bugs in a shared helper
//!    (every caller of a crashing `strlen` wrapper), while deep stacks split one
//!    bug by how it was reached (event loop, timer or task), which is the kind of
//!    difference a crash group should absorb.
//!
//! The canonical text is `v1 | <reason> | <f1> > <f2> > <f3>`
//! (`(no application frames)` when none are left), the hash is the lower-case
//! hex SHA-256 of that text, and the title is `<reason> in <f1>` (or the reason
//! alone). The version is part of the hashed text, so changing the rule means
//! bumping [`SIGNATURE_VERSION`], which gives every crash a new signature and
//! lets the server regroup instead of silently mixing old and new groups.
//!
//! A report without a crashed task still gets a signature from its reason
//! alone (SPEC §15: every parsed dump is grouped); there is `None` only when the
//! report gives neither a reason nor an application frame. Nothing about the
//! device, build, chip, task handle or dump format enters the signature, so the
//! same crash in two builds, on two devices or encoded as b64, raw or ELF core
//! has one signature.
//!
//! Known limit: on ESP-IDF 4.x RISC-V ports a task's outermost return address
//! is the entry of `prvTaskExitError` (a fake return address), which the report
//! symbolises at pc-1 like any return address and so names after the function
//! linked just before it (`vPortEnterCritical`). It appears only in signatures
//! of crashes with fewer than three application frames and is stable for a given
//! ESP-IDF version.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::header::hex;
use crate::report::{CrashReport, ExceptionInfo, TaskReport};

/// Version of the signature rule; part of the hashed text.
pub const SIGNATURE_VERSION: u32 = 1;

/// Number of application frames in a signature.
pub const SIGNATURE_FRAMES: usize = 3;

/// Longest normalised free text kept in a reason, in characters.
const MAX_TEXT_CHARS: usize = 160;

/// A crash signature (see the module documentation for the rule).
/// What a signature says of a report read against another build's ELF.
pub const OTHER_BUILD: &str = "read against another build";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CrashSignature {
    /// Lower-case hex SHA-256 of [`CrashSignature::text`].
    pub hash: String,
    /// The canonical text, e.g. `v1 | abort() | fail_once > app_main`.
    pub text: String,
    /// A short title for a UI, e.g. `abort() in fail_once`.
    pub title: String,
}

/// Compute the signature of a crash report. `None` only when the report has
/// neither a crash reason nor any application frame of a crashed task.
///
/// A report read against another build's ELF than the one that crashed
/// ([`BuildCheck::Mismatch`](crate::BuildCheck)) signs apart, with [`OTHER_BUILD`]
/// after its frames and in its title: its function names may be that other
/// build's (a version uploaded again with different code), and must not join, or
/// reopen, the group of the crash those names stand for. (An ELF rebuilt from the
/// same source also mismatches; its dumps still group together, among themselves.)
pub fn crash_signature(report: &CrashReport) -> Option<CrashSignature> {
    let (frames, reporter) = match report.crashed_task() {
        Some(task) => scan_frames(task),
        None => (Vec::new(), None),
    };
    let reason = reason(report, reporter);
    if reason.is_none() && frames.is_empty() {
        return None;
    }
    let reason = reason.unwrap_or_else(|| "unknown".to_string());
    let frames_text = if frames.is_empty() {
        "(no application frames)".to_string()
    } else {
        frames.join(" > ")
    };
    let other_build = report.build_check == crate::BuildCheck::Mismatch;
    let mut text = format!("v{SIGNATURE_VERSION} | {reason} | {frames_text}");
    let mut title = match frames.first() {
        Some(f) => format!("{reason} in {f}"),
        None => reason,
    };
    if other_build {
        text.push_str(&format!(" | {OTHER_BUILD}"));
        title.push_str(&format!(" ({OTHER_BUILD})"));
    }
    Some(CrashSignature {
        hash: hex(&Sha256::digest(text.as_bytes())),
        text,
        title,
    })
}

/// Panic machinery that reports a crash; the last one above the first
/// application frame says what kind of abort it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporter {
    /// `panic_abort` / `esp_system_abort` (called directly with a message).
    SystemAbort,
    /// `abort()`.
    Abort,
    /// `__assert_func` / `__assert`.
    Assert,
    /// `_esp_error_check_failed` (ESP_ERROR_CHECK).
    ErrorCheck,
    /// `vApplicationStackOverflowHook`.
    StackOverflow,
}

/// What a function name is, for the signature.
enum Role {
    /// Panic machinery; `Some` when it tells the kind of abort.
    Machinery(Option<Reporter>),
    /// A task entry trampoline.
    Trampoline,
    /// An application frame.
    App,
}

fn role(name: &str) -> Role {
    match name {
        "panic_abort" | "esp_system_abort" => Role::Machinery(Some(Reporter::SystemAbort)),
        "abort" => Role::Machinery(Some(Reporter::Abort)),
        "__assert_func" | "__assert" => Role::Machinery(Some(Reporter::Assert)),
        "_esp_error_check_failed" => Role::Machinery(Some(Reporter::ErrorCheck)),
        "vApplicationStackOverflowHook" => Role::Machinery(Some(Reporter::StackOverflow)),
        "__stack_chk_fail"
        | "esp_panic_handler"
        | "panic_handler"
        | "_panic_handler"
        | "panicHandler"
        | "xt_unhandled_exception" => Role::Machinery(None),
        n if n.starts_with("_xt_") => Role::Machinery(None),
        n if is_language_runtime(n) => Role::Machinery(None),
        "vPortTaskWrapper" | "prvTaskExitError" | "main_task" => Role::Trampoline,
        _ => Role::App,
    }
}

/// The C++ and Rust runtime's way from a throw or a panic to `abort`: the same frames for every
/// uncaught exception and every Rust panic, which as application frames would fill the
/// signature and put every such crash of a model in one group.
fn is_language_runtime(name: &str) -> bool {
    // Demangled C++ names carry their parameters; the function is what comes before them.
    let base = name.split('(').next().unwrap_or(name).trim();
    const CXX: [&str; 11] = [
        "std::terminate",
        "std::__terminate",
        "__cxxabiv1::__terminate",
        "__cxxabiv1::__unexpected",
        "__gnu_cxx::__verbose_terminate_handler",
        "__cxa_throw",
        "__cxa_rethrow",
        "__cxa_call_terminate",
        "__cxa_call_unexpected",
        "__cxa_pure_virtual",
        "__cxa_bad_cast",
    ];
    const RUST_EXACT: [&str; 6] = [
        "rust_begin_unwind",
        "__rustc::rust_begin_unwind",
        "__rust_start_panic",
        "rust_panic",
        "__rust_abort",
        "std::process::abort",
    ];
    // Demangled Rust paths, and the legacy mangled forms a symboliser may leave.
    const RUST_PREFIXES: [&str; 12] = [
        "core::panicking::",
        "std::panicking::",
        "std::sys::backtrace::",
        "core::result::",
        "core::option::",
        "std::rt::",
        "_ZN4core9panicking",
        "_ZN3std9panicking",
        "_ZN4core6result",
        "_ZN4core6option",
        "_ZN3std7process5abort",
        "_ZN3std3sys9backtrace",
    ];
    CXX.contains(&base)
        || base.starts_with("std::__throw_")
        || base.starts_with("__cxx_fatal_exception")
        || RUST_EXACT.contains(&base)
        || base.ends_with("::abort_internal")
        || RUST_PREFIXES.iter().any(|p| base.starts_with(p))
}

/// The crashed task's application functions (at most [`SIGNATURE_FRAMES`],
/// recursion collapsed) and the last reporter seen above the first of them.
fn scan_frames(task: &TaskReport) -> (Vec<String>, Option<Reporter>) {
    let mut frames: Vec<String> = Vec::new();
    let mut reporter = None;
    let names = task
        .backtrace
        .iter()
        .filter(|f| f.in_firmware)
        .flat_map(|f| f.symbols.iter())
        .filter_map(|s| s.function.as_deref())
        .filter_map(canonical_function);
    for name in names {
        match role(&name) {
            Role::Machinery(kind) => {
                if frames.is_empty() && kind.is_some() {
                    reporter = kind;
                }
            }
            Role::Trampoline => {}
            Role::App => {
                if frames.last() == Some(&name) {
                    continue;
                }
                if frames.len() == SIGNATURE_FRAMES {
                    break;
                }
                frames.push(name);
            }
        }
    }
    (frames, reporter)
}

/// The reason part (see the module documentation), `None` when unknown.
fn reason(report: &CrashReport, reporter: Option<Reporter>) -> Option<String> {
    let text = report
        .panic_reason
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(text) = text {
        let class = classify_text(text);
        return Some(match (class, reporter) {
            (TextClass::Abort, Some(Reporter::Assert)) => "assert failed".into(),
            (TextClass::Abort, Some(Reporter::ErrorCheck)) => "ESP_ERROR_CHECK failed".into(),
            (class, _) => class.label(),
        });
    }
    if let Some(r) = reporter {
        return Some(match r {
            Reporter::SystemAbort => "system abort".into(),
            Reporter::Abort => "abort()".into(),
            Reporter::Assert => "assert failed".into(),
            Reporter::ErrorCheck => "ESP_ERROR_CHECK failed".into(),
            Reporter::StackOverflow => match report.crashed_task_name.as_deref() {
                Some(name) if !name.trim().is_empty() => {
                    format!("stack overflow in task {}", normalize_text(name))
                }
                _ => "stack overflow".into(),
            },
        });
    }
    exception_reason(report.exception.as_ref()?)
}

fn exception_reason(ex: &ExceptionInfo) -> Option<String> {
    match ex {
        ExceptionInfo::Xtensa {
            exccause,
            cause_name,
            ..
        } => Some(match (*exccause, cause_name.as_deref()) {
            (69 | 70, _) => "InterruptWDTTimeout".into(),
            (_, Some(name)) => name.strip_suffix("Cause").unwrap_or(name).to_string(),
            (code, None) => format!("exccause {code}"),
        }),
        ExceptionInfo::RiscV { cause_name, .. } => Some(normalize_text(cause_name)),
    }
}

/// Classes of panic text.
enum TextClass {
    Abort,
    Assert,
    StackOverflow(String),
    TaskWatchdog(Vec<String>),
    Other(String),
}

impl TextClass {
    fn label(self) -> String {
        match self {
            TextClass::Abort => "abort()".into(),
            TextClass::Assert => "assert failed".into(),
            TextClass::StackOverflow(task) if task.is_empty() => "stack overflow".into(),
            TextClass::StackOverflow(task) => format!("stack overflow in task {task}"),
            TextClass::TaskWatchdog(tasks) if tasks.is_empty() => "task watchdog".into(),
            TextClass::TaskWatchdog(tasks) => format!("task watchdog: {}", tasks.join(", ")),
            TextClass::Other(text) => text,
        }
    }
}

fn classify_text(text: &str) -> TextClass {
    const OVERFLOW: &str = "stack overflow in task ";
    if text.starts_with("abort() was called") {
        return TextClass::Abort;
    }
    if text.starts_with("assert failed") {
        return TextClass::Assert;
    }
    if let Some(i) = text.find(OVERFLOW) {
        let rest = &text[i + OVERFLOW.len()..];
        let name = rest.split(" has been detected").next().unwrap_or(rest);
        return TextClass::StackOverflow(normalize_text(name));
    }
    if text.contains("Task watchdog got triggered") {
        let mut tasks: Vec<String> = Vec::new();
        let listed = text
            .lines()
            .skip_while(|l| !l.contains("Task watchdog got triggered"))
            .skip(1);
        for line in listed {
            if line.contains("currently running") {
                break;
            }
            let Some(entry) = line.trim().strip_prefix("- ") else {
                continue;
            };
            // " - IDLE0 (CPU 0)": drop the trailing "(CPU n)" / "(user)" part.
            let name = match entry.rfind(" (") {
                Some(i) if entry.ends_with(')') => &entry[..i],
                _ => entry,
            };
            let name = normalize_text(name);
            if !name.is_empty() {
                tasks.push(name);
            }
        }
        tasks.sort();
        tasks.dedup();
        return TextClass::TaskWatchdog(tasks);
    }
    TextClass::Other(normalize_text(text))
}

/// Fold `text` to one line, replace number tokens with `#` and `|` with `/`,
/// and cap its length (see the module documentation).
fn normalize_text(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let mut pending_space = false;
    let flush = |word: &mut String, out: &mut String| {
        if is_number(word) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(if c == '|' { '/' } else { c });
        }
    }
    flush(&mut word, &mut out);
    match out.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => out[..i].trim_end().to_string(),
        None => out,
    }
}

/// `0x` + hex digits, or a digit followed by hex digits only.
fn is_number(word: &str) -> bool {
    let hex_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(rest) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        return hex_digits(rest);
    }
    word.starts_with(|c: char| c.is_ascii_digit()) && hex_digits(word)
}

/// A function name without build-to-build noise; `None` when nothing is left.
fn canonical_function(name: &str) -> Option<String> {
    let mut n = name.trim();
    // Demangled C++ clones: "f(int) [clone .constprop.0]".
    if let Some(i) = n.find(" [clone ") {
        n = &n[..i];
    }
    // GCC clones of plain (C or mangled) names: "foo.constprop.0", "foo.part.1",
    // "foo.cold", "foo.isra.0" (and LLVM's "foo.llvm.123"). A C identifier
    // never contains '.'.
    if !n.contains(['(', ':', ' ']) {
        if let Some(i) = n.find('.').filter(|&i| i > 0) {
            n = &n[..i];
        }
    }
    // Demangled legacy Rust: "crate::f::h0123456789abcdef".
    if let Some(base) = strip_rust_hash(n, "::h", "") {
        n = base;
    }
    let owned;
    // Mangled legacy Rust: "_ZN5crate1f17h0123456789abcdefE".
    if n.starts_with("_ZN") {
        if let Some(base) = strip_rust_hash(n, "17h", "E") {
            owned = format!("{base}E");
            n = &owned;
        }
    }
    let mut out = n.split_whitespace().collect::<Vec<_>>().join(" ");
    out = out.replace('|', "/").replace(" > ", ">");
    (!out.is_empty()).then_some(out)
}

/// `name` without a trailing `<marker><16 hex digits><end>`, if it has one.
fn strip_rust_hash<'a>(name: &'a str, marker: &str, end: &str) -> Option<&'a str> {
    let body = name.strip_suffix(end)?;
    let split = body.len().checked_sub(16)?;
    let digits = body.get(split..)?;
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    body.get(..split)?.strip_suffix(marker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chip::Arch;
    use crate::header::DataFormat;
    use crate::input::InputFormat;
    use crate::report::{BuildCheck, Frame};
    use crate::symbols::SymbolInfo;
    use crate::unwind::FrameOrigin;

    /// A firmware frame at `pc`; `names` innermost first, the last one the
    /// real (non-inlined) function.
    fn frame(pc: u32, names: &[&str], line: u32) -> Frame {
        let n = names.len();
        Frame {
            pc,
            sp: 0x3ffb_0000 + pc % 0x1000,
            origin: FrameOrigin::WindowSaveArea,
            in_firmware: true,
            symbols: names
                .iter()
                .enumerate()
                .map(|(i, name)| SymbolInfo {
                    function: Some(name.to_string()),
                    file: Some(format!("/build/{pc:x}/main.c")),
                    line: Some(line + i as u32),
                    inlined: i + 1 < n,
                })
                .collect(),
        }
    }

    fn rom(pc: u32) -> Frame {
        Frame {
            pc,
            sp: 0x3ffb_1000,
            origin: FrameOrigin::WindowSaveArea,
            in_firmware: false,
            symbols: Vec::new(),
        }
    }

    fn report(
        panic: Option<&str>,
        exception: Option<ExceptionInfo>,
        bt: Vec<Frame>,
    ) -> CrashReport {
        let task = TaskReport {
            tcb: 0x3ffa_fba0,
            name: Some("main".into()),
            crashed: true,
            priority: Some(1),
            base_priority: Some(1),
            stack_used: Some(100),
            stack_free: Some(100),
            stack_start: 0x3ffb_0000,
            stack_end: 0x3ffb_2000,
            registers: Vec::new(),
            backtrace: bt,
            backtrace_note: None,
        };
        CrashReport {
            chip: "esp32".into(),
            arch: Arch::Xtensa,
            input_format: InputFormat::Base64,
            data_format: DataFormat::Elf,
            dump_version: Some(0x102),
            dump_version_name: None,
            chip_rev: Some(300),
            app_elf_sha256_prefix: None,
            firmware_elf_sha256: "00".repeat(32),
            build_check: BuildCheck::NotRecorded,
            crashed_task_tcb: Some(task.tcb),
            crashed_task_name: task.name.clone(),
            isr_context: Some(false),
            panic_reason: panic.map(str::to_string),
            exception,
            faulting_address: None,
            headline: String::new(),
            tasks: vec![task],
            warnings: Vec::new(),
        }
    }

    fn xtensa(exccause: u32, name: &str, excvaddr: u32) -> Option<ExceptionInfo> {
        Some(ExceptionInfo::Xtensa {
            exccause,
            cause_name: Some(name.into()),
            description: None,
            excvaddr,
            epc: vec![(1, 0x400d_1234)],
            eps: Vec::new(),
        })
    }

    /// An abort in `fail_once` called from `app_main`, laid out at `base`.
    fn abort_report(base: u32, line: u32, core: u32) -> CrashReport {
        let panic = format!(
            "abort() was called at PC 0x{:08x} on core {core}",
            base + 0x39
        );
        report(
            Some(&panic),
            xtensa(29, "StoreProhibitedCause", 0),
            vec![
                frame(base + 0x10d, &["panic_abort"], 400 + line),
                frame(base + 0x500c, &["esp_system_abort"], 90),
                frame(base + 0x96f0, &["abort"], 38),
                frame(base + 0x56bc, &["fail_once"], line),
                rom(0x4000_7c78),
                rom(0x4000_814b),
                frame(base + 0x56d4, &["app_main"], line + 6),
                frame(base + 0x630a3, &["main_task"], 208),
                frame(base + 0x4910, &["vPortTaskWrapper"], 134),
            ],
        )
    }

    fn sig(r: &CrashReport) -> CrashSignature {
        crash_signature(r).expect("signature")
    }

    #[test]
    fn a_report_read_against_another_build_signs_apart() {
        let matched = sig(&abort_report(0x4008_1000, 14, 0));
        let mut r = abort_report(0x4008_1000, 14, 0);
        r.build_check = BuildCheck::Mismatch;
        let other = sig(&r);
        assert_ne!(other.hash, matched.hash);
        assert_eq!(
            other.text,
            "v1 | abort() | fail_once > app_main | read against another build"
        );
        assert_eq!(
            other.title,
            "abort() in fail_once (read against another build)"
        );
        // Among themselves, such reports still group.
        let mut again = abort_report(0x4010_0000, 36, 1);
        again.build_check = BuildCheck::Mismatch;
        assert_eq!(sig(&again), other);
    }

    /// An uncaught C++ exception (or a Rust panic) thrown in `app_fn`: the runtime's frames
    /// between `abort` and the application.
    fn runtime_report(runtime: &[&str], app_fn: &str) -> CrashReport {
        let base = 0x400d_0000;
        let mut frames = vec![
            frame(base + 0x10, &["panic_abort"], 10),
            frame(base + 0x20, &["esp_system_abort"], 20),
            frame(base + 0x30, &["abort"], 30),
        ];
        for (i, name) in runtime.iter().enumerate() {
            frames.push(frame(base + 0x100 + 0x10 * i as u32, &[name], 40));
        }
        frames.push(frame(base + 0x400, &[app_fn], 50));
        frames.push(frame(base + 0x500, &["app_main"], 60));
        report(
            Some("abort() was called at PC 0x400d0039 on core 0"),
            None,
            frames,
        )
    }

    #[test]
    fn uncaught_exceptions_and_rust_panics_sign_by_where_they_came_from() {
        let cxx = [
            "__cxxabiv1::__terminate(void (*)())",
            "std::terminate()",
            "__cxa_throw",
            "std::__throw_out_of_range(char const*)",
        ];
        let foo = sig(&runtime_report(&cxx, "Sensor::read()"));
        let bar = sig(&runtime_report(&cxx, "Radio::send(int)"));
        assert_eq!(foo.text, "v1 | abort() | Sensor::read() > app_main");
        assert_ne!(foo, bar);
        let rust = [
            "std::process::abort",
            "std::panicking::rust_panic_with_hook",
            "rust_begin_unwind",
            "core::panicking::panic_fmt",
            "core::result::unwrap_failed",
        ];
        let r = sig(&runtime_report(&rust, "firmware::sensor::read"));
        assert_eq!(r.text, "v1 | abort() | firmware::sensor::read > app_main");
        // A name that merely mentions them is the application's.
        assert!(matches!(role("my_std::terminate_all"), Role::App));
    }

    #[test]
    fn abort_signature_text_title_and_hash() {
        let s = sig(&abort_report(0x4008_1000, 14, 0));
        assert_eq!(s.text, "v1 | abort() | fail_once > app_main");
        assert_eq!(s.title, "abort() in fail_once");
        assert_eq!(s.hash, hex(&Sha256::digest(s.text.as_bytes())));
        assert_eq!(s.hash.len(), 64);
    }

    #[test]
    fn same_crash_at_other_addresses_lines_cores_and_builds_is_equal() {
        let a = sig(&abort_report(0x4008_1000, 14, 0));
        let mut b_report = abort_report(0x4010_0000, 36, 1);
        b_report.firmware_elf_sha256 = "ab".repeat(32);
        b_report.chip = "esp32s3".into();
        b_report.tasks[0].tcb = 0x3fc9_7304;
        b_report.crashed_task_tcb = Some(0x3fc9_7304);
        let b = sig(&b_report);
        assert_eq!(a, b);
        // Without the panic text (binary-format dump) the abort frames give the same reason.
        let mut c_report = abort_report(0x4200_0000, 20, 0);
        c_report.panic_reason = None;
        c_report.exception = xtensa(0, "IllegalInstructionCause", 0);
        assert_eq!(sig(&c_report), a);
    }

    #[test]
    fn different_reason_or_top_frame_differs() {
        let base = sig(&abort_report(0x4008_1000, 14, 0));
        let mut other_frame = abort_report(0x4008_1000, 14, 0);
        other_frame.tasks[0].backtrace[3] = frame(0x400d_66bc, &["fail_twice"], 14);
        let other_frame = sig(&other_frame);
        assert_ne!(other_frame.hash, base.hash);
        assert_eq!(other_frame.text, "v1 | abort() | fail_twice > app_main");

        let fault = |cause: u32, name: &str| {
            sig(&report(
                None,
                xtensa(cause, name, 0x5),
                vec![
                    frame(0x400d_4c01, &["fail_once"], 14),
                    frame(0x400d_66d4, &["app_main"], 20),
                ],
            ))
        };
        let load = fault(28, "LoadProhibitedCause");
        let store = fault(29, "StoreProhibitedCause");
        assert_eq!(load.text, "v1 | LoadProhibited | fail_once > app_main");
        assert_eq!(load.title, "LoadProhibited in fail_once");
        assert_ne!(load.hash, store.hash);
        assert_ne!(load.hash, base.hash);
        // Only the 4th frame differs: same signature (3 frames).
        let deep = |fourth: &str| {
            sig(&report(
                None,
                xtensa(28, "LoadProhibitedCause", 0),
                vec![
                    frame(0x400d_0001, &["a"], 1),
                    frame(0x400d_0002, &["b"], 2),
                    frame(0x400d_0003, &["c"], 3),
                    frame(0x400d_0004, &[fourth], 4),
                ],
            ))
        };
        assert_eq!(deep("d"), deep("e"));
        assert_eq!(deep("d").text, "v1 | LoadProhibited | a > b > c");
    }

    #[test]
    fn panic_rom_unsymbolised_and_trampoline_frames_are_skipped() {
        let mut unnamed = frame(0x400d_0100, &["x"], 1);
        unnamed.symbols[0].function = None;
        let r = report(
            None,
            xtensa(28, "LoadProhibitedCause", 0),
            vec![
                frame(0x4008_0000, &["_xt_user_exc"], 1),
                frame(0x4008_0010, &["xt_unhandled_exception"], 1),
                frame(0x4008_0020, &["esp_panic_handler"], 1),
                rom(0x4000_c2e0),
                Frame {
                    symbols: vec![],
                    ..frame(0x400d_0000, &["y"], 1)
                },
                unnamed,
                Frame {
                    in_firmware: false,
                    ..frame(0x4000_0400, &["ets_printf"], 1)
                },
                frame(0x400d_1000, &["parse_packet"], 10),
                frame(0x400d_2000, &["vPortTaskWrapper"], 1),
                frame(0x400d_3000, &["prvTaskExitError"], 1),
            ],
        );
        let s = sig(&r);
        assert_eq!(s.text, "v1 | LoadProhibited | parse_packet");
        assert!(!s.text.contains("ets_printf"));
    }

    #[test]
    fn inlined_functions_count_in_call_order_and_recursion_collapses() {
        // Innermost first: `checked_read` inlined into `parse`, then `handler`.
        let inlined = report(
            None,
            xtensa(28, "LoadProhibitedCause", 0),
            vec![
                frame(0x400d_0010, &["checked_read", "parse"], 5),
                frame(0x400d_0020, &["handler"], 9),
            ],
        );
        // The same source built without inlining.
        let called = report(
            None,
            xtensa(28, "LoadProhibitedCause", 0),
            vec![
                frame(0x400d_1010, &["checked_read"], 5),
                frame(0x400d_1020, &["parse"], 7),
                frame(0x400d_1030, &["handler"], 9),
            ],
        );
        assert_eq!(sig(&inlined), sig(&called));
        assert_eq!(
            sig(&inlined).text,
            "v1 | LoadProhibited | checked_read > parse > handler"
        );

        let recursion = |depth: usize| {
            let mut bt = vec![frame(0x400d_4c01, &["recur_func"], 70)];
            bt.extend((0..depth).map(|_| frame(0x400d_4bdc, &["recur_func"], 63)));
            bt.push(frame(0x400d_4c24, &["unaligned_ptr_task"], 80));
            bt.push(frame(0x4008_7cfc, &["vPortTaskWrapper"], 159));
            sig(&report(None, xtensa(29, "StoreProhibitedCause", 5), bt))
        };
        assert_eq!(recursion(2), recursion(7));
        assert_eq!(
            recursion(2).text,
            "v1 | StoreProhibited | recur_func > unaligned_ptr_task"
        );
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(
            normalize_text(
                "CORRUPT HEAP: Bad head at 0x3ffb1234. Expected 0xabba1234 got 0x3FFB1234"
            ),
            "CORRUPT HEAP: Bad head at #. Expected # got #"
        );
        assert_eq!(
            normalize_text("bad\n  thing  at 3ffb1234 line 42, core -1 | x"),
            "bad thing at # line #, core -# / x"
        );
        // Words that contain digits are names.
        assert_eq!(
            normalize_text("IDLE0 on CPU1 esp32 0xZZ"),
            "IDLE0 on CPU1 esp32 0xZZ"
        );
        assert!(normalize_text(&"x ".repeat(200)).chars().count() <= MAX_TEXT_CHARS);
        assert_eq!(normalize_text("  "), "");

        // Two builds of one custom abort message: same reason.
        let msg = |addr: u32, line: u32| {
            let text = format!("Custom fault in sensor.c:{line} handle=0x{addr:08x}");
            sig(&report(
                Some(&text),
                None,
                vec![frame(addr, &["sensor_poll"], line)],
            ))
        };
        assert_eq!(msg(0x3ffb_1000, 10), msg(0x3fc9_2000, 99));
        assert_eq!(
            msg(0x3ffb_1000, 10).text,
            "v1 | Custom fault in sensor.c:# handle=# | sensor_poll"
        );
    }

    #[test]
    fn panic_text_classes() {
        let with = |text: &str, bt: Vec<Frame>| sig(&report(Some(text), None, bt)).text;
        let caller = || frame(0x400d_0100, &["read_config"], 3);
        assert_eq!(
            with(
                "assert failed: read_config config.c:42 (len < 0x20)",
                vec![
                    frame(0x4008_0000, &["panic_abort"], 1),
                    frame(0x4008_0010, &["esp_system_abort"], 1),
                    frame(0x4008_0020, &["__assert_func"], 1),
                    caller(),
                ]
            ),
            "v1 | assert failed | read_config"
        );
        // Silent assertions print only an address: same class.
        assert_eq!(
            with("assert failed: 0x400d0103", vec![caller()]),
            "v1 | assert failed | read_config"
        );
        // Older ESP-IDF: assert reaches abort(); the frames refine the text.
        assert_eq!(
            with(
                "abort() was called at PC 0x400d2f1b on core 1",
                vec![
                    frame(0x4008_0020, &["abort"], 1),
                    frame(0x4008_0030, &["__assert_func"], 1),
                    caller(),
                ]
            ),
            "v1 | assert failed | read_config"
        );
        assert_eq!(
            with(
                "abort() was called at PC 0x400d2f1b on core 0",
                vec![
                    frame(0x4008_0020, &["abort"], 1),
                    frame(0x4008_0030, &["_esp_error_check_failed"], 1),
                    caller(),
                ]
            ),
            "v1 | ESP_ERROR_CHECK failed | read_config"
        );
        assert_eq!(
            with(
                "***ERROR*** A stack overflow in task sensor_7 has been detected.",
                vec![
                    frame(0x4008_0030, &["vApplicationStackOverflowHook"], 1),
                    frame(0x4008_0040, &["vTaskSwitchContext"], 1),
                ]
            ),
            "v1 | stack overflow in task sensor_7 | vTaskSwitchContext"
        );
        let twdt = |running: &str| {
            with(
                &format!(
                    "Task watchdog got triggered. The following tasks/users did not reset the watchdog in time:\n - \
                     wifi_mgr (CPU 1)\n - IDLE0 (CPU 0)\nTasks currently running:\nCPU 0: {running}\nCPU 1: IDLE1\n"
                ),
                vec![frame(0x4008_0050, &["task_wdt_isr"], 1)],
            )
        };
        assert_eq!(
            twdt("main"),
            "v1 | task watchdog: IDLE0, wifi_mgr | task_wdt_isr"
        );
        assert_eq!(twdt("main"), twdt("sensor"));
    }

    #[test]
    fn reasons_without_panic_text() {
        let frames = || {
            vec![
                frame(0x4008_0000, &["panic_abort"], 1),
                frame(0x4008_0030, &["vApplicationStackOverflowHook"], 1),
                frame(0x4008_0040, &["vTaskSwitchContext"], 1),
            ]
        };
        let mut r = report(None, xtensa(29, "StoreProhibitedCause", 0), frames());
        r.crashed_task_name = Some("net".into());
        assert_eq!(
            sig(&r).text,
            "v1 | stack overflow in task net | vTaskSwitchContext"
        );
        let r = report(
            None,
            None,
            vec![
                frame(0x4008_0000, &["esp_system_abort"], 1),
                frame(0x400d_0000, &["f"], 1),
            ],
        );
        assert_eq!(sig(&r).text, "v1 | system abort | f");
        // Interrupt watchdog: which CPU fired does not matter.
        let iwdt = |cause: u32, name: &str| {
            sig(&report(
                None,
                xtensa(cause, name, 0),
                vec![frame(0x400d_0000, &["spin"], 1)],
            ))
        };
        assert_eq!(
            iwdt(69, "InterruptWDTTimoutCPU0"),
            iwdt(70, "InterruptWDTTimoutCPU1")
        );
        assert_eq!(
            iwdt(69, "InterruptWDTTimoutCPU0").text,
            "v1 | InterruptWDTTimeout | spin"
        );
        // RISC-V exceptions use mcause names.
        let mut rv = report(
            None,
            Some(ExceptionInfo::RiscV {
                mcause: 5,
                cause_name: "Load access fault".into(),
                mtval: 0x10,
                mstatus: 0x1881,
                mepc: 0x4200_1234,
            }),
            vec![frame(0x4200_1234, &["read_reg"], 1)],
        );
        rv.arch = Arch::RiscV;
        assert_eq!(sig(&rv).text, "v1 | Load access fault | read_reg");
        // Frames but no reason at all.
        let r = report(None, None, vec![frame(0x400d_0000, &["f"], 1)]);
        assert_eq!(sig(&r).text, "v1 | unknown | f");
    }

    #[test]
    fn no_crashed_task_falls_back_to_reason_or_none() {
        let mut r = abort_report(0x4008_1000, 14, 0);
        r.tasks[0].crashed = false;
        r.crashed_task_tcb = None;
        let s = sig(&r);
        assert_eq!(s.text, "v1 | abort() | (no application frames)");
        assert_eq!(s.title, "abort()");
        r.panic_reason = None;
        r.exception = None;
        assert_eq!(crash_signature(&r), None);
        // A crashed task whose frames are all skipped and no reason: nothing to sign.
        let r = report(
            None,
            None,
            vec![
                rom(0x4000_0000),
                frame(0x4008_0000, &["vPortTaskWrapper"], 1),
            ],
        );
        assert_eq!(crash_signature(&r), None);
    }

    #[test]
    fn function_names_lose_build_noise() {
        assert_eq!(
            canonical_function("foo.constprop.0").as_deref(),
            Some("foo")
        );
        assert_eq!(canonical_function("foo.part.12").as_deref(), Some("foo"));
        assert_eq!(canonical_function("foo.cold").as_deref(), Some("foo"));
        assert_eq!(
            canonical_function("ns::Parser::feed(int) [clone .isra.0]").as_deref(),
            Some("ns::Parser::feed(int)")
        );
        assert_eq!(
            canonical_function("_ZN7sensors4poll17h0123456789abcdefE").as_deref(),
            Some("_ZN7sensors4pollE")
        );
        assert_eq!(
            canonical_function("_ZN7sensors4poll17h0123456789abcdefE.llvm.42").as_deref(),
            Some("_ZN7sensors4pollE")
        );
        assert_eq!(
            canonical_function("sensors::poll::h0123456789abcdef").as_deref(),
            Some("sensors::poll")
        );
        assert_eq!(canonical_function("a | b").as_deref(), Some("a / b"));
        assert_eq!(canonical_function("  ").as_deref(), None);
        assert_eq!(canonical_function(".L12").as_deref(), Some(".L12"));
        // Clones of one function in two builds: one signature.
        let s = |name: &str| {
            sig(&report(
                None,
                xtensa(28, "LoadProhibitedCause", 0),
                vec![frame(0x400d_0000, &[name], 1)],
            ))
        };
        assert_eq!(s("parse.constprop.0"), s("parse.isra.3"));
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in [
            "",
            "\u{0}",
            "é0x",
            "stack overflow in task ",
            "Task watchdog got triggered",
            "||||",
        ] {
            let r = report(Some(text), None, vec![frame(0x400d_0000, &["ü.0"], 1)]);
            let _ = crash_signature(&r);
            let _ = canonical_function(text);
            let _ = strip_rust_hash(text, "17h", "E");
        }
    }
}
