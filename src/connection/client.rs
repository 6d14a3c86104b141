//! The phases facing the cloud before policy: the load balancer's PROXY
//! header (optional), the TLS handshake, and the first PDU with its raw
//! A-ASSOCIATE-RQ view, all under the one ACSE deadline taken at accept.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use super::first_pdu::read_associate_rq;
use super::record::Refused;
use super::send_and_close;
use crate::config::ListenerConfig;
use crate::dicom::ae::display_raw;
use crate::dicom::associate::{self, AssociateView};
use crate::dicom::pdu::{provider_abort, AbortReason};
use crate::proxy_protocol;
use crate::tls::{revocation, SessionInfo, Stream};

/// Behind a load balancer: reads its PROXY header (under the ACSE deadline,
/// before TLS), refuses LOCAL / UNKNOWN headers unless
/// `proxy_protocol_allow_local`, and applies the allow list to the client it
/// carries, which is returned. Refusals close without a byte written, like the accept loop's:
/// the cloud is not speaking to us yet, the balancer is.
pub(super) async fn proxy_phase(
    tcp: &mut TcpStream,
    lb: SocketAddr,
    proxy: &crate::config::ProxyProtocolConfig,
    cfg: &ListenerConfig,
    deadline: Instant,
) -> Result<SocketAddr, Refused> {
    let header = match proxy_protocol::read_header(tcp, proxy.versions, deadline).await {
        Ok(h) => h,
        Err(error) => return Err(Refused::ProxyHeader { lb, error }),
    };
    // LOCAL / UNKNOWN carry no client: accepted, the balancer's own address
    // would stand in for one, and a balancer's health check would open
    // DICOM associations. Refused unless the listener says otherwise.
    if header.carried_client().is_none() && !proxy.allow_local {
        return Err(Refused::ProxyWithoutClient { lb, header });
    }
    // The carried client is judged as soon as it is known: before TLS, before
    // anything else is read or allocated for it.
    let client = header.client_or(lb);
    if !cfg.allows(client.ip()) {
        return Err(Refused::ProxiedClientDenied { header });
    }
    Ok(client)
}

/// TLS for a `tls` listener; the plain stream for `insecure_plaintext`.
pub(super) async fn handshake(
    tcp: TcpStream,
    acceptor: Option<&TlsAcceptor>,
    deadline: Instant,
) -> Result<(Stream, Option<SessionInfo>), Refused> {
    let Some(acceptor) = acceptor else {
        return Ok((Stream::plain(tcp), None));
    };
    let handshake = timeout_at(deadline, crate::tls::handshake::accept(tcp, acceptor.config().clone()));
    let (accepted, revoked) = revocation::observe(handshake).await;
    match (accepted, revoked) {
        (Ok(Ok((stream, info))), _) => Ok((stream, Some(info))),
        (Ok(Err(_)), Some(certificate)) => Err(Refused::TlsRevoked(certificate)),
        (Ok(Err(e)), None) if crate::tls::client_certificate_is_v1(&e) => Err(Refused::TlsClientCertV1),
        (Ok(Err(e)), None) => Err(Refused::Tls(e)),
        (Err(_), _) => Err(Refused::TlsTimeout),
    }
}

/// A whole, checked A-ASSOCIATE-RQ and its raw view.
pub(super) struct Request {
    pub rq: Vec<u8>,
    pub view: AssociateView,
}

impl Request {
    /// The AE titles as the audit shows them (escaped, leading spaces trimmed).
    pub fn ae_titles(&self) -> (String, String) {
        let show = |raw: &[u8]| display_raw(raw).trim_start().to_owned();
        (show(&self.view.calling_ae), show(&self.view.called_ae))
    }
}

/// The A-ASSOCIATE-RQ, whole and checked, with its raw view; anything else
/// gets its A-ABORT (or a plain close) here.
pub(super) async fn read_request(
    client: &mut Stream,
    cfg: &ListenerConfig,
    deadline: Instant,
) -> Result<Request, Refused> {
    let rq = match read_associate_rq(client, cfg.max_associate_rq_length, deadline).await {
        Ok(pdu) => pdu,
        Err(e) => {
            if let Some(reason) = e.abort_reason() {
                send_and_close(client, &provider_abort(reason)).await;
            }
            return Err(Refused::FirstPdu(e));
        }
    };
    let view = match associate::parse(&rq) {
        Ok(v) => v,
        Err(e) => {
            send_and_close(client, &provider_abort(AbortReason::InvalidPduParameterValue)).await;
            return Err(Refused::MalformedRq(e));
        }
    };
    log_structured_view(&rq);
    Ok(Request { rq, view })
}

/// dicom-ul's structured view of the request, for debugging interoperability
/// (proposed SOP classes; no patient data). A library parse failure never
/// rejects a request the raw fields accept (docs/architecture.md, "Facts about
/// the wire").
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
