//! In-memory test PKI, generated once per test binary with rcgen:
//!
//! - `ca`: a test CA;
//! - `server`: the gateway's certificate for 127.0.0.1 / localhost, signed by
//!   `ca` (also the TLS SCP's behind the gateway);
//! - `client`: a client certificate signed by `ca` (also the gateway's own,
//!   towards a TLS SCP that requires one);
//! - `cloud`: a self-signed client certificate with basicConstraints CA:true,
//!   as the vendor guide's Appendix A openssl.cnf (`x509_extensions = v3_ca`)
//!   makes it; this is what gets pinned;
//! - `stranger`: another self-signed client certificate nobody trusts;
//! - `other_ca`: an unrelated CA (e.g. the wrong trust anchor for a backend);
//! - `other_ca_client`: a client certificate signed by `other_ca`.
//!
//! RSA 2048 for the certificates DCMTK uses (its default BCP 195 profile
//! offers ECDHE-RSA suites for TLS 1.2); ECDSA P-256 elsewhere (fast).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Identity {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn new(cert: &rcgen::Certificate, key: &KeyPair) -> Identity {
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

pub struct TestPki {
    pub ca: Identity,
    pub server: Identity,
    pub client: Identity,
    pub cloud: Identity,
    pub stranger: Identity,
    pub other_ca: Identity,
    pub other_ca_client: Identity,
}

/// Where [`TestPki::write_to`] put each file (`NAME.pem` / `NAME.key`).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

static PKI: OnceLock<TestPki> = OnceLock::new();

/// The process-wide test PKI (generated on first use).
pub fn pki() -> &'static TestPki {
    PKI.get_or_init(TestPki::generate)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "dicomgate tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn rsa() -> KeyPair {
    KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("generate RSA key")
}

fn ecdsa() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate P-256 key")
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn leaf_params(cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid SANs");
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    p
}

impl TestPki {
    fn generate() -> TestPki {
        let ca_key = rsa();
        let test_ca_params = ca_params("dicomgate test CA");
        let ca_cert = test_ca_params.self_signed(&ca_key).expect("self-sign CA");
        let ca = Identity::new(&ca_cert, &ca_key);
        let issuer = Issuer::new(test_ca_params, ca_key);

        let server_key = rsa();
        let server_cert =
            leaf_params("dicomgate test server", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth)
                .signed_by(&server_key, &issuer)
                .expect("sign server cert");
        let server = Identity::new(&server_cert, &server_key);

        let client_key = rsa();
        let client_cert = leaf_params("dicomgate test client", &["client.test"], ExtendedKeyUsagePurpose::ClientAuth)
            .signed_by(&client_key, &issuer)
            .expect("sign client cert");
        let client = Identity::new(&client_cert, &client_key);

        // Appendix A of the vendor guide: [v3_ca] subjectKeyIdentifier=hash,
        // authorityKeyIdentifier=keyid:always, basicConstraints=CA:true; no EKU.
        let cloud_key = rsa();
        let mut cloud_params = CertificateParams::default();
        cloud_params.distinguished_name = dn("Butterfly Cloud (test)");
        cloud_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cloud = Identity::new(&cloud_params.self_signed(&cloud_key).expect("self-sign cloud"), &cloud_key);

        let stranger_key = ecdsa();
        let mut stranger_params = CertificateParams::default();
        stranger_params.distinguished_name = dn("Stranger (test)");
        stranger_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let stranger =
            Identity::new(&stranger_params.self_signed(&stranger_key).expect("self-sign stranger"), &stranger_key);

        let other_ca_key = ecdsa();
        let other_ca_params = ca_params("unrelated CA");
        let other_ca =
            Identity::new(&other_ca_params.self_signed(&other_ca_key).expect("self-sign other CA"), &other_ca_key);
        let other_issuer = Issuer::new(other_ca_params, other_ca_key);
        let other_client_key = ecdsa();
        let other_client_cert =
            leaf_params("client of another CA", &["other.test"], ExtendedKeyUsagePurpose::ClientAuth)
                .signed_by(&other_client_key, &other_issuer)
                .expect("sign other client");
        let other_ca_client = Identity::new(&other_client_cert, &other_client_key);

        TestPki { ca, server, client, cloud, stranger, other_ca, other_ca_client }
    }

    /// Writes `ca.pem`, `server.pem`/`server.key`, `client.*`, `cloud.*`,
    /// `stranger.*`, `other_ca.*`, `other_ca_client.*` into `dir`.
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, id: &Identity| {
            std::fs::write(dir.join(format!("{name}.pem")), &id.cert_pem).expect("write cert");
            std::fs::write(dir.join(format!("{name}.key")), &id.key_pem).expect("write key");
        };
        write("ca", &self.ca);
        write("server", &self.server);
        write("client", &self.client);
        write("cloud", &self.cloud);
        write("stranger", &self.stranger);
        write("other_ca", &self.other_ca);
        write("other_ca_client", &self.other_ca_client);
        PkiFiles { dir: dir.to_owned() }
    }

    /// A rustls client configuration trusting the test CA, presenting
    /// `identity` as client certificate when given.
    pub fn client_config(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        super::init();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der.clone()).expect("add test CA");
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match identity {
            Some(id) => {
                builder.with_client_auth_cert(vec![id.cert_der.clone()], id.key_der()).expect("client identity")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

/// A server-certificate verifier that accepts anything and remembers what it
/// was shown (for `generate_if_missing`, whose certificate the test cannot
/// know in advance).
#[derive(Debug)]
pub struct CapturingVerifier {
    pub seen: std::sync::Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl CapturingVerifier {
    pub fn new() -> Arc<CapturingVerifier> {
        Arc::new(CapturingVerifier {
            seen: std::sync::Mutex::new(None),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    pub fn client_config(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        super::init();
        let config = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        Arc::new(config)
    }

    pub fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen.lock().expect("verifier lock").clone()
    }
}

impl rustls::client::danger::ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("verifier lock") = Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
