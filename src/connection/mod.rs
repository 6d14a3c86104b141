//! One connection, phase by phase (DESIGN.md, "Data flow"):
//!
//! 1. `client`: PROXY header (optional), TLS handshake and the first PDU,
//!    all under the ACSE deadline;
//! 2. [`crate::routing`]: policy on the raw A-ASSOCIATE-RQ fields;
//! 3. [`crate::backend`]: connect with failover;
//! 4. `association`: the RQ forwarded, the SCP's answer under a second ACSE
//!    deadline, returned to the client;
//! 5. [`crate::relay`]: the established association.
//!
//! Every phase that can fail ends in the DICOM answer the table prescribes, a
//! metric and exactly one audit event.

mod association;
mod client;
pub mod first_pdu;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::backend::BackendRuntime;
use crate::config::ListenerConfig;
use crate::dicom::pdu::{describe_abort, Rejection};
use crate::listener::Refusal;
use crate::metrics::{Direction, Metrics, Outcome};
use crate::relay::{self, Counters, RelaySettings};
use crate::routing::{self, Decision};
use crate::tls::Stream;
use association::Negotiated;

/// How long, and how much, a closing connection is drained (see [`close`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

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

pub use crate::listener::Admission;

/// Process-wide services a connection uses.
#[derive(Clone)]
pub struct Services {
    pub metrics: Metrics,
    /// Cancelled when the shutdown grace period is over: live associations get
    /// A-ABORT.
    pub force_abort: CancellationToken,
    /// Refusals are counted always and logged as summaries, not audit lines.
    pub refusals: crate::listener::RefusalLog,
}

/// Serves one accepted connection to its end; never panics on peer input.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    admission: Admission,
    services: Services,
) {
    let started = Instant::now();
    let name = rt.config.name.as_str();
    let _active = services.metrics.active_guard(name);
    let mut audit = AuditRecord::new(name, peer);
    let outcome = serve(tcp, &rt, admission, &services, &mut audit).await;
    let elapsed = started.elapsed();
    services.metrics.connection_ended(name, outcome);
    if outcome == Outcome::Forwarded {
        services.metrics.observe_association(name, elapsed.as_secs_f64());
    }
    match (outcome, audit.peer) {
        (Outcome::DeniedIp, Some(client)) => services.refusals.record(name, client.ip(), Refusal::ProxyDeniedIp),
        (Outcome::Limit, Some(client)) => services.refusals.record(name, client.ip(), Refusal::OverLimit),
        _ => audit.emit(outcome, elapsed),
    }
}

async fn serve(
    mut tcp: TcpStream,
    rt: &ListenerRuntime,
    mut admission: Admission,
    services: &Services,
    audit: &mut AuditRecord,
) -> Outcome {
    let cfg = &rt.config;
    let deadline = Instant::now() + cfg.timeouts.acse;
    let _ = tcp.set_nodelay(true);

    if let Some(proxy) = &cfg.proxy_protocol {
        if let Err(outcome) = Box::pin(client::proxy_phase(&mut tcp, proxy.versions, cfg, deadline, audit)).await {
            return outcome;
        }
        admission.client_known(audit.peer);
    }
    let mut client = match Box::pin(client::handshake(tcp, rt.acceptor.as_ref(), deadline, audit)).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let (rq, view) = match client::read_request(&mut client, cfg, deadline, audit).await {
        Ok(request) => request,
        Err(outcome) => return outcome,
    };

    // The connection leaves the pre-association budget (listener::admission).
    if !admission.graduate() {
        audit.detail = Some(format!("listener at max_connections ({})", cfg.max_connections));
        send_and_close(&mut client, &Rejection::LocalLimitExceeded.to_pdu(), cfg).await;
        return Outcome::Limit;
    }
    let (backend_name, called) = match routing::decide(&view, cfg) {
        Decision::Forward { backend, called, .. } => (backend, called),
        Decision::Reject(refusal) => {
            audit.detail = Some(refusal.why);
            audit.association = Some(refusal.rejection.to_string());
            send_and_close(&mut client, &refusal.rejection.to_pdu(), cfg).await;
            return refusal.outcome;
        }
    };
    audit.backend = Some(backend_name.clone());
    let Some(backend) = rt.backends.get(&backend_name) else {
        // Configuration validation guarantees every route names a backend.
        audit.detail = Some(format!("route names unknown backend {backend_name:?}"));
        send_and_close(&mut client, &Rejection::TemporaryCongestion.to_pdu(), cfg).await;
        return Outcome::BackendUnavailable;
    };
    let mut upstream = match Box::pin(backend.connect(cfg.timeouts.connect)).await {
        Ok(c) => c,
        Err(failure) => {
            tracing::warn!(listener = %cfg.name, backend = %backend_name, "{failure}");
            audit.detail = Some(failure.to_string());
            audit.association = Some(Rejection::TemporaryCongestion.to_string());
            send_and_close(&mut client, &Rejection::TemporaryCongestion.to_pdu(), cfg).await;
            return Outcome::BackendUnavailable;
        }
    };
    audit.server = Some(upstream.server.to_string());

    let exchange = association::Exchange { rq, view: &view, called: &called, backend, cfg, services };
    if let Some(negotiated) = Box::pin(exchange.run(&mut client, &mut upstream.stream, audit)).await {
        Box::pin(relay_phase(client, upstream.stream, negotiated, cfg, services, audit)).await;
    }
    Outcome::Forwarded
}

/// The established association, until it ends.
async fn relay_phase(
    client: Stream,
    backend: Stream,
    negotiated: Negotiated,
    cfg: &ListenerConfig,
    services: &Services,
    audit: &mut AuditRecord,
) {
    let settings = RelaySettings {
        idle: cfg.timeouts.dimse,
        closing: cfg.timeouts.acse,
        max_to_backend: negotiated.max_to_backend,
        max_to_client: negotiated.max_to_client,
        mode: cfg.relay_mode,
    };
    let counters = Counters {
        to_backend: services.metrics.bytes_counter(&cfg.name, Direction::ToBackend),
        to_client: services.metrics.bytes_counter(&cfg.name, Direction::ToClient),
        dimse: Some((services.metrics.dimse_counter_vec(), cfg.name.clone())),
    };
    let report = relay::relay(client, backend, settings, counters, services.force_abort.clone()).await;
    audit.bytes_to_backend += report.bytes_to_backend;
    audit.bytes_to_client += report.bytes_to_client;
    audit.end = Some(report.end.label().to_owned());
    services.metrics.association_ended(&cfg.name, report.end.label());
    if !report.operations.is_empty() {
        audit.dimse = Some(relay::describe_operations(&report.operations));
    }
    audit.detail = match &report.end {
        relay::RelayEnd::Aborted { by, source, reason } => {
            Some(format!("A-ABORT from the {}: {}", by.as_str(), describe_abort(*source, *reason)))
        }
        relay::RelayEnd::ProtocolError { by, error } => Some(format!("{} sent {error}", by.as_str())),
        relay::RelayEnd::Io { side, error } => Some(format!("{}: {error}", side.as_str())),
        relay::RelayEnd::Closed { by } | relay::RelayEnd::Truncated { by } => {
            Some(format!("closed by the {}", by.as_str()))
        }
        _ => None,
    };
}

async fn write_flush<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Sends a final PDU of our own, then closes (TLS close_notify included),
/// each step bounded so a peer that stopped reading cannot hold the task.
async fn send_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, pdu: &[u8], cfg: &ListenerConfig) {
    let _ = timeout(cfg.timeouts.acse, write_flush(stream, pdu)).await;
    close(stream, cfg).await;
}

/// Lingering close: half-close our side, then drain what the peer still
/// sends for a moment. Closing a socket with unread input makes the kernel
/// send RST, which can destroy our final PDU before the peer reads it.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, cfg: &ListenerConfig) {
    let _ = timeout(cfg.timeouts.acse, stream.shutdown()).await;
    let linger = cfg.timeouts.acse.min(LINGER);
    let drain = async {
        // On the heap: an array here would sit in every connection's future.
        let mut sink = vec![0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(linger, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle TLS connection is one of these tasks: its size is memory
    /// per connection (bench/RESULTS.md, "KiB per idle TLS connection").
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
        let admission = Admission::unbudgeted(Arc::new(crate::listener::Slots::new(1)));
        let services = Services {
            metrics: Metrics::new(),
            force_abort: CancellationToken::new(),
            refusals: crate::listener::RefusalLog::new(),
        };
        let task = handle(tcp, peer, rt, admission, services);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(size <= 2048, "the connection future is {size} bytes; box its large later phases");
    }
}
