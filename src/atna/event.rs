//! What the gateway audits, and the one mapping from a finished connection
//! (its [`Report`]) to an ATNA event. Pure.
//!
//! | trigger | EventID | EventTypeCode | outcome |
//! |---|---|---|---|
//! | ready (start, and after a binary upgrade) | 110100 Application Activity | 110120 Application Start | 0 |
//! | stopped (SIGTERM/SIGINT, after the drain) | 110100 Application Activity | 110121 Application Stop | 0 |
//! | reload applied | 110113 Security Alert | 110131 Software Configuration, 110129 Security Configuration | 0 |
//! | reload refused (old configuration kept) | 110113 Security Alert | 110131, 110129 | 8 |
//! | calling / called AE title refused | 110113 Security Alert | 110126 Node Authentication | 4 |
//! | client certificate refused (revoked included) or missing, TLS handshake failed | 110113 Security Alert | 110126 Node Authentication | 4 |
//! | source blocked by the AE-title guessing protection | 110113 Security Alert | 110126 Node Authentication | 4 |
//! | more of the above from one source and reason within 10 s (a summary with the count) | 110113 Security Alert | 110126 Node Authentication | 4 |
//!
//! Nothing is sent per denied source address, connection limit, timeout,
//! protocol error, or TCP connection closed before the TLS ClientHello: an attacker can produce those for free (they are counted
//! in `dicomgate_connections_total` instead), and none of them is a node
//! that got as far as presenting an identity.

use std::fmt;
use std::net::IpAddr;

use super::message::{codes, Code, EventOutcome};
use crate::report::{Outcome as ConnectionOutcome, Report};
use crate::tls::HandshakeFailure;

/// One auditable event, with the time it happened.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub time: Timestamp,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    /// `EventOutcomeDescription`: why, in words (no PHI, no secrets).
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    ApplicationStart,
    ApplicationStop,
    ConfigReload,
    PeerRefused { reason: AlertReason, peer: Participant },
}

/// Why a peer's association was refused before it reached a backend: what
/// the Security Alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertReason {
    CallingAeTitle,
    CalledAeTitle,
    ClientCertificate,
    TlsHandshake,
    /// Refused at accept: the source is blocked for AE-title guessing.
    Blocked,
}

impl AlertReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertReason::CallingAeTitle => "calling AE title refused",
            AlertReason::CalledAeTitle => "called AE title refused",
            AlertReason::ClientCertificate => "client certificate refused or missing",
            AlertReason::TlsHandshake => "TLS handshake failed",
            AlertReason::Blocked => "source blocked by the AE-title guessing protection",
        }
    }

    /// The same in the plural, for summaries ("12 calling AE titles refused").
    fn plural(self) -> &'static str {
        match self {
            AlertReason::CallingAeTitle => "refusals of the calling AE title",
            AlertReason::CalledAeTitle => "refusals of the called AE title",
            AlertReason::ClientCertificate => "client certificates refused or missing",
            AlertReason::TlsHandshake => "failed TLS handshakes",
            AlertReason::Blocked => "connections refused because the source is blocked",
        }
    }
}

/// An `ActiveParticipant` (PS3.15 A.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub user_id: String,
    pub alternative_user_id: Option<String>,
    pub user_name: Option<String>,
    pub requestor: bool,
    pub address: Option<IpAddr>,
    /// RoleIDCode (110150, DCM, "Application").
    pub application_role: bool,
}

impl EventKind {
    /// EventID and EventTypeCodes (PS3.15 A.5.3.1 and A.5.3.11).
    pub fn codes(&self) -> (Code, &'static [Code]) {
        match self {
            EventKind::ApplicationStart => (codes::APPLICATION_ACTIVITY, &[codes::APPLICATION_START]),
            EventKind::ApplicationStop => (codes::APPLICATION_ACTIVITY, &[codes::APPLICATION_STOP]),
            // The file holds both what the software does (routes, backends)
            // and security settings (allow lists, certificates, AE titles).
            EventKind::ConfigReload => {
                (codes::SECURITY_ALERT, &[codes::SOFTWARE_CONFIGURATION, codes::SECURITY_CONFIGURATION])
            }
            EventKind::PeerRefused { .. } => (codes::SECURITY_ALERT, &[codes::NODE_AUTHENTICATION]),
        }
    }
}

impl AuditEvent {
    pub fn now(kind: EventKind, outcome: EventOutcome, description: Option<String>) -> AuditEvent {
        AuditEvent { time: Timestamp::now(), kind, outcome, description }
    }

    /// The Security Alert for a finished connection, if its outcome is one
    /// the gateway reports (see the module table).
    pub fn for_connection(report: &Report) -> Option<AuditEvent> {
        let reason = match (report.outcome, report.handshake) {
            (ConnectionOutcome::RejectedCallingAe, _) => AlertReason::CallingAeTitle,
            (ConnectionOutcome::RejectedCalledAe, _) => AlertReason::CalledAeTitle,
            (ConnectionOutcome::Blocked, _) => AlertReason::Blocked,
            // Closed before a ClientHello: a load balancer's TCP health
            // check or a port probe, not a node presenting an identity.
            (ConnectionOutcome::TlsError, Some(HandshakeFailure::Closed)) => return None,
            (ConnectionOutcome::TlsError, Some(HandshakeFailure::ClientCertificate)) => AlertReason::ClientCertificate,
            (ConnectionOutcome::TlsRevoked, _) => AlertReason::ClientCertificate,
            (ConnectionOutcome::TlsError, _) => AlertReason::TlsHandshake,
            _ => return None,
        };
        let peer = report.trail.client();
        let calling = report.trail.calling_ae.as_deref().filter(|ae| !ae.is_empty());
        let participant = Participant {
            // The calling AE title is what the peer claimed to be; without
            // one (TLS failures) its address is all that identifies it.
            user_id: calling.map_or_else(|| peer.to_string(), str::to_owned),
            alternative_user_id: calling.map(|ae| format!("AETITLES={ae}")),
            user_name: None,
            requestor: true,
            address: Some(peer.ip()),
            application_role: false,
        };
        let mut description = format!("{} on listener {}", reason.as_str(), report.listener);
        // The AE titles, but the refused one: the detail names it already.
        if let Some(called) = report.trail.called_ae.as_deref().filter(|_| reason != AlertReason::CalledAeTitle) {
            description.push_str(&format!(", called AE title {called:?}"));
        }
        if let Some(calling) = calling.filter(|_| reason != AlertReason::CallingAeTitle) {
            description.push_str(&format!(", calling AE title {calling:?}"));
        }
        if let Some(cert) = report.trail.tls.as_ref().and_then(|t| t.client_certificate.as_deref()) {
            description.push_str(&format!(", client certificate SHA-256 {cert}"));
        }
        if let Some(proxy) = report.trail.proxy() {
            description.push_str(&format!(", via load balancer {proxy}"));
        }
        if let Some(detail) = report.detail.as_deref().filter(|d| !d.is_empty()) {
            description.push_str(": ");
            description.push_str(detail);
        }
        Some(AuditEvent::now(
            EventKind::PeerRefused { reason, peer: participant },
            EventOutcome::MinorFailure,
            Some(description),
        ))
    }
}

impl AuditEvent {
    /// The one Security Alert that stands for `count` more refusals of
    /// `source` (`None`: sources past the refusal log's bound) for `reason`
    /// on `listener` within `interval`, after the first was reported in full.
    /// The count is in EventOutcomeDescription, which starts with
    /// `summary: COUNT more` so that a SIEM can extract it (docs/audit.md).
    pub fn summary(
        listener: &str,
        source: Option<IpAddr>,
        reason: AlertReason,
        count: u64,
        interval: std::time::Duration,
    ) -> AuditEvent {
        let who = source.map_or_else(|| "other sources".to_owned(), |ip| ip.to_canonical().to_string());
        let participant = Participant {
            user_id: who.clone(),
            alternative_user_id: None,
            user_name: None,
            requestor: true,
            address: source,
            application_role: false,
        };
        let description = format!(
            "summary: {count} more {} from {who} on listener {listener} in the last {} s \
             (the first was reported on its own)",
            reason.plural(),
            interval.as_secs()
        );
        AuditEvent::now(
            EventKind::PeerRefused { reason, peer: participant },
            EventOutcome::MinorFailure,
            Some(description),
        )
    }
}

/// A UTC time with milliseconds, written as RFC 3339 (`2026-11-30T13:01:31.123Z`):
/// both an RFC 5424 TIMESTAMP and an `xsd:dateTime` with a time zone, as
/// PS3.15 A.5.2.5 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(time::OffsetDateTime::now_utc())
    }

    pub fn from_unix(seconds: i64) -> Option<Timestamp> {
        time::OffsetDateTime::from_unix_timestamp(seconds).ok().map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}
