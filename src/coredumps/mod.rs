//! Core dumps (SPEC §8): devices upload crash dumps, we keep the newest `MAX_COREDUMPS` per device
//! and turn each into a crash report in the background.
//!
//! - [`ingest`]: validate an upload, then golden rule 1 — insert the `PENDING` row, flush, upload
//!   `coredumps/{device_key}/{id}.dmp`, apply retention, enqueue the parse job, commit.
//! - [`retention`]: per-device pruning; rows go in the upload's transaction, objects via the outbox.
//! - [`job`]: the `parse_coredump` job handler: fetch the dump, run a [`parser`] with the model's
//!   `firmware.elf` for the reported version (from the [`parse_cache`] when loaded before), record
//!   `PARSED` or `ERROR`; retry transient failures.
//! - [`handoff`]: the bytes of dumps this process has just stored, which their parse takes
//!   instead of reading the object back.
//! - [`parser`]: the [`parser::CoredumpParser`] trait and its two backends, [`builtin`] (the
//!   `esp-coredump` crate, default) and [`sidecar`] (the Python service's HTTP parser).
//! - [`parse_cache`]: the built-in parser's loaded firmware ELFs per SHA-256, under
//!   `PARSE_CACHE_BYTES`.
//! - [`groups`]: crash groups (SPEC §15) — the parse job puts each signed dump into the group of
//!   its signature in the transaction that records the result; [`backfill`] groups the dumps
//!   parsed before groups existed; [`group_gate`] makes one process's parses of a group take
//!   turns before they wait for its row lock.
//!
//! Architecture invariant: a dump is never parsed before its row is committed — the job is
//! enqueued in the upload's transaction, and the queue only hands out committed jobs.

pub mod backfill;
pub mod builtin;
pub mod group_gate;
pub mod groups;
pub mod handoff;
pub mod ingest;
pub mod job;
pub mod manage;
pub mod parse_cache;
pub mod parser;
pub mod retention;
pub mod sidecar;

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::jobs::worker::JobHandler;
use crate::storage::Storage;

/// The job handlers of core dumps every `serve` process runs by default; `handoff` is the one
/// this process's uploads offer their dumps to.
pub fn default_job_handlers(
    db: &Db,
    storage: &Storage,
    config: &Config,
    handoff: &Arc<handoff::Handoff>,
) -> Vec<Arc<dyn JobHandler>> {
    vec![Arc::new(
        job::ParseCoredumpHandler::configured(db.clone(), storage.clone(), config)
            .taking_from(handoff.clone()),
    )]
}
