//! `ClientId`: how a device names itself to the token endpoint and in notifications,
//! `iotdevice-{model_code}-{device_key}` (the Python service's Keycloak client id, SPEC §13).

use std::fmt;

use super::{DeviceKey, ModelCode};

const PREFIX: &str = "iotdevice-";

/// A device's client id. Model codes hold no `-`, device keys are 8 characters: the split is
/// unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    pub model_code: ModelCode,
    pub device_key: DeviceKey,
}

impl ClientId {
    /// The client id text of a device.
    pub fn format(model_code: &str, device_key: &str) -> String {
        format!("{PREFIX}{model_code}-{device_key}")
    }

    pub fn parse(client_id: &str) -> Option<ClientId> {
        let rest = client_id.strip_prefix(PREFIX)?;
        let (code, key) = rest.rsplit_once('-')?;
        Some(ClientId {
            model_code: ModelCode::parse(code).ok()?,
            device_key: DeviceKey::parse(key).ok()?,
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.model_code, self.device_key)
    }
}

#[cfg(test)]
mod tests {
    use super::ClientId;

    #[test]
    fn client_ids_round_trip() {
        let text = ClientId::format("thermo_v2", "abcd2345");
        assert_eq!(text, "iotdevice-thermo_v2-abcd2345");
        let parsed = ClientId::parse(&text).unwrap();
        assert_eq!(parsed.model_code.as_str(), "thermo_v2");
        assert_eq!(parsed.device_key.as_str(), "abcd2345");
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn anything_else_is_not_a_client_id() {
        for bad in [
            "",
            "iotdevice-",
            "iotdevice-thermo",
            "iotdevice-thermo-ABCD2345",
            "iotdevice-thermo-abcd234",
            "device-thermo-abcd2345",
            "iotdevice-Thermo-abcd2345",
            "iotdevice--abcd2345",
        ] {
            assert!(ClientId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
