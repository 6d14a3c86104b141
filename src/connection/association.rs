//! Association negotiation through the gateway: the client's A-ASSOCIATE-RQ
//! goes to the SCP (patched in place only for the called-AE rewrite and the
//! Maximum Length clamp), the SCP's answer comes back under a second ACSE
//! deadline (patched back for the rewrite, clamped likewise), and the
//! outcome is recorded.

use tokio::time::{timeout, timeout_at, Instant};

use super::first_pdu::read_associate_response;
use super::{close, send_and_close, write_flush, Services};
use crate::audit::AuditRecord;
use crate::backend::BackendRuntime;
use crate::config::ListenerConfig;
use crate::dicom::associate::{self, patch_called_ae, AssociateView};
use crate::dicom::pdu::{describe_abort, describe_rejection, provider_abort, AbortReason, PduType};
use crate::dicom::AeTitle;
use crate::metrics::Direction;
use crate::tls::Stream;

/// Largest A-ASSOCIATE-AC/RJ/ABORT accepted from an SCP.
const MAX_RESPONSE_LENGTH: u32 = 1024 * 1024;

/// An accepted association, ready to relay.
pub(super) struct Negotiated {
    /// P-DATA limit towards the SCP (its Maximum Length, clamped).
    pub max_to_backend: u32,
    /// P-DATA limit towards the client (the client's Maximum Length, clamped).
    pub max_to_client: u32,
}

/// One RQ → answer exchange.
pub(super) struct Exchange<'a> {
    pub rq: Vec<u8>,
    pub view: &'a AssociateView,
    pub called: &'a AeTitle,
    pub backend: &'a BackendRuntime,
    pub cfg: &'a ListenerConfig,
    pub services: &'a Services,
}

impl Exchange<'_> {
    /// Forwards the RQ and returns the SCP's answer to the client. `Some`
    /// only for an A-ASSOCIATE-AC delivered to the client; every other end
    /// has been answered and closed on both sides.
    pub(super) async fn run(
        self,
        client: &mut Stream,
        upstream: &mut Stream,
        audit: &mut AuditRecord,
    ) -> Option<Negotiated> {
        let Exchange { mut rq, view, called, backend, cfg, services } = self;
        let metrics = &services.metrics;
        // Clamp what we enforce: the SCP learns the client's receive limit
        // from the RQ and must not be promised more than the relay passes.
        let max_to_client = clamp_max_length(&mut rq, view.max_length, cfg.max_pdu_length);
        let rewrite = backend.config.rewrite_called_ae_title && *called != backend.config.ae_title;
        if rewrite {
            patch_called_ae(&mut rq, &backend.config.ae_title.to_wire());
        }

        let asked = Instant::now();
        let answer_deadline = asked + cfg.timeouts.acse;
        let answer = match timeout_at(answer_deadline, write_flush(upstream, &rq)).await {
            Ok(Ok(())) => read_associate_response(upstream, MAX_RESPONSE_LENGTH, answer_deadline).await,
            Ok(Err(e)) => Err(format!("cannot send the A-ASSOCIATE-RQ: {e}")),
            Err(_) => Err("cannot send the A-ASSOCIATE-RQ within the ACSE timeout".to_owned()),
        };
        metrics.bytes_counter(&cfg.name, Direction::ToBackend).inc_by(rq.len() as u64);
        audit.bytes_to_backend += rq.len() as u64;
        let (pdu_type, mut response) = match answer {
            Ok(a) => {
                let waited = asked.elapsed();
                audit.scp_answer_ms = Some(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
                metrics.observe_scp_answer(&cfg.name, waited.as_secs_f64());
                a
            }
            Err(why) => {
                audit.association = Some(format!("no valid answer from the SCP: {why}"));
                metrics.association_result(&cfg.name, "no_answer");
                abort_both(client, upstream, AbortReason::NotSpecified, cfg).await;
                return None;
            }
        };

        let mut max_to_backend = cfg.max_pdu_length;
        match pdu_type {
            PduType::AssociateAc => {
                let Ok(ac) = associate::parse(&response) else {
                    audit.association = Some("malformed A-ASSOCIATE-AC from the SCP".to_owned());
                    metrics.association_result(&cfg.name, "malformed");
                    abort_both(client, upstream, AbortReason::InvalidPduParameterValue, cfg).await;
                    return None;
                };
                max_to_backend = clamp_max_length(&mut response, ac.max_length, cfg.max_pdu_length);
                if rewrite {
                    // The client must see the AE titles it sent (PS3.8
                    // §9.3.3: the AC echoes the RQ's fields).
                    patch_called_ae(&mut response, &view.called_ae);
                }
                audit.association = Some("accepted".to_owned());
                metrics.association_result(&cfg.name, "accepted");
            }
            PduType::AssociateRj if response.len() == 10 => {
                let triple = (response[7], response[8], response[9]);
                audit.association = Some(format!("rejected by the SCP: {}", describe_rejection(triple)));
                metrics.association_result(&cfg.name, "rejected");
            }
            PduType::Abort if response.len() == 10 => {
                audit.association = Some(format!("aborted by the SCP: {}", describe_abort(response[8], response[9])));
                metrics.association_result(&cfg.name, "aborted");
            }
            other => {
                audit.association = Some(format!("malformed {} from the SCP", other.name()));
                metrics.association_result(&cfg.name, "malformed");
                abort_both(client, upstream, AbortReason::InvalidPduParameterValue, cfg).await;
                return None;
            }
        }

        metrics.bytes_counter(&cfg.name, Direction::ToClient).inc_by(response.len() as u64);
        audit.bytes_to_client += response.len() as u64;
        if pdu_type != PduType::AssociateAc {
            tokio::join!(send_and_close(client, &response, cfg), close(upstream, cfg));
            return None;
        }
        let sent = timeout(cfg.timeouts.acse, write_flush(client, &response)).await;
        if let Err(e) = sent.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            audit.end = Some("io_error".to_owned());
            audit.detail = Some(format!("cannot send the A-ASSOCIATE-AC to the client: {e}"));
            send_and_close(upstream, &provider_abort(AbortReason::NotSpecified), cfg).await;
            return None;
        }
        Some(Negotiated { max_to_backend, max_to_client })
    }
}

async fn abort_both(client: &mut Stream, upstream: &mut Stream, reason: AbortReason, cfg: &ListenerConfig) {
    let abort = provider_abort(reason);
    tokio::join!(send_and_close(client, &abort, cfg), send_and_close(upstream, &abort, cfg));
}

/// Returns the P-DATA limit for traffic towards the peer that sent this
/// A-ASSOCIATE PDU's Maximum Length, patching the value in place when it is 0
/// (unlimited) or above `cap` (PS3.8 D.1; the PDU length does not change).
fn clamp_max_length(pdu: &mut [u8], max_length: Option<(u32, usize)>, cap: u32) -> u32 {
    match max_length {
        Some((value, _)) if value != 0 && value <= cap => value,
        Some((_, offset)) => {
            // `offset` came from parsing this very PDU: in bounds.
            if let Some(field) = pdu.get_mut(offset..offset + 4) {
                field.copy_from_slice(&cap.to_be_bytes());
            }
            cap
        }
        // Mandatory in RQ and AC, but be lenient: enforce the cap silently.
        None => cap,
    }
}
