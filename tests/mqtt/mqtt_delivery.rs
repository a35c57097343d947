//! Messages reach subscribers: QoS 1, not retained, concurrent, shared subscriptions.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use iotsupport::mqtt::{ConnectionState, SubscribeOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

use crate::support::*;

#[tokio::test]
async fn a_published_message_reaches_a_subscriber_once_the_broker_acknowledged_it() {
    let Some(url) = shared_broker("a_published_message_reaches_a_subscriber") else {
        return;
    };
    let topic = unique_topic("delivery");
    let receiver = start(settings(&url));
    let mut subscription = subscribed(&receiver, &topic, SubscribeOptions::default()).await;

    let publisher = start(settings(&url));
    let payload = Bytes::from_static(br#"{"client_id": "iotdevice-thermo-abc12345"}"#);
    publisher.publish(&topic, payload.clone()).await.unwrap();

    let message = next(&mut subscription).await;
    assert_eq!(message.topic, topic);
    assert_eq!(message.payload, payload);
    assert!(!message.retained);
}

#[tokio::test]
async fn publishes_wait_for_the_first_connection_instead_of_being_dropped() {
    let Some(url) = shared_broker("publishes_wait_for_the_first_connection") else {
        return;
    };
    // The Python service dropped a message published before its CONNACK arrived.
    let publisher = start(settings(&url));
    assert_eq!(publisher.state(), ConnectionState::Connecting);
    publisher
        .publish(&unique_topic("first"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(publisher.is_connected());
}

#[tokio::test]
async fn messages_go_out_with_qos_1_and_unretained_so_a_late_subscriber_gets_nothing() {
    let Some(url) = shared_broker("messages_go_out_with_qos_1_and_unretained") else {
        return;
    };
    let topic = unique_topic("qos");
    // An independent client: mosquitto_sub subscribed with QoS 1 reports the QoS and retain flag
    // of what it receives (a subscriber gets at most the QoS the message was published with).
    // (stdbuf: its debug lines would otherwise sit in a pipe buffer.)
    let mut observer = tokio::process::Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &url.port.to_string(),
        ])
        .args(["-t", &topic, "-q", "1", "-C", "1", "-W", "20", "-d"])
        .args(["-F", "MESSAGE qos=%q retain=%r %t %p"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    let mut lines = BufReader::new(observer.stdout.take().unwrap()).lines();
    timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before subscribing");
    })
    .await
    .expect("mosquitto_sub subscribed");

    let publisher = start(settings(&url));
    publisher
        .publish(&topic, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let seen = timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(message) = line.strip_prefix("MESSAGE ") {
                return message.to_string();
            }
        }
        panic!("mosquitto_sub ended without a message");
    })
    .await
    .expect("mosquitto_sub received the message");
    assert_eq!(seen, format!("qos=1 retain=0 {topic} hello"));

    // Not retained: a subscriber that arrives afterwards gets nothing.
    let late = start(settings(&url));
    let mut subscription = subscribed(&late, &topic, SubscribeOptions::default()).await;
    let late_messages = drain(&mut subscription, Duration::from_millis(500)).await;
    assert!(late_messages.is_empty(), "{late_messages:?}");
}

#[tokio::test]
async fn many_concurrent_publishes_are_each_acknowledged_and_delivered() {
    let Some(url) = shared_broker("many_concurrent_publishes") else {
        return;
    };
    let topic = unique_topic("concurrent");
    let receiver = start(settings(&url));
    let mut subscription = subscribed(
        &receiver,
        &topic,
        SubscribeOptions {
            buffer: 2000,
            ..SubscribeOptions::default()
        },
    )
    .await;
    let publisher = start(settings(&url));
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);

    // Far more than Mosquitto's receive maximum (20 in flight), so packet ids are reused many
    // times over while earlier messages are still being acknowledged.
    const COUNT: usize = 600;
    let publishes = (0..COUNT).map(|i| {
        let publisher = publisher.client.clone();
        let topic = topic.clone();
        tokio::spawn(async move { publisher.publish(&topic, Bytes::from(i.to_string())).await })
    });
    let outcomes = futures::future::join_all(publishes).await;
    for outcome in outcomes {
        outcome.unwrap().unwrap();
    }

    let mut received = HashSet::new();
    while received.len() < COUNT {
        let message = next(&mut subscription).await;
        let payload = String::from_utf8(message.payload.to_vec()).unwrap();
        assert!(received.insert(payload.clone()), "{payload} received twice");
    }
    let expected: HashSet<String> = (0..COUNT).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member_of_the_group() {
    let Some(url) = shared_broker("a_shared_subscription") else {
        return;
    };
    let topic = unique_topic("logsink");
    let group = format!("g{}", uuid::Uuid::new_v4().simple());
    let shared = || SubscribeOptions {
        shared_group: Some(group.clone()),
        ..SubscribeOptions::default()
    };
    let (first, second, everything) = (
        start(settings(&url)),
        start(settings(&url)),
        start(settings(&url)),
    );
    let mut first_subscription = subscribed(&first, &topic, shared()).await;
    let mut second_subscription = subscribed(&second, &topic, shared()).await;
    assert_eq!(
        first_subscription.filter(),
        format!("$share/{group}/{topic}")
    );
    let mut plain = subscribed(&everything, &topic, SubscribeOptions::default()).await;

    const COUNT: usize = 40;
    let publisher = start(settings(&url));
    for i in 0..COUNT {
        publisher
            .publish(&topic, Bytes::from(format!("line {i}")))
            .await
            .unwrap();
    }

    for _ in 0..COUNT {
        next(&mut plain).await; // a plain subscriber gets everything
    }
    let (mut to_first, mut to_second) = (Vec::new(), Vec::new());
    while to_first.len() + to_second.len() < COUNT {
        tokio::select! {
            message = next(&mut first_subscription) => to_first.push(message),
            message = next(&mut second_subscription) => to_second.push(message),
        }
    }
    // Nothing more (no message reaches both members).
    let quiet = Duration::from_millis(300);
    to_first.extend(drain(&mut first_subscription, quiet).await);
    to_second.extend(drain(&mut second_subscription, quiet).await);
    let mut seen = HashSet::new();
    for message in to_first.iter().chain(&to_second) {
        assert_eq!(message.topic, topic, "the topic, never the $share filter");
        assert!(seen.insert(message.payload.clone()), "delivered twice");
    }
    assert_eq!(seen.len(), COUNT, "every message reached the group once");
    assert!(
        !to_first.is_empty() && !to_second.is_empty(),
        "both members got a share: {} and {}",
        to_first.len(),
        to_second.len()
    );
}
