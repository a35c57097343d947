//! Fleet credential rotation: the Python service's state machine (`OK` → `QUEUED` → `PENDING` →
//! `OK`, or `TIMEOUT` and retried), with exact completion (SPEC §13).
//!
//! - T1 [`trigger_fleet`]: every active `OK` device is `QUEUED`.
//! - T2 [`trigger_device`]: an `OK` or `TIMEOUT` device is `QUEUED` (inactive ones too).
//! - T3 [`start_next`]: if no device is `PENDING`, the `QUEUED` device with the oldest secret, else
//!   the `TIMEOUT` device with the oldest attempt that timed out at least `ROTATION_TIMEOUT_SECONDS`
//!   ago, becomes `PENDING`. Entering `PENDING` changes no secret: it records the attempt and the
//!   "device entered PENDING" notification ([`entered_pending`]); the device then fetches a
//!   provisioning package, which mints a pending secret.
//! - T4 [`complete`]: the first request authenticated with the pending secret (directly or through
//!   a token minted with it) promotes it, sets `OK` and `last_rotation_completed_at`, and starts the
//!   next device.
//! - T5 [`process_timeouts`]: a `PENDING` device whose attempt is older than the timeout becomes
//!   `TIMEOUT`; its pending secret stays valid, so a device that stored it but reported late is
//!   never locked out.
//!
//! A rotation that ends (T4, T5, or an admin's [`replace_secret`]) withdraws the device's
//! provisioning message if it is still queued (a broker that was away), so that an outage does
//! not end with every device that timed out meanwhile fetching a package at once.
//!
//! **Invariants:** at most one device is `PENDING` (a unique partial index, and T3 runs under one
//! lock across processes); every change and its `rotation-updated` event commit together, so the
//! event is seen only after the change is.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde_json::json;

use crate::config::RotationSettings;
use crate::db::rotation::{self as queries, RotationTarget};
use crate::db::{self, credentials as secrets, Db, DbError, Tx};
use crate::events;
use crate::fleet::ClientId;

/// The SSE event the rotation dashboard reacts to (payload `{}`).
pub const ROTATION_UPDATED: &str = "rotation-updated";
/// The settings key of the last scheduled fleet rotation (the Python service's name and format).
pub const LAST_SCHEDULED_AT: &str = "LAST_SCHEDULED_AT";

pub const STATES: [&str; 4] = ["OK", "QUEUED", "PENDING", "TIMEOUT"];

async fn updated(tx: &mut Tx) -> Result<(), DbError> {
    events::record(tx, ROTATION_UPDATED, &json!({})).await
}

/// The device's rotation ended (completed, timed out, or its secret replaced): the provisioning
/// message still queued for it (a broker that was away) is withdrawn. Sent later, it would make
/// the device fetch a package it no longer needs, and after an outage every device that timed out
/// meanwhile would fetch one at once, rotating side by side.
async fn ended(tx: &mut Tx, device_id: i64) -> Result<(), DbError> {
    crate::db::notifications::withdraw_kind_for_device(
        tx,
        crate::notify::Kind::Provisioning.as_str(),
        device_id,
    )
    .await
    .map(|_| ())
}

/// The seam of "a device entered `PENDING`", in the transaction that made it so: the event for
/// admins, and (with MQTT) the `iotsupport/updates/provisioning` notification to the device.
pub async fn entered_pending(
    tx: &mut Tx,
    settings: &RotationSettings,
    target: &RotationTarget,
) -> Result<(), DbError> {
    let client_id = ClientId::format(&target.model_code, &target.key);
    crate::notify::Notifier::new(settings.notify)
        .provisioning(tx, &client_id)
        .await?;
    events::record(
        tx,
        "device_rotation_pending",
        &json!({"id": target.id, "key": target.key, "client_id": client_id}),
    )
    .await
}

/// T3, inside the caller's transaction: starts the next device unless one is `PENDING`.
pub async fn start_next(
    tx: &mut Tx,
    settings: &RotationSettings,
) -> Result<Option<RotationTarget>, DbError> {
    queries::lock(tx).await?;
    if queries::pending_device(tx).await?.is_some() {
        return Ok(None);
    }
    let now = db::now();
    let retry_before = now - Duration::from_std(settings.timeout).unwrap_or_default();
    let Some(target) = queries::next_to_rotate(tx, retry_before).await? else {
        return Ok(None);
    };
    queries::mark_pending(tx, target.id, now).await?;
    entered_pending(tx, settings, &target).await?;
    tracing::info!(device_key = %target.key, "rotation_device_pending");
    Ok(Some(target))
}

/// `POST /api/rotation/trigger`: T1 then T3; returns how many devices were queued.
pub async fn trigger_fleet(db: &Db, settings: &RotationSettings) -> Result<u64, DbError> {
    let mut tx = db.begin().await?;
    // Every rotation change takes this lock first, so rotation transactions never deadlock.
    queries::lock(&mut tx).await?;
    let queued = queries::queue_fleet(&mut tx).await?;
    if queued > 0 {
        start_next(&mut tx, settings).await?;
    }
    updated(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(queued, "rotation_fleet_triggered");
    Ok(queued)
}

/// What `POST /api/devices/{id}/rotate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRotation {
    Queued,
    AlreadyPending,
}

impl DeviceRotation {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRotation::Queued => "queued",
            DeviceRotation::AlreadyPending => "already_pending",
        }
    }
}

/// T2 then T3. `None`: no such device.
pub async fn trigger_device(
    db: &Db,
    settings: &RotationSettings,
    id: i64,
) -> Result<Option<DeviceRotation>, DbError> {
    let mut tx = db.begin().await?;
    queries::lock(&mut tx).await?;
    if secrets::lock_rotation_state(&mut tx, id).await?.is_none() {
        return Ok(None);
    }
    let outcome = if queries::queue_device(&mut tx, id).await? {
        start_next(&mut tx, settings).await?;
        updated(&mut tx).await?;
        DeviceRotation::Queued
    } else {
        DeviceRotation::AlreadyPending
    };
    tx.commit().await?;
    Ok(Some(outcome))
}

/// T4: the device authenticated with its pending secret `pending_hash`. Promotes it (if it still
/// is the pending one); a device `PENDING`, `TIMEOUT` or `QUEUED` completes its rotation and the
/// next one starts. `QUEUED` too: a timed-out device queued again that reports back with the
/// secret it was given has a new secret, which is what its rotation was for. Returns whether this
/// call promoted the secret.
pub async fn complete(
    db: &Db,
    settings: &RotationSettings,
    device_id: i64,
    pending_hash: &str,
) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    queries::lock(&mut tx).await?;
    let Some(state) = secrets::lock_rotation_state(&mut tx, device_id).await? else {
        return Ok(false);
    };
    let completes = matches!(state.as_str(), "PENDING" | "TIMEOUT" | "QUEUED");
    if !secrets::promote_pending(&mut tx, device_id, pending_hash, completes).await? {
        return Ok(false); // promoted already (another request), or replaced since
    }
    if completes {
        ended(&mut tx, device_id).await?;
        start_next(&mut tx, settings).await?;
        updated(&mut tx).await?;
    }
    tx.commit().await?;
    tracing::info!(
        device_id,
        completed_rotation = completes,
        "device_secret_promoted"
    );
    Ok(true)
}

/// T5 then T3, in one transaction; returns the keys that timed out and the device started.
pub async fn process_timeouts(
    db: &Db,
    settings: &RotationSettings,
) -> Result<(Vec<String>, Option<RotationTarget>), DbError> {
    let mut tx = db.begin().await?;
    queries::lock(&mut tx).await?;
    let now = db::now();
    let cutoff = now - Duration::from_std(settings.timeout).unwrap_or_default();
    let timed_out = queries::time_out(&mut tx, cutoff, now).await?;
    for (id, key) in &timed_out {
        ended(&mut tx, *id).await?;
        tracing::warn!(device_key = %key, "rotation_device_timed_out");
    }
    let timed_out: Vec<String> = timed_out.into_iter().map(|(_, key)| key).collect();
    let started = start_next(&mut tx, settings).await?;
    if !timed_out.is_empty() || started.is_some() {
        updated(&mut tx).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok((timed_out, started))
}

/// Parses `LAST_SCHEDULED_AT`: the Python service wrote naive UTC ISO text; we write RFC 3339.
fn parse_scheduled_at(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// The cron step: when a tick of `ROTATION_CRON` passed since `LAST_SCHEDULED_AT`, queue the
/// fleet (T1, T3). Compare-and-set on the setting makes one process act per tick. Unlike the
/// original, a first run with no `LAST_SCHEDULED_AT` records the baseline instead of rotating the
/// whole fleet at once. Returns whether the fleet was queued.
pub async fn run_schedule(db: &Db, settings: &RotationSettings) -> Result<bool, DbError> {
    let Some(pattern) = &settings.cron else {
        return Ok(false);
    };
    let Ok(cron) = crate::config::parse_cron(pattern) else {
        return Ok(false); // validated at start
    };
    let now = db::now();
    let mut tx = db.begin().await?;
    queries::lock(&mut tx).await?;
    let raw = queries::setting(&mut tx, LAST_SCHEDULED_AT).await?;
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let Some(last) = raw.as_deref().and_then(parse_scheduled_at) else {
        // No (readable) baseline: record one; the next tick after it triggers.
        queries::compare_and_set_setting(&mut tx, LAST_SCHEDULED_AT, raw.as_deref(), &stamp, now)
            .await?;
        tx.commit().await?;
        return Ok(false);
    };
    let due = cron
        .find_previous_occurrence(&now, true)
        .is_ok_and(|tick| tick > last);
    if !due {
        tx.rollback().await?;
        return Ok(false);
    }
    if !queries::compare_and_set_setting(&mut tx, LAST_SCHEDULED_AT, raw.as_deref(), &stamp, now)
        .await?
    {
        tx.rollback().await?;
        return Ok(false); // another process took this tick
    }
    let queued = queries::queue_fleet(&mut tx).await?;
    start_next(&mut tx, settings).await?;
    updated(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(queued, "rotation_scheduled_trigger");
    Ok(true)
}

/// The next tick of `ROTATION_CRON` after now, as the original reports it (`…Z`).
pub fn next_scheduled(settings: &RotationSettings) -> Option<String> {
    let cron = crate::config::parse_cron(settings.cron.as_deref()?).ok()?;
    let next = cron.find_next_occurrence(&crate::db::now(), false).ok()?;
    Some(next.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// `POST /api/devices/{id}/secret`, the admin override: a new current secret at once, any pending
/// one dropped, a rotation in progress ended as completed (and the next one started). `false`: no
/// such device.
pub async fn replace_secret(
    db: &Db,
    caches: &dyn crate::lookup_cache::Invalidation,
    settings: &RotationSettings,
    device: &RotationTargetKey<'_>,
    secret_hash: &str,
) -> Result<bool, DbError> {
    let replaced = replace_secret_locked(db, settings, device.id, secret_hash).await;
    // Also after a failure: the commit may have happened.
    caches.device_changed(device.key);
    replaced
}

/// Which device, by id and key (the key names its cache entries).
pub struct RotationTargetKey<'a> {
    pub id: i64,
    pub key: &'a str,
}

async fn replace_secret_locked(
    db: &Db,
    settings: &RotationSettings,
    id: i64,
    secret_hash: &str,
) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    queries::lock(&mut tx).await?;
    let Some(state) = secrets::lock_rotation_state(&mut tx, id).await? else {
        return Ok(false);
    };
    secrets::replace_secret(&mut tx, id, secret_hash).await?;
    ended(&mut tx, id).await?;
    if state != "OK" {
        start_next(&mut tx, settings).await?;
        updated(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// One run of the rotation job (the CronJob's `rotation-job`, and each tick inside `serve`).
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    pub scheduled_triggered: bool,
    pub timeouts_processed: usize,
    pub device_rotated: Option<String>,
}

pub async fn run_job(db: &Db, settings: &RotationSettings) -> Result<JobReport, DbError> {
    let scheduled_triggered = run_schedule(db, settings).await?;
    let (timed_out, started) = process_timeouts(db, settings).await?;
    Ok(JobReport {
        scheduled_triggered,
        timeouts_processed: timed_out.len(),
        device_rotated: started.map(|t| t.key),
    })
}

/// The rotation loop inside `serve`: timeouts, the schedule and stalled chains, every `interval`.
pub async fn run_worker(
    db: Db,
    settings: RotationSettings,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = run_job(&db, &settings).await {
            tracing::warn!(error = %e, "rotation_job_failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_setting_formats_are_read() {
        let python = parse_scheduled_at("2026-02-07T08:00:12.345678").unwrap();
        assert_eq!(python.to_rfc3339(), "2026-02-07T08:00:12.345678+00:00");
        let ours = parse_scheduled_at("2026-02-07T08:00:12.345678Z").unwrap();
        assert_eq!(ours, python);
        assert!(parse_scheduled_at("yesterday").is_none());
    }

    #[test]
    fn the_originals_example_schedule_is_the_first_saturday_at_eight() {
        let cron = crate::config::parse_cron("0 8 * * 6#1").unwrap();
        let from = DateTime::parse_from_rfc3339("2026-02-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = cron.find_next_occurrence(&from, false).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-02-07T08:00:00+00:00");
        let after = cron.find_next_occurrence(&next, false).unwrap();
        assert_eq!(after.to_rfc3339(), "2026-03-07T08:00:00+00:00");
    }
}
