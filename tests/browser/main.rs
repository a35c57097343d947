//! The web UI in a real browser: headless Chromium (Debian's `chromium`) driven through
//! chromedriver (Debian's `chromium-driver`) with fantoccini, against the service on each
//! database backend. Outside `scripts/test.sh`, missing browsers or services print SKIP.
//!
//! The flow: sign in — with the `ADMIN_TOKEN` form on the embedded stack, through the OIDC code
//! flow at the local test issuer (`tests/support/issuer.rs`) on the production stack —, create a
//! model through its form, upload two firmware bundles (built around a real ELF of the ESP test
//! data) through the upload control (XHR with progress), create a device through its form and
//! read its credential from the dialog, upload a real core dump as that device through the device
//! API and watch it appear and get parsed on the open device page without a reload, see the
//! config editor show the server's refusal, add the rest of a small fleet through the API
//! (`fleet.rs`), read the structured report, resolve its crash group, roll back a version, see a
//! device created through the API appear on the open model page, trigger a fleet rotation, and
//! sign out. A screenshot of each page goes to `$IOTSUPPORT_UI_SCREENSHOTS/<stack>/` (default
//! `target/tmp/ui-screenshots/<stack>/`); `docs/ui/` holds copies for the README.

#[path = "../api/client.rs"]
#[allow(dead_code)] // shared with tests/api/, which uses all of it
mod client;
#[path = "../support/esp_image_synth.rs"]
mod esp_image_synth;
#[path = "../api/firmware_support.rs"]
#[allow(dead_code)] // shared with tests/api/, which uses all of it
mod firmware_support;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../support/issuer.rs"]
mod issuer;

mod driver;
mod fleet;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use reqwest::Method;
use serde_json::{json, Value};

use driver::*;
use firmware_support::{sha256, version_json, zip_of, Desc};
use fleet::{parsed_report, populate, testdata, upload_dump, TestData};
use helpers::{Stack, TestApp, ALL_STACKS};
use issuer::{EcKey, LoginSetup, TestIssuer, AUDIENCE};

/// The app's `ADMIN_TOKEN`: typed into the sign-in form, and what the test's own API calls send.
const TOKEN: &str = "browser-admin-token-0123456789";

/// How the browser signs in on a stack.
enum SignIn {
    /// The `ADMIN_TOKEN` form.
    Token,
    /// The OIDC code flow at the local issuer, which signs Ada Lovelace in without asking.
    Oidc(TestIssuer),
}

impl SignIn {
    /// The token form on the embedded stack, OIDC on the production stack: each way on one.
    async fn for_stack(stack: Stack) -> SignIn {
        match stack {
            Stack::Embedded => SignIn::Token,
            Stack::Production => {
                let key = EcKey::generate("browser-login");
                let issuer = TestIssuer::start(vec![key.jwk()]).await;
                let user = issuer.claims();
                issuer.enable_login(LoginSetup::new(key, "iotsupport-web", user));
                SignIn::Oidc(issuer)
            }
        }
    }

    /// The person the top bar names once signed in.
    fn person(&self) -> &'static str {
        match self {
            SignIn::Token => "Administrator",
            SignIn::Oidc(_) => "Ada Lovelace",
        }
    }

    async fn spawn(&self, stack: Stack) -> Option<TestApp> {
        // ADMIN_TOKEN on both: the test's own API calls (as a pipeline or a script would) use it.
        let builder = TestApp::builder("browser").env("ADMIN_TOKEN", TOKEN);
        match self {
            SignIn::Token => builder.spawn(stack).await,
            SignIn::Oidc(issuer) => {
                builder
                    .env("OIDC_ENABLED", "true")
                    .env("OIDC_ISSUER_URL", &issuer.issuer)
                    .env("OIDC_AUDIENCE", AUDIENCE)
                    .env("OIDC_CLIENT_ID", "iotsupport-web")
                    .spawn(stack)
                    .await
            }
        }
    }
}

/// An ESP32 app image for `desc` about as large as a small real application (190 KiB of
/// read-only data after the descriptor), so the pages show plausible sizes.
fn image(desc: &Desc, version: &str) -> Vec<u8> {
    let salt = version.bytes().fold(0u8, |a, b| a.wrapping_mul(31) ^ b);
    let tail: Vec<u8> = (0..190 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ salt)
        .collect();
    esp_image_synth::esp32_image(desc, &tail, 0x50 ^ salt)
}

/// A firmware bundle of model `code` whose image embeds the SHA-256 of the real `elf`, so that
/// dumps of this build are parsed with it.
fn bundle(code: &str, version: &str, elf: &[u8], dir: &Path) -> PathBuf {
    let project: &'static [u8] = match code {
        "thermostat" => b"thermostat",
        "weather_station" => b"weather_station",
        _ => b"hall_sensor",
    };
    let desc = Desc {
        magic: 0xABCD_5432,
        version: version.as_bytes().to_vec(),
        project,
        idf: b"v5.3-dev",
        elf_sha256: sha256(elf),
    };
    let entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{code}.bin"), image(&desc, version)),
        (format!("{code}.elf"), elf.to_vec()),
        (format!("{code}.map"), b"Memory map\n".to_vec()),
        (
            "sdkconfig".into(),
            b"CONFIG_IDF_TARGET=\"esp32\"\n".to_vec(),
        ),
        ("version.json".into(), version_json(version)),
    ];
    let path = dir.join(format!("{code}-{version}.zip"));
    std::fs::write(&path, zip_of(&entries)).expect("write a bundle");
    path
}

fn screenshots(stack: Stack) -> PathBuf {
    let root = std::env::var_os("IOTSUPPORT_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    let dir = root.join(format!("{stack:?}").to_lowercase());
    std::fs::create_dir_all(&dir).expect("a screenshot directory");
    dir
}

#[tokio::test]
async fn the_web_ui_works_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser("browser") else {
        return;
    };
    let Some(data) = testdata() else {
        return;
    };
    let driver = Driver::start(&chromium, &chromedriver).await;
    for stack in ALL_STACKS {
        let sign_in = SignIn::for_stack(stack).await;
        let Some(app) = sign_in.spawn(stack).await else {
            continue;
        };
        let started = Instant::now();
        let files = tempfile::TempDir::new().expect("a temp dir");
        let shots = screenshots(stack);
        let c = driver.session().await;
        flow(&app, &c, &sign_in, &files, &shots, &data).await;
        c.close().await.expect("close the browser");
        eprintln!(
            "browser flow on the {stack:?} stack: {:.1} s; screenshots in {}",
            started.elapsed().as_secs_f64(),
            shots.display()
        );
        app.stop().await;
    }
}

async fn path(c: &Client) -> String {
    c.current_url().await.expect("a URL").path().to_string()
}

/// The id at the end of the page's path (`/models/3` → 3).
async fn id_in_path(c: &Client) -> i64 {
    let path = path(c).await;
    path.rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {path}"))
}

async fn flow(
    app: &TestApp,
    c: &Client,
    sign_in: &SignIn,
    files: &tempfile::TempDir,
    shots: &Path,
    data: &TestData,
) {
    let (dump, elf) = (&data.abort.dump, &data.abort.elf);
    // ---- Sign in -------------------------------------------------------------------------
    // A page asked for without a session sends the browser to the one sign-in route.
    c.goto(&app.url("/")).await.expect("open /");
    match sign_in {
        SignIn::Token => {
            until(
                c,
                "the sign-in form",
                "location.pathname === '/api/auth/login' && !!document.querySelector('input[name=token]')",
            )
            .await;
            screenshot(c, shots, "sign-in").await;
            fill(c, "input[name=token]", "not-the-admin-token").await;
            click(c, "form[action='/api/auth/login'] button[type=submit]").await;
            until_text(c, "[role=alert]", "That token is not the admin token").await;
            fill(c, "input[name=token]", TOKEN).await;
            click(c, "form[action='/api/auth/login'] button[type=submit]").await;
        }
        // To the issuer and back through /api/auth/callback, without a page of ours.
        SignIn::Oidc(_) => {}
    }
    until(c, "the overview", "location.pathname === '/'").await;
    until_text(c, ".topbar .person", sign_in.person()).await;
    let csrf = js(
        c,
        "const m = document.querySelector('meta[name=csrf-token]'); return m ? m.content : '';",
        vec![],
    )
    .await;
    assert!(
        csrf.as_str().is_some_and(|t| !t.is_empty()),
        "a session's page carries its CSRF token"
    );

    // ---- A model, through the overview's form ----------------------------------------------
    until_text(c, "main", "No device models yet").await;
    fill(c, "input[name=code]", "hall_sensor").await;
    fill(c, "input[name=name]", "Hall sensor").await;
    click(
        c,
        "form[data-api-url='/api/device-models'] button[type=submit]",
    )
    .await;
    until(
        c,
        "the model page",
        "location.pathname.startsWith('/models/')",
    )
    .await;
    let model_id = id_in_path(c).await;

    // ---- Two firmware bundles, through the upload control ----------------------------------
    for version in ["1.0.0", "1.1.0"] {
        let zip = bundle("hall_sensor", version, elf, files.path());
        let input = c
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#upload input[type=file]"))
            .await
            .expect("the upload control");
        input
            .send_keys(&zip.display().to_string())
            .await
            .expect("choose a bundle");
        until_text(c, "#current-version", version).await;
        until(
            c,
            "the version's row",
            &format!("!!document.querySelector('#versions tr[data-version=\"{version}\"]')"),
        )
        .await;
    }

    // ---- A device, through the model page's form -------------------------------------------
    c.find(Locator::XPath("//summary[normalize-space()='New device']"))
        .await
        .expect("the new-device form")
        .click()
        .await
        .expect("open the form");
    let typed = r#"{"deviceName": "Hall", "deviceEntityId": "sensor.hall"}"#;
    fill(
        c,
        "form[data-api-url='/api/devices'] textarea[name=config]",
        typed,
    )
    .await;
    // What is being typed survives a live refresh of the page (a device created elsewhere).
    until_live(c).await;
    let (status, elsewhere) = app.create_device(model_id, "{}").await;
    assert_eq!(status, 201, "{elsewhere}");
    until_text(c, "main", elsewhere["key"].as_str().expect("a key")).await;
    let kept = js(
        c,
        "return document.querySelector(\"form[data-api-url='/api/devices'] textarea[name=config]\").value;",
        vec![],
    )
    .await;
    assert_eq!(
        kept.as_str(),
        Some(typed),
        "the refresh wiped the new-device form"
    );
    click(c, "form[data-api-url='/api/devices'] button[type=submit]").await;
    until(
        c,
        "the credential dialog",
        "!!document.getElementById('device-credential')",
    )
    .await;
    let credential = text(c, "#device-credential").await;
    assert!(
        credential.contains('.'),
        "a key.secret credential: {credential}"
    );
    screenshot(c, shots, "device-created").await;
    click(c, "#secret-dialog a").await;
    until(
        c,
        "the device page",
        "location.pathname.startsWith('/devices/')",
    )
    .await;
    let device_id = id_in_path(c).await;

    // ---- A real dump, uploaded as the device, appears live and gets parsed ------------------
    until_live(c).await;
    mark_document(c).await;
    let dump_id = upload_dump(app, &credential, "1.0.0", dump).await;
    let report = parsed_report(app, device_id, dump_id).await;
    let headline = report["headline"].as_str().expect("a headline").to_string();
    until_text(c, "#dumps", &headline).await;
    assert_not_reloaded(c, "the new dump").await;
    // The same crash reported from the newer build: one crash group over two versions.
    let again = upload_dump(app, &credential, "1.1.0", dump).await;
    parsed_report(app, device_id, again).await;
    until(
        c,
        "the second dump",
        "document.querySelectorAll('#dumps tbody tr').length === 2",
    )
    .await;
    screenshot(c, shots, "device").await;

    // The config editor shows the server's refusal next to it; provisioning says what is missing.
    fill(c, "#config-form textarea[name=config]", "{\"deviceName\": ").await;
    click(c, "#config-form button[type=submit]").await;
    until(c, "the config error", "document.querySelector('#config-form [data-status]').textContent.length > 0 && document.querySelector('#config-form [data-status]').classList.contains('bad')").await;
    click(c, "#provisioning-form button[type=submit]").await;
    until_text(c, "#provisioning-form [data-status]", "Provisioning field").await;
    // A partition size typed in, then left, survives a live refresh of the page (a package for
    // the wrong size would overwrite the partition after it).
    fill(c, "#provisioning-form input[name=partition_size]", "16384").await;
    js(c, "document.activeElement.blur(); return true;", vec![]).await;
    mark_main_content(c, "#dumps").await;
    let (status, body) = app.update_device(device_id, json!({"active": true})).await;
    assert_eq!(status, 200, "{body}");
    until_refreshed(c, "#dumps").await;
    let size = js(
        c,
        "return document.querySelector('#provisioning-form input[name=partition_size]').value;",
        vec![],
    )
    .await;
    assert_eq!(
        size.as_str(),
        Some("16384"),
        "the refresh reset the typed size"
    );

    // ---- The rest of a small fleet, through the API (see fleet.rs) ---------------------------
    populate(app, model_id, data, |code, version, elf| {
        bundle(code, version, elf, files.path())
    })
    .await;

    // ---- The structured report ---------------------------------------------------------------
    click(
        c,
        &format!("#dumps a[href='/devices/{device_id}/coredumps/{dump_id}']"),
    )
    .await;
    until_text(c, "#headline", &headline).await;
    until(
        c,
        "the backtrace",
        "document.querySelectorAll('table.backtrace tbody tr').length > 0",
    )
    .await;
    until_text(c, "#report", "Registers").await;
    screenshot(c, shots, "report").await;
    // Sections opened and closed stay so when the report refreshes (a reparse of this dump).
    js(
        c,
        "document.getElementById('task-0').open = false; \
         document.getElementById('text-report').open = true; return true;",
        vec![],
    )
    .await;
    mark_main_content(c, "#headline").await;
    let (status, body) = app.reparse_coredump(device_id, dump_id).await;
    assert!((200..300).contains(&status), "{status}: {body}");
    until_refreshed(c, "#headline").await;
    // The refresh that drew the parsed report again (a pending one may come first).
    until(c, "the report again", "!!document.getElementById('task-0')").await;
    let kept = js(
        c,
        "return [document.getElementById('task-0').open, \
                 document.getElementById('text-report').open];",
        vec![],
    )
    .await;
    assert_eq!(
        kept,
        json!([false, true]),
        "the refresh changed which sections are open"
    );

    // ---- Its crash group: the chart, resolving --------------------------------------------------
    click(c, "main a[href^='/crash-groups/']").await;
    until(
        c,
        "the group's chart",
        "!!document.getElementById('versions-chart')",
    )
    .await;
    screenshot(c, shots, "crash-group").await;
    click(c, "#status-actions button").await; // Resolve
    until(
        c,
        "the resolved status",
        "!!document.querySelector('.page-head .status-resolved')",
    )
    .await;
    c.goto(&app.url(&format!("/models/{model_id}/crash-groups")))
        .await
        .expect("open the list");
    until(c, "the list", "!!document.getElementById('crash-groups')").await;
    screenshot(c, shots, "crash-groups").await;

    // ---- Roll back, then a change made through the API arrives without a reload --------------
    c.goto(&app.url(&format!("/models/{model_id}")))
        .await
        .expect("open the model");
    click_and_confirm(
        c,
        "#versions tr[data-version='1.0.0'] button[data-api-method='PUT']",
    )
    .await;
    until_text(c, "#current-version", "1.0.0").await;
    until_live(c).await;
    mark_document(c).await;
    let created = app
        .admin_request(Method::POST, app.url("/api/devices"))
        .json(&json!({"device_model_id": model_id, "config": r#"{"deviceName": "Porch"}"#}))
        .send()
        .await
        .expect("create a device");
    assert_eq!(created.status(), 201);
    let key = created.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    until_text(c, "#devices", &key).await;
    assert_not_reloaded(c, "the device created through the API").await;
    screenshot(c, shots, "model").await;

    // ---- Rotation ---------------------------------------------------------------------------------
    c.goto(&app.url("/rotation")).await.expect("open rotation");
    click_and_confirm(c, "#trigger-rotation").await;
    until_text(c, "main", "PENDING").await;
    screenshot(c, shots, "rotation").await;

    // ---- The overview, on a desktop and on a phone ------------------------------------------
    c.goto(&app.url("/")).await.expect("open the overview");
    until(c, "the models table", "!!document.getElementById('models')").await;
    screenshot(c, shots, "overview").await;
    c.set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    c.goto(&app.url(&format!("/devices/{device_id}")))
        .await
        .expect("open the device");
    until(c, "the device page", "!!document.getElementById('dumps')").await;
    screenshot(c, shots, "device-phone").await;
    c.set_window_size(1280, 1100)
        .await
        .expect("a desktop window");

    // ---- Sign out ---------------------------------------------------------------------------------
    c.goto(&app.url("/")).await.expect("open the overview");
    click(c, ".topbar a.signout").await;
    match sign_in {
        SignIn::Token => {
            // The session is gone: the overview asks for the token again.
            until(
                c,
                "the sign-in form",
                "location.pathname === '/api/auth/login' && !!document.querySelector('input[name=token]')",
            )
            .await;
            c.goto(&app.url("/")).await.expect("open /");
            until(
                c,
                "the sign-in form again",
                "location.pathname === '/api/auth/login'",
            )
            .await;
        }
        SignIn::Oidc(issuer) => {
            // Signed out at the provider too; the test issuer signs Ada in again at once.
            let deadline = Instant::now() + WAIT;
            while issuer.with_login(|l| l.logouts.len()) == 0 {
                assert!(Instant::now() < deadline, "no sign-out at the provider");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                issuer.with_login(|l| l.logouts[0].len() > 20),
                "the sign-out names the ID token"
            );
            until(c, "back at the overview", "location.pathname === '/'").await;
        }
    }
}
