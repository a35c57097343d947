//! One interface over the two ways of turning a dump into a crash report.
//!
//! The job handler fetches the dump and the firmware ELF, hands both to a [`CoredumpParser`] and
//! only needs to know whether a failure is worth retrying ([`ParseFailure::Transient`]: the
//! sidecar is down or timed out) or final ([`ParseFailure::Permanent`]: the dump is malformed, the
//! sidecar rejected it), in which case the message is what the admin sees.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::Config;

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
    pub elf: Bytes,
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
/// built-in parser.
pub fn from_config(config: &Config) -> Arc<dyn CoredumpParser> {
    match (&config.parse_sidecar_url, &config.parse_sidecar_xfer_dir) {
        (Some(url), Some(dir)) => Arc::new(super::sidecar::SidecarParser::new(url, dir.clone())),
        _ => Arc::new(super::builtin::BuiltinParser),
    }
}
