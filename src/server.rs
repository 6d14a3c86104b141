//! The gateway as a whole: builds the runtime snapshot from a [`Config`]
//! (generating and loading certificates), binds every listener, serves until
//! shutdown, then drains: stop accepting, let live associations finish for
//! the grace period, A-ABORT the rest.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::BackendRuntime;
use crate::config::{Config, ListenerConfig, Security};
use crate::connection::{ListenerRuntime, Services};
use crate::listener::{accept_loop, Limits};
use crate::metrics::Metrics;
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
    #[error("listeners.{listener}.listen: cannot listen on {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct BoundListener {
    name: String,
    address: SocketAddr,
    tcp: TcpListener,
    runtime: Arc<ListenerRuntime>,
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    config: Config,
    metrics: Metrics,
    listeners: Vec<BoundListener>,
}

impl Gateway {
    /// Generates missing certificates where asked, loads all TLS material and
    /// binds every listener. On error nothing is left listening.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Gateway, ServeError> {
        let backends = build_backends(&config)?;
        let mut listeners = Vec::new();
        for (name, lc) in &config.listeners {
            let runtime = Arc::new(build_listener(lc, &backends)?);
            let tcp = TcpListener::bind(lc.listen).await.map_err(|source| ServeError::Bind {
                listener: name.clone(),
                address: lc.listen,
                source,
            })?;
            let address = tcp.local_addr().map_err(|source| ServeError::Bind {
                listener: name.clone(),
                address: lc.listen,
                source,
            })?;
            metrics.register_listener(name);
            listeners.push(BoundListener { name: name.clone(), address, tcp, runtime });
        }
        Ok(Gateway { config, metrics, listeners })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.address)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes, then stops accepting and drains live
    /// associations for `shutdown.grace_period` before aborting the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let services = Services { metrics: self.metrics.clone(), force_abort: CancellationToken::new() };
        let mut accept_loops = Vec::new();
        for l in self.listeners {
            banner(&l);
            let limits = Limits::new(l.runtime.config.max_connections);
            // The sender side is where a reload will publish new snapshots.
            let (_publish, snapshot) = watch::channel(l.runtime);
            accept_loops.push(tokio::spawn(accept_loop(
                l.tcp,
                snapshot,
                limits,
                services.clone(),
                tracker.clone(),
                stop_accepting.clone(),
            )));
        }
        tracing::info!("dicomgate ready");

        shutdown.await;
        stop_accepting.cancel();
        for task in accept_loops {
            let _ = task.await;
        }
        tracker.close();
        let grace = self.config.shutdown.grace_period;
        tracing::info!(live = tracker.len(), ?grace, "stopped accepting; draining live associations");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(live = tracker.len(), "grace period over; sending A-ABORT to the remaining associations");
            services.force_abort.cancel();
            let _ = tokio::time::timeout(FINAL_CLOSE, tracker.wait()).await;
        }
        tracing::info!("dicomgate stopped");
        Ok(())
    }
}

fn banner(l: &BoundListener) {
    let cfg = &l.runtime.config;
    let routes: Vec<String> = cfg
        .routes
        .exact
        .iter()
        .map(|(ae, b)| format!("{ae}→{b}"))
        .chain(cfg.routes.fallback.iter().map(|b| format!("*→{b}")))
        .collect();
    let allow: Vec<String> = cfg.allow.iter().map(|n| n.to_string()).collect();
    match &cfg.security {
        Security::Tls(_) => tracing::info!(
            listener = %l.name, address = %l.address, security = "Secured",
            allow = %allow.join(","), routes = %routes.join(","), "listening"
        ),
        Security::Plaintext => tracing::warn!(
            listener = %l.name, address = %l.address, security = "UNSECURED",
            allow = %allow.join(","), routes = %routes.join(","),
            "listening WITHOUT TLS (insecure_plaintext): test data only, never patient data"
        ),
    }
}

fn build_backends(config: &Config) -> Result<BTreeMap<String, Arc<BackendRuntime>>, ServeError> {
    let mut out = BTreeMap::new();
    for (name, bc) in &config.backends {
        let tls = match &bc.tls {
            Some(t) => {
                Some(tls::backend_tls(t).map_err(|source| ServeError::BackendTls { backend: name.clone(), source })?)
            }
            None => None,
        };
        out.insert(name.clone(), Arc::new(BackendRuntime { config: bc.clone(), tls }));
    }
    Ok(out)
}

fn build_listener(
    lc: &Arc<ListenerConfig>,
    backends: &BTreeMap<String, Arc<BackendRuntime>>,
) -> Result<ListenerRuntime, ServeError> {
    let acceptor = match &lc.security {
        Security::Plaintext => None,
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
            let config = tls::server_config(t, &identity).map_err(err)?;
            Some(TlsAcceptor::from(config))
        }
    };
    // Only the backends this listener routes to.
    let routed = lc.routes.exact.values().chain(lc.routes.fallback.iter());
    let backends = routed.filter_map(|b| backends.get(b).map(|rt| (b.clone(), rt.clone()))).collect();
    Ok(ListenerRuntime { config: lc.clone(), acceptor, backends })
}
