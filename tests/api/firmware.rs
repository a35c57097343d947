//! Firmware bundle uploads: every SPEC §7 check with its exact message, the coherence checks,
//! hostile ZIPs and the size limits — and after each refusal, nothing in the database or bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Method;
use serde_json::Value;

use crate::firmware_support::*;
use crate::fleet::create_model;
use crate::helpers::*;

fn desc(version: &[u8], elf: &[u8]) -> Desc {
    Desc {
        magic: 0xABCD_5432,
        version: version.to_vec(),
        project: b"sensor_node",
        idf: b"v5.2.2",
        elf_sha256: sha256(elf),
    }
}

/// The build with one entry's content replaced.
fn with_entry(build: &Build, name: &str, data: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    build
        .entries(CODE)
        .into_iter()
        .map(|(n, d)| if n == name { (n, data.clone()) } else { (n, d) })
        .collect()
}

/// (name, body, exact message or prefix ending in '…')
fn refused_bundles() -> Vec<(&'static str, Vec<u8>, String)> {
    let good = Build::new("1.0.0", "a");
    let bin = format!("{CODE}.bin");
    let mut cases: Vec<(&'static str, Vec<u8>, String)> = vec![
        ("empty body", vec![], "No firmware content provided".into()),
        (
            "raw .bin",
            good.bin.clone(),
            "Firmware must be uploaded as a ZIP bundle".into(),
        ),
        (
            "unreadable ZIP",
            b"PK\x03\x04 this is not really a zip".to_vec(),
            "Invalid firmware ZIP: …".into(),
        ),
        (
            "missing entries",
            zip_of(&[
                (format!("{CODE}.bin"), good.bin.clone()),
                (format!("{CODE}.elf"), good.elf.clone()),
                ("version.json".into(), good.version_json.clone()),
            ]),
            format!("Invalid firmware ZIP: missing sdkconfig, {CODE}.map"),
        ),
        (
            "unexpected files",
            {
                let mut entries = good.entries(CODE);
                entries.push(("extra.txt".into(), b"x".to_vec()));
                entries.push(("README.md".into(), b"y".to_vec()));
                zip_of(&entries)
            },
            "Invalid firmware ZIP: unexpected files: README.md, extra.txt".into(),
        ),
        (
            "more entries than a bundle could need",
            {
                let mut entries = good.entries(CODE);
                entries.extend((0..996).map(|i| (format!("n{i}"), Vec::new())));
                zip_of(&entries)
            },
            "Invalid firmware ZIP: the archive declares 1001 entries; a bundle has five".into(),
        ),
        (
            "a ZIP64 directory of 70,000 entries",
            {
                let mut entries = good.entries(CODE);
                entries.extend((0..69_995).map(|i| (format!("n{i}"), Vec::new())));
                zip_of(&entries)
            },
            "Invalid firmware ZIP: the archive declares 70000 entries; a bundle has five".into(),
        ),
        (
            "version.json not JSON",
            zip_of(&with_entry(&good, "version.json", b"{not json".to_vec())),
            "Invalid firmware ZIP: version.json is not valid JSON: …".into(),
        ),
        (
            "version.json not an object",
            zip_of(&with_entry(&good, "version.json", b"[1, 2]".to_vec())),
            "Invalid firmware ZIP: version.json is not valid JSON: expected a JSON object".into(),
        ),
        (
            "version.json missing fields",
            zip_of(&with_entry(
                &good,
                "version.json",
                br#"{"git_commit": "abc", "firmware_version": null}"#.to_vec(),
            )),
            "Invalid firmware ZIP: version.json missing fields: firmware_version, idf_version"
                .into(),
        ),
        (
            "binary too short",
            zip_of(&with_entry(&good, &bin, vec![0xE9, 1, 2])),
            "Invalid firmware: binary too short …".into(),
        ),
        (
            "bad image magic",
            zip_of(&with_entry(&good, &bin, vec![0u8; 64])),
            "Invalid firmware: not an ESP image (first byte 0x00, expected 0xE9)".into(),
        ),
        (
            "app descriptor magic mismatch",
            zip_of(&with_entry(
                &good,
                &bin,
                esp32_image(
                    &Desc {
                        magic: 0x1234_5678,
                        ..desc(b"1.0.0", &good.elf)
                    },
                    0,
                ),
            )),
            "Invalid firmware: magic number mismatch (expected 0xABCD5432, got 0x12345678)".into(),
        ),
        (
            "empty version",
            zip_of(&with_entry(&good, &bin, esp32_image(&desc(b"", &good.elf), 0))),
            "Invalid firmware: empty version string".into(),
        ),
        (
            "unsafe version",
            zip_of(&with_entry(
                &good,
                &bin,
                esp32_image(&desc(b"../../etc", &good.elf), 0),
            )),
            "Invalid firmware version \"../../etc\": must not contain '/', '\\' or '%'".into(),
        ),
        (
            "bad checksum",
            {
                let mut bin_bytes = good.bin.clone();
                let at = bin_bytes.len() - 33; // checksum byte, before the appended SHA-256
                bin_bytes[at] ^= 0xFF;
                zip_of(&with_entry(&good, &bin, bin_bytes))
            },
            "Invalid firmware: checksum mismatch …".into(),
        ),
        (
            "ELF does not match the image",
            zip_of(&with_entry(
                &good,
                &format!("{CODE}.elf"),
                b"\x7fELF another build".to_vec(),
            )),
            format!("Invalid firmware ZIP: {CODE}.elf does not belong to {CODE}.bin: …"),
        ),
        (
            "version.json does not match the image",
            zip_of(&with_entry(&good, "version.json", version_json("9.9.9"))),
            "Invalid firmware ZIP: version.json firmware_version \"9.9.9\" does not match the image version \"1.0.0\"".into(),
        ),
        (
            "entry with a path",
            {
                let mut entries = good.entries(CODE);
                entries.push(("../evil.txt".into(), b"x".to_vec()));
                zip_of(&entries)
            },
            "Invalid firmware ZIP: entry names must not contain a path: ../evil.txt".into(),
        ),
        (
            "entry in a folder",
            zip_of(
                &good
                    .entries(CODE)
                    .into_iter()
                    .map(|(n, d)| (format!("build/{n}"), d))
                    .collect::<Vec<_>>(),
            ),
            "Invalid firmware ZIP: entry names must not contain a path: build/…".into(),
        ),
        (
            "duplicate entries",
            {
                let mut entries = good.entries(CODE);
                entries.push(("sdkconfiX".into(), b"CONFIG_EVIL=y\n".to_vec()));
                let mut zip = zip_of(&entries);
                rename_entry(&mut zip, "sdkconfiX", "sdkconfig");
                zip
            },
            "Invalid firmware ZIP: duplicate entry names".into(),
        ),
        (
            "encrypted entry",
            {
                let mut zip = good.zip(CODE);
                mark_encrypted(&mut zip, "sdkconfig");
                zip
            },
            "Invalid firmware ZIP: sdkconfig is encrypted; encrypted entries are not accepted"
                .into(),
        ),
        (
            "ZIP bomb: an entry larger than it declares",
            {
                let map = vec![b'M'; 4 * 1024 * 1024];
                let mut zip = zip_of(&with_entry(&good, &format!("{CODE}.map"), map));
                declare_size(&mut zip, &format!("{CODE}.map"), 1000);
                zip
            },
            "Invalid firmware ZIP: …".into(),
        ),
    ];
    cases.shrink_to_fit();
    cases
}

/// The cases of [`refused_bundles`] that fail a check made after the image was known good.
const REFUSED_AFTER_THE_IMAGE: [&str; 3] = [
    "ELF does not match the image",
    "version.json does not match the image",
    "ZIP bomb: an entry larger than it declares",
];

fn assert_message(case: &str, body: &Value, expected: &str) {
    let message = body["error"].as_str().unwrap_or_default();
    match expected.strip_suffix('…') {
        Some(prefix) => assert!(
            message.starts_with(prefix),
            "{case}: {message:?} should start with {prefix:?}"
        ),
        None => assert_eq!(message, expected, "{case}"),
    }
}

#[tokio::test]
async fn every_bundle_check_refuses_with_its_message_and_stores_nothing() {
    for_each_stack("firmware_checks", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let first = Build::new("0.9.0", "first");
        upload_ok(app, model, CODE, &first).await;
        for (case, body, expected) in refused_bundles() {
            let puts_before = app.faults.calls(iotsupport::storage::Operation::Put);
            let (status, response) = upload(app, model, body).await;
            assert_eq!(status, 400, "{case}: {response}");
            assert_eq!(response["code"], "VALIDATION_FAILED", "{case}");
            assert_message(case, &response, &expected);
            assert_nothing_stored(app, model, Some("0.9.0"), &["0.9.0"]).await;
            // Artifacts are stored as soon as they are known good, so only a bundle refused after
            // its image passed (coherence checks, an entry read later) has had PUTs, and nothing
            // of them is left. On PostgreSQL with S3 the image's PUT starts while the body is
            // still arriving, before any check (`src/firmware/early.rs`): there only "nothing
            // left" holds, checked above.
            if !REFUSED_AFTER_THE_IMAGE.contains(&case) && app.stack == Stack::Embedded {
                assert_eq!(
                    app.faults.calls(iotsupport::storage::Operation::Put),
                    puts_before,
                    "{case}: a bundle refused before its image is known good never reaches the store"
                );
            }
        }
        assert_build_stored(app, CODE, &first).await;
    })
    .await;
}

/// SPEC §7 lists "binary too short" first among the image errors: a `.bin` shorter than the
/// 24-byte image header is too short whatever its first byte, not "not an ESP image".
#[tokio::test]
async fn a_bin_shorter_than_the_image_header_is_too_short_and_stores_nothing() {
    for_each_stack("firmware_bin_too_short", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let good = Build::new("1.0.0", "a");
        let bin = format!("{CODE}.bin");
        let puts_before = app.faults.calls(iotsupport::storage::Operation::Put);
        for (bytes, expected) in [
            (
                b"short".to_vec(),
                "Invalid firmware: binary too short (5 bytes, 24 needed for the image header)",
            ),
            (
                vec![0u8; 23],
                "Invalid firmware: binary too short (23 bytes, 24 needed for the image header)",
            ),
            (
                vec![],
                "Invalid firmware: binary too short (0 bytes, 24 needed for the image header)",
            ),
        ] {
            let (status, body) = upload(app, model, zip_of(&with_entry(&good, &bin, bytes))).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["code"], "VALIDATION_FAILED", "{body}");
            assert_eq!(body["error"], expected);
            assert_nothing_stored(app, model, None, &[]).await;
        }
        assert_eq!(
            app.faults.calls(iotsupport::storage::Operation::Put),
            puts_before,
            "a refused bundle never reaches the store"
        );
    })
    .await;
}

#[tokio::test]
async fn checks_run_in_spec_order() {
    let Some(app) = spawn_app(Stack::Embedded, "firmware_check_order").await else {
        return;
    };
    let model = create_model(&app, CODE, None).await;
    // Missing entries are reported before unexpected ones, and both before version.json.
    let (_, body) = upload(
        &app,
        model,
        zip_of(&[("version.json", b"nope".as_slice()), ("other", b"x")]),
    )
    .await;
    assert_eq!(
        body["error"],
        format!("Invalid firmware ZIP: missing sdkconfig, {CODE}.bin, {CODE}.elf, {CODE}.map")
    );
    // version.json is checked before the image.
    let good = Build::new("1.0.0", "a");
    let (_, body) = upload(
        &app,
        model,
        zip_of(
            &with_entry(&good, "version.json", b"{}".to_vec())
                .into_iter()
                .map(|(n, d)| {
                    if n.ends_with(".bin") {
                        (n, vec![0u8; 3])
                    } else {
                        (n, d)
                    }
                })
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    assert_eq!(
        body["error"],
        "Invalid firmware ZIP: version.json missing fields: firmware_version, git_commit, idf_version"
    );
    // The version's safety is checked before coherence.
    let (_, body) = upload(
        &app,
        model,
        zip_of(&with_entry(
            &good,
            &format!("{CODE}.bin"),
            esp32_image(&desc(b"a/b", b"some other elf"), 0),
        )),
    )
    .await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid firmware version \"a/b\""),
        "{body}"
    );
    assert_nothing_stored(&app, model, None, &[]).await;
    app.stop().await;
}

#[tokio::test]
async fn bodies_and_entries_over_the_limit_are_413_without_reading_the_rest() {
    const LIMIT: u64 = 64 * 1024;
    TestApp::builder("firmware_limits").env("MAX_FIRMWARE_BYTES", "65536").for_each_stack(async |app| {
        let model = create_model(app, CODE, None).await;
        let url = app.url(&format!("/api/device-models/{model}/firmware"));

        // A declared Content-Length over the limit is refused before reading anything.
        let (status, body) = upload(app, model, vec![b'P'; LIMIT as usize + 1]).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");

        // A chunked body (no Content-Length) is cut off at the limit: the client's stream is not
        // read to its end.
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = pulled.clone();
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: u64 = 1024; // 64 MiB in all
        let stream = futures::stream::iter(0..CHUNKS).map(move |_| {
            counter.fetch_add(CHUNK as u64, Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'P'; CHUNK]))
        });
        let result = app
            .admin_request(Method::POST, &url)
            .header("content-type", "application/zip")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        match result {
            Ok(r) => {
                let (status, body) = response_json(r).await;
                assert_eq!(status, 413, "{body}");
                assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");
            }
            // The server may close the connection while the client is still sending.
            Err(e) => eprintln!("chunked over-limit upload ended with {e}"),
        }
        assert!(
            pulled.load(Ordering::SeqCst) < CHUNKS * CHUNK as u64 / 2,
            "the server read {} bytes of an over-limit body",
            pulled.load(Ordering::SeqCst)
        );

        // The same for the multipart form.
        let (content_type, body) = multipart_body(&[("file", &vec![b'P'; LIMIT as usize * 2])]);
        let (status, _) = app.upload_firmware_as(model, &content_type, body).await;
        assert_eq!(status, 413);

        // A small ZIP whose entry inflates beyond the limit: 413 from its declared size.
        let good = Build::new("1.0.0", "a");
        let big_map = zip_of(&with_entry(
            &good,
            &format!("{CODE}.map"),
            vec![0u8; LIMIT as usize * 4],
        ));
        assert!(big_map.len() < LIMIT as usize);
        let (status, body) = upload(app, model, big_map).await;
        assert_eq!(status, 413, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("Invalid firmware ZIP: {CODE}.map is 262144 bytes uncompressed, more than the limit of 65536 bytes")),
            "{body}"
        );

        assert_nothing_stored(app, model, None, &[]).await;
        // A bundle within the limit still works.
        upload_ok(app, model, CODE, &good).await;
    })
    .await;
}

#[tokio::test]
async fn a_version_json_over_its_own_limit_names_that_limit() {
    for_each_stack("firmware_version_json_limit", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let good = Build::new("1.0.0", "vj");
        // Valid JSON, padded past the 1 MiB version.json may take (MAX_FIRMWARE_BYTES does not
        // raise it, so the message does not name it).
        let mut padded = good.version_json.clone();
        padded.extend(std::iter::repeat_n(b' ', 1024 * 1024 + 1));
        let bundle = zip_of(&with_entry(&good, "version.json", padded));
        let (status, body) = upload(app, model, bundle).await;
        assert_eq!(status, 413, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("version.json is") && error.ends_with("bytes for version.json"),
            "{body}"
        );
        assert_nothing_stored(app, model, None, &[]).await;
    })
    .await;
}

#[tokio::test]
async fn a_multipart_upload_takes_the_file_part() {
    for_each_stack("firmware_multipart", &[], async |app| {
        let model = create_model(app, CODE, None).await;
        let build = Build::new("2.1.0", "mp");
        let (status, body) = upload_multipart(app, model, &build.zip(CODE)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], model);
        assert_eq!(body["code"], CODE);
        assert_eq!(body["firmware_version"], "2.1.0");
        assert_build_stored(app, CODE, &build).await;

        // A form without a `file` part has no content.
        let (content_type, form) = multipart_body(&[("other", b"x")]);
        let (status, body) = app.upload_firmware_as(model, &content_type, form).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "No firmware content provided");
    })
    .await;
}

#[tokio::test]
async fn uploading_to_a_missing_model_is_404() {
    let Some(app) = spawn_app(Stack::Embedded, "firmware_missing_model").await else {
        return;
    };
    let (status, body) = upload(&app, 999, Build::new("1.0.0", "a").zip(CODE)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "DeviceModel 999 was not found");
    assert_eq!(body["code"], "RECORD_NOT_FOUND");
    app.stop().await;
}

use futures::StreamExt;
