//! Crash groups: `GET /models/{id}/crash-groups?status=&sort=` (a model's groups, filtered and
//! sorted with a plain GET form) and `GET /crash-groups/{id}` (one group: its status buttons,
//! the per-version chart, the versions table and its newest stored dumps).

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::chart::{rate, versions_chart, VersionBar};
use super::format::{self, count};
use super::layout::{Live, Page, Section};
use super::viewer::{Ui, UiError, Viewer};
use crate::coredumps::groups;
use crate::db::crash_groups::{CrashGroupRow, GroupOrder, STATUSES, STATUS_OPEN};
use crate::db::device_models;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::state::AppState;

const LIVE: &str = "crash_group_created crash_group_updated crash_group_regressed coredump_deleted";

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub sort: Option<String>,
    /// The next page's place (the API's `next_cursor`).
    pub cursor: Option<String>,
}

/// Groups per page: a model may have thousands.
const PAGE: u32 = 100;

const SORTS: [(&str, &str, GroupOrder); 3] = [
    ("last_seen", "Most recently seen", GroupOrder::LastSeen),
    ("coredump_count", "Most dumps", GroupOrder::CoredumpCount),
    ("device_count", "Most devices", GroupOrder::DeviceCount),
];

fn invalid(message: String) -> UiError {
    ApiError::validation(message).into()
}

pub async fn list(
    viewer: Viewer,
    State(state): State<AppState>,
    Ui(Path(id)): Ui<Path<i64>>,
    Ui(Query(query)): Ui<Query<ListQuery>>,
) -> Result<Response, UiError> {
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status.filter(|s| !STATUSES.contains(s)) {
        return Err(invalid(format!(
            "There is no crash-group status “{s}”; use open, resolved or ignored."
        )));
    }
    let sort = query
        .sort
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("last_seen");
    let order = SORTS
        .iter()
        .find(|(name, _, _)| *name == sort)
        .map(|(_, _, order)| *order)
        .ok_or_else(|| invalid(format!("There is no sort order “{sort}”.")))?;
    let mut tx = state.db.begin_read().await?;
    let model = device_models::get(&mut tx, id)
        .await?
        .ok_or_else(|| UiError::not_found(format!("DeviceModel {id} was not found")))?;
    tx.commit().await?;
    let page = crate::http::paging::PageQuery {
        limit: Some(PAGE),
        cursor: query.cursor.clone(),
    };
    let (views, next) =
        crate::http::crash_groups::list_page(&state.db, id, status, order, &page).await?;
    let next_href = next.map(|cursor| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = status {
            query.append_pair("status", s);
        }
        query
            .append_pair("sort", sort)
            .append_pair("cursor", &cursor);
        format!("/models/{}/crash-groups?{}", model.id, query.finish())
    });
    let content = html! {
        h1 { "Crash groups of " (model.name) }
        form.filters method="get" {
            label { "Status "
                select name="status" {
                    option value="" selected[status.is_none()] { "all" }
                    @for s in STATUSES { option value=(s) selected[status == Some(s)] { (s) } }
                }
            }
            label { "Sort "
                select name="sort" {
                    @for (name, text, _) in SORTS { option value=(name) selected[sort == name] { (text) } }
                }
            }
            button type="submit" { "Show" }
        }
        @if views.is_empty() {
            p.empty { @match status {
                Some(s) => { "No " (s) " crash groups." },
                None => "No crash groups yet: they appear when core dumps of this model are parsed.",
            } }
        } @else {
            div.table-wrap { table #crash-groups {
                thead { tr {
                    th scope="col" { "Crash" } th scope="col" { "Status" } th scope="col" { "Dumps" }
                    th scope="col" { "Devices" } th scope="col" { "Versions" } th scope="col" { "Last seen" }
                } }
                tbody { @for view in &views {
                    tr {
                        th scope="row" { a href={ "/crash-groups/" (view.group.id) } { (view.group.title) } }
                        td { (status_badge(&view.group)) }
                        td.num { (view.group.coredump_count) }
                        td.num { (view.group.device_count) }
                        td { @for (i, v) in view.versions.iter().enumerate() { @if i > 0 { ", " } code { (v.firmware_version) } } }
                        td { (format::time(view.group.last_seen_at)) }
                    }
                } }
            } }
            @if let Some(href) = &next_href {
                p.pager { a rel="next" href=(href) { "Next " (PAGE) " groups" } }
            }
        }
    };
    Ok(Page::new(
        format!("Crash groups of {}", model.name),
        Some(viewer.identity()),
    )
    .section(Section::Fleet)
    .crumb("Fleet", "/")
    .crumb(model.name.clone(), format!("/models/{}", model.id))
    .live(Live {
        events: LIVE,
        model: Some(model.id),
        ..Live::default()
    })
    .ok(content))
}

fn status_badge(group: &CrashGroupRow) -> Markup {
    html! {
        span class={ "badge status-" (group.status) } { (group.status) }
        @if group.regressed_at.is_some() && group.status == STATUS_OPEN { " " span.badge.bad { "regressed" } }
    }
}

pub async fn detail(
    viewer: Viewer,
    State(state): State<AppState>,
    Ui(Path(id)): Ui<Path<i64>>,
) -> Result<Response, UiError> {
    let detail = groups::detail(&state.db, id)
        .await
        .map_err(ApiError::from)?;
    let group = &detail.group;
    let mut tx = state.db.begin_read().await?;
    let model = device_models::get(&mut tx, group.device_model_id).await?;
    tx.commit().await?;
    let (model_name, model_href) = match &model {
        Some(m) => (m.name.clone(), format!("/models/{}", m.id)),
        None => ("model".to_string(), "/".to_string()),
    };
    let bars: Vec<VersionBar> = detail
        .versions
        .iter()
        .map(|v| VersionBar {
            version: v.firmware_version.clone(),
            coredumps: v.coredump_count,
            devices: v.device_count,
            running: detail
                .devices_running
                .get(&v.firmware_version)
                .copied()
                .unwrap_or(0),
        })
        .collect();
    let now = crate::db::now();
    let content = html! {
        header.page-head {
            h1 { (group.title) }
            p.sub { (status_badge(group)) " · " (count(group.coredump_count, "dump", "dumps")) " from "
                (count(group.device_count, "device", "devices")) " · first seen " (format::time(group.first_seen_at))
                ", last seen " (format::time_ago(group.last_seen_at, now)) }
        }
        @if viewer.can_edit() { (status_buttons(group)) }
        dl.facts {
            dt { "Signature" } dd { code.wrap { (group.signature) } }
            @if let Some(t) = group.resolved_at { dt { "Resolved" } dd { (format::time(t)) } }
            @if let Some(t) = group.regressed_at { dt { "Regressed" } dd { (format::time(t)) } }
            dt { "Stored dumps" } dd { (detail.stored) " of " (group.coredump_count) " (retention and deletes remove dumps, not counts)" }
        }
        section aria-labelledby="versions-heading" {
            h2 #versions-heading { "By firmware version" }
            @if bars.is_empty() { p.empty { "No dumps are counted in this group." } } @else {
                (versions_chart(&bars))
                div.table-wrap { table #group-versions {
                    thead { tr { th scope="col" { "Version" } th scope="col" { "Dumps" } th scope="col" { "Devices" }
                        th scope="col" { "Crash rate" } th scope="col" { "First seen" } th scope="col" { "Last seen" } } }
                    tbody { @for (bar, v) in bars.iter().zip(&detail.versions) { tr {
                        th scope="row" { code { (bar.version) } }
                        td.num { (bar.coredumps) } td.num { (bar.devices) } td { (rate(bar)) }
                        td { (format::time(v.first_seen_at)) } td { (format::time(v.last_seen_at)) }
                    } } }
                } }
            }
        }
        section aria-labelledby="newest-heading" {
            h2 #newest-heading { "Newest dumps" }
            @if detail.newest.is_empty() { p.empty { "None of its dumps is stored any more." } } @else {
                ul.list { @for d in &detail.newest { li {
                    a href={ "/devices/" (d.device_id) "/coredumps/" (d.id) } { "Dump #" (d.id) }
                    " from " code { (d.device_key) } " running " code { (d.firmware_version) } ", " (format::time_ago(d.uploaded_at, now))
                } } }
            }
        }
    };
    Ok(Page::new(group.title.clone(), Some(viewer.identity()))
        .section(Section::Fleet)
        .crumb("Fleet", "/")
        .crumb(model_name, model_href.clone())
        .crumb("Crash groups", format!("{model_href}/crash-groups"))
        .live(Live {
            events: LIVE,
            group: Some(group.id),
            ..Live::default()
        })
        .ok(content))
}

/// Resolve, ignore or reopen: the statuses the group is not in.
fn status_buttons(group: &CrashGroupRow) -> Markup {
    let url = format!("/api/crash-groups/{}", group.id);
    let actions = [
        ("resolved", "Resolve"),
        ("ignored", "Ignore"),
        ("open", "Reopen"),
    ];
    html! {
        p.actions #status-actions {
            @for (status, text) in actions {
                @if group.status != status {
                    button type="button" data-api-method="PUT" data-api-url=(url)
                        data-body=(serde_json::json!({"status": status}).to_string())
                        data-success={ "The crash group is " (status) " now." } data-done="refresh" { (text) }
                    " "
                }
            }
        }
    }
}
