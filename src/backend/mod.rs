//! Backends: connect to a backend's servers with failover, each attempt under
//! the connect deadline, plain TCP or DICOM-TLS towards the SCP; and the
//! health monitor ([`health`]) whose verdicts order the attempts.
//!
//! Selection (docs/architecture.md, "Data flow"): servers the monitor has not marked down,
//! in configured order, then the servers marked down, in configured order —
//! a monitor can be wrong (or slow to notice a recovery), so a down server is
//! still worth one try when nothing else answers. A failed connect falls
//! through to the next server within the same association attempt; when every
//! server fails the caller answers A-ASSOCIATE-RJ 2/3/1. A connect that
//! fails at layer 4 (refused, unreachable, timed out) also marks a monitored
//! server down at once ([`health::ServerHealth::connect_failed`]), so the
//! next association does not wait on a black-holed server again.

pub mod health;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{BackendConfig, ServerAddress};
use crate::tls::{BackendTls, Stream};
pub use health::{BackendHealth, HealthRegistry, Monitors, ServerState};

/// A backend with its loaded TLS client configuration and the health of its
/// servers (shared with the monitor and kept across reloads).
#[derive(Debug)]
pub struct BackendRuntime {
    pub config: Arc<BackendConfig>,
    pub tls: Option<BackendTls>,
    pub health: Arc<BackendHealth>,
}

/// A connected backend server.
pub struct Connected {
    pub stream: Stream,
    pub server: ServerAddress,
}

/// Why one backend server could not be used. Side: the SCP; phase: backend
/// connect (TCP, then the DICOM-TLS handshake when configured).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, reset (or the socket could not be set up).
    #[error("{0}")]
    Tcp(#[source] std::io::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    ServerName(#[from] UncheckableHost),
    /// The SCP's certificate was refused, or it sent an alert.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
}

impl ConnectError {
    /// Whether the server did not take the connection at all (refused,
    /// unreachable, no answer in time) — what HAProxy's `observe layer4`
    /// counts. A TLS failure is the SCP's configuration, which the echo
    /// monitor judges; a bad `server_name` is ours.
    pub fn is_layer4(&self) -> bool {
        matches!(self, ConnectError::Tcp(_) | ConnectError::Timeout(_))
    }
}

/// A server host that no certificate can be checked against.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host:?} cannot be checked against a certificate; set tls.server_name")]
pub struct UncheckableHost {
    pub host: String,
}

/// One failed attempt.
#[derive(Debug)]
pub struct Attempt {
    pub server: ServerAddress,
    /// The health check had marked it down (tried as a last resort).
    pub marked_down: bool,
    pub error: ConnectError,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.server, self.error)?;
        if self.marked_down {
            f.write_str(" (marked down by the health check)")?;
        }
        Ok(())
    }
}

/// Every server failed; one entry per attempt, in the order tried.
#[derive(Debug)]
pub struct ConnectFailure {
    pub attempts: Vec<Attempt>,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.attempts.iter().map(Attempt::to_string).collect();
        write!(f, "no backend server reachable ({})", parts.join("; "))
    }
}

impl std::error::Error for ConnectFailure {}

impl BackendRuntime {
    /// A runtime whose servers have no verdict yet (tests and `check`); the
    /// daemon takes its health from a [`HealthRegistry`] instead.
    pub fn new(config: Arc<BackendConfig>, tls: Option<BackendTls>) -> BackendRuntime {
        let health = Arc::new(BackendHealth::unchecked(&config));
        BackendRuntime { config, tls, health }
    }

    /// Tries the servers in health order (see the module docs); the first
    /// that connects (and completes the TLS handshake, when configured) wins.
    pub async fn connect(&self, connect_timeout: Duration) -> Result<Connected, ConnectFailure> {
        let mut attempts = Vec::new();
        let order = self.health.connect_order();
        if order.first().is_some_and(|&(_, marked_down)| marked_down) {
            tracing::warn!(backend = %self.config.name, "every server is marked down by the health check; trying them anyway");
        }
        for (index, marked_down) in order {
            let Some(server) = self.config.servers.get(index) else { continue };
            let error = match timeout(connect_timeout, self.connect_one(server)).await {
                Ok(Ok(stream)) => {
                    if !attempts.is_empty() {
                        tracing::warn!(backend = %self.config.name, %server, failed = attempts.len(), "failed over to a later backend server");
                    }
                    return Ok(Connected { stream, server: server.clone() });
                }
                Ok(Err(error)) => error,
                Err(_) => ConnectError::Timeout(connect_timeout),
            };
            if error.is_layer4() {
                if let Some(health) = self.health.servers().get(index) {
                    health.connect_failed(&error);
                }
            }
            attempts.push(Attempt { server: server.clone(), marked_down, error });
        }
        Err(ConnectFailure { attempts })
    }

    async fn connect_one(&self, server: &ServerAddress) -> Result<Stream, ConnectError> {
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await.map_err(ConnectError::Tcp)?;
        // DCMTK writes each PDU header and body separately; with Nagle on,
        // every exchange would stall on a delayed ACK (~40 ms).
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::plain(tcp));
        };
        let name = server_name(tls, server)?;
        crate::tls::handshake::connect(tcp, tls.config.clone(), name).await.map_err(ConnectError::Tls)
    }
}

/// The name checked in the SCP's certificate: `tls.server_name`, else the
/// server's host (a DNS name or an IP address).
pub fn server_name(tls: &BackendTls, server: &ServerAddress) -> Result<ServerName<'static>, UncheckableHost> {
    match &tls.server_name {
        Some(name) => Ok(name.clone()),
        None => ServerName::try_from(server.host.clone()).map_err(|_| UncheckableHost { host: server.host.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use std::path::Path;

    fn backend(servers: &[std::net::SocketAddr]) -> BackendRuntime {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let yaml = format!(
            "backends:\n  pacs:\n    ae_title: PACS\n    servers: [{}]\nlisteners:\n  store:\n    listen: 127.0.0.1:0\n    \
             insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    routes: {{PACS: pacs}}\n",
            list.join(", ")
        );
        let config = Config::from_yaml_str(&yaml, Path::new("/")).expect("valid test config");
        BackendRuntime::new(config.backends["pacs"].clone(), None)
    }

    async fn closed_port() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    /// A monitored backend (`mode: echo`, no monitor task running: the tests
    /// play the monitor), published so that failed connects are exported.
    fn monitored(servers: &[std::net::SocketAddr], mode: &str) -> (Arc<BackendRuntime>, Metrics) {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let yaml = format!(
            "backends:\n  pacs:\n    ae_title: PACS\n    servers: [{}]\n    health_check: {{mode: {mode}}}\n\
             listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    \
             routes: {{PACS: pacs}}\n",
            list.join(", ")
        );
        let config = Config::from_yaml_str(&yaml, Path::new("/")).expect("valid test config");
        let config = config.backends["pacs"].clone();
        let registry = HealthRegistry::new();
        let rt = Arc::new(BackendRuntime { health: registry.health_for(&config), config, tls: None });
        let metrics = Metrics::new();
        registry.publish(&std::collections::BTreeMap::from([("pacs".to_owned(), rt.clone())]), &metrics);
        (rt, metrics)
    }

    /// A server that drops SYNs instead of refusing them, on loopback: a
    /// listener whose accept queue (backlog 0: one connection) is full.
    struct BlackHole {
        addr: std::net::SocketAddr,
        _listener: tokio::net::TcpListener,
        _queued: std::net::TcpStream,
    }

    fn black_hole() -> BlackHole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = socket.local_addr().expect("addr");
        let listener = socket.listen(0).expect("listen");
        let queued = std::net::TcpStream::connect(addr).expect("fills the accept queue");
        BlackHole { addr, _listener: listener, _queued: queued }
    }

    const CONNECT: Duration = Duration::from_secs(4);

    #[tokio::test]
    async fn a_black_holed_server_costs_one_connect_timeout_not_one_per_association() {
        let hole = black_hole();
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = up.local_addr().expect("addr");
        let (rt, metrics) = monitored(&[hole.addr, up_addr], "echo");
        tokio::time::pause();

        // The first association after the black hole starts waits it out once…
        let started = tokio::time::Instant::now();
        let c = rt.connect(CONNECT).await.expect("failover to the second server");
        assert_eq!(c.server.port, up_addr.port());
        let waited = started.elapsed();
        // tokio's timer wheel has millisecond granularity.
        assert!(waited >= CONNECT && waited < CONNECT + Duration::from_millis(10), "the first waits {waited:?}");
        let first = &rt.health.servers()[0];
        assert_eq!(first.state(), ServerState::Down, "one timed-out connect marks the server down");
        assert_eq!(metrics.backend_up("pacs", &hole.addr.to_string()), Some(false));
        let failed = first.last_failed_connect().expect("remembered for /status");
        assert!(failed.text.contains("no connection within 4s"), "{}", failed.text);

        // …and the next ones go straight to the second server.
        for _ in 0..3 {
            let started = tokio::time::Instant::now();
            let c = rt.connect(CONNECT).await.expect("second server");
            assert_eq!(c.server.port, up_addr.port());
            assert!(started.elapsed() < Duration::from_millis(100), "waited {:?}", started.elapsed());
        }
    }

    #[tokio::test]
    async fn a_refused_connect_marks_down_at_once_and_only_the_monitor_brings_it_back() {
        let refused = closed_port().await;
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (rt, metrics) = monitored(&[refused, up.local_addr().unwrap()], "tcp");
        rt.health.servers()[0].force_state_for_test(ServerState::Up);
        tokio::time::pause();

        let c = rt.connect(CONNECT).await.expect("failover");
        assert_eq!(c.server.port, up.local_addr().unwrap().port());
        let first = &rt.health.servers()[0];
        assert_eq!(first.state(), ServerState::Down);
        assert_eq!(metrics.backend_up("pacs", &refused.to_string()), Some(false));
        assert_eq!(rt.health.connect_order(), vec![(1, false), (0, true)]);

        // Probes (rise 2 by default) bring it back, not a connect.
        let hc = &rt.config.health_check;
        let ok = || health::ProbeResult {
            ok: true,
            text: "TCP connect succeeded".to_owned(),
            latency: Duration::ZERO,
            at: std::time::SystemTime::now(),
        };
        assert_eq!(first.record_for_test(ok(), hc.rise, hc.fall), None);
        assert_eq!(first.record_for_test(ok(), hc.rise, hc.fall), Some(ServerState::Up));
    }

    #[tokio::test]
    async fn without_a_monitor_a_failed_connect_changes_no_order() {
        let refused = closed_port().await;
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (rt, _metrics) = monitored(&[refused, up.local_addr().unwrap()], "off");
        rt.connect(CONNECT).await.expect("failover");
        let first = &rt.health.servers()[0];
        assert_eq!(first.state(), ServerState::Unchecked, "mode off: nothing would mark it up again");
        assert!(first.last_failed_connect().is_some());
        assert_eq!(rt.health.connect_order(), vec![(0, false), (1, false)]);
    }

    #[tokio::test]
    async fn healthy_servers_come_first_and_down_ones_are_a_last_resort() {
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let rt = backend(&[down.local_addr().unwrap(), up.local_addr().unwrap()]);
        // Both listen; the first is marked down, so the second is used.
        rt.health.servers()[0].force_state_for_test(ServerState::Down);
        let c = rt.connect(Duration::from_secs(2)).await.expect("connect");
        assert_eq!(c.server.port, up.local_addr().unwrap().port());

        // Everything down: still tried, in configured order.
        rt.health.servers()[1].force_state_for_test(ServerState::Down);
        let c = rt.connect(Duration::from_secs(2)).await.expect("connect");
        assert_eq!(c.server.port, down.local_addr().unwrap().port());
    }

    #[tokio::test]
    async fn a_failed_connect_falls_through_and_all_failures_are_listed() {
        let a = closed_port().await;
        let b = closed_port().await;
        let rt = backend(&[a, b]);
        rt.health.servers()[1].force_state_for_test(ServerState::Down);
        let failure = rt.connect(Duration::from_secs(2)).await.err().expect("nothing listens");
        let tried: Vec<u16> = failure.attempts.iter().map(|t| t.server.port).collect();
        assert_eq!(tried, vec![a.port(), b.port()]);
        assert!(matches!(failure.attempts[0].error, ConnectError::Tcp(_)), "{failure}");
        assert!(!failure.attempts[0].marked_down && failure.attempts[1].marked_down);
        assert!(failure.to_string().ends_with("(marked down by the health check))"), "{failure}");
    }
}
