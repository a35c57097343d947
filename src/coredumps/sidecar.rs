//! The parser sidecar of the Python service's deployment (SPEC §8): a separate HTTP service with
//! gdb/esp-coredump that reads files from a shared transfer directory.
//!
//! For each parse we write the dump and the ELF into `PARSE_SIDECAR_XFER_DIR` under names that
//! contain the dump id, the job id and a random part — two parses (of one model, or even of one
//! dump) never share a file, which the Python service got wrong — and call
//! `GET {PARSE_SIDECAR_URL}/parse-coredump?core=<dump file>&elf=<elf file>&chip=<chip>`, passing
//! bare file names relative to the transfer directory (the sidecar may mount it elsewhere). The
//! JSON field `output` is the report. Connection failures, timeouts and 5xx are transient (the job
//! retries with backoff); a 4xx or an answer without `output` is permanent. The transfer files are
//! removed whatever happens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parser::{CoredumpParser, ParseFailure, ParseRequest, ParsedDump};

/// How long one sidecar call may take; gdb on a large ELF takes a while.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an error body is quoted in messages.
const MAX_QUOTED_BODY: usize = 500;

pub struct SidecarParser {
    base_url: String,
    xfer_dir: PathBuf,
    client: reqwest::Client,
}

impl SidecarParser {
    pub fn new(base_url: &str, xfer_dir: PathBuf) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "parse_sidecar_client_without_connect_timeout");
                reqwest::Client::default()
            });
        SidecarParser {
            base_url: base_url.trim_end_matches('/').to_string(),
            xfer_dir,
            client,
        }
    }

    async fn call(&self, core: &str, elf: &str, chip: &str) -> Result<String, ParseFailure> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/parse-coredump", self.base_url),
            &[("core", core), ("elf", elf), ("chip", chip)],
        )
        .map_err(|e| ParseFailure::Permanent(format!("PARSE_SIDECAR_URL is not a URL: {e}")))?;
        // The whole call's deadline is also set here: a client that could not be built with
        // its timeouts (the default one stands in) must not wait on a hung sidecar for ever,
        // holding a job slot that its heartbeat keeps claimed.
        let response = self
            .client
            .get(url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                ParseFailure::Transient(format!("The parser sidecar is unreachable: {e}"))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            ParseFailure::Transient(format!("The parser sidecar's answer was cut off: {e}"))
        })?;
        let quoted = || {
            let text = String::from_utf8_lossy(&body);
            text.chars().take(MAX_QUOTED_BODY).collect::<String>()
        };
        if status.is_server_error() {
            return Err(ParseFailure::Transient(format!(
                "The parser sidecar failed ({status}): {}",
                quoted()
            )));
        }
        if !status.is_success() {
            return Err(ParseFailure::Permanent(format!(
                "The parser sidecar rejected the dump ({status}): {}",
                quoted()
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ParseFailure::Permanent(format!(
                "The parser sidecar answered with invalid JSON: {e}"
            ))
        })?;
        match json.get("output") {
            Some(serde_json::Value::String(output)) => Ok(output.clone()),
            _ => Err(ParseFailure::Permanent(format!(
                "The parser sidecar's answer has no 'output' text: {}",
                quoted()
            ))),
        }
    }
}

/// Files in the transfer directory that are removed when this goes out of scope, on every path
/// (success, error, or the job being cancelled mid-call).
struct TransferFiles(Vec<PathBuf>);

impl Drop for TransferFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "sidecar_transfer_file_not_removed");
                }
            }
        }
    }
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ParseFailure> {
    tokio::fs::write(path, bytes).await.map_err(|e| {
        // A missing or full transfer directory may be fixed by an operator: retry.
        ParseFailure::Transient(format!(
            "Cannot write {} for the parser sidecar: {e}",
            path.display()
        ))
    })
}

#[async_trait::async_trait]
impl CoredumpParser for SidecarParser {
    fn name(&self) -> &'static str {
        "sidecar"
    }

    async fn parse(&self, request: ParseRequest) -> Result<ParsedDump, ParseFailure> {
        let unique = format!(
            "{}-{}-job{}-{}",
            request.model_code,
            request.coredump_id,
            request.job_id,
            uuid::Uuid::new_v4().simple()
        );
        let core_name = format!("coredump-{unique}.dmp");
        let elf_name = format!("firmware-{unique}.elf");
        let core_path = self.xfer_dir.join(&core_name);
        let elf_path = self.xfer_dir.join(&elf_name);
        let elf = request.elf.fetch().await?;
        let _cleanup = TransferFiles(vec![core_path.clone(), elf_path.clone()]);
        write_file(&core_path, &request.dump).await?;
        write_file(&elf_path, &elf).await?;
        let text = self.call(&core_name, &elf_name, &request.chip).await?;
        // esp-coredump's text is for people: no structured report, so no signature and no crash
        // group for sidecar-parsed dumps (README, "Crash groups").
        Ok(ParsedDump {
            text,
            report_json: None,
            signature: None,
        })
    }
}
