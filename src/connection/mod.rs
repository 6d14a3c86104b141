//! One connection, phase by phase (docs/architecture.md, "Data flow"):
//!
//! 1. `client`: PROXY header (optional), TLS handshake and the first PDU,
//!    all under the ACSE deadline, in the listener's pre-association budget
//!    ([`crate::admission`]), moving up its eviction order as it goes;
//! 2. [`crate::routing`]: policy on the raw A-ASSOCIATE-RQ fields, after the
//!    connection left the budget and before it takes an association slot:
//!    a refused RQ never holds one, and its farewell counts against the
//!    listener's farewell cap (`refusal`);
//! 3. [`crate::backend`]: connect with failover;
//! 4. `association`: the RQ forwarded, the SCP's answer under a second ACSE
//!    deadline, returned to the client;
//! 5. [`crate::relay`]: the established association.
//!
//! Every phase that can fail ends in the DICOM answer the table prescribes and
//! returns what happened as a typed value (side, phase, what the peer did);
//! [`record::finish`] turns the results into the connection's one
//! [`crate::report::Report`] and hands it to its consumers.

mod association;
mod client;
pub mod first_pdu;
pub mod record;
mod refusal;
mod refused;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Progress};
use crate::backend::BackendRuntime;
use crate::config::ListenerConfig;
use crate::dicom::pdu::Rejection;
use crate::farewell::{close, send_and_close, write_flush};
use crate::metrics::{Direction, Metrics};
use crate::relay::{self, Counters, RelayReport, RelaySettings};
use crate::report::{ConnectionId, Trail};
use crate::routing::{self, Decision};
use crate::tls::Stream;
pub use association::AnswerError;
pub use association::Negotiated;
pub use association::{Answer, Exchanged};
use client::Request;
pub use record::{Ending, Forwarded, Phase, Refused};

/// Everything a connection needs from the configuration snapshot it was
/// accepted under. A connection reads its snapshot once; a reload never
/// changes a live association.
pub struct ListenerRuntime {
    pub config: Arc<ListenerConfig>,
    /// `None` for an `insecure_plaintext` listener.
    pub acceptor: Option<TlsAcceptor>,
    pub backends: BTreeMap<String, Arc<BackendRuntime>>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("listener", &self.config.name)
            .field("tls", &self.acceptor.is_some())
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Process-wide services a connection uses.
#[derive(Clone)]
pub struct Services {
    pub metrics: Metrics,
    /// Cancelled when the shutdown grace period is over: live associations get
    /// A-ABORT.
    pub force_abort: CancellationToken,
    /// The status page's ring of finished connections.
    pub recent: Arc<crate::recent::RecentAssociations>,
    /// The IHE ATNA audit trail (Security Alerts for refused peers).
    pub atna: crate::atna::AuditSink,
    /// Refusals are counted always and logged as summaries, not audit lines.
    pub refusals: crate::refusals::RefusalLog,
}

/// Serves one accepted connection to its end; never panics on peer input.
/// `id` names it in its tracing span (made by the listener) and its report.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    id: ConnectionId,
    rt: Arc<ListenerRuntime>,
    mut admission: Admission,
    services: Services,
) {
    let started = Instant::now();
    let name = rt.config.name.as_str();
    let _active = services.metrics.active_guard(name);
    let mut trail = Trail::new(peer);
    trail.plaintext = rt.acceptor.is_none();
    let ending = serve(tcp, &rt, &mut admission, &services, &mut trail).await;
    let guessing = record::Guessing::of(&admission, &rt.config.guessing);
    record::finish(name, id, trail, ending, started.elapsed(), &services, guessing);
}

/// Runs the phases in order. Each returns what happened; only this function
/// writes the [`Trail`], from those results.
async fn serve(
    tcp: TcpStream,
    rt: &ListenerRuntime,
    admission: &mut Admission,
    services: &Services,
    trail: &mut Trail,
) -> Ending {
    let cfg = &rt.config;
    let now = Instant::now();
    // `timeouts.association` bounds everything, the phases before the relay too.
    let end_by = cfg.timeouts.association.map(|limit| now + limit);
    let deadline = end_by.map_or(now + cfg.timeouts.acse, |end| end.min(now + cfg.timeouts.acse));
    let (mut client, request) = match Box::pin(until_request(tcp, rt, admission, services, trail, deadline)).await {
        Ok(phases) => phases,
        Err(refused) => return Ending::Refused(refused),
    };
    let (calling, called) = request.ae_titles();
    (trail.calling_ae, trail.called_ae) = (Some(calling), Some(called));

    // Out of the pre-association budget; policy decides before any
    // association slot is taken, so a refused RQ never holds one.
    if let Err(why) = admission.leave_budget() {
        // Evicted in the instant the RQ became complete: closed without an
        // RJ, as the eviction would have closed it a moment earlier.
        return Ending::Refused(Refused::Evicted(why));
    }
    let (metrics, forced) = (&services.metrics, &services.force_abort);
    let (backend_name, called) = match routing::decide(&request.view, cfg) {
        Decision::Forward { backend, called, .. } => (backend, called),
        Decision::Reject(rejected) => {
            refusal::refuse(&mut client, &rejected.rejection().to_pdu(), admission, metrics, &cfg.name).await;
            return Ending::Refused(Refused::Policy(rejected));
        }
    };
    if !admission.take_slot() {
        refusal::refuse(&mut client, &Rejection::LocalLimitExceeded.to_pdu(), admission, metrics, &cfg.name).await;
        return Ending::Refused(Refused::OverLimit(cfg.max_connections));
    }
    trail.backend = Some(backend_name.clone());
    let Some(backend) = rt.backends.get(&backend_name) else {
        send_and_close(&mut client, &Rejection::TemporaryCongestion.to_pdu()).await;
        return Ending::Refused(Refused::UnknownBackend(backend_name));
    };
    let connect = async { backend.connect(cfg.timeouts.connect).await.map_err(Refused::Backend) };
    let mut upstream = match unless_forced(forced, Phase::BackendConnect, Box::pin(connect)).await {
        Ok(c) => c,
        Err(refused) => {
            tracing::warn!(listener = %cfg.name, backend = %backend_name, "{refused}");
            send_and_close(&mut client, &Rejection::TemporaryCongestion.to_pdu()).await;
            return Ending::Refused(refused);
        }
    };

    let Request { rq, view } = request;
    let rq_len = rq.len() as u64;
    let exchange = association::Exchange { rq, view: &view, called: &called, backend, cfg, services };
    let exchanged = tokio::select! {
        biased;
        () = forced.cancelled() => {
            let abort = crate::dicom::pdu::provider_abort(crate::dicom::pdu::AbortReason::NotSpecified);
            Box::pin(async { tokio::join!(send_and_close(&mut client, &abort), send_and_close(&mut upstream.stream, &abort)) }).await;
            association::Exchanged::unanswered(AnswerError::Shutdown, rq_len)
        }
        exchanged = Box::pin(exchange.run(&mut client, &mut upstream.stream)) => exchanged,
    };
    let relay = match &exchanged.answer {
        Answer::Accepted(negotiated) => {
            Some(Box::pin(relay_phase(client, upstream.stream, negotiated, end_by, cfg, services)).await)
        }
        _ => None,
    };
    Ending::Forwarded(Box::new(Forwarded { server: upstream.server, exchanged, relay }))
}

/// The phases facing the cloud, up to a whole A-ASSOCIATE-RQ: the PROXY
/// header (and the guessing protection for the client it names), the first
/// bytes, the TLS handshake, the first PDU. Each step the peer completes
/// moves it up in the budget's eviction order ([`Progress`]).
async fn until_request(
    mut tcp: TcpStream,
    rt: &ListenerRuntime,
    admission: &mut Admission,
    services: &Services,
    trail: &mut Trail,
    deadline: Instant,
) -> Result<(Stream, Request), Refused> {
    let cfg = &rt.config;
    let _ = tcp.set_nodelay(true);
    // Until the relay, every phase also ends when the shutdown grace period
    // does (`Refused::Shutdown`); the relay handles `force_abort` itself.
    let forced = &services.force_abort;
    if let Some(proxy) = &cfg.proxy_protocol {
        let lb = trail.tcp_peer;
        let phase = Box::pin(client::proxy_phase(&mut tcp, lb, proxy, cfg, deadline));
        match unless_forced(forced, Phase::ProxyHeader, phase).await {
            Ok(client) => trail.proxied_client = Some(client),
            Err(refused) => {
                if let Refused::ProxiedClientDenied { header } = &refused {
                    trail.proxied_client = Some(header.client_or(lb));
                }
                return Err(refused);
            }
        }
        admission.client_known(trail.proxied_client);
        // Behind a balancer, the client is known only now: still before TLS.
        if let Some(left) = admission.blocklist.blocked(trail.client().ip(), Instant::now()) {
            return Err(Refused::Blocked { left });
        }
    }
    // Looked at: bytes already there (asked of the socket: tokio learns of
    // them only at its reactor's next turn, and a speaking peer must not be
    // ranked silent meanwhile), or silent until they come. Whatever the
    // deadline says to a silent peer, the handshake (or the first PDU) below
    // says again, with its own error.
    let spoke = bytes_waiting(&tcp) || {
        admission.progress(Progress::Silent);
        // The wait is the first part of the handshake (of the first PDU on a
        // plaintext listener), and ends with the shutdown grace period too.
        let phase = if rt.acceptor.is_some() { Phase::TlsHandshake } else { Phase::FirstPdu };
        let waiting = async { Ok(timeout_at(deadline, first_bytes(&tcp)).await.unwrap_or(false)) };
        unless_forced(forced, phase, Box::pin(waiting)).await?
    };
    if spoke {
        admission.progress(Progress::Speaking);
    }
    let phase = Box::pin(client::handshake(tcp, rt.acceptor.as_ref(), deadline));
    let mut client = match unless_forced(forced, Phase::TlsHandshake, phase).await {
        Ok((stream, session)) => {
            if session.is_some() {
                admission.progress(Progress::Secured);
            }
            trail.tls = session;
            stream
        }
        Err(refused) => return Err(refused),
    };
    let reading = Box::pin(client::read_request(&mut client, cfg, deadline));
    match unless_forced(forced, Phase::FirstPdu, reading).await {
        Ok(request) => Ok((client, request)),
        Err(refused) => {
            if let Refused::Shutdown(_) = refused {
                close(&mut client).await;
            }
            Err(refused)
        }
    }
}

/// Whether bytes are waiting on a socket: one non-blocking `MSG_PEEK`. The
/// accept loop and a connection's first step ask it to rank the connection
/// in the pre-association budget ([`Progress`]).
pub fn bytes_waiting(tcp: &TcpStream) -> bool {
    matches!(peek(tcp), Ok(1..))
}

fn peek(tcp: &TcpStream) -> std::io::Result<usize> {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    socket2::SockRef::from(tcp).peek(&mut byte)
}

/// Waits for the first bytes, leaving them to be read; `false` at the
/// peer's close. tokio reports a fresh socket readable before anything came,
/// so readiness is confirmed with a peek, which clears it when nothing did.
async fn first_bytes(tcp: &TcpStream) -> bool {
    loop {
        if tcp.readable().await.is_err() {
            return false;
        }
        match tcp.try_io(tokio::io::Interest::READABLE, || peek(tcp)) {
            Ok(n) => return n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
}

/// Runs a phase before the relay unless the shutdown grace period ends first;
/// then the phase's future is dropped (closing what it owned) and the
/// connection is refused as `shutdown`.
async fn unless_forced<T>(
    forced: &CancellationToken,
    phase: Phase,
    work: impl std::future::Future<Output = Result<T, Refused>>,
) -> Result<T, Refused> {
    tokio::select! {
        biased;
        () = forced.cancelled() => Err(Refused::Shutdown(phase)),
        done = work => done,
    }
}

/// The established association, until it ends.
async fn relay_phase(
    client: Stream,
    backend: Stream,
    negotiated: &Negotiated,
    end_by: Option<Instant>,
    cfg: &ListenerConfig,
    services: &Services,
) -> RelayReport {
    let settings = RelaySettings {
        idle: cfg.timeouts.dimse,
        closing: cfg.timeouts.acse,
        max_to_backend: negotiated.max_to_backend,
        max_to_client: negotiated.max_to_client,
        mode: cfg.relay_mode,
        end_by,
    };
    let counters = Counters {
        to_backend: services.metrics.bytes_counter(&cfg.name, Direction::ToBackend),
        to_client: services.metrics.bytes_counter(&cfg.name, Direction::ToClient),
        dimse: Some(services.metrics.dimse_counter(&cfg.name)),
    };
    relay::relay(client, backend, settings, counters, services.force_abort.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::time::timeout;

    /// Every idle TLS connection is one of these tasks: its size is memory
    /// per connection (bench/RESULTS.md, "KiB per idle TLS connection").
    /// A silent socket is not taken for a speaking one (tokio calls a fresh
    /// socket readable before any byte came); a byte, or the close, ends the wait.
    #[tokio::test]
    async fn first_bytes_waits_for_bytes_not_for_tokios_first_readiness() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        assert!(!bytes_waiting(&tcp));
        let wait = Duration::from_millis(200);
        assert!(timeout(wait, first_bytes(&tcp)).await.is_err(), "silent, yet taken for speaking");
        client.write_all(&[0x16]).await.expect("write");
        assert_eq!(timeout(wait, first_bytes(&tcp)).await.ok(), Some(true));
        assert!(bytes_waiting(&tcp), "the byte is still there for the handshake");
        let second = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        drop(second);
        assert_eq!(timeout(wait, first_bytes(&tcp)).await.ok(), Some(false), "closed without a byte");
    }

    #[tokio::test]
    async fn a_waiting_connection_task_stays_small() {
        let yaml = "backends:\n  pacs: {ae_title: PACS, servers: [127.0.0.1:104], health_check: {mode: \"off\"}}\n\
                    listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    routes: {\"*\": pacs}\n";
        let config = crate::config::Config::from_yaml_str(yaml, std::path::Path::new(".")).expect("config");
        let rt = Arc::new(ListenerRuntime {
            config: config.listeners["store"].clone(),
            acceptor: None,
            backends: BTreeMap::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        let admission = Admission::unbudgeted(&crate::admission::Limits::new(1));
        let services = Services {
            metrics: Metrics::new(),
            force_abort: CancellationToken::new(),
            recent: Arc::new(crate::recent::RecentAssociations::new()),
            atna: crate::atna::AuditSink::disabled(),
            refusals: crate::refusals::RefusalLog::new(),
        };
        let task = handle(tcp, peer, ConnectionId::next(), rt, admission, services);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(size <= 2048, "the connection future is {size} bytes; box its large later phases");
    }
}
