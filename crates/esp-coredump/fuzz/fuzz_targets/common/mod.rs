//! Helpers shared by the fuzz targets.

#![allow(dead_code)]

use std::path::PathBuf;

use esp_coredump::{CoreDump, DumpKind, Firmware};
use sha2::{Digest, Sha256};

/// Treat `data` as a raw dump *without* its checksum: if bytes 4..8 hold a
/// known version word, rewrite `tot_len` to cover `data` plus the checksum
/// and append a correct CRC32/SHA-256. Anything else is returned unchanged.
///
/// Without this almost every mutation of a raw dump stops at the checksum
/// check, and the structure decoders behind it are never reached.
pub fn with_valid_checksum(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if data.len() < 8 {
        return out;
    }
    let ver = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let Some(kind) = DumpKind::from_u16(ver as u16) else {
        return out;
    };
    if data.len() < kind.header_len() {
        return out;
    }
    let ck = kind.checksum().size();
    let Ok(tot) = u32::try_from(data.len() + ck) else {
        return out;
    };
    out[..4].copy_from_slice(&tot.to_le_bytes());
    match kind.checksum() {
        esp_coredump::ChecksumKind::Crc32 => {
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        esp_coredump::ChecksumKind::Sha256 => {
            let h: [u8; 32] = Sha256::digest(&out).into();
            out.extend_from_slice(&h);
        }
    }
    out
}

/// Exercise the `CoreDump` accessors that the analysis uses.
pub fn touch(dump: &CoreDump) {
    let _ = dump.crashed_task();
    let _ = dump.guess_tcb_name_offset();
    for task in &dump.tasks {
        let _ = dump.read_u32(task.registers.sp());
        let _ = dump.segment_at(task.registers.pc());
        let _ = task.registers.named();
    }
    for seg in &dump.segments {
        assert!(seg.end() >= u64::from(seg.addr));
    }
}

/// The `esp` test data folder: `$IOTSUPPORT_TESTDATA`, else
/// `<repo root>/../shared/testdata/esp`. Read at run time only: the
/// third-party test data is never copied into the repo or into a binary.
pub fn testdata_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
        Some(d) => PathBuf::from(d),
        // CARGO_MANIFEST_DIR = <repo>/crates/esp-coredump/fuzz
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/testdata/esp"),
    };
    dir.join("coredump").is_dir().then_some(dir)
}

/// Every firmware ELF of the core dump cases, loaded once, sorted by case
/// name. Empty (with a note on stderr) when the test data is absent.
pub fn load_firmwares() -> Vec<(String, Firmware)> {
    let Some(dir) = testdata_dir() else {
        eprintln!("NOTE: ESP testdata not found; the analyse target only parses");
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir.join("coredump")) else {
        return Vec::new();
    };
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut out = Vec::new();
    for case in cases {
        let Ok(files) = std::fs::read_dir(&case) else {
            continue;
        };
        let mut elfs: Vec<PathBuf> = files
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".elf") && !n.ends_with(".core.elf"))
            })
            .collect();
        elfs.sort();
        let Some(elf) = elfs.first() else { continue };
        let Ok(bytes) = std::fs::read(elf) else {
            continue;
        };
        match Firmware::new(&bytes) {
            Ok(fw) => {
                let name = case.file_name().unwrap_or_default();
                out.push((name.to_string_lossy().into_owned(), fw));
            }
            Err(e) => eprintln!("NOTE: cannot load {}: {e}", elf.display()),
        }
    }
    eprintln!("NOTE: loaded {} firmware ELFs", out.len());
    out
}

/// The firmware to analyse `dump` with: the one whose build SHA the dump
/// records, else one for the same chip, else the first (deterministic).
pub fn pick<'a>(dump: &CoreDump, firmwares: &'a [(String, Firmware)]) -> Option<&'a Firmware> {
    if let Some(prefix) = &dump.app_elf_sha256_prefix {
        let prefix = prefix.to_ascii_lowercase();
        if !prefix.is_empty() {
            if let Some((_, fw)) = firmwares
                .iter()
                .find(|(_, fw)| fw.sha256_hex().starts_with(&prefix))
            {
                return Some(fw);
            }
        }
    }
    let chip = dump.chip.name().to_ascii_lowercase();
    firmwares
        .iter()
        .find(|(name, _)| name.split('_').next() == Some(chip.as_str()))
        .or_else(|| firmwares.first())
        .map(|(_, fw)| fw)
}
