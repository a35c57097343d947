//! Integration tests against the ESP-IDF images in the shared test data
//! (`shared/testdata/esp/images/`, see its MANIFEST.md).
//!
//! Where esptool's `image-info` output (`*.image_info.txt`) sits beside an
//! image, every fact it states is compared with our parse. For the
//! held-out images only the facts MANIFEST.md gives for their inputs are
//! asserted, plus checksum and hash validity, which are independent checks.
//!
//! The data is found through `IOTSUPPORT_TESTDATA` (the `esp` folder) or at
//! `../shared/testdata/esp` next to the repository; when it is absent the
//! tests print `SKIP: …` and pass. No test data is copied into the repo.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use esp_image::{
    format_chip_rev, parse_app_desc, parse_app_image, parse_image, to_hex, AppImage, Chip,
    EspImage, ImageError,
};

fn testdata_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
        Some(dir) => PathBuf::from(dir),
        // crates/esp-image -> repository root -> ../shared/testdata/esp
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/esp"),
    };
    if dir.join("images").is_dir() {
        Some(dir)
    } else {
        println!(
            "SKIP: ESP testdata not found at {}; set IOTSUPPORT_TESTDATA",
            dir.display()
        );
        None
    }
}

/// Every file under `images/` with the given extension, sorted.
fn image_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("images")];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn name(path: &Path) -> String {
    let parent = path.parent().and_then(Path::file_name).unwrap();
    format!(
        "{}/{}",
        parent.to_string_lossy(),
        path.file_name().unwrap().to_string_lossy()
    )
}

#[derive(Debug, PartialEq)]
enum Kind {
    App,
    Bootloader,
    PartitionTable,
}

fn kind_of(path: &Path) -> Kind {
    let file = path.file_name().unwrap().to_string_lossy();
    if file.starts_with("partition-table") {
        Kind::PartitionTable
    } else if file.starts_with("bootloader") {
        Kind::Bootloader
    } else {
        Kind::App
    }
}

/// The chip named by the case folder, e.g. `esp32c3_bootloader` -> esp32c3.
fn chip_of_case(path: &Path) -> Chip {
    let case = path
        .parent()
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let prefix = case.split('_').next().unwrap();
    Chip::ALL
        .into_iter()
        .find(|c| c.name() == prefix)
        .unwrap_or_else(|| panic!("no chip for case {case}"))
}

/// esptool `image-info` output reduced to its facts.
#[derive(Debug, Default)]
struct ImageInfo {
    fields: BTreeMap<String, String>,
    /// (index, length, load address, file offset, memory types)
    segments: Vec<(usize, u32, u32, usize, Vec<String>)>,
}

impl ImageInfo {
    fn load(bin: &Path) -> Option<ImageInfo> {
        let stem = bin.file_stem()?.to_string_lossy().into_owned();
        let text = fs::read_to_string(bin.with_file_name(format!("{stem}.image_info.txt"))).ok()?;
        let mut info = ImageInfo::default();
        let mut in_segments = false;
        for line in text.lines() {
            if line.starts_with("Segments Information") {
                in_segments = true;
                continue;
            }
            if in_segments {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if line.trim().is_empty() && !info.segments.is_empty() {
                    in_segments = false;
                } else if let [idx, len, addr, offs, types @ ..] = cols.as_slice() {
                    if let Ok(idx) = idx.parse::<usize>() {
                        let types = types.join(" ");
                        info.segments.push((
                            idx,
                            hex(len),
                            hex(addr),
                            hex(offs) as usize,
                            types.split(", ").map(str::to_owned).collect(),
                        ));
                    }
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(": ") {
                // Bootloader and app sections both have "ESP-IDF" and
                // "Compile time"; they never occur in the same file.
                info.fields
                    .insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
        Some(info)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// Counts how many facts were compared, so the summary line is honest.
#[derive(Default)]
struct Tally {
    compared: usize,
}

impl Tally {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, ours: T, esptool: T) {
        assert_eq!(ours, esptool, "{what}");
        self.compared += 1;
    }
}

/// Compares the container facts of `image-info` with ours.
fn compare_container(t: &mut Tally, file: &str, image: &EspImage, info: &ImageInfo) {
    let h = &image.header;
    let ctx = |what: &str| format!("{file}: {what}");
    if let Some(v) = info.get("Entry point") {
        t.eq(&ctx("entry point"), h.entry_addr, hex(v));
    }
    if let Some(v) = info.get("Segments") {
        t.eq(
            &ctx("segment count"),
            image.segments.len(),
            v.parse().unwrap(),
        );
    }
    if let Some(v) = info.get("Flash size") {
        t.eq(&ctx("flash size"), h.flash_size_name().as_deref(), Some(v));
    }
    if let Some(v) = info.get("Flash freq") {
        t.eq(&ctx("flash freq"), h.flash_frequency_name(), Some(v));
    }
    if let Some(v) = info.get("Flash mode") {
        t.eq(&ctx("flash mode"), h.spi_mode_name(), Some(v));
    }
    if let Some(v) = info.get("WP pin") {
        let byte = hex(v.split_whitespace().next().unwrap());
        t.eq(&ctx("wp pin"), u32::from(h.wp_pin), byte);
    }
    if let Some(v) = info.get("Chip ID") {
        // "0 (ESP32)"
        let (id, rest) = v.split_once(' ').unwrap();
        t.eq(&ctx("chip id"), h.chip_id, id.parse().unwrap());
        let display = rest.trim_matches(|c| c == '(' || c == ')');
        t.eq(
            &ctx("chip name"),
            h.chip.map(Chip::display_name),
            Some(display),
        );
    }
    if let Some(v) = info.get("Minimal chip revision") {
        // "v0.0, (legacy min_rev = 0)"
        let (full, legacy) = v.split_once(", ").unwrap();
        t.eq(&ctx("min chip rev"), h.min_chip_rev_name().as_str(), full);
        let legacy: u8 = legacy
            .trim_start_matches("(legacy min_rev = ")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        t.eq(&ctx("legacy min rev"), h.min_chip_rev, legacy);
    }
    if let Some(v) = info.get("Maximal chip revision") {
        t.eq(
            &ctx("max chip rev"),
            format_chip_rev(h.max_chip_rev_full),
            v.to_owned(),
        );
    }
    assert!(!info.segments.is_empty(), "{file}: no segment table");
    t.eq(
        &ctx("segment rows"),
        image.segments.len(),
        info.segments.len(),
    );
    for (seg, (idx, len, addr, offs, types)) in image.segments.iter().zip(&info.segments) {
        let what = ctx(&format!("segment {idx}"));
        t.eq(&what, seg.index, *idx);
        t.eq(&what, seg.data_len, *len);
        t.eq(&what, seg.load_addr, *addr);
        t.eq(&what, seg.header_offset, *offs);
        t.eq(
            &what,
            seg.memory_types.clone(),
            types.iter().map(String::as_str).collect(),
        );
    }
    // "0x9a (valid)"
    let checksum = info.get("Checksum").expect("checksum line");
    let (stored, state) = checksum.split_once(' ').unwrap();
    t.eq(
        &ctx("checksum byte"),
        u32::from(image.checksum.stored),
        hex(stored),
    );
    t.eq(
        &ctx("checksum valid"),
        image.checksum_valid,
        state == "(valid)",
    );
    match info.get("Validation hash") {
        Some(v) => {
            let (digest, state) = v.split_once(' ').unwrap();
            let sha = image.sha256.expect("hash appended");
            t.eq(
                &ctx("validation hash"),
                to_hex(&sha.calculated),
                digest.to_owned(),
            );
            t.eq(
                &ctx("hash valid"),
                image.sha256_valid,
                Some(state == "(valid)"),
            );
        }
        None => t.eq(&ctx("no hash"), image.sha256_valid, None),
    }
}

fn compare_app_desc(t: &mut Tally, file: &str, app: &AppImage, info: &ImageInfo) {
    let d = &app.app_desc;
    let ctx = |what: &str| format!("{file}: {what}");
    let field = |key: &str| info.get(key).unwrap_or_else(|| panic!("{file}: no {key}"));
    t.eq(
        &ctx("project"),
        d.project_name.as_str(),
        field("Project name"),
    );
    t.eq(&ctx("version"), d.version.as_str(), field("App version"));
    t.eq(
        &ctx("compile time"),
        d.compile_time().as_str(),
        field("Compile time"),
    );
    t.eq(
        &ctx("elf sha"),
        d.app_elf_sha256_hex().as_str(),
        field("ELF file SHA256"),
    );
    t.eq(&ctx("idf"), d.idf_ver.as_str(), field("ESP-IDF"));
    t.eq(
        &ctx("secure version"),
        d.secure_version.to_string().as_str(),
        field("Secure version"),
    );
    let rev = |full: u16| format!("{}.{}", full / 100, full % 100);
    t.eq(
        &ctx("min efuse rev"),
        rev(d.min_efuse_blk_rev_full).as_str(),
        field("Minimal eFuse block revision"),
    );
    t.eq(
        &ctx("max efuse rev"),
        rev(d.max_efuse_blk_rev_full).as_str(),
        field("Maximal eFuse block revision"),
    );
}

#[test]
fn every_real_image_parses_and_matches_esptool_image_info() {
    let Some(dir) = testdata_dir() else { return };
    let bins = image_files(&dir, "bin");
    assert_eq!(bins.len(), 13, "expected the 13 .bin files of MANIFEST.md");
    let mut tally = Tally::default();
    let (mut apps, mut bootloaders, mut with_info) = (0, 0, 0);
    for path in &bins {
        let file = name(path);
        let bytes = fs::read(path).unwrap();
        let info = ImageInfo::load(path);
        match kind_of(path) {
            Kind::PartitionTable => {
                assert!(matches!(
                    parse_app_image(&bytes),
                    Err(ImageError::BadImageMagic { found: 0xAA, .. })
                ));
                assert!(parse_app_image(&bytes)
                    .unwrap_err()
                    .to_string()
                    .contains("partition table"));
                continue;
            }
            Kind::Bootloader => {
                bootloaders += 1;
                let chip = chip_of_case(path);
                assert_eq!(
                    parse_app_image(&bytes).unwrap_err(),
                    ImageError::NoDromSegment { chip: chip.name() },
                    "{file}"
                );
                let image = parse_image(&bytes).unwrap();
                assert_eq!(image.header.chip, Some(chip), "{file}");
                assert!(image.checksum_valid, "{file}");
                assert_eq!(image.sha256_valid, Some(true), "{file}");
                assert_eq!(image.image_len, bytes.len(), "{file}: no trailing bytes");
                if let Some(info) = &info {
                    with_info += 1;
                    compare_container(&mut tally, &file, &image, info);
                    match (&image.bootloader_desc, info.get("Bootloader version")) {
                        (Some(desc), Some(version)) => {
                            tally.eq(&file, desc.version.to_string().as_str(), version);
                            tally.eq(&file, desc.idf_ver.as_str(), info.get("ESP-IDF").unwrap());
                            tally.eq(
                                &file,
                                desc.date_time.as_str(),
                                info.get("Compile time").unwrap(),
                            );
                        }
                        (None, None) => {}
                        (ours, theirs) => panic!("{file}: bootloader desc {ours:?} vs {theirs:?}"),
                    }
                }
            }
            Kind::App => {
                apps += 1;
                let app = parse_app_image(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
                let chip = chip_of_case(path);
                assert_eq!(app.chip(), Some(chip), "{file}");
                assert!(app.checksum_valid, "{file}");
                assert_eq!(app.sha256_valid, Some(true), "{file}");
                assert!(!app.app_desc.version.is_empty());
                // The container parse and the app parse agree.
                let image = parse_image(&bytes).unwrap();
                assert_eq!(image.segments, app.segments);
                assert_eq!(image.bootloader_desc, None);
                if let Some(info) = &info {
                    with_info += 1;
                    compare_container(&mut tally, &file, &image, info);
                    compare_app_desc(&mut tally, &file, &app, info);
                }
                println!(
                    "{file}: {} {} '{}' IDF {} desc in segment {} at {:#x}, {} segments, image {} of {} bytes",
                    chip,
                    app.app_desc.project_name,
                    app.app_desc.version,
                    app.app_desc.idf_ver,
                    app.app_desc_segment,
                    app.app_desc_offset,
                    app.segments.len(),
                    app.image_len,
                    bytes.len()
                );
            }
        }
    }
    println!(
        "parsed {} images ({apps} apps, {bootloaders} bootloaders, 1 partition table), \
         {with_info} compared with image-info, {} facts compared",
        bins.len(),
        tally.compared
    );
    assert_eq!(apps, 6);
    assert_eq!(bootloaders, 6);
    assert_eq!(with_info, 5);
}

/// Facts MANIFEST.md states for inputs, including held-out ones.
#[test]
fn manifest_facts_hold() {
    let Some(dir) = testdata_dir() else { return };
    let images = dir.join("images");

    // esptool's own test of the blink image (MANIFEST: "Asserted by esptool's test").
    let bytes = fs::read(images.join("esp32s2_blink_app/esp_idf_blink_esp32s2.bin")).unwrap();
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.app_desc.project_name, "blink");
    assert_eq!(app.app_desc.version, "qa-test-v5.0-20220830-4-g4532e6");
    assert_eq!(app.app_desc.secure_version, 0);
    assert_eq!(app.app_desc.compile_time(), "Sep 13 2022 19:46:07");
    // 31 characters: IDF cut the string to fit the 32-byte field.
    assert_eq!(app.app_desc.idf_ver, "v5.0-beta1-427-g4532e6e0b2-dirt");
    assert_eq!(
        app.app_desc.app_elf_sha256_hex(),
        "3059e6b55a965865febd28fa9f6028ad5cd0dab311febb0a3ea79eaa223ac2b0"
    );
    assert_eq!(app.segments.len(), 6);
    assert_eq!(app.checksum.stored, 0x18);

    // The ELF SHA-256 sits at absolute offset 0xB0 (0x20 + 144).
    let hello = fs::read(images.join("esp32_hello_world_app/hello_world.bin")).unwrap();
    let app = parse_app_image(&hello).unwrap();
    assert_eq!(app.app_desc_offset, 0x20);
    assert_eq!(&hello[0xB0..0xD0], &app.app_desc.app_elf_sha256);
    assert_eq!(
        app.app_desc.app_elf_sha256_hex(),
        "ade8c451fff03a31dcf3926ebdc454b5a609c57d583b57599f9a307b48e3d19a"
    );
    assert!(app.segments.iter().filter(|s| s.is_padding()).count() == 1);

    // Old C3 bootloader (esptool's test): entry, flash settings, segment 1.
    let bytes = fs::read(images.join("esp32c3_bootloader/bootloader_esp32c3.bin")).unwrap();
    let image = parse_image(&bytes).unwrap();
    assert_eq!(image.header.entry_addr, 0x403c_0000);
    assert_eq!(image.header.chip_id, 5);
    assert_eq!(image.header.wp_pin, 0xEE);
    assert_eq!(image.header.flash_size_name().as_deref(), Some("2MB"));
    assert_eq!(image.header.spi_mode_name(), Some("DIO"));
    assert_eq!(image.segments[1].data_len, 0x1864);
    assert_eq!(image.segments[1].load_addr, 0x3fcd_6114);
    assert_eq!(image.segments[1].header_offset, 0x34);
    assert_eq!(image.checksum.stored, 0x77);
    assert_eq!(
        to_hex(&image.sha256.unwrap().stored),
        "4faeab1bd3fd6a7d4adfa0fd38f41bfc67a8c3c0a9d6d882b65580da2e5e6347"
    );
    assert_eq!(image.bootloader_desc, None, "old bootloader has no desc");

    // Secure Boot v1 signed image (held out): the hash ends at byte 196528
    // and the signature block after it is ignored.
    let bytes =
        fs::read(images.join("esp32_hello_world_sbv1_signed/hello-world-signed.bin")).unwrap();
    assert_eq!(bytes.len(), 196_608);
    let app = parse_app_image(&bytes).unwrap();
    assert_eq!(app.image_len, 196_528);
    assert!(app.checksum_valid);
    assert_eq!(app.sha256_valid, Some(true));
}

/// The `.flash.appdesc` section of esptool's hand-filled test ELF, read with
/// a minimal ELF32 section walk (test code only).
#[test]
fn the_appdesc_section_of_the_esp32c6_test_elf_parses() {
    let Some(dir) = testdata_dir() else { return };
    let elf = fs::read(dir.join("images/esp32c6_appdesc_elf/esp32c6-appdesc.elf")).unwrap();
    let section = elf32_section(&elf, ".flash.appdesc").expect(".flash.appdesc section");
    let desc = parse_app_desc(section).unwrap();
    assert_eq!(desc.secure_version, 0xFFFF_FFFF);
    assert_eq!(desc.version, "_".repeat(31));
    assert_eq!(desc.project_name, "-".repeat(31));
    assert_eq!(desc.time, "x".repeat(15));
    assert_eq!(desc.date, "y".repeat(15));
    assert_eq!(desc.idf_ver, "z".repeat(31));
    assert_eq!(desc.app_elf_sha256, [0; 32]);
    assert_eq!(desc.min_efuse_blk_rev_full, 0xFFFF);
    assert_eq!(desc.max_efuse_blk_rev_full, 0xFFFF);
    assert_eq!(desc.mmu_page_size(), None);
}

fn elf32_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF");
    let (shoff, shentsize, shnum, shstrndx) = (u32_at(32), u16_at(46), u16_at(48), u16_at(50));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(header(shstrndx) + 16);
    (0..shnum).find_map(|i| {
        let h = header(i);
        let name_at = strtab + u32_at(h);
        let name_end = name_at + elf[name_at..].iter().position(|&b| b == 0)?;
        (&elf[name_at..name_end] == wanted.as_bytes())
            .then(|| &elf[u32_at(h + 16)..u32_at(h + 16) + u32_at(h + 20)])
    })
}

/// xorshift64*: deterministic, dependency-free randomness.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
}

fn parse_everything(bytes: &[u8]) {
    let _ = parse_app_image(bytes);
    if let Ok(image) = parse_image(bytes) {
        for s in &image.segments {
            let _ = s.data(bytes);
        }
    }
    let _ = parse_app_desc(bytes);
}

#[test]
fn truncated_and_corrupted_real_images_never_panic() {
    let Some(dir) = testdata_dir() else { return };
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    let mut cases = 0;
    for path in image_files(&dir, "bin") {
        let original = fs::read(&path).unwrap();
        let image = parse_image(&original).ok();

        // Truncations: every length through the first 1 KiB, and a few bytes
        // either side of every structure boundary (segment records and data,
        // checksum, hash). Inside the image each must be an error.
        let mut cuts: Vec<usize> = (0..1024.min(original.len())).collect();
        if let Some(image) = &image {
            let mut marks = vec![image.checksum.offset, image.image_len];
            for s in &image.segments {
                marks.extend([s.header_offset, s.data_offset, s.data_range().end]);
            }
            for m in marks {
                cuts.extend(m.saturating_sub(3)..(m + 3).min(original.len()));
            }
        }
        for len in cuts {
            parse_everything(&original[..len]);
            if let Some(image) = &image {
                if len < image.image_len {
                    assert!(
                        parse_image(&original[..len]).is_err(),
                        "{}: {len}",
                        name(&path)
                    );
                }
            }
            cases += 1;
        }

        // Random byte flips, biased towards the header, segment records and
        // the app descriptor, where the structure is.
        for _ in 0..60 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(6) {
                let limit = match rng.below(3) {
                    0 => 64,
                    1 => 0x120,
                    _ => bytes.len(),
                };
                let at = rng.below(limit.min(bytes.len()));
                bytes[at] = rng.next().to_le_bytes()[0];
            }
            if rng.below(3) == 0 {
                let len = rng.below(bytes.len() + 1);
                bytes.truncate(len);
            }
            parse_everything(&bytes);
            cases += 1;
        }
    }
    println!("{cases} corrupted or truncated real-image inputs parsed without panic");
}
