//! Input-handling unit tests on synthetic dumps (checksum mismatch,
//! truncation, base64 with log lines) and a deterministic no-panic test over
//! truncations and byte flips of the real dumps.

mod common;

use base64::Engine;
use esp_coredump::{analyse_with, crash_signature, parse_dump, DumpError, Firmware, InputFormat};

/// A minimal binary V2.1 dump (esp32, no tasks) with a valid CRC32.
fn tiny_bin_dump() -> Vec<u8> {
    let mut d = Vec::new();
    for w in [28u32, 0x0000_0003, 0, 0x154, 0, 300] {
        d.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d
}

/// A 32-bit little-endian ELF core of `len` bytes for `machine`, its `phnum` program headers
/// (zeroed) right after the 52-byte header.
fn elf_core(machine: u8, phnum: u16, len: usize) -> Vec<u8> {
    let mut elf = vec![0u8; len];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 1;
    elf[5] = 1;
    elf[6] = 1;
    elf[16] = 4; // ET_CORE
    elf[18] = machine;
    elf[28] = 52; // e_phoff
    elf[42] = 32; // e_phentsize
    elf[44..46].copy_from_slice(&phnum.to_le_bytes());
    elf
}

/// A minimal ELF V2.2 dump (esp32c6, SHA-256) with an empty ELF core.
fn tiny_elf_sha_dump() -> Vec<u8> {
    let elf = elf_core(0xF3, 0, 52); // EM_RISCV
    let tot = 12 + elf.len() + 32;
    let mut d = Vec::new();
    for w in [tot as u32, 0x000d_0104, 1] {
        d.extend_from_slice(&w.to_le_bytes());
    }
    d.extend_from_slice(&elf);
    use sha2::Digest;
    let h = sha2::Sha256::digest(&d);
    d.extend_from_slice(&h);
    d
}

fn to_uart(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.chunks(48) {
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
        s.push_str("\r\n");
    }
    s
}

#[test]
fn synthetic_dumps_parse() {
    let d = parse_dump(&tiny_bin_dump()).expect("bin");
    assert_eq!(d.chip, esp_coredump::Chip::Esp32);
    assert_eq!(d.chip_rev, Some(300));
    assert!(d.tasks.is_empty());
    let d = parse_dump(&tiny_elf_sha_dump()).expect("elf sha");
    assert_eq!(d.chip, esp_coredump::Chip::Esp32c6);
    assert_eq!(d.checksum, Some(esp_coredump::ChecksumKind::Sha256));
}

#[test]
fn trailing_flash_bytes_are_ignored() {
    let mut d = tiny_bin_dump();
    d.extend_from_slice(&[0xAB; 100]);
    assert!(parse_dump(&d).is_ok());
}

#[test]
fn checksum_mismatch_is_reported() {
    let mut d = tiny_bin_dump();
    d[12] ^= 1;
    let e = parse_dump(&d).unwrap_err();
    assert!(matches!(e, DumpError::ChecksumMismatch(_)), "{e}");
    assert!(e.is_malformed());
    let mut d = tiny_elf_sha_dump();
    d[20] ^= 0x80;
    let e = parse_dump(&d).unwrap_err();
    assert!(matches!(e, DumpError::ChecksumMismatch(_)), "{e}");
}

#[test]
fn truncation_is_reported() {
    let d = tiny_bin_dump();
    let e = parse_dump(&d[..d.len() - 1]).unwrap_err();
    assert!(matches!(e, DumpError::Truncated(_)), "{e}");
    let d = tiny_elf_sha_dump();
    let e = parse_dump(&d[..40]).unwrap_err();
    assert!(matches!(e, DumpError::Truncated(_)), "{e}");
}

#[test]
fn erased_partition_and_garbage() {
    assert_eq!(parse_dump(&[0xFF; 64]).unwrap_err(), DumpError::Empty);
    assert!(parse_dump(b"hello world, no dump here")
        .unwrap_err()
        .is_malformed());
    assert!(parse_dump(&[]).is_err());
    let elf_err = Firmware::new(b"not an elf").unwrap_err();
    assert!(!elf_err.is_malformed());
}

#[test]
fn base64_with_log_lines_and_markers() {
    let dump = tiny_elf_sha_dump();
    let text = format!(
        "I (312) boot: starting\r\nabort() was called\r\n================= CORE DUMP START =================\r\n{}================= CORE DUMP END =================\r\nRebooting...\r\n",
        to_uart(&dump)
    );
    let d = parse_dump(text.as_bytes()).expect("with markers");
    assert_eq!(d.input_format, InputFormat::Base64);
    // Without markers, surrounded by log output.
    let text = format!(
        "I (1) x: log line\n{}E (2) y: more log\nDone\n",
        to_uart(&dump)
    );
    let d = parse_dump(text.as_bytes()).expect("without markers");
    assert_eq!(d.chip, esp_coredump::Chip::Esp32c6);
    // Lines are separate base64 units: a padded line in the middle is fine.
    let mut text = to_uart(&dump[..4]);
    text.push_str(&to_uart(&dump[4..]));
    assert!(parse_dump(text.as_bytes()).is_ok());
}

#[test]
fn real_b64_with_log_lines() {
    let Some(cases) = common::cases() else { return };
    for case in cases {
        let b64 = String::from_utf8(case.b64()).unwrap();
        let wrapped = format!(
            "ets Jun  8 2016 00:22:57\nI (100) main: hi\n================= CORE DUMP START =================\n{b64}\n================= CORE DUMP END =================\nI (200) esp_core_dump_uart: done\n"
        );
        let a = parse_dump(wrapped.as_bytes()).expect("wrapped");
        let b = parse_dump(&case.raw()).expect("raw");
        assert_eq!(a.tasks, b.tasks, "{}", case.name);
    }
}

/// Tiny deterministic xorshift PRNG.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Recompute the CRC32 of a raw dump after mutating it, so that mutations
/// reach the structure parsers instead of stopping at the checksum.
fn fix_crc(d: &mut [u8]) {
    let tot = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
    let ver = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) & 0xFFFF;
    if tot <= d.len() && tot >= 8 && matches!(ver, 1 | 2 | 3 | 0x100 | 0x102) {
        let crc = crc32fast::hash(&d[..tot - 4]);
        d[tot - 4..tot].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn no_panic_on_truncations_and_flips() {
    let Some(cases) = common::cases() else { return };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for case in cases {
        let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
        for input in [case.raw(), case.core_elf(), case.b64()] {
            for _ in 0..12 {
                let cut = rng.below(input.len());
                if let Ok(d) = parse_dump(&input[..cut]) {
                    let _ = analyse_with(&d, &fw).map(|r| (r.to_text(), crash_signature(&r)));
                }
            }
            for round in 0..30 {
                let mut m = input.clone();
                let flips = 1 + rng.below(8);
                for _ in 0..flips {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
                if round % 2 == 0 {
                    fix_crc(&mut m);
                }
                if let Ok(d) = parse_dump(&m) {
                    // Analysis is the slow part in debug builds: sample it.
                    if round % 3 == 0 {
                        let _ = analyse_with(&d, &fw).map(|r| (r.to_text(), crash_signature(&r)));
                    }
                }
            }
        }
    }
}

/// An ELF core whose program headers all name the same bytes: 200 headers over a file of under
/// 7 KiB would copy 1.3 MiB (and 32,000 of them in a 1 MiB upload, each naming the whole file, 33 GB).
#[test]
fn segments_that_overlap_are_refused_not_copied_again() {
    let phnum: u16 = 200;
    let len = 52 + 32 * usize::from(phnum);
    let mut elf = elf_core(0x5E, phnum, len); // EM_XTENSA
    for i in 0..usize::from(phnum) {
        let ph = 52 + 32 * i;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 8..ph + 12].copy_from_slice(&0x3ffb_0000u32.to_le_bytes()); // p_vaddr
        elf[ph + 16..ph + 20].copy_from_slice(&(len as u32).to_le_bytes()); // p_filesz
    }
    let e = parse_dump(&elf).unwrap_err();
    assert!(e.is_malformed(), "{e}");
    assert!(e.to_string().contains("overlaps"), "{e}");
    // One such segment is a dump (of no task).
    elf[44..46].copy_from_slice(&1u16.to_le_bytes());
    assert!(parse_dump(&elf).is_ok());
}

/// More tasks than any device writes: refused before any is read (each would be unwound, and
/// every read of the dump searches its segments).
#[test]
fn a_dump_with_more_tasks_than_a_device_has_is_refused() {
    let mut d = Vec::new();
    for w in [28u32, 0x0000_0003, 257, 0, 0, 0] {
        d.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    let e = parse_dump(&d).unwrap_err();
    assert!(e.is_malformed(), "{e}");
    assert!(e.to_string().contains("at most 256"), "{e}");
}

/// Thousands of one-byte segments (each search of the dumped memory walks them all): refused;
/// empty ones do not count.
#[test]
fn a_dump_with_thousands_of_segments_is_refused_and_empty_ones_are_dropped() {
    let elf_with = |segments: usize, size: u32| {
        let data_at = 52 + 32 * segments;
        let mut elf = elf_core(0x5E, segments as u16, data_at + segments);
        for i in 0..segments {
            let ph = 52 + 32 * i;
            elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            elf[ph + 4..ph + 8].copy_from_slice(&((data_at + i) as u32).to_le_bytes());
            elf[ph + 8..ph + 12].copy_from_slice(&(0x3ffb_0000 + 16 * i as u32).to_le_bytes());
            elf[ph + 16..ph + 20].copy_from_slice(&size.to_le_bytes()); // p_filesz
        }
        elf
    };
    let e = parse_dump(&elf_with(3000, 1)).unwrap_err();
    assert!(e.is_malformed(), "{e}");
    assert!(e.to_string().contains("3000 memory segments"), "{e}");
    assert_eq!(parse_dump(&elf_with(2000, 1)).unwrap().segments.len(), 2000);
    assert!(parse_dump(&elf_with(3000, 0)).unwrap().segments.is_empty());
}
