//! The rustls client configuration towards a backend SCP (DICOM-TLS on the
//! inner leg): the SCP's CA, an optional client identity, the server name.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::{load_private_key, provider, root_store, ServerIdentity, TlsError};
use crate::config::BackendTlsConfig;

/// DICOM-TLS towards a backend SCP.
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls").field("server_name", &self.server_name).finish()
    }
}

pub fn backend_tls(cfg: &BackendTlsConfig) -> Result<BackendTls, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(root_store(&cfg.ca)?);
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
    Ok(BackendTls { connector: tokio_rustls::TlsConnector::from(config.clone()), config, server_name })
}
