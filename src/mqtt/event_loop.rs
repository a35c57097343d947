//! The task that drives rumqttc: polls its event loop, maps events onto waiting publishes and
//! subscriptions, reconnects with back-off, and shuts down gracefully.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use rumqttc::v5::{ConnectionError, Event, EventLoop, MqttState, StateError};
use rumqttc::Outgoing;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use super::{Backoff, PublishError, MAX_IN_FLIGHT, STABLE_CONNECTION};
use crate::telemetry;

pub(super) struct LoopSettings {
    pub backoff: Backoff,
    pub shutdown_grace: Duration,
}

/// Runs until `shutdown` fires and the client has disconnected. Never panics outward: a panic
/// inside rumqttc is logged and ends the client as if it had been shut down.
pub(super) async fn run(
    eventloop: EventLoop,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    settings: LoopSettings,
) {
    let driven = AssertUnwindSafe(drive(eventloop, &shared, shutdown, settings))
        .catch_unwind()
        .await;
    if driven.is_err() {
        tracing::error!(
            broker = %shared.broker,
            "mqtt_event_loop_panicked: the MQTT client has stopped"
        );
    }
    shared.stop();
}

async fn drive(
    mut eventloop: EventLoop,
    shared: &Shared,
    shutdown: CancellationToken,
    settings: LoopSettings,
) {
    // Consecutive failed connections (or connections that did not last); drives the back-off.
    let mut failures: u32 = 0;
    // Failed attempts since the last connection, for the log line of the next one.
    let mut failed_attempts: u32 = 0;
    let mut connected_since: Option<Instant> = None;
    let mut ever_connected = false;
    // The kind of the last failure logged at warn level while disconnected: the same failure
    // again is logged at debug level only.
    let mut logged_failure: Option<String> = None;

    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                shared.on_connected(&connack);
                tracing::info!(
                    broker = %shared.broker,
                    client_id = %shared.client_id,
                    failed_attempts,
                    "mqtt_connected"
                );
                if ever_connected {
                    metrics::counter!(telemetry::MQTT_RECONNECTS).increment(1);
                }
                ever_connected = true;
                connected_since = Some(Instant::now());
                logged_failure = None;
                failed_attempts = 0;
            }
            Ok(event) => dispatch(shared, event),
            Err(error) => {
                // Messages read in the same batch as the failure (a broker's DISCONNECT right
                // after a burst) are handed over before the old session's state goes.
                deliver_received(shared, &mut eventloop);
                shared.on_disconnected(PublishError::ConnectionLost);
                start_over(&mut eventloop);
                match connected_since.take() {
                    Some(since) => {
                        tracing::warn!(
                            broker = %shared.broker,
                            error = %error,
                            hint = hint(&error),
                            "mqtt_connection_lost"
                        );
                        if since.elapsed() >= STABLE_CONNECTION {
                            failures = 0;
                        }
                    }
                    None => {
                        failed_attempts = failed_attempts.saturating_add(1);
                        let kind = failure_kind(&error);
                        if logged_failure.as_deref() == Some(kind.as_str()) {
                            tracing::debug!(broker = %shared.broker, error = %error, "mqtt_connect_failed");
                        } else {
                            tracing::warn!(
                                broker = %shared.broker,
                                error = %error,
                                hint = hint(&error),
                                "mqtt_broker_unreachable: retrying in the background"
                            );
                            logged_failure = Some(kind);
                        }
                    }
                }
                let delay = settings.backoff.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    shut_down(&mut eventloop, shared, settings.shutdown_grace).await;
}

/// Hands one event of an established connection to the shared state.
fn dispatch(shared: &Shared, event: Event) {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => shared.on_publish_sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => shared.on_publish_held_back(pkid),
        Event::Incoming(Packet::PubAck(ack)) => shared.on_puback(&ack),
        Event::Outgoing(Outgoing::Subscribe(pkid)) => shared.on_subscribe_sent(pkid),
        Event::Incoming(Packet::SubAck(ack)) => shared.on_suback(&ack),
        Event::Incoming(Packet::Publish(publish)) => shared.on_message(publish),
        _ => {}
    }
}

/// The messages rumqttc read from the broker but had not handed out when the connection failed
/// (it reads several packets at once and queues their events).
fn deliver_received(shared: &Shared, eventloop: &mut EventLoop) {
    for event in std::mem::take(&mut eventloop.state.events) {
        if let Event::Incoming(Packet::Publish(publish)) = event {
            shared.on_message(publish);
        }
    }
}

/// After a lost connection: everything rumqttc still holds belongs to the old session, which
/// clean start discards on the broker too. Requests that reached its queue before
/// `on_disconnected` (their waiters have failed) are drained with `clean()` and dropped, and its
/// state is replaced, so packet ids and events start afresh and can never be matched to a
/// waiter of the new connection.
fn start_over(eventloop: &mut EventLoop) {
    eventloop.clean();
    eventloop.pending.clear();
    eventloop.state = MqttState::new(MAX_IN_FLIGHT, false);
}

/// Shutdown: refuse new publishes, give those sent `grace` to be acknowledged, fail the rest,
/// send DISCONNECT.
async fn shut_down(eventloop: &mut EventLoop, shared: &Shared, grace: Duration) {
    let mut connected = shared.begin_shutdown();
    let deadline = Instant::now() + grace;
    while connected && shared.has_unacknowledged() {
        match timeout_at(deadline, eventloop.poll()).await {
            Err(_elapsed) => break,
            Ok(Ok(event)) => dispatch(shared, event),
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "mqtt_connection_lost_while_shutting_down");
                connected = false;
            }
        }
    }
    shared.fail_all(if connected {
        PublishError::ShuttingDown
    } else {
        PublishError::ConnectionLost
    });
    if connected && shared.requests.try_disconnect().is_ok() {
        // Until DISCONNECT is written; rumqttc takes no new request while its in-flight window
        // is full, so this is bounded too.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(event)) => dispatch(shared, event),
            }
        }
    }
    tracing::info!(broker = %shared.broker, "mqtt_disconnected");
}

/// A coarse kind of connection failure, to log a change of failure once.
fn failure_kind(error: &ConnectionError) -> String {
    match error {
        ConnectionError::Io(e) => format!("io:{:?}", e.kind()),
        ConnectionError::ConnectionRefused(code) => format!("refused:{code:?}"),
        ConnectionError::Timeout(_) => "timeout".into(),
        ConnectionError::Tls(_) => "tls".into(),
        ConnectionError::MqttState(_) => "protocol".into(),
        ConnectionError::NotConnAck(_) => "not_connack".into(),
        ConnectionError::RequestsDone => "requests_done".into(),
    }
}

/// What an operator should check, for failures with a likely cause (logged only when there is
/// one).
fn hint(error: &ConnectionError) -> Option<&'static str> {
    match error {
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        }) => Some("another client connected with the same client id (MQTT_CLIENT_ID)"),
        // Mosquitto takes a client id over from its older connection without a DISCONNECT.
        ConnectionError::MqttState(StateError::ConnectionAborted) => Some(
            "the broker closed the connection: if this repeats, another client may use the same \
             client id (MQTT_CLIENT_ID); the broker's log says why",
        ),
        ConnectionError::ConnectionRefused(_) => Some(
            "the broker refused the connection: check MQTT_USERNAME, MQTT_PASSWORD and MQTT_CLIENT_ID",
        ),
        ConnectionError::Tls(_) => {
            Some("TLS failed: is the broker's certificate trusted by the system?")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::MqttClient;
    use rumqttc::v5::mqttbytes::v5::Publish;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    /// Messages rumqttc read in the same batch as a failure are queued in its state, which
    /// `start_over` replaces: they are handed out first, not dropped with it.
    #[tokio::test]
    async fn messages_read_with_a_failure_are_delivered_before_the_state_is_replaced() {
        let (requests, mut eventloop) =
            AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 64);
        let shared = Arc::new(Shared::new(
            requests,
            Duration::from_secs(5),
            "test".into(),
            "mqtt://127.0.0.1:1".into(),
        ));
        let client = MqttClient {
            shared: shared.clone(),
        };
        let mut subscription = client.subscribe("logs", Default::default()).unwrap();
        for line in [&b"one"[..], b"two"] {
            eventloop
                .state
                .events
                .push_back(Event::Incoming(Packet::Publish(Publish::new(
                    "logs",
                    QoS::AtLeastOnce,
                    line.to_vec(),
                    None,
                ))));
        }
        deliver_received(&shared, &mut eventloop);
        start_over(&mut eventloop);
        let mut got = Vec::new();
        while let Some(message) = subscription.try_recv() {
            got.push(message.payload.to_vec());
        }
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        assert!(eventloop.state.events.is_empty());
    }
}
