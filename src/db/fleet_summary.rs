//! Fleet-wide aggregates for the web UI's overview (`src/http/ui/overview.rs`): each is one
//! `GROUP BY` over a table, so the overview costs a handful of index or table scans whatever the
//! fleet's size, never a query per model or per device.

use chrono::{DateTime, Utc};

use super::{DbError, Tx};
use crate::on_conn;

/// How many devices of a model last reported running a version (`None`: never reported).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RunningVersion {
    pub device_model_id: i64,
    pub version: Option<String>,
    pub devices: i64,
}

/// Every (model, reported version) pair with its device count; per model the most common
/// version first, devices that never reported last. Reads `ix_devices_model_running_version`.
pub async fn running_versions(tx: &mut Tx) -> Result<Vec<RunningVersion>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, RunningVersion>(
        "SELECT device_model_id, running_firmware_version AS version, COUNT(*) AS devices
         FROM devices
         GROUP BY device_model_id, running_firmware_version
         ORDER BY device_model_id, running_firmware_version IS NULL, devices DESC,
                  running_firmware_version"
    )
    .fetch_all(c)
    .await)?)
}

/// A model's open crash groups.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenCrashGroups {
    pub device_model_id: i64,
    pub groups: i64,
    /// Dumps ever grouped into them.
    pub coredumps: i64,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Open crash groups per model (models without any are absent).
pub async fn open_crash_groups(tx: &mut Tx) -> Result<Vec<OpenCrashGroups>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, OpenCrashGroups>(
        "SELECT device_model_id, COUNT(*) AS groups,
                CAST(COALESCE(SUM(coredump_count), 0) AS BIGINT) AS coredumps,
                MAX(last_seen_at) AS last_seen_at
         FROM crash_groups WHERE status = 'open'
         GROUP BY device_model_id"
    )
    .fetch_all(c)
    .await)?)
}

/// Core dumps uploaded since `since`, per model (models without any are absent).
pub async fn recent_coredumps(
    tx: &mut Tx,
    since: DateTime<Utc>,
) -> Result<Vec<(i64, i64)>, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as(
        "SELECT d.device_model_id, COUNT(*)
         FROM coredumps c JOIN devices d ON d.id = c.device_id
         WHERE c.uploaded_at >= $1
         GROUP BY d.device_model_id"
    )
    .bind(since)
    .fetch_all(c)
    .await)?)
}

/// The rotation dashboard's four groups counted in SQL, by the rules of
/// `crate::credentials::dashboard` (inactive first; an active `TIMEOUT` device whose last
/// completed rotation is at least the threshold old is critical, any other `TIMEOUT` device a
/// warning; the rest healthy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RotationHealth {
    pub healthy: i64,
    pub warning: i64,
    pub critical: i64,
    pub inactive: i64,
}

/// `critical_before`: now minus the threshold; a completion at or before it is critical
/// (`(now - t).num_days() >= threshold` holds exactly when `t <= now - threshold days`).
pub async fn rotation_health(
    tx: &mut Tx,
    critical_before: DateTime<Utc>,
) -> Result<RotationHealth, DbError> {
    Ok(on_conn!(tx, |c| sqlx::query_as::<_, RotationHealth>(
        "SELECT
             CAST(COALESCE(SUM(CASE WHEN active AND rotation_state <> 'TIMEOUT'
                                    THEN 1 ELSE 0 END), 0) AS BIGINT) AS healthy,
             CAST(COALESCE(SUM(CASE WHEN active AND rotation_state = 'TIMEOUT'
                                     AND (last_rotation_completed_at IS NULL
                                          OR last_rotation_completed_at > $1)
                                    THEN 1 ELSE 0 END), 0) AS BIGINT) AS warning,
             CAST(COALESCE(SUM(CASE WHEN active AND rotation_state = 'TIMEOUT'
                                     AND last_rotation_completed_at <= $1
                                    THEN 1 ELSE 0 END), 0) AS BIGINT) AS critical,
             CAST(COALESCE(SUM(CASE WHEN active THEN 0 ELSE 1 END), 0) AS BIGINT) AS inactive
         FROM devices"
    )
    .bind(critical_before)
    .fetch_one(c)
    .await)?)
}
