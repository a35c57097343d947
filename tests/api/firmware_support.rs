//! Building firmware bundles for the firmware tests: synthesised ESP app images (laid out as
//! `esptool elf2image` does, as in esp-image's own tests) whose app descriptor carries the SHA-256
//! of the bundle's ELF, ZIPs of them, and byte-level edits that make hostile ZIPs.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;

pub use crate::esp_image_synth::{sha256, Desc};

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// An ESP32 app image for `desc`; `filler` makes otherwise equal images differ.
pub fn esp32_image(desc: &Desc, filler: u8) -> Vec<u8> {
    let tail: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(31) ^ filler).collect();
    crate::esp_image_synth::esp32_image(desc, &tail, 0x50 ^ filler)
}

/// The five files of one build, as a CI pipeline would zip them.
#[derive(Debug, Clone)]
pub struct Build {
    pub version: String,
    pub bin: Vec<u8>,
    pub elf: Vec<u8>,
    pub map: Vec<u8>,
    pub sdkconfig: Vec<u8>,
    pub version_json: Vec<u8>,
}

impl Build {
    /// A coherent build of `version`: the image embeds the ELF's SHA-256 and version.json names
    /// the same version. `salt` makes builds of one version differ.
    pub fn new(version: &str, salt: &str) -> Build {
        let elf = format!("\x7fELF fake firmware ELF of {version} {salt}").into_bytes();
        let desc = Desc {
            magic: 0xABCD_5432,
            version: version.as_bytes().to_vec(),
            project: b"sensor_node",
            idf: b"v5.2.2",
            elf_sha256: sha256(&elf),
        };
        Build {
            version: version.to_string(),
            bin: esp32_image(&desc, salt.len() as u8),
            elf,
            map: format!("Memory map of {version} {salt}\n").into_bytes(),
            sdkconfig: format!("CONFIG_APP_VERSION=\"{version}\"\n# {salt}\n").into_bytes(),
            version_json: version_json(version),
        }
    }

    /// The entries of the bundle for model `code`.
    pub fn entries(&self, code: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            (format!("{code}.bin"), self.bin.clone()),
            (format!("{code}.elf"), self.elf.clone()),
            (format!("{code}.map"), self.map.clone()),
            ("sdkconfig".to_string(), self.sdkconfig.clone()),
            ("version.json".to_string(), self.version_json.clone()),
        ]
    }

    pub fn zip(&self, code: &str) -> Vec<u8> {
        zip_of(&self.entries(code))
    }

    /// The objects the service must store, by artifact name.
    pub fn artifacts(&self) -> [(&'static str, &[u8]); 5] {
        [
            ("firmware.bin", &self.bin),
            ("firmware.elf", &self.elf),
            ("firmware.map", &self.map),
            ("sdkconfig", &self.sdkconfig),
            ("version.json", &self.version_json),
        ]
    }
}

pub fn version_json(version: &str) -> Vec<u8> {
    serde_json::json!({"git_commit": "0296947", "idf_version": "v5.2.2", "firmware_version": version})
        .to_string()
        .into_bytes()
}

/// A deflated ZIP of `entries`, in order.
pub fn zip_of<N: AsRef<str>, D: AsRef<[u8]>>(entries: &[(N, D)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(name.as_ref(), options).unwrap();
        writer.write_all(data.as_ref()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

/// Applies `edit` to the local header and the central directory header of entry `name`:
/// `edit(header, is_central)` gets the header bytes from its signature on.
pub fn edit_entry_headers(zip: &mut [u8], name: &str, edit: impl Fn(&mut [u8], bool)) {
    let mut edited = 0;
    let mut i = 0;
    while i + 46 <= zip.len() {
        let (central, name_len_at, name_at) = match &zip[i..i + 4] {
            b"PK\x03\x04" => (false, 26, 30),
            b"PK\x01\x02" => (true, 28, 46),
            _ => {
                i += 1;
                continue;
            }
        };
        let len = u16_at(zip, i + name_len_at);
        if zip.get(i + name_at..i + name_at + len) == Some(name.as_bytes()) {
            edit(&mut zip[i..], central);
            edited += 1;
        }
        i += 4;
    }
    assert_eq!(edited, 2, "entry {name} found in both headers");
}

/// Sets the "encrypted" flag on entry `name`.
pub fn mark_encrypted(zip: &mut [u8], name: &str) {
    edit_entry_headers(zip, name, |h, central| {
        let at = if central { 8 } else { 6 };
        h[at] |= 1;
    });
}

/// Makes entry `name` declare `size` uncompressed bytes (a lie, for ZIP-bomb tests).
pub fn declare_size(zip: &mut [u8], name: &str, size: u32) {
    edit_entry_headers(zip, name, |h, central| {
        let at = if central { 24 } else { 22 };
        h[at..at + 4].copy_from_slice(&size.to_le_bytes());
    });
}

/// Renames entry `from` to `to` (same length) in both headers.
pub fn rename_entry(zip: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    edit_entry_headers(zip, from, |h, central| {
        let at = if central { 46 } else { 30 };
        h[at..at + to.len()].copy_from_slice(to.as_bytes());
    });
}

/// Writes `value` into a copy of a real app image at `offset` (inside the DROM segment) and
/// repairs the checksum and the appended SHA-256.
pub fn patch_real_image(image: &[u8], offset: usize, value: &[u8]) -> Vec<u8> {
    let parsed = esp_image::parse_app_image(image).expect("a real app image");
    let mut out = image.to_vec();
    let mut checksum = out[parsed.checksum.offset];
    for (i, b) in value.iter().enumerate() {
        checksum ^= out[offset + i] ^ b;
        out[offset + i] = *b;
    }
    out[parsed.checksum.offset] = checksum;
    if let Some(sha) = parsed.sha256 {
        let digest = sha256(&out[..sha.offset]);
        out[sha.offset..sha.offset + 32].copy_from_slice(&digest);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP and inspection helpers

use iotsupport::storage::ObjectKey;
use serde_json::Value;

use crate::helpers::TestApp;

pub const CODE: &str = "tempsensor";

pub async fn response_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Uploads `body` as the raw request body.
pub async fn upload(app: &TestApp, model_id: i64, body: Vec<u8>) -> (u16, Value) {
    app.upload_firmware(model_id, body).await
}

/// A `multipart/form-data` body with the parts given (name, file content).
pub fn multipart_body(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "------------------------iotsupportboundary7";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"bundle.zip\"\r\nContent-Type: application/zip\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Uploads `zip` as the `file` part of a form, as browsers and `curl -F` do.
pub async fn upload_multipart(app: &TestApp, model_id: i64, zip: &[u8]) -> (u16, Value) {
    let (content_type, body) = multipart_body(&[("comment", b"from CI"), ("file", zip)]);
    app.upload_firmware_as(model_id, &content_type, body).await
}

/// Uploads a build and asserts success.
pub async fn upload_ok(app: &TestApp, model_id: i64, code: &str, build: &Build) {
    let (status, body) = upload(app, model_id, build.zip(code)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["firmware_version"], build.version.as_str(), "{body}");
}

/// The stored versions of a model as the API lists them (newest upload first); must answer 200.
pub async fn versions(app: &TestApp, model_id: i64) -> Value {
    let (status, body) = app.firmware_versions(model_id).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The version names of a `versions` answer, in its order.
pub fn version_names(list: &Value) -> Vec<String> {
    list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect()
}

/// The model's current version, from its row.
pub async fn current_version(app: &TestApp, model_id: i64) -> Option<String> {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT firmware_version FROM device_models WHERE id = $1"
    )
    .bind(model_id)
    .fetch_one(p)
    .await)
    .unwrap()
}

pub async fn stored_versions(app: &TestApp, model_id: i64) -> Vec<String> {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT version FROM firmware_versions WHERE device_model_id = $1 ORDER BY version"
    )
    .bind(model_id)
    .fetch_all(p)
    .await)
    .unwrap()
}

/// Keys of every object under `prefix` (path-segment semantics), sorted.
pub async fn objects_under(app: &TestApp, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = app
        .state
        .storage
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

pub async fn object(app: &TestApp, key: &str) -> Vec<u8> {
    app.state
        .storage
        .get(&ObjectKey::parse(key).unwrap(), None)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// Asserts that every object of `build` is stored under `firmware/{code}/{version}/`.
pub async fn assert_build_stored(app: &TestApp, code: &str, build: &Build) {
    let prefix = format!("firmware/{code}/{}", build.version);
    let mut expected: Vec<String> = build
        .artifacts()
        .iter()
        .map(|(name, _)| format!("{prefix}/{name}"))
        .collect();
    expected.sort();
    assert_eq!(objects_under(app, &prefix).await, expected);
    for (name, bytes) in build.artifacts() {
        assert_eq!(
            object(app, &format!("{prefix}/{name}")).await,
            bytes,
            "{prefix}/{name}"
        );
    }
}

/// After a refused upload: no row, the current version unchanged, no objects under `firmware/`
/// except those of `kept` versions.
pub async fn assert_nothing_stored(
    app: &TestApp,
    model_id: i64,
    current: Option<&str>,
    kept: &[&str],
) {
    assert_eq!(current_version(app, model_id).await.as_deref(), current);
    let mut kept_sorted: Vec<String> = kept.iter().map(|v| v.to_string()).collect();
    kept_sorted.sort();
    assert_eq!(stored_versions(app, model_id).await, kept_sorted);
    let objects = objects_under(app, "firmware").await;
    assert!(
        objects.iter().all(|k| kept
            .iter()
            .any(|v| k.starts_with(&format!("firmware/{CODE}/{v}/")))),
        "unexpected objects: {objects:?}"
    );
}
