//! Synthesised ESP32 app images, laid out as `esptool elf2image` writes them (as in esp-image's own
//! tests): a DROM segment starting with an `esp_app_desc_t`, DRAM and IRAM segments, the checksum
//! byte and the appended SHA-256. Shared by the firmware tests (`tests/api/firmware_support.rs`)
//! and the benchmark client (`examples/loadgen/`), both of which include this file by path.

use sha2::{Digest, Sha256};

/// The fields of a synthesised `esp_app_desc_t`.
#[derive(Debug, Clone)]
pub struct Desc {
    pub magic: u32,
    pub version: Vec<u8>,
    pub project: &'static [u8],
    pub idf: &'static [u8],
    pub elf_sha256: [u8; 32],
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A 256-byte `esp_app_desc_t` (secure version 3, built "Jul 25 2024 16:23:40").
pub fn app_desc(d: &Desc) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    out[0..4].copy_from_slice(&d.magic.to_le_bytes());
    out[4..8].copy_from_slice(&3u32.to_le_bytes()); // secure_version
    out[16..16 + d.version.len()].copy_from_slice(&d.version);
    out[48..48 + d.project.len()].copy_from_slice(d.project);
    out[80..88].copy_from_slice(b"16:23:40");
    out[96..107].copy_from_slice(b"Jul 25 2024");
    out[112..112 + d.idf.len()].copy_from_slice(d.idf);
    out[144..176].copy_from_slice(&d.elf_sha256);
    out
}

/// An ESP32 app image whose DROM segment is the descriptor followed by `drom_tail`, and whose
/// 16-byte DRAM segment is filled with `dram_fill`.
pub fn esp32_image(desc: &Desc, drom_tail: &[u8], dram_fill: u8) -> Vec<u8> {
    let mut drom = app_desc(desc);
    drom.extend_from_slice(drom_tail);
    let segments: [(u32, Vec<u8>); 3] = [
        (0x3F40_0020, drom),
        (0x3FFB_0000, vec![dram_fill; 16]),
        (0x4008_0000, vec![0xA5; 8]),
    ];
    let mut out = vec![0xE9, 3, 2, 0x10];
    out.extend_from_slice(&0x4008_0af0u32.to_le_bytes());
    out.extend_from_slice(&[0xEE, 0, 0, 0]);
    out.extend_from_slice(&0u16.to_le_bytes()); // chip id: ESP32
    out.push(0);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&399u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(1); // hash appended
    let mut checksum = 0xEFu8;
    for (addr, data) in &segments {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        checksum = data.iter().fold(checksum, |a, b| a ^ b);
    }
    while out.len() % 16 != 15 {
        out.push(0);
    }
    out.push(checksum);
    let digest = sha256(&out);
    out.extend_from_slice(&digest);
    out
}
