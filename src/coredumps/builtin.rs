//! The built-in parser: the `esp-coredump` crate, run on a blocking thread because decoding,
//! unwinding and DWARF symbolisation are CPU work that must not stall the async workers.

use super::parser::{CoredumpParser, ParseFailure, ParseRequest, ParsedDump};

pub struct BuiltinParser;

#[async_trait::async_trait]
impl CoredumpParser for BuiltinParser {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn parse(&self, request: ParseRequest) -> Result<ParsedDump, ParseFailure> {
        let ParseRequest {
            dump,
            elf,
            model_code,
            firmware_version,
            chip,
            ..
        } = request;
        let result = tokio::task::spawn_blocking(move || {
            let core = esp_coredump::parse_dump(&dump)?;
            esp_coredump::analyse(&core, &elf)
        })
        .await
        .map_err(|e| ParseFailure::Permanent(format!("The core dump parser failed: {e}")))?;
        match result {
            Ok(mut report) => {
                if let Some(warning) = chip_mismatch(&chip, &report.chip) {
                    report.warnings.push(warning);
                }
                let report_json = serde_json::to_string(&report).map_err(|e| {
                    ParseFailure::Permanent(format!("Cannot serialise the crash report: {e}"))
                })?;
                let signing = std::time::Instant::now();
                let signature = esp_coredump::crash_signature(&report);
                metrics::histogram!(crate::telemetry::COREDUMP_GROUPING_DURATION,
                    "step" => "sign")
                .record(signing.elapsed().as_secs_f64());
                Ok(ParsedDump {
                    text: report.to_text(),
                    signature,
                    report_json: Some(report_json),
                })
            }
            Err(e) if e.is_malformed() => {
                Err(ParseFailure::Permanent(format!("Malformed core dump: {e}")))
            }
            Err(e) => Err(ParseFailure::Permanent(format!(
                "The firmware ELF of {model_code} version {firmware_version} cannot be used: {e}"
            ))),
        }
    }
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
