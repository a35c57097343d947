//! Reconnecting, shutting down, and the connection metrics.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use iotsupport::mqtt::{ConnectionState, PublishError, SubscribeOptions};
use tokio::time::{timeout, Instant};

use crate::support::*;

#[tokio::test]
async fn the_client_reconnects_and_resubscribes_after_the_broker_restarts() {
    let Some(mut broker) = Broker::start("the_client_reconnects").await else {
        return;
    };
    let mut settings = settings(&broker.url());
    settings.publish_timeout = Duration::from_secs(2);
    let client = start(settings);
    let topic = unique_topic("restart");
    let mut subscription = subscribed(&client, &topic, SubscribeOptions::default()).await;
    client
        .publish(&topic, Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, "before");

    broker.kill();
    until("the client notices", || !client.is_connected()).await;
    assert!(!subscription.is_active());
    let started = Instant::now();
    assert_eq!(
        client
            .publish(&topic, Bytes::from_static(b"while down"))
            .await,
        Err(PublishError::NotConnected)
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    broker.restart().await;
    assert!(client.wait_connected(Duration::from_secs(40)).await);
    assert!(
        subscription.wait_active(Duration::from_secs(10)).await,
        "subscribed again"
    );
    client
        .publish(&topic, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload, "after");
    let more = drain(&mut subscription, Duration::from_millis(300)).await;
    assert!(
        more.is_empty(),
        "nothing published while down arrives: {more:?}"
    );
}

#[tokio::test]
async fn shutdown_settles_every_publish_and_disconnects_cleanly() {
    let Some(broker) = Broker::start("shutdown_settles_every_publish").await else {
        return;
    };
    let topic = unique_topic("shutdown");
    let receiver = start(settings(&broker.url()));
    let mut subscription = subscribed(
        &receiver,
        &topic,
        SubscribeOptions {
            buffer: 1000,
            ..SubscribeOptions::default()
        },
    )
    .await;
    let publisher = start(settings(&broker.url()));
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);

    let publishes: Vec<_> = (0..300)
        .map(|i| {
            let publisher = publisher.client.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                (
                    i,
                    publisher.publish(&topic, Bytes::from(i.to_string())).await,
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.shutdown.cancel();
    let mut acknowledged = HashSet::new();
    for publish in publishes {
        let (i, outcome) = timeout(Duration::from_secs(10), publish)
            .await
            .expect("every publish settles")
            .unwrap();
        match outcome {
            Ok(()) => {
                acknowledged.insert(i.to_string());
            }
            Err(PublishError::ShuttingDown) => {}
            Err(other) => panic!("publish {i}: {other}"),
        }
    }
    timeout(Duration::from_secs(10), publisher.stopped())
        .await
        .expect("stopped");
    assert_eq!(publisher.state(), ConnectionState::Stopped);
    assert_eq!(
        publisher.publish(&topic, Bytes::new()).await,
        Err(PublishError::ShuttingDown)
    );

    // Everything acknowledged was delivered.
    assert!(!acknowledged.is_empty());
    let mut delivered = HashSet::new();
    while !acknowledged.is_subset(&delivered) {
        let message = next(&mut subscription).await;
        delivered.insert(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    // DISCONNECT was sent (Mosquitto logs an abrupt end as "closed its connection").
    let disconnected = format!("Client {} disconnected.", publisher.client_id());
    until("the broker logs the disconnect", || {
        broker.log().contains(&disconnected)
    })
    .await;

    // A stopped client's subscriptions end.
    receiver.shutdown.cancel();
    assert_eq!(
        timeout(Duration::from_secs(10), subscription.recv())
            .await
            .unwrap(),
        None
    );
}

fn metric(rendered: &str, name: &str) -> Option<f64> {
    rendered.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[test]
fn the_connection_metrics_follow_the_connection() {
    // Metrics go to a recorder of this test only: on a current-thread runtime every task of the
    // client runs on this thread, inside `with_local_recorder`.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let Some(mut broker) = Broker::start("the_connection_metrics").await else {
                return;
            };
            let mut settings = settings(&broker.url());
            settings.publish_timeout = Duration::from_millis(500);
            let client = start(settings);
            assert!(client.wait_connected(Duration::from_secs(10)).await);
            let rendered = handle.render();
            assert_eq!(metric(&rendered, "mqtt_connected"), Some(1.0), "{rendered}");
            client.publish("t/metrics", Bytes::new()).await.unwrap();
            assert_eq!(metric(&handle.render(), "mqtt_published_total"), Some(1.0));

            broker.kill();
            until("disconnected", || !client.is_connected()).await;
            assert_eq!(metric(&handle.render(), "mqtt_connected"), Some(0.0));
            assert!(client.publish("t/metrics", Bytes::new()).await.is_err());
            assert_eq!(
                metric(
                    &handle.render(),
                    "mqtt_publish_failures_total{reason=\"not_connected\"}"
                ),
                Some(1.0)
            );

            broker.restart().await;
            assert!(client.wait_connected(Duration::from_secs(40)).await);
            let rendered = handle.render();
            assert_eq!(metric(&rendered, "mqtt_connected"), Some(1.0), "{rendered}");
            assert_eq!(metric(&rendered, "mqtt_reconnects_total"), Some(1.0));

            client.shutdown.cancel();
            client.stopped().await;
            assert_eq!(metric(&handle.render(), "mqtt_connected"), Some(0.0));
        });
    });
}
