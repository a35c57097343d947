//! The state every handler and worker shares: cheap to clone.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::db::Db;
use crate::storage::Storage;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub metrics: Option<PrometheusHandle>,
    pub oidc: Option<crate::oidc::OidcVerifier>,
    pub events: crate::events::EventHub,
    /// Fires when the process stops; long-lived responses (the event stream) end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
}
