//! A local OIDC issuer for tests: an axum server on 127.0.0.1 serving a discovery document and a
//! JWKS of keys generated at run time, and tokens signed with those keys (with aws-lc-rs directly,
//! independently of the verifier's JWT library). Shared by `tests/oidc.rs` and `tests/api`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use iotsupport::oidc::{OidcError, OidcSettings, OidcVerifier, VerifiedToken};
use serde_json::{json, Value};

pub const REALM_PATH: &str = "/realms/iot";
pub const AUDIENCE: &str = "iotsupport";

// ---------------------------------------------------------------------------------------------
// Keys and tokens

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `header.payload.signature` with `sign` applied to `header.payload`.
pub fn jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}

pub struct EcKey {
    pub kid: String,
    pub pair: EcdsaKeyPair,
}

impl EcKey {
    pub fn generate(kid: &str) -> Self {
        EcKey {
            kid: kid.to_string(),
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key"),
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref(); // 0x04 || x || y
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        jwt(&header, claims, |input| {
            self.pair
                .sign(&SystemRandom::new(), input)
                .expect("ES256 signature")
                .as_ref()
                .to_vec()
        })
    }
}

pub struct RsaKey {
    pub kid: String,
    pub pair: RsaKeyPair,
}

/// One RSA key for the whole binary: generating it is slow in debug builds.
pub static RSA_KEY: LazyLock<RsaKey> = LazyLock::new(|| RsaKey {
    kid: "rsa-1".to_string(),
    pair: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key"),
});

impl RsaKey {
    pub fn jwk(&self) -> Value {
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(self.pair.public_key());
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": b64(&components.n), "e": b64(&components.e),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        jwt(&header, claims, |input| {
            let mut signature = vec![0; self.pair.public_modulus_len()];
            self.pair
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input,
                    &mut signature,
                )
                .expect("RS256 signature");
            signature
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The local issuer

/// Browser sign-in at the issuer (authorization code with PKCE): who signs in and as what client.
pub struct LoginSetup {
    pub key: EcKey,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Claims of the person who signs in (sub, name, email, roles …); `iss`, `aud`, times and
    /// `nonce` are added.
    pub user: Value,
    /// Answer every authorization request with this error (e.g. `access_denied`).
    pub refuse: Option<String>,
    /// Put another nonce into ID tokens than the sign-in asked for.
    pub wrong_nonce: bool,
    codes: HashMap<String, IssuedCode>,
    /// Every token request's outcome: `ok` or the error answered.
    pub token_requests: Vec<String>,
    pub logouts: Vec<String>,
}

struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
}

impl LoginSetup {
    pub fn new(key: EcKey, client_id: &str, user: Value) -> Self {
        LoginSetup {
            key,
            client_id: client_id.to_string(),
            client_secret: None,
            user,
            refuse: None,
            wrong_nonce: false,
            codes: HashMap::new(),
            token_requests: Vec::new(),
            logouts: Vec::new(),
        }
    }
}

pub struct IssuerState {
    pub issuer: String,
    pub login: Mutex<Option<LoginSetup>>,
    /// The `issuer` the discovery document claims (normally `issuer`).
    pub advertised_issuer: Mutex<String>,
    pub jwks: Mutex<Value>,
    pub jwks_status: Mutex<StatusCode>,
    pub down: AtomicBool,
    pub discovery_hits: AtomicUsize,
    pub jwks_hits: AtomicUsize,
}

pub struct TestIssuer {
    /// The issuer identifier, `http://127.0.0.1:<port>/realms/iot`.
    pub issuer: String,
    pub state: Arc<IssuerState>,
    pub server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    state.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let advertised = state.advertised_issuer.lock().expect("lock").clone();
    Json(json!({
        "issuer": advertised,
        "jwks_uri": format!("{}/protocol/openid-connect/certs", state.issuer),
        "authorization_endpoint": format!("{}/protocol/openid-connect/auth", state.issuer),
        "token_endpoint": format!("{}/protocol/openid-connect/token", state.issuer),
        "end_session_endpoint": format!("{}/protocol/openid-connect/logout", state.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

pub async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let status = *state.jwks_status.lock().expect("lock");
    if status != StatusCode::OK {
        return (status, "broken").into_response();
    }
    Json(state.jwks.lock().expect("lock").clone()).into_response()
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> &'a str {
    params.get(name).map(String::as_str).unwrap_or("")
}

fn redirect_to(url: String) -> Response {
    (StatusCode::FOUND, [(http::header::LOCATION, url)]).into_response()
}

fn token_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}

/// The authorization endpoint: signs the configured user in at once (no login page) and sends
/// the browser back with a code, or with the configured error.
pub async fn authorize(
    State(state): State<Arc<IssuerState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut guard = state.login.lock().expect("lock");
    let Some(login) = guard.as_mut() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let redirect_uri = param(&params, "redirect_uri").to_string();
    let state_param = param(&params, "state").to_string();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    if let Some(error) = &login.refuse {
        return redirect_to(format!(
            "{redirect_uri}{sep}error={error}&state={}",
            enc(&state_param)
        ));
    }
    let valid = param(&params, "response_type") == "code"
        && param(&params, "client_id") == login.client_id
        && param(&params, "code_challenge_method") == "S256"
        && !param(&params, "code_challenge").is_empty()
        && param(&params, "scope").split(' ').any(|s| s == "openid")
        && !state_param.is_empty()
        && redirect_uri.starts_with("http");
    if !valid {
        return (StatusCode::BAD_REQUEST, "invalid authorization request").into_response();
    }
    let code = b64(&aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{state_param}{}", now()).as_bytes(),
    )
    .as_ref()[..18]);
    login.codes.insert(
        code.clone(),
        IssuedCode {
            client_id: login.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: param(&params, "code_challenge").to_string(),
            nonce: param(&params, "nonce").to_string(),
        },
    );
    redirect_to(format!(
        "{redirect_uri}{sep}code={}&state={}",
        enc(&code),
        enc(&state_param)
    ))
}

/// The token endpoint: checks the code (once), redirect URI, client and PKCE verifier.
pub async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: http::HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let mut guard = state.login.lock().expect("lock");
    let Some(login) = guard.as_mut() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let outcome = (|| {
        if param(&form, "grant_type") != "authorization_code" {
            return Err("unsupported_grant_type");
        }
        // Client authentication: HTTP Basic with the secret when there is one, else client_id.
        let basic = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok());
        match (&login.client_secret, basic) {
            (Some(secret), Some(pair)) if pair == format!("{}:{secret}", login.client_id) => {}
            (Some(_), _) => return Err("invalid_client"),
            (None, _) if param(&form, "client_id") == login.client_id => {}
            (None, _) => return Err("invalid_client"),
        }
        let issued = login
            .codes
            .remove(param(&form, "code"))
            .ok_or("invalid_grant")?;
        let challenge = b64(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            param(&form, "code_verifier").as_bytes(),
        )
        .as_ref());
        if issued.redirect_uri != param(&form, "redirect_uri")
            || issued.client_id != login.client_id
            || issued.challenge != challenge
        {
            return Err("invalid_grant");
        }
        Ok(issued)
    })();
    let issued = match outcome {
        Ok(issued) => issued,
        Err(error) => {
            login.token_requests.push(error.to_string());
            return token_error(error);
        }
    };
    login.token_requests.push("ok".into());
    let now = now();
    let mut access = login.user.clone();
    access["iss"] = json!(state.issuer);
    access["aud"] = json!(["account", AUDIENCE]);
    access["azp"] = json!(login.client_id);
    access["iat"] = json!(now);
    access["exp"] = json!(now + 300);
    let nonce = if login.wrong_nonce {
        "not-the-nonce".to_string()
    } else {
        issued.nonce
    };
    let id = json!({
        "iss": state.issuer, "sub": login.user["sub"], "aud": login.client_id,
        "iat": now, "exp": now + 300, "nonce": nonce, "typ": "ID",
        "at_hash": "x5MZ3dDf0o2fzfhU1VAqeA",
        "name": login.user["name"], "email": login.user["email"],
    });
    Json(json!({
        "access_token": login.key.sign(&access),
        "id_token": login.key.sign(&id),
        "token_type": "Bearer",
        "expires_in": 300,
    }))
    .into_response()
}

/// RP-initiated logout: records it and sends the browser on.
pub async fn end_session(
    State(state): State<Arc<IssuerState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(login) = state.login.lock().expect("lock").as_mut() {
        login
            .logouts
            .push(param(&params, "id_token_hint").to_string());
    }
    redirect_to(param(&params, "post_logout_redirect_uri").to_string())
}

impl TestIssuer {
    pub async fn start(keys: Vec<Value>) -> Self {
        Self::start_on("127.0.0.1:0", keys).await
    }

    /// Listens on `addr` (e.g. `127.0.0.1:0`).
    pub async fn start_on(addr: &str, keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the issuer's address");
        let addr = listener.local_addr().expect("local addr");
        let issuer = format!("http://{addr}{REALM_PATH}");
        let state = Arc::new(IssuerState {
            issuer: issuer.clone(),
            login: Mutex::new(None),
            advertised_issuer: Mutex::new(issuer.clone()),
            jwks: Mutex::new(json!({ "keys": keys })),
            jwks_status: Mutex::new(StatusCode::OK),
            down: AtomicBool::new(false),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(
                &format!("{REALM_PATH}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(
                &format!("{REALM_PATH}/protocol/openid-connect/certs"),
                get(jwks),
            )
            .route(
                &format!("{REALM_PATH}/protocol/openid-connect/auth"),
                get(authorize),
            )
            .route(
                &format!("{REALM_PATH}/protocol/openid-connect/token"),
                axum::routing::post(token),
            )
            .route(
                &format!("{REALM_PATH}/protocol/openid-connect/logout"),
                get(end_session),
            )
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestIssuer {
            issuer,
            state,
            server,
        }
    }

    /// Enables browser sign-in for `setup`'s client and user (its key must be in the JWKS).
    pub fn enable_login(&self, setup: LoginSetup) {
        *self.state.login.lock().expect("lock") = Some(setup);
    }

    /// Changes the sign-in setup in place.
    pub fn with_login<T>(&self, change: impl FnOnce(&mut LoginSetup) -> T) -> T {
        change(
            self.state
                .login
                .lock()
                .expect("lock")
                .as_mut()
                .expect("login enabled"),
        )
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().expect("lock") = json!({ "keys": keys });
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    pub fn verifier(&self) -> OidcVerifier {
        self.verifier_with(|_| {})
    }

    pub fn verifier_with(&self, adjust: impl FnOnce(&mut OidcSettings)) -> OidcVerifier {
        let mut settings = OidcSettings::new(self.issuer.clone(), AUDIENCE);
        settings.clock_skew = Duration::from_secs(60);
        adjust(&mut settings);
        OidcVerifier::new(settings)
    }

    /// Claims of a valid admin token from this issuer.
    pub fn claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "sub": "3f1c6a52-8d0e-4a57-9d1b-2f5b8e1c0a11",
            "aud": ["account", AUDIENCE],
            "azp": "iotsupport-ui",
            "iat": now,
            "exp": now + 300,
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "realm_access": {"roles": ["editor", "offline_access"]},
            "resource_access": {
                AUDIENCE: {"roles": ["pipeline", "editor"]},
                "account": {"roles": ["manage-account"]},
            },
        })
    }
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub fn without(mut claims: Value, key: &str) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.remove(key);
    }
    claims
}

/// Asserts an `Invalid` whose message contains `reason` and does not leak the token.
pub fn assert_invalid(result: Result<VerifiedToken, OidcError>, token: &str, reason: &str) {
    match result {
        Err(err @ OidcError::Invalid(_)) => {
            let message = err.to_string();
            assert!(
                message.contains(reason),
                "expected {reason:?} in {message:?}"
            );
            assert!(!err.is_unavailable());
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!message.contains(part), "error echoes the token: {message}");
            }
        }
        other => panic!("expected Invalid({reason:?}), got {other:?}"),
    }
}

pub fn assert_unavailable(result: Result<VerifiedToken, OidcError>, reason: &str) {
    match result {
        Err(err @ OidcError::Unavailable(_)) => {
            assert!(err.is_unavailable());
            let message = err.to_string();
            assert!(
                message.contains(reason),
                "expected {reason:?} in {message:?}"
            );
        }
        other => panic!("expected Unavailable({reason:?}), got {other:?}"),
    }
}
