//! The state callers and the event loop share, and how rumqttc's events settle it.
//!
//! One `std::sync::Mutex` guards it. It is never held across an `.await`, and every request to
//! rumqttc made under it is a non-blocking `try_*` call, so the order in which publishes enter
//! rumqttc's queue is the order of `Inner::unnumbered`, which is the order in which rumqttc numbers
//! them (`Outgoing::Publish(pkid)`). See the module documentation of `crate::mqtt`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnAck, PubAck, PubAckReason, Publish, SubAck, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::client::{ConnectionState, ReceivedMessage};
use super::{topic, PublishError, MAX_PENDING_PUBLISHES};
use crate::telemetry;

/// What callers and the event loop share.
pub(super) struct Shared {
    pub(super) requests: AsyncClient,
    inner: Mutex<Inner>,
    /// Mirrors `Inner::state` for those waiting on a change; `Inner::state` is the authority.
    pub(super) state: watch::Sender<ConnectionState>,
    /// One permit per publish handed to rumqttc and not yet numbered or settled.
    pub(super) send_slots: Arc<Semaphore>,
    pub(super) publish_timeout: Duration,
    pub(super) client_id: String,
    /// The broker's URL, for log lines.
    pub(super) broker: String,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) state: ConnectionState,
    /// Publishes handed to rumqttc, oldest first, that it has not numbered yet.
    pub(super) unnumbered: VecDeque<PendingPublish>,
    /// A publish rumqttc holds back because its packet id is still in flight
    /// (`Outgoing::AwaitAck`); it goes out when that id is acknowledged.
    collided: Option<(u16, PendingPublish)>,
    /// Publishes on the wire, by packet id, waiting for their PUBACK.
    in_flight: HashMap<u16, PendingPublish>,
    pub(super) subscriptions: BTreeMap<u32, SubscriptionEntry>,
    pub(super) next_subscription_id: u32,
    /// Subscription ids whose SUBSCRIBE was handed to rumqttc, oldest first, not yet numbered.
    unnumbered_subscribes: VecDeque<u32>,
    /// SUBSCRIBEs on the wire, by packet id, waiting for their SUBACK.
    subscribes_in_flight: HashMap<u16, u32>,
    /// The broker's Maximum Packet Size from CONNACK.
    pub(super) broker_max_packet_size: Option<u32>,
    /// Whether the broker supports subscription identifiers (CONNACK; default yes).
    subscription_ids: bool,
}

pub(super) struct PendingPublish {
    pub(super) reply: oneshot::Sender<Result<(), PublishError>>,
    /// Held until the publish is settled, so at most `MAX_PENDING_PUBLISHES` are outstanding.
    pub(super) _slot: OwnedSemaphorePermit,
}

impl PendingPublish {
    pub(super) fn settle(self, outcome: Result<(), PublishError>) {
        // The caller may have timed out and gone; then nobody is told.
        let _ = self.reply.send(outcome);
    }
}

pub(super) struct SubscriptionEntry {
    /// The filter without a `$share/<group>/` prefix, to match received topics against.
    pub(super) filter: String,
    /// The filter as sent in SUBSCRIBE.
    pub(super) subscribe_filter: String,
    pub(super) sender: mpsc::Sender<ReceivedMessage>,
    /// The payload bytes waiting in `sender`'s channel, shared with the `Subscription`.
    pub(super) queued_bytes: Arc<AtomicUsize>,
    /// `SubscribeOptions::max_bytes`.
    pub(super) max_bytes: usize,
    pub(super) active: watch::Sender<bool>,
    /// Messages are being dropped because the buffer is full (warned once per episode).
    pub(super) overflowing: bool,
}

impl Shared {
    pub(super) fn new(
        requests: AsyncClient,
        publish_timeout: Duration,
        client_id: String,
        broker: String,
    ) -> Shared {
        Shared {
            requests,
            inner: Mutex::new(Inner::default()),
            state: watch::channel(ConnectionState::Connecting).0,
            send_slots: Arc::new(Semaphore::new(MAX_PENDING_PUBLISHES)),
            publish_timeout,
            client_id,
            broker,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock panics; if something did, the data is still consistent enough
        // to fail waiters and carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_state(&self, inner: &mut Inner, state: ConnectionState) {
        inner.state = state;
        self.state.send_replace(state);
        let connected = if state == ConnectionState::Connected {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(telemetry::MQTT_CONNECTED).set(connected);
    }

    pub(super) fn send_subscribe(&self, inner: &mut Inner, id: u32) {
        let Some(entry) = inner.subscriptions.get(&id) else {
            return;
        };
        entry.active.send_replace(false);
        let properties = SubscribeProperties {
            id: inner.subscription_ids.then_some(id as usize),
            user_properties: Vec::new(),
        };
        match self.requests.try_subscribe_with_properties(
            entry.subscribe_filter.clone(),
            QoS::AtLeastOnce,
            properties,
        ) {
            Ok(()) => inner.unnumbered_subscribes.push_back(id),
            Err(error) => tracing::warn!(
                filter = %entry.subscribe_filter,
                error = %error,
                "mqtt_subscribe_not_sent"
            ),
        }
    }

    /// CONNACK arrived: accept publishes, (re)subscribe everything.
    pub(super) fn on_connected(&self, connack: &ConnAck) {
        let mut inner = self.lock();
        let properties = connack.properties.as_ref();
        inner.broker_max_packet_size = properties.and_then(|p| p.max_packet_size);
        inner.subscription_ids =
            properties.and_then(|p| p.subscription_identifiers_available) != Some(0);
        inner.unnumbered_subscribes.clear();
        inner.subscribes_in_flight.clear();
        let ids: Vec<u32> = inner.subscriptions.keys().copied().collect();
        for id in ids {
            self.send_subscribe(&mut inner, id);
        }
        self.set_state(&mut inner, ConnectionState::Connected);
    }

    /// The connection is gone: stop handing requests to rumqttc and fail everything in flight
    /// with `error`. The caller then drains rumqttc's queue and resets its state.
    pub(super) fn on_disconnected(&self, error: PublishError) {
        let mut inner = self.lock();
        if inner.state == ConnectionState::Connected {
            self.set_state(&mut inner, ConnectionState::Connecting);
        }
        fail_all(&mut inner, error);
        for entry in inner.subscriptions.values() {
            entry.active.send_replace(false);
        }
    }

    /// The shutdown token fired: refuse new publishes. Returns whether the client is connected.
    pub(super) fn begin_shutdown(&self) -> bool {
        let mut inner = self.lock();
        let connected = inner.state == ConnectionState::Connected;
        self.set_state(&mut inner, ConnectionState::ShuttingDown);
        connected
    }

    /// Whether publishes handed to rumqttc still wait for an acknowledgement.
    pub(super) fn has_unacknowledged(&self) -> bool {
        let inner = self.lock();
        !inner.unnumbered.is_empty() || inner.collided.is_some() || !inner.in_flight.is_empty()
    }

    /// The end: fail what is left, close every subscription, state `Stopped`.
    pub(super) fn stop(&self) {
        let mut inner = self.lock();
        fail_all(&mut inner, PublishError::ShuttingDown);
        inner.subscriptions.clear();
        self.set_state(&mut inner, ConnectionState::Stopped);
        self.send_slots.close();
    }

    pub(super) fn fail_all(&self, error: PublishError) {
        fail_all(&mut self.lock(), error);
    }

    /// rumqttc numbered the oldest unnumbered publish (or sent the one held back by a collision).
    pub(super) fn on_publish_sent(&self, pkid: u16) {
        let mut inner = self.lock();
        let pending = match inner.collided.take() {
            Some((collided, pending)) if collided == pkid => Some(pending),
            other => {
                inner.collided = other;
                inner.unnumbered.pop_front()
            }
        };
        match pending {
            Some(pending) => {
                if let Some(previous) = inner.in_flight.insert(pkid, pending) {
                    // rumqttc reuses an id only once it is acknowledged; if that ever breaks,
                    // the older waiter learns nothing certain.
                    previous.settle(Err(PublishError::ConnectionLost));
                }
            }
            None => tracing::debug!(pkid, "mqtt_publish_sent_without_waiter"),
        }
    }

    /// rumqttc holds the oldest unnumbered publish back until `pkid` is acknowledged.
    pub(super) fn on_publish_held_back(&self, pkid: u16) {
        let mut inner = self.lock();
        if let Some(pending) = inner.unnumbered.pop_front() {
            if let Some((_, earlier)) = inner.collided.replace((pkid, pending)) {
                earlier.settle(Err(PublishError::ConnectionLost));
            }
        }
    }

    pub(super) fn on_puback(&self, ack: &PubAck) {
        let pending = self.lock().in_flight.remove(&ack.pkid);
        let outcome = match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
            reason => Err(PublishError::Rejected {
                reason: puback_reason_name(reason),
            }),
        };
        match pending {
            Some(pending) => pending.settle(outcome),
            None => tracing::debug!(pkid = ack.pkid, "mqtt_puback_without_waiter"),
        }
    }

    pub(super) fn on_subscribe_sent(&self, pkid: u16) {
        let mut inner = self.lock();
        if let Some(id) = inner.unnumbered_subscribes.pop_front() {
            inner.subscribes_in_flight.insert(pkid, id);
        }
    }

    pub(super) fn on_suback(&self, ack: &SubAck) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(id) = inner.subscribes_in_flight.remove(&ack.pkid) else {
            return;
        };
        let Some(entry) = inner.subscriptions.get(&id) else {
            return; // unsubscribed meanwhile
        };
        match ack.return_codes.first() {
            Some(SubscribeReasonCode::Success(_)) => {
                entry.active.send_replace(true);
            }
            reason => tracing::warn!(
                filter = %entry.subscribe_filter,
                reason = ?reason,
                "mqtt_subscription_refused"
            ),
        }
    }

    /// A message arrived: hand it to the subscriptions it was sent for.
    pub(super) fn on_message(&self, publish: Publish) {
        metrics::counter!(telemetry::MQTT_RECEIVED).increment(1);
        let topic = match String::from_utf8(publish.topic.to_vec()) {
            Ok(topic) => topic,
            Err(_) => {
                tracing::warn!("mqtt_message_with_invalid_topic");
                return;
            }
        };
        let message = ReceivedMessage {
            topic,
            payload: publish.payload,
            retained: publish.retain,
        };
        let identifiers = publish
            .properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default();
        let mut guard = self.lock();
        let inner = &mut *guard;
        // The broker names the subscriptions a message matched when it supports subscription
        // identifiers; otherwise match the topic against every filter.
        let targets: Vec<u32> = if identifiers.is_empty() {
            inner
                .subscriptions
                .iter()
                .filter(|(_, s)| topic::matches(&s.filter, &message.topic))
                .map(|(id, _)| *id)
                .collect()
        } else {
            identifiers
                .iter()
                .filter_map(|id| u32::try_from(*id).ok())
                .collect()
        };
        for id in targets {
            let Some(entry) = inner.subscriptions.get_mut(&id) else {
                continue;
            };
            let len = message.payload.len();
            let room = entry
                .queued_bytes
                .load(Ordering::Relaxed)
                .saturating_add(len)
                <= entry.max_bytes;
            let sent = if room {
                entry.queued_bytes.fetch_add(len, Ordering::Relaxed);
                let sent = entry.sender.try_send(message.clone());
                if sent.is_err() {
                    entry.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                }
                sent
            } else {
                Err(mpsc::error::TrySendError::Full(message.clone()))
            };
            match sent {
                Ok(()) => entry.overflowing = false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(telemetry::MQTT_RECEIVED_DROPPED).increment(1);
                    if !entry.overflowing {
                        entry.overflowing = true;
                        tracing::warn!(
                            filter = %entry.subscribe_filter,
                            "mqtt_messages_dropped: the subscriber is not keeping up"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

fn fail_all(inner: &mut Inner, error: PublishError) {
    let unnumbered = std::mem::take(&mut inner.unnumbered);
    let in_flight = std::mem::take(&mut inner.in_flight);
    let collided = inner.collided.take().map(|(_, pending)| pending);
    for pending in unnumbered
        .into_iter()
        .chain(collided)
        .chain(in_flight.into_values())
    {
        pending.settle(Err(error.clone()));
    }
    inner.unnumbered_subscribes.clear();
    inner.subscribes_in_flight.clear();
}

fn puback_reason_name(reason: PubAckReason) -> &'static str {
    match reason {
        PubAckReason::Success => "success",
        PubAckReason::NoMatchingSubscribers => "no_matching_subscribers",
        PubAckReason::UnspecifiedError => "unspecified_error",
        PubAckReason::ImplementationSpecificError => "implementation_specific_error",
        PubAckReason::NotAuthorized => "not_authorized",
        PubAckReason::TopicNameInvalid => "topic_name_invalid",
        PubAckReason::PacketIdentifierInUse => "packet_identifier_in_use",
        PubAckReason::QuotaExceeded => "quota_exceeded",
        PubAckReason::PayloadFormatInvalid => "payload_format_invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::MqttClient;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::{EventLoop, MqttOptions};

    /// A client whose event loop is driven by hand: the test plays rumqttc's events.
    fn client_driven_by_hand() -> (MqttClient, EventLoop) {
        // Never polled: requests pile up in its queue, which holds more than these tests send.
        let (requests, eventloop) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 64);
        let shared = Arc::new(Shared::new(
            requests,
            Duration::from_secs(5),
            "test".into(),
            "mqtt://127.0.0.1:1".into(),
        ));
        (MqttClient { shared }, eventloop)
    }

    fn connack() -> ConnAck {
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: None,
        }
    }

    fn puback(pkid: u16, reason: PubAckReason) -> PubAck {
        PubAck {
            pkid,
            reason,
            properties: None,
        }
    }

    /// Starts a publish and waits until it is handed to rumqttc (so hand-over order is known).
    async fn handed_over(
        client: &MqttClient,
        topic: &'static str,
    ) -> tokio::task::JoinHandle<Result<(), PublishError>> {
        let before = client.shared.lock().unnumbered.len();
        let publisher = client.clone();
        let task = tokio::spawn(async move { publisher.publish(topic, Bytes::new()).await });
        while client.shared.lock().unnumbered.len() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn messages_waiting_for_a_subscriber_are_bounded_by_their_bytes() {
        let (client, _eventloop) = client_driven_by_hand();
        let options = crate::mqtt::SubscribeOptions {
            buffer: 1000,
            max_bytes: 10 * 1024,
            ..Default::default()
        };
        let mut subscription = client.subscribe("logs", options).unwrap();
        let arrive = |payload: Vec<u8>| {
            client
                .shared
                .on_message(Publish::new("logs", QoS::AtLeastOnce, payload, None));
        };
        // Twenty 1 KiB messages nobody reads: ten fit, the rest are dropped although the
        // channel has room for a thousand.
        for i in 0..20u8 {
            arrive(vec![i; 1024]);
        }
        let mut waiting = Vec::new();
        while let Some(message) = subscription.try_recv() {
            waiting.push(message.payload[0]);
        }
        assert_eq!(waiting, (0..10).collect::<Vec<u8>>());
        // Read messages make room again.
        arrive(vec![20; 1024]);
        assert_eq!(subscription.try_recv().map(|m| m.payload[0]), Some(20));
    }

    #[tokio::test]
    async fn each_acknowledgement_settles_the_publish_it_belongs_to() {
        let (client, _eventloop) = client_driven_by_hand();
        client.shared.on_connected(&connack());
        let a = handed_over(&client, "t/a").await;
        let b = handed_over(&client, "t/b").await;
        let c = handed_over(&client, "t/c").await;
        let shared = &client.shared;

        shared.on_publish_sent(1); // a
        shared.on_publish_held_back(1); // b waits until 1 is acknowledged
        shared.on_publish_sent(2); // c
        shared.on_puback(&puback(2, PubAckReason::NotAuthorized));
        assert_eq!(
            c.await.unwrap(),
            Err(PublishError::Rejected {
                reason: "not_authorized"
            })
        );
        shared.on_puback(&puback(1, PubAckReason::Success));
        assert_eq!(a.await.unwrap(), Ok(()));
        assert!(!b.is_finished());
        shared.on_publish_sent(1); // rumqttc now sends b under id 1
        shared.on_puback(&puback(1, PubAckReason::NoMatchingSubscribers));
        assert_eq!(b.await.unwrap(), Ok(()));
        assert!(!shared.has_unacknowledged());
    }

    #[tokio::test]
    async fn a_lost_connection_fails_every_publish_waiting_for_its_acknowledgement() {
        let (client, _eventloop) = client_driven_by_hand();
        client.shared.on_connected(&connack());
        let sent = handed_over(&client, "t/sent").await;
        client.shared.on_publish_sent(1);
        let queued = handed_over(&client, "t/queued").await;
        client.shared.on_disconnected(PublishError::ConnectionLost);
        assert_eq!(sent.await.unwrap(), Err(PublishError::ConnectionLost));
        assert_eq!(queued.await.unwrap(), Err(PublishError::ConnectionLost));
        assert_eq!(client.state(), ConnectionState::Connecting);
        // An acknowledgement of the old connection settles nothing of a new one.
        client.shared.on_connected(&connack());
        let next = handed_over(&client, "t/next").await;
        client.shared.on_puback(&puback(1, PubAckReason::Success));
        assert!(!next.is_finished());
        client.shared.on_publish_sent(1);
        client.shared.on_puback(&puback(1, PubAckReason::Success));
        assert_eq!(next.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn messages_larger_than_the_broker_accepts_are_refused_before_sending() {
        let (client, _eventloop) = client_driven_by_hand();
        let mut ack = connack();
        ack.properties = Some(rumqttc::v5::mqttbytes::v5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: Some(100),
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        client.shared.on_connected(&ack);
        let outcome = client.publish("t", Bytes::from(vec![0; 100])).await;
        assert_eq!(
            outcome,
            Err(PublishError::TooLarge {
                size: 108,
                max: 100
            })
        );
        assert!(client.shared.lock().unnumbered.is_empty());
    }
}
