//! Device configurations and the model's optional JSON Schema for them (SPEC §6).
//!
//! A config is JSON text stored verbatim. When it is an object, `deviceName`, `deviceEntityId`
//! and `enableOTA` are copied into columns. When the model has a schema, the parsed config must
//! validate against it; the first violation is reported in the Python service's words
//! (`Config validation failed: 'deviceName' is a required property`). A schema is bounded when
//! it is parsed (`schema_limits`): validating against it costs a bounded amount of work.

use serde_json::Value;

/// Why a config or a schema was refused; the message is meant for the API caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

/// A compiled JSON Schema for device configs, with the text it came from.
pub struct ConfigSchema {
    text: String,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ConfigSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSchema")
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

impl ConfigSchema {
    /// Parses and compiles a schema; refuses text that is not JSON, not a valid JSON Schema, or
    /// beyond the limits that keep validating against it cheap (`super::schema_limits`).
    pub fn parse(text: &str) -> Result<Self, InvalidConfig> {
        super::schema_limits::check_size(text)?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| InvalidConfig(format!("config_schema must be valid JSON: {e}")))?;
        if !value.is_object() && !value.is_boolean() {
            return Err(InvalidConfig(
                "config_schema must be a JSON Schema (an object)".into(),
            ));
        }
        super::schema_limits::check(text, &value)?;
        use super::schema_limits::{PATTERN_BACKTRACKS, PATTERN_SIZE_LIMIT};
        let patterns = jsonschema::PatternOptions::fancy_regex()
            .backtrack_limit(PATTERN_BACKTRACKS)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT);
        let validator = jsonschema::options()
            .with_pattern_options(patterns)
            .build(&value)
            .map_err(|e| InvalidConfig(format!("config_schema is not a valid JSON Schema: {e}")))?;
        Ok(ConfigSchema {
            text: text.to_string(),
            validator,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first violation of `config`, if any, as the API reports it. Validation stops at it:
    /// collecting every violation (`iter_errors`) would allocate one error per failing check per
    /// element, gigabytes for a long array against a fanned-out schema.
    pub fn check(&self, config: &Value) -> Result<(), InvalidConfig> {
        let Err(error) = self.validator.validate(config) else {
            return Ok(());
        };
        let reason = match error.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => {
                let name = property
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| property.to_string());
                format!("'{name}' is a required property")
            }
            _ => {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    error.to_string()
                } else {
                    format!("{error} (at {path})")
                }
            }
        };
        Err(InvalidConfig(format!("Config validation failed: {reason}")))
    }
}

/// A parsed device config and the fields copied out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// The text exactly as submitted.
    pub text: String,
    pub value: Value,
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
}

/// Longest `deviceName` / `deviceEntityId` we store (their columns are VARCHAR(255)).
const MAX_EXTRACTED_LEN: usize = 255;

impl DeviceConfig {
    pub fn parse(text: &str) -> Result<Self, InvalidConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| InvalidConfig(format!("config must be valid JSON: {e}")))?;
        let string_field = |name: &str| -> Result<Option<String>, InvalidConfig> {
            match value.get(name) {
                Some(Value::String(s)) if s.chars().count() > MAX_EXTRACTED_LEN => Err(
                    InvalidConfig(format!("config field {name} is longer than 255 characters")),
                ),
                // The copy goes into a text column, which cannot hold NUL on PostgreSQL. The
                // config text itself holds only the escape `\u0000` and is stored verbatim.
                Some(Value::String(s)) if s.contains('\0') => Err(InvalidConfig(format!(
                    "config field {name} must not contain NUL characters (\\u0000)"
                ))),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Ok(None),
            }
        };
        Ok(DeviceConfig {
            device_name: string_field("deviceName")?,
            device_entity_id: string_field("deviceEntityId")?,
            enable_ota: value.get("enableOTA").and_then(Value::as_bool),
            text: text.to_string(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{
        "type": "object",
        "required": ["deviceName"],
        "properties": {"deviceName": {"type": "string"}, "interval": {"type": "integer", "minimum": 1}}
    }"#;

    #[test]
    fn the_first_violation_is_reported_like_the_python_service() {
        let schema = ConfigSchema::parse(SCHEMA).unwrap();
        let err = schema
            .check(&serde_json::json!({"interval": 5}))
            .unwrap_err();
        assert_eq!(
            err.0,
            "Config validation failed: 'deviceName' is a required property"
        );
        let err = schema
            .check(&serde_json::json!({"deviceName": "x", "interval": 0}))
            .unwrap_err();
        assert!(err.0.starts_with("Config validation failed:"), "{err}");
        assert!(err.0.contains("/interval"), "{err}");
        assert!(schema
            .check(&serde_json::json!({"deviceName": "x"}))
            .is_ok());
    }

    #[test]
    fn schemas_must_be_json_and_valid_json_schema() {
        assert!(ConfigSchema::parse("{not json")
            .unwrap_err()
            .0
            .contains("valid JSON"));
        assert!(ConfigSchema::parse("[1]").is_err());
        let err = ConfigSchema::parse(r#"{"type": "no-such-type"}"#).unwrap_err();
        assert!(err.0.contains("not a valid JSON Schema"), "{err}");
    }

    #[test]
    fn object_configs_fill_the_extracted_columns() {
        let c = DeviceConfig::parse(
            r#"{"deviceName": "Kitchen", "deviceEntityId": "sensor.kitchen", "enableOTA": true}"#,
        )
        .unwrap();
        assert_eq!(c.device_name.as_deref(), Some("Kitchen"));
        assert_eq!(c.device_entity_id.as_deref(), Some("sensor.kitchen"));
        assert_eq!(c.enable_ota, Some(true));
        let c = DeviceConfig::parse("[1, 2]").unwrap();
        assert_eq!((c.device_name, c.enable_ota), (None, None));
        assert!(DeviceConfig::parse("{").is_err());
        let long = format!(r#"{{"deviceName": "{}"}}"#, "x".repeat(256));
        assert!(DeviceConfig::parse(&long).is_err());
    }

    #[test]
    fn copied_fields_must_not_hold_nul_but_the_text_may_escape_one_elsewhere() {
        for text in [
            r#"{"deviceName": "a\u0000"}"#,
            r#"{"deviceEntityId": "\u0000b"}"#,
        ] {
            let err = DeviceConfig::parse(text).unwrap_err();
            assert!(err.0.contains("must not contain NUL"), "{text}: {err}");
        }
        let text = r#"{"deviceName": "a", "note": "\u0000"}"#;
        assert_eq!(DeviceConfig::parse(text).unwrap().text, text);
    }

    #[test]
    fn schemas_beyond_the_limits_are_refused_before_they_are_compiled() {
        let err = ConfigSchema::parse(r##"{"$ref": "#"}"##).unwrap_err();
        assert!(err.0.starts_with("config_schema: $ref cycle"), "{err}");
        let big = format!(r#"{{"description": "{}"}}"#, "x".repeat(70_000));
        let err = ConfigSchema::parse(&big).unwrap_err();
        assert!(err.0.contains("larger than 65536 bytes"), "{err}");
    }

    #[test]
    fn config_text_is_kept_verbatim() {
        let text = "{ \"b\": 1,\n  \"a\": 2 }";
        assert_eq!(DeviceConfig::parse(text).unwrap().text, text);
    }

    #[test]
    fn regular_expressions_are_bounded_in_number_and_compiled_size() {
        let with = |pattern: &str| {
            serde_json::json!({"properties": {"name": {"type": "string", "pattern": pattern}}})
                .to_string()
        };
        // Ordinary patterns compile and work.
        let schema = ConfigSchema::parse(&with("^[a-z0-9-]{1,63}$")).unwrap();
        assert!(schema
            .check(&serde_json::json!({"name": "kitchen-1"}))
            .is_ok());
        assert!(schema
            .check(&serde_json::json!({"name": "Kitchen 1"}))
            .is_err());
        assert!(
            ConfigSchema::parse(&with("^\\w+(?=\\d)")).is_ok(),
            "look-ahead (fancy-regex)"
        );
        // Ones that compile to megabytes (the regex crate's own limit is 10 MiB) are refused.
        for huge in [".{1000}", "\\p{L}{100}"] {
            let refused = ConfigSchema::parse(&with(huge)).unwrap_err();
            assert!(
                refused.0.contains("is not a \"regex\""),
                "{huge}: {}",
                refused.0
            );
        }
        // More than 100 of them are refused before anything is compiled.
        let many: serde_json::Map<String, serde_json::Value> = (0..101)
            .map(|i| (format!("p{i}"), serde_json::json!({"pattern": "^a$"})))
            .collect();
        let text = serde_json::json!({"properties": many}).to_string();
        let refused = ConfigSchema::parse(&text).unwrap_err();
        assert!(
            refused.0.contains("more than 100 regular expressions"),
            "{}",
            refused.0
        );
        let names: serde_json::Map<String, serde_json::Value> = (0..101)
            .map(|i| (format!("^p{i}$"), serde_json::json!({})))
            .collect();
        let text = serde_json::json!({"patternProperties": names}).to_string();
        assert!(ConfigSchema::parse(&text).is_err());
    }
}
