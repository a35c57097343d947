//! Fuzz target: `parse_dump` on arbitrary bytes (raw / base64 / ELF core
//! auto-detection, header, checksum, binary and ELF-core decoders) must
//! never panic.
//!
//! Run with `cargo +nightly fuzz run parse_dump` from `crates/esp-coredump`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(dump) = esp_coredump::parse_dump(data) {
        common::touch(&dump);
    }
});
