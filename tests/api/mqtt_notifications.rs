//! Device notifications over MQTT against a real Mosquitto (SPEC §14): each topic and payload,
//! nothing for a failed or rolled-back change, a broker down while changes happen, two processes
//! publishing each message once, pacing, and nothing at all without `MQTT_URL`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use iotsupport::mqtt::{ReceivedMessage, SubscribeOptions, Subscription};
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;
use serde_json::{json, Value};

use crate::coredumps::TestDevice;
use crate::credentials_support::{client_id, model_with_devices};
use crate::firmware_support::Build;
use crate::helpers::*;
use crate::mqtt_support::{self as broker, Broker};

/// App settings for MQTT on `url`, with a log group of its own.
pub fn mqtt_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("MQTT_URL".into(), url.to_string()),
        // Firmware messages wait for the lookup cache's TTL (see
        // `firmware_messages_wait_until_other_processes_serve_the_new_image`); these tests look
        // at what arrives, at once.
        ("DEVICE_LOOKUP_CACHE_SECONDS".into(), "0".into()),
        (
            "MQTT_LOG_GROUP".into(),
            format!("t{}", uuid::Uuid::new_v4().simple()),
        ),
    ]
}

/// Checks that two processes of a test connect with client ids of their own, as separate
/// processes do: sharing one, the broker would drop each connection in turn for the other.
pub fn assert_own_client_ids(a: &TestApp, b: &TestApp) {
    let id = |app: &TestApp| {
        app.state
            .mqtt
            .as_ref()
            .expect("MQTT configured")
            .client_id()
            .to_string()
    };
    assert_ne!(id(a), id(b), "two processes share one MQTT client id");
}

pub fn as_pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A subscriber to every notification topic on `url`.
async fn listener(url: &iotsupport::config::MqttUrl) -> (broker::Running, Subscription) {
    let running = broker::start(broker::settings(url));
    let subscription = broker::subscribed(
        &running.client,
        "iotsupport/updates/#",
        SubscribeOptions::default(),
    )
    .await;
    (running, subscription)
}

/// What arrived for these client ids, as (topic, payload), until nothing came for `quiet`.
async fn arrived(
    subscription: &mut Subscription,
    ours: &[String],
    quiet: Duration,
) -> Vec<(String, Value)> {
    broker::drain(subscription, quiet)
        .await
        .into_iter()
        .filter_map(|m: ReceivedMessage| {
            let payload: Value = serde_json::from_slice(&m.payload).ok()?;
            let id = payload["client_id"].as_str()?.to_string();
            ours.contains(&id).then_some((m.topic, payload))
        })
        .collect()
}

fn ids(model: &str, devices: &[TestDevice]) -> Vec<String> {
    devices.iter().map(|d| client_id(model, d)).collect()
}

async fn queued(app: &TestApp) -> i64 {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications"
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

#[tokio::test]
async fn every_change_publishes_its_message_after_commit_and_failures_publish_nothing() {
    let Some(url) = broker::shared_broker("notifications") else {
        return;
    };
    for stack in ALL_STACKS {
        let env = mqtt_env(&url.to_string());
        let Some(app) =
            spawn_app_with(stack, "notifications", &as_pairs(&env), Default::default()).await
        else {
            continue;
        };
        let (_client, mut sub) = listener(&url).await;
        let devices = model_with_devices(&app, "notif", 2).await;
        let ours = ids("notif", &devices);
        let model_id = devices[0].model_id;

        // Firmware: one message per device of the model, with the new version.
        let first = Build::new("1.0.0", "a");
        assert_eq!(
            app.upload_firmware(model_id, first.zip("notif")).await.0,
            200
        );
        let got = arrived(&mut sub, &ours, Duration::from_secs(2)).await;
        let mut expected: Vec<(String, Value)> = ours
            .iter()
            .map(|id| {
                (
                    "iotsupport/updates/firmware".to_string(),
                    json!({"client_id": id, "firmware_version": "1.0.0"}),
                )
            })
            .collect();
        let mut sorted = got.clone();
        sorted.sort_by_key(|a| a.1.to_string());
        expected.sort_by_key(|a| a.1.to_string());
        assert_eq!(sorted, expected, "{stack:?}");

        // Re-uploading the current version changes nothing and publishes nothing.
        assert_eq!(
            app.upload_firmware(model_id, first.zip("notif")).await.0,
            200
        );
        // A failed upload (S3 down half-way) publishes nothing.
        app.faults.inject(Fault::always(Operation::Put));
        assert_eq!(
            app.upload_firmware(model_id, Build::new("2.0.0", "b").zip("notif"))
                .await
                .0,
            503
        );
        app.faults.heal();
        assert!(arrived(&mut sub, &ours, Duration::from_secs(2))
            .await
            .is_empty());

        // A rollback publishes the version it makes current.
        assert_eq!(
            app.upload_firmware(model_id, Build::new("2.0.0", "b").zip("notif"))
                .await
                .0,
            200
        );
        assert_eq!(
            arrived(&mut sub, &ours, Duration::from_secs(2)).await.len(),
            2
        );
        assert_eq!(app.set_current_firmware(model_id, "1.0.0").await.0, 200);
        let rolled = arrived(&mut sub, &ours, Duration::from_secs(2)).await;
        assert_eq!(rolled.len(), 2);
        assert!(rolled.iter().all(|(_, p)| p["firmware_version"] == "1.0.0"));

        // Config: after every successful update; a refused one publishes nothing.
        let (status, _) = app
            .update_device(devices[0].id, json!({"config": "{}", "active": true}))
            .await;
        assert_eq!(status, 200);
        let (status, _) = app
            .update_device(devices[1].id, json!({"config": "not json", "active": true}))
            .await;
        assert_eq!(status, 400);
        let config = arrived(&mut sub, &ours, Duration::from_secs(2)).await;
        assert_eq!(
            config,
            [(
                "iotsupport/updates/config".to_string(),
                json!({"client_id": ours[0]})
            )]
        );

        // Provisioning: when a device enters PENDING.
        let (status, _) = call(
            &app,
            http::Method::POST,
            &format!("/api/devices/{}/rotate", devices[1].id),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let provisioning = arrived(&mut sub, &ours, Duration::from_secs(2)).await;
        assert_eq!(
            provisioning,
            [(
                "iotsupport/updates/provisioning".to_string(),
                json!({"client_id": ours[1]})
            )]
        );
        assert!(
            eventually(Duration::from_secs(5), || async { queued(&app).await == 0 }).await,
            "acknowledged messages stay queued"
        );
        app.stop().await;
    }
}

/// A TCP relay to a broker that the test can cut (relayed connections closed, new ones refused)
/// and restore: for the app behind it, a broker that goes down and comes back, while the test's
/// own subscriber, connected to the broker directly, is subscribed before the app can publish.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relayed: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: (String, u16)) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let relayed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_open, tasks) = (open.clone(), relayed.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Relay {
            port,
            open,
            relayed,
            accepting,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.relayed.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

#[tokio::test]
async fn a_broker_that_is_down_delays_notifications_and_loses_none() {
    let Some(own) = Broker::start("notifications_down").await else {
        return;
    };
    let relay = Relay::start((own.url().host, own.url().port)).await;
    let env = mqtt_env(&format!("mqtt://127.0.0.1:{}", relay.port));
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "notifications_down",
        &as_pairs(&env),
        Default::default(),
    )
    .await
    else {
        return;
    };
    assert!(app.mqtt_connected().await);
    // The broker goes away for the app: its connection is cut, new ones are refused.
    relay.cut();
    let devices = model_with_devices(&app, "down", 3).await;
    let ours = ids("down", &devices);
    assert_eq!(
        app.upload_firmware(devices[0].model_id, Build::new("1.0.0", "a").zip("down"))
            .await
            .0,
        200,
        "an upload must not wait for the broker"
    );
    for d in &devices {
        app.update_device(d.id, json!({"config": "{}", "active": true}))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        queued(&app).await,
        6,
        "messages are kept while the broker is down"
    );

    // Subscribed before the broker is back for the app (a message published before a subscriber
    // exists is gone for it, whatever the app did right).
    let (_client, mut sub) = listener(&own.url()).await;
    relay.restore();
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.values().sum::<usize>() < 6 && Instant::now() < deadline {
        for (topic, payload) in arrived(&mut sub, &ours, Duration::from_secs(1)).await {
            *got.entry((topic, payload["client_id"].as_str().unwrap().to_string()))
                .or_default() += 1;
        }
    }
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            queued(&app).await == 0
        })
        .await,
        "delivered messages stay queued"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_processes_publish_each_message_once() {
    let Some(url) = broker::shared_broker("notifications_twins") else {
        return;
    };
    let mut env = mqtt_env(&url.to_string());
    // Delivery is at least once: a publish whose PUBACK is late is sent again. On a loaded
    // machine that must not pass for a second process publishing it.
    env.push(("MQTT_PUBLISH_TIMEOUT_SECONDS".into(), "60".into()));
    for stack in ALL_STACKS {
        let Some((a, b)) = spawn_twins(stack, "notifications_twins", &as_pairs(&env)).await else {
            continue;
        };
        assert_own_client_ids(&a, &b);
        let (_client, mut sub) = listener(&url).await;
        let devices = model_with_devices(&a, "twins", 40).await;
        let ours = ids("twins", &devices);
        assert_eq!(
            b.upload_firmware(devices[0].model_id, Build::new("1.0.0", "a").zip("twins"))
                .await
                .0,
            200
        );
        let mut counts: HashMap<String, usize> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while counts.len() < 40 && Instant::now() < deadline {
            for (topic, payload) in arrived(&mut sub, &ours, Duration::from_secs(1)).await {
                *counts
                    .entry(format!(
                        "{topic} {}",
                        payload["client_id"].as_str().unwrap()
                    ))
                    .or_default() += 1;
            }
        }
        // Anything late would show now.
        for (topic, payload) in arrived(&mut sub, &ours, Duration::from_secs(2)).await {
            *counts
                .entry(format!(
                    "{topic} {}",
                    payload["client_id"].as_str().unwrap()
                ))
                .or_default() += 1;
        }
        assert_eq!(counts.len(), 40, "{stack:?}");
        // Each message was taken and acknowledged by one process only …
        let (sa, sb) = (&a.state.notify_stats, &b.state.notify_stats);
        assert_eq!(
            sa.published() + sb.published(),
            40,
            "{stack:?}: acknowledged {} + {} times",
            sa.published(),
            sb.published()
        );
        // … and arrived more than once only when a failed attempt was retried (at least once).
        let duplicates: usize = counts.values().map(|n| n - 1).sum();
        let retried = sa.retried() + sb.retried();
        assert!(
            duplicates as u64 <= retried,
            "{stack:?}: {duplicates} duplicate(s) with {retried} retries: {counts:?}"
        );
        if duplicates > 0 {
            eprintln!("{stack:?}: {duplicates} duplicate(s) after {retried} retried publish(es)");
        }
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn firmware_messages_to_a_big_model_are_paced() {
    let Some(url) = broker::shared_broker("notifications_pacing") else {
        return;
    };
    let mut env = mqtt_env(&url.to_string());
    env.push(("MQTT_NOTIFICATIONS_PER_SECOND".into(), "20".into()));
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "notifications_pacing",
        &as_pairs(&env),
        Default::default(),
    )
    .await
    else {
        return;
    };
    let (_client, mut sub) = listener(&url).await;
    let devices = model_with_devices(&app, "paced", 40).await;
    let ours = ids("paced", &devices);
    let started = Instant::now();
    assert_eq!(
        app.upload_firmware(devices[0].model_id, Build::new("1.0.0", "a").zip("paced"))
            .await
            .0,
        200
    );
    // When each of our messages arrived.
    let mut times = Vec::new();
    while times.len() < 40 && started.elapsed() < Duration::from_secs(30) {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await
        else {
            continue;
        };
        let payload: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        if payload["client_id"]
            .as_str()
            .is_some_and(|id| ours.iter().any(|o| o == id))
        {
            times.push(Instant::now());
        }
    }
    assert_eq!(times.len(), 40);
    // Each message leaves on its own tick, although up to 16 may await their PUBACK at once: the
    // first 16 are 15 ticks (750 ms) apart when sent. Half of that, as a lower bound.
    assert!(
        times[15] - times[0] >= Duration::from_millis(375),
        "the first 16 messages arrived within {:?}: sent in a burst",
        times[15] - times[0]
    );
    // 40 messages at 20 per second cannot all arrive in under (40 − 1) / 20 s. (A lower bound
    // only: a slow machine makes it longer, never shorter.)
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "40 messages in {:?}: not paced",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn without_mqtt_nothing_is_queued() {
    for_each_stack("no_mqtt", &[], async |app| {
        let devices = model_with_devices(app, "quiet", 2).await;
        assert_eq!(
            app.upload_firmware(devices[0].model_id, Build::new("1.0.0", "a").zip("quiet"))
                .await
                .0,
            200
        );
        app.update_device(devices[0].id, json!({"config": "{}", "active": true}))
            .await;
        assert_eq!(queued(app).await, 0);
        let (status, body) = call(
            app,
            http::Method::GET,
            &format!("/api/devices/{}/logs", devices[0].id),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["logs"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn a_commit_that_fails_publishes_nothing() {
    let Some(url) = broker::shared_broker("notifications_commit") else {
        return;
    };
    let env = mqtt_env(&url.to_string());
    let Some(app) = spawn_app_with(
        Stack::Production,
        "notifications_commit",
        &as_pairs(&env),
        Default::default(),
    )
    .await
    else {
        return;
    };
    let (_client, mut sub) = listener(&url).await;
    let devices = model_with_devices(&app, "commitfail", 3).await;
    let ours = ids("commitfail", &devices);
    // Every statement succeeds; the COMMIT fails (a deferred constraint trigger runs there).
    for statement in [
        "CREATE FUNCTION planted_commit_failure() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'planted commit failure'; END $$",
        "CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON notifications
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION planted_commit_failure()",
    ] {
        iotsupport::on_pool!(app.db(), |p| sqlx::query(statement)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
    }
    let model_id = devices[0].model_id;
    let (status, body) = app
        .upload_firmware(model_id, Build::new("1.0.0", "a").zip("commitfail"))
        .await;
    assert!(status >= 500, "{status} {body}");
    let listed = crate::firmware_support::versions(&app, model_id).await;
    assert!(
        crate::firmware_support::version_names(&listed).is_empty(),
        "{listed}"
    );
    assert!(arrived(&mut sub, &ours, Duration::from_secs(2))
        .await
        .is_empty());
    assert_eq!(queued(&app).await, 0);

    // The same upload once commits work again: every device hears of it.
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "DROP TRIGGER fail_at_commit ON notifications"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(
        app.upload_firmware(model_id, Build::new("1.0.0", "a").zip("commitfail"))
            .await
            .0,
        200
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(arrived(&mut sub, &ours, Duration::from_secs(1)).await);
    }
    assert_eq!(got.len(), 3, "{got:?}");
    app.stop().await;
}

/// A notification of `kind` for `client_id`, due at `now`, written straight into the queue.
async fn queue_notification(
    db: &iotsupport::db::Db,
    kind: &str,
    client_id: &str,
    now: DateTime<Utc>,
) {
    iotsupport::on_pool!(db, |p| sqlx::query(
        "INSERT INTO notifications (kind, client_id, created_at, next_attempt_at)
         VALUES ($1, $2, $3, $3)"
    )
    .bind(kind)
    .bind(client_id)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

#[tokio::test]
async fn a_publisher_whose_lease_ran_out_settles_nothing_another_has_taken() {
    use iotsupport::db::notifications as queue;
    for_each_stack("notify_lease", &[], async |app| {
        let db = app.db();
        let now = iotsupport::db::now().trunc_subsecs(3);
        for client in ["iotdevice-m-1", "iotdevice-m-2", "iotdevice-m-3"] {
            queue_notification(db, "config", client, now).await;
        }
        let rows = async || -> Vec<(Option<DateTime<Utc>>, i32, Option<String>)> {
            iotsupport::on_pool!(db, |p| sqlx::query_as(
                "SELECT lease_until, attempts, last_error FROM notifications ORDER BY id"
            )
            .fetch_all(p)
            .await)
            .unwrap()
        };
        // Process A takes the three rows; its lease has run out when process B takes them.
        let lease_a = now + chrono::Duration::milliseconds(1);
        let a = queue::claim(db, now, lease_a, 10).await.unwrap();
        assert_eq!(a.len(), 3);
        let later = now + chrono::Duration::seconds(1);
        let lease_b = later + chrono::Duration::seconds(60);
        let b = queue::claim(db, later, lease_b, 10).await.unwrap();
        assert_eq!(b.len(), 3);

        // A, late, settles with its own lease: none of B's rows changes.
        queue::delete(db, &[a[0].id], lease_a).await.unwrap();
        queue::retry(db, a[1].id, lease_a, later, "late")
            .await
            .unwrap();
        queue::release(db, &[a[2].id], lease_a).await.unwrap();
        assert_eq!(rows().await, vec![(Some(lease_b), 2, None); 3]);

        // B's own settlements take effect.
        queue::delete(db, &[b[0].id], lease_b).await.unwrap();
        queue::retry(db, b[1].id, lease_b, later, "timeout")
            .await
            .unwrap();
        queue::release(db, &[b[2].id], lease_b).await.unwrap();
        assert_eq!(
            rows().await,
            vec![(None, 2, Some("timeout".to_string())), (None, 1, None)]
        );
    })
    .await;
}

/// A message being published when a newer one of its kind for the same device is queued (a
/// rollback while the fan-out goes out) is withdrawn with the others: if its publish fails or
/// never started, nothing is put back, also when another process has delivered the newer one
/// already. Put back, it would go out after the newer one, announcing the version rolled back.
#[tokio::test]
async fn a_held_message_that_was_replaced_meanwhile_is_dropped_not_put_back() {
    use iotsupport::db::notifications as queue;
    for_each_stack("notify_replaced_held", &[], async |app| {
        let db = app.db();
        let now = iotsupport::db::now().trunc_subsecs(3);
        for client in ["iotdevice-m-1", "iotdevice-m-2", "iotdevice-m-3"] {
            queue_notification(db, "firmware", client, now).await;
        }
        let lease = now + chrono::Duration::seconds(60);
        let held = queue::claim(db, now, lease, 10).await.unwrap();
        assert_eq!(held.len(), 3);
        // A newer message, queued as every change queues one.
        let replace = async |kind: &str, client: &str| {
            let mut tx = db.begin().await.unwrap();
            queue::supersede(&mut tx, kind, client).await.unwrap();
            tx.commit().await.unwrap();
            queue_notification(db, kind, client, now).await;
        };
        replace("firmware", "iotdevice-m-1").await;
        replace("firmware", "iotdevice-m-2").await;
        replace("config", "iotdevice-m-3").await;
        // Another process delivers device 1's newer message before this one's publish fails.
        iotsupport::on_pool!(db, |p| sqlx::query(
            "DELETE FROM notifications WHERE client_id = 'iotdevice-m-1'"
        )
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let later = now + chrono::Duration::seconds(5);
        queue::retry(db, held[0].id, lease, later, "timeout")
            .await
            .unwrap();
        queue::release(db, &[held[1].id, held[2].id], lease)
            .await
            .unwrap();
        let left: Vec<(i64, String, String)> = iotsupport::on_pool!(db, |p| sqlx::query_as(
            "SELECT id, client_id, kind FROM notifications ORDER BY id"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        let left: Vec<(bool, &str, &str)> = left
            .iter()
            .map(|(id, client, kind)| (*id == held[2].id, client.as_str(), kind.as_str()))
            .collect();
        assert_eq!(
            left,
            [
                // Another kind is no replacement: device 3's firmware message goes back.
                (true, "iotdevice-m-3", "firmware"),
                (false, "iotdevice-m-2", "firmware"),
                (false, "iotdevice-m-3", "config"),
            ]
        );
    })
    .await;
}

/// A rotation's provisioning message (or a config change's) queued behind a model's firmware
/// fan-out is published first: at the publish rate a large fleet's firmware messages would
/// outlast the rotation's timeout.
#[tokio::test]
async fn a_devices_own_message_is_claimed_before_a_firmware_fan_out_queued_earlier() {
    use iotsupport::db::notifications as queue;
    for_each_stack("notify_claim_order", &[], async |app| {
        let db = app.db();
        let now = iotsupport::db::now().trunc_subsecs(3);
        let mut queued = vec![("firmware", "iotdevice-m-0".to_string())];
        queued.extend((1..50).map(|i| ("firmware", format!("iotdevice-m-{i}"))));
        queued.push(("provisioning", "iotdevice-m-7".into()));
        queued.push(("config", "iotdevice-m-8".into()));
        for (kind, client) in &queued {
            queue_notification(db, kind, client, now).await;
        }
        let lease = now + chrono::Duration::seconds(60);
        let claimed = queue::claim(db, now, lease, 4).await.unwrap();
        let got: Vec<(&str, &str)> = claimed
            .iter()
            .map(|n| (n.kind.as_str(), n.client_id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("provisioning", "iotdevice-m-7"),
                ("config", "iotdevice-m-8"),
                ("firmware", "iotdevice-m-0"),
                ("firmware", "iotdevice-m-1"),
            ]
        );
    })
    .await;
}

/// A batch taken just as the process stops is put back as it was (due, no attempt counted) for
/// another process, rather than each row waiting for its tick only to fail and be retried later.
#[tokio::test]
async fn a_batch_taken_as_the_process_stops_is_put_back_untouched() {
    use iotsupport::notify::publisher::{publish_due, Pacer, PublisherStats};
    // A broker that is never reachable: nothing could be published anyway.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    for_each_stack(
        "notify_stop_mid_batch",
        &[("MQTT_URL", &url)],
        async |app| {
            let db = app.db();
            let now = iotsupport::db::now().trunc_subsecs(3);
            for client in ["iotdevice-m-1", "iotdevice-m-2", "iotdevice-m-3"] {
                queue_notification(db, "config", client, now).await;
            }
            let client = app.state.mqtt.clone().expect("an MQTT client");
            let stopping = tokio_util::sync::CancellationToken::new();
            stopping.cancel();
            let taken = publish_due(
                db,
                &client,
                &mut Pacer::new(100.0),
                &PublisherStats::default(),
                &stopping,
            )
            .await
            .unwrap();
            assert_eq!(taken, 3);
            let rows: Vec<(Option<DateTime<Utc>>, i32, DateTime<Utc>)> =
                iotsupport::on_pool!(db, |p| sqlx::query_as(
                    "SELECT lease_until, attempts, next_attempt_at FROM notifications ORDER BY id"
                )
                .fetch_all(p)
                .await)
                .unwrap();
            assert_eq!(rows, vec![(None, 0, now); 3]);
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_device_withdraws_the_messages_still_queued_for_it() {
    // A broker that is never reachable: messages stay queued.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    for_each_stack("notify_deleted", &[("MQTT_URL", &url)], async |app| {
        let devices = model_with_devices(app, "gone", 2).await;
        for device in &devices {
            app.update_device(device.id, json!({"config": "{}", "active": true}))
                .await;
        }
        assert_eq!(queued(app).await, 2);
        let (status, body) = call(
            app,
            http::Method::DELETE,
            &format!("/api/devices/{}", devices[0].id),
            None,
        )
        .await;
        assert_eq!(status, 204, "{body}");
        // The other device's message stays.
        let left: Vec<String> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT client_id FROM notifications"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        assert_eq!(left, [client_id("gone", &devices[1])]);
    })
    .await;
}

#[tokio::test]
async fn firmware_messages_wait_until_other_processes_serve_the_new_image() {
    // A broker that is never reachable: messages stay queued to be looked at.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    let overrides = [
        ("MQTT_URL", url.as_str()),
        ("DEVICE_LOOKUP_CACHE_SECONDS", "5"),
    ];
    for_each_stack("notify_firmware_delay", &overrides, async |app| {
        let devices = model_with_devices(app, "later", 2).await;
        assert_eq!(
            app.upload_firmware(devices[0].model_id, Build::new("1.0.0", "a").zip("later"))
                .await
                .0,
            200
        );
        app.update_device(devices[0].id, json!({"config": "{}", "active": true}))
            .await;
        let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> =
            iotsupport::on_pool!(app.db(), |p| sqlx::query_as(
                "SELECT kind, created_at, next_attempt_at FROM notifications ORDER BY id"
            )
            .fetch_all(p)
            .await)
            .unwrap();
        let waits: Vec<(&str, i64)> = rows
            .iter()
            .map(|(kind, created, due)| (kind.as_str(), (*due - *created).num_seconds()))
            .collect();
        // Another process may serve the previous image for the lookup cache's 5 s; a config
        // message has nothing cached to wait for.
        assert_eq!(waits, [("firmware", 5), ("firmware", 5), ("config", 0)]);
    })
    .await;
}

/// The firmware message's wait for the other processes' caches counts from the commit: an upload
/// whose PUTs take seconds must not queue messages already due when they become visible.
#[tokio::test]
async fn a_slow_uploads_firmware_messages_wait_from_its_commit() {
    // A broker that is never reachable: messages stay queued to be looked at.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    let overrides = [
        ("MQTT_URL", url.as_str()),
        ("DEVICE_LOOKUP_CACHE_SECONDS", "5"),
    ];
    for_each_stack("notify_firmware_slow_upload", &overrides, async |app| {
        let devices = model_with_devices(app, "slow", 1).await;
        app.faults
            .slow_put_answers(std::time::Duration::from_secs(3));
        let zip = Build::new("1.0.0", "a").zip("slow");
        assert_eq!(app.upload_firmware(devices[0].model_id, zip).await.0, 200);
        let answered = Utc::now();
        let due: DateTime<Utc> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT next_attempt_at FROM notifications WHERE kind = 'firmware'"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        // Queued before the PUTs, it would be due about 2 s after the answer; from the commit,
        // about 5 s after it.
        let wait = (due - answered).num_milliseconds();
        assert!(wait > 4_000, "due {wait} ms after the upload's answer");
    })
    .await;
}

/// A rotation that ended takes along its provisioning message still queued (the broker away): a
/// device that timed out, had its secret replaced or completed is not sent for a package later,
/// and after an outage the devices that timed out meanwhile do not all fetch one at once. Each
/// step leaves the message of the device that started next.
#[tokio::test]
async fn a_rotation_that_ended_withdraws_its_queued_provisioning_message() {
    // A broker that is never reachable: messages stay queued to be looked at; no rotation step
    // but the test's own.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    let overrides = [("MQTT_URL", url.as_str()), ("WORKER_POLL_SECONDS", "3600")];
    for stack in ALL_STACKS {
        let Some(app) = crate::credentials_support::app_with_provisioning(
            stack,
            "notify_rotation_ended",
            &overrides,
        )
        .await
        else {
            continue;
        };
        let owned = app;
        let app = &owned;
        let devices = model_with_devices(app, "rot", 3).await;
        let provisioning = async || -> Vec<String> {
            iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT client_id FROM notifications WHERE kind = 'provisioning' ORDER BY id"
            )
            .fetch_all(p)
            .await)
            .unwrap()
        };
        let pending = async || -> TestDevice {
            let id: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT id FROM devices WHERE rotation_state = 'PENDING'"
            )
            .fetch_one(p)
            .await)
            .unwrap();
            devices.iter().find(|d| d.id == id).unwrap().clone()
        };
        let (status, body) = call(app, http::Method::POST, "/api/rotation/trigger", None).await;
        assert_eq!(status, 200, "{body}");
        let first = pending().await;
        assert_eq!(provisioning().await, [client_id("rot", &first)]);

        // It times out.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE devices SET last_rotation_attempt_at = $1 WHERE id = $2"
        )
        .bind(Utc::now() - chrono::Duration::days(1))
        .bind(first.id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let report =
            iotsupport::credentials::rotation::run_job(app.db(), &app.state.config.rotation)
                .await
                .unwrap();
        assert_eq!(report.timeouts_processed, 1);
        let second = pending().await;
        assert_ne!(second.id, first.id);
        assert_eq!(provisioning().await, [client_id("rot", &second)]);

        // An admin replaces its secret.
        assert_eq!(app.replace_device_secret(second.id).await.0, 200);
        let third = pending().await;
        assert!(third.id != first.id && third.id != second.id);
        assert_eq!(provisioning().await, [client_id("rot", &third)]);

        // A publisher holds its message (about to send it); it fetches its package on its own
        // and completes with the new secret: the held message goes too, not to be put back. The
        // first device's retry is not due, so nothing starts.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE notifications SET lease_until = $1 WHERE kind = 'provisioning'"
        )
        .bind(Utc::now() + chrono::Duration::minutes(5))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let (status, package) =
            crate::credentials_support::iot_get(app, "/api/iot/provisioning", &third.credential)
                .await;
        assert_eq!(status, 200, "{package}");
        let secret = package["client_secret"].as_str().unwrap();
        let rotated = format!("{}.{secret}", third.key);
        let (status, body) =
            crate::credentials_support::iot_get(app, "/api/iot/config", &rotated).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            crate::credentials_support::rotation_state(app, third.id).await,
            "OK"
        );
        assert_eq!(provisioning().await, Vec::<String>::new());
        owned.stop().await;
    }
}

/// A newer message replaces the same kind of message still queued for a device: the fan-out of
/// a version that was replaced (a quick rollback) before it went out is withdrawn, and a second
/// config write leaves one config message. A message a publisher holds goes too (its publish, under way, is not put back).
#[tokio::test]
async fn a_newer_message_replaces_the_queued_one_of_its_kind() {
    // A broker that is never reachable: messages stay queued to be looked at.
    let url = format!("mqtt://127.0.0.1:{}", broker::free_port());
    let overrides = [
        ("MQTT_URL", url.as_str()),
        ("DEVICE_LOOKUP_CACHE_SECONDS", "0"),
    ];
    for_each_stack("notify_superseded", &overrides, async |app| {
        let devices = model_with_devices(app, "roll", 2).await;
        let other = model_with_devices(app, "keep", 1).await;
        for (model, version) in [(&devices, "1.0.0"), (&other, "1.0.0"), (&devices, "1.1.0")] {
            let code = if model[0].model_id == devices[0].model_id {
                "roll"
            } else {
                "keep"
            };
            let (status, body) = app
                .upload_firmware(model[0].model_id, Build::new(version, "a").zip(code))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        // A publisher holds one of the first fan-out's messages (it is going out right now).
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE notifications SET lease_until = $1
             WHERE id = (SELECT MIN(id) FROM notifications WHERE firmware_version = '1.1.0')"
        )
        .bind(Utc::now() + chrono::Duration::minutes(5))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let (status, body) = app
            .upload_firmware(devices[0].model_id, Build::new("1.0.1", "b").zip("roll"))
            .await;
        assert_eq!(status, 200, "{body}");
        for _ in 0..2 {
            app.update_device(devices[1].id, json!({"config": "{}", "active": true}))
                .await;
        }
        let rows: Vec<(String, String, Option<String>)> =
            iotsupport::on_pool!(app.db(), |p| sqlx::query_as(
                "SELECT kind, client_id, firmware_version FROM notifications ORDER BY id"
            )
            .fetch_all(p)
            .await)
            .unwrap();
        let roll = ids("roll", &devices);
        let keep = ids("keep", &other);
        let firmware =
            |id: &String, v: &str| ("firmware".to_string(), id.clone(), Some(v.to_string()));
        assert_eq!(
            rows,
            [
                // Another model's fan-out is not touched.
                firmware(&keep[0], "1.0.0"),
                // 1.0.0's fan-out to this model was replaced by 1.1.0's, and that, the message
                // a publisher holds included, by 1.0.1's.
                firmware(&roll[0], "1.0.1"),
                firmware(&roll[1], "1.0.1"),
                ("config".to_string(), roll[1].clone(), None),
            ],
            "{:?}",
            app.stack
        );
    })
    .await;
}
