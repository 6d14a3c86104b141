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
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{BackendRuntime, HealthRegistry, Monitors};
use crate::config::{Config, ConfigError, ListenerConfig, Security};
use crate::connection::{ListenerRuntime, Services};
use crate::lifecycle::{Lifecycle, State};
use crate::listener::{accept_loop, Limits, RefusalLog, Snapshot};
use crate::metrics::Metrics;
use crate::pki::{self, CertificateInfo};
use crate::tls::{self, ServerIdentity, TlsError};

/// After the grace period and the A-ABORTs, how long closes may take.
const FINAL_CLOSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listeners.{listener}.tls: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: TlsError,
    },
    #[error("backends.{backend}.tls: {source}")]
    BackendTls {
        backend: String,
        #[source]
        source: TlsError,
    },
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
}

/// A listener's runtime plus what the banner and metrics show of it.
struct Built {
    runtime: Arc<ListenerRuntime>,
    certificate: Option<CertificateInfo>,
}

struct Bound {
    name: String,
    address: SocketAddr,
    tcp: TcpListener,
    built: Built,
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

type Backends = BTreeMap<String, Arc<BackendRuntime>>;

impl Gateway {
    /// Generates missing certificates where asked, loads all TLS material and
    /// binds every listener and the admin endpoint. On error nothing is left
    /// listening.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Gateway, ServeError> {
        let health = Arc::new(HealthRegistry::new());
        let backends = build_backends(&config, &health)?;
        let mut listeners = Vec::new();
        for (name, lc) in &config.listeners {
            let built = build_listener(lc, &backends)?;
            let (tcp, address) = bind_addr(&format!("listeners.{name}.listen"), lc.listen).await?;
            metrics.register_listener(name);
            listeners.push(Bound { name: name.clone(), address, tcp, built });
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
        let refusals = RefusalLog::new();
        let services = Services { metrics: metrics.clone(), force_abort: CancellationToken::new(), refusals };
        let summaries_stop = CancellationToken::new();
        let summaries = services.refusals.spawn_summaries(summaries_stop.clone());
        crate::listener::raise_nofile_limit(
            config.listeners.values().map(|l| crate::listener::descriptors_needed(l.max_connections)).sum(),
        );
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
                    match reload_config(&config, &mut slots, &metrics, &services, &tracker, &health).await {
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
        summaries_stop.cancel();
        let _ = summaries.await;
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
    health: &HealthRegistry,
) -> Result<(Config, Backends), ServeError> {
    let path = current.source.as_ref().ok_or(ServeError::NoConfigFile)?;
    let new = Config::load(path)?;
    let backends = build_backends(&new, health)?;

    // Prepare everything that can fail before changing anything.
    let mut prepared = Vec::new();
    for (name, lc) in &new.listeners {
        let built = build_listener(lc, &backends)?;
        let rebind = slots.get(name).is_none_or(|s| s.configured != lc.listen);
        let socket = if rebind { Some(bind_addr(&format!("listeners.{name}.listen"), lc.listen).await?) } else { None };
        prepared.push((name.clone(), built, socket));
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
                // The same counts, new numbers: live connections keep counting.
                let limits = slot.publish.borrow().limits.clone();
                limits.resize(max);
                slot.publish.send_replace(Snapshot { runtime: built.runtime, limits });
            }
            (Some((tcp, address)), existing) => {
                // A moved listener keeps counting the connections it accepted at its old address.
                let limits = match existing {
                    Some(old) => {
                        old.stop.cancel();
                        tracing::info!(listener = %name, from = %old.bound, to = %address, "listener moved");
                        let limits = old.publish.borrow().limits.clone();
                        limits.resize(max);
                        limits
                    }
                    None => Limits::new(max),
                };
                metrics.register_listener(&name);
                banner(&name, address, &built, metrics);
                let (name, slot) = start_listener(Bound { name, address, tcp, built }, limits, services, tracker);
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
fn banner(name: &str, address: SocketAddr, built: &Built, metrics: &Metrics) {
    let cfg = &built.runtime.config;
    let routes: Vec<String> = cfg
        .routes
        .exact
        .iter()
        .map(|(ae, b)| format!("{ae}→{b}"))
        .chain(cfg.routes.fallback.iter().map(|b| format!("*→{b}")))
        .collect();
    let allow: Vec<String> = cfg.allow.iter().map(|n| n.to_string()).collect();
    let routes = routes.join(",");
    let allow = allow.join(",");
    match (&cfg.security, &built.certificate) {
        (Security::Tls(t), Some(cert)) => {
            metrics.set_certificate_expiry(name, cert.not_after.unix_timestamp());
            let scu = if t.client_auth.required() { "Authenticated" } else { "Anonymous" };
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

/// Every backend's runtime; servers keep their health state from `health`
/// where their probe is unchanged.
fn build_backends(config: &Config, health: &HealthRegistry) -> Result<Backends, ServeError> {
    let mut out = BTreeMap::new();
    for (name, bc) in &config.backends {
        let tls = match &bc.tls {
            Some(t) => {
                Some(tls::backend_tls(t).map_err(|source| ServeError::BackendTls { backend: name.clone(), source })?)
            }
            None => None,
        };
        let health = health.health_for(bc);
        out.insert(name.clone(), Arc::new(BackendRuntime { config: bc.clone(), tls, health }));
    }
    Ok(out)
}

fn build_listener(lc: &Arc<ListenerConfig>, backends: &Backends) -> Result<Built, ServeError> {
    let (acceptor, certificate) = match &lc.security {
        Security::Plaintext => (None, None),
        Security::Tls(t) => {
            let err = |source| ServeError::ListenerTls { listener: lc.name.clone(), source };
            if let Some(fingerprint) = tls::ensure_generated(t).map_err(err)? {
                tracing::warn!(
                    listener = %lc.name,
                    certificate = %t.certificate.display(),
                    sha256 = %fingerprint,
                    "generated a self-signed certificate (generate_if_missing): upload this certificate file to the cloud"
                );
            }
            let identity = ServerIdentity::load(&t.certificate, &t.private_key).map_err(err)?;
            let certificate = identity.chain.first().and_then(|c| pki::inspect_certificate(c).ok());
            // An expired certificate is refused at start and on reload (the
            // old configuration keeps serving): a TLS peer that checks dates
            // cannot connect, and one that does not should not be relied on.
            if let Some(cert) = certificate.as_ref().filter(|c| c.days_left() < 0) {
                return Err(err(TlsError::Expired { path: t.certificate.clone(), not_after: cert.validity_text().1 }));
            }
            let config = tls::server_config(t, &identity).map_err(err)?;
            (Some(TlsAcceptor::from(config)), certificate)
        }
    };
    // Only the backends this listener routes to.
    let routed = lc.routes.exact.values().chain(lc.routes.fallback.iter());
    let backends = routed.filter_map(|b| backends.get(b).map(|rt| (b.clone(), rt.clone()))).collect();
    Ok(Built { runtime: Arc::new(ListenerRuntime { config: lc.clone(), acceptor, backends }), certificate })
}
