//! Who looks at a page, and what a page answers when something goes wrong.
//!
//! [`Viewer`] authenticates like every admin route (`crate::http::auth::authenticate_admin`: the
//! admin token, OIDC, a browser session, or open mode). A browser that is not signed in is sent
//! to the sign-in route with the page it asked for (`303 See Other` to
//! `/api/auth/login?redirect=<path and query>`, which starts the OIDC sign-in or shows the
//! `ADMIN_TOKEN` form, see `crate::http::login`);
//! every other failure is an HTML page written for a person ([`UiError`]), never the API's JSON
//! envelope. [`Ui`] wraps the API's extractors (`Path`, `Query`) so that input that does not
//! parse is such a page too.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use maud::html;

use super::format;
use super::layout::Page;
use crate::http::auth::{authenticate_admin, AdminIdentity, ROLE_EDITOR};
use crate::http::error::{bounded, ApiError};
use crate::http::request_context;
use crate::state::AppState;

/// The signed-in person looking at a page.
#[derive(Debug, Clone)]
pub struct Viewer(pub AdminIdentity);

impl Viewer {
    /// Whether the page offers writes (the API refuses them without `editor` anyway).
    pub fn can_edit(&self) -> bool {
        self.0.has_role(ROLE_EDITOR)
    }

    pub fn identity(&self) -> &AdminIdentity {
        &self.0
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, UiError> {
        match authenticate_admin(parts, state).await {
            Ok(identity) => Ok(Viewer(identity)),
            Err(ApiError::AuthenticationRequired(_)) => {
                let wanted = parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                Err(UiError::SignIn {
                    location: format!("/api/auth/login?redirect={}", format::encode(wanted)),
                })
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// An API extractor (`Path`, `Query` of `crate::http::extract`) whose rejection is a page.
#[derive(Debug, Clone)]
pub struct Ui<E>(pub E);

impl<E> FromRequestParts<AppState> for Ui<E>
where
    E: FromRequestParts<AppState, Rejection = ApiError> + Send,
{
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, UiError> {
        E::from_request_parts(parts, state)
            .await
            .map(Ui)
            .map_err(|e| match e {
                // A page address with an id that is no number names no page.
                ApiError::Validation { message, .. } => UiError::Page {
                    status: StatusCode::NOT_FOUND,
                    heading: "There is no such page".into(),
                    message: format!("This address does not name a page: {message}."),
                },
                other => other.into(),
            })
    }
}

/// What a page answers instead of itself.
#[derive(Debug)]
pub enum UiError {
    /// Not signed in: to `/api/auth/login`, which returns here afterwards.
    SignIn { location: String },
    /// A page explaining what went wrong.
    Page {
        status: StatusCode,
        heading: String,
        message: String,
    },
}

impl UiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        UiError::Page {
            status: StatusCode::NOT_FOUND,
            heading: "Not found".into(),
            message: message.into(),
        }
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let (heading, message) = match &e {
            ApiError::NotFound(m) => ("Not found", format!("{m}. It may have been deleted.")),
            ApiError::AuthorizationFailed(m) => (
                "Not allowed",
                format!("You are signed in, but may not see this: {m}."),
            ),
            ApiError::Unavailable { .. } => (
                "Temporarily unavailable",
                "The database or the object store cannot be reached right now. Try again in a \
                 moment; if it persists, check the service's log."
                    .to_string(),
            ),
            ApiError::Validation { message, .. } => ("That did not work", message.clone()),
            ApiError::AuthenticationRequired(m) => ("Sign in required", m.clone()),
            ApiError::TooManyRequests { message, .. } => {
                ("Too many wrong tokens", format!("{message}."))
            }
            _ => (
                "Something went wrong",
                format!(
                    "The service could not show this page. The failure was logged with request id \
                     {}.",
                    bounded(&request_context::correlation_id())
                ),
            ),
        };
        UiError::Page {
            status,
            heading: heading.into(),
            message,
        }
    }
}

impl From<crate::db::DbError> for UiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn { location } => {
                let mut response = StatusCode::SEE_OTHER.into_response();
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            UiError::Page {
                status,
                heading,
                message,
            } => Page::new(heading.clone(), None).render(
                status,
                html! {
                    section.error-page {
                        h1 { (heading) }
                        p { (message) }
                        p { a href="/" { "Back to the fleet overview" } }
                    }
                },
            ),
        }
    }
}
