//! `GET /devices/{id}/coredumps/{cid}`: one core dump and its crash report as the built-in
//! parser structured it (`esp_coredump::CrashReport`): the headline, the exception, the build
//! check, and per task its symbolised backtrace (inlined functions included) and registers. A
//! dump parsed by the sidecar (text only), or a report this build cannot read, shows the text.

use axum::extract::State;
use axum::response::Response;
use esp_coredump::{BuildCheck, CrashReport, ExceptionInfo, Frame, TaskReport};
use maud::{html, Markup};

use super::format::{self, hex32};
use super::layout::{Live, Page, Section};
use super::viewer::{Ui, UiError, Viewer};
use crate::coredumps::manage;
use crate::db::coredumps::CoredumpRow;
use crate::db::{device_models, devices};
use crate::http::error::ApiError;
use crate::http::extract::Path;
use crate::state::AppState;

const LIVE: &str = "coredump_parsed coredump_deleted device_deleted";

pub async fn page(
    viewer: Viewer,
    State(state): State<AppState>,
    Ui(Path((device_id, id))): Ui<Path<(i64, i64)>>,
) -> Result<Response, UiError> {
    let mut tx = state.db.begin_read().await?;
    let (_, dump) = manage::load(&mut tx, device_id, id)
        .await
        .map_err(ApiError::from)?;
    let device = devices::get(&mut tx, device_id)
        .await?
        .ok_or_else(|| UiError::not_found(format!("Device {device_id} was not found")))?;
    // The model's name for the breadcrumb (its code if it went in between).
    let model_name = device_models::get(&mut tx, device.device_model_id)
        .await?
        .map_or_else(|| device.model_code.clone(), |m| m.name);
    tx.commit().await?;
    let device_title = device.device_name.clone().unwrap_or(device.key.clone());
    let now = crate::db::now();
    let content = html! {
        header.page-head {
            h1 { "Core dump #" (dump.id) }
            p.sub {
                "Uploaded " (format::time_ago(dump.uploaded_at, now)) " by " a href={ "/devices/" (device.id) } { code { (device.key) } }
                " running " code { (dump.firmware_version) } " · " (dump.chip) " · " (format::bytes(dump.size))
                " · " a href={ "/api/devices/" (device.id) "/coredumps/" (dump.id) "/download" } download { "download the dump" }
                @if let Some(group) = dump.crash_group_id { " · " a href={ "/crash-groups/" (group) } { "its crash group" } }
            }
        }
        (body(&dump))
    };
    Ok(
        Page::new(format!("Core dump #{}", dump.id), Some(viewer.identity()))
            .section(Section::Fleet)
            .crumb("Fleet", "/")
            .crumb(model_name, format!("/models/{}", device.device_model_id))
            .crumb(device_title, format!("/devices/{}", device.id))
            .live(Live {
                events: LIVE,
                device: Some(device.id),
                coredump: Some(dump.id),
                ..Live::default()
            })
            .ok(content),
    )
}

fn body(dump: &CoredumpRow) -> Markup {
    let text = dump.parsed_output.as_deref().unwrap_or("");
    match dump.parse_status.as_str() {
        "PENDING" => {
            html! { p.empty #report-pending { "This dump is being parsed; the report appears here when it is done." } }
        }
        "PARSED" => match dump
            .report
            .as_deref()
            .map(serde_json::from_str::<CrashReport>)
        {
            Some(Ok(report)) => html! {
                (crash_report(&report))
                details.panel #text-report { summary { "Text report" } pre.code { (text) } }
            },
            _ => html! {
                p.hint { "This dump has a text report only (parsed by the sidecar, or by another version)." }
                pre.code #report-text { (text) }
            },
        },
        _ => html! {
            section.error-box {
                h2 { "This dump could not be parsed" }
                p { (text) }
                p.hint { "If the firmware's ELF was missing, upload that build and choose “Parse again” on the device page." }
            }
        },
    }
}

fn crash_report(report: &CrashReport) -> Markup {
    html! {
        section #report aria-labelledby="headline" {
            h2 #headline { (report.headline) }
            dl.facts {
                @if let Some(reason) = report.panic_reason.as_ref().filter(|r| **r != report.headline) {
                    dt { "Panic" } dd { (reason) }
                }
                @match &report.exception {
                    Some(exception) => (exception_facts(exception)),
                    None => { @if let Some(addr) = report.faulting_address {
                        dt { "Faulting address" } dd { code { (hex32(addr)) } }
                    } },
                }
                dt { "Crashed task" } dd { (report.crashed_task_name.as_deref().unwrap_or("not identified"))
                    @if report.isr_context == Some(true) { " (in an interrupt handler)" } }
                dt { "Chip" } dd { (report.chip) @if let Some(rev) = report.chip_rev { " rev " (rev / 100) "." (rev % 100) } }
                dt { "Dump format" } dd { (report.dump_version_name.as_deref().unwrap_or("unknown")) }
                dt { "Build check" } dd { (build_check(report)) }
            }
            @if !report.warnings.is_empty() {
                ul.warnings { @for w in &report.warnings { li { (w) } } }
            }
            h2 { "Tasks" }
            @for (i, task) in report.tasks.iter().enumerate() { (task_section(i, task)) }
        }
    }
}

fn exception_facts(exception: &ExceptionInfo) -> Markup {
    match exception {
        ExceptionInfo::Xtensa {
            exccause,
            cause_name,
            description,
            excvaddr,
            epc,
            ..
        } => html! {
            dt { "Exception" } dd {
                (cause_name.as_deref().unwrap_or("unknown cause")) " (EXCCAUSE " (exccause) ")"
                @if let Some(d) = description { br; span.muted { (d) } }
            }
            dt { "EXCVADDR" } dd { code { (hex32(*excvaddr)) } span.muted { " (the faulting address)" } }
            // EPC registers of interrupt levels that were not taken hold 0: noise.
            @for (n, value) in epc.iter().filter(|(_, v)| *v != 0) { dt { "EPC" (n) } dd { code { (hex32(*value)) } } }
        },
        ExceptionInfo::RiscV {
            mcause,
            cause_name,
            mtval,
            mstatus,
            mepc,
        } => html! {
            dt { "Exception" } dd { (cause_name) " (mcause " (mcause) ")" }
            dt { "MEPC" } dd { code { (hex32(*mepc)) } }
            dt { "MTVAL" } dd { code { (hex32(*mtval)) } }
            dt { "MSTATUS" } dd { code { (hex32(*mstatus)) } }
        },
    }
}

fn build_check(report: &CrashReport) -> Markup {
    match report.build_check {
        BuildCheck::Match => html! { span.badge.ok { "matches" } " the stored ELF" },
        BuildCheck::Mismatch => html! {
            span.badge.bad { "mismatch" }
            " the device ran build " code { (report.app_elf_sha256_prefix.as_deref().unwrap_or("?")) }
            ", symbols come from " (format::short_hash(Some(&report.firmware_elf_sha256))) ": frames may be wrong"
        },
        BuildCheck::NotRecorded => html! { span.muted { "the dump records no build hash" } },
    }
}

fn task_section(index: usize, task: &TaskReport) -> Markup {
    let name = task.name.as_deref().unwrap_or("(unnamed)");
    html! {
        details.task id={ "task-" (index) } open[task.crashed || index == 0] {
            summary {
                strong { (name) }
                @if task.crashed { " " span.badge.bad { "crashed" } }
                " " span.muted { "TCB " (hex32(task.tcb))
                    @if let Some(p) = task.priority { ", priority " (p) }
                    @if let (Some(used), Some(free)) = (task.stack_used, task.stack_free) {
                        ", stack " (used) " B used, " (free) " B free"
                    } }
            }
            h3 { "Backtrace" }
            @if task.backtrace.is_empty() { p.muted { "No frames." } } @else {
                div.table-wrap { table.backtrace {
                    thead { tr { th scope="col" { "#" } th scope="col" { "PC" } th scope="col" { "Function" } th scope="col" { "Source" } } }
                    tbody { @for (n, frame) in task.backtrace.iter().enumerate() { (frame_row(n, frame)) } }
                } }
            }
            @if let Some(note) = &task.backtrace_note { p.hint { (note) } }
            h3 { "Registers" }
            dl.registers { @for r in &task.registers { div { dt { (r.name) } dd { code { (hex32(r.value)) } } } } }
        }
    }
}

/// One frame: its address, and the functions there, innermost (inlined) first.
fn frame_row(n: usize, frame: &Frame) -> Markup {
    html! {
        tr.rom[!frame.in_firmware] {
            td.num { (n) }
            td { code { (hex32(frame.pc)) } }
            td {
                @if frame.symbols.is_empty() {
                    span.muted { @if frame.in_firmware { "unknown" } @else { "ROM" } }
                }
                @for (i, s) in frame.symbols.iter().enumerate() {
                    @if i > 0 { br; span.muted { "inlined into " } }
                    code.fn { (s.function.as_deref().unwrap_or("??")) }
                }
            }
            td {
                @for (i, s) in frame.symbols.iter().enumerate() {
                    @if i > 0 { br; }
                    @if let Some(file) = &s.file {
                        span.src title=(file) { (short_path(file)) @if let Some(line) = s.line { ":" (line) } }
                    }
                }
            }
        }
    }
}

/// The last two components of a source path (`main/app_main.c`); the whole path is in the
/// tooltip.
fn short_path(path: &str) -> &str {
    let mut cut = path.len();
    for _ in 0..2 {
        match path[..cut].rfind(['/', '\\']) {
            Some(at) => cut = at,
            None => return path,
        }
    }
    &path[cut + 1..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_paths_keep_their_last_two_components() {
        assert_eq!(
            super::short_path("/home/ci/project/main/app_main.c"),
            "main/app_main.c"
        );
        assert_eq!(super::short_path("main/app_main.c"), "main/app_main.c");
        assert_eq!(super::short_path("app_main.c"), "app_main.c");
    }
}
