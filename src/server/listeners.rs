//! The gateway's running listeners: for each, its accept loop, the snapshot
//! a reload publishes to it, and a duplicate of its socket's fd for handing
//! to a new process on SIGUSR2. [`Listeners`] starts them, applies a
//! reload's new set (new addresses bound before anything changes), lists
//! their sockets and stops them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServeError;
use crate::admin::status::ListenerView;
use crate::admission::Limits;
use crate::config::Security;
use crate::connection::Services;
use crate::listener::{accept_loop, Snapshot};
use crate::prepare::{self, PreparedListener};
use crate::report::Outcome;

/// A listening socket, with a duplicate of its fd kept for handing to a
/// new process on SIGUSR2 (the accept loop owns the `tcp`).
pub(super) struct Socket {
    pub tcp: TcpListener,
    pub address: SocketAddr,
    pub fd: OwnedFd,
}

/// Uses the socket passed for `key` (already checked against `address`),
/// or binds `address`.
pub(super) async fn listen_on(
    key: &str,
    address: SocketAddr,
    passed: Option<std::net::TcpListener>,
) -> Result<Socket, ServeError> {
    let err = |source| ServeError::Bind { key: key.to_owned(), address, source };
    let tcp = match passed {
        Some(std) => {
            std.set_nonblocking(true).map_err(err)?;
            tracing::info!(target: super::LOG_TARGET, key, "using the listening socket passed to this process");
            TcpListener::from_std(std).map_err(err)?
        }
        None => TcpListener::bind(address).await.map_err(err)?,
    };
    let bound = tcp.local_addr().map_err(err)?;
    let fd = tcp.as_fd().try_clone_to_owned().map_err(err)?;
    Ok(Socket { tcp, address: bound, fd })
}

/// A listener bound but not yet accepting, with the admission state it
/// will count in (new, or a moved listener's old one).
pub(super) struct Bound {
    pub name: String,
    pub socket: Socket,
    pub built: PreparedListener,
    pub limits: Limits,
}

impl Bound {
    pub fn new(name: String, socket: Socket, built: PreparedListener) -> Bound {
        let limits = Limits::new(built.runtime.config.max_connections);
        Bound { name, socket, built, limits }
    }

    pub fn view(&self) -> ListenerView {
        let built = &self.built;
        let (config, cert) = (&built.runtime.config, built.certificate.as_ref());
        ListenerView::new(config, self.socket.address, cert, &built.crls.infos, self.limits.blocklist.clone())
    }
}

/// One accepting listener.
struct Running {
    /// The configured `listen` address (may have port 0; `bound` is real).
    configured: SocketAddr,
    bound: SocketAddr,
    fd: OwnedFd,
    publish: watch::Sender<Snapshot>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Every running listener, by name.
pub(super) struct Listeners {
    running: BTreeMap<String, Running>,
    services: Services,
    tracker: TaskTracker,
}

impl Listeners {
    /// Starts accepting on every bound listener. Connections are spawned on
    /// `tracker`, which the drain waits on.
    pub fn start(bound: Vec<Bound>, services: Services, tracker: TaskTracker) -> Listeners {
        let mut listeners = Listeners { running: BTreeMap::new(), services, tracker };
        for b in bound {
            banner(&b.name, b.socket.address, &b.built, &listeners.services);
            listeners.start_one(b);
        }
        listeners
    }

    fn start_one(&mut self, b: Bound) {
        let configured = b.built.runtime.config.listen;
        let (publish, snapshot) = watch::channel(Snapshot { runtime: b.built.runtime, limits: b.limits });
        let stop = CancellationToken::new();
        let Socket { tcp, address, fd } = b.socket;
        let loop_ = accept_loop(tcp, snapshot, self.services.clone(), self.tracker.clone(), stop.clone());
        let task = tokio::spawn(loop_);
        self.running.insert(b.name, Running { configured, bound: address, fd, publish, stop, task });
    }

    /// The listening sockets by name, for a SIGUSR2 hand-over.
    pub fn sockets(&self) -> impl Iterator<Item = (&str, &OwnedFd)> {
        self.running.iter().map(|(name, r)| (name.as_str(), &r.fd))
    }

    /// A reload's listeners, all or nothing: every new or moved address is
    /// bound first (an error changes nothing); then unchanged addresses get
    /// the new snapshot for new connections (live ones keep theirs and keep
    /// counting against the limits), moved and added listeners start, and
    /// removed ones stop accepting. Returns the status page's new views.
    pub async fn apply(
        &mut self,
        prepared: BTreeMap<String, PreparedListener>,
    ) -> Result<Vec<ListenerView>, ServeError> {
        let mut rebound = Vec::new();
        for (name, built) in prepared {
            let listen = built.runtime.config.listen;
            let socket = match self.running.get(&name) {
                Some(r) if r.configured == listen => None,
                _ => Some(listen_on(&format!("listeners.{name}.listen"), listen, None).await?),
            };
            rebound.push((name, built, socket));
        }
        let keep: Vec<&str> = rebound.iter().map(|(name, ..)| name.as_str()).collect();
        let removed: Vec<String> = self.running.keys().filter(|n| !keep.contains(&n.as_str())).cloned().collect();
        for name in removed {
            if let Some(r) = self.running.remove(&name) {
                r.stop.cancel();
                tracing::info!(target: super::LOG_TARGET, listener = %name, "listener removed: no new connections; live ones continue");
            }
        }
        let mut views = Vec::new();
        for (name, built, socket) in rebound {
            let max = built.runtime.config.max_connections;
            match socket {
                None => self.republish(name, built, max, &mut views),
                Some(socket) => {
                    // A moved listener keeps counting the connections it accepted at its old address.
                    let limits = match self.running.remove(&name) {
                        Some(old) => {
                            old.stop.cancel();
                            tracing::info!(target: super::LOG_TARGET, listener = %name, from = %old.bound, to = %socket.address, "listener moved");
                            old.publish.borrow().limits.clone()
                        }
                        None => Limits::new(max),
                    };
                    limits.resize(max);
                    banner(&name, socket.address, &built, &self.services);
                    let bound = Bound { name, socket, built, limits };
                    views.push(bound.view());
                    self.start_one(bound);
                }
            }
        }
        Ok(views)
    }

    /// An unchanged address: the new snapshot, the same counts.
    fn republish(&mut self, name: String, built: PreparedListener, max: usize, views: &mut Vec<ListenerView>) {
        let Some(r) = self.running.get(&name) else { return };
        banner(&name, r.bound, &built, &self.services);
        let limits = r.publish.borrow().limits.clone();
        let blocklist = limits.blocklist.clone();
        let (config, cert) = (&built.runtime.config, built.certificate.as_ref());
        views.push(ListenerView::new(config, r.bound, cert, &built.crls.infos, blocklist));
        limits.resize(max);
        r.publish.send_replace(Snapshot { runtime: built.runtime, limits });
    }

    /// SIGHUP: every listener forgets the sources its guessing protection
    /// counts or blocks. Returns how many were blocked.
    pub fn clear_blocks(&self) -> usize {
        let now = tokio::time::Instant::now();
        self.running.values().map(|r| r.publish.borrow().limits.blocklist.clear(now)).sum()
    }

    /// Stops accepting everywhere and waits for the accept loops to end
    /// (live connections go on, on the tracker).
    pub async fn stop(self) {
        for r in self.running.values() {
            r.stop.cancel();
        }
        for (_, r) in self.running {
            let _ = r.task.await;
        }
    }
}

/// The startup banner line for one listener (also after each reload), its
/// metrics' series, and what an admin must hear about its certificate.
fn banner(name: &str, address: SocketAddr, built: &PreparedListener, services: &Services) {
    let (cfg, metrics) = (&built.runtime.config, &services.metrics);
    metrics.register_listener(name, Outcome::labels());
    metrics.set_connection_limit(name, cfg.max_connections);
    let prepare::Description { allow, routes, scu, .. } = prepare::describe(cfg);
    let scu = scu.unwrap_or("-");
    let Security::Tls(tls) = &cfg.security else {
        tracing::warn!(
            target: super::LOG_TARGET,
            listener = %name, %address, security = "UNSECURED", %allow, %routes,
            "listening WITHOUT TLS (insecure_plaintext): test data only, never patient data"
        );
        return;
    };
    match &built.certificate {
        Some(cert) => {
            metrics.set_certificate_expiry(name, cert.not_after.unix_timestamp());
            tracing::info!(
                target: super::LOG_TARGET,
                listener = %name, %address, security = "Secured", %allow, %routes,
                subject = %cert.subject, expires = %cert.not_after, days_left = cert.days_left(),
                sha256 = %cert.fingerprint_sha256, scu, "listening"
            );
        }
        None => {
            tracing::info!(target: super::LOG_TARGET, listener = %name, %address, security = "Secured", %allow, %routes, "listening")
        }
    }
    for finding in prepare::findings(name, built.certificate.as_ref(), &tls.private_key) {
        tracing::warn!(target: super::LOG_TARGET, listener = %name, "{finding}");
    }
}
