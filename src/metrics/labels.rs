//! The label values of the metrics: the outcome of a connection, the SCP's
//! answer, how an association ended, the direction of bytes. Their strings
//! are API (dashboards and alerts match them); each enum lists them once.

/// How a connection ended, as counted in `dicomgate_connections_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Listener at `max_connections`.
    Limit,
    /// The shutdown grace period ended before the A-ASSOCIATE-RQ reached an
    /// SCP (PROXY header, TLS handshake, first PDU or backend connect).
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
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
        }
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

/// `end` label of `dicomgate_association_ends_total` (and the audit's `end`):
/// how an established association ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Released,
    Aborted,
    Closed,
    /// Closed in the middle of a PDU, or a TLS peer closed without close_notify.
    Truncated,
    ProtocolError,
    IoError,
    IdleTimeout,
    /// `timeouts.association` reached.
    LifetimeExceeded,
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Released => "released",
            End::Aborted => "aborted",
            End::Closed => "closed",
            End::Truncated => "truncated",
            End::ProtocolError => "protocol_error",
            End::IoError => "io_error",
            End::IdleTimeout => "idle_timeout",
            End::LifetimeExceeded => "lifetime_exceeded",
            End::Shutdown => "shutdown",
        }
    }
}

/// `direction` label of `dicomgate_bytes_total`.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        }
    }
}
