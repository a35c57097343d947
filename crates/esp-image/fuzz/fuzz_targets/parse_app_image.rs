//! Fuzz target: no input may make the parsers panic, and whatever they
//! accept must be consistent with the input it came from.
//!
//! Run with `cargo +nightly fuzz run parse_app_image` from `crates/esp-image`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = esp_image::parse_image_header(data);
    let _ = esp_image::parse_app_desc(data);
    if let Ok(image) = esp_image::parse_image(data) {
        assert!(image.image_len <= data.len());
        for segment in &image.segments {
            assert!(segment.data(data).is_some());
        }
    }
    if let Ok(app) = esp_image::parse_app_image(data) {
        assert!(!app.app_desc.version.is_empty());
        assert!(app.image_len <= data.len());
        assert!(app.app_desc_offset + esp_image::APP_DESC_LEN <= data.len());
    }
});
