//! Firmware builds (SPEC §3, §4, §7): validating uploaded bundles ([`bundle`]), storing them under
//! golden rule 1 and managing stored versions ([`store`]), per-model retention ([`retention`]),
//! and the in-memory cache of images that downloads are served from ([`cache`]). HTTP lives in `src/http/firmware.rs`; nothing here depends on it, so the
//! `migrate-to-s3` command can store legacy bundles through the same code.

pub mod bundle;
pub mod cache;
pub mod retention;
pub mod store;

use crate::storage::{InvalidKey, ObjectKey, FIRMWARE_ARTIFACTS};

/// The key of one artifact: `firmware/{model_code}/{version}/{artifact}`.
pub fn artifact_key(
    model_code: &str,
    version: &str,
    artifact: &str,
) -> Result<ObjectKey, InvalidKey> {
    ObjectKey::from_segments(&["firmware", model_code, version, artifact])
}

/// The five keys of one stored version, in [`FIRMWARE_ARTIFACTS`] order.
pub fn artifact_keys(model_code: &str, version: &str) -> Result<Vec<ObjectKey>, InvalidKey> {
    FIRMWARE_ARTIFACTS
        .iter()
        .map(|artifact| artifact_key(model_code, version, artifact))
        .collect()
}

/// The `Content-Type` an artifact is served with.
pub fn content_type(artifact: &str) -> &'static str {
    match artifact {
        "sdkconfig" | "firmware.map" => "text/plain; charset=utf-8",
        "version.json" => "application/json",
        _ => "application/octet-stream",
    }
}
