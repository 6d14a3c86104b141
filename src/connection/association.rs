//! Association negotiation through the gateway: the client's A-ASSOCIATE-RQ
//! goes to the SCP (patched in place only for the called-AE rewrite and the
//! Maximum Length clamp), the SCP's answer comes back under a second ACSE
//! deadline (patched back for the rewrite, clamped likewise); what happened
//! is returned as an [`Exchanged`].

use tokio::io::AsyncRead;
use tokio::time::{timeout, timeout_at, Instant};

use super::{close, send_and_close, write_flush, Services};
use crate::backend::BackendRuntime;
use crate::config::ListenerConfig;
use crate::dicom::associate::{self, patch_called_ae, AssociateView};
use crate::dicom::pdu::{provider_abort, AbortReason, PduHeader, PduType, HEADER_LEN};
use crate::dicom::AeTitle;
use crate::metrics::Direction;
use crate::pdu_io::{read_pdu, ReadError};
use crate::report::AssociationResult;
use crate::tls::Stream;

/// Largest A-ASSOCIATE-AC/RJ/ABORT accepted from an SCP.
const MAX_RESPONSE_LENGTH: u32 = 1024 * 1024;

/// An accepted association, ready to relay.
#[derive(Debug)]
pub struct Negotiated {
    /// P-DATA limit towards the SCP (its Maximum Length, clamped).
    pub max_to_backend: u32,
    /// P-DATA limit towards the client (the client's Maximum Length, clamped).
    pub max_to_client: u32,
}

/// What the SCP answered, as it reached (or failed to reach) the client.
#[derive(Debug)]
pub enum Answer {
    /// A-ASSOCIATE-AC, delivered to the client: the relay comes next.
    Accepted(Negotiated),
    /// A-ASSOCIATE-AC, but the client could not take it (side: client).
    Undelivered(std::io::Error),
    /// A-ASSOCIATE-RJ (result, source, reason), passed to the client.
    Rejected((u8, u8, u8)),
    /// A-ABORT from the SCP, passed to the client.
    Aborted { source: u8, reason: u8 },
    /// Nothing usable came back; both sides got our A-ABORT.
    NoAnswer(AnswerError),
    /// This PDU type came back malformed; both sides got our A-ABORT.
    Malformed(&'static str),
}

impl Answer {
    pub fn result(&self) -> AssociationResult {
        match self {
            Answer::Accepted(_) | Answer::Undelivered(_) => AssociationResult::Accepted,
            Answer::Rejected(_) => AssociationResult::Rejected,
            Answer::Aborted { .. } => AssociationResult::Aborted,
            Answer::NoAnswer(_) => AssociationResult::NoAnswer,
            Answer::Malformed(_) => AssociationResult::Malformed,
        }
    }
}

/// The RQ → answer exchange, as it happened.
#[derive(Debug)]
pub struct Exchanged {
    pub answer: Answer,
    /// From forwarding the RQ to the SCP's whole answer; `None` without one.
    pub waited: Option<std::time::Duration>,
    /// The RQ as forwarded.
    pub bytes_to_backend: u64,
    /// The SCP's answer as passed on.
    pub bytes_to_client: u64,
}

impl Exchanged {
    /// No answer came (`why`); the RQ of `rq_len` bytes was (being) sent.
    pub(super) fn unanswered(why: AnswerError, rq_len: u64) -> Exchanged {
        Exchanged { answer: Answer::NoAnswer(why), waited: None, bytes_to_backend: rq_len, bytes_to_client: 0 }
    }
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
    /// Forwards the RQ and returns the SCP's answer to the client. Every
    /// answer but a delivered A-ASSOCIATE-AC has been answered and closed on
    /// both sides when this returns.
    pub(super) async fn run(self, client: &mut Stream, upstream: &mut Stream) -> Exchanged {
        let Exchange { mut rq, view, called, backend, cfg, services } = self;
        let metrics = &services.metrics;
        // Clamp what we enforce: the SCP learns the client's receive limit
        // from the RQ and must not be promised more than the relay passes.
        let max_to_client = clamp_max_lengths(&mut rq, &view.max_lengths, cfg.max_pdu_length);
        let rewrite = backend.config.rewrite_called_ae_title && *called != backend.config.ae_title;
        if rewrite {
            patch_called_ae(&mut rq, &backend.config.ae_title.to_wire());
        }

        let asked = Instant::now();
        let answer_deadline = asked + cfg.timeouts.acse;
        let answer = match timeout_at(answer_deadline, write_flush(upstream, &rq)).await {
            Ok(Ok(())) => read_associate_response(upstream, MAX_RESPONSE_LENGTH, answer_deadline).await,
            Ok(Err(e)) => Err(AnswerError::Send(e)),
            Err(_) => Err(AnswerError::SendTimeout),
        };
        metrics.bytes_counter(&cfg.name, Direction::ToBackend).inc_by(rq.len() as u64);
        let mut done = Exchanged {
            answer: Answer::Malformed("A-ASSOCIATE-AC"),
            waited: None,
            bytes_to_backend: rq.len() as u64,
            bytes_to_client: 0,
        };
        let (pdu_type, mut response) = match answer {
            Ok(a) => {
                done.waited = Some(asked.elapsed());
                a
            }
            Err(why) => {
                abort_both(client, upstream, AbortReason::NotSpecified).await;
                done.answer = Answer::NoAnswer(why);
                return done;
            }
        };

        done.answer = match pdu_type {
            PduType::AssociateAc => {
                let Ok(ac) = associate::parse(&response) else {
                    abort_both(client, upstream, AbortReason::InvalidPduParameterValue).await;
                    return done;
                };
                let max_to_backend = clamp_max_lengths(&mut response, &ac.max_lengths, cfg.max_pdu_length);
                if rewrite {
                    // The client must see the AE titles it sent (PS3.8
                    // §9.3.3: the AC echoes the RQ's fields).
                    patch_called_ae(&mut response, &view.called_ae);
                }
                Answer::Accepted(Negotiated { max_to_backend, max_to_client })
            }
            PduType::AssociateRj if response.len() == 10 => Answer::Rejected((response[7], response[8], response[9])),
            PduType::Abort if response.len() == 10 => Answer::Aborted { source: response[8], reason: response[9] },
            other => {
                abort_both(client, upstream, AbortReason::InvalidPduParameterValue).await;
                done.answer = Answer::Malformed(other.name());
                return done;
            }
        };

        metrics.bytes_counter(&cfg.name, Direction::ToClient).inc_by(response.len() as u64);
        done.bytes_to_client = response.len() as u64;
        if pdu_type != PduType::AssociateAc {
            tokio::join!(send_and_close(client, &response), close(upstream));
            return done;
        }
        let sent = timeout(cfg.timeouts.acse, write_flush(client, &response)).await;
        if let Err(e) = sent.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            send_and_close(upstream, &provider_abort(AbortReason::NotSpecified)).await;
            done.answer = Answer::Undelivered(e);
        }
        done
    }
}

async fn abort_both(client: &mut Stream, upstream: &mut Stream, reason: AbortReason) {
    let abort = provider_abort(reason);
    tokio::join!(send_and_close(client, &abort), send_and_close(upstream, &abort));
}

/// Returns the P-DATA limit for traffic towards the peer that sent this
/// A-ASSOCIATE PDU's Maximum Length sub-items, and makes every one of them
/// say it (PS3.8 D.1; in place, the PDU length does not change). Each value
/// counts as `cap` when it is 0 (unlimited) or above `cap`; the limit is the
/// smallest of them. One sub-item is the norm and is only touched when 0 or
/// above `cap`; with several (`[0x7FFFFFFF, 16384]`), the other side would
/// have to guess which one the peer meant, so all are set to the limit the
/// relay enforces.
fn clamp_max_lengths(pdu: &mut [u8], max_lengths: &[(u32, usize)], cap: u32) -> u32 {
    let clamp = |value: u32| if value == 0 || value > cap { cap } else { value };
    // Mandatory in RQ and AC, but be lenient: without one, enforce the cap silently.
    let limit = max_lengths.iter().map(|(value, _)| clamp(*value)).min().unwrap_or(cap);
    for &(value, offset) in max_lengths {
        if value != limit {
            // `offset` came from parsing this very PDU: in bounds.
            if let Some(field) = pdu.get_mut(offset..offset + 4) {
                field.copy_from_slice(&limit.to_be_bytes());
            }
        }
    }
    limit
}

/// Why the SCP's answer to a forwarded A-ASSOCIATE-RQ is missing or
/// unusable. Side: the SCP; phase: SCP answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("cannot send the A-ASSOCIATE-RQ: {0}")]
    Send(#[source] std::io::Error),
    #[error("cannot send the A-ASSOCIATE-RQ within the ACSE timeout")]
    SendTimeout,
    #[error("no answer to the A-ASSOCIATE-RQ within the ACSE timeout")]
    Timeout,
    #[error("connection lost before the association answer: {0}")]
    Lost(#[source] std::io::Error),
    #[error("answered the A-ASSOCIATE-RQ with {0}")]
    Unexpected(&'static str),
    #[error("answered with a non-PDU (first byte 0x{0:02X})")]
    NotDicom(u8),
    #[error("{pdu} of {length} bytes exceeds the limit of {limit}")]
    TooLong { pdu: &'static str, length: u32, limit: u32 },
    #[error("incomplete {0} within the ACSE timeout")]
    Incomplete(&'static str),
    #[error("connection lost in the middle of the {pdu}: {error}")]
    LostMidPdu { pdu: &'static str, error: std::io::Error },
    #[error("no answer before the shutdown grace period ended")]
    Shutdown,
}

/// Reads the SCP's answer to a forwarded RQ: A-ASSOCIATE-AC, -RJ or A-ABORT,
/// bounded by `limit`, under `deadline`.
async fn read_associate_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: u32,
    deadline: Instant,
) -> Result<(PduType, Vec<u8>), AnswerError> {
    let check = |h: &PduHeader| match h.pdu_type() {
        Some(t @ (PduType::AssociateAc | PduType::AssociateRj | PduType::Abort)) if h.length > limit => {
            Err(AnswerError::TooLong { pdu: t.name(), length: h.length, limit })
        }
        Some(PduType::AssociateAc | PduType::AssociateRj | PduType::Abort) => Ok(()),
        Some(other) => Err(AnswerError::Unexpected(other.name())),
        None => Err(AnswerError::NotDicom(h.type_byte)),
    };
    let mut seen = None;
    let checked = |h: &PduHeader| {
        seen = h.pdu_type();
        check(h)
    };
    match read_pdu(stream, deadline, checked).await {
        Ok((h, pdu)) => match h.pdu_type() {
            Some(t) => Ok((t, pdu)),
            None => Err(AnswerError::NotDicom(h.type_byte)),
        },
        Err(ReadError::Refused(e)) => Err(e),
        Err(ReadError::NotDicom(byte)) => Err(AnswerError::NotDicom(byte)),
        Err(ReadError::Timeout { header_seen: false, .. }) => Err(AnswerError::Timeout),
        Err(ReadError::Timeout { .. }) => Err(AnswerError::Incomplete(name(seen))),
        Err(ReadError::Closed { got }) if got < HEADER_LEN => Err(AnswerError::Lost(eof())),
        Err(ReadError::Closed { .. }) => Err(AnswerError::LostMidPdu { pdu: name(seen), error: eof() }),
        Err(ReadError::Io(e)) if seen.is_some() => Err(AnswerError::LostMidPdu { pdu: name(seen), error: e }),
        Err(ReadError::Io(e)) => Err(AnswerError::Lost(e)),
    }
}

fn name(pdu_type: Option<PduType>) -> &'static str {
    pdu_type.map_or("PDU", PduType::name)
}

fn eof() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_values(values: &[u32]) -> (Vec<u8>, Vec<(u32, usize)>) {
        let mut pdu = Vec::new();
        let mut items = Vec::new();
        for v in values {
            pdu.extend_from_slice(&[0x51, 0, 0, 4]);
            items.push((*v, pdu.len()));
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        (pdu, items)
    }

    fn values(pdu: &[u8]) -> Vec<u32> {
        pdu.chunks(8).map(|c| u32::from_be_bytes([c[4], c[5], c[6], c[7]])).collect()
    }

    #[test]
    fn every_maximum_length_sub_item_says_the_limit_the_relay_enforces() {
        let cap = 4 * 1024 * 1024;
        for (sent, limit, forwarded) in [
            (vec![16384], 16384, vec![16384]),
            (vec![0], cap, vec![cap]),
            (vec![0x7FFF_FFFF], cap, vec![cap]),
            (vec![0x7FFF_FFFF, 16384], 16384, vec![16384, 16384]),
            (vec![0, 16384], 16384, vec![16384, 16384]),
            (vec![32768, 16384, 0], 16384, vec![16384, 16384, 16384]),
        ] {
            let (mut pdu, items) = with_values(&sent);
            assert_eq!(clamp_max_lengths(&mut pdu, &items, cap), limit, "{sent:?}");
            assert_eq!(values(&pdu), forwarded, "{sent:?}");
        }
        let mut none = Vec::new();
        assert_eq!(clamp_max_lengths(&mut none, &[], cap), cap);
    }
}
