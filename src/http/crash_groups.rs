//! Crash groups over HTTP (SPEC §15): a model's groups, one group with its per-version counts and
//! newest dumps, and setting a group's status. The grouping itself happens when dumps are parsed
//! (`crate::coredumps::groups`).

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AdminEditor, AdminReader};
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::paging::{self, PageQuery, Position};
use crate::coredumps::groups::{self, GroupDetail, GroupError, GroupView};
use crate::db::crash_groups::{
    CrashGroupRow, GroupAfter, GroupDumpRow, GroupOrder, VersionRow, STATUSES,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/device-models/{id}/crash-groups", get(list))
        .route("/api/crash-groups/{id}", get(fetch).put(update))
}

/// One crash group: a distinct crash of a device model.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrashGroupSummary {
    pub id: i64,
    pub device_model_id: i64,
    /// `<reason> in <innermost application function>`, e.g. `abort() in fail_once`.
    pub title: String,
    /// The signature's canonical text: `v1 | <reason> | <f1> > <f2> > <f3>`.
    pub signature: String,
    /// SHA-256 (hex) of `signature`; unique per model.
    pub signature_hash: String,
    /// `open`, `resolved` or `ignored`.
    pub status: String,
    /// Upload time of the group's earliest dump.
    pub first_seen_at: DateTime<Utc>,
    /// Upload time of the group's latest dump.
    pub last_seen_at: DateTime<Utc>,
    /// Dumps ever grouped here, including dumps deleted since.
    pub coredump_count: i64,
    /// Distinct devices among those dumps.
    pub device_count: i64,
    /// The firmware versions its dumps reported, in the order they were first seen (the first
    /// is the build it appeared in).
    pub firmware_versions: Vec<String>,
    /// When a dump uploaded after the group was resolved last reopened it.
    pub regressed_at: Option<DateTime<Utc>>,
    /// When the group was last set to `resolved`.
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CrashGroupList {
    pub crash_groups: Vec<CrashGroupSummary>,
    /// The number of groups in this response.
    pub count: usize,
    /// With `limit`: the `cursor` of the next page, null on the last one.
    pub next_cursor: Option<String>,
}

/// A group's counts for one firmware version.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirmwareVersionCounts {
    pub firmware_version: String,
    /// Dumps of this group that reported this version.
    pub coredump_count: i64,
    /// Distinct devices among them.
    pub device_count: i64,
    /// Devices of the model whose latest report (uploads, `X-Firmware-Version`) says they run
    /// this version: the denominator of a crash rate (`device_count / devices_running`).
    pub devices_running: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// One of a group's dumps still stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrashGroupDump {
    pub id: i64,
    pub device_id: i64,
    pub device_key: String,
    pub chip: String,
    pub firmware_version: String,
    pub size: i64,
    pub parse_status: String,
    pub uploaded_at: DateTime<Utc>,
    pub parsed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A group with its counts per firmware version and its newest dumps.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrashGroupDetail {
    #[serde(flatten)]
    pub group: CrashGroupSummary,
    /// Counts per firmware version, in the order each was first seen.
    pub firmware_version_counts: Vec<FirmwareVersionCounts>,
    /// The newest 20 dumps still stored, newest first.
    pub coredumps: Vec<CrashGroupDump>,
    /// How many of the group's dumps are still stored (retention and deletes remove dumps, not
    /// counts).
    pub stored_coredump_count: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CrashGroupQuery {
    /// Only groups with this status: `open`, `resolved` or `ignored`.
    pub status: Option<String>,
    /// `last_seen` (default, most recently seen first), `coredump_count` or `device_count`
    /// (most first; `dump_count` is accepted for `coredump_count`).
    pub sort: Option<String>,
    /// At most this many groups (1–1000); without it, every group.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (of the same `sort`).
    pub cursor: Option<String>,
}

/// A place in a model's group list: the sort it was made for and the last group of a page.
struct AfterGroup(GroupOrder, GroupAfter);

fn sort_name(order: GroupOrder) -> &'static str {
    match order {
        GroupOrder::LastSeen => "last_seen",
        GroupOrder::CoredumpCount => "coredump_count",
        GroupOrder::DeviceCount => "device_count",
    }
}

impl Position for AfterGroup {
    const KIND: &'static str = "crash_group";
    fn encode(&self) -> String {
        let AfterGroup(order, after) = self;
        format!(
            "{}:{}:{}:{}",
            sort_name(*order),
            after.count,
            after.last_seen_at.timestamp_micros(),
            after.id
        )
    }
    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let order = order_of(Some(parts.next()?)).ok()?;
        let count = parts.next()?.parse().ok()?;
        let last_seen_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = parts.next()?.parse().ok()?;
        // Years PostgreSQL can hold (no upload time is outside them); nothing after the id.
        if !(1..=9999).contains(&chrono::Datelike::year(&last_seen_at)) || parts.next().is_some() {
            return None;
        }
        Some(AfterGroup(
            order,
            GroupAfter {
                count,
                last_seen_at,
                id,
            },
        ))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CrashGroupUpdate {
    /// `open`, `resolved` or `ignored`.
    pub status: String,
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("CrashGroup {id} was not found"))
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::NotFound(id) => not_found(id),
            GroupError::ModelNotFound(id) => super::device_models::not_found(id),
            GroupError::Db(e) => e.into(),
        }
    }
}

fn status_of(value: &str) -> Result<&str, ApiError> {
    STATUSES.into_iter().find(|s| *s == value).ok_or_else(|| {
        ApiError::validation(format!("status must be one of {}", STATUSES.join(", ")))
    })
}

fn order_of(value: Option<&str>) -> Result<GroupOrder, ApiError> {
    match value.unwrap_or("") {
        "" | "last_seen" => Ok(GroupOrder::LastSeen),
        "coredump_count" | "dump_count" => Ok(GroupOrder::CoredumpCount),
        "device_count" => Ok(GroupOrder::DeviceCount),
        _ => Err(ApiError::validation(
            "sort must be one of last_seen, coredump_count, device_count",
        )),
    }
}

fn summary(group: CrashGroupRow, versions: &[VersionRow]) -> CrashGroupSummary {
    CrashGroupSummary {
        firmware_versions: versions
            .iter()
            .map(|v| v.firmware_version.clone())
            .collect(),
        id: group.id,
        device_model_id: group.device_model_id,
        title: group.title,
        signature: group.signature,
        signature_hash: group.signature_hash,
        status: group.status,
        first_seen_at: group.first_seen_at,
        last_seen_at: group.last_seen_at,
        coredump_count: group.coredump_count,
        device_count: group.device_count,
        regressed_at: group.regressed_at,
        resolved_at: group.resolved_at,
        created_at: group.created_at,
        updated_at: group.updated_at,
    }
}

fn counts(v: VersionRow, running: &HashMap<String, i64>) -> FirmwareVersionCounts {
    FirmwareVersionCounts {
        devices_running: running.get(&v.firmware_version).copied().unwrap_or(0),
        firmware_version: v.firmware_version,
        coredump_count: v.coredump_count,
        device_count: v.device_count,
        first_seen_at: v.first_seen_at,
        last_seen_at: v.last_seen_at,
    }
}

fn dump(row: GroupDumpRow) -> CrashGroupDump {
    CrashGroupDump {
        id: row.id,
        device_id: row.device_id,
        device_key: row.device_key,
        chip: row.chip,
        firmware_version: row.firmware_version,
        size: row.size,
        parse_status: row.parse_status,
        uploaded_at: row.uploaded_at,
        parsed_at: row.parsed_at,
        created_at: row.created_at,
    }
}

fn detail(d: GroupDetail) -> CrashGroupDetail {
    let GroupDetail {
        group,
        versions,
        devices_running,
        newest,
        stored,
    } = d;
    CrashGroupDetail {
        group: summary(group, &versions),
        firmware_version_counts: versions
            .into_iter()
            .map(|v| counts(v, &devices_running))
            .collect(),
        coredumps: newest.into_iter().map(dump).collect(),
        stored_coredump_count: stored,
    }
}

/// A model's crash groups, most recently seen first (or by `sort`), optionally of one status,
/// optionally paged (`limit`, `cursor`: see `GET /api/devices`).
#[utoipa::path(get, path = "/api/device-models/{id}/crash-groups", tag = "crash groups",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Device model id"), CrashGroupQuery),
    responses((status = 200, body = CrashGroupList),
        (status = 400, description = "Unknown status or sort, a bad limit, or a cursor not of this list and sort", body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn list(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<CrashGroupQuery>,
) -> Result<Json<CrashGroupList>, ApiError> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(status_of(s)?),
        None => None,
    };
    let order = order_of(query.sort.as_deref())?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let (views, next_cursor) = list_page(&state.db, id, status, order, &page).await?;
    let crash_groups: Vec<_> = views
        .into_iter()
        .map(|GroupView { group, versions }| summary(group, &versions))
        .collect();
    Ok(Json(CrashGroupList {
        count: crash_groups.len(),
        crash_groups,
        next_cursor,
    }))
}

/// One page of a model's groups (all of them without a limit) and the cursor of the next; the
/// API's list and the UI's share it.
pub(crate) async fn list_page(
    db: &crate::db::Db,
    model_id: i64,
    status: Option<&str>,
    order: GroupOrder,
    page: &PageQuery,
) -> Result<(Vec<GroupView>, Option<String>), ApiError> {
    let page = page.page::<AfterGroup>()?;
    let after = match page.after {
        Some(AfterGroup(made_for, after)) if made_for == order => Some(after),
        Some(_) => {
            return Err(ApiError::validation(
                "cursor is a next_cursor of another sort order",
            ))
        }
        None => None,
    };
    let limit = page.limit.map(|n| i64::from(n) + 1);
    let views = groups::list(db, model_id, status, order, after, limit).await?;
    Ok(paging::finish(views, page.limit, |v| {
        AfterGroup(order, GroupAfter::of(&v.group, order))
    }))
}

/// One crash group with its counts per firmware version and its newest dumps.
#[utoipa::path(get, path = "/api/crash-groups/{id}", tag = "crash groups",
    security(("admin" = [])), params(("id" = i64, Path, description = "Crash group id")),
    responses((status = 200, body = CrashGroupDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn fetch(
    _: AdminReader,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<CrashGroupDetail>, ApiError> {
    Ok(Json(detail(groups::detail(&state.db, id).await?)))
}

/// Set a crash group's status: `resolved` (a dump uploaded later reopens it as a regression),
/// `ignored` (stays ignored, still counts) or `open`. Requires `editor`.
#[utoipa::path(put, path = "/api/crash-groups/{id}", tag = "crash groups",
    security(("admin" = ["editor"])), params(("id" = i64, Path, description = "Crash group id")),
    request_body = CrashGroupUpdate,
    responses((status = 200, body = CrashGroupDetail),
        (status = 400, description = "Unknown status", body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn update(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<CrashGroupUpdate>,
) -> Result<Json<CrashGroupDetail>, ApiError> {
    let status = status_of(&body.status)?;
    groups::set_status(&state.db, id, status).await?;
    Ok(Json(detail(groups::detail(&state.db, id).await?)))
}
