//! The audit event: one structured log line per connection, when it ends
//! (DESIGN.md, "Audit"). Fields are identifiers and counters only: never PDU
//! contents, which carry patient data. Values taken from the wire (AE titles,
//! UIDs) are escaped before they get here.

use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics::Outcome;
use crate::tls::SessionInfo;

/// Everything known about a connection, in words: built once, when it ends,
/// from what its phases returned ([`crate::connection::record::record`]).
#[derive(Debug, Default)]
pub struct AuditRecord {
    pub listener: String,
    /// The client: the TCP peer, or the address a PROXY header carried.
    pub peer: Option<SocketAddr>,
    /// Behind a load balancer (PROXY protocol): the balancer's own address.
    pub proxy: Option<SocketAddr>,
    pub tls: Option<SessionInfo>,
    pub calling_ae: Option<String>,
    pub called_ae: Option<String>,
    pub backend: Option<String>,
    pub server: Option<String>,
    /// What the SCP answered: `accepted`, or the rejection/abort in words.
    pub association: Option<String>,
    /// How the relayed association ended (`released`, `aborted`, …).
    pub end: Option<String>,
    /// DIMSE operations seen, e.g. `C-STORE rq=20 success=20`.
    pub dimse: Option<String>,
    /// Milliseconds from forwarding the A-ASSOCIATE-RQ to the SCP's answer.
    pub scp_answer_ms: Option<u64>,
    /// Why, in words, when something failed or was refused.
    pub detail: Option<String>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

impl AuditRecord {
    /// A record that knows only where the connection came from.
    pub fn new(listener: &str, peer: SocketAddr) -> AuditRecord {
        AuditRecord { listener: listener.to_owned(), peer: Some(peer), ..AuditRecord::default() }
    }

    /// Emits the event at target `dicomgate::audit` (info for forwarded and
    /// policy outcomes, which are the normal business of a gateway).
    pub fn emit(&self, outcome: Outcome, duration: Duration) {
        let dash = "-";
        let peer = self.peer.map(|p| p.to_string());
        let proxy = self.proxy.map(|p| p.to_string());
        let tls = self.tls.as_ref();
        tracing::info!(
            target: "dicomgate::audit",
            listener = %self.listener,
            peer = peer.as_deref().unwrap_or(dash),
            proxy = proxy.as_deref().unwrap_or(dash),
            tls_version = tls.and_then(|t| t.version).unwrap_or(if tls.is_some() { dash } else { "plaintext" }),
            tls_suite = tls.and_then(|t| t.suite.as_deref()).unwrap_or(dash),
            client_certificate_sha256 = tls.and_then(|t| t.client_certificate.as_deref()).unwrap_or(dash),
            calling_ae = self.calling_ae.as_deref().unwrap_or(dash),
            called_ae = self.called_ae.as_deref().unwrap_or(dash),
            backend = self.backend.as_deref().unwrap_or(dash),
            server = self.server.as_deref().unwrap_or(dash),
            outcome = outcome.as_str(),
            association = self.association.as_deref().unwrap_or(dash),
            end = self.end.as_deref().unwrap_or(dash),
            dimse = self.dimse.as_deref().unwrap_or(dash),
            // Absent (not 0) when the SCP never answered.
            scp_answer_ms = self.scp_answer_ms,
            detail = self.detail.as_deref().unwrap_or(dash),
            bytes_to_backend = self.bytes_to_backend,
            bytes_to_client = self.bytes_to_client,
            duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "connection ended"
        );
    }
}
