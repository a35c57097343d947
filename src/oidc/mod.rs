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

mod keys;
pub mod login;

use keys::is_allowed_algorithm;

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
    /// Browser sign-in as a client of the provider ([`login`]).
    pub client: login::ClientSettings,
}

impl OidcSettings {
    /// What a browser session made through this provider is bound to (`crate::sessions`): the
    /// issuer, the client and the audience. Another value of any of them ends such sessions.
    pub fn binding(&self) -> String {
        format!(
            "oidc\n{}\n{}\n{}",
            self.issuer_url.trim_end_matches('/'),
            self.client.client_id,
            self.audience
        )
    }

    /// Settings with the default clock skew and refresh interval.
    /// Signs in as client `audience` (public, PKCE), scopes `openid profile email`.
    pub fn new(issuer_url: impl Into<String>, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        OidcSettings {
            issuer_url: issuer_url.into(),
            client: login::ClientSettings {
                client_id: audience.clone(),
                client_secret: None,
                scopes: "openid profile email".into(),
            },
            audience,
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

    /// Why, without the kind.
    fn reason(&self) -> &str {
        match self {
            OidcError::Invalid(r) | OidcError::Unavailable(r) => r,
        }
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
    /// When discovery alone (for a sign-in) last failed, and why: asked again only after
    /// [`OidcSettings::min_refresh_interval`], so sign-ins cannot hammer a failing issuer or keep
    /// this lock (which token checks with stale keys wait for) busy.
    discovery_failed: Option<(Instant, String)>,
}

#[derive(Clone)]
struct Discovered {
    issuer: String,
    jwks_uri: String,
    /// For browser sign-in (`login.rs`); a provider without them only verifies tokens.
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    end_session_endpoint: Option<String>,
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
    #[serde(default)]
    nonce: Option<String>,
    /// Keycloak's token type: `ID` on ID tokens, `Bearer` on access tokens.
    #[serde(default)]
    typ: Option<String>,
    /// Only ID tokens carry the hashes of the access token and code issued with them.
    #[serde(default)]
    at_hash: Option<String>,
    #[serde(default)]
    c_hash: Option<String>,
}

impl Claims {
    /// Whether the token says it is an ID token: it proves who signed in to a client, and ends up
    /// in URLs (the sign-out's `id_token_hint`) and in our session rows, so it must not work as a
    /// bearer token.
    fn is_id_token(&self) -> bool {
        self.typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("ID"))
            || self.at_hash.is_some()
            || self.c_hash.is_some()
    }
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
        let audience = self.inner.settings.audience.clone();
        self.verify_for(token, &audience, None).await
    }

    /// [`Self::verify`] for audience `audience`; with `nonce`, the token's `nonce` claim must be
    /// exactly it (an ID token of the sign-in that asked for it).
    async fn verify_for(
        &self,
        token: &str,
        audience: &str,
        nonce: Option<&str>,
    ) -> Result<VerifiedToken, OidcError> {
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
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| OidcError::invalid(describe(e.kind())))?;
        let claims = data.claims;
        match nonce {
            Some(expected) if claims.nonce.as_deref() != Some(expected) => {
                return Err(OidcError::invalid(
                    "ID token does not belong to this sign-in (nonce)",
                ));
            }
            Some(_) => {}
            None if claims.is_id_token() => {
                return Err(OidcError::invalid(
                    "an ID token is not an access token (typ ID, at_hash or c_hash)",
                ));
            }
            None => {}
        }
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
mod tests;
