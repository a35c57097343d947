//! The 24-byte ESP image header: the 8-byte common header that the ROM
//! bootloader reads plus the 16-byte extended header (esp-formats.md A.1).

#[cfg(feature = "serde")]
use serde::Serialize;

use crate::bytes::{u16_at, u32_at, u8_at};
use crate::chip::Chip;
use crate::error::{ImageError, Region};

/// First byte of every ESP32-family image.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// Size of the common plus extended header; segment records start here.
pub const IMAGE_HEADER_LEN: usize = 24;
/// The ROM bootloader (and esptool) reject images with more segments.
pub const MAX_SEGMENTS: u8 = 16;
/// `wp_pin` value meaning "write-protect pin not used".
pub const WP_PIN_DISABLED: u8 = 0xEE;

/// The parsed image header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct ImageHeader {
    /// Number of segment records that follow the header (at most 16).
    pub segment_count: u8,
    /// SPI flash mode code: 0 QIO, 1 QOUT, 2 DIO, 3 DOUT, 4 FAST_READ, 5 SLOW_READ.
    pub spi_mode: u8,
    /// Flash frequency code (low nibble of byte 3); its meaning depends on the
    /// chip, see [`ImageHeader::flash_frequency_name`].
    pub flash_freq_code: u8,
    /// Flash size code (high nibble of byte 3): 0..7 = 1, 2, 4, … 128 MB.
    pub flash_size_code: u8,
    /// CPU entry point address.
    pub entry_addr: u32,
    /// SPI write-protect pin; 0xEE means disabled.
    pub wp_pin: u8,
    /// SPI pin drive strengths as stored: clk/q, d/cs0, hd/wp, two nibbles each
    /// (low nibble first).
    pub spi_pin_drv: [u8; 3],
    /// Raw chip id from the header.
    pub chip_id: u16,
    /// The chip, when the id is one this crate knows.
    pub chip: Option<Chip>,
    /// Legacy minimum chip revision byte.
    pub min_chip_rev: u8,
    /// Minimum chip revision, major*100 + minor.
    pub min_chip_rev_full: u16,
    /// Maximum chip revision, major*100 + minor.
    pub max_chip_rev_full: u16,
    /// Whether a 32-byte SHA-256 follows the checksum byte.
    pub hash_appended: bool,
}

impl ImageHeader {
    /// Parses the first 24 bytes of `bytes`. Only the header is looked at;
    /// the segment count is checked against the limit of 16. An input shorter
    /// than 24 bytes is [`ImageError::TooShort`] even when its first byte is
    /// not the image magic.
    pub fn parse(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
        let too_short = || ImageError::TooShort {
            actual: bytes.len(),
            needed: IMAGE_HEADER_LEN as u64,
            region: Region::ImageHeader,
        };
        // The length comes before the magic: SPEC section 7 lists "binary too
        // short" first, so an input shorter than the header is too short
        // whatever its first byte is.
        if bytes.len() < IMAGE_HEADER_LEN {
            return Err(too_short());
        }
        let byte = |offset| u8_at(bytes, offset).ok_or_else(too_short);
        let magic = byte(0)?;
        if magic != IMAGE_MAGIC {
            return Err(ImageError::BadImageMagic {
                found: magic,
                second: byte(1)?,
            });
        }

        let segment_count = byte(1)?;
        if segment_count > MAX_SEGMENTS {
            return Err(ImageError::TooManySegments {
                count: segment_count,
            });
        }
        let hash_flag = byte(23)?;
        let hash_appended = match hash_flag {
            0 => false,
            1 => true,
            value => return Err(ImageError::BadHashAppendedFlag { value }),
        };
        let size_freq = byte(3)?;
        let chip_id = u16_at(bytes, 12).ok_or_else(too_short)?;
        Ok(ImageHeader {
            segment_count,
            spi_mode: byte(2)?,
            flash_freq_code: size_freq & 0x0F,
            flash_size_code: size_freq >> 4,
            entry_addr: u32_at(bytes, 4).ok_or_else(too_short)?,
            wp_pin: byte(8)?,
            spi_pin_drv: [byte(9)?, byte(10)?, byte(11)?],
            chip_id,
            chip: Chip::from_id(chip_id),
            min_chip_rev: byte(14)?,
            min_chip_rev_full: u16_at(bytes, 15).ok_or_else(too_short)?,
            max_chip_rev_full: u16_at(bytes, 17).ok_or_else(too_short)?,
            hash_appended,
        })
    }

    /// The SPI mode as esptool prints it (`"DIO"`, …), `None` for unknown codes.
    pub fn spi_mode_name(&self) -> Option<&'static str> {
        match self.spi_mode {
            0 => Some("QIO"),
            1 => Some("QOUT"),
            2 => Some("DIO"),
            3 => Some("DOUT"),
            4 => Some("FAST_READ"),
            5 => Some("SLOW_READ"),
            _ => None,
        }
    }

    /// Flash size in bytes, `None` for codes above 7.
    pub fn flash_size_bytes(&self) -> Option<u64> {
        (self.flash_size_code <= 7).then(|| (1u64 << 20) << self.flash_size_code)
    }

    /// Flash size as esptool prints it (`"2MB"`), `None` for codes above 7.
    pub fn flash_size_name(&self) -> Option<String> {
        self.flash_size_bytes().map(|b| format!("{}MB", b >> 20))
    }

    /// Flash frequency as esptool prints it (`"40m"`); needs a known chip.
    pub fn flash_frequency_name(&self) -> Option<&'static str> {
        self.chip?.flash_frequency_name(self.flash_freq_code)
    }

    /// Minimum chip revision formatted like esptool, e.g. `"v0.0"`.
    pub fn min_chip_rev_name(&self) -> String {
        format_chip_rev(self.min_chip_rev_full)
    }

    /// Maximum chip revision formatted like esptool, e.g. `"v3.99"`.
    pub fn max_chip_rev_name(&self) -> String {
        format_chip_rev(self.max_chip_rev_full)
    }
}

/// Formats a major*100+minor revision the way esptool does (`399` → `"v3.99"`).
pub fn format_chip_rev(full: u16) -> String {
    format!("v{}.{}", full / 100, full % 100)
}
