//! Building and running the service: the seam that `serve`, the integration tests and the
//! benchmarks all use.
//!
//! [`Application::build`] connects to the database and the object store (creating the bucket if
//! missing), binds the listener (port 0 in tests) and returns; [`Application::run_until_stopped`]
//! serves HTTP and runs the background workers until the shutdown token fires, then lets in-flight
//! requests and jobs finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StorageConfig};
use crate::db::{migrate, Db};
use crate::jobs::worker::{JobHandler, JobRunner, Yield};
use crate::outbox;
use crate::state::AppState;
use crate::storage::backend::ObjectStoreBackend;
use crate::storage::{bucket, Storage};

/// Background jobs that may start while a quarter or more of the process's core-dump upload slots
/// (`MAX_CONCURRENT_COREDUMP_UPLOADS`) are in use. On two cores, 32 parses beside a saturating
/// stream of uploads took their CPU: 0.39x of direct S3 PUTs against 0.60x with 4 parses
/// (bench/ingest.sh).
const JOBS_WHILE_UPLOADS_BUSY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the database: {0}")]
    Database(#[from] crate::db::DbError),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] crate::db::migrate::MigrationError),
    #[error("object store: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::mqtt::MqttStartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the configured object store, creating the S3 bucket if it is missing.
pub async fn open_storage(config: &Config) -> Result<Storage, crate::storage::StorageError> {
    Ok(match &config.storage {
        StorageConfig::Local { dir } => Arc::new(ObjectStoreBackend::local(dir)?),
        StorageConfig::S3(s3) => {
            if bucket::ensure_bucket(s3).await? {
                tracing::info!(bucket = %s3.bucket, "bucket_created");
            }
            Arc::new(ObjectStoreBackend::s3(s3)?)
        }
    })
}

/// Opens the configured object store as it is: a missing bucket stays missing (and fails
/// [`crate::storage::ObjectStorage::check`]).
pub fn open_storage_without_creating(
    config: &Config,
) -> Result<Storage, crate::storage::StorageError> {
    Ok(match &config.storage {
        // Nothing is stored there yet, and opening it would create it.
        StorageConfig::Local { dir } if !dir.exists() => Arc::new(ObjectStoreBackend::empty()),
        StorageConfig::Local { dir } => Arc::new(ObjectStoreBackend::local(dir)?),
        StorageConfig::S3(s3) => Arc::new(ObjectStoreBackend::s3(s3)?),
    })
}

/// Options beyond the configuration, for tests and embedding.
#[derive(Default)]
pub struct BuildOptions {
    /// Use this store instead of opening the configured one (e.g. a [`FaultyStorage`] wrapper).
    ///
    /// [`FaultyStorage`]: crate::storage::faulty::FaultyStorage
    pub storage: Option<Storage>,
    /// Extra routes merged into the API.
    pub extra_routes: Option<Router<AppState>>,
    /// Extra job handlers run by this process's workers (a kind given here replaces the default
    /// handler of that kind).
    pub job_handlers: Vec<Arc<dyn JobHandler>>,
    /// Do not run the default job handlers (core dump parsing), e.g. to leave jobs queued.
    pub without_default_job_handlers: bool,
    /// Extra background workers, run and watched like the built-in ones (`crate::supervisor`).
    pub extra_workers: Vec<(&'static str, crate::supervisor::Worker)>,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: CancellationToken,
    job_handlers: Vec<Arc<dyn JobHandler>>,
    extra_workers: Vec<(&'static str, crate::supervisor::Worker)>,
    /// The event and log hubs' watchers, run as workers once the application runs.
    watchers: Vec<(&'static str, futures::future::BoxFuture<'static, ()>)>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        Self::build_with(config, BuildOptions::default()).await
    }

    pub async fn build_with(
        mut config: Config,
        options: BuildOptions,
    ) -> Result<Self, StartupError> {
        // The connection cap as the open-file limit allows, once for everything sized by it (the
        // server's registry, the live streams' half).
        config.http = crate::http::server::fitted_to_fd_limit(config.http);
        let db = Db::connect(&config).await?;
        if config.migrate_on_start {
            let outcome = migrate::run(&db).await?;
            if outcome.adopted.is_some() {
                let queued = crate::coredumps::job::queued_parses(&db).await?;
                tracing::info!(queued, "adopted_coredumps_queued_for_parsing");
            }
        }
        // Timestamps follow the database's clock (`crate::db::clock`); measured again every
        // minute by a worker.
        crate::db::clock::sync_or_warn(&db).await;
        let storage = match options.storage {
            Some(storage) => storage,
            None => open_storage(&config).await?,
        };
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let oidc = config.oidc.clone().map(crate::oidc::OidcVerifier::new);
        if oidc.is_some()
            && config.sessions.oidc_redirect_url.is_none()
            && config.allowed_hosts.is_empty()
            && !config.host.is_loopback()
        {
            tracing::warn!(
                "oidc_callback_from_any_host: the sign-in callback is built from each request's \
                 Host; set OIDC_REDIRECT_URL (or list your names in ALLOWED_HOSTS) so that it \
                 can only name yours"
            );
        }
        let tokens =
            crate::credentials::tokens::Tokens::new(db.clone(), config.credentials.clone());
        if let Err(e) = tokens.issuer().await {
            // Pending migrations, say: tried again when a token is first needed.
            tracing::warn!(error = %e, "device_token_key_not_loaded");
        }
        let shutdown = CancellationToken::new();
        let mqtt = match &config.mqtt {
            Some(settings) => Some(crate::mqtt::MqttClient::start(settings, shutdown.clone())?),
            None => None,
        };
        let (events, event_watcher) =
            crate::events::EventHub::new(db.clone(), config.worker_poll_interval, shutdown.clone());
        let (log_hub, log_watcher) = crate::device_logs::LogHub::new(
            db.clone(),
            config.worker_poll_interval,
            shutdown.clone(),
        );
        let state = AppState::from(crate::state::Shared {
            caches: Arc::new(crate::state::Caches::new(&config)),
            stream_slots: Arc::new(tokio::sync::Semaphore::new(
                (config.http.max_connections / 2).max(1),
            )),
            coredump_uploads: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_coredump_uploads,
            )),
            tokens,
            token_failures: Arc::new(
                crate::credentials::throttle::FailureThrottle::without_overflow(),
            ),
            admin_failures: Arc::new(crate::credentials::throttle::FailureThrottle::grouped_by(
                crate::http::client_addr::throttle_group,
            )),
            notifier: crate::notify::Notifier::new(config.mqtt.is_some())
                .with_firmware_delay(config.device_lookup_cache_ttl),
            notify_stats: Arc::default(),
            log_hub,
            mqtt,
            coredump_uploads_by_device: crate::admission::KeyedLimiter::new(
                config.max_coredump_uploads_per_device,
            ),
            detached: tokio_util::task::TaskTracker::new(),
            downloads_by_device: crate::admission::KeyedLimiter::new(
                config.max_downloads_per_device,
            ),
            config_validator: Arc::new(crate::registry::validation::ConfigValidator::new(
                config.config_validation_timeout,
            )),
            presence: Arc::default(),
            dump_handoff: Arc::default(),
            // A second's reuse: a client polling in a loop costs a check (a write probe, a
            // LIST) a second, not one per request.
            readiness: Arc::new(crate::admission::SingleFlight::reusing(
                std::time::Duration::from_secs(1),
            )),
            gauges: Arc::new(crate::admission::SingleFlight::reusing(
                std::time::Duration::from_secs(1),
            )),
            oidc,
            events,
            shutdown: shutdown.clone(),
            config: Arc::new(config),
            db,
            storage,
            metrics: crate::telemetry::metrics_handle(),
        });
        let router = crate::http::router(state.clone(), options.extra_routes);
        let mut job_handlers = if options.without_default_job_handlers {
            Vec::new()
        } else {
            let mut handlers = crate::coredumps::default_job_handlers(
                &state.db,
                &state.storage,
                &state.config,
                &state.dump_handoff,
            );
            handlers.push(Arc::new(crate::reconcile::RekeyFirmwareObjects {
                db: state.db.clone(),
                storage: state.storage.clone(),
            }));
            handlers.push(Arc::new(crate::coredumps::backfill::GroupCoredumps::new(
                state.db.clone(),
            )));
            handlers
        };
        job_handlers.extend(options.job_handlers);
        Ok(Application {
            listener,
            router,
            state,
            shutdown,
            job_handlers,
            extra_workers: options.extra_workers,
            watchers: vec![("event_hub", event_watcher), ("log_hub", log_watcher)],
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token stops the server and every worker gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            listener,
            router,
            state,
            shutdown,
            job_handlers,
            extra_workers,
            watchers,
        } = self;
        let config = state.config.clone();
        let mut workers = crate::supervisor::Workers::new(shutdown.clone());
        for (name, watcher) in watchers {
            workers.spawn(name, watcher);
        }
        // The job runner's claims, to give back any job still running when shutdown gives up.
        let mut job_worker = None;
        workers.spawn(
            "database_clock",
            crate::db::clock::run_worker(state.db.clone(), shutdown.clone()),
        );
        workers.spawn(
            "outbox",
            outbox::run_worker(
                state.db.clone(),
                state.storage.clone(),
                config.worker_poll_interval,
                shutdown.clone(),
            ),
        );
        if !job_handlers.is_empty() {
            // Uploads first: while this process has many core-dump uploads in progress (it is
            // saturated with them), parses start only up to a few at a time; the backlog is
            // parsed at full concurrency once the burst is over (see README, "Parsing core dumps").
            let uploads = state.coredump_uploads.clone();
            let upload_slots = config.max_concurrent_coredump_uploads;
            let busy_at = (upload_slots / 4).max(1);
            let runner = JobRunner::new(state.db.clone(), job_handlers, config.job_lease)
                .yielding_to(Yield {
                    busy: Arc::new(move || {
                        upload_slots.saturating_sub(uploads.available_permits()) >= busy_at
                    }),
                    limit: JOBS_WHILE_UPLOADS_BUSY,
                });
            job_worker = Some(runner.worker_id().to_string());
            workers.spawn(
                "jobs",
                runner.run(
                    config.job_concurrency,
                    config.worker_poll_interval,
                    shutdown.clone(),
                ),
            );
        }

        // Devices that got lines since the count retention last looked (the intake's, if any).
        let touched = crate::device_logs::intake::Touched::default();
        if let (Some(client), Some(mqtt)) = (&state.mqtt, &config.mqtt) {
            workers.spawn(
                "mqtt_notifications",
                crate::notify::publisher::run_worker(
                    state.db.clone(),
                    client.clone(),
                    mqtt.notifications_per_second,
                    config.worker_poll_interval,
                    state.notify_stats.clone(),
                    shutdown.clone(),
                ),
            );
            workers.spawn(
                "device_log_intake",
                crate::device_logs::intake::run(
                    state.db.clone(),
                    client.clone(),
                    mqtt.log_group.clone(),
                    state.log_hub.clone(),
                    touched.clone(),
                    shutdown.clone(),
                ),
            );
        }
        // With MQTT off too: lines stored while it was on still age out, and live-log
        // subscriptions (which work without it) are still forgotten.
        workers.spawn(
            "device_log_retention",
            crate::device_logs::retention::run(
                state.db.clone(),
                touched,
                config.device_logs,
                Duration::from_secs(60),
                shutdown.clone(),
            ),
        );
        workers.spawn(
            "presence",
            crate::presence::run_worker(
                state.presence.clone(),
                state.db.clone(),
                crate::presence::flush_interval(config.worker_poll_interval),
                shutdown.clone(),
            ),
        );

        workers.spawn(
            "rotation",
            crate::credentials::rotation::run_worker(
                state.db.clone(),
                config.rotation.clone(),
                rotation_poll(config.worker_poll_interval),
                shutdown.clone(),
            ),
        );

        if let Some(interval) = config.reconcile_interval {
            workers.spawn(
                "reconcile",
                crate::reconcile::run_periodic(
                    state.db.clone(),
                    state.storage.clone(),
                    interval,
                    config.reconcile_grace,
                    shutdown.clone(),
                ),
            );
        }

        let addr = listener.local_addr()?;
        tracing::info!(%addr, database = ?state.db.kind(), "listening");
        let trusted = config.trusted_proxies.clone();
        for (name, worker) in extra_workers {
            workers.spawn(name, worker(shutdown.clone()));
        }
        let serving =
            crate::http::server::serve(listener, router, config.http, trusted, shutdown.clone());
        tokio::pin!(serving);
        // A worker that ends early stops the process (see `crate::supervisor`): it fires
        // shutdown, and the server drains as at any other stop.
        let mut ended_early = None;
        loop {
            tokio::select! {
                () = &mut serving => break,
                ended = workers.ended_early(), if ended_early.is_none() => ended_early = Some(ended),
            }
        }
        // The server has stopped (or failed): make sure the workers stop too, then wait for them.
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(30), workers.join_all())
            .await
            .is_err()
        {
            // A long job (a backfill, a rekey) is cut off here; its row is given back as it was
            // before this attempt, for the next process at once, rather than left `running` until
            // its lease runs out with an attempt spent.
            workers.abort_all().await;
            let released = match &job_worker {
                Some(worker) => crate::jobs::release_claims(&state.db, worker).await,
                None => Ok(0),
            };
            tracing::warn!(released = ?released, "workers did not stop within 30 s");
        }
        // Uploads whose clients left before the server stopped still finish (or clean up).
        state.detached.close();
        if tokio::time::timeout(Duration::from_secs(60), state.detached.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = state.detached.len(),
                "uploads still storing after 60 s"
            );
        }
        // What the requests drained after shutdown began saw (the worker flushed when it began).
        state.presence.flush(&state.db).await;
        state.db.close().await;
        tracing::info!("stopped");
        match ended_early {
            Some(ended) => Err(std::io::Error::other(ended.to_string())),
            None => Ok(()),
        }
    }
}

/// How often `serve` looks for rotation timeouts, schedule ticks and stalled chains: the worker
/// poll interval, at most 5 s (a timeout is noticed that much after it passed).
fn rotation_poll(worker_poll: Duration) -> Duration {
    worker_poll.min(Duration::from_secs(5))
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown_requested");
        token.cancel();
    });
}
