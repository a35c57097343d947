//! Publishing the queued notifications: take due rows with a lease, publish them paced at
//! `MQTT_NOTIFICATIONS_PER_SECOND`, delete each one the broker acknowledged, put the others back
//! with back-off.
//!
//! Exactly one process publishes a row at a time: a row is taken with a lease
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers), and only a lease that ran
//! out (its process died) lets another process take it. A process that is not connected to the
//! broker takes nothing, so a connected one gets the work. Delivery is at least once: a message
//! whose acknowledgement was lost (or whose process died after publishing) is sent again;
//! devices treat notifications as hints, so a duplicate is harmless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{payload, Kind};
use crate::db::notifications::{self as queries, QueuedNotification};
use crate::db::{self, Db};
use crate::mqtt::{MqttClient, PublishError};
use crate::telemetry;

/// Rows taken at once.
const BATCH: i64 = 200;
/// How long a process may hold a taken row before another process may take it.
const LEASE: Duration = Duration::from_secs(60);
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 16;

/// The delay before attempt `attempts + 1` of a message that failed: 1 s, 2 s, 4 s … 5 min.
pub fn retry_delay(attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 20) as u32 - 1;
    Duration::from_secs(1u64 << exponent.min(9)).min(Duration::from_secs(300))
}

/// What this process's publisher did since start (the metrics say the same, summed over the
/// process; these let a test or a debugger tell two publishers in one process apart).
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Acknowledged by the broker.
    pub published: AtomicU64,
    /// Failed and put back for another attempt.
    pub retried: AtomicU64,
    /// Refused for good and let go.
    pub dropped: AtomicU64,
}

impl PublisherStats {
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Spaces publishes `1 / rate` apart (no burst beyond one).
pub struct Pacer {
    interval: tokio::time::Interval,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer { interval }
    }

    async fn wait(&mut self) {
        self.interval.tick().await;
    }
}

/// Publishes due notifications until `shutdown` fires; publishes already sent are given the
/// client's shutdown grace to be acknowledged.
pub async fn run_worker(
    db: Db,
    client: MqttClient,
    per_second: f64,
    poll: Duration,
    stats: Arc<PublisherStats>,
    shutdown: CancellationToken,
) {
    let mut pacer = Pacer::new(per_second);
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !client.is_connected() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = client.wait_connected(poll.max(Duration::from_millis(100))) => {}
            }
            continue;
        }
        match publish_due(&db, &client, &mut pacer, &stats).await {
            Ok(0) => {}
            Ok(_) => continue,
            Err(e) => tracing::warn!(error = %e, "notifications_publish_failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// One batch: returns how many rows were taken.
pub async fn publish_due(
    db: &Db,
    client: &MqttClient,
    pacer: &mut Pacer,
    stats: &PublisherStats,
) -> Result<usize, crate::db::DbError> {
    let now = db::now();
    let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
    let rows = queries::claim(db, now, lease_until, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let taken = rows.len();
    // Paced in id order; up to IN_FLIGHT wait for their acknowledgement at once.
    let mut outcomes = Vec::with_capacity(taken);
    {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        for row in rows {
            pacer.wait().await;
            in_flight.push(publish_one(client, row));
            while in_flight.len() >= IN_FLIGHT {
                if let Some(outcome) = in_flight.next().await {
                    outcomes.push(outcome);
                }
            }
        }
        while let Some(outcome) = in_flight.next().await {
            outcomes.push(outcome);
        }
    }
    let mut delivered = Vec::new();
    for (row, result) in outcomes {
        match result {
            Ok(()) => {
                metrics::counter!(telemetry::NOTIFICATIONS_PUBLISHED, "kind" => kind_label(&row))
                    .increment(1);
                stats.published.fetch_add(1, Ordering::Relaxed);
                delivered.push(row.id);
            }
            Err(e) if !e.is_transient() => {
                // It would fail the same way forever: log it and let it go.
                metrics::counter!(telemetry::NOTIFICATIONS_DROPPED).increment(1);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(client_id = %row.client_id, error = %e, "notification_dropped");
                delivered.push(row.id);
            }
            Err(e) => {
                let delay = retry_delay(row.attempts);
                stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    notification_id = row.id,
                    client_id = %row.client_id,
                    attempts = row.attempts,
                    retry_in_s = delay.as_secs(),
                    error = %e,
                    "notification_publish_failed: retrying"
                );
                let next = db::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                queries::retry(db, row.id, next, &e.to_string()).await?;
            }
        }
    }
    queries::delete(db, &delivered).await?;
    Ok(taken)
}

fn kind_label(row: &QueuedNotification) -> &'static str {
    Kind::parse(&row.kind).map(Kind::as_str).unwrap_or("other")
}

async fn publish_one(
    client: &MqttClient,
    row: QueuedNotification,
) -> (QueuedNotification, Result<(), PublishError>) {
    let result = match Kind::parse(&row.kind) {
        Some(kind) => {
            client
                .publish(
                    &kind.topic(),
                    payload(&row.client_id, row.firmware_version.as_deref()),
                )
                .await
        }
        None => Err(PublishError::InvalidTopic {
            topic: row.kind.clone(),
            reason: "unknown notification kind",
        }),
    };
    (row, result)
}

/// Sets the queue gauges (at `/metrics` scrape).
pub async fn publish_queue_metrics(db: &Db) {
    if let Ok((count, oldest)) = queries::stats(db).await {
        metrics::gauge!(telemetry::NOTIFICATIONS_QUEUED).set(count as f64);
        let age = oldest
            .map(|t| (db::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(telemetry::NOTIFICATIONS_OLDEST_AGE).set(age);
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(40), Duration::from_secs(300));
    }
}
