//! OIDC access-token verification (SPEC §11): admin and device callers may present a JWT issued
//! by the configured OpenID Connect provider instead of `ADMIN_TOKEN` or a device secret.
//!
//! [`OidcVerifier::verify`] checks a bearer token and returns a [`VerifiedToken`]: subject, roles
//! and `azp`. The HTTP layer maps [`OidcError::Invalid`] to 401 and [`OidcError::Unavailable`] to
//! 503, decides roles (`editor`, `pipeline`) and, for devices, reads `azp` with
//! [`parse_device_azp`].
//!
//! Decisions:
//! - **Lazy discovery.** [`OidcVerifier::new`] does no I/O, so the service starts even while the
//!   issuer is down. The first verification fetches `{issuer}/.well-known/openid-configuration`,
//!   checks that its `issuer` is the configured one, and fetches the `jwks_uri`. The issuer the
//!   tokens must carry is the document's `issuer`, byte for byte (OIDC Discovery §4.3); a
//!   trailing slash in `OIDC_ISSUER_URL` is tolerated only when locating the document.
//! - **Keys cached by `kid`; refetch on an unknown `kid`.** Providers rotate signing keys by
//!   publishing a new key and then signing with it. A token naming a `kid` we have not seen makes
//!   us fetch the JWKS again, so rotation needs no restart. Because anyone can send a token with a
//!   made-up `kid`, such refetches happen at most once per
//!   [`OidcSettings::min_refresh_interval`] (a failed fetch counts too, so a down issuer is not
//!   hammered); within the interval an unknown `kid` is simply invalid.
//! - **One fetch at a time.** A mutex serialises fetches; callers that waited for it look at the
//!   cache again before fetching, so concurrent verifications do not stampede the issuer.
//! - **Stale keys survive an outage.** Keys are re-read every [`JWKS_MAX_AGE`] so a key the provider
//!   withdrew stops working; if that refresh fails, the cached keys keep working (an outage of the
//!   issuer does not lock everybody out). Without any cached keys an unreachable or broken issuer
//!   is [`OidcError::Unavailable`].
//! - **Algorithms.** Only asymmetric signatures (RS*, PS*, ES256/ES384, EdDSA) are accepted;
//!   `alg: none` and HMAC are rejected before any key lookup (an HMAC "key" from a public JWKS
//!   would be a forgery vector). A JWK that declares its own `alg` or a `use` other than `sig`
//!   must agree with the token.
//! - **Bounded inputs.** Tokens over [`MAX_TOKEN_BYTES`] and HTTP bodies over 1 MiB are rejected;
//!   HTTP requests time out after 5 s. Error messages never contain the token or its header
//!   values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Default leeway for `exp` and `nbf` when `OIDC_CLOCK_SKEW_SECONDS` is not set.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default minimum interval between JWKS refetches triggered by unknown key ids.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Cached keys older than this are re-read on the next verification (kept if that fails).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest token accepted; anything larger is rejected without being parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Timeout for each request to the issuer (discovery document, JWKS).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWKS we read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Prefix of the `azp` (client id) of device clients.
const DEVICE_AZP_PREFIX: &str = "iotdevice-";

/// Where the tokens come from and how they are checked (`OIDC_ISSUER_URL`, `OIDC_AUDIENCE`,
/// `OIDC_CLOCK_SKEW_SECONDS`).
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The issuer identifier, e.g. `https://sso.example.com/realms/iot`. The discovery document is
    /// read from `{issuer_url}/.well-known/openid-configuration` (a trailing slash is trimmed).
    pub issuer_url: String,
    /// The audience tokens must be issued for (`aud` must contain it); also the client whose
    /// `resource_access` roles are read.
    pub audience: String,
    /// Leeway for `exp` and `nbf` (whole seconds count).
    pub clock_skew: Duration,
    /// Minimum interval between JWKS fetches caused by an unknown `kid` (or retries after a failed
    /// fetch). [`DEFAULT_MIN_REFRESH_INTERVAL`] unless a test needs another.
    pub min_refresh_interval: Duration,
}

impl OidcSettings {
    /// Settings with the default clock skew and refresh interval.
    pub fn new(issuer_url: impl Into<String>, audience: impl Into<String>) -> Self {
        OidcSettings {
            issuer_url: issuer_url.into(),
            audience: audience.into(),
            clock_skew: DEFAULT_CLOCK_SKEW,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The token is not acceptable (malformed, bad signature, expired, not yet valid, wrong issuer
    /// or audience, unknown key, forbidden algorithm): answer 401.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The issuer or its JWKS could not be reached or returned something unusable, so the token
    /// could not be checked: answer 503.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

impl OidcError {
    /// True for [`OidcError::Unavailable`] (a 503, not the caller's fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, OidcError::Unavailable(_))
    }

    fn invalid(reason: impl Into<String>) -> Self {
        OidcError::Invalid(reason.into())
    }

    fn unavailable(reason: impl Into<String>) -> Self {
        OidcError::Unavailable(reason.into())
    }
}

/// The identity a valid token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub` (required).
    pub subject: String,
    /// `email`, if present.
    pub email: Option<String>,
    /// `name`, if present.
    pub name: Option<String>,
    /// `realm_access.roles` followed by `resource_access.<audience>.roles`, without duplicates,
    /// in first-seen order.
    pub roles: Vec<String>,
    /// `azp` (the client the token was issued to), if present.
    pub azp: Option<String>,
}

impl VerifiedToken {
    /// Whether the token grants `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// `(model_code, device_key)` if `azp` names a device client (see [`parse_device_azp`]).
    pub fn device(&self) -> Option<(String, String)> {
        self.azp.as_deref().and_then(parse_device_azp)
    }
}

/// Splits a device client id `iotdevice-{model_code}-{device_key}` into `(model_code,
/// device_key)`. Model codes match `^[a-z0-9_]{1,50}$`, device keys are 8 characters of
/// `[a-z2-7]`; anything else is `None`.
pub fn parse_device_azp(azp: &str) -> Option<(String, String)> {
    let rest = azp.strip_prefix(DEVICE_AZP_PREFIX)?;
    // Model codes cannot contain '-', so the first '-' separates the two parts.
    let (model_code, device_key) = rest.split_once('-')?;
    let model_ok = (1..=50).contains(&model_code.len())
        && model_code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let key_ok = device_key.len() == 8
        && device_key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    (model_ok && key_ok).then(|| (model_code.to_string(), device_key.to_string()))
}

/// Verifies access tokens against the configured issuer. Cheap to clone (shares one key cache).
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer_url", &self.inner.settings.issuer_url)
            .field("audience", &self.inner.settings.audience)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: OidcSettings,
    /// Read on every verification; written only by the holder of `fetch`.
    cache: RwLock<KeyCache>,
    /// Held while talking to the issuer, so there is one fetch at a time.
    fetch: Mutex<FetchState>,
}

#[derive(Default)]
struct KeyCache {
    /// The issuer tokens must name (from the discovery document).
    issuer: String,
    keys: HashMap<String, Arc<CachedKey>>,
    /// When the keys were last fetched successfully; `None` before the first success.
    loaded_at: Option<Instant>,
}

struct CachedKey {
    key: DecodingKey,
    /// The JWK's own `alg`, if it declares one.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct FetchState {
    client: Option<reqwest::Client>,
    /// From the discovery document; forgotten after a failed fetch so discovery runs again.
    discovered: Option<Discovered>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Clone)]
struct Discovered {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    /// Optional here so that a missing `sub` is reported as such by the validation.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    realm_access: Option<serde_json::Value>,
    #[serde(default)]
    resource_access: Option<serde_json::Value>,
}

/// What the key lookup concluded while holding the fetch lock.
enum Lookup {
    Found(Arc<CachedKey>),
    Fetch,
}

impl OidcVerifier {
    /// A verifier for `settings`. Does no I/O: discovery happens on the first [`Self::verify`].
    pub fn new(settings: OidcSettings) -> Self {
        OidcVerifier {
            inner: Arc::new(Inner {
                settings,
                cache: RwLock::new(KeyCache::default()),
                fetch: Mutex::new(FetchState::default()),
            }),
        }
    }

    /// The settings this verifier was built with.
    pub fn settings(&self) -> &OidcSettings {
        &self.inner.settings
    }

    /// Checks `token` (the bearer value, without `Bearer `): signature against the issuer's
    /// JWKS, `iss`, `aud`, `exp` and `nbf` (with the configured clock skew), and `sub` present.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::invalid("token is too large"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            OidcError::invalid(format!("malformed token header ({})", describe(e.kind())))
        })?;
        if !is_allowed_algorithm(header.alg) {
            return Err(OidcError::invalid(format!(
                "signature algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| OidcError::invalid("token header has no key id (kid)"))?;
        let (key, issuer) = self.key_for(&kid).await?;
        if let Some(key_alg) = key.alg {
            if key_alg != header.alg {
                return Err(OidcError::invalid(
                    "token algorithm does not match the signing key",
                ));
            }
        }
        let settings = &self.inner.settings;
        let mut validation = Validation::new(header.alg);
        validation.leeway = settings.clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[settings.audience.as_str()]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| OidcError::invalid(describe(e.kind())))?;
        let claims = data.claims;
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::invalid("token has no 'sub' claim"))?;
        let mut roles = Vec::new();
        collect_roles(claims.realm_access.as_ref(), &mut roles);
        collect_roles(
            claims
                .resource_access
                .as_ref()
                .and_then(|r| r.get(&settings.audience)),
            &mut roles,
        );
        Ok(VerifiedToken {
            subject,
            email: claims.email,
            name: claims.name,
            roles,
            azp: claims.azp,
        })
    }

    /// The key named `kid` and the issuer tokens must carry, fetching the JWKS if needed.
    async fn key_for(&self, kid: &str) -> Result<(Arc<CachedKey>, String), OidcError> {
        {
            let cache = self.inner.cache.read().await;
            if let (Some(key), Some(at)) = (cache.keys.get(kid), cache.loaded_at) {
                if at.elapsed() < JWKS_MAX_AGE {
                    return Ok((key.clone(), cache.issuer.clone()));
                }
            }
        }

        let mut fetch = self.inner.fetch.lock().await;
        // Someone may have fetched while we waited for the lock: look again.
        let (found, loaded_at) = {
            let cache = self.inner.cache.read().await;
            (cache.keys.get(kid).cloned(), cache.loaded_at)
        };
        let may_fetch = fetch
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.inner.settings.min_refresh_interval);
        let lookup = match (found, loaded_at) {
            (Some(key), Some(at)) if at.elapsed() < JWKS_MAX_AGE => Lookup::Found(key),
            // Stale key: refresh if allowed, else keep using it.
            (Some(key), _) if !may_fetch => Lookup::Found(key),
            (Some(_), _) => Lookup::Fetch,
            (None, None) if !may_fetch => {
                return Err(OidcError::unavailable(format!(
                    "signing keys could not be loaded: {}",
                    fetch.last_error.as_deref().unwrap_or("not yet fetched")
                )));
            }
            (None, Some(_)) if !may_fetch => {
                return Err(OidcError::invalid("token is signed with an unknown key"));
            }
            (None, _) => Lookup::Fetch,
        };
        if let Lookup::Found(key) = lookup {
            let issuer = self.inner.cache.read().await.issuer.clone();
            return Ok((key, issuer));
        }

        match self.refresh(&mut fetch).await {
            Ok(()) => {}
            Err(e) => {
                // A stale key still works while the issuer is unreachable.
                let cache = self.inner.cache.read().await;
                if let Some(key) = cache.keys.get(kid) {
                    tracing::warn!(error = %e, "OIDC key refresh failed; using cached keys");
                    return Ok((key.clone(), cache.issuer.clone()));
                }
                return Err(e);
            }
        }
        let cache = self.inner.cache.read().await;
        match cache.keys.get(kid) {
            Some(key) => Ok((key.clone(), cache.issuer.clone())),
            None => Err(OidcError::invalid("token is signed with an unknown key")),
        }
    }

    /// Fetches discovery (if not known yet) and the JWKS, replacing the cached keys on success.
    async fn refresh(&self, fetch: &mut FetchState) -> Result<(), OidcError> {
        fetch.last_attempt = Some(Instant::now());
        let result = self.fetch_keys(fetch).await;
        match result {
            Ok((discovered, keys)) => {
                {
                    let mut cache = self.inner.cache.write().await;
                    cache.issuer = discovered.issuer.clone();
                    cache.keys = keys;
                    cache.loaded_at = Some(Instant::now());
                }
                fetch.discovered = Some(discovered);
                fetch.last_error = None;
                Ok(())
            }
            Err(e) => {
                fetch.discovered = None;
                let reason = match &e {
                    OidcError::Invalid(r) | OidcError::Unavailable(r) => r.clone(),
                };
                tracing::warn!(reason = %reason, "OIDC key fetch failed");
                fetch.last_error = Some(reason);
                Err(e)
            }
        }
    }

    async fn fetch_keys(
        &self,
        fetch: &mut FetchState,
    ) -> Result<(Discovered, HashMap<String, Arc<CachedKey>>), OidcError> {
        let client = match &fetch.client {
            Some(client) => client.clone(),
            None => {
                let client = reqwest::Client::builder()
                    .timeout(HTTP_TIMEOUT)
                    .connect_timeout(HTTP_TIMEOUT)
                    .build()
                    .map_err(|e| {
                        OidcError::unavailable(format!("HTTP client could not be built: {e}"))
                    })?;
                fetch.client = Some(client.clone());
                client
            }
        };
        let discovered = match &fetch.discovered {
            Some(d) => d.clone(),
            None => self.discover(&client).await?,
        };
        let body = get_body(&client, &discovered.jwks_uri, "JWKS").await?;
        let set: RawJwkSet = serde_json::from_slice(&body)
            .map_err(|e| OidcError::unavailable(format!("JWKS is not valid JSON: {e}")))?;
        let mut keys = HashMap::new();
        for value in set.keys {
            // Skip keys we cannot use (encryption keys, unknown types) instead of failing the set.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some((kid, key)) = usable_key(&jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(OidcError::unavailable(
                "JWKS contains no usable signing key",
            ));
        }
        Ok((discovered, keys))
    }

    async fn discover(&self, client: &reqwest::Client) -> Result<Discovered, OidcError> {
        let configured = self.inner.settings.issuer_url.trim_end_matches('/');
        let url = format!("{configured}/.well-known/openid-configuration");
        let body = get_body(client, &url, "discovery document").await?;
        let doc: DiscoveryDocument = serde_json::from_slice(&body).map_err(|e| {
            OidcError::unavailable(format!("discovery document is not usable: {e}"))
        })?;
        if doc.issuer.trim_end_matches('/') != configured {
            return Err(OidcError::unavailable(format!(
                "discovery document names issuer {:?}, expected {:?}",
                doc.issuer, self.inner.settings.issuer_url
            )));
        }
        if !(doc.jwks_uri.starts_with("https://") || doc.jwks_uri.starts_with("http://")) {
            return Err(OidcError::unavailable(
                "discovery document has no usable jwks_uri",
            ));
        }
        Ok(Discovered {
            issuer: doc.issuer,
            jwks_uri: doc.jwks_uri,
        })
    }
}

/// GETs `url` and returns its body (at most [`MAX_BODY_BYTES`]); every failure is Unavailable.
async fn get_body(client: &reqwest::Client, url: &str, what: &str) -> Result<Vec<u8>, OidcError> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| OidcError::unavailable(format!("{what} request to {url} failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(OidcError::unavailable(format!(
            "{what} request to {url} answered {status}"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OidcError::unavailable(format!("{what} from {url} could not be read: {e}")))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(OidcError::unavailable(format!(
                "{what} from {url} is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_allowed_algorithm(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(
        alg,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
    )
}

/// The key id and decoding key of a JWK we may verify signatures with, if it is one.
fn usable_key(jwk: &Jwk) -> Option<(String, CachedKey)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(declared) => {
            let alg = declared.to_string().parse::<Algorithm>().ok()?;
            if !is_allowed_algorithm(alg) {
                return None;
            }
            Some(alg)
        }
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return None;
    }
    Some((kid, CachedKey { key, alg }))
}

/// Appends the string entries of `access.roles` to `roles`, skipping ones already there.
fn collect_roles(access: Option<&serde_json::Value>, roles: &mut Vec<String>) {
    let Some(list) = access
        .and_then(|a| a.get("roles"))
        .and_then(|r| r.as_array())
    else {
        return;
    };
    for role in list.iter().filter_map(|r| r.as_str()) {
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_string());
        }
    }
}

/// A reason for a rejected token, without any of the token's content.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidToken => "token is not a well-formed JWT".into(),
        K::InvalidSignature => "signature does not verify".into(),
        K::ExpiredSignature => "token has expired".into(),
        K::ImmatureSignature => "token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "token is from another issuer".into(),
        K::InvalidAudience => "token is not issued for this audience".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            "signature algorithm is not accepted for this key".into()
        }
        K::MissingRequiredClaim(claim) => format!("token has no '{claim}' claim"),
        K::InvalidClaimFormat(claim) => format!("token claim '{claim}' has the wrong type"),
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            "signing key is not usable for this token".into()
        }
        K::Base64(_) => "token is not valid base64url".into(),
        K::Json(_) | K::Utf8(_) => {
            "token header or claims are not valid JSON of the expected shape".into()
        }
        _ => "token could not be verified".into(),
    }
}

#[cfg(test)]
mod tests {
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
}
