//! Validating a device config against its model's schema: on a blocking thread, outside any
//! transaction, within `CONFIG_VALIDATION_TIMEOUT_SECONDS`.
//!
//! A schema set through the API is bounded (`crate::fleet::ConfigSchema::parse`), but a config
//! may still be large, and a model may hold a schema stored before the bounds existed (or written
//! to the database directly). So validation never runs on the async workers (it would stall
//! every request they serve) nor inside a transaction (on SQLite a write transaction blocks every
//! other writer). The caller reads the model, validates, then writes in a transaction of its own
//! that checks the schema is still the one validated against.
//!
//! A thread cannot be stopped, so a validation that overruns its budget is answered (400) and
//! left to finish; at most [`CONCURRENT_VALIDATIONS`] run at once, and a validation that cannot
//! get a slot within its budget is 503; one that gets a slot then has the whole budget to run
//! (waiting for others is not its fault). The stored schema is checked against the same bounds
//! before anything else, so a schema that would run for hours is refused in microseconds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::RegistryError;
use crate::db::device_models::DeviceModelRow;
use crate::fleet::{ConfigSchema, DeviceConfig};
use crate::telemetry::CONFIG_VALIDATIONS_REFUSED;

/// Validations against a schema running at once per process: each may take a core for up to its
/// budget (and, overrun, until it ends), and device writes are admin work, not a hot path.
pub const CONCURRENT_VALIDATIONS: usize = 2;

/// Runs config validations within a time budget and a bounded number of threads.
#[derive(Debug)]
pub struct ConfigValidator {
    budget: Duration,
    slots: Arc<Semaphore>,
}

impl ConfigValidator {
    /// Validations that take at most `budget` (`CONFIG_VALIDATION_TIMEOUT_SECONDS`).
    pub fn new(budget: Duration) -> Self {
        ConfigValidator {
            budget,
            slots: Arc::new(Semaphore::new(CONCURRENT_VALIDATIONS)),
        }
    }

    /// Parses `text` and checks it against `model`'s schema, if it has one.
    pub async fn check(
        &self,
        text: &str,
        model: &DeviceModelRow,
    ) -> Result<DeviceConfig, RegistryError> {
        let Some(schema) = model.config_schema.clone() else {
            return DeviceConfig::parse(text).map_err(|e| RegistryError::Invalid(e.0));
        };
        let deadline = Instant::now() + self.budget;
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                metrics::counter!(CONFIG_VALIDATIONS_REFUSED, "reason" => "busy").increment(1);
                tracing::warn!(model_code = %model.code, "config_validation_busy");
                return Err(RegistryError::Busy(
                    "Too many config validations are in progress; retry later".into(),
                ));
            }
        };
        // The budget is the validation's own: time spent waiting for a slot (other requests'
        // validations) must not turn a quick one into a 400 that blames the schema.
        let deadline = Instant::now() + self.budget;
        let (text, code, id) = (text.to_string(), model.code.clone(), model.id);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the validation ends, even after its request was answered.
            let _slot = slot;
            validate(&text, &schema, &code, id)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panicked)) => Err(RegistryError::Broken(format!(
                "Config validation failed unexpectedly: {panicked}"
            ))),
            Err(_) => {
                metrics::counter!(CONFIG_VALIDATIONS_REFUSED, "reason" => "over_budget")
                    .increment(1);
                tracing::warn!(model_code = %model.code, budget_seconds = self.budget.as_secs_f64(), "config_validation_over_budget");
                Err(RegistryError::Invalid(format!(
                    "Config validation failed: validating against the config_schema of \
                     DeviceModel {} took longer than {} s (CONFIG_VALIDATION_TIMEOUT_SECONDS); \
                     simplify the schema or the config",
                    model.code,
                    self.budget.as_secs_f64()
                )))
            }
        }
    }
}

/// The work done on the blocking thread: parse the config, check and compile the stored schema,
/// validate.
fn validate(text: &str, schema: &str, code: &str, id: i64) -> Result<DeviceConfig, RegistryError> {
    let config = DeviceConfig::parse(text).map_err(|e| RegistryError::Invalid(e.0))?;
    let schema = ConfigSchema::parse(schema).map_err(|e| {
        RegistryError::Invalid(format!(
            "Config validation failed: DeviceModel {code} has a config_schema this service \
             cannot use ({e}); replace it with PUT /api/device-models/{id}"
        ))
    })?;
    schema
        .check(&config.value)
        .map_err(|e| RegistryError::Invalid(e.0))?;
    Ok(config)
}

/// Refuses the write when the model's schema is no longer the one the config was validated
/// against (changed by a request that committed in between): validating again here would mean
/// validating inside the write transaction, and a schema change is rare enough that a retry
/// costs nothing.
pub fn ensure_schema_unchanged(
    validated_against: &DeviceModelRow,
    now: &DeviceModelRow,
) -> Result<(), RegistryError> {
    if validated_against.config_schema == now.config_schema {
        return Ok(());
    }
    Err(RegistryError::Conflict(format!(
        "The config_schema of DeviceModel {} changed while the config was being validated; \
         retry",
        now.code
    )))
}
