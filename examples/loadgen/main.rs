//! Load generator for the benchmarks in `bench/` (`bench/ingest.sh`, `bench/ota.sh`).
//!
//! Every subcommand sends a bounded number of requests (`--count`), stops issuing new ones after
//! `--max-seconds`, only talks to loopback addresses, and prints one result line of `key=value`
//! pairs that the scripts parse:
//!
//! ```text
//! ingest requests=3000 ok=3000 bad_status=0 errors=0 seconds=12.3 req_per_s=243.9 mib_per_s=15.24 p50_ms=120.1 p99_ms=260.4
//! ```
//!
//! - `ingest`: device core-dump uploads through the service (`POST /api/iot/coredump`, `ingest.rs`):
//!   random bodies or one file (a real dump), from several devices round-robin, optionally open-loop.
//! - `s3put`: the same-size PUTs directly to the S3 server (the ceiling for `ingest`).
//! - `download`: firmware downloads through the service, whole or random ranges.
//! - `s3get`: the same reads directly from the S3 server (the ceiling for `download`).
//! - `poll`, `token`: the device version poll (optionally with `X-Firmware-Version`, from several
//!   devices round-robin) and the token endpoint (`bench/tokens.sh`).
//! - `get`: admin GETs of one URL (`bench/mqtt.sh` times the device-log history with it).
//! - `notify-latency`, `publish-logs`: MQTT notifications and device logs (`mqtt.rs`).
//! - `make-bundle`: writes a valid firmware bundle ZIP (synthesised ESP32 image of a given size
//!   whose app descriptor carries the ELF's SHA-256, as `tests/api/firmware_support.rs` does);
//!   `--elf` puts a real firmware ELF in it, so dumps of that build can be parsed
//!   (`scripts/ui-check.sh` uses it).

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use iotsupport::config::{S3Config, Secret};
use iotsupport::storage::backend::ObjectStoreBackend;
use iotsupport::storage::{ByteRange, ObjectKey, ObjectStorage};
use rand::{Rng, RngCore};

mod ingest;
mod mqtt;

#[derive(Parser)]
#[command(about = "Load generator for the iotsupport benchmarks (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Copy)]
struct Load {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// No new request is started after this many seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
}

#[derive(Args, Clone)]
struct S3Args {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    access_key: String,
    #[arg(long)]
    secret_key: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
}

#[derive(Subcommand)]
enum Command {
    /// Core-dump uploads through the service.
    Ingest(ingest::IngestArgs),
    /// Same-size PUTs directly to S3 (through ObjectStoreBackend).
    S3put {
        #[command(flatten)]
        s3: S3Args,
        #[arg(long, default_value_t = 65536)]
        size: usize,
        /// Key prefix of the objects written.
        #[arg(long, default_value = "bench/s3put")]
        prefix: String,
        #[command(flatten)]
        load: Load,
    },
    /// Firmware downloads through the service.
    Download {
        #[arg(long)]
        url: String,
        /// Path of the download route.
        #[arg(long, default_value = "/api/iot/firmware")]
        path: String,
        /// Device credential `KEY.SECRET` (or an admin token, for admin paths).
        #[arg(long)]
        credential: String,
        /// Read random ranges of this many bytes instead of whole images.
        #[arg(long)]
        range_size: Option<u64>,
        #[command(flatten)]
        load: Load,
    },
    /// The same reads directly from S3 (through ObjectStoreBackend).
    S3get {
        #[command(flatten)]
        s3: S3Args,
        /// Object key, e.g. firmware/{code}/{version}/firmware.bin
        #[arg(long)]
        key: String,
        #[arg(long)]
        range_size: Option<u64>,
        #[command(flatten)]
        load: Load,
    },
    /// Token requests (`POST /api/iot/token`, client credentials in the form body).
    Token {
        #[arg(long)]
        url: String,
        /// `iotdevice-{model}-{key}`.
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        client_secret: String,
        #[command(flatten)]
        load: Load,
    },
    /// Version polls (`GET /api/iot/firmware-version`) with `Authorization: Bearer <credential>`
    /// (a `KEY.SECRET` or a token).
    Poll {
        #[arg(long)]
        url: String,
        /// Credentials (comma-separated or repeated), used round-robin: one device each.
        #[arg(long, value_delimiter = ',', required = true)]
        credential: Vec<String>,
        /// Send `X-Firmware-Version: <this>` with every poll.
        #[arg(long)]
        firmware_version: Option<String>,
        #[command(flatten)]
        load: Load,
    },
    /// GETs of `url` with `Authorization: Bearer <token>` (admin reads).
    Get {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        #[command(flatten)]
        load: Load,
    },
    /// Creates a model with `devices` devices, uploads `bundle` to it and times each device's
    /// firmware notification from the upload's answer to its arrival at a subscriber.
    NotifyLatency {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        mqtt_url: String,
        #[arg(long)]
        code: String,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long)]
        bundle: std::path::PathBuf,
        /// Stop waiting for messages this long after the upload.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// Publishes device log lines (NDJSON) to `iotsupport/logsink`.
    PublishLogs {
        #[arg(long)]
        mqtt_url: String,
        /// Comma-separated entity ids, used round-robin.
        #[arg(long, value_delimiter = ',')]
        entities: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        lines_per_message: usize,
        /// Publishes awaiting their PUBACK at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Messages per second (0: as fast as the broker acknowledges).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Writes a valid firmware bundle ZIP for model `code`.
    MakeBundle {
        #[arg(long)]
        code: String,
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Approximate size of the app image in bytes.
        #[arg(long, default_value_t = 1536 * 1024)]
        image_size: usize,
        /// Put this ELF in the bundle instead of a placeholder (the image then carries its SHA-256).
        #[arg(long)]
        elf: Option<std::path::PathBuf>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// What one request did.
struct Outcome {
    latency: Duration,
    bytes: u64,
    /// Answered with the expected status (and, for reads, the expected length).
    ok: bool,
    /// Answered, but with another status.
    bad_status: bool,
}

/// The `p` quantile (0–1) of sorted, non-empty `latencies`, in milliseconds.
fn percentile_ms(latencies: &[Duration], p: f64) -> f64 {
    let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[i].as_secs_f64() * 1000.0
}

/// Runs `count` requests, `concurrency` at a time, and prints the result line.
async fn run<F, Fut>(name: &str, load: Load, request: F) -> anyhow::Result<bool>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    anyhow::ensure!(
        load.concurrency > 0 && load.count > 0,
        "count and concurrency must be > 0"
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(load.max_seconds);
    let outcomes: Vec<Outcome> = futures::stream::iter(0..load.count)
        .take_while(|_| futures::future::ready(Instant::now() < deadline))
        .map(&request)
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let pct = |p: f64| percentile_ms(&latencies, p);
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let bad_status = outcomes.iter().filter(|o| o.bad_status).count();
    let errors = outcomes.len() - ok - bad_status;
    let bytes: u64 = outcomes.iter().filter(|o| o.ok).map(|o| o.bytes).sum();
    println!(
        "{name} requests={} ok={ok} bad_status={bad_status} errors={errors} seconds={seconds:.2} \
         req_per_s={:.1} mib_per_s={:.2} p50_ms={:.1} p99_ms={:.1}",
        outcomes.len(),
        ok as f64 / seconds,
        bytes as f64 / seconds / (1024.0 * 1024.0),
        pct(0.50),
        pct(0.99),
    );
    if outcomes.len() < load.count {
        eprintln!(
            "{name}: stopped after {} of {} requests (--max-seconds {})",
            outcomes.len(),
            load.count,
            load.max_seconds
        );
    }
    Ok(ok == outcomes.len())
}

/// Refuses anything but a loopback host: the benchmarks never leave the machine.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(loopback, "{url}: only loopback addresses are allowed");
    Ok(())
}

fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()?)
}

fn s3_store(s3: &S3Args) -> anyhow::Result<ObjectStoreBackend> {
    ensure_loopback(&s3.endpoint)?;
    Ok(ObjectStoreBackend::s3(&S3Config {
        endpoint_url: s3.endpoint.clone(),
        access_key_id: Some(Secret::new(s3.access_key.clone())),
        secret_access_key: Some(Secret::new(s3.secret_key.clone())),
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        request_timeout: Duration::from_secs(30),
    })?)
}

fn random_body(size: usize) -> Bytes {
    let mut body = vec![0u8; size];
    rand::rng().fill_bytes(&mut body);
    body.into()
}

/// Reads a response body to the end without keeping it; returns the byte count.
async fn drain(mut response: reqwest::Response) -> Result<u64, reqwest::Error> {
    let mut n = 0u64;
    while let Some(chunk) = response.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok(n)
}

/// A random `[start, end)` of `len` bytes inside an object of `size` bytes.
fn random_range(size: u64, len: u64) -> (u64, u64) {
    let len = len.min(size);
    let start = rand::rng().random_range(0..=size - len);
    (start, start + len)
}

async fn s3put(s3: &S3Args, size: usize, prefix: &str, load: Load) -> anyhow::Result<bool> {
    let store = s3_store(s3)?;
    let store = &store;
    run("s3put", load, |i| async move {
        let key = ObjectKey::parse(format!("{prefix}/{i}.dmp")).expect("a valid key");
        let body = random_body(size);
        let start = Instant::now();
        let result = store.put(&key, body).await;
        if let Err(e) = &result {
            eprintln!("s3put: {e}");
        }
        Outcome {
            latency: start.elapsed(),
            bytes: size as u64,
            ok: result.is_ok(),
            bad_status: false,
        }
    })
    .await
}

async fn download(
    url: &str,
    path: &str,
    credential: &str,
    range_size: Option<u64>,
    load: Load,
) -> anyhow::Result<bool> {
    ensure_loopback(url)?;
    let client = http_client(load.concurrency)?;
    let target = format!("{}{path}", url.trim_end_matches('/'));
    let auth = format!("Bearer {credential}");
    let head = client
        .head(&target)
        .header("authorization", &auth)
        .send()
        .await?;
    anyhow::ensure!(
        head.status().is_success(),
        "HEAD {target}: {}",
        head.status()
    );
    let size: u64 = head
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("HEAD {target}: no Content-Length"))?;
    eprintln!("download: {target} is {size} bytes");
    let name = if range_size.is_some() {
        "download-range"
    } else {
        "download"
    };
    let (client, target, auth) = (&client, &target, &auth);
    run(name, load, |_| async move {
        let mut request = client.get(target).header("authorization", auth);
        let (expected_status, expected_len) = match range_size {
            Some(len) => {
                let (start, end) = random_range(size, len);
                request = request.header("range", format!("bytes={start}-{}", end - 1));
                (206, end - start)
            }
            None => (200, size),
        };
        let start = Instant::now();
        let (ok, bad_status, bytes) = match request.send().await {
            Ok(r) if r.status().as_u16() == expected_status => match drain(r).await {
                Ok(n) => (n == expected_len, false, n),
                Err(e) => {
                    eprintln!("{name}: body failed: {e}");
                    (false, false, 0)
                }
            },
            Ok(r) => {
                eprintln!("{name}: unexpected status {}", r.status());
                (false, true, 0)
            }
            Err(e) => {
                eprintln!("{name}: request failed: {e}");
                (false, false, 0)
            }
        };
        Outcome {
            latency: start.elapsed(),
            bytes,
            ok,
            bad_status,
        }
    })
    .await
}

async fn s3get(
    s3: &S3Args,
    key: &str,
    range_size: Option<u64>,
    load: Load,
) -> anyhow::Result<bool> {
    let store = s3_store(s3)?;
    let key = ObjectKey::parse(key)?;
    let size = store.head(&key).await?.size;
    eprintln!("s3get: {key} is {size} bytes", key = key.as_str());
    let name = if range_size.is_some() {
        "s3get-range"
    } else {
        "s3get"
    };
    let (store, key) = (&store, &key);
    run(name, load, |_| async move {
        let (range, expected_len) = match range_size {
            Some(len) => {
                let (start, end) = random_range(size, len);
                (Some(ByteRange::Bounded { start, end }), end - start)
            }
            None => (None, size),
        };
        let start = Instant::now();
        let read = async {
            let object = store.get(key, range).await?;
            object
                .body
                .try_fold(0u64, |n, chunk| async move { Ok(n + chunk.len() as u64) })
                .await
        };
        let (ok, bytes) = match read.await {
            Ok(n) => (n == expected_len, n),
            Err(e) => {
                eprintln!("{name}: {e}");
                (false, 0)
            }
        };
        Outcome {
            latency: start.elapsed(),
            bytes,
            ok,
            bad_status: false,
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Firmware bundle synthesis (`tests/support/esp_image_synth.rs`, with a large DROM segment so the
// image has a realistic size).

#[path = "../../tests/support/esp_image_synth.rs"]
mod esp_image_synth;
use esp_image_synth::{sha256, Desc};

/// An ESP32 app image of about `size` bytes (random DROM filler).
fn esp32_image(version: &str, elf_sha256: &[u8; 32], size: usize) -> Vec<u8> {
    let desc = Desc {
        magic: 0xABCD_5432,
        version: version.as_bytes().to_vec(),
        project: b"bench_image",
        idf: b"v5.2.2",
        elf_sha256: *elf_sha256,
    };
    let mut tail = vec![0u8; (size.saturating_sub(512) / 4 * 4).max(64)];
    rand::rng().fill_bytes(&mut tail);
    esp_image_synth::esp32_image(&desc, &tail, 0x50)
}

fn make_bundle(
    code: &str,
    version: &str,
    image_size: usize,
    elf: Option<&std::path::Path>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(version.len() <= 31, "version longer than 31 bytes");
    let elf = match elf {
        Some(path) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        None => format!("\x7fELF benchmark firmware ELF of {code} {version}").into_bytes(),
    };
    let bin = esp32_image(version, &sha256(&elf), image_size);
    let version_json = serde_json::json!({
        "git_commit": "0000000", "idf_version": "v5.2.2", "firmware_version": version,
    })
    .to_string();
    let entries: [(String, &[u8]); 5] = [
        (format!("{code}.bin"), &bin),
        (format!("{code}.elf"), &elf),
        (
            format!("{code}.map"),
            b"Memory map of the benchmark build\n",
        ),
        ("sdkconfig".to_string(), b"CONFIG_APP_VERSION=\"bench\"\n"),
        ("version.json".to_string(), version_json.as_bytes()),
    ];
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(name, options)?;
        writer.write_all(data)?;
    }
    let zip = writer.finish()?.into_inner();
    std::fs::write(out, &zip)?;
    eprintln!(
        "make-bundle: {} ({} bytes, image {} bytes)",
        out.display(),
        zip.len(),
        bin.len()
    );
    Ok(())
}

/// One small request per iteration (`build` gets the iteration's index), expecting 200; used by
/// `token`, `poll` and `get`.
async fn small_requests(
    name: &str,
    load: Load,
    build: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
) -> anyhow::Result<bool> {
    let client = http_client(load.concurrency)?;
    let (client, build) = (&client, &build);
    run(name, load, |i| async move {
        let start = Instant::now();
        let (ok, bad_status, bytes) = match build(client, i).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let n = r.bytes().await.map(|b| b.len() as u64).unwrap_or(0);
                (status == 200, status != 200, n)
            }
            Err(e) => {
                eprintln!("{name}: request failed: {e}");
                (false, false, 0)
            }
        };
        Outcome {
            latency: start.elapsed(),
            bytes,
            ok,
            bad_status,
        }
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let clean = match cli.command {
        Command::Ingest(args) => ingest::ingest(args).await?,
        Command::S3put {
            s3,
            size,
            prefix,
            load,
        } => s3put(&s3, size, &prefix, load).await?,
        Command::Download {
            url,
            path,
            credential,
            range_size,
            load,
        } => download(&url, &path, &credential, range_size, load).await?,
        Command::S3get {
            s3,
            key,
            range_size,
            load,
        } => s3get(&s3, &key, range_size, load).await?,
        Command::Token {
            url,
            client_id,
            client_secret,
            load,
        } => {
            ensure_loopback(&url)?;
            let target = format!("{}/api/iot/token", url.trim_end_matches('/'));
            let form = format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"
            );
            small_requests("token", load, |c, _| {
                c.post(&target)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.clone())
            })
            .await?
        }
        Command::Poll {
            url,
            credential,
            firmware_version,
            load,
        } => {
            ensure_loopback(&url)?;
            let target = format!("{}/api/iot/firmware-version", url.trim_end_matches('/'));
            let auths: Vec<String> = credential.iter().map(|c| format!("Bearer {c}")).collect();
            small_requests("poll", load, |c, i| {
                let request = c
                    .get(&target)
                    .header("authorization", &auths[i % auths.len()]);
                match &firmware_version {
                    Some(version) => request.header("x-firmware-version", version),
                    None => request,
                }
            })
            .await?
        }
        Command::Get { url, token, load } => {
            ensure_loopback(&url)?;
            let auth = format!("Bearer {token}");
            small_requests("get", load, |c, _| {
                c.get(&url).header("authorization", &auth)
            })
            .await?
        }
        Command::NotifyLatency {
            url,
            token,
            mqtt_url,
            code,
            devices,
            bundle,
            max_seconds,
        } => {
            mqtt::notify_latency(
                &url,
                &token,
                &mqtt_url,
                &code,
                devices,
                &bundle,
                max_seconds,
            )
            .await?
        }
        Command::PublishLogs {
            mqtt_url,
            entities,
            messages,
            lines_per_message,
            in_flight,
            rate,
        } => {
            mqtt::publish_logs(
                &mqtt_url,
                &entities,
                messages,
                lines_per_message,
                in_flight,
                rate,
            )
            .await?
        }
        Command::MakeBundle {
            code,
            version,
            image_size,
            elf,
            out,
        } => {
            make_bundle(&code, &version, image_size, elf.as_deref(), &out)?;
            true
        }
    };
    if !clean {
        eprintln!("some requests failed");
        std::process::exit(1);
    }
    Ok(())
}
