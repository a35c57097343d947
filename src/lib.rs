//! iotsupport: the backend for fleets of ESP32 devices. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod config;
pub mod coredumps;
pub mod credentials;
pub mod db;
pub mod device_logs;
pub mod events;
pub mod firmware;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod layout;
pub mod lookup_cache;
pub mod migrate_to_s3;
pub mod mqtt;
pub mod notify;
pub mod oidc;
pub mod outbox;
pub mod presence;
pub mod reconcile;
pub mod registry;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
