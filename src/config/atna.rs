//! `audit:`: where the IHE ATNA audit trail goes (docs/configuration.md).
//! The raw serde structs and their validation live together here, so the
//! section can grow without touching the rest of the loader.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::schema as s;
use super::validate::{parse_server_address, Validator};
use super::{BackendTlsConfig, ServerAddress};

/// The audit trail: IHE ATNA "Record Audit Event" messages (DICOM PS3.15 A.5) to a syslog receiver.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The Audit Record Repository or SIEM that receives the messages. Absent: no audit messages.
    pub syslog: Option<RawSyslog>,
    /// AuditSourceID: names this gateway instance in every message. Absent: the host name.
    pub source_id: Option<String>,
    /// AuditEnterpriseSiteID: the hospital or site, for repositories that collect from several.
    pub enterprise_site_id: Option<String>,
}

/// Where and how audit messages are sent (RFC 5424 syslog).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    /// The receiver, HOST:PORT (6514 is the RFC 5425 TLS port, 514 plain syslog).
    #[schemars(schema_with = "s::server_address")]
    pub address: String,
    /// tls (RFC 5425), tcp (RFC 6587 octet counting) or udp (RFC 5426).
    #[serde(default)]
    #[schemars(schema_with = "s::syslog_transport", extend("default" = "tls"))]
    pub transport: Option<String>,
    /// tls: PEM bundle of the CA(s) that signed the receiver's certificate.
    pub ca: Option<String>,
    /// tls: the name checked in the receiver's certificate. Absent: the host of address.
    pub server_name: Option<String>,
    /// tls: optional client certificate (PEM) for ATNA node authentication.
    pub certificate: Option<String>,
    /// tls: the client certificate's private key (PEM).
    pub private_key: Option<String>,
}

/// The validated `audit:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// `AuditSourceID` of every message; `None`: the host name.
    pub source_id: Option<String>,
    /// `AuditEnterpriseSiteID` (the hospital or site), when given.
    pub enterprise_site_id: Option<String>,
    /// `None`: no audit messages leave the process (the per-connection log
    /// line stays).
    pub syslog: Option<SyslogConfig>,
}

/// An Audit Record Repository (or SIEM) reached over syslog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    pub address: ServerAddress,
    pub transport: SyslogTransport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTransport {
    /// RFC 5426: one message per datagram, no delivery guarantee.
    Udp,
    /// RFC 6587 octet counting over plain TCP.
    Tcp,
    /// RFC 5425: octet counting over TLS; the CA and optional client identity
    /// use the backend TLS type (same keys, same loader).
    Tls(BackendTlsConfig),
}

impl SyslogTransport {
    pub fn as_str(&self) -> &'static str {
        match self {
            SyslogTransport::Udp => "udp",
            SyslogTransport::Tcp => "tcp",
            SyslogTransport::Tls(_) => "tls",
        }
    }
}

/// Longest `source_id` / `enterprise_site_id`: they are XML tokens a
/// repository indexes, not free text.
const MAX_ID: usize = 255;

pub(super) fn validate_audit(v: &mut Validator<'_>, raw: Option<RawAudit>) -> AuditConfig {
    let raw = raw.unwrap_or_default();
    let source_id = raw.source_id.and_then(|s| identifier(v, "audit.source_id", s));
    let enterprise_site_id = raw.enterprise_site_id.and_then(|s| identifier(v, "audit.enterprise_site_id", s));
    let syslog = raw.syslog.and_then(|s| validate_syslog(v, s));
    AuditConfig { source_id, enterprise_site_id, syslog }
}

fn identifier(v: &mut Validator<'_>, key: &str, value: String) -> Option<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_ID || trimmed.chars().any(char::is_control) {
        v.issue(key, format!("{value:?} is not an identifier: expected 1 to {MAX_ID} printable characters"));
        return None;
    }
    Some(trimmed.to_owned())
}

fn validate_syslog(v: &mut Validator<'_>, raw: RawSyslog) -> Option<SyslogConfig> {
    const KEY: &str = "audit.syslog";
    let before = v.issues.len();
    let address = parse_server_address(&raw.address);
    if address.is_none() {
        v.issue(
            format!("{KEY}.address"),
            format!("{:?} is not a receiver address: expected HOST:PORT, e.g. arr.hospital.local:6514", raw.address),
        );
    }
    let transport = match raw.transport.as_deref().unwrap_or("tls") {
        "udp" => Some(SyslogTransport::Udp),
        "tcp" => Some(SyslogTransport::Tcp),
        "tls" => tls(v, &raw),
        other => {
            v.issue(
                format!("{KEY}.transport"),
                format!("{other:?} is not a syslog transport: expected tls, tcp or udp"),
            );
            None
        }
    };
    if let Some(plain @ ("udp" | "tcp")) = raw.transport.as_deref() {
        // A CA or key given for a plain transport is a sign the admin thinks
        // the trail is encrypted when it is not: refuse rather than ignore.
        for (name, value) in [
            ("ca", &raw.ca),
            ("server_name", &raw.server_name),
            ("certificate", &raw.certificate),
            ("private_key", &raw.private_key),
        ] {
            if value.is_some() {
                v.issue(
                    format!("{KEY}.{name}"),
                    format!("applies only to transport: tls, not {plain}; remove it or set transport: tls"),
                );
            }
        }
    }
    if v.issues.len() != before {
        return None;
    }
    Some(SyslogConfig { address: address?, transport: transport? })
}

fn tls(v: &mut Validator<'_>, raw: &RawSyslog) -> Option<SyslogTransport> {
    const KEY: &str = "audit.syslog";
    let ca: Option<PathBuf> = match raw.ca.as_deref() {
        Some(ca) => v.file_path(&format!("{KEY}.ca"), ca),
        None => {
            v.issue(
                format!("{KEY}.ca"),
                "is missing: name the PEM bundle of the CA that signed the receiver's certificate \
                 (or set transport: tcp or udp for an unencrypted trail)",
            );
            None
        }
    };
    let client_identity = match (raw.certificate.as_deref(), raw.private_key.as_deref()) {
        (Some(c), Some(k)) => {
            let c = v.file_path(&format!("{KEY}.certificate"), c);
            let k = v.file_path(&format!("{KEY}.private_key"), k);
            c.zip(k)
        }
        (Some(_), None) => {
            v.issue(format!("{KEY}.private_key"), "is missing: a client certificate needs its private key");
            None
        }
        (None, Some(_)) => {
            v.issue(format!("{KEY}.certificate"), "is missing: a private key needs its client certificate");
            None
        }
        (None, None) => None,
    };
    let server_name = match raw.server_name.as_deref() {
        Some(name) if rustls_pki_types::ServerName::try_from(name).is_err() => {
            v.issue(format!("{KEY}.server_name"), format!("{name:?} is not a DNS name or IP address"));
            None
        }
        other => other.map(str::to_owned),
    };
    ca.map(|ca| SyslogTransport::Tls(BackendTlsConfig { ca, server_name, client_identity, crls: Vec::new() }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, SyslogTransport};

    const LISTENER: &str = "backends: {pacs: {ae_title: PACS, servers: [\"127.0.0.1:104\"]}}\n\
        listeners: {store: {listen: \"127.0.0.1:0\", insecure_plaintext: true, allow: [127.0.0.1/32], routes: {PACS: pacs}}}\n";

    fn load(audit: &str) -> Result<Config, Vec<String>> {
        Config::from_yaml_str(&format!("{LISTENER}{audit}"), Path::new("/etc/dicomgate"))
            .map_err(|e| e.issues().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn absent_means_no_trail_and_tls_is_the_default_transport() {
        assert_eq!(load("").expect("valid").audit.syslog, None);
        let c = load("audit: {syslog: {address: \"arr.local:6514\", ca: arr-ca.pem}}").expect("valid");
        let syslog = c.audit.syslog.expect("syslog");
        assert_eq!(syslog.address.to_string(), "arr.local:6514");
        match syslog.transport {
            SyslogTransport::Tls(t) => {
                assert_eq!(t.ca, Path::new("/etc/dicomgate/arr-ca.pem"), "relative to the file's directory");
                assert_eq!(t.client_identity, None);
            }
            other => panic!("expected tls, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key_path() {
        let cases = [
            ("audit: {syslog: {address: \"arr.local\", transport: udp}}", "audit.syslog.address: "),
            ("audit: {syslog: {address: \"arr.local:514\", transport: relp}}", "audit.syslog.transport: "),
            ("audit: {syslog: {address: \"arr.local:6514\"}}", "audit.syslog.ca: is missing"),
            (
                "audit: {syslog: {address: \"arr.local:514\", transport: tcp, ca: x.pem}}",
                "audit.syslog.ca: applies only",
            ),
            (
                "audit: {syslog: {address: \"arr.local:6514\", ca: c.pem, certificate: n.pem}}",
                "audit.syslog.private_key: is missing",
            ),
            ("audit: {source_id: \"\"}", "audit.source_id: "),
            ("audit: {syslog: {address: \"a:1\", transport: udp, port: 1}}", "audit.syslog.port: "),
        ];
        for (yaml, expected) in cases {
            let issues = load(yaml).expect_err(yaml);
            assert!(issues.iter().any(|i| i.starts_with(expected)), "{yaml}: expected {expected:?} in {issues:?}");
        }
    }
}
