//! What a connection's phases return, and the one place where a finished
//! connection is put into words: [`finish`] builds the audit record from the
//! phases' results, emits it and counts the metrics. Nothing else writes an
//! audit field or a per-connection metric label (live byte and DIMSE
//! counters aside), so a new consumer of finished connections (a syslog
//! audit trail, a ring of recent associations) hooks in here.

use std::net::SocketAddr;
use std::time::Duration;

use super::association::{Answer, Exchanged};
use super::first_pdu::FirstPduError;
use super::Services;
use crate::audit::AuditRecord;
use crate::backend::ConnectFailure;
use crate::config::ServerAddress;
use crate::dicom::associate::MalformedAssociate;
use crate::dicom::pdu::{describe_abort, describe_rejection, Rejection};
use crate::listener::Refusal as SummarisedRefusal;
use crate::metrics::Outcome;
use crate::proxy_protocol::{ProxyError, ProxyHeader};
use crate::relay::{self, RelayEnd, RelayReport, Side, Truncation};
use crate::routing::Refusal;
use crate::tls::revocation::RevokedCertificate;
use crate::tls::{HandshakeFailure, SessionInfo};

/// The phase of a connection, as failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The accept loop: allow list and connection limits, before any read.
    Accept,
    ProxyHeader,
    TlsHandshake,
    FirstPdu,
    Policy,
    BackendConnect,
    ScpAnswer,
    Relay,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accept => "accept",
            Phase::ProxyHeader => "proxy header",
            Phase::TlsHandshake => "TLS handshake",
            Phase::FirstPdu => "first PDU",
            Phase::Policy => "policy",
            Phase::BackendConnect => "backend connect",
            Phase::ScpAnswer => "SCP answer",
            Phase::Relay => "relay",
        }
    }
}

/// Why a connection ended before its A-ASSOCIATE-RQ reached an SCP: which
/// phase, which side, what the peer did. Words only in `Display`.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("source address not in the allow list")]
    SourceDenied,
    #[error("source address not in proxy_protocol_from: only the load balancers may connect")]
    NotALoadBalancer,
    #[error("listener at max_connections and its overflow answers; closed")]
    Overflow,
    #[error("from load balancer {lb}: {error}")]
    ProxyHeader { lb: SocketAddr, error: ProxyError },
    #[error(
        "from load balancer {lb}: PROXY {} carries no client address; refused (check the balancer's health on \
         /readyz, or set proxy_protocol_allow_local: true)",
        .header.describe()
    )]
    ProxyWithoutClient { lb: SocketAddr, header: ProxyHeader },
    #[error("source address not in the allow list (PROXY {})", .header.describe())]
    ProxiedClientDenied { header: ProxyHeader },
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error(
        "TLS handshake failed: the client's certificate is X.509 v1, which is refused; the cloud must {}",
        crate::tls::REISSUE_AS_V3
    )]
    TlsClientCertV1,
    #[error("TLS handshake failed: the client certificate is revoked ({0}): a CRL of tls.client_crls lists it")]
    TlsRevoked(RevokedCertificate),
    #[error("TLS handshake not complete within the ACSE timeout")]
    TlsTimeout,
    #[error(transparent)]
    FirstPdu(FirstPduError),
    #[error("malformed A-ASSOCIATE-RQ: {0}")]
    MalformedRq(MalformedAssociate),
    #[error("listener at max_connections ({0})")]
    OverLimit(usize),
    #[error("{}", .0.why)]
    Policy(Refusal),
    /// Configuration validation guarantees every route names a backend.
    #[error("route names unknown backend {0:?}")]
    UnknownBackend(String),
    #[error(transparent)]
    Backend(ConnectFailure),
    /// `shutdown.grace_period` ended while the connection was in this phase.
    #[error("the gateway shut down during the {} (grace period over)", .0.as_str())]
    Shutdown(Phase),
}

impl Refused {
    pub fn phase(&self) -> Phase {
        match self {
            Refused::SourceDenied | Refused::NotALoadBalancer | Refused::Overflow => Phase::Accept,
            Refused::ProxyHeader { .. } | Refused::ProxyWithoutClient { .. } | Refused::ProxiedClientDenied { .. } => {
                Phase::ProxyHeader
            }
            Refused::Tls(_) | Refused::TlsClientCertV1 | Refused::TlsRevoked(_) | Refused::TlsTimeout => {
                Phase::TlsHandshake
            }
            Refused::FirstPdu(_) | Refused::MalformedRq(_) => Phase::FirstPdu,
            Refused::OverLimit(_) | Refused::Policy(_) => Phase::Policy,
            Refused::UnknownBackend(_) | Refused::Backend(_) => Phase::BackendConnect,
            Refused::Shutdown(phase) => *phase,
        }
    }

    /// The refusal-log reason when this refusal is summarised rather than
    /// audited (see [`crate::listener::refusals`]).
    pub fn summarised(&self) -> Option<SummarisedRefusal> {
        match self {
            Refused::SourceDenied => Some(SummarisedRefusal::DeniedIp),
            Refused::NotALoadBalancer => Some(SummarisedRefusal::NotLoadBalancer),
            Refused::ProxiedClientDenied { .. } => Some(SummarisedRefusal::ProxyDeniedIp),
            Refused::OverLimit(_) => Some(SummarisedRefusal::OverLimit),
            _ => None,
        }
    }

    /// For a failed TLS handshake: what kind of failure (see
    /// [`HandshakeFailure`]); `None` for every other refusal.
    pub fn handshake_failure(&self) -> Option<HandshakeFailure> {
        match self {
            Refused::Tls(e) => Some(HandshakeFailure::of(e)),
            Refused::TlsClientCertV1 | Refused::TlsRevoked(_) => Some(HandshakeFailure::ClientCertificate),
            Refused::TlsTimeout => Some(HandshakeFailure::Other),
            _ => None,
        }
    }

    /// The peer whose behaviour (or absence) ended the connection.
    pub fn side(&self) -> Side {
        match self {
            Refused::UnknownBackend(_) | Refused::Backend(_) => Side::Backend,
            Refused::Shutdown(Phase::BackendConnect) => Side::Backend,
            _ => Side::Client,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Refused::ProxyHeader { error, .. } if error.is_timeout() => Outcome::Timeout,
            Refused::FirstPdu(e) if e.is_timeout() => Outcome::Timeout,
            Refused::ProxyHeader { .. }
            | Refused::ProxyWithoutClient { .. }
            | Refused::FirstPdu(_)
            | Refused::MalformedRq(_) => Outcome::ProtocolError,
            Refused::SourceDenied | Refused::NotALoadBalancer | Refused::ProxiedClientDenied { .. } => {
                Outcome::DeniedIp
            }
            Refused::Overflow => Outcome::Limit,
            Refused::Tls(_) | Refused::TlsClientCertV1 => Outcome::TlsError,
            Refused::TlsRevoked(_) => Outcome::TlsRevoked,
            Refused::TlsTimeout => Outcome::Timeout,
            Refused::OverLimit(_) => Outcome::Limit,
            Refused::Policy(refusal) => refusal.outcome,
            Refused::UnknownBackend(_) | Refused::Backend(_) => Outcome::BackendUnavailable,
            Refused::Shutdown(_) => Outcome::Shutdown,
        }
    }

    /// The A-ASSOCIATE-RJ the audit names as the association's result.
    fn rejection(&self) -> Option<Rejection> {
        match self {
            Refused::Policy(refusal) => Some(refusal.rejection),
            Refused::Backend(_) | Refused::Shutdown(Phase::BackendConnect) => Some(Rejection::TemporaryCongestion),
            _ => None,
        }
    }
}

/// Who the connection was, as the phases returned it.
#[derive(Debug)]
pub struct Trail {
    /// The TCP peer: the client, or the load balancer behind PROXY protocol.
    pub tcp_peer: SocketAddr,
    /// The client a PROXY header carried (or the balancer, if it carried none).
    pub proxied_client: Option<SocketAddr>,
    pub tls: Option<SessionInfo>,
    /// From the A-ASSOCIATE-RQ, escaped for display.
    pub calling_ae: Option<String>,
    pub called_ae: Option<String>,
    /// The backend the route chose.
    pub backend: Option<String>,
}

impl Trail {
    pub fn new(tcp_peer: SocketAddr) -> Trail {
        Trail { tcp_peer, proxied_client: None, tls: None, calling_ae: None, called_ae: None, backend: None }
    }
}

/// An association that reached an SCP.
#[derive(Debug)]
pub struct Forwarded {
    pub server: ServerAddress,
    pub exchanged: Exchanged,
    /// `None` unless the SCP accepted and the client got the AC.
    pub relay: Option<RelayReport>,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ending {
    Refused(Refused),
    Forwarded(Box<Forwarded>),
}

impl Ending {
    pub fn outcome(&self) -> Outcome {
        match self {
            Ending::Refused(r) => r.outcome(),
            Ending::Forwarded(_) => Outcome::Forwarded,
        }
    }
}

/// The end of every connection: one audit event, the connection's metrics,
/// and the consumers of finished connections: the status page's ring and the
/// IHE ATNA trail (each decides by outcome what concerns it).
pub fn finish(listener: &str, trail: Trail, ending: &Ending, elapsed: Duration, services: &Services) {
    let metrics = &services.metrics;
    let outcome = ending.outcome();
    metrics.connection_ended(listener, outcome);
    if let Ending::Forwarded(f) = ending {
        metrics.observe_association(listener, elapsed.as_secs_f64());
        metrics.association_result(listener, f.exchanged.answer.result());
        if let Some(waited) = f.exchanged.waited {
            metrics.observe_scp_answer(listener, waited.as_secs_f64());
        }
        if let Some(report) = &f.relay {
            metrics.association_ended(listener, report.end.kind());
        }
    }
    // What anyone can cause for free (a stranger's address, a full gateway)
    // is summarised in the log per source, not written one audit line each.
    if let Ending::Refused(refused) = ending {
        if let Some(refusal) = refused.summarised() {
            let client = trail.proxied_client.unwrap_or(trail.tcp_peer);
            services.refusals.record(listener, client.ip(), refusal);
            return;
        }
    }
    let audit = record(listener, trail, ending);
    audit.emit(outcome, elapsed);
    services.recent.record(&audit, outcome, elapsed);
    let handshake = match ending {
        Ending::Refused(refused) => refused.handshake_failure(),
        Ending::Forwarded(_) => None,
    };
    services.atna.connection_ended(outcome, handshake, &audit);
}

/// The audit record, in words, from the phases' results.
pub fn record(listener: &str, trail: Trail, ending: &Ending) -> AuditRecord {
    let (peer, proxy) = match trail.proxied_client {
        Some(client) => (client, Some(trail.tcp_peer)),
        None => (trail.tcp_peer, None),
    };
    let mut audit = AuditRecord {
        listener: listener.to_owned(),
        peer: Some(peer),
        proxy,
        tls: trail.tls,
        calling_ae: trail.calling_ae,
        called_ae: trail.called_ae,
        backend: trail.backend,
        ..AuditRecord::default()
    };
    match ending {
        Ending::Refused(refused) => {
            audit.detail = Some(refused.to_string());
            audit.association = refused.rejection().map(|r| r.to_string());
        }
        Ending::Forwarded(f) => {
            let ex = &f.exchanged;
            audit.server = Some(f.server.to_string());
            audit.scp_answer_ms = ex.waited.map(millis);
            audit.bytes_to_backend = ex.bytes_to_backend;
            audit.bytes_to_client = ex.bytes_to_client;
            audit.association = Some(ex.answer.describe());
            if let Answer::Undelivered(e) = &ex.answer {
                audit.end = Some(crate::metrics::End::IoError.as_str().to_owned());
                audit.detail = Some(format!("cannot send the A-ASSOCIATE-AC to the client: {e}"));
            }
            if let Some(report) = &f.relay {
                audit.bytes_to_backend += report.bytes_to_backend;
                audit.bytes_to_client += report.bytes_to_client;
                audit.end = Some(report.end.kind().as_str().to_owned());
                if !report.operations.is_empty() {
                    audit.dimse = Some(relay::describe_operations(&report.operations));
                }
                audit.detail = relay_detail(&report.end);
            }
        }
    }
    audit
}

fn relay_detail(end: &RelayEnd) -> Option<String> {
    match end {
        RelayEnd::Aborted { by, source, reason } => {
            Some(format!("A-ABORT from the {}: {}", by.as_str(), describe_abort(*source, *reason)))
        }
        RelayEnd::ProtocolError { by, error } => Some(format!("{} sent {error}", by.as_str())),
        RelayEnd::Io { side, error } => Some(format!("{}: {error}", side.as_str())),
        RelayEnd::Closed { by } | RelayEnd::Truncated { by, how: Truncation::MidPdu } => {
            Some(format!("closed by the {}", by.as_str()))
        }
        RelayEnd::Truncated { by, how: Truncation::NoCloseNotify } => {
            Some(format!("closed by the {} without TLS close_notify", by.as_str()))
        }
        RelayEnd::Released | RelayEnd::IdleTimeout | RelayEnd::Shutdown => None,
        RelayEnd::LifetimeExceeded => Some("timeouts.association reached".to_owned()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Answer {
    /// The audit's `association` field.
    fn describe(&self) -> String {
        match self {
            Answer::Accepted(_) | Answer::Undelivered(_) => "accepted".to_owned(),
            Answer::Rejected(triple) => format!("rejected by the SCP: {}", describe_rejection(*triple)),
            Answer::Aborted { source, reason } => format!("aborted by the SCP: {}", describe_abort(*source, *reason)),
            Answer::NoAnswer(why) => format!("no valid answer from the SCP: {why}"),
            Answer::Malformed(pdu) => format!("malformed {pdu} from the SCP"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::End;

    fn trail() -> Trail {
        let mut t = Trail::new("127.0.0.2:4000".parse().unwrap());
        t.calling_ae = Some("CLOUD".into());
        t.called_ae = Some("PACS".into());
        t.backend = Some("pacs".into());
        t
    }

    fn forwarded(answer: Answer, relay: Option<RelayReport>) -> Ending {
        let exchanged =
            Exchanged { answer, waited: Some(Duration::from_millis(7)), bytes_to_backend: 200, bytes_to_client: 180 };
        let server = ServerAddress { host: "127.0.0.1".into(), port: 104 };
        Ending::Forwarded(Box::new(Forwarded { server, exchanged, relay }))
    }

    #[test]
    fn a_refusal_says_its_phase_side_and_answer() {
        let refused = Refused::Backend(ConnectFailure { attempts: Vec::new() });
        assert_eq!((refused.phase(), refused.side()), (Phase::BackendConnect, Side::Backend));
        let ending = Ending::Refused(refused);
        assert_eq!(ending.outcome(), Outcome::BackendUnavailable);
        let audit = record("store", trail(), &ending);
        assert_eq!(audit.association.as_deref(), Some(Rejection::TemporaryCongestion.to_string().as_str()));
        assert!(audit.detail.as_deref().is_some_and(|d| d.starts_with("no backend server reachable")), "{audit:?}");
        assert_eq!((audit.server, audit.end), (None, None));
    }

    #[test]
    fn the_relay_end_and_both_phases_bytes_reach_the_audit() {
        let report = RelayReport {
            end: RelayEnd::Truncated { by: Side::Client, how: Truncation::NoCloseNotify },
            bytes_to_backend: 1000,
            bytes_to_client: 20,
            operations: Default::default(),
        };
        let negotiated = super::super::Negotiated { max_to_backend: 16384, max_to_client: 16384 };
        let ending = forwarded(Answer::Accepted(negotiated), Some(report));
        let audit = record("store", trail(), &ending);
        assert_eq!(audit.end.as_deref(), Some(End::Truncated.as_str()));
        assert_eq!(audit.detail.as_deref(), Some("closed by the client without TLS close_notify"));
        assert_eq!((audit.bytes_to_backend, audit.bytes_to_client), (1200, 200));
        assert_eq!((audit.association.as_deref(), audit.scp_answer_ms), (Some("accepted"), Some(7)));
        assert_eq!(audit.server.as_deref(), Some("127.0.0.1:104"));
    }

    #[test]
    fn a_proxied_client_is_the_peer_and_the_balancer_the_proxy() {
        let mut t = trail();
        t.proxied_client = Some("203.0.113.9:5000".parse().unwrap());
        let audit = record("store", t, &forwarded(Answer::Rejected((1, 1, 3)), None));
        assert_eq!(audit.peer, Some("203.0.113.9:5000".parse().unwrap()));
        assert_eq!(audit.proxy, Some("127.0.0.2:4000".parse().unwrap()));
        assert!(audit.association.as_deref().is_some_and(|a| a.starts_with("rejected by the SCP")), "{audit:?}");
        assert_eq!(audit.end, None);
    }
}
