//! Device keys (a device's permanent identity) and device secrets (its credential).

use std::fmt;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// 8 characters of `[a-z2-7]`: 5 random bytes from a CSPRNG, base32, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceKey(String);

impl DeviceKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 5];
        rand::rng().fill_bytes(&mut bytes);
        DeviceKey(BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }

    pub fn parse(key: &str) -> Result<Self, String> {
        let valid = key.len() == 8
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        if valid {
            Ok(DeviceKey(key.to_string()))
        } else {
            Err(format!(
                "invalid device key {key:?}: expected 8 characters of a-z and 2-7"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a device secret is stored as: the hex SHA-256 of the secret. Secrets are 32 random bytes,
/// so a fast hash is enough (there is nothing to brute-force).
pub fn hash_device_secret(secret: &str) -> String {
    // Into a buffer rather than `hex::encode`'s char by char: this runs on every device request.
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = [0u8; 64];
    match hex::encode_to_slice(digest, &mut hex) {
        Ok(()) => String::from_utf8_lossy(&hex).into_owned(),
        // Not reached: a SHA-256 is 32 bytes, 64 in hex.
        Err(_) => hex::encode(digest),
    }
}

/// A device's secret: 32 random bytes, base64url. Shown once; only its hash is stored.
pub struct DeviceSecret(String);

impl DeviceSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        DeviceSecret(BASE64URL_NOPAD.encode(&bytes))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database keeps.
    pub fn hash(&self) -> String {
        hash_device_secret(&self.0)
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_and_differ() {
        let keys: std::collections::HashSet<String> =
            (0..200).map(|_| DeviceKey::generate().0).collect();
        assert_eq!(keys.len(), 200);
        for k in &keys {
            assert!(DeviceKey::parse(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn keys_outside_the_alphabet_are_rejected() {
        for bad in [
            "abcd234",
            "abcd23456",
            "ABCD2345",
            "abcd2341",
            "abcd/345",
            "abcd8345",
        ] {
            assert!(DeviceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_long_random_and_hashed() {
        let s = DeviceSecret::generate();
        assert_eq!(s.expose().len(), 43);
        assert_eq!(s.hash().len(), 64);
        // Lowercase hex of SHA-256, as stored by every release (and by the Python service).
        assert_eq!(
            hash_device_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(s.expose(), DeviceSecret::generate().expose());
        assert_eq!(format!("{s:?}"), "DeviceSecret(***)");
    }
}
