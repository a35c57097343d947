//! The browser side of admin sessions (see `crate::sessions`): the cookie, where the request
//! came from, and the CSRF check of cookie-authenticated writes.
//!
//! - The cookie `iotsupport_session` is `HttpOnly`, `SameSite=Lax` (sent on top-level navigation,
//!   so the provider's redirect back carries it; never on cross-site subrequests or form posts),
//!   `Path=/`, and `Secure` when the request came over TLS (`SESSION_COOKIE_SECURE`).
//! - A write (any method but GET, HEAD, OPTIONS) authenticated by the cookie must prove it comes
//!   from our own pages: an `X-CSRF-Token` header equal to the session's token (our UI sends it),
//!   or an `Origin` (else `Referer`) naming this host (what browsers send with every cross-origin
//!   and same-origin write; the Python UI relies on it). A request with neither is refused.
//! - Whatever proves the caller (a bearer token an authenticating proxy adds, or nothing in open
//!   mode), a write the browser says came from another site is refused
//!   (`super::auth`, [`from_another_site`]); in open mode on loopback the request's `Host` must
//!   also name this machine ([`addressed_locally`], against DNS rebinding).

use cookie::Cookie;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method};
use subtle::ConstantTimeEq;

use crate::config::{CookieSecure, SessionSettings};

pub const COOKIE_NAME: &str = "iotsupport_session";
/// The header our UI's writes carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE_NAME)
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// The cookies that tie an OIDC sign-in to the browser that started it: its `state`, sent back
/// only to the callback. A callback whose `state` is not this browser's is refused, so nobody can
/// finish their own sign-in in someone else's browser (login CSRF). Each sign-in has a cookie of
/// its own, named after its state (`iotsupport_sign_in_<12 hex digits>`): several tabs signing in
/// at once (a browser restoring them, each sent back by the provider's single sign-on) must not
/// overwrite each other's, which left all but the last "started in another browser".
pub const FLOW_COOKIE_NAME: &str = "iotsupport_sign_in";
const CALLBACK_PATH: &str = "/api/auth/callback";

fn flow_cookie_name(state: &str) -> String {
    let hash = crate::sessions::sha256_hex(state);
    format!("{FLOW_COOKIE_NAME}_{}", &hash[..12])
}

/// `Set-Cookie` for a sign-in just started with `state`, for its ten minutes.
pub fn set_flow_cookie(state: &str, secure: bool) -> HeaderValue {
    cookie_header(&flow_cookie_name(state), state, CALLBACK_PATH, 600, secure)
}

/// `Set-Cookie` that removes the sign-in `state`'s cookie (the callback used it).
pub fn clear_flow_cookie(state: &str, secure: bool) -> HeaderValue {
    cookie_header(&flow_cookie_name(state), "", CALLBACK_PATH, 0, secure)
}

/// Whether the callback's `state` is one this browser's sign-in cookies hold (its own cookie, or
/// the single cookie of releases before per-sign-in cookies, for sign-ins started before an
/// upgrade).
pub fn flow_is_this_browsers(headers: &HeaderMap, state: &str) -> bool {
    [flow_cookie_name(state).as_str(), FLOW_COOKIE_NAME]
        .into_iter()
        .filter_map(|name| cookie_named(headers, name))
        .any(|held| bool::from(held.as_bytes().ct_eq(state.as_bytes())))
}

/// The first value of a proxy header, trimmed (`X-Forwarded-Proto: https, http` → `https`).
fn forwarded<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .split(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A parameter of the first element of RFC 7239's `Forwarded` header, the standard form of the
/// `X-Forwarded-*` headers that some proxies send instead (`Forwarded: for=…;proto=https;
/// host=iot.example.com`): `proto` or `host`, unquoted.
fn forwarded_param<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let first = headers
        .get(http::header::FORWARDED)?
        .to_str()
        .ok()?
        .split(',')
        .next()?;
    first
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The host (and port) the browser addressed: `X-Forwarded-Host` (or `Forwarded`'s `host`) from
/// a proxy, else `Host`.
pub fn request_host(headers: &HeaderMap) -> Option<String> {
    forwarded(headers, "x-forwarded-host")
        .or_else(|| forwarded_param(headers, "host"))
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok())
        .map(|h| h.to_ascii_lowercase())
}

/// Whether the browser reached us over TLS, as far as a proxy tells (`X-Forwarded-Proto`, or
/// `Forwarded`'s `proto`).
pub fn request_is_https(headers: &HeaderMap) -> bool {
    forwarded(headers, "x-forwarded-proto")
        .or_else(|| forwarded_param(headers, "proto"))
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// Why [`public_origin`] names no origin.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPublicOrigin {
    /// No `Host` (nor a trusted proxy's host) to build it from.
    NoHost,
    /// The host is not this machine's and not in `ALLOWED_HOSTS`.
    NotAllowed(String),
}

/// `scheme://host` for a URL this service hands to others when `OIDC_REDIRECT_URL` is unset: the
/// OIDC sign-in callback, where the provider sends the browser after signing out. A proxy's
/// `X-Forwarded-Proto`/`X-Forwarded-Host`/`Forwarded` count only when the request came from a
/// trusted proxy (`from_trusted_proxy`, `TRUSTED_PROXIES`), and with `ALLOWED_HOSTS` set the host
/// must be local or one of them ([`addressed_locally`]'s rule): a client naming its own host
/// would otherwise have the provider send a sign-in code there.
pub fn public_origin(
    headers: &HeaderMap,
    from_trusted_proxy: bool,
    allowed: &[String],
) -> Result<String, NoPublicOrigin> {
    let (host, https) = if from_trusted_proxy {
        (request_host(headers), request_is_https(headers))
    } else {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        (host, false)
    };
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or(NoPublicOrigin::NoHost)?;
    if !allowed.is_empty() && !host_is_local_or(&host, allowed) {
        return Err(NoPublicOrigin::NotAllowed(host));
    }
    let scheme = if https { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}

/// Whether the cookie should be `Secure` for this request.
pub fn cookie_secure(settings: &SessionSettings, headers: &HeaderMap) -> bool {
    match settings.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => {
            request_is_https(headers)
                || settings
                    .oidc_redirect_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
        }
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(value: &str, max_age: std::time::Duration, secure: bool) -> HeaderValue {
    let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    cookie_header(COOKIE_NAME, value, "/", seconds, secure)
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    cookie_header(COOKIE_NAME, "", "/", 0, secure)
}

/// An `HttpOnly`, `SameSite=Lax` cookie for `path`, kept `max_age` seconds (0 removes it).
fn cookie_header(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `host[:port]` of an absolute URL (`Origin` or `Referer`), lowercased.
fn authority_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// Whether the request comes from a page of this host: the browser says so
/// (`Sec-Fetch-Site: same-origin`), or `Origin`, else `Referer`, names it.
pub fn same_origin(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(b"same-origin") => return true,
        // The browser says it is not: no Origin or Referer overrides that.
        Some(b"cross-site" | b"same-site") => return false,
        _ => {}
    }
    let Some(host) = request_host(headers) else {
        return false;
    };
    let claimed = headers
        .get(http::header::ORIGIN)
        .or_else(|| headers.get(http::header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(authority_of);
    claimed.is_some_and(|a| a == host)
}

/// Whether the browser says the request came from another site. A navigation typed or
/// bookmarked (`Sec-Fetch-Site: none`), one from this host's pages, and a client that sends none
/// of these headers (curl, CI) are not.
pub fn from_another_site(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(b"same-origin" | b"none") => false,
        Some(_) => true,
        None => {
            (headers.contains_key(http::header::ORIGIN)
                || headers.contains_key(http::header::REFERER))
                && !same_origin(headers)
        }
    }
}

/// Whether the request changes state: a write (any method but GET, HEAD, OPTIONS), or a GET on
/// a route marked [`StateChangingGet`].
pub fn changes_state(parts: &Parts) -> bool {
    !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || parts.extensions.get::<StateChangingGet>().is_some()
}

/// Whether the request's own `Host` (not a proxy's `X-Forwarded-Host`, which a page may set on
/// its own requests) names this machine: `localhost` (or a name under it), an IP address, or
/// one of the `allowed` names (`ALLOWED_HOSTS`). A name that resolves to 127.0.0.1 only because
/// its owner made it so (DNS rebinding) does not. A request without `Host` comes from no browser.
pub fn addressed_locally(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(http::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    host_is_local_or(host, allowed)
}

/// Whether `host` (`name[:port]`, `[v6]:port`) is `localhost` (or a name under it), an IP
/// address, or one of `allowed`.
fn host_is_local_or(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => {
            return bracketed
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

/// Marks a GET route that changes state (it mints a secret): for a cookie caller it gets the
/// CSRF check of a write, since `SameSite=Lax` sends the cookie on a top-level navigation from
/// another site. Put on such routes with [`mark_state_changing_get`].
#[derive(Clone, Copy, Debug)]
pub struct StateChangingGet;

/// Middleware (`route_layer`) that marks its routes' requests [`StateChangingGet`].
pub async fn mark_state_changing_get(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    request.extensions_mut().insert(StateChangingGet);
    next.run(request).await
}

/// Whether a cookie-authenticated request may go on: reads always (except on routes marked
/// [`StateChangingGet`]); writes with the session's CSRF token in [`CSRF_HEADER`] or from a page
/// of this host (see the module docs).
pub fn csrf_ok(parts: &Parts, csrf_token: &str) -> bool {
    if !changes_state(parts) {
        return true;
    }
    // A token from an older session (a page loaded before signing in again in another tab) does
    // not match; the browser's own word that the write comes from this host still counts.
    if let Some(sent) = parts.headers.get(CSRF_HEADER) {
        if bool::from(sent.as_bytes().ct_eq(csrf_token.as_bytes())) {
            return true;
        }
    }
    same_origin(&parts.headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; iotsupport_session=abc; b=2")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&headers(&[("cookie", "a=1")])), None);
    }

    #[test]
    fn origins_must_name_this_host() {
        let ok = headers(&[
            ("host", "iot.local:3101"),
            ("origin", "http://iot.local:3101"),
        ]);
        assert!(same_origin(&ok));
        let other = headers(&[
            ("host", "iot.local:3101"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!same_origin(&other));
        let port = headers(&[
            ("host", "iot.local:3101"),
            ("origin", "http://iot.local:3102"),
        ]);
        assert!(!same_origin(&port));
        let referer = headers(&[
            ("host", "iot.local"),
            ("referer", "https://iot.local/devices/1"),
        ]);
        assert!(same_origin(&referer));
        let proxied = headers(&[
            ("host", "127.0.0.1:3101"),
            ("x-forwarded-host", "iot.example.com"),
            ("origin", "https://iot.example.com"),
        ]);
        assert!(same_origin(&proxied));
        assert!(!same_origin(&headers(&[("host", "iot.local")])));
    }

    #[test]
    fn rfc_7239_forwarded_names_the_scheme_and_host_when_no_x_forwarded_header_does() {
        let standard = headers(&[
            ("host", "127.0.0.1:3101"),
            (
                "forwarded",
                "for=192.0.2.60;Proto=https;host=\"IoT.example.com\", for=198.51.100.17",
            ),
        ]);
        assert!(request_is_https(&standard));
        assert_eq!(
            public_origin(&standard, true, &[]).as_deref(),
            Ok("https://iot.example.com")
        );
        // The X- headers win where both are sent; only the first element counts.
        let both = headers(&[
            ("host", "127.0.0.1:3101"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "proto=https"),
        ]);
        assert!(!request_is_https(&both));
        let later = headers(&[("host", "iot.local"), ("forwarded", "for=a, proto=https")]);
        assert!(!request_is_https(&later));
        assert_eq!(request_host(&later).as_deref(), Some("iot.local"));
    }

    #[test]
    fn a_public_origin_believes_forwarded_headers_from_a_trusted_proxy_only() {
        let h = headers(&[
            ("host", "iot.lan:3101"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            public_origin(&h, true, &[]).as_deref(),
            Ok("https://evil.example")
        );
        assert_eq!(
            public_origin(&h, false, &[]).as_deref(),
            Ok("http://iot.lan:3101")
        );
        // With ALLOWED_HOSTS, only those names (and local ones) are handed out.
        let allowed = ["iot.example.com".to_string()];
        assert_eq!(
            public_origin(&h, true, &allowed),
            Err(NoPublicOrigin::NotAllowed("evil.example".into()))
        );
        let proxied = headers(&[
            ("host", "127.0.0.1:3101"),
            ("x-forwarded-host", "IoT.example.com"),
        ]);
        assert_eq!(
            public_origin(&proxied, true, &allowed).as_deref(),
            Ok("http://iot.example.com")
        );
        assert_eq!(
            public_origin(&headers(&[("host", "127.0.0.1:3101")]), false, &allowed).as_deref(),
            Ok("http://127.0.0.1:3101")
        );
        assert_eq!(
            public_origin(&HeaderMap::new(), false, &[]),
            Err(NoPublicOrigin::NoHost)
        );
    }

    #[test]
    fn the_cookie_is_http_only_and_lax() {
        let set = set_cookie("v", std::time::Duration::from_secs(60), true);
        let text = set.to_str().unwrap();
        for part in [
            "iotsupport_session=v",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!set_cookie("v", std::time::Duration::from_secs(1), false)
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[test]
    fn only_hosts_that_name_this_machine_are_local() {
        for host in [
            "localhost",
            "LOCALHOST:3101",
            "localhost.",
            "ui.localhost:8080",
            "127.0.0.1",
            "127.0.0.1:3101",
            "192.168.1.20:3101",
            "[::1]:3101",
            "[::1]",
        ] {
            assert!(
                addressed_locally(&headers(&[("host", host)]), &[]),
                "{host}"
            );
        }
        for host in [
            "evil.example",
            "evil.example:3101",
            "localhost.evil.example",
            "127.0.0.1.nip.io:3101",
            "[not-an-ip]:3101",
            "",
        ] {
            assert!(
                !addressed_locally(&headers(&[("host", host)]), &[]),
                "{host}"
            );
        }
        // No Host at all: no browser sent it.
        assert!(addressed_locally(&HeaderMap::new(), &[]));
        // Names the operator allowed (a proxy in front that passes its own Host on).
        let allowed = ["iot.example.com".to_string()];
        assert!(addressed_locally(
            &headers(&[("host", "IOT.example.com:443")]),
            &allowed
        ));
        assert!(!addressed_locally(
            &headers(&[("host", "evil.example")]),
            &allowed
        ));
    }
}
