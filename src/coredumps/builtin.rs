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
            ..
        } = request;
        let result = tokio::task::spawn_blocking(move || {
            let core = esp_coredump::parse_dump(&dump)?;
            esp_coredump::analyse(&core, &elf)
        })
        .await
        .map_err(|e| ParseFailure::Permanent(format!("The core dump parser failed: {e}")))?;
        match result {
            Ok(report) => {
                let report_json = serde_json::to_string(&report).map_err(|e| {
                    ParseFailure::Permanent(format!("Cannot serialise the crash report: {e}"))
                })?;
                Ok(ParsedDump {
                    text: report.to_text(),
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
