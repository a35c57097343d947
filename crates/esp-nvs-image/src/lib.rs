//! Writer of ESP-IDF NVS partition images, for device provisioning.
//!
//! iotsupport hands a device an image of its `nvs` partition holding its
//! credentials and settings (SPEC section 13, "Provisioning package"), which
//! the web UI flashes over Web Serial. The Python service made that image
//! with Espressif's generator, `esp-idf-nvs-partition-gen` 0.2.0 from PyPI;
//! [`provisioning_image`] writes the same bytes for the same input, so the
//! firmware in the field and the golden vector in
//! `docs/original-rotation-provisioning-mqtt.md` (section 2.2) stay valid.
//!
//! The crate is pure: no I/O, no `unsafe`, and no input can make it panic
//! (clippy denies indexing, `unwrap` and friends in the library code; sizes
//! are bounded before anything is allocated).
//!
//! # The image
//!
//! What the generator writes with `nvs_open(…, Page.VERSION2,
//! read_only=True)`, one `namespace` entry and then `string` entries:
//!
//! * The partition is a run of 4096-byte pages. Only the pages the data needs
//!   are written; the rest stays `0xFF` (erased flash). `read_only=True`
//!   means no empty or reserved pages are added, and every page may be used.
//! * Page header (32 bytes): `u32` state, `0xFFFFFFFE` (`ACTIVE`) for the
//!   last page written and `0xFFFFFFFC` (`FULL`) for every page before it;
//!   `u32` sequence number = page index (0, 1, …); `u8` version `0xFE`
//!   (format version 2); `0xFF` up to byte 28; `u32` CRC-32 of bytes 4..28.
//! * Entry-state bitmap (32 bytes at offset 32): two bits per entry, least
//!   significant first, `11` empty and `10` written.
//! * 126 entries of 32 bytes from offset 64. An entry is `u8` namespace
//!   index, `u8` type, `u8` span (entries used, itself included), `u8` chunk
//!   index (`0xFF`), `u32` CRC-32 of bytes 0..4 and 8..32, the key in 16
//!   bytes NUL-padded, then 8 bytes of data.
//! * Entry 0 of page 0 is the namespace: namespace 0, type `0x01` (`u8`),
//!   span 1, key = the namespace's name, data byte 0 = its index, 1.
//! * A string is namespace 1, type `0x21`, span `1 + ceil(size / 32)` where
//!   size counts the UTF-8 bytes and the terminating NUL; its data is `u16`
//!   size, `u16 0xFFFF`, `u32` CRC-32 of value+NUL. The value and the NUL
//!   follow in the next entries, the tail of the last one left `0xFF`.
//! * Entries are written in order and never straddle pages: a string that
//!   would reach the end of the current page, **including one that would
//!   fill it exactly**, starts the next page instead (the generator tests
//!   `used + span >= 126`). So the last entry of a page is never used by a
//!   string, and a string can be at most 3967 bytes (span 125), although
//!   NVS itself allows 4000 including the NUL.
//! * CRC-32 is Python's `zlib.crc32(data, 0xFFFFFFFF)`.
//!
//! # Why not a crate
//!
//! `esp-nvs-partition-tool` 0.2.3 (crates.io, released 2026-10-22, with
//! `esp-nvs` 0.6.3) generates images by driving `esp-nvs`, a port of the
//! *firmware's* NVS library, over an in-memory flash. For short values it
//! writes exactly these bytes (the golden vector matches), but it follows the
//! firmware's rules rather than the generator's, and they differ where it
//! matters: it fills a page's last free entry (the generator moves to the
//! next page, so every byte after that point differs), it keeps a spare page
//! for garbage collection (so three full pages in a 0x3000 partition fail
//! with "flash full" where the generator succeeds), and it accepts strings
//! up to 3999 bytes that the generator refuses. It also brings CSV, serde,
//! base64, hex and `unsafe` reads of flash structs. What we need is a few
//! hundred lines of plain byte layout, so it is written here and compared
//! byte for byte with Espressif's generator (`tests/espressif_generator.rs`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// The no-panic promise, checked by clippy for the library code (tests may
// unwrap). The layout code indexes only fixed-size arrays with constants.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo
    )
)]

mod error;
mod layout;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

pub use error::{InvalidKeyReason, NvsError};

/// Bytes in a page (a flash sector).
pub const PAGE_SIZE: usize = 4096;
/// The smallest partition accepted: three pages, the minimum ESP-IDF asks of
/// a read-write NVS partition (and the Python service's rule).
pub const MIN_PARTITION_SIZE: usize = 3 * PAGE_SIZE;
/// The largest partition accepted, 16 MiB (the largest flash of the original
/// ESP32). Not an NVS rule: it bounds the memory one request can ask for.
pub const MAX_PARTITION_SIZE: usize = 16 * 1024 * 1024;
/// The longest key (and namespace name): 15 bytes, stored with a NUL in 16.
pub const MAX_KEY_LEN: usize = 15;
/// The longest string value in bytes of UTF-8, without the NUL: the most that
/// Espressif's generator places in one page (125 entries: a header and 124 of
/// data, 3968 bytes with the NUL).
pub const MAX_STRING_LEN: usize = (layout::ENTRIES_PER_PAGE - 2) * layout::ENTRY_SIZE - 1;

/// The namespace's index: the first and only namespace is 1.
const NAMESPACE_INDEX: u8 = 1;

/// Keys for which Espressif's `write_entry` adds hard-coded Wi-Fi entries.
const KEYS_RESERVED_BY_GENERATOR: [&str; 5] = [
    "sta.ssid",
    "sta.pswd",
    "ap.ssid",
    "ap.passwd",
    "ap.authmode",
];

/// Writes an NVS partition image of exactly `partition_size` bytes holding
/// one namespace and a string entry per `(key, value)`, in the given order,
/// byte-identical to `esp-idf-nvs-partition-gen` 0.2.0 (see the crate docs
/// for the layout).
///
/// Checked in this order, the first failure being returned: the partition
/// size (a multiple of 4096 first, then at least 12288, at most 16 MiB); the
/// namespace name as a key; then each entry in turn: value missing (`None`),
/// value empty or whitespace, the key (at most 15 characters, non-empty,
/// ASCII, no NUL, not one of the generator's Wi-Fi keys), the key repeated,
/// the value's length. Only then is the image written, which fails if the
/// entries need more pages than the partition has.
///
/// ```
/// let image = esp_nvs_image::provisioning_image(
///     "prov",
///     &[("device_key", Some("abc12345")), ("wifi_ssid", Some("Café"))],
///     0x3000,
/// )
/// .unwrap();
/// assert_eq!(image.len(), 0x3000);
///
/// let err = esp_nvs_image::provisioning_image("prov", &[("wifi_ssid", None)], 0x3000)
///     .unwrap_err();
/// assert_eq!(err.to_string(), "Provisioning field 'wifi_ssid' is missing");
/// ```
pub fn provisioning_image(
    namespace: &str,
    entries: &[(&str, Option<&str>)],
    partition_size: usize,
) -> Result<Vec<u8>, NvsError> {
    check_partition_size(partition_size)?;
    check_key(namespace)?;

    let mut seen = BTreeSet::new();
    let mut strings = Vec::with_capacity(entries.len());
    for &(key, value) in entries {
        let value = value.ok_or_else(|| NvsError::FieldMissing { key: key.into() })?;
        if is_blank(value) {
            return Err(NvsError::FieldEmpty { key: key.into() });
        }
        check_key(key)?;
        if !seen.insert(key) {
            return Err(NvsError::DuplicateKey { key: key.into() });
        }
        if value.len() > MAX_STRING_LEN {
            return Err(NvsError::ValueTooLong {
                key: key.into(),
                len: value.len(),
            });
        }
        strings.push((key, value));
    }

    let mut writer = layout::ImageWriter::new(partition_size);
    writer.write_namespace(namespace, NAMESPACE_INDEX);
    for (key, value) in strings {
        writer
            .write_string(NAMESPACE_INDEX, key, value)
            .map_err(|layout::OutOfPages| NvsError::PartitionFull {
                size: partition_size,
                key: key.into(),
            })?;
    }
    Ok(writer.finish())
}

/// Whether a value counts as empty: nothing but whitespace, where whitespace
/// is what Python's `str.strip()` removes (the Python service tested
/// `not value.strip()`). That is Unicode `White_Space`, which is Rust's
/// [`char::is_whitespace`], plus the four information separators
/// U+001C..U+001F, which Python also strips.
pub fn is_blank(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

fn check_partition_size(size: usize) -> Result<(), NvsError> {
    if !size.is_multiple_of(PAGE_SIZE) {
        Err(NvsError::SizeNotMultipleOfPage { size })
    } else if size < MIN_PARTITION_SIZE {
        Err(NvsError::SizeTooSmall { size })
    } else if size > MAX_PARTITION_SIZE {
        Err(NvsError::SizeTooLarge { size })
    } else {
        Ok(())
    }
}

/// A key or namespace name must be 1..=15 ASCII bytes without NUL, and not
/// one the generator treats specially. Length is checked first, in
/// characters, as the Python service did, so a long non-ASCII key gets its
/// message.
fn check_key(key: &str) -> Result<(), NvsError> {
    let invalid = |reason| {
        Err(NvsError::InvalidKey {
            key: key.into(),
            reason,
        })
    };
    if key.chars().count() > MAX_KEY_LEN {
        return Err(NvsError::KeyTooLong { key: key.into() });
    }
    if key.is_empty() {
        return invalid(InvalidKeyReason::Empty);
    }
    if !key.is_ascii() {
        return invalid(InvalidKeyReason::NotAscii);
    }
    if key.contains('\0') {
        return invalid(InvalidKeyReason::ContainsNul);
    }
    if KEYS_RESERVED_BY_GENERATOR.contains(&key) {
        return invalid(InvalidKeyReason::ReservedByGenerator);
    }
    Ok(())
}
