//! No broker, a frozen or killed broker, a broker that refuses: every publish gets its answer.

use std::time::Duration;

use bytes::Bytes;
use iotsupport::config::{unique_client_id, MqttUrl};
use iotsupport::mqtt::{ConnectionState, PublishError, SubscribeError, SubscribeOptions};
use tokio::time::{timeout, Instant};

use crate::support::*;

#[tokio::test]
async fn publishing_without_a_broker_fails_within_the_timeout() {
    // Nothing listens on this port (it was free a moment ago); no broker is needed.
    let url = MqttUrl::parse(&format!("mqtt://127.0.0.1:{}", free_port())).unwrap();
    let mut settings = settings(&url);
    settings.publish_timeout = Duration::from_secs(1);
    let client = start(settings);

    let started = Instant::now();
    let outcome = client
        .publish("iotsupport/updates/config", Bytes::new())
        .await;
    let took = started.elapsed();
    assert_eq!(outcome, Err(PublishError::NotConnected));
    assert!(outcome.unwrap_err().is_transient());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(client.state(), ConnectionState::Connecting);
}

#[tokio::test]
async fn invalid_topics_and_filters_are_refused_at_once() {
    let url = MqttUrl::parse(&format!("mqtt://127.0.0.1:{}", free_port())).unwrap();
    let client = start(settings(&url));
    let outcome = client.publish("iotsupport/+/config", Bytes::new()).await;
    assert!(
        matches!(outcome, Err(PublishError::InvalidTopic { .. })),
        "{outcome:?}"
    );
    assert!(!outcome.unwrap_err().is_transient());
    assert!(matches!(
        client.subscribe("a/#/b", SubscribeOptions::default()),
        Err(SubscribeError::InvalidFilter { .. })
    ));
    let bad_group = SubscribeOptions {
        shared_group: Some("a/b".into()),
        ..SubscribeOptions::default()
    };
    assert!(matches!(
        client.subscribe("iotsupport/logsink", bad_group),
        Err(SubscribeError::InvalidGroup { .. })
    ));
    let kept = client
        .subscribe("iotsupport/logsink", SubscribeOptions::default())
        .unwrap();
    assert_eq!(
        client
            .subscribe("iotsupport/logsink", SubscribeOptions::default())
            .unwrap_err(),
        SubscribeError::AlreadySubscribed("iotsupport/logsink".into())
    );
    drop(kept);
    // Dropping a subscription frees its filter.
    client
        .subscribe("iotsupport/logsink", SubscribeOptions::default())
        .unwrap();
}

#[tokio::test]
async fn an_mqtts_client_starts_with_the_system_roots() {
    // TLS is set up at start; connecting fails here since nothing listens (no broker needed).
    let url = MqttUrl::parse(&format!("mqtts://127.0.0.1:{}", free_port())).unwrap();
    let mut settings = settings(&url);
    settings.publish_timeout = Duration::from_millis(500);
    let client = start(settings);
    assert_eq!(
        client.publish("t", Bytes::new()).await,
        Err(PublishError::NotConnected)
    );
}

#[tokio::test]
async fn a_publish_the_broker_never_acknowledges_times_out_and_a_lost_connection_fails_at_once() {
    let Some(broker) = Broker::start("a_publish_the_broker_never_acknowledges").await else {
        return;
    };
    let mut settings = settings(&broker.url());
    settings.publish_timeout = Duration::from_secs(1);
    let client = start(settings.clone());
    assert!(client.wait_connected(Duration::from_secs(10)).await);

    // Frozen: the connection stays open, nothing is acknowledged.
    broker.signal("STOP");
    let started = Instant::now();
    assert_eq!(
        client.publish("t/frozen", Bytes::from_static(b"1")).await,
        Err(PublishError::TimedOut)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    broker.signal("CONT");
    // The broker acknowledges the late message to nobody; the next one works.
    client
        .publish("t/frozen", Bytes::from_static(b"2"))
        .await
        .unwrap();

    // A message waiting for its acknowledgement when the connection ends fails then, not at
    // its deadline.
    let mut patient = settings.clone();
    patient.client_id = unique_client_id("iotsupport-test");
    patient.publish_timeout = Duration::from_secs(20);
    let patient = start(patient);
    assert!(patient.wait_connected(Duration::from_secs(10)).await);
    let mut broker = broker;
    broker.signal("STOP");
    let waiting = {
        let patient = patient.client.clone();
        tokio::spawn(async move { patient.publish("t/lost", Bytes::from_static(b"3")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    broker.kill();
    let outcome = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("settled before its deadline")
        .unwrap();
    assert_eq!(outcome, Err(PublishError::ConnectionLost));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn messages_the_broker_refuses_fail_without_dropping_the_connection() {
    // Anonymous clients may only publish under allowed/; packets are limited to 2 KiB.
    let Some(broker) = Broker::start_with(
        "messages_the_broker_refuses",
        "acl_file {dir}/acl\nmax_packet_size 2048",
        &[("acl", "topic readwrite allowed/#\n")],
    )
    .await
    else {
        return;
    };
    let client = start(settings(&broker.url()));
    assert!(client.wait_connected(Duration::from_secs(10)).await);

    let outcome = client
        .publish("allowed/big", Bytes::from(vec![b'x'; 4096]))
        .await;
    assert!(
        matches!(outcome, Err(PublishError::TooLarge { max: 2048, .. })),
        "{outcome:?}"
    );
    assert_eq!(
        client.publish("denied/x", Bytes::from_static(b"no")).await,
        Err(PublishError::Rejected {
            reason: "not_authorized"
        })
    );
    // Not authorised stays not authorised: a queue drops such a message rather than retrying it.
    assert!(!PublishError::Rejected {
        reason: "not_authorized"
    }
    .is_transient());
    assert!(client.is_connected());
    client
        .publish("allowed/x", Bytes::from_static(b"yes"))
        .await
        .unwrap();

    // Concurrent publishes with different outcomes: each gets its own message's answer.
    let publishes = (0..200).map(|i| {
        let client = client.client.clone();
        let topic = if i % 3 == 0 { "denied/x" } else { "allowed/x" };
        tokio::spawn(async move {
            (
                topic,
                client.publish(topic, Bytes::from(i.to_string())).await,
            )
        })
    });
    for publish in futures::future::join_all(publishes).await {
        match publish.unwrap() {
            ("allowed/x", outcome) => assert_eq!(outcome, Ok(())),
            (_, outcome) => assert_eq!(
                outcome,
                Err(PublishError::Rejected {
                    reason: "not_authorized"
                })
            ),
        }
    }
}
