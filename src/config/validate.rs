//! Raw YAML structs → validated [`Config`]. Every problem is collected with its
//! key path, so an admin fixes the whole file in one pass.

mod admin;
pub use admin::DEFAULT_ADMIN_ALLOW;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::*;
use super::*;

const DEFAULT_ACSE: Duration = Duration::from_secs(30);
const DEFAULT_DIMSE: Duration = Duration::from_secs(300);
const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
const DEFAULT_GRACE: Duration = Duration::from_secs(60);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default probe deadline (capped at the interval): the listeners' default
/// backend connect timeout, for a probe is a connect and a little more.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive failures before "down" and successes before "up" again: the
/// common load-balancer defaults (HAProxy's fall 3 / rise 2).
const DEFAULT_HEALTH_FALL: u32 = 3;
const DEFAULT_HEALTH_RISE: u32 = 2;
/// Upper bound for `fall` and `rise`: beyond it a server could stay in a
/// wrong state for hours at common intervals, which is a typo, not a policy.
const MAX_HEALTH_THRESHOLD: u32 = 100;
const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// 64 KiB: a storescu request proposing ~100 SOP classes is under 10 KiB.
const DEFAULT_MAX_RQ_LENGTH: u32 = 64 * 1024;
/// Lower bound for `max_associate_rq_length`: the fixed part of an RQ is 68 bytes
/// and a realistic one with a few presentation contexts needs a few hundred.
const MIN_MAX_RQ_LENGTH: u32 = 1024;
const MAX_MAX_RQ_LENGTH: u32 = 1024 * 1024;
/// 4 MiB: above every common SCU/SCP setting (DCMTK 16 KiB–128 KiB,
/// dcm4che 16 KiB–1 MiB), and the relay streams, so it costs no memory.
const DEFAULT_MAX_PDU_LENGTH: u32 = 4 * 1024 * 1024;
/// PS3.8 D.1: a receiver must accept at least this much... in practice SCUs
/// refuse less than the fixed 4 KiB DCMTK minimum.
const MIN_MAX_PDU_LENGTH: u32 = 4096;

pub(super) struct Validator<'a> {
    base: &'a Path,
    pub(super) issues: Vec<Issue>,
}

impl Validator<'_> {
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue { path: path.into(), message: message.into() });
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn file_path(&mut self, key: &str, value: &str) -> Option<PathBuf> {
        if value.trim().is_empty() {
            self.issue(key, "is empty: expected a file path");
            return None;
        }
        Some(self.path(value))
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(
                    key,
                    format!(
                        "{value:?} is not an address to listen on: expected IP:PORT, e.g. 0.0.0.0:2762 or [::]:2762"
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&Scalar>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(Scalar::Number(n)) => {
                self.issue(key, format!("{n} has no unit: write a duration such as {n}s or 5m"));
                default
            }
            Some(Scalar::Text(text)) => match humantime::parse_duration(text.trim()) {
                Ok(d) if d.is_zero() => {
                    self.issue(key, format!("{text:?} is zero: expected a positive duration such as 30s"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.issue(key, format!("{text:?} is not a duration ({e}): write e.g. 30s, 5m or 1h"));
                    default
                }
            },
        }
    }

    /// A probe count (`fall`, `rise`): 1 to [`MAX_HEALTH_THRESHOLD`].
    fn count(&mut self, key: &str, value: Option<u32>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if (1..=MAX_HEALTH_THRESHOLD).contains(&n) => n,
            Some(n) => {
                self.issue(
                    key,
                    format!("{n} is out of range: expected 1 to {MAX_HEALTH_THRESHOLD} consecutive probes (default {default})"),
                );
                default
            }
        }
    }

    fn ae_title(&mut self, key: &str, value: &str) -> Option<AeTitle> {
        match AeTitle::parse(value) {
            Ok(ae) => Some(ae),
            Err(e) => {
                self.issue(key, format!("{value:?} {e}"));
                None
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let mut v = Validator { base, issues: Vec::new() };

    let admin = raw.admin.and_then(|a| admin::validate_admin(&mut v, a));
    let log = validate_log(&mut v, raw.log);
    let audit = super::audit::validate_audit(&mut v, raw.audit);
    let grace_period =
        v.duration("shutdown.grace_period", raw.shutdown.as_ref().and_then(|s| s.grace_period.as_ref()), DEFAULT_GRACE);

    let mut backends = BTreeMap::new();
    for (name, b) in raw.backends {
        if let Some(backend) = validate_backend(&mut v, &name, b) {
            backends.insert(name, Arc::new(backend));
        }
    }
    // Names of backends that exist, even if invalid, so a route to a broken
    // backend reports the backend's error and not "no such backend" too.
    let mut listeners = BTreeMap::new();
    if raw.listeners.is_empty() {
        v.issue("listeners", "no listener is configured: add at least one, e.g. listeners.store.listen: 0.0.0.0:2762");
    }
    let mut bound: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (name, l) in raw.listeners {
        if let Some(listener) = validate_listener(&mut v, &name, l, &backends) {
            if listener.listen.port() != 0 {
                if let Some(other) = bound.insert(listener.listen, name.clone()) {
                    v.issue(
                        format!("listeners.{name}.listen"),
                        format!(
                            "{} is also the address of listener {other:?}: each listener needs its own port",
                            listener.listen
                        ),
                    );
                }
            }
            listeners.insert(name, Arc::new(listener));
        }
    }
    if let Some(admin) = &admin {
        if let Some(other) = bound.get(&admin.listen) {
            v.issue("admin.listen", format!("{} is also the address of listener {other:?}", admin.listen));
        }
    }

    if !v.issues.is_empty() {
        return Err(ConfigError::Invalid { file: None, issues: v.issues });
    }
    Ok(Config { source: None, admin, log, audit, shutdown: ShutdownConfig { grace_period }, backends, listeners })
}

fn validate_log(v: &mut Validator<'_>, raw: Option<RawLog>) -> LogConfig {
    let raw = raw.unwrap_or(RawLog { format: None, level: None });
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            v.issue("log.format", format!("{other:?} is not a log format: expected text or json"));
            LogFormat::Text
        }
    };
    let level = raw.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        v.issue("log.level", format!("{level:?} is not a log level ({e}): expected error, warn, info, debug or trace"));
    }
    LogConfig { format, level }
}

fn validate_backend(v: &mut Validator<'_>, name: &str, raw: RawBackend) -> Option<BackendConfig> {
    let key = format!("backends.{name}");
    let before = v.issues.len();
    let ae_title = v.ae_title(&format!("{key}.ae_title"), &raw.ae_title);
    if raw.servers.is_empty() {
        v.issue(format!("{key}.servers"), "is empty: list at least one HOST:PORT, e.g. [10.20.0.15:104]");
    }
    let mut servers = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        match parse_server_address(s) {
            // One health state and one monitor per server: a repeat would be
            // probed twice and tried twice per association.
            Some(addr) if servers.contains(&addr) => {
                v.issue(format!("{key}.servers[{i}]"), format!("{s:?} is listed twice: list each server once"))
            }
            Some(addr) => servers.push(addr),
            None => v.issue(
                format!("{key}.servers[{i}]"),
                format!("{s:?} is not a server address: expected HOST:PORT, e.g. 10.20.0.15:104 or pacs.local:104"),
            ),
        }
    }
    let tls = raw.tls.and_then(|t| {
        let tkey = format!("{key}.tls");
        let ca = match t.ca.as_deref() {
            Some(ca) => v.file_path(&format!("{tkey}.ca"), ca),
            None => {
                v.issue(
                    format!("{tkey}.ca"),
                    "is missing: name the PEM bundle of the CA that signed the SCP's certificate",
                );
                None
            }
        };
        let client_identity = match (t.certificate.as_deref(), t.private_key.as_deref()) {
            (Some(c), Some(k)) => {
                let c = v.file_path(&format!("{tkey}.certificate"), c);
                let k = v.file_path(&format!("{tkey}.private_key"), k);
                c.zip(k)
            }
            (Some(_), None) => {
                v.issue(format!("{tkey}.private_key"), "is missing: a client certificate needs its private key");
                None
            }
            (None, Some(_)) => {
                v.issue(format!("{tkey}.certificate"), "is missing: a private key needs its client certificate");
                None
            }
            (None, None) => None,
        };
        if let Some(sn) = &t.server_name {
            if rustls_pki_types::ServerName::try_from(sn.as_str()).is_err() {
                v.issue(format!("{tkey}.server_name"), format!("{sn:?} is not a DNS name or IP address"));
            }
        }
        ca.map(|ca| BackendTlsConfig { ca, server_name: t.server_name, client_identity })
    });
    let health_check = {
        let hkey = format!("{key}.health_check");
        let raw = raw.health_check;
        let mode = match raw.as_ref().and_then(|h| h.mode.as_deref()) {
            None | Some("echo") => HealthCheckMode::Echo,
            Some("tcp") => HealthCheckMode::Tcp,
            Some("off") => HealthCheckMode::Off,
            Some(other) => {
                v.issue(
                    format!("{hkey}.mode"),
                    format!("{other:?} is not a health check mode: expected echo, tcp or off"),
                );
                HealthCheckMode::Off
            }
        };
        let interval = v.duration(
            &format!("{hkey}.interval"),
            raw.as_ref().and_then(|h| h.interval.as_ref()),
            DEFAULT_HEALTH_INTERVAL,
        );
        // A probe must end before the next is due, so that `fall` probes
        // take `fall` intervals and the detection window is predictable.
        let timeout = match raw.as_ref().and_then(|h| h.timeout.as_ref()) {
            None => interval.min(DEFAULT_HEALTH_TIMEOUT),
            Some(t) => {
                let tkey = format!("{hkey}.timeout");
                let timeout = v.duration(&tkey, Some(t), DEFAULT_HEALTH_TIMEOUT);
                if timeout > interval {
                    v.issue(
                        tkey,
                        format!(
                            "{} is longer than health_check.interval ({}): a probe must end before the next one \
                             is due; lower the timeout or raise the interval",
                            humantime::format_duration(timeout),
                            humantime::format_duration(interval)
                        ),
                    );
                }
                timeout
            }
        };
        let fall = v.count(&format!("{hkey}.fall"), raw.as_ref().and_then(|h| h.fall), DEFAULT_HEALTH_FALL);
        let rise = v.count(&format!("{hkey}.rise"), raw.as_ref().and_then(|h| h.rise), DEFAULT_HEALTH_RISE);
        let calling = raw.as_ref().and_then(|h| h.calling_ae_title.as_deref()).unwrap_or("DICOMGATE");
        let calling_ae_title = v.ae_title(&format!("{hkey}.calling_ae_title"), calling);
        calling_ae_title.map(|calling_ae_title| HealthCheckConfig {
            mode,
            interval,
            timeout,
            fall,
            rise,
            calling_ae_title,
        })
    };
    if v.issues.len() != before {
        return None;
    }
    Some(BackendConfig {
        name: name.to_owned(),
        ae_title: ae_title?,
        servers,
        rewrite_called_ae_title: raw.rewrite_called_ae_title.unwrap_or(false),
        tls,
        health_check: health_check?,
    })
}

/// `HOST:PORT`, `[v6]:PORT`; the port is required (there is no default DICOM
/// port that every SCP uses: 104, 11112 and site-specific ports all occur).
pub(super) fn parse_server_address(s: &str) -> Option<ServerAddress> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(ServerAddress { host: sa.ip().to_string(), port: sa.port() });
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    (host_ok && port != 0).then(|| ServerAddress { host: host.to_owned(), port })
}

fn validate_listener(
    v: &mut Validator<'_>,
    name: &str,
    raw: RawListener,
    backends: &BTreeMap<String, Arc<BackendConfig>>,
) -> Option<ListenerConfig> {
    let key = format!("listeners.{name}");
    let before = v.issues.len();
    let listen = v.socket_addr(&format!("{key}.listen"), &raw.listen);

    let security = match (raw.tls, raw.insecure_plaintext) {
        (Some(_), Some(true)) => {
            v.issue(
                format!("{key}.insecure_plaintext"),
                "is set together with tls: choose one (tls for production, insecure_plaintext only with test data)",
            );
            None
        }
        (Some(t), _) => validate_listener_tls(v, &format!("{key}.tls"), t).map(Security::Tls),
        (None, Some(true)) => Some(Security::Plaintext),
        (None, _) => {
            v.issue(
                format!("{key}.tls"),
                "is missing: give tls.certificate and tls.private_key (or insecure_plaintext: true for test data only)",
            );
            None
        }
    };

    let mut allow = Vec::new();
    match raw.allow {
        None => v.issue(
            format!("{key}.allow"),
            "is missing: list the source networks to admit, e.g. [34.203.166.92/32] (there is no default)",
        ),
        Some(list) if list.is_empty() => {
            v.issue(format!("{key}.allow"), "is empty: list the source networks to admit, e.g. [34.203.166.92/32]")
        }
        Some(list) => {
            for (i, entry) in list.iter().enumerate() {
                match parse_cidr(entry) {
                    Ok(net) => allow.push(net),
                    Err(why) => v.issue(format!("{key}.allow[{i}]"), format!("{entry:?} {why}")),
                }
            }
        }
    }

    let calling_ae_titles = match raw.calling_ae_titles {
        None => None,
        Some(list) if list.is_empty() => {
            v.issue(
                format!("{key}.calling_ae_titles"),
                "is empty, which would refuse everyone: list the cloud's calling AE titles, e.g. [BUTTERFLY], or remove the key to accept any",
            );
            None
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| v.ae_title(&format!("{key}.calling_ae_titles[{i}]"), s))
                .collect(),
        ),
    };

    let mut routes = Routes::default();
    match raw.routes {
        None => v.issue(format!("{key}.routes"), "is missing: map called AE titles to backends, e.g. {PACS: pacs}"),
        Some(map) if map.is_empty() => {
            v.issue(format!("{key}.routes"), "is empty: map called AE titles to backends, e.g. {PACS: pacs}")
        }
        Some(map) => {
            for (called, backend) in map {
                let rkey = format!("{key}.routes.{called}");
                if !backends.contains_key(&backend) {
                    let known: Vec<&str> = backends.keys().map(String::as_str).collect();
                    v.issue(
                        rkey.clone(),
                        format!(
                            "names backend {backend:?}, which is not defined (or invalid); defined backends: {known:?}"
                        ),
                    );
                }
                if called.trim() == "*" {
                    routes.fallback = Some(backend);
                } else if let Some(ae) = v.ae_title(&rkey, &called) {
                    if routes.exact.insert(ae, backend).is_some() {
                        v.issue(rkey, "duplicates another route once leading/trailing spaces are removed");
                    }
                }
            }
        }
    }

    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        v.issue(
            format!("{key}.max_connections"),
            "is 0, which would refuse everyone: expected at least 1 (default 256)",
        );
    }
    let max_rq = raw.max_associate_rq_length.unwrap_or(DEFAULT_MAX_RQ_LENGTH);
    if !(MIN_MAX_RQ_LENGTH..=MAX_MAX_RQ_LENGTH).contains(&max_rq) {
        v.issue(
            format!("{key}.max_associate_rq_length"),
            format!(
                "{max_rq} is out of range: expected {MIN_MAX_RQ_LENGTH} to {MAX_MAX_RQ_LENGTH} bytes (default 65536)"
            ),
        );
    }

    let max_pdu = raw.max_pdu_length.unwrap_or(DEFAULT_MAX_PDU_LENGTH);
    if max_pdu < MIN_MAX_PDU_LENGTH {
        v.issue(
            format!("{key}.max_pdu_length"),
            format!("{max_pdu} is too small: expected at least {MIN_MAX_PDU_LENGTH} bytes (default 4194304)"),
        );
    }
    let relay_mode = match raw.relay_mode.as_deref() {
        None | Some("dicom") => crate::relay::RelayMode::Dicom,
        Some("bytes") => crate::relay::RelayMode::Bytes,
        Some(other) => {
            v.issue(
                format!("{key}.relay_mode"),
                format!("{other:?} is not a relay mode: expected dicom (default) or bytes (benchmark baseline only)"),
            );
            crate::relay::RelayMode::Dicom
        }
    };

    let proxy_protocol = validate_proxy_protocol(v, &key, raw.proxy_protocol.as_deref(), raw.proxy_protocol_from);

    let t = raw.timeouts;
    let timeouts = Timeouts {
        acse: v.duration(&format!("{key}.timeouts.acse"), t.as_ref().and_then(|t| t.acse.as_ref()), DEFAULT_ACSE),
        dimse: v.duration(&format!("{key}.timeouts.dimse"), t.as_ref().and_then(|t| t.dimse.as_ref()), DEFAULT_DIMSE),
        connect: v.duration(
            &format!("{key}.timeouts.connect"),
            t.as_ref().and_then(|t| t.connect.as_ref()),
            DEFAULT_CONNECT,
        ),
    };

    if v.issues.len() != before {
        return None;
    }
    Some(ListenerConfig {
        name: name.to_owned(),
        listen: listen?,
        security: security?,
        allow,
        calling_ae_titles,
        routes,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_associate_rq_length: max_rq,
        max_pdu_length: max_pdu,
        relay_mode,
        proxy_protocol,
        timeouts,
    })
}

/// `proxy_protocol` and `proxy_protocol_from` together: the list is required
/// when the header is expected, and refused when it is not (a list that does
/// nothing would look like protection).
fn validate_proxy_protocol(
    v: &mut Validator<'_>,
    key: &str,
    mode: Option<&str>,
    from: Option<Vec<String>>,
) -> Option<ProxyProtocolConfig> {
    let versions = match mode {
        None | Some("off") => None,
        Some("v1") => Some(ProxyVersions::V1),
        Some("v2") => Some(ProxyVersions::V2),
        Some("any") => Some(ProxyVersions::Any),
        Some(other) => {
            v.issue(
                format!("{key}.proxy_protocol"),
                format!("{other:?} is not a PROXY protocol setting: expected off (default), v1, v2 or any"),
            );
            return None;
        }
    };
    let fkey = format!("{key}.proxy_protocol_from");
    let Some(versions) = versions else {
        if from.is_some() {
            v.issue(
                fkey,
                "is set but proxy_protocol is off: set proxy_protocol (v1, v2 or any) or remove proxy_protocol_from",
            );
        }
        return None;
    };
    let list = match from {
        None => {
            v.issue(
                fkey,
                "is missing: list the load balancers' addresses allowed to send the PROXY header, e.g. [10.0.0.5/32]",
            );
            return None;
        }
        Some(list) if list.is_empty() => {
            v.issue(fkey, "is empty: list the load balancers' addresses allowed to send the PROXY header");
            return None;
        }
        Some(list) => list,
    };
    let mut nets = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        match parse_cidr(entry) {
            Ok(net) => nets.push(net),
            Err(why) => v.issue(format!("{fkey}[{i}]"), format!("{entry:?} {why}")),
        }
    }
    Some(ProxyProtocolConfig { versions, from: nets })
}

fn parse_cidr(entry: &str) -> Result<IpNet, &'static str> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        if net.trunc() != net {
            return Err("has host bits set below its prefix length: write the network address (e.g. 10.0.0.0/8), or /32 for one host");
        }
        return Ok(net);
    }
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err("is not an IP network: expected CIDR notation, e.g. 34.203.166.92/32 or 2001:db8::/32")
}

fn validate_listener_tls(v: &mut Validator<'_>, key: &str, raw: RawListenerTls) -> Option<ListenerTlsConfig> {
    let before = v.issues.len();
    let certificate = v.file_path(&format!("{key}.certificate"), &raw.certificate);
    let private_key = v.file_path(&format!("{key}.private_key"), &raw.private_key);
    let mut versions = Vec::new();
    match raw.versions {
        None => versions = vec![TlsVersion::Tls12, TlsVersion::Tls13],
        Some(list) if list.is_empty() => {
            v.issue(format!("{key}.versions"), "is empty: expected [\"1.2\", \"1.3\"], [\"1.2\"] or [\"1.3\"]")
        }
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                let s = match s {
                    Scalar::Text(t) => t.trim().to_owned(),
                    Scalar::Number(n) => format!("{n}"),
                };
                match s.as_str() {
                    "1.2" => versions.push(TlsVersion::Tls12),
                    "1.3" => versions.push(TlsVersion::Tls13),
                    "1.0" | "1.1" | "1" => v.issue(
                        format!("{key}.versions[{i}]"),
                        format!("TLS {s} is not allowed (RFC 8996 and DICOM PS3.15 B.12 require 1.2 or later): use \"1.2\" and/or \"1.3\""),
                    ),
                    other => v.issue(
                        format!("{key}.versions[{i}]"),
                        format!("{other:?} is not a TLS version: expected \"1.2\" or \"1.3\" (quote them in YAML)"),
                    ),
                }
            }
        }
    }
    versions.sort();
    versions.dedup();
    let ca = raw.client_ca.as_deref().and_then(|p| v.file_path(&format!("{key}.client_ca"), p));
    let pinned = raw
        .client_certificates
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| v.file_path(&format!("{key}.client_certificates[{i}]"), p))
        .collect();
    if v.issues.len() != before {
        return None;
    }
    Some(ListenerTlsConfig {
        certificate: certificate?,
        private_key: private_key?,
        generate_if_missing: raw.generate_if_missing.unwrap_or(false),
        versions,
        client_auth: ClientAuth { ca, pinned },
    })
}

#[cfg(test)]
pub(super) fn test_parse_server_address(s: &str) -> Option<ServerAddress> {
    parse_server_address(s)
}
