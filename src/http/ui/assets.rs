//! The UI's stylesheet and script, compiled into the binary (`include_str!`) and served at
//! `/assets/{version}/{file}`, where the version is a hash of their content: a page always names
//! the files it was rendered with, so browsers may keep them for a year (`immutable`) and a new
//! build is fetched at once. A request naming another version (a page of another process during
//! a rolling upgrade) gets this build's file, marked not to be cached.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::viewer::{Ui, UiError};
use crate::http::extract::Path;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The first 12 hex digits of the SHA-256 of both files.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(CSS.as_bytes());
    hash.update(JS.as_bytes());
    hex::encode(hash.finalize())[..12].to_string()
});

/// Where a page links `file` (`ui.css`, `ui.js`).
pub fn href(file: &str) -> String {
    format!("/assets/{}/{file}", VERSION.as_str())
}

/// `GET /assets/{version}/{file}`: public, like any stylesheet.
pub async fn serve(Ui(Path((version, file))): Ui<Path<(String, String)>>) -> Response {
    let (body, content_type) = match file.as_str() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return UiError::not_found("There is no such file").into_response(),
    };
    let cache = if version == *VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}
