//! The C-ECHO command sets (PS3.7 §9.3.5). Command sets are always Implicit
//! VR Little Endian (PS3.7 §6.3.1): each element is group (2), element (2),
//! value length (4), value, all little endian, and every tag is in group
//! 0000.

/// Verification SOP Class (PS3.4 Annex A).
pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

const COMMAND_GROUP_LENGTH: u16 = 0x0000;
const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
const COMMAND_FIELD: u16 = 0x0100;
const MESSAGE_ID: u16 = 0x0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
const STATUS: u16 = 0x0900;

/// Command Field values (PS3.7 Table E.1-1).
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
const NO_DATA_SET: u16 = 0x0101;

/// The C-ECHO-RQ command set for `message_id`.
pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    // UI values are padded to even length with a NUL (PS3.5 §6.2).
    let mut uid = VERIFICATION_SOP_CLASS.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let mut body = Vec::with_capacity(64);
    element(&mut body, AFFECTED_SOP_CLASS_UID, &uid);
    element(&mut body, COMMAND_FIELD, &C_ECHO_RQ.to_le_bytes());
    element(&mut body, MESSAGE_ID, &message_id.to_le_bytes());
    element(&mut body, COMMAND_DATA_SET_TYPE, &NO_DATA_SET.to_le_bytes());
    let mut set = Vec::with_capacity(body.len() + 12);
    // The group length counts the bytes after its own element. The command
    // set is a few dozen bytes, so the cast cannot truncate.
    element(&mut set, COMMAND_GROUP_LENGTH, &(body.len() as u32).to_le_bytes());
    set.extend_from_slice(&body);
    set
}

fn element(out: &mut Vec<u8>, tag_element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&tag_element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// The fields of a response command set that an echo needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    pub command_field: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub status: Option<u16>,
}

/// Walks a command set; elements it does not need are skipped. `None` when
/// an element runs past the end or leaves group 0000.
pub fn parse_response(mut bytes: &[u8]) -> Option<Response> {
    let mut r = Response::default();
    while !bytes.is_empty() {
        let header = bytes.get(..8)?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let elem = u16::from_le_bytes([header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if group != 0 {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        let value = bytes.get(8..8usize.checked_add(len)?)?;
        let us = || <[u8; 2]>::try_from(value).ok().map(u16::from_le_bytes);
        match elem {
            COMMAND_FIELD => r.command_field = us(),
            MESSAGE_ID_BEING_RESPONDED_TO => r.message_id_being_responded_to = us(),
            STATUS => r.status = us(),
            _ => {}
        }
        bytes = &bytes[8 + len..];
    }
    Some(r)
}

/// Words for a C-ECHO-RSP status (PS3.7 Annex C, §9.1.5.1.4).
pub fn describe_status(status: u16) -> String {
    let text = match status {
        0x0000 => "success",
        0x0110 => "failure: processing failure",
        0x0112 => "failure: no such SOP instance",
        0x0122 => "failure: SOP class not supported",
        0x0210 => "failure: duplicate invocation",
        0x0211 => "failure: unrecognized operation",
        0x0212 => "failure: mistyped argument",
        0x0213 => "failure: resource limitation",
        0xFE00 => "cancel",
        0xA700..=0xA7FF => "failure: out of resources",
        0xA900..=0xA9FF => "failure: data set does not match SOP class",
        0xC000..=0xCFFF => "failure: cannot understand",
        0xB000..=0xBFFF => "warning",
        0xFF00 | 0xFF01 => "pending",
        _ => "failure (unknown status)",
    };
    format!("0x{status:04X} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_rq_matches_dcmtk_layout() {
        let rq = c_echo_rq(1);
        // Group length 12 + UID 8+18 + three US elements 3*(8+2).
        assert_eq!(rq.len(), 12 + 26 + 30);
        assert_eq!(&rq[..12], &[0, 0, 0, 0, 4, 0, 0, 0, 56, 0, 0, 0]);
        // The walker reads its own output.
        let r = parse_response(&rq).expect("walk");
        assert_eq!(r.command_field, Some(C_ECHO_RQ));
        assert_eq!(r.status, None);
    }

    #[test]
    fn response_fields_are_read_and_overruns_refused() {
        let mut rsp = Vec::new();
        element(&mut rsp, COMMAND_FIELD, &C_ECHO_RSP.to_le_bytes());
        element(&mut rsp, MESSAGE_ID_BEING_RESPONDED_TO, &7u16.to_le_bytes());
        element(&mut rsp, STATUS, &0x0110u16.to_le_bytes());
        let r = parse_response(&rsp).expect("walk");
        assert_eq!(
            r,
            Response { command_field: Some(C_ECHO_RSP), message_id_being_responded_to: Some(7), status: Some(0x0110) }
        );
        let mut overrun = rsp.clone();
        overrun[4] = 0xFF;
        assert_eq!(parse_response(&overrun), None);
        assert_eq!(parse_response(&rsp[..5]), None);
        assert_eq!(parse_response(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(describe_status(0x0110), "0x0110 (failure: processing failure)");
    }
}
