//! `iotsupport parse-coredump <dump> <elf> [--json]` on the real dumps of
//! `../shared/testdata/esp/coredump` (never copied into the repository): the report on stdout,
//! exit 1 with an `error:` line for a malformed dump or an unreadable file, and no database,
//! object store or network touched.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::coredumps::testdata_dir;

const BIN: &str = env!("CARGO_BIN_EXE_iotsupport");

/// Runs the binary in `dir` with a configuration that would fail loudly if anything connected:
/// a PostgreSQL URL and an S3 endpoint on a port where nothing listens; and with a setting only
/// `serve` reads that is not valid, which must not matter here.
fn run(dir: &Path, args: &[&str]) -> Output {
    let dead = format!("127.0.0.1:{}", crate::helpers::free_port());
    Command::new(BIN)
        .arg("parse-coredump")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", format!("postgres://u:p@{dead}/db"))
        .env("S3_ENDPOINT_URL", format!("http://{dead}"))
        .env("HTTP_MAX_CONNECTIONS", "none")
        .output()
        .expect("run iotsupport")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn parse_coredump_prints_the_crash_report_of_real_dumps() {
    let Some(root) = testdata_dir() else {
        return;
    };
    let work = tempfile::TempDir::new().unwrap();
    // (case, dump file, ELF, crashed task) — raw, base64 and ELF-core inputs; Xtensa and RISC-V.
    for (case, dump, elf) in [
        ("esp32_elf_crc32_abort", "coredump.bin", "esp32.elf"),
        ("esp32_bin_v2_1_abort", "coredump_bin.b64", "esp32_bin.elf"),
        (
            "esp32c3_elf_crc32_abort",
            "coredump.core.elf",
            "esp32c3.elf",
        ),
    ] {
        let dir = root.join(case);
        if !dir.join(dump).exists() {
            eprintln!("SKIP: {case}/{dump} not present");
            continue;
        }
        let dump = dir.join(dump).display().to_string();
        let elf = dir.join(elf).display().to_string();
        let output = run(work.path(), &[&dump, &elf]);
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "{case}: {}\n{}",
            text(&output.stderr),
            stdout
        );
        assert!(stdout.contains("CORE DUMP START"), "{case}: {stdout}");
        assert!(stdout.contains("Crashed task handle"), "{case}: {stdout}");
        assert!(stdout.contains("name: 'main'"), "{case}: {stdout}");

        let output = run(work.path(), &[&dump, &elf, "--json"]);
        assert!(output.status.success(), "{case}: {}", text(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
        assert_eq!(report["crashed_task_name"], "main", "{case}");
        assert!(
            report["chip"].as_str().unwrap().starts_with("esp32"),
            "{case}"
        );
        assert!(report["tasks"].as_array().is_some_and(|t| !t.is_empty()));
    }
    assert!(
        std::fs::read_dir(work.path()).unwrap().next().is_none(),
        "parse-coredump created files (a database?) in its working directory"
    );
}

#[test]
fn parse_coredump_fails_with_an_error_line_on_bad_input() {
    let work = tempfile::TempDir::new().unwrap();
    let garbage = work.path().join("garbage.dmp");
    std::fs::write(&garbage, b"this is not a core dump at all").unwrap();
    let elf = match testdata_dir() {
        Some(root) => root.join("esp32_elf_crc32_abort/esp32.elf"),
        None => garbage.clone(),
    };
    let (garbage, elf) = (garbage.display().to_string(), elf.display().to_string());

    let output = run(work.path(), &[&garbage, &elf]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("garbage.dmp"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = run(work.path(), &["/nonexistent/dump.bin", &elf]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot read /nonexistent/dump.bin"),
        "{stderr}"
    );

    let output = run(work.path(), &[&garbage]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "missing argument is a usage error"
    );
}
