//! The page shell every page shares: `<head>` (with the CSRF meta tag when the viewer has a
//! session), the top bar (navigation, who is signed in, sign out), breadcrumbs, the `<main>` the
//! live updates swap, and the response headers of an HTML page.
//!
//! `<main>` carries what the page shows as `data-live` (the event types that make it refresh) and
//! `data-live-model` / `-device` / `-group` / `-coredump` (only events about that model, device,
//! group or core dump count; see `assets/ui.js`).

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use maud::{html, Markup, DOCTYPE};

use super::assets;
use crate::http::auth::AdminIdentity;

/// Which part of the top bar's navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Rotation,
    None,
}

/// What events refresh a page: space-separated event types, and the model, device or group the
/// page is about (events about another one are ignored).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub events: &'static str,
    pub model: Option<i64>,
    pub device: Option<i64>,
    pub group: Option<i64>,
    /// Only events about this core dump (`coredump_…` events naming another are ignored).
    pub coredump: Option<i64>,
}

/// One page: its title, where it sits, who looks at it and what refreshes it.
pub struct Page<'a> {
    pub title: String,
    pub section: Section,
    /// Links above the heading, outermost first: (text, href).
    pub crumbs: Vec<(String, String)>,
    pub viewer: Option<&'a AdminIdentity>,
    pub live: Live,
}

impl<'a> Page<'a> {
    pub fn new(title: impl Into<String>, viewer: Option<&'a AdminIdentity>) -> Self {
        Page {
            title: title.into(),
            section: Section::None,
            crumbs: Vec::new(),
            viewer,
            live: Live::default(),
        }
    }

    pub fn section(mut self, section: Section) -> Self {
        self.section = section;
        self
    }

    pub fn crumb(mut self, text: impl Into<String>, href: impl Into<String>) -> Self {
        self.crumbs.push((text.into(), href.into()));
        self
    }

    pub fn live(mut self, live: Live) -> Self {
        self.live = live;
        self
    }

    /// The whole document with `content` inside `<main>`, answered with `status`.
    pub fn render(self, status: StatusCode, content: Markup) -> Response {
        html_response(status, self.document(content))
    }

    /// A 200 page.
    pub fn ok(self, content: Markup) -> Response {
        self.render(StatusCode::OK, content)
    }

    fn document(self, content: Markup) -> Markup {
        let csrf = self.viewer.and_then(|v| v.csrf_token.as_deref());
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · iotsupport" }
                    @if let Some(token) = csrf {
                        meta name="csrf-token" content=(token);
                    }
                    link rel="stylesheet" href=(assets::href("ui.css"));
                    script src=(assets::href("ui.js")) defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    (top_bar(self.section, self.viewer))
                    main #main tabindex="-1" data-live=(self.live.events)
                        data-live-model=[self.live.model] data-live-device=[self.live.device]
                        data-live-group=[self.live.group] data-live-coredump=[self.live.coredump] {
                        @if !self.crumbs.is_empty() {
                            nav.crumbs aria-label="Breadcrumb" {
                                ol {
                                    @for (text, href) in &self.crumbs {
                                        li { a href=(href) { (text) } }
                                    }
                                }
                            }
                        }
                        (content)
                    }
                    div #flash role="status" aria-live="polite" {}
                    footer.footer { "iotsupport " (env!("CARGO_PKG_VERSION")) }
                }
            }
        }
    }
}

fn top_bar(section: Section, viewer: Option<&AdminIdentity>) -> Markup {
    let current = |s: Section| (section == s).then_some("page");
    html! {
        header.topbar {
            a.brand href="/" { "iotsupport" }
            @if viewer.is_some() {
                nav.mainnav aria-label="Main" {
                    a href="/" aria-current=[current(Section::Fleet)] { "Fleet" }
                    a href="/rotation" aria-current=[current(Section::Rotation)] { "Rotation" }
                }
                span #live-status data-state="off" title="Live updates" { "offline" }
            }
            @if let Some(viewer) = viewer {
                div.who {
                    span.person { (viewer.display_name()) }
                    // Only a browser session can be ended here (a bearer token is the caller's).
                    // A link, not a form: after an OIDC session the sign-out continues at the
                    // provider, a redirect the CSP's `form-action 'self'` would block.
                    @if viewer.csrf_token.is_some() {
                        a.signout href="/api/auth/logout" { "Sign out" }
                    }
                }
            }
        }
    }
}

/// The security headers of every HTML page: scripts and styles only from this origin (the
/// assets), no framing, no caching (a page may hold the CSRF token).
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}
