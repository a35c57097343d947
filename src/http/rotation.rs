//! Fleet rotation for admins (SPEC §13), field for field as the Python service's UI reads it:
//! `GET /api/rotation/status`, `POST /api/rotation/trigger`, `GET /api/rotation/dashboard`,
//! `POST /api/devices/{id}/rotate`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AdminEditor, AdminReader};
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::paging::MAX_LIMIT;
use crate::credentials::dashboard::{self, DashboardEntry};
use crate::credentials::rotation::{self, STATES};
use crate::db::rotation as queries;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/rotation/status", get(status))
        .route("/api/rotation/trigger", post(trigger))
        .route("/api/rotation/dashboard", get(dashboard_view))
        .route("/api/devices/{id}/rotate", post(rotate_device))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationStatus {
    /// Devices per state (all four keys, active and inactive devices alike).
    pub counts_by_state: BTreeMap<String, i64>,
    /// Devices with `active = false`.
    pub inactive: i64,
    pub pending_device_id: Option<i64>,
    pub last_rotation_completed_at: Option<DateTime<Utc>>,
    /// The next tick of `ROTATION_CRON` (`…Z`), or null without one.
    pub next_scheduled_rotation: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationTriggerResponse {
    pub queued_count: u64,
    /// The same number under the name the Python service's UI reads (its toast would otherwise
    /// always say "0 devices").
    pub devices_queued: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceRotateResponse {
    /// `queued` or `already_pending`.
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardDevice {
    pub id: i64,
    pub key: String,
    pub device_name: Option<String>,
    pub device_model_code: String,
    pub active: bool,
    pub rotation_state: String,
    pub last_rotation_completed_at: Option<DateTime<Utc>>,
    pub days_since_rotation: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardCounts {
    pub healthy: usize,
    pub warning: usize,
    pub critical: usize,
    pub inactive: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationDashboard {
    pub healthy: Vec<DashboardDevice>,
    pub warning: Vec<DashboardDevice>,
    pub critical: Vec<DashboardDevice>,
    pub inactive: Vec<DashboardDevice>,
    pub counts: DashboardCounts,
}

/// Counts per rotation state, the pending device and the schedule.
#[utoipa::path(get, path = "/api/rotation/status", tag = "rotation", security(("admin" = [])),
    responses((status = 200, body = RotationStatus), (status = 401, body = super::error::ErrorBody)))]
pub async fn status(
    _: AdminReader,
    State(state): State<AppState>,
) -> Result<Json<RotationStatus>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let counts = queries::status(&mut tx).await?;
    tx.commit().await?;
    let mut counts_by_state: BTreeMap<String, i64> =
        STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for (state, n) in counts.by_state {
        counts_by_state.insert(state, n);
    }
    Ok(Json(RotationStatus {
        counts_by_state,
        inactive: counts.inactive,
        pending_device_id: counts.pending_device_id,
        last_rotation_completed_at: counts.last_completed,
        next_scheduled_rotation: rotation::next_scheduled(&state.config.rotation),
    }))
}

/// Queue every active `OK` device and start the first. Requires `editor`.
#[utoipa::path(post, path = "/api/rotation/trigger", tag = "rotation",
    security(("admin" = ["editor"])),
    responses((status = 200, body = RotationTriggerResponse), (status = 401, body = super::error::ErrorBody)))]
pub async fn trigger(
    _: AdminEditor,
    State(state): State<AppState>,
) -> Result<Json<RotationTriggerResponse>, ApiError> {
    let queued_count = rotation::trigger_fleet(&state.db, &state.config.rotation).await?;
    Ok(Json(RotationTriggerResponse {
        queued_count,
        devices_queued: queued_count,
    }))
}

fn device(entry: DashboardEntry) -> DashboardDevice {
    let row = entry.row;
    DashboardDevice {
        id: row.id,
        key: row.key,
        device_name: row.device_name,
        device_model_code: row.device_model_code,
        active: row.active,
        rotation_state: row.rotation_state,
        last_rotation_completed_at: row.last_rotation_completed_at,
        days_since_rotation: entry.days_since_rotation,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DashboardQuery {
    /// At most this many devices in each of the four lists (1–1000), in key order; `counts`
    /// still counts every device. Without it, every device (as the Python service's UI expects).
    pub limit: Option<u32>,
}

/// Devices grouped by rotation health.
#[utoipa::path(get, path = "/api/rotation/dashboard", tag = "rotation", security(("admin" = [])),
    params(DashboardQuery),
    responses((status = 200, body = RotationDashboard), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn dashboard_view(
    _: AdminReader,
    State(state): State<AppState>,
    Query(query): Query<DashboardQuery>,
) -> Result<Json<RotationDashboard>, ApiError> {
    let limit = match query.limit {
        Some(n) if n == 0 || n > MAX_LIMIT => {
            return Err(ApiError::validation(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )))
        }
        other => other,
    };
    let threshold = state.config.rotation.critical_threshold_days;
    let now = crate::db::now();
    let mut tx = state.db.begin_read().await?;
    let (grouped, counts) = match limit {
        Some(limit) => {
            let (grouped, [healthy, warning, critical, inactive]) =
                dashboard::capped(&mut tx, threshold, now, limit).await?;
            let count = |n: i64| usize::try_from(n).unwrap_or(0);
            let counts = DashboardCounts {
                healthy: count(healthy),
                warning: count(warning),
                critical: count(critical),
                inactive: count(inactive),
            };
            (grouped, counts)
        }
        None => {
            let grouped = dashboard::group(queries::dashboard(&mut tx).await?, threshold, now);
            let counts = DashboardCounts {
                healthy: grouped.healthy.len(),
                warning: grouped.warning.len(),
                critical: grouped.critical.len(),
                inactive: grouped.inactive.len(),
            };
            (grouped, counts)
        }
    };
    tx.commit().await?;
    let list = |entries: Vec<DashboardEntry>| entries.into_iter().map(device).collect();
    Ok(Json(RotationDashboard {
        healthy: list(grouped.healthy),
        warning: list(grouped.warning),
        critical: list(grouped.critical),
        inactive: list(grouped.inactive),
        counts,
    }))
}

/// Queue one device (active or not) for rotation; the fleet's next device starts if none is
/// `PENDING`. Requires `editor`.
#[utoipa::path(post, path = "/api/devices/{id}/rotate", tag = "rotation",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    responses((status = 200, body = DeviceRotateResponse), (status = 404, body = super::error::ErrorBody)))]
pub async fn rotate_device(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeviceRotateResponse>, ApiError> {
    let outcome = rotation::trigger_device(&state.db, &state.config.rotation, id)
        .await?
        .ok_or_else(|| super::devices::not_found(id))?;
    Ok(Json(DeviceRotateResponse {
        status: outcome.as_str(),
    }))
}
