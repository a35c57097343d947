//! Change events for admins watching the fleet (the web UI's live stream, SPEC §5).
//!
//! [`record`] writes an event row inside the transaction of the change it describes: a rolled-back
//! change leaves no event, and a committed one is visible to every `serve` process sharing the
//! database. The [`EventHub`] of each process notices new rows — woken by PostgreSQL
//! `LISTEN/NOTIFY` (the `NOTIFY` is sent by the same transaction, so it arrives only on commit),
//! or by polling on SQLite and as a fallback — and publishes the newest id on a `watch` channel.
//! Each subscriber reads rows after the last id it sent, at its own pace: a slow or dead
//! subscriber never blocks a request and holds no queue in memory.

use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::{self, Db, DbError, Tx};

pub mod cursor;
pub use cursor::Cursor;

/// The PostgreSQL notification channel a committed event wakes listeners on.
pub const CHANNEL: &str = "iotsupport_events";
/// How long events are kept; a subscriber that falls further behind misses them.
const RETENTION: Duration = Duration::from_secs(3600);

/// One event as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub payload: String,
    /// When the event was recorded (its transaction may have committed later).
    #[serde(skip)]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Records an event in the caller's transaction.
pub async fn record<T: Serialize>(tx: &mut Tx, kind: &str, payload: &T) -> Result<(), DbError> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| DbError::Other(sqlx::Error::Encode(Box::new(e))))?;
    let now = db::now();
    match tx {
        // One round trip: the notification, which carries the event's id, is delivered to
        // listeners only when (and if) this transaction commits.
        Tx::Postgres(t) => {
            sqlx::query(
                "WITH e AS (INSERT INTO events (type, payload, created_at) VALUES ($1, $2, $3)
                            RETURNING id)
                 SELECT pg_notify($4, id::text) FROM e",
            )
            .bind(kind)
            .bind(&payload)
            .bind(now)
            .bind(CHANNEL)
            .execute(&mut **t)
            .await?;
        }
        Tx::Sqlite(t) => {
            sqlx::query("INSERT INTO events (type, payload, created_at) VALUES ($1, $2, $3)")
                .bind(kind)
                .bind(&payload)
                .bind(now)
                .execute(&mut **t)
                .await?;
        }
    }
    Ok(())
}

/// The events a reader at `cursor` has not seen, by id, at most `limit`: those after its last id
/// and, on PostgreSQL, those of the ids it skipped that have appeared since (see [`Cursor`]).
/// The caller passes the rows it got to [`Cursor::saw`] (see [`taken_recently`]).
pub async fn after(db: &Db, cursor: &mut Cursor, limit: i64) -> Result<Vec<StoredEvent>, DbError> {
    let last = cursor.last();
    Ok(match db {
        Db::Postgres(pool) => {
            sqlx::query_as::<_, StoredEvent>(
                "SELECT id, type, payload, created_at FROM events WHERE id > $1 OR id = ANY($2)
                 ORDER BY id LIMIT $3",
            )
            .bind(last)
            .bind(cursor.gaps(std::time::Instant::now()))
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        // One writer at a time: ids become visible in order, and no skipped id appears later.
        Db::Sqlite(pool) => {
            sqlx::query_as::<_, StoredEvent>(
                "SELECT id, type, payload, created_at FROM events WHERE id > $1
                 ORDER BY id LIMIT $2",
            )
            .bind(last)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
    })
}

/// On PostgreSQL, the ids below `last` (at most [`cursor::MAX_GAPS`] below it) that no stored
/// event has but that may still appear: a transaction that took one is still in flight (or rolled
/// back). A reader starting at `last` must look for them (see [`Cursor`]). An id is only worth it
/// if it was taken within [`cursor::GAP_WAIT`]: ids are taken in order, so one below a stored
/// event older than that is older still (or was removed with the events of more than an hour
/// ago). Empty on SQLite, whose ids appear in order.
pub async fn missing_below(db: &Db, last: i64) -> Result<Vec<i64>, DbError> {
    let Db::Postgres(pool) = db else {
        return Ok(Vec::new());
    };
    let floor = last.saturating_sub(cursor::MAX_GAPS as i64).max(0);
    let stored: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, created_at FROM events WHERE id > $1 AND id <= $2 ORDER BY id DESC",
    )
    .bind(floor)
    .bind(last)
    .fetch_all(pool)
    .await?;
    let recent = gap_horizon();
    let mut stored = stored.into_iter().peekable();
    let mut missing = Vec::new();
    // Whether the nearest stored event above the id being looked at is recent (none: assume so).
    let mut above_is_recent = true;
    for id in (floor + 1..=last).rev() {
        match stored.peek() {
            Some(&(stored_id, created_at)) if stored_id == id => {
                above_is_recent = created_at > recent;
                stored.next();
            }
            _ if above_is_recent && id < last => missing.push(id),
            _ => {}
        }
    }
    Ok(missing)
}

/// Whether `event` was recorded within [`cursor::GAP_WAIT`]: only then may ids below it that no
/// event has yet still appear (ids are taken in order), so only then are they worth looking for.
pub fn taken_recently(event: &StoredEvent) -> bool {
    event.created_at > gap_horizon()
}

/// Events recorded before this are too old for a skipped id below them to still appear.
fn gap_horizon() -> chrono::DateTime<chrono::Utc> {
    db::now() - chrono::Duration::from_std(cursor::GAP_WAIT).unwrap_or_default()
}

/// The newest event id (0 when there is none).
pub async fn newest_id(db: &Db) -> Result<i64, DbError> {
    let id: Option<i64> =
        crate::on_pool!(db, |p| sqlx::query_scalar("SELECT MAX(id) FROM events")
            .fetch_one(p)
            .await)?;
    Ok(id.unwrap_or(0))
}

/// The per-process watcher of the events table.
#[derive(Clone)]
pub struct EventHub {
    newest: watch::Receiver<i64>,
}

impl EventHub {
    /// The hub, and the watcher that feeds it: run it as a supervised worker (`crate::supervisor`);
    /// it ends when `shutdown` fires. Without it the streams hear of new events only by polling.
    pub fn new(
        db: Db,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> (EventHub, futures::future::BoxFuture<'static, ()>) {
        let (sender, newest) = watch::channel(0);
        let watcher = Box::pin(watch_events(db, poll, sender, shutdown));
        (EventHub { newest }, watcher)
    }

    /// A receiver that changes whenever newer events may exist.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.newest.clone()
    }
}

async fn watch_events(
    db: Db,
    poll: Duration,
    sender: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    let mut listen = crate::db::listen::Listen::start(&db, CHANNEL, "events").await;
    let mut last_cleanup = tokio::time::Instant::now();
    let mut heard = Heard::Nothing;
    loop {
        listen.retry(&db).await;
        let newest = match heard {
            Heard::Ids(newest) => Ok(newest),
            Heard::Nothing | Heard::Unknown => newest_id(&db).await,
        };
        match newest {
            // After a notification the subscribers look again even if the newest id did not
            // change: the event may have a lower id than one already sent (see `Cursor`).
            Ok(id) if heard != Heard::Nothing => sender.send_modify(|current| {
                *current = (*current).max(id);
            }),
            Ok(id) => {
                sender.send_if_modified(|current| {
                    let changed = id > *current;
                    *current = (*current).max(id);
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "events_poll_failed"),
        }
        if last_cleanup.elapsed() > Duration::from_secs(60) {
            last_cleanup = tokio::time::Instant::now();
            let cutoff = db::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default();
            let _ = crate::on_pool!(&db, |p| sqlx::query(
                "DELETE FROM events WHERE created_at < $1"
            )
            .bind(cutoff)
            .execute(p)
            .await
            .map(|r| r.rows_affected()));
        }
        let wake = async {
            match listen.listener() {
                // A notification (or a dropped connection, which PgListener re-establishes)
                // means "look again"; the poll below bounds the wait either way.
                Some(l) => match tokio::time::timeout(poll * 10, l.recv()).await {
                    Ok(Ok(first)) => {
                        // All that have arrived, as one wake-up: under load one read of the
                        // table for many events.
                        let mut ids = vec![first.payload().parse::<i64>().ok()];
                        // Those already on the connection, without waiting for more.
                        while ids.len() < MAX_NOTIFICATIONS_PER_WAKE {
                            match l.try_recv().now_or_never() {
                                Some(Ok(Some(next))) => ids.push(next.payload().parse().ok()),
                                _ => break,
                            }
                        }
                        Heard::from_payloads(ids)
                    }
                    Ok(Err(e)) => {
                        // The database went away; don't spin while PgListener reconnects.
                        tracing::debug!(error = %e, "events_listen_interrupted");
                        tokio::time::sleep(poll).await;
                        Heard::Nothing
                    }
                    Err(_) => Heard::Nothing,
                },
                None => {
                    tokio::time::sleep(poll).await;
                    Heard::Nothing
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            woken = wake => heard = woken,
        }
    }
}

/// The most notifications the hub takes in one wake-up.
const MAX_NOTIFICATIONS_PER_WAKE: usize = 1024;

/// What woke the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// The poll interval passed: the newest id is asked for.
    Nothing,
    /// Notifications of these events; the highest id.
    Ids(i64),
    /// A notification without an id (a process of an earlier release): the newest id is asked for.
    Unknown,
}

impl Heard {
    fn from_payloads(ids: Vec<Option<i64>>) -> Heard {
        ids.into_iter()
            .try_fold(i64::MIN, |newest, id| id.map(|id| newest.max(id)))
            .map_or(Heard::Unknown, Heard::Ids)
    }
}

/// Parses a stored payload back into JSON for the wire.
pub fn payload_json(event: &StoredEvent) -> Value {
    serde_json::from_str(&event.payload).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::Heard;

    #[test]
    fn notifications_name_the_newest_event_unless_one_has_no_id() {
        assert_eq!(
            Heard::from_payloads(vec![Some(3), Some(7), Some(5)]),
            Heard::Ids(7)
        );
        assert_eq!(Heard::from_payloads(vec![Some(3)]), Heard::Ids(3));
        // An empty payload: a process of an earlier release, which did not send the id.
        assert_eq!(
            Heard::from_payloads(vec![Some(3), None, Some(9)]),
            Heard::Unknown
        );
    }
}
