//! `GET /api/devices/{id}/provisioning?partition_size=N`: a device's provisioning package as the
//! NVS partition image the web UI flashes over Web Serial (SPEC §13).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::AdminEditor;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::iot::provisioning::no_store;
use crate::credentials::provisioning;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/devices/{id}/provisioning", get(nvs_package))
        // It mints a pending secret: a cookie caller passes the CSRF check of a write.
        .route_layer(axum::middleware::from_fn(
            super::session::mark_state_changing_get,
        ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PartitionQuery {
    /// Size of the device's NVS partition in bytes (decimal): at least 12288, a multiple of 4096.
    pub partition_size: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NvsPackage {
    pub size: usize,
    /// Base64 of exactly `size` bytes: an NVS partition image (format version 2, namespace `prov`).
    pub data: String,
}

/// The provisioning package as an NVS partition image, with a newly minted pending secret (the
/// current one keeps working until the device uses the new one). Requires `editor`: the package
/// holds a secret and the Wi-Fi password.
#[utoipa::path(get, path = "/api/devices/{id}/provisioning", tag = "devices",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device id"), PartitionQuery),
    responses((status = 200, body = NvsPackage),
        (status = 400, description = "Bad partition size or a missing provisioning setting (message says which)", body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn nvs_package(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<PartitionQuery>,
) -> Result<Response, ApiError> {
    // The size is checked before the device, as the original did (a bad size is 400, not 404).
    let size: usize = match query.partition_size.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(ApiError::validation(
                "partition_size is required: the size of the device's NVS partition in bytes",
            ))
        }
        Some(raw) => raw.parse().map_err(|_| {
            ApiError::validation(format!(
                "partition_size must be a whole number of bytes, not {:?}",
                raw.chars().take(20).collect::<String>()
            ))
        })?,
    };
    esp_nvs_image::provisioning_image(provisioning::NAMESPACE, &[], size)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let (package, image) =
        provisioning::mint(&state.db, &state.config.credentials, id, None, |package| {
            package.nvs_image(size)
        })
        .await?;
    // The pending secret it replaced is refused at once by this process.
    state.caches.device_changed(package.device_key());
    Ok(no_store(
        Json(NvsPackage {
            size: image.len(),
            data: base64::engine::general_purpose::STANDARD.encode(&image),
        })
        .into_response(),
    ))
}
