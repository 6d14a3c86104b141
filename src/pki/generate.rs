//! Self-signed leaf certificates: what the guide's Appendix A makes with three
//! OpenSSL commands, but a proper leaf (CA:false, key usage, EKU, SANs)
//! instead of its `basicConstraints = CA:true` configuration.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::KeyType;
use super::{sha256_fingerprint, PkiError};

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
    /// PKCS#8 DER of the same key (for PKCS#12). Never logged.
    pub private_key_der: Vec<u8>,
}

impl std::fmt::Debug for GeneratedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedPair")
            .field("fingerprint", &sha256_fingerprint(&self.certificate_der))
            .finish_non_exhaustive()
    }
}

/// Generates a private key and a self-signed leaf certificate (CA:false,
/// digitalSignature + keyEncipherment, serverAuth + clientAuth), valid from
/// one hour ago (clock skew) for `spec.days` days.
///
/// serverAuth + clientAuth: the same pair serves a listener (the cloud checks
/// it as a server) and can be given to `echo --cert` or a backend TLS client.
/// keyEncipherment is there for TLS 1.2 RSA peers that still check it.
pub fn generate_self_signed(spec: &CertSpec) -> Result<GeneratedPair, PkiError> {
    if spec.days == 0 {
        return Err(PkiError::InvalidDays);
    }
    // Parse every SAN before the (slow, for RSA) key generation.
    let sans = spec.subject_alt_names.iter().map(|s| parse_san(s)).collect::<Result<Vec<_>, _>>()?;
    let key = match spec.key_type {
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?,
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(spec.days));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key)?;
    Ok(GeneratedPair {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        certificate_der: cert.der().to_vec(),
        private_key_der: key.serialize_der(),
    })
}

/// An IP address or a DNS name (RFC 1035 labels; a leading `*` label allowed
/// for wildcards).
pub(crate) fn parse_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let labels: Vec<&str> = san.split('.').collect();
    let ok = !san.is_empty()
        && san.len() <= 253
        && labels.iter().enumerate().all(|(i, l)| {
            (i == 0 && *l == "*" && labels.len() > 2)
                || (!l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        });
    if !ok {
        return Err(PkiError::InvalidSan(san.to_owned()));
    }
    let name = san.to_owned().try_into().map_err(|_| PkiError::InvalidSan(san.to_owned()))?;
    Ok(SanType::DnsName(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_parses_back() {
        let pair = generate_self_signed(&CertSpec {
            common_name: "test".into(),
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into()],
            days: 10,
            key_type: KeyType::EcdsaP256,
        })
        .expect("generate");
        assert!(pair.certificate_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pair.private_key_pem.contains("PRIVATE KEY"));
        let info = crate::pki::inspect_certificate(&pair.certificate_der).expect("inspect");
        assert_eq!(info.subject, "CN=test");
        assert!(!info.is_ca);
        assert_eq!(info.subject_alt_names, ["localhost", "127.0.0.1"]);
    }

    #[test]
    fn sans_are_checked() {
        for bad in ["bad name", "", "a..b", "-a.example", "a*.example", "*.com"] {
            assert!(matches!(parse_san(bad), Err(PkiError::InvalidSan(_))), "{bad:?} accepted");
        }
        for good in ["pacs", "gw.hospital.example", "*.hospital.example", "::1", "10.0.0.1"] {
            assert!(parse_san(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn zero_days_is_refused() {
        let spec =
            CertSpec { common_name: "x".into(), subject_alt_names: vec![], days: 0, key_type: KeyType::EcdsaP256 };
        assert!(matches!(generate_self_signed(&spec), Err(PkiError::InvalidDays)));
    }
}
