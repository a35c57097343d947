//! Provisioning packages (SPEC §13): the eight strings a device's firmware reads from NVS
//! namespace `prov`, as JSON (`GET /api/iot/provisioning`) or as an NVS partition image
//! (`GET /api/devices/{id}/provisioning`, flashed by the web UI).
//!
//! Secrets are stored hashed, so a package cannot carry the current secret: it carries a newly
//! minted *pending* secret (replacing any earlier pending one). The current secret keeps working
//! until the device first authenticates with the new one (`super::rotation::complete`). Every
//! check (settings, partition size, value lengths) runs before the secret is stored, so a refused
//! request leaves nothing behind.

use crate::config::CredentialSettings;
use crate::db::{credentials as queries, Db, DbError};
use crate::fleet::{ClientId, DeviceSecret};

/// The namespace the firmware reads.
pub const NAMESPACE: &str = "prov";

/// The keys, in the order the original wrote them.
pub const KEYS: [&str; 8] = [
    "device_key",
    "client_id",
    "client_secret",
    "token_url",
    "base_url",
    "mqtt_url",
    "wifi_ssid",
    "wifi_password",
];

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    /// A missing setting, an unusable partition size or value: 400 with this message.
    #[error("{0}")]
    Invalid(String),
    #[error("Device {0} was not found")]
    DeviceNotFound(i64),
    /// The secret the device's request proved was replaced meanwhile (a credential from another
    /// process's cache, say): nothing is minted for it.
    #[error("Invalid credentials: the secret this request proved was replaced")]
    SecretReplaced,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A package: the eight values in [`KEYS`] order.
#[derive(Clone)]
pub struct Package {
    pub values: [String; 8],
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Package(***)")
    }
}

impl Package {
    /// The device's key (the package's first value).
    pub fn device_key(&self) -> &str {
        &self.values[0]
    }

    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        KEYS.into_iter().zip(self.values.iter().map(String::as_str))
    }

    /// The NVS partition image of exactly `partition_size` bytes.
    pub fn nvs_image(&self, partition_size: usize) -> Result<Vec<u8>, ProvisioningError> {
        let entries: Vec<(&str, Option<&str>)> = self.fields().map(|(k, v)| (k, Some(v))).collect();
        esp_nvs_image::provisioning_image(NAMESPACE, &entries, partition_size)
            .map_err(|e| ProvisioningError::Invalid(e.to_string()))
    }
}

fn missing(key: &str) -> ProvisioningError {
    ProvisioningError::Invalid(format!("Provisioning field '{key}' is missing"))
}

/// The settings every package needs, checked in key order, the original's messages. The token
/// URL is derived from the base URL, so a missing `DEVICE_BASEURL` is reported as `base_url`.
pub fn check_settings(settings: &CredentialSettings) -> Result<(), ProvisioningError> {
    settings
        .device_base_url
        .as_ref()
        .ok_or_else(|| missing("base_url"))?;
    settings
        .device_mqtt_url
        .as_ref()
        .ok_or_else(|| missing("mqtt_url"))?;
    settings
        .wifi_ssid
        .as_ref()
        .ok_or_else(|| missing("wifi_ssid"))?;
    settings
        .wifi_password
        .as_ref()
        .ok_or_else(|| missing("wifi_password"))?;
    Ok(())
}

/// Mints a pending secret for device `id` and returns its package, checked by `check` (e.g. that
/// its NVS image can be built) before the secret is stored. `proved`: the secret hash a device's
/// own request proved, which must still be its current or pending one (a revoked secret, still
/// in a lookup cache for a moment, must not turn into a fresh one); `None` for an admin.
pub async fn mint<T>(
    db: &Db,
    settings: &CredentialSettings,
    id: i64,
    proved: Option<&str>,
    check: impl FnOnce(&Package) -> Result<T, ProvisioningError>,
) -> Result<(Package, T), ProvisioningError> {
    let mut tx = db.begin().await?;
    let device = queries::identity(&mut tx, id)
        .await?
        .ok_or(ProvisioningError::DeviceNotFound(id))?;
    check_settings(settings)?;
    let secret = DeviceSecret::generate();
    let base_url = settings.device_base_url.clone().unwrap_or_default();
    let package = Package {
        values: [
            device.key.clone(),
            ClientId::format(&device.model_code, &device.key),
            secret.expose().to_string(),
            format!("{base_url}/api/iot/token"),
            base_url,
            settings.device_mqtt_url.clone().unwrap_or_default(),
            settings.wifi_ssid.clone().unwrap_or_default(),
            settings
                .wifi_password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        ],
    };
    let checked = check(&package)?;
    if !queries::set_pending_secret_if(&mut tx, id, &secret.hash(), proved).await? {
        return Err(match proved {
            Some(_) => ProvisioningError::SecretReplaced,
            None => ProvisioningError::DeviceNotFound(id),
        });
    }
    tx.commit().await?;
    tracing::info!(device_key = %device.key, "provisioning_package_minted");
    Ok((package, checked))
}
