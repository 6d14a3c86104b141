//! Load-time checks and the handshake policy, with CAs and CRLs made by
//! rcgen (the integration tests use `openssl ca`).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::CertificateError;
use time::{Duration, OffsetDateTime};

use super::*;

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(cn: &str, ecdsa: bool, crl_sign: bool) -> Ca {
    let key = if ecdsa {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
    } else {
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("key")
    };
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let without_crl_sign = p.self_signed(&key).expect("self-sign").der().clone();
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    let der = if crl_sign { p.self_signed(&key).expect("self-sign").der().clone() } else { without_crl_sign };
    // rcgen signs CRLs only for an issuer with cRLSign: the CA handed to the
    // loader may still be the same name and key without it.
    Ca { der, issuer: Issuer::new(p, key) }
}

fn client(ca: &Ca, serial: u64) -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
    p.serial_number = Some(SerialNumber::from(serial));
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&key, &ca.issuer).expect("sign client").der().clone()
}

fn crl(ca: &Ca, revoked: &[u64], next_update: OffsetDateTime) -> rcgen::CertificateRevocationList {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update,
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: now - Duration::minutes(30),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .expect("sign CRL")
}

fn in_a_week() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::days(7)
}

fn provider() -> Arc<CryptoProvider> {
    super::super::provider()
}

/// Writes `files` into a temporary directory and loads them as `client_crls`.
fn load_files(files: &[(&str, Vec<u8>)], cas: &[&Ca], now: OffsetDateTime) -> Result<CrlSet, CrlError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, bytes)| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            path
        })
        .collect();
    let cas: Vec<CertificateDer<'static>> = cas.iter().map(|c| c.der.clone()).collect();
    load("client_crls", "client_ca", &paths, &cas, &provider(), now)
}

fn problem(result: Result<CrlSet, CrlError>) -> (usize, CrlProblem) {
    let e = result.expect_err("refused");
    assert!(e.to_string().starts_with(&format!("client_crls[{}]: ", e.index)), "{e}");
    (e.index, e.problem)
}

#[test]
fn pem_and_der_load_and_say_what_they_hold() {
    let (rsa, ec) = (ca("RSA CA", false, true), ca("EC CA", true, true));
    let pem = crl(&rsa, &[0x1001, 0x1002], in_a_week()).pem().expect("pem");
    let der = crl(&ec, &[], in_a_week()).der().to_vec();
    let set = load_files(&[("a.crl.pem", pem.into_bytes()), ("b.crl", der)], &[&rsa, &ec], OffsetDateTime::now_utc())
        .expect("both load");
    assert_eq!(set.ders.len(), 2);
    let (a, b) = (&set.infos[0], &set.infos[1]);
    assert_eq!((a.issuer.as_str(), a.revoked, a.index, a.number.as_deref()), ("CN=RSA CA", 2, 0, Some("7")));
    assert_eq!((b.issuer.as_str(), b.revoked, b.index), ("CN=EC CA", 0, 1));
    assert_eq!(a.key("listeners.store.tls"), "listeners.store.tls.client_crls[0]");
    assert!(set.uncovered.is_empty(), "{:?}", set.uncovered);
    let line = a.to_string();
    assert!(line.starts_with("CRL of CN=RSA CA, 2 revoked, issued ") && line.contains("(in 6days"), "{line}");
}

#[test]
fn a_ca_without_a_crl_is_reported_as_uncovered() {
    let (one, two) = (ca("CA One", true, true), ca("CA Two", true, true));
    let pem = crl(&one, &[], in_a_week()).pem().expect("pem");
    let set = load_files(&[("one.pem", pem.into_bytes())], &[&one, &two], OffsetDateTime::now_utc()).expect("load");
    assert_eq!(set.uncovered, ["CN=CA Two"]);
}

#[test]
fn a_crl_of_another_ca_is_refused_naming_its_issuer() {
    let (ours, theirs) = (ca("Our CA", true, true), ca("Their CA", true, true));
    let pem = crl(&theirs, &[], in_a_week()).pem().expect("pem");
    match problem(load_files(&[("x.pem", pem.into_bytes())], &[&ours], OffsetDateTime::now_utc())) {
        (0, CrlProblem::UnknownIssuer { issuer, ca_key: "client_ca" }) => assert_eq!(issuer, "CN=Their CA"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_crl_signed_by_an_impostor_with_the_same_name_is_refused() {
    for ecdsa in [false, true] {
        let (ours, impostor) = (ca("Vendor CA", ecdsa, true), ca("Vendor CA", ecdsa, true));
        let good = crl(&ours, &[], in_a_week()).pem().expect("pem").into_bytes();
        let forged = crl(&impostor, &[], in_a_week()).der().to_vec();
        let files = [("good.pem", good), ("forged.der", forged)];
        match problem(load_files(&files, &[&ours], OffsetDateTime::now_utc())) {
            (1, CrlProblem::BadSignature { issuer, .. }) => assert_eq!(issuer, "CN=Vendor CA"),
            other => panic!("ecdsa {ecdsa}: {other:?}"),
        }
    }
}

#[test]
fn an_expired_crl_and_a_second_crl_of_one_issuer_are_refused() {
    let ca = ca("CA", true, true);
    let pem = crl(&ca, &[], in_a_week()).pem().expect("pem").into_bytes();
    let later = OffsetDateTime::now_utc() + Duration::days(8);
    match problem(load_files(&[("c.pem", pem.clone())], &[&ca], later)) {
        (0, CrlProblem::Expired { next_update }) => assert!(next_update.ends_with(" UTC"), "{next_update}"),
        other => panic!("{other:?}"),
    }
    let files = [("c.pem", pem.clone()), ("again.pem", pem)];
    match problem(load_files(&files, &[&ca], OffsetDateTime::now_utc())) {
        (1, CrlProblem::DuplicateIssuer { other: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn files_that_are_no_crl_are_refused() {
    let ca = ca("CA", true, true);
    let certificate = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca.der)
    );
    for (bytes, what) in [(b"hello".to_vec(), "text"), (certificate.into_bytes(), "a certificate")] {
        match problem(load_files(&[("x", bytes)], &[&ca], OffsetDateTime::now_utc())) {
            (0, CrlProblem::NotACrl) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    match problem(load_files(&[("x.der", vec![0x30, 0x03, 0x02, 0x01, 0x01])], &[&ca], OffsetDateTime::now_utc())) {
        (0, CrlProblem::Parse(_)) => {}
        other => panic!("{other:?}"),
    }
    let missing = load(
        "client_crls",
        "client_ca",
        &[PathBuf::from("/nonexistent/x.crl")],
        &[],
        &provider(),
        OffsetDateTime::now_utc(),
    );
    assert!(matches!(missing, Err(CrlError { problem: CrlProblem::Read(_), .. })), "{missing:?}");
}

#[test]
fn a_ca_without_crl_sign_is_refused() {
    let ca = ca("No CRL Signer", true, false);
    let pem = crl(&ca, &[], in_a_week()).pem().expect("pem");
    match problem(load_files(&[("c.pem", pem.into_bytes())], &[&ca], OffsetDateTime::now_utc())) {
        (0, CrlProblem::NotCrlSigner { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn serials_print_as_the_ca_index_does() {
    assert_eq!(serial_text(&[0x10, 0x02]), "1002");
    assert_eq!(serial_text(&[0x00, 0x80, 0x0a]), "800A");
    assert_eq!(serial_text(&[0x00]), "00");
}

/// The policy as the handshake applies it: revoked refused (with the alert
/// `certificate_revoked`), listed-nowhere accepted, an issuer without CRL
/// refused, any certificate refused once the CRL is past nextUpdate.
#[test]
fn the_handshake_policy_refuses_revoked_unknown_and_stale() {
    let (ca_one, ca_two) = (ca("One", true, true), ca("Two", true, true));
    let next_update = in_a_week();
    let pem = crl(&ca_one, &[0x1001], next_update).pem().expect("pem");
    let set =
        load_files(&[("one.pem", pem.into_bytes())], &[&ca_one, &ca_two], OffsetDateTime::now_utc()).expect("load");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_one.der.clone()).expect("root");
    roots.add(ca_two.der.clone()).expect("root");
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let verifier = client_policy(builder, &set).build().expect("verifier");
    let now = UnixTime::now();
    let verify = |cert: &CertificateDer<'_>, at: UnixTime| verifier.verify_client_cert(cert, &[], at).map(|_| ());

    let revoked = verify(&client(&ca_one, 0x1001), now);
    assert_eq!(revoked, Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)));
    assert_eq!(rustls::AlertDescription::from(CertificateError::Revoked), rustls::AlertDescription::CertificateRevoked);
    assert_eq!(verify(&client(&ca_one, 0x1002), now), Ok(()));
    assert_eq!(
        verify(&client(&ca_two, 0x1001), now),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus))
    );
    let after = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(next_update.unix_timestamp() + 60).expect("positive"),
    ));
    match verify(&client(&ca_one, 0x1002), after) {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. },
        )) => {}
        other => panic!("a stale CRL must refuse: {other:?}"),
    }
}

/// The audit trail learns the serial of the certificate refused as revoked
/// (and nothing when the refusal was for another reason).
#[tokio::test]
async fn the_noting_verifier_tells_observe_which_certificate_was_revoked() {
    let ca = ca("Vendor CA", true, true);
    let pem = crl(&ca, &[0x1001], in_a_week()).pem().expect("pem");
    let set = load_files(&[("c.pem", pem.into_bytes())], &[&ca], OffsetDateTime::now_utc()).expect("load");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let inner = client_policy(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()), &set)
        .build()
        .expect("verifier");
    let noting = Arc::new(crate::tls::revocation::NotingVerifier(inner));
    let attempt = |serial: u64| {
        let noting = noting.clone();
        let cert = client(&ca, serial);
        async move { noting.verify_client_cert(&cert, &[], UnixTime::now()).is_ok() }
    };
    let (ok, seen) = crate::tls::revocation::observe(attempt(0x1001)).await;
    assert!(!ok);
    let seen = seen.expect("the revoked certificate is reported");
    assert_eq!((seen.serial.as_str(), seen.issuer.as_str()), ("1001", "CN=Vendor CA"));
    assert_eq!(crate::tls::revocation::observe(attempt(0x1002)).await, (true, None));
}
