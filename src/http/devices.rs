//! `/api/devices`: list, create, get, update and delete devices, and replace a device's secret
//! (SPEC §5, §6, §11).
//!
//! `config` is sent as JSON text (a JSON object is accepted too and stored as its serialisation)
//! and returned as the stored text, verbatim, in admin responses as in `GET /api/iot/config`
//! (the Python service's UI edits it as text). The device secret
//! is returned once, by create and by `POST /api/devices/{id}/secret`; only its hash is stored.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{AdminEditor, AdminReader};
use super::error::{ApiError, Json};
use crate::db::device_models::{self as models, DeviceModelRow};
use crate::db::devices::{self, DeviceRow, KEY_UNIQUE};
use crate::db::Tx;
use crate::fleet::{ClientId, ConfigSchema, DeviceConfig, DeviceKey, DeviceSecret};
use crate::layout::coredump_key;
use crate::state::AppState;
use crate::{events, outbox};

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
    pub credentials: CredentialFields,
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
    pub count: usize,
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
}

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("Device {id} was not found"))
}

fn event_payload(row: &DeviceRow) -> Value {
    serde_json::json!({"id": row.id, "key": row.key, "device_model_id": row.device_model_id})
}

fn summary(row: DeviceRow) -> DeviceSummary {
    DeviceSummary {
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

/// Parses a config from the request and checks it against the model's schema.
fn checked_config(raw: &Value, model: &DeviceModelRow) -> Result<DeviceConfig, ApiError> {
    let text = match raw {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let config = DeviceConfig::parse(&text).map_err(|e| ApiError::validation(e.0))?;
    if let Some(schema_text) = &model.config_schema {
        let schema = ConfigSchema::parse(schema_text).map_err(|e| {
            ApiError::Internal(format!(
                "DeviceModel {} has an unusable config_schema: {e}",
                model.code
            ))
        })?;
        schema
            .check(&config.value)
            .map_err(|e| ApiError::validation(e.0))?;
    }
    Ok(config)
}

async fn load(tx: &mut Tx, id: i64) -> Result<(DeviceRow, DeviceModelRow), ApiError> {
    let row = devices::get(tx, id).await?.ok_or_else(|| not_found(id))?;
    let model = models::get(tx, row.device_model_id)
        .await?
        .ok_or_else(|| super::device_models::not_found(row.device_model_id))?;
    Ok((row, model))
}

/// List devices ordered by key, optionally of one model.
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
    let mut tx = state.db.begin().await?;
    let rows = devices::list(&mut tx, query.model_id, rotation_state).await?;
    tx.commit().await?;
    let devices: Vec<_> = rows.into_iter().map(summary).collect();
    Ok(Json(DeviceList {
        count: devices.len(),
        devices,
    }))
}

/// How often a new random key is tried when it collides with an existing one (5 random bytes:
/// a collision is already rare at fleet sizes; several in a row mean something else is wrong).
const KEY_ATTEMPTS: usize = 5;

/// Create a device with a new random key and secret. Requires `editor`.
#[utoipa::path(post, path = "/api/devices", tag = "devices",
    security(("admin" = ["editor"])), request_body = DeviceCreate,
    responses((status = 201, description = "Created; the only response that shows device_secret", body = DeviceResponse),
        (status = 400, body = super::error::ErrorBody),
        (status = 404, description = "No such device model", body = super::error::ErrorBody)))]
pub async fn create(
    _: AdminEditor,
    State(state): State<AppState>,
    Json(body): Json<DeviceCreate>,
) -> Result<(StatusCode, Json<DeviceResponse>), ApiError> {
    for _ in 0..KEY_ATTEMPTS {
        let mut tx = state.db.begin().await?;
        let model = models::get(&mut tx, body.device_model_id)
            .await?
            .ok_or_else(|| super::device_models::not_found(body.device_model_id))?;
        let config = checked_config(&body.config, &model)?;
        let key = DeviceKey::generate();
        let secret = DeviceSecret::generate();
        // The unique constraint decides about collisions; a failed insert ends this transaction
        // (PostgreSQL aborts it), so each attempt gets a fresh one.
        let id =
            match devices::insert(&mut tx, key.as_str(), model.id, &config, &secret.hash()).await {
                Ok(id) => id,
                Err(e) if e.violates(KEY_UNIQUE.0, KEY_UNIQUE.1) => {
                    tracing::warn!(device_key = %key, "device_key_collision");
                    continue;
                }
                Err(e) if e.is_foreign_key_violation() => {
                    return Err(super::device_models::not_found(body.device_model_id))
                }
                Err(e) => return Err(e.into()),
            };
        let (row, model) = load(&mut tx, id).await?;
        events::record(&mut tx, "device_created", &event_payload(&row)).await?;
        tx.commit().await?;
        tracing::info!(device_key = %key, device_id = id, model_code = %model.code, "device_created");
        return Ok((StatusCode::CREATED, Json(full(row, model, Some(secret)))));
    }
    Err(ApiError::Internal(
        "Could not find a free device key; try again".into(),
    ))
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
    let mut tx = state.db.begin().await?;
    let (row, model) = load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(full(row, model, None)))
}

/// Replace a device's config and/or active flag. Requires `editor`.
#[utoipa::path(put, path = "/api/devices/{id}", tag = "devices",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    request_body = DeviceUpdate,
    responses((status = 200, body = DeviceResponse), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn update(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<DeviceUpdate>,
) -> Result<Json<DeviceResponse>, ApiError> {
    let mut tx = state.db.begin().await?;
    let (row, model) = load(&mut tx, id).await?;
    let config = match &body.config {
        Some(raw) => checked_config(raw, &model)?,
        None => DeviceConfig::parse(&row.config).map_err(|e| ApiError::Internal(e.0))?,
    };
    devices::update(&mut tx, id, &config, body.active.unwrap_or(row.active)).await?;
    let (row, model) = load(&mut tx, id).await?;
    events::record(&mut tx, "device_updated", &event_payload(&row)).await?;
    tx.commit().await?;
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
    let mut tx = state.db.begin().await?;
    let (row, _) = load(&mut tx, id).await?;
    let dumps = devices::coredump_ids(&mut tx, id).await?;
    devices::delete(&mut tx, id).await?;
    let keys = dumps
        .iter()
        .map(|dump| coredump_key(&row.key, *dump))
        .collect::<Result<Vec<_>, _>>()?;
    outbox::schedule_deletion(&mut tx, &keys).await?;
    events::record(&mut tx, "device_deleted", &event_payload(&row)).await?;
    let committed = tx.commit().await;
    // Even after a failed commit: it may have happened, and forgetting costs one query.
    state.caches.device_changed(&row.key);
    committed?;
    tracing::info!(device_key = %row.key, device_id = id, coredumps = keys.len(), "device_deleted");
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
    let (row, _) = load(&mut tx, id).await?;
    tx.commit().await?;
    let secret = DeviceSecret::generate();
    let replaced = crate::credentials::rotation::replace_secret(
        &state.db,
        &state.config.rotation,
        id,
        &secret.hash(),
    )
    .await;
    state.caches.device_changed(&row.key);
    if !replaced? {
        return Err(not_found(id));
    }
    tracing::info!(device_key = %row.key, device_id = id, "device_secret_replaced");
    Ok(Json(DeviceSecretResponse {
        id,
        key: row.key,
        device_secret: secret.expose().to_string(),
    }))
}
