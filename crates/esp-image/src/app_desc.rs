//! `esp_app_desc_t`, the 256-byte application description at the start of
//! an app image's first DROM segment (esp-formats.md A.4). The same bytes are
//! the `.flash.appdesc` section of the firmware ELF, so [`parse_app_desc`]
//! also reads a version from an ELF section handed to it.

#[cfg(feature = "serde")]
use serde::Serialize;

use crate::bytes::{array_at, c_string_field, slice_at, to_hex, u16_at, u32_at, u8_at};
use crate::error::{ImageError, Region};

/// Magic word that opens `esp_app_desc_t`.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Size of `esp_app_desc_t`.
pub const APP_DESC_LEN: usize = 256;

/// The application description: what the firmware says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
pub struct AppDesc {
    /// Anti-rollback counter (`secure_version`).
    pub secure_version: u32,
    /// App version (`git describe` or PROJECT_VER); never empty.
    pub version: String,
    /// Project name.
    pub project_name: String,
    /// Compile time `HH:MM:SS`; empty when the build disabled it.
    pub time: String,
    /// Compile date `Mmm dd yyyy`; empty when the build disabled it.
    pub date: String,
    /// ESP-IDF version the app was built with.
    pub idf_ver: String,
    /// SHA-256 of the firmware ELF file, written by `esptool elf2image`
    /// (all zero inside the ELF itself). Serialised as lower-case hex.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::bytes::serialize_hex")
    )]
    pub app_elf_sha256: [u8; 32],
    /// Minimum eFuse block revision, major*100 + minor.
    pub min_efuse_blk_rev_full: u16,
    /// Maximum eFuse block revision, major*100 + minor.
    pub max_efuse_blk_rev_full: u16,
    /// log2 of the MMU page size, 0 when not set (older IDF).
    pub mmu_page_size_log2: u8,
}

impl AppDesc {
    /// `app_elf_sha256` as lower-case hex, the form esptool prints.
    pub fn app_elf_sha256_hex(&self) -> String {
        to_hex(&self.app_elf_sha256)
    }

    /// Compile date and time joined as esptool prints them
    /// (`"Jul 25 2024 16:23:40"`).
    pub fn compile_time(&self) -> String {
        format!("{} {}", self.date, self.time)
    }

    /// The MMU page size in bytes, when the descriptor records one.
    pub fn mmu_page_size(&self) -> Option<u64> {
        match self.mmu_page_size_log2 {
            0 => None,
            log2 => 1u64.checked_shl(u32::from(log2)),
        }
    }
}

/// Parses an `esp_app_desc_t` from the start of `bytes` (at least 256 bytes;
/// anything after them is ignored).
///
/// Checks, in this order: length, magic word, then the version. The version
/// must be non-empty UTF-8 (it names the build, and becomes part of object
/// keys). The other string fields tolerate other bytes (esp-formats.md A.4),
/// which are replaced by U+FFFD: IDF cuts an over-long string by bytes, so a
/// long non-ASCII project name can end part-way through a character. A field
/// without a NUL is read to its end, because IDF cuts over-long strings to
/// fill the field.
pub fn parse_app_desc(bytes: &[u8]) -> Result<AppDesc, ImageError> {
    let too_short = || ImageError::TooShort {
        actual: bytes.len(),
        needed: APP_DESC_LEN as u64,
        region: Region::AppDesc,
    };
    // Report a wrong magic even on short input, as long as the word is there:
    // "not an app descriptor" is the more useful message.
    let magic = u32_at(bytes, 0).ok_or_else(too_short)?;
    if magic != APP_DESC_MAGIC {
        return Err(ImageError::AppDescMagicMismatch { found: magic });
    }
    let desc = slice_at(bytes, 0, APP_DESC_LEN).ok_or_else(too_short)?;

    let string = |field: &'static str, offset: usize, len: usize| {
        let raw = slice_at(desc, offset, len).ok_or_else(too_short)?;
        std::str::from_utf8(c_string_field(raw))
            .map(str::to_owned)
            .map_err(|_| ImageError::NonUtf8String { field })
    };

    let lossy = |offset: usize, len: usize| {
        let raw = slice_at(desc, offset, len).ok_or_else(too_short)?;
        Ok::<_, ImageError>(String::from_utf8_lossy(c_string_field(raw)).into_owned())
    };

    let version = string("version", 16, 32)?;
    if version.is_empty() {
        return Err(ImageError::EmptyVersion);
    }
    Ok(AppDesc {
        secure_version: u32_at(desc, 4).ok_or_else(too_short)?,
        version,
        project_name: lossy(48, 32)?,
        time: lossy(80, 16)?,
        date: lossy(96, 16)?,
        idf_ver: lossy(112, 32)?,
        app_elf_sha256: array_at::<32>(desc, 144).ok_or_else(too_short)?,
        min_efuse_blk_rev_full: u16_at(desc, 176).ok_or_else(too_short)?,
        max_efuse_blk_rev_full: u16_at(desc, 178).ok_or_else(too_short)?,
        mmu_page_size_log2: u8_at(desc, 180).ok_or_else(too_short)?,
    })
}
