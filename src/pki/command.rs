//! `dicomgate gen-cert`: the guide's Appendix A (key, self-signed
//! certificate, optional .pfx) in one step, with the guide's file names in
//! lower case: `DIR/scp_key.pem`, `DIR/scp_cert.pem`.
//!
//! Order matters: every input is validated and every target checked before
//! the first byte is written, so a refusal leaves the directory untouched.
//! The key is written first, so a failure half-way never leaves a
//! certificate whose key is missing.

use std::io::Write;
use std::path::PathBuf;

use super::KeyType;
use super::{
    generate_self_signed, inspect_certificate, pkcs12_bundle, read_password_file, write_file_atomic, CertSpec,
    CertificateInfo, PkiError,
};
use crate::exit;

/// File names inside `--dir`: the guide's `SCP_cert.pem` / `SCP_key.pem`.
pub const CERTIFICATE_FILE: &str = "scp_cert.pem";
pub const PRIVATE_KEY_FILE: &str = "scp_key.pem";

/// Modes: the key (and the .pfx, which contains it) for the owner only.
const KEY_MODE: u32 = 0o600;
const CERTIFICATE_MODE: u32 = 0o644;

/// `gen-cert`'s options, as the command line gave them.
#[derive(Debug, Clone)]
pub struct GenCertOptions {
    /// Directory to write the key and certificate into (created if missing).
    pub dir: PathBuf,
    pub common_name: String,
    /// `--san` values as given (validated before anything is generated).
    pub subject_alt_names: Vec<String>,
    pub days: u32,
    pub key_type: KeyType,
    pub pkcs12: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    /// Overwrite existing files.
    pub force: bool,
}

/// What `gen-cert` wrote.
#[derive(Debug)]
pub struct GenCertOutcome {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub pkcs12: Option<PathBuf>,
    pub info: CertificateInfo,
}

/// Runs `dicomgate gen-cert`; returns the process exit code.
pub fn gen_cert_command(args: &GenCertOptions) -> u8 {
    match gen_cert(args) {
        Ok(outcome) => {
            let mut out = std::io::stdout().lock();
            // A closed stdout (`| head`) must not turn success into a panic.
            let _ = print_outcome(&mut out, args, &outcome);
            exit::OK
        }
        Err(e) => {
            eprintln!("dicomgate gen-cert: {e}");
            match e {
                PkiError::InvalidSan(_) | PkiError::InvalidDays | PkiError::EmptyPassword { .. } => exit::USAGE,
                _ => exit::FAILURE,
            }
        }
    }
}

/// Generates and writes the files; prints nothing.
pub fn gen_cert(args: &GenCertOptions) -> Result<GenCertOutcome, PkiError> {
    let spec = CertSpec {
        common_name: args.common_name.clone(),
        subject_alt_names: subject_alt_names(args),
        days: args.days,
        key_type: args.key_type,
    };
    // Inputs first: a bad SAN or an empty password file must not cost an
    // RSA key generation or leave anything behind.
    if spec.days == 0 {
        return Err(PkiError::InvalidDays);
    }
    for san in &spec.subject_alt_names {
        super::generate::parse_san(san)?;
    }
    let password = match (&args.pkcs12, &args.password_file) {
        (Some(_), Some(path)) => Some(read_password_file(path)?),
        _ => None,
    };

    let certificate = args.dir.join(CERTIFICATE_FILE);
    let private_key = args.dir.join(PRIVATE_KEY_FILE);
    let mut targets = vec![private_key.clone(), certificate.clone()];
    targets.extend(args.pkcs12.clone());
    if !args.force {
        let existing: Vec<PathBuf> = targets.iter().filter(|p| p.exists()).cloned().collect();
        if !existing.is_empty() {
            return Err(PkiError::WouldOverwrite { paths: existing });
        }
    }

    let pair = generate_self_signed(&spec)?;
    let info = inspect_certificate(&pair.certificate_der)?;
    // Built before writing, so a PKCS#12 failure writes nothing.
    let pfx = match (&args.pkcs12, &password) {
        (Some(path), Some(password)) => {
            Some((path, pkcs12_bundle(&pair.private_key_der, &[&pair.certificate_der], &args.common_name, password)?))
        }
        _ => None,
    };
    write_file_atomic(&private_key, pair.private_key_pem.as_bytes(), KEY_MODE, args.force)?;
    write_file_atomic(&certificate, pair.certificate_pem.as_bytes(), CERTIFICATE_MODE, args.force)?;
    if let Some((path, bytes)) = &pfx {
        write_file_atomic(path, bytes, KEY_MODE, args.force)?;
    }
    Ok(GenCertOutcome { certificate, private_key, pkcs12: args.pkcs12.clone(), info })
}

/// `--san` as given; without any, the CN when it is a valid DNS name or IP
/// address, because TLS clients (rustls, OpenSSL's host check) ignore the CN
/// and look only at SANs.
fn subject_alt_names(args: &GenCertOptions) -> Vec<String> {
    if !args.subject_alt_names.is_empty() {
        return args.subject_alt_names.clone();
    }
    if super::generate::parse_san(&args.common_name).is_ok() {
        vec![args.common_name.clone()]
    } else {
        Vec::new()
    }
}

fn print_outcome(out: &mut impl Write, args: &GenCertOptions, outcome: &GenCertOutcome) -> std::io::Result<()> {
    let info = &outcome.info;
    let key = match args.key_type {
        KeyType::Rsa2048 => "RSA 2048",
        KeyType::EcdsaP256 => "ECDSA P-256",
    };
    writeln!(out, "Generated an {key} key and a self-signed certificate.")?;
    writeln!(
        out,
        "  private key  {}  (mode 0600; stays on this host, never upload it)",
        outcome.private_key.display()
    )?;
    writeln!(out, "  certificate  {}", outcome.certificate.display())?;
    if let Some(pfx) = &outcome.pkcs12 {
        writeln!(out, "  PKCS#12      {}  (key + certificate for Telexy QPath-E; mode 0600)", pfx.display())?;
    }
    writeln!(out)?;
    writeln!(out, "Upload to the cloud (Butterfly Cloud: DICOM > PACS/MWL > Edit > TLS Active > SCP > Upload):")?;
    writeln!(out, "  {}", outcome.certificate.display())?;
    writeln!(out)?;
    let (from, to) = info.validity_text();
    writeln!(out, "  subject   {}", info.subject)?;
    if info.subject_alt_names.is_empty() {
        writeln!(out, "  SANs      none (add --san with the host name or IP address clients connect to)")?;
    } else {
        writeln!(out, "  SANs      {}", info.subject_alt_names.join(", "))?;
    }
    writeln!(out, "  validity  {from} to {to} ({} days)", args.days)?;
    writeln!(out, "  SHA-256   {}", info.fingerprint_sha256)?;
    Ok(())
}
