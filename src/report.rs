//! What a finished connection was, as one typed value: the [`Report`] that
//! `connection::record` builds once from what the connection's phases
//! returned, and that every consumer reads — the audit line
//! ([`crate::audit`]), the metrics, the status page's ring
//! ([`crate::recent`]), the IHE ATNA trail ([`crate::atna`]). Each consumer
//! writes its own text from it; none decides anything by reading text back.
//!
//! Here too are the values of a connection's outcome as the metrics label
//! them ([`Outcome`], [`AssociationResult`]), and the short id that ties a
//! connection's log lines together ([`ConnectionId`]). Pure data, no I/O.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::dicom::pdu::{describe_abort, describe_rejection, Rejection};
use crate::relay::{End, Operations};
use crate::tls::{HandshakeFailure, SessionInfo};

/// How a connection ended, as counted in `dicomgate_connections_total{outcome}`.
/// The strings are API (dashboards and alerts match them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The A-ASSOCIATE-RQ went to a backend server (whatever it answered).
    Forwarded,
    /// Source address not in the listener's allow list; closed before TLS.
    DeniedIp,
    TlsError,
    /// The client certificate is listed in a CRL of `tls.client_crls`.
    TlsRevoked,
    RejectedCallingAe,
    RejectedCalledAe,
    /// Not DICOM, a malformed or unexpected PDU, an unsupported protocol version.
    ProtocolError,
    /// The ACSE deadline passed before a complete A-ASSOCIATE-RQ.
    Timeout,
    BackendUnavailable,
    /// Listener at `max_connections`, or evicted from the pre-association budget.
    Limit,
    /// The shutdown grace period ended before the A-ASSOCIATE-RQ reached an
    /// SCP (PROXY header, TLS handshake, first PDU or backend connect).
    Shutdown,
    /// The source is blocked by the AE-title guessing protection; closed before TLS.
    Blocked,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Forwarded,
        Outcome::DeniedIp,
        Outcome::TlsError,
        Outcome::RejectedCallingAe,
        Outcome::RejectedCalledAe,
        Outcome::ProtocolError,
        Outcome::Timeout,
        Outcome::BackendUnavailable,
        Outcome::Limit,
        Outcome::Shutdown,
        Outcome::TlsRevoked,
        Outcome::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::DeniedIp => "denied_ip",
            Outcome::TlsError => "tls_error",
            Outcome::TlsRevoked => "tls_revoked",
            Outcome::RejectedCallingAe => "rejected_calling_ae",
            Outcome::RejectedCalledAe => "rejected_called_ae",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Timeout => "timeout",
            Outcome::BackendUnavailable => "backend_unavailable",
            Outcome::Limit => "limit",
            Outcome::Shutdown => "shutdown",
            Outcome::Blocked => "blocked",
        }
    }

    /// Every label value, for exporting each series as 0 from the start.
    pub fn labels() -> impl Iterator<Item = &'static str> {
        Outcome::ALL.into_iter().map(Outcome::as_str)
    }
}

/// `result` label of `dicomgate_association_results_total`: what the SCP
/// answered a forwarded A-ASSOCIATE-RQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssociationResult {
    Accepted,
    Rejected,
    /// A-ABORT from the SCP.
    Aborted,
    /// Timeout or connection lost before a whole answer.
    NoAnswer,
    /// An answer that is not a well-formed AC/RJ/ABORT.
    Malformed,
}

impl AssociationResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AssociationResult::Accepted => "accepted",
            AssociationResult::Rejected => "rejected",
            AssociationResult::Aborted => "aborted",
            AssociationResult::NoAnswer => "no_answer",
            AssociationResult::Malformed => "malformed",
        }
    }
}

/// A connection's short id: 8 hex digits in its tracing span (so in every
/// log line it causes) and in its audit line. Sequential within a process,
/// from a random start, so that ids of the processes before and after a
/// restart or a binary upgrade do not collide in one journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u32);

impl ConnectionId {
    pub fn next() -> ConnectionId {
        static NEXT: OnceLock<AtomicU32> = OnceLock::new();
        let next = NEXT.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // std's per-process random hasher keys: randomness without a dependency.
            let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
            AtomicU32::new(seed as u32)
        });
        ConnectionId(next.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Who a connection was, as its phases learned it.
#[derive(Debug, Clone)]
pub struct Trail {
    /// The TCP peer: the client, or the load balancer behind PROXY protocol.
    pub tcp_peer: SocketAddr,
    /// The listener is `insecure_plaintext` (no TLS was ever expected).
    pub plaintext: bool,
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
        Trail {
            tcp_peer,
            plaintext: false,
            proxied_client: None,
            tls: None,
            calling_ae: None,
            called_ae: None,
            backend: None,
        }
    }

    /// The client: the address a PROXY header carried, else the TCP peer.
    pub fn client(&self) -> SocketAddr {
        self.proxied_client.unwrap_or(self.tcp_peer)
    }

    /// Behind a load balancer: the balancer's own address.
    pub fn proxy(&self) -> Option<SocketAddr> {
        self.proxied_client.map(|_| self.tcp_peer)
    }
}

/// What became of the association request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Association {
    /// Refused by the gateway with this A-ASSOCIATE-RJ (policy, limit, no backend).
    RejectedByGateway(Rejection),
    /// The SCP's A-ASSOCIATE-AC reached the client.
    Accepted,
    /// The SCP accepted, but the client could not take the A-ASSOCIATE-AC.
    Undelivered,
    /// The SCP's A-ASSOCIATE-RJ (result, source, reason), passed on.
    RejectedByScp((u8, u8, u8)),
    /// The SCP's A-ABORT, passed on.
    AbortedByScp { source: u8, reason: u8 },
    /// Nothing usable came back from the SCP (why, in words).
    NoAnswer(String),
    /// The SCP's answer, of this PDU type, was malformed.
    Malformed(&'static str),
}

impl Association {
    /// The association did not come about: the status page shows it in red.
    pub fn refused(&self) -> bool {
        !matches!(self, Association::Accepted | Association::Undelivered)
    }

    /// The SCP's answer as `dicomgate_association_results_total` counts it;
    /// `None` when no RQ reached an SCP.
    pub fn result(&self) -> Option<AssociationResult> {
        match self {
            Association::RejectedByGateway(_) => None,
            Association::Accepted | Association::Undelivered => Some(AssociationResult::Accepted),
            Association::RejectedByScp(_) => Some(AssociationResult::Rejected),
            Association::AbortedByScp { .. } => Some(AssociationResult::Aborted),
            Association::NoAnswer(_) => Some(AssociationResult::NoAnswer),
            Association::Malformed(_) => Some(AssociationResult::Malformed),
        }
    }
}

/// The audit line's `association` field, the status page's and `/status`'s.
impl fmt::Display for Association {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Association::RejectedByGateway(rejection) => rejection.fmt(f),
            Association::Accepted | Association::Undelivered => f.write_str("accepted"),
            Association::RejectedByScp(triple) => write!(f, "rejected by the SCP: {}", describe_rejection(*triple)),
            Association::AbortedByScp { source, reason } => {
                write!(f, "aborted by the SCP: {}", describe_abort(*source, *reason))
            }
            Association::NoAnswer(why) => write!(f, "no valid answer from the SCP: {why}"),
            Association::Malformed(pdu) => write!(f, "malformed {pdu} from the SCP"),
        }
    }
}

/// Everything known about a finished connection.
#[derive(Debug, Clone)]
pub struct Report {
    pub listener: String,
    pub id: ConnectionId,
    pub trail: Trail,
    /// The backend server the RQ went to.
    pub server: Option<String>,
    pub outcome: Outcome,
    pub association: Option<Association>,
    /// How the relayed association ended; also `io_error` when the
    /// A-ASSOCIATE-AC could not be delivered.
    pub end: Option<End>,
    /// DIMSE operations seen by the relay.
    pub operations: Operations,
    /// From forwarding the A-ASSOCIATE-RQ to the SCP's whole answer.
    pub scp_answer: Option<Duration>,
    /// Why, in words, when something failed or was refused (made once, from
    /// the typed error; only ever shown).
    pub detail: Option<String>,
    /// For a failed TLS handshake: what kind of failure.
    pub handshake: Option<HandshakeFailure>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
}

impl Report {
    /// A report that knows who the connection was and how it ended; the
    /// rest (answer, bytes, DIMSE, why) is filled in by whoever knows it.
    pub fn new(listener: &str, id: ConnectionId, trail: Trail, outcome: Outcome, duration: Duration) -> Report {
        Report {
            listener: listener.to_owned(),
            id,
            trail,
            server: None,
            outcome,
            association: None,
            end: None,
            operations: Operations::new(),
            scp_answer: None,
            detail: None,
            handshake: None,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            duration,
        }
    }

    /// Whether the connection was turned away (the status page makes these stand out).
    pub fn refused(&self) -> bool {
        self.outcome != Outcome::Forwarded || self.association.as_ref().is_some_and(Association::refused)
    }

    /// The DIMSE operations as the audit line writes them: `C-STORE rq=20 success=20`.
    pub fn dimse(&self) -> Option<String> {
        (!self.operations.is_empty()).then(|| crate::relay::describe_operations(&self.operations))
    }
}

/// Milliseconds, saturating (audit fields, JSON).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_distinct_eight_hex_digits() {
        let (a, b) = (ConnectionId::next(), ConnectionId::next());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 8);
        assert!(a.to_string().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn refusals_are_marked_from_the_typed_answer() {
        let accepted = Association::Accepted;
        let by_scp = Association::RejectedByScp((1, 1, 3));
        let undelivered = Association::Undelivered;
        assert!(!accepted.refused() && !undelivered.refused());
        assert!(by_scp.refused() && Association::AbortedByScp { source: 2, reason: 0 }.refused());
        assert_eq!(by_scp.result(), Some(AssociationResult::Rejected));
        assert_eq!(Association::RejectedByGateway(Rejection::LocalLimitExceeded).result(), None);
    }
}
