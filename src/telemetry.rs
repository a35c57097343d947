//! Logs and metrics, set up in one place.
//!
//! Logs: `tracing` events, JSON lines by default (`LOG_FORMAT=text` for humans), each request in a
//! span carrying its `request_id`, method and matched route. Metrics: every name is declared here
//! once with its description and rendered in Prometheus text at `GET /metrics`. Labels are route
//! templates and outcomes, never ids or keys, so their number stays bounded.

use std::sync::{OnceLock, RwLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const JOBS_FINISHED: &str = "jobs_finished_total";
pub const OUTBOX_DELETED: &str = "outbox_objects_deleted_total";
pub const OUTBOX_FAILED: &str = "outbox_delete_failures_total";
pub const COREDUMP_PARSE_DURATION: &str = "coredump_parse_duration_seconds";
pub const COREDUMP_UPLOADS_REFUSED: &str = "coredump_uploads_refused_total";
pub const FIRMWARE_DOWNLOADS_REFUSED: &str = "firmware_downloads_refused_total";
pub const COREDUMP_GROUPING_DURATION: &str = "coredump_grouping_duration_seconds";
pub const COREDUMP_INGEST_STEP_DURATION: &str = "coredump_ingest_step_duration_seconds";
pub const FIRMWARE_UPLOAD_STEP_DURATION: &str = "firmware_upload_step_duration_seconds";
pub const COREDUMP_PARSE_STEP_DURATION: &str = "coredump_parse_step_duration_seconds";
pub const COREDUMP_PARSE_HANDOFFS: &str = "coredump_parse_dumps_handed_over_total";
pub const JOBS_QUEUE_OP_DURATION: &str = "jobs_queue_operation_duration_seconds";
pub const PARSE_CACHE_LOOKUPS: &str = "parse_cache_lookups_total";
pub const PARSE_CACHE_EVICTIONS: &str = "parse_cache_evictions_total";
pub const PARSE_CACHE_BYTES: &str = "parse_cache_bytes";
pub const PARSE_CACHE_ENTRIES: &str = "parse_cache_entries";
pub const DATABASE_CLOCK_OFFSET: &str = "database_clock_offset_seconds";
pub const CRASH_GROUPS_OPEN: &str = "crash_groups_open";
pub const CRASH_GROUP_REGRESSIONS: &str = "crash_group_regressions_total";
pub const CONFIG_VALIDATIONS_REFUSED: &str = "config_validations_refused_total";
pub const JOBS_QUEUED: &str = "jobs_queued";
pub const JOBS_OLDEST_AGE: &str = "jobs_oldest_queued_age_seconds";
pub const RECONCILE_ORPHANS: &str = "reconcile_orphan_objects";
pub const RECONCILE_DANGLING: &str = "reconcile_dangling_rows";
pub const RECONCILE_MISPLACED: &str = "reconcile_misplaced_objects";
pub const RECONCILE_UNRECOGNISED: &str = "reconcile_unrecognised_keys";
pub const FIRMWARE_CACHE_HITS: &str = "firmware_cache_hits_total";
pub const FIRMWARE_CACHE_MISSES: &str = "firmware_cache_misses_total";
pub const FIRMWARE_CACHE_FILLS: &str = "firmware_cache_fills_total";
pub const FIRMWARE_CACHE_EVICTIONS: &str = "firmware_cache_evictions_total";
pub const FIRMWARE_CACHE_BYTES: &str = "firmware_cache_bytes";
pub const FIRMWARE_CACHE_ENTRIES: &str = "firmware_cache_entries";
pub const LOOKUP_CACHE_HITS: &str = "lookup_cache_hits_total";
pub const LOOKUP_CACHE_MISSES: &str = "lookup_cache_misses_total";
pub const NOTIFICATIONS_PUBLISHED: &str = "notifications_published_total";
pub const NOTIFICATIONS_DROPPED: &str = "notifications_dropped_total";
pub const NOTIFICATIONS_QUEUED: &str = "notifications_queued";
pub const NOTIFICATIONS_OLDEST_AGE: &str = "notifications_oldest_queued_age_seconds";
pub const DEVICE_LOG_LINES: &str = "device_log_lines_total";
pub const DEVICE_TOKENS_ISSUED: &str = "device_tokens_issued_total";
pub const DEVICE_TOKENS_REFUSED: &str = "device_tokens_refused_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "http_connections_open";
pub const HTTP_CONNECTIONS_EVICTED: &str = "http_connections_evicted_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "http_connections_refused_total";
pub const HTTP_CONNECTION_TIMEOUTS: &str = "http_connection_timeouts_total";
pub const HTTP_ACCEPT_ERRORS: &str = "http_accept_errors_total";
pub const MQTT_CONNECTED: &str = "mqtt_connected";
pub const MQTT_PUBLISHED: &str = "mqtt_published_total";
pub const MQTT_PUBLISH_FAILURES: &str = "mqtt_publish_failures_total";
pub const MQTT_RECEIVED: &str = "mqtt_received_total";
pub const MQTT_RECEIVED_DROPPED: &str = "mqtt_received_dropped_total";
pub const MQTT_RECONNECTS: &str = "mqtt_reconnects_total";

/// Installs the global log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| StderrBesideBar);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The progress bar a command shows on stderr, if any; log lines are written around it.
static PROGRESS_BAR: RwLock<Option<indicatif::ProgressBar>> = RwLock::new(None);

/// Registers (or with `None` removes) the progress bar log lines must not tear.
pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut slot) = PROGRESS_BAR.write() {
        *slot = bar;
    }
}

/// stderr, but with the registered progress bar hidden while a log line is written.
struct StderrBesideBar;

impl std::io::Write for StderrBesideBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = PROGRESS_BAR.read().ok().and_then(|slot| slot.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets of the per-step histograms (steps take from tens of microseconds to seconds).
const STEP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Whether [`metrics_handle`] has run: from then on the process's recorder is the one it
/// installed or one installed before it, a metric's handle stays valid for good (before, handles
/// may go to no recorder), and handles may be kept. (Handles taken inside
/// `metrics::with_local_recorder` go to that recorder; nothing that keeps handles runs inside one.)
pub fn recorder_settled() -> bool {
    PROMETHEUS.get().is_some()
}

/// Installs the process-wide metrics recorder once and returns the handle that renders it.
/// `None` if another recorder was installed first (metrics then go there, not to `/metrics`).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(COREDUMP_PARSE_DURATION.to_string()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(COREDUMP_GROUPING_DURATION.to_string()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(COREDUMP_INGEST_STEP_DURATION.to_string()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0, 5.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(FIRMWARE_UPLOAD_STEP_DURATION.to_string()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        10.0, 60.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(COREDUMP_PARSE_STEP_DURATION.to_string()),
                    STEP_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(JOBS_QUEUE_OP_DURATION.to_string()),
                    STEP_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION.to_string()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route template and status"
    );
    describe_counter!(
        JOBS_FINISHED,
        "Background job runs, by job kind and outcome (completed, retry, failed)"
    );
    describe_histogram!(
        COREDUMP_PARSE_DURATION,
        Unit::Seconds,
        "Time to parse one core dump (fetching dump and ELF included), by parser and outcome \
         (parsed, error, transient, gone)"
    );
    describe_histogram!(
        COREDUMP_GROUPING_DURATION,
        Unit::Seconds,
        "Time the parse job spends on crash grouping, by step: sign (the signature from the \
         report) and assign (putting the dump into its group in the parse result's transaction, \
         group row locks included); part of coredump_parse_duration_seconds"
    );
    describe_histogram!(
        COREDUMP_INGEST_STEP_DURATION,
        Unit::Seconds,
        "Time a core-dump upload spends in each step: receive (the body read), insert (transaction \
         begun, row inserted), put (the object written), record (retention, parse job, event), \
         commit; bench/ingest.sh prints their means"
    );
    describe_histogram!(
        FIRMWARE_UPLOAD_STEP_DURATION,
        Unit::Seconds,
        "Time a firmware bundle upload spends in each step: receive (body spooled), validate \
         (reading the ZIP and checking every entry, hashing excluded), hash (SHA-256 of the \
         entries), lock (transaction begun, model locked, version looked up), put (from the \
         first artifact PUT to the last one done; it overlaps validation), rows (row, retention, \
         event: overlaps the PUTs), commit, and total; bench/ota.sh prints their means"
    );
    describe_histogram!(
        COREDUMP_PARSE_STEP_DURATION,
        Unit::Seconds,
        "Time the parse job spends per step, by step: target (reading the dump's row), dump \
         (fetching the dump object, or taking it from this process's upload), firmware (the loaded firmware ELF: from the parse cache, or \
         fetched and loaded), analyse (decoding, unwinding, symbolising, the report and its \
         signature), record (the transaction that records the result, grouping included)"
    );
    describe_counter!(
        COREDUMP_PARSE_HANDOFFS,
        "Dumps a parse took from this process's upload of them instead of reading their object \
         (the other parses read it)"
    );
    describe_histogram!(
        JOBS_QUEUE_OP_DURATION,
        Unit::Seconds,
        "Time the job workers spend on the queue itself, by operation: claim (taking the next \
         due job, or finding none) and finish (deleting or rescheduling it)"
    );
    describe_counter!(
        PARSE_CACHE_LOOKUPS,
        "Loaded firmware ELFs asked of the parse cache, by outcome (hit; waited: for another \
         parse's load; loaded; uncached: PARSE_CACHE_BYTES=0 or no SHA-256 on the row; \
         too_large: charged more than PARSE_CACHE_BYTES; mismatch: the ELF does not hash to \
         its row's SHA-256)"
    );
    describe_counter!(
        PARSE_CACHE_EVICTIONS,
        "Loaded firmware dropped from the parse cache to make room (least recently used first)"
    );
    metrics::describe_gauge!(
        PARSE_CACHE_BYTES,
        Unit::Bytes,
        "Bytes the parse cache's loaded firmware is charged (Firmware::approx_bytes)"
    );
    metrics::describe_gauge!(
        DATABASE_CLOCK_OFFSET,
        Unit::Seconds,
        "The database's clock minus this process's, as applied to every timestamp it writes \
         (0 when within 10 ms; measured every minute)"
    );
    metrics::describe_gauge!(
        PARSE_CACHE_ENTRIES,
        "Loaded firmware ELFs held in the parse cache"
    );
    metrics::describe_gauge!(
        CRASH_GROUPS_OPEN,
        "Crash groups with status open, all models (measured when /metrics is scraped)"
    );
    describe_counter!(
        CRASH_GROUP_REGRESSIONS,
        "Resolved crash groups reopened by a dump uploaded after they were resolved (counted \
         when the dump's grouping commits)"
    );
    describe_counter!(
        COREDUMP_UPLOADS_REFUSED,
        "Core-dump uploads refused with 503 because MAX_CONCURRENT_COREDUMP_UPLOADS were in progress"
    );
    describe_counter!(
        FIRMWARE_DOWNLOADS_REFUSED,
        "Device firmware downloads refused with 429 because the device had \
         MAX_DOWNLOADS_PER_DEVICE in progress"
    );
    describe_counter!(
        CONFIG_VALIDATIONS_REFUSED,
        "Device configs not validated against their model's schema, by reason: over_budget \
         (longer than CONFIG_VALIDATION_TIMEOUT_SECONDS, 400) or busy (no validation slot, 503)"
    );
    metrics::describe_gauge!(
        JOBS_QUEUED,
        "Jobs waiting to run, by kind (measured when /metrics is scraped)"
    );
    metrics::describe_gauge!(
        JOBS_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest due job has been waiting, by kind (measured when /metrics is scraped)"
    );
    describe_counter!(
        OUTBOX_DELETED,
        "Objects deleted by the outbox worker after their rows were deleted"
    );
    metrics::describe_gauge!(
        RECONCILE_ORPHANS,
        "Objects with no row, older than the grace period, at the last reconcile scan"
    );
    metrics::describe_gauge!(
        RECONCILE_DANGLING,
        "Rows whose objects are missing at the last reconcile scan, by kind (firmware, coredump)"
    );
    metrics::describe_gauge!(
        RECONCILE_MISPLACED,
        "Firmware objects under an earlier release's percent-encoded key at the last reconcile scan"
    );
    metrics::describe_gauge!(
        RECONCILE_UNRECOGNISED,
        "Keys under firmware/ or coredumps/ that do not map back to the layout (never acted on)"
    );
    describe_counter!(
        OUTBOX_FAILED,
        "Object deletions that failed and will be retried"
    );
    describe_counter!(
        FIRMWARE_CACHE_HITS,
        "Firmware image downloads served from the in-memory cache"
    );
    describe_counter!(
        FIRMWARE_CACHE_MISSES,
        "Cacheable firmware image downloads streamed from the store instead, by reason \
         (absent: not cached yet or evicted; too_large: larger than FIRMWARE_CACHE_BYTES)"
    );
    describe_counter!(
        FIRMWARE_CACHE_FILLS,
        "Background reads of a whole image into the firmware cache, by outcome (stored, failed, \
         mismatch: size or SHA-256 differed from the row)"
    );
    describe_counter!(
        FIRMWARE_CACHE_EVICTIONS,
        "Images dropped from the firmware cache to make room (least recently used first)"
    );
    metrics::describe_gauge!(
        FIRMWARE_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of firmware images held in the in-memory cache"
    );
    metrics::describe_gauge!(
        FIRMWARE_CACHE_ENTRIES,
        "Firmware images held in the in-memory cache"
    );
    describe_counter!(
        LOOKUP_CACHE_HITS,
        "Device-path database lookups answered from the short-lived cache, by cache \
         (device_credential, current_firmware)"
    );
    describe_counter!(
        LOOKUP_CACHE_MISSES,
        "Device-path database lookups that went to the database, by cache"
    );
    metrics::describe_gauge!(HTTP_CONNECTIONS_OPEN, "Open HTTP connections");
    describe_counter!(
        NOTIFICATIONS_PUBLISHED,
        "Device notifications the broker acknowledged, by kind (firmware, config, provisioning)"
    );
    describe_counter!(
        NOTIFICATIONS_DROPPED,
        "Device notifications given up because the broker can never accept them (too large)"
    );
    metrics::describe_gauge!(
        NOTIFICATIONS_QUEUED,
        "Device notifications waiting to be published (measured when /metrics is scraped)"
    );
    metrics::describe_gauge!(
        NOTIFICATIONS_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest queued device notification has waited (measured at scrape)"
    );
    describe_counter!(
        DEVICE_LOG_LINES,
        "Device log lines received, by outcome (stored, unknown_device, malformed)"
    );
    describe_counter!(
        DEVICE_TOKENS_ISSUED,
        "Device tokens issued by POST /api/iot/token"
    );
    describe_counter!(
        DEVICE_TOKENS_REFUSED,
        "Token requests refused with invalid_client (unknown client or wrong secret)"
    );
    describe_counter!(
        HTTP_CONNECTIONS_EVICTED,
        "Idle HTTP connections closed to make room under HTTP_MAX_CONNECTIONS"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "New HTTP connections closed at once because HTTP_MAX_CONNECTIONS were open and all busy"
    );
    describe_counter!(
        HTTP_CONNECTION_TIMEOUTS,
        "HTTP connections closed because the request head did not arrive within \
         HTTP_HEADER_READ_TIMEOUT_SECONDS"
    );
    describe_counter!(
        HTTP_ACCEPT_ERRORS,
        "Failed accept() calls on the listener (e.g. out of file descriptors)"
    );
    metrics::describe_gauge!(
        MQTT_CONNECTED,
        "1 while connected to the MQTT broker of MQTT_URL, else 0"
    );
    describe_counter!(
        MQTT_PUBLISHED,
        "MQTT messages the broker acknowledged (QoS 1 PUBACK with a success code)"
    );
    describe_counter!(
        MQTT_PUBLISH_FAILURES,
        "MQTT publishes that failed, by reason (not_connected, timeout, connection_lost, rejected, \
         too_large, invalid_topic, shutting_down)"
    );
    describe_counter!(MQTT_RECEIVED, "MQTT messages received from the broker");
    describe_counter!(
        MQTT_RECEIVED_DROPPED,
        "Received MQTT messages dropped because their subscriber's buffer was full"
    );
    describe_counter!(
        MQTT_RECONNECTS,
        "Connections to the MQTT broker re-established after the first one"
    );
}
