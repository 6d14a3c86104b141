//! Raw YAML structs → validated [`Config`]. Every problem is collected with its
//! key path, so an admin fixes the whole file in one pass. One file per
//! section: `backends`, `listeners`; the shared value parsers ([`Validator`])
//! and the top level are here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

mod admin;
mod backends;
mod guessing;
mod listeners;

pub use admin::DEFAULT_ADMIN_ALLOW;
pub(super) use backends::parse_server_address;

use super::raw::*;
use super::*;
use backends::validate_backend;
use listeners::validate_listener;

const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// Upper bound of every duration key: a day. Beyond it a value is a typo
/// (`30d` for `30s`), and deadlines computed from it could overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Upper bound for `fall` and `rise`: beyond it a server could stay in a
/// wrong state for hours at common intervals, which is a typo, not a policy.
const MAX_HEALTH_THRESHOLD: u32 = 100;

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

    pub(super) fn duration(&mut self, key: &str, value: Option<&Scalar>, default: Duration) -> Duration {
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
                Ok(d) if d > MAX_DURATION => {
                    self.issue(key, format!("{text:?} is longer than the maximum of 24h"));
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
    let audit = super::atna::validate_audit(&mut v, raw.audit);
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
