//! Byte-for-byte comparison with Espressif's own generator.
//!
//! `espressif_gen.py` (beside this file) writes each case with
//! `esp-idf-nvs-partition-gen` 0.2.0 from PyPI, called as the Python service
//! called it; every image must equal ours, and every input it refuses we must
//! refuse too.
//!
//! The interpreter is `$IOTSUPPORT_NVS_GEN_PYTHON`, else the virtualenv that
//! `scripts/test.sh` fills (`${XDG_CACHE_HOME:-~/.cache}/iotsupport-test/venv`).
//! Without it, or without the module, the test prints `SKIP: …` and passes,
//! unless `IOTSUPPORT_TEST_REQUIRE_SERVICES=1`, when it fails. To set it up by
//! hand:
//!
//! ```sh
//! python3 -m venv ~/.cache/iotsupport-test/venv
//! ~/.cache/iotsupport-test/venv/bin/pip install 'esp-idf-nvs-partition-gen==0.2.0'
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use esp_nvs_image::provisioning_image;
use serde_json::{json, Value};

/// Exit status of the script when the generator module is not installed.
const MODULE_MISSING: i32 = 3;

struct Case {
    name: String,
    size: usize,
    entries: Vec<(String, String)>,
}

impl Case {
    fn new(name: impl Into<String>, size: usize, entries: &[(&str, &str)]) -> Case {
        Case {
            name: name.into(),
            size,
            entries: entries
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    fn ours(&self) -> Result<Vec<u8>, esp_nvs_image::NvsError> {
        let entries: Vec<(&str, Option<&str>)> = self
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str())))
            .collect();
        provisioning_image("prov", &entries, self.size)
    }
}

const GOLDEN: [(&str, &str); 8] = [
    ("device_key", "abc12345"),
    ("client_id", "iotdevice-thermo-abc12345"),
    ("client_secret", "secret123"),
    (
        "token_url",
        "https://auth.example.com/realms/iot/protocol/openid-connect/token",
    ),
    ("base_url", "http://localhost:3200"),
    ("mqtt_url", "mqtt://mqtt.example.com:1883"),
    ("wifi_ssid", "TestNetwork"),
    ("wifi_password", "test-wifi-password"),
];

fn keys() -> impl Iterator<Item = &'static str> {
    GOLDEN.iter().map(|&(k, _)| k)
}

/// The provisioning keys, each with `value(i, key)`.
fn provisioning(name: &str, size: usize, value: impl Fn(usize, &str) -> String) -> Case {
    Case {
        name: name.into(),
        size,
        entries: keys()
            .enumerate()
            .map(|(i, k)| (k.to_owned(), value(i, k)))
            .collect(),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for size in [0x3000, 0x5000, 0x6000] {
        cases.push(Case::new(format!("golden at {size:#x}"), size, &GOLDEN));
    }
    // Values over several 32-byte entries, including the 31/32/33-byte edges.
    cases.push(provisioning("long values", 0x3000, |i, _| {
        "v".repeat(30 + i * 45)
    }));
    for len in [30, 31, 32, 33, 63, 64, 65] {
        cases.push(provisioning(
            &format!("values of {len} bytes"),
            0x3000,
            |_, _| "w".repeat(len),
        ));
    }
    // 8 values of 20 entries each cannot share page 0: page changes.
    for size in [0x3000, 0x5000, 0x6000] {
        cases.push(provisioning(
            &format!("page change at {size:#x}"),
            size,
            |i, _| char::from(b'A' + i as u8).to_string().repeat(600),
        ));
    }
    // Page 0 holds 96 entries after "a"; "b" of 30 entries would fill it
    // exactly (moves to page 1), of 29 it leaves one free (stays).
    let a = "q".repeat(3000);
    let exact = "r".repeat(29 * 32 - 1);
    let one_less = "r".repeat(28 * 32 - 1);
    cases.push(Case::new(
        "exactly fills a page",
        0x3000,
        &[("a", &a), ("b", &exact)],
    ));
    cases.push(Case::new(
        "one entry short of a full page",
        0x3000,
        &[("a", &a), ("b", &one_less)],
    ));
    let longest = "m".repeat(3967);
    cases.push(Case::new("the longest string", 0x3000, &[("a", &longest)]));
    let big = "s".repeat(3900);
    cases.push(Case::new(
        "all three pages",
        0x3000,
        &[("a", &big), ("b", &big), ("c", &big), ("d", "t")],
    ));
    // Unicode: sized in UTF-8 bytes, also across a page change.
    cases.push(provisioning("unicode", 0x3000, |_, k| {
        format!("Café ☕ 東京 😀 {k}")
    }));
    cases.push(provisioning("unicode over pages", 0x5000, |i, _| {
        ["é", "☕", "😀", "ü"][i % 4].repeat(150 + i * 40)
    }));
    cases.push(Case::new("Café", 0x3000, &[("wifi_ssid", "Café")]));
    // Odd but accepted: surrounding whitespace, a NUL inside, a 15-char key,
    // no entries at all.
    cases.push(Case::new(
        "odd values",
        0x3000,
        &[
            ("a", " padded "),
            ("b", "nul\0inside"),
            ("key_of_15_chars", "x"),
        ],
    ));
    cases.push(Case::new("namespace only", 0x3000, &[]));
    // Refused by both: a fourth full page, strings over the limit.
    cases.push(Case::new(
        "one page too many",
        0x3000,
        &[("a", &big), ("b", &big), ("c", &big), ("d", &big)],
    ));
    for len in [3968, 3999, 4000, 4001] {
        let value = "z".repeat(len);
        cases.push(Case::new(
            format!("string of {len} bytes"),
            0x3000,
            &[("a", &value)],
        ));
    }
    cases.extend(random_cases(60));
    cases
}

/// Deterministic random layouts: many entries of mixed lengths and scripts,
/// so that page changes happen at many different points.
fn random_cases(count: usize) -> Vec<Case> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = ['a', 'Z', '7', '-', ' ', 'é', '€', '😀'];
    (0..count)
        .map(|n| {
            let size = [0x3000, 0x4000, 0x5000, 0x6000][(next() % 4) as usize];
            let entries = (0..1 + next() % 24)
                .map(|i| {
                    let len = match next() % 3 {
                        0 => next() % 40,
                        1 => next() % 400,
                        _ => next() % 1500,
                    };
                    let mut value: String = (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect();
                    value.insert(0, 'v'); // never blank
                    (format!("k{i}"), value)
                })
                .collect();
            Case {
                name: format!("random {n}"),
                size,
                entries,
            }
        })
        .collect()
}

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("IOTSUPPORT_NVS_GEN_PYTHON") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_default();
    cache.join("iotsupport-test/venv/bin/python")
}

fn services_required() -> bool {
    std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn skip(reason: String) {
    if services_required() {
        panic!("Espressif's generator is required (IOTSUPPORT_TEST_REQUIRE_SERVICES=1): {reason}");
    }
    println!("SKIP: {reason}");
}

/// Runs the script on every case; `None` (after a SKIP line) when the
/// interpreter or the module is missing.
fn espressif_images(cases: &[Case]) -> Option<Vec<Value>> {
    let python = python();
    if !python.exists() {
        skip(format!(
            "no Python with esp-idf-nvs-partition-gen at {} (set IOTSUPPORT_NVS_GEN_PYTHON)",
            python.display()
        ));
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/espressif_gen.py");
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"name": c.name, "namespace": "prov", "size": c.size, "entries": c.entries}))
        .collect();
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    // The script reads all of stdin before it writes anything. A script that
    // exits early (module missing) breaks the pipe; its exit status says why.
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(MODULE_MISSING) {
        skip(format!(
            "{} has no esp-idf-nvs-partition-gen: {}",
            python.display(),
            stderr.trim()
        ));
        return None;
    }
    assert!(output.status.success(), "espressif_gen.py failed: {stderr}");
    written.expect("write the cases to espressif_gen.py");
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    Some(results)
}

#[test]
fn images_are_byte_identical_to_espressifs_generator() {
    let cases = cases();
    let Some(theirs) = espressif_images(&cases) else {
        return;
    };
    let mut failures = Vec::new();
    let (mut identical, mut both_refused) = (0, 0);
    for (case, theirs) in cases.iter().zip(&theirs) {
        assert_eq!(theirs["name"], case.name.as_str());
        match (case.ours(), theirs["image_hex"].as_str()) {
            (Ok(ours), Some(hex)) => {
                let theirs = hex::decode(hex).unwrap();
                if ours == theirs {
                    identical += 1;
                } else {
                    let at = ours
                        .iter()
                        .zip(&theirs)
                        .position(|(a, b)| a != b)
                        .unwrap_or(ours.len().min(theirs.len()));
                    failures.push(format!(
                        "{}: differs from byte {at:#x} (ours {} bytes, theirs {})",
                        case.name,
                        ours.len(),
                        theirs.len()
                    ));
                }
            }
            (Err(ours), None) => {
                println!(
                    "both refuse {:?}: ours {ours} / theirs {}",
                    case.name, theirs["error"]
                );
                both_refused += 1;
            }
            (Ok(_), None) => failures.push(format!(
                "{}: we wrote an image, Espressif's generator refused: {}",
                case.name, theirs["error"]
            )),
            (Err(ours), Some(_)) => failures.push(format!(
                "{}: we refused ({ours}), Espressif's generator wrote an image",
                case.name
            )),
        }
    }
    println!("{identical} images identical, {both_refused} inputs refused by both");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The comparison must have compared something of each kind.
    assert!(identical >= 30 && both_refused >= 5);
}
