//! Firmware builds (SPEC §3, §4, §7): validating uploaded bundles ([`bundle`]), storing them under
//! golden rule 1 while they are validated ([`upload`]) and managing stored versions ([`store`]), per-model retention ([`retention`]),
//! and the in-memory cache of images that downloads are served from ([`cache`]). HTTP lives in `src/http/firmware.rs`; nothing here depends on it, so the
//! `migrate-to-s3` command can store legacy bundles through the same code.

pub mod bundle;
pub mod cache;
pub mod early;
pub mod retention;
pub mod store;
pub mod upload;

pub use crate::layout::Artifact;
