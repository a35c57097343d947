//! The web UI: server-rendered HTML pages for admins, embedded in the binary and served by
//! `serve` at `/` (issue 16). No Node at build time, nothing from a CDN at run time.
//!
//! - Pages are rendered with maud (`html!`, which escapes every value it splices in) from the
//!   domain and database functions directly, never over HTTP. Each reads in one read-only
//!   transaction (`Db::begin_read`), so a page is one consistent snapshot and never waits for
//!   SQLite's write lock.
//! - Writes are made by `assets/ui.js` with `fetch()` to the JSON API (`/api/…`), same-origin
//!   credentials, plus `X-CSRF-Token` from the page's `csrf-token` meta tag when the viewer has a
//!   browser session. The pages themselves never change anything.
//! - Live updates: the script follows `GET /api/sse/stream` and, when an event concerns the page
//!   (`layout::Live`), fetches the page again and swaps its `<main>`, keeping forms the person is
//!   editing.
//! - Who may look: [`viewer::Viewer`], the admin authentication of the API (a browser session,
//!   a bearer token, or open mode); a browser that is not signed in is sent to
//!   `/api/auth/login?redirect=<the page>`, the one sign-in route, whose pages `sign_in` draws.
//!
//! One file per page (`overview`, `model`, `device`, `report`, `crash_groups`, `rotation`,
//! `sign_in`), plus the shell (`layout`), formatting (`format`), the SVG chart (`chart`) and the
//! assets (`assets`, files in `assets/`).

mod assets;
mod chart;
mod crash_groups;
mod device;
mod format;
mod layout;
mod model;
mod model_parts;
mod overview;
mod report;
mod rotation;
pub mod sign_in;
mod viewer;

use axum::routing::get;
use axum::Router;

use crate::state::AppState;

pub use viewer::{UiError, Viewer};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(sign_in::page))
        .route("/models/{id}", get(model::page))
        .route("/models/{id}/crash-groups", get(crash_groups::list))
        .route("/crash-groups/{id}", get(crash_groups::detail))
        .route("/devices/{id}", get(device::page))
        .route("/devices/{id}/coredumps/{cid}", get(report::page))
        .route("/rotation", get(rotation::page))
        .route("/assets/{version}/{file}", get(assets::serve))
}
