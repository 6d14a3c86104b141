//! The gateway as a whole: builds the runtime from a [`Config`] (generating
//! and loading certificates), binds every listener and the admin endpoint,
//! serves, reloads on request, and on shutdown drains: stop accepting, let
//! live associations finish for the grace period, A-ABORT the rest.
//!
//! Reload (SIGHUP) is all or nothing, see `server/reload.rs`; live associations keep
//! the snapshot they started with. SIGUSR2 hands the sockets to a new
//! process ([`crate::lifecycle::upgrade`]) and then drains as on SIGTERM.

mod crls;
mod reload;

use reload::reload_config;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::status::{ListenerView, StatusBoard};
use crate::atna::{self, AtnaError, AuditSink};
use crate::backend::{HealthRegistry, Monitors};
use crate::config::{Config, ConfigError, Security};
use crate::connection::Services;
use crate::lifecycle::sockets::{Inherited, SocketError, ADMIN_FD_NAME};
use crate::lifecycle::upgrade::{self, Relauncher};
use crate::lifecycle::{Lifecycle, State};
use crate::listener::{accept_loop, Limits, RefusalLog, Snapshot};
use crate::metrics::Metrics;
use crate::prepare::{self, Backends, Generation, PrepareError, Prepared, PreparedListener};
use crate::recent::RecentAssociations;

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
    #[error("{0}")]
    Audit(#[from] AtnaError),
    #[error("{0}")]
    Socket(#[from] SocketError),
    #[error("reload: the configuration was not loaded from a file, so there is nothing to re-read")]
    NoConfigFile,
    #[error("reload: loading the new configuration failed unexpectedly: {0}")]
    ReloadTask(#[from] tokio::task::JoinError),
}

/// A listening socket, with a duplicate of its fd kept for handing to a
/// new process on SIGUSR2 (the accept loop owns the `tcp`).
struct Socket {
    tcp: TcpListener,
    address: SocketAddr,
    fd: OwnedFd,
}

struct Bound {
    name: String,
    socket: Socket,
    built: PreparedListener,
}

impl Bound {
    fn view(&self) -> ListenerView {
        let built = &self.built;
        ListenerView::new(&built.runtime.config, self.socket.address, built.certificate.as_ref(), &built.crls.infos)
    }
}

/// A running listener, as the reload logic sees it.
struct Slot {
    /// The configured `listen` address (may have port 0; `bound` is real).
    configured: SocketAddr,
    bound: SocketAddr,
    fd: OwnedFd,
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
    admin: Option<Socket>,
    backends: Backends,
    health: Arc<HealthRegistry>,
    board: Arc<StatusBoard>,
    atna: AuditSink,
    /// An upgraded process's channel to report readiness to its parent.
    ready_report: Option<UnixDatagram>,
    upgrade: Option<(mpsc::Receiver<()>, Relauncher)>,
}

impl Gateway {
    /// Generates missing certificates where asked, loads all TLS material and
    /// binds every listener and the admin endpoint. On error nothing is left
    /// listening.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Gateway, ServeError> {
        Self::bind_with(config, metrics, Inherited::none()).await
    }

    /// As [`Gateway::bind`], but a listener (or the admin endpoint, as
    /// "admin") whose name is among the `inherited` sockets uses that socket
    /// instead of binding; a passed socket no listener claims is an error.
    pub async fn bind_with(config: Config, metrics: Metrics, mut inherited: Inherited) -> Result<Gateway, ServeError> {
        let health = Arc::new(HealthRegistry::new());
        let Prepared { backends, listeners: prepared } = prepare::gateway(&config, &health, Generation::Create)?;
        let audit = atna::Prepared::new(&config)?;
        let mut known: Vec<&str> = config.listeners.keys().map(String::as_str).collect();
        known.extend(config.admin.as_ref().map(|_| ADMIN_FD_NAME));
        inherited.check_names(&known)?;
        let mut listeners = Vec::new();
        for (name, built) in prepared {
            let listen = built.runtime.config.listen;
            let key = format!("listeners.{name}.listen");
            let passed = inherited.take_listener(&name, &key, listen)?;
            let socket = listen_on(&key, listen, passed).await?;
            metrics.register_listener(&name);
            listeners.push(Bound { name, socket, built });
        }
        let admin = match &config.admin {
            Some(a) => {
                let passed = inherited.take_listener(ADMIN_FD_NAME, "admin.listen", a.listen)?;
                Some(listen_on("admin.listen", a.listen, passed).await?)
            }
            None => None,
        };
        let board = Arc::new(StatusBoard::new(health.clone(), Arc::new(RecentAssociations::new())));
        board.set_listeners(listeners.iter().map(|b| b.view()));
        let ready_report = inherited.take_ready_channel();
        let lifecycle = Arc::new(Lifecycle::new());
        // Last, once nothing can fail: it starts the delivery task.
        let atna = AuditSink::start(audit, metrics.clone());
        Ok(Gateway {
            config,
            metrics,
            lifecycle,
            listeners,
            admin,
            backends,
            health,
            board,
            atna,
            ready_report,
            upgrade: None,
        })
    }

    /// Enables the hitless upgrade: each message on `requests` (SIGUSR2)
    /// starts a new process with `relauncher` and hands over to it.
    pub fn with_upgrade(mut self, requests: mpsc::Receiver<()>, relauncher: Relauncher) -> Gateway {
        self.upgrade = Some((requests, relauncher));
        self
    }

    /// The backend servers' health (the `/status` view).
    pub fn health(&self) -> Arc<HealthRegistry> {
        self.health.clone()
    }

    /// What the status page and `/status` show.
    pub fn status_board(&self) -> Arc<StatusBoard> {
        self.board.clone()
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.socket.address)
    }

    /// The bound address of the admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.address)
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
        let Gateway {
            mut config,
            metrics,
            lifecycle,
            listeners,
            admin,
            backends,
            health,
            board,
            atna,
            mut ready_report,
            upgrade,
        } = self;
        let (mut upgrade_requests, relauncher) = upgrade.map_or((None, None), |(r, l)| (Some(r), Some(Arc::new(l))));
        let mut upgrading = None;
        let admin_fd = admin.as_ref().and_then(|a| a.fd.try_clone().ok());
        let tracker = TaskTracker::new();
        let services = Services {
            metrics: metrics.clone(),
            force_abort: CancellationToken::new(),
            recent: board.recent.clone(),
            atna: atna.clone(),
            refusals: RefusalLog::new(),
        };
        let summaries_stop = CancellationToken::new();
        let summaries = services.refusals.spawn_summaries(summaries_stop.clone());
        crate::listener::raise_nofile_limit(
            config.listeners.values().map(|l| crate::listener::descriptors_needed(l.max_connections)).sum(),
        );
        let admin_stop = CancellationToken::new();
        let admin_task = admin.map(|Socket { address, tcp, .. }| {
            let allow = Arc::new(config.admin.clone().unwrap_or_else(|| (*crate::admin::loopback_only()).clone()));
            let nets: Vec<String> = allow.allow.iter().map(|n| n.to_string()).collect();
            tracing::info!(%address, allow = %nets.join(","), "admin endpoint listening (/, /status, /metrics, /healthz, /readyz)");
            let ctx = crate::admin::AdminContext {
                metrics: metrics.clone(),
                state: lifecycle.subscribe(),
                board: board.clone(),
                allow,
            };
            tokio::spawn(crate::admin::serve_with(tcp, ctx, admin_stop.clone()))
        });

        let mut slots = BTreeMap::new();
        for b in listeners {
            banner(&b.name, b.socket.address, &b.built, &metrics);
            let limits = Limits::new(b.built.runtime.config.max_connections);
            let slot = start_listener(b, limits, &services, &tracker);
            slots.insert(slot.0, slot.1);
        }
        health.publish(&backends, &metrics);
        crls::publish(&board, &metrics);
        let mut monitors = Monitors::start(backends.values(), &metrics);
        lifecycle.set(State::Ready);
        tracing::info!(pid = std::process::id(), "dicomgate ready");
        atna.application_started();
        if let Some(channel) = ready_report.take() {
            upgrade::report_ready(&channel);
        }

        tokio::pin!(shutdown);
        let mut handed_over = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = upgrade::next_request(&mut upgrade_requests) => {
                    let sockets = slots.iter().map(|(n, s)| (n.as_str(), &s.fd));
                    let sockets = sockets.chain(admin_fd.iter().map(|fd| (ADMIN_FD_NAME, fd)));
                    upgrade::start(&mut upgrading, relauncher.as_ref(), sockets);
                }
                pid = upgrade::finished(&mut upgrading) => {
                    if let Some(pid) = pid {
                        tracing::info!(pid, "upgrade: the new process is ready; this one stops accepting and drains");
                        handed_over = true;
                        break;
                    }
                }
                // Not during an upgrade: the new process reads the file itself.
                Some(()) = reload.recv(), if upgrading.is_none() => {
                    lifecycle.set(State::Reloading);
                    match reload_config(&config, &mut slots, &metrics, &services, &tracker, health.clone()).await {
                        Ok((new, backends, views, audit)) => {
                            board.set_listeners(views);
                            board.reload_finished(None);
                            config = new;
                            atna.apply(audit);
                            atna.config_reloaded(Ok(()));
                            // Dropping the old monitors stops them.
                            health.publish(&backends, &metrics);
                            crls::publish(&board, &metrics);
                            monitors = Monitors::start(backends.values(), &metrics);
                            metrics.config_reload(true);
                        }
                        Err(e) => {
                            metrics.config_reload(false);
                            board.reload_finished(Some(e.to_string()));
                            atna.config_reloaded(Err(e.to_string()));
                            tracing::error!("reload failed, still serving the previous configuration:\n{e}");
                        }
                    }
                    lifecycle.set(State::Ready);
                }
            }
        }

        if let Some(task) = upgrading.take() {
            // Dropping the launch kills a new process that is not ready yet.
            task.abort();
        }
        // Our spare copy only: the admin task keeps answering (503) while we drain.
        drop(admin_fd);
        if handed_over {
            lifecycle.hand_over();
            // The new process answers on the shared admin socket from now on.
            admin_stop.cancel();
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
        atna.application_stopped();
        atna.close(atna::FLUSH_AT_EXIT).await;
        Ok(())
    }
}

/// Uses the socket passed for `key` (already checked against `address`),
/// or binds `address`.
async fn listen_on(
    key: &str,
    address: SocketAddr,
    passed: Option<std::net::TcpListener>,
) -> Result<Socket, ServeError> {
    let err = |source| ServeError::Bind { key: key.to_owned(), address, source };
    let tcp = match passed {
        Some(std) => {
            std.set_nonblocking(true).map_err(err)?;
            tracing::info!(key, "using the listening socket passed to this process");
            TcpListener::from_std(std).map_err(err)?
        }
        None => TcpListener::bind(address).await.map_err(err)?,
    };
    let bound = tcp.local_addr().map_err(err)?;
    let fd = tcp.as_fd().try_clone_to_owned().map_err(err)?;
    Ok(Socket { tcp, address: bound, fd })
}

fn start_listener(b: Bound, limits: Limits, services: &Services, tracker: &TaskTracker) -> (String, Slot) {
    let configured = b.built.runtime.config.listen;
    let (publish, snapshot) = watch::channel(Snapshot { runtime: b.built.runtime, limits });
    let stop = CancellationToken::new();
    let Socket { tcp, address, fd } = b.socket;
    let task = tokio::spawn(accept_loop(tcp, snapshot, services.clone(), tracker.clone(), stop.clone()));
    (b.name, Slot { configured, bound: address, fd, publish, stop, task })
}

/// The startup banner line for one listener (also after each reload).
fn banner(name: &str, address: SocketAddr, built: &PreparedListener, metrics: &Metrics) {
    let cfg = &built.runtime.config;
    metrics.set_connection_limit(name, cfg.max_connections);
    let prepare::Description { allow, routes, scu, .. } = prepare::describe(cfg);
    let scu = scu.unwrap_or("-");
    if let Security::Tls(tls) = &cfg.security {
        // As `check` does: a key others can read is a key others may have.
        if let Some(mode) = crate::config::key_readable_by_others(&tls.private_key) {
            tracing::warn!(
                listener = %name, key = %tls.private_key.display(), mode = %format!("{mode:04o}"),
                "listeners.{name}.tls.private_key is readable by group or others; run chmod 600"
            );
        }
    }
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
