//! Certificate inspection, shared by `check`, `run`'s banner and `gen-cert`.
//!
//! - [`inspect_certificate`] describes one DER certificate: subject, issuer,
//!   serial, validity, days left, SHA-256 fingerprint, public key type and
//!   size, SANs, CA flag.
//! - [`inspect_pair`] loads a PEM certificate file (a chain, leaf first) and
//!   a PEM private key file (PKCS#8, PKCS#1 or SEC1), checks that the key
//!   belongs to the leaf — a mismatch is [`PkiError::KeyMismatch`], naming
//!   both files — and describes the leaf.
//! - [`load_certificate_chain`] / [`load_private_key`] read PEM files with
//!   errors that name the file and say what was expected.

use std::fmt;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{sha256_fingerprint, PkiError};

/// What an admin needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// RFC 4514-style, e.g. `CN=dicomgate`.
    pub subject: String,
    pub issuer: String,
    /// Hex, colon separated, as OpenSSL prints it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// See [`super::sha256_fingerprint`].
    pub fingerprint_sha256: String,
    pub key: KeyInfo,
    /// DNS names and IP addresses, in certificate order.
    pub subject_alt_names: Vec<String>,
    /// basicConstraints CA:true (the guide's OpenSSL recipe makes these).
    pub is_ca: bool,
    /// Issuer equals subject.
    pub self_signed: bool,
}

/// The certificate's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyInfo {
    Rsa { bits: usize },
    Ecdsa { curve: &'static str },
    Ed25519,
    Other { algorithm: String },
}

impl fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyInfo::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyInfo::Ecdsa { curve } => write!(f, "ECDSA {curve}"),
            KeyInfo::Ed25519 => f.write_str("Ed25519"),
            KeyInfo::Other { algorithm } => write!(f, "key algorithm {algorithm}"),
        }
    }
}

impl CertificateInfo {
    /// Whole days until `notAfter`, counted from `now`; negative once expired.
    pub fn days_left_at(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    /// Whole days until `notAfter`, from the system clock.
    pub fn days_left(&self) -> i64 {
        self.days_left_at(OffsetDateTime::now_utc())
    }

    /// `notBefore` and `notAfter` as `YYYY-MM-DD hh:mm:ss UTC`.
    pub fn validity_text(&self) -> (String, String) {
        (utc_text(self.not_before), utc_text(self.not_after))
    }
}

/// One line, e.g. for `check` and the startup banner:
/// `CN=gw, RSA 2048, expires 2035-01-01 10:00:00 UTC (3650 days left), SHA-256 AB:…`.
impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.days_left();
        let left = if days < 0 { format!("EXPIRED {} days ago", -days) } else { format!("{days} days left") };
        write!(
            f,
            "{}, {}, expires {} ({left}), SHA-256 {}",
            self.subject,
            self.key,
            utc_text(self.not_after),
            self.fingerprint_sha256
        )
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC`: how `check`, the banners and the CRL lines
/// print dates.
pub fn utc_text(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Describes one DER-encoded X.509 certificate.
pub fn inspect_certificate(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    describe(der, "certificate")
}

fn describe(der: &[u8], what: &str) -> Result<CertificateInfo, PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate { what: what.to_owned(), reason };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| invalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(invalid(format!("{} bytes after the certificate", rest.len())));
    }
    let time = |t: &x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| invalid(e.to_string()))
    };
    let validity = cert.validity();
    let subject_alt_names = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().filter_map(general_name_text).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(invalid(format!("subject alternative names: {e}"))),
    };
    let is_ca = match cert.basic_constraints() {
        Ok(bc) => bc.is_some_and(|b| b.value.ca),
        Err(e) => return Err(invalid(format!("basic constraints: {e}"))),
    };
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: time(&validity.not_before)?,
        not_after: time(&validity.not_after)?,
        fingerprint_sha256: sha256_fingerprint(der),
        key: key_info(&cert),
        subject_alt_names,
        is_ca,
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

fn general_name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(d) => Some((*d).to_owned()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::Ipv4Addr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
            _ => None,
        },
        GeneralName::RFC822Name(m) => Some(format!("email:{m}")),
        GeneralName::URI(u) => Some(format!("URI:{u}")),
        _ => None,
    }
}

fn key_info(cert: &X509Certificate<'_>) -> KeyInfo {
    // OIDs: RFC 5480 (named curves), RFC 8410 (Ed25519).
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    const P521: &str = "1.3.132.0.35";
    const ED25519: &str = "1.3.101.112";
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyInfo::Rsa { bits: rsa.key_size() },
        Ok(PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some(P256) => KeyInfo::Ecdsa { curve: "P-256" },
                Some(P384) => KeyInfo::Ecdsa { curve: "P-384" },
                Some(P521) => KeyInfo::Ecdsa { curve: "P-521" },
                other => KeyInfo::Other { algorithm: format!("EC on curve {}", other.unwrap_or("(none)")) },
            }
        }
        _ if algorithm == ED25519 => KeyInfo::Ed25519,
        _ => KeyInfo::Other { algorithm },
    }
}

/// Loads a certificate and its private key, checks that they belong together
/// and describes the leaf certificate (the first in the file).
pub fn inspect_pair(certificate_path: &Path, key_path: &Path) -> Result<CertificateInfo, PkiError> {
    let chain = load_certificate_chain(certificate_path)?;
    let key = load_private_key(key_path)?;
    let leaf = chain.first().ok_or_else(|| PkiError::NoCertificate { path: certificate_path.to_owned() })?;
    let info = describe(leaf, &certificate_path.display().to_string())?;
    check_key_matches(leaf, certificate_path, &key, key_path)?;
    Ok(info)
}

/// Compares the certificate's SubjectPublicKeyInfo with the one derived from
/// the private key (what rustls' `CertifiedKey::keys_match` does), so that a
/// mismatch is found at load time rather than as a handshake failure.
fn check_key_matches(
    leaf: &CertificateDer<'_>,
    certificate_path: &Path,
    key: &PrivateKeyDer<'_>,
    key_path: &Path,
) -> Result<(), PkiError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| PkiError::UnsupportedKey { path: key_path.to_owned(), reason: e.to_string() })?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| PkiError::InvalidCertificate {
        what: certificate_path.display().to_string(),
        reason: e.to_string(),
    })?;
    match signing_key.public_key() {
        Some(spki) if spki.as_ref() != cert.public_key().raw => {
            Err(PkiError::KeyMismatch { certificate: certificate_path.to_owned(), key: key_path.to_owned() })
        }
        // Equal, or a key type whose public half the provider cannot derive
        // (none of the types it loads): the TLS handshake would still fail
        // on a mismatch.
        _ => Ok(()),
    }
}

/// Reads a PEM file of one or more certificates (a chain: leaf first).
pub fn load_certificate_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certificate_error = |e: pem::Error| match e {
        pem::Error::Io(source) => PkiError::Io { path: path.to_owned(), source },
        other => PkiError::CertificateFile { path: path.to_owned(), reason: other.to_string() },
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(certificate_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(certificate_error)?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::Io(source) => PkiError::Io { path: path.to_owned(), source },
        pem::Error::NoItemsFound if looks_encrypted(path) => PkiError::EncryptedPrivateKey { path: path.to_owned() },
        pem::Error::NoItemsFound => PkiError::NoPrivateKey { path: path.to_owned() },
        other => PkiError::PrivateKeyFile { path: path.to_owned(), reason: other.to_string() },
    })
}

/// PKCS#8 `ENCRYPTED PRIVATE KEY` or a legacy OpenSSL `Proc-Type: 4,ENCRYPTED`
/// header: only used to give a better error than "no key found".
fn looks_encrypted(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        let text = String::from_utf8_lossy(&bytes);
        text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyType;
    use crate::pki::{generate_self_signed, CertSpec};

    fn pair(key_type: KeyType, cn: &str) -> crate::pki::GeneratedPair {
        generate_self_signed(&CertSpec {
            common_name: cn.into(),
            subject_alt_names: vec!["gw.example".into(), "::1".into()],
            days: 30,
            key_type,
        })
        .expect("generate")
    }

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn describes_an_ecdsa_certificate() {
        let p = pair(KeyType::EcdsaP256, "gw");
        let info = inspect_certificate(&p.certificate_der).expect("inspect");
        assert_eq!(info.subject, "CN=gw");
        assert_eq!(info.issuer, "CN=gw");
        assert!(info.self_signed);
        assert!(!info.is_ca);
        assert_eq!(info.key, KeyInfo::Ecdsa { curve: "P-256" });
        assert_eq!(info.subject_alt_names, ["gw.example", "::1"]);
        assert!((29..=30).contains(&info.days_left()));
        assert_eq!(info.fingerprint_sha256, sha256_fingerprint(&p.certificate_der));
        let line = info.to_string();
        assert!(line.starts_with("CN=gw, ECDSA P-256, expires "), "{line}");
        assert!(line.contains("days left), SHA-256 "), "{line}");
    }

    #[test]
    fn pair_matches_and_mismatch_names_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair(KeyType::EcdsaP256, "a");
        let b = pair(KeyType::EcdsaP256, "b");
        let cert = write(dir.path(), "a_cert.pem", &a.certificate_pem);
        let key_a = write(dir.path(), "a_key.pem", &a.private_key_pem);
        let key_b = write(dir.path(), "b_key.pem", &b.private_key_pem);
        assert_eq!(inspect_pair(&cert, &key_a).expect("match").subject, "CN=a");
        let err = inspect_pair(&cert, &key_b).expect_err("mismatch");
        assert!(matches!(err, PkiError::KeyMismatch { .. }));
        let text = err.to_string();
        assert!(text.contains("a_cert.pem") && text.contains("b_key.pem"), "{text}");
    }

    #[test]
    fn file_errors_say_what_was_expected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write(dir.path(), "empty.pem", "nothing here\n");
        assert!(matches!(load_certificate_chain(&empty), Err(PkiError::NoCertificate { .. })));
        assert!(matches!(load_private_key(&empty), Err(PkiError::NoPrivateKey { .. })));
        let encrypted = write(
            dir.path(),
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(matches!(load_private_key(&encrypted), Err(PkiError::EncryptedPrivateKey { .. })));
        let missing = dir.path().join("missing.pem");
        let err = load_certificate_chain(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(matches!(inspect_certificate(b"\x30\x03\x02\x01\x00"), Err(PkiError::InvalidCertificate { .. })));
    }
}
