//! The MQTT client (`src/mqtt/`) against a real Mosquitto.
//!
//! `scripts/test.sh` starts a shared broker (`IOTSUPPORT_TEST_MQTT_URL`) and names the binary
//! (`IOTSUPPORT_TEST_MOSQUITTO`), which tests that stop, freeze or restart a broker use to start
//! their own on a free 127.0.0.1 port. Without them these tests print `SKIP` and pass (they fail
//! under `IOTSUPPORT_TEST_REQUIRE_SERVICES=1`); the ones that need no broker always run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use iotsupport::config::{unique_client_id, MqttSettings, MqttUrl};
use iotsupport::mqtt::{
    ConnectionState, MqttClient, PublishError, ReceivedMessage, SubscribeError, SubscribeOptions,
    Subscription,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

// --- helpers ------------------------------------------------------------------------------------

fn services_required() -> bool {
    std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The broker `scripts/test.sh` started, or `None` with a SKIP line.
fn shared_broker(test: &str) -> Option<MqttUrl> {
    match std::env::var("IOTSUPPORT_TEST_MQTT_URL") {
        Ok(url) => Some(MqttUrl::parse(&url).expect("IOTSUPPORT_TEST_MQTT_URL")),
        Err(_) if services_required() => panic!("{test}: IOTSUPPORT_TEST_MQTT_URL not set"),
        Err(_) => {
            eprintln!("SKIP {test}: no MQTT broker configured; run scripts/test.sh");
            None
        }
    }
}

/// The mosquitto binary for tests that run their own broker, or `None` with a SKIP line.
fn mosquitto_binary(test: &str) -> Option<PathBuf> {
    match std::env::var("IOTSUPPORT_TEST_MOSQUITTO") {
        Ok(path) => Some(PathBuf::from(path)),
        Err(_) if services_required() => panic!("{test}: IOTSUPPORT_TEST_MOSQUITTO not set"),
        Err(_) => {
            eprintln!("SKIP {test}: no mosquitto binary configured; run scripts/test.sh");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto process this test controls, listening on 127.0.0.1 only.
struct Broker {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Broker {
    /// Starts a broker with the minimal configuration; `None` (SKIP) without a mosquitto binary.
    async fn start(test: &str) -> Option<Broker> {
        Broker::start_with(test, "", &[]).await
    }

    /// Starts a broker with the minimal configuration plus `extra` lines, in which `{dir}` names
    /// the directory holding `files` (name, contents).
    async fn start_with(test: &str, extra: &str, files: &[(&str, &str)]) -> Option<Broker> {
        let binary = mosquitto_binary(test)?;
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to its own user: it must still read these files.
        set_mode(dir.path(), 0o755);
        for (name, contents) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            set_mode(&path, 0o644);
        }
        let port = free_port();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type all\n{extra}\n"
        );
        let config_path = dir.path().join("mosquitto.conf");
        std::fs::write(&config_path, config).unwrap();
        set_mode(&config_path, 0o644);
        let mut broker = Broker {
            binary,
            port,
            dir,
            child: None,
        };
        broker.run().await;
        Some(broker)
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> MqttUrl {
        MqttUrl::parse(&format!("mqtt://127.0.0.1:{}", self.port)).unwrap()
    }

    /// Kills the broker (no goodbye to its clients: their connections just end).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    /// SIGSTOP / SIGCONT: a frozen broker keeps its connections open but answers nothing.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen broker must be thawed to die cleanly.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn settings(url: &MqttUrl) -> MqttSettings {
    let mut settings = MqttSettings::for_url(url.clone());
    settings.client_id = unique_client_id("iotsupport-test");
    settings.publish_timeout = Duration::from_secs(5);
    settings
}

/// A started client and the token that stops it (cancelled when the guard is dropped).
struct Running {
    client: MqttClient,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::ops::Deref for Running {
    type Target = MqttClient;
    fn deref(&self) -> &MqttClient {
        &self.client
    }
}

fn start(settings: MqttSettings) -> Running {
    let shutdown = CancellationToken::new();
    let client = MqttClient::start(&settings, shutdown.clone()).expect("start");
    Running { client, shutdown }
}

fn unique_topic(test: &str) -> String {
    format!("iotsupport-test/{test}/{}", uuid::Uuid::new_v4().simple())
}

async fn subscribed(client: &MqttClient, topic: &str, options: SubscribeOptions) -> Subscription {
    let mut subscription = client.subscribe(topic, options).unwrap();
    assert!(
        subscription.wait_active(Duration::from_secs(10)).await,
        "the broker did not grant {topic}"
    );
    subscription
}

async fn next(subscription: &mut Subscription) -> ReceivedMessage {
    timeout(Duration::from_secs(10), subscription.recv())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}

/// Whatever arrives within `quiet` of the previous message (or of the call).
async fn drain(subscription: &mut Subscription, quiet: Duration) -> Vec<ReceivedMessage> {
    let mut messages = Vec::new();
    while let Ok(Some(message)) = timeout(quiet, subscription.recv()).await {
        messages.push(message);
    }
    messages
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- delivery -----------------------------------------------------------------------------------

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

    let quiet = Duration::from_millis(700);
    let (to_first, to_second, to_plain) = tokio::join!(
        drain(&mut first_subscription, quiet),
        drain(&mut second_subscription, quiet),
        drain(&mut plain, quiet)
    );
    assert_eq!(to_plain.len(), COUNT, "a plain subscriber gets everything");
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

// --- failures -----------------------------------------------------------------------------------

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

// --- shutdown and metrics ---------------------------------------------------------------------

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
    let delivered: HashSet<String> = drain(&mut subscription, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert!(
        acknowledged.is_subset(&delivered),
        "{} acknowledged, {} delivered",
        acknowledged.len(),
        delivered.len()
    );
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
