//! The state every handler and worker shares: cheap to clone.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::db::credentials::DeviceCredential;
use crate::db::firmware_versions::CurrentImage;
use crate::db::Db;
use crate::firmware::cache::FirmwareCache;
use crate::lookup_cache::{LookupCache, DEFAULT_CAPACITY};
use crate::storage::Storage;

/// One pointer: every handler's extractors and middleware clone the state, and a clone of the
/// fields themselves (about twenty reference counts, a cancellation token's lock) showed as 3 % of
/// the service's CPU on cached OTA ranges.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

/// What [`AppState`] points to.
pub struct Shared {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub metrics: Option<PrometheusHandle>,
    pub oidc: Option<crate::oidc::OidcVerifier>,
    pub events: crate::events::EventHub,
    /// Fires when the process stops; long-lived responses (the event stream) end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub caches: Arc<Caches>,
    /// Permits for live event streams open at once (half of `HTTP_MAX_CONNECTIONS`): streams never
    /// end on their own, so without a bound readers could hold every connection.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    /// The dumps this process stored lately, for their parse (`coredumps::handoff`).
    pub dump_handoff: Arc<crate::coredumps::handoff::Handoff>,
    /// Permits for core-dump uploads in progress (`MAX_CONCURRENT_COREDUMP_UPLOADS`).
    pub coredump_uploads: Arc<tokio::sync::Semaphore>,
    /// Mints and verifies the device tokens iotsupport issues.
    pub tokens: Arc<crate::credentials::tokens::Tokens>,
    /// Slows down repeated token-endpoint failures per client id and client address.
    pub token_failures: Arc<crate::credentials::throttle::FailureThrottle>,
    /// Slows down wrong admin tokens (sign-in form, `Authorization: Bearer`) per client address.
    pub admin_failures: Arc<crate::credentials::throttle::FailureThrottle>,
    /// Queues device notifications when MQTT is configured.
    pub notifier: crate::notify::Notifier,
    /// What this process's notification publisher did.
    pub notify_stats: Arc<crate::notify::publisher::PublisherStats>,
    /// Tells this process's event streams of new device log lines.
    pub log_hub: crate::device_logs::LogHub,
    /// This process's MQTT client, when `MQTT_URL` is set.
    pub mqtt: Option<crate::mqtt::MqttClient>,
    /// Core-dump uploads in progress per device (`MAX_COREDUMP_UPLOADS_PER_DEVICE`).
    pub coredump_uploads_by_device: Arc<crate::admission::KeyedLimiter>,
    /// Uploads that run to their end after their request is gone (stored or cleaned up, never
    /// half-way): shutdown waits for them before closing the database.
    pub detached: tokio_util::task::TaskTracker,
    /// Firmware downloads in progress per device (`MAX_DOWNLOADS_PER_DEVICE`), held until the
    /// response body is sent or dropped.
    pub downloads_by_device: Arc<crate::admission::KeyedLimiter>,
    /// Validates device configs against their model's schema off the async workers, within
    /// `CONFIG_VALIDATION_TIMEOUT_SECONDS`.
    pub config_validator: Arc<crate::registry::validation::ConfigValidator>,
    /// What devices said they run and when they were heard from, until it is written.
    pub presence: Arc<crate::presence::Presence>,
    /// The `/health/readyz` check in progress (database, object store), shared by whoever asks
    /// while it runs.
    pub readiness: Arc<crate::admission::SingleFlight<(String, String)>>,
    /// The `/metrics` measurement of the database gauges in progress, shared by the scrapes
    /// that come while it runs.
    pub gauges: Arc<crate::admission::SingleFlight<bool>>,
}

/// The in-process caches of the device hot path (OTA downloads, version polls). Nothing in them
/// is needed by another process: each process fills its own, and a change made anywhere reaches
/// every process within `DEVICE_LOOKUP_CACHE_SECONDS` (at once on the process that made it).
pub struct Caches {
    /// Device key → credential, for `Authorization: Bearer key.secret` (see `crate::http::auth`).
    pub device_credentials: LookupCache<String, DeviceCredential>,
    /// Model id → its current firmware image (version, size, SHA-256).
    pub current_images: LookupCache<i64, CurrentImage>,
    /// Firmware images by SHA-256.
    pub firmware: Arc<FirmwareCache>,
}

impl AppState {
    /// What firmware operations tell beyond their transaction.
    pub fn effects(&self) -> crate::firmware::store::Effects<'_> {
        crate::firmware::store::Effects {
            caches: self.caches.as_ref(),
            notifier: self.notifier,
        }
    }
}

impl crate::lookup_cache::Invalidation for Caches {
    fn device_changed(&self, key: &str) {
        Caches::device_changed(self, key)
    }
    fn model_firmware_changed(&self, model_id: i64) {
        Caches::model_firmware_changed(self, model_id)
    }
}

impl Caches {
    pub fn new(config: &Config) -> Self {
        let ttl = config.device_lookup_cache_ttl;
        Caches {
            device_credentials: LookupCache::new("device_credential", ttl, DEFAULT_CAPACITY),
            current_images: LookupCache::new("current_firmware", ttl, DEFAULT_CAPACITY),
            firmware: FirmwareCache::new(config.firmware_cache_bytes),
        }
    }

    /// Call after a device's secret was replaced or the device deleted (after the commit).
    pub fn device_changed(&self, key: &str) {
        self.device_credentials.invalidate(&key.to_string());
    }

    /// Call after anything that may change which image a model serves: an upload (with its
    /// retention), a rollback, a version or model deletion (after the commit). Cached images need
    /// no invalidation: they are keyed by content hash.
    pub fn model_firmware_changed(&self, model_id: i64) {
        self.current_images.invalidate(&model_id);
    }
}
