//! One interface over the two ways of turning a dump into a crash report.
//!
//! The job handler fetches the dump, hands it with where to find the firmware ELF
//! ([`ElfSource`]) to a [`CoredumpParser`] and only needs to know whether a failure is worth
//! retrying ([`ParseFailure::Transient`]: the object store or the sidecar is down or timed out) or
//! final ([`ParseFailure::Permanent`]: no ELF, the dump is malformed, the sidecar rejected it), in
//! which case the message is what the admin sees. The built-in parser takes the loaded ELF from
//! its parse cache and fetches it only on a miss; the sidecar always fetches it.

use std::sync::Arc;

use bytes::Bytes;

use super::parse_cache::ParseCache;
use crate::config::Config;
use crate::storage::{ObjectKey, Storage, StorageError};

/// The firmware ELF of a dump's build: where it is stored and the SHA-256 its `firmware_versions`
/// row records. Fetched only by a parser that needs its bytes.
#[derive(Clone)]
pub struct ElfSource {
    pub storage: Storage,
    pub key: ObjectKey,
    /// `None` without a firmware row for the version, or for legacy rows.
    pub sha256: Option<String>,
    pub model_code: String,
    pub firmware_version: String,
}

impl std::fmt::Debug for ElfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfSource")
            .field("key", &self.key)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl ElfSource {
    /// The ELF's bytes. Missing is permanent (the admin sees the message); an unavailable store
    /// is transient.
    pub async fn fetch(&self) -> Result<Bytes, ParseFailure> {
        let read = crate::storage::read_confirmed(&self.storage, &self.key).await;
        read.map_err(|e| match e {
            StorageError::NotFound { .. } => ParseFailure::Permanent(format!(
                "No firmware ELF for model {} version {}: {} does not exist",
                self.model_code, self.firmware_version, self.key
            )),
            StorageError::InvalidKey(k) => ParseFailure::Permanent(k.to_string()),
            other => ParseFailure::Transient(format!("object store: {other}")),
        })
    }
}

/// Everything a parser gets for one dump.
#[derive(Debug, Clone)]
pub struct ParseRequest {
    /// The job running this parse: part of the sidecar's transfer file names, so two parses never
    /// share a file.
    pub job_id: i64,
    pub coredump_id: i64,
    /// As reported by the device on upload.
    pub chip: String,
    pub model_code: String,
    pub firmware_version: String,
    pub dump: Bytes,
    pub elf: ElfSource,
}

/// A successful parse.
#[derive(Debug, Clone)]
pub struct ParsedDump {
    /// The readable report (`parsed_output`).
    pub text: String,
    /// The structured report as JSON text, when the backend produces one (the built-in parser).
    pub report_json: Option<String>,
    /// The crash signature of the structured report, which groups the dump (SPEC §15); `None`
    /// without a structured report (the sidecar) or when the report gives nothing to sign.
    pub signature: Option<esp_coredump::CrashSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    /// Retrying later may help (sidecar unreachable, 5xx, timeout).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help; the message says why.
    #[error("{0}")]
    Permanent(String),
}

#[async_trait::async_trait]
pub trait CoredumpParser: Send + Sync + 'static {
    /// `builtin` or `sidecar`, for logs.
    fn name(&self) -> &'static str;
    async fn parse(&self, request: ParseRequest) -> Result<ParsedDump, ParseFailure>;
}

/// The sidecar when both `PARSE_SIDECAR_URL` and `PARSE_SIDECAR_XFER_DIR` are set, otherwise the
/// built-in parser with a parse cache of `PARSE_CACHE_BYTES`.
pub fn from_config(config: &Config) -> Arc<dyn CoredumpParser> {
    match (&config.parse_sidecar_url, &config.parse_sidecar_xfer_dir) {
        (Some(url), Some(dir)) => Arc::new(super::sidecar::SidecarParser::new(url, dir.clone())),
        _ => Arc::new(super::builtin::BuiltinParser::new(ParseCache::new(
            config.parse_cache_bytes,
        ))),
    }
}
