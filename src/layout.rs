//! The bucket's key layout (SPEC §3), in one place, both ways: from rows to keys, and from listed
//! keys back to the rows they belong to.
//!
//! - `firmware/{model_code}/{version}/{artifact}`, the five [`Artifact`]s of one build;
//! - `coredumps/{device_key}/{coredump_id}.dmp`.
//!
//! Keys hold their components **verbatim**: `2.1~rc1` is stored under `firmware/m/2.1~rc1/`, not
//! percent-encoded. The storage layer passes keys through unchanged (`object_store::Path::parse`,
//! never `Path::from`, which percent-encodes `~ # ? * " < > [ ] { } ^ | \` %`). A version may hold
//! any printable character but `/`, `\` and `%` (see `crate::fleet::FirmwareVersion`): without `%`,
//! a listed key maps back to exactly one version, and a key that does contain `%XX` can only be one
//! written by iotsupport releases that percent-encoded versions ([`MappedKey::LegacyEncoded`]).
//!
//! **Architecture invariant:** every key is built here, and [`map_key`] inverts [`firmware_key`]
//! and [`coredump_key`] exactly; code that acts on listed keys (reconcile) acts only on keys that
//! map back.

use crate::storage::{InvalidKey, ObjectKey};

/// The prefix of every firmware object.
pub const FIRMWARE_PREFIX: &str = "firmware";
/// The prefix of every core-dump object.
pub const COREDUMP_PREFIX: &str = "coredumps";

/// One of the five objects of a firmware build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Artifact {
    Bin,
    Elf,
    Map,
    Sdkconfig,
    VersionJson,
}

impl Artifact {
    /// All five, in the order bundles, rows and listings use.
    pub const ALL: [Artifact; 5] = [
        Artifact::Bin,
        Artifact::Elf,
        Artifact::Map,
        Artifact::Sdkconfig,
        Artifact::VersionJson,
    ];

    /// The object's name under the version's prefix (and in download URLs).
    pub fn file_name(self) -> &'static str {
        match self {
            Artifact::Bin => "firmware.bin",
            Artifact::Elf => "firmware.elf",
            Artifact::Map => "firmware.map",
            Artifact::Sdkconfig => "sdkconfig",
            Artifact::VersionJson => "version.json",
        }
    }

    /// The entry's name in an uploaded bundle for model `code` (SPEC §7).
    pub fn bundle_entry(self, code: &str) -> String {
        match self {
            Artifact::Bin => format!("{code}.bin"),
            Artifact::Elf => format!("{code}.elf"),
            Artifact::Map => format!("{code}.map"),
            Artifact::Sdkconfig => "sdkconfig".to_string(),
            Artifact::VersionJson => "version.json".to_string(),
        }
    }

    /// The `Content-Type` it is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Artifact::Sdkconfig | Artifact::Map => "text/plain; charset=utf-8",
            Artifact::VersionJson => "application/json",
            Artifact::Bin | Artifact::Elf => "application/octet-stream",
        }
    }

    /// The artifact named `name` (its [`Artifact::file_name`]).
    pub fn from_file_name(name: &str) -> Option<Artifact> {
        Artifact::ALL.into_iter().find(|a| a.file_name() == name)
    }

    /// The five file names joined for a message.
    pub fn file_names() -> String {
        Artifact::ALL.map(Artifact::file_name).join(", ")
    }
}

/// `firmware/{model_code}/{version}/{artifact}`.
pub fn firmware_key(
    model_code: &str,
    version: &str,
    artifact: Artifact,
) -> Result<ObjectKey, InvalidKey> {
    ObjectKey::from_segments(&[FIRMWARE_PREFIX, model_code, version, artifact.file_name()])
}

/// `firmware/{model_code}/`: the start of every key of the model's versions.
pub fn firmware_model_prefix(model_code: &str) -> String {
    format!("{FIRMWARE_PREFIX}/{model_code}/")
}

/// The five keys of one stored version, in [`Artifact::ALL`] order.
pub fn firmware_keys(model_code: &str, version: &str) -> Result<Vec<ObjectKey>, InvalidKey> {
    Artifact::ALL
        .into_iter()
        .map(|artifact| firmware_key(model_code, version, artifact))
        .collect()
}

/// The keys a stored version's objects may be at, to delete with its row: its five keys, and
/// the five under the percent-encoding an earlier release stored it with (copies the rekey job
/// has not moved yet). A version that is not a key component today (e.g. a `%` an earlier
/// release allowed) only ever had the encoded ones: its verbatim keys may be another version's
/// encoded copies (`2.1%7Erc1/…` is how `2.1~rc1` was stored), so they are never included.
/// And the other way round: `encoded_is_a_version` says that the model also has a version
/// spelt like the encoding (the Python service stored `2.1%7Erc1` under its own name), whose
/// objects those keys are: they are left to it.
pub fn deletable_keys(
    model_code: &str,
    version: &str,
    encoded_is_a_version: bool,
) -> Result<Vec<ObjectKey>, InvalidKey> {
    let mut keys = Vec::new();
    if crate::fleet::FirmwareVersion::parse(version).is_ok() {
        keys = firmware_keys(model_code, version)?;
    }
    if let Some(encoded) = legacy_encoded_version(version).filter(|_| !encoded_is_a_version) {
        keys.extend(firmware_keys(model_code, &encoded)?);
    }
    Ok(keys)
}

/// The keys to delete with a whole model: of every version, its keys as written and under the
/// encoding an earlier release used, where those are keys at all. Unlike [`deletable_keys`],
/// verbatim keys of versions that are not key components today are included (no other version
/// of the model stays to own them), and a version none of whose spellings is a key (an adopted
/// `a/b~`) is skipped and returned by name rather than stopping the delete.
pub fn model_deletion_keys(model_code: &str, versions: &[String]) -> (Vec<ObjectKey>, Vec<String>) {
    let mut keys = std::collections::BTreeSet::new();
    let mut keyless = Vec::new();
    for version in versions {
        let spellings = std::iter::once(version.clone()).chain(legacy_encoded_version(version));
        let mut any = false;
        for spelling in spellings {
            if let Ok(found) = firmware_keys(model_code, &spelling) {
                keys.extend(found);
                any = true;
            }
        }
        if !any {
            keyless.push(version.clone());
        }
    }
    (keys.into_iter().collect(), keyless)
}

/// `coredumps/{device_key}/{coredump_id}.dmp`.
pub fn coredump_key(device_key: &str, coredump_id: i64) -> Result<ObjectKey, InvalidKey> {
    ObjectKey::from_segments(&[COREDUMP_PREFIX, device_key, &format!("{coredump_id}.dmp")])
}

/// `coredump_key(device_key, id)` as the text around the id: `prefix + id + suffix`, for a
/// statement that builds the key of an id the database hands out.
pub fn coredump_key_around_id(device_key: &str) -> Result<(String, &'static str), InvalidKey> {
    const SUFFIX: &str = ".dmp";
    let key = coredump_key(device_key, 0)?;
    let prefix = key.as_str().strip_suffix("0.dmp").unwrap_or(key.as_str());
    Ok((prefix.to_string(), SUFFIX))
}

/// What a listed key is, read back through the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappedKey {
    Firmware {
        model_code: String,
        version: String,
        artifact: Artifact,
    },
    Coredump {
        device_key: String,
        coredump_id: i64,
    },
    /// A firmware object written by a release that percent-encoded versions
    /// (`firmware/m/2.1%7Erc1/firmware.bin` for version `2.1~rc1`): it belongs under the decoded
    /// version's key.
    LegacyEncoded {
        model_code: String,
        version: String,
        artifact: Artifact,
        /// The key's version segment as written (`2.1%7Erc1`): the Python service stored such a
        /// version literally, so an adopted row may hold exactly this.
        encoded: String,
    },
    /// Anything else: never acted upon.
    Unknown,
}

/// Reads `key` back through the layout.
pub fn map_key(key: &str) -> MappedKey {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [FIRMWARE_PREFIX, code, version, file] => {
            let Some(artifact) = Artifact::from_file_name(file) else {
                return MappedKey::Unknown;
            };
            if !is_model_code(code) {
                return MappedKey::Unknown;
            }
            if crate::fleet::FirmwareVersion::parse(version).is_ok() {
                return MappedKey::Firmware {
                    model_code: code.to_string(),
                    version: version.to_string(),
                    artifact,
                };
            }
            match decode_legacy_version(version) {
                Some(decoded) => MappedKey::LegacyEncoded {
                    model_code: code.to_string(),
                    version: decoded,
                    artifact,
                    encoded: version.to_string(),
                },
                None => MappedKey::Unknown,
            }
        }
        [COREDUMP_PREFIX, device_key, file] => {
            let id = file
                .strip_suffix(".dmp")
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                // Only the id as the key names it (`17`, not `017`): another spelling is not the
                // dump's object, whatever number it reads as.
                .and_then(|id| id.parse::<i64>().ok().filter(|n| n.to_string() == id));
            match id {
                Some(coredump_id) if is_device_key(device_key) => MappedKey::Coredump {
                    device_key: device_key.to_string(),
                    coredump_id,
                },
                _ => MappedKey::Unknown,
            }
        }
        _ => MappedKey::Unknown,
    }
}

fn is_model_code(code: &str) -> bool {
    crate::fleet::ModelCode::parse(code).is_ok()
}

fn is_device_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 16
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// The characters `object_store::path::Path::from` percent-encodes in a segment: what releases
/// before this layout wrote encoded.
const LEGACY_ENCODED: &[u8] = b"\\{^}%`]\">[~<#|\r\n*?";

/// How a release that used `Path::from` wrote `version` as a key segment, if differently.
pub fn legacy_encoded_version(version: &str) -> Option<String> {
    if !version.bytes().any(|b| LEGACY_ENCODED.contains(&b)) {
        return None;
    }
    let mut out = String::with_capacity(version.len() * 3);
    for c in version.chars() {
        if c.is_ascii() && LEGACY_ENCODED.contains(&(c as u8)) {
            out.push_str(&format!("%{:02X}", c as u8));
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The version a legacy percent-encoded segment names, when it is exactly what
/// [`legacy_encoded_version`] writes for a version that is valid today.
fn decode_legacy_version(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let version = String::from_utf8(decoded).ok()?;
    crate::fleet::FirmwareVersion::parse(&version).ok()?;
    (legacy_encoded_version(&version).as_deref() == Some(segment)).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_model_takes_every_spelling_and_skips_what_no_key_can_name() {
        let versions = ["1.0.0", "2.1%7Erc1", "3.0~b", "a/b~"].map(String::from);
        let (keys, keyless) = model_deletion_keys("m", &versions);
        let dirs: std::collections::BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| k.as_str().strip_suffix("/firmware.bin"))
            .collect();
        assert_eq!(
            dirs.into_iter().collect::<Vec<_>>(),
            [
                "firmware/m/1.0.0",
                // Not a version today, but the model's: its objects go too.
                "firmware/m/2.1%257Erc1",
                "firmware/m/2.1%7Erc1",
                "firmware/m/3.0%7Eb",
                "firmware/m/3.0~b",
            ]
        );
        assert_eq!(keys.len(), 25);
        assert_eq!(keyless, ["a/b~"]);
    }

    #[test]
    fn deleting_a_version_never_takes_another_versions_encoded_copies() {
        let keys = |version| -> Vec<String> {
            deletable_keys("m", version, false)
                .unwrap()
                .iter()
                .map(|k| k.to_string())
                .collect()
        };
        // `2.1~rc1`: its own keys and the copies an earlier release stored percent-encoded.
        let tilde = keys("2.1~rc1");
        assert!(tilde.contains(&"firmware/m/2.1~rc1/firmware.bin".to_string()));
        assert!(tilde.contains(&"firmware/m/2.1%7Erc1/firmware.bin".to_string()));
        assert_eq!(tilde.len(), 10);
        // The literal version `2.1%7Erc1` an earlier release allowed: only its own encoded keys,
        // never `2.1%7Erc1/…`, which hold `2.1~rc1`.
        let literal = keys("2.1%7Erc1");
        assert!(literal.contains(&"firmware/m/2.1%257Erc1/firmware.bin".to_string()));
        assert!(literal
            .iter()
            .all(|k| !k.starts_with("firmware/m/2.1%7Erc1/")));
        assert_eq!(literal.len(), 5);
        // An ordinary version: its five keys.
        assert_eq!(keys("1.0.0").len(), 5);
        // With the literal version stored beside it, `2.1~rc1` leaves that one's keys alone.
        let beside = deletable_keys("m", "2.1~rc1", true).unwrap();
        assert_eq!(beside.len(), 5);
        assert!(beside
            .iter()
            .all(|k| !k.as_str().starts_with("firmware/m/2.1%7Erc1/")));
    }

    #[test]
    fn a_coredump_key_is_its_text_around_the_id() {
        let (prefix, suffix) = coredump_key_around_id("abcd1234").unwrap();
        for id in [1, 42, 9_000_000_000] {
            let built = format!("{prefix}{id}{suffix}");
            assert_eq!(built, coredump_key("abcd1234", id).unwrap().as_str());
        }
    }

    #[test]
    fn keys_hold_their_components_verbatim_and_map_back() {
        for version in [
            "1.2.0",
            "2.1~rc1",
            "1.0.0-rc.1+build.5",
            "v1 [qa] #3?*",
            "é1",
            "a{b}^c|\"d\"`e`<f>",
        ] {
            for artifact in Artifact::ALL {
                let key = firmware_key("sensor_v2", version, artifact).unwrap();
                assert_eq!(
                    key.as_str(),
                    format!("firmware/sensor_v2/{version}/{}", artifact.file_name())
                );
                assert_eq!(
                    map_key(key.as_str()),
                    MappedKey::Firmware {
                        model_code: "sensor_v2".into(),
                        version: version.into(),
                        artifact
                    }
                );
            }
        }
        let key = coredump_key("abcd2345", 17).unwrap();
        assert_eq!(key.as_str(), "coredumps/abcd2345/17.dmp");
        assert_eq!(
            map_key(key.as_str()),
            MappedKey::Coredump {
                device_key: "abcd2345".into(),
                coredump_id: 17
            }
        );
    }

    #[test]
    fn percent_encoded_keys_of_earlier_releases_map_to_their_version() {
        assert_eq!(
            legacy_encoded_version("2.1~rc1").as_deref(),
            Some("2.1%7Erc1")
        );
        assert_eq!(legacy_encoded_version("1.2.0"), None);
        assert_eq!(
            map_key("firmware/m/2.1%7Erc1/firmware.elf"),
            MappedKey::LegacyEncoded {
                model_code: "m".into(),
                version: "2.1~rc1".into(),
                artifact: Artifact::Elf,
                encoded: "2.1%7Erc1".into(),
            }
        );
        // What no release wrote is not guessed at.
        for key in [
            "firmware/m/2.1%7erc1/firmware.elf", // lower-case hex: not Path::from's output
            "firmware/m/50%25/firmware.bin",     // decodes to a version with '%', refused today
            "firmware/m/%zz/firmware.bin",
            "firmware/m/1.0/firmware.exe",
            "firmware/Bad-Code/1.0/firmware.bin",
            "firmware/m/firmware.bin",
            "coredumps/abcd2345/x.dmp",
            "coredumps/abcd2345/017.dmp", // not how dump 17's key is spelt
            "coredumps/ABCD/1.dmp",
            "coredumps/abcd2345/1.dmp/extra",
            "other/thing",
        ] {
            assert_eq!(map_key(key), MappedKey::Unknown, "{key}");
        }
    }

    #[test]
    fn artifacts_know_their_names_and_types() {
        assert_eq!(
            Artifact::from_file_name("version.json"),
            Some(Artifact::VersionJson)
        );
        assert_eq!(Artifact::from_file_name("firmware.zip"), None);
        assert_eq!(Artifact::Bin.bundle_entry("tempsensor"), "tempsensor.bin");
        assert_eq!(Artifact::Sdkconfig.bundle_entry("tempsensor"), "sdkconfig");
        assert_eq!(Artifact::Map.content_type(), "text/plain; charset=utf-8");
    }
}
