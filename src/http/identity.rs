//! `GET /api/auth/self` (who the admin caller is) and `GET /api/auth/login` (where a browser goes
//! to sign in): what the web UI asks before it renders anything (SPEC §5).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::AdminReader;
use super::error::ApiError;
use super::extract::{Json, Query};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/self", get(whoami))
        .route("/api/auth/login", get(login))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserInfo {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
}

/// The authenticated admin: the token's claims under OIDC, the configured local identity for
/// `ADMIN_TOKEN` callers and in open mode.
#[utoipa::path(get, path = "/api/auth/self", tag = "auth", security(("admin" = [])),
    responses((status = 200, body = UserInfo), (status = 401, body = super::error::ErrorBody)))]
pub async fn whoami(AdminReader(who): AdminReader) -> Json<UserInfo> {
    Json(UserInfo {
        subject: who.subject,
        email: who.email,
        name: who.name,
        roles: who.roles,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LoginQuery {
    /// Where the browser should return after signing in; passed on to the login URL.
    pub redirect: Option<String>,
}

/// Sends the browser to `AUTH_LOGIN_URL` (with `redirect` passed on); 404 when none is configured.
#[utoipa::path(get, path = "/api/auth/login", tag = "auth", params(LoginQuery),
    responses((status = 302, description = "To the configured login URL"),
        (status = 404, description = "No login URL configured", body = super::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let Some(base) = &state.config.auth_login_url else {
        return Err(ApiError::NotFound(
            "No login URL is configured (set AUTH_LOGIN_URL)".into(),
        ));
    };
    let target = match query.redirect {
        Some(redirect) => {
            let separator = if base.contains('?') { '&' } else { '?' };
            let encoded: String = url_encode(&redirect);
            format!("{base}{separator}redirect={encoded}")
        }
        None => base.clone(),
    };
    // 302 Found, as the Python service's UI expects from its login route.
    let location = http::HeaderValue::from_str(&target)
        .map_err(|_| ApiError::Internal("AUTH_LOGIN_URL is not a valid header value".into()))?;
    Ok((
        http::StatusCode::FOUND,
        [(http::header::LOCATION, location)],
    )
        .into_response())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn redirect_targets_are_percent_encoded() {
        assert_eq!(super::url_encode("/models?x=1&y"), "%2Fmodels%3Fx%3D1%26y");
    }
}
