//! Headless Chromium for the browser test: finding Debian's `chromium` and `chromedriver`,
//! running chromedriver on a free loopback port, a WebDriver session per run, and the waits and
//! reads the flow needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long any one wait of the flow may take (parsing a dump included).
pub const WAIT: Duration = Duration::from_secs(45);

/// The first of `names` on `PATH`, or the path in `$variable` when it is set.
fn binary(variable: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Debian's `chromium` and `chromedriver` (`IOTSUPPORT_TEST_CHROMIUM`,
/// `IOTSUPPORT_TEST_CHROMEDRIVER`, which `scripts/test.sh` sets, else `PATH`), or `None` with a
/// SKIP line — a failure under `scripts/test.sh` (`IOTSUPPORT_TEST_REQUIRE_SERVICES=1`).
pub fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = binary(
        "IOTSUPPORT_TEST_CHROMIUM",
        &["chromium", "chromium-browser"],
    );
    let driver = binary("IOTSUPPORT_TEST_CHROMEDRIVER", &["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ if std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
            panic!("{test}: chromium or chromedriver not found (apt-get install chromium chromium-driver)")
        }
        _ => {
            eprintln!(
                "SKIP {test}: chromium and chromedriver not found; run scripts/test.sh or \
                 apt-get install chromium chromium-driver"
            );
            None
        }
    }
}

/// A running chromedriver, stopped when dropped.
pub struct Driver {
    child: Child,
    pub url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Driver {
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium: chromium.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new browser (fresh profile) with a desktop-sized window.
    pub async fn session(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                // --no-sandbox: the test may run as root (CI does).
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", "--lang=en-US", "--hide-scrollbars"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

/// Runs `script` (a JavaScript function body) with `args` and returns its value.
pub async fn js(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args).await.expect("a script runs")
}

/// Waits until the expression `condition` is true in the page.
pub async fn until(c: &Client, what: &str, condition: &str) {
    let deadline = Instant::now() + WAIT;
    let script = format!("try {{ return !!({condition}); }} catch (e) {{ return false; }}");
    loop {
        if js(c, &script, vec![]).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = text(c, "main").await;
            panic!("timed out waiting for {what} ({condition}); the page shows:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element matching `css`, or "" when there is none.
pub async fn text(c: &Client, css: &str) -> String {
    let value = js(
        c,
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
        vec![json!(css)],
    )
    .await;
    value.as_str().unwrap_or_default().to_string()
}

/// Waits until the element matching `css` contains `needle` in its text.
pub async fn until_text(c: &Client, css: &str, needle: &str) {
    let condition = format!(
        "(document.querySelector({css}) || {{textContent: ''}}).textContent.includes({needle})",
        css = json!(css),
        needle = json!(needle)
    );
    until(c, &format!("{css} to show {needle:?}"), &condition).await;
}

/// Clicks `css`. Pages re-render live (a parsed dump, a new event): an element found a moment ago
/// may be replaced before the click reaches it, as a user would click the new one, the element
/// is found again then.
pub async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let element = c
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

/// Replaces the value of the field matching `css` with `value`.
pub async fn fill(c: &Client, css: &str, value: &str) {
    let field = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.expect("clear a field");
    field.send_keys(value).await.expect("type into a field");
}

/// Clicks `css` and accepts the confirmation it asks for.
pub async fn click_and_confirm(c: &Client, css: &str) {
    click(c, css).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.accept_alert().await.is_err() {
        assert!(Instant::now() < deadline, "{css} asked for no confirmation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the event stream of the page is connected (changes made after this reach it).
pub async fn until_live(c: &Client) {
    until(
        c,
        "the live stream",
        "document.getElementById('live-status').dataset.state === 'live'",
    )
    .await;
}

/// Marks the element `css` of the page's `<main>`; [`until_refreshed`] waits for a live refresh
/// to replace it.
pub async fn mark_main_content(c: &Client, css: &str) {
    let script = format!(
        "document.querySelector('{css}').setAttribute('data-before-refresh', ''); return true;"
    );
    js(c, &script, vec![]).await;
}

/// Waits until a live refresh has replaced what [`mark_main_content`] marked.
pub async fn until_refreshed(c: &Client, css: &str) {
    let check = format!("!!document.querySelector('{css}') && !document.querySelector('{css}[data-before-refresh]')");
    until(c, "a live refresh", &check).await;
}

/// Marks the loaded document; [`assert_not_reloaded`] checks the mark is still there.
pub async fn mark_document(c: &Client) {
    js(c, "window.__sameDocument = true; return true;", vec![]).await;
}

pub async fn assert_not_reloaded(c: &Client, what: &str) {
    let same = js(c, "return window.__sameDocument === true;", vec![]).await;
    assert_eq!(same, Value::Bool(true), "{what}: the page was reloaded");
}

/// Saves a screenshot of the window as `<dir>/<name>.png`.
pub async fn screenshot(c: &Client, dir: &Path, name: &str) {
    // Let a live-update refresh settle, and hide the flash message (it would cover the page).
    tokio::time::sleep(Duration::from_millis(300)).await;
    js(
        c,
        "const f = document.getElementById('flash'); if (f) { f.className = ''; } return true;",
        vec![],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write a screenshot");
}
