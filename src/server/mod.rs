//! The gateway as a whole: [`Gateway::bind`] builds the runtime from a
//! [`Config`] (generating and loading certificates) and binds every listener
//! and the admin endpoint; [`Gateway::run`] is its life, in three named
//! parts (`serving`): start (→ ready), serve (reloads on SIGHUP, hands over
//! on SIGUSR2), drain (→ stopped). The running listeners are `listeners`;
//! SIGHUP's loading is `reload`.

mod crls;
mod listeners;
mod reload;
mod serving;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::admin::status::StatusBoard;
use crate::atna::{self, AtnaError, AuditSink};
use crate::backend::HealthRegistry;
use crate::config::{Config, ConfigError};
use crate::lifecycle::sockets::{Inherited, SocketError, ADMIN_FD_NAME};
use crate::lifecycle::upgrade::Relauncher;
use crate::lifecycle::{Lifecycle, State};
use crate::metrics::Metrics;
use crate::prepare::{self, Backends, Generation, PrepareError, Prepared};
use crate::recent::RecentAssociations;
use listeners::{listen_on, Bound, Socket};

/// The log target of the gateway's own lines (start banner, ready, reload,
/// drain), whichever file of this module writes them: admins filter on it.
const LOG_TARGET: &str = "dicomgate::server";

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
            listeners.push(Bound::new(name, socket, built));
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
        reload: mpsc::Receiver<()>,
    ) -> Result<(), ServeError> {
        let mut serving = self.start();
        let stop = serving.serve(shutdown, reload).await;
        serving.drain(stop).await;
        Ok(())
    }
}
