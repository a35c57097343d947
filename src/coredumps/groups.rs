//! Crash groups (SPEC §15): dumps of one device model with the same crash signature
//! (`esp_coredump::crash_signature`) form a group with a title, first and last seen, dump and
//! device counts, the firmware versions it was seen in, and a status `open` | `resolved` |
//! `ignored`.
//!
//! [`assign`] puts a parsed dump into the group of its signature, inside the transaction that
//! records the parse result (`job.rs`) or the backfill (`backfill.rs`), with the group's event:
//! - a dump not yet grouped joins its group (created, with no members, if it is new);
//! - a dump already in that group changes nothing (a reparse with the same result);
//! - a dump in another group (a reparse whose signature changed) moves: counted out of the old
//!   group, into the new one;
//! - a dump uploaded after its group was resolved reopens it as a regression (`regressed_at`);
//!   an ignored group stays ignored and still counts.
//!
//! A dump without a signature (the sidecar parser gives no structured report; a report with
//! neither a reason nor a frame) is not grouped, and a parse that ends in `ERROR` leaves the
//! dump's grouping as it was: a dump leaves a group only by moving to another one. Deleting a
//! dump leaves the counts (its ledger entry stays).
//!
//! Architecture invariant: the counters of a group equal the aggregates of its ledger entries
//! (`crash_group_members`). Each change first locks the dump's row (the caller's parse-result
//! update, or [`lock_parsed_dump`](crate::db::crash_groups::lock_parsed_dump)), then the groups
//! it touches in id order, and only then reads the ledger: every transaction that changes a
//! group sees the committed work of all that changed it before, whatever process or worker
//! it ran in. On SQLite, writers are serialised.
//!
//! Every dump of a group waits for that group's row lock in turn (a crash loop across a fleet is
//! thousands of dumps of one group), so as little as possible happens under it: [`place`] finds
//! the group and writes the dump's own ledger entry before it, and the lock (`FOR NO KEY
//! UPDATE`, which the ledger's foreign-key checks do not wait for) is held only for reading the
//! ledger, the counter updates and the group's event ([`count_in`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use esp_coredump::CrashSignature;
use serde_json::json;

use crate::db::crash_groups::{
    self as db_groups, CrashGroupRow, GroupAfter, GroupDumpRow, GroupOrder, GroupUpdate,
    MemberFacts, NewGroup, VersionRow, STATUS_OPEN, STATUS_RESOLVED,
};
use crate::db::{self, Db, DbError, Tx};
use crate::{events, telemetry};

pub const EVENT_CREATED: &str = "crash_group_created";
pub const EVENT_UPDATED: &str = "crash_group_updated";
pub const EVENT_REGRESSED: &str = "crash_group_regressed";

/// What happened to one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The group is new (its first dump joined it).
    Created,
    /// A dump joined or left, or its status changed.
    Updated,
    /// A dump uploaded after the group was resolved reopened it.
    Regressed,
}

impl ChangeKind {
    pub fn event(self) -> &'static str {
        match self {
            ChangeKind::Created => EVENT_CREATED,
            ChangeKind::Updated => EVENT_UPDATED,
            ChangeKind::Regressed => EVENT_REGRESSED,
        }
    }
}

/// A change to a group, as recorded in its event.
#[derive(Debug, Clone)]
pub struct GroupChange {
    pub kind: ChangeKind,
    pub group: CrashGroupRow,
}

/// The event payload of a group change.
fn event_payload(group: &CrashGroupRow, coredump_id: Option<i64>) -> serde_json::Value {
    json!({
        "id": group.id,
        "device_model_id": group.device_model_id,
        "title": group.title,
        "status": group.status,
        "coredump_count": group.coredump_count,
        "device_count": group.device_count,
        "last_seen_at": group.last_seen_at,
        "regressed_at": group.regressed_at,
        "coredump_id": coredump_id,
    })
}

async fn record(
    tx: &mut Tx,
    change: &GroupChange,
    coredump_id: Option<i64>,
) -> Result<(), DbError> {
    events::record(
        tx,
        change.kind.event(),
        &event_payload(&change.group, coredump_id),
    )
    .await
}

/// What [`assign`] did.
#[derive(Debug, Clone)]
pub struct Assigned {
    /// The group the dump is in now.
    pub group_id: i64,
    /// The groups that changed (none when the dump was already there), each with its event.
    pub changes: Vec<GroupChange>,
}

/// Puts `dump` into the group of `signature` in the caller's transaction and records an event for
/// each group that changed. The caller holds the dump's row lock and has checked that the row
/// still exists. [`place`] then [`count_in`], for callers with nothing to do in between.
pub async fn assign(
    tx: &mut Tx,
    dump: &MemberFacts,
    signature: &CrashSignature,
) -> Result<Assigned, DbError> {
    let placement = place(tx, dump, signature).await?;
    count_in(tx, dump, placement).await
}

/// Where [`place`] put a dump: the group it belongs in now, and what is left for [`count_in`].
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The group of the dump's signature.
    pub group_id: i64,
    /// This transaction created the group.
    created: bool,
    /// The group the dump was in before (`None`: not grouped yet).
    current: Option<i64>,
}

/// The first half of [`assign`], which takes no group lock: finds (or creates) the group of the
/// signature and, for a dump not grouped yet, adds its ledger entry (this transaction's own row:
/// the counts are read from the ledger only under the group's lock). What the caller does
/// between this and [`count_in`] (e.g. recording its own event) stays outside the group's lock,
/// which every dump of the group waits for in turn.
pub async fn place(
    tx: &mut Tx,
    dump: &MemberFacts,
    signature: &CrashSignature,
) -> Result<Placement, DbError> {
    let now = db::now();
    // Look before inserting: an insert that conflicts with a group being updated by another
    // transaction would wait for that transaction to end.
    let (current, found) =
        db_groups::membership_and_find(tx, dump.coredump_id, dump.device_model_id, &signature.hash)
            .await?;
    let (group_id, created) = match found {
        Some(id) => (id, false),
        None => {
            let created = db_groups::insert_if_missing(
                tx,
                &NewGroup {
                    device_model_id: dump.device_model_id,
                    signature_hash: &signature.hash,
                    signature: &signature.text,
                    title: &signature.title,
                    seen_at: dump.uploaded_at,
                },
                now,
            )
            .await?;
            let id = db_groups::find(tx, dump.device_model_id, &signature.hash)
                .await?
                .ok_or_else(|| missing_group(dump.device_model_id))?;
            (id, created)
        }
    };
    if current.is_none() {
        db_groups::insert_member(tx, group_id, dump, now).await?;
    }
    Ok(Placement {
        group_id,
        created,
        current,
    })
}

/// The second half of [`assign`]: locks the groups involved and counts the dump out of its old
/// group (a move) and into its new one, each with its event.
pub async fn count_in(
    tx: &mut Tx,
    dump: &MemberFacts,
    placement: Placement,
) -> Result<Assigned, DbError> {
    let Placement {
        group_id: target,
        created,
        current,
    } = placement;
    if current == Some(target) {
        return Ok(Assigned {
            group_id: target,
            changes: Vec::new(),
        });
    }
    let now = db::now();
    // Lower id first, so two moves in opposite directions cannot deadlock.
    let mut ids: Vec<i64> = current.into_iter().chain([target]).collect();
    ids.sort_unstable();
    let mut locked = Vec::with_capacity(ids.len());
    for id in ids {
        locked.push(
            db_groups::lock(tx, id)
                .await?
                .ok_or_else(|| missing_group(id))?,
        );
    }
    let take = |id: i64, locked: &mut Vec<CrashGroupRow>| {
        let at = locked
            .iter()
            .position(|g| g.id == id)
            .expect("locked above");
        locked.swap_remove(at)
    };
    let mut changes = Vec::with_capacity(2);
    if let Some(old) = current {
        db_groups::move_member(tx, dump.coredump_id, target, now).await?;
        let old = take(old, &mut locked);
        changes.push(leave(tx, old, dump, now).await?);
    }
    let group = take(target, &mut locked);
    changes.push(join(tx, group, dump, created, now).await?);
    for change in &changes {
        record(tx, change, Some(dump.coredump_id)).await?;
    }
    Ok(Assigned {
        group_id: target,
        changes,
    })
}

/// Counts, once the transaction of [`assign`] has committed, what its changes did to the
/// metrics: each regression in `crash_group_regressions_total`. A grouping rolled back (a
/// failed commit, a retried job) counts nothing.
pub fn count_committed(changes: &[GroupChange]) {
    let regressions = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Regressed)
        .count();
    if regressions > 0 {
        metrics::counter!(telemetry::CRASH_GROUP_REGRESSIONS).increment(regressions as u64);
    }
}

/// Sets the `crash_groups_open` gauge from the database (at `/metrics` scrape, like the queue
/// gauges), so every process sharing the database reports the same number.
pub async fn publish_open_gauge(db: &Db) {
    match db_groups::open_count(db).await {
        Ok(open) => metrics::gauge!(telemetry::CRASH_GROUPS_OPEN).set(open as f64),
        Err(e) => tracing::warn!(error = %e, "crash_groups_open_count_failed"),
    }
}

fn missing_group(id: i64) -> DbError {
    // Groups are only deleted with their model, which cannot be deleted while it has devices.
    DbError::Other(sqlx::Error::Protocol(format!(
        "crash group {id} vanished while grouping"
    )))
}

/// Counts a dump (whose ledger entry is already in the group) into a locked group.
async fn join(
    tx: &mut Tx,
    group: CrashGroupRow,
    dump: &MemberFacts,
    created: bool,
    now: DateTime<Utc>,
) -> Result<GroupChange, DbError> {
    let regressed = regresses(&group, dump.uploaded_at);
    let update = GroupUpdate {
        coredumps: 1,
        // Decided from the ledger by `db_groups::join`.
        devices: 0,
        // An empty group (new, or emptied by moves) keeps times of dumps it no longer has.
        first_seen_at: if group.coredump_count == 0 {
            dump.uploaded_at
        } else {
            group.first_seen_at.min(dump.uploaded_at)
        },
        last_seen_at: if group.coredump_count == 0 {
            dump.uploaded_at
        } else {
            group.last_seen_at.max(dump.uploaded_at)
        },
        status: if regressed {
            STATUS_OPEN.to_string()
        } else {
            group.status.clone()
        },
        resolved_at: group.resolved_at,
        regressed_at: if regressed {
            Some(now)
        } else {
            group.regressed_at
        },
    };
    let group = db_groups::join(tx, group.id, dump, &update, now).await?;
    let kind = if created {
        ChangeKind::Created
    } else if regressed {
        ChangeKind::Regressed
    } else {
        ChangeKind::Updated
    };
    if regressed {
        tracing::info!(crash_group_id = group.id, coredump_id = dump.coredump_id,
            title = %group.title, "crash_group_regressed");
    }
    Ok(GroupChange { kind, group })
}

/// A resolved group reopens for a dump uploaded after it was resolved. A dump from before (a
/// backlog parsed late, a backfill, a reparse) is a crash the resolution already covered.
fn regresses(group: &CrashGroupRow, uploaded_at: DateTime<Utc>) -> bool {
    group.status == STATUS_RESOLVED && group.resolved_at.is_none_or(|at| uploaded_at > at)
}

/// Counts a dump (whose ledger entry has already moved out) out of a locked group.
async fn leave(
    tx: &mut Tx,
    group: CrashGroupRow,
    dump: &MemberFacts,
    now: DateTime<Utc>,
) -> Result<GroupChange, DbError> {
    let version = dump.firmware_version.as_str();
    let (stays, stays_with_version) = db_groups::device_presence(tx, group.id, dump).await?;
    let (device_left, version_device_left) = (!stays, !stays_with_version);
    db_groups::remove_from_version(tx, group.id, version, version_device_left).await?;
    // An emptied group keeps its last first/last seen (and its status).
    let (first, last) = db_groups::seen_range(tx, group.id, None)
        .await?
        .unwrap_or((group.first_seen_at, group.last_seen_at));
    let update = GroupUpdate {
        coredumps: -1,
        devices: -i64::from(device_left),
        first_seen_at: first,
        last_seen_at: last,
        status: group.status.clone(),
        resolved_at: group.resolved_at,
        regressed_at: group.regressed_at,
    };
    let group = db_groups::update(tx, group.id, &update, now).await?;
    Ok(GroupChange {
        kind: ChangeKind::Updated,
        group,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("CrashGroup {0} was not found")]
    NotFound(i64),
    #[error("DeviceModel {0} was not found")]
    ModelNotFound(i64),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Sets a group's status (`open`, `resolved` or `ignored`, checked by the caller) with its event;
/// resolving records when, so only later dumps reopen it. Setting the status it has changes
/// nothing and records no event.
pub async fn set_status(db: &Db, id: i64, status: &str) -> Result<CrashGroupRow, GroupError> {
    let mut tx = db.begin().await?;
    let group = db_groups::lock(&mut tx, id)
        .await?
        .ok_or(GroupError::NotFound(id))?;
    if group.status == status {
        tx.commit().await?;
        return Ok(group);
    }
    let now = db::now();
    let update = GroupUpdate {
        coredumps: 0,
        devices: 0,
        first_seen_at: group.first_seen_at,
        last_seen_at: group.last_seen_at,
        status: status.to_string(),
        resolved_at: if status == STATUS_RESOLVED {
            Some(now)
        } else {
            group.resolved_at
        },
        regressed_at: group.regressed_at,
    };
    let group = db_groups::update(&mut tx, id, &update, now).await?;
    let change = GroupChange {
        kind: ChangeKind::Updated,
        group,
    };
    record(&mut tx, &change, None).await?;
    tx.commit().await?;
    tracing::info!(crash_group_id = id, status, "crash_group_status_set");
    Ok(change.group)
}

/// A group with its per-version counters (first-seen order).
#[derive(Debug, Clone)]
pub struct GroupView {
    pub group: CrashGroupRow,
    pub versions: Vec<VersionRow>,
}

/// How many dumps of a group the detail view shows.
pub const NEWEST_DUMPS: i64 = 20;

/// A group with what its detail view shows.
#[derive(Debug, Clone)]
pub struct GroupDetail {
    pub group: CrashGroupRow,
    pub versions: Vec<VersionRow>,
    /// Devices of the model that last reported running each version.
    pub devices_running: HashMap<String, i64>,
    /// The newest [`NEWEST_DUMPS`] dumps still stored.
    pub newest: Vec<GroupDumpRow>,
    /// How many of its dumps are still stored.
    pub stored: i64,
}

/// A model's groups, optionally of one status (checked by the caller), in `order`.
pub async fn list(
    db: &Db,
    device_model_id: i64,
    status: Option<&str>,
    order: GroupOrder,
    after: Option<GroupAfter>,
    limit: Option<i64>,
) -> Result<Vec<GroupView>, GroupError> {
    let mut tx = db.begin_read().await?;
    if !crate::db::device_models::exists(&mut tx, device_model_id).await? {
        return Err(GroupError::ModelNotFound(device_model_id));
    }
    let groups = db_groups::list(&mut tx, device_model_id, status, order, after, limit).await?;
    // A page reads the versions of its own groups; the whole list those of the model at once.
    let ids: Vec<i64>;
    let of = if limit.is_some() {
        ids = groups.iter().map(|g| g.id).collect();
        db_groups::VersionsOf::Groups(&ids)
    } else {
        db_groups::VersionsOf::Model(device_model_id)
    };
    let mut versions: HashMap<i64, Vec<VersionRow>> = HashMap::new();
    for v in db_groups::versions(&mut tx, of).await? {
        versions.entry(v.crash_group_id).or_default().push(v);
    }
    tx.commit().await?;
    Ok(groups
        .into_iter()
        .map(|group| GroupView {
            versions: versions.remove(&group.id).unwrap_or_default(),
            group,
        })
        .collect())
}

/// One group with its per-version counters, the devices running each version and its newest
/// stored dumps.
pub async fn detail(db: &Db, id: i64) -> Result<GroupDetail, GroupError> {
    let mut tx = db.begin_read().await?;
    let group = db_groups::get(&mut tx, id)
        .await?
        .ok_or(GroupError::NotFound(id))?;
    let versions = db_groups::versions(&mut tx, db_groups::VersionsOf::Group(id)).await?;
    let devices_running = db_groups::devices_running(&mut tx, group.device_model_id)
        .await?
        .into_iter()
        .collect();
    let newest = db_groups::newest_dumps(&mut tx, id, NEWEST_DUMPS).await?;
    let stored = db_groups::stored_dumps(&mut tx, id).await?;
    tx.commit().await?;
    Ok(GroupDetail {
        group,
        versions,
        devices_running,
        newest,
        stored,
    })
}
