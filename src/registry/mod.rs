//! The fleet registry's operations (SPEC §5, §6): creating, changing and deleting device models
//! and devices, each one transaction with its event, its outbox entries (golden rule 2) and its
//! cache invalidation. HTTP handlers parse the request, call one operation and map its error.

pub mod devices;
pub mod models;
pub mod validation;

use crate::db::DbError;
use crate::storage::InvalidKey;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The input is not acceptable: 400 with this message.
    #[error("{0}")]
    Invalid(String),
    #[error("DeviceModel {0} was not found")]
    ModelNotFound(i64),
    #[error("Device {0} was not found")]
    DeviceNotFound(i64),
    /// 409 `RECORD_EXISTS`.
    #[error("{0}")]
    Exists(String),
    /// 409 `CONFLICT`.
    #[error("{0}")]
    Conflict(String),
    /// Stored data this service cannot use (500).
    #[error("{0}")]
    Broken(String),
    /// Too much work of this kind is in progress: 503, retry later.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Key(#[from] InvalidKey),
}
