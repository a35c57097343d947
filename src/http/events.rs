//! `GET /api/sse/stream`: the admin UI's live stream of committed changes (SPEC §5).
//!
//! The first message is `{"type": "version", "payload": {"version": …}}`; then every event
//! recorded after the subscriber connected, as unnamed `data:` messages
//! `{"type": …, "payload": …}` with the highest event id sent so far (and the lower ones still
//! awaited, see [`to_sse`]; and the log position of a stream with live-log subscriptions, see
//! [`stream_id`]) as the SSE `id`: a reconnecting `EventSource` sends it back as
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
    /// Where to resume, as `Last-Event-ID` (which wins when both are given): for a client that
    /// opens a new `EventSource` after its last one gave up, which sends no `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

/// The message of `event`; its SSE `id` says where a reconnecting client resumes (it sends the
/// last one back as `Last-Event-ID`): `resume_from`, the highest event id sent so far including
/// this one, then `;` and the ids below it still awaited (`gaps`, the [`MAX_GAPS_IN_ID`] highest),
/// comma-separated: `42;39,40`. An event that committed late has a lower id than some already
/// sent, so the event's own id would make the client receive those again; and without the gaps a
/// late event that commits while the client is away (its row then exists, so nothing marks it as
/// missing) was never sent.
fn to_sse(event: &StoredEvent, resume_from: i64, gaps: &[i64], log: Option<i64>) -> Event {
    let data = json!({ "type": event.kind, "payload": events::payload_json(event) });
    Event::default()
        .id(stream_id(resume_from, gaps, log))
        .data(data.to_string())
}

/// A message's SSE id: [`resume_id`], then, on a stream with log subscriptions, `|` and the last
/// device-log line id up to which the stream's subscribed lines were sent (`42;39,40|1234`): a
/// client that reconnects (an `EventSource` sends the last id back) also gets the lines logged
/// while it was away.
fn stream_id(last: i64, gaps: &[i64], log: Option<i64>) -> String {
    let events = resume_id(last, gaps);
    match log {
        Some(position) => format!("{events}|{position}"),
        None => events,
    }
}

/// The log line position of a `Last-Event-ID` as [`stream_id`] writes it, and its events part.
fn split_log_position(text: &str) -> (&str, Option<i64>) {
    match text.split_once('|') {
        Some((events, log)) => (events, log.trim().parse().ok().filter(|p: &i64| *p >= 0)),
        None => (text, None),
    }
}

/// How many log lines (of the whole fleet) a resumed stream may be behind and still be sent the
/// lines of its devices since; further behind, it starts at the newest line (the UI's history
/// request shows what came before).
const MAX_LOG_RESUME: i64 = 100_000;

/// The name of the message that tells a stream's client where its log feed stands (an id, and
/// `{}` as data: browsers do not hand scripts a message without data). Unnamed messages are the
/// events and log lines both UIs read; the Python service's UI listens for no such name.
const LOG_POSITION_EVENT: &str = "log-position";

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
    due: Due,
    /// The log position the client holds (the last id it was sent that carried one). A feed
    /// moves on without a message when the fleet logs but its devices do not: the client is told
    /// at a recheck with a message of an id alone (it updates the client's last id and fires no
    /// event), so that a reconnect does not resume from far behind or, past `MAX_LOG_RESUME`,
    /// from the newest line.
    sent_position: Option<i64>,
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
    /// Changes when a log subscription is made or ended through this process.
    subscriptions_changed: tokio::sync::watch::Receiver<u64>,
    last: i64,
    /// The stream's subscriptions as last read, and the feed's position then (`last`): read
    /// again when `refresh` is set (a change through this process, or every [`RECHECK`]), not on
    /// every wake for new lines.
    subscribed: Vec<(i64, String)>,
    read_at: i64,
    refresh: bool,
    /// Devices subscribed since the read before the last one, whose lines the feed moved past
    /// without them (made through another process, noticed up to [`RECHECK`] late): their lines
    /// in `(from, to]` are sent before anything newer.
    catch_up: Option<CatchUp>,
    /// Whether the stream's ids carry its log position (see [`stream_id`]): once it had
    /// subscriptions, or from the start when it resumed with one. Streams that never sent a
    /// line keep the ids they had before positions existed.
    positioned: bool,
    /// When this stream last renewed its subscriptions (forgotten an hour after the last renewal,
    /// see `crate::device_logs::retention`).
    renewed: Option<std::time::Instant>,
}

struct CatchUp {
    devices: Vec<(i64, String)>,
    from: i64,
    to: i64,
}

/// How often an open stream renews its log subscriptions.
const RENEW_SUBSCRIPTIONS: Duration = Duration::from_secs(600);

/// How often an open stream reads events and its log subscriptions without being told of a
/// change: a read may have failed, a notification may have been lost, a subscription may have
/// been made through another process. A wake for new log lines reads neither.
const RECHECK: Duration = Duration::from_secs(2);

/// Lines read per wake of a live log feed at most; the rest follow on the next.
const LOG_FEED_BATCH: i64 = 500;
/// Message bytes sent per wake of a live log feed at most (the line that passes it included):
/// 500 lines of 8 KiB, their control characters escaped six-fold in JSON, would hold up to
/// 24 MiB per stream until its client read them.
const LOG_FEED_BYTES: usize = 64 * 1024;

impl LogFeed {
    /// New lines of the subscribed devices as `device-logs` messages
    /// (`{"device_entity_id", "logs": [{"@timestamp", "message", "entity_id"}]}`, one per device).
    async fn read(&mut self, db: &Db) -> Result<Vec<(Event, i64)>, crate::db::DbError> {
        let newest = *self.newest.borrow();
        let Some(request_id) = &self.request_id else {
            self.last = self.last.max(newest);
            return Ok(Vec::new());
        };
        if let Some(catch_up) = &mut self.catch_up {
            let ids: Vec<i64> = catch_up.devices.iter().map(|(id, _)| *id).collect();
            let (lines, read_all) = within_bounds(
                device_logs::between(db, &ids, catch_up.from, catch_up.to, LOG_FEED_BATCH).await?,
            );
            if let Some(last) = lines.last() {
                catch_up.from = last.id;
            }
            let events = messages(&catch_up.devices, &lines);
            if read_all {
                self.catch_up = None;
            }
            if !events.is_empty() || self.catch_up.is_some() {
                return Ok(events);
            }
        }
        if self.refresh {
            // A catch-up still running is finished first: it covers the devices added up to then.
            let subscribed = device_logs::subscriptions(db, request_id).await?;
            let added: Vec<&device_logs::Subscription> = subscribed
                .iter()
                .filter(|s| {
                    !self
                        .subscribed
                        .iter()
                        .any(|(known, _)| *known == s.device_id)
                })
                .collect();
            // From where the feed stood at its last read of the subscriptions (the device was not
            // among them), or from when the subscription was made if that is later: lines from
            // before it the UI's history request already showed.
            let from = added
                .iter()
                .map(|s| s.from_line_id.unwrap_or(self.read_at).max(self.read_at))
                .min()
                .unwrap_or(self.read_at);
            if !added.is_empty() && self.last > from {
                self.catch_up = Some(CatchUp {
                    devices: added
                        .iter()
                        .map(|s| (s.device_id, s.entity_id.clone()))
                        .collect(),
                    from,
                    to: self.last,
                });
            }
            self.subscribed = subscribed
                .into_iter()
                .map(|s| (s.device_id, s.entity_id))
                .collect();
            self.positioned |= !self.subscribed.is_empty();
            self.read_at = self.last;
            self.refresh = false;
            if self.catch_up.is_some() {
                return Ok(Vec::new());
            }
        }
        if self.subscribed.is_empty() {
            self.last = self.last.max(newest);
            return Ok(Vec::new());
        }
        if self
            .renewed
            .is_none_or(|at| at.elapsed() >= RENEW_SUBSCRIPTIONS)
        {
            device_logs::renew_subscriptions(db, request_id, crate::db::now()).await?;
            self.renewed = Some(std::time::Instant::now());
        }
        let ids: Vec<i64> = self.subscribed.iter().map(|(id, _)| *id).collect();
        let (lines, read_all) =
            within_bounds(device_logs::after(db, &ids, self.last, LOG_FEED_BATCH).await?);
        let events = messages(&self.subscribed, &lines);
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

    /// Whether this feed has lines to send without being woken: a catch-up under way.
    fn catching_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// Where a client that reconnects resumes the feed (`None` until it is [`positioned`],
    /// which needs a `request_id`): during a catch-up, from its progress (the other devices'
    /// lines after it come again, rather than the rest of the catch-up never).
    ///
    /// [`positioned`]: LogFeed::positioned
    fn resume_position(&self) -> Option<i64> {
        self.positioned
            .then(|| self.catch_up.as_ref().map_or(self.last, |c| c.from))
    }
}

/// `lines` cut to [`LOG_FEED_BYTES`] of message text, and whether that is all there was to read
/// (fewer than [`LOG_FEED_BATCH`] lines, none cut).
fn within_bounds(mut lines: Vec<device_logs::LogLine>) -> (Vec<device_logs::LogLine>, bool) {
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
    (lines, read_all)
}

/// One `device-logs` message per run of one device's lines among `lines` (in id order), each
/// with the id of its last line: the position a client that got it has every line up to.
fn messages(devices: &[(i64, String)], lines: &[device_logs::LogLine]) -> Vec<(Event, i64)> {
    let mut events = Vec::new();
    for run in lines.chunk_by(|a, b| a.device_id == b.device_id) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        let Some((_, entity)) = devices.iter().find(|(id, _)| *id == first.device_id) else {
            continue;
        };
        let logs: Vec<serde_json::Value> = run
            .iter()
            .map(|l| {
                json!({"@timestamp": crate::device_logs::wire_time(l.logged_at),
                       "message": l.message, "entity_id": entity})
            })
            .collect();
        let data = json!({"type": "device-logs",
                          "payload": {"device_entity_id": entity, "logs": logs}});
        events.push((Event::default().data(data.to_string()), last.id));
    }
    events
}

/// What an open stream reads when it wakes: events when the event hub says there are new ones,
/// log lines when the log hub does, and both (with the log subscriptions) every [`RECHECK`].
/// Every log flush wakes every open stream; before, each such wake cost each stream an events
/// query and a subscriptions query.
#[derive(Debug)]
struct Due {
    events: bool,
    logs: bool,
    subscriptions: bool,
    /// Whether to tell the client the feed's position if it moved without a message (see
    /// [`Subscriber::sent_position`]).
    position: bool,
    recheck_at: tokio::time::Instant,
}

/// What woke a stream.
#[derive(Debug, Clone, Copy)]
enum Wake {
    Events,
    Logs,
    Subscriptions,
    /// [`Due::recheck_at`] passed (or may have: a wake for it before then changes nothing).
    Recheck,
}

impl Due {
    fn new(now: tokio::time::Instant) -> Self {
        Due {
            events: true,
            logs: true,
            subscriptions: true,
            position: false,
            recheck_at: now + RECHECK,
        }
    }

    fn woke(&mut self, wake: Wake, now: tokio::time::Instant) {
        match wake {
            Wake::Events => self.events = true,
            Wake::Logs => self.logs = true,
            Wake::Subscriptions => {
                self.subscriptions = true;
                self.logs = true;
            }
            Wake::Recheck => {}
        }
        if now >= self.recheck_at {
            self.events = true;
            self.logs = true;
            self.subscriptions = true;
            self.position = true;
            self.recheck_at = now + RECHECK;
        }
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
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.last_event_id.as_deref())
        .map(split_log_position);
    let resume = last_event_id.and_then(|(events, _)| parse_resume_id(events));
    let log_resume = last_event_id.and_then(|(_, log)| log);
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
    let request_id = query.request_id.clone().filter(|r| r.len() <= 128);
    let newest_line = device_logs::newest_id(&state.db).await?;
    let resumed_line = log_resume
        .filter(|p| *p <= newest_line && newest_line - *p <= MAX_LOG_RESUME)
        .filter(|_| request_id.is_some());
    // Lines that went past while the client was away come first (see `stream_id`).
    let last_line = resumed_line.unwrap_or(newest_line);
    let start = stream_id(
        cursor.last(),
        &cursor.gaps(std::time::Instant::now()),
        resumed_line,
    );
    buffer.push_back(Event::default().id(start).data(version.to_string()));
    let logs = LogFeed {
        request_id,
        newest: state.log_hub.subscribe(),
        subscriptions_changed: state.log_hub.watch_subscriptions(),
        last: last_line,
        subscribed: Vec::new(),
        read_at: last_line,
        refresh: true,
        catch_up: None,
        positioned: resumed_line.is_some(),
        renewed: None,
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
        due: Due::new(tokio::time::Instant::now()),
        sent_position: resumed_line,
    };
    let stream = futures::stream::unfold(subscriber, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                return Some((Ok(event), s));
            }
            // Before every read, not only when there is nothing to send: under steady traffic
            // (a crash storm, a chatty device) the wait below is never reached, and a stream
            // whose session ended, or a server shutting down, must not go on.
            if s.shutdown.is_cancelled() {
                return None;
            }
            if !s.auth.still_valid().await {
                tracing::info!("sse_ended: its credentials no longer hold");
                return None;
            }
            // A run of log reads (a burst, a catch-up) does not reach the wait below: take note
            // here of what it would have seen, so that events and the recheck do not wait for it.
            let now = tokio::time::Instant::now();
            if s.newest.has_changed().unwrap_or(false) {
                s.newest.mark_unchanged();
                s.due.woke(Wake::Events, now);
            }
            if s.logs.subscriptions_changed.has_changed().unwrap_or(false) {
                s.logs.subscriptions_changed.mark_unchanged();
                s.due.woke(Wake::Subscriptions, now);
            }
            s.due.woke(Wake::Recheck, now);
            if s.due.events {
                match events::after(&s.db, &mut s.events, 100).await {
                    Ok(rows) if !rows.is_empty() => {
                        // One at a time (as `saw` takes them anyway), so each message's id names
                        // what is awaited once it is delivered.
                        let now = std::time::Instant::now();
                        let log = s.logs.resume_position();
                        for row in &rows {
                            s.events.saw([(row.id, events::taken_recently(row))], now);
                            let gaps = s.events.gaps(now);
                            s.buffer.push_back(to_sse(row, s.events.last(), &gaps, log));
                        }
                        s.sent_position = log.or(s.sent_position);
                        continue;
                    }
                    Ok(_) => s.due.events = false,
                    Err(e) => {
                        // Read again at the next recheck.
                        s.due.events = false;
                        tracing::debug!(error = %e, "sse_read_failed");
                    }
                }
            }
            if s.due.logs {
                if s.due.subscriptions {
                    s.logs.refresh = true;
                    s.due.subscriptions = false;
                }
                match s.logs.read(&s.db).await {
                    Ok(messages) if !messages.is_empty() || s.logs.catching_up() => {
                        let gaps = s.events.gaps(std::time::Instant::now());
                        for (message, position) in messages {
                            let id = stream_id(s.events.last(), &gaps, Some(position));
                            s.buffer.push_back(message.id(id));
                            s.sent_position = Some(position);
                        }
                        continue;
                    }
                    Ok(_) => s.due.logs = false,
                    Err(e) => {
                        s.due.logs = false;
                        tracing::debug!(error = %e, "sse_log_read_failed");
                    }
                }
            }
            if std::mem::take(&mut s.due.position) {
                let position = s.logs.resume_position();
                if position.is_some() && position != s.sent_position {
                    let gaps = s.events.gaps(std::time::Instant::now());
                    s.buffer.push_back(
                        Event::default()
                            .event(LOG_POSITION_EVENT)
                            .data("{}")
                            .id(stream_id(s.events.last(), &gaps, position)),
                    );
                    s.sent_position = position;
                    continue;
                }
            }
            let wake = tokio::select! {
                () = s.shutdown.cancelled() => return None,
                changed = s.newest.changed() => match changed {
                    Ok(()) => Wake::Events,
                    Err(_) => return None,
                },
                _ = s.logs.newest.changed() => Wake::Logs,
                _ = s.logs.subscriptions_changed.changed() => Wake::Subscriptions,
                () = tokio::time::sleep_until(s.due.recheck_at) => Wake::Recheck,
            };
            s.due.woke(wake, tokio::time::Instant::now());
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log flushes every 100 ms for 5 s: each wakes the stream for lines only; events and the
    /// subscriptions are read at each recheck, which the wakes do not put off (a timer made anew
    /// on every wake never fired on a fleet logging more often than the recheck).
    #[test]
    fn a_wake_for_log_lines_reads_neither_events_nor_subscriptions_until_the_recheck() {
        let start = tokio::time::Instant::now();
        let mut due = Due::new(start);
        assert!(
            due.events && due.logs && due.subscriptions,
            "all read at first"
        );
        let read = |due: &mut Due| {
            let was = (due.events, due.logs, due.subscriptions);
            (due.events, due.logs, due.subscriptions) = (false, false, false);
            was
        };
        read(&mut due);
        let mut rechecks = Vec::new();
        for i in 1..=50u64 {
            let at = Duration::from_millis(100 * i);
            due.woke(Wake::Logs, start + at);
            match read(&mut due) {
                (false, true, false) => {}
                (true, true, true) => rechecks.push(at.as_millis()),
                other => panic!("at {at:?}: {other:?}"),
            }
        }
        assert_eq!(rechecks, [2000, 4000]);
        let later = start + Duration::from_millis(4100);
        due.woke(Wake::Events, later);
        assert_eq!(read(&mut due), (true, false, false));
        due.woke(Wake::Subscriptions, later);
        assert_eq!(read(&mut due), (false, true, true));
        due.woke(Wake::Recheck, start + Duration::from_millis(6000));
        assert_eq!(read(&mut due), (true, true, true));
    }

    #[test]
    fn stream_ids_carry_the_log_position_when_there_is_one() {
        assert_eq!(stream_id(42, &[39], None), "42;39");
        assert_eq!(stream_id(42, &[39], Some(1234)), "42;39|1234");
        assert_eq!(split_log_position("42;39|1234"), ("42;39", Some(1234)));
        assert_eq!(split_log_position("42"), ("42", None));
        assert_eq!(split_log_position("42|-3"), ("42", None));
        assert_eq!(split_log_position("42|x"), ("42", None));
        let (events, _) = split_log_position("42;39|1234");
        assert_eq!(parse_resume_id(events), Some((42, vec![39])));
    }

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
