//! Reading the first PDU of a connection: header first, checked before any
//! body byte is buffered, then exactly the declared length, all under the
//! ACSE deadline (DESIGN.md, "First PDU"). dicom-ul's wire reader is not used
//! here: it is unbounded without `strict` and has no deadline.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use crate::dicom::pdu::{AbortReason, PduHeader, PduType, HEADER_LEN};

#[derive(Debug, thiserror::Error)]
pub enum FirstPduError {
    #[error("closed by the peer before sending anything")]
    ClosedEarly,
    #[error("not DICOM: first byte 0x{0:02X} is no PDU type")]
    NotDicom(u8),
    #[error("{0} where an A-ASSOCIATE-RQ was expected")]
    Unexpected(&'static str),
    #[error("A-ASSOCIATE-RQ of {length} bytes exceeds the limit of {limit} bytes")]
    TooLong { length: u32, limit: u32 },
    #[error("A-ASSOCIATE-RQ of {0} bytes is shorter than its fixed part")]
    TooShort(u32),
    #[error("closed by the peer in the middle of the A-ASSOCIATE-RQ")]
    Truncated,
    #[error("no complete A-ASSOCIATE-RQ within the ACSE timeout ({got} bytes received)")]
    Timeout { got: usize, header_seen: bool },
    #[error("read failed: {0}")]
    Io(std::io::Error),
}

impl FirstPduError {
    /// The A-ABORT to answer with, when the peer has shown it speaks DICOM;
    /// `None`: close without a word.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        match self {
            FirstPduError::Unexpected(_) => Some(AbortReason::UnexpectedPdu),
            FirstPduError::TooLong { .. } | FirstPduError::TooShort(_) => Some(AbortReason::InvalidPduParameterValue),
            FirstPduError::Timeout { header_seen: true, .. } => Some(AbortReason::NotSpecified),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, FirstPduError::Timeout { .. })
    }
}

/// The fixed part of an A-ASSOCIATE-RQ after the header (PS3.8 Table 9-11).
const MIN_RQ_BODY: u32 = 68;

/// Reads one whole A-ASSOCIATE-RQ PDU (header included) or says why not.
pub async fn read_associate_rq<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: u32,
    deadline: Instant,
) -> Result<Vec<u8>, FirstPduError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = match timeout_at(deadline, stream.read(&mut header[got..])).await {
            Err(_) => return Err(FirstPduError::Timeout { got, header_seen: false }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(e)) => return Err(FirstPduError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(if got == 0 { FirstPduError::ClosedEarly } else { FirstPduError::Truncated });
        }
        // Judge the first byte as soon as it arrives: garbage is closed at once.
        if got == 0 && PduType::from_byte(header[0]).is_none() {
            return Err(FirstPduError::NotDicom(header[0]));
        }
        got += n;
    }
    let h = PduHeader::parse(&header);
    match h.pdu_type() {
        Some(PduType::AssociateRq) => {}
        Some(other) => return Err(FirstPduError::Unexpected(other.name())),
        None => return Err(FirstPduError::NotDicom(h.type_byte)),
    }
    if h.length > limit {
        return Err(FirstPduError::TooLong { length: h.length, limit });
    }
    if h.length < MIN_RQ_BODY {
        return Err(FirstPduError::TooShort(h.length));
    }
    // Bounded by `limit` (at most 1 MiB by configuration).
    let total = HEADER_LEN + h.length as usize;
    let mut pdu = vec![0u8; total];
    pdu[..HEADER_LEN].copy_from_slice(&header);
    let mut filled = HEADER_LEN;
    while filled < total {
        let n = match timeout_at(deadline, stream.read(&mut pdu[filled..])).await {
            Err(_) => return Err(FirstPduError::Timeout { got: filled, header_seen: true }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(e)) => return Err(FirstPduError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(FirstPduError::Truncated);
        }
        filled += n;
    }
    Ok(pdu)
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
pub async fn read_associate_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: u32,
    deadline: Instant,
) -> Result<(PduType, Vec<u8>), AnswerError> {
    let mut header = [0u8; HEADER_LEN];
    let read = async {
        stream.read_exact(&mut header).await?;
        Ok::<_, std::io::Error>(())
    };
    match timeout_at(deadline, read).await {
        Err(_) => return Err(AnswerError::Timeout),
        Ok(Err(e)) => return Err(AnswerError::Lost(e)),
        Ok(Ok(())) => {}
    }
    let h = PduHeader::parse(&header);
    let pdu_type = match h.pdu_type() {
        Some(t @ (PduType::AssociateAc | PduType::AssociateRj | PduType::Abort)) => t,
        Some(other) => return Err(AnswerError::Unexpected(other.name())),
        None => return Err(AnswerError::NotDicom(h.type_byte)),
    };
    if h.length > limit {
        return Err(AnswerError::TooLong { pdu: pdu_type.name(), length: h.length, limit });
    }
    let mut pdu = vec![0u8; HEADER_LEN + h.length as usize];
    pdu[..HEADER_LEN].copy_from_slice(&header);
    match timeout_at(deadline, stream.read_exact(&mut pdu[HEADER_LEN..])).await {
        Err(_) => Err(AnswerError::Incomplete(pdu_type.name())),
        Ok(Err(error)) => Err(AnswerError::LostMidPdu { pdu: pdu_type.name(), error }),
        Ok(Ok(_)) => Ok((pdu_type, pdu)),
    }
}
