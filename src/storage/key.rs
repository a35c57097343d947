//! Object keys, validated before they reach the store (SPEC §3).

use std::fmt;

/// Longest key we create; S3 allows 1024 bytes.
const MAX_KEY_LEN: usize = 1024;

/// A key inside the bucket, such as `firmware/tempsensor/1.2.0/firmware.bin`.
///
/// Every segment is non-empty, not `.` or `..`, and free of control characters and backslashes,
/// so no input can make a key escape its prefix or mean something else on the local backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {key:?}: {reason}")]
pub struct InvalidKey {
    pub key: String,
    pub reason: &'static str,
}

impl ObjectKey {
    pub fn parse(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key = key.into();
        let reason = if key.is_empty() {
            Some("empty")
        } else if key.len() > MAX_KEY_LEN {
            Some("longer than 1024 bytes")
        } else if key
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            Some("empty, '.' or '..' path segment")
        } else if key.chars().any(|c| c.is_control() || c == '\\') {
            Some("control character or backslash")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidKey { key, reason }),
            None => Ok(ObjectKey(key)),
        }
    }

    /// Builds a key from segments, each of which must be a single safe segment.
    pub fn from_segments(segments: &[&str]) -> Result<Self, InvalidKey> {
        if let Some(bad) = segments.iter().find(|s| s.contains('/')) {
            return Err(InvalidKey {
                key: (*bad).to_string(),
                reason: "segment contains '/'",
            });
        }
        Self::parse(segments.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in [
            "firmware/tempsensor/1.2.0/firmware.bin",
            "coredumps/abcd2345/17.dmp",
            "firmware/m/v1.0-rc.1+build.5/sdkconfig",
        ] {
            assert_eq!(ObjectKey::parse(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn keys_that_could_escape_or_confuse_are_rejected() {
        for key in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "../a",
            "a/./b",
            "trailing/",
            "tab\there",
            "nl\n",
            "back\\slash",
        ] {
            assert!(ObjectKey::parse(key).is_err(), "{key:?} accepted");
        }
        assert!(ObjectKey::parse("x".repeat(1025)).is_err());
    }

    #[test]
    fn segments_must_not_contain_slashes() {
        assert!(ObjectKey::from_segments(&["firmware", "m", "1.0/../../x", "a"]).is_err());
        assert_eq!(
            ObjectKey::from_segments(&["coredumps", "abcd2345", "1.dmp"])
                .unwrap()
                .as_str(),
            "coredumps/abcd2345/1.dmp"
        );
    }
}
