//! The image container: segments, the XOR checksum and the appended SHA-256
//! (esp-formats.md A.2 and A.3). This part is the same for app and
//! bootloader images.

use std::ops::Range;

#[cfg(feature = "serde")]
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bootloader_desc::BootloaderDesc;
use crate::bytes::{slice_at, u32_at, u8_at};
use crate::chip::{DRAM, DROM, PADDING};
use crate::error::{ImageError, Region};
use crate::header::{ImageHeader, IMAGE_HEADER_LEN};

/// Seed of the XOR checksum over all segment data (esptool's `ESP_CHECKSUM_MAGIC`).
pub const CHECKSUM_SEED: u8 = 0xEF;
/// Size of a segment record (load address, data length).
pub const SEGMENT_HEADER_LEN: usize = 8;
/// Size of the appended SHA-256.
pub const SHA256_LEN: usize = 32;

/// One segment of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Segment {
    /// Zero-based position in the image.
    pub index: usize,
    /// Address the segment is loaded or mapped at.
    pub load_addr: u32,
    /// Number of data bytes.
    pub data_len: u32,
    /// File offset of the 8-byte segment record.
    pub header_offset: usize,
    /// File offset of the first data byte (`header_offset + 8`).
    pub data_offset: usize,
    /// esptool's memory-type names for `load_addr` on the header's chip
    /// (e.g. `["DROM"]`, `["BYTE_ACCESSIBLE", "DRAM"]`); empty when the chip
    /// is unknown or the address is in no known region.
    pub memory_types: Vec<&'static str>,
}

impl Segment {
    /// File byte range of the segment's data; slice the original input with it.
    pub fn data_range(&self) -> Range<usize> {
        // Cannot overflow: the parser only builds segments whose data lies
        // inside the input.
        self.data_offset..self.data_offset.saturating_add(self.data_len as usize)
    }

    /// The segment's data within `image` (the bytes that were parsed), or
    /// `None` when `image` is not the input this segment came from.
    pub fn data<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        image.get(self.data_range())
    }

    /// Whether the load address is in the chip's DROM (flash rodata) range.
    pub fn is_drom(&self) -> bool {
        self.memory_types.contains(&DROM)
    }

    /// Whether the load address is in the chip's internal DRAM range.
    pub fn is_dram(&self) -> bool {
        self.memory_types.contains(&DRAM)
    }

    /// Whether esptool would call this a filler segment (address below 64 KiB).
    pub fn is_padding(&self) -> bool {
        self.memory_types.contains(&PADDING)
    }
}

/// The checksum byte, as stored and as recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct Checksum {
    /// File offset of the stored byte (always 15 mod 16).
    pub offset: usize,
    /// The byte stored in the image.
    pub stored: u8,
    /// XOR of all segment data bytes, seeded with 0xEF.
    pub calculated: u8,
}

impl Checksum {
    /// Whether the stored checksum matches the data.
    pub fn is_valid(&self) -> bool {
        self.stored == self.calculated
    }
}

/// The SHA-256 appended after the checksum ("validation hash" in esptool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct AppendedSha256 {
    /// File offset of the stored digest (checksum offset + 1).
    pub offset: usize,
    /// The digest stored in the image.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::bytes::serialize_hex")
    )]
    pub stored: [u8; 32],
    /// SHA-256 of the file from byte 0 through the checksum byte.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::bytes::serialize_hex")
    )]
    pub calculated: [u8; 32],
}

impl AppendedSha256 {
    /// Whether the stored digest matches the data.
    pub fn is_valid(&self) -> bool {
        self.stored == self.calculated
    }
}

/// A parsed ESP image of any kind (app or bootloader), without the app
/// descriptor. See [`crate::parse_app_image`] for app images.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct EspImage {
    /// The 24-byte header.
    pub header: ImageHeader,
    /// Every segment, in file order.
    pub segments: Vec<Segment>,
    /// The checksum byte and its recomputed value.
    pub checksum: Checksum,
    /// Shorthand for `checksum.is_valid()`.
    pub checksum_valid: bool,
    /// The appended SHA-256, when the header says there is one.
    pub sha256: Option<AppendedSha256>,
    /// `Some(valid)` when a SHA-256 is appended, `None` otherwise.
    pub sha256_valid: Option<bool>,
    /// Bytes the image occupies: through the SHA-256 if appended, else
    /// through the checksum byte. Anything after it (a Secure Boot signature
    /// block, 0xFF padding) is not part of the image and is ignored.
    pub image_len: usize,
    /// The `esp_bootloader_desc_t` at the start of the first DRAM segment of
    /// an image without DROM segments (IDF 5.x bootloaders). Best effort:
    /// `None` when the magic byte 0x50 or the 80 bytes are missing.
    pub bootloader_desc: Option<BootloaderDesc>,
}

impl EspImage {
    /// The first segment in the chip's DROM range, if any (app images begin
    /// that segment with `esp_app_desc_t`).
    pub fn first_drom_segment(&self) -> Option<&Segment> {
        self.segments.iter().find(|s| s.is_drom())
    }
}

/// Parses the container of an ESP image: header, every segment, checksum
/// and the appended SHA-256. Checksum and hash mismatches are reported in the
/// result, not as errors; a truncated image is an error.
pub fn parse_image(bytes: &[u8]) -> Result<EspImage, ImageError> {
    parse_image_with(bytes, &mut sha256)
}

/// The SHA-256 of `bytes`, for the `parse_*_with` functions' callers that need nothing more.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// [`parse_image`], with the SHA-256 of the bytes the appended hash covers (always a prefix of
/// `bytes`) computed by `sha256`: a caller that also needs the hash of the whole file can get
/// both from one pass.
pub fn parse_image_with(
    bytes: &[u8],
    sha256: &mut dyn FnMut(&[u8]) -> [u8; 32],
) -> Result<EspImage, ImageError> {
    let header = ImageHeader::parse(bytes)?;
    let too_short = |needed: u64, region: Region| ImageError::TooShort {
        actual: bytes.len(),
        needed,
        region,
    };

    let mut segments = Vec::with_capacity(usize::from(header.segment_count));
    let mut calculated_checksum = CHECKSUM_SEED;
    let mut offset = IMAGE_HEADER_LEN;
    for index in 0..usize::from(header.segment_count) {
        let header_offset = offset;
        let record_end = (header_offset as u64).saturating_add(SEGMENT_HEADER_LEN as u64);
        let load_addr = u32_at(bytes, header_offset)
            .ok_or_else(|| too_short(record_end, Region::SegmentHeader { index }))?;
        let data_len = u32_at(bytes, header_offset.saturating_add(4))
            .ok_or_else(|| too_short(record_end, Region::SegmentHeader { index }))?;
        let data_offset = header_offset.saturating_add(SEGMENT_HEADER_LEN);
        let data = usize::try_from(data_len)
            .ok()
            .and_then(|len| slice_at(bytes, data_offset, len))
            .ok_or_else(|| {
                too_short(
                    (data_offset as u64).saturating_add(u64::from(data_len)),
                    Region::SegmentData {
                        index,
                        load_addr,
                        len: data_len,
                    },
                )
            })?;
        calculated_checksum = data.iter().fold(calculated_checksum, |acc, b| acc ^ b);
        segments.push(Segment {
            index,
            load_addr,
            data_len,
            header_offset,
            data_offset,
            memory_types: header
                .chip
                .map(|chip| chip.memory_types(load_addr))
                .unwrap_or_default(),
        });
        offset = data_offset.saturating_add(data.len());
    }

    // Zero padding up to the last byte of a 16-byte block, which holds the
    // checksum: the smallest offset >= `offset` that is 15 mod 16.
    let checksum_offset = offset | 0x0F;
    let stored = u8_at(bytes, checksum_offset)
        .ok_or_else(|| too_short((checksum_offset as u64).saturating_add(1), Region::Checksum))?;
    let checksum = Checksum {
        offset: checksum_offset,
        stored,
        calculated: calculated_checksum,
    };
    let mut image_len = checksum_offset.saturating_add(1);

    let sha256 = if header.hash_appended {
        let hash_offset = image_len;
        let stored: [u8; 32] = slice_at(bytes, hash_offset, SHA256_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                too_short(
                    (hash_offset as u64).saturating_add(SHA256_LEN as u64),
                    Region::AppendedSha256,
                )
            })?;
        let covered = bytes.get(..hash_offset).unwrap_or_default();
        image_len = hash_offset.saturating_add(SHA256_LEN);
        Some(AppendedSha256 {
            offset: hash_offset,
            stored,
            calculated: sha256(covered),
        })
    } else {
        None
    };

    // Only bootloaders carry esp_bootloader_desc_t, and only they lack a
    // DROM segment. Looking only there keeps a one-byte magic (0x50) at the
    // start of an app's .dram0.data from being mistaken for a descriptor.
    let bootloader_desc = if segments.iter().any(Segment::is_drom) {
        None
    } else {
        segments
            .iter()
            .find(|s| s.is_dram())
            .and_then(|s| s.data(bytes))
            .and_then(BootloaderDesc::parse)
    };

    Ok(EspImage {
        header,
        checksum_valid: checksum.is_valid(),
        checksum,
        sha256_valid: sha256.as_ref().map(AppendedSha256::is_valid),
        sha256,
        segments,
        image_len,
        bootloader_desc,
    })
}
