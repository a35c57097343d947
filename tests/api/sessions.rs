//! Browser sign-in and sessions (issue 16): the ADMIN_TOKEN form, the OIDC authorization-code
//! flow with PKCE against the test issuer, the cookie, CSRF on writes, the live stream, logout,
//! and sessions that outlive their process.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::issuer::{EcKey, LoginSetup, TestIssuer, AUDIENCE};

const TOKEN: &str = "session-admin-token";

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The session cookie a response sets (`name=value`), if any.
fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("iotsupport_session="))
        .map(str::to_string)
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

fn location(headers: &HeaderMap) -> String {
    headers[LOCATION].to_str().unwrap().to_string()
}

async fn sign_in_with_token(app: &TestApp, token: &str, redirect: &str) -> reqwest::Response {
    sign_in_from(app, token, redirect, None).await
}

/// A session of the admin token (`ADMIN_TOKEN` = [`TOKEN`]): its cookie (`name=value`).
async fn session_of(app: &TestApp) -> String {
    let signed_in = sign_in_with_token(app, TOKEN, "/").await;
    cookie_pair(&set_cookie(signed_in.headers()).expect("a session cookie"))
}

/// [`sign_in_with_token`] from a browser behind the local proxy, which names it in
/// `X-Forwarded-For` (loopback is a trusted proxy by default).
async fn sign_in_from(
    app: &TestApp,
    token: &str,
    redirect: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = browser()
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token), ("redirect", redirect)]));
    if let Some(client) = forwarded_for {
        request = request.header("x-forwarded-for", client);
    }
    request.send().await.unwrap()
}

/// One wrong Bearer token from each of `addresses` (behind the local proxy), each refused 401.
async fn guess_from_each(app: &TestApp, addresses: impl Iterator<Item = String>) {
    for from in addresses {
        let response = bearer_from(app, "guess-guess-guess", &from).await;
        assert_eq!(response.status(), 401, "{from}");
    }
}

/// `GET /api/auth/self` with `Authorization: Bearer token`, from `forwarded_for`.
async fn bearer_from(app: &TestApp, token: &str, forwarded_for: &str) -> reqwest::Response {
    browser()
        .get(app.url("/api/auth/self"))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
}

/// `GET path` with the session cookie; status and JSON.
async fn get_with(app: &TestApp, cookie: &str, path: &str) -> (u16, Value) {
    let response = browser()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/device-models` with the session cookie and `headers`.
async fn create_model_with(
    app: &TestApp,
    cookie: &str,
    code: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut request = browser()
        .post(app.url("/api/device-models"))
        .header("cookie", cookie)
        .json(&json!({"code": code, "name": code}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn session_rows(app: &TestApp) -> Vec<String> {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT id_hash FROM admin_sessions"
    )
    .fetch_all(p)
    .await)
    .unwrap()
}

#[tokio::test]
async fn signing_in_with_the_admin_token_gives_a_session_for_reads_writes_and_the_live_stream() {
    for_each_stack("session_token", &[("ADMIN_TOKEN", TOKEN)], async |app| {
        let origin = format!("http://{}", app.address.trim_start_matches("http://"));
        assert_eq!(app.get("/api/auth/self").await.status(), 401);

        // The form, returning to where the browser was.
        let form = browser()
            .get(app.url("/api/auth/login?redirect=%2Fdevices%3Fx%3D1"))
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), 200);
        assert_eq!(form.headers()["cache-control"], "no-store");
        let html = form.text().await.unwrap();
        assert!(
            html.contains("name=\"token\"") && html.contains("value=\"/devices?x=1\""),
            "{html}"
        );

        // A wrong token: back to the form, no session.
        let wrong = sign_in_with_token(app, "nope", "/devices").await;
        assert_eq!(wrong.status(), 303);
        assert_eq!(
            location(wrong.headers()),
            "/api/auth/login?error=invalid&redirect=%2Fdevices"
        );
        assert!(set_cookie(wrong.headers()).is_none());
        assert!(session_rows(app).await.is_empty());

        // The right one: a cookie, HttpOnly and Lax, not Secure over plain HTTP.
        let signed = sign_in_with_token(app, TOKEN, "/devices").await;
        assert_eq!(signed.status(), 303);
        assert_eq!(location(signed.headers()), "/devices");
        let set = set_cookie(signed.headers()).expect("a session cookie");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Secure"), "{set}");
        let cookie = cookie_pair(&set);
        let value = cookie.trim_start_matches("iotsupport_session=");
        // Stored as a hash only.
        let rows = session_rows(app).await;
        assert_eq!(rows.len(), 1);
        assert_ne!(rows[0], value);
        assert_eq!(rows[0], iotsupport::sessions::sha256_hex(value));

        // A return into the API (a link that would mint a provisioning secret with the new
        // session, the redirect being same-origin) goes to the overview instead.
        let into_api = sign_in_with_token(
            app,
            TOKEN,
            "/api/devices/7/provisioning?partition_size=24576",
        )
        .await;
        assert_eq!(into_api.status(), 303);
        assert_eq!(location(into_api.headers()), "/");
        let other = cookie_pair(&set_cookie(into_api.headers()).expect("a session cookie"));
        let out = browser()
            .get(app.url("/api/auth/logout"))
            .header("cookie", &other)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 303);

        let (status, me) = get_with(app, &cookie, "/api/auth/self").await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["name"], "Administrator");
        // It carries the CSRF token: no cache on the way may keep it.
        let fresh = browser()
            .get(app.url("/api/auth/self"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(fresh.headers()["cache-control"], "no-store");
        let csrf = me["csrf_token"].as_str().expect("a CSRF token").to_string();
        assert_eq!(get_with(app, &cookie, "/api/device-models").await.0, 200);

        // Writes must show they come from our pages.
        assert_eq!(create_model_with(app, &cookie, "bare", &[]).await, 403);
        assert_eq!(
            create_model_with(app, &cookie, "evil", &[("origin", "http://evil.example")]).await,
            403
        );
        assert_eq!(
            create_model_with(app, &cookie, "forged", &[("x-csrf-token", "forged")]).await,
            403
        );
        assert_eq!(
            create_model_with(app, &cookie, "from_page", &[("origin", &origin)]).await,
            201
        );
        // A page loaded before signing in again (another tab) sends an older session's token:
        // from a page of this host, the write still goes through.
        assert_eq!(
            create_model_with(
                app,
                &cookie,
                "stale_token",
                &[
                    ("x-csrf-token", "an-older-sessions-token"),
                    ("sec-fetch-site", "same-origin")
                ]
            )
            .await,
            201
        );
        assert_eq!(
            create_model_with(app, &cookie, "with_token", &[("x-csrf-token", &csrf)]).await,
            201
        );
        let (_, models) = get_with(app, &cookie, "/api/device-models").await;
        let codes: Vec<&str> = models["device_models"]
            .as_array()
            .or(models.as_array())
            .unwrap()
            .iter()
            .filter_map(|m| m["code"].as_str())
            .collect();
        assert!(
            codes.contains(&"from_page")
                && codes.contains(&"with_token")
                && codes.contains(&"stale_token"),
            "{models}"
        );
        assert!(!codes.contains(&"bare") && !codes.contains(&"evil") && !codes.contains(&"forged"));

        // The live stream takes the session (EventSource cannot send a bearer token).
        let stream = browser()
            .get(app.url("/api/sse/stream?request_id=tab"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let mut stream = stream.bytes_stream();

        // Signing out ends it everywhere and clears the cookie.
        let out = browser()
            .get(app.url("/api/auth/logout"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 303);
        assert_eq!(location(out.headers()), "/");
        assert!(set_cookie(out.headers()).unwrap().contains("Max-Age=0"));
        assert_eq!(get_with(app, &cookie, "/api/auth/self").await.0, 401);
        assert!(session_rows(app).await.is_empty());
        // The open stream ends too (its credentials are checked again every 10 s).
        let ended = tokio::time::timeout(std::time::Duration::from_secs(40), async {
            use futures::StreamExt;
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the stream outlived its session");
    })
    .await;
}

#[tokio::test]
async fn sessions_work_on_another_process_and_after_this_one_stopped() {
    for stack in ALL_STACKS {
        let Some((first, second)) =
            spawn_twins(stack, "session_twins", &[("ADMIN_TOKEN", TOKEN)]).await
        else {
            continue;
        };
        let signed = sign_in_with_token(&first, TOKEN, "/").await;
        let cookie = cookie_pair(&set_cookie(signed.headers()).expect("cookie"));
        first.stop().await;
        let (status, me) = get_with(&second, &cookie, "/api/auth/self").await;
        assert_eq!(status, 200, "{stack:?}: {me}");
        second.stop().await;
    }
}

#[tokio::test]
async fn a_changed_admin_token_ends_its_sessions_and_guessing_is_throttled() {
    for_each_stack(
        "session_token_change",
        &[("ADMIN_TOKEN", TOKEN)],
        async |app| {
            let cookie = session_of(app).await;
            let value = cookie.trim_start_matches("iotsupport_session=");
            // What a process started with another ADMIN_TOKEN sees.
            let found = iotsupport::sessions::find(app.db(), value, Some("another-token"), None)
                .await
                .unwrap();
            assert!(found.is_none());
            assert!(
                session_rows(app).await.is_empty(),
                "the stale session is removed"
            );
            assert_eq!(get_with(app, &cookie, "/api/auth/self").await.0, 401);

            // Five wrong guesses are free; then the form is closed for a while, even to the right one.
            for _ in 0..6 {
                sign_in_with_token(app, "guess", "/").await;
            }
            let refused = sign_in_with_token(app, TOKEN, "/").await;
            assert_eq!(
                location(refused.headers()),
                "/api/auth/login?error=throttled&redirect=%2F"
            );
            assert!(set_cookie(refused.headers()).is_none());
            // Only for the address that guessed: the admin signing in from elsewhere (here behind
            // the local proxy) is not locked out.
            let elsewhere = sign_in_from(app, TOKEN, "/", Some("203.0.113.30")).await;
            assert_eq!(location(elsewhere.headers()), "/");
            assert!(set_cookie(elsewhere.headers()).is_some());
        },
    )
    .await;
}

#[tokio::test]
async fn wrong_admin_tokens_in_bearer_and_form_close_only_the_address_that_sent_them() {
    let Some(app) = TestApp::builder("admin_token_throttle")
        .overrides(&[("ADMIN_TOKEN", TOKEN)])
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    let guesser = "198.51.100.7";
    // Bearer guesses and form guesses count together.
    for _ in 0..3 {
        assert_eq!(
            bearer_from(&app, "guess-guess-guess", guesser)
                .await
                .status(),
            401
        );
        sign_in_from(&app, "guess", "/", Some(guesser)).await;
    }
    let refused = bearer_from(&app, TOKEN, guesser).await;
    assert_eq!(
        refused.status(),
        429,
        "the right token is not compared while closed"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "TOO_MANY_REQUESTS");
    let form = sign_in_from(&app, TOKEN, "/", Some(guesser)).await;
    assert_eq!(
        location(form.headers()),
        "/api/auth/login?error=throttled&redirect=%2F"
    );
    // Another client behind the proxy, and the proxy itself, are not affected.
    assert_eq!(bearer_from(&app, TOKEN, "198.51.100.8").await.status(), 200);
    let direct = browser()
        .get(app.url("/api/auth/self"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    // One IPv6 host is one /64: moving within it does not reopen the count.
    guess_from_each(&app, (0..6).map(|i| format!("2001:db8:5:6::{i:x}"))).await;
    assert_eq!(
        bearer_from(&app, TOKEN, "2001:db8:5:6::ff").await.status(),
        429
    );
    assert_eq!(
        bearer_from(&app, TOKEN, "2001:db8:5:7::1").await.status(),
        200
    );
    app.stop().await;

    // Without trusted proxies the header is the client's own word: it is ignored, so guessing
    // cannot escape the throttle by naming a new address each time.
    let Some(app) = TestApp::builder("admin_token_throttle_no_proxy")
        .overrides(&[("ADMIN_TOKEN", TOKEN), ("TRUSTED_PROXIES", "none")])
        .spawn(Stack::Embedded)
        .await
    else {
        return;
    };
    guess_from_each(&app, (0..6).map(|i| format!("198.51.100.{}", 10 + i))).await;
    assert_eq!(
        bearer_from(&app, TOKEN, "198.51.100.99").await.status(),
        429
    );
    app.stop().await;
}

#[tokio::test]
async fn a_sign_in_form_posted_from_another_site_is_refused() {
    for_each_stack(
        "session_login_csrf",
        &[("ADMIN_TOKEN", TOKEN)],
        async |app| {
            let response = browser()
                .post(app.url("/api/auth/login"))
                .header("origin", "http://evil.example")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[("token", TOKEN), ("redirect", "/")]))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403);
            assert!(set_cookie(response.headers()).is_none());
            assert!(session_rows(app).await.is_empty());
        },
    )
    .await;
}

/// Several sign-ins started in one browser at once (tabs restored together, each sent back by the
/// provider's single sign-on) each finish: every sign-in has a cookie of its own.
#[tokio::test]
async fn sign_ins_started_together_in_one_browser_all_finish() {
    let issuer = issuer_with_login().await;
    for stack in ALL_STACKS {
        let Some(app) = oidc_app(stack, "session_flows_together", &issuer).await else {
            continue;
        };
        let first = to_callback(&app, "/models").await;
        let second = to_callback(&app, "/rotation").await;
        assert_ne!(first.cookie, second.cookie);
        // The browser sends every cookie it holds for the callback.
        let jar = format!("{}; {}", first.cookie, second.cookie);
        for (sign_in, back_to) in [(&second, "/rotation"), (&first, "/models")] {
            let done = browser()
                .get(&sign_in.url)
                .header("cookie", &jar)
                .send()
                .await
                .unwrap();
            assert_eq!(
                done.status(),
                303,
                "{stack:?}: {}",
                done.text().await.unwrap()
            );
            assert_eq!(location(done.headers()), back_to);
            let cleared = done
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("iotsupport_sign_in_"))
                .expect("its sign-in cookie cleared");
            assert!(cleared.starts_with(sign_in.cookie.split('=').next().unwrap()));
            assert!(cleared.contains("Max-Age=0"), "{cleared}");
        }
        app.stop().await;
    }
}

/// A link, form or script on another site cannot sign an admin out: its GET or POST gets a page
/// that asks (whose button is a link back here), the session lives on and the browser keeps its
/// cookie; a navigation from this host's pages (the page's button, the Python UI) signs out.
#[tokio::test]
async fn another_site_cannot_sign_an_admin_out() {
    for_each_stack(
        "session_logout_csrf",
        &[("ADMIN_TOKEN", TOKEN)],
        async |app| {
            let cookie = session_of(app).await;
            let logout = async |method: reqwest::Method, headers: &[(&str, &str)]| {
                let mut request = browser()
                    .request(method, app.url("/api/auth/logout"))
                    .header("cookie", &cookie);
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                request.send().await.unwrap()
            };
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                for headers in [
                    vec![("sec-fetch-site", "cross-site")],
                    vec![("sec-fetch-site", "same-site")],
                    vec![("origin", "http://evil.example")],
                    vec![("referer", "http://evil.example/page")],
                ] {
                    let asked = logout(method.clone(), &headers).await;
                    assert_eq!(asked.status(), 200, "{method} {headers:?}");
                    assert!(
                        set_cookie(asked.headers()).is_none(),
                        "{method} {headers:?}"
                    );
                    let page = asked.text().await.unwrap();
                    assert!(
                        page.contains(r#"href="/api/auth/logout?confirm="#),
                        "{page}"
                    );
                    assert_eq!(
                        get_with(app, &cookie, "/api/auth/self").await.0,
                        200,
                        "{method} {headers:?}"
                    );
                }
            }
            // The page's button: a link carrying the session's CSRF token, which works even
            // from a browser whose request looks cross-site (no Sec-Fetch-Site, and a proxy that
            // rewrote Host so the Referer does not match).
            let page = logout(reqwest::Method::GET, &[("sec-fetch-site", "cross-site")])
                .await
                .text()
                .await
                .unwrap();
            let at = page.find("href=\"/api/auth/logout?confirm=").unwrap() + 6;
            let link = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
            let forged = browser()
                .get(app.url("/api/auth/logout?confirm=forged"))
                .header("cookie", &cookie)
                .header("referer", "http://evil.example/page")
                .send()
                .await
                .unwrap();
            assert_eq!(forged.status(), 200, "a wrong token signed out");
            let out = browser()
                .get(app.url(&link))
                .header("cookie", &cookie)
                .header("referer", "http://rewritten-by-a-proxy.example/page")
                .send()
                .await
                .unwrap();
            assert_eq!(out.status(), 303);
            assert!(set_cookie(out.headers()).unwrap().contains("Max-Age=0"));
            assert_eq!(get_with(app, &cookie, "/api/auth/self").await.0, 401);

            // A form or fetch of this host's pages.
            let cookie = session_of(app).await;
            let origin = format!("http://{}", app.address.trim_start_matches("http://"));
            let out = browser()
                .post(app.url("/api/auth/logout"))
                .header("cookie", &cookie)
                .header("origin", &origin)
                .send()
                .await
                .unwrap();
            assert_eq!(out.status(), 303);
            assert_eq!(get_with(app, &cookie, "/api/auth/self").await.0, 401);
        },
    )
    .await;
}

/// An app whose admins sign in at `issuer` as client `iotsupport-web`.
async fn oidc_app(stack: Stack, test: &str, issuer: &TestIssuer) -> Option<TestApp> {
    spawn_app_with(
        stack,
        test,
        &[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", &issuer.issuer),
            ("OIDC_AUDIENCE", AUDIENCE),
            ("OIDC_CLIENT_ID", "iotsupport-web"),
        ],
        Default::default(),
    )
    .await
}

async fn issuer_with_login() -> TestIssuer {
    let key = EcKey::generate("login-key");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let user = issuer.claims();
    issuer.enable_login(LoginSetup::new(key, "iotsupport-web", user));
    issuer
}

/// A sign-in at its last step: the callback URL the provider sent the browser back to, and the
/// sign-in cookie that browser holds (`name=value`).
struct SignIn {
    url: String,
    cookie: String,
}

impl SignIn {
    /// The browser that started it follows the callback.
    async fn finish(&self) -> reqwest::Response {
        browser()
            .get(&self.url)
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }
}

/// The sign-in cookie `/api/auth/login` sets (`name=value`).
fn flow_cookie(headers: &HeaderMap) -> String {
    let set = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("iotsupport_sign_in_"))
        .expect("a sign-in cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/api/auth/callback",
        "Max-Age=600",
    ] {
        assert!(set.contains(attribute), "{set}");
    }
    cookie_pair(set)
}

/// Follows a sign-in from `/api/auth/login` to the callback URL the provider sends back.
async fn to_callback(app: &TestApp, redirect: &str) -> SignIn {
    let start = browser()
        .get(app.url(&format!("/api/auth/login?redirect={redirect}")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let cookie = flow_cookie(start.headers());
    let authorize = location(start.headers());
    let at_provider = browser().get(&authorize).send().await.unwrap();
    assert_eq!(at_provider.status(), 302, "the issuer refused {authorize}");
    SignIn {
        url: location(at_provider.headers()),
        cookie,
    }
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_oidc_code_flow_with_pkce_signs_a_person_in_once() {
    let issuer = issuer_with_login().await;
    for stack in ALL_STACKS {
        let Some(app) = oidc_app(stack, "session_oidc", &issuer).await else {
            continue;
        };
        let start = browser()
            .get(app.url("/api/auth/login?redirect=%2Fmodels%2F1"))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 302);
        let authorize = location(start.headers());
        assert!(authorize.starts_with(&format!("{}/protocol/openid-connect/auth?", issuer.issuer)));
        assert_eq!(query_param(&authorize, "client_id"), "iotsupport-web");
        assert_eq!(query_param(&authorize, "code_challenge_method"), "S256");
        assert_eq!(query_param(&authorize, "response_type"), "code");
        assert_eq!(query_param(&authorize, "scope"), "openid profile email");
        assert_eq!(
            query_param(&authorize, "redirect_uri"),
            app.url("/api/auth/callback")
        );
        assert!(!query_param(&authorize, "nonce").is_empty());
        let sign_in_cookie = flow_cookie(start.headers());

        let callback = location(browser().get(&authorize).send().await.unwrap().headers());
        // Another browser (no sign-in cookie, or another sign-in's) cannot finish it: that would
        // sign its person in as this one (login CSRF). The sign-in stays for its own browser.
        let other = to_callback(&app, "/").await;
        for cookie in ["", other.cookie.as_str()] {
            let elsewhere = browser()
                .get(&callback)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(elsewhere.status(), 400, "{stack:?} {cookie:?}");
            assert!(set_cookie(elsewhere.headers()).is_none());
        }
        let done = browser()
            .get(&callback)
            .header("cookie", &sign_in_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            done.status(),
            303,
            "{}",
            done.text().await.unwrap_or_default()
        );
        assert_eq!(location(done.headers()), "/models/1");
        let cookie = cookie_pair(&set_cookie(done.headers()).expect("a session cookie"));
        let (status, me) = get_with(&app, &cookie, "/api/auth/self").await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["name"], "Ada Lovelace");
        assert_eq!(me["email"], "ada@example.com");
        let roles: Vec<&str> = me["roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            roles.contains(&"editor") && roles.contains(&"pipeline"),
            "{me}"
        );
        let origin = format!("http://{}", app.address.trim_start_matches("http://"));
        assert_eq!(
            create_model_with(&app, &cookie, "oidc_made", &[("origin", &origin)]).await,
            201
        );

        // The callback works once: a replay finds no sign-in.
        let replay = browser()
            .get(&callback)
            .header("cookie", &sign_in_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 400);
        assert!(set_cookie(replay.headers()).is_none());

        // A process configured with the same provider still accepts it; one where OIDC was
        // turned off, or switched to another issuer, client or audience (after an incident at
        // the provider, say), ends it rather than honour its stored roles.
        let value = cookie.trim_start_matches("iotsupport_session=");
        let provider = app.state.oidc.as_ref().unwrap().settings().clone();
        let kept = iotsupport::sessions::find(app.db(), value, None, Some(&provider.binding()))
            .await
            .unwrap();
        assert!(kept.is_some(), "{stack:?}");
        let mut switched = provider.clone();
        switched.client.client_id = "another-client".into();
        let other = iotsupport::sessions::find(app.db(), value, None, Some(&switched.binding()))
            .await
            .unwrap();
        assert!(
            other.is_none(),
            "{stack:?}: a session outlived its provider's client"
        );
        assert!(session_rows(&app).await.is_empty());
        let (status, me) = get_with(&app, &cookie, "/api/auth/self").await;
        assert_eq!(status, 401, "{me}");
        let signed_again = to_callback(&app, "/").await.finish().await;
        let cookie = cookie_pair(&set_cookie(signed_again.headers()).expect("a session cookie"));
        let value = cookie.trim_start_matches("iotsupport_session=");
        let ended = iotsupport::sessions::find(app.db(), value, None, None)
            .await
            .unwrap();
        assert!(ended.is_none(), "{stack:?}: an OIDC session outlived OIDC");
        assert!(session_rows(&app).await.is_empty());
        let (status, me) = get_with(&app, &cookie, "/api/auth/self").await;
        assert_eq!(status, 401, "{me}");
        let signed_again = to_callback(&app, "/").await.finish().await;
        let cookie = cookie_pair(&set_cookie(signed_again.headers()).expect("a session cookie"));

        // Signing out ends the session here and continues at the provider.
        let out = browser()
            .get(app.url("/api/auth/logout"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 303);
        let provider_logout = location(out.headers());
        assert!(provider_logout.starts_with(&format!(
            "{}/protocol/openid-connect/logout?",
            issuer.issuer
        )));
        assert!(!query_param(&provider_logout, "id_token_hint").is_empty());
        assert_eq!(
            query_param(&provider_logout, "post_logout_redirect_uri"),
            app.url("/")
        );
        assert_eq!(get_with(&app, &cookie, "/api/auth/self").await.0, 401);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_sign_in_with_the_wrong_verifier_nonce_or_a_refusal_creates_no_session() {
    let issuer = issuer_with_login().await;
    for stack in ALL_STACKS {
        let Some(app) = oidc_app(stack, "session_oidc_bad", &issuer).await else {
            continue;
        };
        // Two sign-ins; the first one's code with the second one's state: our server sends the
        // second one's PKCE verifier, which does not match the first one's challenge.
        let a = to_callback(&app, "/").await;
        let b = to_callback(&app, "/").await;
        let crossed = format!(
            "{}?code={}&state={}",
            app.url("/api/auth/callback"),
            query_param(&a.url, "code"),
            query_param(&b.url, "state")
        );
        let response = browser()
            .get(&crossed)
            .header("cookie", &b.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert!(set_cookie(response.headers()).is_none());
        assert_eq!(
            issuer.with_login(|l| l.token_requests.last().cloned()),
            Some("invalid_grant".to_string())
        );

        // An ID token with another nonce.
        issuer.with_login(|l| l.wrong_nonce = true);
        let response = to_callback(&app, "/").await.finish().await;
        assert_eq!(response.status(), 401);
        assert!(response.text().await.unwrap().contains("nonce"));
        issuer.with_login(|l| l.wrong_nonce = false);

        // The provider says no.
        issuer.with_login(|l| l.refuse = Some("access_denied".into()));
        let response = to_callback(&app, "/").await.finish().await;
        assert_eq!(response.status(), 401);
        assert!(response.text().await.unwrap().contains("access_denied"));
        issuer.with_login(|l| l.refuse = None);

        // A state nobody issued.
        let forged = format!("{}?code=x&state=forged", app.url("/api/auth/callback"));
        assert_eq!(browser().get(&forged).send().await.unwrap().status(), 400);
        assert!(session_rows(&app).await.is_empty(), "{stack:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_link_from_another_site_cannot_mint_a_provisioning_package() {
    let mut overrides: Vec<(&str, &str)> = crate::credentials_support::PROVISIONING.to_vec();
    overrides.push(("ADMIN_TOKEN", TOKEN));
    for_each_stack("session_mint_csrf", &overrides, async |app| {
        let device = &crate::credentials_support::model_with_devices(app, "thermo", 1).await[0];
        let signed = sign_in_with_token(app, TOKEN, "/devices").await;
        let cookie = cookie_pair(&set_cookie(signed.headers()).expect("a session cookie"));
        let (_, me) = get_with(app, &cookie, "/api/auth/self").await;
        let csrf = me["csrf_token"].as_str().expect("a CSRF token").to_string();
        let path = format!(
            "/api/devices/{}/provisioning?partition_size=12288",
            device.id
        );
        let pending = async || -> Option<String> {
            iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT pending_secret_hash FROM devices WHERE id = $1"
            )
            .bind(device.id)
            .fetch_one(p)
            .await)
            .unwrap()
        };
        let host = app.address.trim_start_matches("http://").to_string();
        let get = async |headers: &[(&str, String)]| -> u16 {
            let mut request = browser().get(app.url(&path)).header("cookie", &cookie);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request.send().await.unwrap().status().as_u16()
        };

        // A top-level navigation from another site carries the Lax cookie: refused, nothing minted.
        let before = pending().await;
        for headers in [
            vec![
                ("sec-fetch-site", "cross-site".to_string()),
                ("sec-fetch-mode", "navigate".to_string()),
            ],
            vec![("referer", "http://evil.example/page".to_string())],
            vec![],
        ] {
            assert_eq!(get(&headers).await, 403, "{headers:?}");
            assert_eq!(pending().await, before, "{headers:?}");
        }
        // From a page of this host (the Python UI's fetch) or with the session's CSRF token (ours).
        for headers in [
            vec![("sec-fetch-site", "same-origin".to_string())],
            vec![("referer", format!("http://{host}/devices/{}", device.id))],
            vec![("x-csrf-token", csrf.clone())],
        ] {
            let before = pending().await;
            assert_eq!(get(&headers).await, 200, "{headers:?}");
            assert_ne!(pending().await, before, "{headers:?}: nothing minted");
        }
    })
    .await;
}

#[tokio::test]
async fn sign_ins_in_progress_are_bounded_and_expired_ones_forgotten() {
    let issuer = issuer_with_login().await;
    for stack in ALL_STACKS {
        let Some(app) = oidc_app(stack, "session_flows_bounded", &issuer).await else {
            continue;
        };
        let flows = async || -> i64 {
            iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT COUNT(*) FROM login_flows"
            )
            .fetch_one(p)
            .await)
            .unwrap()
        };
        let insert = async |n: i64, created_at: chrono::DateTime<chrono::Utc>| {
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
                 INSERT INTO login_flows (state_hash, pkce_verifier, nonce, redirect_uri,
                     return_to, created_at)
                 SELECT 'filler-' || $2 || '-' || i, 'v', 'n', 'http://x/cb', '/', $3 FROM n"
            )
            .bind(n)
            .bind(created_at.timestamp_micros().to_string())
            .bind(created_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        };
        let now = iotsupport::db::now();
        // Anyone may start sign-ins, which nobody finishes: once the cap is reached, the oldest
        // make room, so the table stays bounded and a sign-in still starts.
        insert(iotsupport::sessions::MAX_FLOWS_IN_PROGRESS, now).await;
        let started = to_callback(&app, "/devices").await;
        assert!(started.url.contains("state="), "{stack:?}: {}", started.url);
        assert_eq!(flows().await, iotsupport::sessions::MAX_FLOWS_IN_PROGRESS);
        let mine = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM login_flows WHERE state_hash NOT LIKE 'filler-%'"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        assert_eq!(mine, 1, "{stack:?}: the new sign-in was not kept");
        // Sign-ins older than their lifetime are forgotten by the next start, which then works.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE login_flows SET created_at = $1"
        )
        .bind(now - chrono::Duration::minutes(11))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let callback = to_callback(&app, "/devices").await;
        assert!(callback.url.contains("state="), "{}", callback.url);
        assert_eq!(flows().await, 1, "{stack:?}: expired sign-ins kept");
        app.stop().await;
    }
}

/// One address may have only a few sign-ins in progress: starting another drops its oldest
/// (whose callback then finds it expired), never anybody else's, and nobody is refused.
#[tokio::test]
async fn one_address_cannot_start_sign_ins_without_bound() {
    let issuer = issuer_with_login().await;
    for stack in ALL_STACKS {
        let Some(app) = oidc_app(stack, "session_flows_per_address", &issuer).await else {
            continue;
        };
        let start = async |from: &str| {
            browser()
                .get(app.url("/api/auth/login?redirect=/devices"))
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap()
        };
        let flows_from = async |scope: &str| -> i64 {
            iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT COUNT(*) FROM login_flows WHERE client_scope = $1"
            )
            .bind(scope)
            .fetch_one(p)
            .await)
            .unwrap()
        };
        let max = iotsupport::sessions::MAX_FLOWS_PER_CLIENT;
        // Someone else's sign-in, and the first of this address's (the test's own address).
        assert_eq!(start("203.0.113.8").await.status(), 302, "{stack:?}");
        let oldest = to_callback(&app, "/models").await;
        for _ in 0..max {
            assert_eq!(start("127.0.0.1").await.status(), 302, "{stack:?}");
        }
        assert_eq!(flows_from("127.0.0.1").await, max, "{stack:?}");
        assert_eq!(flows_from("203.0.113.8").await, 1, "{stack:?}");
        let expired = oldest.finish().await;
        assert_eq!(expired.status(), 400, "{stack:?}");
        assert!(expired
            .text()
            .await
            .unwrap()
            .contains("This sign-in has expired"));
        app.stop().await;
    }
}

#[tokio::test]
async fn an_identity_too_long_for_its_columns_signs_in_cut_or_is_refused_with_a_reason() {
    let long_name = format!("Ada\u{0}{}", "é".repeat(300));
    for (subject, signs_in) in [("3f1c6a52".to_string(), true), ("s".repeat(256), false)] {
        let key = EcKey::generate("login-key");
        let issuer = TestIssuer::start(vec![key.jwk()]).await;
        let mut user = issuer.claims();
        user["sub"] = subject.clone().into();
        user["name"] = long_name.clone().into();
        user["email"] = format!("{}@example.com", "a".repeat(300)).into();
        issuer.enable_login(LoginSetup::new(key, "iotsupport-web", user));
        for stack in ALL_STACKS {
            let Some(app) = oidc_app(stack, "session_long_identity", &issuer).await else {
                continue;
            };
            let done = to_callback(&app, "/models").await.finish().await;
            let cookie = set_cookie(done.headers());
            if !signs_in {
                assert_eq!(done.status(), 401, "{stack:?}");
                assert!(cookie.is_none(), "{stack:?}");
                let page = done.text().await.unwrap();
                assert!(page.contains("longer than 255 characters"), "{page}");
                app.stop().await;
                continue;
            }
            assert_eq!(
                done.status(),
                303,
                "{stack:?}: {}",
                done.text().await.unwrap()
            );
            let cookie = cookie_pair(&cookie.expect("a session cookie"));
            let (status, me) = get_with(&app, &cookie, "/api/auth/self").await;
            assert_eq!(status, 200, "{me}");
            let name = me["name"].as_str().unwrap();
            assert_eq!(name.chars().count(), 255, "{stack:?}");
            assert!(name.starts_with("Adaé"), "{stack:?}: {name}");
            assert_eq!(me["email"].as_str().unwrap().chars().count(), 255);
            app.stop().await;
        }
    }
}

/// The `redirect_uri` `/api/auth/login` hands the provider for a request with `headers`, or the
/// error status and body.
async fn callback_named(app: &TestApp, headers: &[(&str, &str)]) -> Result<String, (u16, String)> {
    let mut request = browser().get(app.url("/api/auth/login?redirect=%2F"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    match response.status().as_u16() {
        302 => Ok(query_param(&location(response.headers()), "redirect_uri")),
        status => Err((status, response.text().await.unwrap_or_default())),
    }
}

/// Without `OIDC_REDIRECT_URL` the sign-in callback is built from the request: a proxy's
/// `X-Forwarded-Host` counts only from a trusted proxy, and with `ALLOWED_HOSTS` only its names
/// (else a client naming its own host would have a provider with a loose redirect allow-list
/// send a victim's sign-in code there).
#[tokio::test]
async fn the_sign_in_callback_names_no_host_a_client_chose() {
    let issuer = issuer_with_login().await;
    let oidc = [
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", issuer.issuer.as_str()),
        ("OIDC_AUDIENCE", AUDIENCE),
        ("OIDC_CLIENT_ID", "iotsupport-web"),
    ];
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ];

    let mut untrusted = oidc.to_vec();
    untrusted.push(("TRUSTED_PROXIES", "none"));
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "session_callback_untrusted",
        &untrusted,
        Default::default(),
    )
    .await
    else {
        return;
    };
    assert_eq!(
        callback_named(&app, &forged).await,
        Ok(app.url("/api/auth/callback")),
        "a client's own X-Forwarded-Host was believed"
    );
    app.stop().await;

    let mut allowed = oidc.to_vec();
    allowed.push(("ALLOWED_HOSTS", "iot.example.com"));
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "session_callback_allowed",
        &allowed,
        Default::default(),
    )
    .await
    else {
        return;
    };
    // From the trusted local proxy: its host is believed, but only a listed one.
    let (status, body) = callback_named(&app, &forged).await.unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("evil.example") && body.contains("ALLOWED_HOSTS"),
        "{body}"
    );
    assert_eq!(
        callback_named(
            &app,
            &[
                ("x-forwarded-host", "iot.example.com"),
                ("x-forwarded-proto", "https")
            ]
        )
        .await,
        Ok("https://iot.example.com/api/auth/callback".to_string())
    );
    assert_eq!(
        callback_named(&app, &[]).await,
        Ok(app.url("/api/auth/callback"))
    );
    assert_eq!(
        login_flow_count(&app).await,
        2,
        "the refused sign-in stored a flow"
    );
    app.stop().await;
}

async fn login_flow_count(app: &TestApp) -> i64 {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM login_flows"
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

/// With `OIDC_CLIENT_ID` unset (it defaults to `OIDC_AUDIENCE`) the ID token's audience is the
/// one bearer tokens need; it is still refused as one (it travels in the sign-out URL and sits in
/// the session row).
#[tokio::test]
async fn the_id_token_of_a_sign_in_is_no_bearer_token() {
    let key = EcKey::generate("login-key");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    issuer.enable_login(LoginSetup::new(key, AUDIENCE, issuer.claims()));
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "session_id_token_bearer",
        &[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", &issuer.issuer),
            ("OIDC_AUDIENCE", AUDIENCE),
        ],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let done = to_callback(&app, "/").await.finish().await;
    assert_eq!(done.status(), 303);
    let id_token: String = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT id_token FROM admin_sessions"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    let response = browser()
        .get(app.url("/api/auth/self"))
        .bearer_auth(&id_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("an ID token is not an access token")),
        "{body}"
    );
    app.stop().await;
}
