//! PKCS#12 (.pfx) bundles: the guide's Appendix A step 1.4, for Telexy
//! QPath-E, which imports the key and certificate as one password-protected
//! file.
//!
//! Encryption is PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) for both the key and
//! the certificate bags, and the MAC is HMAC-SHA256: what `openssl pkcs12
//! -export` writes by default since OpenSSL 3.0. The legacy RC2/3DES schemes
//! are not even compiled in (p12-keystore without its `pbes1` feature).

use std::path::Path;

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};

use super::PkiError;

/// PBKDF2 and MAC iteration count; above OpenSSL 3's default of 2048, and
/// still instant to open.
const ITERATIONS: u32 = 100_000;

/// Builds a PKCS#12 bundle holding `key_pkcs8_der` and its certificate chain
/// (leaf first) under the alias `friendly_name`.
pub fn pkcs12_bundle(
    key_pkcs8_der: &[u8],
    chain_der: &[&[u8]],
    friendly_name: &str,
    password: &str,
) -> Result<Vec<u8>, PkiError> {
    let certs = chain_der.iter().map(|der| Certificate::from_der(der)).collect::<Result<Vec<_>, _>>()?;
    let Some(leaf) = chain_der.first() else {
        return Err(PkiError::InvalidCertificate {
            what: "PKCS#12 bundle".to_owned(),
            reason: "no certificate given".to_owned(),
        });
    };
    // localKeyId ties the key bag to the leaf's certificate bag; OpenSSL
    // uses a SHA-1 of the certificate, any stable bytes will do.
    let local_key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf).as_ref().to_vec();
    let chain = PrivateKeyChain::new(local_key_id, PrivateKey::from_der(key_pkcs8_der)?, certs);
    let mut store = KeyStore::new();
    store.add_entry(friendly_name, KeyStoreEntry::PrivateKeyChain(chain));
    let bytes = store
        .writer(password)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()?;
    Ok(bytes)
}

/// Reads the PKCS#12 password: the first line of `path`, without its line
/// ending (so `echo secret > pw.txt` works, and a Windows editor's CRLF too).
pub fn read_password_file(path: &Path) -> Result<String, PkiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(PkiError::EmptyPassword { path: path.to_owned() });
    }
    Ok(first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyType;
    use crate::pki::{generate_self_signed, CertSpec};

    #[test]
    fn bundle_reads_back_with_the_password() {
        let pair = generate_self_signed(&CertSpec {
            common_name: "qpath".into(),
            subject_alt_names: vec![],
            days: 1,
            key_type: KeyType::EcdsaP256,
        })
        .expect("generate");
        let pfx = pkcs12_bundle(&pair.private_key_der, &[&pair.certificate_der], "qpath", "s3cret").expect("bundle");
        let store =
            KeyStore::from_pkcs12(&pfx, "s3cret", p12_keystore::Pkcs12ImportPolicy::default()).expect("read back");
        let (_, chain) = store.private_key_chain().expect("key chain");
        assert_eq!(chain.key().as_der(), pair.private_key_der.as_slice());
        assert_eq!(chain.certs()[0].as_der(), pair.certificate_der.as_slice());
        assert!(KeyStore::from_pkcs12(&pfx, "wrong", p12_keystore::Pkcs12ImportPolicy::default()).is_err());
    }

    #[test]
    fn password_is_the_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "pass word\r\nignored\n").expect("write");
        assert_eq!(read_password_file(&path).expect("read"), "pass word");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(read_password_file(&path), Err(PkiError::EmptyPassword { .. })));
    }
}
