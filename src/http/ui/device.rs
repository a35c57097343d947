//! `GET /devices/{id}`: one device. Its config editor (the server validates against the model's
//! schema; its refusal is shown next to the editor), credentials and rotation (rotate now, the
//! provisioning package as a `.bin` download), core dumps (each links to its report), live logs
//! when MQTT is on, and deleting it.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::format::{self, count};
use super::layout::{Live, Page, Section};
use super::model::{rotation_badge, running};
use super::viewer::{Ui, UiError, Viewer};
use crate::db::coredumps::{self, CoredumpRow};
use crate::db::device_models::{self, DeviceModelRow};
use crate::db::devices::{self, DeviceRow};
use crate::fleet::ClientId;
use crate::http::extract::Path;
use crate::state::AppState;

const LIVE: &str = "device_updated device_deleted coredump_stored coredump_parsed \
    coredump_deleted crash_group_created crash_group_updated crash_group_regressed \
    firmware_current_set firmware_uploaded device_model_updated rotation-updated \
    device_rotation_pending";

/// The NVS partition size the provisioning form suggests: `0x6000`, ESP-IDF's default `nvs`.
const DEFAULT_PARTITION_SIZE: u32 = 0x6000;

pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Ui(Path(id)): Ui<Path<i64>>,
) -> Result<Response, UiError> {
    let mut tx = state.db.begin_read().await?;
    let device = devices::get(&mut tx, id)
        .await?
        .ok_or_else(|| UiError::not_found(format!("Device {id} was not found")))?;
    let model = device_models::get(&mut tx, device.device_model_id)
        .await?
        .ok_or_else(|| {
            UiError::not_found(format!(
                "DeviceModel {} was not found",
                device.device_model_id
            ))
        })?;
    let dumps = coredumps::list(&mut tx, id, None, None).await?;
    tx.commit().await?;
    let now = crate::db::now();
    let edit = viewer.can_edit();
    let title = device
        .device_name
        .clone()
        .unwrap_or_else(|| device.key.clone());
    let content = html! {
        header.page-head {
            h1 { (title) }
            p.sub {
                "Device " code { (device.key) } " of " a href={ "/models/" (model.id) } { (model.name) }
                @if !device.active { " · " span.badge { "inactive" } }
            }
        }
        div.columns {
            div {
                (facts(&device, &model, now))
                (credentials(&device, edit, now))
            }
            (config_form(&device, &model, edit))
        }
        (dump_list(&device, &dumps, edit, now))
        (logs(&device, state.mqtt.is_some()))
        @if edit {
            section.danger aria-labelledby="delete-device-heading" {
                h2 #delete-device-heading { "Delete this device" }
                p { "Deletes the device, its credentials and its core dumps. It can no longer authenticate." }
                button.danger type="button" data-api-method="DELETE" data-api-url={ "/api/devices/" (device.id) }
                    data-confirm={ "Delete device " (device.key) " and its core dumps?" }
                    data-done={ "go:/models/" (model.id) } { "Delete device" }
            }
        }
    };
    Ok(Page::new(title.clone(), Some(viewer.identity()))
        .section(Section::Fleet)
        .crumb("Fleet", "/")
        .crumb(model.name.clone(), format!("/models/{}", model.id))
        .live(Live {
            events: LIVE,
            device: Some(device.id),
            model: Some(model.id),
            ..Live::default()
        })
        .ok(content))
}

fn facts(device: &DeviceRow, model: &DeviceModelRow, now: DateTime<Utc>) -> Markup {
    html! {
        dl.facts {
            dt { "Runs" } dd { (running(device, model.firmware_version.as_deref())) }
            dt { "Model's current version" } dd { @match &model.firmware_version { Some(v) => code { (v) }, None => span.muted { "none" } } }
            dt { "Last seen" } dd { (format::maybe_ago(device.last_seen_at, now, "never")) }
            dt { "Entity id" } dd { @match &device.device_entity_id { Some(e) => code { (e) }, None => span.muted { "none" } } }
            dt { "OTA updates" } dd { @match device.enable_ota { Some(true) => "enabled", Some(false) => "disabled", None => span.muted { "not set" } } }
            dt { "Client id" } dd { code { (ClientId::format(&device.model_code, &device.key)) } }
            dt { "Created" } dd { (format::time(device.created_at)) }
        }
    }
}

fn config_form(device: &DeviceRow, model: &DeviceModelRow, edit: bool) -> Markup {
    html! {
        section aria-labelledby="config-heading" {
            h2 #config-heading { "Config" }
            @if edit {
                form.stack #config-form data-api-method="PUT" data-api-url={ "/api/devices/" (device.id) }
                    data-success="The config was saved; the device is told to fetch it." data-done="refresh" {
                    label { span.visually-hidden { "Config " } span.hint { "JSON"
                        @if model.config_schema.is_some() { "; checked against the model's schema when saved" } }
                        textarea.code name="config" rows=(format::rows(&device.config, 6, 24)) spellcheck="false" { (device.config) }
                    }
                    label.inline { input type="checkbox" name="active" checked[device.active]; " Active" }
                    p.form-status data-status role="alert" {}
                    button type="submit" { "Save config" }
                }
            } @else {
                pre.code { (device.config) }
            }
        }
    }
}

fn credentials(device: &DeviceRow, edit: bool, now: DateTime<Utc>) -> Markup {
    html! {
        section aria-labelledby="credentials-heading" {
            h2 #credentials-heading { "Credentials and rotation" }
            dl.facts {
                dt { "Rotation state" } dd #rotation-state { (rotation_badge(&device.rotation_state)) }
                dt { "Secret created" } dd { (format::maybe_ago(device.secret_created_at, now, "unknown")) }
                dt { "Last rotation attempt" } dd { (format::maybe_ago(device.last_rotation_attempt_at, now, "never")) }
                dt { "Last completed rotation" } dd { (format::maybe_ago(device.last_rotation_completed_at, now, "never")) }
            }
            @if edit {
                p {
                    button type="button" data-api-method="POST" data-api-url={ "/api/devices/" (device.id) "/rotate" }
                        data-success="Queued for rotation: the device gets a new secret when its turn comes."
                        data-done="refresh" { "Rotate secret" }
                }
                form.inline-form #provisioning-form data-provision={ "/api/devices/" (device.id) "/provisioning" }
                    data-filename={ "provisioning-" (device.key) ".bin" } {
                    label { "NVS partition size (bytes) "
                        input name="partition_size" type="number" min="12288" step="4096" required value=(DEFAULT_PARTITION_SIZE);
                    }
                    " "
                    button type="submit" { "Download provisioning package" }
                    p.hint { "An NVS image to flash to the device. It carries a new secret; the current one keeps working until the device first uses the new one." }
                    p.form-status data-status role="alert" {}
                }
            }
        }
    }
}

fn dump_list(device: &DeviceRow, dumps: &[CoredumpRow], edit: bool, now: DateTime<Utc>) -> Markup {
    let base = format!("/api/devices/{}/coredumps", device.id);
    html! {
        section aria-labelledby="dumps-heading" {
            h2 #dumps-heading { "Core dumps" }
            @if dumps.is_empty() {
                p.empty { "No core dumps: this device has not reported a crash (or its dumps were deleted)." }
            } @else {
                div.table-wrap { table #dumps {
                    thead { tr {
                        th scope="col" { "Dump" }
                        th scope="col" { "Uploaded" }
                        th scope="col" { "Firmware" }
                        th scope="col" { "Report" }
                        th scope="col" { "Crash group" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody { @for dump in dumps {
                        tr {
                            th scope="row" { a href={ "/devices/" (device.id) "/coredumps/" (dump.id) } { "#" (dump.id) } br;
                                span.muted { (dump.chip) ", " (format::bytes(dump.size)) } }
                            td { (format::time_ago(dump.uploaded_at, now)) }
                            td { code { (dump.firmware_version) } }
                            td { (parse_state(dump)) }
                            td { @match dump.crash_group_id {
                                Some(g) => a href={ "/crash-groups/" (g) } { "group " (g) },
                                None => span.muted { "—" },
                            } }
                            td.actions {
                                a href={ (base) "/" (dump.id) "/download" } download { "Download" }
                                @if edit {
                                    " "
                                    button type="button" data-api-method="POST" data-api-url={ (base) "/" (dump.id) "/reparse" }
                                        data-success={ "Dump " (dump.id) " is queued for parsing again." } data-done="refresh" { "Parse again" }
                                    " "
                                    button.danger type="button" data-api-method="DELETE" data-api-url={ (base) "/" (dump.id) }
                                        data-confirm={ "Delete core dump " (dump.id) "?" } data-done="refresh" { "Delete" }
                                }
                            }
                        }
                    } }
                } }
                @if edit && dumps.len() > 1 {
                    p { button.danger type="button" data-api-method="DELETE" data-api-url=(base)
                        data-confirm={ "Delete all " (dumps.len()) " core dumps of this device?" } data-done="refresh" {
                        "Delete all " (count(dumps.len() as i64, "dump", "dumps")) } }
                }
            }
        }
    }
}

/// A dump's parse status for a person, with the report's headline when there is one.
fn parse_state(dump: &CoredumpRow) -> Markup {
    match dump.parse_status.as_str() {
        "PARSED" => {
            let headline = dump
                .report
                .as_deref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                .and_then(|r| r["headline"].as_str().map(str::to_string));
            html! { @match headline {
                Some(h) => span { (h) },
                None => span { "parsed" },
            } }
        }
        "PENDING" => html! { span.badge { "parsing…" } },
        _ => {
            html! { span.badge.bad title=[dump.parsed_output.as_deref()] { "could not be parsed" } }
        }
    }
}

fn logs(device: &DeviceRow, mqtt: bool) -> Markup {
    html! {
        section aria-labelledby="logs-heading" {
            h2 #logs-heading { "Logs" }
            @if !mqtt {
                p.empty { "Device logs arrive over MQTT, which is off (set MQTT_URL to turn it on)." }
            } @else if device.device_entity_id.is_none() {
                p.empty { "This device's config has no deviceEntityId, so no log line can be matched to it." }
            } @else {
                div #logs data-preserve data-logs-device=(device.id)
                    data-logs-entity=[device.device_entity_id.as_deref()] {
                    p.hint { "The newest 1,000 lines, newest at the bottom; new lines appear as they arrive." }
                    ol.log-lines aria-live="polite" {}
                    p.form-status data-status role="alert" {}
                }
            }
        }
    }
}
