//! The one error type of this crate.
//!
//! Every message starts with `Invalid firmware: ` because the service returns
//! it verbatim as the 400 body of a bundle upload (SPEC section 7, check 8).
//! Three messages are fixed by the SPEC and must not change:
//!
//! * `Invalid firmware: binary too short …` ([`ImageError::TooShort`]); the
//!   SPEC leaves the tail open, we say how long the input is, how many bytes
//!   were needed and for what.
//! * `Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0x…)`
//!   ([`ImageError::AppDescMagicMismatch`]). The SPEC writes the expected
//!   value as `0xABCD5432`, eight upper-case hex digits, so the found value is
//!   printed the same way (`{:08X}`), which keeps the two easy to compare.
//! * `Invalid firmware: empty version string` ([`ImageError::EmptyVersion`]).
//!
//! The other variants are our own wording for other malformed input.

use std::fmt;

/// The part of the input that a too-short input was missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The 24-byte image header (common header plus extended header).
    ImageHeader,
    /// The 8-byte record (load address, length) of segment `index`.
    SegmentHeader {
        /// Zero-based segment number.
        index: usize,
    },
    /// The data of segment `index`.
    SegmentData {
        /// Zero-based segment number.
        index: usize,
        /// The segment's load address, for the message.
        load_addr: u32,
        /// The segment's declared data length.
        len: u32,
    },
    /// The checksum byte after the last segment.
    Checksum,
    /// The 32-byte SHA-256 that follows the checksum when `hash_appended` is 1.
    AppendedSha256,
    /// A 256-byte `esp_app_desc_t` given to [`crate::parse_app_desc`].
    AppDesc,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::ImageHeader => f.write_str("the image header"),
            Region::SegmentHeader { index } => write!(f, "the header of segment {index}"),
            Region::SegmentData {
                index,
                load_addr,
                len,
            } => write!(
                f,
                "the {len} data bytes of segment {index} at load address {load_addr:#010x}"
            ),
            Region::Checksum => f.write_str("the checksum byte"),
            Region::AppendedSha256 => f.write_str("the appended SHA-256"),
            Region::AppDesc => f.write_str("esp_app_desc_t"),
        }
    }
}

/// Why an input is not a valid ESP image or app image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The input ends before a structure that the header says is there.
    #[error("Invalid firmware: binary too short ({actual} bytes, {needed} needed for {region})")]
    TooShort {
        /// Length of the input in bytes.
        actual: usize,
        /// Input length needed to hold `region` (may exceed `usize` on 32-bit
        /// targets, hence `u64`).
        needed: u64,
        /// What was being read.
        region: Region,
    },

    /// The first byte is not the ESP image magic 0xE9.
    #[error("Invalid firmware: not an ESP image (first byte {found:#04X}, expected 0xE9){}", magic_hint(*.found, *.second))]
    BadImageMagic {
        /// The first byte of the input.
        found: u8,
        /// The second byte, used only to recognise a partition table.
        second: u8,
    },

    /// The header declares more segments than the ROM bootloader accepts.
    #[error("Invalid firmware: image header declares {count} segments (at most 16 are allowed)")]
    TooManySegments {
        /// The header's segment count.
        count: u8,
    },

    /// The extended header's `hash_appended` byte is neither 0 nor 1.
    #[error("Invalid firmware: hash_appended flag is {value:#04x} (expected 0 or 1)")]
    BadHashAppendedFlag {
        /// The byte found at offset 23.
        value: u8,
    },

    /// The header's chip id is not one this crate has a memory map for, so the
    /// DROM segment cannot be located.
    #[error("Invalid firmware: unknown chip id {chip_id} in image header, cannot locate the DROM segment")]
    UnknownChip {
        /// The header's chip id.
        chip_id: u16,
    },

    /// No segment's load address is in the chip's DROM range, so the image
    /// carries no `esp_app_desc_t` (bootloader images look like this).
    #[error("Invalid firmware: no DROM segment in this {chip} image, so it has no application descriptor (is it a bootloader?)")]
    NoDromSegment {
        /// Target name of the chip, e.g. `esp32c3`.
        chip: &'static str,
    },

    /// The first DROM segment is shorter than the 256-byte `esp_app_desc_t`.
    #[error("Invalid firmware: DROM segment {index} is {len} bytes long, too short for the 256-byte esp_app_desc_t")]
    DromSegmentTooShort {
        /// Zero-based segment number.
        index: usize,
        /// The segment's data length.
        len: u32,
    },

    /// The first DROM segment does not start with `esp_app_desc_t`'s magic word.
    #[error("Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0x{found:08X})")]
    AppDescMagicMismatch {
        /// The little-endian word found where the magic should be.
        found: u32,
    },

    /// The app descriptor's version field is empty.
    #[error("Invalid firmware: empty version string")]
    EmptyVersion,

    /// A string field of the app descriptor is not valid UTF-8.
    #[error("Invalid firmware: {field} string in esp_app_desc_t is not valid UTF-8")]
    NonUtf8String {
        /// The C field name, e.g. `project_name`.
        field: &'static str,
    },
}

fn magic_hint(first: u8, second: u8) -> &'static str {
    match (first, second) {
        (0xAA, 0x50) => "; this looks like a partition table",
        (0xEA, _) => "; this looks like an ESP8266 v2 image, which is not supported",
        (b'P', b'K') => "; this looks like a ZIP archive",
        (0x7F, b'E') => "; this looks like an ELF file, upload the .bin made by esptool elf2image",
        _ => "",
    }
}
