//! The MQTT client (SPEC §14): one connection per process to the broker of `MQTT_URL`, over which
//! the service publishes device notifications and receives device logs.
//!
//! This module knows nothing of devices, notifications or logs: it publishes bytes to topics and
//! hands received messages to subscribers. The durable notification queue (publish only after
//! commit, delete a queued message only once the broker acknowledged it, pacing) and the log intake
//! are built on top of it. Queue depth and oldest-queued-age metrics belong to that queue.
//!
//! # What it guarantees
//!
//! - [`MqttClient::publish`] sends QoS 1, not retained, and returns `Ok` only once the broker's
//!   PUBACK for *that* message arrived with a success code. Every other outcome is an error within
//!   `MQTT_PUBLISH_TIMEOUT_SECONDS` (waiting for a connection included), so a caller can keep the
//!   message queued. A timed-out message may still reach the broker later (at least once, never
//!   "exactly once"): devices treat notifications as hints, so a duplicate is harmless.
//! - Publishes may run concurrently; each waits for its own acknowledgement.
//! - The connection is re-established after any failure with exponential back-off (0.5 s … 30 s,
//!   jittered). Subscriptions are renewed on every connection. State changes are logged once
//!   (`mqtt_connected`, `mqtt_connection_lost`, `mqtt_broker_unreachable`), retries at debug level.
//! - When the shutdown token fires, new publishes are refused, messages already sent get
//!   [`MqttSettings::shutdown_grace`] to be acknowledged, then the client sends DISCONNECT.
//!
//! # Sessions
//!
//! Every connection starts a clean session that ends with it (clean start, no session expiry),
//! unlike the Python service (`clean_start=False`, one hour). A persistent session would make the
//! broker, and rumqttc, resend unacknowledged messages on their own after a reconnect, beside the
//! durable queue's own retry; and since client ids are unique per process (see
//! [`MqttSettings::client_id`]), the sessions of processes that are gone would sit on the broker
//! for an hour collecting log messages nobody reads. What a clean session loses — messages to
//! `iotsupport/logsink` while this process is disconnected — other members of the shared
//! subscription group receive, if there are any still connected: with one process (the SQLite
//! setup), or when the broker itself restarts and every member reconnects, the lines devices
//! publish before this process has subscribed again (up to the reconnect back-off, 30 s at most)
//! are not stored. Messages rumqttc had read when a connection failed are handed out first.
//!
//! # Choice of crate
//!
//! `rumqttc` 0.25 (v5 API) was chosen. It is maintained (Bytebeam, releases through 2025), speaks
//! MQTT 5 (needed for `$share/<group>/…` subscriptions and subscription identifiers), runs on
//! tokio, and reconnects when its event loop is polled again after an error. With the
//! `use-rustls-no-provider` feature it uses the tree's rustls and we hand it an aws-lc-rs
//! configuration; no OpenSSL. (It still compiles `ring` because its `rustls-webpki` 0.102
//! dependency enables it by default; nothing calls it.) Its weak spot for us: `publish` does not
//! return the packet id (upstream issues #349, #805, #1007; a "promise" API is unreleased), so a
//! PUBACK cannot be tied to its message directly. This module does it from the event stream:
//! publishes are handed to rumqttc's request queue in one order under one lock, rumqttc numbers
//! them in that order (`Outgoing::Publish(pkid)`, or `Outgoing::AwaitAck(pkid)` while that id is
//! still in flight), and `Incoming::PubAck(pkid)` settles the matching waiter. That ordering holds
//! only within one connection, so on every disconnect all waiters fail, the request queue is
//! drained and rumqttc's state is replaced by a fresh one — which clean sessions make correct.
//!
//! Rejected: `paho-mqtt` (Eclipse, v5 and delivery tokens with PUBACK, automatic reconnect, but
//! wraps the Paho C library, built with CMake and linked to OpenSSL: a second TLS stack);
//! `ntex-mqtt` (v5 client whose publish futures resolve on PUBACK, maintained, but built on the
//! ntex runtime and service stack rather than plain tokio, and without reconnection);
//! `mqtt-async-client` (MQTT 3.1.1 only, unmaintained since 2021); `mqttrs` (a 3.1.1 codec only:
//! the event loop, keep-alive, flow control and TLS would all be ours); `mqtt-endpoint-tokio`
//! (v5 with caller-chosen packet ids, but young, single-maintainer, and without reconnection).
//!
//! # Layout
//!
//! `client.rs`: [`MqttClient`] (start, publish, subscribe) and [`Subscription`]. `shared.rs`: the
//! state callers and the event loop share, and how rumqttc's events settle waiting publishes and
//! subscriptions. `event_loop.rs`: the task that polls rumqttc, reconnects and shuts down.
//! `backoff.rs`, `topic.rs` (topic and filter rules), `tls.rs` (rustls with the system roots).

mod backoff;
mod client;
mod event_loop;
mod shared;
pub mod tls;
pub mod topic;

use std::time::Duration;

pub use backoff::Backoff;
pub use client::{ConnectionState, MqttClient, ReceivedMessage, SubscribeOptions, Subscription};

pub use crate::config::{MqttSettings, MqttUrl};

/// The largest packet this client accepts from the broker, announced in CONNECT so the broker
/// never sends a larger one (device log batches are far smaller). rumqttc's own default is 10 KiB.
pub const MAX_INCOMING_PACKET_BYTES: u32 = 1024 * 1024;

/// Publishes that may be waiting for a packet id at once; more wait (within their timeout).
pub const MAX_PENDING_PUBLISHES: usize = 1024;

/// Upper bound on QoS 1 messages in flight (the broker's Receive Maximum may lower it).
pub const MAX_IN_FLIGHT: u16 = 100;

/// A connection that lasted this long counts as healthy: the back-off starts over after it.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Why a message was not (known to be) accepted by the broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker within the publish timeout.
    #[error("not connected to the MQTT broker")]
    NotConnected,
    /// Sent (or waiting to be sent), but no acknowledgement within the publish timeout. The
    /// broker may still receive it.
    #[error("the MQTT broker did not acknowledge the message in time")]
    TimedOut,
    /// The connection ended before the acknowledgement arrived. The broker may have received it.
    #[error("the connection to the MQTT broker was lost before the message was acknowledged")]
    ConnectionLost,
    /// The broker answered with a failure reason code (MQTT 5 PUBACK).
    #[error("the MQTT broker refused the message: {reason}")]
    Rejected { reason: &'static str },
    /// Larger than the broker's Maximum Packet Size (or MQTT's limit).
    #[error("the message ({size} bytes) is larger than the broker accepts ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    /// The shutdown token fired; nothing more is published.
    #[error("the MQTT client is shutting down")]
    ShuttingDown,
}

impl PublishError {
    /// The `reason` label of `mqtt_publish_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::NotConnected => "not_connected",
            PublishError::TimedOut => "timeout",
            PublishError::ConnectionLost => "connection_lost",
            PublishError::Rejected { .. } => "rejected",
            PublishError::TooLarge { .. } => "too_large",
            PublishError::InvalidTopic { .. } => "invalid_topic",
            PublishError::ShuttingDown => "shutting_down",
        }
    }

    /// Whether publishing the same message again later may succeed. `false` means it will fail
    /// the same way every time: a queue should set it aside rather than retry it.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::TooLarge { .. } | PublishError::InvalidTopic { .. } => false,
            PublishError::Rejected { reason } => !matches!(
                *reason,
                "not_authorized" | "topic_name_invalid" | "payload_format_invalid"
            ),
            _ => true,
        }
    }
}

/// Why a subscription could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid topic filter {filter:?}: {reason}")]
    InvalidFilter {
        filter: String,
        reason: &'static str,
    },
    #[error("invalid shared subscription group {group:?}: {reason}")]
    InvalidGroup { group: String, reason: &'static str },
    /// This client already has a subscription with the same filter (and group): a second
    /// SUBSCRIBE would replace the first one on the broker.
    #[error("already subscribed to {0:?}")]
    AlreadySubscribed(String),
    #[error("the MQTT client is shutting down")]
    ShuttingDown,
}

/// Why [`MqttClient::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MqttStartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}
