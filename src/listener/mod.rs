//! The accept loop of one listener: source allow list before any TLS work
//! (behind a load balancer: the balancer's address, see [`crate::proxy_protocol`]),
//! the guessing protection's blocked sources, the pre-association budget
//! ([`crate::admission`]), and a spawn per connection whose task closes it
//! if the budget evicts it, and counts the eviction there.
//! It never does slow work and never dies: accept errors (EMFILE,
//! ECONNABORTED, …) back off and retry ([`accept`]). Refusals are counted in the metrics
//! and summarised in the log ([`crate::refusals`]), never one line each.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tracing::Instrument;

use crate::admission::{Admission, Budget, Limits, Notice, Progress};
use crate::connection::{self, record, ListenerRuntime, Services};
use crate::refusals::SummarisedRefusal;
use crate::report::{ConnectionId, Outcome, Trail};

pub mod accept;

pub use accept::Acceptor;

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
    let name = snapshot.borrow().runtime.config.name.clone();
    let mut acceptor = Acceptor::new(&listener, &stop, &name);
    while let Some((tcp, peer)) = acceptor.next().await {
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
    // as the allow list). Counted always, logged as a summary (`refusals`).
    let refusal = match &rt.config.proxy_protocol {
        None => (!rt.config.allows(peer.ip())).then_some(SummarisedRefusal::DeniedIp),
        Some(proxy) => (!proxy.trusts(peer.ip())).then_some(SummarisedRefusal::NotLoadBalancer),
    };
    if let Some(refusal) = refusal {
        drop(tcp);
        services.metrics.connection_ended(name, Outcome::DeniedIp.as_str());
        services.refusals.record(name, peer.ip(), refusal);
        return;
    }
    // A source blocked for guessing is closed before TLS too; its first
    // refusal of a quiet spell is reported in full (audit line, ATNA), the
    // rest counted (`record::finish` decides, without a task).
    if rt.config.proxy_protocol.is_none() {
        if let Some(left) = limits.blocklist.blocked(peer.ip(), tokio::time::Instant::now()) {
            drop(tcp);
            let ending = record::Ending::Refused(connection::Refused::Blocked { left });
            let guessing = record::Guessing { blocklist: &limits.blocklist, policy: &rt.config.guessing };
            let id = ConnectionId::next();
            record::finish(name, id, Trail::new(peer), ending, Duration::ZERO, services, guessing);
            return;
        }
    }
    // A balancer's connections carry many clients: the per-source cap
    // applies once the PROXY header has named the client.
    let capped = rt.config.proxy_protocol.is_none();
    // Bytes already waiting (a ClientHello arrives with the TCP handshake's
    // last ACK, and under a flood the accept queue lets it arrive before we
    // accept): ranked as speaking from the start, above silent connections,
    // whenever its task gets to run. Behind a balancer they would be its
    // PROXY header, which says nothing about the client.
    let progress = if capped && connection::bytes_waiting(&tcp) { Progress::Speaking } else { Progress::Accepted };
    let ticket = limits.budget.enter_at(peer.ip(), capped, progress);
    let notice = ticket.notice();
    let admission = Admission::new(ticket, peer.ip(), limits);
    let (services, listener) = (services.clone(), name.to_owned());
    // Every line the connection causes carries its id (the audit line too, as
    // a field): docs/operations.md, "Logs".
    let id = ConnectionId::next();
    let span = tracing::info_span!("connection", conn = %id, listener = %listener, peer = %peer);
    // Boxed: the task would otherwise hold the connection's future twice
    // (the captured value and the guard's copy): 5.6 KiB a waiting
    // connection instead of 2 (massif, 500 idle TLS peers).
    let connection = Box::pin(connection::handle(tcp, peer, id, rt, admission, services.clone()));
    tracker.spawn(guarded(notice, connection, services, listener).instrument(span));
}

/// A connection's task: the connection, unless it is evicted first. An
/// eviction is counted here, where it closes the connection (dropping its
/// future closes the socket), never by the evictor: a connection that ended
/// by itself in the same instant has recorded its own outcome and is not
/// counted twice.
async fn guarded<F: Future<Output = ()>>(
    notice: Arc<Notice>,
    connection: Pin<Box<F>>,
    services: Services,
    listener: String,
) {
    if let Some((source, why)) = notice.guard(connection).await {
        record::evicted(&listener, source, why, &services);
    }
}

/// File descriptors one listener may hold at its limits: two per
/// association (client and backend), one per pre-association connection and
/// one per farewell of a refusal outside both.
pub fn descriptors_needed(max_connections: usize) -> u64 {
    let budget = Budget::new(max_connections).capacity();
    (2 * max_connections + budget + crate::admission::farewells::cap_for(budget)) as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (what systemd's
/// `LimitNOFILE=` or limits.conf allows) and logs both, warning when the
/// listeners' limits need more: past it, accept fails with EMFILE and the
/// loop backs off instead of serving.
pub fn raise_nofile_limit(needed: u64) {
    // Listeners, the admin endpoint, stdio, health probes and backends' spares.
    const BASE: u64 = 64;
    let before = rlimit::Resource::NOFILE.get();
    let after = rlimit::increase_nofile_limit(u64::MAX);
    match (before, after) {
        (Ok((soft, hard)), Ok(now)) => {
            tracing::info!(
                soft_before = soft,
                soft = now,
                hard,
                needed = needed + BASE,
                "open files limit (RLIMIT_NOFILE)"
            );
            if now < needed + BASE {
                tracing::warn!(
                    limit = now,
                    needed = needed + BASE,
                    "the open files limit is below what max_connections needs (2 per association, the \
                     pre-association budget and the farewell cap): raise LimitNOFILE= in the systemd unit, or \
                     lower max_connections"
                );
            }
        }
        (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of a waiting connection holds a pointer to the connection's
    /// future, not a second copy of it (the bench's idle figures).
    #[test]
    fn a_connection_task_holds_its_connection_once() {
        let budget = Arc::new(Budget::new(8));
        let ticket = budget.enter(std::net::IpAddr::from([127, 0, 0, 1]), true);
        let services = Services {
            metrics: crate::Metrics::new(),
            force_abort: CancellationToken::new(),
            recent: Arc::new(crate::recent::RecentAssociations::new()),
            atna: crate::atna::AuditSink::disabled(),
            refusals: crate::refusals::RefusalLog::new(),
        };
        let big = Box::pin(async {
            let pad = [0u8; 4096];
            std::future::ready(()).await;
            std::hint::black_box(pad);
        });
        let task = guarded(ticket.notice(), big, services, "store".to_owned());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "a connection task is {size} bytes: its connection future is held inline");
    }
}
