//! The HTTP API: one router assembled from per-feature modules, each owning its `router()`, and the
//! layers every request passes through (outermost first):
//!
//! 1. `X-Request-ID` taken from the request when it is 1–128 visible ASCII characters, else
//!    generated, and echoed on the response;
//! 2. a tracing span per request with its id, method and matched route, and a log line per response;
//! 3. request counting and timing by route template ([`ops::record`]);
//! 4. the request id made available to error envelopes ([`request_context::scope`]);
//! 5. panics turned into a 500 envelope.
//!
//! Unknown routes and methods answer with the same envelope as everything else, and so does input
//! that does not parse (`extract.rs`). What an envelope or a log line repeats of a request is
//! bounded (`error::bounded`).

pub mod auth;
pub mod body;
pub mod client_addr;
pub mod coredumps;
pub mod crash_groups;
pub mod device_logs;
pub mod device_models;
pub mod devices;
pub mod docs;
pub mod download;
pub mod error;
pub mod events;
pub mod extract;
pub mod firmware;
pub mod health;
pub mod identity;
pub mod iot;
pub mod login;
pub mod ops;
pub mod paging;
pub mod provisioning;
pub mod request_context;
pub mod rotation;
pub mod server;
pub mod session;
pub mod ui;

use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::HeaderName;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::state::AppState;
use error::{bounded, ApiError};

/// The whole API, with `extra` routes merged in (the seam tests use to mount probe routes).
pub fn router(state: AppState, extra: Option<Router<AppState>>) -> Router {
    let mut routes = Router::new()
        .merge(health::router())
        .merge(ops::router())
        .merge(docs::router())
        .merge(device_models::router())
        .merge(devices::router())
        .merge(firmware::router())
        .merge(coredumps::router())
        .merge(crash_groups::router())
        .merge(iot::router())
        .merge(rotation::router())
        .merge(device_logs::router())
        .merge(provisioning::router())
        .merge(identity::router())
        .merge(login::router())
        .merge(events::router())
        .merge(ui::router());
    if let Some(extra) = extra {
        routes = routes.merge(extra);
    }
    let request_id = HeaderName::from_static(request_context::REQUEST_ID_HEADER);
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(
                    request_context::drop_unacceptable_request_id,
                ))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request| {
                            let route = request
                                .extensions()
                                .get::<axum::extract::MatchedPath>()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            // The request id is bounded by the layer above; method and path
                            // are the client's, so only a bounded part of them is logged.
                            tracing::info_span!(
                                "request",
                                request_id = %request_context::request_id_of(request),
                                method = %bounded(request.method().as_str()),
                                route = %route,
                                path = %bounded(request.uri().path()),
                            )
                        })
                        .on_request(())
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(middleware::from_fn(ops::record))
                .layer(middleware::from_fn(request_context::scope))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    // A browser on a mistyped page address gets a page that says so, not the API's JSON.
    let wants_page = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_page && !path.starts_with("/api/") && path != "/api" {
        return ui::UiError::not_found(format!("There is no page at {}", bounded(path)))
            .into_response();
    }
    ApiError::NotFound(format!("No route for {}", bounded(path))).into_response()
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "Method {} is not allowed on {}",
        bounded(request.method().as_str()),
        bounded(request.uri().path())
    ))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler_panicked");
    ApiError::Internal("Internal error".into()).into_response()
}
