//! The built-in parser's cache of loaded firmware (issue 18): dumps of a build uploaded as a
//! bundle (so its row records the ELF's SHA-256) fetch the ELF once, parse to the same report as
//! without the cache, and keep parsing after the ELF object is gone; `PARSE_CACHE_BYTES=0`
//! fetches it for every dump.

use std::time::Duration;

use serde_json::Value;

use crate::client::TestDevice;
use crate::coredumps::{settled, testdata_case, upload_ok};
use crate::firmware_support::{esp32_image, sha256, Build, Desc};
use crate::helpers::*;

/// A bundle of version `version` whose ELF is `elf` (the image's app descriptor names its hash).
fn build_with_elf(version: &str, elf: Vec<u8>) -> Build {
    let mut build = Build::new(version, "real ELF");
    let desc = Desc {
        magic: 0xABCD_5432,
        version: version.as_bytes().to_vec(),
        project: b"sensor_node",
        idf: b"v5.2.2",
        elf_sha256: sha256(&elf),
    };
    build.bin = esp32_image(&desc, 7);
    build.elf = elf;
    build
}

fn elf_gets(app: &TestApp) -> usize {
    app.faults
        .gets()
        .iter()
        .filter(|(key, _)| key.ends_with("/firmware.elf"))
        .count()
}

/// Uploads `n` copies of `dump` from `device` and waits for each to be parsed; returns them.
async fn parse_all(app: &TestApp, device: &TestDevice, dump: &[u8], n: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(upload_ok(app, device, "1.0.0", dump).await);
    }
    let mut parsed = Vec::new();
    for id in ids {
        let body = settled(app, device, id, Duration::from_secs(60)).await;
        assert_eq!(body["parse_status"], "PARSED", "{body}");
        parsed.push(body);
    }
    parsed
}

#[tokio::test]
async fn dumps_of_a_build_load_its_elf_once_and_parse_as_without_the_cache() {
    let Some((dump, elf)) = testdata_case("esp32_elf_crc32_abort", "coredump.bin", "esp32.elf")
    else {
        return;
    };
    let mut reports = Vec::new();
    for budget in ["0", "33554432"] {
        for_each_stack(
            "parse_cache",
            &[("PARSE_CACHE_BYTES", budget)],
            async |app| {
                let device = crate::fleet::model_with_device(app, "sensor").await;
                crate::firmware_support::upload_ok(
                    app,
                    device.model_id,
                    "sensor",
                    &build_with_elf("1.0.0", elf.clone()),
                )
                .await;
                let before = elf_gets(app);
                // Several at once: the workers run them concurrently, one loads, the others wait.
                let parsed = parse_all(app, &device, &dump, 4).await;
                let fetched = elf_gets(app) - before;
                if budget == "0" {
                    assert_eq!(fetched, 4, "without the cache every parse fetches the ELF");
                } else {
                    assert_eq!(fetched, 1, "the ELF is fetched once for the build");
                    // Gone from the store, still loaded: the next dump of the build parses.
                    let key = iotsupport::storage::ObjectKey::parse(
                        "firmware/sensor/1.0.0/firmware.elf".to_string(),
                    )
                    .unwrap();
                    app.state.storage.delete(&key).await.unwrap();
                    parse_all(app, &device, &dump, 1).await;
                }
                for body in &parsed {
                    assert_eq!(body["report"], parsed[0]["report"]);
                    assert_eq!(body["parsed_output"], parsed[0]["parsed_output"]);
                }
                reports.push((
                    parsed[0]["report"].clone(),
                    parsed[0]["parsed_output"].clone(),
                ));
            },
        )
        .await;
    }
    // Cached or not, on either stack: the same report.
    assert!(reports.len() >= 2);
    assert!(reports.iter().all(|r| *r == reports[0]));
}
