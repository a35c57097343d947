//! Fetching and caching the issuer's signing keys: discovery, the JWKS, one refetch on an
//! unknown `kid` at most every 30 s, stale keys kept while the issuer is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;

use super::*;

impl OidcVerifier {
    /// The key named `kid` and the issuer tokens must carry, fetching the JWKS if needed.
    pub(super) async fn key_for(&self, kid: &str) -> Result<(Arc<CachedKey>, String), OidcError> {
        {
            let cache = self.inner.cache.read().await;
            if let (Some(key), Some(at)) = (cache.keys.get(kid), cache.loaded_at) {
                if at.elapsed() < JWKS_MAX_AGE {
                    return Ok((key.clone(), cache.issuer.clone()));
                }
            }
        }

        let mut fetch = self.inner.fetch.lock().await;
        // Someone may have fetched while we waited for the lock: look again.
        let (found, loaded_at) = {
            let cache = self.inner.cache.read().await;
            (cache.keys.get(kid).cloned(), cache.loaded_at)
        };
        let may_fetch = fetch
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.inner.settings.min_refresh_interval);
        let lookup = match (found, loaded_at) {
            (Some(key), Some(at)) if at.elapsed() < JWKS_MAX_AGE => Lookup::Found(key),
            // Stale key: refresh if allowed, else keep using it.
            (Some(key), _) if !may_fetch => Lookup::Found(key),
            (Some(_), _) => Lookup::Fetch,
            (None, None) if !may_fetch => {
                return Err(OidcError::unavailable(format!(
                    "signing keys could not be loaded: {}",
                    fetch.last_error.as_deref().unwrap_or("not yet fetched")
                )));
            }
            (None, Some(_)) if !may_fetch => {
                return Err(OidcError::invalid("token is signed with an unknown key"));
            }
            (None, _) => Lookup::Fetch,
        };
        if let Lookup::Found(key) = lookup {
            let issuer = self.inner.cache.read().await.issuer.clone();
            return Ok((key, issuer));
        }

        match self.refresh(&mut fetch).await {
            Ok(()) => {}
            Err(e) => {
                // A stale key still works while the issuer is unreachable.
                let cache = self.inner.cache.read().await;
                if let Some(key) = cache.keys.get(kid) {
                    tracing::warn!(error = %e, "OIDC key refresh failed; using cached keys");
                    return Ok((key.clone(), cache.issuer.clone()));
                }
                return Err(e);
            }
        }
        let cache = self.inner.cache.read().await;
        match cache.keys.get(kid) {
            Some(key) => Ok((key.clone(), cache.issuer.clone())),
            None => Err(OidcError::invalid("token is signed with an unknown key")),
        }
    }

    /// Fetches discovery (if not known yet) and the JWKS, replacing the cached keys on success.
    async fn refresh(&self, fetch: &mut FetchState) -> Result<(), OidcError> {
        fetch.last_attempt = Some(Instant::now());
        let result = self.fetch_keys(fetch).await;
        match result {
            Ok((discovered, keys)) => {
                {
                    let mut cache = self.inner.cache.write().await;
                    cache.issuer = discovered.issuer.clone();
                    cache.keys = keys;
                    cache.loaded_at = Some(Instant::now());
                }
                fetch.discovered = Some(discovered);
                fetch.last_error = None;
                Ok(())
            }
            Err(e) => {
                fetch.discovered = None;
                tracing::warn!(reason = %e.reason(), "OIDC key fetch failed");
                fetch.last_error = Some(e.reason().to_string());
                Err(e)
            }
        }
    }

    /// The HTTP client for the issuer (no redirects followed, bounded time).
    pub(super) fn client(fetch: &mut FetchState) -> Result<reqwest::Client, OidcError> {
        if let Some(client) = &fetch.client {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcError::unavailable(format!("HTTP client could not be built: {e}")))?;
        fetch.client = Some(client.clone());
        Ok(client)
    }

    /// The discovery document's facts, fetching it if not known yet; and the HTTP client.
    pub(super) async fn discovered(&self) -> Result<(Discovered, reqwest::Client), OidcError> {
        let mut fetch = self.inner.fetch.lock().await;
        let client = Self::client(&mut fetch)?;
        if let Some(d) = &fetch.discovered {
            return Ok((d.clone(), client));
        }
        if let Some((at, reason)) = &fetch.discovery_failed {
            if at.elapsed() < self.inner.settings.min_refresh_interval {
                return Err(OidcError::unavailable(format!(
                    "the identity provider could not be reached a moment ago: {reason}"
                )));
            }
        }
        match self.discover(&client).await {
            Ok(discovered) => {
                fetch.discovered = Some(discovered.clone());
                fetch.discovery_failed = None;
                Ok((discovered, client))
            }
            Err(e) => {
                fetch.discovery_failed = Some((Instant::now(), e.reason().to_string()));
                Err(e)
            }
        }
    }

    async fn fetch_keys(
        &self,
        fetch: &mut FetchState,
    ) -> Result<(Discovered, HashMap<String, Arc<CachedKey>>), OidcError> {
        let client = Self::client(fetch)?;
        let discovered = match &fetch.discovered {
            Some(d) => d.clone(),
            None => self.discover(&client).await?,
        };
        let body = get_body(&client, &discovered.jwks_uri, "JWKS").await?;
        let set: RawJwkSet = serde_json::from_slice(&body)
            .map_err(|e| OidcError::unavailable(format!("JWKS is not valid JSON: {e}")))?;
        let mut keys = HashMap::new();
        for value in set.keys {
            // Skip keys we cannot use (encryption keys, unknown types) instead of failing the set.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some((kid, key)) = usable_key(&jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(OidcError::unavailable(
                "JWKS contains no usable signing key",
            ));
        }
        Ok((discovered, keys))
    }

    async fn discover(&self, client: &reqwest::Client) -> Result<Discovered, OidcError> {
        let configured = self.inner.settings.issuer_url.trim_end_matches('/');
        let url = format!("{configured}/.well-known/openid-configuration");
        let body = get_body(client, &url, "discovery document").await?;
        let doc: DiscoveryDocument = serde_json::from_slice(&body).map_err(|e| {
            OidcError::unavailable(format!("discovery document is not usable: {e}"))
        })?;
        if doc.issuer.trim_end_matches('/') != configured {
            return Err(OidcError::unavailable(format!(
                "discovery document names issuer {:?}, expected {:?}",
                doc.issuer, self.inner.settings.issuer_url
            )));
        }
        if !(doc.jwks_uri.starts_with("https://") || doc.jwks_uri.starts_with("http://")) {
            return Err(OidcError::unavailable(
                "discovery document has no usable jwks_uri",
            ));
        }
        for (name, endpoint) in [
            ("jwks_uri", Some(&doc.jwks_uri)),
            (
                "authorization_endpoint",
                doc.authorization_endpoint.as_ref(),
            ),
            ("token_endpoint", doc.token_endpoint.as_ref()),
            ("end_session_endpoint", doc.end_session_endpoint.as_ref()),
        ] {
            if let Some(endpoint) = endpoint.filter(|e| downgrades(configured, e)) {
                return Err(OidcError::unavailable(format!(
                    "discovery document of an https:// issuer names a plain http:// {name} \
                     ({endpoint:.200})"
                )));
            }
        }
        Ok(Discovered {
            issuer: doc.issuer,
            jwks_uri: doc.jwks_uri,
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
            end_session_endpoint: doc.end_session_endpoint,
        })
    }
}

/// Whether `endpoint` is plain `http://` where the issuer is `https://`: keys, codes or the
/// client secret would then travel unprotected although the provider is reached over TLS.
fn downgrades(issuer: &str, endpoint: &str) -> bool {
    issuer.starts_with("https://") && endpoint.starts_with("http://")
}

/// GETs `url` and returns its body (at most [`MAX_BODY_BYTES`]); every failure is Unavailable.
pub(super) async fn get_body(
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<Vec<u8>, OidcError> {
    let mut response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| OidcError::unavailable(format!("{what} request to {url} failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(OidcError::unavailable(format!(
            "{what} request to {url} answered {status}"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OidcError::unavailable(format!("{what} from {url} could not be read: {e}")))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(OidcError::unavailable(format!(
                "{what} from {url} is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(super) fn is_allowed_algorithm(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(
        alg,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
    )
}

#[cfg(test)]
mod tests {
    use super::downgrades;

    #[test]
    fn an_https_issuer_names_no_plain_http_endpoint() {
        let issuer = "https://sso.example/realms/iot";
        assert!(downgrades(issuer, "http://sso.example/realms/iot/certs"));
        assert!(!downgrades(issuer, "https://sso.example/realms/iot/certs"));
        // An http:// issuer (loopback, or allowed with OIDC_ALLOW_HTTP) may name http:// ones.
        assert!(!downgrades(
            "http://127.0.0.1:8080/realms/iot",
            "http://127.0.0.1:8080/certs"
        ));
    }
}
