//! Parse latency per real core dump, with a dependency-free timing loop.
//!
//! For every case folder of the ESP test data (read at run time from
//! `$IOTSUPPORT_TESTDATA` or `<repo>/../shared/testdata/esp`, never copied
//! into the repo) and every input form (raw flash bytes, base64 UART text,
//! ELF core) it times:
//!
//! - `parse`: [`parse_dump`] only;
//! - `warm`: `parse_dump` + [`analyse_with`] against a [`Firmware`] loaded
//!   once (the server's cached path: its parse cache keeps loaded firmware);
//! - `cold`: `parse_dump` + [`analyse`] from the firmware ELF bytes, so the
//!   ELF (symbols, DWARF, CFI, TCB layout) is loaded on every iteration.
//!
//! Per case it also prints the heap a loaded firmware holds once every
//! input of the case was analysed (`fw MiB`, counted by a counting global
//! allocator: what the parse cache really keeps) next to
//! [`Firmware::approx_bytes`] (`est MiB`, what the cache charges against
//! `PARSE_CACHE_BYTES`); the estimate should not be below the heap.
//!
//! Each measurement warms up, then runs `N` iterations (`BENCH_ITERS`,
//! default 200; cold runs at most `BENCH_COLD_ITERS`, default 50) or until
//! `BENCH_MAX_SECS` (default 5 s) per measurement have elapsed, whichever
//! comes first (never fewer than 10), sorts the durations and prints p50 and
//! p99 in milliseconds. The goals (issue 18) are warm p50 < 5 ms and cold
//! p50 < 50 ms for every dump. `BENCH_CASE` limits the run to the case
//! folders whose name contains it.
//!
//! Run with `bench/coredump_parse.sh` or
//! `cargo bench -p esp-coredump --bench parse`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use esp_coredump::{analyse, analyse_with, parse_dump, Firmware};

const WARM_GOAL_MS: f64 = 5.0;
const COLD_GOAL_MS: f64 = 50.0;
const MIB: f64 = 1024.0 * 1024.0;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// What one case's firmware holds in memory.
struct Memory {
    name: String,
    /// After analysing the case's dumps.
    held: usize,
    /// After symbolising every function too.
    full: usize,
    /// `Firmware::approx_bytes`.
    estimate: usize,
}

/// The start address of every function symbol of an ELF.
fn function_addresses(elf: &[u8]) -> Vec<u32> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Ok(obj) = object::File::parse(elf) else {
        return Vec::new();
    };
    obj.symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| u32::try_from(s.address()).ok())
        .collect()
}
const WARMUP: usize = 3;
const MIN_ITERS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn testdata_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
        Some(d) => PathBuf::from(d),
        // CARGO_MANIFEST_DIR = <repo>/crates/esp-coredump
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/esp"),
    };
    dir.join("coredump").is_dir().then_some(dir)
}

/// The first file in `dir` whose name satisfies `pred`.
fn file_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    files.sort();
    files.into_iter().next()
}

/// p50 and p99 (nearest rank) of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[i - 1].as_secs_f64() * 1e3
    };
    (rank(0.50), rank(0.99))
}

/// Time `f`: warm-up, then up to `iters` runs or `max` elapsed.
fn measure(iters: usize, max: Duration, mut f: impl FnMut()) -> (f64, f64, usize) {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples = Vec::with_capacity(iters);
    let start = Instant::now();
    while samples.len() < iters.max(1) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
        if samples.len() >= MIN_ITERS && start.elapsed() >= max {
            break;
        }
    }
    let n = samples.len();
    let (p50, p99) = percentiles(&mut samples);
    (p50, p99, n)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // only wants to know that the target builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("SKIP: run with `cargo bench -p esp-coredump --bench parse`");
        return;
    }
    let Some(dir) = testdata_dir() else {
        println!(
            "SKIP: ESP testdata not found (set IOTSUPPORT_TESTDATA or provide ../shared/testdata/esp)"
        );
        return;
    };
    let iters = env_usize("BENCH_ITERS", 200);
    let cold_iters = env_usize("BENCH_COLD_ITERS", 50).min(iters);
    let max = Duration::from_secs_f64(env_usize("BENCH_MAX_SECS", 5) as f64);

    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.join("coredump"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    if let Ok(filter) = std::env::var("BENCH_CASE") {
        cases.retain(|c| c.to_string_lossy().contains(&filter));
    }

    println!(
        "{:<32} {:<6} {:>7} {:>8} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
        "case",
        "input",
        "bytes",
        "elf KiB",
        "parse50",
        "parse99",
        "warm50",
        "warm99",
        "cold50",
        "cold99"
    );
    let mut memory = Vec::new();
    let mut worst_warm: f64 = 0.0;
    let mut worst_cold: f64 = 0.0;
    let mut failures = 0;
    for case in &cases {
        let name = case.file_name().unwrap_or_default().to_string_lossy();
        let Some(elf_path) = file_with(case, |n| n.ends_with(".elf") && !n.ends_with(".core.elf"))
        else {
            println!("{name:<32} SKIP: no firmware ELF");
            continue;
        };
        let elf = std::fs::read(&elf_path).expect("read firmware ELF");
        let before = allocated();
        let fw = match Firmware::new(&elf) {
            Ok(fw) => fw,
            Err(e) => {
                println!("{name:<32} FAIL: firmware ELF: {e}");
                failures += 1;
                continue;
            }
        };
        for (label, suffix) in [("raw", ".bin"), ("b64", ".b64"), ("core", ".core.elf")] {
            let Some(path) = file_with(case, |n| n.ends_with(suffix)) else {
                continue;
            };
            let input = std::fs::read(&path).expect("read dump");
            let dump = match parse_dump(&input) {
                Ok(d) => d,
                Err(e) => {
                    println!("{name:<32} {label:<6} FAIL: parse: {e}");
                    failures += 1;
                    continue;
                }
            };
            if let Err(e) = analyse_with(&dump, &fw) {
                println!("{name:<32} {label:<6} FAIL: analyse: {e}");
                failures += 1;
                continue;
            }
            let (p50, p99, _) = measure(iters, max, || {
                black_box(parse_dump(black_box(&input)).ok());
            });
            let (w50, w99, _) = measure(iters, max, || {
                let d = parse_dump(black_box(&input)).expect("parse");
                black_box(analyse_with(&d, &fw).ok());
            });
            // What the loaded firmware holds after this input (measured before the cold runs,
            // which allocate firmware of their own).
            let held = allocated().saturating_sub(before);
            let (c50, c99, cn) = measure(cold_iters, max, || {
                let d = parse_dump(black_box(&input)).expect("parse");
                black_box(analyse(&d, black_box(&elf)).ok());
            });
            if memory.last().map(|m: &Memory| &m.name) != Some(&name.to_string()) {
                memory.push(Memory {
                    name: name.to_string(),
                    held,
                    full: 0,
                    estimate: fw.approx_bytes(),
                });
            } else if let Some(m) = memory.last_mut() {
                m.held = m.held.max(held);
            }
            worst_warm = worst_warm.max(w50);
            worst_cold = worst_cold.max(c50);
            println!(
                "{name:<32} {label:<6} {:>7} {:>8} | {p50:>8.3} {p99:>8.3} | {w50:>8.3} {w99:>8.3} | {c50:>8.3} {c99:>8.3}{}",
                input.len(),
                elf.len() / 1024,
                if cn < cold_iters { format!("  (cold n={cn})") } else { String::new() },
            );
        }
        if let Some(m) = memory.last_mut().filter(|m| m.name == name) {
            let addresses = function_addresses(&elf);
            let before_walk = allocated();
            for addr in addresses {
                black_box(fw.symbolize(addr));
            }
            // Not counting the walk's own (freed) results, only what the firmware kept.
            m.full = m.held + allocated().saturating_sub(before_walk);
        }
    }
    println!(
        "times in ms; warm = parse_dump + analyse_with (Firmware loaded once), cold = parse_dump + analyse (ELF loaded each time)"
    );
    println!(
        "worst p50: warm {worst_warm:.3} ms ({}; goal < {WARM_GOAL_MS} ms), cold {worst_cold:.3} ms ({}; goal < {COLD_GOAL_MS} ms)",
        if worst_warm < WARM_GOAL_MS { "OK" } else { "OVER" },
        if worst_cold < COLD_GOAL_MS { "OK" } else { "OVER" },
    );
    println!();
    println!(
        "{:<32} {:>8} {:>9} {:>8} {:>8}",
        "firmware memory", "fw MiB", "full MiB", "est MiB", "est/full"
    );
    for m in &memory {
        println!(
            "{:<32} {:>8.2} {:>9.2} {:>8.2} {:>8.2}",
            m.name,
            m.held as f64 / MIB,
            m.full as f64 / MIB,
            m.estimate as f64 / MIB,
            m.estimate as f64 / m.full.max(1) as f64
        );
    }
    println!("fw MiB: heap held by a loaded Firmware after analysing the case's dumps; full MiB: after symbolising every function of the ELF too (all DWARF units parsed); est MiB: Firmware::approx_bytes, what the service's parse cache charges against PARSE_CACHE_BYTES");
    if failures > 0 {
        println!("{failures} case(s) failed");
        std::process::exit(1);
    }
}
