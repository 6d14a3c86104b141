//! Certificates and keys: generation (`gen-cert`, `tls.generate_if_missing`),
//! writing key material safely, fingerprints.
//!
//! Generation uses rcgen with the aws-lc-rs provider (the same provider rustls
//! uses here), so RSA keys can be generated without a second crypto stack.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::cli::KeyType;

/// What to put in a generated self-signed certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub common_name: String,
    /// DNS names or IP addresses.
    pub subject_alt_names: Vec<String>,
    pub days: u32,
    pub key_type: KeyType,
}

/// A freshly generated key and certificate, PEM encoded.
pub struct GeneratedPair {
    pub certificate_pem: String,
    /// PKCS#8 private key. Never logged.
    pub private_key_pem: String,
    pub certificate_der: Vec<u8>,
}

impl std::fmt::Debug for GeneratedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedPair")
            .field("fingerprint", &sha256_fingerprint(&self.certificate_der))
            .finish_non_exhaustive()
    }
}

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Generates a private key and a self-signed leaf certificate (CA:false,
/// digitalSignature + keyEncipherment, serverAuth + clientAuth), valid from
/// one hour ago (clock skew) for `spec.days` days.
pub fn generate_self_signed(spec: &CertSpec) -> Result<GeneratedPair, PkiError> {
    if spec.days == 0 {
        return Err(PkiError::InvalidDays);
    }
    let key = match spec.key_type {
        KeyType::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    for san in &spec.subject_alt_names {
        params.subject_alt_names.push(parse_san(san)?);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(spec.days));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key)?;
    Ok(GeneratedPair {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        certificate_der: cert.der().to_vec(),
    })
}

fn parse_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ok = !san.is_empty()
        && san.len() <= 253
        && san.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !ok {
        return Err(PkiError::InvalidSan(san.to_owned()));
    }
    let name = san
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidSan(san.to_owned()))?;
    Ok(SanType::DnsName(name))
}

/// Writes `contents` to `path` through a temporary file in the same directory
/// and a rename, so a crash never leaves a half-written key. `mode` applies
/// from creation (the key is never world-readable, not even briefly).
pub fn write_file_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if !overwrite && path.exists() {
        return Err(PkiError::Exists {
            path: path.to_owned(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// SHA-256 over the DER certificate, as colon-separated upper-case hex (the
/// form `openssl x509 -fingerprint -sha256` prints and admins compare).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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
    fn generated_pair_parses_back() {
        let pair = generate_self_signed(&CertSpec {
            common_name: "test".into(),
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into()],
            days: 10,
            key_type: KeyType::EcdsaP256,
        })
        .expect("generate");
        assert!(pair
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pair.private_key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_san_is_refused() {
        assert!(matches!(
            parse_san("bad name"),
            Err(PkiError::InvalidSan(_))
        ));
    }
}

/// Runs `dicomgate gen-cert`; returns the process exit code.
pub fn gen_cert_command(_args: &crate::cli::GenCertArgs) -> u8 {
    eprintln!("dicomgate gen-cert: not implemented yet");
    crate::cli::exit::FAILURE
}
