//! The command line: `run`, `check`, `echo`, `gen-cert`, `schema` (docs/operations.md, "Command line and exit codes"),
//! and the hidden `generate-assets` the packaging script runs.
//!
//! Raw clap arguments live here and nowhere else: each is converted into the
//! plain options struct of the module that runs the command ([`crate::echo`],
//! [`crate::check`], [`crate::pki`]), which never sees clap. Dependencies point
//! from here inward. Exit codes are documented in docs/operations.md ("Command line and exit codes") and
//! defined once in [`crate::exit`].

pub mod assets;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::echo::EchoOptions;
use crate::pki::{GenCertOptions, KeyType};

#[derive(Debug, Parser)]
#[command(name = "dicomgate", version, about = "DICOM-TLS termination gateway for a hospital DMZ")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run(RunArgs),
    /// Validate the configuration and every certificate/key it names; print one line per listener.
    Check(CheckArgs),
    /// C-ECHO a DICOM SCP (the cloud's "Echo" button); prints Accepted or the exact cause.
    Echo(EchoArgs),
    /// Generate a private key and self-signed certificate (the guide's Appendix A in one step).
    GenCert(GenCertArgs),
    /// Print the JSON Schema of the configuration file (for editors: completion and validation).
    Schema,
    /// Write man pages and shell completions into a directory (used by scripts/build-package.sh).
    #[command(hide = true)]
    GenerateAssets(GenerateAssetsArgs),
}

#[derive(Debug, Args)]
pub struct GenerateAssetsArgs {
    /// Output directory; man/ and completions/ are created inside.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (YAML).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (YAML).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Also C-ECHO every backend server.
    #[arg(long)]
    pub echo: bool,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// The SCP's address, HOST:PORT.
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// Our (calling) AE title.
    #[arg(long = "calling-ae", value_name = "AE", default_value = "DICOMGATE")]
    pub calling_ae: String,
    /// The SCP's (called) AE title.
    #[arg(long = "called-ae", value_name = "AE", default_value = "ANY-SCP")]
    pub called_ae: String,
    /// Use DICOM-TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM bundle of CA certificates to trust for the SCP's certificate.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Do not verify the SCP's certificate (testing only).
    #[arg(long, requires = "tls")]
    pub insecure: bool,
    /// Client certificate (PEM) for SCU authentication.
    #[arg(long, value_name = "FILE", requires_all = ["key", "tls"])]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to verify in the SCP's certificate (default: HOST).
    #[arg(long = "server-name", value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// Deadline for the whole exchange (connect, TLS, association, echo, release).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct GenCertArgs {
    /// Directory to write the key and certificate into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Certificate subject common name.
    #[arg(long, value_name = "NAME", default_value = "dicomgate")]
    pub cn: String,
    /// Subject alternative name (DNS name or IP address); repeatable.
    #[arg(long = "san", value_name = "DNS-or-IP")]
    pub san: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Key algorithm.
    #[arg(long = "key-type", value_enum, default_value_t = KeyTypeArg::Rsa2048)]
    pub key_type: KeyTypeArg,
    /// Also write a PKCS#12 (.pfx) bundle, e.g. for Telexy QPath-E.
    #[arg(long, value_name = "FILE", requires = "password_file")]
    pub pkcs12: Option<PathBuf>,
    /// File holding the PKCS#12 password (first line).
    #[arg(long = "password-file", value_name = "FILE", requires = "pkcs12")]
    pub password_file: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `--key-type`: the command-line spelling of [`KeyType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyTypeArg {
    /// RSA 2048-bit (what the guide's Appendix A makes).
    #[value(name = "rsa2048")]
    Rsa2048,
    /// ECDSA on NIST P-256.
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
}

impl From<KeyTypeArg> for KeyType {
    fn from(arg: KeyTypeArg) -> KeyType {
        match arg {
            KeyTypeArg::Rsa2048 => KeyType::Rsa2048,
            KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
        }
    }
}

impl From<EchoArgs> for EchoOptions {
    fn from(a: EchoArgs) -> EchoOptions {
        EchoOptions {
            address: a.address,
            calling_ae: a.calling_ae,
            called_ae: a.called_ae,
            tls: a.tls,
            ca: a.ca,
            insecure: a.insecure,
            cert: a.cert,
            key: a.key,
            server_name: a.server_name,
            timeout: a.timeout,
        }
    }
}

impl From<GenCertArgs> for GenCertOptions {
    fn from(a: GenCertArgs) -> GenCertOptions {
        GenCertOptions {
            dir: a.dir,
            common_name: a.cn,
            subject_alt_names: a.san,
            days: a.days,
            key_type: a.key_type.into(),
            pkcs12: a.pkcs12,
            password_file: a.password_file,
            force: a.force,
        }
    }
}
