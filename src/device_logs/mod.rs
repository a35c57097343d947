//! Device logs (SPEC §14): lines devices publish to `iotsupport/logsink`, stored per device with
//! retention, served by `GET /api/devices/{id}/logs` with the Python service's window semantics
//! and streamed live to the admin UI.
//!
//! - [`intake`]: the subscription (an MQTT 5 shared subscription, `$share/iotsupport/…`, so with
//!   several processes each line is taken by one of them), NDJSON parsing, ANSI stripping, the
//!   device found by `entity_id` = `device_entity_id`, batched inserts.
//! - [`retention`]: lines older than `DEVICE_LOG_RETENTION_DAYS`, and beyond
//!   `DEVICE_LOG_MAX_LINES` per device, are deleted in bounded batches.
//! - [`window`]: the history API's windows (forward, backward, the query filter).
//! - [`LogHub`]: tells the live streams of this process that new lines may exist (PostgreSQL
//!   `LISTEN`, so lines taken by another process reach this one's streams; polling on SQLite).

pub mod intake;
pub mod retention;
pub mod window;

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::{device_logs as queries, Db};

/// The topic devices publish their logs to.
pub const LOGSINK_TOPIC: &str = "iotsupport/logsink";
/// The default shared-subscription group every `serve` process joins (`MQTT_LOG_GROUP`).
pub use crate::config::DEFAULT_LOG_GROUP as SHARED_GROUP;

/// Timestamps on the wire: fixed width (microseconds, `Z`), because the UI compares them as
/// strings.
pub fn wire_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Removes ANSI escape sequences (colours, cursor moves) as the original did with
/// `\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])`: ESC followed by one byte of `@`–`Z`, `\`, `-`, `_`,
/// or a CSI sequence (`ESC [`, parameter bytes `0`–`?`, intermediate bytes ` `–`/`, a final byte
/// `@`–`~`). Written out because it is one expression and the tree has no regex engine.
pub fn strip_ansi(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1B {
            if let Some(&next) = bytes.get(i + 1) {
                if next == b'[' {
                    let mut j = i + 2;
                    while j < bytes.len() && (b'0'..=b'?').contains(&bytes[j]) {
                        j += 1;
                    }
                    while j < bytes.len() && (b' '..=b'/').contains(&bytes[j]) {
                        j += 1;
                    }
                    if j < bytes.len() && (b'@'..=b'~').contains(&bytes[j]) {
                        i = j + 1;
                        continue;
                    }
                } else if (b'@'..=b'Z').contains(&next) || matches!(next, b'\\' | b'-' | b'_') {
                    i += 2;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only whole ASCII sequences were removed, so the rest is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// This process's watch on new log lines.
#[derive(Clone)]
pub struct LogHub {
    newest: watch::Receiver<i64>,
    poke: std::sync::Arc<watch::Sender<i64>>,
    intake_subscribed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bumped when a live-log subscription is made or ended through this process.
    subscriptions: std::sync::Arc<watch::Sender<u64>>,
}

impl LogHub {
    /// The hub, and the watcher that wakes it for lines other processes stored: run it as a
    /// supervised worker (`crate::supervisor`); it ends when `shutdown` fires.
    pub fn new(
        db: Db,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> (LogHub, futures::future::BoxFuture<'static, ()>) {
        let (sender, newest) = watch::channel(0);
        let sender = std::sync::Arc::new(sender);
        let watcher = Box::pin(watch_lines(db, poll, sender.clone(), shutdown));
        let hub = LogHub {
            newest,
            poke: sender,
            intake_subscribed: Default::default(),
            subscriptions: std::sync::Arc::new(watch::channel(0).0),
        };
        (hub, watcher)
    }

    /// A receiver that changes whenever a live-log subscription is made or ended through this
    /// process (the streams read theirs again at once; other changes show within their recheck).
    pub fn watch_subscriptions(&self) -> watch::Receiver<u64> {
        self.subscriptions.subscribe()
    }

    /// A live-log subscription was made or ended through this process.
    pub fn subscriptions_changed(&self) {
        self.subscriptions.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether this process's intake holds its granted log-sink subscription right now.
    pub fn intake_subscribed(&self) -> bool {
        self.intake_subscribed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_intake_subscribed(&self, subscribed: bool) {
        self.intake_subscribed
            .store(subscribed, std::sync::atomic::Ordering::Relaxed);
    }

    /// A receiver that changes whenever newer lines may exist.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.newest.clone()
    }

    /// This process stored lines up to `id`.
    pub fn stored(&self, id: i64) {
        self.poke.send_if_modified(|current| {
            let newer = id > *current;
            if newer {
                *current = id;
            }
            newer
        });
    }
}

async fn watch_lines(
    db: Db,
    poll: Duration,
    sender: std::sync::Arc<watch::Sender<i64>>,
    shutdown: CancellationToken,
) {
    let mut listen =
        crate::db::listen::Listen::start(&db, queries::LOGS_CHANNEL, "device_logs").await;
    loop {
        listen.retry(&db).await;
        if let Ok(id) = queries::newest_id(&db).await {
            sender.send_if_modified(|current| {
                let newer = id > *current;
                if newer {
                    *current = id;
                }
                newer
            });
        }
        let wake = async {
            match listen.listener() {
                Some(l) => {
                    if let Ok(Err(_)) = tokio::time::timeout(poll * 10, l.recv()).await {
                        tokio::time::sleep(poll).await;
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_and_cursor_moves_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[0;32mI (123) wifi: connected\u{1b}[0m"),
            "I (123) wifi: connected"
        );
        assert_eq!(strip_ansi("a\u{1b}[2Kb\u{1b}Mc"), "abc");
        assert_eq!(strip_ansi("plain é text"), "plain é text");
        // An unfinished sequence is kept as it is.
        assert_eq!(strip_ansi("x\u{1b}[12"), "x\u{1b}[12");
    }

    #[test]
    fn wire_times_have_a_fixed_width() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-02-07T08:00:01.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(wire_time(t), "2026-02-07T08:00:01.500000Z");
    }
}
