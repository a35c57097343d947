//! The OIDC verifier against a real (local) issuer: an axum server on 127.0.0.1 serving a discovery
//! document and a JWKS of keys generated at run time, and tokens signed with those keys here (with
//! aws-lc-rs directly, independently of the verifier's JWT library). Nothing is mocked on the
//! verification side, and nothing but 127.0.0.1 is contacted.

#[path = "support/issuer.rs"]
mod issuer;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::KeyPair;
use http::StatusCode;
use iotsupport::oidc::{parse_device_azp, OidcError, OidcSettings, OidcVerifier};
use issuer::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Valid tokens

#[tokio::test]
async fn valid_es256_admin_token_yields_identity_and_merged_roles() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();

    let token = key.sign(&issuer.claims());
    let verified = verifier.verify(&token).await.expect("valid token");
    assert_eq!(verified.subject, "3f1c6a52-8d0e-4a57-9d1b-2f5b8e1c0a11");
    assert_eq!(verified.email.as_deref(), Some("ada@example.com"));
    assert_eq!(verified.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(verified.azp.as_deref(), Some("iotsupport-ui"));
    // realm roles first, then the audience client's roles; no duplicates; other clients ignored.
    assert_eq!(verified.roles, ["editor", "offline_access", "pipeline"]);
    assert!(verified.has_role("pipeline"));
    assert!(!verified.has_role("manage-account"));
    assert_eq!(verified.device(), None);

    // A second verification uses the cache.
    verifier.verify(&token).await.expect("still valid");
    assert_eq!(issuer.discovery_hits(), 1);
    assert_eq!(issuer.jwks_hits(), 1);
}

#[tokio::test]
async fn valid_rs256_device_token_with_string_audience() {
    let ec = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![ec.jwk(), RSA_KEY.jwk()]).await;
    // A trailing slash in the configured issuer URL is tolerated.
    let verifier = issuer.verifier_with(|s| s.issuer_url.push('/'));

    let now = now();
    let claims = json!({
        "iss": issuer.issuer, "sub": "service-account-iotdevice-sensor_v2-abcd2345",
        "aud": AUDIENCE, "azp": "iotdevice-sensor_v2-abcd2345", "exp": now + 60, "iat": now,
    });
    let verified = verifier
        .verify(&RSA_KEY.sign(&claims))
        .await
        .expect("valid RS256 token");
    assert!(verified.roles.is_empty());
    assert_eq!(verified.email, None);
    assert_eq!(
        verified.device(),
        Some(("sensor_v2".to_string(), "abcd2345".to_string()))
    );
    // ES256 from the same JWKS works too.
    verifier
        .verify(&ec.sign(&claims))
        .await
        .expect("valid ES256 token");
}

// ---------------------------------------------------------------------------------------------
// Claim checks

#[tokio::test]
async fn wrong_issuer_is_invalid() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();
    for iss in [
        json!("https://evil.example.com/realms/iot"),
        json!(format!("{}/", issuer.issuer)),
        json!(format!("{}x", issuer.issuer)),
    ] {
        let token = key.sign(&with(issuer.claims(), "iss", iss));
        assert_invalid(verifier.verify(&token).await, &token, "another issuer");
    }
    let token = key.sign(&without(issuer.claims(), "iss"));
    assert_invalid(verifier.verify(&token).await, &token, "'iss'");
}

#[tokio::test]
async fn wrong_audience_is_invalid() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();
    for aud in [
        json!("account"),
        json!(["account", "iotsupport2"]),
        json!([]),
    ] {
        let token = key.sign(&with(issuer.claims(), "aud", aud));
        assert_invalid(verifier.verify(&token).await, &token, "audience");
    }
    let token = key.sign(&without(issuer.claims(), "aud"));
    assert_invalid(verifier.verify(&token).await, &token, "'aud'");
}

#[tokio::test]
async fn expired_token_is_invalid_but_accepted_within_clock_skew() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier(); // 60 s skew
    let now = now();

    let token = key.sign(&with(issuer.claims(), "exp", json!(now - 30)));
    verifier
        .verify(&token)
        .await
        .expect("expired 30 s ago is within the 60 s skew");

    let token = key.sign(&with(issuer.claims(), "exp", json!(now - 120)));
    assert_invalid(verifier.verify(&token).await, &token, "expired");

    let strict = issuer.verifier_with(|s| s.clock_skew = Duration::ZERO);
    let token = key.sign(&with(issuer.claims(), "exp", json!(now - 5)));
    assert_invalid(strict.verify(&token).await, &token, "expired");

    let token = key.sign(&without(issuer.claims(), "exp"));
    assert_invalid(verifier.verify(&token).await, &token, "'exp'");
}

#[tokio::test]
async fn nbf_in_the_future_is_invalid() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier(); // 60 s skew
    let now = now();

    let token = key.sign(&with(issuer.claims(), "nbf", json!(now + 600)));
    assert_invalid(verifier.verify(&token).await, &token, "not valid yet");

    let token = key.sign(&with(issuer.claims(), "nbf", json!(now + 30)));
    verifier
        .verify(&token)
        .await
        .expect("nbf 30 s ahead is within the skew");

    let token = key.sign(&with(issuer.claims(), "nbf", json!(now - 30)));
    verifier.verify(&token).await.expect("nbf in the past");
}

#[tokio::test]
async fn missing_subject_is_invalid() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let token = key.sign(&without(issuer.claims(), "sub"));
    assert_invalid(issuer.verifier().verify(&token).await, &token, "'sub'");
}

/// An ID token (Keycloak's `typ: ID`, or one with `at_hash`/`c_hash`) is no bearer token: it is
/// sent in the sign-out URL and kept in session rows.
#[tokio::test]
async fn id_tokens_are_not_accepted_as_access_tokens() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();
    for (claim, value) in [
        ("typ", json!("ID")),
        ("at_hash", json!("x5MZ3dDf0o2fzfhU1VAqeA")),
        ("c_hash", json!("LDktKdoQak3Pk0cnXxCltA")),
    ] {
        let token = key.sign(&with(issuer.claims(), claim, value));
        assert_invalid(verifier.verify(&token).await, &token, "ID token");
    }
    let access = key.sign(&with(issuer.claims(), "typ", json!("Bearer")));
    verifier.verify(&access).await.expect("an access token");
}

// ---------------------------------------------------------------------------------------------
// Signatures and algorithms

#[tokio::test]
async fn signature_by_another_key_with_the_same_kid_is_invalid() {
    let key = EcKey::generate("ec-1");
    let impostor = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();

    let token = impostor.sign(&issuer.claims());
    assert_invalid(verifier.verify(&token).await, &token, "signature");

    // A genuine token with its payload swapped for another is rejected too.
    let genuine = key.sign(&issuer.claims());
    let forged_payload = b64(with(issuer.claims(), "sub", json!("root"))
        .to_string()
        .as_bytes());
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_invalid(verifier.verify(&tampered).await, &tampered, "signature");

    // Only a refetch on unknown kids: a bad signature does not make the verifier refetch.
    assert_eq!(issuer.jwks_hits(), 1);
}

#[tokio::test]
async fn alg_none_and_hmac_are_rejected() {
    let key = EcKey::generate("ec-1");
    let secret = b"0123456789abcdef0123456789abcdef";
    // The JWKS even publishes a symmetric key: it must never be used.
    let oct = json!({"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": b64(secret)});
    let issuer = TestIssuer::start(vec![key.jwk(), oct]).await;
    let verifier = issuer.verifier();
    let claims = issuer.claims();

    for kid in ["ec-1", "hmac-1"] {
        let none = jwt(&json!({"alg": "none", "kid": kid}), &claims, |_| Vec::new());
        assert_invalid(
            verifier.verify(&none).await,
            &none,
            "malformed token header",
        );
        let none = jwt(&json!({"alg": "None", "kid": kid}), &claims, |_| Vec::new());
        assert_invalid(
            verifier.verify(&none).await,
            &none,
            "malformed token header",
        );

        let hs256 = jwt(&json!({"alg": "HS256", "kid": kid}), &claims, |input| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
            aws_lc_rs::hmac::sign(&key, input).as_ref().to_vec()
        });
        assert_invalid(verifier.verify(&hs256).await, &hs256, "not accepted");
    }

    // HS256 "signed" with the EC public key bytes (algorithm confusion).
    let public = key.pair.public_key().as_ref().to_vec();
    let confused = jwt(&json!({"alg": "HS256", "kid": "ec-1"}), &claims, |input| {
        let hkey = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public);
        aws_lc_rs::hmac::sign(&hkey, input).as_ref().to_vec()
    });
    assert_invalid(verifier.verify(&confused).await, &confused, "not accepted");

    // An RS256 header on a token whose kid names the ES256 key.
    let mismatched = jwt(&json!({"alg": "RS256", "kid": "ec-1"}), &claims, |input| {
        key.pair
            .sign(&SystemRandom::new(), input)
            .expect("sig")
            .as_ref()
            .to_vec()
    });
    assert_invalid(
        verifier.verify(&mismatched).await,
        &mismatched,
        "does not match",
    );

    // No kid at all.
    let no_kid = jwt(&json!({"alg": "ES256"}), &claims, |input| {
        key.pair
            .sign(&SystemRandom::new(), input)
            .expect("sig")
            .as_ref()
            .to_vec()
    });
    assert_invalid(verifier.verify(&no_kid).await, &no_kid, "kid");

    // And the genuine ES256 token still works.
    verifier.verify(&key.sign(&claims)).await.expect("valid");
}

#[tokio::test]
async fn malformed_tokens_are_invalid() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier();
    let genuine = key.sign(&issuer.claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    for token in [
        String::new(),
        "not-a-jwt".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
        "x".repeat(20_000),
    ] {
        let result = verifier.verify(&token).await;
        assert!(
            matches!(result, Err(OidcError::Invalid(_))),
            "{token:.40}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Key rotation and the refetch rate limit

#[tokio::test]
async fn unknown_kid_refetches_and_picks_up_a_rotated_key() {
    let old = EcKey::generate("2024-old");
    let new = EcKey::generate("2025-new");
    let issuer = TestIssuer::start(vec![old.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::ZERO);

    verifier
        .verify(&old.sign(&issuer.claims()))
        .await
        .expect("old key");
    assert_eq!(issuer.jwks_hits(), 1);

    // The provider rotates: the JWKS now holds only the new key.
    issuer.set_keys(vec![new.jwk()]);
    let verified = verifier
        .verify(&new.sign(&issuer.claims()))
        .await
        .expect("rotated key is picked up without a restart");
    assert_eq!(verified.roles, ["editor", "offline_access", "pipeline"]);
    assert_eq!(issuer.jwks_hits(), 2);
    // Discovery is not repeated for a refetch.
    assert_eq!(issuer.discovery_hits(), 1);

    // The withdrawn key is gone with the refetch.
    let token = old.sign(&issuer.claims());
    assert_invalid(verifier.verify(&token).await, &token, "unknown key");
}

#[tokio::test]
async fn unknown_kid_stays_invalid_and_refetches_are_rate_limited() {
    let key = EcKey::generate("ec-1");
    let ghost = EcKey::generate("ghost");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::from_secs(3600));

    // The first verification loads the keys; the kid is still unknown afterwards.
    let token = ghost.sign(&issuer.claims());
    assert_invalid(verifier.verify(&token).await, &token, "unknown key");
    assert_eq!(issuer.jwks_hits(), 1);

    // Within the interval, unknown kids do not reach the issuer at all.
    for i in 0..5 {
        let token = ghost.sign_as(&format!("ghost-{i}"), &issuer.claims());
        assert_invalid(verifier.verify(&token).await, &token, "unknown key");
    }
    assert_eq!(issuer.jwks_hits(), 1);
    verifier
        .verify(&key.sign(&issuer.claims()))
        .await
        .expect("known key still works");
    assert_eq!(issuer.jwks_hits(), 1);
    assert_eq!(issuer.discovery_hits(), 1);
}

#[tokio::test]
async fn refetch_is_allowed_again_after_the_interval() {
    let key = EcKey::generate("ec-1");
    let ghost = EcKey::generate("ghost");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::from_millis(300));

    verifier
        .verify(&key.sign(&issuer.claims()))
        .await
        .expect("valid");
    let token = ghost.sign(&issuer.claims());
    assert_invalid(verifier.verify(&token).await, &token, "unknown key");
    assert_eq!(issuer.jwks_hits(), 1, "no refetch within the interval");

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_invalid(verifier.verify(&token).await, &token, "unknown key");
    assert_eq!(issuer.jwks_hits(), 2, "one refetch after the interval");
    assert_invalid(verifier.verify(&token).await, &token, "unknown key");
    assert_eq!(issuer.jwks_hits(), 2);
}

#[tokio::test]
async fn concurrent_verifications_fetch_once() {
    let key = EcKey::generate("ec-1");
    let ghost = EcKey::generate("ghost");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::from_secs(3600));
    let good = key.sign(&issuer.claims());
    let bad = ghost.sign(&issuer.claims());

    let mut tasks = Vec::new();
    for i in 0..32 {
        let verifier = verifier.clone();
        let token = if i % 2 == 0 {
            good.clone()
        } else {
            bad.clone()
        };
        tasks.push(tokio::spawn(async move { verifier.verify(&token).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.expect("task");
        if i % 2 == 0 {
            result.expect("valid token");
        } else {
            assert!(matches!(result, Err(OidcError::Invalid(_))), "{result:?}");
        }
    }
    assert_eq!(issuer.discovery_hits(), 1);
    assert_eq!(issuer.jwks_hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// The issuer unreachable or broken

#[tokio::test]
async fn issuer_down_is_unavailable() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let issuer = format!("http://{addr}{REALM_PATH}");
    let verifier = OidcVerifier::new(OidcSettings::new(issuer.clone(), AUDIENCE));

    let key = EcKey::generate("ec-1");
    let now = now();
    let token = key.sign(&json!({"iss": issuer, "sub": "s", "aud": AUDIENCE, "exp": now + 60}));
    let err = verifier.verify(&token).await.expect_err("issuer is down");
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("discovery document"), "{err}");
    assert!(!err.to_string().contains(&token));
    // Retries are rate limited too: the next call fails fast with the same reason.
    assert_unavailable(verifier.verify(&token).await, "could not be loaded");
}

#[tokio::test]
async fn broken_issuer_is_unavailable() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let token = key.sign(&issuer.claims());

    // JWKS answers 500.
    *issuer.state.jwks_status.lock().expect("lock") = StatusCode::INTERNAL_SERVER_ERROR;
    assert_unavailable(issuer.verifier().verify(&token).await, "500");

    // JWKS without any usable key.
    *issuer.state.jwks_status.lock().expect("lock") = StatusCode::OK;
    issuer.set_keys(vec![
        json!({"kty": "RSA", "use": "enc", "kid": "x", "n": "AQAB", "e": "AQAB"}),
    ]);
    assert_unavailable(
        issuer.verifier().verify(&token).await,
        "no usable signing key",
    );

    // Discovery document naming another issuer.
    issuer.set_keys(vec![key.jwk()]);
    *issuer.state.advertised_issuer.lock().expect("lock") = "https://elsewhere.example".into();
    assert_unavailable(issuer.verifier().verify(&token).await, "expected");

    // All fixed: a fresh verifier works.
    *issuer.state.advertised_issuer.lock().expect("lock") = issuer.issuer.clone();
    issuer.verifier().verify(&token).await.expect("valid");
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_issuer_is_down() {
    let key = EcKey::generate("ec-1");
    let ghost = EcKey::generate("ghost");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::ZERO);
    verifier
        .verify(&key.sign(&issuer.claims()))
        .await
        .expect("valid");

    issuer.state.down.store(true, Ordering::SeqCst);
    verifier
        .verify(&key.sign(&issuer.claims()))
        .await
        .expect("cached key still verifies during an outage");
    // An unknown kid cannot be decided while the issuer is down.
    let token = ghost.sign(&issuer.claims());
    assert_unavailable(verifier.verify(&token).await, "503");
}

// ---------------------------------------------------------------------------------------------
// Device client ids

#[test]
fn device_azp_parsing() {
    let parsed = |azp: &str| parse_device_azp(azp);
    assert_eq!(
        parsed("iotdevice-thermo-abcd2345"),
        Some(("thermo".into(), "abcd2345".into()))
    );
    assert_eq!(
        parsed("iotdevice-esp32_s3_board_v2-zz7722aa"),
        Some(("esp32_s3_board_v2".into(), "zz7722aa".into())),
        "model code with underscores"
    );
    // Wrong prefix.
    assert_eq!(parsed("iotsupport-thermo-abcd2345"), None);
    assert_eq!(parsed("xiotdevice-thermo-abcd2345"), None);
    assert_eq!(parsed("thermo-abcd2345"), None);
    // Bad key characters or length.
    assert_eq!(
        parsed("iotdevice-thermo-abcd2341"),
        None,
        "'1' is not base32"
    );
    assert_eq!(
        parsed("iotdevice-thermo-abcd8345"),
        None,
        "'8' is not base32"
    );
    assert_eq!(parsed("iotdevice-thermo-ABCD2345"), None);
    assert_eq!(parsed("iotdevice-thermo-abcd234"), None);
    assert_eq!(parsed("iotdevice-thermo-abcd23456"), None);
    assert_eq!(parsed("iotdevice-thermo-abcd.345"), None);
    // Bad model codes.
    assert_eq!(parsed("iotdevice--abcd2345"), None);
    assert_eq!(parsed("iotdevice-Thermo-abcd2345"), None);
    assert_eq!(parsed("iotdevice-ther-mo-abcd2345"), None);
    assert_eq!(
        parsed(&format!("iotdevice-{}-abcd2345", "a".repeat(51))),
        None
    );
    assert!(parsed(&format!("iotdevice-{}-abcd2345", "a".repeat(50))).is_some());
}

/// A sign-in while the issuer cannot be reached asks it for its discovery document at most once
/// per refresh interval: sign-ins cannot hammer a failing provider, nor keep the fetch lock (which
/// token checks with stale keys wait for) busy. Once the interval is over it is asked again.
#[tokio::test]
async fn sign_ins_ask_a_failing_provider_for_discovery_at_most_once_per_interval() {
    let key = EcKey::generate("ec-1");
    let issuer = TestIssuer::start(vec![key.jwk()]).await;
    let verifier = issuer.verifier_with(|s| s.min_refresh_interval = Duration::from_millis(300));
    let client = iotsupport::oidc::login::ClientSettings {
        client_id: "iotsupport".into(),
        client_secret: None,
        scopes: "openid".into(),
    };
    let sign_in = || verifier.authorization_url(&client, "http://x/cb", "s", "n", "c");
    issuer.state.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert!(sign_in().await.is_err());
    }
    assert_eq!(
        issuer.discovery_hits(),
        1,
        "asked again within the interval"
    );
    issuer.state.down.store(false, Ordering::SeqCst);
    assert!(sign_in().await.is_err(), "asked within the interval");
    assert_eq!(issuer.discovery_hits(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let url = sign_in().await.expect("the provider answers again");
    assert!(url.contains("code_challenge=c"), "{url}");
    assert_eq!(issuer.discovery_hits(), 2);
}
