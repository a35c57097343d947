//! `/api/devices`: list, create, get, update and delete devices, and replace a device's secret
//! (SPEC §5, §6, §11).
//!
//! `config` is sent as JSON text (a JSON object is accepted too and stored as its serialisation)
//! and returned as the stored text, verbatim, in admin responses as in `GET /api/iot/config`
//! (the Python service's UI edits it as text). The device secret
//! is returned once, by create and by `POST /api/devices/{id}/secret`; only its hash is stored.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{AdminEditor, AdminReader};
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::paging::{self, PageQuery, Position};
use crate::db::device_models::DeviceModelRow;
use crate::db::devices::{self, DeviceRow};
use crate::fleet::{ClientId, DeviceSecret};
use crate::registry::devices as devices_ops;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/devices", get(list).post(create))
        .route("/api/devices/{id}", get(fetch).put(update).delete(remove))
        .route("/api/devices/{id}/secret", post(replace_secret))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSummary {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    pub active: bool,
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
    /// When the newest core dump of this device was uploaded.
    pub last_coredump_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub presence: PresenceFields,
    #[serde(flatten)]
    pub credentials: CredentialFields,
}

/// What the device last said it runs and when it was last heard from (SPEC §15), on every device
/// response. Written in the background: a new version shows within seconds, `last_seen_at` may be
/// up to about a minute behind the device's latest request.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceFields {
    /// The firmware version of its latest core-dump upload or `X-Firmware-Version` header.
    pub running_firmware_version: Option<String>,
    /// When it last made an authenticated device request.
    pub last_seen_at: Option<DateTime<Utc>>,
}

fn presence_fields(row: &DeviceRow) -> PresenceFields {
    PresenceFields {
        running_firmware_version: row.running_firmware_version.clone(),
        last_seen_at: row.last_seen_at,
    }
}

/// Credential and rotation facts on every device response (SPEC §13).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialFields {
    /// `iotdevice-{model_code}-{key}`: what the device sends to `POST /api/iot/token`.
    pub client_id: String,
    /// `OK`, `QUEUED`, `PENDING` or `TIMEOUT`.
    pub rotation_state: String,
    /// When the current secret was minted.
    pub secret_created_at: Option<DateTime<Utc>>,
    pub last_rotation_attempt_at: Option<DateTime<Utc>>,
    pub last_rotation_completed_at: Option<DateTime<Utc>>,
}

fn credential_fields(row: &DeviceRow) -> CredentialFields {
    CredentialFields {
        client_id: ClientId::format(&row.model_code, &row.key),
        rotation_state: row.rotation_state.clone(),
        secret_created_at: row.secret_created_at,
        last_rotation_attempt_at: row.last_rotation_attempt_at,
        last_rotation_completed_at: row.last_rotation_completed_at,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceSummary>,
    /// The number of devices in this response.
    pub count: usize,
    /// With `limit`: the `cursor` of the next page, null on the last one.
    pub next_cursor: Option<String>,
}

/// The model a device belongs to, as embedded in device responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceModelInfo {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub firmware_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceResponse {
    pub id: i64,
    pub key: String,
    pub device_model_id: i64,
    pub device_model: DeviceModelInfo,
    pub active: bool,
    /// The device's configuration: the JSON text as stored, byte for byte.
    pub config: String,
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
    pub last_coredump_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub presence: PresenceFields,
    #[serde(flatten)]
    pub credentials: CredentialFields,
    /// Only in the response that created the device: the credential it authenticates with
    /// (`Authorization: Bearer <key>.<device_secret>`). It cannot be read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeviceCreate {
    pub device_model_id: i64,
    /// The configuration as JSON text (a JSON object is accepted too).
    #[schema(value_type = String)]
    pub config: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeviceUpdate {
    /// New configuration as JSON text; absent leaves it unchanged.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub config: Option<Value>,
    /// Absent leaves it unchanged.
    #[serde(default)]
    pub active: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSecretResponse {
    pub id: i64,
    pub key: String,
    pub device_secret: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only devices of this model.
    pub model_id: Option<i64>,
    /// Only devices in this rotation state (`OK`, `QUEUED`, `PENDING`, `TIMEOUT`).
    pub rotation_state: Option<String>,
    /// At most this many devices (1–1000); without it, every device.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A place in the device list: the key of the last device of a page.
struct AfterKey(String);

impl Position for AfterKey {
    const KIND: &'static str = "device";
    fn encode(&self) -> String {
        self.0.clone()
    }
    fn decode(text: &str) -> Option<Self> {
        // What a key column can hold (PostgreSQL refuses a NUL with a 500).
        let fits = !text.is_empty() && text.chars().count() <= 8 && !text.contains('\0');
        fits.then(|| AfterKey(text.to_string()))
    }
}

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("Device {id} was not found"))
}

fn summary(row: DeviceRow) -> DeviceSummary {
    DeviceSummary {
        presence: presence_fields(&row),
        credentials: credential_fields(&row),
        id: row.id,
        key: row.key,
        device_model_id: row.device_model_id,
        active: row.active,
        device_name: row.device_name,
        device_entity_id: row.device_entity_id,
        enable_ota: row.enable_ota,
        last_coredump_at: row.last_coredump_at,
    }
}

fn full(row: DeviceRow, model: DeviceModelRow, secret: Option<DeviceSecret>) -> DeviceResponse {
    DeviceResponse {
        presence: presence_fields(&row),
        credentials: credential_fields(&row),
        id: row.id,
        config: row.config,
        key: row.key,
        device_model_id: row.device_model_id,
        device_model: DeviceModelInfo {
            id: model.id,
            code: model.code,
            name: model.name,
            firmware_version: model.firmware_version,
        },
        active: row.active,
        device_name: row.device_name,
        device_entity_id: row.device_entity_id,
        enable_ota: row.enable_ota,
        last_coredump_at: row.last_coredump_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        device_secret: secret.map(|s| s.expose().to_string()),
    }
}

/// The config as the request sent it: JSON text, or a JSON value taken as its serialisation.
fn config_text(raw: &Value) -> String {
    match raw {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// List devices ordered by key, optionally of one model or rotation state, optionally paged.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    security(("admin" = [])), params(ListQuery),
    responses((status = 200, body = DeviceList), (status = 401, body = super::error::ErrorBody)))]
pub async fn list(
    _: AdminReader,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeviceList>, ApiError> {
    let rotation_state = query.rotation_state.as_deref().filter(|s| !s.is_empty());
    if let Some(wanted) = rotation_state {
        if !crate::credentials::rotation::STATES.contains(&wanted) {
            return Err(ApiError::validation(format!(
                "rotation_state must be one of {}",
                crate::credentials::rotation::STATES.join(", ")
            )));
        }
    }
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    }
    .page::<AfterKey>()?;
    let after = page.after.as_ref().map(|a| a.0.as_str());
    let mut tx = state.db.begin_read().await?;
    let rows = devices::list(
        &mut tx,
        query.model_id,
        rotation_state,
        after,
        page.limit.map(|n| n + 1),
    )
    .await?;
    tx.commit().await?;
    let (rows, next_cursor) = paging::finish(rows, page.limit, |d| AfterKey(d.key.clone()));
    let devices: Vec<_> = rows.into_iter().map(summary).collect();
    Ok(Json(DeviceList {
        count: devices.len(),
        devices,
        next_cursor,
    }))
}

/// Create a device with a new random key and secret. Requires `editor`.
#[utoipa::path(post, path = "/api/devices", tag = "devices",
    security(("admin" = ["editor"])), request_body = DeviceCreate,
    responses((status = 201, description = "Created; the only response that shows device_secret", body = DeviceResponse),
        (status = 400, description = "The config is not JSON, fails the model's config_schema, or took longer than CONFIG_VALIDATION_TIMEOUT_SECONDS to validate", body = super::error::ErrorBody),
        (status = 404, description = "No such device model", body = super::error::ErrorBody),
        (status = 409, description = "The model's config_schema changed while the config was validated; retry", body = super::error::ErrorBody),
        (status = 503, description = "Too many config validations in progress", body = super::error::ErrorBody)))]
pub async fn create(
    _: AdminEditor,
    State(state): State<AppState>,
    Json(body): Json<DeviceCreate>,
) -> Result<(StatusCode, Json<DeviceResponse>), ApiError> {
    let (row, model, secret) = devices_ops::create(
        &state.db,
        &state.config_validator,
        body.device_model_id,
        &config_text(&body.config),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(full(row, model, Some(secret)))))
}

/// Get one device with its model.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices",
    security(("admin" = [])), params(("id" = i64, Path, description = "Device id")),
    responses((status = 200, body = DeviceResponse), (status = 404, body = super::error::ErrorBody)))]
pub async fn fetch(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeviceResponse>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let (row, model) = devices_ops::load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(full(row, model, None)))
}

/// Replace a device's config and/or active flag. Requires `editor`.
#[utoipa::path(put, path = "/api/devices/{id}", tag = "devices",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    request_body = DeviceUpdate,
    responses((status = 200, body = DeviceResponse), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "The model's config_schema changed while the config was validated; retry", body = super::error::ErrorBody),
        (status = 503, description = "Too many config validations in progress", body = super::error::ErrorBody)))]
pub async fn update(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<DeviceUpdate>,
) -> Result<Json<DeviceResponse>, ApiError> {
    let text = body.config.as_ref().map(config_text);
    let (row, model) = devices_ops::update(
        &state.db,
        &state.config_validator,
        state.notifier,
        id,
        text.as_deref(),
        body.active,
    )
    .await?;
    if text.is_some() {
        // The entity id may have changed: live log streams label lines with it.
        state.log_hub.subscriptions_changed();
    }
    Ok(Json(full(row, model, None)))
}

/// Delete a device, its core dump rows, and (via the outbox) their objects. Requires `editor`.
#[utoipa::path(delete, path = "/api/devices/{id}", tag = "devices",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = super::error::ErrorBody)))]
pub async fn remove(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    devices_ops::delete(&state.db, state.caches.as_ref(), id).await?;
    state.log_hub.subscriptions_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a new secret for a device; the old one (and any pending one, and tokens minted with them)
/// stops working at once on this process, and within `DEVICE_LOOKUP_CACHE_SECONDS` on other
/// processes sharing the database. A rotation in progress ends as completed. Requires `editor`.
#[utoipa::path(post, path = "/api/devices/{id}/secret", tag = "devices",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    responses((status = 200, body = DeviceSecretResponse), (status = 404, body = super::error::ErrorBody)))]
pub async fn replace_secret(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeviceSecretResponse>, ApiError> {
    let mut tx = state.db.begin().await?;
    let (row, _) = devices_ops::load(&mut tx, id).await?;
    tx.commit().await?;
    let secret = DeviceSecret::generate();
    let device = crate::credentials::rotation::RotationTargetKey { id, key: &row.key };
    let replaced = crate::credentials::rotation::replace_secret(
        &state.db,
        state.caches.as_ref(),
        &state.config.rotation,
        &device,
        &secret.hash(),
    )
    .await?;
    if !replaced {
        return Err(not_found(id));
    }
    tracing::info!(device_key = %row.key, device_id = id, "device_secret_replaced");
    Ok(Json(DeviceSecretResponse {
        id,
        key: row.key,
        device_secret: secret.expose().to_string(),
    }))
}
