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
//! Real associations are evidence too (HAProxy's `observe layer4`): when an
//! association's connect to a monitored server is refused, unreachable or
//! not answered within the connect timeout, the server is marked down at
//! once ([`ServerHealth::connect_failed`]) instead of waiting `fall` probes.
//! A black-holed server (packets dropped, not refused) would otherwise cost
//! every new association the whole connect timeout until the monitor
//! caught up (`fall` × `interval` + `timeout`). Only the monitor marks a
//! server up again (`rise` probes), so one lucky connect cannot undo it.
//!
//! The state lives in [`ServerHealth`], shared by the monitor and by
//! [`super::BackendRuntime::connect`], which orders its attempts by it. The
//! [`HealthRegistry`] keeps it across reloads for servers whose probe did not
//! change, so a SIGHUP neither forgets that a server is down nor logs every
//! server coming "up" again. Monitors are replaced on reload ([`Monitors`]
//! cancels its tasks when dropped).

mod monitor;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use super::BackendRuntime;
use crate::config::{BackendConfig, HealthCheckMode, ServerAddress};
use crate::metrics::Metrics;
pub use monitor::{echo_probe, Monitors, ProbeError};
pub use status::{BackendView, CheckView, FailedConnectView, ProbeView, ServerView, StatusView};

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

    /// Counts a real association's failed connect: down at once, whatever
    /// `fall` says (see the module docs); returns `Down` when that changed
    /// the state.
    pub fn observe_failed_connect(&mut self) -> Option<ServerState> {
        self.failures = self.failures.saturating_add(1);
        self.successes = 0;
        (self.state != ServerState::Down).then(|| {
            self.state = ServerState::Down;
            ServerState::Down
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

/// The last connect of a real association that failed.
#[derive(Debug, Clone)]
pub struct FailedConnect {
    /// In words: the connect error.
    pub text: String,
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct Status {
    verdicts: Verdicts,
    last_probe: Option<ProbeResult>,
    last_change: Option<SystemTime>,
    last_failed_connect: Option<FailedConnect>,
}

/// The health of one backend server, shared by its monitor, the connect
/// path and the status view.
#[derive(Debug)]
pub struct ServerHealth {
    pub backend: String,
    pub server: ServerAddress,
    status: Mutex<Status>,
    /// Where a state change found on the connect path is exported; set when
    /// the server is published with a monitor ([`HealthRegistry::publish`]),
    /// never for `mode: off` (nothing would mark the server up again).
    observed: OnceLock<Metrics>,
}

impl ServerHealth {
    fn new(backend: &str, server: &ServerAddress) -> ServerHealth {
        ServerHealth {
            backend: backend.to_owned(),
            server: server.clone(),
            status: Mutex::default(),
            observed: OnceLock::new(),
        }
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

    pub fn last_failed_connect(&self) -> Option<FailedConnect> {
        self.lock().last_failed_connect.clone()
    }

    /// A real association could not connect to this server (refused,
    /// unreachable, or no answer within the connect timeout): marked down at
    /// once when the server is monitored (see the module docs), logged once
    /// and exported like a monitor's verdict. Without a monitor (`mode:
    /// off`, `check`) only remembered for the status view.
    pub fn connect_failed(&self, error: &impl std::fmt::Display) {
        let text = error.to_string();
        let at = SystemTime::now();
        let metrics = self.observed.get();
        let changed = {
            let mut status = self.lock();
            status.last_failed_connect = Some(FailedConnect { text: text.clone(), at });
            let changed = metrics.and_then(|_| status.verdicts.observe_failed_connect());
            if changed.is_some() {
                status.last_change = Some(at);
            }
            changed
        };
        if let (Some(ServerState::Down), Some(metrics)) = (changed, metrics) {
            metrics.set_backend_up(&self.backend, &self.server.to_string(), false);
            tracing::warn!(
                backend = %self.backend,
                server = %self.server,
                "backend server marked down: an association could not connect: {text}"
            );
        }
    }

    #[cfg(test)]
    pub(crate) fn record_for_test(&self, probe: ProbeResult, rise: u32, fall: u32) -> Option<ServerState> {
        self.record(probe, rise, fall)
    }

    #[cfg(test)]
    pub(crate) fn force_state_for_test(&self, state: ServerState) {
        self.lock().verdicts.state = state;
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
                // The same registry for the daemon's lifetime: the first set holds.
                let _ = s.observed.set(metrics.clone());
                match s.state() {
                    ServerState::Unchecked => metrics.forget_backend_server(&s.backend, &s.server.to_string()),
                    state => metrics.set_backend_up(&s.backend, &s.server.to_string(), state == ServerState::Up),
                }
            }
        }
        *published = backends.clone();
    }
}
