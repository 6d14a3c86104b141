//! The rustls client configuration towards a backend SCP (DICOM-TLS on the
//! inner leg): the SCP's CA and its CRLs, an optional client identity, the
//! server name.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;

use super::crl::{self, CrlSet};
use super::{load_certificates, load_private_key, provider, root_store_of, ServerIdentity, TlsError};
use crate::config::BackendTlsConfig;

/// DICOM-TLS towards a backend SCP.
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<ServerName<'static>>,
    /// The CRLs the SCP's certificate is checked against (`tls.crls`).
    pub crls: CrlSet,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls").field("server_name", &self.server_name).finish()
    }
}

pub fn backend_tls(cfg: &BackendTlsConfig) -> Result<BackendTls, TlsError> {
    let provider = provider();
    let cas = load_certificates(&cfg.ca)?;
    let crls = crl::load("crls", "ca", &cfg.crls, &cas, &provider, time::OffsetDateTime::now_utc())?;
    let roots = Arc::new(root_store_of(&cfg.ca, cas)?);
    let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if !crls.is_empty() {
        verifier = crl::server_policy(verifier, &crls);
    }
    let verifier = verifier.build().map_err(|e| TlsError::BadCa { path: cfg.ca.clone(), reason: e.to_string() })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier);
    let config = match &cfg.client_identity {
        Some((cert, key)) => {
            // Loading it as an identity checks that the key belongs to the
            // certificate, with an error naming both files.
            let identity = ServerIdentity::load(cert, key)?;
            builder.with_client_auth_cert(identity.chain, load_private_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = match &cfg.server_name {
        // Validated when the configuration was parsed.
        Some(name) => ServerName::try_from(name.clone()).ok(),
        None => None,
    };
    let mut config = config;
    // After the handshake the records are ours (`tls::record`).
    config.enable_secret_extraction = true;
    let config = Arc::new(config);
    Ok(BackendTls { connector: tokio_rustls::TlsConnector::from(config.clone()), config, server_name, crls })
}
