//! The model page's firmware section (the drop zone that uploads a bundle, the stored versions
//! with their sizes, hashes and app facts, make current / roll back, delete) and its settings
//! form (name and config schema).

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::format::{self, segment};
use crate::db::device_models::DeviceModelRow;
use crate::db::firmware_versions::FirmwareVersionRow;
use crate::layout::Artifact;

pub fn firmware_section(
    model: &DeviceModelRow,
    versions: &[FirmwareVersionRow],
    edit: bool,
    now: DateTime<Utc>,
) -> Markup {
    let current = model.firmware_version.as_deref();
    // Versions come newest upload first: those after the current one are older builds.
    let current_at = versions
        .iter()
        .position(|v| Some(v.version.as_str()) == current);
    html! {
        section aria-labelledby="firmware-heading" {
            h2 #firmware-heading { "Firmware" }
            @if edit { (upload_zone(model)) }
            @if versions.is_empty() {
                p.empty { "No firmware stored yet. Upload a bundle: a ZIP with " code { (model.code) ".bin" } ", "
                    code { (model.code) ".elf" } ", " code { (model.code) ".map" } ", " code { "sdkconfig" }
                    " and " code { "version.json" } ", as the build produces them." }
            } @else {
                div.table-wrap { table #versions {
                    thead { tr {
                        th scope="col" { "Version" }
                        th scope="col" { "Uploaded" }
                        th scope="col" { "Build" }
                        th scope="col" { "Image" }
                        th scope="col" { "Artifacts" }
                        @if edit { th scope="col" { span.visually-hidden { "Actions" } } }
                    } }
                    tbody { @for (i, v) in versions.iter().enumerate() {
                        @let is_current = Some(v.version.as_str()) == current;
                        tr.current[is_current] data-version=(v.version) {
                            th scope="row" {
                                code { (v.version) }
                                @if is_current { " " span.badge.ok { "current" } }
                            }
                            td { (format::time_ago(v.uploaded_at, now)) }
                            td { (build_facts(v)) }
                            td {
                                @match v.firmware_bin_size { Some(n) => (format::bytes(n)), None => span.muted { "size unknown" } }
                                br; "SHA-256 " (format::short_hash(v.firmware_bin_sha256.as_deref()))
                                br; "ELF " (format::short_hash(v.app_elf_sha256.as_deref()))
                            }
                            td { (artifacts(model.id, v)) }
                            @if edit { td.actions {
                                @if !is_current {
                                    @let older = current_at.is_some_and(|c| i > c);
                                    button type="button" data-api-method="PUT"
                                        data-api-url={ "/api/device-models/" (model.id) "/firmware/current" }
                                        data-body=(serde_json::json!({"version": v.version}).to_string())
                                        data-confirm={ "Serve version " (v.version) " to every device of " (model.code) "?" }
                                        data-success={ "Version " (v.version) " is now current." }
                                        data-done="refresh" {
                                        @if older { "Roll back to this" } @else { "Make current" }
                                    }
                                    " "
                                    button.danger type="button" data-api-method="DELETE"
                                        data-api-url={ "/api/device-models/" (model.id) "/firmware/" (segment(&v.version)) }
                                        data-confirm={ "Delete version " (v.version) " and its five files?" }
                                        data-success={ "Version " (v.version) " was deleted." }
                                        data-done="refresh" { "Delete" }
                                }
                            } }
                        }
                    } }
                } }
            }
        }
    }
}

fn upload_zone(model: &DeviceModelRow) -> Markup {
    html! {
        div.dropzone #upload data-upload={ "/api/device-models/" (model.id) "/firmware" } {
            p { "Drop a firmware bundle (ZIP) here, or " }
            label.button {
                "choose a file"
                input.visually-hidden type="file" accept=".zip,application/zip";
            }
            p.hint { "The uploaded version becomes current: devices are offered it at once." }
            progress max="100" value="0" hidden {}
            p.form-status data-status role="alert" {}
        }
    }
}

/// Chip, project, ESP-IDF version and build time from the image's app descriptor.
fn build_facts(v: &FirmwareVersionRow) -> Markup {
    let built = [v.build_date.as_deref(), v.build_time.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        @if let Some(chip) = &v.chip { (chip) }
        @if let Some(project) = &v.project_name { " · " (project) }
        @if let Some(idf) = &v.idf_version { br; "ESP-IDF " (idf) }
        @if !built.is_empty() { br; span.muted { "built " (built) } }
        @if let Some(sv) = v.secure_version { @if sv > 0 { br; "secure version " (sv) } }
    }
}

fn artifacts(model_id: i64, v: &FirmwareVersionRow) -> Markup {
    html! {
        ul.plain {
            @for artifact in Artifact::ALL {
                @let facts = v.artifact(artifact);
                li {
                    a href={ "/api/device-models/" (model_id) "/firmware/" (segment(&v.version)) "/" (artifact.file_name()) }
                        download title=[facts.sha256.as_deref().map(|h| format!("SHA-256 {h}"))] {
                        (artifact.file_name())
                    }
                    @if let Some(size) = facts.size { " " span.muted { (format::bytes(size)) } }
                }
            }
        }
    }
}

/// The model's name and config schema, saved with `PUT /api/device-models/{id}` (an empty schema
/// removes it; the server checks it and answers why it refuses one).
pub fn schema_form(model: &DeviceModelRow) -> Markup {
    html! {
        section aria-labelledby="settings-heading" {
            h2 #settings-heading { "Name and config schema" }
            form.stack #schema-form data-api-method="PUT" data-api-url={ "/api/device-models/" (model.id) }
                data-success="The model was saved." data-done="refresh" {
                label { "Name" input name="name" required maxlength="255" value=(model.name); }
                label { "Config schema " span.hint { "(JSON Schema; device configs are checked against it; empty: none)" }
                    textarea.code name="config_schema" spellcheck="false"
                        rows=(format::rows(model.config_schema.as_deref().unwrap_or(""), 6, 30)) {
                        (model.config_schema.as_deref().unwrap_or(""))
                    }
                }
                p.form-status data-status role="alert" {}
                button type="submit" { "Save" }
            }
        }
    }
}
