//! The one error type of this crate.
//!
//! Every variant is a problem with the caller's input, so every one is a
//! client error (the service answers 400 `VALIDATION_FAILED` with the
//! `Display` text). Five messages are the Python service's, word for word,
//! because clients and its tests match on them
//! (`docs/original-rotation-provisioning-mqtt.md`, section 2.1):
//!
//! * `NVS partition size must be a multiple of 4096 bytes (4KB)`
//! * `NVS partition size must be at least 12288 bytes (12KB)`
//! * `Provisioning field '{key}' is missing`
//! * `Provisioning field '{key}' cannot be empty`
//! * `NVS key '{key}' exceeds maximum length of 15 characters`
//!
//! The others are ours, for input the Python service either passed on to
//! Espressif's generator (which then failed with an unhelpful exception, a
//! 500) or never checked at all.

use crate::{MAX_KEY_LEN, MAX_PARTITION_SIZE, MAX_STRING_LEN, MIN_PARTITION_SIZE, PAGE_SIZE};

/// Why an NVS image could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvsError {
    /// The partition size is not a whole number of 4096-byte flash sectors.
    #[error("NVS partition size must be a multiple of 4096 bytes (4KB)")]
    SizeNotMultipleOfPage {
        /// The size asked for.
        size: usize,
    },
    /// The partition is smaller than three pages, the least ESP-IDF's NVS
    /// library accepts for a read-write partition.
    #[error("NVS partition size must be at least 12288 bytes (12KB)")]
    SizeTooSmall {
        /// The size asked for.
        size: usize,
    },
    /// The partition is larger than [`MAX_PARTITION_SIZE`]. Not a rule of
    /// NVS: the image is built in memory, and the size comes from a request.
    #[error("NVS partition size must be at most {max} bytes (16MB)", max = MAX_PARTITION_SIZE)]
    SizeTooLarge {
        /// The size asked for.
        size: usize,
    },
    /// An entry has no value (`None`), e.g. an unset setting.
    #[error("Provisioning field '{key}' is missing")]
    FieldMissing {
        /// The entry's key.
        key: String,
    },
    /// An entry's value is empty or only whitespace (Python's `str.strip`
    /// notion of whitespace, see [`crate::is_blank`]).
    #[error("Provisioning field '{key}' cannot be empty")]
    FieldEmpty {
        /// The entry's key.
        key: String,
    },
    /// A key (or the namespace name) is longer than 15 characters; NVS keeps
    /// keys in 16 bytes including the terminating NUL.
    #[error("NVS key '{key}' exceeds maximum length of 15 characters")]
    KeyTooLong {
        /// The key.
        key: String,
    },
    /// A key (or the namespace name) that NVS or Espressif's generator cannot
    /// store as given; `reason` says why.
    #[error("NVS key '{key}' {reason}", key = key.escape_debug())]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it, phrased to follow the key.
        reason: InvalidKeyReason,
    },
    /// Two entries have the same key.
    #[error("NVS key '{key}' is given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A value is longer than [`MAX_STRING_LEN`] bytes of UTF-8.
    #[error(
        "Provisioning field '{key}' is {len} bytes long; an NVS string can hold at most {max} bytes",
        max = MAX_STRING_LEN
    )]
    ValueTooLong {
        /// The entry's key.
        key: String,
        /// The value's length in bytes of UTF-8 (without the NUL).
        len: usize,
    },
    /// The entries need more pages than the partition has.
    #[error(
        "NVS partition of {size} bytes is too small for the provisioning data \
         (no room left for '{key}')"
    )]
    PartitionFull {
        /// The partition size.
        size: usize,
        /// The key of the first entry that did not fit.
        key: String,
    },
}

/// Why a key is not usable; see [`NvsError::InvalidKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKeyReason {
    /// The key is the empty string.
    Empty,
    /// The key contains a NUL character, which would end it early on the
    /// device.
    ContainsNul,
    /// The key has a non-ASCII character. Espressif's generator copies the
    /// key's UTF-8 bytes over as many bytes as the key has *characters*, so a
    /// non-ASCII key makes it write a corrupt entry.
    NotAscii,
    /// Espressif's `write_entry` writes extra, hard-coded Wi-Fi entries when
    /// it sees one of these keys (`sta.ssid`, `sta.pswd`, `ap.ssid`,
    /// `ap.passwd`, `ap.authmode`); this writer does not imitate that, so it
    /// refuses them rather than write a different image.
    ReservedByGenerator,
}

impl std::fmt::Display for InvalidKeyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidKeyReason::Empty => "is empty",
            InvalidKeyReason::ContainsNul => "contains a NUL character",
            InvalidKeyReason::NotAscii => "must be ASCII",
            InvalidKeyReason::ReservedByGenerator => {
                "is reserved: Espressif's generator adds hard-coded Wi-Fi entries for it"
            }
        })
    }
}

// The limits the messages above spell out in words must agree with the
// constants.
const _: () = assert!(PAGE_SIZE == 4096);
const _: () = assert!(MIN_PARTITION_SIZE == 12288);
const _: () = assert!(MAX_PARTITION_SIZE == 16 * 1024 * 1024);
const _: () = assert!(MAX_KEY_LEN == 15);
