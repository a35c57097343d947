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

use chrono::SubsecRound;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{payload, Kind};
use crate::db::notifications::{self as queries, QueuedNotification};
use crate::db::{self, Db};
use crate::mqtt::{ConnectionState, MqttClient, PublishError};
use crate::telemetry;

/// Rows taken at once, at most.
const BATCH: usize = 200;
/// How long after taking a batch its publishes may start: rows not started by then are put back
/// for whoever comes next. A batch is sized to be paced out in half of it.
const START_WINDOW: Duration = Duration::from_secs(30);
/// Time left after the last publish's own timeout to settle the batch in the database.
const SETTLE_MARGIN: Duration = Duration::from_secs(10);
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 16;

/// How long a process holds the rows it took: every publish it starts ends (acknowledged or
/// timed out after `publish_timeout`) and is settled before another process may take the row.
pub fn lease(publish_timeout: Duration) -> Duration {
    START_WINDOW + publish_timeout + SETTLE_MARGIN
}

/// Rows taken at once at `per_second`: what pacing sends in half of [`START_WINDOW`].
pub fn batch_size(per_second: f64) -> usize {
    let paced = per_second * START_WINDOW.as_secs_f64() / 2.0;
    if paced.is_finite() {
        (paced.floor() as usize).clamp(1, BATCH)
    } else {
        BATCH
    }
}

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
    per_second: f64,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        let period =
            Duration::from_secs_f64(1.0 / per_second.max(0.001)).max(Duration::from_micros(1));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer {
            interval,
            per_second,
        }
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
            if client.state() == ConnectionState::Stopped {
                // The client ended on its own (its event loop panicked): it answers at once from
                // now on, so wait here instead of spinning until the process stops.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(poll.max(Duration::from_millis(100))) => {}
                }
            }
            continue;
        }
        match publish_due(&db, &client, &mut pacer, &stats, &shutdown).await {
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
///
/// Rows are taken with a lease ([`lease`]) and publishes start only within [`START_WINDOW`] of
/// taking them, so each one has ended and been settled before the lease runs out; the rows not
/// started by then are put back. Every write after the claim names the lease it was taken with,
/// so a process whose lease did run out (it was paused, say) never settles or frees a row another
/// process has taken since.
pub async fn publish_due(
    db: &Db,
    client: &MqttClient,
    pacer: &mut Pacer,
    stats: &PublisherStats,
    shutdown: &CancellationToken,
) -> Result<usize, crate::db::DbError> {
    let taken_at = tokio::time::Instant::now();
    let now = db::now();
    let lease = chrono::Duration::from_std(lease(client.publish_timeout())).unwrap_or_default();
    // Whole milliseconds: the lease is compared for equality later, and PostgreSQL keeps
    // microseconds only.
    let lease_until = (now + lease).trunc_subsecs(3);
    let rows = queries::claim(db, now, lease_until, batch_size(pacer.per_second) as i64).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let taken = rows.len();
    let start_by = taken_at + START_WINDOW;
    // Paced in id order; up to IN_FLIGHT wait for their acknowledgement at once. Publishes in
    // flight are polled while the pacer waits, so each one leaves on its own tick.
    let mut outcomes = Vec::with_capacity(taken);
    let mut waiting = rows.into_iter().peekable();
    let mut not_started = Vec::new();
    {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            // Past the window, or shutting down: the rest go back untouched, for this process's
            // next batch or another process (each would only wait for its tick to fail).
            if waiting.peek().is_some()
                && (tokio::time::Instant::now() >= start_by || shutdown.is_cancelled())
            {
                not_started.extend(waiting.by_ref().map(|row| row.id));
            }
            if waiting.peek().is_none() && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => outcomes.push(outcome),
                () = pacer.wait(), if waiting.peek().is_some() && in_flight.len() < IN_FLIGHT => {
                    if let Some(row) = waiting.next() {
                        in_flight.push(publish_one(client, row));
                    }
                }
                // A slow pacer (a low rate) must not start a publish past the window either.
                () = tokio::time::sleep_until(start_by), if waiting.peek().is_some() => {}
                () = shutdown.cancelled(), if waiting.peek().is_some() => {}
            }
        }
    }
    // What the broker acknowledged is settled first: if putting the rest back fails, those rows
    // must not be sent again when the lease runs out.
    let delivered: Vec<i64> = outcomes
        .iter()
        .filter(|(_, result)| settles(result))
        .map(|(row, _)| row.id)
        .collect();
    queries::delete(db, &delivered, lease_until).await?;
    if !not_started.is_empty() {
        tracing::debug!(rows = not_started.len(), "notifications_put_back_unstarted");
        queries::release(db, &not_started, lease_until).await?;
    }
    for (row, result) in outcomes {
        match result {
            Ok(()) => {
                metrics::counter!(telemetry::NOTIFICATIONS_PUBLISHED, "kind" => kind_label(&row))
                    .increment(1);
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if !e.is_transient() => {
                // It would fail the same way forever: log it and let it go.
                metrics::counter!(telemetry::NOTIFICATIONS_DROPPED).increment(1);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(client_id = %row.client_id, error = %e, "notification_dropped");
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
                queries::retry(db, row.id, lease_until, next, &e.to_string()).await?;
            }
        }
    }
    Ok(taken)
}

/// Whether a publish's outcome ends its row: sent, or refused for good.
fn settles(result: &Result<(), PublishError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => !e.is_transient(),
    }
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
    use super::{batch_size, lease, retry_delay};
    use std::time::Duration;

    #[test]
    fn a_batch_is_paced_out_in_half_the_start_window_and_settled_within_its_lease() {
        assert_eq!(batch_size(100.0), 200);
        assert_eq!(batch_size(2.0), 30);
        assert_eq!(batch_size(0.01), 1);
        assert_eq!(batch_size(f64::INFINITY), 200);
        assert_eq!(lease(Duration::from_secs(10)), Duration::from_secs(50));
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(40), Duration::from_secs(300));
    }
}
