//! The sign-in pages, drawn in the UI's shell. There is one way in, `GET /api/auth/login`
//! (`crate::http::login`, which both UIs use): it decides what the configured authentication
//! needs and draws its pages with the functions here.
//!
//! - `ADMIN_TOKEN`: [`token_form`], posting `token` and `redirect` to `POST /api/auth/login`,
//!   which sets the session cookie and answers 303 to `redirect`, or 303 back to the form with
//!   `error`.
//! - OIDC: no page of ours; the browser goes to the identity provider and comes back through
//!   `/api/auth/callback`, whose failures are [`message`] pages.
//! - Open mode: straight back to `redirect`.
//!
//! `GET /login` is a short address for the same thing: 303 to `/api/auth/login` with its query.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode, Uri};
use maud::html;

use super::layout::Page;

/// `GET /login[?redirect=…]`: 303 to `/api/auth/login` with the same query.
pub async fn page(uri: Uri) -> Response {
    let target = match uri.query() {
        Some(query) => format!("/api/auth/login?{query}"),
        None => "/api/auth/login".to_string(),
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let location =
        HeaderValue::from_str(&target).unwrap_or(HeaderValue::from_static("/api/auth/login"));
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The `ADMIN_TOKEN` sign-in form, returning to `return_to` (a local path), with `error` (what
/// went wrong with the last attempt) above it.
pub fn token_form(return_to: &str, error: Option<&str>) -> Response {
    let content = html! {
        section.login {
            h1 { "Sign in to iotsupport" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form.stack method="post" action="/api/auth/login" {
                input type="hidden" name="redirect" value=(return_to);
                label {
                    "Admin token"
                    input type="password" name="token" required autocomplete="current-password"
                        autofocus aria-invalid=[error.map(|_| "true")];
                }
                button type="submit" { "Sign in" }
            }
            p.hint { "The admin token is the service's ADMIN_TOKEN setting." }
        }
    };
    Page::new("Sign in", None).ok(content)
}

/// Asks before signing out: `/api/auth/logout` reached from another site (a link, a form or a
/// script there) must not end the session. The button is a link: followed from this page, the
/// request comes from this site. (Not a form: the page's `form-action 'self'` would block the
/// redirect to an identity provider's logout that signing out of an OIDC session answers with.)
///
/// `csrf`: the session's CSRF token, which the link carries (`?confirm=`) so that it works even
/// where the browser's request looks cross-site (see `http::login::logout`); `None` without a
/// session, when there is nothing to sign out of.
pub fn confirm_sign_out(csrf: Option<&str>) -> Response {
    let href = match csrf {
        Some(token) => format!(
            "/api/auth/logout?confirm={}",
            super::super::login::encode(token)
        ),
        None => "/api/auth/logout".to_string(),
    };
    let content = html! {
        section.login {
            h1 { "Sign out?" }
            p { "Another site sent you here to sign out of iotsupport." }
            p { a.button href=(href) { "Sign out" } " " a href="/" { "Stay signed in" } }
        }
    };
    Page::new("Sign out", None).ok(content)
}

/// A page saying why signing in did not work, with a link to try again.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let content = html! {
        section.login {
            h1 { (title) }
            p { (text) }
            p { a.button href="/api/auth/login" { "Sign in again" } }
        }
    };
    Page::new(title, None).render(status, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn the_form_escapes_where_it_returns_to_and_the_error() {
        let form = body(token_form(
            "/\"><script>alert(1)</script>",
            Some("<b>no</b>"),
        ))
        .await;
        assert!(!form.contains("<script>alert"), "{form}");
        assert!(form.contains("&quot;&gt;&lt;script&gt;"), "{form}");
        assert!(form.contains("&lt;b&gt;no&lt;/b&gt;"), "{form}");
    }

    #[tokio::test]
    async fn login_is_a_short_address_for_the_api_route() {
        let response = page("/login?redirect=%2Fdevices%2F3".parse().expect("a URI")).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()[header::LOCATION],
            "/api/auth/login?redirect=%2Fdevices%2F3"
        );
    }
}
