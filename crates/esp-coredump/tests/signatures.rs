//! Crash signatures of every real dump in the test data: they exist, carry no
//! numbers, agree across the b64, raw and ELF-core encodings, name the
//! functions esp-coredump's own backtrace shows (derived from
//! expected_output.txt where the case ships one), and group the cases exactly
//! as the crash programs they come from.
//!
//! The test data holds two crash programs of Espressif's `test_core_dump` app:
//! an `abort()` in `fail_once` called from `app_main` (every `*_abort` case:
//! six builds on five chips, ESP-IDF v5.1 to v6.0, ELF and binary formats), and
//! a store to address 5 in the recursive `recur_func` of the
//! `unaligned_ptr_task` task (the two `*_v2_0_*` cases, one Xtensa and one
//! RISC-V build of ESP-IDF v4.4; MANIFEST caveat 4 names `recur_func`). The
//! abort is one crash everywhere; the store fault is one crash per
//! architecture, because the exception names are each architecture's own.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use esp_coredump::{
    analyse_with, crash_signature, parse_dump, Arch, BuildCheck, CrashReport, CrashSignature,
    Firmware, OTHER_BUILD,
};

/// Functions of the crashed tasks' backtraces in this data that are not
/// application frames under the signature rule: ESP-IDF's abort path and task
/// entry trampolines (listed here independently of the implementation).
const NOT_APP: &[&str] = &[
    "panic_abort",
    "esp_system_abort",
    "abort",
    "main_task",
    "vPortTaskWrapper",
];

fn sign(input: &[u8], fw: &Firmware) -> (CrashReport, CrashSignature) {
    let dump = parse_dump(input).expect("dump parses");
    let report = analyse_with(&dump, fw).expect("report");
    let sig = crash_signature(&report).expect("every real dump has a signature");
    (report, sig)
}

/// `v1 | reason | f1 > f2 > f3` → (reason, frames, false); with a fourth field
/// [`OTHER_BUILD`] (a dump read against another build's ELF), true.
fn parts(text: &str) -> (String, Vec<String>, bool) {
    let fields: Vec<&str> = text.split(" | ").collect();
    let other_build = match fields.as_slice() {
        [_, _, _] => false,
        [_, _, _, last] if *last == OTHER_BUILD => true,
        _ => panic!("three fields, or four ending in {OTHER_BUILD:?}, in {text:?}"),
    };
    assert_eq!(fields[0], "v1", "version field of {text:?}");
    let frames = fields[2].split(" > ").map(str::to_string).collect();
    (fields[1].to_string(), frames, other_build)
}

/// No addresses, numbers, file names or line numbers in the text.
fn assert_no_numbers(name: &str, text: &str) {
    for token in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        assert!(
            !token.starts_with("0x") && !token.starts_with("0X"),
            "{name}: hex address {token:?} in {text:?}"
        );
        assert!(
            token.is_empty() || !token.chars().all(|c| c.is_ascii_digit()),
            "{name}: number {token:?} in {text:?}"
        );
    }
    for file in [".c", ".h", ".cpp", ".S", ".rs"] {
        assert!(!text.contains(file), "{name}: file name in {text:?}");
    }
}

/// The crash program (and, for CPU exceptions, the architecture) of a case,
/// from the case name and the MANIFEST.
fn crash_class(case: &str, arch: Arch) -> String {
    if case.ends_with("_abort") {
        "abort() in fail_once".into()
    } else if case.contains("_v2_0_store") {
        format!("store fault in recur_func on {arch:?}")
    } else {
        panic!("{case}: unknown crash program; add it to crash_class")
    }
}

struct Signed {
    name: String,
    arch: Arch,
    report: CrashReport,
    sig: CrashSignature,
}

#[test]
fn signatures_of_all_real_dumps() {
    let Some(cases) = common::cases() else { return };
    assert!(
        cases.len() >= 9,
        "expected the 9 MANIFEST cases, found {}",
        cases.len()
    );
    let mut signed: Vec<Signed> = Vec::new();
    let mut derived = 0;
    println!("{:<32} {:<7} signature text", "case", "arch");
    for case in &cases {
        let name = &case.name;
        let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
        let (report, sig) = sign(&case.b64(), &fw);
        let (_, raw) = sign(&case.raw(), &fw);
        let (_, core) = sign(&case.core_elf(), &fw);
        assert_eq!(raw, sig, "{name}: raw vs b64 signature");
        assert_eq!(core, sig, "{name}: ELF core vs b64 signature");
        println!(
            "{name:<32} {:<7} {}",
            format!("{:?}", report.arch),
            sig.text
        );

        assert_eq!(sig.hash.len(), 64, "{name}: hash length");
        assert!(sig
            .hash
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_no_numbers(name, &sig.text);
        let (reason, frames, other_build) = parts(&sig.text);
        assert!(
            !frames.is_empty() && frames.len() <= 3,
            "{name}: frames {frames:?}"
        );
        // The `*_v2_0_*` dumps record another ELF's SHA-256 than their case's
        // (MANIFEST caveat 4): their signatures say so; no other does.
        assert_eq!(
            other_build,
            name.contains("_v2_0_"),
            "{name}: build check {:?}",
            report.build_check
        );
        assert_eq!(other_build, report.build_check == BuildCheck::Mismatch);
        let suffix = if other_build {
            format!(" ({OTHER_BUILD})")
        } else {
            String::new()
        };
        assert_eq!(
            sig.title,
            format!("{reason} in {}{suffix}", frames[0]),
            "{name}: title"
        );
        for f in &frames {
            assert!(
                !NOT_APP.contains(&f.as_str()),
                "{name}: {f} is not an app frame"
            );
        }
        assert!(
            frames.windows(2).all(|w| w[0] != w[1]),
            "{name}: recursion not collapsed in {frames:?}"
        );

        // Cases with esp-coredump's output: derive the expected reason and
        // frames from gdb's backtrace of the crashed task.
        if let Some(text) = case.expected() {
            let exp = common::parse_expected(&text);
            assert!(
                !exp.backtrace.is_empty(),
                "{name}: no backtrace in expected output"
            );
            let aborted = exp
                .panic_reason
                .as_deref()
                .is_some_and(|p| p.starts_with("abort() was called"))
                || exp.backtrace.iter().any(|f| f.function == "abort");
            let want_reason = if aborted {
                "abort()".to_string()
            } else {
                let (_, cause) = exp.exccause.clone().expect("exccause in expected output");
                cause.trim_end_matches("Cause").to_string()
            };
            assert_eq!(reason, want_reason, "{name}: reason");
            // Source-level frames as gdb printed them (`*` for MANIFEST caveat
            // 3's `__GNU_EH_FRAME_HDR`), without the abort path and trampolines,
            // recursion collapsed, first three.
            let mut want: Vec<String> = Vec::new();
            for f in common::expected_app_functions(&exp.backtrace) {
                if NOT_APP.contains(&f.as_str()) || (f != "*" && want.last() == Some(&f)) {
                    continue;
                }
                want.push(f);
            }
            want.truncate(3);
            assert!(
                common::names_match(&want, &frames),
                "{name}: signature frames\n expected {want:?}\n got      {frames:?}"
            );
            derived += 1;
        }
        signed.push(Signed {
            name: name.clone(),
            arch: report.arch,
            report,
            sig,
        });
    }
    assert!(derived >= 5, "expected outputs used: {derived}");
    let archs: BTreeSet<String> = signed.iter().map(|s| format!("{:?}", s.arch)).collect();
    assert_eq!(archs.len(), 2, "both Xtensa and RISC-V covered: {archs:?}");

    // Same crash program → same signature; different crash → different.
    let mut by_class: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_hash: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &signed {
        let class = crash_class(&s.name, s.arch);
        by_class
            .entry(class.clone())
            .or_default()
            .insert(s.sig.hash.clone());
        by_hash.entry(s.sig.hash.clone()).or_default().insert(class);
        let (_, frames, _) = parts(&s.sig.text);
        let first = if s.name.ends_with("_abort") {
            "fail_once"
        } else {
            "recur_func"
        };
        assert_eq!(frames[0], first, "{}: first application frame", s.name);
    }
    for (class, hashes) in &by_class {
        assert_eq!(
            hashes.len(),
            1,
            "{class}: one crash, {} signatures",
            hashes.len()
        );
    }
    for (hash, classes) in &by_hash {
        assert_eq!(classes.len(), 1, "{hash}: one signature for {classes:?}");
    }
    assert_eq!(by_hash.len(), 3, "three distinct crashes in the test data");

    // The same source built twice for one chip (ESP-IDF v5.3-dev and
    // v5.4-dev, other addresses; for esp32 also ELF vs binary data format,
    // the esp32c3 "binconfig" build still wrote an ELF dump): one signature.
    let get = |n: &str| signed.iter().find(|s| s.name == n).expect(n);
    for (a, b, formats_differ) in [
        ("esp32_elf_crc32_abort", "esp32_bin_v2_1_abort", true),
        ("esp32c3_elf_crc32_abort", "esp32c3_binconfig_abort", false),
    ] {
        let (a, b) = (get(a), get(b));
        assert_ne!(a.report.firmware_elf_sha256, b.report.firmware_elf_sha256);
        assert_eq!(
            a.report.data_format != b.report.data_format,
            formats_differ,
            "{} vs {}: data formats",
            a.name,
            b.name
        );
        let pc_of = |s: &Signed| {
            s.report
                .crashed_task()
                .and_then(|t| {
                    t.backtrace.iter().find(|f| {
                        f.symbols
                            .iter()
                            .any(|x| x.function.as_deref() == Some("fail_once"))
                    })
                })
                .map(|f| f.pc)
                .expect("fail_once frame")
        };
        assert_ne!(
            pc_of(a),
            pc_of(b),
            "{} vs {}: builds differ in addresses",
            a.name,
            b.name
        );
        assert_eq!(a.sig, b.sig, "{} vs {}", a.name, b.name);
    }
}
