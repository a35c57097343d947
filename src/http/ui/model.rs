//! `GET /models/{id}`: one device model. Its firmware versions (upload, make current / roll back,
//! delete: `model_parts.rs`), its open crash groups, its config schema editor, its devices and
//! the form that creates one.

use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

use super::format::{self, count};
use super::layout::{Live, Page, Section};
use super::model_parts::{firmware_section, schema_form};
use super::viewer::{Ui, UiError, Viewer};
use crate::db::crash_groups::{self as groups_db, CrashGroupRow, GroupOrder, STATUS_OPEN};
use crate::db::device_models::{self, DeviceModelRow};
use crate::db::devices::{self, DeviceRow};
use crate::db::firmware_versions as fw;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::state::AppState;

const LIVE: &str = "device_model_updated device_model_deleted device_created device_updated \
    device_deleted firmware_uploaded firmware_current_set firmware_version_deleted \
    crash_group_created crash_group_updated crash_group_regressed coredump_stored \
    rotation-updated";

/// How many open crash groups the model page lists (the crash-group page has them all).
const OPEN_GROUPS_SHOWN: usize = 5;

/// Devices per page of the model page, in key order: a model may have tens of thousands.
const DEVICES_SHOWN: u32 = 100;

#[derive(Debug, serde::Deserialize)]
pub struct ModelQuery {
    /// The devices after this key (the next page's link).
    pub after: Option<String>,
}

pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Ui(Path(id)): Ui<Path<i64>>,
    Ui(Query(query)): Ui<Query<ModelQuery>>,
) -> Result<Response, UiError> {
    let after = query.after.as_deref().filter(|a| !a.is_empty());
    if after.is_some_and(|a| a.chars().count() > 8 || a.contains('\0')) {
        return Err(ApiError::validation("after is not a device key").into());
    }
    let mut tx = state.db.begin_read().await?;
    let model = device_models::get(&mut tx, id)
        .await?
        .ok_or_else(|| UiError::not_found(format!("DeviceModel {id} was not found")))?;
    let mut devices =
        devices::list(&mut tx, Some(id), None, after, Some(DEVICES_SHOWN + 1)).await?;
    let more = devices.len() > DEVICES_SHOWN as usize;
    devices.truncate(DEVICES_SHOWN as usize);
    let pages = DevicePages {
        after: after.map(str::to_string),
        next: more
            .then(|| devices.last().map(|d| d.key.clone()))
            .flatten(),
    };
    // The newest few and how many there are: a model may have thousands of groups.
    let shown = OPEN_GROUPS_SHOWN as i64;
    let open = groups_db::list(
        &mut tx,
        id,
        Some(STATUS_OPEN),
        GroupOrder::LastSeen,
        None,
        Some(shown),
    )
    .await?;
    let open_count = groups_db::count(&mut tx, id, STATUS_OPEN).await?;
    // In the same snapshot as the model: its current version is one of those listed.
    let versions = fw::list(&mut tx, id).await?;
    tx.commit().await?;
    let now = crate::db::now();
    let edit = viewer.can_edit();
    let content = html! {
        header.page-head {
            h1 { (model.name) }
            p.sub {
                "Model " code { (model.code) } " · " (count(model.device_count, "device", "devices"))
                " · current version "
                @match &model.firmware_version {
                    Some(v) => code #current-version { (v) },
                    None => span #current-version.muted { "none" },
                }
            }
        }
        (firmware_section(&model, &versions, edit, now))
        (crash_groups(&model, &open, open_count))
        (devices_section(&model, &devices, &pages, edit, now))
        @if edit {
            (schema_form(&model))
            @if model.device_count == 0 {
                section.danger aria-labelledby="delete-model-heading" {
                    h2 #delete-model-heading { "Delete this model" }
                    p { "Deletes the model and every stored firmware version. Possible only while it has no devices." }
                    button.danger type="button" data-api-method="DELETE"
                        data-api-url={ "/api/device-models/" (model.id) }
                        data-confirm={ "Delete model " (model.code) " and all its firmware versions?" }
                        data-done="go:/" { "Delete model" }
                }
            }
        }
    };
    Ok(Page::new(model.name.clone(), Some(viewer.identity()))
        .section(Section::Fleet)
        .crumb("Fleet", "/")
        .live(Live {
            events: LIVE,
            model: Some(model.id),
            ..Live::default()
        })
        .ok(content))
}

fn crash_groups(model: &DeviceModelRow, open: &[CrashGroupRow], open_count: i64) -> Markup {
    let all = format!("/models/{}/crash-groups", model.id);
    html! {
        section aria-labelledby="groups-heading" {
            h2 #groups-heading { "Open crash groups" }
            @if open.is_empty() {
                p.empty { "No open crash groups: no parsed crash of this model is waiting to be looked at. "
                    a href=(all) { "All crash groups" } }
            } @else {
                ul.list {
                    @for group in open.iter().take(OPEN_GROUPS_SHOWN) {
                        li {
                            a href={ "/crash-groups/" (group.id) } { (group.title) }
                            " — " (count(group.coredump_count, "dump", "dumps")) ", "
                            (count(group.device_count, "device", "devices")) ", last "
                            (format::time(group.last_seen_at))
                        }
                    }
                }
                p { a href={ (all) "?status=open" } {
                    @if open_count > open.len() as i64 { "All " (open_count) " open crash groups" }
                    @else { "Crash groups of this model" }
                } }
            }
        }
    }
}

/// Where the shown devices are in the model's list.
struct DevicePages {
    /// The page starts after this key (`None`: the first page).
    after: Option<String>,
    /// The key the next page starts after, if there are more devices.
    next: Option<String>,
}

fn devices_section(
    model: &DeviceModelRow,
    devices: &[DeviceRow],
    pages: &DevicePages,
    edit: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Markup {
    let link = |after: &str| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("after", after)
            .finish();
        format!("/models/{}?{query}#devices-heading", model.id)
    };
    html! {
        section aria-labelledby="devices-heading" {
            h2 #devices-heading { "Devices" }
            @if pages.after.is_some() || pages.next.is_some() {
                p.hint { "In key order, " (DEVICES_SHOWN) " at a time"
                    @if let Some(after) = &pages.after { ", after " code { (after) } } "." }
            }
            @if devices.is_empty() {
                p.empty { "No devices of this model yet." @if edit { " Create one below; it gets a key and a secret to authenticate with." } }
            } @else {
                div.table-wrap { table #devices {
                    thead { tr {
                        th scope="col" { "Device" }
                        th scope="col" { "Entity id" }
                        th scope="col" { "Runs" }
                        th scope="col" { "Last seen" }
                        th scope="col" { "Rotation" }
                        th scope="col" { "Last core dump" }
                    } }
                    tbody { @for d in devices {
                        tr.inactive[!d.active] {
                            th scope="row" {
                                a href={ "/devices/" (d.id) } { code { (d.key) } }
                                @if let Some(name) = &d.device_name { " " (name) }
                                @if !d.active { " " span.badge { "inactive" } }
                            }
                            td { @if let Some(e) = &d.device_entity_id { code { (e) } } }
                            td { (running(d, model.firmware_version.as_deref())) }
                            td { (format::maybe_ago(d.last_seen_at, now, "never")) }
                            td { (rotation_badge(&d.rotation_state)) }
                            td { (format::maybe_ago(d.last_coredump_at, now, "none")) }
                        }
                    } }
                } }
            }
            @if pages.after.is_some() || pages.next.is_some() {
                p.pager {
                    @if pages.after.is_some() { a href={ "/models/" (model.id) "#devices-heading" } { "First page" } }
                    @if let Some(next) = &pages.next { " " a rel="next" href=(link(next)) { "Next " (DEVICES_SHOWN) " devices" } }
                }
            }
            @if edit { (new_device_form(model)) }
        }
    }
}

/// What a device runs, marked when it is not the model's current version.
pub fn running(device: &DeviceRow, current: Option<&str>) -> Markup {
    match device.running_firmware_version.as_deref() {
        Some(v) if Some(v) == current => html! { code { (v) } },
        Some(v) => {
            html! { code { (v) } " " span.badge.warn title="the model's current version is another one" { "not current" } }
        }
        None => html! { span.muted { "not reported" } },
    }
}

fn new_device_form(model: &DeviceModelRow) -> Markup {
    html! {
        details.panel {
            summary { "New device" }
            // An id, so a live refresh keeps what is being typed (ui.js `swap`).
            form.stack #new-device-form data-api-method="POST" data-api-url="/api/devices" data-done="device-secret" {
                input type="hidden" name="device_model_id" value=(model.id) data-type="int";
                label { "Config " span.hint { "(JSON; deviceName, deviceEntityId and enableOTA are read from it"
                    @if model.config_schema.is_some() { "; it must satisfy the model's schema" } ")" }
                    textarea.code name="config" rows="6" spellcheck="false" { "{}" }
                }
                p.form-status data-status role="alert" {}
                button type="submit" { "Create device" }
            }
        }
    }
}

/// A device's rotation state as a badge coloured by state.
pub fn rotation_badge(state: &str) -> Markup {
    html! { span class={ "badge state-" (state.to_lowercase()) } { (state) } }
}
