//! `POST /api/iot/token` (RFC 6749 client credentials) and the JWKS: tokens that work on every
//! device endpoint, every error of §5.2, the slow-down, tokens that die with their secret, and a
//! key shared by two processes.

use base64::Engine;
use serde_json::Value;

use crate::credentials_support::*;
use crate::helpers::*;

async fn raw_token_request(
    app: &TestApp,
    body: &str,
    content_type: &str,
    basic: Option<(&str, &str)>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app
        .client
        .post(app.url("/api/iot/token"))
        .header("Content-Type", content_type)
        .body(body.to_string());
    if let Some((id, secret)) = basic {
        let pair = format!("{}:{}", urlencode(id), urlencode(secret));
        request = request.header(
            "Authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        headers,
    )
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_device_exchanges_its_secret_for_a_token_that_works_on_every_device_endpoint() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app(stack, "token_ok").await else {
            continue;
        };
        let device = &model_with_devices(&app, "thermo", 1).await[0];
        let secret = device.credential.split_once('.').unwrap().1.to_string();
        let id = client_id("thermo", device);

        let (status, body, headers) = token(&app, &id, &secret).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(headers["cache-control"], "no-store");
        let access = body["access_token"].as_str().unwrap();
        for path in ["/api/iot/config", "/api/iot/firmware-version"] {
            let (status, body) = iot_get(&app, path, access).await;
            assert_eq!(status, 200, "{stack:?} {path}: {body}");
        }

        // HTTP Basic works too.
        let (status, body, _) = raw_token_request(
            &app,
            "grant_type=client_credentials",
            FORM,
            Some((&id, &secret)),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        // The JWKS verifies the token with nothing but public data.
        let jwks: jsonwebtoken::jwk::JwkSet =
            app.get("/api/iot/jwks.json").await.json().await.unwrap();
        let header = jsonwebtoken::decode_header(access).unwrap();
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid in the JWKS");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["iotsupport-devices"]);
        let claims = jsonwebtoken::decode::<Value>(
            access,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["azp"], id.as_str());
        assert_eq!(claims["sub"], id.as_str());
        assert!(claims["sid"].as_str().is_some_and(|s| s.len() == 16));
        app.stop().await;
    }
}

#[tokio::test]
async fn token_errors_follow_rfc_6749() {
    let Some(app) = spawn_app(Stack::Embedded, "token_errors").await else {
        return;
    };
    let device = &model_with_devices(&app, "thermo", 1).await[0];
    let secret = device.credential.split_once('.').unwrap().1.to_string();
    let id = client_id("thermo", device);
    let body_of = |id: &str, secret: &str| {
        format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            urlencode(id),
            urlencode(secret)
        )
    };
    // (body, content type, HTTP Basic client, status, error)
    type Case<'a> = (String, &'a str, Option<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "client_id=x&client_secret=y".into(),
            FORM,
            None,
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=password&client_id={id}&client_secret=y"),
            FORM,
            None,
            400,
            "unsupported_grant_type",
        ),
        (
            "grant_type=client_credentials&client_secret=y".into(),
            FORM,
            None,
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=client_credentials&client_id={id}"),
            FORM,
            None,
            400,
            "invalid_request",
        ),
        (
            body_of(&id, &secret),
            "application/json",
            None,
            400,
            "invalid_request",
        ),
        (
            format!("{}&grant_type=client_credentials", body_of(&id, &secret)),
            FORM,
            None,
            400,
            "invalid_request",
        ),
        (
            body_of(&id, &secret),
            FORM,
            Some((&id, &secret)),
            400,
            "invalid_request",
        ),
        (
            body_of("iotdevice-thermo-zzzzzzzz", &secret),
            FORM,
            None,
            401,
            "invalid_client",
        ),
        (
            body_of("iotdevice-other-".to_string().as_str(), &secret),
            FORM,
            None,
            401,
            "invalid_client",
        ),
        (
            body_of(&id.replace("thermo", "lamp"), &secret),
            FORM,
            None,
            401,
            "invalid_client",
        ),
        (body_of(&id, "wrong"), FORM, None, 401, "invalid_client"),
    ];
    for (body, content_type, basic, status, error) in cases {
        let (got, answer, headers) = raw_token_request(&app, &body, content_type, basic).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(error)),
            "{body}: {answer}"
        );
        assert!(answer["error_description"].is_string(), "{answer}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    // A wrong secret over HTTP Basic is 401 with a Basic challenge.
    let (status, answer, headers) = raw_token_request(
        &app,
        "grant_type=client_credentials",
        FORM,
        Some((&id, "wrong")),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    app.stop().await;
}

#[tokio::test]
async fn repeated_failures_for_one_client_id_from_one_address_are_slowed_down_without_touching_others(
) {
    let Some(app) = spawn_app(Stack::Embedded, "token_throttle").await else {
        return;
    };
    let devices = model_with_devices(&app, "thermo", 2).await;
    let (target, other) = (&devices[0], &devices[1]);
    let id = client_id("thermo", target);
    for _ in 0..5 {
        assert_eq!(token(&app, &id, "guess").await.0, 401);
    }
    assert_eq!(token(&app, &id, "guess").await.0, 401);
    // Closed now: even the right secret is not checked until the block ends.
    let secret = target.credential.split_once('.').unwrap().1;
    let (status, body, headers) = token(&app, &id, secret).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("slow_down")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    // Another device is not affected.
    let other_secret = other.credential.split_once('.').unwrap().1;
    token_ok(&app, &client_id("thermo", other), other_secret).await;
    // Nor is the same device at another address (behind the local proxy): guessing its id from
    // somewhere else does not lock it out.
    let (status, body, _) = token_from(&app, &id, secret, Some("203.0.113.20")).await;
    assert_eq!(status, 200, "{body}");
    // Guesses from that other address have their own count, and close only it.
    for _ in 0..6 {
        let (status, _, _) = token_from(&app, &id, "guess", Some("203.0.113.21")).await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        token_from(&app, &id, secret, Some("203.0.113.21")).await.0,
        429
    );
    assert_eq!(
        token_from(&app, &id, secret, Some("203.0.113.22")).await.0,
        200
    );
    // After the block the right secret works and resets the count.
    let opened = eventually(std::time::Duration::from_secs(5), || async {
        token(&app, &id, secret).await.0 == 200
    })
    .await;
    assert!(opened, "the client id stayed closed");

    // A malformed client id can never succeed: it is refused without being recorded, so it is
    // never closed either (the throttle keeps well-formed ids only; long made-up ones cannot grow
    // it).
    let junk = format!("x{}", "a".repeat(20_000));
    for _ in 0..8 {
        let (status, body, _) = raw_token_request(
            &app,
            "grant_type=client_credentials",
            FORM,
            Some((&junk, "s")),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn tokens_die_with_the_secret_that_minted_them() {
    let Some(app) = spawn_app(Stack::Embedded, "token_revoked").await else {
        return;
    };
    let device = &model_with_devices(&app, "thermo", 1).await[0];
    let secret = device.credential.split_once('.').unwrap().1;
    let access = token_ok(&app, &client_id("thermo", device), secret).await;
    assert_eq!(iot_get(&app, "/api/iot/config", &access).await.0, 200);
    let (status, _) = call(
        &app,
        http::Method::POST,
        &format!("/api/devices/{}/secret", device.id),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = iot_get(&app, "/api/iot/config", &access).await;
    assert_eq!(status, 401, "{body}");
    // A forged token (another key) is refused.
    let mut parts: Vec<&str> = access.split('.').collect();
    parts[2] = "AAAA";
    assert_eq!(
        iot_get(&app, "/api/iot/config", &parts.join(".")).await.0,
        401
    );
    app.stop().await;
}

#[tokio::test]
async fn two_processes_share_one_signing_key() {
    for stack in ALL_STACKS {
        let Some((a, b)) = spawn_twins(stack, "token_twins", &[]).await else {
            continue;
        };
        let device = &model_with_devices(&a, "thermo", 1).await[0];
        let secret = device.credential.split_once('.').unwrap().1;
        let access = token_ok(&a, &client_id("thermo", device), secret).await;
        let (status, body) = iot_get(&b, "/api/iot/firmware-version", &access).await;
        assert_eq!(status, 200, "{stack:?}: {body}");
        let jwks_a = a.get("/api/iot/jwks.json").await.text().await.unwrap();
        let jwks_b = b.get("/api/iot/jwks.json").await.text().await.unwrap();
        assert_eq!(jwks_a, jwks_b);
        a.stop().await;
        b.stop().await;
    }
}

/// `Authorization: Bearer <key>.<secret>` on the device API answers the same question as the
/// token endpoint (is this the device's secret?), so guessing it there is slowed down the same
/// way: per device key and address, a few free failures, then closed (429 with `Retry-After`,
/// the right secret not checked either) for a growing time.
#[tokio::test]
async fn wrong_secrets_on_the_device_api_are_slowed_down_like_the_token_endpoints() {
    let Some(app) = spawn_app(Stack::Embedded, "device_api_throttle").await else {
        return;
    };
    let devices = model_with_devices(&app, "thermo", 2).await;
    let (target, other) = (&devices[0], &devices[1]);
    let key = target.credential.split_once('.').unwrap().0;
    let get = |credential: String, forwarded_for: Option<&'static str>| {
        let mut request = app
            .client
            .get(app.url("/api/iot/firmware-version"))
            .bearer_auth(credential);
        if let Some(client) = forwarded_for {
            request = request.header("X-Forwarded-For", client);
        }
        async move { request.send().await.unwrap() }
    };
    // What the device gets when it is not slowed down (no firmware yet: the endpoint's own answer).
    let answered = get(target.credential.clone(), None).await.status();
    assert_ne!(answered, 429);
    let wrong = format!("{key}.{}", "0".repeat(43));
    for _ in 0..6 {
        assert_eq!(get(wrong.clone(), None).await.status(), 401);
    }
    let closed = get(target.credential.clone(), None).await;
    assert_eq!(closed.status(), 429);
    assert!(closed.headers().contains_key("retry-after"));
    // Another device, and the same device at another address, are not affected.
    assert_eq!(get(other.credential.clone(), None).await.status(), answered);
    assert_eq!(
        get(target.credential.clone(), Some("203.0.113.30"))
            .await
            .status(),
        answered
    );
    // After the block the right secret works again.
    let opened = eventually(std::time::Duration::from_secs(5), || async {
        get(target.credential.clone(), None).await.status() == answered
    })
    .await;
    assert!(opened, "the device key stayed closed");
    app.stop().await;
}
