//! Unit tests: the golden vector, every validation message, the layout rules
//! (page changes, the last entry of a page, sizes), and a no-panic sweep.
//! The byte-for-byte comparison with Espressif's generator is in
//! `tests/espressif_generator.rs`.

use sha2::{Digest, Sha256};

use super::*;

/// The provisioning keys and values of the golden vector
/// (`docs/original-rotation-provisioning-mqtt.md`, section 2.2).
const GOLDEN: [(&str, &str); 8] = [
    ("device_key", "abc12345"),
    ("client_id", "iotdevice-thermo-abc12345"),
    ("client_secret", "secret123"),
    (
        "token_url",
        "https://auth.example.com/realms/iot/protocol/openid-connect/token",
    ),
    ("base_url", "http://localhost:3200"),
    ("mqtt_url", "mqtt://mqtt.example.com:1883"),
    ("wifi_ssid", "TestNetwork"),
    ("wifi_password", "test-wifi-password"),
];
const GOLDEN_SHA256: &str = "6bf141e379c55544febb59951b96531ae88fb32e5ed3ac02ed6574421fddc203";
const GOLDEN_FIRST_96: &str = "feffffff00000000feffffffffffffffffffffffffffffffffffffff842dbab9\
                               aaaaaaaaeaffffffffffffffffffffffffffffffffffffffffffffffffffffff\
                               000101ff7b059dc870726f7600000000000000000000000001ffffffffffffff";

fn golden_entries() -> Vec<(&'static str, Option<&'static str>)> {
    GOLDEN.iter().map(|&(k, v)| (k, Some(v))).collect()
}

fn build(entries: &[(&str, Option<&str>)], size: usize) -> Vec<u8> {
    provisioning_image("prov", entries, size).unwrap()
}

fn message(entries: &[(&str, Option<&str>)], size: usize) -> String {
    provisioning_image("prov", entries, size)
        .unwrap_err()
        .to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn u32_at(image: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap())
}

/// (page, first entry) of the string entry with this key, found by scanning
/// the written entries the way a reader would (following spans).
fn locate(image: &[u8], key: &str) -> Option<(usize, usize)> {
    for page in 0..image.len() / PAGE_SIZE {
        let base = page * PAGE_SIZE;
        let mut slot = 0;
        while slot < 126 {
            let entry = &image[base + 64 + slot * 32..base + 96 + slot * 32];
            if entry.iter().all(|&b| b == 0xFF) {
                break;
            }
            let name_end = entry[8..24].iter().position(|&b| b == 0).unwrap_or(16);
            if &entry[8..8 + name_end] == key.as_bytes() {
                return Some((page, slot));
            }
            slot += usize::from(entry[2]).max(1);
        }
    }
    None
}

// --- the golden vector ------------------------------------------------------------------------

#[test]
fn the_golden_vector_has_the_documented_sha256() {
    let image = build(&golden_entries(), 0x3000);
    assert_eq!(image.len(), 0x3000);
    assert_eq!(hex::encode(Sha256::digest(&image)), GOLDEN_SHA256);
}

#[test]
fn the_golden_vector_starts_with_the_documented_96_bytes() {
    let image = build(&golden_entries(), 0x3000);
    assert_eq!(hex::encode(&image[..96]), GOLDEN_FIRST_96);
}

#[test]
fn the_golden_vector_uses_one_page_and_leaves_the_rest_erased() {
    let image = build(&golden_entries(), 0x3000);
    assert_eq!(u32_at(&image, 0), 0xFFFF_FFFE, "page 0 stays ACTIVE");
    assert!(image[PAGE_SIZE..].iter().all(|&b| b == 0xFF));
}

#[test]
fn a_string_entry_has_the_documented_fields() {
    let image = build(&golden_entries(), 0x3000);
    // device_key is entry 1: after the namespace entry.
    let entry = &image[96..128];
    assert_eq!(&entry[0..4], &[1, 0x21, 2, 0xFF]);
    assert_eq!(&entry[8..24], b"device_key\0\0\0\0\0\0");
    assert_eq!(&entry[24..28], &[9, 0, 0xFF, 0xFF], "size 8 + NUL");
    assert_eq!(
        u32::from_le_bytes(entry[28..32].try_into().unwrap()),
        layout::nvs_crc32(&[b"abc12345\0"])
    );
    let header_crc = layout::nvs_crc32(&[&entry[0..4], &entry[8..32]]);
    assert_eq!(
        u32::from_le_bytes(entry[4..8].try_into().unwrap()),
        header_crc
    );
    assert_eq!(&image[128..160], b"abc12345\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
}

#[test]
fn the_crc_is_zlib_crc32_resumed_from_all_ones() {
    // zlib.crc32(b"123456789", 0xFFFFFFFF) in Python.
    assert_eq!(layout::nvs_crc32(&[b"123456789"]), 0xD202_D277);
    // Split input gives the same CRC.
    assert_eq!(
        layout::nvs_crc32(&[b"1234", b"56789"]),
        layout::nvs_crc32(&[b"123456789"])
    );
}

// --- sizes, contents, determinism ----------------------------------------------------------------

#[test]
fn the_image_is_exactly_the_partition_size() {
    for size in [0x3000, 0x4000, 0x5000, 0x6000, 0x10000, MAX_PARTITION_SIZE] {
        assert_eq!(build(&golden_entries(), size).len(), size, "size {size:#x}");
    }
}

#[test]
fn a_larger_partition_only_adds_erased_pages() {
    let small = build(&golden_entries(), 0x3000);
    let large = build(&golden_entries(), 0x6000);
    assert_eq!(&large[..0x3000], &small[..]);
    assert!(large[0x3000..].iter().all(|&b| b == 0xFF));
}

#[test]
fn the_image_contains_the_namespace_and_every_value() {
    let mut entries = golden_entries();
    entries.push(("city", Some("Café")));
    let image = build(&entries, 0x3000);
    assert!(contains(&image, b"prov"));
    for (_, value) in &entries {
        assert!(contains(&image, value.unwrap().as_bytes()), "{value:?}");
    }
    assert!(contains(&image, "Café\0".as_bytes()));
}

#[test]
fn a_multi_byte_value_is_sized_in_utf8_bytes() {
    let image = build(&[("city", Some("Café"))], 0x3000);
    let entry = &image[96..128];
    // "Café" is 5 bytes of UTF-8, 6 with the NUL: one data entry.
    assert_eq!(entry[2], 2);
    assert_eq!(u16::from_le_bytes([entry[24], entry[25]]), 6);
}

#[test]
fn the_same_input_gives_the_same_bytes() {
    let first = build(&golden_entries(), 0x5000);
    for _ in 0..3 {
        assert_eq!(build(&golden_entries(), 0x5000), first);
    }
}

#[test]
fn an_empty_entry_list_writes_only_the_namespace() {
    let image = build(&[], 0x3000);
    assert_eq!(
        &image[64..96],
        &hex::decode(&GOLDEN_FIRST_96[128..]).unwrap()[..]
    );
    assert!(image[96..].iter().all(|&b| b == 0xFF));
}

// --- placement: spans, page changes, the last entry of a page ------------------------------------

#[test]
fn a_long_value_spans_several_entries() {
    let value = "x".repeat(100); // 101 bytes with the NUL: 4 data entries
    let image = build(&[("a", Some(&value)), ("b", Some("y"))], 0x3000);
    assert_eq!(image[96 + 2], 5);
    assert_eq!(locate(&image, "b"), Some((0, 6)));
    // The bitmap: entries 0..=7 written (10), the rest empty (11).
    assert_eq!(&image[32..35], &[0xAA, 0xAA, 0xFF]);
}

#[test]
fn a_string_that_does_not_fit_the_rest_of_a_page_starts_the_next() {
    // 95 entries for a (page 0 then holds 96), 33 for b: 129 > 126.
    let a = "q".repeat(3000);
    let b = "r".repeat(1000);
    let image = build(&[("a", Some(&a)), ("b", Some(&b))], 0x3000);
    assert_eq!(locate(&image, "a"), Some((0, 1)));
    assert_eq!(locate(&image, "b"), Some((1, 0)));
    assert_eq!(u32_at(&image, 0), 0xFFFF_FFFC, "page 0 is FULL");
    assert_eq!(u32_at(&image, PAGE_SIZE), 0xFFFF_FFFE, "page 1 is ACTIVE");
    assert_eq!(
        u32_at(&image, PAGE_SIZE + 4),
        1,
        "page 1 has sequence number 1"
    );
    assert_eq!(image[PAGE_SIZE + 8], 0xFE);
    let crc = layout::nvs_crc32(&[&image[PAGE_SIZE + 4..PAGE_SIZE + 28]]);
    assert_eq!(u32_at(&image, PAGE_SIZE + 28), crc);
    // The unused tail of page 0 stays erased, entries and bitmap alike.
    assert!(image[64 + 96 * 32..PAGE_SIZE].iter().all(|&b| b == 0xFF));
    assert!(image[2 * PAGE_SIZE..].iter().all(|&b| b == 0xFF));
}

#[test]
fn a_string_that_would_exactly_fill_a_page_goes_to_the_next_one() {
    // a takes 1 + 94 = 95 entries (page 0: 96 used), b would take the
    // remaining 30 exactly; the generator moves it on.
    let a = "q".repeat(3000);
    let b = "r".repeat(29 * 32 - 1);
    let image = build(&[("a", Some(&a)), ("b", Some(&b))], 0x3000);
    assert_eq!(locate(&image, "b"), Some((1, 0)));
    // One entry less (29) leaves the last entry free, and b stays.
    let b = "r".repeat(28 * 32 - 1);
    let image = build(&[("a", Some(&a)), ("b", Some(&b))], 0x3000);
    assert_eq!(locate(&image, "b"), Some((0, 96)));
}

#[test]
fn the_longest_string_fits_a_fresh_page() {
    let value = "m".repeat(MAX_STRING_LEN);
    assert_eq!(MAX_STRING_LEN, 3967);
    let image = build(&[("a", Some(&value))], 0x3000);
    // Page 0 holds the namespace, so 1 + 125 would fill it: page 1.
    assert_eq!(locate(&image, "a"), Some((1, 0)));
    assert_eq!(image[PAGE_SIZE + 64 + 2], 125);
}

#[test]
fn every_page_of_the_partition_can_be_used() {
    // read_only=True reserves no page: three pages of data in 0x3000.
    let v = "s".repeat(3900);
    let entries = [("a", Some(&*v)), ("b", Some(&*v)), ("c", Some(&*v))];
    let image = build(&entries, 0x3000);
    assert_eq!(locate(&image, "c"), Some((2, 0)));
    assert_eq!(u32_at(&image, 2 * PAGE_SIZE), 0xFFFF_FFFE);
    assert_eq!(u32_at(&image, 2 * PAGE_SIZE + 4), 2);
}

// --- validation messages ---------------------------------------------------------------------------

#[test]
fn a_size_that_is_not_a_multiple_of_4096_is_refused_with_the_original_message() {
    for size in [0x3001, 0x3800, 12289, 100, 4095] {
        assert_eq!(
            message(&golden_entries(), size),
            "NVS partition size must be a multiple of 4096 bytes (4KB)",
            "size {size}"
        );
    }
}

#[test]
fn a_size_below_12kb_is_refused_with_the_original_message() {
    for size in [0, 0x1000, 0x2000] {
        assert_eq!(
            message(&golden_entries(), size),
            "NVS partition size must be at least 12288 bytes (12KB)",
            "size {size}"
        );
    }
}

#[test]
fn a_size_above_16mib_is_refused() {
    let err =
        provisioning_image("prov", &golden_entries(), MAX_PARTITION_SIZE + PAGE_SIZE).unwrap_err();
    assert_eq!(
        err.to_string(),
        "NVS partition size must be at most 16777216 bytes (16MB)"
    );
    let huge = usize::MAX - usize::MAX % PAGE_SIZE;
    assert!(matches!(
        provisioning_image("prov", &[], huge),
        Err(NvsError::SizeTooLarge { .. })
    ));
}

#[test]
fn a_missing_value_is_refused_with_the_original_message() {
    for key in GOLDEN.map(|(k, _)| k) {
        let entries: Vec<_> = GOLDEN
            .iter()
            .map(|&(k, v)| (k, (k != key).then_some(v)))
            .collect();
        assert_eq!(
            message(&entries, 0x3000),
            format!("Provisioning field '{key}' is missing")
        );
    }
}

#[test]
fn an_empty_or_whitespace_value_is_refused_with_the_original_message() {
    for blank in ["", " ", "\t\n", "\u{a0}", "\u{3000}", "\u{1c}\u{1f}"] {
        assert_eq!(
            message(&[("wifi_ssid", Some(blank))], 0x3000),
            "Provisioning field 'wifi_ssid' cannot be empty",
            "{blank:?}"
        );
    }
}

#[test]
fn blank_means_what_python_strips() {
    assert!(is_blank(""));
    assert!(is_blank(
        " \t\r\n\u{b}\u{c}\u{1c}\u{1d}\u{1e}\u{1f}\u{85}\u{2028}"
    ));
    // Not whitespace to Python either.
    assert!(!is_blank("\u{200b}"));
    assert!(!is_blank("\0"));
    assert!(!is_blank(" a "));
}

#[test]
fn a_key_longer_than_15_characters_is_refused_with_the_original_message() {
    assert_eq!(
        message(&[("a_key_of_16_char", Some("v"))], 0x3000),
        "NVS key 'a_key_of_16_char' exceeds maximum length of 15 characters"
    );
    // 15 is fine.
    build(&[("a_key_of_15_chr", Some("v"))], 0x3000);
    // The namespace name is a key too.
    assert_eq!(
        provisioning_image("a_namespace_16ch", &[], 0x3000)
            .unwrap_err()
            .to_string(),
        "NVS key 'a_namespace_16ch' exceeds maximum length of 15 characters"
    );
}

#[test]
fn the_value_is_checked_before_the_key() {
    assert_eq!(
        message(&[("a_key_of_16_char", None)], 0x3000),
        "Provisioning field 'a_key_of_16_char' is missing"
    );
}

#[test]
fn unusable_keys_are_refused() {
    let cases = [
        ("", "NVS key '' is empty"),
        ("clé", "NVS key 'clé' must be ASCII"),
        ("a\0b", "NVS key 'a\\0b' contains a NUL character"),
        (
            "sta.ssid",
            "NVS key 'sta.ssid' is reserved: Espressif's generator adds hard-coded Wi-Fi entries for it",
        ),
    ];
    for (key, expected) in cases {
        assert_eq!(message(&[(key, Some("v"))], 0x3000), expected);
    }
    assert!(matches!(
        provisioning_image("ap.passwd", &[], 0x3000),
        Err(NvsError::InvalidKey {
            reason: InvalidKeyReason::ReservedByGenerator,
            ..
        })
    ));
}

#[test]
fn a_repeated_key_is_refused() {
    assert_eq!(
        message(
            &[("a", Some("1")), ("b", Some("2")), ("a", Some("3"))],
            0x3000
        ),
        "NVS key 'a' is given more than once"
    );
}

#[test]
fn a_value_over_the_string_limit_is_refused() {
    for len in [MAX_STRING_LEN + 1, 3999, 4000, 4001, 100_000] {
        let value = "z".repeat(len);
        assert_eq!(
            message(&[("blob", Some(&value))], 0x3000),
            format!(
                "Provisioning field 'blob' is {len} bytes long; an NVS string can hold at most 3967 bytes"
            )
        );
    }
    // The limit is in bytes: 1984 two-byte characters are 3968 bytes.
    let value = "é".repeat(1984);
    assert!(matches!(
        provisioning_image("prov", &[("blob", Some(&value))], 0x3000),
        Err(NvsError::ValueTooLong { len: 3968, .. })
    ));
}

#[test]
fn entries_that_need_more_pages_than_the_partition_has_are_refused() {
    let v = "s".repeat(3900);
    let entries = [
        ("a", Some(&*v)),
        ("b", Some(&*v)),
        ("c", Some(&*v)),
        ("d", Some(&*v)),
    ];
    assert_eq!(
        message(&entries, 0x3000),
        "NVS partition of 12288 bytes is too small for the provisioning data (no room left for 'd')"
    );
    assert_eq!(build(&entries, 0x4000).len(), 0x4000);
}

#[test]
fn errors_carry_the_offending_input() {
    assert_eq!(
        provisioning_image("prov", &[("k", None)], 0x3000),
        Err(NvsError::FieldMissing { key: "k".into() })
    );
    assert_eq!(
        provisioning_image("prov", &[], 0x3001),
        Err(NvsError::SizeNotMultipleOfPage { size: 0x3001 })
    );
}

// --- no panics ---------------------------------------------------------------------------------------

/// A cheap deterministic stand-in for fuzzing: thousands of random inputs
/// (keys, values with multi-byte characters and NULs, sizes) must give an
/// image of the right size or an error, never a panic.
#[test]
fn random_inputs_never_panic() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = [
        'a', 'Z', '0', '.', ' ', '\0', 'é', '☕', '😀', '\u{1c}', '\t',
    ];
    let random_string = |max: u64, next: &mut dyn FnMut() -> u64| -> String {
        let len = next() % (max + 1);
        (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    };
    let sizes = [0, 4096, 0x3000, 0x3001, 0x4000, 0x5000, 0x6000, usize::MAX];
    for _ in 0..2000 {
        let size = sizes[(next() % sizes.len() as u64) as usize];
        let count = next() % 12;
        let mut owned = Vec::new();
        for _ in 0..count {
            let key = random_string(17, &mut next);
            let value = if next() % 10 == 0 {
                None
            } else {
                let max = if next() % 4 == 0 { 4100 } else { 300 };
                Some(random_string(max, &mut next))
            };
            owned.push((key, value));
        }
        let entries: Vec<(&str, Option<&str>)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let namespace = random_string(16, &mut next);
        if let Ok(image) = provisioning_image(&namespace, &entries, size) {
            assert_eq!(image.len(), size);
        }
    }
}
