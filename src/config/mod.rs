//! Service configuration, read once at start from the environment.
//!
//! Variable names follow the Python service (SPEC §11) so operators can keep their deployment files.
//! Every value is parsed here; an invalid value fails start-up with an error that names the variable.
//! Secrets are wrapped in [`Secret`], whose `Debug` never prints the value.

mod credentials;
mod env;
mod sessions;
#[cfg(test)]
mod tests;

pub use credentials::{CredentialSettings, RotationSettings};
use env::invalid;
pub use env::{ConfigError, Env, MAX_DURATION};
pub use sessions::{CookieSecure, SessionSettings};

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod mqtt;
pub use mqtt::{
    unique_client_id, DeviceLogSettings, MqttCredentials, MqttSettings, MqttUrl, DEFAULT_LOG_GROUP,
    DEFAULT_MQTT_CLIENT_ID,
};

/// A configuration value that must never appear in logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself. Call only where the value is used, never to format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where metadata lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite,
}

/// Where binary objects live.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// The embedded default: a local directory with the bucket's key layout.
    Local { dir: PathBuf },
    /// Any S3-compatible endpoint.
    S3(S3Config),
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint_url: String,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub bucket: String,
    pub region: String,
    /// How long one S3 request may take before it counts as the store being unavailable.
    pub request_timeout: Duration,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: Secret,
    pub database_kind: DatabaseKind,
    pub storage: StorageConfig,
    pub host: IpAddr,
    pub port: u16,
    pub admin_token: Option<Secret>,
    /// Admin (and device) JWT validation against an OIDC issuer, when `OIDC_ENABLED=true`.
    pub oidc: Option<crate::oidc::OidcSettings>,
    /// Who `GET /api/auth/self` says an `ADMIN_TOKEN` caller (or anyone, in open mode) is.
    pub local_admin: LocalAdmin,
    /// Where `GET /api/auth/login` sends the browser (`AUTH_LOGIN_URL`), if anywhere.
    pub auth_login_url: Option<String>,
    pub allow_unauthenticated: bool,
    /// An OIDC setting given while `OIDC_ENABLED` is not true (`check_safe_to_serve` refuses it
    /// when nothing else protects the admin API).
    pub oidc_setting_unused: Option<&'static str>,
    pub iot_device_key_auth: bool,
    pub max_coredumps: u32,
    pub max_firmwares: u32,
    pub max_firmware_bytes: u64,
    pub max_coredump_bytes: u64,
    pub parse_sidecar_url: Option<String>,
    pub parse_sidecar_xfer_dir: Option<PathBuf>,
    pub assets_dir: Option<PathBuf>,
    pub coredumps_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Whether `serve` applies pending migrations before it starts (default: only on SQLite).
    pub migrate_on_start: bool,
    /// A claimed job whose worker has not sent a heartbeat for this long is taken over by another worker.
    pub job_lease: Duration,
    /// How often idle workers look for new jobs and due object deletions.
    pub worker_poll_interval: Duration,
    /// Background jobs run at once per process (`JOB_CONCURRENCY`, default
    /// [`DEFAULT_JOB_CONCURRENCY`] on PostgreSQL, [`DEFAULT_SQLITE_JOB_CONCURRENCY`] on SQLite).
    pub job_concurrency: usize,
    /// When set, `serve` runs a reconcile scan (report and metrics only, no repair) this often.
    pub reconcile_interval: Option<Duration>,
    /// Objects younger than this are never orphans (uploads in flight).
    pub reconcile_grace: Duration,
    /// How long a device credential check and a model's current firmware may be reused on the
    /// device API (`DEVICE_LOOKUP_CACHE_SECONDS`, default 2, at most 30; 0 turns it off). See
    /// `crate::lookup_cache` for what this means for changes made through other processes.
    pub device_lookup_cache_ttl: Duration,
    /// Byte budget of the in-memory firmware image cache (`FIRMWARE_CACHE_BYTES`, default 32 MiB;
    /// 0 turns it off). See `crate::firmware::cache`.
    pub firmware_cache_bytes: u64,
    /// Byte budget of the built-in parser's cache of loaded firmware ELFs (`PARSE_CACHE_BYTES`,
    /// default 32 MiB; 0 turns it off). See `crate::coredumps::parse_cache`.
    pub parse_cache_bytes: u64,
    /// How many core-dump uploads may be in progress at once in this process
    /// (`MAX_CONCURRENT_COREDUMP_UPLOADS`, default 64); more are refused with 503 before their body
    /// is read, so buffered dumps never take more than this × `MAX_COREDUMP_BYTES` of memory.
    pub max_concurrent_coredump_uploads: usize,
    /// Core-dump uploads one device may have in progress at once in this process
    /// (`MAX_COREDUMP_UPLOADS_PER_DEVICE`, default 2), so one device cannot take every slot.
    pub max_coredump_uploads_per_device: usize,
    /// Firmware downloads one device may have in progress at once per process
    /// (`MAX_DOWNLOADS_PER_DEVICE`, default 4): a device reads its image over one connection
    /// (ESP-IDF's OTA client), so more are a loop or a leaked credential holding connections
    /// with slow reads.
    pub max_downloads_per_device: usize,
    /// The whole body of a core-dump upload must arrive within this (`COREDUMP_UPLOAD_TIMEOUT_SECONDS`).
    pub coredump_upload_timeout: Duration,
    /// The whole body of a firmware upload must arrive within this (`FIRMWARE_UPLOAD_TIMEOUT_SECONDS`).
    pub firmware_upload_timeout: Duration,
    /// Whether a firmware upload stores its image while the bundle is still arriving, where it
    /// can (`FIRMWARE_STREAM_IMAGE_PUT`, default on; see `crate::firmware::early`).
    pub firmware_stream_image_put: bool,
    /// Validating a device config against its model's schema may take this long
    /// (`CONFIG_VALIDATION_TIMEOUT_SECONDS`, default 2); longer is a 400. See
    /// `crate::registry::validation`.
    pub config_validation_timeout: Duration,
    /// Connection deadlines and limits of the HTTP server.
    pub http: HttpLimits,
    /// Proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`, default loopback);
    /// see `crate::http::client_addr`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Host names the open admin API answers besides `localhost` and IP addresses
    /// (`ALLOWED_HOSTS`, comma-separated, lowercased, without ports); see
    /// `crate::http::auth`. Empty: none.
    pub allowed_hosts: Vec<String>,
    /// Device tokens and provisioning packages.
    pub credentials: CredentialSettings,
    /// Admin browser sessions.
    pub sessions: SessionSettings,
    /// Fleet credential rotation.
    pub rotation: RotationSettings,
    /// The MQTT broker this process connects to; `None` without `MQTT_URL` (nothing is published,
    /// no device logs are received).
    pub mqtt: Option<MqttSettings>,
    /// How long and how many device log lines are kept (with or without MQTT).
    pub device_logs: DeviceLogSettings,
}

/// What the HTTP server enforces on every connection (see `crate::http::server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The request head must arrive within this after the connection opened or its previous
    /// response was sent (`HTTP_HEADER_READ_TIMEOUT_SECONDS`, default 10).
    pub header_read_timeout: Duration,
    /// A request whose client sends no body bytes, or reads no response bytes, for this long is
    /// ended (`HTTP_IDLE_TIMEOUT_SECONDS`, default 30).
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this (`HTTP_BODY_TIMEOUT_SECONDS`, default 30),
    /// except on the upload routes, which have their own deadlines: a client trickling a small
    /// body cannot hold its connection for ever.
    pub body_timeout: Duration,
    /// Open connections at most (`HTTP_MAX_CONNECTIONS`, default 1024; lowered to fit the open
    /// file limit).
    pub max_connections: usize,
    /// How long requests in progress may finish after shutdown was requested
    /// (`SHUTDOWN_GRACE_SECONDS`, default 10).
    pub shutdown_grace: Duration,
}

/// The identity reported for callers that are not OIDC users (`LOCAL_ADMIN_SUBJECT`, default
/// `admin`; `LOCAL_ADMIN_NAME`; `LOCAL_ADMIN_EMAIL`).
#[derive(Clone, Debug)]
pub struct LocalAdmin {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A longer reuse of device lookups would make a replaced secret or a rollback take effect too
/// late on the other processes of a deployment.
pub const MAX_DEVICE_LOOKUP_CACHE_SECONDS: f64 = 30.0;

/// A proxy on the same host (the usual nginx or Caddy in front): only it can connect from
/// loopback, and whatever else runs there could reach the service without a proxy anyway.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8, ::1";

/// `ALLOWED_HOSTS`: host names, comma-separated (`iot.example.com, iot.lan`), without ports.
fn parse_allowed_hosts(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
            let valid = name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                Ok(name)
            } else {
                Err(format!(
                    "{h:?} is not a host name (names only, no ports or schemes)"
                ))
            }
        })
        .collect()
}

/// `TRUSTED_PROXIES`: addresses or networks, comma-separated (`10.0.0.5, 172.16.0.0/12`); `none`
/// trusts none (an empty value counts as unset, as everywhere).
pub fn parse_trusted_proxies(value: &str) -> Result<Vec<ipnet::IpNet>, String> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("{item:?} is neither an address nor a network (a.b.c.d/n)"))
        })
        .collect()
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/iotsupport.db";

/// The default byte budget of the firmware image cache (`FIRMWARE_CACHE_BYTES`): some twenty
/// typical ESP32 images (1–2 MiB), while the whole process stays well below 100 MB with hundreds
/// of downloads running. Here rather than in `crate::firmware::cache` so that config, which every
/// module reads, depends on none of them.
pub const DEFAULT_FIRMWARE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The default of `JOB_CONCURRENCY`. A parse job spends most of its time waiting: the dump's GET
/// (10-40 ms on S3 and s3s-fs), the database round trips of recording the result and its turn on
/// its crash group; with its firmware in the parse cache it needs about a millisecond of CPU in
/// this process. Two at a time left the cores idle (issue 18: 18 dumps/s); with 32 the waits
/// overlap, and a backlog of one crash drains at about 350 dumps/s on 2 cores against about
/// 295 with 16 (bench/parse_backlog.sh). Each slot may hold a PostgreSQL connection (the pool has
/// 10 + this many).
pub const DEFAULT_JOB_CONCURRENCY: usize = 32;

/// The most `JOB_CONCURRENCY` on PostgreSQL: a parse job may hold a connection while it waits for
/// its crash group, and a process's pool has at most 64 (`db::MAX_POSTGRES_CONNECTIONS`), ten of
/// them kept for requests and two held by the listeners (events, device logs).
pub const MAX_POSTGRES_JOB_CONCURRENCY: usize = 52;

/// The most a connection or upload limit may be set to: far beyond what a process could serve,
/// and well within what a semaphore can hold.
pub const MAX_COUNT: usize = 1_000_000;

/// The default of `JOB_CONCURRENCY` on SQLite, whose writers are serialised and whose pool has 4
/// connections: more jobs would only queue for them, ahead of requests.
pub const DEFAULT_SQLITE_JOB_CONCURRENCY: usize = 4;

/// The default byte budget of the parse cache (`PARSE_CACHE_BYTES`): a loaded ESP-IDF firmware
/// ELF of 2.5–4 MiB is charged 7–9 MiB, so about four builds (the few builds a crash loop across
/// a fleet comes from).
pub const DEFAULT_PARSE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process())
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        let database_url = env
            .get("DATABASE_URL")
            .unwrap_or(DEFAULT_DATABASE_URL)
            .to_string();
        let database_kind = if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            DatabaseKind::Postgres
        } else if database_url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else {
            return Err(invalid(
                "DATABASE_URL",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        };
        let default_job_concurrency = match database_kind {
            DatabaseKind::Postgres => DEFAULT_JOB_CONCURRENCY,
            DatabaseKind::Sqlite => DEFAULT_SQLITE_JOB_CONCURRENCY,
        };
        let job_concurrency =
            env.count_at_most("JOB_CONCURRENCY", default_job_concurrency, MAX_COUNT)?;
        if database_kind == DatabaseKind::Postgres && job_concurrency > MAX_POSTGRES_JOB_CONCURRENCY
        {
            return Err(invalid(
                "JOB_CONCURRENCY",
                format!(
                    "must be at most {MAX_POSTGRES_JOB_CONCURRENCY} on PostgreSQL (each job may \
                     hold one of the process's at most 64 connections, 10 stay for requests and 2 for \
                     the listeners)"
                ),
            ));
        }

        let storage = match env.get("S3_ENDPOINT_URL") {
            // S3 settings without an endpoint are a mistake, not a choice of the local directory:
            // objects would quietly go to ./data/objects (and `migrate-to-s3` would record them as
            // moved).
            None => {
                if let Some(set) = ["S3_BUCKET_NAME", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]
                    .into_iter()
                    .find(|name| env.get(name).is_some())
                {
                    return Err(invalid(
                        "S3_ENDPOINT_URL",
                        format!(
                            "is required when {set} is set (e.g. https://s3.<region>.amazonaws.com); \
                             without S3 settings objects go to STORAGE_DIR"
                        ),
                    ));
                }
                StorageConfig::Local {
                    dir: PathBuf::from(env.get("STORAGE_DIR").unwrap_or("./data/objects")),
                }
            }
            Some(endpoint) => {
                let use_ssl = env.flag("S3_USE_SSL", true)?;
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(invalid(
                        "S3_ENDPOINT_URL",
                        "must be an http:// or https:// URL",
                    ));
                }
                if use_ssl && endpoint.starts_with("http://") && !is_loopback_url(endpoint) {
                    return Err(invalid(
                        "S3_USE_SSL",
                        "is true but S3_ENDPOINT_URL is plain http://; set S3_USE_SSL=false to allow it",
                    ));
                }
                let bucket = env
                    .get("S3_BUCKET_NAME")
                    .unwrap_or("iot-support-attachments")
                    .to_string();
                validate_bucket_name(&bucket)?;
                // One half of the pair (a typo, a secret mount that failed) sent every request
                // unsigned, and the store's AccessDenied named nothing.
                match (env.get("S3_ACCESS_KEY_ID"), env.get("S3_SECRET_ACCESS_KEY")) {
                    (Some(_), None) => {
                        return Err(invalid(
                            "S3_SECRET_ACCESS_KEY",
                            "is required when S3_ACCESS_KEY_ID is set",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            "S3_ACCESS_KEY_ID",
                            "is required when S3_SECRET_ACCESS_KEY is set",
                        ))
                    }
                    _ => {}
                }
                StorageConfig::S3(S3Config {
                    endpoint_url: endpoint.trim_end_matches('/').to_string(),
                    access_key_id: env.get("S3_ACCESS_KEY_ID").map(Secret::new),
                    secret_access_key: env.get("S3_SECRET_ACCESS_KEY").map(Secret::new),
                    bucket,
                    region: env.get("S3_REGION").unwrap_or("us-east-1").to_string(),
                    request_timeout: env.seconds("S3_TIMEOUT_SECONDS", 30.0)?,
                })
            }
        };

        let oidc_enabled = env.flag("OIDC_ENABLED", false)?;
        let oidc_setting_unused = if oidc_enabled {
            None
        } else {
            OIDC_SETTINGS
                .into_iter()
                .find(|name| env.get(name).is_some())
        };
        let oidc = if oidc_enabled {
            let issuer_url = env
                .get("OIDC_ISSUER_URL")
                .ok_or_else(|| invalid("OIDC_ISSUER_URL", "is required when OIDC_ENABLED=true"))?;
            if !(issuer_url.starts_with("https://") || issuer_url.starts_with("http://")) {
                return Err(invalid(
                    "OIDC_ISSUER_URL",
                    "must be an http:// or https:// URL",
                ));
            }
            // The signing keys come from there: over plain HTTP off this machine, whoever is on
            // the path can serve their own and mint admin tokens (as S3_USE_SSL for S3).
            if issuer_url.starts_with("http://")
                && !is_loopback_url(issuer_url)
                && !env.flag("OIDC_ALLOW_HTTP", false)?
            {
                return Err(invalid(
                    "OIDC_ISSUER_URL",
                    "is plain http:// on another machine: the provider's signing keys would come \
                     unauthenticated; use https://, or set OIDC_ALLOW_HTTP=true to allow it",
                ));
            }
            let audience = env
                .get("OIDC_AUDIENCE")
                .ok_or_else(|| invalid("OIDC_AUDIENCE", "is required when OIDC_ENABLED=true"))?;
            let mut settings = crate::oidc::OidcSettings::new(issuer_url, audience);
            // At most a day: the token check subtracts it from the current time in whole seconds.
            settings.clock_skew = env.seconds_or_zero(
                "OIDC_CLOCK_SKEW_SECONDS",
                settings.clock_skew.as_secs_f64(),
                86_400.0,
            )?;
            if let Some(client_id) = env.get("OIDC_CLIENT_ID").filter(|v| !v.trim().is_empty()) {
                settings.client.client_id = client_id.to_string();
            }
            settings.client.client_secret = env
                .get("OIDC_CLIENT_SECRET")
                .filter(|v| !v.is_empty())
                .map(|v| crate::oidc::login::ClientSecret(v.to_string()));
            if let Some(scopes) = env.get("OIDC_SCOPES").filter(|v| !v.trim().is_empty()) {
                if !scopes.split_whitespace().any(|s| s == "openid") {
                    return Err(invalid("OIDC_SCOPES", "must include openid"));
                }
                settings.client.scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            Some(settings)
        } else {
            None
        };

        let log_format = match env.get("LOG_FORMAT").unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "LOG_FORMAT",
                    format!("expected json or text, got {other:?}"),
                ))
            }
        };

        let admin_token = env.get("ADMIN_TOKEN").map(Secret::new);
        if let Some(token) = &admin_token {
            if token.expose().len() < 16 {
                return Err(invalid(
                    "ADMIN_TOKEN",
                    "must be at least 16 characters long",
                ));
            }
        }

        let mqtt = mqtt::mqtt_settings(env)?;
        let device_logs = mqtt::device_log_settings(env)?;
        let mut rotation = credentials::rotation(env)?;
        rotation.notify = mqtt.is_some();
        Ok(Config {
            migrate_on_start: env
                .flag("MIGRATE_ON_START", database_kind == DatabaseKind::Sqlite)?,
            database_url: Secret::new(database_url),
            database_kind,
            storage,
            host: env.parse("HOST", IpAddr::from([127, 0, 0, 1]))?,
            port: env.parse("PORT", 3101)?,
            admin_token,
            oidc,
            local_admin: LocalAdmin {
                subject: env
                    .get("LOCAL_ADMIN_SUBJECT")
                    .unwrap_or("admin")
                    .to_string(),
                // A person's name for the UIs' top bar (the Python UI shows "Unknown User"
                // for none); set and empty means none.
                name: match env.get("LOCAL_ADMIN_NAME") {
                    Some(name) => Some(name.to_string()),
                    None if env.is_set("LOCAL_ADMIN_NAME") => None,
                    None => Some("Administrator".to_string()),
                },
                email: env.get("LOCAL_ADMIN_EMAIL").map(str::to_string),
            },
            auth_login_url: env.get("AUTH_LOGIN_URL").map(str::to_string),
            allow_unauthenticated: env.flag("ALLOW_UNAUTHENTICATED", false)?,
            oidc_setting_unused,
            iot_device_key_auth: env.flag("IOT_DEVICE_KEY_AUTH", false)?,
            max_coredumps: env.positive("MAX_COREDUMPS", 20)?,
            max_firmwares: env.positive("MAX_FIRMWARES", 5)?,
            max_firmware_bytes: env.positive("MAX_FIRMWARE_BYTES", 64 * 1024 * 1024)?,
            max_coredump_bytes: env.positive("MAX_COREDUMP_BYTES", 1024 * 1024)?,
            parse_sidecar_url: parse_sidecar_url(env)?,
            parse_sidecar_xfer_dir: env.get("PARSE_SIDECAR_XFER_DIR").map(PathBuf::from),
            assets_dir: env.get("ASSETS_DIR").map(PathBuf::from),
            coredumps_dir: env.get("COREDUMPS_DIR").map(PathBuf::from),
            log_format,
            job_lease: {
                let lease = env.seconds("JOB_LEASE_SECONDS", 60.0)?;
                // Heartbeats come every third of it, in whole timer ticks.
                if lease < Duration::from_secs(1) {
                    return Err(invalid("JOB_LEASE_SECONDS", "must be at least 1"));
                }
                lease
            },
            worker_poll_interval: env.seconds("WORKER_POLL_SECONDS", 1.0)?,
            job_concurrency,
            reconcile_interval: match env.get("RECONCILE_INTERVAL_SECONDS") {
                None => None,
                Some(_) => Some(env.seconds("RECONCILE_INTERVAL_SECONDS", 0.0)?),
            },
            reconcile_grace: env.seconds("RECONCILE_GRACE_SECONDS", 3600.0)?,
            device_lookup_cache_ttl: env.seconds_or_zero(
                "DEVICE_LOOKUP_CACHE_SECONDS",
                2.0,
                MAX_DEVICE_LOOKUP_CACHE_SECONDS,
            )?,
            firmware_cache_bytes: env
                .parse("FIRMWARE_CACHE_BYTES", DEFAULT_FIRMWARE_CACHE_BYTES)?,
            parse_cache_bytes: env.parse("PARSE_CACHE_BYTES", DEFAULT_PARSE_CACHE_BYTES)?,
            max_concurrent_coredump_uploads: env.count_at_most(
                "MAX_CONCURRENT_COREDUMP_UPLOADS",
                64,
                MAX_COUNT,
            )?,
            max_coredump_uploads_per_device: env.positive("MAX_COREDUMP_UPLOADS_PER_DEVICE", 2)?,
            max_downloads_per_device: env.positive("MAX_DOWNLOADS_PER_DEVICE", 4)?,
            coredump_upload_timeout: env.seconds("COREDUMP_UPLOAD_TIMEOUT_SECONDS", 30.0)?,
            firmware_upload_timeout: env.seconds("FIRMWARE_UPLOAD_TIMEOUT_SECONDS", 600.0)?,
            firmware_stream_image_put: env.flag("FIRMWARE_STREAM_IMAGE_PUT", true)?,
            config_validation_timeout: env.seconds("CONFIG_VALIDATION_TIMEOUT_SECONDS", 2.0)?,
            credentials: credentials::credentials(env)?,
            sessions: sessions::sessions(env)?,
            rotation,
            http: HttpLimits {
                header_read_timeout: env.seconds("HTTP_HEADER_READ_TIMEOUT_SECONDS", 10.0)?,
                idle_timeout: env.seconds("HTTP_IDLE_TIMEOUT_SECONDS", 30.0)?,
                body_timeout: env.seconds("HTTP_BODY_TIMEOUT_SECONDS", 30.0)?,
                max_connections: env.count_at_most("HTTP_MAX_CONNECTIONS", 1024, MAX_COUNT)?,
                shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECONDS", 10.0)?,
            },
            trusted_proxies: parse_trusted_proxies(
                env.get("TRUSTED_PROXIES")
                    .unwrap_or(DEFAULT_TRUSTED_PROXIES),
            )
            .map_err(|reason| invalid("TRUSTED_PROXIES", reason))?,
            allowed_hosts: parse_allowed_hosts(env.get("ALLOWED_HOSTS").unwrap_or(""))
                .map_err(|reason| invalid("ALLOWED_HOSTS", reason))?,
            mqtt,
            device_logs,
        })
    }

    /// Whether admin routes require any credential at all.
    pub fn admin_auth_enabled(&self) -> bool {
        self.admin_token.is_some() || self.oidc.is_some()
    }

    /// `serve` refuses to expose an open admin API beyond loopback unless explicitly allowed, and
    /// on loopback too when OIDC settings show that protection was meant (`OIDC_ENABLED`
    /// forgotten: behind a proxy on this machine the open API would be public, and the operator
    /// would believe OIDC guards it).
    pub fn check_safe_to_serve(&self) -> Result<(), ConfigError> {
        if let (false, false, Some(setting)) = (
            self.admin_auth_enabled(),
            self.allow_unauthenticated,
            self.oidc_setting_unused,
        ) {
            return Err(invalid(
                "OIDC_ENABLED",
                format!(
                    "is not true, but {setting} is set and no ADMIN_TOKEN either: the admin API \
                     would be open to anyone who reaches it; set OIDC_ENABLED=true (or \
                     ALLOW_UNAUTHENTICATED=true to serve an open admin API)"
                ),
            ));
        }
        if !self.host.is_loopback() && !self.admin_auth_enabled() && !self.allow_unauthenticated {
            return Err(invalid(
                "HOST",
                format!(
                    "{} is not a loopback address and no admin authentication is configured; \
                     set ADMIN_TOKEN (or ALLOW_UNAUTHENTICATED=true to serve an open admin API)",
                    self.host
                ),
            ));
        }
        Ok(())
    }
}

/// The settings that only mean something with `OIDC_ENABLED=true`.
const OIDC_SETTINGS: [&str; 4] = [
    "OIDC_ISSUER_URL",
    "OIDC_AUDIENCE",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
];

/// A `ROTATION_CRON` pattern: five fields (minute to weekday), evaluated in UTC, with croniter's
/// extensions the original used (`6#1`: the first Saturday; `L`: last).
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    use std::str::FromStr;
    croner::Cron::from_str(pattern).map_err(|e| format!("{pattern:?} is not a cron pattern: {e}"))
}

fn is_loopback_url(url: &str) -> bool {
    // Parsed as a URL: `http://127.0.0.1:1@evil.example` names `evil.example`.
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `PARSE_SIDECAR_URL`: an http(s) URL, and only with `PARSE_SIDECAR_XFER_DIR` (the two name one
/// parser; with one of them alone the built-in parser ran without a word, and a URL that is none
/// failed every dump's parse for good).
fn parse_sidecar_url(env: &Env) -> Result<Option<String>, ConfigError> {
    let url = env.get("PARSE_SIDECAR_URL");
    let dir = env.get("PARSE_SIDECAR_XFER_DIR");
    match (url, dir) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            "PARSE_SIDECAR_XFER_DIR",
            "is required with PARSE_SIDECAR_URL (the directory the sidecar reads the files from)",
        )),
        (None, Some(_)) => Err(invalid(
            "PARSE_SIDECAR_URL",
            "is required with PARSE_SIDECAR_XFER_DIR (where the parser sidecar listens)",
        )),
        (Some(url), Some(_)) => {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| invalid("PARSE_SIDECAR_URL", format!("is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "PARSE_SIDECAR_URL",
                    "must be an http:// or https:// URL",
                ));
            }
            Ok(Some(url.trim_end_matches('/').to_string()))
        }
    }
}

fn validate_bucket_name(bucket: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "S3_BUCKET_NAME",
            "must be 3-63 characters of a-z, 0-9, '-' and '.'",
        ))
    }
}
