//! A listener's side of TLS: its identity (certificate + key, checked to
//! belong together, generated on first start when asked) and its rustls
//! server configuration, including how client certificates are checked
//! (chain to `client_ca` with its CRLs, pinning, or both).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;

use super::crl::{self, CrlSet};
use super::pinning::PinnedClientVerifier;
use super::revocation::NotingVerifier;
use super::{load_certificates, load_private_key, protocol_versions, provider, root_store_of, TlsError};
use crate::config::{ClientAuth, ListenerTlsConfig};
use crate::pki;

/// The certificate a listener presents, loaded and checked against its key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity").field("fingerprint", &self.fingerprint()).finish()
    }
}

impl ServerIdentity {
    pub fn load(certificate: &Path, private_key: &Path) -> Result<ServerIdentity, TlsError> {
        let chain = load_certificates(certificate)?;
        // Loads fine, then fails every handshake at the peer: say so now.
        if chain.first().is_some_and(|leaf| super::is_x509_v1(leaf)) {
            return Err(TlsError::X509v1 { path: certificate.to_owned() });
        }
        let key = load_private_key(private_key)?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadPrivateKey { path: private_key.to_owned(), reason: e.to_string() })?;
        let certified_key = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch { certificate: certificate.to_owned(), key: private_key.to_owned() })
            }
            // Unknown: the provider could not compare (unusual key types); the
            // handshake itself will fail if they do not belong together.
            Err(_) => {}
        }
        Ok(ServerIdentity { chain, certified_key: Arc::new(certified_key) })
    }

    /// SHA-256 of the leaf certificate, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        self.chain.first().map(|c| pki::sha256_fingerprint(c)).unwrap_or_default()
    }
}

/// Creates the listener's key and self-signed certificate when
/// `generate_if_missing` is set and neither file exists. Returns the new
/// certificate's fingerprint when it generated one.
pub fn ensure_generated(tls: &ListenerTlsConfig) -> Result<Option<String>, TlsError> {
    if !tls.generate_if_missing {
        return Ok(None);
    }
    match (tls.certificate.exists(), tls.private_key.exists()) {
        (true, true) => Ok(None),
        (true, false) => {
            Err(TlsError::HalfPair { certificate: tls.certificate.clone(), missing: tls.private_key.clone() })
        }
        (false, true) => {
            Err(TlsError::HalfPair { certificate: tls.private_key.clone(), missing: tls.certificate.clone() })
        }
        (false, false) => {
            let pair = pki::generate_self_signed(&pki::CertSpec {
                common_name: "dicomgate".to_owned(),
                subject_alt_names: vec!["localhost".to_owned()],
                days: 3650,
                key_type: pki::KeyType::Rsa2048,
            })?;
            // Key first, 0600 from creation: a crash in between leaves no
            // certificate without its key.
            pki::write_file_atomic(&tls.private_key, pair.private_key_pem.as_bytes(), 0o600, false)?;
            pki::write_file_atomic(&tls.certificate, pair.certificate_pem.as_bytes(), 0o644, false)?;
            Ok(Some(pki::sha256_fingerprint(&pair.certificate_der)))
        }
    }
}

/// A listener's rustls configuration and the CRLs it checks client
/// certificates against (`client_crls`, read when it was built).
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub crls: CrlSet,
}

/// Builds a listener's rustls configuration from its (already loaded)
/// identity, reading `client_ca`, `client_certificates` and `client_crls`.
pub fn server_config(tls: &ListenerTlsConfig, identity: &ServerIdentity) -> Result<ServerTls, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&tls.versions))?;
    let (verifier, crls) = client_verifier(&tls.client_auth, &provider)?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCertificate(identity.certified_key.clone())));
    // The server's preference decides (BCP 195 §4.2.1); all suites offered
    // are ECDHE + AEAD, but a scanner rightly flags client-ordered choice.
    config.ignore_client_order = true;
    // After the handshake the records are ours (`tls::record`): rustls hands
    // the traffic keys over through its kernel-TLS interface.
    config.enable_secret_extraction = true;
    Ok(ServerTls { config: Arc::new(config), crls })
}

/// Loads what checks client certificates (`client_ca`, its CRLs, the pins)
/// without the listener's own identity: `check` judges them before
/// `generate_if_missing` has created the pair.
pub fn client_auth(tls: &ListenerTlsConfig) -> Result<CrlSet, TlsError> {
    client_verifier(&tls.client_auth, &provider()).map(|(_, crls)| crls)
}

/// One certificate for every client (no SNI-based selection: the cloud
/// connects by IP address).
#[derive(Debug)]
struct FixedCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// `None` when no client certificate is required; otherwise chain
/// validation against `client_ca` (and its CRLs), pinning, or both.
/// Pinning is consulted first, so a pinned certificate never meets a CRL:
/// removing the pin is its revocation.
fn client_verifier(
    auth: &ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<(Option<Arc<dyn ClientCertVerifier>>, CrlSet), TlsError> {
    if !auth.required() {
        return Ok((None, CrlSet::default()));
    }
    let mut crls = CrlSet::default();
    let chain: Option<Arc<dyn ClientCertVerifier>> = match &auth.ca {
        Some(path) => {
            let cas = load_certificates(path)?;
            let now = time::OffsetDateTime::now_utc();
            crls = crl::load("client_crls", "client_ca", &auth.crls, &cas, provider, now)?;
            let roots = Arc::new(root_store_of(path, cas)?);
            let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            if !crls.is_empty() {
                builder = crl::client_policy(builder, &crls);
            }
            let v = builder.build().map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
            if crls.is_empty() {
                Some(v)
            } else {
                Some(Arc::new(NotingVerifier(v)))
            }
        }
        None => None,
    };
    let mut pinned = Vec::new();
    for path in &auth.pinned {
        // Only the leaf (first certificate) of each file is pinned.
        let certs = load_certificates(path)?;
        pinned.extend(certs.into_iter().take(1));
    }
    if pinned.is_empty() {
        return Ok((chain, crls));
    }
    Ok((Some(Arc::new(PinnedClientVerifier::new(pinned, chain, provider.clone()))), crls))
}
