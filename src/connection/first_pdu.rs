//! The first PDU of a connection: it must be an A-ASSOCIATE-RQ, no longer
//! than the listener's limit, whole within the ACSE deadline (read by the
//! one bounded reader, [`crate::pdu_io`]; docs/architecture.md, "Data flow").

use tokio::io::AsyncRead;
use tokio::time::Instant;

use crate::dicom::pdu::{AbortReason, PduHeader, PduType};
use crate::pdu_io::{read_pdu, ReadError};

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
    let check = |h: &PduHeader| match h.pdu_type() {
        Some(PduType::AssociateRq) if h.length > limit => Err(FirstPduError::TooLong { length: h.length, limit }),
        Some(PduType::AssociateRq) if h.length < MIN_RQ_BODY => Err(FirstPduError::TooShort(h.length)),
        Some(PduType::AssociateRq) => Ok(()),
        Some(other) => Err(FirstPduError::Unexpected(other.name())),
        None => Err(FirstPduError::NotDicom(h.type_byte)),
    };
    match read_pdu(stream, deadline, check).await {
        Ok((_, pdu)) => Ok(pdu),
        Err(ReadError::Refused(e)) => Err(e),
        Err(ReadError::NotDicom(byte)) => Err(FirstPduError::NotDicom(byte)),
        Err(ReadError::Closed { got: 0 }) => Err(FirstPduError::ClosedEarly),
        Err(ReadError::Closed { .. }) => Err(FirstPduError::Truncated),
        Err(ReadError::Timeout { got, header_seen }) => Err(FirstPduError::Timeout { got, header_seen }),
        Err(ReadError::Io(e)) => Err(FirstPduError::Io(e)),
    }
}
