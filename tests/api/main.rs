//! Black-box tests of the service through HTTP and the CLI, against real PostgreSQL and a real S3
//! server when run by `scripts/test.sh` (and the embedded SQLite + directory default always).

mod auth;
mod cli;
mod client;
mod config_schema_limits;
mod connections;
mod coredump_admin;
mod coredump_parse;
mod coredump_sidecar;
mod coredump_upload;
mod coredumps;
mod crash_group_changes;
mod crash_group_counts;
mod crash_groups;
mod crash_support;
mod credentials_support;
mod device_flow;
mod device_logs;
mod device_presence;
mod device_tokens;
mod download_conditions;
mod downloads;
#[path = "../support/esp_image_synth.rs"]
mod esp_image_synth;
mod events;
mod firmware;
mod firmware_cache;
mod firmware_downloads;
mod firmware_early;
mod firmware_pipeline;
mod firmware_streaming;
mod firmware_support;
mod firmware_versions;
mod fleet;
mod health;
mod helpers;
#[path = "../support/issuer.rs"]
mod issuer;
mod jobs;
mod legacy;
mod legacy_adopt;
mod legacy_migrate_to_s3;
mod metrics_labels;
mod mqtt_notifications;
#[path = "../mqtt/support.rs"]
#[allow(dead_code)] // shared with tests/mqtt/, which uses all of it
mod mqtt_support;
mod nul_characters;
#[path = "../support/nvs_reader.rs"]
mod nvs_reader;
mod oidc_auth;
mod openapi;
mod outbox;
mod paging;
mod parse_cache;
mod parse_cli;
mod provisioning;
mod reconcile;
mod reconcile_keys;
mod request_envelope;
mod rotation;
#[path = "../support/rust_source.rs"]
mod rust_source;
mod sessions;
mod storage;
mod transactions;
mod ui_access;
mod ui_compat;
mod ui_pages;
mod ui_support;
