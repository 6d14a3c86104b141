//! Why a connection was refused, as the refusal log keys and words it: the
//! refusals anyone can cause for free ([`SummarisedRefusal`]'s own
//! variants), and the refusals of allowed peers that the audit trail
//! reports ([`Audited`]: the first from a quiet source in full, the rest as
//! summaries).

use crate::admission::Eviction;
use crate::atna::AlertReason;

/// A refusal before (or instead of) an association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SummarisedRefusal {
    /// Not in the listener's allow list (closed before TLS).
    DeniedIp,
    /// A PROXY listener: the TCP peer is not in `proxy_protocol_from`.
    NotLoadBalancer,
    /// The PROXY header carried a client not in the allow list.
    ProxyDeniedIp,
    /// A-ASSOCIATE-RQ read, but every `max_connections` slot is taken (RJ 2/3/2).
    OverLimit,
    /// Evicted from the pre-association budget before its RQ was complete.
    Evicted(Eviction),
    /// An allowed peer's refusal that the audit trail reports.
    Audited(Audited),
}

/// A refusal of an allowed peer that the audit trail reports: its first
/// from a quiet source gets the audit line, the status page's entry and
/// the ATNA Security Alert; the rest of the interval are counted into one
/// summary line and one summary Security Alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audited {
    CallingAe,
    CalledAe,
    /// TLS: the client certificate was missing or refused.
    ClientCertificate,
    /// TLS: any other handshake failure (versions, suites, garbage).
    TlsHandshake,
    /// TLS: closed before a ClientHello (a TCP health check, a port probe).
    TlsClosed,
    /// Refused at accept by the guessing protection.
    Blocked,
}

impl Audited {
    /// The Security Alert's reason; `None`: not sent to ATNA (a closed probe).
    pub fn alert(self) -> Option<AlertReason> {
        match self {
            Audited::CallingAe => Some(AlertReason::CallingAeTitle),
            Audited::CalledAe => Some(AlertReason::CalledAeTitle),
            Audited::ClientCertificate => Some(AlertReason::ClientCertificate),
            Audited::TlsHandshake => Some(AlertReason::TlsHandshake),
            Audited::TlsClosed => None,
            Audited::Blocked => Some(AlertReason::Blocked),
        }
    }
}

impl SummarisedRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SummarisedRefusal::DeniedIp => "denied_ip",
            SummarisedRefusal::NotLoadBalancer => "not_load_balancer",
            SummarisedRefusal::ProxyDeniedIp => "proxy_denied_ip",
            SummarisedRefusal::OverLimit => "limit",
            SummarisedRefusal::Evicted(Eviction::SourceCap) => "evicted_source_cap",
            SummarisedRefusal::Evicted(Eviction::BudgetFull) => "evicted_budget_full",
            SummarisedRefusal::Audited(Audited::CallingAe) => "rejected_calling_ae",
            SummarisedRefusal::Audited(Audited::CalledAe) => "rejected_called_ae",
            SummarisedRefusal::Audited(Audited::ClientCertificate) => "tls_client_certificate",
            SummarisedRefusal::Audited(Audited::TlsHandshake) => "tls_error",
            SummarisedRefusal::Audited(Audited::TlsClosed) => "tls_closed",
            SummarisedRefusal::Audited(Audited::Blocked) => "blocked",
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            SummarisedRefusal::DeniedIp => "source address not in the allow list; closed before TLS",
            SummarisedRefusal::NotLoadBalancer => {
                "source address not in proxy_protocol_from: only the load balancers may connect"
            }
            SummarisedRefusal::ProxyDeniedIp => "the client address of the PROXY header is not in the allow list",
            SummarisedRefusal::OverLimit => "listener at max_connections: A-ASSOCIATE-RJ local-limit-exceeded",
            SummarisedRefusal::Evicted(Eviction::SourceCap) => {
                "no A-ASSOCIATE-RQ yet and its source reached its share of the pre-association budget: \
                 the oldest such connection of the source was closed"
            }
            SummarisedRefusal::Evicted(Eviction::BudgetFull) => {
                "no A-ASSOCIATE-RQ yet and the pre-association budget was full: the least advanced \
                 such connection was closed"
            }
            SummarisedRefusal::Audited(Audited::CallingAe) => "calling AE title refused (A-ASSOCIATE-RJ 1/1/3)",
            SummarisedRefusal::Audited(Audited::CalledAe) => "called AE title refused (A-ASSOCIATE-RJ 1/1/7)",
            SummarisedRefusal::Audited(Audited::ClientCertificate) => "client certificate refused or missing",
            SummarisedRefusal::Audited(Audited::TlsHandshake) => "TLS handshake failed",
            SummarisedRefusal::Audited(Audited::TlsClosed) => "closed before sending a TLS ClientHello",
            SummarisedRefusal::Audited(Audited::Blocked) => {
                "source blocked by the AE-title guessing protection; closed before TLS"
            }
        }
    }
}
