//! Fuzz target: parse an arbitrary dump (raw dumps get a valid checksum, see
//! `parse_dump_checksummed`) and analyse it against real firmware ELFs
//! loaded once at start-up from the test data (`$IOTSUPPORT_TESTDATA` or
//! `<repo>/../shared/testdata/esp`, never embedded). Without the test data
//! it only parses. Unwinding, symbolisation, TCB decoding, the text and JSON
//! reports and the crash signature (everything the parse job does with a
//! dump) must never panic.
//!
//! Run with `cargo +nightly fuzz run analyse` from `crates/esp-coredump`.
#![no_main]

mod common;

use esp_coredump::Firmware;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static FIRMWARES: Vec<(String, Firmware)> = common::load_firmwares();
}

fuzz_target!(|data: &[u8]| {
    let fixed = common::with_valid_checksum(data);
    let Ok(dump) = esp_coredump::parse_dump(&fixed) else {
        return;
    };
    common::touch(&dump);
    FIRMWARES.with(|fws| {
        if let Some(fw) = common::pick(&dump, fws) {
            match esp_coredump::analyse_with(&dump, fw) {
                Ok(report) => {
                    let _ = report.to_text();
                    let _ = serde_json::to_string(&report);
                    let _ = esp_coredump::crash_signature(&report);
                }
                Err(e) => {
                    let _ = (e.to_string(), e.is_malformed());
                }
            }
        }
    });
});
