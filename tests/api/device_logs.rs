//! Device logs against a real Mosquitto (SPEC §14): lines devices publish to
//! `iotsupport/logsink` are stored per device and served with the Python service's windows and
//! paging; live lines reach the streams subscribed to them; two processes store each line once;
//! retention removes old lines and keeps each device's newest.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::events::SseReader;
use crate::fleet::create_model;
use crate::helpers::*;
use crate::mqtt_notifications::{as_pairs, assert_own_client_ids, mqtt_env};
use crate::mqtt_support as broker;

const LOGSINK: &str = "iotsupport/logsink";

/// An app on `stack` connected to the broker at `url`, with a log group of its own.
async fn logging_app(
    stack: Stack,
    test: &str,
    url: &iotsupport::config::MqttUrl,
) -> Option<TestApp> {
    let env = mqtt_env(&url.to_string());
    spawn_app_with(stack, test, &as_pairs(&env), Default::default()).await
}

/// A device of a fresh model with `deviceEntityId` = `entity` (none when `None`); its id.
async fn device_with_entity(app: &TestApp, model_id: i64, entity: Option<&str>) -> i64 {
    let config = match entity {
        Some(e) => json!({ "deviceEntityId": e }).to_string(),
        None => "{}".to_string(),
    };
    let (status, device) = app.create_device(model_id, &config).await;
    assert_eq!(status, 201, "{device}");
    device["id"].as_i64().unwrap()
}

fn entity(name: &str) -> String {
    format!("sensor.{name}_{}", uuid::Uuid::new_v4().simple())
}

/// One NDJSON payload of these `(entity_id, message)` documents.
fn ndjson(lines: &[(&str, &str)]) -> Bytes {
    let text: Vec<String> = lines
        .iter()
        .map(|(entity, message)| {
            json!({"entity_id": entity, "message": message, "relative_time": 12}).to_string()
        })
        .collect();
    Bytes::from(text.join("\n"))
}

async fn stored_lines(app: &TestApp, device_id: i64) -> i64 {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM device_logs WHERE device_id = $1"
    )
    .bind(device_id)
    .fetch_one(p)
    .await)
    .unwrap()
}

async fn all_stored(app: &TestApp) -> i64 {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM device_logs"
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

/// Waits until `device_id` has `n` stored lines (fails after 20 s).
async fn until_stored(app: &TestApp, device_id: i64, n: i64) {
    assert!(
        eventually(Duration::from_secs(20), || async {
            stored_lines(app, device_id).await >= n
        })
        .await,
        "device {device_id}: {} of {n} lines stored",
        stored_lines(app, device_id).await
    );
}

fn messages(page: &Value) -> Vec<String> {
    page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("ISO 8601")
        .with_timezone(&Utc)
}

fn enc(t: DateTime<Utc>) -> String {
    crate::credentials_support::urlencode(&t.to_rfc3339())
}

/// A live stream of `app` with `request_id`, past its `version` message, subscribed to the lines
/// of `device`.
async fn subscribed_stream(app: &TestApp, request_id: &str, device: i64) -> SseReader {
    let mut stream = SseReader::open_as(app, request_id).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );
    let (status, body) = app
        .device_log_subscription(
            "subscribe",
            json!({"request_id": request_id, "device_id": device}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    stream
}

/// The messages of the `device-logs` lines `stream` sends until it has `n` of them, or nothing
/// comes for `wait`; other messages are passed to `other`.
async fn streamed_lines(
    stream: &mut SseReader,
    n: usize,
    wait: Duration,
    mut other: impl FnMut(&Value),
) -> Vec<String> {
    let mut streamed = Vec::new();
    while streamed.len() < n {
        let Some(event) = stream.next(wait).await else {
            break;
        };
        if event["type"] != "device-logs" {
            other(&event);
            continue;
        }
        for line in event["payload"]["logs"].as_array().unwrap() {
            streamed.push(line["message"].as_str().unwrap().to_string());
        }
    }
    streamed
}

#[tokio::test]
async fn published_lines_are_stored_per_device_and_served_like_the_original() {
    let Some(url) = broker::shared_broker("device_logs") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "logs", None).await;
        let (ea, eb) = (entity("a"), entity("b"));
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        let b = device_with_entity(&app, model_id, Some(&eb)).await;
        let silent = device_with_entity(&app, model_id, None).await;
        assert!(app.mqtt_connected().await, "{stack:?}: not connected");

        let mut payload = ndjson(&[
            (&ea, "\u{1b}[0;32mI (10) wifi: CONNECTED\u{1b}[0m"),
            (&eb, "b's line"),
            (&entity("nobody"), "a device we do not know"),
        ])
        .to_vec();
        payload.extend_from_slice(b"\nnot json\n{\"message\": \"no entity id\"}\n");
        publisher.publish(LOGSINK, payload.into()).await.unwrap();
        until_stored(&app, a, 1).await;
        until_stored(&app, b, 1).await;

        // No parameters: the last hour, oldest first, ANSI colours removed.
        let (status, page) = app.device_logs(a, "").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(messages(&page), ["I (10) wifi: CONNECTED"], "{stack:?}");
        assert_eq!(page["has_more"], false);
        let stamp = page["logs"][0]["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), "2026-02-07T08:00:01.500000Z".len(), "{stamp}");
        assert!(stamp.ends_with('Z'));
        assert_eq!(page["window_start"], stamp);
        assert_eq!(
            time(&page["window_end"]) - time(&page["window_start"]),
            chrono::Duration::milliseconds(1)
        );
        assert_eq!(messages(&app.device_logs(b, "").await.1), ["b's line"]);
        // Only the two lines of known devices were stored.
        assert_eq!(all_stored(&app).await, 2, "{stack:?}");

        // A device without an entity id: empty, as the original.
        let (status, page) = app.device_logs(silent, "").await;
        assert_eq!(status, 200);
        assert_eq!(
            page,
            json!({"logs": [], "has_more": false, "window_start": null, "window_end": null})
        );
        assert_eq!(app.device_logs(999_999, "").await.0, 404);
        let (status, body) = app.device_logs(a, "start=yesterday").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("start"), "{body}");

        // The query: a case-insensitive wildcard over the whole message.
        publisher
            .publish(
                LOGSINK,
                ndjson(&[
                    (&ea, "E (20) ota: Download FAILED"),
                    (&ea, "I (30) heap 50%_free"),
                ]),
            )
            .await
            .unwrap();
        until_stored(&app, a, 3).await;
        assert_eq!(
            messages(&app.device_logs(a, "query=*failed*").await.1),
            ["E (20) ota: Download FAILED"]
        );
        assert_eq!(
            messages(&app.device_logs(a, "query=*ota*").await.1).len(),
            1
        );
        assert_eq!(
            messages(&app.device_logs(a, "query=I%20(?0)*").await.1),
            ["I (10) wifi: CONNECTED", "I (30) heap 50%_free"]
        );
        // `%` and `_` are plain characters, not LIKE wildcards.
        assert_eq!(
            messages(&app.device_logs(a, "query=*50%25_*").await.1),
            ["I (30) heap 50%_free"]
        );
        assert!(messages(&app.device_logs(a, "query=*5%25%25*").await.1).is_empty());

        // A window that ends before the lines: nothing.
        let before = Utc::now() - chrono::Duration::hours(2);
        let (status, page) = app
            .device_logs(a, &format!("start={}&end={}", enc(before), enc(before)))
            .await;
        assert_eq!(status, 200);
        assert!(messages(&page).is_empty());
        app.stop().await;
    }
}

#[tokio::test]
async fn paging_through_a_burst_in_either_direction_loses_no_line() {
    let Some(url) = broker::shared_broker("device_logs_paging") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_paging", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "paging", None).await;
        let ea = entity("burst");
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        assert!(app.mqtt_connected().await);
        // 2,345 lines in one message (one arrival time), then 10 more in another.
        let burst: Vec<String> = (0..2345).map(|i| format!("line {i:04}")).collect();
        let lines: Vec<(&str, &str)> = burst.iter().map(|m| (ea.as_str(), m.as_str())).collect();
        publisher.publish(LOGSINK, ndjson(&lines)).await.unwrap();
        until_stored(&app, a, 2345).await;
        let tail: Vec<String> = (2345..2355).map(|i| format!("line {i:04}")).collect();
        let lines: Vec<(&str, &str)> = tail.iter().map(|m| (ea.as_str(), m.as_str())).collect();
        publisher.publish(LOGSINK, ndjson(&lines)).await.unwrap();
        until_stored(&app, a, 2355).await;
        let expected: Vec<String> = burst.iter().chain(&tail).cloned().collect();

        // Backwards, as the UI does: `end` a day ahead, then `end=window_start` while has_more.
        let mut pages = Vec::new();
        let mut end = Utc::now() + chrono::Duration::days(1);
        loop {
            let (status, page) = app.device_logs(a, &format!("end={}", enc(end))).await;
            assert_eq!(status, 200, "{page}");
            let got = messages(&page);
            assert!(got.len() <= 1000);
            pages.push(got);
            if page["has_more"] == false {
                break;
            }
            end = time(&page["window_start"]);
            assert!(pages.len() < 20, "paging does not end");
        }
        let backward: Vec<String> = pages.into_iter().rev().flatten().collect();
        assert_eq!(
            backward.len(),
            expected.len(),
            "{stack:?}: lines lost or repeated"
        );
        assert_eq!(backward, expected, "{stack:?}");

        // Forwards: `start` and `end`, then `start=window_end`.
        let mut forward = Vec::new();
        let mut start = Utc::now() - chrono::Duration::minutes(30);
        let end = Utc::now() + chrono::Duration::minutes(1);
        loop {
            let (status, page) = app
                .device_logs(a, &format!("start={}&end={}", enc(start), enc(end)))
                .await;
            assert_eq!(status, 200, "{page}");
            forward.extend(messages(&page));
            if page["has_more"] == false {
                break;
            }
            start = time(&page["window_end"]);
            assert!(forward.len() < 10_000, "paging does not end");
        }
        assert_eq!(forward, expected, "{stack:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn live_lines_reach_the_streams_subscribed_to_them() {
    let Some(url) = broker::shared_broker("device_logs_live") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_live", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "live", None).await;
        let (ea, eb) = (entity("a"), entity("b"));
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        let b = device_with_entity(&app, model_id, Some(&eb)).await;
        let silent = device_with_entity(&app, model_id, None).await;
        assert!(app.mqtt_connected().await);

        let mut stream = SseReader::open_as(&app, "tab-1").await;
        assert_eq!(
            stream.next(Duration::from_secs(5)).await.unwrap()["type"],
            "version"
        );
        let (status, body) = app
            .device_log_subscription("subscribe", json!({"request_id": "tab-1", "device_id": a}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"status": "subscribed", "device_entity_id": ea})
        );

        publisher
            .publish(
                LOGSINK,
                ndjson(&[(&eb, "not for tab-1"), (&ea, "\u{1b}[1mfor tab-1\u{1b}[0m")]),
            )
            .await
            .unwrap();
        let event = stream
            .next(Duration::from_secs(10))
            .await
            .expect("a device-logs event");
        assert_eq!(event["type"], "device-logs", "{event}");
        assert_eq!(event["payload"]["device_entity_id"], ea.as_str());
        let logs = event["payload"]["logs"].as_array().unwrap();
        assert_eq!(logs.len(), 1, "{event}");
        assert_eq!(logs[0]["message"], "for tab-1");
        assert_eq!(logs[0]["entity_id"], ea.as_str());
        // The same time the history gives.
        let history = app.device_logs(a, "").await.1;
        assert_eq!(logs[0]["@timestamp"], history["logs"][0]["timestamp"]);
        // b's line was stored, but did not come.
        until_stored(&app, b, 1).await;
        assert!(stream.next(Duration::from_millis(1500)).await.is_none());

        // Refusals, as the original.
        let (status, body) = app
            .device_log_subscription(
                "subscribe",
                json!({"request_id": "tab-1", "device_id": silent}),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert!(body
            .to_string()
            .contains(&format!("Device entity ID {silent} was not found")));
        let (status, _) = app
            .device_log_subscription(
                "subscribe",
                json!({"request_id": "tab-1", "device_id": a, "extra": 1}),
            )
            .await;
        assert_eq!(status, 400);
        let (status, _) = app
            .device_log_subscription("subscribe", json!({"request_id": "", "device_id": a}))
            .await;
        assert_eq!(status, 400);
        assert_eq!(
            app.device_log_subscription(
                "subscribe",
                json!({"request_id": "tab-1", "device_id": 999_999})
            )
            .await
            .0,
            404
        );

        // Unsubscribed: nothing more; a second unsubscribe finds nothing.
        let (status, body) = app
            .device_log_subscription(
                "unsubscribe",
                json!({"request_id": "tab-1", "device_id": a}),
            )
            .await;
        assert_eq!((status, body), (200, json!({"status": "unsubscribed"})));
        assert_eq!(
            app.device_log_subscription(
                "unsubscribe",
                json!({"request_id": "tab-1", "device_id": a})
            )
            .await
            .0,
            404
        );
        publisher
            .publish(LOGSINK, ndjson(&[(&ea, "after unsubscribing")]))
            .await
            .unwrap();
        until_stored(&app, a, 2).await;
        assert!(stream.next(Duration::from_millis(1500)).await.is_none());
        app.stop().await;
    }
}

#[tokio::test]
async fn two_processes_store_each_line_once_and_either_streams_it() {
    let Some(url) = broker::shared_broker("device_logs_twins") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    let env = mqtt_env(&url.to_string());
    for stack in ALL_STACKS {
        let Some((first, second)) = spawn_twins(stack, "device_logs_twins", &as_pairs(&env)).await
        else {
            continue;
        };
        assert_own_client_ids(&first, &second);
        let model_id = create_model(&first, "twins", None).await;
        let ea = entity("twin");
        let a = device_with_entity(&first, model_id, Some(&ea)).await;
        assert!(first.mqtt_connected().await && second.mqtt_connected().await);
        let mut stream = subscribed_stream(&second, "tab-2", a).await;

        let sent: Vec<String> = (0..60).map(|i| format!("message {i:02}")).collect();
        for message in &sent {
            publisher
                .publish(LOGSINK, ndjson(&[(&ea, message)]))
                .await
                .unwrap();
        }
        if !eventually(Duration::from_secs(20), || async {
            stored_lines(&first, a).await >= 60
        })
        .await
        {
            // What each process did with the lines, to tell a slow store from a lost message.
            let lines = |text: String| -> String {
                text.lines()
                    .filter(|l| l.starts_with("device_log_lines_total"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            panic!(
                "{stack:?}: {} of 60 lines stored; first: {}; second: {}",
                stored_lines(&first, a).await,
                lines(first.metrics().await),
                lines(second.metrics().await)
            );
        }
        // Anything stored twice would show by now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            stored_lines(&first, a).await,
            60,
            "{stack:?}: a line stored twice"
        );
        let stored: HashSet<String> = iotsupport::on_pool!(first.db(), |p| sqlx::query_scalar(
            "SELECT message FROM device_logs WHERE device_id = $1"
        )
        .bind(a)
        .fetch_all(p)
        .await)
        .unwrap()
        .into_iter()
        .collect();
        assert_eq!(stored, sent.iter().cloned().collect::<HashSet<_>>());

        // Every line reached the second process's stream, whichever process took it.
        let mut streamed = streamed_lines(&mut stream, 60, Duration::from_secs(10), |_| {}).await;
        streamed.sort();
        assert_eq!(streamed, sent, "{stack:?}");
        first.stop().await;
        second.stop().await;
    }
}

/// A subscription made through another process shows in a stream up to its recheck late; the
/// lines its device logged meanwhile still come (the feed catches that device up), once each, and
/// events reach the stream while the fleet logs all the time (a wake for log lines
/// alone no longer reads events, so they must not wait on those wakes).
#[tokio::test]
async fn a_subscription_made_through_another_process_gets_the_lines_logged_meanwhile() {
    let Some(url) = broker::shared_broker("device_logs_late_sub") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    let env = mqtt_env(&url.to_string());
    for stack in ALL_STACKS {
        let Some((first, second)) =
            spawn_twins(stack, "device_logs_late_sub", &as_pairs(&env)).await
        else {
            continue;
        };
        let model_id = create_model(&first, "latesub", None).await;
        let (ea, eb) = (entity("late"), entity("busy"));
        let a = device_with_entity(&first, model_id, Some(&ea)).await;
        let b = device_with_entity(&first, model_id, Some(&eb)).await;
        assert!(first.mqtt_connected().await && second.mqtt_connected().await);
        let mut stream = SseReader::open_as(&second, "tab-late").await;
        assert_eq!(
            stream.next(Duration::from_secs(5)).await.unwrap()["type"],
            "version"
        );
        // Device b logs every 50 ms from now on: every flush wakes the stream.
        let busy = {
            let client = publisher.client.clone();
            let eb = eb.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let line = format!("busy {i}");
                    let _ = client.publish(LOGSINK, ndjson(&[(&eb, &line)])).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        until_stored(&first, b, 5).await;

        // A line of a from before the subscription, which the stream must not send.
        publisher
            .publish(LOGSINK, ndjson(&[(&ea, "before")]))
            .await
            .unwrap();
        until_stored(&first, a, 1).await;
        // Subscribed through the other process, then a's lines. The subscription row is written
        // as the subscribe endpoint writes it, but only once the lines are stored and the stream
        // has read past them (b's lines wake it every flush): the stream notices it at its next
        // recheck at the earliest, after its feed moved past a's lines.
        let (status, body) = first
            .device_log_subscription(
                "subscribe",
                json!({"request_id": "tab-late", "device_id": a}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let row: (i64, Option<i64>) = iotsupport::on_pool!(first.db(), |p| sqlx::query_as(
            "DELETE FROM device_log_subscriptions WHERE request_id = 'tab-late'
             RETURNING device_id, from_line_id"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        let sent: Vec<String> = (0..20).map(|i| format!("late {i:02}")).collect();
        for message in &sent {
            publisher
                .publish(LOGSINK, ndjson(&[(&ea, message)]))
                .await
                .unwrap();
        }
        until_stored(&first, a, 21).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        iotsupport::on_pool!(first.db(), |p| sqlx::query(
            "INSERT INTO device_log_subscriptions (request_id, device_id, renewed_at, from_line_id)
             VALUES ('tab-late', $1, $2, $3)"
        )
        .bind(row.0)
        .bind(Utc::now())
        .bind(row.1)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        // An event while b keeps logging.
        let other_model = create_model(&first, "latesub2", None).await;

        let mut streamed = Vec::new();
        let mut model_event = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while (streamed.len() < sent.len() || !model_event)
            && tokio::time::Instant::now() < deadline
        {
            let Some(event) = stream.next(Duration::from_secs(5)).await else {
                break;
            };
            match event["type"].as_str() {
                Some("device-logs") => {
                    assert_eq!(event["payload"]["device_entity_id"], ea.as_str(), "{event}");
                    for line in event["payload"]["logs"].as_array().unwrap() {
                        streamed.push(line["message"].as_str().unwrap().to_string());
                    }
                }
                Some("device_model_created") => {
                    model_event |= event["payload"]["id"] == other_model;
                }
                _ => {}
            }
        }
        busy.abort();
        // In the order they were stored, which is not the order they were published: the two
        // processes share the log-sink subscription and each stores what the broker gives it.
        streamed.sort();
        assert_eq!(streamed, sent, "{stack:?}: every line of a, once");
        assert!(
            model_event,
            "{stack:?}: the model's event came while b logged"
        );
        first.stop().await;
        second.stop().await;
    }
}

/// A stream that reconnects with the last id it got (as an `EventSource` does after a dropped
/// connection) is sent the lines its devices logged while it was away, once each; before, the
/// new stream started at the newest line and the live view skipped them.
#[tokio::test]
async fn a_stream_that_reconnects_gets_the_lines_logged_while_it_was_away() {
    let Some(url) = broker::shared_broker("device_logs_away") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_away", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "away", None).await;
        let ea = entity("away");
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        assert!(app.mqtt_connected().await);
        let mut stream = subscribed_stream(&app, "tab-away", a).await;
        publisher
            .publish(LOGSINK, ndjson(&[(&ea, "seen")]))
            .await
            .unwrap();
        let (id, event) = stream
            .next_with_id(Duration::from_secs(10))
            .await
            .expect("the first line");
        assert_eq!(event["payload"]["logs"][0]["message"], "seen", "{event}");
        let id = id.expect("a device-logs message carries an id");
        drop(stream);

        let away: Vec<String> = (0..5).map(|i| format!("away {i}")).collect();
        for message in &away {
            publisher
                .publish(LOGSINK, ndjson(&[(&ea, message)]))
                .await
                .unwrap();
        }
        until_stored(&app, a, 6).await;
        let mut resumed = SseReader::resume_as(&app, "tab-away", &id).await;
        assert_eq!(
            resumed.next(Duration::from_secs(5)).await.unwrap()["type"],
            "version"
        );
        let streamed =
            streamed_lines(&mut resumed, away.len(), Duration::from_secs(5), |_| {}).await;
        assert_eq!(
            streamed, away,
            "{stack:?}: the lines logged while away, once each"
        );
        app.stop().await;
    }
}

/// A stream whose device is quiet while the fleet logs is told where its feed stands (at a
/// recheck, by a message of an id alone), so a client that reconnects from the id it holds gets
/// its device's lines logged meanwhile; before, its id named no position, and the new stream
/// started at the newest line. Resumed here through `last_event_id` in the query, as our UI
/// does when it opens a new `EventSource` after the last one gave up.
#[tokio::test]
async fn a_quiet_devices_stream_learns_where_its_feed_stands() {
    let Some(url) = broker::shared_broker("device_logs_quiet") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_quiet", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "quiet", None).await;
        let (eq, eb) = (entity("quiet"), entity("busy"));
        let quiet = device_with_entity(&app, model_id, Some(&eq)).await;
        let busy = device_with_entity(&app, model_id, Some(&eb)).await;
        assert!(app.mqtt_connected().await);
        let mut stream = subscribed_stream(&app, "tab-quiet", quiet).await;
        for i in 0..10 {
            let line = format!("busy {i}");
            publisher
                .publish(LOGSINK, ndjson(&[(&eb, &line)]))
                .await
                .unwrap();
        }
        until_stored(&app, busy, 10).await;
        let newest: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT MAX(id) FROM device_logs"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        // No line for this stream; its position comes within a recheck or two, in a message
        // a page's script sees (one with data: a browser hands scripts no other).
        let position = |id: Option<&str>| -> Option<i64> { id?.split_once('|')?.1.parse().ok() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while position(stream.script_id()).is_none_or(|p| p < newest) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{stack:?}: no position past {newest} came; last id a script saw {:?}",
                stream.script_id()
            );
            assert!(stream.next(Duration::from_millis(500)).await.is_none());
        }
        let held = stream.script_id().unwrap().to_string();
        drop(stream);

        publisher
            .publish(LOGSINK, ndjson(&[(&eq, "while away")]))
            .await
            .unwrap();
        until_stored(&app, quiet, 1).await;
        let mut resumed = SseReader::resume_by_query(&app, "tab-quiet", &held).await;
        let lines = streamed_lines(&mut resumed, 1, Duration::from_secs(5), |_| {}).await;
        assert_eq!(lines, ["while away"], "{stack:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn retention_removes_old_lines_and_keeps_each_devices_newest() {
    let Some(url) = broker::shared_broker("device_logs_retention") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    // The service's own sweeps (at start, then every minute) keep lines for ten years here: the
    // sweep below, with a week, is the one whose count is checked.
    let mut env = mqtt_env(&url.to_string());
    env.push(("DEVICE_LOG_RETENTION_DAYS".into(), "3650".into()));
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_with(
            stack,
            "device_logs_retention",
            &as_pairs(&env),
            Default::default(),
        )
        .await
        else {
            continue;
        };
        let model_id = create_model(&app, "retention", None).await;
        let (ea, eb) = (entity("a"), entity("b"));
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        let b = device_with_entity(&app, model_id, Some(&eb)).await;
        assert!(app.mqtt_connected().await);
        let mut lines: Vec<(String, String)> =
            (0..30).map(|i| (ea.clone(), format!("a {i:02}"))).collect();
        lines.extend((0..5).map(|i| (eb.clone(), format!("b {i}"))));
        let refs: Vec<(&str, &str)> = lines
            .iter()
            .map(|(e, m)| (e.as_str(), m.as_str()))
            .collect();
        publisher.publish(LOGSINK, ndjson(&refs)).await.unwrap();
        until_stored(&app, a, 30).await;
        until_stored(&app, b, 5).await;
        // b's two oldest lines are from 8 days ago.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE device_logs SET logged_at = $1 WHERE device_id = $2 AND message IN ('b 0', 'b 1')"
        )
        .bind(Utc::now() - chrono::Duration::days(8))
        .bind(b)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();

        let touched = iotsupport::device_logs::intake::Touched::default();
        touched.lock().unwrap().insert(a, 30);
        let deleted = iotsupport::device_logs::retention::sweep(
            app.db(),
            &touched,
            Duration::from_secs(7 * 24 * 3600),
            10,
        )
        .await
        .unwrap();
        assert_eq!(deleted, 2 + 20, "{stack:?}");
        let left_a = messages(&app.device_logs(a, "").await.1);
        let newest: Vec<String> = (20..30).map(|i| format!("a {i:02}")).collect();
        assert_eq!(left_a, newest, "{stack:?}: a keeps its 10 newest");
        assert_eq!(
            messages(&app.device_logs(b, "").await.1),
            ["b 2", "b 3", "b 4"]
        );
        app.stop().await;
    }
}

/// Turning MQTT off does not keep device logs for ever: lines stored while it was on still age
/// out, and live-log subscriptions of streams that went away are still forgotten (the retention
/// worker ran only with MQTT on). The next process sweeps at start.
#[tokio::test]
async fn without_mqtt_old_lines_and_stale_subscriptions_still_go() {
    let Some(TestConfig { config, dir }) =
        test_config(Stack::Production, "device_logs_off_retention", &[]).await
    else {
        return;
    };
    assert!(config.mqtt.is_none());
    let first = start_app(Stack::Production, config.clone(), dir, Default::default()).await;
    let model_id = create_model(&first, "offret", None).await;
    let device = device_with_entity(&first, model_id, Some(&entity("offret"))).await;
    // Lines from when MQTT was on: one 8 days old, one recent; a stream gone for two hours.
    iotsupport::on_pool!(first.db(), |p| sqlx::query(
        "INSERT INTO device_logs (device_id, logged_at, message)
         VALUES ($1, $2, 'old'), ($1, $3, 'recent');
         "
    )
    .bind(device)
    .bind(Utc::now() - chrono::Duration::days(8))
    .bind(Utc::now())
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    iotsupport::on_pool!(first.db(), |p| sqlx::query(
        "INSERT INTO device_log_subscriptions (request_id, device_id, renewed_at)
         VALUES ('gone', $1, $2)"
    )
    .bind(device)
    .bind(Utc::now() - chrono::Duration::hours(2))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    first.stop().await;

    let second = start_app(
        Stack::Production,
        config,
        tempfile::TempDir::new().unwrap(),
        Default::default(),
    )
    .await;
    let swept = eventually(Duration::from_secs(10), || async {
        all_stored(&second).await == 1
    })
    .await;
    assert!(swept, "{} lines left", all_stored(&second).await);
    assert_eq!(
        messages(&second.device_logs(device, "").await.1),
        ["recent"]
    );
    // The sweep prunes stale subscriptions after the old lines, in a statement of its own: this
    // may look in between.
    let subscriptions = async || -> i64 {
        iotsupport::on_pool!(second.db(), |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM device_log_subscriptions"
        )
        .fetch_one(p)
        .await)
        .unwrap()
    };
    let pruned = eventually(Duration::from_secs(10), || async {
        subscriptions().await == 0
    })
    .await;
    assert!(pruned, "{} subscriptions left", subscriptions().await);
    second.stop().await;
}

#[tokio::test]
async fn without_mqtt_the_history_is_empty_and_nothing_subscribes() {
    for_each_stack("device_logs_off", &[], async |app| {
        let model_id = create_model(app, "off", None).await;
        let a = device_with_entity(app, model_id, Some(&entity("off"))).await;
        let (status, page) = app.device_logs(a, "").await;
        assert_eq!(status, 200);
        assert_eq!(page["logs"], json!([]));
        assert!(app.state.mqtt.is_none());
    })
    .await;
}

#[tokio::test]
async fn lines_the_database_refuses_for_a_while_are_stored_when_it_accepts_them_again() {
    let Some(url) = broker::shared_broker("device_logs_refused") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_refused", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "refused", None).await;
        let ea = entity("refused");
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        assert!(app.mqtt_connected().await);
        // Every insert into device_logs fails until the trigger is dropped.
        let statements: &[&str] = match stack {
            Stack::Production => &[
                "CREATE FUNCTION planted_refusal() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'planted refusal'; END $$",
                "CREATE TRIGGER refuse_lines BEFORE INSERT ON device_logs
                 FOR EACH ROW EXECUTE FUNCTION planted_refusal()",
            ],
            Stack::Embedded => &["CREATE TRIGGER refuse_lines BEFORE INSERT ON device_logs
                 BEGIN SELECT RAISE(ABORT, 'planted refusal'); END"],
        };
        for statement in statements {
            iotsupport::on_pool!(app.db(), |p| sqlx::query(*statement)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            .unwrap();
        }
        let sent: Vec<String> = (0..20).map(|i| format!("while refused {i:02}")).collect();
        for message in &sent {
            publisher
                .publish(LOGSINK, ndjson(&[(&ea, message)]))
                .await
                .unwrap();
        }
        // Attempts fail meanwhile; nothing is stored.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(stored_lines(&app, a).await, 0);
        let drop = match stack {
            Stack::Production => "DROP TRIGGER refuse_lines ON device_logs",
            Stack::Embedded => "DROP TRIGGER refuse_lines",
        };
        iotsupport::on_pool!(app.db(), |p| sqlx::query(drop)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
        until_stored(&app, a, 20).await;
        assert_eq!(
            messages(&app.device_logs(a, "").await.1),
            sent,
            "{stack:?}: in the order they arrived"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_document_whose_entity_id_holds_a_nul_does_not_hold_up_the_others() {
    let Some(url) = broker::shared_broker("device_logs_nul") else {
        return;
    };
    let publisher = broker::start(broker::settings(&url));
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_nul", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "nul", None).await;
        let ea = entity("nul");
        let a = device_with_entity(&app, model_id, Some(&ea)).await;
        assert!(app.mqtt_connected().await);
        // PostgreSQL refuses a text parameter holding NUL: such an entity id used to fail the
        // store of its whole batch, again on every retry.
        let poisoned = format!("{ea}\u{0}");
        publisher
            .publish(LOGSINK, ndjson(&[(&poisoned, "poison"), (&ea, "hello")]))
            .await
            .unwrap();
        until_stored(&app, a, 1).await;
        publisher
            .publish(LOGSINK, ndjson(&[(&ea, "later")]))
            .await
            .unwrap();
        until_stored(&app, a, 2).await;
        assert_eq!(
            all_stored_of(&app, a).await,
            ["hello", "later"],
            "{stack:?}"
        );
        app.stop().await;
    }
}

/// The messages stored for `device_id`, oldest first.
async fn all_stored_of(app: &TestApp, device_id: i64) -> Vec<String> {
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT message FROM device_logs WHERE device_id = $1 ORDER BY id"
    )
    .bind(device_id)
    .fetch_all(p)
    .await)
    .unwrap()
}

/// A live log feed sends a burst of long lines in messages of at most about 64 KiB of text each
/// (one stream holding 500 lines of 8 KiB at once, escaped, could take 24 MiB), every line once
/// and in order. The lines are written straight to the table: the feed reads what is stored,
/// whoever stored it (the subscription works without MQTT).
#[tokio::test]
async fn a_burst_of_long_lines_reaches_a_live_stream_in_bounded_messages() {
    for_each_stack("device_logs_live_bounded", &[], async |app| {
        let model_id = create_model(app, "burst", None).await;
        let device = device_with_entity(app, model_id, Some(&entity("burst"))).await;
        let mut stream = subscribed_stream(app, "tab-burst", device).await;
        let line = |i: usize| format!("{i:03} {}", "x".repeat(8000));
        for i in 0..40 {
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "INSERT INTO device_logs (device_id, logged_at, message) VALUES ($1, $2, $3)"
            )
            .bind(device)
            .bind(Utc::now())
            .bind(line(i))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
        let mut received = Vec::new();
        let mut messages = 0;
        while received.len() < 40 {
            let event = stream
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{} of 40 lines came", received.len()));
            assert_eq!(event["type"], "device-logs", "{event}");
            let logs = event["payload"]["logs"].as_array().unwrap();
            let text: usize = logs
                .iter()
                .map(|l| l["message"].as_str().unwrap().len())
                .sum();
            assert!(
                text < 64 * 1024 + 8004,
                "{text} bytes of lines in one message"
            );
            received.extend(
                logs.iter()
                    .map(|l| l["message"].as_str().unwrap().to_string()),
            );
            messages += 1;
        }
        assert_eq!(received, (0..40).map(line).collect::<Vec<_>>());
        assert!(messages >= 5, "{messages} messages");
    })
    .await;
}

/// A stream renews its subscriptions as soon as it reads them, not only after it has been open
/// for ten minutes: a client whose streams never last that long (a proxy cutting requests at five
/// minutes; the Python UI subscribes once, not on each reconnect) kept them for an hour at most.
#[tokio::test]
async fn a_new_stream_renews_its_subscriptions_at_once() {
    let Some(url) = broker::shared_broker("device_logs_renew") else {
        return;
    };
    for stack in ALL_STACKS {
        let Some(app) = logging_app(stack, "device_logs_renew", &url).await else {
            continue;
        };
        let model_id = create_model(&app, "renew", None).await;
        let device = device_with_entity(&app, model_id, Some(&entity("renew"))).await;
        drop(subscribed_stream(&app, "tab-renew", device).await);
        let renewed_at = async || -> chrono::DateTime<Utc> {
            iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
                "SELECT renewed_at FROM device_log_subscriptions WHERE request_id = 'tab-renew'"
            )
            .fetch_one(p)
            .await)
            .unwrap()
        };
        // Fifty minutes without a renewal: ten more and the sweep forgets it.
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE device_log_subscriptions SET renewed_at = $1 WHERE request_id = 'tab-renew'"
        )
        .bind(iotsupport::db::now() - chrono::Duration::minutes(50))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let _stream = SseReader::open_as(&app, "tab-renew").await;
        let renewed = eventually(Duration::from_secs(10), || async {
            iotsupport::db::now() - renewed_at().await < chrono::Duration::minutes(1)
        })
        .await;
        assert!(renewed, "{stack:?}: renewed at {}", renewed_at().await);
        app.stop().await;
    }
}
