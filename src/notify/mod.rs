//! Device notifications over MQTT (SPEC §14): the Python service's messages, QoS 1, not retained,
//! published only after the change that causes them is committed.
//!
//! | topic | payload | when |
//! |---|---|---|
//! | `iotsupport/updates/firmware` | `{"client_id", "firmware_version"}` | a model's current version changes (upload, pipeline upload, rollback): one per device of the model |
//! | `iotsupport/updates/config` | `{"client_id"}` | every successful `PUT /api/devices/{id}` |
//! | `iotsupport/updates/provisioning` | `{"client_id"}` | a device enters `PENDING` (rotation) |
//!
//! [`Notifier`] writes a row to the `notifications` table in the transaction of the change (a
//! rolled-back change queues nothing); [`publisher`] publishes the rows after commit, paced, from
//! exactly one process at a time per row (leases), and deletes each one only when the broker
//! acknowledged it, so a broker that is down delays notifications and loses none. Without
//! `MQTT_URL` the notifier is disabled: nothing is queued.

pub mod publisher;

use bytes::Bytes;
use serde_json::json;

use crate::db::{self, notifications as queries, DbError, Tx};

/// The root of the topics (the Python service's `TOPIC_UPDATES`).
pub const TOPIC_ROOT: &str = "iotsupport/updates";

/// What a notification is about; its topic is `iotsupport/updates/{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Firmware,
    Config,
    Provisioning,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firmware => "firmware",
            Kind::Config => "config",
            Kind::Provisioning => "provisioning",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        [Kind::Firmware, Kind::Config, Kind::Provisioning]
            .into_iter()
            .find(|k| k.as_str() == kind)
    }

    pub fn topic(self) -> String {
        format!("{TOPIC_ROOT}/{}", self.as_str())
    }
}

/// The message body of a notification.
pub fn payload(client_id: &str, firmware_version: Option<&str>) -> Bytes {
    let body = match firmware_version {
        Some(version) => json!({"client_id": client_id, "firmware_version": version}),
        None => json!({"client_id": client_id}),
    };
    Bytes::from(body.to_string())
}

/// Queues notifications in the caller's transaction, when MQTT is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifier {
    enabled: bool,
    /// How long a firmware message waits before it may be published.
    firmware_delay: std::time::Duration,
}

impl Notifier {
    /// `enabled`: `MQTT_URL` is set.
    pub fn new(enabled: bool) -> Self {
        Notifier {
            enabled,
            firmware_delay: std::time::Duration::ZERO,
        }
    }

    /// Firmware messages wait `delay` before they may be published: the
    /// `DEVICE_LOOKUP_CACHE_SECONDS` for which other processes may still serve the model's
    /// previous image. A device reacting at once would otherwise be told "no update" there.
    pub fn with_firmware_delay(self, delay: std::time::Duration) -> Self {
        Notifier {
            firmware_delay: delay,
            ..self
        }
    }

    /// Queues nothing (no `MQTT_URL`, or a command that must not notify).
    pub fn disabled() -> Self {
        Notifier::new(false)
    }

    pub fn is_enabled(self) -> bool {
        self.enabled
    }

    /// A model's current version became `version`: one firmware message per device of the model.
    /// Returns how many were queued. The model's firmware messages still queued (also one being
    /// published: it is not put back or sent again) are withdrawn first: after a quick rollback,
    /// a fan-out of the version rolled back that had not gone out yet would make devices that
    /// never took it fetch the image again, and a broker away for days would get them all at once.
    pub async fn firmware_changed(
        self,
        tx: &mut Tx,
        model_id: i64,
        version: &str,
    ) -> Result<u64, DbError> {
        if !self.enabled {
            return Ok(0);
        }
        let now = db::now();
        let due = now + chrono::Duration::from_std(self.firmware_delay).unwrap_or_default();
        queries::supersede_for_model(tx, Kind::Firmware.as_str(), model_id).await?;
        queries::enqueue_for_model(
            tx,
            Kind::Firmware.as_str(),
            model_id,
            Some(version),
            now,
            due,
        )
        .await
    }

    /// A device's config was written (`PUT /api/devices/{id}`).
    pub async fn config_changed(self, tx: &mut Tx, client_id: &str) -> Result<(), DbError> {
        self.one(tx, Kind::Config, client_id).await
    }

    /// A device entered `PENDING`: it should fetch a provisioning package.
    pub async fn provisioning(self, tx: &mut Tx, client_id: &str) -> Result<(), DbError> {
        self.one(tx, Kind::Provisioning, client_id).await
    }

    /// Queues one `kind` message for `client_id`, in place of one still queued: these messages
    /// only say "look again", so one is as good as several.
    async fn one(self, tx: &mut Tx, kind: Kind, client_id: &str) -> Result<(), DbError> {
        if !self.enabled {
            return Ok(());
        }
        let now = db::now();
        queries::supersede(tx, kind.as_str(), client_id).await?;
        queries::enqueue(tx, kind.as_str(), client_id, None, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_are_the_originals() {
        assert_eq!(Kind::Firmware.topic(), "iotsupport/updates/firmware");
        assert_eq!(Kind::parse("provisioning"), Some(Kind::Provisioning));
        assert_eq!(Kind::parse("other"), None);
        let firmware: serde_json::Value =
            serde_json::from_slice(&payload("iotdevice-m-abcd2345", Some("1.2.0"))).unwrap();
        assert_eq!(
            firmware,
            json!({"client_id": "iotdevice-m-abcd2345", "firmware_version": "1.2.0"})
        );
        let config: serde_json::Value =
            serde_json::from_slice(&payload("iotdevice-m-abcd2345", None)).unwrap();
        assert_eq!(config, json!({"client_id": "iotdevice-m-abcd2345"}));
    }
}
