//! `esp_bootloader_desc_t`, the 80-byte description that IDF 5.x and later
//! put at the start of a bootloader image's first DRAM segment
//! (esp-formats.md A.5). Older bootloaders have none.

#[cfg(feature = "serde")]
use serde::Serialize;

use crate::bytes::{c_string_field, slice_at, u32_at, u8_at};

/// Magic byte that opens `esp_bootloader_desc_t`.
pub const BOOTLOADER_DESC_MAGIC: u8 = 0x50;
/// Size of `esp_bootloader_desc_t`.
pub const BOOTLOADER_DESC_LEN: usize = 80;

/// The bootloader's self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct BootloaderDesc {
    /// Anti-rollback counter of the bootloader.
    pub secure_version: u8,
    /// Bootloader version (CONFIG_BOOTLOADER_PROJECT_VER).
    pub version: u32,
    /// ESP-IDF version the bootloader was built with.
    pub idf_ver: String,
    /// Build date and time, e.g. `Apr 25 2023 00:13:32`.
    pub date_time: String,
}

impl BootloaderDesc {
    /// Parses the structure from the start of `data`; `None` when `data` is
    /// shorter than 80 bytes or does not start with the magic byte. The text
    /// fields are decoded lossily: this is informational only.
    pub fn parse(data: &[u8]) -> Option<BootloaderDesc> {
        let desc = slice_at(data, 0, BOOTLOADER_DESC_LEN)?;
        if u8_at(desc, 0)? != BOOTLOADER_DESC_MAGIC {
            return None;
        }
        let text = |offset, len| {
            slice_at(desc, offset, len)
                .map(|field| String::from_utf8_lossy(c_string_field(field)).into_owned())
        };
        Some(BootloaderDesc {
            secure_version: u8_at(desc, 3)?,
            version: u32_at(desc, 4)?,
            idf_ver: text(8, 32)?,
            date_time: text(40, 24)?,
        })
    }
}
