//! `ModelCode`: a device model's permanent identifier, safe as an object key component.

use std::fmt;

/// `^[a-z0-9_]{1,50}$`, immutable once the model exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelCode(String);

impl ModelCode {
    pub fn parse(code: &str) -> Result<Self, String> {
        let valid = (1..=50).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(ModelCode(code.to_string()))
        } else {
            Err("code must be 1-50 characters of lowercase letters, digits and underscores".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ModelCode;

    #[test]
    fn codes_follow_the_python_services_pattern() {
        for ok in ["a", "tempsensor", "motion_sensor_2", &"x".repeat(50)] {
            assert!(ModelCode::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Temp", "a-b", "a/b", "..", "a b", &"x".repeat(51), "é"] {
            assert!(ModelCode::parse(bad).is_err(), "{bad}");
        }
    }
}
