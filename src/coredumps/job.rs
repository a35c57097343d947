//! The `parse_coredump` job: turns one stored dump into a crash report.
//!
//! A job carries only the dump's id. It loads the row (gone → nothing to do), fetches the dump,
//! runs the configured parser with `firmware/{model_code}/{firmware_version}/firmware.elf` of the
//! device's model (the built-in parser keeps loaded ELFs in its [`super::parse_cache`] by the
//! SHA-256 the firmware row records, and fetches the ELF only when it has not loaded that build)
//! and records the outcome on the row:
//! - `PARSED` with the text report in `parsed_output` (and the structured report from the
//!   built-in parser in `report`);
//! - `ERROR` with the reason in `parsed_output` when retrying cannot help (dump object missing,
//!   ELF missing for that model and version, malformed dump, sidecar rejected it) or when the
//!   transient failures outlasted the job's attempts;
//! - otherwise (object store or sidecar unavailable) the job is retried with [`jobs::backoff`].
//!
//! `parsed_at` is set for `PARSED` and `ERROR`, as the Python service did. A `PARSED` result with
//! a crash signature puts the dump into its crash group in the same transaction
//! ([`super::groups::assign`]).

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use esp_coredump::CrashSignature;

use super::group_gate::GroupGate;
use super::groups;
use super::handoff::Handoff;
use super::parser::{self, CoredumpParser, ElfSource, ParseFailure, ParseRequest};
use crate::config::DatabaseKind;
use crate::db::coredumps::{self, ParseTarget, STATUS_ERROR, STATUS_PARSED};
use crate::db::crash_groups::MemberFacts;
use crate::db::{Db, DbError, Tx};
use crate::events;
use crate::jobs::worker::JobHandler;
use crate::jobs::{self, Job, JobOutcome};
use crate::layout::coredump_key;
use crate::storage::{ObjectKey, Storage, StorageError};
use crate::telemetry::COREDUMP_PARSE_STEP_DURATION;

pub const PARSE_JOB: &str = "parse_coredump";
/// Attempts before transient failures turn into `ERROR`: with [`jobs::backoff`] about 45 minutes,
/// so that an S3 or sidecar outage of that long (a restart, a brownout, a failover) leaves every
/// dump parsed once it is over. Eight attempts gave up after about four minutes, and each dump
/// then needed a reparse of its own.
pub const PARSE_MAX_ATTEMPTS: i32 = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParsePayload {
    pub coredump_id: i64,
    /// The dump's parse generation the job was queued for (see [`requeue`]). 0, the first parse,
    /// is left out of the text, so the upload's job reads `{"coredump_id":N}` as it always did
    /// (retention withdraws queued parses by that text, and migration 17 wrote it).
    #[serde(default, skip_serializing_if = "is_first_generation")]
    pub generation: i64,
}

fn is_first_generation(generation: &i64) -> bool {
    *generation == 0
}

impl ParsePayload {
    /// The payload of a dump's first parse, queued with its upload.
    pub fn first(coredump_id: i64) -> Self {
        ParsePayload {
            coredump_id,
            generation: 0,
        }
    }
}

/// Queues the first parse of `coredump_id` (just stored) in the caller's transaction.
pub async fn enqueue(tx: &mut Tx, coredump_id: i64) -> Result<i64, DbError> {
    jobs::enqueue(
        tx,
        PARSE_JOB,
        &ParsePayload::first(coredump_id),
        PARSE_MAX_ATTEMPTS,
    )
    .await
}

/// Parses a dump again, in the caller's transaction: the row goes back to `PENDING` in its next
/// parse generation, a still queued parse of the previous generation is withdrawn, and a job for
/// the new one is queued. A parse of an older generation still running finds itself superseded
/// and records nothing (see [`coredumps::record_result`]). False if there is no such dump.
pub async fn requeue(tx: &mut Tx, device_id: i64, coredump_id: i64) -> Result<bool, DbError> {
    let Some(generation) = coredumps::reset_to_pending(tx, device_id, coredump_id).await? else {
        return Ok(false);
    };
    let previous = ParsePayload {
        coredump_id,
        generation: generation - 1,
    };
    jobs::cancel_queued(tx, PARSE_JOB, &[previous]).await?;
    jobs::enqueue(
        tx,
        PARSE_JOB,
        &ParsePayload {
            coredump_id,
            generation,
        },
        PARSE_MAX_ATTEMPTS,
    )
    .await?;
    Ok(true)
}

/// How many parses are queued: after an adoption, those migration 17 queued for the Python
/// service's dumps still `PENDING` (an adopted database had no jobs before).
pub async fn queued_parses(db: &Db) -> Result<i64, DbError> {
    Ok(crate::on_pool!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE kind = $1 AND status = 'queued'"
    )
    .bind(PARSE_JOB)
    .fetch_one(p)
    .await)?)
}

/// Withdraws the queued parses of dumps being deleted in the caller's transaction (retention),
/// so a backlog never spends work on dumps that are gone.
pub async fn cancel(tx: &mut Tx, parses: &[ParsePayload]) -> Result<u64, DbError> {
    jobs::cancel_queued(tx, PARSE_JOB, parses).await
}

/// The key of a model's firmware ELF for one version.
pub fn elf_key(model_code: &str, version: &str) -> Result<ObjectKey, crate::storage::InvalidKey> {
    crate::layout::firmware_key(model_code, version, crate::layout::Artifact::Elf)
}

pub struct ParseCoredumpHandler {
    db: Db,
    storage: Storage,
    parser: Arc<dyn CoredumpParser>,
    gate: GroupGate,
    /// Dumps this process's uploads stored lately, read before the object store.
    handoff: Option<Arc<Handoff>>,
}

/// Why an attempt did not produce a report.
enum Failure {
    /// The row was deleted, or has its result already: nothing to do.
    Gone,
    Permanent(String),
    Transient(String),
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Failure::Transient(format!("database: {e}"))
    }
}

impl From<ParseFailure> for Failure {
    fn from(f: ParseFailure) -> Self {
        match f {
            ParseFailure::Transient(m) => Failure::Transient(m),
            ParseFailure::Permanent(m) => Failure::Permanent(m),
        }
    }
}

fn storage_failure(e: StorageError, missing: impl FnOnce() -> String) -> Failure {
    match e {
        StorageError::NotFound { .. } => Failure::Permanent(missing()),
        StorageError::InvalidKey(k) => Failure::Permanent(k.to_string()),
        other => Failure::Transient(format!("object store: {other}")),
    }
}

impl ParseCoredumpHandler {
    pub fn new(db: Db, storage: Storage, parser: Arc<dyn CoredumpParser>) -> Self {
        ParseCoredumpHandler {
            db,
            storage,
            parser,
            gate: GroupGate::default(),
            handoff: None,
        }
    }

    /// The handler that takes the dumps `handoff` holds instead of reading their objects.
    pub fn taking_from(self, handoff: Arc<Handoff>) -> Self {
        ParseCoredumpHandler {
            handoff: Some(handoff),
            ..self
        }
    }

    /// The handler with the parser the configuration selects.
    pub fn configured(db: Db, storage: Storage, config: &crate::config::Config) -> Self {
        Self::new(db, storage, parser::from_config(config))
    }

    /// The dump's bytes: handed over by this process's upload, or read from the object store.
    async fn fetch(&self, key: &ObjectKey) -> Result<bytes::Bytes, StorageError> {
        if let Some(dump) = self.handoff.as_ref().and_then(|h| h.take(key)) {
            metrics::counter!(crate::telemetry::COREDUMP_PARSE_HANDOFFS).increment(1);
            return Ok(dump);
        }
        crate::storage::read_confirmed(&self.storage, key).await
    }

    async fn attempt(&self, job: &Job, target: &ParseTarget) -> Result<(), Failure> {
        let dump_key = coredump_key(&target.device_key, target.id)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let step = Instant::now();
        let dump = self.fetch(&dump_key).await.map_err(|e| {
            storage_failure(e, || {
                format!("The core dump object {dump_key} is missing from the object store")
            })
        })?;
        record_step("dump", step);
        let elf_key = elf_key(&target.model_code, &target.firmware_version).map_err(|_| {
            Failure::Permanent(format!(
                "Firmware version {:?} cannot name a stored firmware",
                target.firmware_version
            ))
        })?;
        let started = Instant::now();
        let parsed = self
            .parser
            .parse(ParseRequest {
                job_id: job.id,
                coredump_id: target.id,
                chip: target.chip.clone(),
                model_code: target.model_code.clone(),
                firmware_version: target.firmware_version.clone(),
                dump,
                elf: ElfSource {
                    storage: self.storage.clone(),
                    key: elf_key,
                    sha256: target.elf_sha256.clone(),
                    model_code: target.model_code.clone(),
                    firmware_version: target.firmware_version.clone(),
                },
            })
            .await?;
        let step = Instant::now();
        let recorded = record_outcome(
            &self.db,
            &self.gate,
            target,
            Outcome {
                status: STATUS_PARSED,
                output: &parsed.text,
                report: parsed.report_json.as_deref(),
                signature: parsed.signature.as_ref(),
                job: Some(job),
            },
        )
        .await?;
        record_step("record", step);
        if !recorded {
            return Err(Failure::Gone);
        }
        tracing::info!(
            coredump_id = target.id,
            device_key = %target.device_key,
            parser = self.parser.name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "coredump_parsed"
        );
        Ok(())
    }

    /// Whether a parse of `coredump_id`'s `generation` is queued or running.
    async fn has_job_of(&self, coredump_id: i64, generation: i64) -> Result<bool, DbError> {
        let payload = jobs::payload_text(&ParsePayload {
            coredump_id,
            generation,
        })?;
        Ok(crate::on_pool!(&self.db, |p| sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = $1 AND payload = $2
                                AND status IN ('queued', 'running'))"
        )
        .bind(PARSE_JOB)
        .bind(&payload)
        .fetch_one(p)
        .await)?)
    }

    async fn record_error(&self, target: &ParseTarget, message: &str) -> JobOutcome {
        match record_outcome(&self.db, &self.gate, target, Outcome::error(message)).await {
            Ok(_) => JobOutcome::Completed,
            Err(e) => JobOutcome::Retry {
                after: jobs::backoff(1),
                error: format!("cannot record the parse error: {e}"),
            },
        }
    }
}

/// What a parse ended with, for [`record_outcome`].
struct Outcome<'a> {
    status: &'a str,
    /// The text report, or the reason of an error.
    output: &'a str,
    report: Option<&'a str>,
    signature: Option<&'a CrashSignature>,
    /// The job to end with the result (`jobs::complete_in`), if the caller ends it so.
    job: Option<&'a Job>,
}

impl<'a> Outcome<'a> {
    fn error(message: &'a str) -> Self {
        Outcome {
            status: STATUS_ERROR,
            output: message,
            report: None,
            signature: None,
            job: None,
        }
    }
}

/// Records a finished parse on the dump's row and, if the row is still there and `PENDING`, the
/// `coredump_parsed` event, the dump's crash group (with the group's event, see
/// [`groups::assign`]) and the end of the outcome's job, in one transaction. Returns false when
/// the row is gone or has its result already (see [`coredumps::record_result`]); then the job is
/// left to its runner.
///
/// The `assign` metric covers grouping's share: placing the dump and counting it in, but not the
/// `coredump_parsed` event recorded between the two.
async fn record_outcome(
    db: &Db,
    gate: &GroupGate,
    target: &ParseTarget,
    outcome: Outcome<'_>,
) -> Result<bool, DbError> {
    let Outcome {
        status,
        output,
        report,
        signature,
        job,
    } = outcome;
    let id = target.id;
    let mut tx = db.begin().await?;
    // The update locks the dump's row: grouping below never races another parse of this dump.
    let recorded =
        coredumps::record_result(&mut tx, id, target.parse_generation, status, output, report)
            .await?;
    let mut changes = Vec::new();
    let mut turn = None;
    if recorded {
        // Before the group's turn below, which every dump of the group waits for.
        if let Some(job) = job {
            jobs::complete_in(&mut tx, job).await?;
        }
        let started = Instant::now();
        let placement = match signature {
            Some(signature) => {
                Some(groups::place(&mut tx, &member_facts(target), signature).await?)
            }
            None => None,
        };
        let placing = started.elapsed();
        let group = match placement {
            Some(placement) => Some(placement.group_id),
            // No signature (an error, the sidecar): the dump stays where it was, if anywhere.
            None => crate::db::crash_groups::membership(&mut tx, id).await?,
        };
        // Before the group's lock (taken by `count_in`), which every dump of the group waits for.
        events::record(
            &mut tx,
            "coredump_parsed",
            &serde_json::json!({"id": id, "parse_status": status, "crash_group_id": group,
                                "device_id": target.device_id,
                                "device_model_id": target.device_model_id}),
        )
        .await?;
        if let Some(placement) = placement {
            let started = Instant::now();
            // Held until the commit below: this process's other parses of the group wait here,
            // not in the database (see `group_gate`). Not on SQLite: its writers are serialised
            // by the database, and a transaction waiting here would hold the write lock the
            // turn's holder needs.
            if db.kind() == DatabaseKind::Postgres {
                turn = Some(gate.turn(placement.group_id).await);
            }
            changes = groups::count_in(&mut tx, &member_facts(target), placement)
                .await?
                .changes;
            metrics::histogram!(crate::telemetry::COREDUMP_GROUPING_DURATION,
                "step" => "assign")
            .record((placing + started.elapsed()).as_secs_f64());
        }
    }
    tx.commit().await?;
    drop(turn);
    groups::count_committed(&changes);
    Ok(recorded)
}

fn record_step(step: &'static str, started: Instant) {
    metrics::histogram!(COREDUMP_PARSE_STEP_DURATION, "step" => step)
        .record(started.elapsed().as_secs_f64());
}

fn member_facts(target: &ParseTarget) -> MemberFacts {
    MemberFacts {
        coredump_id: target.id,
        device_id: target.device_id,
        device_model_id: target.device_model_id,
        firmware_version: target.firmware_version.clone(),
        uploaded_at: target.uploaded_at,
    }
}

#[async_trait::async_trait]
impl JobHandler for ParseCoredumpHandler {
    fn kind(&self) -> &'static str {
        PARSE_JOB
    }

    async fn run(&self, job: &Job) -> JobOutcome {
        let payload: ParsePayload = match job.payload() {
            Ok(p) => p,
            Err(e) => {
                return JobOutcome::Abort {
                    error: format!("invalid payload: {e}"),
                }
            }
        };
        let id = payload.coredump_id;
        let step = Instant::now();
        let target = coredumps::parse_target(&self.db, id).await;
        record_step("target", step);
        let target = match target {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::info!(coredump_id = id, "coredump_parse_skipped_deleted");
                return JobOutcome::Completed;
            }
            Err(e) => {
                return JobOutcome::Retry {
                    after: jobs::backoff(job.attempts),
                    error: format!("database: {e}"),
                }
            }
        };
        if target.parse_generation != payload.generation {
            // A reparse since this job was queued has a job of its own, unless the reparse came
            // from a release before parse generations (a rolling upgrade: it queued a job of
            // generation 0 without moving the row on). Then this job is the dump's only one and
            // parses it for the row's generation.
            match self.has_job_of(target.id, target.parse_generation).await {
                Ok(true) => {
                    tracing::info!(coredump_id = id, "coredump_parse_superseded");
                    return JobOutcome::Completed;
                }
                Ok(false) => {}
                Err(e) => {
                    return JobOutcome::Retry {
                        after: jobs::backoff(job.attempts),
                        error: format!("database: {e}"),
                    }
                }
            }
        }
        let started = Instant::now();
        let attempt = self.attempt(job, &target).await;
        let outcome = match &attempt {
            Ok(()) => "parsed",
            Err(Failure::Gone) => "gone",
            Err(Failure::Permanent(_)) => "error",
            Err(Failure::Transient(_)) => "transient",
        };
        metrics::histogram!(crate::telemetry::COREDUMP_PARSE_DURATION,
            "parser" => self.parser.name(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
        match attempt {
            Ok(()) => JobOutcome::CompletedInTransaction,
            Err(Failure::Gone) => {
                tracing::info!(coredump_id = id, "coredump_parse_skipped_deleted_or_done");
                JobOutcome::Completed
            }
            Err(Failure::Permanent(message)) => {
                tracing::warn!(coredump_id = id, device_key = %target.device_key,
                    parser = self.parser.name(), error = %message, "coredump_parse_failed");
                self.record_error(&target, &message).await
            }
            Err(Failure::Transient(message)) if job.attempts >= job.max_attempts => {
                let message = format!(
                    "Gave up after {} attempts; last error: {message}",
                    job.attempts
                );
                tracing::warn!(coredump_id = id, device_key = %target.device_key,
                    parser = self.parser.name(), error = %message, "coredump_parse_failed");
                self.record_error(&target, &message).await
            }
            Err(Failure::Transient(message)) => JobOutcome::Retry {
                after: jobs::backoff(job.attempts),
                error: message,
            },
        }
    }

    /// The dump ends as `ERROR` with the reason, if it is still `PENDING` (e.g. its parses kept
    /// killing their workers, or its last attempt could not reach the database).
    async fn gave_up(&self, job: &Job, error: &str) -> Result<(), String> {
        let Ok(payload) = job.payload::<ParsePayload>() else {
            return Ok(());
        };
        let target = match coredumps::parse_target(&self.db, payload.coredump_id).await {
            Ok(Some(target)) => target,
            // Gone.
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        // Reparsed since: the newer parse's job answers for it, if there is one (see `run`).
        if target.parse_generation != payload.generation
            && self
                .has_job_of(target.id, target.parse_generation)
                .await
                .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let message = format!("Parsing gave up: {error}");
        tracing::warn!(coredump_id = target.id, device_key = %target.device_key,
            error = %message, "coredump_parse_failed");
        record_outcome(&self.db, &self.gate, &target, Outcome::error(&message))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_for_about_three_quarters_of_an_hour() {
        // The waits between the attempts: an outage shorter than this turns no dump ERROR.
        let patience: std::time::Duration = (1..PARSE_MAX_ATTEMPTS).map(jobs::backoff).sum();
        assert!(
            patience >= std::time::Duration::from_secs(40 * 60),
            "{patience:?}"
        );
        assert!(
            patience <= std::time::Duration::from_secs(60 * 60),
            "{patience:?}"
        );
    }
}
