//! Fuzz target: `parse_dump` on arbitrary bytes (raw / base64 / ELF core
//! auto-detection, header, checksum, binary and ELF-core decoders) must
//! never panic.
//!
//! Run with `cargo +nightly fuzz run parse_dump` from `crates/esp-coredump`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match esp_coredump::parse_dump(data) {
        Ok(dump) => common::touch(&dump),
        Err(e) => {
            let _ = (e.to_string(), e.is_malformed());
        }
    }
});
