//! Configuration: the YAML file (docs/configuration.md) parsed once into a
//! validated [`Config`] of domain types. Nothing downstream re-checks it.
//!
//! Loading is pure apart from reading the file itself: certificates and keys
//! are loaded (and generated when asked) by [`crate::tls`] when the runtime is
//! built, so `check` can report on them separately.
//!
//! serde_yaml is archived upstream; it is used only in `from_yaml` so it can
//! be swapped in one place.

mod atna;
mod error;
mod raw;
pub mod schema;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use atna::{AuditConfig, SyslogConfig, SyslogTransport};
pub use error::{ConfigError, Issue};
use ipnet::IpNet;
pub use validate::DEFAULT_ADMIN_ALLOW;

use crate::dicom::AeTitle;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages and reload).
    pub source: Option<PathBuf>,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// `audit:`: the IHE ATNA audit trail (syslog), if any.
    pub audit: AuditConfig,
    pub shutdown: ShutdownConfig,
    pub backends: BTreeMap<String, Arc<BackendConfig>>,
    pub listeners: BTreeMap<String, Arc<ListenerConfig>>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Who may use the endpoint (`admin.allow`); default loopback only. The
    /// status page and `/metrics` show peers, AE titles and allow lists.
    pub allow: Vec<IpNet>,
}

impl AdminConfig {
    /// Whether `ip` may use the admin endpoint (IPv4-mapped IPv6 compared as IPv4).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, already checked to parse.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long live associations may run on after SIGTERM before A-ABORT.
    pub grace_period: Duration,
}

/// An internal SCP (PACS, VNA, MWL) and the servers that provide it.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub ae_title: AeTitle,
    /// Tried in order; failover to the next.
    pub servers: Vec<ServerAddress>,
    pub rewrite_called_ae_title: bool,
    pub tls: Option<BackendTlsConfig>,
    pub health_check: HealthCheckConfig,
}

/// `HOST:PORT` of a backend server; HOST may be a name resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// DICOM-TLS from the gateway to the SCP (re-encryption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// CA bundle that the SCP's certificate must chain to.
    pub ca: PathBuf,
    /// Name checked against the SCP's certificate; default: the server's host.
    pub server_name: Option<String>,
    /// Client certificate and key, for SCPs that require SCU authentication.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// CRLs of `ca` (PEM or DER): an SCP certificate listed in one is refused.
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckMode {
    Echo,
    Tcp,
    Off,
}

impl HealthCheckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckMode::Echo => "echo",
            HealthCheckMode::Tcp => "tcp",
            HealthCheckMode::Off => "off",
        }
    }
}

/// The periodic monitor of each backend server (`backends.NAME.health_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub mode: HealthCheckMode,
    /// Start-to-start time between two probes of one server.
    pub interval: Duration,
    /// Deadline of one probe; never longer than `interval`.
    pub timeout: Duration,
    /// Consecutive failed probes before an up server is marked down.
    pub fall: u32,
    /// Consecutive successful probes before a down server is marked up again.
    pub rise: u32,
    pub calling_ae_title: AeTitle,
}

/// One internet-facing port.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub security: Security,
    /// Source networks admitted; never empty.
    pub allow: Vec<IpNet>,
    /// `None`: any calling AE title is accepted.
    pub calling_ae_titles: Option<Vec<AeTitle>>,
    pub routes: Routes,
    pub max_connections: usize,
    /// Bound on the declared length of the first PDU (the A-ASSOCIATE-RQ).
    pub max_associate_rq_length: u32,
    /// Largest P-DATA-TF the relay accepts in either direction; the Maximum
    /// Length sub-items forwarded are clamped to it (0 "unlimited" included).
    pub max_pdu_length: u32,
    pub relay_mode: RelayMode,
    /// `None`: `proxy_protocol: off`, the TCP peer is the client.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    pub timeouts: Timeouts,
    pub guessing: GuessingConfig,
}

/// How a listener relays an established association. `Dicom`: PDU framing,
/// checks and DIMSE accounting (the default and the only value a user's
/// build accepts). `Bytes`: a plain byte copy, kept as the baseline the
/// benchmarks compare against (feature `bench-baseline`); no PDU checks, no
/// DIMSE metrics, no A-ABORT on idle (just close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    Dicom,
    Bytes,
}

/// AE-title guessing protection (`listeners.NAME.guessing`): a source
/// (IPv4 address, IPv6 /64) refused `after` times in a row with no
/// forwarded association in between is refused at accept for `block`,
/// doubling with each repeat up to `max_block` (docs/admission.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuessingConfig {
    pub enabled: bool,
    /// Consecutive refusals (AE title refused, TLS handshake failed) that block.
    pub after: u32,
    /// The first block's length.
    pub block: Duration,
    /// The longest block.
    pub max_block: Duration,
}

/// Which PROXY protocol header versions a listener accepts
/// (`listeners.NAME.proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersions {
    V1,
    V2,
    Any,
}

impl ProxyVersions {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersions::V1 => "v1",
            ProxyVersions::V2 => "v2",
            ProxyVersions::Any => "any",
        }
    }
}

/// A listener behind an L4 load balancer that sends the PROXY protocol header.
#[derive(Debug, Clone)]
pub struct ProxyProtocolConfig {
    pub versions: ProxyVersions,
    /// The load balancers' addresses (`proxy_protocol_from`); never empty.
    /// Connections from elsewhere are refused: their header would be a lie
    /// anyone could tell.
    pub from: Vec<IpNet>,
    /// `proxy_protocol_allow_local`: accept LOCAL (v2) / UNKNOWN (v1)
    /// headers, which carry no client, as connections from the balancer
    /// itself. Off by default: health checks belong on /readyz.
    pub allow_local: bool,
}

impl ProxyProtocolConfig {
    /// Whether `ip` may send a PROXY header (IPv4-mapped IPv6 compared as IPv4).
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

impl ListenerConfig {
    /// Whether `ip` is in the allow list. IPv4-mapped IPv6 peers are compared
    /// as IPv4, so a dual-stack socket cannot bypass an IPv4 rule.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone)]
pub enum Security {
    Tls(ListenerTlsConfig),
    /// `insecure_plaintext: true`: test data only; logged as UNSECURED at every start.
    Plaintext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListenerTlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub generate_if_missing: bool,
    /// Sorted, deduplicated, never empty.
    pub versions: Vec<TlsVersion>,
    pub client_auth: ClientAuth,
}

/// How TLS clients are authenticated ("SCU authentication" in the guide).
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// Client certificates must chain to one of these CAs.
    pub ca: Option<PathBuf>,
    /// Client certificates accepted by exact match (pinning), self-signed allowed.
    pub pinned: Vec<PathBuf>,
    /// CRLs of `ca` (PEM or DER): a CA-validated client certificate listed in
    /// one is refused. Pinned certificates are not subject to them.
    pub crls: Vec<PathBuf>,
}

impl ClientAuth {
    /// "Authenticated" rather than "Anonymous".
    pub fn required(&self) -> bool {
        self.ca.is_some() || !self.pinned.is_empty()
    }
}

/// Called AE title → backend name.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub exact: BTreeMap<AeTitle, String>,
    /// The `"*"` route, used when no exact route matches.
    pub fallback: Option<String>,
}

impl Routes {
    pub fn lookup(&self, called: &AeTitle) -> Option<&str> {
        self.exact.get(called).or(self.fallback.as_ref()).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Accept → complete A-ASSOCIATE-RQ (TLS included); and RQ forwarded → AC/RJ.
    pub acse: Duration,
    /// Established association idle in both directions → A-ABORT.
    pub dimse: Duration,
    /// Per backend server: TCP (+TLS) connect.
    pub connect: Duration,
    /// Accept → end of the association, whatever it does: A-ABORT both
    /// sides when reached. `None` (the default): no limit; the DIMSE idle
    /// timer alone ends an association, and it restarts on every byte.
    pub association: Option<Duration>,
}

/// The permission bits of a private key file that group or others may read
/// (`check` and `run` both warn: chmod 600); `None` if the file is private,
/// missing, or not on Unix.
pub fn key_readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl Config {
    /// Reads and validates a configuration file. Relative paths inside it
    /// resolve against the file's own directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
        // Absolute, so that logs and `check` name files unambiguously.
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
        let mut config = Config::from_yaml_str(&text, &base).map_err(|e| e.in_file(path))?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Validates configuration text; relative paths resolve against `base_dir`.
    pub fn from_yaml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw = from_yaml(text)?;
        validate::validate(raw, base_dir)
    }
}

/// The one place that knows the YAML library.
fn from_yaml(text: &str) -> Result<raw::RawConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        ConfigError::Syntax {
            file: None,
            path: if path == "." { String::new() } else { path },
            message: error::clean_serde_message(&inner.to_string()),
            location,
        }
    })
}

#[cfg(test)]
mod tests;
