//! Fuzz target: like `parse_dump`, but a raw dump gets a correct `tot_len`
//! and checksum appended first, so mutations reach the binary and ELF-core
//! decoders instead of stopping at the CRC32/SHA-256 check. Seed it with
//! real dumps cut to `tot_len - checksum size`.
//!
//! Run with `cargo +nightly fuzz run parse_dump_checksummed` from
//! `crates/esp-coredump`.
#![no_main]

mod common;

use esp_coredump::DumpError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixed = common::with_valid_checksum(data);
    match esp_coredump::parse_dump(&fixed) {
        Ok(dump) => common::touch(&dump),
        Err(DumpError::ChecksumMismatch(m)) if fixed.len() != data.len() => {
            panic!("checksum fixed up but still rejected: {m}")
        }
        Err(_) => {}
    }
});
