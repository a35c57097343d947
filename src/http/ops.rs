//! `GET /metrics` and the middleware that counts and times every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;
use crate::telemetry::{HTTP_REQUESTS, HTTP_REQUEST_DURATION};

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus text exposition of the service's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Queue gauges are measured now, so every process reports the shared queue consistently.
    if state.config.mqtt.is_some() {
        crate::notify::publisher::publish_queue_metrics(&state.db).await;
    }
    match crate::jobs::queue_stats(&state.db).await {
        Ok(stats) => {
            let now = crate::db::now();
            for s in stats {
                let age = s
                    .oldest_run_at
                    .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!(crate::telemetry::JOBS_QUEUED, "kind" => s.kind.clone())
                    .set(s.queued as f64);
                metrics::gauge!(crate::telemetry::JOBS_OLDEST_AGE, "kind" => s.kind).set(age);
            }
        }
        Err(e) => tracing::warn!(error = %e, "queue_stats_failed"),
    }
    match &state.metrics {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// Records `http_requests_total` and `http_request_duration_seconds`, labelled by method, route
/// template (never the raw path, whose ids would explode the label set) and status.
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}
