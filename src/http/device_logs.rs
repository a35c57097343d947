//! Device logs for admins (SPEC §14): `GET /api/devices/{id}/logs` (history, the Python service's
//! paging) and `POST /api/device-logs/subscribe` / `unsubscribe` (live lines on the event stream
//! of the same `request_id`, as `device-logs` messages).

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::AdminReader;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::db::device_logs as queries;
use crate::device_logs::window::{self, LogQuery};
use crate::device_logs::wire_time;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/devices/{id}/logs", get(history))
        .route("/api/device-logs/subscribe", post(subscribe))
        .route("/api/device-logs/unsubscribe", post(unsubscribe))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// ISO 8601; with or without `end`, the window starts here (default: an hour before `end`).
    pub start: Option<String>,
    /// ISO 8601; alone, pages backwards from here.
    pub end: Option<String>,
    /// Case-insensitive wildcard over the whole message (`*`, `?`).
    pub query: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntry {
    /// ISO 8601, UTC, microseconds.
    pub timestamp: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub logs: Vec<LogEntry>,
    pub has_more: bool,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSubscription {
    /// The `request_id` of the caller's `GET /api/sse/stream`.
    pub request_id: String,
    pub device_id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscribeResponse {
    /// `subscribed`.
    pub status: &'static str,
    pub device_entity_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnsubscribeResponse {
    /// `unsubscribed`.
    pub status: &'static str,
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.with_timezone(&Utc)))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| Some(n.and_utc()))
        })
        .map_err(|_| {
            ApiError::validation(format!(
                "{name} must be an ISO 8601 date-time, not {:?}",
                raw.chars().take(40).collect::<String>()
            ))
        })
}

/// The device and its entity id, or 404.
async fn device_entity(state: &AppState, id: i64) -> Result<Option<String>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let row = crate::db::devices::get(&mut tx, id)
        .await?
        .ok_or_else(|| super::devices::not_found(id))?;
    tx.commit().await?;
    Ok(row.device_entity_id)
}

/// A device's log lines in a window (the Python service's paging: see `LogsQuery`).
#[utoipa::path(get, path = "/api/devices/{id}/logs", tag = "devices",
    security(("admin" = [])), params(("id" = i64, Path, description = "Device id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn history(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let start = parse_time("start", query.start.as_deref())?;
    let end = parse_time("end", query.end.as_deref())?;
    let empty = LogPage {
        logs: Vec::new(),
        has_more: false,
        window_start: None,
        window_end: None,
    };
    if device_entity(&state, id).await?.is_none() {
        // No entity id: no log document can name this device.
        return Ok(Json(empty));
    }
    let page = window::page(
        &state.db,
        id,
        &LogQuery {
            start,
            end,
            query: query.query,
        },
        crate::db::now(),
    )
    .await?;
    Ok(Json(LogPage {
        logs: page
            .lines
            .into_iter()
            .map(|l| LogEntry {
                timestamp: wire_time(l.logged_at),
                message: l.message,
            })
            .collect(),
        has_more: page.has_more,
        window_start: page.window_start.map(wire_time),
        window_end: page.window_end.map(wire_time),
    }))
}

fn bounded_request_id(request_id: &str) -> Result<&str, ApiError> {
    if request_id.is_empty() || request_id.len() > 128 || request_id.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "request_id must be 1-128 characters without control characters",
        ));
    }
    Ok(request_id)
}

/// Stream `request_id`'s event stream gets this device's new log lines as `device-logs` messages.
#[utoipa::path(post, path = "/api/device-logs/subscribe", tag = "devices",
    security(("admin" = [])), request_body = LogSubscription,
    responses((status = 200, body = SubscribeResponse),
        (status = 404, description = "No such device, or it has no entity id", body = super::error::ErrorBody)))]
pub async fn subscribe(
    _: AdminReader,
    State(state): State<AppState>,
    Json(body): Json<LogSubscription>,
) -> Result<Json<SubscribeResponse>, ApiError> {
    let request_id = bounded_request_id(&body.request_id)?;
    let entity = device_entity(&state, body.device_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("Device entity ID {} was not found", body.device_id))
        })?;
    queries::subscribe(&state.db, request_id, body.device_id).await?;
    state.log_hub.subscriptions_changed();
    Ok(Json(SubscribeResponse {
        status: "subscribed",
        device_entity_id: entity,
    }))
}

/// Ends a subscription of `subscribe`.
#[utoipa::path(post, path = "/api/device-logs/unsubscribe", tag = "devices",
    security(("admin" = [])), request_body = LogSubscription,
    responses((status = 200, body = UnsubscribeResponse),
        (status = 404, description = "No such subscription", body = super::error::ErrorBody)))]
pub async fn unsubscribe(
    _: AdminReader,
    State(state): State<AppState>,
    Json(body): Json<LogSubscription>,
) -> Result<Json<UnsubscribeResponse>, ApiError> {
    let request_id = bounded_request_id(&body.request_id)?;
    if !queries::unsubscribe(&state.db, request_id, body.device_id).await? {
        return Err(ApiError::NotFound(format!(
            "No log subscription of device {} for this stream",
            body.device_id
        )));
    }
    state.log_hub.subscriptions_changed();
    Ok(Json(UnsubscribeResponse {
        status: "unsubscribed",
    }))
}
