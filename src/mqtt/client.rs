//! [`MqttClient`] (start, publish, subscribe) and [`Subscription`]: what callers use. The state
//! they share with the event loop is in `shared.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::shared::{PendingPublish, Shared, SubscriptionEntry};
use super::{
    event_loop, topic, Backoff, MqttSettings, MqttStartError, PublishError, SubscribeError,
    MAX_INCOMING_PACKET_BYTES, MAX_IN_FLIGHT, MAX_PENDING_PUBLISHES,
};
use crate::telemetry;

/// Where the connection stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting for the first time, or again after the connection was lost.
    #[default]
    Connecting,
    /// Connected: the broker's CONNACK arrived.
    Connected,
    /// The shutdown token fired: messages already sent may still be acknowledged, nothing new is
    /// accepted.
    ShuttingDown,
    /// Disconnected for good; subscriptions have ended.
    Stopped,
}

/// A message received on a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The topic it was published to (never the `$share/…` filter).
    pub topic: String,
    pub payload: Bytes,
    /// Set when the broker sent a stored retained message (on subscribing).
    pub retained: bool,
}

/// Options of [`MqttClient::subscribe`].
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Subscribe to `$share/<group>/<filter>`: the broker gives each message to one of the
    /// clients subscribed in the group, so several processes split the messages between them.
    pub shared_group: Option<String>,
    /// Received messages that may wait for [`Subscription::recv`]. When they are all waiting,
    /// further messages for this subscription are dropped (counted in
    /// `mqtt_received_dropped_total`) rather than stalling the connection, whose keep-alive and
    /// acknowledgements run on the same task.
    pub buffer: usize,
    /// The payload bytes those waiting messages may hold together; beyond it messages are dropped
    /// the same way. A message may be as large as `MAX_INCOMING_PACKET_BYTES`, so the count alone
    /// would let a full buffer hold gigabytes.
    pub max_bytes: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            shared_group: None,
            buffer: 1024,
            max_bytes: 64 << 20,
        }
    }
}

/// A handle on the MQTT connection of this process. Cheap to clone; every clone uses the same
/// connection. The connection lives until the shutdown token given to [`MqttClient::start`]
/// fires, whether or not handles remain.
#[derive(Clone)]
pub struct MqttClient {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient")
            .field("client_id", &self.shared.client_id)
            .field("state", &self.state())
            .finish()
    }
}

impl MqttClient {
    /// Starts the connection to `settings.url` in a background task (call inside a tokio
    /// runtime) and returns at once; [`publish`](Self::publish) waits for the connection.
    /// The task reconnects after failures until `shutdown` fires, then shuts down gracefully
    /// (see the module documentation). Fails only if TLS cannot be set up for `mqtts://`.
    pub fn start(
        settings: &MqttSettings,
        shutdown: CancellationToken,
    ) -> Result<MqttClient, MqttStartError> {
        let mut options = MqttOptions::new(
            settings.client_id.clone(),
            settings.url.host_for_connect(),
            settings.url.port,
        );
        // rumqttc refuses (panics on) a keep-alive under 5 s; MQTT's field holds at most 65535 s.
        options.set_keep_alive(
            settings
                .keep_alive
                .clamp(Duration::from_secs(5), Duration::from_secs(65_535)),
        );
        options.set_clean_start(true);
        options
            .set_connection_timeout(settings.connect_timeout.as_secs_f64().ceil().max(1.0) as u64);
        options.set_max_packet_size(Some(MAX_INCOMING_PACKET_BYTES));
        options.set_outgoing_inflight_upper_limit(MAX_IN_FLIGHT);
        let mut network = NetworkOptions::new();
        // Small packets waiting for an acknowledgement: Nagle's delay would only add latency.
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        if settings.url.tls {
            let config = super::tls::client_config()?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        if let Some(credentials) = &settings.credentials {
            options.set_credentials(
                credentials.username.clone(),
                credentials.password.expose().to_string(),
            );
        }
        // Room for every pending publish plus the subscribe, unsubscribe and disconnect requests,
        // so a `try_*` call under the lock never finds the queue full.
        let (requests, eventloop) = AsyncClient::new(options, MAX_PENDING_PUBLISHES + 256);

        let shared = Arc::new(Shared::new(
            requests,
            settings.publish_timeout,
            settings.client_id.clone(),
            settings.url.to_string(),
        ));
        metrics::gauge!(telemetry::MQTT_CONNECTED).set(0.0);
        tokio::spawn(event_loop::run(
            eventloop,
            shared.clone(),
            shutdown,
            event_loop::LoopSettings {
                backoff: Backoff::default(),
                shutdown_grace: settings.shutdown_grace,
            },
        ));
        Ok(MqttClient { shared })
    }

    /// Publishes `payload` to `topic` with QoS 1, not retained, and returns once the broker has
    /// acknowledged it (PUBACK with a success code; "no matching subscribers" counts as
    /// success). Waits for a connection if there is none yet; everything, waiting included, is
    /// bounded by `MQTT_PUBLISH_TIMEOUT_SECONDS`. On an error the broker may or may not have the
    /// message (see [`PublishError`]).
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.shared.publish_timeout;
        let outcome = self.publish_until(topic, payload, deadline).await;
        match &outcome {
            Ok(()) => metrics::counter!(telemetry::MQTT_PUBLISHED).increment(1),
            Err(error) => {
                metrics::counter!(telemetry::MQTT_PUBLISH_FAILURES, "reason" => error.reason())
                    .increment(1);
            }
        }
        outcome
    }

    async fn publish_until(
        &self,
        topic: &str,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        topic::validate_topic(topic).map_err(|reason| PublishError::InvalidTopic {
            topic: topic.to_string(),
            reason,
        })?;
        let size = publish_packet_size(topic, payload.len());
        if size > MQTT_MAX_PACKET_BYTES {
            return Err(PublishError::TooLarge {
                size,
                max: MQTT_MAX_PACKET_BYTES,
            });
        }
        let slot = match timeout_at(deadline, self.shared.send_slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => return Err(PublishError::ShuttingDown),
            Err(_elapsed) => return Err(PublishError::TimedOut),
        };
        // Subscribed before the state is read, so a change after the read is not missed.
        let mut state_changes = self.shared.state.subscribe();
        let acknowledged = loop {
            {
                let mut inner = self.shared.lock();
                match inner.state {
                    ConnectionState::Connected => {
                        if let Some(max) = inner.broker_max_packet_size {
                            if size > max as usize {
                                return Err(PublishError::TooLarge {
                                    size,
                                    max: max as usize,
                                });
                            }
                        }
                        let (reply, acknowledged) = oneshot::channel();
                        if self
                            .shared
                            .requests
                            .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())
                            .is_err()
                        {
                            // The queue has room for every slot, so only a stopped event loop
                            // gets here.
                            return Err(PublishError::ShuttingDown);
                        }
                        inner
                            .unnumbered
                            .push_back(PendingPublish { reply, _slot: slot });
                        break acknowledged;
                    }
                    ConnectionState::ShuttingDown | ConnectionState::Stopped => {
                        return Err(PublishError::ShuttingDown)
                    }
                    ConnectionState::Connecting => {}
                }
            }
            match timeout_at(deadline, state_changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => return Err(PublishError::ShuttingDown),
                Err(_elapsed) => return Err(PublishError::NotConnected),
            }
        };
        match timeout_at(deadline, acknowledged).await {
            Ok(Ok(outcome)) => outcome,
            // Dropped unanswered: only when the event loop task ended abruptly.
            Ok(Err(_dropped)) => Err(PublishError::ConnectionLost),
            Err(_elapsed) => Err(PublishError::TimedOut),
        }
    }

    /// Subscribes to `filter` with QoS 1 (to `$share/<group>/<filter>` with
    /// [`SubscribeOptions::shared_group`]). Returns at once: the subscription is made as soon as
    /// the client is connected and renewed after every reconnect ([`Subscription::is_active`]
    /// tells whether the broker has granted it on the current connection). Dropping the
    /// [`Subscription`] unsubscribes.
    pub fn subscribe(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        topic::validate_filter(filter).map_err(|reason| SubscribeError::InvalidFilter {
            filter: filter.to_string(),
            reason,
        })?;
        if let Some(group) = &options.shared_group {
            topic::validate_group(group).map_err(|reason| SubscribeError::InvalidGroup {
                group: group.clone(),
                reason,
            })?;
        }
        let subscribe_filter = topic::subscription_filter(filter, options.shared_group.as_deref());
        let (sender, messages) = mpsc::channel(options.buffer.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (active_tx, active) = watch::channel(false);

        let mut inner = self.shared.lock();
        match inner.state {
            ConnectionState::ShuttingDown | ConnectionState::Stopped => {
                return Err(SubscribeError::ShuttingDown)
            }
            ConnectionState::Connecting | ConnectionState::Connected => {}
        }
        if inner
            .subscriptions
            .values()
            .any(|s| s.subscribe_filter == subscribe_filter)
        {
            return Err(SubscribeError::AlreadySubscribed(subscribe_filter));
        }
        // Subscription identifiers are 1 ..= 268435455 (a variable byte integer).
        inner.next_subscription_id = inner.next_subscription_id % 268_435_455 + 1;
        let id = inner.next_subscription_id;
        inner.subscriptions.insert(
            id,
            SubscriptionEntry {
                filter: filter.to_string(),
                subscribe_filter: subscribe_filter.clone(),
                sender,
                queued_bytes: queued_bytes.clone(),
                max_bytes: options.max_bytes,
                active: active_tx,
                overflowing: false,
            },
        );
        if inner.state == ConnectionState::Connected {
            self.shared.send_subscribe(&mut inner, id);
        }
        drop(inner);
        Ok(Subscription {
            id,
            filter: subscribe_filter,
            messages,
            queued_bytes,
            active,
            shared: self.shared.clone(),
        })
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Connected
    }

    /// Waits up to `timeout` for the connection; `true` if connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut state = self.shared.state.subscribe();
        let connected = state.wait_for(|s| {
            matches!(
                s,
                ConnectionState::Connected
                    | ConnectionState::ShuttingDown
                    | ConnectionState::Stopped
            )
        });
        let reached = tokio::time::timeout(timeout, connected)
            .await
            .is_ok_and(|state| state.is_ok_and(|s| *s == ConnectionState::Connected));
        reached
    }

    /// Waits until the client has shut down after its shutdown token fired (in-flight messages
    /// settled, DISCONNECT sent).
    pub async fn stopped(&self) {
        let mut state = self.shared.state.subscribe();
        let _ = state.wait_for(|s| *s == ConnectionState::Stopped).await;
    }

    /// How long [`publish`](Self::publish) waits at most (`MQTT_PUBLISH_TIMEOUT_SECONDS`).
    pub fn publish_timeout(&self) -> Duration {
        self.shared.publish_timeout
    }

    /// The MQTT client identifier this process uses.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }
}

/// Messages received for one topic filter. Dropping it unsubscribes.
pub struct Subscription {
    id: u32,
    filter: String,
    messages: mpsc::Receiver<ReceivedMessage>,
    /// The payload bytes of the messages waiting in `messages` (see
    /// [`SubscribeOptions::max_bytes`]).
    queued_bytes: Arc<AtomicUsize>,
    active: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Subscription {
    /// The next message; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<ReceivedMessage> {
        let message = self.messages.recv().await;
        self.taken(message)
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<ReceivedMessage> {
        let message = self.messages.try_recv().ok();
        self.taken(message)
    }

    fn taken(&self, message: Option<ReceivedMessage>) -> Option<ReceivedMessage> {
        if let Some(message) = &message {
            // Counted in before it was sent (`Shared::deliver`), so this never goes below zero.
            self.queued_bytes
                .fetch_sub(message.payload.len(), Ordering::Relaxed);
        }
        message
    }

    /// The filter as subscribed (with its `$share/<group>/` prefix, if any).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether the broker granted this subscription on the current connection.
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Waits up to `timeout` for the broker to grant the subscription; `true` if it did.
    pub async fn wait_active(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.active.wait_for(|active| *active)).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if let Some(entry) = inner.subscriptions.remove(&self.id) {
            if inner.state == ConnectionState::Connected {
                // Best effort: if it cannot be sent, the subscription ends with the connection.
                let _ = self.shared.requests.try_unsubscribe(entry.subscribe_filter);
            }
        }
    }
}

/// MQTT's own limit: a remaining length of at most 268435455 bytes.
const MQTT_MAX_PACKET_BYTES: usize = 268_435_455 + 5;

/// The size of the PUBLISH packet rumqttc writes for a QoS 1 message without properties: fixed
/// header, topic, packet id, empty property length, payload.
fn publish_packet_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + 1 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_packet_sizes_count_header_topic_id_and_properties() {
        // 1 fixed header byte, 1 length byte, 2+5 topic, 2 packet id, 1 property length, 3 payload
        assert_eq!(publish_packet_size("a/b/c", 3), 15);
        // 127 bytes of remaining length still fit one length byte, 128 need two.
        assert_eq!(publish_packet_size("t", 127 - 6), 1 + 1 + 127);
        assert_eq!(publish_packet_size("t", 128 - 6), 1 + 2 + 128);
    }
}
