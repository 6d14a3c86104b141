//! The gateway's life after binding (docs/architecture.md, "Lifecycle"):
//! [`Gateway::start`] (starting → ready), [`Serving::serve`] (ready ⇄
//! reloading, until a shutdown or a finished SIGUSR2 hand-over) and
//! [`Serving::drain`] (draining → stopped).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listeners::{Listeners, Socket};
use super::{reload, Gateway, ServeError};
use crate::admin::status::StatusBoard;
use crate::admin::AdminContext;
use crate::atna;
use crate::backend::{HealthRegistry, Monitors};
use crate::config::Config;
use crate::connection::Services;
use crate::lifecycle::sockets::ADMIN_FD_NAME;
use crate::lifecycle::upgrade::{self, Launch, Relauncher};
use crate::lifecycle::{Lifecycle, State};
use crate::listener::{descriptors_needed, raise_nofile_limit};
use crate::metrics::Metrics;
use crate::refusals::RefusalLog;

/// After the grace period and the A-ABORTs, how long closes may take.
const FINAL_CLOSE: Duration = Duration::from_secs(5);

/// A gateway that is serving.
pub(super) struct Serving {
    config: Config,
    lifecycle: Arc<Lifecycle>,
    listeners: Listeners,
    admin: Admin,
    health: Arc<HealthRegistry>,
    board: Arc<StatusBoard>,
    monitors: Monitors,
    services: Services,
    /// Every connection task; the drain waits on it.
    tracker: TaskTracker,
    /// The refusal log's summary task.
    summaries: (JoinHandle<()>, CancellationToken),
    upgrade: Upgrade,
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// SIGTERM / SIGINT (or the caller's shutdown future).
    Requested,
    /// A new process (SIGUSR2) is ready and serves on our sockets.
    HandedOver,
}

/// The admin endpoint's task, and a duplicate of its socket for a SIGUSR2
/// hand-over.
struct Admin {
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
    fd: Option<OwnedFd>,
}

/// SIGUSR2: the requests, how to start the new process, the launch in progress.
struct Upgrade {
    requests: Option<mpsc::Receiver<()>>,
    relauncher: Option<Arc<Relauncher>>,
    launch: Option<Launch>,
}

impl Gateway {
    /// Starting → ready: the admin endpoint, the listeners, the health
    /// monitors; then READY (to systemd, and to a parent process that is
    /// handing over to this one).
    pub(super) fn start(self) -> Serving {
        let Gateway {
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
            upgrade,
        } = self;
        let services = Services {
            metrics: metrics.clone(),
            force_abort: CancellationToken::new(),
            recent: board.recent.clone(),
            atna: atna.clone(),
            refusals: RefusalLog::new(),
        };
        let summaries_stop = CancellationToken::new();
        let summaries = (services.refusals.spawn_summaries(summaries_stop.clone(), atna.clone()), summaries_stop);
        let blocked = board.clone();
        metrics.read_sources_blocked(Box::new(move || blocked.sources_blocked()));
        raise_nofile_limit(config.listeners.values().map(|l| descriptors_needed(l.max_connections)).sum());
        let admin = Admin::start(admin, &config, &metrics, &lifecycle, &board);
        let tracker = TaskTracker::new();
        let listeners = Listeners::start(listeners, services.clone(), tracker.clone());
        health.publish(&backends, &metrics);
        super::crls::publish(&board, &metrics);
        let monitors = Monitors::start(backends.values(), &metrics);
        lifecycle.set(State::Ready);
        tracing::info!(target: super::LOG_TARGET, pid = std::process::id(), "dicomgate ready");
        atna.application_started();
        if let Some(channel) = ready_report {
            upgrade::report_ready(&channel);
        }
        let (requests, relauncher) = upgrade.map_or((None, None), |(r, l)| (Some(r), Some(Arc::new(l))));
        let upgrade = Upgrade { requests, relauncher, launch: None };
        Serving { config, lifecycle, listeners, admin, health, board, monitors, services, tracker, summaries, upgrade }
    }
}

impl Serving {
    /// Ready: serves until `shutdown` completes or a SIGUSR2 hand-over is
    /// done; each message on `reload` (SIGHUP) re-reads the configuration.
    pub(super) async fn serve(&mut self, shutdown: impl Future<Output = ()>, mut reload: mpsc::Receiver<()>) -> Stop {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Stop::Requested,
                Some(()) = upgrade::next_request(&mut self.upgrade.requests) => {
                    let admin = self.admin.fd.iter().map(|fd| (ADMIN_FD_NAME, fd));
                    upgrade::start(&mut self.upgrade.launch, self.upgrade.relauncher.as_ref(), self.listeners.sockets().chain(admin));
                }
                pid = upgrade::finished(&mut self.upgrade.launch) => {
                    if let Some(pid) = pid {
                        tracing::info!(target: super::LOG_TARGET, pid, "upgrade: the new process is ready; this one stops accepting and drains");
                        return Stop::HandedOver;
                    }
                }
                // Not during an upgrade: the new process reads the file itself.
                Some(()) = reload.recv(), if self.upgrade.launch.is_none() => self.reload().await,
            }
        }
    }

    /// SIGHUP: all or nothing; a failure keeps the running configuration.
    /// Either way, the guessing protection forgets every source: SIGHUP is
    /// how an admin unblocks a source at once, whatever the file says.
    async fn reload(&mut self) {
        self.lifecycle.set(State::Reloading);
        let unblocked = self.listeners.clear_blocks();
        if unblocked > 0 {
            tracing::info!(target: super::LOG_TARGET, unblocked, "SIGHUP: sources blocked by the guessing protection are unblocked");
        }
        let result = self.apply_reload().await;
        self.services.metrics.config_reload(result.is_ok());
        if let Err(e) = result {
            self.board.reload_finished(Some(e.to_string()));
            self.services.atna.config_reloaded(Err(e.to_string()));
            tracing::error!(target: super::LOG_TARGET, "reload failed, still serving the previous configuration:\n{e}");
        }
        self.lifecycle.set(State::Ready);
    }

    async fn apply_reload(&mut self) -> Result<(), ServeError> {
        let new = reload::load(&self.config, self.health.clone()).await?;
        let views = self.listeners.apply(new.listeners).await?;
        reload::warn_restart_only(&self.config, &new.config);
        let file = new.config.source.as_deref().unwrap_or(std::path::Path::new("-"));
        tracing::info!(target: super::LOG_TARGET, file = %file.display(), listeners = new.config.listeners.len(), "configuration reloaded");
        self.board.set_listeners(views);
        self.board.reload_finished(None);
        self.services.atna.apply(new.audit);
        self.services.atna.config_reloaded(Ok(()));
        self.health.publish(&new.backends, &self.services.metrics);
        super::crls::publish(&self.board, &self.services.metrics);
        // Dropping the old monitors stops them.
        self.monitors = Monitors::start(new.backends.values(), &self.services.metrics);
        self.config = new.config;
        Ok(())
    }

    /// Draining → stopped: stop accepting, let live associations finish for
    /// `shutdown.grace_period`, A-ABORT the rest, flush the audit trail.
    /// After a hand-over the admin endpoint is the new process's at once.
    pub(super) async fn drain(self, stop: Stop) {
        let Serving {
            config, lifecycle, listeners, mut admin, monitors, services, tracker, summaries, upgrade, ..
        } = self;
        if let Some(launch) = upgrade.launch {
            // Dropping the launch kills a new process that is not ready yet.
            launch.abort();
        }
        // Our spare copy only: the admin task keeps answering (503) while we drain.
        admin.fd = None;
        if stop == Stop::HandedOver {
            lifecycle.hand_over();
            admin.stop.cancel();
        }
        lifecycle.set(State::Draining);
        monitors.stop();
        listeners.stop().await;
        drain_associations(&tracker, config.shutdown.grace_period, &services.force_abort).await;
        lifecycle.set(State::Stopped);
        summaries.1.cancel();
        let _ = summaries.0.await;
        admin.stop().await;
        tracing::info!(target: super::LOG_TARGET, "dicomgate stopped");
        services.atna.application_stopped();
        services.atna.close(atna::FLUSH_AT_EXIT).await;
    }
}

/// Waits for the live connections for `grace`, then A-ABORTs the rest and
/// gives their closes [`FINAL_CLOSE`].
async fn drain_associations(tracker: &TaskTracker, grace: Duration, force_abort: &CancellationToken) {
    tracker.close();
    tracing::info!(target: super::LOG_TARGET, live = tracker.len(), ?grace, "stopped accepting; draining live associations");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(target: super::LOG_TARGET, live = tracker.len(), "grace period over; sending A-ABORT to the remaining associations");
        force_abort.cancel();
        let _ = tokio::time::timeout(FINAL_CLOSE, tracker.wait()).await;
    }
}

impl Admin {
    fn start(
        socket: Option<Socket>,
        config: &Config,
        metrics: &Metrics,
        lifecycle: &Lifecycle,
        board: &Arc<StatusBoard>,
    ) -> Admin {
        let stop = CancellationToken::new();
        let Some(Socket { tcp, address, fd }) = socket else { return Admin { task: None, stop, fd: None } };
        let allow = Arc::new(config.admin.clone().unwrap_or_else(|| (*crate::admin::loopback_only()).clone()));
        let nets: Vec<String> = allow.allow.iter().map(|n| n.to_string()).collect();
        tracing::info!(target: super::LOG_TARGET, %address, allow = %nets.join(","), "admin endpoint listening (/, /status, /metrics, /healthz, /readyz)");
        let ctx = AdminContext { metrics: metrics.clone(), state: lifecycle.subscribe(), board: board.clone(), allow };
        let task = tokio::spawn(crate::admin::serve_with(tcp, ctx, stop.clone()));
        Admin { task: Some(task), stop, fd: Some(fd) }
    }

    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}
