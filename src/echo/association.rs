//! One Verification association over an open (TLS or plain) stream:
//! A-ASSOCIATE-RQ → AC/RJ/ABORT, C-ECHO-RQ → C-ECHO-RSP, A-RELEASE-RQ → RP.
//!
//! PDUs are framed here rather than through dicom-ul's association client,
//! because that client reports any failure to read the association response
//! as "TLS not supported", which would hide exactly what `echo` must show.
//! dicom-ul still writes the A-ASSOCIATE-RQ and parses the A-ASSOCIATE-AC.
//! Every read and write runs under the caller's single deadline.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use dicom_ul::pdu::{
    AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed, PresentationContextResultReason,
    UserVariableItem,
};

use super::dimse;
use super::{EchoError, Phase};
use crate::dicom::command_set;
use crate::dicom::pdu::{PduHeader, PduType, HEADER_LEN};
use crate::dicom::AeTitle;
use crate::pdu_io::{read_pdu as read_bounded, ReadError};

/// DICOM Application Context Name (PS3.7 Annex A.2.1).
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Implicit VR Little Endian: the one transfer syntax every SCP accepts.
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// dicomgate's Implementation Class UID (a UUID-derived 2.25 UID, PS3.5 §B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.85464133720376089358123186045536418561";
pub const IMPLEMENTATION_VERSION_NAME: &str = "DICOMGATE";
/// Maximum Length we announce and the largest P-DATA-TF we accept.
const MAX_PDU: u32 = 16_384;
/// Largest A-ASSOCIATE-AC (or other control PDU) we read: an AC for one
/// presentation context is a few hundred bytes.
const MAX_CONTROL_PDU: u32 = 65_536;
const CONTEXT_ID: u8 = 1;
const MESSAGE_ID: u16 = 1;

/// A stream `echo` can talk over: TCP or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Requests the association; returns once the SCP accepted it and accepted
/// the Verification presentation context.
pub async fn associate(
    stream: &mut dyn Stream,
    calling: &AeTitle,
    called: &AeTitle,
    deadline: Instant,
) -> Result<(), EchoError> {
    let phase = Phase::Associate;
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.as_str().to_owned(),
        called_ae_title: called.as_str().to_owned(),
        application_context_name: APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: vec![PresentationContextProposed {
            id: CONTEXT_ID,
            abstract_syntax: dimse::VERIFICATION_SOP_CLASS.to_owned(),
            transfer_syntaxes: vec![IMPLICIT_VR_LE.to_owned(), EXPLICIT_VR_LE.to_owned()],
        }],
        user_variables: vec![
            UserVariableItem::MaxLength(MAX_PDU),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_owned()),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_owned()),
        ],
    });
    send(stream, &rq, phase, deadline).await?;
    let (header, pdu) = read_pdu(stream, MAX_CONTROL_PDU, phase, deadline).await?;
    match header.pdu_type() {
        Some(PduType::AssociateAc) => {}
        Some(PduType::AssociateRj) => {
            // PS3.8 §9.3.4: reserved, result, source, reason.
            return match pdu.get(HEADER_LEN + 1..HEADER_LEN + 4) {
                Some(&[result, origin, reason]) => Err(EchoError::Rejected { result, origin, reason }),
                _ => Err(malformed(phase, "A-ASSOCIATE-RJ shorter than 10 bytes")),
            };
        }
        other => return Err(unexpected(phase, header, other, &pdu)),
    }
    let ac = match dicom_ul::read_pdu(&pdu[..], MAX_CONTROL_PDU, false) {
        Ok(Some(Pdu::AssociationAC(ac))) => ac,
        Ok(_) => return Err(malformed(phase, "incomplete A-ASSOCIATE-AC")),
        Err(e) => return Err(malformed(phase, &format!("cannot parse the A-ASSOCIATE-AC: {e}"))),
    };
    match ac.presentation_contexts.iter().find(|pc| pc.id == CONTEXT_ID) {
        Some(pc) if pc.reason == PresentationContextResultReason::Acceptance => Ok(()),
        Some(pc) => Err(EchoError::ContextRefused { reason: pc.reason.to_string() }),
        None => Err(EchoError::ContextRefused { reason: "no answer for the proposed presentation context".to_owned() }),
    }
}

/// Sends the C-ECHO-RQ and returns the C-ECHO-RSP status.
pub async fn echo(stream: &mut dyn Stream, deadline: Instant) -> Result<u16, EchoError> {
    let phase = Phase::Echo;
    let rq = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: CONTEXT_ID,
            value_type: PDataValueType::Command,
            is_last: true,
            data: dimse::c_echo_rq(MESSAGE_ID),
        }],
    };
    send(stream, &rq, phase, deadline).await?;
    // The response command may come in several fragments (PS3.8 §9.3.5.1);
    // collect them up to the last one, bounded by MAX_PDU in total.
    let mut command = Vec::new();
    loop {
        let (header, pdu) = read_pdu(stream, MAX_PDU, phase, deadline).await?;
        if header.pdu_type() != Some(PduType::PData) {
            return Err(unexpected(phase, header, header.pdu_type(), &pdu));
        }
        let mut items = &pdu[HEADER_LEN..];
        while !items.is_empty() {
            // PDV item: length (4), context id (1), control header (1), data.
            let Some(&[l0, l1, l2, l3, _context, control]) = items.get(..6) else {
                return Err(malformed(phase, "truncated presentation data value"));
            };
            let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
            let end = len.checked_sub(2).and_then(|n| n.checked_add(6));
            let Some(data) = end.and_then(|end| items.get(6..end)) else {
                return Err(malformed(phase, "presentation data value overruns its PDU"));
            };
            if control & 0x01 == 0 {
                return Err(malformed(phase, "a data set instead of the C-ECHO-RSP"));
            }
            if command.len() + data.len() > MAX_PDU as usize {
                return Err(malformed(phase, "C-ECHO-RSP command set too large"));
            }
            command.extend_from_slice(data);
            items = &items[4 + len..];
            if control & 0x02 != 0 {
                return read_status(&command);
            }
        }
    }
}

fn read_status(command: &[u8]) -> Result<u16, EchoError> {
    let phase = Phase::Echo;
    let rsp = command_set::parse(command)
        .map_err(|e| malformed(phase, &format!("unreadable C-ECHO-RSP command set: {e}")))?
        .fields;
    if rsp.command_field != dimse::C_ECHO_RSP {
        return Err(malformed(phase, &format!("expected a C-ECHO-RSP, got command field 0x{:04X}", rsp.command_field)));
    }
    if rsp.message_id_being_responded_to != Some(MESSAGE_ID) {
        return Err(malformed(phase, "C-ECHO-RSP answers another message ID"));
    }
    rsp.status.ok_or_else(|| malformed(phase, "C-ECHO-RSP without a status"))
}

/// A-RELEASE-RQ → A-RELEASE-RP (PS3.8 §9.3.6, §9.3.7).
pub async fn release(stream: &mut dyn Stream, deadline: Instant) -> Result<(), EchoError> {
    let phase = Phase::Release;
    send(stream, &Pdu::ReleaseRQ, phase, deadline).await?;
    let (header, pdu) = read_pdu(stream, MAX_CONTROL_PDU, phase, deadline).await?;
    match header.pdu_type() {
        Some(PduType::ReleaseRp) => Ok(()),
        other => Err(unexpected(phase, header, other, &pdu)),
    }
}

async fn send(stream: &mut dyn Stream, pdu: &Pdu, phase: Phase, deadline: Instant) -> Result<(), EchoError> {
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, pdu)
        .map_err(|e| EchoError::Internal { what: format!("cannot encode the {}: {e}", pdu.short_description()) })?;
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    match timeout_at(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(EchoError::from_io(phase, e)),
        Err(_) => Err(EchoError::Timeout { phase }),
    }
}

/// Reads one whole PDU (header included) of at most `max` body bytes.
async fn read_pdu(
    stream: &mut dyn Stream,
    max: u32,
    phase: Phase,
    deadline: Instant,
) -> Result<(PduHeader, Vec<u8>), EchoError> {
    let check = |h: &PduHeader| match h.pdu_type() {
        Some(t) if h.length > max => {
            Err(malformed(phase, &format!("{} of {} bytes exceeds the {max}-byte limit", t.name(), h.length)))
        }
        _ => Ok(()),
    };
    read_bounded(&mut *stream, deadline, check).await.map_err(|e| match e {
        ReadError::Refused(e) => e,
        ReadError::NotDicom(first_byte) => EchoError::NotDicom { phase, first_byte },
        ReadError::Timeout { .. } => EchoError::Timeout { phase },
        ReadError::Closed { .. } => EchoError::from_io(phase, std::io::ErrorKind::UnexpectedEof.into()),
        ReadError::Io(e) => EchoError::from_io(phase, e),
    })
}

/// An A-ABORT becomes [`EchoError::Aborted`]; anything else unexpected is a
/// protocol error naming the PDU.
fn unexpected(phase: Phase, header: PduHeader, pdu_type: Option<PduType>, pdu: &[u8]) -> EchoError {
    match pdu_type {
        Some(PduType::Abort) => match pdu.get(HEADER_LEN + 2..HEADER_LEN + 4) {
            // PS3.8 §9.3.8: reserved (2), source, reason/diag.
            Some(&[origin, reason]) => EchoError::Aborted { phase, origin, reason },
            _ => malformed(phase, "A-ABORT shorter than 10 bytes"),
        },
        Some(t) => malformed(phase, &format!("unexpected {}", t.name())),
        None => EchoError::NotDicom { phase, first_byte: header.type_byte },
    }
}

fn malformed(phase: Phase, what: &str) -> EchoError {
    EchoError::Protocol { phase, what: what.to_owned() }
}
