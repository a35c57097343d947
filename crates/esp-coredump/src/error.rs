//! Error type shared by every stage of dump decoding and analysis.

use thiserror::Error;

/// Everything that can go wrong while decoding a core dump or analysing it
/// against a firmware ELF.
///
/// Use [`DumpError::is_malformed`] to tell a broken or unrecognised *dump*
/// (a permanent failure of the input itself) from problems with the firmware
/// ELF or other conditions.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DumpError {
    /// The input is not a raw dump, base64 UART text or ELF core.
    #[error("unrecognised core dump format: {0}")]
    UnknownFormat(String),
    /// The dump ends before the length announced by its header or structures.
    #[error("core dump truncated: {0}")]
    Truncated(String),
    /// The stored CRC32 or SHA-256 does not match the dump contents.
    #[error("core dump checksum mismatch: {0}")]
    ChecksumMismatch(String),
    /// The header carries a version this parser does not know.
    #[error("unsupported core dump version 0x{0:08x}")]
    UnsupportedVersion(u32),
    /// The flash partition reads as erased (no dump stored).
    #[error("core dump partition is empty (erased flash)")]
    Empty,
    /// Structurally invalid dump content (bad ELF core, inconsistent sizes, ...).
    #[error("malformed core dump: {0}")]
    Malformed(String),
    /// The firmware ELF could not be read.
    #[error("invalid firmware ELF: {0}")]
    InvalidElf(String),
}

impl DumpError {
    /// True when the *dump* itself is broken, unrecognised, truncated or fails
    /// its checksum. False for firmware-ELF problems.
    pub fn is_malformed(&self) -> bool {
        !matches!(self, DumpError::InvalidElf(_))
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        DumpError::Malformed(msg.into())
    }

    pub(crate) fn truncated(msg: impl Into<String>) -> Self {
        DumpError::Truncated(msg.into())
    }
}
