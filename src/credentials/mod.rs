//! Device credentials (SPEC §13): which secret a presented credential proves, the tokens
//! iotsupport issues ([`tokens`]), provisioning packages ([`provisioning`]), fleet rotation
//! ([`rotation`]) and the slow-down of repeated token failures ([`throttle`]).
//!
//! A device has a current secret and at most one pending one, both stored as SHA-256 hex. It may
//! authenticate with either, as `Bearer <key>.<secret>` or with a token minted with either; the
//! first time it uses the pending one, that one is promoted ([`rotation::complete`]).

pub mod dashboard;
pub mod provisioning;
pub mod rotation;
pub mod throttle;
pub mod tokens;

use subtle::ConstantTimeEq;

pub use crate::db::credentials::DeviceCredential;
use crate::fleet::hash_device_secret;

/// Which of a device's secrets a credential proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretMatch {
    Current,
    /// The pending secret, by its hash: using it completes the rotation.
    Pending(String),
}

impl SecretMatch {
    /// The stored hash of the secret that was proved.
    pub fn hash<'a>(&'a self, credential: &'a DeviceCredential) -> Option<&'a str> {
        match self {
            SecretMatch::Current => credential.secret_hash.as_deref(),
            SecretMatch::Pending(hash) => Some(hash),
        }
    }
}

fn same(stored: Option<&str>, given: &str) -> bool {
    stored
        .is_some_and(|s| s.len() == given.len() && bool::from(s.as_bytes().ct_eq(given.as_bytes())))
}

/// Which secret `secret` is (compared in constant time, both always compared).
pub fn match_secret(credential: &DeviceCredential, secret: &str) -> Option<SecretMatch> {
    let given = hash_device_secret(secret);
    let current = same(credential.secret_hash.as_deref(), &given);
    let pending = same(credential.pending_secret_hash.as_deref(), &given);
    let superseded = same(credential.superseded_secret_hash.as_deref(), &given);
    if current {
        Some(SecretMatch::Current)
    } else if pending || superseded {
        Some(SecretMatch::Pending(given))
    } else {
        None
    }
}

/// Which secret minted a token whose `sid` is `sid` (see [`tokens::sid_of`]).
pub fn match_sid(credential: &DeviceCredential, sid: &str) -> Option<SecretMatch> {
    if credential.secret_hash.as_deref().map(tokens::sid_of) == Some(sid) {
        Some(SecretMatch::Current)
    } else {
        [
            &credential.pending_secret_hash,
            &credential.superseded_secret_hash,
        ]
        .into_iter()
        .flatten()
        .find(|p| tokens::sid_of(p) == sid)
        .map(|p| SecretMatch::Pending(p.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(current: Option<&str>, pending: Option<&str>) -> DeviceCredential {
        DeviceCredential {
            id: 1,
            key: "abcd2345".into(),
            device_model_id: 1,
            model_code: "m".into(),
            secret_hash: current.map(hash_device_secret),
            pending_secret_hash: pending.map(hash_device_secret),
            superseded_secret_hash: None,
        }
    }

    #[test]
    fn either_secret_is_recognised() {
        let c = credential(Some("old"), Some("new"));
        assert_eq!(match_secret(&c, "old"), Some(SecretMatch::Current));
        assert_eq!(
            match_secret(&c, "new"),
            Some(SecretMatch::Pending(hash_device_secret("new")))
        );
        assert_eq!(match_secret(&c, "other"), None);
        assert_eq!(match_secret(&credential(None, None), ""), None);
    }

    #[test]
    fn tokens_name_their_secret() {
        let c = credential(Some("old"), Some("new"));
        let current = tokens::sid_of(c.secret_hash.as_deref().unwrap()).to_string();
        let pending = tokens::sid_of(c.pending_secret_hash.as_deref().unwrap()).to_string();
        assert_eq!(match_sid(&c, &current), Some(SecretMatch::Current));
        assert!(matches!(
            match_sid(&c, &pending),
            Some(SecretMatch::Pending(_))
        ));
        assert_eq!(match_sid(&c, "0000000000000000"), None);
        assert_eq!(match_sid(&credential(Some("old"), None), &pending), None);
    }
}
