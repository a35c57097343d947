//! Core dumps over HTTP (SPEC §5, §8): the device upload `POST /api/iot/coredump` and the admin
//! routes under `/api/devices/{id}/coredumps`.
//!
//! Every admin route is scoped to the device in the URL: a dump of another device is a 404, as is
//! an unknown device. No response has a `filename` field (that column is legacy-only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{AdminEditor, AdminReader};
use super::download::{self, Download};
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::paging::{self, PageQuery, Position};
use crate::coredumps::manage::{self, ManageError};
use crate::db::coredumps::{self, CoredumpRow};
use crate::layout::coredump_key;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/devices/{id}/coredumps", get(list).delete(remove_all))
        .route(
            "/api/devices/{id}/coredumps/{cid}",
            get(fetch).delete(remove),
        )
        .route("/api/devices/{id}/coredumps/{cid}/download", get(download))
        .route("/api/devices/{id}/coredumps/{cid}/reparse", post(reparse))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CoredumpSummary {
    pub id: i64,
    pub device_id: i64,
    pub chip: String,
    pub firmware_version: String,
    /// Bytes.
    pub size: i64,
    /// `PENDING`, `PARSED` or `ERROR`.
    pub parse_status: String,
    pub uploaded_at: DateTime<Utc>,
    /// When parsing finished (`PARSED` or `ERROR`).
    pub parsed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The crash group the dump is in (`GET /api/crash-groups/{id}`); `null` until it is grouped
    /// (pending, failed, or parsed without a structured report).
    pub crash_group_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CoredumpList {
    pub coredumps: Vec<CoredumpSummary>,
    /// The number of dumps in this response.
    pub count: usize,
    /// With `limit`: the `cursor` of the next page, null on the last one.
    pub next_cursor: Option<String>,
}

/// A place in a device's dump list: `uploaded_at` (microseconds) and id of a page's last dump.
struct AfterDump(DateTime<Utc>, i64);

impl Position for AfterDump {
    const KIND: &'static str = "coredump";
    fn encode(&self) -> String {
        format!("{}:{}", self.0.timestamp_micros(), self.1)
    }
    fn decode(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once(':')?;
        let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        // Years PostgreSQL can hold (it refuses, with a 500, what chrono still can): no upload
        // time is outside them, so neither is a cursor this list made.
        if !(1..=9999).contains(&chrono::Datelike::year(&at)) {
            return None;
        }
        Some(AfterDump(at, id.parse().ok()?))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CoredumpDetail {
    pub id: i64,
    pub device_id: i64,
    pub chip: String,
    pub firmware_version: String,
    pub size: i64,
    pub parse_status: String,
    /// The readable crash report when `PARSED`; why parsing failed when `ERROR`.
    pub parsed_output: Option<String>,
    /// The structured crash report (chip, exception, crashed task, every task's registers and
    /// symbolised backtrace) when the built-in parser produced it; `null` otherwise.
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    pub uploaded_at: DateTime<Utc>,
    pub parsed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The crash group the dump is in; `null` until it is grouped.
    pub crash_group_id: Option<i64>,
}

fn summary(row: CoredumpRow) -> CoredumpSummary {
    CoredumpSummary {
        id: row.id,
        device_id: row.device_id,
        chip: row.chip,
        firmware_version: row.firmware_version,
        size: row.size,
        parse_status: row.parse_status,
        uploaded_at: row.uploaded_at,
        parsed_at: row.parsed_at,
        created_at: row.created_at,
        crash_group_id: row.crash_group_id,
    }
}

fn detail(row: CoredumpRow) -> CoredumpDetail {
    CoredumpDetail {
        report: row
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        id: row.id,
        device_id: row.device_id,
        chip: row.chip,
        firmware_version: row.firmware_version,
        size: row.size,
        parse_status: row.parse_status,
        parsed_output: row.parsed_output,
        uploaded_at: row.uploaded_at,
        parsed_at: row.parsed_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        crash_group_id: row.crash_group_id,
    }
}

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("Coredump {id} was not found"))
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::DeviceNotFound(id) => super::devices::not_found(id),
            ManageError::CoredumpNotFound(id) => not_found(id),
            ManageError::Db(e) => e.into(),
            ManageError::Key(e) => e.into(),
        }
    }
}

/// A device's core dumps, newest first, optionally paged.
#[utoipa::path(get, path = "/api/devices/{id}/coredumps", tag = "coredumps",
    security(("admin" = [])), params(("id" = i64, Path, description = "Device id"), PageQuery),
    responses((status = 200, body = CoredumpList), (status = 404, body = super::error::ErrorBody)))]
pub async fn list(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Result<Json<CoredumpList>, ApiError> {
    let page = query.page::<AfterDump>()?;
    let after = page.after.as_ref().map(|a| (a.0, a.1));
    let mut tx = state.db.begin_read().await?;
    manage::device_key(&mut tx, id).await?;
    let rows = coredumps::list(&mut tx, id, after, page.limit.map(|n| n + 1)).await?;
    tx.commit().await?;
    let (rows, next_cursor) = paging::finish(rows, page.limit, |c| AfterDump(c.uploaded_at, c.id));
    let coredumps: Vec<_> = rows.into_iter().map(summary).collect();
    Ok(Json(CoredumpList {
        count: coredumps.len(),
        coredumps,
        next_cursor,
    }))
}

/// One core dump with its crash report.
#[utoipa::path(get, path = "/api/devices/{id}/coredumps/{cid}", tag = "coredumps",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device id"), ("cid" = i64, Path, description = "Core dump id")),
    responses((status = 200, body = CoredumpDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn fetch(
    _: AdminReader,
    State(state): State<AppState>,
    Path((id, cid)): Path<(i64, i64)>,
) -> Result<Json<CoredumpDetail>, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let (_, row) = manage::load(&mut tx, id, cid).await?;
    tx.commit().await?;
    Ok(Json(detail(row)))
}

/// Download the raw dump (streamed; `HEAD` and `Range` supported).
#[utoipa::path(get, path = "/api/devices/{id}/coredumps/{cid}/download", tag = "coredumps",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device id"), ("cid" = i64, Path, description = "Core dump id")),
    responses((status = 200, description = "The dump, as `coredump_{cid}.dmp`", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range"),
        (status = 404, body = super::error::ErrorBody),
        (status = 416, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn download(
    _: AdminReader,
    State(state): State<AppState>,
    Path((id, cid)): Path<(i64, i64)>,
    method: http::Method,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin_read().await?;
    let (key, row) = manage::load(&mut tx, id, cid).await?;
    tx.commit().await?;
    let object = coredump_key(&key, row.id)?;
    // A row without its object is a known state, not a server fault: a dump adopted from the
    // Python service whose file `migrate-to-s3` has not moved yet, or an object lost since.
    if let Err(crate::storage::StorageError::NotFound { .. }) = state.storage.head(&object).await {
        tracing::warn!(coredump_id = row.id, key = %object, "coredump_object_missing");
        return Err(ApiError::NotFound(format!(
            "Core dump {cid} has no file in the object store: if this database was adopted from \
             the Python service, run `iotsupport migrate-to-s3`; otherwise `iotsupport reconcile` \
             reports the missing object"
        )));
    }
    let download = Download {
        key: object,
        // A dump never changes under its id; the id, size and upload time name its content even
        // if a database restored with its sequence turned back hands an id out again.
        etag: Some(format!(
            "coredump-{}-{}-{}",
            row.id,
            row.size,
            row.uploaded_at.timestamp_micros()
        )),
        content_type: "application/octet-stream",
        filename: format!("coredump_{}.dmp", row.id),
        // Deleted (pruned) between the check above and the read: gone, as for a later request.
        missing: Some(format!("Coredump {cid} was not found")),
    };
    download::respond(&state.storage, download, &method, &headers).await
}

/// Delete one core dump (its object goes via the outbox). Requires `editor`.
#[utoipa::path(delete, path = "/api/devices/{id}/coredumps/{cid}", tag = "coredumps",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device id"), ("cid" = i64, Path, description = "Core dump id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = super::error::ErrorBody)))]
pub async fn remove(
    _: AdminEditor,
    State(state): State<AppState>,
    Path((id, cid)): Path<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    manage::delete(&state.db, id, cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete all core dumps of a device (their objects go via the outbox). Requires `editor`.
#[utoipa::path(delete, path = "/api/devices/{id}/coredumps", tag = "coredumps",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Device id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = super::error::ErrorBody)))]
pub async fn remove_all(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    manage::delete_all(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queue a core dump for parsing again (e.g. after its firmware ELF was uploaded): it becomes
/// `PENDING` with its previous result cleared. Requires `editor`.
#[utoipa::path(post, path = "/api/devices/{id}/coredumps/{cid}/reparse", tag = "coredumps",
    security(("admin" = ["editor"])),
    params(("id" = i64, Path, description = "Device id"), ("cid" = i64, Path, description = "Core dump id")),
    responses((status = 202, description = "Queued; the dump as it is now (PENDING)", body = CoredumpDetail),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn reparse(
    _: AdminEditor,
    State(state): State<AppState>,
    Path((id, cid)): Path<(i64, i64)>,
) -> Result<(StatusCode, Json<CoredumpDetail>), ApiError> {
    let row = manage::reparse(&state.db, id, cid).await?;
    Ok((StatusCode::ACCEPTED, Json(detail(row))))
}
