//! `GET /login`: how a browser signs in, for each way admins authenticate.
//!
//! - `ADMIN_TOKEN`: a form posting the token (`application/x-www-form-urlencoded`, fields `token`
//!   and `redirect`) to `POST /api/auth/login`, which sets the session cookie and answers 303 to
//!   `redirect`, or 303 back here with `error=invalid`.
//! - OIDC: a link to `GET /api/auth/login?redirect=…`, which starts the identity provider's
//!   sign-in.
//! - Both can be offered at once. In open mode there is nothing to sign in to: 303 to the page
//!   asked for.
//!
//! `redirect` is only ever a path on this site (`/…`, not `//host`); anything else becomes `/`,
//! so the login page cannot be used to send a person elsewhere.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use maud::html;
use serde::Deserialize;

use super::format;
use super::layout::Page;
use super::viewer::Ui;
use crate::http::extract::Query;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    pub redirect: Option<String>,
    pub error: Option<String>,
}

/// `redirect` if it is a path on this site, else `/`.
pub fn local_target(redirect: Option<&str>) -> String {
    match redirect {
        Some(r) if r.starts_with('/') && !r.starts_with("//") && !r.contains('\\') => r.into(),
        _ => "/".into(),
    }
}

pub async fn page(
    State(state): State<AppState>,
    Ui(Query(query)): Ui<Query<LoginQuery>>,
) -> Response {
    let target = local_target(query.redirect.as_deref());
    let token = state.config.admin_token.is_some();
    let oidc = state.oidc.is_some();
    if !token && !oidc {
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(location) = HeaderValue::from_str(&target) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    let invalid = query.error.as_deref() == Some("invalid");
    let content = html! {
        section.login {
            h1 { "Sign in" }
            @if query.error.is_some() {
                p.error role="alert" {
                    @if invalid {
                        "That token is not the admin token. Check it (it is the service's \
                         ADMIN_TOKEN setting) and try again."
                    } @else {
                        "Signing in did not work. Try again."
                    }
                }
            }
            @if oidc {
                p {
                    a.button href={ "/api/auth/login?redirect=" (format::encode(&target)) } {
                        "Sign in with your identity provider"
                    }
                }
            }
            @if token {
                form.stack method="post" action="/api/auth/login" {
                    input type="hidden" name="redirect" value=(target);
                    label {
                        "Admin token"
                        input type="password" name="token" required autocomplete="current-password"
                            autofocus aria-invalid=[invalid.then_some("true")];
                    }
                    button type="submit" { "Sign in" }
                }
                p.hint { "The admin token is the service's ADMIN_TOKEN setting." }
            }
        }
    };
    Page::new("Sign in", None).ok(content)
}

#[cfg(test)]
mod tests {
    use super::local_target;

    #[test]
    fn only_paths_on_this_site_are_redirect_targets() {
        assert_eq!(local_target(Some("/devices/3?x=1")), "/devices/3?x=1");
        assert_eq!(local_target(Some("//evil.example/")), "/");
        assert_eq!(local_target(Some("https://evil.example/")), "/");
        assert_eq!(local_target(Some("/\\evil.example")), "/");
        assert_eq!(local_target(None), "/");
    }
}
