//! Backend health monitors: what the F5 pool's TCP monitor does, speaking
//! DICOM (`backends.NAME.health_check`).
//!
//! One task per backend server probes it every `interval`, each probe under
//! `timeout`: `echo` opens a real association (calling AE
//! `health_check.calling_ae_title`, called AE the backend's `ae_title`, over
//! the backend's TLS when configured), sends C-ECHO and releases — so a
//! wrong AE title or a refused Verification context counts as down, not only
//! a closed port; `tcp` only connects; `off` starts no task.
//!
//! Verdicts follow the usual load-balancer thresholds: `fall` consecutive
//! failures mark an up server down, `rise` consecutive successes mark a down
//! server up again. Before its first probe a server is `unchecked` and used
//! like an up one; the first probe decides at once (no need to wait `fall`
//! intervals to learn that a server was never there). State changes are
//! logged once and exported as `dicomgate_backend_up{backend,server}`; each
//! probe's result is kept for the `/status` view ([`HealthRegistry::status_json`]).
//!
//! The state lives in [`ServerHealth`], shared by the monitor and by
//! [`super::BackendRuntime::connect`], which orders its attempts by it. The
//! [`HealthRegistry`] keeps it across reloads for servers whose probe did not
//! change, so a SIGHUP neither forgets that a server is down nor logs every
//! server coming "up" again. Monitors are replaced on reload ([`Monitors`]
//! cancels its tasks when dropped).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::BackendRuntime;
use crate::config::{BackendConfig, HealthCheckMode, ServerAddress};
use crate::echo::{c_echo, EchoError, EchoRequest, EchoTls};
use crate::metrics::Metrics;

/// A server as the health check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerState {
    /// No probe has finished yet, or `mode: off`: used like an up server.
    #[default]
    Unchecked,
    Up,
    Down,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Unchecked => "unchecked",
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }
}

/// The rise/fall counter of one server; no I/O, no clock.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    state: ServerState,
    successes: u32,
    failures: u32,
}

impl Verdicts {
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Counts one probe; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<ServerState> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match (self.state, ok) {
            (ServerState::Unchecked, true) => ServerState::Up,
            (ServerState::Unchecked, false) => ServerState::Down,
            (ServerState::Up, false) if self.failures >= fall => ServerState::Down,
            (ServerState::Down, true) if self.successes >= rise => ServerState::Up,
            (same, _) => same,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// What one probe found.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub ok: bool,
    /// In words: `C-ECHO accepted`, or the exact failure.
    pub text: String,
    pub latency: Duration,
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct Status {
    verdicts: Verdicts,
    last_probe: Option<ProbeResult>,
    last_change: Option<SystemTime>,
}

/// The health of one backend server, shared by its monitor, the connect
/// path and the status view.
#[derive(Debug)]
pub struct ServerHealth {
    pub backend: String,
    pub server: ServerAddress,
    status: Mutex<Status>,
}

impl ServerHealth {
    fn new(backend: &str, server: &ServerAddress) -> ServerHealth {
        ServerHealth { backend: backend.to_owned(), server: server.clone(), status: Mutex::default() }
    }

    /// The lock is only ever held for a few field copies, never across an
    /// await; a poisoned lock still holds consistent plain data.
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> ServerState {
        self.lock().verdicts.state()
    }

    pub fn last_probe(&self) -> Option<ProbeResult> {
        self.lock().last_probe.clone()
    }

    /// Records a probe; returns the new state when it changed.
    fn record(&self, probe: ProbeResult, rise: u32, fall: u32) -> Option<ServerState> {
        let mut status = self.lock();
        let at = probe.at;
        let changed = status.verdicts.observe(probe.ok, rise, fall);
        status.last_probe = Some(probe);
        if changed.is_some() {
            status.last_change = Some(at);
        }
        changed
    }

    #[cfg(test)]
    pub(crate) fn force_state_for_test(&self, state: ServerState) {
        self.lock().verdicts.state = state;
    }

    fn view(&self) -> ServerView {
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
        }
    }
}

/// The health of a backend's servers, in configured order.
#[derive(Debug)]
pub struct BackendHealth {
    servers: Vec<Arc<ServerHealth>>,
}

impl BackendHealth {
    /// Every server `unchecked`.
    pub fn unchecked(config: &BackendConfig) -> BackendHealth {
        BackendHealth { servers: config.servers.iter().map(|s| Arc::new(ServerHealth::new(&config.name, s))).collect() }
    }

    pub fn servers(&self) -> &[Arc<ServerHealth>] {
        &self.servers
    }

    /// The order to try servers in: `(index, marked_down)`, servers not
    /// marked down first, each group in configured order.
    pub fn connect_order(&self) -> Vec<(usize, bool)> {
        let marked: Vec<bool> = self.servers.iter().map(|s| s.state() == ServerState::Down).collect();
        let healthy = marked.iter().enumerate().filter(|(_, down)| !**down);
        let down = marked.iter().enumerate().filter(|(_, down)| **down);
        healthy.chain(down).map(|(i, d)| (i, *d)).collect()
    }
}

/// The backends in service and their servers' health: the source of the
/// `/status` view, and the memory that carries health across reloads.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    published: RwLock<BTreeMap<String, Arc<BackendRuntime>>>,
}

impl HealthRegistry {
    pub fn new() -> HealthRegistry {
        HealthRegistry::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<BackendRuntime>>> {
        self.published.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The health for a backend about to be built: the servers' current state
    /// when the published backend of that name probes them the same way
    /// (mode, interval, thresholds, AE titles, TLS), otherwise `unchecked`.
    pub fn health_for(&self, config: &BackendConfig) -> Arc<BackendHealth> {
        let published = self.read();
        let old = published.get(&config.name).filter(|old| {
            let o = &old.config;
            o.health_check == config.health_check && o.ae_title == config.ae_title && o.tls == config.tls
        });
        let servers = config
            .servers
            .iter()
            .map(|server| {
                old.and_then(|o| o.health.servers.iter().find(|s| s.server == *server).cloned())
                    .unwrap_or_else(|| Arc::new(ServerHealth::new(&config.name, server)))
            })
            .collect();
        Arc::new(BackendHealth { servers })
    }

    /// Makes `backends` the ones in service (after a bind or a successful
    /// reload): `/status` shows them, and the `dicomgate_backend_up` series
    /// of servers no longer monitored are removed (a stale 0 would alert
    /// forever; a stale 1 would hide a problem).
    pub fn publish(&self, backends: &BTreeMap<String, Arc<BackendRuntime>>, metrics: &Metrics) {
        let monitored = |map: &BTreeMap<String, Arc<BackendRuntime>>| -> BTreeSet<(String, String)> {
            map.values()
                .filter(|b| b.config.health_check.mode != HealthCheckMode::Off)
                .flat_map(|b| b.config.servers.iter().map(|s| (b.config.name.clone(), s.to_string())))
                .collect()
        };
        let mut published = self.published.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = monitored(backends);
        for (backend, server) in monitored(&published).difference(&now) {
            metrics.forget_backend_server(backend, server);
        }
        // A server whose state was carried over keeps its series.
        for b in backends.values().filter(|b| b.config.health_check.mode != HealthCheckMode::Off) {
            for s in &b.health.servers {
                match s.state() {
                    ServerState::Unchecked => metrics.forget_backend_server(&s.backend, &s.server.to_string()),
                    state => metrics.set_backend_up(&s.backend, &s.server.to_string(), state == ServerState::Up),
                }
            }
        }
        *published = backends.clone();
    }

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

/// The running monitors of one configuration; dropping it stops them (a
/// probe in flight is abandoned, which closes its connection).
#[derive(Debug)]
pub struct Monitors {
    stop: CancellationToken,
}

impl Monitors {
    /// One task per server of every backend whose mode is not `off`.
    pub fn start<'a>(backends: impl IntoIterator<Item = &'a Arc<BackendRuntime>>, metrics: &Metrics) -> Monitors {
        let stop = CancellationToken::new();
        for backend in backends {
            if backend.config.health_check.mode == HealthCheckMode::Off {
                continue;
            }
            for index in 0..backend.health.servers.len() {
                tokio::spawn(monitor(backend.clone(), index, metrics.clone(), stop.clone()));
            }
        }
        Monitors { stop }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn monitor(backend: Arc<BackendRuntime>, index: usize, metrics: Metrics, stop: CancellationToken) {
    let Some(health) = backend.health.servers.get(index).cloned() else { return };
    let hc = &backend.config.health_check;
    let mut ticks = tokio::time::interval(hc.interval);
    // A late probe (a slow SCP, a busy box) moves the schedule instead of
    // firing a burst of catch-up probes.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe(&backend, &health.server) => r,
        };
        tracing::debug!(backend = %health.backend, server = %health.server, ok = result.ok, result = %result.text, "health probe");
        let text = result.text.clone();
        let latency_ms = u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX);
        let Some(state) = health.record(result, hc.rise, hc.fall) else { continue };
        let (b, s, mode) = (&health.backend, &health.server, hc.mode.as_str());
        match state {
            ServerState::Up => {
                metrics.set_backend_up(b, &s.to_string(), true);
                tracing::info!(backend = %b, server = %s, mode, latency_ms, "backend server is up: {text}");
            }
            ServerState::Down => {
                metrics.set_backend_up(b, &s.to_string(), false);
                tracing::warn!(backend = %b, server = %s, mode, "backend server marked down: {text}");
            }
            ServerState::Unchecked => {}
        }
    }
}

/// One probe under the configured timeout.
async fn probe(backend: &BackendRuntime, server: &ServerAddress) -> ProbeResult {
    let hc = &backend.config.health_check;
    let at = SystemTime::now();
    let started = Instant::now();
    let outcome: Result<String, String> = match hc.mode {
        HealthCheckMode::Echo => echo(backend, server).await,
        HealthCheckMode::Tcp => {
            match timeout(hc.timeout, TcpStream::connect((server.host.as_str(), server.port))).await {
                Ok(Ok(_)) => Ok("TCP connect succeeded".to_owned()),
                Ok(Err(e)) => Err(format!("TCP connect failed: {e}")),
                Err(_) => Err(format!("no TCP connection within the probe timeout ({:?})", hc.timeout)),
            }
        }
        HealthCheckMode::Off => Ok("not monitored".to_owned()),
    };
    let latency = started.elapsed();
    match outcome {
        Ok(text) => ProbeResult { ok: true, text, latency, at },
        Err(text) => ProbeResult { ok: false, text, latency, at },
    }
}

/// Associate, C-ECHO, release, as the cloud's Echo button would; the SCP
/// judges our AE titles exactly as it judges the cloud's.
async fn echo(backend: &BackendRuntime, server: &ServerAddress) -> Result<String, String> {
    let hc = &backend.config.health_check;
    let tls = match &backend.tls {
        Some(t) => Some(EchoTls { config: t.config.clone(), server_name: super::server_name(t, server)? }),
        None => None,
    };
    let request = EchoRequest {
        host: server.host.clone(),
        port: server.port,
        calling_ae: hc.calling_ae_title.clone(),
        called_ae: backend.config.ae_title.clone(),
        tls,
        timeout: hc.timeout,
    };
    match c_echo(&request).await {
        Ok(accepted) => Ok(match accepted.tls {
            Some(tls) => format!("C-ECHO accepted ({tls})"),
            None => "C-ECHO accepted".to_owned(),
        }),
        Err(EchoError::Timeout { phase }) => {
            Err(format!("no answer within the probe timeout ({:?}) during the {phase}", hc.timeout))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_probe_decides_then_thresholds_apply() {
        let mut v = Verdicts::default();
        assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), Some(ServerState::Down));
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), Some(ServerState::Up));

        let mut v = Verdicts::default();
        assert_eq!(v.observe(false, 2, 3), Some(ServerState::Down));
        assert_eq!(v.state(), ServerState::Down);
    }

    #[test]
    fn a_success_resets_the_failure_count_and_vice_versa() {
        let mut v = Verdicts::default();
        v.observe(true, 2, 2);
        for _ in 0..10 {
            assert_eq!(v.observe(false, 2, 2), None);
            assert_eq!(v.observe(true, 2, 2), None);
        }
        assert_eq!(v.state(), ServerState::Up);
        assert_eq!(v.observe(false, 2, 2), None);
        assert_eq!(v.observe(false, 2, 2), Some(ServerState::Down));
        for _ in 0..10 {
            assert_eq!(v.observe(true, 2, 2), None);
            assert_eq!(v.observe(false, 2, 2), None);
        }
        assert_eq!(v.state(), ServerState::Down);
    }

    fn config(yaml_backend: &str) -> Arc<BackendConfig> {
        let yaml = format!(
            "backends:\n  pacs:\n{yaml_backend}listeners:\n  store:\n    listen: 127.0.0.1:0\n    \
             insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    routes: {{PACS: pacs}}\n"
        );
        let c = crate::config::Config::from_yaml_str(&yaml, std::path::Path::new("/")).expect("valid");
        c.backends["pacs"].clone()
    }

    fn runtime(registry: &HealthRegistry, config: Arc<BackendConfig>) -> Arc<BackendRuntime> {
        let health = registry.health_for(&config);
        Arc::new(BackendRuntime { config, tls: None, health })
    }

    fn probe(ok: bool, text: &str) -> ProbeResult {
        ProbeResult { ok, text: text.to_owned(), latency: Duration::from_micros(1500), at: SystemTime::UNIX_EPOCH }
    }

    #[test]
    fn state_survives_a_reload_only_while_the_probe_is_the_same() {
        let registry = HealthRegistry::new();
        let metrics = Metrics::new();
        let v1 = config("    ae_title: PACS\n    servers: [\"10.0.0.1:104\", \"10.0.0.2:104\"]\n");
        let first = runtime(&registry, v1.clone());
        registry.publish(&BTreeMap::from([("pacs".to_owned(), first.clone())]), &metrics);
        first.health.servers[0].record(probe(false, "refused"), 2, 3);
        assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), None, "only set by the monitor");

        // Same probe, one server more: the known server keeps its state.
        let v2 = config("    ae_title: PACS\n    servers: [\"10.0.0.3:104\", \"10.0.0.1:104\"]\n");
        let second = runtime(&registry, v2);
        assert_eq!(second.health.servers[0].state(), ServerState::Unchecked);
        assert_eq!(second.health.servers[1].state(), ServerState::Down);
        assert!(Arc::ptr_eq(&second.health.servers[1], &first.health.servers[0]));
        registry.publish(&BTreeMap::from([("pacs".to_owned(), second.clone())]), &metrics);
        assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), Some(false));

        // A different probe (the called AE title): judged afresh.
        let v3 = config("    ae_title: PACS2\n    servers: [\"10.0.0.1:104\"]\n");
        let third = runtime(&registry, v3);
        assert_eq!(third.health.servers[0].state(), ServerState::Unchecked);
        registry.publish(&BTreeMap::from([("pacs".to_owned(), third)]), &metrics);
        assert_eq!(metrics.backend_up("pacs", "10.0.0.1:104"), None, "stale series removed");
    }

    #[test]
    fn status_json_shows_state_last_probe_and_change() {
        let registry = HealthRegistry::new();
        let rt = runtime(&registry, config("    ae_title: PACS\n    servers: [\"10.0.0.1:104\"]\n"));
        registry.publish(&BTreeMap::from([("pacs".to_owned(), rt.clone())]), &Metrics::new());
        let unchecked: serde_json::Value = serde_json::from_str(&registry.status_json()).expect("JSON");
        assert_eq!(unchecked["backends"]["pacs"]["servers"][0]["state"], "unchecked");
        assert!(unchecked["backends"]["pacs"]["servers"][0]["last_probe"].is_null());

        rt.health.servers[0].record(probe(false, "association rejected: \"quoted\" 1/1/7"), 2, 3);
        let v: serde_json::Value = serde_json::from_str(&registry.status_json()).expect("JSON");
        let pacs = &v["backends"]["pacs"];
        assert_eq!(pacs["ae_title"], "PACS");
        assert_eq!(pacs["health_check"]["mode"], "echo");
        assert_eq!(pacs["health_check"]["fall"], 3);
        let server = &pacs["servers"][0];
        assert_eq!(server["server"], "10.0.0.1:104");
        assert_eq!(server["state"], "down");
        assert_eq!(server["consecutive_failures"], 1);
        assert_eq!(server["last_change"], "1970-01-01T00:00:00.000Z");
        assert_eq!(server["last_probe"]["ok"], false);
        assert_eq!(server["last_probe"]["result"], "association rejected: \"quoted\" 1/1/7");
        assert_eq!(server["last_probe"]["latency_ms"], 1.5);
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let mut v = Verdicts::default();
        assert_eq!(v.observe(true, 1, 1), Some(ServerState::Up));
        assert_eq!(v.observe(false, 1, 1), Some(ServerState::Down));
        assert_eq!(v.observe(true, 1, 1), Some(ServerState::Up));
    }
}
