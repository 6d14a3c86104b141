//! `backends.NAME`: servers, AE title, upstream TLS, health check.

use super::*;

const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default probe deadline (capped at the interval): a connect (4 s by
/// default, `listeners.NAME.timeouts.connect`) and an association, C-ECHO
/// and release, which a LAN SCP answers in milliseconds. A silent server's
/// probe ends well before the next is due.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failures before "down" and successes before "up" again: the
/// common load-balancer defaults (HAProxy's fall 3 / rise 2).
const DEFAULT_HEALTH_FALL: u32 = 3;
const DEFAULT_HEALTH_RISE: u32 = 2;

pub(super) fn validate_backend(v: &mut Validator<'_>, name: &str, raw: RawBackend) -> Option<BackendConfig> {
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
        let crls = t
            .crls
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| v.file_path(&format!("{tkey}.crls[{i}]"), p))
            .collect();
        ca.map(|ca| BackendTlsConfig { ca, server_name: t.server_name, client_identity, crls })
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
pub(in crate::config) fn parse_server_address(s: &str) -> Option<ServerAddress> {
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
