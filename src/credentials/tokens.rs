//! Device tokens iotsupport issues itself: short-lived ES256 JWTs (SPEC §13).
//!
//! The signing key is shared by every `serve` process: from `DEVICE_TOKEN_SIGNING_KEY_FILE`, or
//! generated once (aws-lc-rs) and kept in the `signing_keys` table, created under a lock so two
//! processes starting at once agree on one. Signing and verification are jsonwebtoken's; nothing
//! here is hand-written crypto. The public keys are published as a JWKS, so a broker or another
//! service can check device tokens.
//!
//! A token carries `iss`, `aud`, `sub` = `azp` = the client id, `iat`, `exp`, and `sid`: the
//! first 16 hex digits of the SHA-256 of the secret that minted it. A token is only valid while
//! that secret is still the device's current or pending one, so replacing a secret also ends the
//! tokens minted with the old one, and a token minted with the pending secret completes the
//! rotation like the secret itself.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::CredentialSettings;
use crate::db::{credentials as queries, Db, DbError};

/// Digits of the secret's hash a token names it by.
const SID_LEN: usize = 16;

/// How long after its `exp` a token is still accepted (clocks of the processes differ a little).
const EXPIRY_LEEWAY_SECONDS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the signing key is unusable: {0}")]
    Key(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a presented token was not accepted (always a 401 to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

/// The claims of a device token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub azp: String,
    pub iat: i64,
    pub exp: i64,
    /// Which secret minted it (see the module docs).
    pub sid: String,
}

/// What [`TokenIssuer::check`] makes of a presented JWT.
#[derive(Debug)]
pub enum TokenCheck {
    /// Not signed with one of our keys (perhaps the OIDC issuer's).
    NotOurs,
    Valid(Arc<DeviceClaims>),
    Invalid(InvalidToken),
}

/// What [`TokenIssuer::mint`] hands out.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
}

struct VerifyingKey {
    key: DecodingKey,
    jwk: Jwk,
}

/// The process's [`TokenIssuer`], loaded on first use: `serve` starts (and reports itself not
/// ready) while migrations are pending, before the `signing_keys` table exists.
pub struct Tokens {
    db: Db,
    settings: CredentialSettings,
    issuer: tokio::sync::OnceCell<Arc<TokenIssuer>>,
}

impl Tokens {
    pub fn new(db: Db, settings: CredentialSettings) -> Arc<Self> {
        Arc::new(Tokens {
            db,
            settings,
            issuer: tokio::sync::OnceCell::new(),
        })
    }

    /// The issuer, loading (or creating) the key the first time; a failure is retried next call.
    pub async fn issuer(&self) -> Result<Arc<TokenIssuer>, TokenError> {
        self.issuer
            .get_or_try_init(|| TokenIssuer::load(&self.db, &self.settings))
            .await
            .cloned()
    }
}

/// Mints and verifies device tokens with the shared key.
pub struct TokenIssuer {
    kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, VerifyingKey>,
    /// Tokens whose signature and claims were checked, by SHA-256, until they expire: a device
    /// polling with its token costs a hash, not an ECDSA verification, per request. A token never
    /// changes, so a cached verdict never goes stale; the secret it names is checked every time.
    verified: std::sync::Mutex<HashMap<[u8; 32], Arc<DeviceClaims>>>,
    settings: CredentialSettings,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Verified tokens remembered per process (a few hundred bytes each).
const VERIFIED_CAPACITY: usize = 32_768;

fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// `sid` of a stored secret hash.
pub fn sid_of(secret_hash: &str) -> &str {
    secret_hash.get(..SID_LEN).unwrap_or(secret_hash)
}

/// The public JWK (with `kid`, `alg`, `use`) of a PKCS#8 EC P-256 private key.
fn public_jwk(pkcs8: &[u8]) -> Result<Jwk, TokenError> {
    let encoding = EncodingKey::from_ec_der(pkcs8);
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256));
    Ok(jwk)
}

/// A new EC P-256 key as PKCS#8 DER.
fn generate_pkcs8() -> Result<Vec<u8>, TokenError> {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| TokenError::Key("cannot generate a key".into()))?;
    let doc = pair
        .to_pkcs8v1()
        .map_err(|_| TokenError::Key("cannot encode the key".into()))?;
    Ok(doc.as_ref().to_vec())
}

/// Whether `pem` is a key tokens can be signed with (a PKCS#8 P-256 key): checked when the
/// configuration is read, so that a wrong file stops the start instead of failing every token.
pub fn check_signing_key(pem: &str) -> Result<(), TokenError> {
    public_jwk(&pem_to_der(pem)?).map(|_| ())
}

/// The DER inside a PEM `PRIVATE KEY` block.
fn pem_to_der(pem: &str) -> Result<Vec<u8>, TokenError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(TokenError::Key(
            "DEVICE_TOKEN_SIGNING_KEY_FILE must hold a PKCS#8 'PRIVATE KEY' PEM block \
             (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"
                .into(),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| TokenError::Key(format!("the PEM is not base64: {e}")))
}

impl TokenIssuer {
    /// The configured key, or the newest stored one, or a new one stored for every process.
    pub async fn load(db: &Db, settings: &CredentialSettings) -> Result<Arc<Self>, TokenError> {
        let signing_der = match &settings.signing_key_pem {
            Some(pem) => pem_to_der(pem.expose())?,
            None => {
                let stored = queries::signing_keys(db).await?;
                match stored.into_iter().next() {
                    Some(key) => decode_stored(&key.private_key)?,
                    None => {
                        let der = generate_pkcs8()?;
                        let jwk = public_jwk(&der)?;
                        let kid = jwk.common.key_id.clone().unwrap_or_default();
                        let jwk_text = serde_json::to_string(&jwk)
                            .map_err(|e| TokenError::Key(e.to_string()))?;
                        let private = base64::engine::general_purpose::STANDARD.encode(&der);
                        // Under a lock: the first process stores its key, the others read it.
                        let winner =
                            queries::insert_signing_key_once(db, &kid, &private, &jwk_text).await?;
                        decode_stored(&winner)?
                    }
                }
            }
        };
        let jwk = public_jwk(&signing_der)?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        // Accept every stored key (older ones stay valid until their tokens expire) and ours.
        let mut verifying = HashMap::new();
        for stored in queries::signing_keys(db).await? {
            let der = decode_stored(&stored.private_key)?;
            let jwk = public_jwk(&der)?;
            verifying.insert(
                stored.kid,
                VerifyingKey {
                    key: DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Key(e.to_string()))?,
                    jwk,
                },
            );
        }
        verifying.insert(
            kid.clone(),
            VerifyingKey {
                key: DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Key(e.to_string()))?,
                jwk,
            },
        );
        Ok(Arc::new(TokenIssuer {
            verified: Default::default(),
            kid,
            signing: EncodingKey::from_ec_der(&signing_der),
            verifying,
            settings: settings.clone(),
        }))
    }

    /// A token for `client_id`, minted with the secret whose hash is `secret_hash`.
    pub fn mint(&self, client_id: &str, secret_hash: &str) -> Result<IssuedToken, TokenError> {
        let now = crate::db::now().timestamp();
        let ttl = self.settings.token_ttl.as_secs();
        let claims = DeviceClaims {
            iss: self.settings.token_issuer.clone(),
            aud: self.settings.token_audience.clone(),
            sub: client_id.to_string(),
            azp: client_id.to_string(),
            iat: now,
            exp: now + ttl as i64,
            sid: sid_of(secret_hash).to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(IssuedToken {
            access_token,
            expires_in: ttl,
        })
    }

    /// Whether `token` claims to be one of ours (its `kid` is one of our keys).
    pub fn is_ours(&self, token: &str) -> bool {
        !matches!(self.check(token), TokenCheck::NotOurs)
    }

    /// Checks signature, issuer, audience and lifetime; the caller checks `sid` and the device.
    pub fn verify(&self, token: &str) -> Result<Arc<DeviceClaims>, InvalidToken> {
        match self.check(token) {
            TokenCheck::Valid(claims) => Ok(claims),
            TokenCheck::Invalid(e) => Err(e),
            TokenCheck::NotOurs => Err(InvalidToken("token signed with an unknown key".into())),
        }
    }

    /// Whether `token` is ours, and if so whether it is valid. A token verified before is
    /// answered from memory (one SHA-256 of the token) until it expires.
    pub fn check(&self, token: &str) -> TokenCheck {
        let digest = token_digest(token);
        if let Some(claims) = self.cached(&digest) {
            return TokenCheck::Valid(claims);
        }
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        if !kid.is_some_and(|kid| self.verifying.contains_key(&kid)) {
            return TokenCheck::NotOurs;
        }
        match self.verify_signature(token) {
            Ok(claims) => {
                let claims = Arc::new(claims);
                self.remember(digest, claims.clone());
                TokenCheck::Valid(claims)
            }
            Err(e) => TokenCheck::Invalid(e),
        }
    }

    fn remember(&self, digest: [u8; 32], claims: Arc<DeviceClaims>) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAPACITY {
            let now = crate::db::now().timestamp();
            verified.retain(|_, c| c.exp > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(digest, claims);
    }

    /// A cached verdict that has not expired.
    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<DeviceClaims>> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(digest)
            .filter(|c| c.exp > crate::db::now().timestamp())
            .cloned()
    }

    fn verify_signature(&self, token: &str) -> Result<DeviceClaims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| InvalidToken(format!("malformed token: {e}")))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or_else(|| InvalidToken("token signed with an unknown key".into()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.settings.token_issuer]);
        validation.set_audience(&[&self.settings.token_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // The lifetime is checked on the database's clock, which minted it (`crate::db::clock`),
        // not on this host's.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<DeviceClaims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| InvalidToken(format!("invalid token: {e}")))?;
        if claims.exp.saturating_add(EXPIRY_LEEWAY_SECONDS) < crate::db::now().timestamp() {
            return Err(InvalidToken("invalid token: ExpiredSignature".into()));
        }
        Ok(claims)
    }

    /// The public keys, as served at `/api/iot/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        let mut keys: Vec<Jwk> = self.verifying.values().map(|k| k.jwk.clone()).collect();
        keys.sort_by(|a, b| a.common.key_id.cmp(&b.common.key_id));
        JwkSet { keys }
    }
}

fn decode_stored(private_key: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::STANDARD
        .decode(private_key)
        .map_err(|e| TokenError::Key(format!("stored signing key is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CredentialSettings {
        CredentialSettings {
            device_base_url: None,
            device_mqtt_url: None,
            wifi_ssid: None,
            wifi_password: None,
            token_ttl: std::time::Duration::from_secs(3600),
            token_issuer: "https://iot.example".into(),
            token_audience: "iotsupport-devices".into(),
            signing_key_pem: None,
        }
    }

    fn issuer() -> TokenIssuer {
        let der = generate_pkcs8().unwrap();
        let jwk = public_jwk(&der).unwrap();
        let kid = jwk.common.key_id.clone().unwrap();
        let mut verifying = HashMap::new();
        verifying.insert(
            kid.clone(),
            VerifyingKey {
                key: DecodingKey::from_jwk(&jwk).unwrap(),
                jwk,
            },
        );
        TokenIssuer {
            verified: Default::default(),
            kid,
            signing: EncodingKey::from_ec_der(&der),
            verifying,
            settings: settings(),
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_secret_id() {
        let issuer = issuer();
        let hash = "ab".repeat(32);
        let token = issuer.mint("iotdevice-m-abcd2345", &hash).unwrap();
        assert!(issuer.is_ours(&token.access_token));
        let claims = issuer.verify(&token.access_token).unwrap();
        assert_eq!(claims.azp, "iotdevice-m-abcd2345");
        assert_eq!(claims.sid, &hash[..16]);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn tokens_of_another_key_or_tampered_ones_fail() {
        let (a, b) = (issuer(), issuer());
        let token = a.mint("iotdevice-m-abcd2345", &"cd".repeat(32)).unwrap();
        assert!(!b.is_ours(&token.access_token));
        assert!(b.verify(&token.access_token).is_err());
        let mut parts: Vec<String> = token.access_token.split('.').map(String::from).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://iot.example","aud":"iotsupport-devices","sub":"x","azp":"x","iat":0,"exp":9999999999,"sid":"0"}"#);
        assert!(a.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn a_token_expires_after_its_leeway_on_the_database_clock() {
        let issuer = issuer();
        let signed = |exp: i64| {
            let claims = DeviceClaims {
                iss: issuer.settings.token_issuer.clone(),
                aud: issuer.settings.token_audience.clone(),
                sub: "x".into(),
                azp: "x".into(),
                iat: exp - 3600,
                exp,
                sid: "0".into(),
            };
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(issuer.kid.clone());
            jsonwebtoken::encode(&header, &claims, &issuer.signing).unwrap()
        };
        let now = crate::db::now().timestamp();
        assert!(
            issuer.verify(&signed(now - 10)).is_ok(),
            "within the leeway"
        );
        let err = issuer.verify(&signed(now - 60)).unwrap_err();
        assert!(err.0.contains("ExpiredSignature"), "{}", err.0);
    }

    #[test]
    fn the_jwks_publishes_the_public_key_only() {
        let text = serde_json::to_string(&issuer().jwks()).unwrap();
        assert!(
            text.contains("\"kty\":\"EC\"") && text.contains("\"crv\":\"P-256\""),
            "{text}"
        );
        assert!(!text.contains("\"d\""), "private key leaked: {text}");
    }

    #[test]
    fn a_pem_key_file_is_read() {
        let der = generate_pkcs8().unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert_eq!(pem_to_der(&pem).unwrap(), der);
        assert!(pem_to_der("not a pem").is_err());
    }
}
