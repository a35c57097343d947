//! Unit tests of the OIDC verifier's pure parts.

use super::*;

#[test]
fn device_azp_is_split_into_model_and_key() {
    assert_eq!(
        parse_device_azp("iotdevice-sensor_v2-abcd2345"),
        Some(("sensor_v2".to_string(), "abcd2345".to_string()))
    );
    assert_eq!(
        parse_device_azp("iotdevice-a-zzzzzzzz"),
        Some(("a".to_string(), "zzzzzzzz".to_string()))
    );
}

#[test]
fn malformed_device_azp_is_rejected() {
    let long_model = format!("iotdevice-{}-abcd2345", "m".repeat(51));
    let max_model = format!("iotdevice-{}-abcd2345", "m".repeat(50));
    assert!(parse_device_azp(&max_model).is_some());
    for azp in [
        "iotdevice-sensor-abcd234",   // key too short
        "iotdevice-sensor-abcd23456", // key too long
        "iotdevice-sensor-abcd2341",  // '1' is not base32
        "iotdevice-sensor-ABCD2345",  // upper case
        "iotdevice--abcd2345",        // empty model
        "iotdevice-Sensor-abcd2345",  // upper-case model
        "iotdevice-sen-sor-abcd2345", // '-' in model
        "iotdevice-sensor",           // no key
        "device-sensor-abcd2345",     // wrong prefix
        "IOTDEVICE-sensor-abcd2345",  // prefix is case-sensitive
        "iotdevice-sensör-abcd2345",  // non-ASCII model
        "",
        &long_model,
    ] {
        assert_eq!(parse_device_azp(azp), None, "{azp}");
    }
}

#[test]
fn roles_are_merged_without_duplicates_in_order() {
    let realm = serde_json::json!({"roles": ["editor", "offline_access", "editor"]});
    let client = serde_json::json!({"roles": ["pipeline", "editor", 7]});
    let mut roles = Vec::new();
    collect_roles(Some(&realm), &mut roles);
    collect_roles(Some(&client), &mut roles);
    collect_roles(None, &mut roles);
    collect_roles(Some(&serde_json::json!({"roles": "x"})), &mut roles);
    assert_eq!(roles, ["editor", "offline_access", "pipeline"]);
}

#[test]
fn only_asymmetric_algorithms_are_allowed() {
    assert!(is_allowed_algorithm(Algorithm::RS256));
    assert!(is_allowed_algorithm(Algorithm::ES256));
    assert!(!is_allowed_algorithm(Algorithm::HS256));
    assert!(!is_allowed_algorithm(Algorithm::HS512));
}

#[test]
fn hmac_and_encryption_keys_in_a_jwks_are_ignored() {
    let oct: Jwk = serde_json::from_value(serde_json::json!({
        "kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
    }))
    .expect("test JWK");
    assert!(usable_key(&oct).is_none());
    let enc: Jwk = serde_json::from_value(serde_json::json!({
        "kty": "EC", "kid": "e", "use": "enc", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .expect("test JWK");
    assert!(usable_key(&enc).is_none());
    let sig: Jwk = serde_json::from_value(serde_json::json!({
        "kty": "EC", "kid": "s", "use": "sig", "alg": "ES256", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .expect("test JWK");
    let (kid, key) = usable_key(&sig).expect("usable");
    assert_eq!(kid, "s");
    assert_eq!(key.alg, Some(Algorithm::ES256));
}

#[test]
fn errors_say_what_kind_they_are() {
    assert!(OidcError::Unavailable("x".into()).is_unavailable());
    assert!(!OidcError::Invalid("x".into()).is_unavailable());
    assert_eq!(
        OidcError::Invalid("token has expired".into()).to_string(),
        "invalid token: token has expired"
    );
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_invalid_without_io() {
    // The issuer is never contacted for these (the port is unroutable anyway).
    let verifier = OidcVerifier::new(OidcSettings::new("http://127.0.0.1:9", "iot"));
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        verifier.verify(&big).await,
        Err(OidcError::Invalid(_))
    ));
    for token in ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let err = verifier.verify(token).await.expect_err(token);
        assert!(matches!(err, OidcError::Invalid(_)), "{token}: {err}");
    }
}
