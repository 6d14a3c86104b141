//! The C-ECHO command sets (PS3.7 §9.3.5), written here and read with the
//! shared reader in [`crate::dicom::command_set`].

use crate::dicom::command_set::{element, push_element, NO_DATA_SET};
pub use crate::dicom::command_set::{C_ECHO_RQ, C_ECHO_RSP};

/// Verification SOP Class (PS3.4 Annex A).
pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// The C-ECHO-RQ command set for `message_id`.
pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    // UI values are padded to even length with a NUL (PS3.5 §6.2).
    let mut uid = VERIFICATION_SOP_CLASS.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let mut body = Vec::with_capacity(64);
    push_element(&mut body, element::AFFECTED_SOP_CLASS_UID, &uid);
    push_element(&mut body, element::COMMAND_FIELD, &C_ECHO_RQ.to_le_bytes());
    push_element(&mut body, element::MESSAGE_ID, &message_id.to_le_bytes());
    push_element(&mut body, element::COMMAND_DATA_SET_TYPE, &NO_DATA_SET.to_le_bytes());
    let mut set = Vec::with_capacity(body.len() + 12);
    // The group length counts the bytes after its own element. The command
    // set is a few dozen bytes, so the cast cannot truncate.
    push_element(&mut set, element::COMMAND_GROUP_LENGTH, &(body.len() as u32).to_le_bytes());
    set.extend_from_slice(&body);
    set
}

/// Words for a C-ECHO-RSP status (PS3.7 Annex C, §9.1.5.1.4).
pub fn describe_status(status: u16) -> String {
    crate::dicom::command_set::Status(status).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::command_set;

    #[test]
    fn echo_rq_matches_dcmtk_layout() {
        let rq = c_echo_rq(1);
        // Group length 12 + UID 8+18 + three US elements 3*(8+2).
        assert_eq!(rq.len(), 12 + 26 + 30);
        assert_eq!(&rq[..12], &[0, 0, 0, 0, 4, 0, 0, 0, 56, 0, 0, 0]);
        // The shared reader reads it.
        let set = command_set::parse(&rq).expect("walk");
        assert_eq!(set.fields.command_field, C_ECHO_RQ);
        assert_eq!(set.fields.message_id, Some(1));
        assert_eq!(set.fields.status, None);
        assert_eq!(set.affected_sop_class, Some(VERIFICATION_SOP_CLASS.as_bytes()));
        assert_eq!(describe_status(0x0110), "0x0110 (failure: processing failure)");
    }
}
