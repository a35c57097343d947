//! Keeping device logs bounded: lines older than `DEVICE_LOG_RETENTION_DAYS` go (every device,
//! through the `logged_at` index, in batches of 5000 so no transaction grows large), and a device
//! that got lines keeps only its newest `DEVICE_LOG_MAX_LINES` (through the per-device index).
//! Trimming a device walks that many index entries, so a device is trimmed once it got a
//! twentieth of that many lines since its last trim ([`trim_after`]), not every minute it got
//! one: it may hold up to 5 % more lines meanwhile.
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
    let mut devices = take_due(touched, trim_after(max_lines)).into_iter();
    while let Some((device, added)) = devices.next() {
        match queries::keep_newest(db, device, max_lines).await {
            Ok(n) => deleted += n,
            Err(e) => {
                // Still to trim, with those not reached yet: the next sweep tries again.
                if let Ok(mut t) = touched.lock() {
                    for (device, added) in std::iter::once((device, added)).chain(devices) {
                        *t.entry(device).or_default() += added;
                    }
                }
                return Err(e);
            }
        }
    }
    // Streams that went away without unsubscribing (an open stream renews its subscriptions
    // every 10 minutes).
    queries::prune_subscriptions(db, db::now() - chrono::Duration::hours(1)).await?;
    Ok(deleted)
}

/// Takes the devices that got at least `due` lines since their last trim, with their counts;
/// the others stay, counting on.
fn take_due(touched: &Touched, due: u64) -> Vec<(i64, u64)> {
    let Ok(mut t) = touched.lock() else {
        return Vec::new();
    };
    let ready: Vec<(i64, u64)> = t
        .iter()
        .filter(|(_, n)| **n >= due)
        .map(|(d, n)| (*d, *n))
        .collect();
    for (device, _) in &ready {
        t.remove(device);
    }
    ready
}

/// How many new lines make a device due for trimming to `max_lines`.
pub fn trim_after(max_lines: i64) -> u64 {
    (max_lines.max(0) as u64 / 20).max(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_trimmed_once_it_got_a_twentieth_of_its_cap() {
        assert_eq!(trim_after(10_000), 500);
        assert_eq!(trim_after(10), 1);
        let touched = Touched::default();
        touched
            .lock()
            .unwrap()
            .extend([(1, 499), (2, 500), (3, 7000)]);
        let mut due = take_due(&touched, trim_after(10_000));
        due.sort();
        assert_eq!(due, [(2, 500), (3, 7000)]);
        // Device 1 keeps counting towards its trim.
        assert_eq!(*touched.lock().unwrap(), [(1, 499)].into_iter().collect());
    }
}
