//! Whether a CRL was signed by a given CA certificate, checked with the
//! provider's own signature algorithms (aws-lc-rs, as every handshake here):
//! x509-parser's `verify` feature would bring a second crypto stack, and
//! webpki keeps its CRL signature check to itself.
//!
//! The matching is webpki's: an algorithm applies when its signature
//! AlgorithmIdentifier equals the CRL's `signatureAlgorithm` and its public
//! key AlgorithmIdentifier equals the CA key's (both compared as DER
//! contents, without the outer SEQUENCE header, RFC 5280 §4.1.1.2, §5.1.1.2).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::prelude::X509Certificate;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// No supported algorithm verifies it (or the CRL's structure is broken).
    Invalid,
    /// The signature algorithm is not one the provider verifies for this key;
    /// the dotted OID of the CRL's signature algorithm.
    Unsupported(String),
}

/// The three parts of a signed CRL: `CertificateList ::= SEQUENCE {
/// tbsCertList, signatureAlgorithm, signatureValue BIT STRING }`.
struct Signed<'a> {
    /// The whole TBSCertList element, header included: what was signed.
    message: &'a [u8],
    /// The contents of the signatureAlgorithm SEQUENCE.
    algorithm: &'a [u8],
    signature: &'a [u8],
}

fn split(der: &[u8]) -> Option<Signed<'_>> {
    let (_, list) = Any::from_der(der).ok()?;
    let body = list.data;
    let (rest, _) = Any::from_der(body).ok()?;
    let message = &body[..body.len() - rest.len()];
    let (rest, algorithm) = Any::from_der(rest).ok()?;
    let (_, value) = Any::from_der(rest).ok()?;
    // A BIT STRING's first octet counts the unused bits: 0 for a signature.
    match value.data.split_first() {
        Some((0, signature)) => Some(Signed { message, algorithm: algorithm.data, signature }),
        _ => None,
    }
}

/// The contents of the certificate's SubjectPublicKeyInfo `algorithm`.
fn key_algorithm<'a>(ca: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    let (_, spki) = Any::from_der(ca.public_key().raw).ok()?;
    let (_, algorithm) = Any::from_der(spki.data).ok()?;
    Some(algorithm.data)
}

pub(super) fn verify(crl: &[u8], ca: &X509Certificate<'_>, provider: &Arc<CryptoProvider>) -> Result<(), Failure> {
    let signed = split(crl).ok_or(Failure::Invalid)?;
    let key_algorithm = key_algorithm(ca).ok_or(Failure::Invalid)?;
    let public_key = &ca.public_key().subject_public_key.data;
    let mut candidates = provider
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == signed.algorithm)
        .filter(|alg| alg.public_key_alg_id().as_ref() == key_algorithm)
        .peekable();
    if candidates.peek().is_none() {
        let oid = Any::from_der(signed.algorithm)
            .ok()
            .and_then(|(_, any)| any.as_oid().ok().map(|oid| oid.to_id_string()))
            .unwrap_or_else(|| "an unknown algorithm".to_owned());
        return Err(Failure::Unsupported(oid));
    }
    if candidates.any(|alg| alg.verify_signature(public_key, signed.message, signed.signature).is_ok()) {
        Ok(())
    } else {
        Err(Failure::Invalid)
    }
}
