//! Device models and devices: the domain types parsed at the edge, and the rules about configs.

mod client_id;
mod config;
mod device_key;
mod firmware_version;
mod model_code;
mod schema_limits;

pub use client_id::ClientId;
pub use config::{ConfigSchema, DeviceConfig, InvalidConfig};
pub use device_key::{hash_device_secret, DeviceKey, DeviceSecret};
pub use firmware_version::{FirmwareVersion, MAX_VERSION_LEN};
pub use model_code::ModelCode;
pub use schema_limits::{MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, MAX_SCHEMA_EXPANSION};
