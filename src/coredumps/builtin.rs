//! The built-in parser: the `esp-coredump` crate. The firmware ELF comes loaded from the parse
//! cache ([`ParseCache`], fetched and loaded only on a miss); decoding, unwinding, symbolisation
//! and rendering run on a blocking thread because they are CPU work that must not stall the async
//! workers.
//!
//! Which failure is reported when several apply is the order of the steps before the cache:
//! a missing ELF, then a malformed dump, then an ELF that cannot be loaded.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use esp_coredump::Firmware;

use super::parse_cache::{LoadError, ParseCache};
use super::parser::{CoredumpParser, ParseFailure, ParseRequest, ParsedDump};
use crate::telemetry::{COREDUMP_GROUPING_DURATION, COREDUMP_PARSE_STEP_DURATION};

pub struct BuiltinParser {
    cache: Arc<ParseCache>,
}

impl BuiltinParser {
    pub fn new(cache: Arc<ParseCache>) -> Self {
        BuiltinParser { cache }
    }
}

#[async_trait::async_trait]
impl CoredumpParser for BuiltinParser {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn parse(&self, request: ParseRequest) -> Result<ParsedDump, ParseFailure> {
        let ParseRequest {
            dump, elf, chip, ..
        } = request;
        let build = format!("{} version {}", elf.model_code, elf.firmware_version);
        let started = Instant::now();
        let firmware = self
            .cache
            .firmware(elf.sha256.as_deref(), || elf.fetch())
            .await;
        metrics::histogram!(COREDUMP_PARSE_STEP_DURATION, "step" => "firmware")
            .record(started.elapsed().as_secs_f64());
        let firmware = match firmware {
            Ok(firmware) => firmware,
            Err(LoadError::Fetch(failure)) => return Err(failure),
            Err(LoadError::Firmware(reason)) => {
                // A malformed dump is the first thing to say, as when the ELF was loaded after
                // the dump was decoded. Decoding is CPU work: off the async workers.
                let decoded = tokio::task::spawn_blocking(move || {
                    esp_coredump::parse_dump(&dump).err().map(|e| e.to_string())
                })
                .await
                .map_err(|e| {
                    ParseFailure::Permanent(format!("The core dump parser failed: {e}"))
                })?;
                return Err(ParseFailure::Permanent(match decoded {
                    Some(e) => format!("Malformed core dump: {e}"),
                    None => format!("The firmware ELF of {build} cannot be used: {reason}"),
                }));
            }
        };
        let started = Instant::now();
        let parsed = tokio::task::spawn_blocking(move || analyse(&dump, &firmware, &chip, &build))
            .await
            .map_err(|e| ParseFailure::Permanent(format!("The core dump parser failed: {e}")))?;
        metrics::histogram!(COREDUMP_PARSE_STEP_DURATION, "step" => "analyse")
            .record(started.elapsed().as_secs_f64());
        parsed
    }
}

/// Decodes the dump, builds its report with the loaded firmware and renders it (text, JSON,
/// crash signature). `build` names the firmware in messages (`MODEL version VERSION`).
fn analyse(
    dump: &Bytes,
    firmware: &Firmware,
    chip: &str,
    build: &str,
) -> Result<ParsedDump, ParseFailure> {
    let mut report = esp_coredump::parse_dump(dump)
        .and_then(|core| esp_coredump::analyse_with(&core, firmware))
        .map_err(|e| {
            ParseFailure::Permanent(if e.is_malformed() {
                format!("Malformed core dump: {e}")
            } else {
                format!("The firmware ELF of {build} cannot be used: {e}")
            })
        })?;
    if let Some(warning) = chip_mismatch(chip, &report.chip) {
        report.warnings.push(warning);
    }
    let report_json = serde_json::to_string(&report)
        .map_err(|e| ParseFailure::Permanent(format!("Cannot serialise the crash report: {e}")))?;
    let signing = Instant::now();
    let signature = esp_coredump::crash_signature(&report);
    metrics::histogram!(COREDUMP_GROUPING_DURATION, "step" => "sign")
        .record(signing.elapsed().as_secs_f64());
    Ok(ParsedDump {
        text: report.to_text(),
        signature,
        report_json: Some(report_json),
    })
}

/// A warning when the chip the device reported with its upload is not the chip the dump comes
/// from (a misconfigured device, or a dump uploaded under another device's name). Spelling is
/// ignored: `ESP32-S3` and `esp32s3` are the same chip.
fn chip_mismatch(reported: &str, from_dump: &str) -> Option<String> {
    let normal = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    (normal(reported) != normal(from_dump)).then(|| {
        format!("the device reported chip {reported:?} with its upload, but the dump is from an {from_dump}")
    })
}

#[cfg(test)]
mod tests {
    use super::chip_mismatch;

    #[test]
    fn a_different_chip_is_a_warning_and_spelling_is_not() {
        assert_eq!(chip_mismatch("esp32", "esp32"), None);
        assert_eq!(chip_mismatch("ESP32-S3", "esp32s3"), None);
        let warning = chip_mismatch("esp32c3", "esp32").unwrap();
        assert!(
            warning.contains("\"esp32c3\"") && warning.ends_with("an esp32"),
            "{warning}"
        );
    }
}
