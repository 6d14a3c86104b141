//! The audit line: one structured log event per finished connection
//! (docs/architecture.md, "Stable interfaces"), written from its
//! [`Report`]. Fields are identifiers and counters only: never PDU contents,
//! which carry patient data. Values taken from the wire (AE titles, UIDs)
//! were escaped before they reached the report.
//!
//! Every other line a connection causes is written inside its tracing span
//! (`connection{conn=ID listener=… peer=…}`, see `crate::listener`); the
//! audit line carries the same `conn=ID` as a field of its own, and is
//! written outside the span so that it stands alone (one self-contained
//! record; in JSON, no span list).

use crate::report::{millis, Report};

/// Emits the event at target `dicomgate::audit` (info: forwarded and policy
/// outcomes are the normal business of a gateway).
pub fn emit(report: &Report) {
    let dash = "-";
    let peer = report.trail.client().to_string();
    let proxy = report.trail.proxy().map(|p| p.to_string());
    let tls = report.trail.tls.as_ref();
    let association = report.association.as_ref().map(ToString::to_string);
    let dimse = report.dimse();
    tracing::info!(
        target: "dicomgate::audit",
        parent: None,
        listener = %report.listener,
        conn = %report.id,
        peer = peer.as_str(),
        proxy = proxy.as_deref().unwrap_or(dash),
        // "plaintext" only where no TLS was expected; a TLS listener whose
        // handshake failed has no version to show.
        tls_version = tls.and_then(|t| t.version).unwrap_or(if report.trail.plaintext { "plaintext" } else { dash }),
        tls_suite = tls.and_then(|t| t.suite.as_deref()).unwrap_or(dash),
        client_certificate_sha256 = tls.and_then(|t| t.client_certificate.as_deref()).unwrap_or(dash),
        calling_ae = report.trail.calling_ae.as_deref().unwrap_or(dash),
        called_ae = report.trail.called_ae.as_deref().unwrap_or(dash),
        backend = report.trail.backend.as_deref().unwrap_or(dash),
        server = report.server.as_deref().unwrap_or(dash),
        outcome = report.outcome.as_str(),
        association = association.as_deref().unwrap_or(dash),
        end = report.end.map_or(dash, |e| e.as_str()),
        dimse = dimse.as_deref().unwrap_or(dash),
        // Absent (not 0) when the SCP never answered.
        scp_answer_ms = report.scp_answer.map(millis),
        detail = report.detail.as_deref().unwrap_or(dash),
        bytes_to_backend = report.bytes_to_backend,
        bytes_to_client = report.bytes_to_client,
        duration_ms = millis(report.duration),
        "connection ended"
    );
}
