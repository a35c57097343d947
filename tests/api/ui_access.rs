//! Who gets the web UI's pages and what a person sees when something is wrong: a browser that is
//! not signed in is sent to `/api/auth/login` (303, with the page it asked for), which draws the
//! token form in the UI's shell; a session's pages carry its CSRF token and a sign-out link;
//! unknown or malformed addresses answer an HTML page (never the API's JSON), and the assets are
//! versioned and cached. The sign-in routes themselves are tested in `sessions.rs`.

use crate::fleet::create_model;
use crate::helpers::*;
use crate::ui_support::{assert_shows, fetch, no_redirects, page};

const TOKEN: &str = "ui-admin-token-0123456789";

#[tokio::test]
async fn ui_pages_send_a_browser_without_credentials_to_the_sign_in_route() {
    let Some(app) = TestApp::builder("ui_login_redirect")
        .env("ADMIN_TOKEN", TOKEN)
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    let client = no_redirects();
    // Each wrong token from an address of its own (behind the local proxy): from one address
    // the sixth would find the admin-token throttle closed (below).
    let mut guesser = 0;
    for (path, redirect) in [
        ("/", "%2F"),
        ("/models/1", "%2Fmodels%2F1"),
        (
            "/models/1/crash-groups?status=open",
            "%2Fmodels%2F1%2Fcrash-groups%3Fstatus%3Dopen",
        ),
        ("/devices/7?x=%3Cy%3E", "%2Fdevices%2F7%3Fx%3D%253Cy%253E"),
        ("/devices/7/coredumps/3", "%2Fdevices%2F7%2Fcoredumps%2F3"),
        ("/crash-groups/4", "%2Fcrash-groups%2F4"),
        ("/rotation", "%2Frotation"),
    ] {
        guesser += 1;
        for request in [
            client.get(app.url(path)),
            client
                .get(app.url(path))
                .bearer_auth("wrong-token")
                .header("x-forwarded-for", format!("198.51.100.{guesser}")),
        ] {
            let fetched = fetch(request).await;
            assert_eq!(fetched.status, 303, "GET {path}: {}", fetched.body);
            assert_eq!(
                fetched.location.as_deref(),
                Some(format!("/api/auth/login?redirect={redirect}").as_str()),
                "GET {path}"
            );
        }
    }
    // Guessing on from one address closes it: a page that says so, not a server error.
    let guess = || {
        client
            .get(app.url("/"))
            .bearer_auth("wrong-token")
            .header("x-forwarded-for", "203.0.113.99")
    };
    for _ in 0..6 {
        fetch(guess()).await;
    }
    let closed = fetch(guess()).await;
    assert_eq!(closed.status, 429, "{}", closed.body);
    assert_shows(
        "the closed throttle",
        &closed.body,
        &["Too many wrong tokens"],
    );
    // With the token the page is there; the stylesheet needs no credentials.
    let body = page(&app, "/").await;
    let css = body
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with("/ui.css"))
        .unwrap();
    assert_eq!(fetch(client.get(app.url(css))).await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn ui_sign_in_is_the_token_form_of_the_api_route_in_the_uis_shell() {
    let Some(app) = TestApp::builder("ui_login_form")
        .env("ADMIN_TOKEN", TOKEN)
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    let client = no_redirects();
    // `/login` is a short address for the one sign-in route.
    let short = fetch(client.get(app.url("/login?redirect=%2Fdevices%2F3%3Fa%3D1"))).await;
    assert_eq!(short.status, 303);
    assert_eq!(
        short.location.as_deref(),
        Some("/api/auth/login?redirect=%2Fdevices%2F3%3Fa%3D1")
    );
    let form = fetch(client.get(app.url("/api/auth/login?redirect=%2Fdevices%2F3%3Fa%3D1"))).await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.content_type.starts_with("text/html"));
    assert_shows(
        "the sign-in form",
        &form.body,
        &[
            "Sign in to iotsupport",
            "action=\"/api/auth/login\"",
            "method=\"post\"",
            "type=\"password\" name=\"token\"",
            "name=\"redirect\" value=\"/devices/3?a=1\"",
            "/ui.css\"",
        ],
    );
    assert!(!form.body.contains("role=\"alert\""), "no error yet");
    // Nobody is signed in: no navigation, no name, no live status.
    assert!(!form.body.contains("id=\"live-status\""), "{}", form.body);

    let wrong = fetch(client.get(app.url("/api/auth/login?error=invalid&redirect=%2F"))).await;
    assert_shows(
        "after a wrong token",
        &wrong.body,
        &["role=\"alert\"", "That token is not the admin token"],
    );
    // Only paths on this site are kept as targets.
    let elsewhere =
        fetch(client.get(app.url("/api/auth/login?redirect=%2F%2Fevil.example%2F"))).await;
    assert_shows(
        "a foreign target",
        &elsewhere.body,
        &["name=\"redirect\" value=\"/\""],
    );
    app.stop().await;
}

#[tokio::test]
async fn ui_pages_of_a_browser_session_carry_its_csrf_token_and_a_sign_out_link() {
    let Some(app) = TestApp::builder("ui_session_pages")
        .env("ADMIN_TOKEN", TOKEN)
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    let client = no_redirects();
    let signed = client
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}&redirect=%2Frotation"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/rotation");
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = fetch(
        client
            .get(app.url("/api/auth/self"))
            .header("cookie", &cookie),
    )
    .await
    .body;
    let csrf: serde_json::Value = serde_json::from_str(&csrf).unwrap();
    let csrf = csrf["csrf_token"].as_str().expect("a CSRF token");
    let page = fetch(client.get(app.url("/rotation")).header("cookie", &cookie)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_shows(
        "a page of the session",
        &page.body,
        &[
            &format!("<meta name=\"csrf-token\" content=\"{csrf}\">"),
            "<span class=\"person\">Administrator</span>",
            "href=\"/api/auth/logout\"",
            "Sign out",
        ],
    );
    // Signed out, the page sends the browser to sign in again.
    let out = fetch(
        client
            .get(app.url("/api/auth/logout"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(out.status, 303);
    let again = fetch(client.get(app.url("/rotation")).header("cookie", &cookie)).await;
    assert_eq!(again.status, 303);
    assert_eq!(
        again.location.as_deref(),
        Some("/api/auth/login?redirect=%2Frotation")
    );
    app.stop().await;
}

#[tokio::test]
async fn ui_sign_in_in_open_mode_goes_straight_to_the_page() {
    let Some(app) = spawn_app(Stack::Embedded, "ui_login_open").await else {
        return;
    };
    let fetched = fetch(no_redirects().get(app.url("/api/auth/login?redirect=%2Frotation"))).await;
    assert_eq!(fetched.status, 303);
    assert_eq!(fetched.location.as_deref(), Some("/rotation"));
    app.stop().await;
}

#[tokio::test]
async fn ui_missing_and_malformed_pages_answer_html_for_a_person() {
    for_each_stack("ui_not_found", &[], async |app| {
        let model_id = create_model(app, "sensor", None).await;
        let client = no_redirects();
        for (path, status, says) in [
            ("/devices/999", 404, "Device 999 was not found"),
            ("/models/999", 404, "DeviceModel 999 was not found"),
            ("/crash-groups/999", 404, "CrashGroup 999 was not found"),
            ("/devices/999/coredumps/1", 404, "Device 999 was not found"),
            ("/models/abc", 404, "There is no such page"),
            ("/devices/1.5", 404, "There is no such page"),
            (
                &format!("/models/{model_id}/crash-groups?status=bogus"),
                400,
                "There is no crash-group status",
            ),
            ("/assets/0/nothing.js", 404, "There is no such file"),
        ] {
            let fetched = fetch(client.get(app.url(path))).await;
            assert_eq!(fetched.status, status, "GET {path}: {}", fetched.body);
            assert!(
                fetched.content_type.starts_with("text/html"),
                "GET {path}: {}",
                fetched.content_type
            );
            assert_shows(path, &fetched.body, &[says, "Back to the fleet overview"]);
        }
        // The API keeps its envelope.
        let api = fetch(client.get(app.url("/api/devices/999"))).await;
        assert_eq!(api.status, 404);
        assert_eq!(api.content_type, "application/json");
    })
    .await;
}

#[tokio::test]
async fn ui_assets_are_versioned_and_cached_for_a_year() {
    let Some(app) = spawn_app(Stack::Embedded, "ui_assets").await else {
        return;
    };
    let body = page(&app, "/").await;
    let client = no_redirects();
    for (file, content_type) in [("ui.css", "text/css"), ("ui.js", "text/javascript")] {
        let href = body
            .split('"')
            .find(|s| s.starts_with("/assets/") && s.ends_with(file))
            .unwrap_or_else(|| panic!("{file} linked:\n{body}"));
        let response = client.get(app.url(href)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(content_type));
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let other = client
            .get(app.url(&format!("/assets/0000/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200);
        assert_eq!(other.headers()["cache-control"], "no-cache");
    }
    app.stop().await;
}

#[tokio::test]
async fn ui_pages_name_the_viewer_and_carry_no_csrf_token_without_a_session() {
    let Some(app) = spawn_app(Stack::Embedded, "ui_chrome").await else {
        return;
    };
    let response = no_redirects().get(app.url("/")).send().await.unwrap();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_shows(
        "the top bar",
        &body,
        &["Administrator", "href=\"/rotation\"", "id=\"live-status\""],
    );
    // Open mode has no browser session: no token to carry, nothing to sign out of.
    assert!(!body.contains("csrf-token"), "{body}");
    assert!(!body.contains("Sign out"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_mistyped_page_address_gets_a_page_and_the_api_keeps_its_envelope() {
    let Some(app) = spawn_app(Stack::Embedded, "ui_unknown_page").await else {
        return;
    };
    let html = "text/html,application/xhtml+xml";
    let page = fetch(
        no_redirects()
            .get(app.url("/models"))
            .header("accept", html),
    )
    .await;
    assert_eq!(page.status, 404);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(
        page.body.contains("There is no page at /models"),
        "{}",
        page.body
    );
    // The API answers its envelope whatever the client accepts, and so does a client that asks
    // for no page.
    for (path, accept) in [("/api/nothing", html), ("/models", "application/json")] {
        let answer = fetch(no_redirects().get(app.url(path)).header("accept", accept)).await;
        assert_eq!(answer.status, 404);
        assert!(
            answer.content_type.starts_with("application/json"),
            "{path}"
        );
        assert!(answer.body.contains("No route for"), "{}", answer.body);
    }
    app.stop().await;
}
