//! Chip identities and per-chip memory maps.
//!
//! The image header names its target with a numeric chip id. To tell which
//! segment is the flash-mapped read-only data (DROM) segment that starts with
//! `esp_app_desc_t`, a segment's load address has to be looked up in that
//! chip's address map. The tables here are copied from esptool's per-target
//! `MEMORY_MAP` (espressif/esptool @ bb72741, `esptool/targets/*.py`), so that
//! the memory-type names we report are the ones `esptool image-info` prints.

#[cfg(feature = "serde")]
use serde::Serialize;

/// An ESP chip family known to this crate, identified by the image header's
/// `chip_id` field (the same numbering is used in core dump version words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Chip {
    /// ESP32 (Xtensa LX6), chip id 0.
    Esp32,
    /// ESP32-S2 (Xtensa LX7), chip id 2.
    Esp32S2,
    /// ESP32-C3 (RISC-V), chip id 5.
    Esp32C3,
    /// ESP32-S3 (Xtensa LX7), chip id 9.
    Esp32S3,
    /// ESP32-C2 (RISC-V), chip id 12.
    Esp32C2,
    /// ESP32-C6 (RISC-V), chip id 13.
    Esp32C6,
    /// ESP32-H2 (RISC-V), chip id 16.
    Esp32H2,
    /// ESP32-P4 (RISC-V), chip id 18.
    Esp32P4,
    /// ESP32-C61 (RISC-V), chip id 20.
    Esp32C61,
    /// ESP32-C5 (RISC-V), chip id 23.
    Esp32C5,
    /// ESP32-H21 (RISC-V), chip id 25.
    Esp32H21,
    /// ESP32-H4 (RISC-V), chip id 28.
    Esp32H4,
    /// ESP32-E22, chip id 31.
    Esp32E22,
    /// ESP32-S31, chip id 32.
    Esp32S31,
}

/// One entry of a chip's address map: addresses in `start..end` carry the
/// memory type `name` (for example `"DROM"` or `"IRAM"`). Entries overlap, so
/// one address usually has several types, exactly as in esptool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First address of the region.
    pub start: u32,
    /// One past the last address of the region.
    pub end: u32,
    /// esptool's name for the memory type, e.g. `"DROM"`, `"PADDING"`.
    pub name: &'static str,
}

/// Name of the memory type that holds flash-mapped read-only data; the first
/// segment of this type starts with `esp_app_desc_t`.
pub const DROM: &str = "DROM";
/// Name of the memory type of internal data RAM; the first such segment of a
/// bootloader image (IDF 5.x and later) starts with `esp_bootloader_desc_t`.
pub const DRAM: &str = "DRAM";
/// Name esptool gives to filler segments (load address below 0x10000).
pub const PADDING: &str = "PADDING";

const fn r(start: u32, end: u32, name: &'static str) -> MemoryRegion {
    MemoryRegion { start, end, name }
}

const ESP32_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3F40_0000, 0x3F80_0000, "DROM"),
    r(0x3F80_0000, 0x3FC0_0000, "EXTRAM_DATA"),
    r(0x3FF8_0000, 0x3FF8_2000, "RTC_DRAM"),
    r(0x3FF9_0000, 0x4000_0000, "BYTE_ACCESSIBLE"),
    r(0x3FFA_E000, 0x4000_0000, "DRAM"),
    r(0x3FFE_0000, 0x3FFF_FFFC, "DIRAM_DRAM"),
    r(0x4000_0000, 0x4007_0000, "IROM"),
    r(0x4007_0000, 0x4007_8000, "CACHE_PRO"),
    r(0x4007_8000, 0x4008_0000, "CACHE_APP"),
    r(0x4008_0000, 0x400A_0000, "IRAM"),
    r(0x400A_0000, 0x400B_FFFC, "DIRAM_IRAM"),
    r(0x400C_0000, 0x400C_2000, "RTC_IRAM"),
    r(0x400D_0000, 0x4040_0000, "IROM"),
    r(0x5000_0000, 0x5000_2000, "RTC_DATA"),
];

const ESP32S2_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3F00_0000, 0x3FF8_0000, "DROM"),
    r(0x3F50_0000, 0x3FF8_0000, "EXTRAM_DATA"),
    r(0x3FF9_E000, 0x3FFA_0000, "RTC_DRAM"),
    r(0x3FF9_E000, 0x4000_0000, "BYTE_ACCESSIBLE"),
    r(0x3FF9_E000, 0x4007_2000, "MEM_INTERNAL"),
    r(0x3FFB_0000, 0x4000_0000, "DRAM"),
    r(0x4000_0000, 0x4001_A100, "IROM_MASK"),
    r(0x4002_0000, 0x4007_0000, "IRAM"),
    r(0x4007_0000, 0x4007_2000, "RTC_IRAM"),
    r(0x4008_0000, 0x4080_0000, "IROM"),
    r(0x5000_0000, 0x5000_2000, "RTC_DATA"),
];

const ESP32S3_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3C00_0000, 0x3D00_0000, "DROM"),
    r(0x3D00_0000, 0x3E00_0000, "EXTRAM_DATA"),
    r(0x600F_E000, 0x6010_0000, "RTC_DRAM"),
    r(0x3FC8_8000, 0x3FD0_0000, "BYTE_ACCESSIBLE"),
    r(0x3FC8_8000, 0x403E_2000, "MEM_INTERNAL"),
    r(0x3FC8_8000, 0x3FD0_0000, "DRAM"),
    r(0x4000_0000, 0x4001_A100, "IROM_MASK"),
    r(0x4037_0000, 0x403E_0000, "IRAM"),
    r(0x600F_E000, 0x6010_0000, "RTC_IRAM"),
    r(0x4200_0000, 0x4280_0000, "IROM"),
    r(0x5000_0000, 0x5000_2000, "RTC_DATA"),
];

const ESP32C2_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3C00_0000, 0x3C40_0000, "DROM"),
    r(0x3FCA_0000, 0x3FCE_0000, "DRAM"),
    r(0x3FC8_8000, 0x3FD0_0000, "BYTE_ACCESSIBLE"),
    r(0x3FF0_0000, 0x3FF5_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4009_0000, "IROM_MASK"),
    r(0x4200_0000, 0x4240_0000, "IROM"),
    r(0x4037_C000, 0x403C_0000, "IRAM"),
];

const ESP32C3_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3C00_0000, 0x3C80_0000, "DROM"),
    r(0x3FC8_0000, 0x3FCE_0000, "DRAM"),
    r(0x3FC8_8000, 0x3FD0_0000, "BYTE_ACCESSIBLE"),
    r(0x3FF0_0000, 0x3FF2_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4006_0000, "IROM_MASK"),
    r(0x4200_0000, 0x4280_0000, "IROM"),
    r(0x4037_C000, 0x403E_0000, "IRAM"),
    r(0x5000_0000, 0x5000_2000, "RTC_IRAM"),
    r(0x5000_0000, 0x5000_2000, "RTC_DRAM"),
    r(0x600F_E000, 0x6010_0000, "MEM_INTERNAL2"),
];

// The chips below have a unified cache bus: DROM and IROM are the same
// address window, so a flash segment is both. esptool (elf2image) moves the
// `.flash.appdesc` section to the front of the flash segments for exactly
// this reason, which keeps "first DROM segment" meaningful.

const ESP32C5_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4200_0000, 0x4400_0000, "DROM"),
    r(0x4080_0000, 0x4086_0000, "DRAM"),
    r(0x4080_0000, 0x4086_0000, "BYTE_ACCESSIBLE"),
    r(0x4003_A000, 0x4004_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4003_A000, "IROM_MASK"),
    r(0x4200_0000, 0x4400_0000, "IROM"),
    r(0x4080_0000, 0x4086_0000, "IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_DRAM"),
    r(0x600F_E000, 0x6010_0000, "MEM_INTERNAL2"),
];

/// ESP32-C6; esptool's ESP32-H2 and ESP32-H21 targets inherit this map.
const ESP32C6_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4200_0000, 0x4300_0000, "DROM"),
    r(0x4080_0000, 0x4088_0000, "DRAM"),
    r(0x4080_0000, 0x4088_0000, "BYTE_ACCESSIBLE"),
    r(0x4004_AC00, 0x4005_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4004_AC00, "IROM_MASK"),
    r(0x4200_0000, 0x4300_0000, "IROM"),
    r(0x4080_0000, 0x4088_0000, "IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_DRAM"),
    r(0x600F_E000, 0x6010_0000, "MEM_INTERNAL2"),
];

const ESP32C61_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4200_0000, 0x4400_0000, "DROM"),
    r(0x4080_0000, 0x4086_0000, "DRAM"),
    r(0x4080_0000, 0x4086_0000, "BYTE_ACCESSIBLE"),
    r(0x4004_AC00, 0x4005_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4004_AC00, "IROM_MASK"),
    r(0x4200_0000, 0x4400_0000, "IROM"),
    r(0x4080_0000, 0x4086_0000, "IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_DRAM"),
    r(0x600F_E000, 0x6010_0000, "MEM_INTERNAL2"),
];

const ESP32H4_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4200_0000, 0x4400_0000, "DROM"),
    r(0x4081_0000, 0x4086_0000, "DRAM"),
    r(0x4081_0000, 0x4086_0000, "BYTE_ACCESSIBLE"),
    r(0x4000_0000, 0x4005_0000, "DROM_MASK"),
    r(0x4000_0000, 0x4005_0000, "IROM_MASK"),
    r(0x4200_0000, 0x4400_0000, "IROM"),
    r(0x4081_0000, 0x4086_0000, "IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_IRAM"),
    r(0x5000_0000, 0x5000_4000, "RTC_DRAM"),
    r(0x6000_0000, 0x6010_0000, "MEM_INTERNAL2"),
];

const ESP32P4_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4000_0000, 0x4C00_0000, "DROM"),
    r(0x4FF0_0000, 0x4FFA_0000, "DRAM"),
    r(0x4FF0_0000, 0x4FFA_0000, "BYTE_ACCESSIBLE"),
    r(0x4FC0_0000, 0x4FC2_0000, "DROM_MASK"),
    r(0x4FC0_0000, 0x4FC2_0000, "IROM_MASK"),
    r(0x4000_0000, 0x4C00_0000, "IROM"),
    r(0x4FF0_0000, 0x4FFA_0000, "IRAM"),
    r(0x5010_8000, 0x5011_0000, "RTC_IRAM"),
    r(0x5010_8000, 0x5011_0000, "RTC_DRAM"),
    r(0x600F_E000, 0x6010_0000, "MEM_INTERNAL2"),
];

const ESP32E22_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x3C00_0000, 0x4000_0000, "DROM"),
    r(0x3100_0000, 0x3120_0000, "DRAM"),
    r(0x3100_0000, 0x3120_0000, "BYTE_ACCESSIBLE"),
    r(0x3000_0000, 0x3012_0000, "DROM_MASK"),
    r(0x3000_0000, 0x3012_0000, "IROM_MASK"),
    r(0x3C00_0000, 0x4000_0000, "IROM"),
    r(0x30FE_0000, 0x3120_0000, "IRAM"),
    r(0xC000_0000, 0xC000_8000, "RTC_IRAM"),
    r(0xC000_0000, 0xC000_8000, "RTC_DRAM"),
];

const ESP32S31_MAP: &[MemoryRegion] = &[
    r(0x0000_0000, 0x0001_0000, "PADDING"),
    r(0x4000_0000, 0x5400_0000, "DROM"),
    r(0x2F00_0000, 0x2F08_0000, "DRAM"),
    r(0x2F00_0000, 0x2F08_0000, "BYTE_ACCESSIBLE"),
    r(0x2F80_0000, 0x2F85_0000, "DROM_MASK"),
    r(0x2F80_0000, 0x2F85_0000, "IROM_MASK"),
    r(0x4000_0000, 0x5400_0000, "IROM"),
    r(0x2F00_0000, 0x2F08_0000, "IRAM"),
    r(0x2E00_0000, 0x2E00_8000, "RTC_IRAM"),
    r(0x2E00_0000, 0x2E00_8000, "RTC_DRAM"),
];

/// Flash frequency names by header code, in esptool's dictionary order (the
/// first name listed for a code is the one esptool prints).
const FREQ_ESP32: &[(u8, &str)] = &[(0xF, "80m"), (0x0, "40m"), (0x1, "26m"), (0x2, "20m")];
const FREQ_ESP32C2: &[(u8, &str)] = &[(0xF, "60m"), (0x0, "30m"), (0x1, "20m"), (0x2, "15m")];
const FREQ_ESP32C5: &[(u8, &str)] = &[(0xF, "80m"), (0x0, "40m"), (0x2, "20m")];
// The C6 ROM has a wrong MSPI divider, so code 0 means 80 MHz as well as 40.
const FREQ_ESP32C6: &[(u8, &str)] = &[(0x0, "80m"), (0x0, "40m"), (0x2, "20m")];
const FREQ_ESP32H2: &[(u8, &str)] = &[(0xF, "48m"), (0x0, "24m"), (0x1, "16m"), (0x2, "12m")];

impl Chip {
    /// Every chip this crate knows, in chip-id order.
    pub const ALL: [Chip; 14] = [
        Chip::Esp32,
        Chip::Esp32S2,
        Chip::Esp32C3,
        Chip::Esp32S3,
        Chip::Esp32C2,
        Chip::Esp32C6,
        Chip::Esp32H2,
        Chip::Esp32P4,
        Chip::Esp32C61,
        Chip::Esp32C5,
        Chip::Esp32H21,
        Chip::Esp32H4,
        Chip::Esp32E22,
        Chip::Esp32S31,
    ];

    /// Looks up a chip by the image header's `chip_id`. Returns `None` for ids
    /// this crate does not know (including 0xFFFF, "invalid").
    pub fn from_id(id: u16) -> Option<Chip> {
        Chip::ALL.into_iter().find(|chip| chip.id() == id)
    }

    /// The numeric chip id written in image headers and core dump version words.
    pub fn id(self) -> u16 {
        match self {
            Chip::Esp32 => 0,
            Chip::Esp32S2 => 2,
            Chip::Esp32C3 => 5,
            Chip::Esp32S3 => 9,
            Chip::Esp32C2 => 12,
            Chip::Esp32C6 => 13,
            Chip::Esp32H2 => 16,
            Chip::Esp32P4 => 18,
            Chip::Esp32C61 => 20,
            Chip::Esp32C5 => 23,
            Chip::Esp32H21 => 25,
            Chip::Esp32H4 => 28,
            Chip::Esp32E22 => 31,
            Chip::Esp32S31 => 32,
        }
    }

    /// The lower-case target name used by ESP-IDF and esptool's `--chip`,
    /// e.g. `"esp32c3"`.
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp32 => "esp32",
            Chip::Esp32S2 => "esp32s2",
            Chip::Esp32C3 => "esp32c3",
            Chip::Esp32S3 => "esp32s3",
            Chip::Esp32C2 => "esp32c2",
            Chip::Esp32C6 => "esp32c6",
            Chip::Esp32H2 => "esp32h2",
            Chip::Esp32P4 => "esp32p4",
            Chip::Esp32C61 => "esp32c61",
            Chip::Esp32C5 => "esp32c5",
            Chip::Esp32H21 => "esp32h21",
            Chip::Esp32H4 => "esp32h4",
            Chip::Esp32E22 => "esp32e22",
            Chip::Esp32S31 => "esp32s31",
        }
    }

    /// The marketing name esptool prints, e.g. `"ESP32-C3"`.
    pub fn display_name(self) -> &'static str {
        match self {
            Chip::Esp32 => "ESP32",
            Chip::Esp32S2 => "ESP32-S2",
            Chip::Esp32C3 => "ESP32-C3",
            Chip::Esp32S3 => "ESP32-S3",
            Chip::Esp32C2 => "ESP32-C2",
            Chip::Esp32C6 => "ESP32-C6",
            Chip::Esp32H2 => "ESP32-H2",
            Chip::Esp32P4 => "ESP32-P4",
            Chip::Esp32C61 => "ESP32-C61",
            Chip::Esp32C5 => "ESP32-C5",
            Chip::Esp32H21 => "ESP32-H21",
            Chip::Esp32H4 => "ESP32-H4",
            Chip::Esp32E22 => "ESP32-E22",
            Chip::Esp32S31 => "ESP32-S31",
        }
    }

    /// The chip's address map (esptool's `MEMORY_MAP`).
    pub fn memory_map(self) -> &'static [MemoryRegion] {
        match self {
            Chip::Esp32 => ESP32_MAP,
            Chip::Esp32S2 => ESP32S2_MAP,
            Chip::Esp32S3 => ESP32S3_MAP,
            Chip::Esp32C2 => ESP32C2_MAP,
            Chip::Esp32C3 => ESP32C3_MAP,
            Chip::Esp32C5 => ESP32C5_MAP,
            Chip::Esp32C6 | Chip::Esp32H2 | Chip::Esp32H21 => ESP32C6_MAP,
            Chip::Esp32C61 => ESP32C61_MAP,
            Chip::Esp32H4 => ESP32H4_MAP,
            Chip::Esp32P4 => ESP32P4_MAP,
            Chip::Esp32E22 => ESP32E22_MAP,
            Chip::Esp32S31 => ESP32S31_MAP,
        }
    }

    /// The memory types (esptool's names) that cover `addr`, in map order.
    /// Empty when the address is in no known region.
    pub fn memory_types(self, addr: u32) -> Vec<&'static str> {
        self.memory_map()
            .iter()
            .filter(|region| region.start <= addr && addr < region.end)
            .map(|region| region.name)
            .collect()
    }

    /// The flash frequency that the header's frequency code means on this
    /// chip, as esptool prints it (e.g. `"40m"`), or `None` for an unknown code.
    pub fn flash_frequency_name(self, code: u8) -> Option<&'static str> {
        let table = match self {
            Chip::Esp32
            | Chip::Esp32S2
            | Chip::Esp32S3
            | Chip::Esp32C3
            | Chip::Esp32P4
            | Chip::Esp32E22 => FREQ_ESP32,
            Chip::Esp32C2 => FREQ_ESP32C2,
            Chip::Esp32C5 | Chip::Esp32C61 | Chip::Esp32S31 => FREQ_ESP32C5,
            Chip::Esp32C6 => FREQ_ESP32C6,
            Chip::Esp32H2 | Chip::Esp32H21 | Chip::Esp32H4 => FREQ_ESP32H2,
        };
        table
            .iter()
            .find(|(value, _)| *value == code)
            .map(|(_, name)| *name)
    }
}

impl std::fmt::Display for Chip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chip_round_trips_through_its_id() {
        for chip in Chip::ALL {
            assert_eq!(Chip::from_id(chip.id()), Some(chip));
        }
        assert_eq!(Chip::from_id(0xFFFF), None);
        assert_eq!(Chip::from_id(1), None);
    }

    #[test]
    fn every_chip_map_has_exactly_one_drom_region_and_padding() {
        for chip in Chip::ALL {
            let map = chip.memory_map();
            assert_eq!(map.iter().filter(|r| r.name == DROM).count(), 1, "{chip}");
            assert_eq!(chip.memory_types(0), vec![PADDING], "{chip}");
        }
    }

    #[test]
    fn memory_types_match_esptool_image_info_examples() {
        assert_eq!(Chip::Esp32.memory_types(0x3f40_0020), vec!["DROM"]);
        assert_eq!(
            Chip::Esp32.memory_types(0x3fff_0030),
            vec!["BYTE_ACCESSIBLE", "DRAM", "DIRAM_DRAM"]
        );
        assert_eq!(
            Chip::Esp32S2.memory_types(0x3ffb_de90),
            vec!["BYTE_ACCESSIBLE", "MEM_INTERNAL", "DRAM"]
        );
        assert_eq!(
            Chip::Esp32C3.memory_types(0x3fcd_6100),
            vec!["DRAM", "BYTE_ACCESSIBLE"]
        );
        assert_eq!(
            Chip::Esp32C6.memory_types(0x4200_0020),
            vec!["DROM", "IROM"]
        );
    }

    #[test]
    fn flash_frequency_names_follow_esptool() {
        assert_eq!(Chip::Esp32.flash_frequency_name(0), Some("40m"));
        assert_eq!(Chip::Esp32S2.flash_frequency_name(0xF), Some("80m"));
        assert_eq!(Chip::Esp32C6.flash_frequency_name(0), Some("80m"));
        assert_eq!(Chip::Esp32H2.flash_frequency_name(0), Some("24m"));
        assert_eq!(Chip::Esp32.flash_frequency_name(7), None);
    }
}
