//! Who is calling: extractors for the admin and device identities (SPEC §11).
//!
//! Every route states what it requires by taking one of these as an argument: [`AdminReader`]
//! (any authenticated admin), [`AdminEditor`] (may write), [`PipelineCaller`] (the CI upload
//! routes) or [`DeviceCaller`] (a device acting as itself; [`OtaCaller`] on the OTA routes, which
//! also brings the model's current image when the credential is read from the database). Each
//! extractor either yields the capability or rejects with the error envelope: 401 for missing or
//! wrong credentials, 403 for a valid credential without the needed role.
//!
//! Admin credentials: `ADMIN_TOKEN` (compared in constant time) grants every role; with OIDC on, a
//! JWT from the issuer carries its roles (`editor` writes, `pipeline` uploads from CI, any valid
//! user reads). Both may be on at once. A request without an `Authorization` header may instead
//! carry a browser session cookie (`super::session`, `crate::sessions`): the identity its sign-in
//! established, with a CSRF check on writes. With neither configured the admin API is open (and `serve`
//! binds only to loopback unless `ALLOW_UNAUTHENTICATED=true`).
//!
//! Device credentials: `Authorization: Bearer <key>.<secret>` (one dot), the secret checked
//! against the stored SHA-256 of the device's current or pending secret; a token iotsupport
//! issued (`POST /api/iot/token`, a JWT whose `kid` is one of ours); or, with OIDC on, a JWT of the
//! issuer whose `azp` is `iotdevice-{model_code}-{device_key}` with the model code matching the
//! device's model; `?device_key=` only when `IOT_DEVICE_KEY_AUTH=true`. An unreachable issuer is a
//! 503, not a 401. Using the pending secret (directly or through a token minted with it) promotes
//! it before the request goes on (`crate::credentials::rotation::complete`). The stored credential
//! is reused for up to `DEVICE_LOOKUP_CACHE_SECONDS` (see `crate::lookup_cache`): a secret replaced
//! or a device deleted through this process is refused at once, through another process sharing
//! the database within that time.
//!
//! Every authenticated device request is noted in `crate::presence` (last seen, and the version
//! in an optional `X-Firmware-Version` header, ignored when it is not a valid firmware version);
//! nothing is written on the request's path.

use axum::extract::FromRequestParts;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::credentials::tokens::{DeviceClaims, TokenCheck, TokenError, TokenIssuer};
use crate::credentials::{self, rotation, DeviceCredential, SecretMatch};
use crate::db::credentials as credentials_db;
use crate::db::firmware_versions::CurrentImage;
use crate::fleet::{ClientId, FirmwareVersion};
use crate::state::AppState;

pub const ROLE_EDITOR: &str = "editor";
pub const ROLE_PIPELINE: &str = "pipeline";

/// How an admin proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuthMethod {
    AdminToken,
    Oidc,
    /// No admin authentication is configured.
    Open,
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct AdminIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub method: AdminAuthMethod,
    /// With a browser session: the token its writes must carry in `X-CSRF-Token`.
    pub csrf_token: Option<String>,
}

impl AdminIdentity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// What a page shows as the signed-in person: the name, else the email, else the subject.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}

/// Any authenticated admin: may read.
#[derive(Debug, Clone)]
pub struct AdminReader(pub AdminIdentity);
/// An admin with the `editor` role: may write.
#[derive(Debug, Clone)]
pub struct AdminEditor(pub AdminIdentity);
/// A caller with the `pipeline` role: may use `/api/pipeline/…`.
#[derive(Debug, Clone)]
pub struct PipelineCaller(pub AdminIdentity);

/// A device authenticated as itself.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCaller {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    /// The hash of the secret the request proved (directly, or through a token minted with it);
    /// `None` when no secret of ours was proved (an OIDC device token, the development key mode).
    /// The credential may have been read from the lookup cache: a write that must not outlive
    /// the secret (minting a new one) checks that it is still the device's.
    pub proved_secret: Option<String>,
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::AuthenticationRequired("Malformed Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::AuthenticationRequired(
            "Authorization header must be 'Bearer <token>'".into(),
        )),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares two secrets in constant time (hashing first hides their lengths too).
pub(super) fn secrets_equal(a: &str, b: &str) -> bool {
    sha256(a.as_bytes()).ct_eq(&sha256(b.as_bytes())).into()
}

/// The roles of the local admin (`ADMIN_TOKEN`, open mode): all of them.
pub(super) fn local_roles() -> Vec<String> {
    vec![ROLE_EDITOR.into(), ROLE_PIPELINE.into()]
}

/// The configured local identity (`ADMIN_TOKEN` callers, open mode), with every role.
fn local_admin(state: &AppState, method: AdminAuthMethod) -> AdminIdentity {
    let local = &state.config.local_admin;
    AdminIdentity {
        subject: local.subject.clone(),
        email: local.email.clone(),
        name: local.name.clone(),
        roles: local_roles(),
        method,
        csrf_token: None,
    }
}

/// A bearer value shaped like a JWT (`header.payload.signature`); device secrets have one dot.
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

fn oidc_failure(error: crate::oidc::OidcError) -> ApiError {
    if error.is_unavailable() {
        tracing::warn!(error = %error, "oidc_unavailable");
        ApiError::unavailable("The identity provider is unavailable; try again later")
    } else {
        ApiError::AuthenticationRequired(format!("Invalid credentials: {error}"))
    }
}

/// Refuses a write (see [`super::session::changes_state`]) that a browser says came from a page
/// of another site, whatever proves the caller. In open mode nothing else would stop a form on
/// any site from posting to the API on loopback; a bearer token may be added on the browser's way
/// by an authenticating proxy. Clients that are not browsers (curl, CI) send none of the headers
/// this goes by, and our API answers no cross-origin request of a page anyway (no CORS).
fn refuse_cross_site_write(parts: &Parts) -> Result<(), ApiError> {
    if super::session::changes_state(parts) && super::session::from_another_site(&parts.headers) {
        return Err(ApiError::AuthorizationFailed(
            "This write came from a page of another site and was refused".into(),
        ));
    }
    Ok(())
}

pub async fn authenticate_admin(
    parts: &Parts,
    state: &AppState,
) -> Result<AdminIdentity, ApiError> {
    if !state.config.admin_auth_enabled() {
        // On loopback, a request must also name this machine: a page whose host name its owner
        // points at 127.0.0.1 (DNS rebinding) is otherwise same-origin with the open API, reads
        // included. Served beyond loopback (`ALLOW_UNAUTHENTICATED`), any name is accepted,
        // unless `ALLOWED_HOSTS` lists the names.
        let config = &state.config;
        let checked = config.host.is_loopback() || !config.allowed_hosts.is_empty();
        if checked && !super::session::addressed_locally(&parts.headers, &config.allowed_hosts) {
            return Err(ApiError::AuthorizationFailed(
                "Without admin authentication only requests addressed to localhost, an IP \
                 address or a name in ALLOWED_HOSTS are answered (a proxy in front that passes \
                 its own Host on needs its name there); or set ADMIN_TOKEN or OIDC"
                    .into(),
            ));
        }
        refuse_cross_site_write(parts)?;
        return Ok(local_admin(state, AdminAuthMethod::Open));
    }
    let Some(token) = bearer(parts)? else {
        return session_identity(parts, state).await;
    };
    refuse_cross_site_write(parts)?;
    let jwt = state.oidc.is_some() && looks_like_jwt(token);
    let mut refused = None;
    if let Some(expected) = &state.config.admin_token {
        // Wrong admin tokens slow down the address that sends them (the sign-in form's
        // throttle); while it is closed no token of it is compared.
        let client = super::client_addr::ClientScope::of(parts, state).0;
        match state.admin_failures.check(&client) {
            Ok(()) if secrets_equal(token, expected.expose()) => {
                state.admin_failures.succeeded(&client);
                return Ok(local_admin(state, AdminAuthMethod::AdminToken));
            }
            Ok(()) => refused = Some(client),
            Err(wait) if !jwt => {
                return Err(ApiError::TooManyRequests {
                    message: "Too many wrong admin tokens from this address; retry later".into(),
                    retry_after: wait.as_secs().max(1),
                })
            }
            // An OIDC token is still verified: the throttle is the admin token's.
            Err(_) => {}
        }
    }
    if let (Some(oidc), true) = (&state.oidc, jwt) {
        let verified = match oidc.verify(token).await {
            Ok(verified) => verified,
            Err(e) => {
                // Neither the admin token nor a token of the issuer: a guess shaped like a JWT
                // counts against the address as any other wrong admin token. Not while the
                // issuer cannot be reached: its users' tokens would close the address to the
                // admin token, the way in that is left.
                // (Unless the admin token is itself shaped like a JWT: such guesses could match
                // it, and must count whatever the issuer does.)
                let could_be_admin = state
                    .config
                    .admin_token
                    .as_ref()
                    .is_some_and(|t| looks_like_jwt(t.expose()));
                if let Some(client) = refused {
                    if !e.is_unavailable() || could_be_admin {
                        state.admin_failures.failed(&client);
                    }
                }
                return Err(oidc_failure(e));
            }
        };
        if verified.device().is_some() {
            return Err(ApiError::AuthorizationFailed(
                "Device tokens cannot use the admin API".into(),
            ));
        }
        return Ok(AdminIdentity {
            subject: verified.subject,
            email: verified.email,
            name: verified.name,
            roles: verified.roles,
            method: AdminAuthMethod::Oidc,
            csrf_token: None,
        });
    }
    if let Some(client) = refused {
        state.admin_failures.failed(&client);
        tracing::warn!(client = %client, "admin_token_refused");
    }
    Err(ApiError::AuthenticationRequired(
        "Invalid credentials".into(),
    ))
}

/// The live session the cookie value `cookie` names, under this process's `ADMIN_TOKEN` and
/// OIDC settings (see `crate::sessions::find`).
pub async fn browser_session(
    state: &AppState,
    cookie: &str,
) -> Result<Option<crate::sessions::Session>, crate::db::DbError> {
    let admin_token = state.config.admin_token.as_ref().map(|t| t.expose());
    let provider = state.oidc.as_ref().map(|o| o.settings().binding());
    crate::sessions::find(&state.db, cookie, admin_token, provider.as_deref()).await
}

/// The admin a browser session names (no `Authorization` header); see `super::session`.
async fn session_identity(parts: &Parts, state: &AppState) -> Result<AdminIdentity, ApiError> {
    let Some(cookie) = super::session::session_cookie(&parts.headers) else {
        return Err(ApiError::AuthenticationRequired(
            "Authentication required".into(),
        ));
    };
    let session = browser_session(state, &cookie).await?.ok_or_else(|| {
        ApiError::AuthenticationRequired("Your session has ended; sign in again".into())
    })?;
    if !super::session::csrf_ok(parts, &session.csrf_token) {
        return Err(ApiError::AuthorizationFailed(
            "This write did not come from an iotsupport page (CSRF check failed)".into(),
        ));
    }
    Ok(AdminIdentity {
        subject: session.subject,
        email: session.email,
        name: session.name,
        roles: session.roles,
        method: match session.method {
            crate::sessions::SessionMethod::AdminToken => AdminAuthMethod::AdminToken,
            crate::sessions::SessionMethod::Oidc => AdminAuthMethod::Oidc,
        },
        csrf_token: Some(session.csrf_token),
    })
}

fn require(identity: AdminIdentity, role: &str) -> Result<AdminIdentity, ApiError> {
    if identity.has_role(role) {
        Ok(identity)
    } else {
        Err(ApiError::AuthorizationFailed(format!(
            "The '{role}' role is required"
        )))
    }
}

impl FromRequestParts<AppState> for AdminReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate_admin(parts, state).await.map(AdminReader)
    }
}

impl FromRequestParts<AppState> for AdminEditor {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(authenticate_admin(parts, state).await?, ROLE_EDITOR).map(AdminEditor)
    }
}

impl FromRequestParts<AppState> for PipelineCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(authenticate_admin(parts, state).await?, ROLE_PIPELINE).map(PipelineCaller)
    }
}

/// Where a credential read from the database leaves the current image of the device's model,
/// when the caller wants it ([`OtaCaller`]): read in the same query, it spares the OTA routes a
/// second one. Empty when the credential came from the cache.
pub type ImageSlot = std::sync::OnceLock<CurrentImage>;

/// The credential for `key`, from the short-lived cache when possible (see
/// `crate::lookup_cache`): a device downloading an image in many ranges is checked against the
/// database at most once per `DEVICE_LOOKUP_CACHE_SECONDS`. Unknown keys are never cached. With
/// `image`, a credential read from the database comes with its model's current image.
pub async fn cached_credential(
    state: &AppState,
    key: &str,
    image: Option<&ImageSlot>,
) -> Result<Option<DeviceCredential>, ApiError> {
    let cache = &state.caches.device_credentials;
    let key = key.to_string();
    if let Some(found) = cache.get(&key) {
        return Ok(Some(found));
    }
    Ok(cache
        .load(key.clone(), || find_credential(state, &key, image))
        .await?)
}

/// The credential for `key` from the database, with its model's current image put in `image`.
async fn find_credential(
    state: &AppState,
    key: &str,
    image: Option<&ImageSlot>,
) -> Result<Option<DeviceCredential>, crate::db::DbError> {
    let Some(slot) = image else {
        return credentials_db::find_credential(&state.db, key).await;
    };
    let found = credentials_db::find_credential_with_image(&state.db, key).await?;
    Ok(found.map(|(credential, current)| {
        // A second read in one request (see `prove`) keeps the first image: either is fresh, and
        // `image_of` uses it only for the model of the credential that was proved.
        let _ = slot.set(current);
        credential
    }))
}

/// The process's token issuer (loaded on first use).
pub async fn token_issuer(state: &AppState) -> Result<std::sync::Arc<TokenIssuer>, ApiError> {
    state.tokens.issuer().await.map_err(issuer_error)
}

fn issuer_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Db(e) => ApiError::from(e),
        TokenError::Key(message) => {
            tracing::error!(error = %message, "device_token_key_unusable");
            ApiError::Internal("Internal error: the token signing key is unusable".into())
        }
    }
}

fn invalid_device_credentials() -> ApiError {
    ApiError::AuthenticationRequired("Invalid device credentials".into())
}

/// The credential for `key` and which of its secrets `proves` accepts. A cached credential that
/// proves nothing is read again before giving up: a secret minted a moment ago (by this or
/// another process) is always accepted at once. Only failures cost that extra read.
pub async fn prove(
    state: &AppState,
    key: &str,
    image: Option<&ImageSlot>,
    proves: impl Fn(&DeviceCredential) -> Option<SecretMatch>,
) -> Result<Option<(DeviceCredential, SecretMatch)>, ApiError> {
    let Some(credential) = cached_credential(state, key, image).await? else {
        return Ok(None);
    };
    if let Some(proved) = proves(&credential) {
        return Ok(Some((credential, proved)));
    }
    let key = key.to_string();
    let fresh = state
        .caches
        .device_credentials
        .reload(key.clone(), || find_credential(state, &key, image))
        .await?;
    Ok(fresh.and_then(|fresh| proves(&fresh).map(|proved| (fresh, proved))))
}

/// Accepts a proved secret: using the pending one promotes it (completing a rotation) before the
/// request goes on. A pending secret that this call did not promote is accepted only if another
/// request promoted it meanwhile (it is the current secret now); one replaced since (a newer
/// package was minted) is refused, although a stale cached credential still named it.
pub async fn accept(
    state: &AppState,
    credential: DeviceCredential,
    proved: SecretMatch,
) -> Result<DeviceCaller, ApiError> {
    if let SecretMatch::Pending(hash) = &proved {
        let promoted =
            rotation::complete(&state.db, &state.config.rotation, credential.id, hash).await;
        // Whatever happened, the cached credential may be stale now.
        state.caches.device_changed(&credential.key);
        if !promoted? {
            let now_current = cached_credential(state, &credential.key, None)
                .await?
                .is_some_and(|fresh| {
                    fresh.id == credential.id && fresh.secret_hash.as_deref() == Some(hash)
                });
            if !now_current {
                return Err(invalid_device_credentials());
            }
        }
    }
    let proved_secret = match proved {
        SecretMatch::Current => credential.secret_hash,
        SecretMatch::Pending(hash) => Some(hash),
    };
    Ok(DeviceCaller {
        id: credential.id,
        key: credential.key,
        device_model_id: credential.device_model_id,
        proved_secret,
    })
}

/// A token iotsupport issued: valid signature and lifetime, `azp` naming an existing device of
/// that model, and minted with the device's current or pending secret.
async fn device_from_own_token(
    state: &AppState,
    claims: &DeviceClaims,
    image: Option<&ImageSlot>,
) -> Result<DeviceCaller, ApiError> {
    let client = ClientId::parse(&claims.azp).ok_or_else(invalid_device_credentials)?;
    let (credential, proved) = prove(state, client.device_key.as_str(), image, |c| {
        (c.model_code == client.model_code.as_str())
            .then(|| credentials::match_sid(c, &claims.sid))
            .flatten()
    })
    .await?
    .ok_or_else(|| {
        ApiError::AuthenticationRequired(
            "Invalid credentials: the secret this token was minted with was replaced".into(),
        )
    })?;
    accept(state, credential, proved).await
}

/// A device JWT of the OIDC issuer: `azp` names the device and its model, and both must match.
async fn device_from_oidc(
    state: &AppState,
    oidc: &crate::oidc::OidcVerifier,
    token: &str,
    image: Option<&ImageSlot>,
) -> Result<DeviceCaller, ApiError> {
    let verified = oidc.verify(token).await.map_err(oidc_failure)?;
    let (model_code, key) = verified.device().ok_or_else(|| {
        ApiError::AuthenticationRequired("Token does not identify a device".into())
    })?;
    let credential = cached_credential(state, &key, image)
        .await?
        .filter(|c| c.model_code == model_code)
        .ok_or_else(invalid_device_credentials)?;
    Ok(DeviceCaller {
        id: credential.id,
        key: credential.key,
        device_model_id: credential.device_model_id,
        proved_secret: None,
    })
}

/// The header a device may send on any request to say which firmware version it runs.
pub const FIRMWARE_VERSION_HEADER: &str = "x-firmware-version";

/// The version in `X-Firmware-Version`, if the request has one that is a valid firmware version
/// (`FirmwareVersion::parse`); anything else is ignored rather than failing the request.
/// The version a device request's `X-Firmware-Version` header reports, if it is a valid one.
pub fn reported_version(headers: &http::HeaderMap) -> Option<FirmwareVersion> {
    let value = headers.get(FIRMWARE_VERSION_HEADER)?.to_str().ok()?;
    FirmwareVersion::parse(value).ok()
}

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;
    /// Authenticates the device, then notes that it was heard from (and the version it reports)
    /// for `crate::presence`, which writes it in the background.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        device_heard_from(parts, state, None).await
    }
}

/// A device on the OTA routes: as [`DeviceCaller`], and, when its credential was read from the
/// database for this request (the lookup cache off or missed), its model's current image read in
/// the same query.
pub struct OtaCaller {
    pub device: DeviceCaller,
    pub image: Option<CurrentImage>,
}

impl FromRequestParts<AppState> for OtaCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let slot = ImageSlot::new();
        let device = device_heard_from(parts, state, Some(&slot)).await?;
        Ok(OtaCaller {
            device,
            image: slot.into_inner(),
        })
    }
}

async fn device_heard_from(
    parts: &Parts,
    state: &AppState,
    image: Option<&ImageSlot>,
) -> Result<DeviceCaller, ApiError> {
    let device = authenticate_device(parts, state, image).await?;
    let version = reported_version(&parts.headers);
    state
        .presence
        .observe(device.id, version.as_ref().map(FirmwareVersion::as_str));
    Ok(device)
}

async fn authenticate_device(
    parts: &Parts,
    state: &AppState,
    image: Option<&ImageSlot>,
) -> Result<DeviceCaller, ApiError> {
    if let Some(token) = bearer(parts)? {
        if looks_like_jwt(token) {
            let issuer = match (state.tokens.issuer().await, &state.oidc) {
                (Ok(issuer), _) => issuer,
                // Our key is unusable (a stored one that cannot be read): our tokens cannot be
                // checked, the identity provider's still can. A database that is away is a 503
                // for every token, as the device should retry, not drop its token.
                (Err(TokenError::Key(_)), Some(oidc)) => {
                    return device_from_oidc(state, oidc, token, image).await
                }
                (Err(e), _) => return Err(issuer_error(e)),
            };
            match issuer.check(token) {
                TokenCheck::Valid(claims) => {
                    return device_from_own_token(state, &claims, image).await
                }
                TokenCheck::Invalid(e) => {
                    return Err(ApiError::AuthenticationRequired(format!(
                        "Invalid credentials: {e}"
                    )))
                }
                TokenCheck::NotOurs => {}
            }
            if let Some(oidc) = &state.oidc {
                return device_from_oidc(state, oidc, token, image).await;
            }
            return Err(ApiError::AuthenticationRequired(
                "Invalid credentials: token signed with an unknown key".into(),
            ));
        }
        let (key, secret) = token
            .split_once('.')
            .ok_or_else(invalid_device_credentials)?;
        if key.len() != 8 {
            return Err(invalid_device_credentials());
        }
        // Wrong secrets slow down this device key at this address, as at the token endpoint
        // (`crate::credentials::throttle`): the key is no secret (it is in the device's MQTT
        // client id), and its secret could otherwise be guessed here at any rate.
        // While nobody has failed (the usual case) the key is not even built.
        let throttle = &state.token_failures;
        let throttle_key = || {
            format!(
                "{key} {}",
                super::client_addr::ClientScope::of(parts, state).0
            )
        };
        let known =
            if throttle.holds_failures() {
                match throttle.check_known(&throttle_key()) {
                    Ok(known) => known,
                    Err(wait) => return Err(ApiError::TooManyRequests {
                        message:
                            "Too many wrong secrets for this device from this address; retry later"
                                .into(),
                        retry_after: wait.as_secs().max(1),
                    }),
                }
            } else {
                false
            };
        let Some((credential, proved)) =
            prove(state, key, image, |c| credentials::match_secret(c, secret)).await?
        else {
            throttle.failed(&throttle_key());
            return Err(invalid_device_credentials());
        };
        if known {
            throttle.succeeded(&throttle_key());
        }
        return accept(state, credential, proved).await;
    }
    if state.config.iot_device_key_auth {
        let query = parts.uri.query().unwrap_or("");
        let key = url_query_value(query, "device_key");
        if let Some(key) = key.filter(|k| k.len() == 8) {
            if let Some(device) = find_credential(state, &key, image).await? {
                return Ok(DeviceCaller {
                    id: device.id,
                    key: device.key,
                    device_model_id: device.device_model_id,
                    proved_secret: None,
                });
            }
        }
        return Err(invalid_device_credentials());
    }
    Err(ApiError::AuthenticationRequired(
        "Device authentication required".into(),
    ))
}

fn url_query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }

    #[test]
    fn query_values_are_found_by_exact_name() {
        assert_eq!(
            url_query_value("a=1&device_key=abcd2345", "device_key").as_deref(),
            Some("abcd2345")
        );
        assert_eq!(url_query_value("xdevice_key=1", "device_key"), None);
    }
}
