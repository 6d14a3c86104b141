//! The accept loop of one listener: source allow list before any TLS work
//! (behind a load balancer: the balancer's address, see [`crate::proxy_protocol`]),
//! the connection limit, and a spawn per connection. It never does slow work
//! and never dies: accept errors (EMFILE, ECONNABORTED, …) back off and retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::record::{self, Ending, Refused, Trail};
use crate::connection::{self, Admission, ListenerRuntime, Services};

/// Connections over `max_connections` that may still be read (bounded, under
/// the ACSE deadline) just to answer A-ASSOCIATE-RJ "local-limit-exceeded";
/// past this many the gateway closes at once.
pub const OVERFLOW_ANSWERS: usize = 32;

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connection slots of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub permits: Arc<Semaphore>,
    pub overflow: Arc<Semaphore>,
}

impl Limits {
    pub fn new(max_connections: usize) -> Limits {
        Limits {
            permits: Arc::new(Semaphore::new(max_connections)),
            overflow: Arc::new(Semaphore::new(OVERFLOW_ANSWERS)),
        }
    }
}

/// What a reload publishes to a running accept loop.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub runtime: Arc<ListenerRuntime>,
    /// Kept across reloads while `max_connections` is unchanged, so live
    /// connections keep counting against the limit.
    pub limits: Limits,
}

/// Accepts until `stop` is cancelled. The snapshot is read per connection,
/// so a reload applies to new connections only.
pub async fn accept_loop(
    listener: TcpListener,
    snapshot: watch::Receiver<Snapshot>,
    services: Services,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_START;
                a
            }
            Err(e) => {
                let name = snapshot.borrow().runtime.config.name.clone();
                tracing::warn!(listener = %name, error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let current = snapshot.borrow().clone();
        admit(tcp, peer, current.runtime, &current.limits, &services, &tracker);
    }
}

fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    limits: &Limits,
    services: &Services,
    tracker: &TaskTracker,
) {
    let name = rt.config.name.as_str();
    // Closed before a single byte is read or written: no TLS work for
    // strangers. Behind a load balancer the client's address is only known
    // from the PROXY header, so the allow list is applied in the connection
    // task; here only the balancer itself is checked (a CIDR match, as cheap
    // as the allow list).
    let refusal = match &rt.config.proxy_protocol {
        None => (!rt.config.allows(peer.ip())).then_some(Refused::SourceDenied),
        Some(proxy) => (!proxy.trusts(peer.ip())).then_some(Refused::NotALoadBalancer),
    };
    if let Some(refused) = refusal {
        drop(tcp);
        record::finish(name, Trail::new(peer), &Ending::Refused(refused), Duration::ZERO, services);
        return;
    }
    let admission = match limits.permits.clone().try_acquire_owned() {
        Ok(permit) => Admission::Admitted(permit),
        Err(_) => match limits.overflow.clone().try_acquire_owned() {
            Ok(permit) => Admission::OverLimit(permit),
            Err(_) => {
                drop(tcp);
                let ending = Ending::Refused(Refused::Overflow);
                record::finish(name, Trail::new(peer), &ending, Duration::ZERO, services);
                return;
            }
        },
    };
    tracker.spawn(connection::handle(tcp, peer, rt, admission, services.clone()));
}
