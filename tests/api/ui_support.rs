//! What the web UI's tests (`ui_pages.rs`, `ui_access.rs`) share: fetching a page as the admin
//! without following redirects, and reading what it says.

use crate::helpers::*;

/// A page as the browser gets it: status, `Content-Type`, `Location`, body.
pub struct Fetched {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub body: String,
}

/// A client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// `GET path` with `request` (the admin's credentials or none), redirects not followed.
pub async fn fetch(request: reqwest::RequestBuilder) -> Fetched {
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Fetched {
        status,
        content_type,
        location,
        body,
    }
}

/// `GET path` as the admin (the app's `ADMIN_TOKEN` when it has one); must be a 200 HTML page.
pub async fn page(app: &TestApp, path: &str) -> String {
    let request = no_redirects().get(app.url(path));
    let request = match &app.state.config.admin_token {
        Some(token) => request.bearer_auth(token.expose()),
        None => request,
    };
    let fetched = fetch(request).await;
    assert_eq!(fetched.status, 200, "GET {path}: {}", fetched.body);
    assert!(
        fetched.content_type.starts_with("text/html"),
        "GET {path}: {}",
        fetched.content_type
    );
    fetched.body
}

/// `text` as HTML shows it (what maud writes for it).
pub fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Asserts that `body` contains each of `needles`, naming the page.
pub fn assert_shows(what: &str, body: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            body.contains(needle),
            "{what} should show {needle:?}:\n{body}"
        );
    }
}
