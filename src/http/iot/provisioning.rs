//! `GET /api/iot/provisioning`: a device fetches a fresh provisioning package for itself (after
//! the `iotsupport/updates/provisioning` notification, or whenever it wants new credentials).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde::Serialize;
use utoipa::ToSchema;

use crate::credentials::provisioning::{self, ProvisioningError};
use crate::http::auth::DeviceCaller;
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::state::AppState;

/// The eight values of the `prov` NVS namespace.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvisioningPackage {
    pub device_key: String,
    pub client_id: String,
    /// A newly minted pending secret: the current one keeps working until this one is used.
    pub client_secret: String,
    pub token_url: String,
    pub base_url: String,
    pub mqtt_url: String,
    pub wifi_ssid: String,
    pub wifi_password: String,
}

impl From<ProvisioningError> for ApiError {
    fn from(e: ProvisioningError) -> Self {
        match e {
            ProvisioningError::Invalid(message) => ApiError::validation(message),
            e @ ProvisioningError::DeviceNotFound(_) => ApiError::NotFound(e.to_string()),
            e @ ProvisioningError::SecretReplaced => {
                ApiError::AuthenticationRequired(e.to_string())
            }
            ProvisioningError::Db(e) => e.into(),
        }
    }
}

/// Sets `Cache-Control: no-store` (the body holds a secret).
pub fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// The calling device's provisioning package, with a newly minted pending secret.
#[utoipa::path(get, path = "/api/iot/provisioning", tag = "device api",
    security(("device" = [])),
    responses((status = 200, body = ProvisioningPackage),
        (status = 400, description = "A provisioning setting is missing (message names it)", body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody)))]
pub async fn package(
    device: DeviceCaller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let (package, ()) = provisioning::mint(
        &state.db,
        &state.config.credentials,
        device.id,
        device.proved_secret.as_deref(),
        |_| Ok(()),
    )
    .await
    .inspect_err(|e| {
        if matches!(e, ProvisioningError::SecretReplaced) {
            // What this process has cached for the device is stale.
            state.caches.device_changed(&device.key);
        }
    })?;
    // The pending secret it replaced is refused at once by this process.
    state.caches.device_changed(&device.key);
    let [device_key, client_id, client_secret, token_url, base_url, mqtt_url, wifi_ssid, wifi_password] =
        package.values;
    Ok(no_store(
        Json(ProvisioningPackage {
            device_key,
            client_id,
            client_secret,
            token_url,
            base_url,
            mqtt_url,
            wifi_ssid,
            wifi_password,
        })
        .into_response(),
    ))
}
