//! `POST /api/iot/token`: OAuth 2.0 client credentials (RFC 6749 §4.4) for devices, and
//! `GET /api/iot/jwks.json`, the public keys of the tokens it issues (SPEC §13).
//!
//! The client authenticates with `client_id`/`client_secret` in the form body or with HTTP Basic
//! (RFC 6749 §2.3.1, both parts form-urlencoded), not both. Errors are RFC 6749 §5.2 JSON
//! (`{"error", "error_description"}`), not the API's envelope: `invalid_request` /
//! `unsupported_grant_type` 400, `invalid_client` 401 (with `WWW-Authenticate: Basic` when Basic
//! was used). Repeated failures for one client id get 429 `slow_down` with `Retry-After`
//! (`crate::credentials::throttle`). Nothing about a secret is ever logged.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::credentials::{self, SecretMatch};
use crate::fleet::ClientId;
use crate::http::auth::{accept, prove, token_issuer};
use crate::http::client_addr::ClientScope;
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::state::AppState;

/// The most a token request body may hold (a client id and a 43-character secret need far less).
const MAX_FORM_BYTES: usize = 8 * 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires (`DEVICE_TOKEN_TTL_SECONDS`).
    pub expires_in: u64,
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    pub error: &'static str,
    pub error_description: String,
}

struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
    basic: bool,
    retry_after: Option<u64>,
}

impl Refusal {
    fn request(description: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
            basic: false,
            retry_after: None,
        }
    }
    fn client(basic: bool) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "Client authentication failed".into(),
            basic,
            retry_after: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(OAuthError {
                error: self.error,
                error_description: self.description,
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        no_store(headers);
        if self.basic {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"iotsupport\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The form's fields (each at most once, RFC 6749 §3.2).
fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, Refusal> {
    let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &fields {
        if !seen.insert(name.as_str()) {
            return Err(Refusal::request(format!("parameter {name} is repeated")));
        }
    }
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Client id and secret from HTTP Basic, if that header is there.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Refusal::request("malformed Authorization header"))?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(Refusal::request("malformed Authorization header"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::request(
            "the token endpoint takes HTTP Basic client authentication",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| Refusal::client(true))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| Refusal::client(true))?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// Exchange a device's client id and secret (current or pending) for a short-lived token.
#[utoipa::path(post, path = "/api/iot/token", tag = "device api",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials&client_id=iotdevice-{model}-{key}&client_secret=…, or the client in HTTP Basic"),
    responses((status = 200, body = TokenResponse),
        (status = 400, description = "invalid_request or unsupported_grant_type", body = OAuthError),
        (status = 401, description = "invalid_client", body = OAuthError),
        (status = 429, description = "slow_down: too many failures for this client id", body = OAuthError)))]
pub async fn token(
    State(state): State<AppState>,
    ClientScope(client): ClientScope,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Read here, not by axum's extractor: its refusals (too large, too slow) are plain text, and
    // a token client reads RFC 6749 errors.
    let limit = MAX_FORM_BYTES as u64;
    let body = match crate::http::body::read_to_bytes(
        &headers,
        body,
        limit,
        state.config.http.body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(e) => {
            use crate::http::body::BodyError;
            let status = match e {
                BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                BodyError::Read(_) => StatusCode::BAD_REQUEST,
            };
            let refusal = Refusal {
                status,
                ..Refusal::request(e.to_string())
            };
            return refusal.into_response();
        }
    };
    match exchange(&state, &client, &headers, &body).await {
        Ok(response) => response,
        Err(TokenFailure::Refused(refusal)) => refusal.into_response(),
        Err(TokenFailure::Api(e)) => e.into_response(),
    }
}

enum TokenFailure {
    Refused(Refusal),
    Api(ApiError),
}

impl From<Refusal> for TokenFailure {
    fn from(r: Refusal) -> Self {
        TokenFailure::Refused(r)
    }
}

impl From<ApiError> for TokenFailure {
    fn from(e: ApiError) -> Self {
        TokenFailure::Api(e)
    }
}

async fn exchange(
    state: &AppState,
    client_scope: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TokenFailure> {
    if body.len() > MAX_FORM_BYTES {
        return Err(Refusal::request("the request body is too large").into());
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(Refusal::request("the body must be application/x-www-form-urlencoded").into());
    }
    let fields = form_fields(body)?;
    match field(&fields, "grant_type") {
        None => return Err(Refusal::request("grant_type is missing").into()),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "unsupported_grant_type",
                description: "only client_credentials is supported".into(),
                basic: false,
                retry_after: None,
            }
            .into())
        }
    }
    let basic = basic_credentials(headers)?;
    let in_body = (field(&fields, "client_id"), field(&fields, "client_secret"));
    let (client_id, secret, used_basic) = match (basic, in_body) {
        (Some(_), (_, Some(_))) => {
            return Err(Refusal::request(
                "use either HTTP Basic or client_secret in the body, not both",
            )
            .into())
        }
        (Some((id, secret)), _) => (id, secret, true),
        (None, (Some(id), Some(secret))) => (id.to_string(), secret.to_string(), false),
        (None, (None, _)) => return Err(Refusal::request("client_id is missing").into()),
        (None, (Some(_), None)) => return Err(Refusal::request("client_secret is missing").into()),
    };

    // A malformed client id can never succeed, so it is refused before the throttle, which keeps
    // only well-formed (short) ids: made-up long ones cannot grow it.
    let Some(client) = ClientId::parse(&client_id) else {
        metrics::counter!(crate::telemetry::DEVICE_TOKENS_REFUSED).increment(1);
        let shown: String = client_id.chars().take(100).collect();
        tracing::warn!(client_id = %shown, reason = "malformed client id", "device_token_refused");
        return Err(TokenFailure::from(Refusal::client(used_basic)));
    };
    // Per client id and address: guesses from one place slow down, while the device itself (at
    // another address) keeps getting tokens; a throttle per client id alone would let anyone who
    // knows a device's id lock it out.
    let throttle_key = format!("{client_id} {client_scope}");
    if let Err(wait) = state.token_failures.check(&throttle_key) {
        return Err(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "slow_down",
            description: "Too many failed attempts for this client; retry later".into(),
            basic: false,
            retry_after: Some(wait.as_secs().max(1)),
        }
        .into());
    }
    let refuse = |reason: &'static str| {
        state.token_failures.failed(&throttle_key);
        metrics::counter!(crate::telemetry::DEVICE_TOKENS_REFUSED).increment(1);
        // The client id is not secret; nothing about the secret is logged.
        tracing::warn!(client_id = %client_id, reason, "device_token_refused");
        TokenFailure::from(Refusal::client(used_basic))
    };
    let Some((credential, proved)) = prove(state, client.device_key.as_str(), None, |c| {
        (c.model_code == client.model_code.as_str())
            .then(|| credentials::match_secret(c, &secret))
            .flatten()
    })
    .await?
    else {
        return Err(refuse("unknown client or wrong secret"));
    };
    state.token_failures.succeeded(&throttle_key);
    let secret_hash = proved
        .hash(&credential)
        .map(str::to_string)
        .unwrap_or_default();
    let pending = matches!(proved, SecretMatch::Pending(_));
    // Minting with the pending secret counts as using it: promote it first.
    match accept(state, credential, proved).await {
        Ok(_) => {}
        // The pending secret was replaced a moment ago: no token for it.
        Err(ApiError::AuthenticationRequired(_)) => {
            return Err(refuse("pending secret replaced"));
        }
        Err(e) => return Err(e.into()),
    }
    let issued = token_issuer(state)
        .await?
        .mint(&client_id, &secret_hash)
        .map_err(|e| ApiError::Internal(format!("cannot sign the token: {e}")))?;
    metrics::counter!(crate::telemetry::DEVICE_TOKENS_ISSUED).increment(1);
    tracing::info!(client_id = %client_id, pending_secret = pending, "device_token_issued");
    let mut response = Json(TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
    })
    .into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// The public keys device tokens are signed with (RFC 7517 JWK Set), for brokers and services
/// that check them.
#[utoipa::path(get, path = "/api/iot/jwks.json", tag = "device api",
    responses((status = 200, description = "JWK Set", content_type = "application/json")))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut response = Json(token_issuer(&state).await?.jwks()).into_response();
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}
