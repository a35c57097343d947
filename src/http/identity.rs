//! `GET /api/auth/self`: who the admin caller is, what the web UI asks before it renders anything
//! (SPEC §5). Signing in is `super::login`.

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::header::CACHE_CONTROL;
use http::HeaderValue;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AdminReader;
use super::extract::Json;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/auth/self", get(whoami))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserInfo {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// With a browser session: what its writes send in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// The authenticated admin: the token's claims under OIDC, the configured local identity for
/// `ADMIN_TOKEN` callers and in open mode.
#[utoipa::path(get, path = "/api/auth/self", tag = "auth", security(("admin" = [])),
    responses((status = 200, body = UserInfo), (status = 401, body = super::error::ErrorBody)))]
pub async fn whoami(AdminReader(who): AdminReader) -> impl IntoResponse {
    // It carries the session's CSRF token: never kept by a cache on the way.
    (
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(UserInfo {
            subject: who.subject,
            email: who.email,
            name: who.name,
            roles: who.roles,
            csrf_token: who.csrf_token,
        }),
    )
}
