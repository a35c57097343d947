//! `GET /metrics` and the middleware that counts and times every request.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::Method;
use metrics::{Counter, Histogram};

use super::error::ApiError;
use crate::state::AppState;
use crate::telemetry::{HTTP_REQUESTS, HTTP_REQUEST_DURATION};

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// How long a scrape waits for the gauges it reads from the database.
const DATABASE_GAUGES_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Job kinds this process has reported a queue for: a kind whose queue emptied has no row in
/// [`crate::jobs::queue_stats`], and its gauges must go back to zero rather than keep their last
/// value for good.
static JOB_KINDS_SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

async fn database_gauges(state: &AppState) {
    if state.config.mqtt.is_some() {
        crate::notify::publisher::publish_queue_metrics(&state.db).await;
    }
    crate::coredumps::groups::publish_open_gauge(&state.db).await;
    let stats = match crate::jobs::queue_stats(&state.db).await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "queue_stats_failed");
            return;
        }
    };
    let now = crate::db::now();
    let mut seen = JOB_KINDS_SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut empty = seen.clone();
    for s in stats {
        let age = s
            .oldest_run_at
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        empty.remove(&s.kind);
        seen.insert(s.kind.clone());
        metrics::gauge!(crate::telemetry::JOBS_QUEUED, "kind" => s.kind.clone())
            .set(s.queued as f64);
        metrics::gauge!(crate::telemetry::JOBS_OLDEST_AGE, "kind" => s.kind).set(age);
    }
    for kind in empty {
        metrics::gauge!(crate::telemetry::JOBS_QUEUED, "kind" => kind.clone()).set(0.0);
        metrics::gauge!(crate::telemetry::JOBS_OLDEST_AGE, "kind" => kind).set(0.0);
    }
}

/// Prometheus text exposition of the service's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Queue and crash-group gauges are measured now, so every process reports the shared
    // database consistently; within a bound, so that a database that is down or a pool that is
    // exhausted cannot hold the scrape past Prometheus's timeout and lose every other metric
    // (the gauges then keep their last values, and the log says why).
    // One measurement at a time, shared by the scrapes that come while it runs: anyone may
    // scrape, as often as they like.
    // The budget is kept by the measurement itself (a task of its own, see `SingleFlight`).
    let measuring = state.clone();
    let measured = state
        .gauges
        .run(DATABASE_GAUGES_BUDGET, move || {
            Box::pin(async move {
                tokio::time::timeout(DATABASE_GAUGES_BUDGET, database_gauges(&measuring))
                    .await
                    .is_ok()
            })
        })
        .await;
    if measured != Some(true) {
        tracing::warn!("metrics_database_gauges_timed_out");
    }
    match &state.metrics {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::NotFound("The metrics recorder is not installed".into()).into_response(),
    }
}

/// Records `http_requests_total` and `http_request_duration_seconds`, labelled by method, route
/// template and status. Every label comes from a fixed set, whatever the client sends (each
/// distinct label value is a new series, kept until the process ends): the method is one of
/// the standard ones or `_OTHER` ([`method_label`]), the route is a template of the router or
/// `unmatched` (never the raw path), and the status is one our handlers chose.
pub async fn record(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = request_metrics(method, route, response.status().as_u16());
    requests.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    response
}

/// The handles of the two request metrics, per method and status, then route.
type RequestMetrics = HashMap<(&'static str, u16), HashMap<Box<str>, (Counter, Histogram)>>;

/// Registering the request metrics on every request built three label strings and looked each
/// metric up in the recorder's registry: about 5 % of the service's CPU on cached OTA ranges.
/// The labels come from fixed sets (see [`record`]), so this stays as small as the registry.
static REQUEST_METRICS: LazyLock<RwLock<RequestMetrics>> = LazyLock::new(Default::default);

fn request_metrics(method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
    if let Ok(known) = REQUEST_METRICS.read() {
        if let Some(handles) = known.get(&(method, status)).and_then(|r| r.get(route)) {
            return handles.clone();
        }
    }
    // Asked before the handles are taken: handles taken while the recorder is being installed
    // may go nowhere, and must not be kept.
    let keep = crate::telemetry::recorder_settled();
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    let handles = (
        metrics::counter!(HTTP_REQUESTS, &labels),
        metrics::histogram!(HTTP_REQUEST_DURATION, &labels),
    );
    if !keep {
        return handles;
    }
    if let Ok(mut known) = REQUEST_METRICS.write() {
        known
            .entry((method, status))
            .or_default()
            .insert(route.into(), handles.clone());
    }
    handles
}

/// The method as a label: the methods of RFC 9110 and PATCH as themselves, any other (a client
/// may send any token) as `_OTHER`, as OpenTelemetry's HTTP conventions do.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for custom in ["PURGE", "MXYZ", "get"] {
            let method = Method::from_bytes(custom.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "_OTHER", "{custom}");
        }
    }
}
