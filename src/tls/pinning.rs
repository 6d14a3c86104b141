//! Client-certificate pinning for listeners, and the handshake-signature
//! checks that every custom certificate verifier in dicomgate shares (this
//! one, and the echo SCU's server verifier in `echo::client_tls`).
//!
//! A custom verifier decides whom to trust; it must never weaken the proof
//! that the peer holds the certificate's private key. `handshake_signatures!`
//! writes the three signature methods once, always with the provider's own
//! algorithms, so no verifier can get them subtly different.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;

/// The `verify_tls12_signature`, `verify_tls13_signature` and
/// `supported_verify_schemes` methods of a `ServerCertVerifier` or
/// `ClientCertVerifier`, checked with the signature algorithms of the
/// `Arc<CryptoProvider>` in the named field of `self`.
macro_rules! handshake_signatures {
    ($provider:ident) => {
        $crate::tls::pinning::handshake_signatures!(@check $provider, verify_tls12_signature);
        $crate::tls::pinning::handshake_signatures!(@check $provider, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$provider.signature_verification_algorithms.supported_schemes()
        }
    };
    // The trait method and rustls' check have the same name.
    (@check $provider:ident, $verify:ident) => {
        fn $verify(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$verify(message, cert, dss, &self.$provider.signature_verification_algorithms)
        }
    };
}
pub(crate) use handshake_signatures;

/// Accepts a client certificate that is byte-for-byte one of the pinned ones,
/// otherwise defers to chain validation when a `client_ca` is configured.
///
/// Pinning exists for the guide's "SCU Authenticated" mode: the cloud's
/// certificate is uploaded to the termination point as is. It is often
/// self-signed with `basicConstraints = CA:true` (Appendix A's openssl.cnf),
/// which webpki rightly refuses as an end-entity certificate, so a pinned
/// certificate is trusted by identity, not by path building. The handshake
/// signature is still verified against its public key, so only the holder of
/// the private key gets in.
pub(super) struct PinnedClientVerifier {
    pinned: Vec<CertificateDer<'static>>,
    chain: Option<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl PinnedClientVerifier {
    pub(super) fn new(
        pinned: Vec<CertificateDer<'static>>,
        chain: Option<Arc<dyn ClientCertVerifier>>,
        provider: Arc<CryptoProvider>,
    ) -> PinnedClientVerifier {
        let hints = chain.as_ref().map(|c| c.root_hint_subjects().to_vec()).unwrap_or_default();
        PinnedClientVerifier { pinned, chain, hints, provider }
    }
}

impl fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifier").field("pinned", &self.pinned.len()).finish()
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return Ok(ClientCertVerified::assertion());
        }
        match &self.chain {
            Some(chain) => chain.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    handshake_signatures!(provider);
}
