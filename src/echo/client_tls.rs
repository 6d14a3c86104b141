//! The TLS client side of `dicomgate echo`: which SCP certificates to trust,
//! the optional client certificate, and rustls failures in words.
//!
//! Trust (`--ca FILE`): a presented certificate that is byte-for-byte one of
//! the file's certificates is accepted as pinned — that is how an admin
//! checks a self-signed SCP certificate, including the guide's CA:true ones,
//! which WebPKI path validation refuses as end entities. Anything else must
//! chain to the file's certificates and match the server name (WebPKI).
//! `--insecure` accepts any certificate but still checks the handshake
//! signatures, so the session is encrypted, just not authenticated.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};

use super::SetupError;
use crate::pki;

/// How the SCP's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// PEM file: pinned certificates and/or CAs.
    CaFile(std::path::PathBuf),
    /// No check of the SCP's certificate (`--insecure`).
    Insecure,
}

/// Builds the client configuration: TLS 1.3 and 1.2 with the aws-lc-rs
/// provider's defaults (ECDHE + AEAD only, the BCP 195 profile of PS3.15).
pub fn client_config(
    trust: &Trust,
    client_identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let provider = crate::tls::provider();
    let verifier = Arc::new(Verifier::new(trust, provider.clone())?);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(SetupError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            // Checks that the key belongs to the certificate, with an error
            // naming both files, before rustls sees them.
            pki::inspect_pair(cert, key)?;
            let chain = pki::load_certificate_chain(cert)?;
            let key = pki::load_private_key(key)?;
            builder.with_client_auth_cert(chain, key).map_err(SetupError::Rustls)?
        }
    };
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Verifier {
    pinned: Vec<CertificateDer<'static>>,
    /// `None` with `--insecure`.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    insecure: bool,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(trust: &Trust, provider: Arc<CryptoProvider>) -> Result<Verifier, SetupError> {
        match trust {
            Trust::Insecure => Ok(Verifier { pinned: Vec::new(), webpki: None, insecure: true, provider }),
            Trust::CaFile(path) => {
                let pinned = pki::load_certificate_chain(path)?;
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
                let webpki = if added > 0 {
                    Some(
                        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                            .build()
                            .map_err(|e| SetupError::CaFile { path: path.clone(), reason: e.to_string() })?,
                    )
                } else {
                    None
                };
                Ok(Verifier { pinned, webpki, insecure: false, provider })
            }
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure || self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    crate::tls::pinning::handshake_signatures!(provider);
}

/// rustls' reason, plus what to do about the common ones.
pub fn describe_tls_error(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "; pass --ca with the SCP's certificate or the CA that issued it (or --insecure to test)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "; use --server-name with a name in the certificate's SANs, or pin the certificate itself with --ca",
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "; the SCP's certificate has expired"
        }
        // Only a backend with `tls.crls` checks revocation.
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "; the SCP's certificate is revoked: a CRL in tls.crls lists it (the SCP needs a new certificate)"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            "; no CRL in tls.crls is from the CA that issued the SCP's certificate"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. },
        ) => "; the CRL in tls.crls is past its nextUpdate: install the CA's current CRL and reload",
        rustls::Error::AlertReceived(
            A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateUnknown,
        ) => "; the SCP refused our client certificate (pass --cert/--key with one it trusts)",
        rustls::Error::AlertReceived(A::HandshakeFailure | A::ProtocolVersion) => {
            "; no common TLS version or cipher suite (dicomgate speaks TLS 1.2/1.3 with ECDHE+AES-GCM/ChaCha20 only)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}
