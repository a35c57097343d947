//! Browser sign-in with the OpenID Connect authorization-code flow and PKCE (RFC 6749 §4.1,
//! RFC 7636, OIDC Core §3.1): the URL the browser is sent to, and the callback's code exchange.
//!
//! Why by hand and not with the `openidconnect` crate: the protocol part is two requests (a URL
//! with seven parameters, one form POST), while the security-critical part, verifying the tokens
//! that come back, is this module's verifier ([`OidcVerifier`]: discovery, key rotation, the
//! algorithm policy, audience and issuer checks) that already guards every bearer token. The crate
//! would bring a second JOSE implementation and a second key cache with its own rotation rules;
//! `oauth2`'s typed token response drops the `id_token` unless its generic client is rebuilt
//! around custom field types.
//!
//! What is checked: `state` (stored server-side, taken once, by the caller: `crate::sessions`),
//! PKCE S256 (the provider checks the verifier), the ID token (signature, `iss`, `aud` = the
//! client id, `exp`, and `nonce` = the one this sign-in sent), and the access token as any bearer
//! token (audience `OIDC_AUDIENCE`; its roles are the session's roles).

use serde::Deserialize;

use super::{OidcError, OidcVerifier, VerifiedToken, MAX_BODY_BYTES};

/// What the sign-in needs of the provider, beyond token verification.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `OIDC_CLIENT_ID` (default `OIDC_AUDIENCE`).
    pub client_id: String,
    /// `OIDC_CLIENT_SECRET`, for a confidential client (sent with HTTP Basic); none for a public
    /// client, which PKCE protects.
    pub client_secret: Option<ClientSecret>,
    /// `OIDC_SCOPES` (default `openid profile email`).
    pub scopes: String,
}

/// `OIDC_CLIENT_SECRET`: shown as `***` by `Debug`, so that settings printed in a log never
/// carry it (as `config::Secret`, which this module cannot use: config refers to it).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Who signed in, from the tokens the provider returned.
#[derive(Debug, Clone)]
pub struct SignInResult {
    /// From the access token (roles) with the ID token's name and email where it has them.
    pub identity: VerifiedToken,
    pub id_token: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl OidcVerifier {
    /// The provider's authorization URL for a sign-in with these values.
    pub async fn authorization_url(
        &self,
        client: &ClientSettings,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_challenge: &str,
    ) -> Result<String, OidcError> {
        let (discovered, _) = self.discovered().await?;
        let endpoint = discovered.authorization_endpoint.ok_or_else(|| {
            OidcError::unavailable(
                "the provider's discovery document has no authorization_endpoint",
            )
        })?;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{endpoint}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}\
             &state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            encode(&client.client_id),
            encode(redirect_uri),
            encode(&client.scopes),
            encode(state),
            encode(nonce),
            encode(pkce_challenge),
        ))
    }

    /// Exchanges the callback's `code` and verifies what comes back (see the module docs).
    pub async fn finish_sign_in(
        &self,
        client: &ClientSettings,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<SignInResult, OidcError> {
        let (discovered, http) = self.discovered().await?;
        let endpoint = discovered.token_endpoint.ok_or_else(|| {
            OidcError::unavailable("the provider's discovery document has no token_endpoint")
        })?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", pkce_verifier),
        ];
        let mut request = http.post(&endpoint);
        match &client.client_secret {
            // RFC 6749 §2.3.1: both form-urlencoded before Basic encoding.
            Some(secret) => {
                request = request.basic_auth(encode(&client.client_id), Some(encode(&secret.0)));
            }
            None => form.push(("client_id", client.client_id.as_str())),
        }
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut response = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::unavailable(format!("token request failed: {e}")))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OidcError::unavailable(format!("token response unreadable: {e}")))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(OidcError::unavailable("token response is too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
            OidcError::unavailable(format!("token endpoint answered {status} without JSON"))
        })?;
        if let Some(error) = parsed.error {
            // invalid_grant and friends: this sign-in cannot be completed (401), not an outage.
            let description = parsed.error_description.unwrap_or_default();
            let message = format!("the provider refused the sign-in: {error} {description}");
            return Err(if status.is_server_error() {
                OidcError::unavailable(message)
            } else {
                OidcError::invalid(message.trim_end().to_string())
            });
        }
        if !status.is_success() {
            return Err(OidcError::unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        let id_token = parsed
            .id_token
            .ok_or_else(|| OidcError::invalid("the provider returned no ID token"))?;
        let access_token = parsed
            .access_token
            .ok_or_else(|| OidcError::invalid("the provider returned no access token"))?;
        let id = self
            .verify_for(&id_token, &client.client_id, Some(nonce))
            .await?;
        let mut identity = self.verify(&access_token).await?;
        if identity.subject != id.subject {
            return Err(OidcError::invalid(
                "the access token and the ID token name different subjects",
            ));
        }
        identity.name = id.name.or(identity.name);
        identity.email = id.email.or(identity.email);
        Ok(SignInResult { identity, id_token })
    }

    /// Where to send the browser to sign out at the provider too, if it offers that
    /// (`end_session_endpoint`, OIDC RP-Initiated Logout).
    pub async fn end_session_url(
        &self,
        client: &ClientSettings,
        id_token: Option<&str>,
        post_logout_redirect_uri: &str,
    ) -> Option<String> {
        let (discovered, _) = self.discovered().await.ok()?;
        let endpoint = discovered.end_session_endpoint?;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        let mut url = format!(
            "{endpoint}{separator}client_id={}&post_logout_redirect_uri={}",
            encode(&client.client_id),
            encode(post_logout_redirect_uri)
        );
        if let Some(hint) = id_token {
            url.push_str("&id_token_hint=");
            url.push_str(&encode(hint));
        }
        Some(url)
    }
}
