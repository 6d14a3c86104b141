//! The phases facing the cloud before policy: the load balancer's PROXY
//! header (optional), the TLS handshake, and the first PDU with its raw
//! A-ASSOCIATE-RQ view, all under the one ACSE deadline taken at accept.

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use super::first_pdu::read_associate_rq;
use super::send_and_close;
use crate::audit::AuditRecord;
use crate::config::ListenerConfig;
use crate::dicom::ae::display_raw;
use crate::dicom::associate::{self, AssociateView};
use crate::dicom::pdu::{provider_abort, AbortReason};
use crate::metrics::Outcome;
use crate::proxy_protocol;
use crate::tls::{SessionInfo, Stream};

/// Behind a load balancer: reads its PROXY header (under the ACSE deadline,
/// before TLS), records the carried client as the audit's `peer` and the
/// balancer as `proxy`, then applies the allow list to the client. Refusals
/// close without a byte written, like the accept loop's: the cloud is not
/// speaking to us yet, the balancer is.
pub(super) async fn proxy_phase(
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

/// TLS for a `tls` listener; the plain stream for `insecure_plaintext`.
pub(super) async fn handshake(
    tcp: TcpStream,
    acceptor: Option<&TlsAcceptor>,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Stream, Outcome> {
    let Some(acceptor) = acceptor else {
        return Ok(Stream::Plain(tcp));
    };
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            audit.tls = Some(SessionInfo::of(tls.get_ref().1));
            Ok(Stream::Server(Box::new(tls)))
        }
        Ok(Err(e)) => {
            audit.detail = Some(format!("TLS handshake failed: {e}"));
            Err(Outcome::TlsError)
        }
        Err(_) => {
            audit.detail = Some("TLS handshake not complete within the ACSE timeout".to_owned());
            Err(Outcome::Timeout)
        }
    }
}

/// The A-ASSOCIATE-RQ, whole and checked, with its raw view; anything else
/// gets its A-ABORT (or a plain close) here.
pub(super) async fn read_request(
    client: &mut Stream,
    cfg: &ListenerConfig,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<(Vec<u8>, AssociateView), Outcome> {
    let rq = match read_associate_rq(client, cfg.max_associate_rq_length, deadline).await {
        Ok(pdu) => pdu,
        Err(e) => {
            audit.detail = Some(e.to_string());
            if let Some(reason) = e.abort_reason() {
                send_and_close(client, &provider_abort(reason), cfg).await;
            }
            return Err(if e.is_timeout() { Outcome::Timeout } else { Outcome::ProtocolError });
        }
    };
    let view = match associate::parse(&rq) {
        Ok(v) => v,
        Err(e) => {
            audit.detail = Some(format!("malformed A-ASSOCIATE-RQ: {e}"));
            send_and_close(client, &provider_abort(AbortReason::InvalidPduParameterValue), cfg).await;
            return Err(Outcome::ProtocolError);
        }
    };
    audit.calling_ae = Some(display_raw(&view.calling_ae).trim_start().to_owned());
    audit.called_ae = Some(display_raw(&view.called_ae).trim_start().to_owned());
    log_structured_view(&rq);
    Ok((rq, view))
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
