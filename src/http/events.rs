//! `GET /api/sse/stream`: the admin UI's live stream of committed changes (SPEC §5).
//!
//! The first message is `{"type": "version", "payload": {"version": …}}`; then every event
//! recorded after the subscriber connected, as unnamed `data:` messages
//! `{"type": …, "payload": …}` with the highest event id sent so far (and the lower ones still
//! awaited, see [`to_sse`]) as the SSE `id`: a reconnecting `EventSource` sends it back as
//! `Last-Event-ID` and resumes there. Keep-alive comments every 15 s; the
//! stream ends when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::auth::AdminReader;
use super::error::ApiError;
use super::extract::Query;
use crate::db::{device_logs, Db};
use crate::events::{self, StoredEvent};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/sse/stream", get(stream))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamQuery {
    /// The client's id for this stream, logged with it.
    pub request_id: Option<String>,
}

/// The message of `event`; its SSE `id` says where a reconnecting client resumes (it sends the
/// last one back as `Last-Event-ID`): `resume_from`, the highest event id sent so far including
/// this one, then `;` and the ids below it still awaited (`gaps`, the [`MAX_GAPS_IN_ID`] highest),
/// comma-separated: `42;39,40`. An event that committed late has a lower id than some already
/// sent, so the event's own id would make the client receive those again; and without the gaps a
/// late event that commits while the client is away (its row then exists, so nothing marks it as
/// missing) was never sent.
fn to_sse(event: &StoredEvent, resume_from: i64, gaps: &[i64]) -> Event {
    let data = json!({ "type": event.kind, "payload": events::payload_json(event) });
    Event::default()
        .id(resume_id(resume_from, gaps))
        .data(data.to_string())
}

/// The most awaited ids an SSE id carries (the highest): a few transactions in flight at once.
const MAX_GAPS_IN_ID: usize = 32;

fn resume_id(last: i64, gaps: &[i64]) -> String {
    let shown = &gaps[gaps.len().saturating_sub(MAX_GAPS_IN_ID)..];
    if shown.is_empty() {
        return last.to_string();
    }
    let listed: Vec<String> = shown.iter().map(i64::to_string).collect();
    format!("{last};{}", listed.join(","))
}

/// `Last-Event-ID` as [`resume_id`] writes it: the id to resume after and the awaited ids below
/// it (at most [`MAX_GAPS_IN_ID`] of them, within [`events::cursor::MAX_GAPS`] below it; others
/// are ignored). `None` if it is not one.
fn parse_resume_id(text: &str) -> Option<(i64, Vec<i64>)> {
    let (last, gaps) = match text.trim().split_once(';') {
        Some((last, gaps)) => (last, gaps),
        None => (text.trim(), ""),
    };
    let last: i64 = last.parse().ok()?;
    let floor = last.saturating_sub(events::cursor::MAX_GAPS as i64);
    let gaps = gaps
        .split(',')
        .filter_map(|g| g.trim().parse::<i64>().ok())
        .filter(|g| *g > 0 && *g < last && *g > floor)
        .take(MAX_GAPS_IN_ID)
        .collect();
    Some((last, gaps))
}

struct Subscriber {
    db: Db,
    newest: tokio::sync::watch::Receiver<i64>,
    /// The events sent so far.
    events: events::Cursor,
    buffer: VecDeque<Event>,
    shutdown: tokio_util::sync::CancellationToken,
    /// Live device log lines for the devices this stream's `request_id` subscribed to.
    logs: LogFeed,
    /// The credentials the stream was opened with, checked again every [`RECHECK_AUTH`].
    auth: StreamAuth,
    /// Its place among the streams open at once (`AppState::stream_slots`), given back when the
    /// stream ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// How often an open stream checks that its credentials still hold (a session signed out or
/// expired, an OIDC token expired): the stream ends when they do not.
const RECHECK_AUTH: Duration = Duration::from_secs(10);

struct StreamAuth {
    state: AppState,
    /// The request's method and headers (cookie, `Authorization`).
    parts: http::request::Parts,
    checked: std::time::Instant,
}

impl StreamAuth {
    /// Whether the stream may go on: its credentials still authenticate an admin reader. A
    /// database or provider that cannot answer right now does not end it.
    async fn still_valid(&mut self) -> bool {
        if self.checked.elapsed() < RECHECK_AUTH {
            return true;
        }
        self.checked = std::time::Instant::now();
        match super::auth::authenticate_admin(&self.parts, &self.state).await {
            Ok(_) => true,
            Err(ApiError::AuthenticationRequired(_) | ApiError::AuthorizationFailed(_)) => false,
            Err(_) => true,
        }
    }
}

struct LogFeed {
    request_id: Option<String>,
    newest: tokio::sync::watch::Receiver<i64>,
    last: i64,
    /// When this stream last renewed its subscriptions (forgotten an hour after the last renewal,
    /// see `crate::device_logs::retention`).
    renewed: std::time::Instant,
}

/// How often an open stream renews its log subscriptions.
const RENEW_SUBSCRIPTIONS: Duration = Duration::from_secs(600);

/// Lines read per wake of a live log feed at most; the rest follow on the next.
const LOG_FEED_BATCH: i64 = 500;
/// Message bytes sent per wake of a live log feed at most (the line that passes it included):
/// 500 lines of 8 KiB, their control characters escaped six-fold in JSON, would hold up to
/// 24 MiB per stream until its client read them.
const LOG_FEED_BYTES: usize = 64 * 1024;

impl LogFeed {
    /// New lines of the subscribed devices as `device-logs` messages
    /// (`{"device_entity_id", "logs": [{"@timestamp", "message", "entity_id"}]}`, one per device).
    async fn read(&mut self, db: &Db) -> Result<Vec<Event>, crate::db::DbError> {
        let newest = *self.newest.borrow();
        let Some(request_id) = &self.request_id else {
            self.last = self.last.max(newest);
            return Ok(Vec::new());
        };
        let subscribed = device_logs::subscriptions(db, request_id).await?;
        if subscribed.is_empty() {
            self.last = self.last.max(newest);
            return Ok(Vec::new());
        }
        if self.renewed.elapsed() >= RENEW_SUBSCRIPTIONS {
            device_logs::renew_subscriptions(db, request_id, crate::db::now()).await?;
            self.renewed = std::time::Instant::now();
        }
        let ids: Vec<i64> = subscribed.iter().map(|(id, _)| *id).collect();
        let mut lines = device_logs::after(db, &ids, self.last, LOG_FEED_BATCH).await?;
        let read_all = lines.len() < LOG_FEED_BATCH as usize;
        let mut bytes = 0;
        let within = lines
            .iter()
            .position(|l| {
                bytes += l.message.len();
                bytes >= LOG_FEED_BYTES
            })
            .map_or(lines.len(), |at| at + 1);
        let read_all = read_all && within == lines.len();
        lines.truncate(within);
        let mut events = Vec::new();
        for (device, entity) in &subscribed {
            let logs: Vec<serde_json::Value> = lines
                .iter()
                .filter(|l| l.device_id == *device)
                .map(|l| {
                    json!({"@timestamp": crate::device_logs::wire_time(l.logged_at),
                           "message": l.message, "entity_id": entity})
                })
                .collect();
            if !logs.is_empty() {
                let data = json!({"type": "device-logs",
                                  "payload": {"device_entity_id": entity, "logs": logs}});
                events.push(Event::default().data(data.to_string()));
            }
        }
        if let Some(last) = lines.last() {
            self.last = last.id;
        }
        if read_all {
            // Every line of these devices up to `newest` (read before the query, and ids become
            // visible in order) has been sent: a quiet device's feed starts the next read there,
            // not at its own last line with the whole fleet's lines since in between.
            self.last = self.last.max(newest);
        }
        Ok(events)
    }
}

/// Live stream of committed changes: core dumps, firmware versions, models, devices.
#[utoipa::path(get, path = "/api/sse/stream", tag = "auth", security(("admin" = [])), params(StreamQuery),
    responses((status = 200, description = "text/event-stream of {type, payload} messages", content_type = "text/event-stream"),
        (status = 401, body = super::error::ErrorBody),
        (status = 503, description = "Too many streams are open (half of HTTP_MAX_CONNECTIONS)", body = super::error::ErrorBody)))]
pub async fn stream(
    _: AdminReader,
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state
        .stream_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable("Too many live streams are open; try again in a moment")
        })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_resume_id);
    let newest = events::newest_id(&state.db).await?;
    let (last, awaited) = match resume {
        // An id past the newest event names events that are gone (the table was restored to
        // an earlier point): waiting for new ids to pass it would keep the stream silent.
        Some((last, awaited)) if last <= newest => (last, awaited),
        _ => (newest, Vec::new()),
    };
    // Ids below `last` that may still appear (transactions in flight when the stream starts, or
    // skipped before a reconnect), and those the client was still awaiting: one may have
    // committed while it was away.
    let mut missing = events::missing_below(&state.db, last).await?;
    missing.extend(awaited);
    let mut cursor = events::Cursor::resume(last, missing, std::time::Instant::now());
    // Logged as far as it is kept (below): a client cannot write lines of any length.
    let shown: Option<String> = query
        .request_id
        .as_deref()
        .map(|r| r.chars().take(128).collect());
    tracing::info!(request_id = ?shown, from_event = last, "sse_subscribed");
    let version = json!({"type": "version", "payload": {"version": env!("CARGO_PKG_VERSION")}});
    let mut buffer = VecDeque::new();
    // The first message carries the starting point as its id: a client that reconnects before
    // any event came (a deploy, a network drop on a quiet fleet) resumes from there instead of
    // from whatever is newest by then, which would skip what committed in between.
    let start = resume_id(cursor.last(), &cursor.gaps(std::time::Instant::now()));
    buffer.push_back(Event::default().id(start).data(version.to_string()));
    let logs = LogFeed {
        request_id: query.request_id.clone().filter(|r| r.len() <= 128),
        newest: state.log_hub.subscribe(),
        last: device_logs::newest_id(&state.db).await?,
        renewed: std::time::Instant::now(),
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.headers = headers.clone();
    let auth = StreamAuth {
        state: state.clone(),
        parts,
        checked: std::time::Instant::now(),
    };
    let subscriber = Subscriber {
        _slot: slot,
        auth,
        db: state.db.clone(),
        newest: state.events.subscribe(),
        events: cursor,
        buffer,
        shutdown: state.shutdown.clone(),
        logs,
    };
    let stream = futures::stream::unfold(subscriber, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                return Some((Ok(event), s));
            }
            match events::after(&s.db, &mut s.events, 100).await {
                Ok(rows) if !rows.is_empty() => {
                    // One at a time (as `saw` takes them anyway), so each message's id names
                    // what is awaited once it is delivered.
                    let now = std::time::Instant::now();
                    for row in &rows {
                        s.events.saw([(row.id, events::taken_recently(row))], now);
                        let gaps = s.events.gaps(now);
                        s.buffer.push_back(to_sse(row, s.events.last(), &gaps));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "sse_read_failed"),
            }
            match s.logs.read(&s.db).await {
                Ok(events) if !events.is_empty() => {
                    s.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "sse_log_read_failed"),
            }
            if !s.auth.still_valid().await {
                tracing::info!("sse_ended: its credentials no longer hold");
                return None;
            }
            tokio::select! {
                () = s.shutdown.cancelled() => return None,
                changed = s.newest.changed() => if changed.is_err() { return None },
                _ = s.logs.newest.changed() => {}
                // Also look again now and then: a read may have failed, or a log subscription of
                // this stream may have been made (through another process).
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_ids_carry_the_awaited_ids_and_read_back() {
        assert_eq!(resume_id(42, &[]), "42");
        assert_eq!(resume_id(42, &[39, 40]), "42;39,40");
        assert_eq!(parse_resume_id("42"), Some((42, vec![])));
        assert_eq!(parse_resume_id(" 42;39,40 "), Some((42, vec![39, 40])));
        // Only the highest few are carried, and only sensible ones are taken back.
        let many: Vec<i64> = (1..=100).collect();
        let id = resume_id(200, &many);
        assert_eq!(
            parse_resume_id(&id).unwrap().1,
            (69..=100).collect::<Vec<_>>()
        );
        assert_eq!(parse_resume_id("42;41,99,x,-5"), Some((42, vec![41])));
        assert_eq!(parse_resume_id("abc"), None);
        assert_eq!(
            parse_resume_id("5000;1"),
            Some((5000, vec![])),
            "too far below"
        );
    }
}
