//! Which client certificate a listener refused as revoked. rustls refuses
//! it with `CertificateError::Revoked` (the TLS alert certificate_revoked)
//! and hands the connection nothing else: the handshake's state, with the
//! certificate, is gone when `accept` returns its error. The audit trail
//! needs the serial number (the CA's index file and the security team know
//! a certificate by it), so a verifier wrapped around the CRL-checking one
//! writes what it refused into a slot of the connection's task: [`observe`]
//! opens the slot around the handshake, `NotingVerifier` fills it. The
//! verifier runs inside the poll of the handshake future, on that task.
//!
//! The error rustls sends and returns is untouched, so the peer still gets
//! certificate_revoked.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName};
use x509_parser::prelude::{FromDer, X509Certificate};

tokio::task_local! {
    static REFUSED: RefCell<Option<RevokedCertificate>>;
}

/// A certificate a CRL lists, as the audit line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Upper-case hex, as `openssl x509 -serial` and the CA's index print it.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
}

impl RevokedCertificate {
    fn of(der: &[u8]) -> RevokedCertificate {
        match X509Certificate::from_der(der) {
            Ok((_, cert)) => RevokedCertificate {
                serial: super::crl::serial_text(cert.raw_serial()),
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
            },
            // webpki parsed it before finding it revoked; kept total anyway.
            Err(_) => RevokedCertificate { serial: "?".into(), subject: "?".into(), issuer: "?".into() },
        }
    }
}

impl fmt::Display for RevokedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "serial {}, subject {}, issuer {}", self.serial, self.subject, self.issuer)
    }
}

/// Runs a listener's TLS handshake and returns its result together with
/// the certificate refused as revoked during it, if one was.
pub async fn observe<F: Future>(handshake: F) -> (F::Output, Option<RevokedCertificate>) {
    REFUSED
        .scope(RefCell::new(None), async {
            let output = handshake.await;
            (output, REFUSED.with(|slot| slot.borrow_mut().take()))
        })
        .await
}

/// Delegates everything to the CRL-checking verifier and notes a revoked
/// end-entity certificate for [`observe`].
#[derive(Debug)]
pub(super) struct NotingVerifier(pub(super) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for NotingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self.0.verify_client_cert(end_entity, intermediates, now);
        if let Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) = &result {
            // Outside `observe` (no slot) there is nobody to tell.
            let _ = REFUSED.try_with(|slot| *slot.borrow_mut() = Some(RevokedCertificate::of(end_entity)));
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}
