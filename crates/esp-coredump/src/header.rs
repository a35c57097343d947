//! Dump header and version word: layout per version, checksum verification.
//!
//! A stored dump is `header | data | checksum`, `tot_len` bytes in all. The
//! checksum (CRC32 or SHA-256) covers everything before it, header included.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bytes::u32_at;
use crate::chip::Chip;
use crate::error::DumpError;

/// How the dump data is encoded (the version word's major number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Legacy binary task records (major 0).
    Binary,
    /// An embedded ELF core file (major 1).
    Elf,
}

/// The checksum algorithm protecting a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumKind {
    /// zlib/IEEE CRC-32, 4 bytes little-endian.
    Crc32,
    /// SHA-256, 32 bytes.
    Sha256,
}

impl ChecksumKind {
    /// Length of the checksum in bytes.
    pub fn size(self) -> usize {
        match self {
            ChecksumKind::Crc32 => 4,
            ChecksumKind::Sha256 => 32,
        }
    }
}

/// The known dump versions (low 16 bits of the version word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DumpKind {
    /// 0x0001, binary, CRC32, 16-byte header (before IDF 4.1).
    BinV1,
    /// 0x0002, binary, CRC32, 20-byte header.
    BinV2,
    /// 0x0003, binary, CRC32, 24-byte header with chip revision.
    BinV2_1,
    /// 0x0100, ELF, CRC32, 20-byte header.
    ElfCrc32V2,
    /// 0x0101, ELF, SHA-256, 20-byte header.
    ElfSha256V2,
    /// 0x0102, ELF, CRC32, 24-byte header with chip revision.
    ElfCrc32V2_1,
    /// 0x0103, ELF, SHA-256, 24-byte header with chip revision.
    ElfSha256V2_1,
    /// 0x0104, ELF, SHA-256, 12-byte header (tot_len, ver, chip_rev).
    ElfSha256V2_2,
}

impl DumpKind {
    /// Decode the low 16 bits of a version word.
    pub fn from_u16(v: u16) -> Option<DumpKind> {
        Some(match v {
            0x0001 => DumpKind::BinV1,
            0x0002 => DumpKind::BinV2,
            0x0003 => DumpKind::BinV2_1,
            0x0100 => DumpKind::ElfCrc32V2,
            0x0101 => DumpKind::ElfSha256V2,
            0x0102 => DumpKind::ElfCrc32V2_1,
            0x0103 => DumpKind::ElfSha256V2_1,
            0x0104 => DumpKind::ElfSha256V2_2,
            _ => return None,
        })
    }

    /// Binary or ELF data.
    pub fn data_format(self) -> DataFormat {
        match self {
            DumpKind::BinV1 | DumpKind::BinV2 | DumpKind::BinV2_1 => DataFormat::Binary,
            _ => DataFormat::Elf,
        }
    }

    /// Checksum algorithm.
    pub fn checksum(self) -> ChecksumKind {
        match self {
            DumpKind::ElfSha256V2 | DumpKind::ElfSha256V2_1 | DumpKind::ElfSha256V2_2 => {
                ChecksumKind::Sha256
            }
            _ => ChecksumKind::Crc32,
        }
    }

    /// Header length in bytes.
    pub fn header_len(self) -> usize {
        match self {
            DumpKind::BinV1 => 16,
            DumpKind::BinV2 | DumpKind::ElfCrc32V2 | DumpKind::ElfSha256V2 => 20,
            DumpKind::BinV2_1 | DumpKind::ElfCrc32V2_1 | DumpKind::ElfSha256V2_1 => 24,
            DumpKind::ElfSha256V2_2 => 12,
        }
    }

    /// esp-coredump's name for this version.
    pub fn name(self) -> &'static str {
        match self {
            DumpKind::BinV1 => "BIN_V1",
            DumpKind::BinV2 => "BIN_V2",
            DumpKind::BinV2_1 => "BIN_V2_1",
            DumpKind::ElfCrc32V2 => "ELF_CRC32_V2",
            DumpKind::ElfSha256V2 => "ELF_SHA256_V2",
            DumpKind::ElfCrc32V2_1 => "ELF_CRC32_V2_1",
            DumpKind::ElfSha256V2_1 => "ELF_SHA256_V2_1",
            DumpKind::ElfSha256V2_2 => "ELF_SHA256_V2_2",
        }
    }
}

/// A decoded version word: chip id (bits 31..16), major (15..8), minor (7..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpVersion {
    /// The raw 32-bit version word.
    pub raw: u32,
}

impl DumpVersion {
    /// Chip id (bits 31..16).
    pub fn chip_id(self) -> u16 {
        (self.raw >> 16) as u16
    }
    /// The chip.
    pub fn chip(self) -> Chip {
        Chip::from_id(self.chip_id())
    }
    /// Format major number (0 binary, 1 ELF).
    pub fn major(self) -> u8 {
        (self.raw >> 8) as u8
    }
    /// Format minor number.
    pub fn minor(self) -> u8 {
        self.raw as u8
    }
    /// The known dump kind, if any.
    pub fn kind(self) -> Option<DumpKind> {
        DumpKind::from_u16(self.raw as u16)
    }
}

/// The parsed dump header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpHeader {
    /// Total length (header + data + checksum).
    pub tot_len: u32,
    /// Version word.
    pub version: DumpVersion,
    /// Known dump kind.
    pub kind: DumpKind,
    /// Number of task records (binary format; usually 0 in ELF dumps).
    pub task_num: u32,
    /// TCB size (binary format).
    pub tcb_size: u32,
    /// Number of extra memory segments (binary V2+).
    pub mem_seg_num: u32,
    /// Chip revision, major*100+minor, when the header has one.
    pub chip_rev: Option<u32>,
}

/// True when bytes 4..6 hold a known dump version (esp-coredump's raw detection).
pub fn looks_like_raw(buf: &[u8]) -> bool {
    match u32_at(buf, 4) {
        Some(v) => DumpKind::from_u16(v as u16).is_some(),
        None => false,
    }
}

/// Parse and verify a raw dump. Returns the header and the data between
/// header and checksum. Bytes after `tot_len` are ignored.
pub fn parse_raw(buf: &[u8]) -> Result<(DumpHeader, &[u8]), DumpError> {
    let tot_len = u32_at(buf, 0).ok_or_else(|| DumpError::truncated("no header"))?;
    let ver = u32_at(buf, 4).ok_or_else(|| DumpError::truncated("no version word"))?;
    if tot_len == 0xFFFF_FFFF && ver == 0xFFFF_FFFF {
        return Err(DumpError::Empty);
    }
    let version = DumpVersion { raw: ver };
    let kind = version.kind().ok_or(DumpError::UnsupportedVersion(ver))?;
    let hlen = kind.header_len();
    let word = |i: usize| u32_at(buf, i * 4);
    if buf.len() < hlen {
        return Err(DumpError::truncated(format!(
            "header needs {hlen} bytes, have {}",
            buf.len()
        )));
    }
    let (task_num, tcb_size, mem_seg_num, chip_rev) = match kind {
        DumpKind::ElfSha256V2_2 => (0, 0, 0, word(2)),
        DumpKind::BinV1 => (word(2).unwrap_or(0), word(3).unwrap_or(0), 0, None),
        _ if hlen == 20 => (
            word(2).unwrap_or(0),
            word(3).unwrap_or(0),
            word(4).unwrap_or(0),
            None,
        ),
        _ => (
            word(2).unwrap_or(0),
            word(3).unwrap_or(0),
            word(4).unwrap_or(0),
            word(5),
        ),
    };
    let ck = kind.checksum();
    let tot = tot_len as usize;
    if tot < hlen + ck.size() {
        return Err(DumpError::malformed(format!(
            "tot_len {tot_len} smaller than header plus checksum"
        )));
    }
    if buf.len() < tot {
        return Err(DumpError::truncated(format!(
            "header announces {tot_len} bytes, only {} present",
            buf.len()
        )));
    }
    let covered = &buf[..tot - ck.size()];
    let stored = &buf[tot - ck.size()..tot];
    verify_checksum(ck, covered, stored)?;
    let header = DumpHeader {
        tot_len,
        version,
        kind,
        task_num,
        tcb_size,
        mem_seg_num,
        chip_rev,
    };
    Ok((header, &buf[hlen..tot - ck.size()]))
}

fn verify_checksum(kind: ChecksumKind, covered: &[u8], stored: &[u8]) -> Result<(), DumpError> {
    match kind {
        ChecksumKind::Crc32 => {
            let want = u32_at(stored, 0).unwrap_or(0);
            let got = crc32fast::hash(covered);
            if got != want {
                return Err(DumpError::ChecksumMismatch(format!(
                    "CRC32 is 0x{got:08x}, dump says 0x{want:08x}"
                )));
            }
        }
        ChecksumKind::Sha256 => {
            let got: [u8; 32] = Sha256::digest(covered).into();
            if got[..] != *stored {
                return Err(DumpError::ChecksumMismatch(format!(
                    "SHA-256 is {}, dump says {}",
                    hex(&got),
                    hex(stored)
                )));
            }
        }
    }
    Ok(())
}

/// Lower-case hex of a byte slice.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
