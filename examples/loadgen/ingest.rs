//! `loadgen ingest`: device core-dump uploads through the service (`POST /api/iot/coredump`).
//!
//! Requests go round-robin over the given device credentials (one device alone is limited by its
//! per-device upload slot, and each device has one upload in flight at a time: the service refuses
//! a device's third concurrent upload). The body is random bytes of `--size`, or the bytes of
//! `--body` (a real dump, so the parse jobs have something to parse). With `--rate` the requests start on
//! a fixed schedule (open loop, `rate` per second, at most `--concurrency` in flight); without it
//! as fast as `--concurrency` allows (closed loop).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;

use super::{ensure_loopback, http_client, random_body, run, Load, Outcome};

#[derive(Args)]
pub struct IngestArgs {
    /// The service's base URL, e.g. http://127.0.0.1:3101
    #[arg(long)]
    url: String,
    /// Device credentials `KEY.SECRET` (comma-separated or repeated), used round-robin.
    #[arg(long, value_delimiter = ',')]
    credential: Vec<String>,
    /// A file with one device credential `KEY.SECRET` per line (added to `--credential`).
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// Body size in bytes (random bodies).
    #[arg(long, default_value_t = 65536)]
    size: usize,
    /// Upload this file's bytes as every dump instead of random bytes (e.g. a real core dump).
    #[arg(long, alias = "body-file")]
    body: Option<PathBuf>,
    #[arg(long, default_value = "esp32")]
    chip: String,
    #[arg(long, default_value = "1.0.0")]
    firmware_version: String,
    /// Requests started per second (0: closed loop, as fast as `--concurrency` allows).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    load: Load,
}

pub async fn ingest(args: IngestArgs) -> anyhow::Result<bool> {
    ensure_loopback(&args.url)?;
    let mut credentials = args.credential.clone();
    if let Some(path) = &args.credentials_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        credentials.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    anyhow::ensure!(
        !credentials.is_empty(),
        "give --credential or --credentials-file"
    );
    let auths: Vec<String> = credentials.iter().map(|c| format!("Bearer {c}")).collect();
    let body: Option<Bytes> = match &args.body {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .into(),
        ),
        None => None,
    };
    let client = http_client(args.load.concurrency)?;
    let mut target = reqwest::Url::parse(&format!(
        "{}/api/iot/coredump",
        args.url.trim_end_matches('/')
    ))?;
    target
        .query_pairs_mut()
        .append_pair("chip", &args.chip)
        .append_pair("firmware_version", &args.firmware_version);
    // One upload per device at a time: the service refuses a device's third concurrent upload
    // (MAX_COREDUMP_UPLOADS_PER_DEVICE), and requests complete out of order.
    let busy: Vec<tokio::sync::Mutex<()>> = auths.iter().map(|_| Default::default()).collect();
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let epoch = Instant::now();
    let rate = args.rate;
    let size = args.size;
    let result = run("ingest", args.load, |i| {
        let (client, target, statuses) = (&client, &target, statuses.clone());
        let (auth, busy) = (&auths[i % auths.len()], &busy[i % auths.len()]);
        let body = body.clone();
        async move {
            if rate > 0.0 {
                tokio::time::sleep_until((epoch + Duration::from_secs_f64(i as f64 / rate)).into())
                    .await;
            }
            let body = body.unwrap_or_else(|| random_body(size));
            let len = body.len() as u64;
            let _device = busy.lock().await;
            let start = Instant::now();
            let response = client
                .post(target.clone())
                .header("authorization", auth)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await;
            let (ok, bad_status) = match response {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    if let Ok(mut counts) = statuses.lock() {
                        *counts.entry(status).or_insert(0u64) += 1;
                    }
                    (status == 201, status != 201)
                }
                Err(e) => {
                    eprintln!("ingest: request failed: {e}");
                    (false, false)
                }
            };
            Outcome {
                latency: start.elapsed(),
                bytes: len,
                ok,
                bad_status,
            }
        }
    })
    .await?;
    if let Ok(statuses) = statuses.lock() {
        if statuses.keys().any(|s| *s != 201) {
            eprintln!("ingest: status counts {statuses:?}");
        }
    }
    Ok(result)
}
