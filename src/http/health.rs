//! Liveness and readiness probes.
//!
//! `/health/healthz` answers 200 while the process serves HTTP. `/health/readyz` answers 200 only
//! when the database answers, has no pending migrations and can take a writer (on SQLite: its
//! write lock is free within 1.5 s, see `Db::write_probe`), and the object store answers;
//! otherwise 503 with the error envelope whose `details` say which check failed. Each check has
//! its own timeout, so a hanging dependency makes the probe fail rather than hang. Nothing is
//! written.
//!
//! Anyone may ask, as often as they like: one check runs at a time, and whoever asks while it runs
//! gets its answer (`AppState::readiness`). The `details` name what failed in words of our own
//! ("unavailable", "timed out", pending migrations, a stuck write lock); the dependency's own
//! error, which may carry an endpoint, a bucket, a role or a signed request, goes to the log.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::Json;
use crate::db::migrate;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/healthz", get(healthz))
        .route("/health/readyz", get(readyz))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `alive` or `ready`.
    pub status: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/health/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthStatus)))]
pub async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "alive".into(),
    })
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The service can serve requests: database reachable, migrated and not stuck for writers, object
/// store reachable.
#[utoipa::path(get, path = "/health/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "A dependency is not ready; `details` says which",
            body = super::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthStatus>, ApiError> {
    let checked = state.clone();
    // A check older than its own timeout is not shared: see `SingleFlight`.
    let (database, storage) = state
        .readiness
        .run(CHECK_TIMEOUT, move || Box::pin(check(checked)))
        .await
        .unwrap_or_else(|| ("the check failed".into(), "the check failed".into()));
    if database == "ok" && storage == "ok" {
        return Ok(Json(HealthStatus {
            status: "ready".into(),
        }));
    }
    Err(
        ApiError::unavailable("Service is not ready").with_details(json!({
            "database": database,
            "object_store": storage,
        })),
    )
}

/// One readiness check: what to say of the database and of the object store ("ok" when ready).
async fn check(state: AppState) -> (String, String) {
    let unavailable = |dependency: &'static str| {
        move |e: String| {
            tracing::warn!(dependency, error = %e, "readiness_check_failed");
            "unavailable".to_string()
        }
    };
    let database = async {
        state
            .db
            .ping()
            .await
            .map_err(|e| unavailable("database")(e.to_string()))?;
        match migrate::pending_count(&state.db).await {
            Ok(0) => {}
            Ok(n) => {
                return Err(format!(
                    "{n} pending migration(s); run `iotsupport migrate`"
                ))
            }
            Err(e) => return Err(unavailable("database")(e.to_string())),
        }
        state.db.write_probe().await.map_err(|e| match e {
            crate::db::WriteProbeError::Refused(reason) => reason,
            crate::db::WriteProbeError::Failed(e) => unavailable("database")(e),
        })
    };
    let storage = async {
        state
            .storage
            .check()
            .await
            .map_err(|e| unavailable("object_store")(e.to_string()))
    };
    let (database, storage) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, database),
        tokio::time::timeout(CHECK_TIMEOUT, storage)
    );
    let describe = |r: Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e,
        Err(_) => "timed out".to_string(),
    };
    let (database, storage) = (describe(database), describe(storage));
    if database != "ok" || storage != "ok" {
        tracing::warn!(database = %database, object_store = %storage, "not_ready");
    }
    (database, storage)
}
