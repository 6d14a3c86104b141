//! TLS: what the listeners and backends share — the error type, the crypto
//! provider, PEM loading and what the audit records of a session.
//!
//! Profile: DICOM PS3.15 B.12 / BCP 195 — TLS 1.2 and 1.3 only, ECDHE with
//! AEAD suites only (rustls offers nothing else), aws-lc-rs as the provider.
//!
//! - [`server`]: a listener's identity and rustls server configuration.
//! - [`client`]: the rustls client configuration towards a backend SCP.
//! - [`pinning`]: client-certificate pinning, and the handshake-signature
//!   checks every custom verifier shares.
//! - [`handshake`]: the handshake through rustls's unbuffered API, handing
//!   the traffic keys to our record layer.
//! - [`record`]: record protection in place (sans-IO): open, seal.
//! - [`stream`]: the stream type both legs of a relayed association use,
//!   with the relay's copy-free interface ([`stream::Source`], [`stream::Sink`]).
//! - `rx`, `tx`: the stream's receiving and sending sides; [`transport`]:
//!   what a stream needs of the socket under it.
//! - [`crl`]: certificate revocation lists (both sides): loading, load-time
//!   checks, the revocation policy; [`revocation`]: which client
//!   certificate a listener refused as revoked, for the audit trail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsVersion;
use crate::pki;

pub mod client;
pub mod crl;
pub mod handshake;
pub mod pinning;
pub mod record;
pub mod revocation;
mod rx;
pub mod server;
pub mod stream;
pub mod transport;
mod tx;

pub use client::{backend_tls, BackendTls};
pub use server::{ensure_generated, server_config, ServerIdentity, ServerTls};
pub use stream::Stream;

/// Why a listener's TLS handshake failed, as the audit trail tells them
/// apart (IHE ATNA: a refused client certificate is a Node Authentication
/// failure; a closed probe is no event at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Closed before the handshake got anywhere: a port probe or a load
    /// balancer's TCP check, not a node presenting an identity.
    Closed,
    /// The client certificate was missing, or refused by the verifier.
    ClientCertificate,
    /// Anything else: versions, suites, alerts, malformed records.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error tokio-rustls returned from `accept`: it wraps
    /// the `rustls::Error` in the `io::Error`; an end of stream without one
    /// is the peer closing.
    pub fn of(error: &std::io::Error) -> HandshakeFailure {
        match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
                HandshakeFailure::ClientCertificate
            }
            Some(_) => HandshakeFailure::Other,
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => HandshakeFailure::Closed,
            None => HandshakeFailure::Other,
        }
    }
}

/// Whether a failed handshake (as tokio-rustls returns it) refused the
/// client's certificate for being X.509 v1: webpki's `UnsupportedCertVersion`,
/// which deserves words an admin can act on ([`REISSUE_AS_V3`]).
pub fn client_certificate_is_v1(error: &std::io::Error) -> bool {
    let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::UnsupportedCertVersion))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or parsing a PEM file (the message names the file).
    #[error(transparent)]
    Pem(#[from] pki::PkiError),
    #[error("the private key in {key} does not belong to the certificate in {certificate} (their public keys differ)")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("{path}: the private key is not usable for TLS: {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("{path}: no usable CA certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "{certificate} exists but {missing} does not; refusing to generate over half a pair (remove or restore it)"
    )]
    HalfPair { certificate: PathBuf, missing: PathBuf },
    #[error("{path}: the certificate expired on {not_after}; renew it (dicomgate gen-cert) and upload the new one to the cloud")]
    Expired { path: PathBuf, not_after: String },
    #[error(
        "{path}: the certificate is X.509 v1 (no extensions, so no subjectAltName), which TLS clients refuse \
         (rustls: UnsupportedCertVersion); {REISSUE_AS_V3}"
    )]
    X509v1 { path: PathBuf },
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A CRL that cannot be used (the message names the key and the file).
    /// Boxed: it is large, and every `Result` of this module carries it.
    #[error(transparent)]
    Crl(Box<crl::CrlError>),
}

impl From<crl::CrlError> for TlsError {
    fn from(e: crl::CrlError) -> TlsError {
        TlsError::Crl(Box::new(e))
    }
}

/// How to replace an X.509 v1 certificate. OpenSSL's `x509 -req` still
/// makes v1 certificates when no extension is given.
pub const REISSUE_AS_V3: &str = "re-issue it as v3: `dicomgate gen-cert`, or sign the request with \
     `openssl x509 -req ... -extfile FILE` where FILE holds e.g. `subjectAltName=DNS:gateway.example.org`";

/// True for a DER certificate of X.509 version 1: webpki (and so rustls)
/// accepts only v3 end-entity certificates.
pub fn is_x509_v1(der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| cert.version() == X509Version::V1)
}

/// The provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM file of one or more certificates (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pki::load_certificate_chain(path)?)
}

/// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    Ok(pki::load_private_key(path)?)
}

/// A root store of every certificate `certs` of the CA file `path` (named in errors).
fn root_store_of(path: &Path, certs: Vec<CertificateDer<'static>>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.to_owned(), reason: e.to_string() })?;
    }
    Ok(roots)
}

fn protocol_versions(versions: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect()
}

/// What the audit records of a TLS session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub version: Option<&'static str>,
    pub suite: Option<String>,
    /// SHA-256 fingerprint of the client certificate, when one was presented.
    pub client_certificate: Option<String>,
}

impl SessionInfo {
    pub fn of(conn: &rustls::CommonState) -> SessionInfo {
        SessionInfo {
            version: conn.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                _ => "other",
            }),
            suite: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
            client_certificate: conn.peer_certificates().and_then(|c| c.first()).map(|c| pki::sha256_fingerprint(c)),
        }
    }
}
