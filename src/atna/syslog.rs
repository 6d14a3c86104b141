//! RFC 5424 syslog messages carrying an `AuditMessage`, as IHE ITI TF-2
//! §3.20.4.1.2 ("Record Audit Event" [ITI-20]) prescribes them, and their
//! framing on each transport. Pure.
//!
//! - PRI: facility 10 (security/authorization), severity 5 (notice) for a
//!   success and 4 (warning) for a failure, the two ITI-20 allows.
//! - APP-NAME `dicomgate`, PROCID the process ID (the `UserID` of the
//!   gateway's participant, so the two can be matched), MSGID `IHE+RFC-3881`,
//!   no structured data.
//! - MSG: a UTF-8 byte order mark and the XML (RFC 5424 §6.4 MSG-UTF8).
//! - TCP and TLS: RFC 6587 §3.4.1 octet counting (`LEN SP MSG`), which RFC
//!   5425 §4.3 requires for TLS; UDP: one message per datagram (RFC 5426 §3.1).

use super::event::Timestamp;
use super::message::EventOutcome;

/// MSGID of ITI-20. IHE kept the RFC 3881 name when the payload became the
/// DICOM schema (PS3.15 A.5); some products (dcm4che) send `DICOM+RFC3881`
/// instead, and repositories accept both.
pub const MSGID: &str = "IHE+RFC-3881";
pub const APP_NAME: &str = "dicomgate";
/// Facility 10, security/authorization messages (RFC 5424 §6.2.1).
const FACILITY: u8 = 10;
const BOM: &str = "\u{FEFF}";

/// One SYSLOG-MSG (RFC 5424 §6), without transport framing.
pub fn format(time: Timestamp, hostname: &str, pid: u32, outcome: EventOutcome, xml: &str) -> Vec<u8> {
    let severity: u8 = if outcome == EventOutcome::Success { 5 } else { 4 };
    let pri = FACILITY * 8 + severity;
    format!("<{pri}>1 {time} {hostname} {APP_NAME} {pid} {MSGID} - {BOM}{xml}").into_bytes()
}

/// RFC 5424 HOSTNAME: printable US-ASCII without spaces, at most 255
/// octets; the NILVALUE `-` when nothing usable is known.
pub fn hostname_field(name: &str) -> String {
    let clean: String = name.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if clean.is_empty() {
        "-".to_owned()
    } else {
        clean
    }
}

/// RFC 6587 §3.4.1 octet-counted frame for a stream transport.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut frame = format!("{} ", msg.len()).into_bytes();
    frame.extend_from_slice(msg);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_iti20s() {
        let time = Timestamp::from_unix(1_790_000_000).expect("valid time");
        let msg = format(time, "gw1", 42, EventOutcome::Success, "<AuditMessage/>");
        let text = String::from_utf8(msg).expect("utf-8");
        assert_eq!(text, "<85>1 2026-09-21T14:13:20.000Z gw1 dicomgate 42 IHE+RFC-3881 - \u{FEFF}<AuditMessage/>");
        let failed = format(time, "gw1", 42, EventOutcome::MinorFailure, "x");
        assert!(failed.starts_with(b"<84>1 "), "facility 10, severity warning");
    }

    #[test]
    fn octet_counting_counts_bytes_not_characters() {
        let msg = "é".as_bytes();
        assert_eq!(octet_counted(msg), b"2 \xc3\xa9".to_vec());
    }

    #[test]
    fn hostname_is_printable_ascii_or_nil() {
        assert_eq!(hostname_field("gw 1\n"), "gw1");
        assert_eq!(hostname_field(""), "-");
        assert_eq!(hostname_field(&"a".repeat(300)).len(), 255);
    }
}
