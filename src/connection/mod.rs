//! One connection, phase by phase (DESIGN.md, "Data flow"): TLS handshake and
//! first PDU under the ACSE deadline, policy, backend connect with failover,
//! the SCP's answer under a second ACSE deadline, then the relay. Every phase
//! that can fail ends in the DICOM answer the table prescribes, a metric and
//! exactly one audit event.

pub mod first_pdu;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::backend::BackendRuntime;
use crate::config::ListenerConfig;
use crate::dicom::ae::display_raw;
use crate::dicom::associate::{self, patch_called_ae};
use crate::dicom::pdu::{describe_abort, describe_rejection, provider_abort, AbortReason, PduType, Rejection};
use crate::metrics::{Direction, Metrics, Outcome};
use crate::proxy_protocol;
use crate::relay::{self, Counters, RelaySettings};
use crate::routing::{self, Decision};
use crate::tls::{SessionInfo, Stream};
use first_pdu::{read_associate_response, read_associate_rq};

/// How long, and how much, a closing connection is drained (see [`close`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Largest A-ASSOCIATE-AC/RJ/ABORT accepted from an SCP.
const MAX_RESPONSE_LENGTH: u32 = 1024 * 1024;

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

/// Why the listener let the connection in.
pub enum Admission {
    /// Within `max_connections`.
    Admitted(OwnedSemaphorePermit),
    /// Over the limit: read the RQ (bounded) only to answer A-ASSOCIATE-RJ 2/3/2.
    OverLimit(OwnedSemaphorePermit),
}

/// Process-wide services a connection uses.
#[derive(Clone)]
pub struct Services {
    pub metrics: Metrics,
    /// Cancelled when the shutdown grace period is over: live associations get
    /// A-ABORT.
    pub force_abort: CancellationToken,
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
    audit.emit(outcome, elapsed);
}

async fn serve(
    mut tcp: TcpStream,
    rt: &ListenerRuntime,
    admission: Admission,
    services: &Services,
    audit: &mut AuditRecord,
) -> Outcome {
    let cfg = &rt.config;
    let deadline = Instant::now() + cfg.timeouts.acse;
    let _ = tcp.set_nodelay(true);

    if let Some(proxy) = &cfg.proxy_protocol {
        if let Err(outcome) = proxy_phase(&mut tcp, proxy.versions, cfg, deadline, audit).await {
            return outcome;
        }
    }

    let mut client = match &rt.acceptor {
        None => Stream::Plain(tcp),
        Some(acceptor) => match timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                audit.tls = Some(SessionInfo::of(tls.get_ref().1));
                Stream::Server(Box::new(tls))
            }
            Ok(Err(e)) => {
                audit.detail = Some(format!("TLS handshake failed: {e}"));
                return Outcome::TlsError;
            }
            Err(_) => {
                audit.detail = Some("TLS handshake not complete within the ACSE timeout".to_owned());
                return Outcome::Timeout;
            }
        },
    };

    let mut rq = match read_associate_rq(&mut client, cfg.max_associate_rq_length, deadline).await {
        Ok(pdu) => pdu,
        Err(e) => {
            audit.detail = Some(e.to_string());
            if let Some(reason) = e.abort_reason() {
                send_and_close(&mut client, &provider_abort(reason), cfg).await;
            }
            return if e.is_timeout() { Outcome::Timeout } else { Outcome::ProtocolError };
        }
    };
    let view = match associate::parse(&rq) {
        Ok(v) => v,
        Err(e) => {
            audit.detail = Some(format!("malformed A-ASSOCIATE-RQ: {e}"));
            send_and_close(&mut client, &provider_abort(AbortReason::InvalidPduParameterValue), cfg).await;
            return Outcome::ProtocolError;
        }
    };
    audit.calling_ae = Some(display_raw(&view.calling_ae).trim_start().to_owned());
    audit.called_ae = Some(display_raw(&view.called_ae).trim_start().to_owned());
    log_structured_view(&rq);

    if let Admission::OverLimit(_) = admission {
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

    let mut upstream = match backend.connect(cfg.timeouts.connect).await {
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

    // Forward the client's bytes, patched in place only where needed (same
    // length; DESIGN.md "Forward the original RQ bytes"). Clamp what we
    // enforce: the backend learns the client's receive limit from the RQ and
    // must not be promised more than the relay passes.
    let max_to_client = clamp_max_length(&mut rq, view.max_length, cfg.max_pdu_length);
    let original_called = view.called_ae;
    let rewrite = backend.config.rewrite_called_ae_title && called != backend.config.ae_title;
    if rewrite {
        patch_called_ae(&mut rq, &backend.config.ae_title.to_wire());
    }
    let asked = Instant::now();
    let answer_deadline = asked + cfg.timeouts.acse;
    let answer = match timeout_at(answer_deadline, write_flush(&mut upstream.stream, &rq)).await {
        Ok(Ok(())) => read_associate_response(&mut upstream.stream, MAX_RESPONSE_LENGTH, answer_deadline).await,
        Ok(Err(e)) => Err(format!("cannot send the A-ASSOCIATE-RQ: {e}")),
        Err(_) => Err("cannot send the A-ASSOCIATE-RQ within the ACSE timeout".to_owned()),
    };
    let (pdu_type, mut response) = match answer {
        Ok(a) => {
            let waited = asked.elapsed();
            audit.scp_answer_ms = Some(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
            services.metrics.observe_scp_answer(&cfg.name, waited.as_secs_f64());
            a
        }
        Err(why) => {
            audit.association = Some(format!("no valid answer from the SCP: {why}"));
            let abort = provider_abort(AbortReason::NotSpecified);
            tokio::join!(send_and_close(&mut client, &abort, cfg), send_and_close(&mut upstream.stream, &abort, cfg));
            return Outcome::Forwarded;
        }
    };
    let mut max_to_backend = cfg.max_pdu_length;
    match pdu_type {
        PduType::AssociateAc => {
            let Ok(ac) = associate::parse(&response) else {
                audit.association = Some("malformed A-ASSOCIATE-AC from the SCP".to_owned());
                let abort = provider_abort(AbortReason::InvalidPduParameterValue);
                tokio::join!(
                    send_and_close(&mut client, &abort, cfg),
                    send_and_close(&mut upstream.stream, &abort, cfg)
                );
                return Outcome::Forwarded;
            };
            max_to_backend = clamp_max_length(&mut response, ac.max_length, cfg.max_pdu_length);
            if rewrite {
                // The client must see the AE titles it sent (PS3.8 §9.3.3:
                // the AC echoes the RQ's fields).
                patch_called_ae(&mut response, &original_called);
            }
            audit.association = Some("accepted".to_owned());
        }
        PduType::AssociateRj if response.len() == 10 => {
            audit.association =
                Some(format!("rejected by the SCP: {}", describe_rejection((response[7], response[8], response[9]))));
        }
        PduType::Abort if response.len() == 10 => {
            audit.association = Some(format!("aborted by the SCP: {}", describe_abort(response[8], response[9])));
        }
        other => {
            audit.association = Some(format!("malformed {} from the SCP", other.name()));
            let abort = provider_abort(AbortReason::InvalidPduParameterValue);
            tokio::join!(send_and_close(&mut client, &abort, cfg), send_and_close(&mut upstream.stream, &abort, cfg));
            return Outcome::Forwarded;
        }
    }
    if pdu_type != PduType::AssociateAc {
        tokio::join!(send_and_close(&mut client, &response, cfg), close(&mut upstream.stream, cfg));
        return Outcome::Forwarded;
    }
    if let Err(e) = timeout(cfg.timeouts.acse, write_flush(&mut client, &response))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")))
    {
        audit.end = Some("io_error".to_owned());
        audit.detail = Some(format!("cannot send the A-ASSOCIATE-AC to the client: {e}"));
        send_and_close(&mut upstream.stream, &provider_abort(AbortReason::NotSpecified), cfg).await;
        return Outcome::Forwarded;
    }

    let settings = RelaySettings {
        idle: cfg.timeouts.dimse,
        closing: cfg.timeouts.acse,
        max_to_backend,
        max_to_client,
        mode: cfg.relay_mode,
    };
    let counters = Counters {
        to_backend: services.metrics.bytes_counter(&cfg.name, Direction::ToBackend),
        to_client: services.metrics.bytes_counter(&cfg.name, Direction::ToClient),
        dimse: Some((services.metrics.dimse_counter_vec(), cfg.name.clone())),
    };
    // The association PDUs count too: bytes are what crossed the gateway.
    counters.to_backend.inc_by(rq.len() as u64);
    counters.to_client.inc_by(response.len() as u64);
    let report = relay::relay(client, upstream.stream, settings, counters, services.force_abort.clone()).await;
    audit.bytes_to_backend = rq.len() as u64 + report.bytes_to_backend;
    audit.bytes_to_client = response.len() as u64 + report.bytes_to_client;
    audit.end = Some(report.end.label().to_owned());
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
    Outcome::Forwarded
}

/// Behind a load balancer: reads its PROXY header (under the ACSE deadline,
/// before TLS), records the carried client as the audit's `peer` and the
/// balancer as `proxy`, then applies the allow list to the client. Refusals
/// close without a byte written, like the accept loop's: the cloud is not
/// speaking to us yet, the balancer is.
async fn proxy_phase(
    tcp: &mut TcpStream,
    versions: crate::config::ProxyVersions,
    cfg: &ListenerConfig,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<(), Outcome> {
    // `AuditRecord::new` sets `peer` to the TCP peer: here, the balancer.
    let Some(lb) = audit.peer else { return Err(Outcome::ProtocolError) };
    let header = match proxy_protocol::read_header(tcp, versions, deadline).await {
        Ok(h) => h,
        Err(e) => {
            audit.detail = Some(format!("from load balancer {lb}: {e}"));
            return Err(if e.is_timeout() { Outcome::Timeout } else { Outcome::ProtocolError });
        }
    };
    let client = header.client_or(lb);
    audit.proxy = Some(lb);
    audit.peer = Some(client);
    if !cfg.allows(client.ip()) {
        audit.detail = Some(format!("source address not in the allow list (PROXY {})", header.describe()));
        return Err(Outcome::DeniedIp);
    }
    Ok(())
}

/// Returns the P-DATA limit for traffic towards the peer that sent this
/// A-ASSOCIATE PDU's Maximum Length, patching the value in place when it is 0
/// (unlimited) or above `cap` (PS3.8 D.1; the PDU length does not change).
fn clamp_max_length(pdu: &mut [u8], max_length: Option<(u32, usize)>, cap: u32) -> u32 {
    match max_length {
        Some((value, _)) if value != 0 && value <= cap => value,
        Some((_, offset)) => {
            // `offset` came from parsing this very PDU: in bounds.
            if let Some(field) = pdu.get_mut(offset..offset + 4) {
                field.copy_from_slice(&cap.to_be_bytes());
            }
            cap
        }
        // Mandatory in RQ and AC, but be lenient: enforce the cap silently.
        None => cap,
    }
}

/// dicom-ul's structured view of the request, for debugging interoperability
/// (proposed SOP classes; no patient data). A library parse failure never
/// rejects a request the raw fields accept (DESIGN.md).
fn log_structured_view(rq: &[u8]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    match dicom_ul::pdu::read_pdu(rq, dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(dicom_ul::pdu::Pdu::AssociationRQ(parsed))) => {
            let syntaxes: Vec<&str> =
                parsed.presentation_contexts.iter().map(|pc| pc.abstract_syntax.as_str()).collect();
            tracing::debug!(abstract_syntaxes = ?syntaxes, "A-ASSOCIATE-RQ presentation contexts");
        }
        Ok(_) => tracing::debug!("dicom-ul read the A-ASSOCIATE-RQ as another PDU"),
        Err(e) => {
            tracing::debug!(error = %e, "dicom-ul cannot parse the A-ASSOCIATE-RQ; forwarding on the raw fields")
        }
    }
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
        let mut sink = [0u8; 4096];
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
