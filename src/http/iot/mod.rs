//! The device API (`/api/iot/…`): what a device may ask about itself (SPEC §5, §13). Every route
//! but the token endpoint and the JWKS takes a [`DeviceCaller`], so a device only ever sees its
//! own data.

pub mod coredump;
pub mod firmware;
pub mod provisioning;
pub mod token;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::auth::DeviceCaller;
use super::error::ApiError;
use crate::db::devices;
use crate::state::AppState;
use axum::routing::post;

pub fn router() -> Router<AppState> {
    // The upload reads its body against COREDUMP_UPLOAD_TIMEOUT_SECONDS instead of the server's
    // whole-body deadline.
    let upload = Router::new()
        .route("/api/iot/coredump", post(coredump::upload))
        .route_layer(axum::middleware::from_fn(
            crate::http::body::lift_body_deadline,
        ));
    Router::new()
        .merge(upload)
        .route("/api/iot/config", get(config))
        .route("/api/iot/firmware", get(firmware::device_firmware))
        .route(
            "/api/iot/firmware-version",
            get(firmware::device_firmware_version),
        )
        .route("/api/iot/provisioning", get(provisioning::package))
        .route("/api/iot/token", post(token::token))
        .route("/api/iot/jwks.json", get(token::jwks))
}

/// The calling device's configuration, exactly as stored.
#[utoipa::path(get, path = "/api/iot/config", tag = "device api",
    security(("device" = [])),
    responses((status = 200, description = "The config text verbatim", content_type = "application/json"),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn config(
    device: DeviceCaller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let text = devices::config_text(&mut tx, device.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Device {} was not found", device.key)))?;
    tx.commit().await?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/json"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response())
}
