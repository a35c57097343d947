//! Settings of admin browser sessions (issue 16): `SESSION_LIFETIME_HOURS`,
//! `SESSION_COOKIE_SECURE`, `OIDC_REDIRECT_URL`. The OIDC client itself (`OIDC_CLIENT_ID`,
//! `OIDC_CLIENT_SECRET`, `OIDC_SCOPES`) is part of `crate::oidc::OidcSettings`.

use std::time::Duration;

use super::env::{invalid, ConfigError, Env};

/// When the session cookie gets the `Secure` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSecure {
    /// When the request came over TLS as far as we can tell: `X-Forwarded-Proto: https` (or
    /// `Forwarded: proto=https`) from a
    /// proxy, or an `https` origin in `OIDC_REDIRECT_URL`.
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// How long a sign-in lasts (`SESSION_LIFETIME_HOURS`, default 12, at most 720).
    pub lifetime: Duration,
    /// `SESSION_COOKIE_SECURE`: `auto` (default), `true` or `false`.
    pub cookie_secure: CookieSecure,
    /// `OIDC_REDIRECT_URL`: the callback URL registered at the provider
    /// (`https://iot.example.com/api/auth/callback`). Unset: derived from each sign-in request's
    /// host (and `X-Forwarded-Proto`/`X-Forwarded-Host` from a proxy).
    pub oidc_redirect_url: Option<String>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            lifetime: Duration::from_secs(12 * 3600),
            cookie_secure: CookieSecure::Auto,
            oidc_redirect_url: None,
        }
    }
}

pub(super) fn sessions(env: &Env) -> Result<SessionSettings, ConfigError> {
    let hours: f64 = env.parse("SESSION_LIFETIME_HOURS", 12.0)?;
    if !(hours > 0.0 && hours <= 720.0) {
        return Err(invalid(
            "SESSION_LIFETIME_HOURS",
            "must be more than 0 and at most 720 hours",
        ));
    }
    let cookie_secure = match env
        .get("SESSION_COOKIE_SECURE")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("auto") => CookieSecure::Auto,
        Some("1" | "true" | "yes" | "on") => CookieSecure::Always,
        Some("0" | "false" | "no" | "off") => CookieSecure::Never,
        Some(other) => {
            return Err(invalid(
                "SESSION_COOKIE_SECURE",
                format!("expected auto, true or false, got {other:?}"),
            ))
        }
    };
    let oidc_redirect_url = match env.get("OIDC_REDIRECT_URL") {
        None => None,
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Some(url.to_string())
        }
        Some(_) => {
            return Err(invalid(
                "OIDC_REDIRECT_URL",
                "must be an http:// or https:// URL",
            ))
        }
    };
    Ok(SessionSettings {
        lifetime: Duration::from_secs_f64(hours * 3600.0),
        cookie_secure,
        oidc_redirect_url,
    })
}
