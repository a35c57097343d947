//! OIDC through the HTTP API: admin roles from a local issuer's JWTs, device JWTs bound to their
//! model, the identity endpoint, and an unreachable issuer answered with 503.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::issuer::{EcKey, TestIssuer, AUDIENCE};

const TOKEN: &str = "admin-token-for-tests-0123456789";

async fn spawn_with_issuer(test: &str, issuer: &TestIssuer) -> Option<TestApp> {
    spawn_app_with(
        Stack::Embedded,
        test,
        &[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", &issuer.issuer),
            ("OIDC_AUDIENCE", AUDIENCE),
            ("ADMIN_TOKEN", TOKEN),
        ],
        Default::default(),
    )
    .await
}

fn with_roles(mut claims: Value, realm: &[&str], client: &[&str]) -> Value {
    claims["realm_access"] = json!({ "roles": realm });
    claims["resource_access"] = json!({ AUDIENCE: { "roles": client } });
    claims
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = match method {
        "GET" => app.client.get(app.url(path)),
        "POST" => app.client.post(app.url(path)),
        _ => unreachable!(),
    }
    .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_roles_come_from_the_issuers_tokens() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let Some(app) = spawn_with_issuer("oidc_admin_roles", &issuer).await else {
        return;
    };

    let editor = key.sign(&issuer.claims());
    let (status, me) = call(&app, "GET", "/api/auth/self", &editor, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"], "3f1c6a52-8d0e-4a57-9d1b-2f5b8e1c0a11");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["name"], "Ada Lovelace");
    assert!(me["roles"].as_array().unwrap().contains(&json!("editor")));
    let (status, _) = call(
        &app,
        "POST",
        "/api/device-models",
        &editor,
        Some(json!({"code": "m", "name": "M"})),
    )
    .await;
    assert_eq!(status, 201);

    let reader = key.sign(&with_roles(issuer.claims(), &["offline_access"], &[]));
    assert_eq!(
        call(&app, "GET", "/api/device-models", &reader, None)
            .await
            .0,
        200
    );
    let (status, body) = call(
        &app,
        "POST",
        "/api/device-models",
        &reader,
        Some(json!({"code": "n", "name": "N"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "AUTHORIZATION_FAILED");

    // The client role alone is enough.
    let client_editor = key.sign(&with_roles(issuer.claims(), &[], &["editor"]));
    let (status, _) = call(
        &app,
        "POST",
        "/api/device-models",
        &client_editor,
        Some(json!({"code": "o", "name": "O"})),
    )
    .await;
    assert_eq!(status, 201);

    let mut expired = issuer.claims();
    expired["exp"] = json!(1_000_000);
    let (status, body) = call(&app, "GET", "/api/device-models", &key.sign(&expired), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "AUTHENTICATION_REQUIRED");
    let mut foreign = issuer.claims();
    foreign["aud"] = json!("someone-else");
    assert_eq!(
        call(&app, "GET", "/api/device-models", &key.sign(&foreign), None)
            .await
            .0,
        401
    );
    let stranger = EcKey::generate("ec-1");
    assert_eq!(
        call(
            &app,
            "GET",
            "/api/device-models",
            &stranger.sign(&issuer.claims()),
            None
        )
        .await
        .0,
        401
    );

    // ADMIN_TOKEN keeps working beside OIDC, and reports the local identity.
    let (status, me) = call(&app, "GET", "/api/auth/self", TOKEN, None).await;
    assert_eq!(status, 200);
    assert_eq!(me["subject"], "admin");
    // A name a person can read: the Python UI's top bar shows "Unknown User" for none.
    assert_eq!(me["name"], "Administrator");
    assert_eq!(app.get("/api/auth/self").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn device_tokens_are_bound_to_their_device_and_model() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let Some(app) = spawn_with_issuer("oidc_devices", &issuer).await else {
        return;
    };
    let (_, model) = call(
        &app,
        "POST",
        "/api/device-models",
        TOKEN,
        Some(json!({"code": "thermo_v2", "name": "T"})),
    )
    .await;
    let (_, other) = call(
        &app,
        "POST",
        "/api/device-models",
        TOKEN,
        Some(json!({"code": "other", "name": "O"})),
    )
    .await;
    let _ = other;
    let (_, device) = call(
        &app,
        "POST",
        "/api/devices",
        TOKEN,
        Some(json!({"device_model_id": model["id"], "config": "{\"deviceName\": \"x\"}"})),
    )
    .await;
    let device_key = device["key"].as_str().unwrap();

    let device_claims = |azp: String| {
        let mut claims = issuer.claims();
        claims["azp"] = json!(azp);
        claims["realm_access"] = json!({"roles": []});
        claims["resource_access"] = json!({});
        claims
    };
    let token = key.sign(&device_claims(format!("iotdevice-thermo_v2-{device_key}")));
    let response = app
        .client
        .get(app.url("/api/iot/config"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{\"deviceName\": \"x\"}");

    // The model in azp must be the device's model; unknown devices are refused.
    let wrong_model = key.sign(&device_claims(format!("iotdevice-other-{device_key}")));
    assert_eq!(
        app.client
            .get(app.url("/api/iot/config"))
            .bearer_auth(&wrong_model)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let unknown = key.sign(&device_claims("iotdevice-thermo_v2-aaaaaaaa".into()));
    assert_eq!(
        app.client
            .get(app.url("/api/iot/config"))
            .bearer_auth(&unknown)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A user token is not a device token, and a device token is not an admin token.
    let admin = key.sign(&issuer.claims());
    assert_eq!(
        app.client
            .get(app.url("/api/iot/config"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let (status, body) = call(&app, "GET", "/api/devices", &token, None).await;
    assert_eq!(status, 403, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_not_401() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    issuer.state.down.store(true, Ordering::SeqCst);
    let Some(app) = spawn_with_issuer("oidc_down", &issuer).await else {
        return;
    };
    let (status, body) = call(
        &app,
        "GET",
        "/api/device-models",
        &key.sign(&issuer.claims()),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
    // The static token does not depend on the issuer, and its users' tokens, refused while it
    // is away, do not close the address to it.
    for _ in 0..8 {
        let token = key.sign(&issuer.claims());
        assert_eq!(
            call(&app, "GET", "/api/device-models", &token, None)
                .await
                .0,
            503
        );
    }
    assert_eq!(
        call(&app, "GET", "/api/device-models", TOKEN, None).await.0,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn login_goes_to_the_login_url_when_one_is_configured_and_straight_back_in_open_mode() {
    let Some(app) = spawn_app(Stack::Embedded, "login_open").await else {
        return;
    };
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(app.url("/api/auth/login?redirect=/models"))
        .send()
        .await
        .unwrap();
    // Nobody needs to sign in: back where the browser came from.
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/models");
    app.stop().await;

    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "login_302",
        &[("AUTH_LOGIN_URL", "https://sso.example/login")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let response = no_redirects
        .get(app.url("/api/auth/login?redirect=/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "https://sso.example/login?redirect=%2Fmodels"
    );
    // Somewhere else is not passed on: the page behind the URL may follow it.
    for elsewhere in ["https%3A%2F%2Fevil.example%2F", "%2F%2Fevil.example%2F"] {
        let response = no_redirects
            .get(app.url(&format!("/api/auth/login?redirect={elsewhere}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(
            response.headers()["location"],
            "https://sso.example/login?redirect=%2F",
            "{elsewhere}"
        );
    }
    app.stop().await;
}

/// With OIDC beside `ADMIN_TOKEN`, a wrong token shaped like a JWT (`a.b.c`) is neither: it
/// counts against the address like any other wrong admin token, and closes it after a few.
#[tokio::test]
async fn wrong_tokens_shaped_like_jwts_count_as_wrong_admin_tokens() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let Some(app) = spawn_with_issuer("oidc_jwt_shaped_guesses", &issuer).await else {
        return;
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        let guess = format!("guess.number.{i}");
        statuses.push(
            call(&app, "GET", "/api/device-models", &guess, None)
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..6], [401; 6], "{statuses:?}");
    // Closed now: even the admin token is not compared until the block ends.
    assert_eq!(
        call(&app, "GET", "/api/device-models", TOKEN, None).await.0,
        429,
        "{statuses:?}"
    );
    app.stop().await;
}
