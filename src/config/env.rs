//! Reading variables from the environment: [`Env`] (a view tests can build from pairs) and the
//! typed getters every setting goes through, each failing with an error that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Why the configuration could not be read. Always names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

pub(crate) fn invalid(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        reason: reason.into(),
    }
}

/// The longest duration a setting may have: 100 years. Durations are added to and subtracted
/// from timestamps, which a value near `Duration::MAX` would overflow (a panic, or a fallback to
/// zero that turns "keep for ever" into "keep nothing").
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600 + 25 * 24 * 3600);

/// The most days a setting in days may have ([`MAX_DURATION`]).
pub const MAX_DAYS: f64 = 36_525.0;

/// A view of the environment, so tests can read a configuration without touching the process env.
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    /// The value of a variable; an empty value counts as unset (as in the Python service).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// Whether the variable is in the environment at all, even empty.
    pub(crate) fn is_set(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The value exactly as set, surrounding spaces included (a Wi-Fi SSID or passphrase may
    /// begin or end with one); an empty value counts as unset.
    pub(crate) fn get_verbatim(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| invalid(name, format!("cannot parse {raw:?}: {e}"))),
        }
    }

    pub(crate) fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(invalid(
                name,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    pub(crate) fn positive<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Default + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parse(name, default)?;
        // Written so that NaN, which compares false with everything, is refused too.
        if value.partial_cmp(&T::default()) != Some(std::cmp::Ordering::Greater) {
            return Err(invalid(name, "must be greater than zero"));
        }
        Ok(value)
    }

    /// A number greater than zero and at most `max` (which keeps out infinity, and values that
    /// would overflow the time arithmetic they feed).
    /// A count between 1 and `max`: limits that size semaphores and tables, where a value past
    /// what the process could ever hold panicked at start instead of being refused.
    pub(crate) fn count_at_most(
        &self,
        name: &'static str,
        default: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        let value: usize = self.parse(name, default)?;
        if !(1..=max).contains(&value) {
            return Err(invalid(name, format!("must be between 1 and {max}")));
        }
        Ok(value)
    }

    pub(crate) fn positive_at_most(
        &self,
        name: &'static str,
        default: f64,
        max: f64,
    ) -> Result<f64, ConfigError> {
        let value: f64 = self.parse(name, default)?;
        if !(value > 0.0 && value <= max) {
            return Err(invalid(
                name,
                format!("must be greater than zero and at most {max}"),
            ));
        }
        Ok(value)
    }

    pub(crate) fn seconds(
        &self,
        name: &'static str,
        default: f64,
    ) -> Result<Duration, ConfigError> {
        let secs: f64 = self.parse(name, default)?;
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_DURATION)
            .ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "must be a positive number of seconds, at most {} (100 years)",
                        MAX_DURATION.as_secs()
                    ),
                )
            })
    }

    /// A duration in seconds from 0 (off) to `max`.
    pub(crate) fn seconds_or_zero(
        &self,
        name: &'static str,
        default: f64,
        max: f64,
    ) -> Result<Duration, ConfigError> {
        let secs: f64 = self.parse(name, default)?;
        if !(0.0..=max).contains(&secs) {
            return Err(invalid(
                name,
                format!("must be between 0 (off) and {max} seconds"),
            ));
        }
        Duration::try_from_secs_f64(secs).map_err(|_| invalid(name, "must be a number of seconds"))
    }
}
