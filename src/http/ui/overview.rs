//! `GET /`: the fleet at a glance. Every model with its device count, current version, the
//! versions its devices report running and its open crash groups; the rotation summary; a form
//! for the first (or next) model.
//!
//! Cost: five aggregate queries in one read transaction (`db::fleet_summary`, `GROUP BY` over
//! `devices`, `crash_groups`, `coredumps`), whatever the fleet's size; `bench/ui.sh` times it with
//! 1,000 devices and 10,000 dumps.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::format::{self, count};
use super::layout::{Live, Page, Section};
use super::viewer::{UiError, Viewer};
use crate::credentials::rotation::{self, STATES};
use crate::db::device_models::{self, DeviceModelRow};
use crate::db::fleet_summary::{self, OpenCrashGroups, RotationHealth, RunningVersion};
use crate::db::rotation::{self as rotation_db, StatusCounts};
use crate::state::AppState;

const LIVE: &str = "device_model_created device_model_updated device_model_deleted \
    device_created device_updated device_deleted firmware_uploaded firmware_current_set \
    firmware_version_deleted crash_group_created crash_group_updated crash_group_regressed \
    coredump_stored rotation-updated";

struct Fleet {
    models: Vec<DeviceModelRow>,
    running: HashMap<i64, Vec<RunningVersion>>,
    groups: HashMap<i64, OpenCrashGroups>,
    recent: HashMap<i64, i64>,
    status: StatusCounts,
    health: RotationHealth,
    next_rotation: Option<String>,
    now: DateTime<Utc>,
}

async fn load(state: &AppState) -> Result<Fleet, UiError> {
    let now = crate::db::now();
    let threshold = chrono::Duration::days(state.config.rotation.critical_threshold_days);
    let mut tx = state.db.begin_read().await?;
    let models = device_models::list(&mut tx).await?;
    let mut running: HashMap<i64, Vec<RunningVersion>> = HashMap::new();
    for row in fleet_summary::running_versions(&mut tx).await? {
        running.entry(row.device_model_id).or_default().push(row);
    }
    let groups = fleet_summary::open_crash_groups(&mut tx)
        .await?
        .into_iter()
        .map(|g| (g.device_model_id, g))
        .collect();
    let since = now - chrono::Duration::hours(24);
    let recent = fleet_summary::recent_coredumps(&mut tx, since)
        .await?
        .into_iter()
        .collect();
    let status = rotation_db::status(&mut tx).await?;
    let health = fleet_summary::rotation_health(&mut tx, now - threshold).await?;
    tx.commit().await?;
    Ok(Fleet {
        models,
        running,
        groups,
        recent,
        status,
        health,
        next_rotation: rotation::next_scheduled(&state.config.rotation),
        now,
    })
}

pub async fn page(viewer: Viewer, State(state): State<AppState>) -> Result<Response, UiError> {
    let fleet = load(&state).await?;
    let devices: i64 = fleet.models.iter().map(|m| m.device_count).sum();
    let open: i64 = fleet.groups.values().map(|g| g.groups).sum();
    let recent: i64 = fleet.recent.values().sum();
    let content = html! {
        h1 { "Fleet" }
        ul.stats {
            li { strong { (fleet.models.len()) } " " (if fleet.models.len() == 1 { "model" } else { "models" }) }
            li { strong { (devices) } " " (if devices == 1 { "device" } else { "devices" }) }
            li { strong { (open) } " open crash " (if open == 1 { "group" } else { "groups" }) }
            li { strong { (recent) } " core " (if recent == 1 { "dump" } else { "dumps" }) " in 24 h" }
        }
        section aria-labelledby="models-heading" {
            h2 #models-heading { "Device models" }
            @if fleet.models.is_empty() {
                p.empty {
                    "No device models yet. A device model is one kind of device — a thermostat, a \
                     door sensor — with its firmware builds and its devices. Create the first one \
                     below; then upload a firmware bundle to it and add devices."
                }
            } @else {
                (models_table(&fleet))
            }
        }
        (rotation_summary(&fleet))
        @if viewer.can_edit() {
            (new_model_form(fleet.models.is_empty()))
        }
    };
    Ok(Page::new("Fleet", Some(viewer.identity()))
        .section(Section::Fleet)
        .live(Live {
            events: LIVE,
            ..Live::default()
        })
        .ok(content))
}

fn models_table(fleet: &Fleet) -> Markup {
    html! {
        div.table-wrap {
            table #models {
                thead { tr {
                    th scope="col" { "Model" }
                    th scope="col" { "Devices" }
                    th scope="col" { "Current version" }
                    th scope="col" { "Devices report running" }
                    th scope="col" { "Open crash groups" }
                    th scope="col" { "Dumps, 24 h" }
                } }
                tbody {
                    @for model in &fleet.models {
                        tr {
                            th scope="row" {
                                a href={ "/models/" (model.id) } { (model.name) }
                                br; code.muted { (model.code) }
                            }
                            td.num { (model.device_count) }
                            td { @match &model.firmware_version {
                                Some(v) => code { (v) },
                                None => span.muted { "no firmware yet" },
                            } }
                            td { (running(fleet.running.get(&model.id), model.firmware_version.as_deref())) }
                            td { @match fleet.groups.get(&model.id) {
                                Some(g) => a href={ "/models/" (model.id) "/crash-groups?status=open" } {
                                    (count(g.groups, "group", "groups"))
                                    " (" (count(g.coredumps, "dump", "dumps")) ")"
                                },
                                None => span.muted { "none" },
                            } }
                            td.num { (fleet.recent.get(&model.id).copied().unwrap_or(0)) }
                        }
                    }
                }
            }
        }
    }
}

/// The versions a model's devices report, most common first; the current one marked, devices
/// that never reported counted apart.
fn running(rows: Option<&Vec<RunningVersion>>, current: Option<&str>) -> Markup {
    let Some(rows) = rows else {
        return html! { span.muted { "no devices" } };
    };
    html! {
        ul.chips {
            @for row in rows {
                @match &row.version {
                    Some(v) => li.chip.current[current == Some(v.as_str())]
                        title=[(current == Some(v.as_str())).then_some("the current version")] {
                        code { (v) } " × " (row.devices)
                    },
                    None => li.chip.muted { "not reported × " (row.devices) },
                }
            }
        }
    }
}

fn rotation_summary(fleet: &Fleet) -> Markup {
    let by_state: HashMap<&str, i64> = fleet
        .status
        .by_state
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    let h = fleet.health;
    html! {
        section aria-labelledby="rotation-heading" {
            h2 #rotation-heading { "Credential rotation" }
            div.cards {
                div.card.ok { strong { (h.healthy) } " healthy" }
                div.card.warn[h.warning > 0] { strong { (h.warning) } " timed out (warning)" }
                div.card.bad[h.critical > 0] { strong { (h.critical) } " critical" }
                div.card { strong { (h.inactive) } " inactive" }
            }
            p {
                @for (i, state) in STATES.iter().enumerate() {
                    @if i > 0 { ", " }
                    (state) ": " (by_state.get(state).copied().unwrap_or(0))
                }
                ". "
                @if let Some(id) = fleet.status.pending_device_id {
                    a href={ "/devices/" (id) } { "The device being rotated now" } ". "
                }
                "Last completed rotation: " (format::maybe_ago(fleet.status.last_completed, fleet.now, "never")) ". "
                "Next scheduled: "
                @match &fleet.next_rotation {
                    Some(next) => (next),
                    None => "none (ROTATION_CRON is not set)",
                }
                ". " a href="/rotation" { "Rotation dashboard" }
            }
        }
    }
}

fn new_model_form(open: bool) -> Markup {
    html! {
        section aria-labelledby="new-model-heading" {
            details.panel open[open] {
                summary #new-model-heading { "New device model" }
                // An id, so a live refresh keeps what is being typed (ui.js `swap`).
                form.stack #new-model-form data-api-method="POST" data-api-url="/api/device-models" data-done="go:/models/{id}" {
                    label { "Code " span.hint { "(lowercase letters, digits and _; cannot change later)" }
                        input name="code" required pattern="[a-z0-9_]{1,50}" maxlength="50" autocomplete="off";
                    }
                    label { "Name" input name="name" required maxlength="255"; }
                    label { "Config schema " span.hint { "(optional JSON Schema that device configs must satisfy)" }
                        textarea.code name="config_schema" rows="6" data-type="optional" spellcheck="false" {}
                    }
                    p.form-status data-status role="alert" {}
                    button type="submit" { "Create model" }
                }
            }
        }
    }
}
