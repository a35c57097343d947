//! Admin browser sessions (issue 16): what signing in creates and a cookie names.
//!
//! - A session is created by signing in with `ADMIN_TOKEN` (the login form) or through the OIDC
//!   authorization-code flow with PKCE ([`crate::oidc::login`]). Its cookie value is 32 random
//!   bytes; the database keeps only their SHA-256, with the identity the sign-in established
//!   (subject, name, email, roles), a CSRF token and an absolute expiry (`SESSION_LIFETIME_HOURS`).
//!   Sessions live in the database, so they survive restarts and work on every process.
//! - A session made with `ADMIN_TOKEN` remembers the token's SHA-256 and ends when the configured
//!   token changes. Roles of an OIDC session are those granted at sign-in, until it expires.
//! - An OIDC sign-in in progress (state, PKCE verifier, nonce, where to return) is stored until its
//!   callback, which any process may receive, for at most [`FLOW_LIFETIME`]; a state works once,
//!   and only in the browser that holds it in its sign-in cookie (`crate::http::session`).

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::sessions::{self as queries, LoginFlowRow, SessionRow};
use crate::db::{self, Db, DbError};

/// How long a sign-in may take between the redirect to the provider and its callback.
pub const FLOW_LIFETIME: Duration = Duration::minutes(10);

/// How the person signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMethod {
    AdminToken,
    Oidc,
}

impl SessionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMethod::AdminToken => "admin_token",
            SessionMethod::Oidc => "oidc",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "admin_token" => Some(SessionMethod::AdminToken),
            "oidc" => Some(SessionMethod::Oidc),
            _ => None,
        }
    }
}

/// Who signed in, as the sign-in established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub method: SessionMethod,
    /// What the session holds only as long as it is configured, its hash stored: `AdminToken`,
    /// the token signed in with; `Oidc`, the provider (`crate::oidc::OidcSettings::binding`).
    pub credential: Option<String>,
    /// `Oidc`: the ID token, for the provider's logout.
    pub id_token: Option<String>,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub method: SessionMethod,
    pub csrf_token: String,
    pub id_token: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    data_encoding::BASE64URL_NOPAD.encode(&buf)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The PKCE `code_challenge` of `verifier` for method S256 (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(verifier.as_bytes()))
}

/// Creates a session for `who` lasting `lifetime`; returns the cookie value and the session.
pub async fn create(
    db: &Db,
    who: SignedIn,
    lifetime: std::time::Duration,
) -> Result<(String, Session), DbError> {
    let now = db::now();
    // Sign-ins are rare: a good moment to forget what expired.
    queries::purge(db, now, now - FLOW_LIFETIME).await?;
    let cookie = random_token(32);
    let expires_at = now + Duration::from_std(lifetime).unwrap_or(Duration::hours(12));
    let session = Session {
        subject: who.subject,
        name: who.name.and_then(fit_column),
        email: who.email.and_then(fit_column),
        roles: who.roles,
        method: who.method,
        csrf_token: random_token(32),
        id_token: who.id_token,
        expires_at,
    };
    let row = SessionRow {
        id_hash: sha256_hex(&cookie),
        subject: session.subject.clone(),
        name: session.name.clone(),
        email: session.email.clone(),
        roles: serde_json::Value::from(session.roles.clone()).to_string(),
        method: session.method.as_str().to_string(),
        credential_hash: who.credential.as_deref().map(sha256_hex),
        csrf_token: session.csrf_token.clone(),
        id_token: session.id_token.clone(),
        created_at: now,
        expires_at,
    };
    queries::insert_session(db, &row).await?;
    Ok((cookie, session))
}

/// The longest subject, name and email a session stores (their columns' size).
pub const MAX_IDENTITY_CHARS: usize = 255;

/// A name or email as its column can hold it: NUL removed (PostgreSQL text cannot hold it), cut
/// to [`MAX_IDENTITY_CHARS`]; `None` if nothing is left. An identity provider decides these, and
/// a long display name must not make signing in fail.
fn fit_column(value: String) -> Option<String> {
    let value: String = value
        .chars()
        .filter(|&c| c != '\0')
        .take(MAX_IDENTITY_CHARS)
        .collect();
    (!value.is_empty()).then_some(value)
}

/// Whether a subject can name a session: it cannot be cut like a name, since it is who the
/// person is.
pub fn subject_fits(subject: &str) -> bool {
    !subject.is_empty() && !subject.contains('\0') && subject.chars().count() <= MAX_IDENTITY_CHARS
}

/// The live session named by `cookie`. `admin_token` is the configured `ADMIN_TOKEN`: a session
/// made with another token (or when none is configured any more) is ended. `oidc` is the
/// configured provider (`crate::oidc::OidcSettings::binding`): a session made through another
/// provider, client or audience (switched after an incident, say), or while none is configured
/// any more, is ended too. Sessions made before providers were recorded are kept while OIDC is on.
pub async fn find(
    db: &Db,
    cookie: &str,
    admin_token: Option<&str>,
    oidc: Option<&str>,
) -> Result<Option<Session>, DbError> {
    if cookie.is_empty() || cookie.len() > 128 {
        return Ok(None);
    }
    let id_hash = sha256_hex(cookie);
    let Some(row) = queries::find_session(db, &id_hash, db::now()).await? else {
        return Ok(None);
    };
    let still_allowed = if row.method == SessionMethod::AdminToken.as_str() {
        let current = admin_token.map(sha256_hex);
        current.is_some() && current == row.credential_hash
    } else {
        match (oidc, &row.credential_hash) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(provider), Some(made_with)) => sha256_hex(provider) == *made_with,
        }
    };
    if !still_allowed {
        queries::delete_session(db, &id_hash).await?;
        return Ok(None);
    }
    Ok(to_session(row))
}

/// Ends the session named by `cookie`; returns it if there was one.
pub async fn end(db: &Db, cookie: &str) -> Result<Option<Session>, DbError> {
    if cookie.is_empty() || cookie.len() > 128 {
        return Ok(None);
    }
    Ok(queries::delete_session(db, &sha256_hex(cookie))
        .await?
        .and_then(to_session))
}

fn to_session(row: SessionRow) -> Option<Session> {
    Some(Session {
        subject: row.subject,
        name: row.name,
        email: row.email,
        roles: serde_json::from_str(&row.roles).ok()?,
        method: SessionMethod::parse(&row.method)?,
        csrf_token: row.csrf_token,
        id_token: row.id_token,
        expires_at: row.expires_at,
    })
}

/// An OIDC sign-in in progress.
#[derive(Debug, Clone)]
pub struct LoginFlow {
    pub state: String,
    pub pkce_verifier: String,
    pub nonce: String,
    /// The callback URL the provider was given (the token request must repeat it).
    pub redirect_uri: String,
    /// Where the browser goes once signed in (a local path).
    pub return_to: String,
}

/// Sign-ins in progress at most (each waits up to [`FLOW_LIFETIME`] for its callback): anyone may
/// start one, so their rows must not grow without bound. At the bound the oldest make room: a
/// full table never refuses a sign-in, it shortens the wait of the ones nobody finished.
pub const MAX_FLOWS_IN_PROGRESS: i64 = 10_000;

/// Sign-ins in progress one client address may have: a browser has one or two, an office behind
/// one address a few. Starting another drops that address's oldest, so one address can neither
/// fill the table nor push out anybody else's sign-ins; nor is anybody ever refused (behind a
/// proxy that is not in `TRUSTED_PROXIES`, every browser has the proxy's address, and a refusal
/// would lock them all out).
pub const MAX_FLOWS_PER_CLIENT: i64 = 30;

/// Starts a sign-in for the client `client_scope`: fresh state, PKCE verifier and nonce, stored
/// until the callback. Expired sign-ins are forgotten first; then the client's oldest beyond
/// [`MAX_FLOWS_PER_CLIENT`], and at [`MAX_FLOWS_IN_PROGRESS`] the oldest of all.
pub async fn start_flow(
    db: &Db,
    client_scope: &str,
    redirect_uri: &str,
    return_to: &str,
) -> Result<LoginFlow, DbError> {
    queries::purge_flows(db, db::now() - FLOW_LIFETIME).await?;
    let from_client = queries::count_flows_from(db, client_scope).await?;
    if from_client >= MAX_FLOWS_PER_CLIENT {
        let dropped = queries::drop_oldest_flows_from(
            db,
            client_scope,
            from_client - MAX_FLOWS_PER_CLIENT + 1,
        )
        .await?;
        tracing::info!(client = %client_scope, dropped, "sign_ins_in_progress_of_a_client_dropped");
    }
    let excess = queries::count_flows(db).await? - MAX_FLOWS_IN_PROGRESS + 1;
    if excess > 0 {
        let dropped = queries::drop_oldest_flows(db, excess).await?;
        tracing::warn!(dropped, "sign_ins_in_progress_dropped");
    }
    let flow = LoginFlow {
        state: random_token(24),
        pkce_verifier: random_token(48),
        nonce: random_token(24),
        redirect_uri: redirect_uri.to_string(),
        return_to: return_to.to_string(),
    };
    queries::insert_flow(
        db,
        &LoginFlowRow {
            state_hash: sha256_hex(&flow.state),
            pkce_verifier: flow.pkce_verifier.clone(),
            nonce: flow.nonce.clone(),
            redirect_uri: flow.redirect_uri.clone(),
            return_to: flow.return_to.clone(),
            created_at: db::now(),
            client_scope: client_scope.to_string(),
        },
    )
    .await?;
    Ok(flow)
}

/// Takes the sign-in named by `state` if it is still fresh (a state works once).
pub async fn take_flow(db: &Db, state: &str) -> Result<Option<LoginFlow>, DbError> {
    if state.is_empty() || state.len() > 128 {
        return Ok(None);
    }
    let Some(row) = queries::take_flow(db, &sha256_hex(state)).await? else {
        return Ok(None);
    };
    if row.created_at < db::now() - FLOW_LIFETIME {
        return Ok(None);
    }
    Ok(Some(LoginFlow {
        state: state.to_string(),
        pkce_verifier: row.pkce_verifier,
        nonce: row.nonce,
        redirect_uri: row.redirect_uri,
        return_to: row.return_to,
    }))
}

/// A local path to return to after signing in: `/…` but not `//…` (another host) or `/\…`, and
/// no control characters; anything else is `/`. Never the API (`/api…`): the redirect after a
/// sign-in is a same-origin request, and a link that returned into an API `GET` that acts (the
/// provisioning package mints a secret) would act with the new session. Pages only.
pub fn safe_return_path(requested: Option<&str>) -> String {
    match requested {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !is_api_path(path)
                && path.len() <= 2048
                && !path.chars().any(char::is_control) =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// `/api`, `/api/…`, `/api?…`: the API's routes, not a page to return to.
fn is_api_path(path: &str) -> bool {
    path.strip_prefix("/api")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636 Appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(
            safe_return_path(Some("/devices/3?tab=logs")),
            "/devices/3?tab=logs"
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "devices",
            "/a\nb",
            "/api/devices/7/provisioning?partition_size=24576",
            "/api",
            "/api?x=1",
        ] {
            assert_eq!(safe_return_path(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_return_path(None), "/");
        // A page whose name starts like the API's is a page.
        assert_eq!(safe_return_path(Some("/apiary")), "/apiary");
    }

    #[test]
    fn tokens_are_random_and_url_safe() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token(32));
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
