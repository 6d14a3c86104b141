//! A real certificate authority run with `openssl ca` in a directory, as a
//! hospital's or a cloud vendor's CA would be: the minimal configuration
//! docs/security.md shows (index.txt, serial, crlnumber), issuing client and
//! server certificates (RSA 2048, which every DCMTK TLS profile can use),
//! revoking them, and publishing CRLs in PEM or DER, with a chosen
//! lastUpdate/nextUpdate when a test needs a stale one.
//!
//! Everything is blocking (`openssl` runs to completion): call it before a
//! gateway starts, or accept a short stall of one runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cli::openssl;

/// The CA configuration: docs/security.md's minimal one, plus what makes
/// the CA certificate itself and the test's server certificates.
const CONFIG: &str = r#"
[ ca ]
default_ca = CA_default

[ CA_default ]
dir              = .
database         = $dir/index.txt
serial           = $dir/serial
crlnumber        = $dir/crlnumber
new_certs_dir    = $dir/newcerts
certificate      = $dir/ca.pem
private_key      = $dir/ca.key
default_md       = sha256
default_days     = 365
default_crl_days = 7
policy           = policy_any
unique_subject   = no
crl_extensions   = crl_ext

[ policy_any ]
commonName       = supplied
organizationName = optional

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ client_cert ]
basicConstraints       = CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ server_cert ]
basicConstraints       = CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth, clientAuth
subjectAltName         = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid

[ req ]
distinguished_name = req_dn
prompt             = no

[ req_dn ]
CN = placeholder

[ v3_ca ]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
"#;

/// What a certificate is for (the CA configuration's extension section).
#[derive(Debug, Clone, Copy)]
pub enum Usage {
    Client,
    /// For 127.0.0.1 / localhost (an SCP behind the gateway).
    Server,
}

/// A CA in its own directory.
pub struct OpensslCa {
    pub dir: PathBuf,
}

/// A certificate the CA issued, and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// As `openssl x509 -noout -serial` prints it (upper-case hex).
    pub serial: String,
}

impl OpensslCa {
    /// Creates the CA `cn` in `parent/name`: key, self-signed certificate
    /// (`ca.pem`), empty index, serial 1000, crlnumber 01.
    pub fn create(parent: &Path, name: &str, cn: &str) -> OpensslCa {
        let dir = parent.join(name);
        std::fs::create_dir_all(dir.join("newcerts")).expect("mkdir CA");
        std::fs::write(dir.join("ca.cnf"), CONFIG).expect("write ca.cnf");
        std::fs::write(dir.join("index.txt"), "").expect("write index.txt");
        std::fs::write(dir.join("serial"), "1000\n").expect("write serial");
        std::fs::write(dir.join("crlnumber"), "01\n").expect("write crlnumber");
        let ca = OpensslCa { dir };
        let subject = format!("/CN={cn}/O=dicomgate tests");
        ca.run(&[
            "req",
            "-x509",
            "-config",
            "ca.cnf",
            "-extensions",
            "v3_ca",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            &subject,
        ]);
        ca
    }

    /// Runs `openssl ARGS` in the CA's directory (its paths are relative).
    fn run(&self, args: &[&str]) -> String {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(&self.dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}:\n{}", super::tools::output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Issues `name.pem` / `name.key` for `cn` with `openssl ca`.
    pub fn issue(&self, name: &str, cn: &str, usage: Usage) -> Issued {
        let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        let subject = format!("/CN={cn}/O=dicomgate tests");
        self.run(&[
            "req", "-new", "-config", "ca.cnf", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr,
            "-subj", &subject,
        ]);
        let section = match usage {
            Usage::Client => "client_cert",
            Usage::Server => "server_cert",
        };
        self.run(&["ca", "-batch", "-config", "ca.cnf", "-extensions", section, "-notext", "-in", &csr, "-out", &cert]);
        let serial = self.run(&["x509", "-noout", "-serial", "-in", &cert]);
        let serial = serial.trim().trim_start_matches("serial=").to_owned();
        Issued { cert: self.dir.join(cert), key: self.dir.join(key), serial }
    }

    /// `openssl ca -revoke` (reason keyCompromise): the index marks it `R`.
    pub fn revoke(&self, issued: &Issued) {
        let cert = issued.cert.display().to_string();
        self.run(&["ca", "-batch", "-config", "ca.cnf", "-revoke", &cert, "-crl_reason", "keyCompromise"]);
    }

    /// `openssl ca -gencrl` into `out` (PEM), valid for `default_crl_days`.
    pub fn gencrl(&self, out: &Path) -> PathBuf {
        self.gencrl_dated(out, None)
    }

    /// As [`Self::gencrl`], with lastUpdate and nextUpdate given
    /// (`YYYYMMDDHHMMSSZ`): a CRL already past its nextUpdate, say.
    pub fn gencrl_dated(&self, out: &Path, dates: Option<(&str, &str)>) -> PathBuf {
        let out_text = out.display().to_string();
        let mut args = vec!["ca", "-batch", "-config", "ca.cnf", "-gencrl", "-out", &out_text];
        if let Some((last, next)) = dates {
            args.extend(["-crl_lastupdate", last, "-crl_nextupdate", next]);
        }
        self.run(&args);
        out.to_owned()
    }

    /// A version 1 CRL (no extensions), as `openssl ca -gencrl` makes one
    /// when the configuration sets neither `crlnumber` nor `crl_extensions`.
    pub fn gencrl_v1(&self, out: &Path) -> PathBuf {
        let v1: String = CONFIG
            .lines()
            .filter(|l| !l.starts_with("crlnumber") && !l.starts_with("crl_extensions"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(self.dir.join("ca-v1.cnf"), v1).expect("write ca-v1.cnf");
        let out_text = out.display().to_string();
        self.run(&["ca", "-batch", "-config", "ca-v1.cnf", "-gencrl", "-out", &out_text]);
        out.to_owned()
    }

    /// The CRL at `pem` converted to DER at `der`.
    pub fn to_der(pem: &Path, der: &Path) -> PathBuf {
        openssl(&["crl", "-in", &pem.display().to_string(), "-outform", "DER", "-out", &der.display().to_string()]);
        der.to_owned()
    }
}

/// `YYYYMMDDHHMMSSZ` for now plus `seconds` (negative: in the past).
pub fn openssl_time(seconds: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// A rustls client configuration presenting `issued` and trusting `server_ca`.
pub fn client_config(issued: &Issued, server_ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    super::init();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server_ca).expect("read CA").flatten() {
        roots.add(cert).expect("add CA");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&issued.cert).expect("read certificate").flatten().collect();
    let key = PrivateKeyDer::from_pem_file(&issued.key).expect("read key");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client identity");
    Arc::new(config)
}
