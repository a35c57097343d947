//! The MQTT benchmarks' load (`bench/mqtt.sh`): notification latency and device-log publishing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use iotsupport::mqtt::{MqttClient, MqttSettings, MqttUrl, SubscribeOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{ensure_loopback, http_client, percentile_ms};

/// A started client on a loopback broker (stopped when the token is cancelled).
async fn connect(mqtt_url: &str) -> anyhow::Result<(MqttClient, CancellationToken)> {
    ensure_loopback(&mqtt_url.replace("mqtt://", "http://"))?;
    let url = MqttUrl::parse(mqtt_url).map_err(|e| anyhow::anyhow!("{mqtt_url}: {e}"))?;
    let mut settings = MqttSettings::for_url(url);
    settings.client_id = iotsupport::config::unique_client_id("loadgen");
    settings.publish_timeout = Duration::from_secs(30);
    let shutdown = CancellationToken::new();
    let client = MqttClient::start(&settings, shutdown.clone())?;
    anyhow::ensure!(
        client.wait_connected(Duration::from_secs(10)).await,
        "no connection to {mqtt_url}"
    );
    Ok((client, shutdown))
}

/// An admin request to the service; the JSON answer, or an error naming the status.
async fn admin(request: reqwest::RequestBuilder, token: &str) -> anyhow::Result<Value> {
    let response = request.bearer_auth(token).send().await?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Creates model `code` with `devices` devices, subscribes to the firmware topic, uploads
/// `bundle`, and measures for each device the time from the upload's answer (which comes after
/// the commit) to its message at this subscriber.
pub async fn notify_latency(
    url: &str,
    token: &str,
    mqtt_url: &str,
    code: &str,
    devices: usize,
    bundle: &std::path::Path,
    max_seconds: u64,
) -> anyhow::Result<bool> {
    ensure_loopback(url)?;
    let base = url.trim_end_matches('/');
    let http = http_client(16)?;
    let model = admin(
        http.post(format!("{base}/api/device-models"))
            .json(&json!({"code": code, "name": format!("Benchmark {code}")})),
        token,
    )
    .await?;
    let model_id = model["id"].as_i64().unwrap_or_default();
    let created: Vec<anyhow::Result<Value>> = futures::stream::iter(0..devices)
        .map(|_| {
            admin(
                http.post(format!("{base}/api/devices"))
                    .json(&json!({"device_model_id": model_id, "config": "{}"})),
                token,
            )
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut expected: HashMap<String, Option<Duration>> = HashMap::new();
    for device in created {
        let key = device?["key"].as_str().unwrap_or_default().to_string();
        expected.insert(format!("iotdevice-{code}-{key}"), None);
    }

    let (client, shutdown) = connect(mqtt_url).await?;
    let mut subscription = client.subscribe(
        "iotsupport/updates/firmware",
        SubscribeOptions {
            shared_group: None,
            buffer: devices * 2 + 16,
            ..SubscribeOptions::default()
        },
    )?;
    anyhow::ensure!(
        subscription.wait_active(Duration::from_secs(10)).await,
        "the broker did not grant the subscription"
    );
    let started = Instant::now();
    let answer = admin(
        http.post(format!("{base}/api/device-models/{model_id}/firmware"))
            .header("content-type", "application/zip")
            .body(std::fs::read(bundle)?),
        token,
    )
    .await?;
    let committed = Instant::now();
    let upload = committed - started;
    let version = answer["firmware_version"].as_str().map(str::to_string);
    let deadline = committed + Duration::from_secs(max_seconds);
    let mut received = 0;
    let mut duplicates = 0;
    while received < devices {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(message)) = tokio::time::timeout(left, subscription.recv()).await else {
            break;
        };
        let at = committed.elapsed();
        let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        if version.is_some() && payload["firmware_version"].as_str() != version.as_deref() {
            continue;
        }
        if let Some(slot) = payload["client_id"]
            .as_str()
            .and_then(|id| expected.get_mut(id))
        {
            if slot.is_some() {
                duplicates += 1;
            } else {
                *slot = Some(at);
                received += 1;
            }
        }
    }
    shutdown.cancel();
    let mut latencies: Vec<Duration> = expected.values().flatten().copied().collect();
    latencies.sort();
    let (p50, p99, max) = if latencies.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            percentile_ms(&latencies, 0.5),
            percentile_ms(&latencies, 0.99),
            percentile_ms(&latencies, 1.0),
        )
    };
    println!(
        "notify devices={devices} received={received} duplicates={duplicates} upload_ms={:.1} \
         p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}",
        upload.as_secs_f64() * 1000.0
    );
    Ok(received == devices)
}

/// Publishes `messages` NDJSON messages of `lines_per_message` lines each to
/// `iotsupport/logsink`, round-robin over `entities`, `in_flight` awaiting their PUBACK at once,
/// at most `rate` messages a second (0: as fast as the broker acknowledges).
pub async fn publish_logs(
    mqtt_url: &str,
    entities: &[String],
    messages: usize,
    lines_per_message: usize,
    in_flight: usize,
    rate: f64,
) -> anyhow::Result<bool> {
    anyhow::ensure!(!entities.is_empty(), "no entity ids");
    let (client, shutdown) = connect(mqtt_url).await?;
    let started = Instant::now();
    let client = &client;
    let failures = futures::stream::iter(0..messages)
        .map(|m| async move {
            if rate > 0.0 {
                tokio::time::sleep_until(
                    (started + Duration::from_secs_f64(m as f64 / rate)).into(),
                )
                .await;
            }
            let entity = &entities[m % entities.len()];
            let text: Vec<String> = (0..lines_per_message)
                .map(|l| {
                    json!({"entity_id": entity,
                           "message": format!("I ({m}) bench: line {l} of message {m} \u{1b}[0m")})
                    .to_string()
                })
                .collect();
            client
                .publish("iotsupport/logsink", Bytes::from(text.join("\n")))
                .await
                .is_err()
        })
        .buffer_unordered(in_flight.max(1))
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let lines = messages * lines_per_message;
    println!(
        "publish messages={messages} lines={lines} failed={failures} seconds={seconds:.2} \
         lines_per_s={:.0}",
        lines as f64 / seconds.max(1e-9)
    );
    Ok(failures == 0)
}
