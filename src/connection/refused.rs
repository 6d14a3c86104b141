//! Why a connection ended before its A-ASSOCIATE-RQ reached an SCP: the
//! typed [`Refused`] every phase before the backend returns (which phase,
//! which side, what the peer did), and what each refusal means for the
//! metrics, the audit trail, the refusal log and the guessing protection.
//! Words only in `Display`.

use std::net::SocketAddr;
use std::time::Duration;

use super::first_pdu::FirstPduError;
use crate::admission::Eviction;
use crate::backend::ConnectFailure;
use crate::dicom::associate::MalformedAssociate;
use crate::dicom::pdu::Rejection;
use crate::proxy_protocol::{ProxyError, ProxyHeader};
use crate::refusals::{Audited, SummarisedRefusal};
use crate::relay::Side;
use crate::report::Outcome;
use crate::routing::PolicyRejection;
use crate::tls::revocation::RevokedCertificate;
use crate::tls::HandshakeFailure;

/// The phase of a connection, as failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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
    /// Evicted from the pre-association budget in the instant its RQ was
    /// complete (the listener's guard counts the other evictions).
    #[error("evicted from the pre-association budget ({})", .0.as_str())]
    Evicted(Eviction),
    #[error(transparent)]
    Policy(PolicyRejection),
    /// Configuration validation guarantees every route names a backend.
    #[error("route names unknown backend {0:?}")]
    UnknownBackend(String),
    #[error(transparent)]
    Backend(ConnectFailure),
    /// `shutdown.grace_period` ended while the connection was in this phase.
    #[error("the gateway shut down during the {} (grace period over)", .0.as_str())]
    Shutdown(Phase),
    /// The AE-title guessing protection blocks the source (closed before TLS).
    #[error(
        "source blocked for {}s more after repeated refused associations or failed TLS handshakes \
         (guessing protection; SIGHUP clears it)",
        .left.as_secs().max(1)
    )]
    Blocked { left: Duration },
}

impl Refused {
    pub fn phase(&self) -> Phase {
        match self {
            Refused::ProxyHeader { .. } | Refused::ProxyWithoutClient { .. } | Refused::ProxiedClientDenied { .. } => {
                Phase::ProxyHeader
            }
            Refused::Tls(_) | Refused::TlsClientCertV1 | Refused::TlsRevoked(_) | Refused::TlsTimeout => {
                Phase::TlsHandshake
            }
            Refused::FirstPdu(_) | Refused::MalformedRq(_) => Phase::FirstPdu,
            Refused::OverLimit(_) | Refused::Evicted(_) | Refused::Policy(_) => Phase::Policy,
            Refused::UnknownBackend(_) | Refused::Backend(_) => Phase::BackendConnect,
            Refused::Shutdown(phase) => *phase,
            Refused::Blocked { .. } => Phase::ProxyHeader,
        }
    }

    /// The refusal-log reason when this refusal is summarised rather than
    /// audited (see [`crate::refusals`]): what anyone can cause for free.
    pub fn summarised(&self) -> Option<SummarisedRefusal> {
        match self {
            Refused::ProxiedClientDenied { .. } => Some(SummarisedRefusal::ProxyDeniedIp),
            Refused::OverLimit(_) => Some(SummarisedRefusal::OverLimit),
            Refused::Evicted(why) => Some(SummarisedRefusal::Evicted(*why)),
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
            Refused::ProxiedClientDenied { .. } => Outcome::DeniedIp,
            Refused::Tls(_) | Refused::TlsClientCertV1 => Outcome::TlsError,
            Refused::TlsRevoked(_) => Outcome::TlsRevoked,
            Refused::TlsTimeout => Outcome::Timeout,
            Refused::OverLimit(_) | Refused::Evicted(_) => Outcome::Limit,
            Refused::Policy(PolicyRejection::ProtocolVersion(_)) => Outcome::ProtocolError,
            Refused::Policy(PolicyRejection::CallingAeInvalid { .. } | PolicyRejection::CallingAeNotAllowed(_)) => {
                Outcome::RejectedCallingAe
            }
            Refused::Policy(PolicyRejection::CalledAeInvalid { .. } | PolicyRejection::NoRoute(_)) => {
                Outcome::RejectedCalledAe
            }
            Refused::UnknownBackend(_) | Refused::Backend(_) => Outcome::BackendUnavailable,
            Refused::Shutdown(_) => Outcome::Shutdown,
            Refused::Blocked { .. } => Outcome::Blocked,
        }
    }

    /// For a refusal of an allowed peer the audit trail reports: its kind
    /// (the first of a quiet source is reported in full, the rest summarised).
    pub fn audited(&self) -> Option<Audited> {
        match self {
            Refused::Policy(PolicyRejection::CallingAeInvalid { .. } | PolicyRejection::CallingAeNotAllowed(_)) => {
                Some(Audited::CallingAe)
            }
            Refused::Policy(PolicyRejection::CalledAeInvalid { .. } | PolicyRejection::NoRoute(_)) => {
                Some(Audited::CalledAe)
            }
            Refused::Tls(_) | Refused::TlsClientCertV1 | Refused::TlsRevoked(_) => match self.handshake_failure() {
                Some(HandshakeFailure::Closed) => Some(Audited::TlsClosed),
                Some(HandshakeFailure::ClientCertificate) => Some(Audited::ClientCertificate),
                _ => Some(Audited::TlsHandshake),
            },
            Refused::Blocked { .. } => Some(Audited::Blocked),
            _ => None,
        }
    }

    /// Whether this refusal counts towards blocking its source (guessing
    /// protection): an AE title refused, a TLS handshake that failed after
    /// a ClientHello. Not a bare close, a timeout or a protocol error.
    pub fn guessing(&self) -> bool {
        matches!(
            self.audited(),
            Some(Audited::CallingAe | Audited::CalledAe | Audited::ClientCertificate | Audited::TlsHandshake)
        )
    }

    /// The A-ASSOCIATE-RJ the audit names as the association's result.
    pub(super) fn rejection(&self) -> Option<Rejection> {
        match self {
            Refused::Policy(refusal) => Some(refusal.rejection()),
            Refused::Backend(_) | Refused::Shutdown(Phase::BackendConnect) => Some(Rejection::TemporaryCongestion),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rejections_count_under_their_own_outcome() {
        use crate::dicom::AeTitle;
        let ae = AeTitle::parse("X").unwrap();
        let cases = [
            (PolicyRejection::ProtocolVersion(2), Outcome::ProtocolError),
            (PolicyRejection::CallingAeNotAllowed(ae.clone()), Outcome::RejectedCallingAe),
            (PolicyRejection::NoRoute(ae), Outcome::RejectedCalledAe),
        ];
        for (rejection, outcome) in cases {
            assert_eq!(Refused::Policy(rejection).outcome(), outcome);
        }
    }

    #[test]
    fn refusals_that_count_for_guessing_and_those_audited() {
        use crate::dicom::AeTitle;
        let ae = AeTitle::parse("X").unwrap();
        let calling = Refused::Policy(PolicyRejection::CallingAeNotAllowed(ae.clone()));
        assert_eq!((calling.audited(), calling.guessing()), (Some(Audited::CallingAe), true));
        let closed = Refused::Tls(std::io::ErrorKind::UnexpectedEof.into());
        assert_eq!((closed.audited(), closed.guessing()), (Some(Audited::TlsClosed), false), "a bare close");
        let version = Refused::Policy(PolicyRejection::ProtocolVersion(2));
        assert_eq!((version.audited(), version.guessing()), (None, false));
        let blocked = Refused::Blocked { left: Duration::from_secs(3) };
        assert_eq!(
            (blocked.audited(), blocked.guessing(), blocked.outcome()),
            (Some(Audited::Blocked), false, Outcome::Blocked)
        );
        assert_eq!((Refused::TlsTimeout.audited(), Refused::TlsTimeout.guessing()), (None, false));
    }
}
