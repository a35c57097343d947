//! The CI pipeline's routes (firmware uploads by model code, its current version) with the admin
//! token, and a bundle built from a real ESP32-C3 image and ELF that round-trips through upload,
//! storage and the versions list.

use serde_json::json;

use crate::firmware_support::*;
use crate::fleet::create_model;
use crate::helpers::*;

const TOKEN: &str = "pipeline-test-token-0123456789";

#[tokio::test]
async fn the_pipeline_uploads_by_model_code_with_the_admin_token() {
    TestApp::builder("firmware_pipeline")
        .env("ADMIN_TOKEN", TOKEN)
        .for_each_stack(async |app| {
            // The endpoint methods send the app's ADMIN_TOKEN.
            create_model(app, CODE, None).await;
            let build = Build::new("3.1.4", "ci");
            let url = app.url(&format!("/api/pipeline/models/{CODE}/firmware"));

            let r = app
                .client
                .post(&url)
                .body(build.zip(CODE))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401);
            let r = app
                .client
                .post(&url)
                .header("authorization", "Bearer not-the-token-at-all")
                .body(build.zip(CODE))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401);

            let (status, body) = app.pipeline_upload_firmware(CODE, build.zip(CODE)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["code"], CODE);
            assert_eq!(body["firmware_version"], "3.1.4");
            assert_build_stored(app, CODE, &build).await;

            let version_path = format!("/api/pipeline/models/{CODE}/firmware-version");
            assert_eq!(app.get(&version_path).await.status().as_u16(), 401);
            assert_eq!(
                app.pipeline_firmware_version(CODE).await.1,
                json!({"code": CODE, "firmware_version": "3.1.4"})
            );

            let (status, body) = app.pipeline_firmware_version("nosuchmodel").await;
            assert_eq!(status, 404);
            assert_eq!(body["error"], "DeviceModel nosuchmodel was not found");
            let (status, _) = app
                .pipeline_upload_firmware("nosuchmodel", build.zip("nosuchmodel"))
                .await;
            assert_eq!(status, 404);

            // The admin routes want the token too.
            let r = app.get("/api/device-models/1/firmware/versions").await;
            assert_eq!(r.status().as_u16(), 401);
        })
        .await;
}

fn testdata() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("IOTSUPPORT_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/esp")
        });
    dir.join("MANIFEST.md").exists().then_some(dir)
}

/// A real ESP32-C3 app image whose descriptor is made to name a real firmware ELF (as
/// `esptool elf2image` would have), with a map file large enough to be spooled to disk and
/// uploaded as a multipart object.
#[tokio::test]
async fn a_bundle_from_a_real_image_and_elf_round_trips() {
    let Some(data) = testdata() else {
        eprintln!("SKIP: a_bundle_from_a_real_image_and_elf_round_trips: ESP test data not found (set IOTSUPPORT_TESTDATA)");
        return;
    };
    let image = std::fs::read(data.join("images/esp32c3_hello_world_app/hello_world.bin")).unwrap();
    let elf = std::fs::read(data.join("coredump/esp32c3_binconfig_abort/esp32c3_bin.elf")).unwrap();
    let parsed = esp_image::parse_app_image(&image).unwrap();
    let bin = patch_real_image(&image, parsed.app_desc_offset + 144, &sha256(&elf));
    let version = parsed.app_desc.version.clone();
    let build = Build {
        version: version.clone(),
        bin,
        elf,
        // Hex noise: it does not compress below a few MiB, so the request body is larger than
        // axum's default body limit, and uncompressed it is larger than what is kept in memory.
        map: {
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            (0..9 * 1024 * 1024u32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"0123456789abcdef"[(x % 16) as usize]
                })
                .collect()
        },
        sdkconfig: b"CONFIG_IDF_TARGET=\"esp32c3\"\n".to_vec(),
        version_json: version_json(&version),
    };
    assert!(build.zip("hello_world").len() > 4 * 1024 * 1024);
    for_each_stack("firmware_real_image", &[], async |app| {
        let model = create_model(app, "hello_world", None).await;
        upload_ok(app, model, "hello_world", &build).await;
        assert_build_stored(app, "hello_world", &build).await;
        let list = versions(app, model).await;
        let v = &list["versions"][0];
        assert_eq!(v["chip"], "esp32c3");
        assert_eq!(v["project_name"], parsed.app_desc.project_name.as_str());
        assert_eq!(v["idf_version"], parsed.app_desc.idf_ver.as_str());
        assert_eq!(v["app_elf_sha256"], sha256_hex(&build.elf));
    })
    .await;
}
