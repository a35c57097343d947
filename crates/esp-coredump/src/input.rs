//! Input decoding and auto-detection: raw flash bytes, base64 UART text
//! (line by line, with or without the CORE DUMP START/END markers, log lines
//! ignored) or an already extracted ELF core file.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::DumpError;
use crate::header::looks_like_raw;

/// How the dump was given to the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Raw bytes as stored in the flash partition.
    Raw,
    /// Base64 text as printed over UART.
    Base64,
    /// An ELF core file (`--save-core` output, or the ELF inside a dump).
    ElfCore,
}

const START_MARKER: &str = "CORE DUMP START";
const END_MARKER: &str = "CORE DUMP END";
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Detect the input format. Returns the format and the decoded bytes
/// (the raw dump, or the ELF core for [`InputFormat::ElfCore`]).
pub fn decode_input(input: &[u8]) -> Result<(InputFormat, Vec<u8>), DumpError> {
    if input.starts_with(ELF_MAGIC) {
        return Ok((InputFormat::ElfCore, input.to_vec()));
    }
    if input.len() >= 8 && input[..8].iter().all(|&b| b == 0xFF) {
        return Err(DumpError::Empty);
    }
    if looks_like_raw(input) {
        return Ok((InputFormat::Raw, input.to_vec()));
    }
    let decoded = decode_base64_text(input)?;
    if decoded.starts_with(ELF_MAGIC) {
        return Ok((InputFormat::ElfCore, decoded));
    }
    Ok((InputFormat::Base64, decoded))
}

/// Decode UART base64 text: every line is its own base64 unit.
///
/// When a `CORE DUMP START` marker is present only the lines between it and
/// the `CORE DUMP END` marker are used (the last such block wins). Without
/// markers, the input is split into runs of consecutive base64 lines and the
/// first run that decodes to a dump header or ELF (else the longest) is used,
/// so surrounding log lines are ignored.
pub fn decode_base64_text(input: &[u8]) -> Result<Vec<u8>, DumpError> {
    let text = String::from_utf8_lossy(input);
    let has_start = text.contains(START_MARKER);
    let mut runs: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = if has_start { None } else { Some(Vec::new()) };
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if line.contains(START_MARKER) {
            if let Some(run) = current.take() {
                runs.push(run);
            }
            current = Some(Vec::new());
            continue;
        }
        if line.contains(END_MARKER) {
            if let Some(run) = current.take() {
                runs.push(run);
            }
            if !has_start {
                current = Some(Vec::new());
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let decoded = if is_base64_line(line) {
            STANDARD.decode(line).ok()
        } else {
            None
        };
        match (decoded, current.as_mut()) {
            (Some(bytes), Some(run)) => run.extend_from_slice(&bytes),
            // A log line ends a run when no markers are used.
            (None, Some(run)) if !has_start && !run.is_empty() => {
                runs.push(std::mem::take(run));
            }
            _ => {}
        }
    }
    if let Some(run) = current.take() {
        runs.push(run);
    }
    runs.retain(|r| !r.is_empty());
    let chosen = if has_start {
        runs.pop()
    } else {
        let plausible = runs
            .iter()
            .position(|r| r.starts_with(ELF_MAGIC) || looks_like_raw(r));
        match plausible {
            Some(i) => Some(runs.swap_remove(i)),
            None => runs.into_iter().max_by_key(|r| r.len()),
        }
    };
    chosen.ok_or_else(|| {
        DumpError::UnknownFormat(
            "not an ELF core, not a raw dump and no base64 dump lines found".into(),
        )
    })
}

fn is_base64_line(line: &str) -> bool {
    if !line.len().is_multiple_of(4) {
        return false;
    }
    let bytes = line.as_bytes();
    let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return false;
    }
    bytes[..bytes.len() - pad]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
