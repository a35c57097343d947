//! Shared helpers for the integration tests: locating the third-party ESP
//! test data (never copied into the repository) and parsing esp-coredump's
//! expected_output.txt into comparable facts.

#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

/// The `esp` test data folder: `$IOTSUPPORT_TESTDATA`, else
/// `<repo root>/../shared/testdata/esp`. Prints a SKIP line and returns None
/// when absent.
pub fn testdata_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => {
            // CARGO_MANIFEST_DIR = <repo>/crates/esp-coredump
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.join("../../../shared/testdata/esp")
        }
    };
    if dir.join("coredump").is_dir() {
        Some(dir)
    } else {
        println!("SKIP: ESP testdata not found at {}", dir.display());
        None
    }
}

/// One core dump test case folder.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
}

impl Case {
    fn file_with(&self, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
            .collect();
        files.sort();
        files.into_iter().next()
    }
    pub fn b64(&self) -> Vec<u8> {
        fs::read(self.file_with(|n| n.ends_with(".b64")).expect("b64")).expect("read b64")
    }
    pub fn raw(&self) -> Vec<u8> {
        fs::read(self.file_with(|n| n.ends_with(".bin")).expect("bin")).expect("read bin")
    }
    pub fn core_elf(&self) -> Vec<u8> {
        fs::read(
            self.file_with(|n| n.ends_with(".core.elf"))
                .expect("core.elf"),
        )
        .expect("read core.elf")
    }
    pub fn firmware_elf(&self) -> Vec<u8> {
        fs::read(
            self.file_with(|n| n.ends_with(".elf") && !n.ends_with(".core.elf"))
                .expect("firmware elf"),
        )
        .expect("read elf")
    }
    pub fn expected(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("expected_output.txt")).ok()
    }
}

/// All case folders, sorted by name.
pub fn cases() -> Option<Vec<Case>> {
    let root = testdata_dir()?.join("coredump");
    let mut v: Vec<Case> = fs::read_dir(&root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| Case {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Some(v)
}

/// One frame line of gdb's `bt` output.
#[derive(Debug, Clone)]
pub struct ExpFrame {
    pub pc: Option<u32>,
    pub function: String,
    pub has_source: bool,
}

/// Facts parsed from an esp-coredump expected_output.txt.
#[derive(Debug, Default)]
pub struct Expected {
    pub crashed_tcb: Option<u32>,
    pub crashed_name: Option<String>,
    pub isr: Option<bool>,
    pub panic_reason: Option<String>,
    pub exccause: Option<(u32, String)>,
    pub excvaddr: Option<u32>,
    pub registers: Vec<(String, u32)>,
    pub backtrace: Vec<ExpFrame>,
    /// (tcb, name) from the THREAD banners, in order.
    pub threads: Vec<(u32, String)>,
    /// (tcb, name, prio, base prio, used, free) from the task table, if present.
    pub table: Vec<(u32, String, u32, u32, u32, u32)>,
    /// Backtrace per THREAD banner.
    pub thread_backtraces: Vec<Vec<ExpFrame>>,
}

fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn parse_frame(line: &str) -> Option<ExpFrame> {
    let rest = line.strip_prefix('#')?;
    let rest = rest.split_once(char::is_whitespace)?.1.trim_start();
    let (pc, rest) = if rest.starts_with("0x") {
        let (addr, r) = rest.split_once(" in ")?;
        (hex(addr), r)
    } else {
        (None, rest)
    };
    let function = rest.split(" (").next()?.trim().to_string();
    Some(ExpFrame {
        pc,
        function,
        has_source: rest.contains(") at "),
    })
}

/// Parse esp-coredump's report text.
pub fn parse_expected(text: &str) -> Expected {
    let mut e = Expected::default();
    let mut section = "";
    for line in text.lines() {
        if line.starts_with("====") {
            section = if line.contains("CURRENT THREAD REGISTERS") {
                "regs"
            } else if line.contains("CURRENT THREAD STACK") {
                "stack"
            } else if line.contains("THREADS INFO") {
                "threads"
            } else if line.contains("THREAD ") && line.contains("(TCB: ") {
                let inner = line.split("(TCB: ").nth(1).unwrap_or("");
                let tcb = inner.split(',').next().and_then(hex).unwrap_or(0);
                let name = inner
                    .split("name: '")
                    .nth(1)
                    .and_then(|s| s.split('\'').next())
                    .unwrap_or("")
                    .to_string();
                e.threads.push((tcb, name));
                e.thread_backtraces.push(Vec::new());
                "thread"
            } else if line.contains("MEMORY") {
                "memory"
            } else {
                ""
            };
            continue;
        }
        if let Some(r) = line.strip_prefix("Crashed task handle: ") {
            e.crashed_tcb = r.split(',').next().and_then(hex);
            e.crashed_name = r
                .split("name: '")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .map(str::to_string);
        } else if line == "Crashed task is not in the interrupt context" {
            e.isr = Some(false);
        } else if line == "Crash happened in the interrupt context" {
            e.isr = Some(true);
        } else if let Some(r) = line.strip_prefix("Panic reason: ") {
            e.panic_reason = Some(r.to_string());
        }
        match section {
            "regs" => {
                let mut parts = line.split_whitespace();
                let (Some(name), Some(val)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if name == "exccause" {
                    let n = line.split('(').nth(1).unwrap_or("").trim_end_matches(')');
                    e.exccause = hex(val).map(|v| (v, n.to_string()));
                } else if name == "excvaddr" {
                    e.excvaddr = hex(val);
                } else if let Some(v) = hex(val).filter(|_| val.starts_with("0x")) {
                    e.registers.push((name.to_string(), v));
                }
            }
            "stack" => {
                if let Some(f) = parse_frame(line) {
                    e.backtrace.push(f);
                }
            }
            "threads" => {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() == 4 && cols[0].starts_with("0x") {
                    let (p, b) = cols[2].split_once('/').unwrap_or(("", ""));
                    let (u, f) = cols[3].split_once('/').unwrap_or(("", ""));
                    if let (Some(tcb), Ok(p), Ok(b), Ok(u), Ok(f)) =
                        (hex(cols[0]), p.parse(), b.parse(), u.parse(), f.parse())
                    {
                        e.table.push((tcb, cols[1].to_string(), p, b, u, f));
                    }
                }
            }
            "thread" => {
                if let (Some(f), Some(bt)) = (parse_frame(line), e.thread_backtraces.last_mut()) {
                    bt.push(f);
                }
            }
            _ => {}
        }
    }
    e
}

/// Application frames of a gdb backtrace: frames with source info, plus
/// `__GNU_EH_FRAME_HDR` placeholders (MANIFEST caveat 3), kept as `*`.
pub fn expected_app_functions(frames: &[ExpFrame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.has_source || f.function == "__GNU_EH_FRAME_HDR")
        .map(|f| {
            if f.function == "__GNU_EH_FRAME_HDR" {
                "*".to_string()
            } else {
                f.function.clone()
            }
        })
        .collect()
}

/// Application frames (function names with source info) of our backtrace,
/// inlined functions expanded, innermost first.
pub fn our_app_functions(frames: &[esp_coredump::Frame]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| f.symbols.iter())
        .filter(|s| s.file.is_some())
        .filter_map(|s| s.function.clone())
        .collect()
}

/// Compare names allowing `*` wildcards on the expected side.
pub fn names_match(expected: &[String], ours: &[String]) -> bool {
    expected.len() == ours.len() && expected.iter().zip(ours).all(|(e, o)| e == "*" || e == o)
}
