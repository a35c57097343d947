//! Chip identifiers (from the dump version word) and their CPU architecture.

use serde::{Deserialize, Serialize};

/// CPU architecture of an ESP chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Xtensa LX6/LX7 (ESP32, ESP32-S2, ESP32-S3), windowed ABI.
    Xtensa,
    /// 32-bit RISC-V (ESP32-C/H/P series).
    RiscV,
}

/// An ESP chip, identified by the chip id in bits 31..16 of the dump version word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    /// ESP32 (id 0).
    Esp32,
    /// ESP32-S2 (id 2).
    Esp32s2,
    /// ESP32-C3 (id 5).
    Esp32c3,
    /// ESP32-S3 (id 9).
    Esp32s3,
    /// ESP32-C2 (id 12).
    Esp32c2,
    /// ESP32-C6 (id 13).
    Esp32c6,
    /// ESP32-H2 (id 16).
    Esp32h2,
    /// ESP32-P4 (id 18).
    Esp32p4,
    /// ESP32-C61 (id 20).
    Esp32c61,
    /// ESP32-C5 (id 23).
    Esp32c5,
    /// ESP32-H21 (id 25).
    Esp32h21,
    /// ESP32-H4 (id 28).
    Esp32h4,
    /// ESP32-S31 (id 32).
    Esp32s31,
    /// A chip id this crate does not know; architecture from the ELF machine.
    Unknown(u16),
}

impl Chip {
    /// Map a chip id (as in the dump version word and image header) to a chip.
    pub fn from_id(id: u16) -> Chip {
        match id {
            0 => Chip::Esp32,
            2 => Chip::Esp32s2,
            5 => Chip::Esp32c3,
            9 => Chip::Esp32s3,
            12 => Chip::Esp32c2,
            13 => Chip::Esp32c6,
            16 => Chip::Esp32h2,
            18 => Chip::Esp32p4,
            20 => Chip::Esp32c61,
            23 => Chip::Esp32c5,
            25 => Chip::Esp32h21,
            28 => Chip::Esp32h4,
            32 => Chip::Esp32s31,
            other => Chip::Unknown(other),
        }
    }

    /// True for chip ids esp-coredump supports.
    pub fn is_known(self) -> bool {
        !matches!(self, Chip::Unknown(_))
    }

    /// The architecture, when known from the chip id alone.
    pub fn arch(self) -> Option<Arch> {
        match self {
            Chip::Esp32 | Chip::Esp32s2 | Chip::Esp32s3 => Some(Arch::Xtensa),
            Chip::Unknown(_) => None,
            _ => Some(Arch::RiscV),
        }
    }

    /// Lower-case name as used by ESP-IDF (`esp32c3`, ...).
    pub fn name(self) -> String {
        match self {
            Chip::Esp32 => "esp32".into(),
            Chip::Esp32s2 => "esp32s2".into(),
            Chip::Esp32c3 => "esp32c3".into(),
            Chip::Esp32s3 => "esp32s3".into(),
            Chip::Esp32c2 => "esp32c2".into(),
            Chip::Esp32c6 => "esp32c6".into(),
            Chip::Esp32h2 => "esp32h2".into(),
            Chip::Esp32p4 => "esp32p4".into(),
            Chip::Esp32c61 => "esp32c61".into(),
            Chip::Esp32c5 => "esp32c5".into(),
            Chip::Esp32h21 => "esp32h21".into(),
            Chip::Esp32h4 => "esp32h4".into(),
            Chip::Esp32s31 => "esp32s31".into(),
            Chip::Unknown(id) => format!("unknown chip id {id}"),
        }
    }
}
