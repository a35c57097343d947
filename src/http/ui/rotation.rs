//! `GET /rotation`: the rotation dashboard. The fleet's devices grouped by rotation health
//! (`crate::credentials::dashboard`: critical, warning, healthy, inactive), the counts per state,
//! the schedule, and the button that queues the whole fleet (`POST /api/rotation/trigger`).

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::format;
use super::layout::{Live, Page, Section};
use super::model::rotation_badge;
use super::viewer::{UiError, Viewer};
use crate::credentials::dashboard::{self, DashboardEntry};
use crate::credentials::rotation::{self, STATES};
use crate::db::rotation as queries;
use crate::state::AppState;

const LIVE: &str = "rotation-updated device_created device_updated device_deleted";

/// Devices listed per group, in key order: the page costs the same for 100 devices as for
/// 100,000 (`dashboard::capped`), and it is drawn again on every rotation event.
const SHOWN_PER_GROUP: u32 = 100;

pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Result<Response, UiError> {
    let now = crate::db::now();
    let mut tx = state.db.begin_read().await?;
    let (grouped, counts) = dashboard::capped(
        &mut tx,
        state.config.rotation.critical_threshold_days,
        now,
        SHOWN_PER_GROUP,
    )
    .await?;
    let status = queries::status(&mut tx).await?;
    tx.commit().await?;
    let [healthy, warning, critical, inactive] = counts;
    let by_state: HashMap<&str, i64> = status
        .by_state
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    let groups = [
        (
            "critical",
            "Critical",
            "Timed out, and the last completed rotation is older than the critical threshold.",
            &grouped.critical,
            critical,
        ),
        (
            "warning",
            "Warning",
            "The last rotation attempt timed out; it is retried.",
            &grouped.warning,
            warning,
        ),
        (
            "healthy",
            "Healthy",
            "Rotated, queued or being rotated.",
            &grouped.healthy,
            healthy,
        ),
        (
            "inactive",
            "Inactive",
            "Inactive devices are not rotated with the fleet.",
            &grouped.inactive,
            inactive,
        ),
    ];
    let content = html! {
        h1 { "Credential rotation" }
        div.cards {
            @for (class, title, _, _, total) in &groups {
                a class={ "card " (class) } href={ "#" (class) } { strong { (total) } " " (title.to_lowercase()) }
            }
        }
        p {
            @for (i, state) in STATES.iter().enumerate() {
                @if i > 0 { ", " }
                (state) ": " (by_state.get(state).copied().unwrap_or(0))
            }
            ". Last completed rotation: " (format::maybe_ago(status.last_completed, now, "never")) ". "
            "Next scheduled: " @match rotation::next_scheduled(&state.config.rotation) {
                Some(next) => (next),
                None => "none (ROTATION_CRON is not set)",
            } "."
        }
        @if viewer.can_edit() {
            p {
                button type="button" #trigger-rotation data-api-method="POST" data-api-url="/api/rotation/trigger"
                    data-confirm="Queue every active device for a new secret? Devices are rotated one at a time."
                    data-success-field="queued_count" data-success="{n} devices were queued for rotation."
                    data-done="refresh" { "Rotate the whole fleet" }
            }
        }
        @for (class, title, about, entries, total) in &groups {
            section id=(class) aria-labelledby={ (class) "-heading" } {
                h2 id={ (class) "-heading" } { (title) " (" (total) ")" }
                p.hint { (about)
                    @if *total > entries.len() as i64 { " The first " (entries.len()) ", in key order." } }
                @if entries.is_empty() { p.empty { "No devices." } } @else { (table(entries, now)) }
            }
        }
    };
    Ok(Page::new("Credential rotation", Some(viewer.identity()))
        .section(Section::Rotation)
        .live(Live {
            events: LIVE,
            ..Live::default()
        })
        .ok(content))
}

fn table(entries: &[DashboardEntry], now: DateTime<Utc>) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr {
                th scope="col" { "Device" } th scope="col" { "Model" } th scope="col" { "State" }
                th scope="col" { "Last completed rotation" }
            } }
            tbody { @for e in entries { tr {
                th scope="row" { a href={ "/devices/" (e.row.id) } { code { (e.row.key) } }
                    @if let Some(name) = &e.row.device_name { " " (name) } }
                td { code { (e.row.device_model_code) } }
                td { (rotation_badge(&e.row.rotation_state)) }
                td { (format::maybe_ago(e.row.last_rotation_completed_at, now, "never")) }
            } } }
        } }
    }
}
