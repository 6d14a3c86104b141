//! `dicomgate gen-cert` (issue 4): the guide's Appendix A in one command,
//! checked with OpenSSL itself, and the pair proven usable by rustls (the
//! TLS stack of the daemon that will serve it).

use std::path::Path;
use std::sync::Arc;

use crate::support::cli::{code, dicomgate, gen_cert, mode, openssl, stderr, stdout};
use crate::support::tools::output_text;

/// Fingerprint as `openssl x509 -fingerprint -sha256` prints it.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = openssl(&["x509", "-in", &cert.display().to_string(), "-noout", "-fingerprint", "-sha256"]);
    out.trim().rsplit_once('=').map(|(_, fp)| fp.to_owned()).expect("fingerprint line")
}

#[test]
fn issue4_gen_cert_rsa_default_is_a_leaf_openssl_reads() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let out = dicomgate(&[
        "gen-cert",
        "--dir",
        &d,
        "--cn",
        "gw.hospital.example",
        "--san",
        "gw.hospital.example",
        "--san",
        "203.0.113.7",
        "--days",
        "3650",
    ]);
    assert_eq!(code(&out), 0, "{}", output_text(&out));
    let cert = dir.path().join("scp_cert.pem");
    let key = dir.path().join("scp_key.pem");

    let x509 = openssl(&["x509", "-in", &cert.display().to_string(), "-noout", "-text"]);
    for expected in [
        "Subject: CN = gw.hospital.example",
        "Issuer: CN = gw.hospital.example",
        "Public-Key: (2048 bit)",
        "rsaEncryption",
        "DNS:gw.hospital.example",
        "IP Address:203.0.113.7",
        "CA:FALSE",
        "Digital Signature, Key Encipherment",
        "TLS Web Server Authentication, TLS Web Client Authentication",
    ] {
        assert!(x509.contains(expected), "missing {expected:?} in:\n{x509}");
    }
    let rsa = openssl(&["rsa", "-in", &key.display().to_string(), "-check", "-noout"]);
    assert!(rsa.contains("RSA key ok"), "{rsa}");
    // ~3650 days: valid now and in 3649 days, not in 3651.
    openssl(&["x509", "-in", &cert.display().to_string(), "-noout", "-checkend", &(3649 * 86400).to_string()]);

    assert_eq!(mode(&key), 0o600, "private key mode");
    assert_eq!(mode(&cert), 0o644, "certificate mode");

    // What to upload, and the fingerprint admins compare with OpenSSL's.
    let printed = stdout(&out);
    assert!(printed.contains(&cert.display().to_string()), "{printed}");
    assert!(printed.contains(&openssl_fingerprint(&cert)), "{printed}");
    assert!(printed.contains("CN=gw.hospital.example"), "{printed}");
}

#[test]
fn issue4_gen_cert_ecdsa_p256_passes_openssl_ec_check() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = gen_cert(dir.path(), "pacs-gw", "ecdsa-p256", &["--san", "localhost"]);
    let ec = openssl(&["ec", "-in", &key.display().to_string(), "-check", "-noout"]);
    assert!(ec.contains("EC Key valid"), "{ec}");
    let x509 = openssl(&["x509", "-in", &cert.display().to_string(), "-noout", "-text"]);
    for expected in ["Subject: CN = pacs-gw", "prime256v1", "DNS:localhost", "CA:FALSE"] {
        assert!(x509.contains(expected), "missing {expected:?} in:\n{x509}");
    }
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn issue4_gen_cert_pkcs12_opens_with_openssl_3() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let pfx = dir.path().join("Qpath-certificate.pfx");
    let password = dir.path().join("password.txt");
    std::fs::write(&password, "correct horse\n").expect("password file");
    let (cert, _) = gen_cert(
        dir.path(),
        "qpath",
        "ecdsa-p256",
        &["--pkcs12", &pfx.display().to_string(), "--password-file", &password.display().to_string()],
    );
    assert_eq!(mode(&pfx), 0o600, "the .pfx holds the key");
    let pass = format!("file:{}", password.display());
    let info = openssl(&["pkcs12", "-info", "-in", &pfx.display().to_string(), "-passin", &pass, "-noout"]);
    assert!(info.contains("AES-256-CBC"), "{info}");
    assert!(info.contains("MAC: sha256"), "{info}");
    // The bundle holds the same certificate.
    let extracted = dir.path().join("from-pfx.pem");
    openssl(&[
        "pkcs12",
        "-in",
        &pfx.display().to_string(),
        "-passin",
        &pass,
        "-nokeys",
        "-clcerts",
        "-out",
        &extracted.display().to_string(),
    ]);
    assert_eq!(openssl_fingerprint(&extracted), openssl_fingerprint(&cert));
    // And a wrong password does not open it.
    let wrong = std::process::Command::new("openssl")
        .args(["pkcs12", "-info", "-noout", "-in"])
        .arg(&pfx)
        .args(["-passin", "pass:wrong"])
        .output()
        .expect("openssl");
    assert!(!wrong.status.success());
}

#[test]
fn issue4_gen_cert_never_overwrites_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let (cert, key) = gen_cert(dir.path(), "first", "ecdsa-p256", &[]);
    let before = (std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key"));

    let again = dicomgate(&["gen-cert", "--dir", &d, "--key-type", "ecdsa-p256"]);
    assert_eq!(code(&again), 1, "{}", output_text(&again));
    let err = stderr(&again);
    assert!(err.contains("scp_cert.pem") && err.contains("scp_key.pem"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!((std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key")), before);

    // Every target is checked before any is written: an existing .pfx alone
    // stops the run, and no key or certificate appears.
    let other = tempfile::tempdir().expect("tempdir");
    let pfx = other.path().join("bundle.pfx");
    let password = other.path().join("pw");
    std::fs::write(&pfx, b"not mine").expect("pfx");
    std::fs::write(&password, "pw\n").expect("pw");
    let o = other.path().display().to_string();
    let refused = dicomgate(&[
        "gen-cert",
        "--dir",
        &o,
        "--key-type",
        "ecdsa-p256",
        "--pkcs12",
        &pfx.display().to_string(),
        "--password-file",
        &password.display().to_string(),
    ]);
    assert_eq!(code(&refused), 1, "{}", output_text(&refused));
    assert!(!other.path().join("scp_key.pem").exists());
    assert!(!other.path().join("scp_cert.pem").exists());
    assert_eq!(std::fs::read(&pfx).expect("pfx"), b"not mine");

    // --force replaces the pair.
    let forced = dicomgate(&["gen-cert", "--dir", &d, "--key-type", "ecdsa-p256", "--force"]);
    assert_eq!(code(&forced), 0, "{}", output_text(&forced));
    assert_ne!(std::fs::read(&cert).expect("cert"), before.0);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn issue4_gen_cert_bad_input_is_a_usage_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let bad_san = dicomgate(&["gen-cert", "--dir", &d, "--san", "not a name"]);
    assert_eq!(code(&bad_san), 2, "{}", output_text(&bad_san));
    assert!(stderr(&bad_san).contains("\"not a name\""), "{}", output_text(&bad_san));
    let empty_pw = dir.path().join("empty");
    std::fs::write(&empty_pw, "").expect("pw");
    let no_pw = dicomgate(&[
        "gen-cert",
        "--dir",
        &d,
        "--pkcs12",
        &dir.path().join("x.pfx").display().to_string(),
        "--password-file",
        &empty_pw.display().to_string(),
    ]);
    assert_eq!(code(&no_pw), 2, "{}", output_text(&no_pw));
    assert!(stderr(&no_pw).contains("password file is empty"), "{}", output_text(&no_pw));
    assert!(!dir.path().join("scp_key.pem").exists());
}

/// The daemon serves TLS with rustls: a generated pair (RSA and ECDSA) must
/// load there, pass `inspect_pair`, and complete a handshake with a client
/// that trusts the certificate and checks the SAN.
#[tokio::test]
async fn issue4_generated_pair_completes_a_rustls_handshake() {
    for key_type in ["rsa2048", "ecdsa-p256"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = gen_cert(dir.path(), "gw", key_type, &["--san", "gw.test"]);
        let info = dicomgate::pki::inspect_pair(&cert, &key).expect("inspect_pair");
        assert_eq!(info.subject, "CN=gw");
        assert!(!info.is_ca);
        handshake(&cert, &key, "gw.test").await;
    }
}

async fn handshake(cert: &Path, key: &Path, name: &str) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = dicomgate::pki::load_certificate_chain(cert).expect("chain");
    let private_key = dicomgate::pki::load_private_key(key).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain.clone(), private_key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let (s, c) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(acceptor.accept(a), connector.connect(server_name, b))
    })
    .await
    .expect("handshake in time");
    s.expect("server side of the handshake");
    c.expect("client side of the handshake");
}
