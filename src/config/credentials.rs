//! Settings of device credentials: what provisioning packages tell devices, the tokens
//! iotsupport issues, and fleet rotation (SPEC §13). Variable names follow the Python service
//! where it had them (`DEVICE_BASEURL`, `DEVICE_MQTT_URL`, `WIFI_SSID`, `WIFI_PASSWORD`,
//! `ROTATION_*`).

use std::time::Duration;

use super::env::{invalid, ConfigError, Env};
use super::Secret;

/// What provisioning and the token endpoint need.
#[derive(Clone, Debug)]
pub struct CredentialSettings {
    /// `DEVICE_BASEURL` (else `BASEURL`), without a trailing `/`: the `base_url` devices are given;
    /// their `token_url` is `{base_url}/api/iot/token`. Unset: provisioning answers 400.
    pub device_base_url: Option<String>,
    /// `DEVICE_MQTT_URL` (else `MQTT_URL`): the broker devices are told to use.
    pub device_mqtt_url: Option<String>,
    pub wifi_ssid: Option<String>,
    pub wifi_password: Option<Secret>,
    /// Lifetime of issued device tokens (`DEVICE_TOKEN_TTL_SECONDS`, default 3600).
    pub token_ttl: Duration,
    /// `iss` of issued tokens (`DEVICE_TOKEN_ISSUER`, default the device base URL, else
    /// `iotsupport`).
    pub token_issuer: String,
    /// `aud` of issued tokens (`DEVICE_TOKEN_AUDIENCE`, default `iotsupport-devices`).
    pub token_audience: String,
    /// The PEM (PKCS#8, EC P-256) of `DEVICE_TOKEN_SIGNING_KEY_FILE`; unset: a key generated once
    /// and kept in the database.
    pub signing_key_pem: Option<Secret>,
}

/// Fleet rotation.
#[derive(Clone, Debug)]
pub struct RotationSettings {
    /// `ROTATION_CRON`: when the whole fleet is queued for rotation (five fields, UTC, with the
    /// original's `#` for "nth weekday", e.g. `0 8 * * 6#1`). Unset: only manual triggers.
    pub cron: Option<String>,
    /// `ROTATION_TIMEOUT_SECONDS` (default 300): a device `PENDING` longer than this times out.
    pub timeout: Duration,
    /// `ROTATION_CRITICAL_THRESHOLD_DAYS` (default 7; 0 also means 7, as in the original).
    pub critical_threshold_days: i64,
    /// Whether a device entering `PENDING` queues its MQTT provisioning notification (`MQTT_URL`
    /// is set).
    pub notify: bool,
}

/// Longest and shortest accepted token lifetimes.
const TOKEN_TTL_RANGE: std::ops::RangeInclusive<f64> = 60.0..=86_400.0;

pub(super) fn credentials(env: &Env) -> Result<CredentialSettings, ConfigError> {
    // The variable the value came from, for the message.
    let (variable, device_base_url) = match env.get("DEVICE_BASEURL") {
        Some(url) => ("DEVICE_BASEURL", Some(url)),
        None => ("BASEURL", env.get("BASEURL")),
    };
    let device_base_url = device_base_url.map(|url| url.trim_end_matches('/').to_string());
    if let Some(url) = &device_base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(variable, "must be an http:// or https:// URL"));
        }
    }
    let ttl: f64 = env.parse("DEVICE_TOKEN_TTL_SECONDS", 3600.0)?;
    if !TOKEN_TTL_RANGE.contains(&ttl) {
        return Err(invalid(
            "DEVICE_TOKEN_TTL_SECONDS",
            "must be between 60 and 86400 seconds",
        ));
    }
    let signing_key_pem = match env.get("DEVICE_TOKEN_SIGNING_KEY_FILE") {
        None => None,
        // Whether it can sign is checked by `serve` before it starts (`crate::cli`).
        Some(path) => Some(Secret::new(std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "DEVICE_TOKEN_SIGNING_KEY_FILE",
                format!("cannot read {path}: {e}"),
            )
        })?)),
    };
    Ok(CredentialSettings {
        token_issuer: env
            .get("DEVICE_TOKEN_ISSUER")
            .map(str::to_string)
            .or_else(|| device_base_url.clone())
            .unwrap_or_else(|| "iotsupport".to_string()),
        token_audience: env
            .get("DEVICE_TOKEN_AUDIENCE")
            .unwrap_or("iotsupport-devices")
            .to_string(),
        device_base_url,
        device_mqtt_url: env
            .get("DEVICE_MQTT_URL")
            .or_else(|| env.get("MQTT_URL"))
            .map(str::to_string),
        wifi_ssid: env.get_verbatim("WIFI_SSID").map(str::to_string),
        wifi_password: env.get_verbatim("WIFI_PASSWORD").map(Secret::new),
        token_ttl: Duration::from_secs_f64(ttl),
        signing_key_pem,
    })
}

pub(super) fn rotation(env: &Env) -> Result<RotationSettings, ConfigError> {
    let cron = env.get("ROTATION_CRON").map(str::to_string);
    if let Some(pattern) = &cron {
        crate::config::parse_cron(pattern).map_err(|e| invalid("ROTATION_CRON", e))?;
    }
    let days: i64 = env.parse("ROTATION_CRITICAL_THRESHOLD_DAYS", 7)?;
    if !(0..=super::env::MAX_DAYS as i64).contains(&days) {
        return Err(invalid(
            "ROTATION_CRITICAL_THRESHOLD_DAYS",
            format!("must be from 0 to {} days", super::env::MAX_DAYS),
        ));
    }
    Ok(RotationSettings {
        cron,
        timeout: env.seconds("ROTATION_TIMEOUT_SECONDS", 300.0)?,
        critical_threshold_days: if days == 0 { 7 } else { days },
        notify: false,
    })
}
