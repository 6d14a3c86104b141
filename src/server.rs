//! The gateway as a whole: builds the runtime from a [`Config`] (generating
//! and loading certificates), binds every listener and the admin endpoint,
//! serves, reloads on request, and on shutdown drains: stop accepting, let
//! live associations finish for the grace period, A-ABORT the rest.
//!
//! Reload is all or nothing: the new configuration is read, every
//! certificate loaded and every new address bound before anything changes;
//! then each listener's snapshot is swapped atomically for new connections.
//! Live associations keep the snapshot they started with.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{HealthRegistry, Monitors};
use crate::config::{Config, ConfigError, Security};
use crate::connection::Services;
use crate::lifecycle::{Lifecycle, State};
use crate::listener::{accept_loop, Limits, Snapshot};
use crate::metrics::Metrics;
use crate::prepare::{self, Backends, Generation, PrepareError, Prepared, PreparedListener};

/// After the grace period and the A-ABORTs, how long closes may take.
const FINAL_CLOSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("{key}: cannot listen on {address}: {source}")]
    Bind {
        key: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("reload: the configuration was not loaded from a file, so there is nothing to re-read")]
    NoConfigFile,
    #[error("reload: loading the new configuration failed unexpectedly: {0}")]
    ReloadTask(#[from] tokio::task::JoinError),
}

struct Bound {
    name: String,
    address: SocketAddr,
    tcp: TcpListener,
    built: PreparedListener,
}

/// A running listener, as the reload logic sees it.
struct Slot {
    /// The configured `listen` address (may have port 0; `bound` is real).
    configured: SocketAddr,
    bound: SocketAddr,
    publish: watch::Sender<Snapshot>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    config: Config,
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
    listeners: Vec<Bound>,
    admin: Option<(SocketAddr, TcpListener)>,
    backends: Backends,
    health: Arc<HealthRegistry>,
}

impl Gateway {
    /// Generates missing certificates where asked, loads all TLS material and
    /// binds every listener and the admin endpoint. On error nothing is left
    /// listening.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Gateway, ServeError> {
        let health = Arc::new(HealthRegistry::new());
        let Prepared { backends, listeners: prepared } = prepare::gateway(&config, &health, Generation::Create)?;
        let mut listeners = Vec::new();
        for (name, built) in prepared {
            let lc = built.runtime.config.clone();
            let (tcp, address) = bind_addr(&format!("listeners.{name}.listen"), lc.listen).await?;
            metrics.register_listener(&name);
            listeners.push(Bound { name, address, tcp, built });
        }
        let admin = match &config.admin {
            Some(a) => {
                let (tcp, address) = bind_addr("admin.listen", a.listen).await?;
                Some((address, tcp))
            }
            None => None,
        };
        Ok(Gateway { config, metrics, lifecycle: Arc::new(Lifecycle::new()), listeners, admin, backends, health })
    }

    /// The backend servers' health (the `/status` view).
    pub fn health(&self) -> Arc<HealthRegistry> {
        self.health.clone()
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.address)
    }

    /// The bound address of the admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Follows the lifecycle (`Starting` → `Ready` → … → `Stopped`).
    pub fn lifecycle(&self) -> watch::Receiver<State> {
        self.lifecycle.subscribe()
    }

    /// Serves until `shutdown` completes, then drains (see [`Gateway::run_with_reload`]).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (_never, reload) = mpsc::channel(1);
        self.run_with_reload(shutdown, reload).await
    }

    /// Serves until `shutdown` completes; each message on `reload` re-reads
    /// the configuration file (SIGHUP). Then stops accepting, lets live
    /// associations finish for `shutdown.grace_period`, and A-ABORTs the rest.
    pub async fn run_with_reload(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut reload: mpsc::Receiver<()>,
    ) -> Result<(), ServeError> {
        let Gateway { mut config, metrics, lifecycle, listeners, admin, backends, health } = self;
        let tracker = TaskTracker::new();
        let services = Services { metrics: metrics.clone(), force_abort: CancellationToken::new() };
        let admin_stop = CancellationToken::new();
        let admin_task = admin.map(|(address, tcp)| {
            tracing::info!(%address, "admin endpoint listening (/metrics, /healthz, /readyz, /status)");
            let (state, stop) = (lifecycle.subscribe(), admin_stop.clone());
            tokio::spawn(crate::admin::serve_with_status(tcp, metrics.clone(), state, health.clone(), stop))
        });

        let mut slots = BTreeMap::new();
        for b in listeners {
            banner(&b.name, b.address, &b.built, &metrics);
            let limits = Limits::new(b.built.runtime.config.max_connections);
            let slot = start_listener(b, limits, &services, &tracker);
            slots.insert(slot.0, slot.1);
        }
        health.publish(&backends, &metrics);
        let mut monitors = Monitors::start(backends.values(), &metrics);
        lifecycle.set(State::Ready);
        tracing::info!("dicomgate ready");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = reload.recv() => {
                    lifecycle.set(State::Reloading);
                    match reload_config(&config, &mut slots, &metrics, &services, &tracker, health.clone()).await {
                        Ok((new, backends)) => {
                            config = new;
                            // Dropping the old monitors stops them.
                            health.publish(&backends, &metrics);
                            monitors = Monitors::start(backends.values(), &metrics);
                            metrics.config_reload(true);
                        }
                        Err(e) => {
                            metrics.config_reload(false);
                            tracing::error!("reload failed, still serving the previous configuration:\n{e}");
                        }
                    }
                    lifecycle.set(State::Ready);
                }
            }
        }

        lifecycle.set(State::Draining);
        monitors.stop();
        for slot in slots.values() {
            slot.stop.cancel();
        }
        for (_, slot) in slots {
            let _ = slot.task.await;
        }
        tracker.close();
        let grace = config.shutdown.grace_period;
        tracing::info!(live = tracker.len(), ?grace, "stopped accepting; draining live associations");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(live = tracker.len(), "grace period over; sending A-ABORT to the remaining associations");
            services.force_abort.cancel();
            let _ = tokio::time::timeout(FINAL_CLOSE, tracker.wait()).await;
        }
        lifecycle.set(State::Stopped);
        admin_stop.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("dicomgate stopped");
        Ok(())
    }
}

async fn bind_addr(key: &str, address: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { key: key.to_owned(), address, source };
    let tcp = TcpListener::bind(address).await.map_err(err)?;
    let bound = tcp.local_addr().map_err(err)?;
    Ok((tcp, bound))
}

fn start_listener(b: Bound, limits: Limits, services: &Services, tracker: &TaskTracker) -> (String, Slot) {
    let configured = b.built.runtime.config.listen;
    let (publish, snapshot) = watch::channel(Snapshot { runtime: b.built.runtime, limits });
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(b.tcp, snapshot, services.clone(), tracker.clone(), stop.clone()));
    (b.name, Slot { configured, bound: b.address, publish, stop, task })
}

/// Re-reads the file and applies it, or changes nothing.
async fn reload_config(
    current: &Config,
    slots: &mut BTreeMap<String, Slot>,
    metrics: &Metrics,
    services: &Services,
    tracker: &TaskTracker,
    health: Arc<HealthRegistry>,
) -> Result<(Config, Backends), ServeError> {
    let path = current.source.clone().ok_or(ServeError::NoConfigFile)?;
    // File reads, certificate loading and key generation block: off the
    // async workers, which keep serving live associations meanwhile.
    let (new, prepared) = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
        let new = Config::load(&path)?;
        let prepared = prepare::gateway(&new, &health, Generation::Create)?;
        Ok((new, prepared))
    })
    .await??;
    let Prepared { backends, listeners } = prepared;
    let path = new.source.as_deref().unwrap_or(std::path::Path::new("-"));

    // Prepare everything that can fail before changing anything.
    let mut prepared = Vec::new();
    for (name, built) in listeners {
        let lc = built.runtime.config.clone();
        let rebind = slots.get(&name).is_none_or(|s| s.configured != lc.listen);
        let socket = if rebind { Some(bind_addr(&format!("listeners.{name}.listen"), lc.listen).await?) } else { None };
        prepared.push((name, built, socket));
    }

    let removed: Vec<String> = slots.keys().filter(|n| !new.listeners.contains_key(*n)).cloned().collect();
    for name in &removed {
        if let Some(slot) = slots.remove(name) {
            slot.stop.cancel();
            tracing::info!(listener = %name, "listener removed: no new connections; live ones continue");
        }
    }
    for (name, built, socket) in prepared {
        let max = built.runtime.config.max_connections;
        match (socket, slots.get(&name)) {
            (None, Some(slot)) => {
                banner(&name, slot.bound, &built, metrics);
                let limits = {
                    let old = slot.publish.borrow();
                    if old.runtime.config.max_connections == max {
                        old.limits.clone()
                    } else {
                        Limits::new(max)
                    }
                };
                slot.publish.send_replace(Snapshot { runtime: built.runtime, limits });
            }
            (Some((tcp, address)), existing) => {
                if let Some(old) = existing {
                    old.stop.cancel();
                    tracing::info!(listener = %name, from = %old.bound, to = %address, "listener moved");
                }
                metrics.register_listener(&name);
                banner(&name, address, &built, metrics);
                let (name, slot) =
                    start_listener(Bound { name, address, tcp, built }, Limits::new(max), services, tracker);
                slots.insert(name, slot);
            }
            // An unchanged address always has a slot (see `rebind` above).
            (None, None) => {}
        }
    }
    if current.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        tracing::warn!("admin.listen changed: takes effect at the next restart");
    }
    if current.log.level != new.log.level || current.log.format != new.log.format {
        tracing::warn!("log settings changed: take effect at the next restart");
    }
    tracing::info!(file = %path.display(), listeners = new.listeners.len(), removed = removed.len(), "configuration reloaded");
    Ok((new, backends))
}

/// The startup banner line for one listener (also after each reload).
fn banner(name: &str, address: SocketAddr, built: &PreparedListener, metrics: &Metrics) {
    let cfg = &built.runtime.config;
    let prepare::Description { allow, routes, scu, .. } = prepare::describe(cfg);
    let scu = scu.unwrap_or("-");
    match (&cfg.security, &built.certificate) {
        (Security::Tls(_), Some(cert)) => {
            metrics.set_certificate_expiry(name, cert.not_after.unix_timestamp());
            tracing::info!(
                listener = %name, %address, security = "Secured", %allow, %routes,
                subject = %cert.subject, expires = %cert.not_after, days_left = cert.days_left(),
                sha256 = %cert.fingerprint_sha256, scu, "listening"
            );
            if (0..30).contains(&cert.days_left()) {
                tracing::warn!(listener = %name, days_left = cert.days_left(), "the listener's certificate expires within 30 days");
            }
        }
        (Security::Tls(_), None) => {
            tracing::info!(listener = %name, %address, security = "Secured", %allow, %routes, "listening")
        }
        (Security::Plaintext, _) => tracing::warn!(
            listener = %name, %address, security = "UNSECURED", %allow, %routes,
            "listening WITHOUT TLS (insecure_plaintext): test data only, never patient data"
        ),
    }
}
