//! A small, plausible fleet around the one the browser builds through the UI, so that the pages
//! it screenshots show what a person would see in use (the README's screenshots under
//! `docs/ui/` come from them): three models, a dozen devices reporting the versions they run,
//! and real core dumps of three crashes, parsed with the ELF of the build that wrote them.
//!
//! Everything goes through the API as a CI pipeline or a device would (the admin token, device
//! credentials, `X-Firmware-Version` on version polls), never into the database directly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::driver::WAIT;
use crate::helpers::TestApp;

/// A real crash of the ESP test data: the dump and the ELF of the build that wrote it.
pub struct Crash {
    pub dump: Vec<u8>,
    pub elf: Vec<u8>,
}

/// The three crashes the flow uses (`$IOTSUPPORT_TESTDATA`, else `../shared/testdata/esp`).
pub struct TestData {
    /// `esp32_elf_crc32_abort`: `abort()` in `fail_once`, the one the flow follows.
    pub abort: Crash,
    /// `esp32_elf_v2_0_storeprohibited`: a store to a bad address in `recur_func`.
    pub store: Crash,
    /// `esp32_bin_v2_1_abort`: `abort()` of another application, in the binary dump format.
    pub binary_abort: Crash,
}

fn read_case(root: &Path, case: &str, dump: &str, elf: &str) -> Option<Crash> {
    let dir = root.join("coredump").join(case);
    match (std::fs::read(dir.join(dump)), std::fs::read(dir.join(elf))) {
        (Ok(dump), Ok(elf)) => Some(Crash { dump, elf }),
        _ => {
            eprintln!("SKIP browser: ESP test data not found at {}", dir.display());
            None
        }
    }
}

/// The ESP test data, never copied into the repository; `None` (with a SKIP line) without it.
pub fn testdata() -> Option<TestData> {
    let root = std::env::var_os("IOTSUPPORT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/esp"));
    Some(TestData {
        abort: read_case(&root, "esp32_elf_crc32_abort", "coredump.bin", "esp32.elf")?,
        store: read_case(
            &root,
            "esp32_elf_v2_0_storeprohibited",
            "coredump.bin",
            "esp32.elf",
        )?,
        binary_abort: read_case(
            &root,
            "esp32_bin_v2_1_abort",
            "coredump_bin.bin",
            "esp32_bin.elf",
        )?,
    })
}

/// A device made through the API: its id and `key.secret`.
pub struct Device {
    pub id: i64,
    pub credential: String,
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let request = app.admin_request(method.clone(), app.url(path));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.expect("an API request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

pub async fn create_model(app: &TestApp, code: &str, name: &str) -> i64 {
    let model = admin(
        app,
        Method::POST,
        "/api/device-models",
        Some(json!({"code": code, "name": name})),
    )
    .await;
    model["id"].as_i64().expect("a model id")
}

/// Uploads the bundle at `zip` to model `model_id`, as a CI pipeline would.
pub async fn upload_bundle(app: &TestApp, model_id: i64, zip: &Path) {
    let body = std::fs::read(zip).expect("read a bundle");
    let response = app
        .admin_request(
            Method::POST,
            app.url(&format!("/api/device-models/{model_id}/firmware")),
        )
        .header("content-type", "application/zip")
        .body(body)
        .send()
        .await
        .expect("upload a bundle");
    assert!(
        response.status().is_success(),
        "upload {}: {}",
        zip.display(),
        response.text().await.unwrap_or_default()
    );
}

pub async fn create_device(app: &TestApp, model_id: i64, name: &str, entity: &str) -> Device {
    let config = json!({"deviceName": name, "deviceEntityId": entity, "enableOTA": true});
    let device = admin(
        app,
        Method::POST,
        "/api/devices",
        Some(json!({"device_model_id": model_id, "config": config.to_string()})),
    )
    .await;
    let key = device["key"].as_str().expect("a key");
    let secret = device["device_secret"].as_str().expect("a secret");
    Device {
        id: device["id"].as_i64().expect("a device id"),
        credential: format!("{key}.{secret}"),
    }
}

/// The device asks for the current version, saying what it runs (how the UI learns it).
pub async fn poll_version(app: &TestApp, device: &Device, running: &str) {
    let response = app
        .client
        .get(app.url("/api/iot/firmware-version"))
        .bearer_auth(&device.credential)
        .header("x-firmware-version", running)
        .send()
        .await
        .expect("a version poll");
    assert!(response.status().is_success(), "{}", response.status());
}

/// Uploads `dump` as the device whose credential is `credential`, running `version`.
pub async fn upload_dump(app: &TestApp, credential: &str, version: &str, dump: &[u8]) -> i64 {
    let response = app
        .client
        .post(app.url(&format!(
            "/api/iot/coredump?chip=esp32&firmware_version={version}"
        )))
        .bearer_auth(credential)
        .body(dump.to_vec())
        .send()
        .await
        .expect("upload a dump");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("an answer");
    body["coredump_id"].as_i64().expect("a dump id")
}

/// Waits until dump `id` is parsed (through the API) and returns its structured report.
pub async fn parsed_report(app: &TestApp, device_id: i64, id: i64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = admin(
            app,
            Method::GET,
            &format!("/api/devices/{device_id}/coredumps/{id}"),
            None,
        )
        .await;
        match body["parse_status"].as_str() {
            Some("PARSED") => return body["report"].clone(),
            Some("PENDING") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => panic!("the dump was not parsed: {body}"),
        }
    }
}

/// Waits until every device of `devices` has its reported version recorded (presence is written
/// in the background, within seconds).
async fn until_running_recorded(app: &TestApp, devices: &[i64]) {
    let deadline = Instant::now() + WAIT;
    for id in devices {
        loop {
            let device = admin(app, Method::GET, &format!("/api/devices/{id}"), None).await;
            if !device["running_firmware_version"].is_null() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device {id} has no running version: {device}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Around the flow's model `hall` (versions 1.0.0 and 1.1.0, made in the browser): a 1.2.0
/// built from another application (so its crash is another group), five more hall sensors,
/// a thermostat model with six devices and a weather station with two; devices report what they
/// run, and some upload their crash. `bundle(code, version, elf)` writes a bundle file.
pub async fn populate(
    app: &TestApp,
    hall: i64,
    data: &TestData,
    bundle: impl Fn(&str, &str, &[u8]) -> PathBuf,
) {
    upload_bundle(app, hall, &bundle("hall_sensor", "1.2.0", &data.store.elf)).await;
    let mut reported = Vec::new();
    let mut dumps = Vec::new();
    for (name, entity, running, crash) in [
        (
            "Front door",
            "binary_sensor.front_door",
            "1.2.0",
            Some(&data.store),
        ),
        (
            "Back door",
            "binary_sensor.back_door",
            "1.2.0",
            Some(&data.store),
        ),
        ("Garage", "binary_sensor.garage", "1.1.0", Some(&data.abort)),
        ("Shed", "binary_sensor.shed", "1.0.0", Some(&data.abort)),
        (
            "Kitchen window",
            "binary_sensor.kitchen_window",
            "1.1.0",
            None,
        ),
    ] {
        let device = create_device(app, hall, name, entity).await;
        poll_version(app, &device, running).await;
        reported.push(device.id);
        if let Some(crash) = crash {
            let id = upload_dump(app, &device.credential, running, &crash.dump).await;
            dumps.push((device.id, id));
        }
    }

    let thermostat = create_model(app, "thermostat", "Thermostat").await;
    for version in ["2.3.0", "2.4.0"] {
        let zip = bundle("thermostat", version, &data.binary_abort.elf);
        upload_bundle(app, thermostat, &zip).await;
    }
    for (i, (name, running)) in [
        ("Living room", "2.4.0"),
        ("Kitchen", "2.4.0"),
        ("Bedroom", "2.4.0"),
        ("Office", "2.3.0"),
        ("Nursery", "2.4.0"),
        ("Basement", "2.3.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let entity = format!("climate.{}", name.to_lowercase().replace(' ', "_"));
        let device = create_device(app, thermostat, name, &entity).await;
        poll_version(app, &device, running).await;
        reported.push(device.id);
        if i == 3 || i == 5 {
            let id = upload_dump(app, &device.credential, running, &data.binary_abort.dump).await;
            dumps.push((device.id, id));
        }
    }

    let weather = create_model(app, "weather_station", "Weather station").await;
    upload_bundle(
        app,
        weather,
        &bundle("weather_station", "0.9.2", &data.abort.elf),
    )
    .await;
    for (name, entity) in [("Roof", "sensor.roof"), ("Garden", "sensor.garden")] {
        let device = create_device(app, weather, name, entity).await;
        poll_version(app, &device, "0.9.2").await;
        reported.push(device.id);
    }

    for (device, dump) in dumps {
        parsed_report(app, device, dump).await;
    }
    until_running_recorded(app, &reported).await;
}
