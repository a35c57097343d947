//! Fuzz target: no input may make the parsers panic, and whatever they
//! accept must be consistent with the input it came from.
//!
//! Runs every public parser on the input (`parse_image_header`,
//! `parse_app_desc`, `parse_image`, `parse_app_image`, the bootloader
//! descriptor), the accessors the service and the CLI print, and the error
//! messages the upload handler returns (`Display` of `ImageError`).
//!
//! Run with `cargo +nightly fuzz run parse_app_image` from `crates/esp-image`,
//! or `scripts/fuzz.sh 10000000 parse_app_image` from the repository root.
#![no_main]

use esp_image::{AppDesc, ImageError, ImageHeader};
use libfuzzer_sys::fuzz_target;

fn header_accessors(header: &ImageHeader) {
    let _ = header.spi_mode_name();
    let _ = header.flash_size_bytes();
    let _ = header.flash_size_name();
    let _ = header.flash_frequency_name();
    let _ = header.min_chip_rev_name();
    let _ = header.max_chip_rev_name();
    if let Some(chip) = header.chip {
        assert_eq!(chip.id(), header.chip_id);
        let _ = chip.name();
        let _ = chip.display_name();
        let _ = chip.memory_types(header.entry_addr);
    }
}

fn desc_accessors(desc: &AppDesc) {
    assert_eq!(desc.app_elf_sha256_hex().len(), 64);
    let _ = desc.compile_time();
    let _ = desc.mmu_page_size();
}

fn message(error: &ImageError) {
    assert!(!error.to_string().is_empty());
}

fuzz_target!(|data: &[u8]| {
    match esp_image::parse_image_header(data) {
        Ok(header) => header_accessors(&header),
        Err(e) => message(&e),
    }
    match esp_image::parse_app_desc(data) {
        Ok(desc) => {
            assert!(!desc.version.is_empty());
            desc_accessors(&desc);
        }
        Err(e) => message(&e),
    }
    let _ = esp_image::BootloaderDesc::parse(data);
    match esp_image::parse_image(data) {
        Ok(image) => {
            assert!(image.image_len <= data.len());
            assert_eq!(image.checksum_valid, image.checksum.is_valid());
            assert_eq!(image.sha256_valid, image.sha256.map(|h| h.is_valid()));
            for segment in &image.segments {
                assert!(segment.data(data).is_some());
                let _ = (segment.is_drom(), segment.is_dram(), segment.is_padding());
            }
            let _ = image.first_drom_segment();
        }
        Err(e) => message(&e),
    }
    match esp_image::parse_app_image(data) {
        Ok(app) => {
            assert!(!app.app_desc.version.is_empty());
            assert!(app.image_len <= data.len());
            assert!(app.app_desc_offset + esp_image::APP_DESC_LEN <= data.len());
            assert!(app.chip().is_some());
            assert!(app.segments.get(app.app_desc_segment).is_some());
            header_accessors(&app.header);
            desc_accessors(&app.app_desc);
        }
        Err(e) => message(&e),
    }
});
