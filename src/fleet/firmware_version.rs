//! `FirmwareVersion`: a firmware build's version string, safe as an object key component.
//!
//! The version comes from the image's app descriptor (never from a file name) and becomes part of
//! `firmware/{model_code}/{version}/…` (SPEC §3). An unsafe one is refused, never escaped.

use std::fmt;

/// The longest version we store (`firmware_versions.version` is `VARCHAR(50)`).
pub const MAX_VERSION_LEN: usize = 50;

/// A non-empty version of at most 50 characters with no `/`, `\`, `%`, `..`, control characters,
/// or leading/trailing whitespace, and not `.`. Every other character (`~`, `+`, `#`, spaces,
/// non-ASCII letters, …) is kept verbatim in object keys; `%` is refused because a key holding
/// `%XX` could also be the percent-encoded key of another version (`crate::layout`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareVersion(String);

impl FirmwareVersion {
    /// Checks `version`; the error is the whole client-facing message.
    pub fn parse(version: &str) -> Result<Self, String> {
        let problem = if version.is_empty() {
            Some("must not be empty")
        } else if version.chars().count() > MAX_VERSION_LEN {
            Some("must be at most 50 characters")
        } else if version.contains('/') || version.contains('\\') || version.contains('%') {
            Some("must not contain '/', '\\' or '%'")
        } else if version.contains("..") || version == "." {
            Some("must not contain '..' or be '.'")
        } else if version.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else if version.trim() != version {
            Some("must not start or end with whitespace")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(format!(
                "Invalid firmware version {}: {problem}",
                quote(version)
            )),
            None => Ok(FirmwareVersion(version.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The version quoted for a message, with control characters escaped and the length bounded so a
/// hostile value cannot flood a response or a log line.
fn quote(version: &str) -> String {
    let shown: String = version.chars().take(64).collect();
    let ellipsis = if version.chars().count() > 64 {
        "…"
    } else {
        ""
    };
    format!("{:?}{ellipsis}", shown)
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::FirmwareVersion;

    #[test]
    fn ordinary_versions_are_accepted() {
        for ok in [
            "1.2.0",
            "v1.0-56-g30082bf",
            "v5.0-beta1-427-g4532e6e0b2-dirt",
            "1.0.0-rc.1+build.5",
            "qa test 3",
            &"x".repeat(50),
            "é1",
            "2.1~rc1",
            "v1 [qa] #3?*",
            "a{b}^c|\"d\"`e`<f>",
        ] {
            assert_eq!(FirmwareVersion::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn unsafe_versions_are_refused_with_a_reason() {
        let cases = [
            ("", "must not be empty"),
            (&"x".repeat(51), "at most 50 characters"),
            ("1.0/../../x", "'/'"),
            ("a/b", "'/'"),
            ("a\\b", "'\\'"),
            ("100%", "'%'"),
            ("2.1%7Erc1", "'%'"),
            ("..", "'..'"),
            ("1..2", "'..'"),
            (".", "'..' or be '.'"),
            ("1.0\n", "control characters"),
            ("1.0\u{7f}", "control characters"),
            ("\u{0}", "control characters"),
            (" 1.0", "whitespace"),
            ("1.0 ", "whitespace"),
        ];
        for (bad, reason) in cases {
            let err = FirmwareVersion::parse(bad).unwrap_err();
            assert!(err.starts_with("Invalid firmware version "), "{err}");
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_message_escapes_and_bounds_the_value() {
        let err = FirmwareVersion::parse("a\nb/c").unwrap_err();
        assert!(err.contains("\"a\\nb/c\""), "{err}");
        let err = FirmwareVersion::parse(&"y".repeat(500)).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn fifty_characters_not_bytes() {
        assert!(FirmwareVersion::parse(&"é".repeat(50)).is_ok());
        assert!(FirmwareVersion::parse(&"é".repeat(51)).is_err());
    }
}
