//! Upper Layer PDUs (PS3.8 §9.3): the 6-byte header, the control PDUs the
//! gateway itself sends (A-ASSOCIATE-RJ, A-ABORT), and the reasons they carry.
//!
//! The gateway never re-encodes a PDU it forwards; these are the only PDUs it
//! writes of its own.

use std::fmt;

/// Every PDU starts with type (1), reserved (1), length (4, big endian).
pub const HEADER_LEN: usize = 6;

/// PDU types (PS3.8 Table 9-1 ff.).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduType {
    AssociateRq,
    AssociateAc,
    AssociateRj,
    PData,
    ReleaseRq,
    ReleaseRp,
    Abort,
}

impl PduType {
    pub fn from_byte(b: u8) -> Option<PduType> {
        Some(match b {
            0x01 => PduType::AssociateRq,
            0x02 => PduType::AssociateAc,
            0x03 => PduType::AssociateRj,
            0x04 => PduType::PData,
            0x05 => PduType::ReleaseRq,
            0x06 => PduType::ReleaseRp,
            0x07 => PduType::Abort,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PduType::AssociateRq => "A-ASSOCIATE-RQ",
            PduType::AssociateAc => "A-ASSOCIATE-AC",
            PduType::AssociateRj => "A-ASSOCIATE-RJ",
            PduType::PData => "P-DATA-TF",
            PduType::ReleaseRq => "A-RELEASE-RQ",
            PduType::ReleaseRp => "A-RELEASE-RP",
            PduType::Abort => "A-ABORT",
        }
    }
}

/// A parsed 6-byte PDU header. The type byte is kept raw so that callers can
/// tell "not a PDU at all" from "a PDU of the wrong type".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduHeader {
    pub type_byte: u8,
    pub length: u32,
}

impl PduHeader {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> PduHeader {
        PduHeader { type_byte: bytes[0], length: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) }
    }

    pub fn pdu_type(&self) -> Option<PduType> {
        PduType::from_byte(self.type_byte)
    }
}

/// An A-ASSOCIATE-RJ's (result, source, reason) triple (PS3.8 §9.3.4),
/// one variant per row of the rejection table (docs/architecture.md, "Stable
/// interfaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 1 rejected-permanent, 1 service-user, 3 calling-AE-title-not-recognized.
    CallingAeNotRecognized,
    /// 1 rejected-permanent, 1 service-user, 7 called-AE-title-not-recognized.
    CalledAeNotRecognized,
    /// 1 rejected-permanent, 2 service-provider (ACSE), 2 protocol-version-not-supported.
    ProtocolVersionNotSupported,
    /// 2 rejected-transient, 3 service-provider (presentation), 1 temporary-congestion.
    TemporaryCongestion,
    /// 2 rejected-transient, 3 service-provider (presentation), 2 local-limit-exceeded.
    LocalLimitExceeded,
}

impl Rejection {
    pub fn triple(self) -> (u8, u8, u8) {
        match self {
            Rejection::CallingAeNotRecognized => (1, 1, 3),
            Rejection::CalledAeNotRecognized => (1, 1, 7),
            Rejection::ProtocolVersionNotSupported => (1, 2, 2),
            Rejection::TemporaryCongestion => (2, 3, 1),
            Rejection::LocalLimitExceeded => (2, 3, 2),
        }
    }

    /// The complete 10-byte A-ASSOCIATE-RJ PDU.
    pub fn to_pdu(self) -> [u8; 10] {
        let (result, source, reason) = self.triple();
        [0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, result, source, reason]
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe_rejection(self.triple()))
    }
}

/// Words for any (result, source, reason) triple, including ones an SCP sends.
pub fn describe_rejection((result, source, reason): (u8, u8, u8)) -> String {
    let result_text = match result {
        1 => "rejected-permanent",
        2 => "rejected-transient",
        _ => "rejected (unknown result)",
    };
    let (source_text, reason_text) = match source {
        1 => (
            "service-user",
            match reason {
                1 => "no-reason-given",
                2 => "application-context-name-not-supported",
                3 => "calling-AE-title-not-recognized",
                7 => "called-AE-title-not-recognized",
                _ => "reserved reason",
            },
        ),
        2 => (
            "service-provider (ACSE)",
            match reason {
                1 => "no-reason-given",
                2 => "protocol-version-not-supported",
                _ => "reserved reason",
            },
        ),
        3 => (
            "service-provider (presentation)",
            match reason {
                0 => "reserved",
                1 => "temporary-congestion",
                2 => "local-limit-exceeded",
                _ => "reserved reason",
            },
        ),
        _ => ("unknown source", "unknown reason"),
    };
    format!("{result_text}, {source_text}, {reason_text} ({result}/{source}/{reason})")
}

/// A-ABORT source (PS3.8 §9.3.8): 0 service-user, 2 service-provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortSource {
    ServiceUser,
    ServiceProvider,
}

/// A-ABORT provider reasons (PS3.8 Table 9-26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    NotSpecified,
    UnrecognizedPdu,
    UnexpectedPdu,
    UnrecognizedPduParameter,
    UnexpectedPduParameter,
    InvalidPduParameterValue,
}

impl AbortReason {
    fn byte(self) -> u8 {
        match self {
            AbortReason::NotSpecified => 0,
            AbortReason::UnrecognizedPdu => 1,
            AbortReason::UnexpectedPdu => 2,
            AbortReason::UnrecognizedPduParameter => 4,
            AbortReason::UnexpectedPduParameter => 5,
            AbortReason::InvalidPduParameterValue => 6,
        }
    }
}

/// The gateway's own A-ABORT: always source 2 (service-provider), since the
/// gateway stands in the upper layer's place for both peers.
pub fn provider_abort(reason: AbortReason) -> [u8; 10] {
    [0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, reason.byte()]
}

/// Words for an A-ABORT's source and reason bytes.
pub fn describe_abort(source: u8, reason: u8) -> String {
    let source_text = match source {
        0 => "service-user",
        1 => "reserved",
        2 => "service-provider",
        _ => "unknown source",
    };
    let reason_text = if source == 2 {
        match reason {
            0 => "reason-not-specified",
            1 => "unrecognized-PDU",
            2 => "unexpected-PDU",
            4 => "unrecognized-PDU-parameter",
            5 => "unexpected-PDU-parameter",
            6 => "invalid-PDU-parameter-value",
            _ => "reserved reason",
        }
    } else {
        "no reason (service-user abort)"
    };
    format!("{source_text}, {reason_text} ({source}/{reason})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_match_the_design_table() {
        assert_eq!(Rejection::CallingAeNotRecognized.to_pdu(), [3, 0, 0, 0, 0, 4, 0, 1, 1, 3]);
        assert_eq!(Rejection::CalledAeNotRecognized.to_pdu()[7..], [1, 1, 7]);
        assert_eq!(Rejection::ProtocolVersionNotSupported.to_pdu()[7..], [1, 2, 2]);
        assert_eq!(Rejection::TemporaryCongestion.to_pdu()[7..], [2, 3, 1]);
        assert_eq!(Rejection::LocalLimitExceeded.to_pdu()[7..], [2, 3, 2]);
        assert_eq!(
            Rejection::CalledAeNotRecognized.to_string(),
            "rejected-permanent, service-user, called-AE-title-not-recognized (1/1/7)"
        );
    }

    #[test]
    fn header_parses_big_endian_length() {
        let h = PduHeader::parse(&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(h.length, u32::MAX);
        assert_eq!(h.pdu_type(), Some(PduType::PData));
        assert_eq!(PduHeader::parse(&[0x16, 3, 1, 0, 0, 0]).pdu_type(), None);
    }

    #[test]
    fn abort_bytes() {
        assert_eq!(provider_abort(AbortReason::UnexpectedPdu), [7, 0, 0, 0, 0, 4, 0, 0, 2, 2]);
        assert_eq!(describe_abort(2, 6), "service-provider, invalid-PDU-parameter-value (2/6)");
    }
}
