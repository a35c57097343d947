//! MQTT settings (SPEC §14): `MQTT_URL`, `MQTT_USERNAME`, `MQTT_PASSWORD`, `MQTT_CLIENT_ID`,
//! `MQTT_PUBLISH_TIMEOUT_SECONDS` and `DEVICE_MQTT_URL`. Unlike the Python service, which logged
//! an unsupported `MQTT_URL` scheme and went on without MQTT, an invalid value stops start-up.

use std::fmt;
use std::time::Duration;

use super::{invalid, ConfigError, Env, Secret};

/// A broker address: `mqtt://host[:port]` (plain TCP, default port 1883) or `mqtts://host[:port]`
/// (TLS, default port 8883).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    /// A DNS name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (one trailing `/` allowed). Anything
    /// else — another scheme, credentials in the URL, a path or query — is refused with the reason.
    pub fn parse(raw: &str) -> Result<MqttUrl, String> {
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            // Not echoed: a value without a scheme may still carry a password (`user:pw@host`).
            "is not a URL; expected mqtt://host[:port] or mqtts://host[:port]".to_string()
        })?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => (false, 1883),
            "mqtts" => (true, 8883),
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported; use mqtt:// or mqtts://"
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err("must not have a path, query or fragment".into());
        }
        if authority.contains('@') {
            return Err("must not contain credentials; use MQTT_USERNAME and MQTT_PASSWORD".into());
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err("has no host".into());
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("host must not contain spaces or control characters".into());
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
        };
        // rumqttc names the TLS server by the host text it also connects to, which cannot be both
        // a bracketed IPv6 literal (to connect) and a bare one (to verify).
        if tls && host.contains(':') {
            return Err("mqtts:// with an IPv6 address is not supported; use a host name".into());
        }
        Ok(MqttUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` as a socket address string (IPv6 literals in brackets).
    pub fn host_for_connect(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host_for_connect(), self.port)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port text).
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("has an unclosed '[' in its host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("has text after its IPv6 address".into()),
            },
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

/// The MQTT username and password; sent only when both are configured (as the Python service).
#[derive(Clone, Debug)]
pub struct MqttCredentials {
    pub username: String,
    pub password: Secret,
}

/// How this process talks to the MQTT broker (SPEC §14). See `crate::mqtt`.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    /// `MQTT_URL`.
    pub url: MqttUrl,
    /// `DEVICE_MQTT_URL` (default `MQTT_URL`), verbatim: what devices are told to connect to.
    /// Validated as a URL with a scheme devices' MQTT client accepts (`mqtt`, `mqtts`, `ws`,
    /// `wss`); this process never connects to it.
    pub device_url: String,
    /// `MQTT_USERNAME` and `MQTT_PASSWORD`, when both are set.
    pub credentials: Option<MqttCredentials>,
    /// The MQTT client identifier. `MQTT_CLIENT_ID` verbatim when set. Otherwise `MQTT_USERNAME`
    /// (else `iotsupport-backend`, the Python service's defaults) followed by `-` and 8 random hex
    /// digits chosen at start: a broker disconnects a client when another connects with the same
    /// id, so several `serve` processes (or `serve` beside a CLI command) with one configuration
    /// would otherwise keep throwing each other off. An explicit `MQTT_CLIENT_ID` must therefore
    /// be different for every process.
    pub client_id: String,
    /// How long [`crate::mqtt::MqttClient::publish`] waits for the broker's acknowledgement,
    /// including waiting for a connection (`MQTT_PUBLISH_TIMEOUT_SECONDS`, default 10).
    pub publish_timeout: Duration,
    /// Interval of MQTT keep-alive pings; a connection that stays silent for about twice this is
    /// taken as lost.
    pub keep_alive: Duration,
    /// How long the TCP (and TLS) connection and the CONNACK may take.
    pub connect_timeout: Duration,
    /// On shutdown, how long publishes already sent may still be acknowledged before the client
    /// disconnects.
    pub shutdown_grace: Duration,
    /// Device notifications published per second at most (`MQTT_NOTIFICATIONS_PER_SECOND`,
    /// default 100): a firmware upload to a model of 1,000 devices reaches all of them in 10 s
    /// instead of in one burst, which a small broker and the OTA downloads that follow both take
    /// comfortably.
    pub notifications_per_second: f64,
    /// The shared-subscription group of `iotsupport/logsink` (`MQTT_LOG_GROUP`, default
    /// `iotsupport`): the processes of one deployment split the lines between them; two
    /// deployments on one broker need different groups.
    pub log_group: String,
}

/// How long and how many device log lines are kept. Read whether MQTT is on or not: lines
/// stored while it was on still age out after it is turned off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceLogSettings {
    /// Lines are kept this long (`DEVICE_LOG_RETENTION_DAYS`, default 7).
    pub retention: Duration,
    /// At most this many lines per device (`DEVICE_LOG_MAX_LINES`, default 10000).
    pub max_lines_per_device: i64,
}

impl Default for DeviceLogSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_lines_per_device: 10_000,
        }
    }
}

pub(super) fn device_log_settings(env: &Env) -> Result<DeviceLogSettings, ConfigError> {
    let days: f64 = env.positive_at_most("DEVICE_LOG_RETENTION_DAYS", 7.0, super::env::MAX_DAYS)?;
    Ok(DeviceLogSettings {
        retention: Duration::from_secs_f64(days * 24.0 * 3600.0),
        max_lines_per_device: env.positive("DEVICE_LOG_MAX_LINES", 10_000)?,
    })
}

/// The default shared-subscription group of the device log intake (`MQTT_LOG_GROUP`).
pub const DEFAULT_LOG_GROUP: &str = "iotsupport";

/// The client id used when neither `MQTT_CLIENT_ID` nor `MQTT_USERNAME` is set (the Python
/// service's).
pub const DEFAULT_MQTT_CLIENT_ID: &str = "iotsupport-backend";

/// The shortest `MQTT_PUBLISH_TIMEOUT_SECONDS` accepted.
const MIN_PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

impl MqttSettings {
    /// Settings for `url` with every other value at its default (client id
    /// `iotsupport-backend-<random>`); for tests and tools.
    pub fn for_url(url: MqttUrl) -> MqttSettings {
        MqttSettings {
            device_url: url.to_string(),
            url,
            credentials: None,
            client_id: unique_client_id(DEFAULT_MQTT_CLIENT_ID),
            publish_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            notifications_per_second: 100.0,
            log_group: DEFAULT_LOG_GROUP.to_string(),
        }
    }
}

/// `base` followed by `-` and 8 random hex digits.
pub fn unique_client_id(base: &str) -> String {
    use rand::Rng;
    format!("{base}-{:08x}", rand::rng().random::<u32>())
}

pub(super) fn mqtt_settings(env: &Env) -> Result<Option<MqttSettings>, ConfigError> {
    let device_url = env.get("DEVICE_MQTT_URL").map(str::to_string);
    if let Some(device_url) = &device_url {
        validate_device_mqtt_url(device_url).map_err(|e| invalid("DEVICE_MQTT_URL", e))?;
    }
    let Some(raw_url) = env.get("MQTT_URL") else {
        return Ok(None);
    };
    let url = MqttUrl::parse(raw_url).map_err(|e| invalid("MQTT_URL", e))?;
    let username = env.get("MQTT_USERNAME");
    let credentials = match (username, env.get("MQTT_PASSWORD")) {
        (Some(username), Some(password)) => Some(MqttCredentials {
            username: username.to_string(),
            password: Secret::new(password),
        }),
        _ => None,
    };
    let client_id = match env.get("MQTT_CLIENT_ID") {
        Some(explicit) => explicit.to_string(),
        None => unique_client_id(username.unwrap_or(DEFAULT_MQTT_CLIENT_ID)),
    };
    if client_id.chars().any(char::is_control) || client_id.len() > 65_535 {
        return Err(invalid(
            "MQTT_CLIENT_ID",
            "must be at most 65535 bytes without control characters",
        ));
    }
    let mut settings = MqttSettings::for_url(url);
    settings.device_url = device_url.unwrap_or_else(|| raw_url.to_string());
    settings.credentials = credentials;
    settings.client_id = client_id;
    settings.publish_timeout = env.seconds("MQTT_PUBLISH_TIMEOUT_SECONDS", 10.0)?;
    // Shorter than a broker's round trip under load, every message would reach the broker and
    // still count as failed, and be sent again every few minutes, for ever.
    if settings.publish_timeout < MIN_PUBLISH_TIMEOUT {
        return Err(invalid(
            "MQTT_PUBLISH_TIMEOUT_SECONDS",
            format!(
                "must be at least {} s: a shorter wait counts messages the broker received as \
                 failed, and sends them again",
                MIN_PUBLISH_TIMEOUT.as_secs()
            ),
        ));
    }
    settings.notifications_per_second =
        env.positive_at_most("MQTT_NOTIFICATIONS_PER_SECOND", 100.0, 100_000.0)?;
    if let Some(group) = env.get("MQTT_LOG_GROUP") {
        if group.is_empty()
            || group.len() > 64
            || group
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
        {
            return Err(invalid(
                "MQTT_LOG_GROUP",
                "must be 1-64 characters without '/', '+', '#' or control characters",
            ));
        }
        settings.log_group = group.to_string();
    }
    Ok(Some(settings))
}

/// `DEVICE_MQTT_URL` is handed to devices as it is; refuse what their MQTT client could not use.
fn validate_device_mqtt_url(raw: &str) -> Result<(), String> {
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
        "is not a URL (the value is not shown: it may hold a password)".to_string()
    })?;
    if !["mqtt", "mqtts", "ws", "wss"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "scheme {scheme:?} is not supported; use mqtt://, mqtts://, ws:// or wss://"
        ));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with(['/', ':', '?']) {
        return Err("has no host".into());
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn mqtt_is_off_without_mqtt_url() {
        assert!(config(&[]).unwrap().mqtt.is_none());
        assert!(
            config(&[("DEVICE_MQTT_URL", "mqtt://devices.example:1883")])
                .unwrap()
                .mqtt
                .is_none()
        );
    }

    #[test]
    fn mqtt_urls_get_their_scheme_default_ports() {
        let url = |raw| MqttUrl::parse(raw).unwrap();
        assert_eq!(
            url("mqtt://broker.example"),
            MqttUrl {
                tls: false,
                host: "broker.example".into(),
                port: 1883
            }
        );
        assert_eq!(url("mqtts://broker.example").port, 8883);
        assert!(url("mqtts://broker.example").tls);
        assert_eq!(url("mqtt://10.0.0.5:11883/").port, 11883);
        assert_eq!(url("MQTTS://broker.example:443").port, 443);
        let v6 = url("mqtt://[::1]:1884");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(v6.host_for_connect(), "[::1]");
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        assert_eq!(url("mqtt://[::1]").port, 1883);
    }

    #[test]
    fn mqtt_urls_other_than_mqtt_and_mqtts_are_refused() {
        for raw in [
            "tcp://broker.example",
            "ws://broker.example",
            "http://broker.example",
            "broker.example:1883",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://broker.example:0",
            "mqtt://broker.example:70000",
            "mqtt://broker.example:port",
            "mqtt://user:pw@broker.example",
            "mqtt://broker.example/topic",
            "mqtt://broker.example?x=1",
            "mqtt://[::1",
            "mqtt://[nonsense]",
            "mqtts://[::1]:8883",
        ] {
            assert!(MqttUrl::parse(raw).is_err(), "{raw} was accepted");
            let err = config(&[("MQTT_URL", raw)]).unwrap_err();
            assert_eq!(err.variable, "MQTT_URL", "{raw}: {err}");
        }
    }

    #[test]
    fn mqtt_settings_follow_the_python_service() {
        let c = config(&[
            ("MQTT_URL", "mqtts://broker.example"),
            ("MQTT_USERNAME", "backend"),
            ("MQTT_PASSWORD", "broker-password"),
        ])
        .unwrap();
        let mqtt = c.mqtt.unwrap();
        assert!(mqtt.url.tls);
        assert_eq!(
            mqtt.device_url, "mqtts://broker.example",
            "devices get MQTT_URL"
        );
        let credentials = mqtt.credentials.unwrap();
        assert_eq!(credentials.username, "backend");
        assert_eq!(credentials.password.expose(), "broker-password");
        assert_eq!(mqtt.publish_timeout, Duration::from_secs(10));
        // The username is the client id's base, made unique per process.
        let suffix = mqtt.client_id.strip_prefix("backend-").unwrap();
        assert_eq!(suffix.len(), 8);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn mqtt_credentials_are_used_only_when_both_are_set() {
        let c = config(&[("MQTT_URL", "mqtt://b"), ("MQTT_USERNAME", "backend")]).unwrap();
        let mqtt = c.mqtt.unwrap();
        assert!(mqtt.credentials.is_none());
        assert!(mqtt.client_id.starts_with("backend-"));
        let c = config(&[("MQTT_URL", "mqtt://b"), ("MQTT_PASSWORD", "pw")]).unwrap();
        assert!(c.mqtt.unwrap().credentials.is_none());
    }

    #[test]
    fn mqtt_client_ids_are_unique_per_process_unless_explicit() {
        let id = || {
            config(&[("MQTT_URL", "mqtt://b")])
                .unwrap()
                .mqtt
                .unwrap()
                .client_id
        };
        let (a, b) = (id(), id());
        assert!(a.starts_with("iotsupport-backend-"), "{a}");
        assert_ne!(a, b);
        let c = config(&[
            ("MQTT_URL", "mqtt://b"),
            ("MQTT_USERNAME", "backend"),
            ("MQTT_CLIENT_ID", "iotsupport-web-1"),
        ])
        .unwrap();
        assert_eq!(c.mqtt.unwrap().client_id, "iotsupport-web-1");
    }

    #[test]
    fn device_mqtt_url_is_kept_verbatim_and_checked() {
        let c = config(&[
            ("MQTT_URL", "mqtt://10.0.0.5"),
            ("DEVICE_MQTT_URL", "wss://mqtt.example.com:443/mqtt"),
        ])
        .unwrap();
        assert_eq!(
            c.mqtt.unwrap().device_url,
            "wss://mqtt.example.com:443/mqtt"
        );
        for raw in [
            "http://mqtt.example.com",
            "mqtt.example.com",
            "mqtt://",
            "mqtt://a b",
        ] {
            let err = config(&[("MQTT_URL", "mqtt://b"), ("DEVICE_MQTT_URL", raw)]).unwrap_err();
            assert_eq!(err.variable, "DEVICE_MQTT_URL", "{raw}: {err}");
        }
        // Checked even when this process does not connect to a broker itself.
        let err = config(&[("DEVICE_MQTT_URL", "ftp://x")]).unwrap_err();
        assert_eq!(err.variable, "DEVICE_MQTT_URL");
    }

    #[test]
    fn mqtt_password_never_appears_in_debug_output() {
        let c = config(&[
            ("MQTT_URL", "mqtt://b"),
            ("MQTT_USERNAME", "backend"),
            ("MQTT_PASSWORD", "mqtt-secret-value"),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("mqtt-secret-value"));
    }

    #[test]
    fn mqtt_publish_timeout_must_be_a_second_or_more() {
        for value in ["0", "0.2"] {
            let err = config(&[
                ("MQTT_URL", "mqtt://b"),
                ("MQTT_PUBLISH_TIMEOUT_SECONDS", value),
            ])
            .unwrap_err();
            assert_eq!(err.variable, "MQTT_PUBLISH_TIMEOUT_SECONDS", "{value}");
        }
        let ok = config(&[
            ("MQTT_URL", "mqtt://b"),
            ("MQTT_PUBLISH_TIMEOUT_SECONDS", "1"),
        ]);
        assert!(ok.is_ok());
    }
}
