//! `echo`'s command line turned into an [`EchoRequest`]: address, AE titles,
//! TLS trust and client identity, all checked before anything is sent.

use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::time::Duration;

use super::{client_config, EchoRequest, EchoTls, Trust};
use crate::dicom::ae::AeTitleError;
use crate::dicom::AeTitle;
use crate::exit;
use crate::pki::PkiError;

/// `echo`'s options as given on the command line, not yet checked.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`.
    pub address: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub tls: bool,
    /// CA bundle to trust for the SCP's certificate.
    pub ca: Option<PathBuf>,
    /// No check of the SCP's certificate (testing only).
    pub insecure: bool,
    /// Client certificate and key (PEM) for SCU authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify in the SCP's certificate (default: the host).
    pub server_name: Option<String>,
    /// For the whole exchange.
    pub timeout: Duration,
}

/// The command line is not usable; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{value:?} is not a valid HOST:PORT: {why}")]
    Address { value: String, why: &'static str },
    #[error("{flag} {value:?} {source}")]
    AeTitle { flag: &'static str, value: String, source: AeTitleError },
    #[error(
        "--tls needs --ca FILE (the SCP's certificate, or the CA that issued it) or --insecure (no check, for testing)"
    )]
    TlsNeedsTrust,
    #[error("--server-name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("--timeout must be more than zero")]
    ZeroTimeout,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: no usable CA certificate: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("rustls refused the TLS settings: {0}")]
    Rustls(rustls::Error),
}

impl SetupError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SetupError::Pki(_) | SetupError::CaFile { .. } | SetupError::Rustls(_) => exit::CONFIG,
            _ => exit::USAGE,
        }
    }
}

impl EchoRequest {
    /// Validates the command line (reads the `--ca`/`--cert`/`--key` files).
    pub fn from_options(args: &EchoOptions) -> Result<EchoRequest, SetupError> {
        let (host, port) = parse_address(&args.address)?;
        let ae = |flag: &'static str, value: &str| {
            AeTitle::parse(value).map_err(|source| SetupError::AeTitle { flag, value: value.to_owned(), source })
        };
        let calling_ae = ae("--calling-ae", &args.calling_ae)?;
        let called_ae = ae("--called-ae", &args.called_ae)?;
        if args.timeout.is_zero() {
            return Err(SetupError::ZeroTimeout);
        }
        let tls = if args.tls {
            let trust = match (&args.ca, args.insecure) {
                (_, true) => Trust::Insecure,
                (Some(ca), false) => Trust::CaFile(ca.clone()),
                (None, false) => return Err(SetupError::TlsNeedsTrust),
            };
            let name = args.server_name.clone().unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone()).map_err(|_| SetupError::ServerName(name))?;
            let identity = match (&args.cert, &args.key) {
                (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                _ => None,
            };
            Some(EchoTls { config: client_config(&trust, identity)?, server_name })
        } else {
            None
        };
        Ok(EchoRequest { host, port, calling_ae, called_ae, tls, timeout: args.timeout })
    }
}

/// `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_address(value: &str) -> Result<(String, u16), SetupError> {
    let bad = |why| SetupError::Address { value: value.to_owned(), why };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(|| bad("unbalanced [ ]"))?,
        None if host.contains(':') => return Err(bad("write IPv6 addresses as [ADDRESS]:PORT")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("pacs.local:104").expect("ok"), ("pacs.local".to_owned(), 104));
        assert_eq!(parse_address("[::1]:2762").expect("ok"), ("::1".to_owned(), 2762));
        for bad in ["pacs", "pacs:", "pacs:0", "pacs:65536", ":104", "::1:104", "[::1:104"] {
            assert!(parse_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
