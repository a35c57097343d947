//! Taking device log lines from `iotsupport/logsink`: each MQTT message is NDJSON, one JSON log
//! document per line. A document names its device by `entity_id` (= `device_entity_id`); its
//! `message` is stored with ANSI escapes removed and the time its message arrived, in whole
//! milliseconds (the original set `@timestamp` to the arrival time too; whole milliseconds with
//! at most [`LINES_PER_MILLISECOND`] lines each let the history's paging, whose boundaries are
//! ±1 ms, lose nothing: see `super::window`). Lines are inserted in batches (every 200 ms or 500
//! lines). Lines of unknown entity ids and malformed documents are counted and dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{strip_ansi, LogHub, LOGSINK_TOPIC};
use crate::db::device_logs::{self as queries, NewLine};
use crate::db::{self, Db};
use crate::mqtt::{MqttClient, SubscribeOptions};
use crate::telemetry::DEVICE_LOG_LINES;

const FLUSH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_LINES: usize = 500;
/// Lines kept while the database refuses them (retried with back-off); beyond this many, or
/// [`MAX_PENDING_BYTES`] of them, the oldest are dropped and counted, so an outage costs bounded
/// memory.
const MAX_PENDING_LINES: usize = 50_000;
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Received messages waiting for the intake, in payload bytes (the channel also holds at most
/// 4,096 of them): a message may be 1 MiB.
const MAX_WAITING_BYTES: usize = 64 << 20;
/// The longest entity id: as long as the column that stores a device's (`devices.device_entity_id`),
/// so a longer one names no device and is only memory.
const MAX_ENTITY_ID_CHARS: usize = 255;
/// How long the intake goes on reading after shutdown began, for the messages the MQTT client
/// still receives (and acknowledges) until it has disconnected: its default shutdown grace (5 s)
/// and the DISCONNECT (1 s), with room to spare.
const DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(10);
/// The longest message kept (longer ones are cut): one line of a device log.
const MAX_MESSAGE_CHARS: usize = 8192;

/// One parsed log document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDocument {
    pub entity_id: String,
    pub message: String,
}

/// The documents of one MQTT payload; the number of lines that were not usable documents.
pub fn parse_payload(payload: &[u8]) -> (Vec<LogDocument>, usize) {
    let text = String::from_utf8_lossy(payload);
    let mut documents = Vec::new();
    let mut malformed = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed: Option<LogDocument> = serde_json::from_str::<Value>(line).ok().and_then(|v| {
            let entity_id = v.get("entity_id")?.as_str()?.to_string();
            // No device has one (a config holding NUL is refused), and PostgreSQL refuses text
            // holding NUL: as a parameter it would fail every store of the batch it is in.
            if entity_id.contains('\0') || entity_id.chars().count() > MAX_ENTITY_ID_CHARS {
                return None;
            }
            let message = match v.get("message")? {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut message = strip_ansi(&message);
            if message.chars().count() > MAX_MESSAGE_CHARS {
                message = message.chars().take(MAX_MESSAGE_CHARS).collect();
            }
            // PostgreSQL text cannot hold NUL.
            Some(LogDocument {
                entity_id,
                message: message.replace('\0', ""),
            })
        });
        match parsed {
            Some(doc) => documents.push(doc),
            None => malformed += 1,
        }
    }
    (documents, malformed)
}

/// Devices that got lines since the count retention last trimmed them, with how many (shared
/// with `super::retention`).
pub type Touched = Arc<Mutex<HashMap<i64, u64>>>;

/// A document and its time.
pub type Arrived = (DateTime<Utc>, LogDocument);

/// Most lines of one device stamped with the same millisecond (below the history's page size,
/// so every page holds at least one whole millisecond and paging always moves on).
pub const LINES_PER_MILLISECOND: u32 = 500;

/// Gives each line the millisecond its message arrived in, moving a device's burst of more
/// than [`LINES_PER_MILLISECOND`] lines on to the following milliseconds (a 10,000-line burst
/// ends 20 ms late).
#[derive(Debug, Default)]
pub struct Stamper {
    /// Per entity id: the millisecond last given and how many lines got it.
    last: HashMap<String, (i64, u32)>,
    /// The arrival millisecond the entries were last pruned for, and how often that happened.
    pruned_for: i64,
    prunes: u64,
}

/// Entity ids the stamper remembers before it forgets those whose millisecond is over.
const STAMPER_KEEPS: usize = 10_000;

impl Stamper {
    pub fn stamp(&mut self, entity_id: &str, arrived_ms: i64) -> DateTime<Utc> {
        // Pruned once per arrival millisecond at most: the lines of one message (up to tens of
        // thousands, each of another entity id, all with one arrival time) would otherwise each
        // walk the whole map and keep all of it.
        // `!=`, not `>`: a clock stepped back must not stop the pruning until it catches up.
        if self.last.len() > STAMPER_KEEPS && arrived_ms != self.pruned_for {
            self.last.retain(|_, (ms, _)| *ms >= arrived_ms);
            self.pruned_for = arrived_ms;
            self.prunes += 1;
        }
        let slot = match self.last.get(entity_id) {
            Some(&(ms, n)) if ms >= arrived_ms && n < LINES_PER_MILLISECOND => (ms, n + 1),
            Some(&(ms, _)) if ms >= arrived_ms => (ms + 1, 1),
            _ => (arrived_ms, 1),
        };
        self.last.insert(entity_id.to_string(), slot);
        DateTime::from_timestamp_millis(slot.0).unwrap_or_default()
    }
}

/// Lines received and not stored yet, oldest first, with their size.
#[derive(Debug, Default)]
pub struct Pending {
    lines: Vec<Arrived>,
    bytes: usize,
}

fn size_of(arrived: &Arrived) -> usize {
    arrived.1.entity_id.len() + arrived.1.message.len()
}

impl Pending {
    pub fn push(&mut self, arrived: Arrived) {
        self.bytes += size_of(&arrived);
        self.lines.push(arrived);
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn lines(&self) -> &[Arrived] {
        &self.lines
    }

    pub fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
    }

    /// Drops the oldest lines until at most `max_lines` of at most `max_bytes` are left; how many
    /// were dropped.
    pub fn drop_oldest_beyond(&mut self, max_lines: usize, max_bytes: usize) -> usize {
        let mut excess = self.lines.len().saturating_sub(max_lines);
        let mut bytes: usize = self.lines[..excess].iter().map(size_of).sum();
        while self.bytes - bytes > max_bytes && excess < self.lines.len() {
            bytes += size_of(&self.lines[excess]);
            excess += 1;
        }
        self.lines.drain(..excess);
        self.bytes -= bytes;
        excess
    }
}

/// Stores `documents`; returns how many lines were stored.
pub async fn store(
    db: &Db,
    documents: &[Arrived],
    touched: &Touched,
) -> Result<usize, crate::db::DbError> {
    let entity_ids: Vec<String> = documents
        .iter()
        .map(|(_, d)| d.entity_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut devices: HashMap<String, Vec<i64>> = HashMap::new();
    for (entity, device) in queries::devices_by_entity(db, &entity_ids).await? {
        devices.entry(entity).or_default().push(device);
    }
    let mut lines = Vec::new();
    let mut unknown = 0u64;
    for (arrived, doc) in documents {
        match devices.get(&doc.entity_id) {
            Some(ids) => lines.extend(ids.iter().map(|&device_id| NewLine {
                device_id,
                logged_at: *arrived,
                message: doc.message.clone(),
            })),
            None => unknown += 1,
        }
    }
    queries::insert(db, &lines).await?;
    metrics::counter!(DEVICE_LOG_LINES, "outcome" => "stored").increment(lines.len() as u64);
    metrics::counter!(DEVICE_LOG_LINES, "outcome" => "unknown_device").increment(unknown);
    if let Ok(mut t) = touched.lock() {
        for line in &lines {
            *t.entry(line.device_id).or_default() += 1;
        }
    }
    Ok(lines.len())
}

/// Subscribes to the log sink and stores what arrives until `shutdown` fires.
pub async fn run(
    db: Db,
    client: MqttClient,
    group: String,
    hub: LogHub,
    touched: Touched,
    shutdown: CancellationToken,
) {
    let options = SubscribeOptions {
        shared_group: Some(group),
        buffer: 4096,
        max_bytes: MAX_WAITING_BYTES,
    };
    let mut subscription = match client.subscribe(LOGSINK_TOPIC, options) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "device_logs_subscribe_failed");
            return;
        }
    };
    let mut pending = Pending::default();
    // Lines dropped while the channel was drained at shutdown, to count with the others.
    let mut drained_excess = 0;
    let mut stamper = Stamper::default();
    // After a failed store: no flush before this, and the failures in a row (for the back-off).
    let mut retry_at = tokio::time::Instant::now();
    let mut failures: u32 = 0;
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once the client has stopped for good (its event loop ended): store what is left, end.
    let mut closed = false;
    let mut take = |pending: &mut Pending, payload: &[u8]| {
        let (docs, malformed) = parse_payload(payload);
        metrics::counter!(DEVICE_LOG_LINES, "outcome" => "malformed").increment(malformed as u64);
        let arrived_ms = db::now().timestamp_millis();
        for d in docs {
            pending.push((stamper.stamp(&d.entity_id, arrived_ms), d));
        }
    };
    // Set when shutdown begins. The client goes on receiving until it has disconnected (its
    // publishes get their grace to be acknowledged), and acknowledges every log message it
    // hands over meanwhile: those are read and stored too, until the client has stopped (the
    // subscription ends) or this deadline.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let drain_deadline = async |until: Option<tokio::time::Instant>| match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    };
    loop {
        hub.set_intake_subscribed(subscription.is_active());
        let flush = tokio::select! {
            () = shutdown.cancelled(), if drain_until.is_none() => {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AT_SHUTDOWN);
                false
            }
            () = drain_deadline(drain_until) => true,
            message = subscription.recv() => match message {
                Some(message) => {
                    take(&mut pending, &message.payload);
                    pending.len() >= FLUSH_LINES
                }
                None => {
                    closed = true;
                    true
                }
            },
            _ = ticker.tick() => !pending.is_empty(),
        };
        let stopping =
            closed || drain_until.is_some_and(|until| tokio::time::Instant::now() >= until);
        if stopping {
            // Messages already received (the broker has their acknowledgement) are stored with
            // the rest rather than dropped with the channel.
            while let Some(message) = subscription.try_recv() {
                take(&mut pending, &message.payload);
                // Bounded as it is read (a full channel of tiny lines parses into millions),
                // now and then so that each trim moves many lines at once.
                if pending.len() >= 2 * MAX_PENDING_LINES {
                    drained_excess +=
                        pending.drop_oldest_beyond(MAX_PENDING_LINES, MAX_PENDING_BYTES);
                }
            }
        }
        let excess = std::mem::take(&mut drained_excess)
            + pending.drop_oldest_beyond(MAX_PENDING_LINES, MAX_PENDING_BYTES);
        if excess > 0 {
            metrics::counter!(DEVICE_LOG_LINES, "outcome" => "dropped").increment(excess as u64);
            tracing::warn!(
                lines = excess,
                "device_logs_dropped: the database has refused lines for too long"
            );
        }
        if flush && !pending.is_empty() && (stopping || tokio::time::Instant::now() >= retry_at) {
            match store(&db, pending.lines(), &touched).await {
                Ok(_) => {
                    pending.clear();
                    failures = 0;
                    if let Ok(id) = queries::newest_id(&db).await {
                        hub.stored(id);
                    }
                }
                Err(e) => {
                    // Kept and tried again: a database that is briefly away loses nothing.
                    let delay = Duration::from_millis(500 << failures.min(6));
                    failures = failures.saturating_add(1);
                    retry_at = tokio::time::Instant::now() + delay;
                    tracing::warn!(
                        error = %e,
                        lines = pending.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "device_logs_store_failed: retrying"
                    );
                }
            }
        }
        if stopping {
            if !pending.is_empty() {
                tracing::warn!(
                    lines = pending.len(),
                    "device_logs_lost_at_shutdown: the database refused them"
                );
            }
            break;
        }
    }
    hub.set_intake_subscribed(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_moves_on_to_the_next_millisecond_every_500_lines() {
        let mut stamper = Stamper::default();
        let ms = |t: DateTime<Utc>| t.timestamp_millis();
        let stamps: Vec<i64> = (0..1001).map(|_| ms(stamper.stamp("a", 1000))).collect();
        assert!(stamps[..500].iter().all(|&t| t == 1000));
        assert!(stamps[500..1000].iter().all(|&t| t == 1001));
        assert_eq!(stamps[1000], 1002);
        // Another device, and a later message, start at their own arrival.
        assert_eq!(ms(stamper.stamp("b", 1000)), 1000);
        assert_eq!(ms(stamper.stamp("a", 1001)), 1002);
        assert_eq!(ms(stamper.stamp("a", 5000)), 5000);
    }

    #[test]
    fn the_stamper_forgets_finished_milliseconds_once_per_millisecond() {
        let mut stamper = Stamper::default();
        // One message of many devices: one arrival time for all of its lines.
        for i in 0..(STAMPER_KEEPS + 5_000) {
            stamper.stamp(&format!("sensor.{i}"), 1_000);
        }
        // Once when the map first grew past its size (nothing was over yet), not per line.
        assert_eq!(
            stamper.prunes, 1,
            "pruned more than once in one millisecond"
        );
        assert_eq!(stamper.last.len(), STAMPER_KEEPS + 5_000);
        // The next millisecond forgets the finished one, once.
        stamper.stamp("sensor.new", 1_001);
        stamper.stamp("sensor.newer", 1_001);
        assert_eq!(stamper.prunes, 2);
        assert_eq!(stamper.last.len(), 2);
    }

    #[test]
    fn lines_kept_for_a_refusing_database_are_bounded_by_count_and_by_bytes() {
        let line = |message: &str| {
            (
                DateTime::<Utc>::default(),
                LogDocument {
                    entity_id: "e".into(),
                    message: message.into(),
                },
            )
        };
        let mut pending = Pending::default();
        for m in ["a", "bb", "ccc", "dddd"] {
            pending.push(line(m));
        }
        // 14 bytes in all (entity id and message). Within both bounds nothing goes.
        assert_eq!(pending.drop_oldest_beyond(4, 14), 0);
        // Too many lines: the oldest go first.
        assert_eq!(pending.drop_oldest_beyond(3, 100), 1);
        assert_eq!(pending.lines()[0].1.message, "bb");
        // Too many bytes (3 + 4 + 5 = 12): the oldest go until the rest fit.
        assert_eq!(pending.drop_oldest_beyond(100, 9), 1);
        assert_eq!(pending.lines()[0].1.message, "ccc");
        assert_eq!(pending.drop_oldest_beyond(100, 4), 2);
        assert!(pending.is_empty());
        assert_eq!(pending.bytes, 0);
    }

    #[test]
    fn ndjson_lines_become_documents_and_bad_lines_are_counted() {
        let payload = b"{\"entity_id\":\"sensor.a\",\"message\":\"\\u001b[0;32mI boot\\u001b[0m\",\"relative_time\":5}\n\
                        not json\n\
                        {\"message\":\"no entity\"}\n\
                        {\"entity_id\":\"sensor.\\u0000a\",\"message\":\"NUL in the entity id\"}\n\
                        {\"entity_id\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",\"message\":\"an entity id longer than any device's\"}\n\
                        \n\
                        {\"entity_id\":\"sensor.b\",\"message\":\"second\"}";
        let (docs, malformed) = parse_payload(payload);
        assert_eq!(malformed, 4);
        assert_eq!(
            docs,
            [
                LogDocument {
                    entity_id: "sensor.a".into(),
                    message: "I boot".into()
                },
                LogDocument {
                    entity_id: "sensor.b".into(),
                    message: "second".into()
                },
            ]
        );
    }
}
