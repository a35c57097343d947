//! `GET /api/sse/stream`: the admin UI's live stream of committed changes (SPEC §5).
//!
//! The first message is `{"type": "version", "payload": {"version": …}}`; then every event
//! recorded after the subscriber connected, as unnamed `data:` messages
//! `{"type": …, "payload": …}` with the event id as the SSE `id` (a reconnecting `EventSource`
//! sends it back as `Last-Event-ID` and resumes after it). Keep-alive comments every 15 s; the
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
use crate::db::Db;
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

fn to_sse(event: &StoredEvent) -> Event {
    let data = json!({ "type": event.kind, "payload": events::payload_json(event) });
    Event::default()
        .id(event.id.to_string())
        .data(data.to_string())
}

struct Subscriber {
    db: Db,
    newest: tokio::sync::watch::Receiver<i64>,
    last: i64,
    buffer: VecDeque<Event>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// Live stream of committed changes: core dumps, firmware versions, models, devices.
#[utoipa::path(get, path = "/api/sse/stream", tag = "auth", security(("admin" = [])), params(StreamQuery),
    responses((status = 200, description = "text/event-stream of {type, payload} messages", content_type = "text/event-stream"),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn stream(
    _: AdminReader,
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let last = match resume {
        Some(id) => id,
        None => events::newest_id(&state.db).await?,
    };
    tracing::info!(request_id = ?query.request_id, from_event = last, "sse_subscribed");
    let version = json!({"type": "version", "payload": {"version": env!("CARGO_PKG_VERSION")}});
    let mut buffer = VecDeque::new();
    buffer.push_back(Event::default().data(version.to_string()));
    let subscriber = Subscriber {
        db: state.db.clone(),
        newest: state.events.subscribe(),
        last,
        buffer,
        shutdown: state.shutdown.clone(),
    };
    let stream = futures::stream::unfold(subscriber, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                return Some((Ok(event), s));
            }
            match events::after(&s.db, s.last, 100).await {
                Ok(rows) if !rows.is_empty() => {
                    for row in &rows {
                        s.buffer.push_back(to_sse(row));
                    }
                    s.last = rows.last().map(|r| r.id).unwrap_or(s.last);
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "sse_read_failed"),
            }
            tokio::select! {
                () = s.shutdown.cancelled() => return None,
                changed = s.newest.changed() => if changed.is_err() { return None },
                // Also look again now and then, in case a read failed above.
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
