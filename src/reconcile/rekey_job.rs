//! The one-off job that moves objects an earlier release stored under percent-encoded keys
//! (`firmware/m/2.1%7Erc1/…` for version `2.1~rc1`) to their keys, so an upgraded deployment
//! serves those versions without anyone running `reconcile --repair`. A migration queues it once;
//! it is idempotent, so a retry or a second run moves nothing.

use std::time::Duration;

use crate::db::Db;
use crate::jobs::worker::JobHandler;
use crate::jobs::{Job, JobOutcome};
use crate::storage::Storage;

pub const REKEY_JOB: &str = "rekey_firmware_objects";

pub struct RekeyFirmwareObjects {
    pub db: Db,
    pub storage: Storage,
}

#[async_trait::async_trait]
impl JobHandler for RekeyFirmwareObjects {
    fn kind(&self) -> &'static str {
        REKEY_JOB
    }

    async fn run(&self, _job: &Job) -> JobOutcome {
        match super::repair::rekey_legacy_encoded(&self.db, &self.storage).await {
            Ok(moved) => {
                tracing::info!(moved, "firmware_rekey_finished");
                JobOutcome::Completed
            }
            Err(e) => JobOutcome::Retry {
                after: Duration::from_secs(30),
                error: e.to_string(),
            },
        }
    }
}
