//! TLS for `mqtts://`: rustls with the aws-lc-rs provider (the one the rest of the service uses)
//! and the operating system's trusted roots, like the Python service's `tls_set()`. A private CA is
//! trusted by adding it to the system store (e.g. `update-ca-certificates`).

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no trusted root certificate could be loaded from the system store ({0})")]
    NoRoots(String),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration for `mqtts://` brokers: system roots, no client certificate.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsSetupError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        return Err(TlsSetupError::NoRoots(if errors.is_empty() {
            "the store is empty".to_string()
        } else {
            errors.join("; ")
        }));
    }
    // The provider is named rather than taken from the process default, so the configuration
    // never depends on which crates happened to install one first.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tls_configuration_builds_from_the_system_roots() {
        // Debian's ca-certificates is on every machine this runs on (it is what cargo uses too).
        let config = super::client_config().expect("system roots");
        assert!(config.alpn_protocols.is_empty());
    }
}
