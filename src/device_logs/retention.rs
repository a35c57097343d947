//! Keeping device logs bounded: lines older than `DEVICE_LOG_RETENTION_DAYS` go (every device,
//! through the `logged_at` index, in batches of 5000 so no transaction grows large), and a device
//! that got lines keeps only its newest `DEVICE_LOG_MAX_LINES` (through the per-device index).
//! Each process trims the devices whose lines it took; the age sweep is idempotent, so several
//! processes may run it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::intake::Touched;
use crate::config::DeviceLogSettings;
use crate::db::{self, device_logs as queries, Db, DbError};

const BATCH: i64 = 5000;

/// One sweep; returns the lines deleted.
pub async fn sweep(
    db: &Db,
    touched: &Touched,
    max_age: Duration,
    max_lines: i64,
) -> Result<u64, DbError> {
    let cutoff = db::now() - chrono::Duration::from_std(max_age).unwrap_or_default();
    let mut deleted = 0;
    loop {
        let n = queries::delete_older_than(db, cutoff, BATCH).await?;
        deleted += n;
        if n < BATCH as u64 {
            break;
        }
    }
    let devices: Vec<i64> = touched
        .lock()
        .map(|mut t| t.drain().collect())
        .unwrap_or_default();
    for device in devices {
        deleted += queries::keep_newest(db, device, max_lines).await?;
    }
    // Streams that went away without unsubscribing (an open stream renews its subscriptions
    // every 10 minutes).
    queries::prune_subscriptions(db, db::now() - chrono::Duration::hours(1)).await?;
    Ok(deleted)
}

pub async fn run(
    db: Db,
    touched: Touched,
    settings: DeviceLogSettings,
    every: Duration,
    shutdown: CancellationToken,
) {
    let (max_age, max_lines) = (settings.retention, settings.max_lines_per_device);
    // A sweep at start too: a process started after a while (or after MQTT was turned off)
    // removes what aged out meanwhile at once.
    loop {
        match sweep(&db, &touched, max_age, max_lines).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "device_logs_pruned"),
            Err(e) => tracing::warn!(error = %e, "device_logs_prune_failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}
