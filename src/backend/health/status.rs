//! The `/status` view of the backends' health: plain serializable structs
//! built from the shared state under its lock, never held across an await.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::{HealthRegistry, ServerHealth};

impl HealthRegistry {
    /// Every backend server's state, last probe and last change, as the
    /// `/status` view shows them.
    pub fn status(&self) -> StatusView {
        let backends = self
            .read()
            .iter()
            .map(|(name, b)| {
                let hc = &b.config.health_check;
                let view = BackendView {
                    ae_title: b.config.ae_title.to_string(),
                    tls: b.tls.is_some(),
                    health_check: CheckView {
                        mode: hc.mode.as_str(),
                        interval_seconds: hc.interval.as_secs_f64(),
                        timeout_seconds: hc.timeout.as_secs_f64(),
                        fall: hc.fall,
                        rise: hc.rise,
                        calling_ae_title: hc.calling_ae_title.to_string(),
                    },
                    servers: b.health.servers.iter().map(|s| s.view()).collect(),
                    crls: b
                        .tls
                        .iter()
                        .flat_map(|t| &t.crls.infos)
                        .map(|c| c.view(&format!("backends.{name}.tls")))
                        .collect(),
                };
                (name.clone(), view)
            })
            .collect();
        StatusView { backends }
    }

    /// [`HealthRegistry::status`] as pretty-printed JSON.
    pub fn status_json(&self) -> String {
        // Plain structs of strings and numbers: serialization cannot fail.
        serde_json::to_string_pretty(&self.status()).unwrap_or_else(|_| "{}".to_owned()) + "\n"
    }
}

impl ServerHealth {
    pub(super) fn view(&self) -> ServerView {
        let status = self.lock();
        ServerView {
            server: self.server.to_string(),
            state: status.verdicts.state.as_str(),
            consecutive_successes: status.verdicts.successes,
            consecutive_failures: status.verdicts.failures,
            last_change: status.last_change.map(rfc3339),
            last_probe: status.last_probe.as_ref().map(|p| ProbeView {
                at: rfc3339(p.at),
                ok: p.ok,
                result: p.text.clone(),
                latency_ms: (p.latency.as_secs_f64() * 1e6).round() / 1e3,
            }),
            last_failed_connect: status
                .last_failed_connect
                .as_ref()
                .map(|c| FailedConnectView { at: rfc3339(c.at), error: c.text.clone() }),
        }
    }
}

/// `/status`: each backend and its servers, like F5's pool member status.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub backends: BTreeMap<String, BackendView>,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub ae_title: String,
    pub tls: bool,
    pub health_check: CheckView,
    /// In configured order.
    pub servers: Vec<ServerView>,
    /// `tls.crls` as read at start or the last reload.
    pub crls: Vec<crate::tls::crl::CrlView>,
}

#[derive(Debug, Serialize)]
pub struct CheckView {
    pub mode: &'static str,
    pub interval_seconds: f64,
    pub timeout_seconds: f64,
    pub fall: u32,
    pub rise: u32,
    pub calling_ae_title: String,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub server: String,
    /// `up`, `down` or `unchecked`.
    pub state: &'static str,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// RFC 3339 UTC time of the last state change.
    pub last_change: Option<String>,
    pub last_probe: Option<ProbeView>,
    /// The last association whose connect to this server failed (refused,
    /// unreachable, timed out): it marks a monitored server down at once.
    pub last_failed_connect: Option<FailedConnectView>,
}

#[derive(Debug, Serialize)]
pub struct FailedConnectView {
    pub at: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct ProbeView {
    pub at: String,
    pub ok: bool,
    pub result: String,
    pub latency_ms: f64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
