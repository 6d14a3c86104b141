//! How a relayed association ended: each pump's own end ([`PumpEnd`]) and
//! the verdict over both ([`RelayEnd`]), typed until the audit puts it into
//! words.

use std::io;
use std::sync::Arc;

use super::framer::FrameError;
use super::{Pump, Side};

/// How the relayed association ended.
#[derive(Debug, Clone)]
pub enum RelayEnd {
    /// A-RELEASE-RQ/RP exchanged, then both closed.
    Released,
    /// A peer sent A-ABORT (forwarded to the other).
    Aborted { by: Side, source: u8, reason: u8 },
    /// A peer closed the connection between PDUs without releasing.
    Closed { by: Side },
    /// A peer's stream ended uncleanly (see [`Truncation`]).
    Truncated { by: Side, how: Truncation },
    /// A peer sent something that is not a valid PDU here.
    ProtocolError { by: Side, error: FrameError },
    /// Reading from or writing to a peer failed; `side` is the peer whose
    /// stream failed.
    Io { side: Side, error: IoFailure },
    /// Neither side sent anything for the DIMSE timeout.
    IdleTimeout,
    /// The association reached `timeouts.association`.
    LifetimeExceeded,
    /// The gateway was shutting down and the grace period ended.
    Shutdown,
}

/// How a stream ended without a clean close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// In the middle of a PDU.
    MidPdu,
    /// Between PDUs, but a TLS peer closed TCP without close_notify
    /// (RFC 8446 §6.1: the data cannot be known to be complete).
    NoCloseNotify,
}

/// A failed read or write, kept whole for the audit (shared: the report is
/// cloned).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IoFailure {
    #[error("read failed: {0}")]
    Read(Arc<io::Error>),
    #[error("write failed: {0}")]
    Write(Arc<io::Error>),
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

impl RelayEnd {
    /// The `end` label of metrics and audit.
    pub fn kind(&self) -> End {
        match self {
            RelayEnd::Released => End::Released,
            RelayEnd::Aborted { .. } => End::Aborted,
            RelayEnd::Closed { .. } => End::Closed,
            RelayEnd::Truncated { .. } => End::Truncated,
            RelayEnd::ProtocolError { .. } => End::ProtocolError,
            RelayEnd::Io { .. } => End::IoError,
            RelayEnd::IdleTimeout => End::IdleTimeout,
            RelayEnd::LifetimeExceeded => End::LifetimeExceeded,
            RelayEnd::Shutdown => End::Shutdown,
        }
    }
}

pub(super) fn finished_end(up: &Pump, down: &Pump) -> RelayEnd {
    // One direction finished cleanly, then the other failed: the failure is
    // what happened to the association.
    if [up, down].iter().any(|p| p.end.as_ref().is_some_and(PumpEnd::is_failure)) {
        return failed_end(up, down);
    }
    if up.release_rp || down.release_rp {
        return RelayEnd::Released;
    }
    for p in [up, down] {
        if let Some((source, reason)) = p.abort {
            return RelayEnd::Aborted { by: p.from, source, reason };
        }
    }
    let first = match (up.ended_at, down.ended_at) {
        (Some(a), Some(b)) if b < a => down,
        _ => up,
    };
    match first.end {
        Some(PumpEnd::Eof { close_notify: false }) => {
            RelayEnd::Truncated { by: first.from, how: Truncation::NoCloseNotify }
        }
        _ => RelayEnd::Closed { by: first.from },
    }
}

pub(super) fn failed_end(up: &Pump, down: &Pump) -> RelayEnd {
    // The pump that failed first explains the end; the other was cancelled.
    let mut failed: Vec<&Pump> =
        [up, down].into_iter().filter(|p| p.end.as_ref().is_some_and(|e| e.is_failure())).collect();
    failed.sort_by_key(|p| p.ended_at);
    let Some(p) = failed.first() else {
        // `stop` is cancelled only by a pump that recorded a failure.
        return RelayEnd::Closed { by: Side::Client };
    };
    let to = match p.from {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    match p.end.as_ref() {
        Some(PumpEnd::Truncated) => RelayEnd::Truncated { by: p.from, how: Truncation::MidPdu },
        Some(PumpEnd::Protocol(error)) => RelayEnd::ProtocolError { by: p.from, error: *error },
        Some(PumpEnd::ReadError(e)) => RelayEnd::Io { side: p.from, error: IoFailure::Read(e.clone()) },
        Some(PumpEnd::WriteError(e)) => RelayEnd::Io { side: to, error: IoFailure::Write(e.clone()) },
        Some(PumpEnd::Eof { .. }) | None => RelayEnd::Closed { by: p.from },
    }
}

/// How one direction ended; the errors are typed and kept whole until the
/// audit puts them into words.
#[derive(Debug)]
pub(super) enum PumpEnd {
    /// Closed at a PDU boundary; `close_notify: false` when a TLS peer closed
    /// TCP without it (not a failure: the other direction may go on).
    Eof {
        close_notify: bool,
    },
    /// Closed in the middle of a PDU.
    Truncated,
    Protocol(FrameError),
    ReadError(Arc<io::Error>),
    WriteError(Arc<io::Error>),
}

impl PumpEnd {
    pub(super) fn is_failure(&self) -> bool {
        !matches!(self, PumpEnd::Eof { .. })
    }
}
