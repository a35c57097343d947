//! Browser sign-in and sign-out (issue 16): `GET|POST /api/auth/login`, `GET /api/auth/callback`,
//! `GET|POST /api/auth/logout`. Both UIs use them: the Python service's UI sends the browser to
//! `/api/auth/login?redirect=…` when `/api/auth/self` answers 401 and to `/api/auth/logout` to sign
//! out; ours does the same.
//!
//! `GET /api/auth/login` depends on the configured authentication:
//! 1. `AUTH_LOGIN_URL` set: 302 there with `redirect` passed on (an authenticating proxy signs in);
//! 2. OIDC: 302 to the provider's authorization endpoint (code flow with PKCE, `crate::oidc::login`);
//!    its callback creates the session;
//! 3. `ADMIN_TOKEN` (and no OIDC): a sign-in form, drawn in the web UI's shell by
//!    `super::ui::sign_in`; posting the token creates the session;
//! 4. open mode: straight back to `redirect`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use utoipa::IntoParams;

use super::client_addr::{ClientScope, ViaTrustedProxy};
use super::error::ApiError;
use super::extract::{Form, Query};
use super::session::{self, NoPublicOrigin};
use crate::sessions::{self, SessionMethod, SignedIn};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/login", get(login).post(login_with_token))
        .route("/api/auth/callback", get(callback))
        .route("/api/auth/logout", get(logout).post(logout))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LoginQuery {
    /// Where the browser should return after signing in (a local path).
    pub redirect: Option<String>,
    /// Set by a failed attempt: `invalid`, `throttled`.
    pub error: Option<String>,
}

/// The longest sign-in callback URL (built from `Host`/`X-Forwarded-*` without
/// `OIDC_REDIRECT_URL`).
const MAX_REDIRECT_URI: usize = 2048;

/// Starts signing in (see the module docs for what each configuration does).
#[utoipa::path(get, path = "/api/auth/login", tag = "auth", params(LoginQuery),
    responses((status = 302, description = "To the identity provider, the configured login URL, or back"),
        (status = 200, description = "The ADMIN_TOKEN sign-in form (text/html)")))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientScope,
    ViaTrustedProxy(via_proxy): ViaTrustedProxy,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let return_to = sessions::safe_return_path(query.redirect.as_deref());
    if let Some(base) = &state.config.auth_login_url {
        let separator = if base.contains('?') { '&' } else { '?' };
        // The cleaned path, as everywhere else: the login page behind this URL may send the
        // browser wherever it is told.
        let target = match &query.redirect {
            Some(_) => format!("{base}{separator}redirect={}", encode(&return_to)),
            None => base.clone(),
        };
        return Ok(found(&target));
    }
    if let Some(oidc) = &state.oidc {
        let redirect_uri = match &state.config.sessions.oidc_redirect_url {
            Some(url) => url.clone(),
            None => {
                let origin =
                    session::public_origin(&headers, via_proxy, &state.config.allowed_hosts)
                        .map_err(|e| match e {
                            NoPublicOrigin::NoHost => ApiError::validation(
                                "The request has no Host header to build the sign-in callback \
                                 from (set OIDC_REDIRECT_URL)",
                            ),
                            NoPublicOrigin::NotAllowed(host) => ApiError::validation(format!(
                                "The sign-in callback would name host {host:.200}, which is not \
                                 in ALLOWED_HOSTS (set OIDC_REDIRECT_URL, or add the name to \
                                 ALLOWED_HOSTS)"
                            )),
                        })?;
                format!("{origin}/api/auth/callback")
            }
        };
        // The callback URL is built from request headers when OIDC_REDIRECT_URL is unset.
        if redirect_uri.len() > MAX_REDIRECT_URI {
            return Err(ApiError::validation(
                "The sign-in callback URL built from this request is too long (set OIDC_REDIRECT_URL)",
            ));
        }
        let flow = sessions::start_flow(&state.db, &client.0, &redirect_uri, &return_to).await?;
        let url = oidc
            .authorization_url(
                &oidc.settings().client,
                &flow.redirect_uri,
                &flow.state,
                &flow.nonce,
                &sessions::pkce_challenge(&flow.pkce_verifier),
            )
            .await
            .map_err(oidc_error)?;
        let mut response = found(&url);
        let secure = session::cookie_secure(&state.config.sessions, &headers);
        response.headers_mut().append(
            http::header::SET_COOKIE,
            session::set_flow_cookie(&flow.state, secure),
        );
        return Ok(response);
    }
    if state.config.admin_token.is_some() {
        let message = match query.error.as_deref() {
            Some("invalid") => Some("That token is not the admin token. Try again."),
            Some("throttled") => Some("Too many wrong tokens. Wait a minute and try again."),
            _ => None,
        };
        return Ok(no_store(super::ui::sign_in::token_form(
            &return_to, message,
        )));
    }
    Ok(see_other(&return_to))
}

#[derive(Debug, Deserialize)]
pub struct TokenSignIn {
    pub token: String,
    #[serde(default)]
    pub redirect: Option<String>,
}

/// Signs in with `ADMIN_TOKEN` (the form of `GET /api/auth/login`): a session cookie and 303 to
/// `redirect`, or 303 back to the form with `error`.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded",
        description = "`token` (the admin token) and `redirect` (a local path)"),
    responses((status = 303, description = "Signed in (Set-Cookie), or back to the form with error"),
        (status = 404, description = "No ADMIN_TOKEN configured", body = super::error::ErrorBody)))]
pub async fn login_with_token(
    State(state): State<AppState>,
    ClientScope(client): ClientScope,
    headers: HeaderMap,
    Form(form): Form<TokenSignIn>,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.config.admin_token else {
        return Err(ApiError::NotFound(
            "Signing in with a token needs ADMIN_TOKEN to be set".into(),
        ));
    };
    // A form posted from another site must not sign the browser in (login CSRF).
    let claims_origin =
        headers.contains_key(header::ORIGIN) || headers.contains_key(header::REFERER);
    if claims_origin && !session::same_origin(&headers) {
        return Err(ApiError::AuthorizationFailed(
            "Sign-in forms are accepted only from this host".into(),
        ));
    }
    let return_to = sessions::safe_return_path(form.redirect.as_deref());
    let back = |error: &str| {
        see_other(&format!(
            "/api/auth/login?error={error}&redirect={}",
            encode(&return_to)
        ))
    };
    // Wrong tokens slow down the address that sends them, not everyone's sign-in.
    if state.admin_failures.check(&client).is_err() {
        return Ok(back("throttled"));
    }
    if !super::auth::secrets_equal(form.token.trim(), expected.expose()) {
        state.admin_failures.failed(&client);
        tracing::warn!(client = %client, "admin_sign_in_refused");
        return Ok(back("invalid"));
    }
    state.admin_failures.succeeded(&client);
    let local = &state.config.local_admin;
    let who = SignedIn {
        subject: local.subject.clone(),
        name: local.name.clone(),
        email: local.email.clone(),
        roles: super::auth::local_roles(),
        method: SessionMethod::AdminToken,
        credential: Some(expected.expose().to_string()),
        id_token: None,
    };
    start_session(&state, &headers, who, &return_to).await
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The identity provider's redirect back: exchanges the code, creates the session, 303 to where
/// the sign-in started.
#[utoipa::path(get, path = "/api/auth/callback", tag = "auth", params(CallbackQuery),
    responses((status = 303, description = "Signed in: to the page the sign-in started from"),
        (status = 400, description = "Unknown, used or expired sign-in (text/html)"),
        (status = 401, description = "The provider refused the sign-in (text/html)")))]
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let Some(oidc) = &state.oidc else {
        return Err(ApiError::NotFound("OIDC is not configured".into()));
    };
    // Only the browser that started the sign-in may finish it; the flow stays for it otherwise.
    let flow = match &query.state {
        Some(s) if session::flow_is_this_browsers(&headers, s) => {
            sessions::take_flow(&state.db, s).await?
        }
        Some(_) => {
            return Ok(message_page(
                StatusCode::BAD_REQUEST,
                "This sign-in was started in another browser",
                "Sign in again from this browser.",
            ));
        }
        None => None,
    };
    let Some(flow) = flow else {
        return Ok(message_page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired",
            "The sign-in link was used already or is more than ten minutes old.",
        ));
    };
    if let Some(error) = &query.error {
        let description = query.error_description.as_deref().unwrap_or("");
        tracing::warn!(error = %error, description = %description, "oidc_sign_in_refused_by_provider");
        return Ok(message_page(
            StatusCode::UNAUTHORIZED,
            "The identity provider did not sign you in",
            &format!("It answered: {error} {description}"),
        ));
    }
    let Some(code) = &query.code else {
        return Ok(message_page(
            StatusCode::BAD_REQUEST,
            "The sign-in is incomplete",
            "The identity provider sent no authorization code.",
        ));
    };
    let client = &oidc.settings().client;
    let signed = match oidc
        .finish_sign_in(
            client,
            code,
            &flow.redirect_uri,
            &flow.pkce_verifier,
            &flow.nonce,
        )
        .await
    {
        Ok(signed) => signed,
        Err(e) if e.is_unavailable() => return Err(oidc_error(e)),
        Err(e) => {
            tracing::warn!(error = %e, "oidc_sign_in_failed");
            return Ok(message_page(
                StatusCode::UNAUTHORIZED,
                "The sign-in could not be completed",
                &e.to_string(),
            ));
        }
    };
    let identity = signed.identity;
    if !sessions::subject_fits(&identity.subject) {
        tracing::warn!("oidc_sign_in_refused: the subject does not fit a session");
        return Ok(message_page(
            StatusCode::UNAUTHORIZED,
            "The sign-in could not be completed",
            &format!(
                "The identity provider names you with a subject (`sub`) that is empty, holds a \
                 NUL or is longer than {} characters.",
                sessions::MAX_IDENTITY_CHARS
            ),
        ));
    }
    tracing::info!(subject = %identity.subject, "oidc_signed_in");
    let who = SignedIn {
        subject: identity.subject,
        name: identity.name,
        email: identity.email,
        roles: identity.roles,
        method: SessionMethod::Oidc,
        credential: Some(oidc.settings().binding()),
        id_token: Some(signed.id_token),
    };
    let mut response = start_session(&state, &headers, who, &flow.return_to).await?;
    let secure = session::cookie_secure(&state.config.sessions, &headers);
    response.headers_mut().append(
        header::SET_COOKIE,
        session::clear_flow_cookie(&flow.state, secure),
    );
    Ok(response)
}

/// Ends the browser's session (GET too: the Python UI navigates here) and, for an OIDC session
/// when the provider offers it, continues to the provider's logout.
///
/// A request the browser says came from another site (`Sec-Fetch-Site`, else `Origin` or
/// `Referer`) ends nothing: it gets a page that asks, whose button links here.
#[utoipa::path(method(get, post), path = "/api/auth/logout", tag = "auth", params(LogoutQuery),
    responses((status = 303, description = "Signed out: to the provider's logout or to /"),
        (status = 200, description = "From another site: a page asking to confirm (text/html)")))]
pub async fn logout(
    State(state): State<AppState>,
    ViaTrustedProxy(via_proxy): ViaTrustedProxy,
    headers: HeaderMap,
    Query(query): Query<LogoutQuery>,
) -> Result<Response, ApiError> {
    // A POST too: even without the session cookie (SameSite=Lax), the answer's Set-Cookie
    // would clear it in the browser.
    if session::from_another_site(&headers) {
        // The confirmation page's link carries the session's CSRF token, which another site
        // cannot know: a browser that sends no Sec-Fetch-Site, behind a proxy that rewrites Host,
        // looks cross-site on that link too, and would otherwise get the page again for ever.
        let csrf = match session::session_cookie(&headers) {
            Some(cookie) => super::auth::browser_session(&state, &cookie)
                .await?
                .map(|s| s.csrf_token),
            None => None,
        };
        let confirmed = match (&csrf, &query.confirm) {
            (Some(expected), Some(sent)) => super::auth::secrets_equal(sent, expected),
            _ => false,
        };
        if !confirmed {
            return Ok(no_store(super::ui::sign_in::confirm_sign_out(
                csrf.as_deref(),
            )));
        }
    }
    let ended = match session::session_cookie(&headers) {
        Some(cookie) => sessions::end(&state.db, &cookie).await?,
        None => None,
    };
    let mut target = "/".to_string();
    if let (Some(oidc), Some(ended)) = (&state.oidc, &ended) {
        if ended.method == SessionMethod::Oidc {
            // Where the provider sends the browser back: a host the client named only if it
            // passes the sign-in callback's rule, else nowhere of the client's choosing.
            let home =
                match session::public_origin(&headers, via_proxy, &state.config.allowed_hosts) {
                    Ok(origin) => format!("{origin}/"),
                    Err(_) => "/".into(),
                };
            if let Some(url) = oidc
                .end_session_url(&oidc.settings().client, ended.id_token.as_deref(), &home)
                .await
            {
                target = url;
            }
        }
    }
    let mut response = see_other(&target);
    let secure = session::cookie_secure(&state.config.sessions, &headers);
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::clear_cookie(secure));
    Ok(response)
}

async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    who: SignedIn,
    return_to: &str,
) -> Result<Response, ApiError> {
    let lifetime = state.config.sessions.lifetime;
    let (cookie, _) = sessions::create(&state.db, who, lifetime).await?;
    let secure = session::cookie_secure(&state.config.sessions, headers);
    let mut response = see_other(return_to);
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(&cookie, lifetime, secure),
    );
    Ok(response)
}

fn oidc_error(error: crate::oidc::OidcError) -> ApiError {
    tracing::warn!(error = %error, "oidc_sign_in_unavailable");
    ApiError::unavailable("The identity provider is unavailable; try again later")
}

fn location(target: &str) -> HeaderValue {
    HeaderValue::from_str(target).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// 302 Found, as the Python service's UI expects from its login route.
fn found(target: &str) -> Response {
    no_store((StatusCode::FOUND, [(header::LOCATION, location(target))]).into_response())
}

fn see_other(target: &str) -> Response {
    no_store(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location(target))],
        )
            .into_response(),
    )
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A page for the person whose sign-in did not work (in the web UI's shell).
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogoutQuery {
    /// The confirmation page's proof that the request comes from it (the session's CSRF token).
    pub confirm: Option<String>,
}

fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    no_store(super::ui::sign_in::message(status, title, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_are_percent_encoded() {
        assert_eq!(encode("/models?x=1&y"), "%2Fmodels%3Fx%3D1%26y");
    }
}
