//! A test PKI made with rcgen: one CA, a server certificate for 127.0.0.1 /
//! localhost (the gateway's listener and the TLS SCP both use it), a client
//! certificate (the gateway's, towards an SCP that requires one), and an
//! unrelated CA. RSA 2048 throughout: DCMTK's default BCP 195 profile
//! negotiates ECDHE-RSA suites for TLS 1.2.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

pub struct Pem {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

pub struct Pki {
    pub ca: Pem,
    pub server: Pem,
    pub client: Pem,
    pub other_ca: Pem,
}

static PKI: OnceLock<Pki> = OnceLock::new();

pub fn pki() -> &'static Pki {
    PKI.get_or_init(generate)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "dicomgate backend tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn rsa() -> KeyPair {
    KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("RSA key")
}

fn make_ca(cn: &str) -> (CertificateParams, KeyPair, Pem) {
    let key = rsa();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = p.self_signed(&key).expect("self-sign CA");
    let pem = Pem { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().clone() };
    (p, key, pem)
}

fn leaf(cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> Pem {
    let key = rsa();
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("SANs");
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, issuer).expect("sign leaf");
    Pem { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().clone() }
}

fn generate() -> Pki {
    let (ca_params, ca_key, ca) = make_ca("backend test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server = leaf("backend test server", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
    let client = leaf("dicomgate (test client)", &["dicomgate.test"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
    let (_, _, other_ca) = make_ca("unrelated CA");
    Pki { ca, server, client, other_ca }
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`, `other_ca.pem` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write PEM");
        write("ca.pem", &self.ca.cert);
        write("server.pem", &self.server.cert);
        write("server.key", &self.server.key);
        write("client.pem", &self.client.cert);
        write("client.key", &self.client.key);
        write("other_ca.pem", &self.other_ca.cert);
    }

    /// A rustls client trusting the test CA (no client certificate).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        super::init();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der.clone()).expect("add CA");
        Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
    }
}
