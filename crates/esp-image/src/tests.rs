//! Unit tests on images synthesised here: one valid app image, then one
//! corruption per error path with the exact message asserted, plus a cheap
//! deterministic no-panic property test over truncations and byte flips.

use sha2::{Digest, Sha256};

use super::*;

/// A segment to put into a synthesised image.
struct Seg {
    addr: u32,
    data: Vec<u8>,
}

fn seg(addr: u32, data: Vec<u8>) -> Seg {
    Seg { addr, data }
}

/// Builds an image the way esptool lays it out: header, segments, zero
/// padding to 15 mod 16, checksum byte, optional SHA-256.
fn build_image(chip_id: u16, segments: &[Seg], hash_appended: bool) -> Vec<u8> {
    let mut out = vec![
        0xE9,
        u8::try_from(segments.len()).unwrap(),
        2,    // DIO
        0x10, // 2MB, freq code 0
    ];
    out.extend_from_slice(&0x4008_0af0u32.to_le_bytes());
    out.extend_from_slice(&[0xEE, 0, 0, 0]);
    out.extend_from_slice(&chip_id.to_le_bytes());
    out.push(0); // legacy min rev
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&399u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(u8::from(hash_appended));
    assert_eq!(out.len(), 24);
    let mut checksum = 0xEFu8;
    for s in segments {
        out.extend_from_slice(&s.addr.to_le_bytes());
        out.extend_from_slice(&u32::try_from(s.data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&s.data);
        checksum = s.data.iter().fold(checksum, |a, b| a ^ b);
    }
    while out.len() % 16 != 15 {
        out.push(0);
    }
    out.push(checksum);
    if hash_appended {
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
    }
    out
}

/// Recomputes checksum and hash after a test has edited segment data, so
/// that only the intended corruption remains.
fn refresh_footer(image: &mut Vec<u8>) {
    let parsed = parse_image(image).unwrap();
    image[parsed.checksum.offset] = parsed.checksum.calculated;
    if let Some(sha) = parsed.sha256 {
        image.truncate(sha.offset);
        let digest = Sha256::digest(&*image);
        image.extend_from_slice(&digest);
    }
}

struct DescFields<'a> {
    magic: u32,
    version: &'a [u8],
    project: &'a [u8],
    time: &'a [u8],
    date: &'a [u8],
    idf: &'a [u8],
}

const GOOD: DescFields<'static> = DescFields {
    magic: 0xABCD_5432,
    version: b"v1.2.3-4-gdeadbee",
    project: b"sensor_node",
    time: b"16:23:40",
    date: b"Jul 25 2024",
    idf: b"v5.2.2",
};

fn app_desc(f: &DescFields<'_>) -> Vec<u8> {
    let mut d = vec![0u8; 256];
    d[0..4].copy_from_slice(&f.magic.to_le_bytes());
    d[4..8].copy_from_slice(&7u32.to_le_bytes());
    d[16..16 + f.version.len()].copy_from_slice(f.version);
    d[48..48 + f.project.len()].copy_from_slice(f.project);
    d[80..80 + f.time.len()].copy_from_slice(f.time);
    d[96..96 + f.date.len()].copy_from_slice(f.date);
    d[112..112 + f.idf.len()].copy_from_slice(f.idf);
    for (i, b) in d[144..176].iter_mut().enumerate() {
        *b = u8::try_from(i).unwrap() * 7;
    }
    d[176..178].copy_from_slice(&1u16.to_le_bytes());
    d[178..180].copy_from_slice(&199u16.to_le_bytes());
    d[180] = 16;
    d
}

fn drom_data(f: &DescFields<'_>) -> Vec<u8> {
    let mut data = app_desc(f);
    data.extend((0..64u8).map(|i| i.wrapping_mul(31)));
    data
}

/// An ESP32 app: DROM (app desc), DRAM, IRAM, with SHA-256 appended.
fn esp32_app_with(f: &DescFields<'_>) -> Vec<u8> {
    build_image(
        0,
        &[
            seg(0x3F40_0020, drom_data(f)),
            seg(0x3FFB_0000, vec![0x50; 16]),
            seg(0x4008_0000, vec![0xA5; 8]),
        ],
        true,
    )
}

fn esp32_app() -> Vec<u8> {
    esp32_app_with(&GOOD)
}

fn err(bytes: &[u8]) -> String {
    parse_app_image(bytes).unwrap_err().to_string()
}

#[test]
fn a_valid_app_image_parses_with_every_field() {
    let bytes = esp32_app();
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.header.segment_count, 3);
    assert_eq!(app.header.entry_addr, 0x4008_0af0);
    assert_eq!(app.header.chip, Some(Chip::Esp32));
    assert_eq!(app.header.spi_mode_name(), Some("DIO"));
    assert_eq!(app.header.flash_size_name().as_deref(), Some("2MB"));
    assert_eq!(app.header.flash_frequency_name(), Some("40m"));
    assert_eq!(app.header.max_chip_rev_name(), "v3.99");
    assert!(app.header.hash_appended);
    assert_eq!(app.segments.len(), 3);
    assert_eq!(app.segments[0].memory_types, vec!["DROM"]);
    assert_eq!(app.segments[0].data_offset, 0x20);
    assert_eq!(app.segments[1].header_offset, 0x20 + 320);
    assert_eq!(app.app_desc_segment, 0);
    assert_eq!(app.app_desc_offset, 0x20);
    assert!(app.checksum_valid);
    assert_eq!(app.checksum.offset % 16, 15);
    assert_eq!(app.sha256_valid, Some(true));
    assert_eq!(app.image_len, bytes.len());
    let d = &app.app_desc;
    assert_eq!(d.version, "v1.2.3-4-gdeadbee");
    assert_eq!(d.project_name, "sensor_node");
    assert_eq!(d.compile_time(), "Jul 25 2024 16:23:40");
    assert_eq!(d.idf_ver, "v5.2.2");
    assert_eq!(d.secure_version, 7);
    assert_eq!(d.app_elf_sha256[1], 7);
    assert_eq!(&d.app_elf_sha256_hex()[..6], "00070e");
    assert_eq!(d.min_efuse_blk_rev_full, 1);
    assert_eq!(d.max_efuse_blk_rev_full, 199);
    assert_eq!(d.mmu_page_size(), Some(65536));
}

#[test]
fn the_app_desc_is_found_in_the_first_drom_segment_even_when_it_is_not_first() {
    let bytes = build_image(
        0,
        &[
            seg(0x3FFB_0000, vec![1; 40]),
            seg(0x0000_0000, vec![0; 12]), // padding segment
            seg(0x3F40_0020, drom_data(&GOOD)),
            seg(
                0x3F41_0020,
                drom_data(&DescFields {
                    version: b"second",
                    ..GOOD
                }),
            ),
        ],
        false,
    );
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.app_desc_segment, 2);
    assert_eq!(app.app_desc_offset, 24 + 8 + 40 + 8 + 12 + 8);
    assert_eq!(app.app_desc.version, GOOD_VERSION);
    assert!(app.segments[1].is_padding());
    assert_eq!(app.sha256_valid, None);
    assert!(app.checksum_valid);
}

const GOOD_VERSION: &str = "v1.2.3-4-gdeadbee";

#[test]
fn chips_with_a_unified_flash_bus_take_the_first_flash_segment() {
    // ESP32-C6: DROM and IROM share 0x42000000.. ; esptool puts the
    // .flash.appdesc segment first.
    let bytes = build_image(
        13,
        &[
            seg(0x4201_8020, drom_data(&GOOD)),
            seg(0x4080_0000, vec![3; 8]),
            seg(0x4200_0020, vec![4; 8]),
        ],
        true,
    );
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.chip(), Some(Chip::Esp32C6));
    assert_eq!(app.segments[0].memory_types, vec!["DROM", "IROM"]);
    assert_eq!(app.app_desc.project_name, "sensor_node");
}

#[test]
fn a_wrong_checksum_is_reported_not_raised() {
    let mut bytes = esp32_app();
    let offset = parse_image(&bytes).unwrap().checksum.offset;
    bytes[offset] ^= 0xFF;
    // Re-hash so that only the checksum is wrong.
    bytes.truncate(offset + 1);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    let app = parse_app_image(&bytes).unwrap();
    assert!(!app.checksum_valid);
    assert_eq!(app.checksum.stored, app.checksum.calculated ^ 0xFF);
    assert_eq!(app.sha256_valid, Some(true));
}

#[test]
fn a_wrong_appended_hash_is_reported_not_raised() {
    let mut bytes = esp32_app();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let app = parse_app_image(&bytes).unwrap();
    assert!(app.checksum_valid);
    assert_eq!(app.sha256_valid, Some(false));
}

#[test]
fn a_flipped_data_byte_invalidates_checksum_and_hash() {
    let mut bytes = esp32_app();
    bytes[0x20 + 300] ^= 0x10; // rodata after the app desc
    let app = parse_app_image(&bytes).unwrap();
    assert!(!app.checksum_valid);
    assert_eq!(app.sha256_valid, Some(false));
}

#[test]
fn bytes_after_the_hash_are_ignored() {
    let clean = esp32_app();
    let mut bytes = clean.clone();
    bytes.extend_from_slice(&[0xFF; 100]);
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.image_len, clean.len());
    assert_eq!(app, parse_app_image(&clean).unwrap());
}

#[test]
fn empty_input_is_too_short() {
    assert_eq!(
        err(&[]),
        "Invalid firmware: binary too short (0 bytes, 24 needed for the image header)"
    );
}

#[test]
fn a_truncated_header_is_too_short() {
    assert_eq!(
        err(&esp32_app()[..10]),
        "Invalid firmware: binary too short (10 bytes, 24 needed for the image header)"
    );
}

#[test]
fn a_wrong_image_magic_is_rejected_with_a_hint() {
    let mut bytes = esp32_app();
    bytes[0] = 0xAA;
    bytes[1] = 0x50;
    assert_eq!(
        err(&bytes),
        "Invalid firmware: not an ESP image (first byte 0xAA, expected 0xE9); this looks like a partition table"
    );
    let mut zip = b"PK\x03\x04".to_vec();
    zip.resize(64, 0);
    assert_eq!(
        err(&zip),
        "Invalid firmware: not an ESP image (first byte 0x50, expected 0xE9); this looks like a ZIP archive"
    );
    assert_eq!(
        err(&[0x00; 24]),
        "Invalid firmware: not an ESP image (first byte 0x00, expected 0xE9)"
    );
}

/// SPEC section 7 lists "binary too short" before any other image error, so
/// the length of the header is checked before its magic byte.
#[test]
fn an_input_shorter_than_the_header_is_too_short_whatever_its_first_byte() {
    assert_eq!(
        err(&[0x00; 3]),
        "Invalid firmware: binary too short (3 bytes, 24 needed for the image header)"
    );
    assert_eq!(
        err(b"PK\x03\x04rest"),
        "Invalid firmware: binary too short (8 bytes, 24 needed for the image header)"
    );
    assert_eq!(
        err(&[0xAA; 23]),
        "Invalid firmware: binary too short (23 bytes, 24 needed for the image header)"
    );
    assert!(matches!(
        parse_image_header(b"hello"),
        Err(ImageError::TooShort {
            actual: 5,
            needed: 24,
            region: Region::ImageHeader
        })
    ));
}

#[test]
fn more_than_sixteen_segments_are_rejected() {
    let mut bytes = esp32_app();
    bytes[1] = 17;
    assert_eq!(
        err(&bytes),
        "Invalid firmware: image header declares 17 segments (at most 16 are allowed)"
    );
}

#[test]
fn a_hash_flag_other_than_zero_or_one_is_rejected() {
    let mut bytes = esp32_app();
    bytes[23] = 2;
    assert_eq!(
        err(&bytes),
        "Invalid firmware: hash_appended flag is 0x02 (expected 0 or 1)"
    );
}

#[test]
fn a_missing_segment_record_is_too_short() {
    let bytes = esp32_app();
    assert_eq!(
        err(&bytes[..28]),
        "Invalid firmware: binary too short (28 bytes, 32 needed for the header of segment 0)"
    );
}

#[test]
fn a_segment_running_past_the_end_is_too_short() {
    let bytes = esp32_app();
    assert_eq!(
        err(&bytes[..100]),
        "Invalid firmware: binary too short (100 bytes, 352 needed for the 320 data bytes of \
         segment 0 at load address 0x3f400020)"
    );
    // A huge declared length must not overflow or allocate.
    let mut huge = bytes.clone();
    huge[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        parse_app_image(&huge).unwrap_err(),
        ImageError::TooShort {
            actual: huge.len(),
            needed: 32 + u64::from(u32::MAX),
            region: Region::SegmentData {
                index: 0,
                load_addr: 0x3F40_0020,
                len: u32::MAX
            },
        }
    );
}

#[test]
fn a_missing_checksum_byte_is_too_short() {
    let bytes = esp32_app();
    let offset = parse_image(&bytes).unwrap().checksum.offset;
    assert_eq!(
        err(&bytes[..offset]),
        format!(
            "Invalid firmware: binary too short ({offset} bytes, {} needed for the checksum byte)",
            offset + 1
        )
    );
}

#[test]
fn a_missing_appended_hash_is_too_short() {
    let bytes = esp32_app();
    let len = bytes.len();
    assert_eq!(
        err(&bytes[..len - 1]),
        format!(
            "Invalid firmware: binary too short ({} bytes, {len} needed for the appended SHA-256)",
            len - 1
        )
    );
}

#[test]
fn an_unknown_chip_id_is_rejected_by_the_app_parser_only() {
    let mut bytes = build_image(0x1234, &[seg(0x3F40_0020, drom_data(&GOOD))], false);
    assert_eq!(
        err(&bytes),
        "Invalid firmware: unknown chip id 4660 in image header, cannot locate the DROM segment"
    );
    let image = parse_image(&bytes).unwrap();
    assert_eq!(image.header.chip, None);
    assert!(image.segments[0].memory_types.is_empty());
    bytes[12] = 0xFF;
    bytes[13] = 0xFF;
    assert!(matches!(
        parse_app_image(&bytes),
        Err(ImageError::UnknownChip { chip_id: 0xFFFF })
    ));
}

/// A bootloader-like ESP32 image with an `esp_bootloader_desc_t`.
fn esp32_bootloader() -> Vec<u8> {
    let mut desc = vec![0u8; 96];
    desc[0] = 0x50;
    desc[3] = 2;
    desc[4..8].copy_from_slice(&1u32.to_le_bytes());
    desc[8..14].copy_from_slice(b"v5.2.2");
    desc[40..60].copy_from_slice(b"Jul 25 2024 16:23:50");
    build_image(
        0,
        &[
            seg(0x3FFF_0030, desc),
            seg(0x4007_8000, vec![1; 20]),
            seg(0x4008_0400, vec![2; 4]),
        ],
        true,
    )
}

#[test]
fn a_bootloader_has_no_drom_segment_but_its_container_parses() {
    let bytes = esp32_bootloader();
    assert_eq!(
        err(&bytes),
        "Invalid firmware: no DROM segment in this esp32 image, so it has no application \
         descriptor (is it a bootloader?)"
    );
    let image = parse_image(&bytes).unwrap();
    assert!(image.checksum_valid);
    assert_eq!(image.sha256_valid, Some(true));
    assert_eq!(
        image.segments[0].memory_types,
        vec!["BYTE_ACCESSIBLE", "DRAM", "DIRAM_DRAM"]
    );
    assert_eq!(image.segments[1].memory_types, vec!["CACHE_APP"]);
    assert_eq!(
        image.bootloader_desc,
        Some(BootloaderDesc {
            secure_version: 2,
            version: 1,
            idf_ver: "v5.2.2".into(),
            date_time: "Jul 25 2024 16:23:50".into(),
        })
    );
}

#[test]
fn an_app_image_never_reports_a_bootloader_desc() {
    // The app's DRAM segment starts with 0x50 bytes, which must not be read
    // as a bootloader descriptor.
    let bytes = esp32_app();
    let image = parse_image(&bytes).unwrap();
    assert_eq!(image.bootloader_desc, None);
    assert_eq!(image.first_drom_segment().map(|s| s.index), Some(0));
}

#[test]
fn a_drom_segment_shorter_than_the_app_desc_is_rejected() {
    let mut short = app_desc(&GOOD);
    short.truncate(128);
    let bytes = build_image(0, &[seg(0x3F40_0020, short)], false);
    assert_eq!(
        err(&bytes),
        "Invalid firmware: DROM segment 0 is 128 bytes long, too short for the 256-byte esp_app_desc_t"
    );
    let bytes = build_image(0, &[seg(0x3F40_0020, Vec::new())], false);
    assert!(matches!(
        parse_app_image(&bytes),
        Err(ImageError::DromSegmentTooShort { index: 0, len: 0 })
    ));
}

#[test]
fn a_wrong_app_desc_magic_is_a_magic_number_mismatch_in_upper_case_hex() {
    let bytes = esp32_app_with(&DescFields {
        magic: 0xDEAD_BEEF,
        ..GOOD
    });
    assert_eq!(
        err(&bytes),
        "Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0xDEADBEEF)"
    );
    let bytes = esp32_app_with(&DescFields {
        magic: 0x1a,
        ..GOOD
    });
    assert_eq!(
        err(&bytes),
        "Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0x0000001A)"
    );
}

#[test]
fn a_short_drom_segment_with_a_wrong_magic_reports_the_magic() {
    let bytes = build_image(0, &[seg(0x3F40_0020, vec![0x11; 8])], false);
    assert_eq!(
        err(&bytes),
        "Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0x11111111)"
    );
}

#[test]
fn an_empty_version_is_rejected() {
    let bytes = esp32_app_with(&DescFields {
        version: b"",
        ..GOOD
    });
    assert_eq!(err(&bytes), "Invalid firmware: empty version string");
}

#[test]
fn a_non_utf8_version_is_rejected_and_other_strings_are_read_lossily() {
    // A long non-ASCII project name that IDF cut part-way through a character.
    let bytes = esp32_app_with(&DescFields {
        project: b"caf\xc3",
        ..GOOD
    });
    let app = parse_app_image(&bytes).expect("the image is accepted");
    assert_eq!(app.app_desc.project_name, "caf\u{fffd}");
    let bytes = esp32_app_with(&DescFields {
        version: b"\xff\xfe",
        ..GOOD
    });
    assert_eq!(
        err(&bytes),
        "Invalid firmware: version string in esp_app_desc_t is not valid UTF-8"
    );
}

#[test]
fn a_string_that_fills_its_field_without_a_nul_is_read_to_the_field_end() {
    let version = [b'x'; 32];
    let bytes = esp32_app_with(&DescFields {
        version: &version,
        ..GOOD
    });
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.app_desc.version, "x".repeat(32));
    assert_eq!(app.app_desc.project_name, "sensor_node");
}

#[test]
fn parse_app_desc_reads_a_bare_descriptor_such_as_an_elf_section() {
    let desc = app_desc(&GOOD);
    assert_eq!(parse_app_desc(&desc).unwrap().version, GOOD_VERSION);
    assert_eq!(
        parse_app_desc(&desc[..100]).unwrap_err().to_string(),
        "Invalid firmware: binary too short (100 bytes, 256 needed for esp_app_desc_t)"
    );
    assert_eq!(
        parse_app_desc(&desc[..3]).unwrap_err().to_string(),
        "Invalid firmware: binary too short (3 bytes, 256 needed for esp_app_desc_t)"
    );
}

#[test]
fn editing_segment_data_and_refreshing_the_footer_keeps_the_image_valid() {
    // Guards the helper the property test relies on.
    let mut bytes = esp32_app();
    bytes[0x20 + 16] = b'w';
    refresh_footer(&mut bytes);
    let app = parse_app_image(&bytes).unwrap();
    assert!(app.checksum_valid);
    assert_eq!(app.sha256_valid, Some(true));
    assert!(app.app_desc.version.starts_with('w'));
}

#[cfg(feature = "serde")]
#[test]
fn the_result_serialises_to_json_with_hex_digests_and_chip_names() {
    let app = parse_app_image(&esp32_app()).unwrap();
    let json = serde_json::to_value(&app).unwrap();
    assert_eq!(json["header"]["chip"], "esp32");
    assert_eq!(json["app_desc"]["version"], GOOD_VERSION);
    assert_eq!(
        json["app_desc"]["app_elf_sha256"],
        app.app_desc.app_elf_sha256_hex()
    );
    assert_eq!(json["segments"][0]["memory_types"][0], "DROM");
    assert_eq!(json["sha256_valid"], true);
    assert!(json["sha256"]["calculated"].as_str().unwrap().len() == 64);
}

/// xorshift64*: a tiny deterministic PRNG so the property test needs no
/// dependency and fails the same way every run.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

fn parse_everything(bytes: &[u8]) {
    let _ = parse_app_image(bytes);
    let _ = parse_image(bytes);
    let _ = parse_image_header(bytes);
    let _ = parse_app_desc(bytes);
    if let Ok(image) = parse_image(bytes) {
        // Accessors must hold up on whatever was parsed.
        for s in &image.segments {
            let _ = s.data(bytes);
        }
        let _ = image.header.flash_size_name();
        let _ = image.header.flash_frequency_name();
    }
}

#[test]
fn every_truncation_of_a_valid_image_is_an_error_and_never_a_panic() {
    for bytes in [esp32_app(), esp32_bootloader()] {
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            parse_everything(cut);
            assert!(parse_image(cut).is_err(), "truncated to {len} parsed");
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = [esp32_app(), esp32_bootloader()];
    for round in 0..4000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        let flips = 1 + rng.below(8);
        for _ in 0..flips {
            // Bias towards the header and segment records, where the
            // structure lives.
            let limit = if rng.below(2) == 0 { 64 } else { bytes.len() };
            let at = rng.below(limit.min(bytes.len()));
            bytes[at] = rng.next().to_le_bytes()[0];
        }
        if rng.below(4) == 0 {
            let len = rng.below(bytes.len() + 1);
            bytes.truncate(len);
        }
        parse_everything(&bytes);
    }
}
