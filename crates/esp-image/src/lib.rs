//! Parser for ESP-IDF flash images: the `.bin` files that `esptool elf2image`
//! makes for ESP32-family chips.
//!
//! iotsupport uses it to check an uploaded firmware bundle and to read the
//! firmware's own description of itself (`esp_app_desc_t`: version, project,
//! IDF version, build date, and the SHA-256 of the ELF it was made from).
//! The byte layouts are summarised in `docs/esp-formats.md` of the shared
//! project folder; the behaviour follows esptool's `image-info`.
//!
//! The crate is pure: it takes a byte slice and does no I/O, has no `unsafe`,
//! and is written so that no input can make it panic (every read is a
//! bounds-checked `get`; a fuzz target lives in `fuzz/`).
//!
//! * [`parse_app_image`] — an application image, including its app
//!   descriptor. This is what a firmware upload is checked with.
//! * [`parse_image`] — the container of any image (also bootloaders): header,
//!   segments, checksum, appended SHA-256, and the bootloader descriptor when
//!   there is one.
//! * [`parse_image_header`] — only the 24-byte header.
//! * [`parse_app_desc`] — a bare 256-byte `esp_app_desc_t`, e.g. the
//!   `.flash.appdesc` section of an ELF.
//!
//! Invalid checksums and hashes are reported (`checksum_valid`,
//! `sha256_valid`), not raised: deciding what to do with a corrupt image is
//! the caller's business. Structural problems are [`ImageError`]s whose
//! `Display` text is the message the service returns to the client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// The no-panic promise, checked by clippy for the library code (tests may
// unwrap). Arithmetic on offsets is bounded by the input length and uses
// saturating operations where a sum could in principle overflow.
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

mod app_desc;
mod bootloader_desc;
mod bytes;
mod chip;
mod error;
mod header;
mod image;

#[cfg(test)]
mod tests;

#[cfg(feature = "serde")]
use serde::Serialize;

pub use app_desc::{parse_app_desc, AppDesc, APP_DESC_LEN, APP_DESC_MAGIC};
pub use bootloader_desc::{BootloaderDesc, BOOTLOADER_DESC_LEN, BOOTLOADER_DESC_MAGIC};
pub use bytes::to_hex;
pub use chip::{Chip, MemoryRegion, DRAM, DROM, PADDING};
pub use error::{ImageError, Region};
pub use header::{
    format_chip_rev, ImageHeader, IMAGE_HEADER_LEN, IMAGE_MAGIC, MAX_SEGMENTS, WP_PIN_DISABLED,
};
pub use image::{
    parse_image, parse_image_with, AppendedSha256, Checksum, EspImage, Segment, CHECKSUM_SEED,
    SEGMENT_HEADER_LEN, SHA256_LEN,
};

/// A parsed ESP application image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct AppImage {
    /// The 24-byte header (entry point, flash settings, chip, revisions).
    pub header: ImageHeader,
    /// Every segment, in file order.
    pub segments: Vec<Segment>,
    /// The application description from the first DROM segment.
    pub app_desc: AppDesc,
    /// Index into `segments` of the DROM segment holding `app_desc`.
    pub app_desc_segment: usize,
    /// File offset of `app_desc` (0x20 in every image seen so far).
    pub app_desc_offset: usize,
    /// The checksum byte and its recomputed value.
    pub checksum: Checksum,
    /// Whether the stored checksum matches the segment data.
    pub checksum_valid: bool,
    /// The appended SHA-256, when the header says there is one.
    pub sha256: Option<AppendedSha256>,
    /// `Some(valid)` when a SHA-256 is appended, `None` otherwise.
    pub sha256_valid: Option<bool>,
    /// Bytes the image occupies; trailing bytes (signature blocks, padding)
    /// are not part of it.
    pub image_len: usize,
}

impl AppImage {
    /// The chip the image is built for (always known for a parsed app image).
    pub fn chip(&self) -> Option<Chip> {
        self.header.chip
    }
}

/// Parses the 24-byte image header only.
pub fn parse_image_header(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    ImageHeader::parse(bytes)
}

/// Parses an ESP application image: the container (see [`parse_image`]) and
/// the `esp_app_desc_t` at the start of the first segment whose load address
/// lies in the chip's DROM range.
///
/// The DROM segment is found through the chip's memory map rather than by
/// assuming file offset 0x20, so an image whose first segment is something
/// else still parses, and a bootloader (no DROM segment) is rejected with
/// [`ImageError::NoDromSegment`].
///
/// ```
/// let zip = [b"PK\x03\x04".as_slice(), &[0; 60]].concat();
/// let err = esp_image::parse_app_image(&zip).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "Invalid firmware: not an ESP image (first byte 0x50, expected 0xE9); \
///      this looks like a ZIP archive"
/// );
/// ```
pub fn parse_app_image(bytes: &[u8]) -> Result<AppImage, ImageError> {
    parse_app_image_with(bytes, &mut image::sha256)
}

/// [`parse_app_image`], with the SHA-256 of what the appended hash covers (a prefix of `bytes`)
/// computed by `sha256` (see [`parse_image_with`]).
pub fn parse_app_image_with(
    bytes: &[u8],
    sha256: &mut dyn FnMut(&[u8]) -> [u8; 32],
) -> Result<AppImage, ImageError> {
    let image = image::parse_image_with(bytes, sha256)?;
    let chip = image.header.chip.ok_or(ImageError::UnknownChip {
        chip_id: image.header.chip_id,
    })?;
    let segment = image
        .first_drom_segment()
        .ok_or(ImageError::NoDromSegment { chip: chip.name() })?;
    let data = segment.data(bytes).unwrap_or_default();
    let app_desc = match parse_app_desc(data) {
        Err(ImageError::TooShort { .. }) => {
            return Err(ImageError::DromSegmentTooShort {
                index: segment.index,
                len: segment.data_len,
            })
        }
        other => other?,
    };
    let app_desc_segment = segment.index;
    let app_desc_offset = segment.data_offset;

    let EspImage {
        header,
        segments,
        checksum,
        checksum_valid,
        sha256,
        sha256_valid,
        image_len,
        bootloader_desc: _,
    } = image;
    Ok(AppImage {
        header,
        segments,
        app_desc,
        app_desc_segment,
        app_desc_offset,
        checksum,
        checksum_valid,
        sha256,
        sha256_valid,
        image_len,
    })
}
