//! Certificates and keys: everything dicomgate does with X.509 material that is
//! not a TLS session. It owns
//!
//! - generation ([`generate_self_signed`]): the guide's Appendix A in one
//!   call, used by `gen-cert` and `tls.generate_if_missing`;
//! - writing key material safely ([`write_file_atomic`]) and PKCS#12
//!   bundles for Telexy QPath-E ([`pkcs12_bundle`]);
//! - inspection ([`inspect_certificate`], [`inspect_pair`]): subject, issuer,
//!   validity, days left, SHA-256 fingerprint, key type and size, and whether
//!   a private key belongs to a certificate. `check`, `run`'s banner and
//!   `gen-cert` print what these return;
//! - the `gen-cert` command itself ([`gen_cert_command`]).
//!
//! Generation and key checks use the aws-lc-rs provider (the one rustls uses
//! here), so there is no second crypto stack; x509-parser only parses.

mod command;
mod files;
mod generate;
mod inspect;
mod pkcs12;

use std::path::PathBuf;

pub use command::{gen_cert, gen_cert_command, GenCertOptions, GenCertOutcome};
pub use files::write_file_atomic;
pub use generate::{generate_self_signed, CertSpec, GeneratedPair};
pub use inspect::{
    inspect_certificate, inspect_pair, load_certificate_chain, load_private_key, utc_text, CertificateInfo, KeyInfo,
};
pub use pkcs12::{pkcs12_bundle, read_password_file};

/// A certificate that expires within this many days is warned about: by
/// `check`, in the log at start and reload, and on the status page.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The key algorithm of a generated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA 2048-bit (what the guide's Appendix A makes).
    Rsa2048,
    /// ECDSA on NIST P-256.
    EcdsaP256,
}

/// Errors of this module. Each names the file or value at fault and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate the key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid subject alternative name {0:?}: expected a DNS name or an IP address")]
    InvalidSan(String),
    #[error("--days must be at least 1")]
    InvalidDays,
    #[error("{path}: already exists (pass --force to overwrite)")]
    Exists { path: PathBuf },
    #[error("{} already exist; nothing was written (pass --force to overwrite)", list_paths(.paths))]
    WouldOverwrite { paths: Vec<PathBuf> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a readable PEM certificate file: {reason}")]
    CertificateFile { path: PathBuf, reason: String },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    InvalidCertificate { what: String, reason: String },
    #[error("{path}: no private key found (expected PEM: PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")")]
    NoPrivateKey { path: PathBuf },
    #[error("{path}: the private key is encrypted; dicomgate needs it unencrypted (run `openssl pkey -in {path} -out NEW_FILE` and keep NEW_FILE mode 0600)")]
    EncryptedPrivateKey { path: PathBuf },
    #[error("{path}: not a readable PEM private key: {reason}")]
    PrivateKeyFile { path: PathBuf, reason: String },
    #[error(
        "{path}: the private key is not usable for TLS (RSA, ECDSA P-256/P-384/P-521 or Ed25519 expected): {reason}"
    )]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("the private key in {key} does not belong to the certificate in {certificate} (their public keys differ)")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("{path}: the password file is empty (put the PKCS#12 password on its first line)")]
    EmptyPassword { path: PathBuf },
    #[error("cannot build the PKCS#12 bundle: {0}")]
    Pkcs12(#[from] p12_keystore::error::Error),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// SHA-256 over the DER certificate, as colon-separated upper-case hex (the
/// form `openssl x509 -fingerprint -sha256` prints and admins compare).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_openssl_format() {
        let fp = sha256_fingerprint(b"abc");
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn would_overwrite_lists_every_file() {
        let e = PkiError::WouldOverwrite { paths: vec!["a/scp_cert.pem".into(), "a/scp_key.pem".into()] };
        assert_eq!(
            e.to_string(),
            "a/scp_cert.pem, a/scp_key.pem already exist; nothing was written (pass --force to overwrite)"
        );
    }
}
