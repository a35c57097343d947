//! Parse latency per real core dump, with a dependency-free timing loop.
//!
//! For every case folder of the ESP test data (read at run time from
//! `$IOTSUPPORT_TESTDATA` or `<repo>/../shared/testdata/esp`, never copied
//! into the repo) and every input form (raw flash bytes, base64 UART text,
//! ELF core) it times:
//!
//! - `parse`: [`parse_dump`] only;
//! - `warm`: `parse_dump` + [`analyse_with`] against a [`Firmware`] loaded
//!   once (the server's cached path);
//! - `cold`: `parse_dump` + [`analyse`] from the firmware ELF bytes, so the
//!   ELF (symbols, DWARF, CFI) is loaded on every iteration.
//!
//! Each measurement warms up, then runs `N` iterations (`BENCH_ITERS`,
//! default 200; cold runs at most `BENCH_COLD_ITERS`, default 50) or until
//! `BENCH_MAX_SECS` (default 5 s) per measurement have elapsed, whichever
//! comes first (never fewer than 10), sorts the durations and prints p50 and
//! p99 in milliseconds. The goal is p50 < 50 ms.
//!
//! Run with `bench/coredump_parse.sh` or
//! `cargo bench -p esp-coredump --bench parse`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use esp_coredump::{analyse, analyse_with, parse_dump, Firmware};

const GOAL_MS: f64 = 50.0;
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
            let (c50, c99, cn) = measure(cold_iters, max, || {
                let d = parse_dump(black_box(&input)).expect("parse");
                black_box(analyse(&d, black_box(&elf)).ok());
            });
            worst_warm = worst_warm.max(w50);
            worst_cold = worst_cold.max(c50);
            println!(
                "{name:<32} {label:<6} {:>7} {:>8} | {p50:>8.3} {p99:>8.3} | {w50:>8.3} {w99:>8.3} | {c50:>8.3} {c99:>8.3}{}",
                input.len(),
                elf.len() / 1024,
                if cn < cold_iters { format!("  (cold n={cn})") } else { String::new() },
            );
        }
    }
    println!(
        "times in ms; warm = parse_dump + analyse_with (Firmware loaded once), cold = parse_dump + analyse (ELF loaded each time)"
    );
    println!(
        "worst p50: warm {worst_warm:.3} ms ({}), cold {worst_cold:.3} ms ({}); goal p50 < {GOAL_MS} ms",
        if worst_warm < GOAL_MS { "OK" } else { "OVER" },
        if worst_cold < GOAL_MS { "OK" } else { "OVER" },
    );
    if failures > 0 {
        println!("{failures} case(s) failed");
        std::process::exit(1);
    }
}
