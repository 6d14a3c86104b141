//! Tests of the command-set reader: well-formed sets, every hostile shape
//! the module's rules name, and a property over arbitrary bytes.

use super::*;
use proptest::prelude::*;

fn raw(out: &mut Vec<u8>, group: u16, element: u16, length: u32, value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(value);
}

/// A C-STORE-RSP as an SCP sends it: group length first, padded UID.
pub(crate) fn store_rsp(status: u16) -> Vec<u8> {
    let mut body = Vec::new();
    push_element(&mut body, element::AFFECTED_SOP_CLASS_UID, b"1.2.840.10008.5.1.4.1.1.7\0");
    push_element(&mut body, element::COMMAND_FIELD, &0x8001u16.to_le_bytes());
    push_element(&mut body, element::MESSAGE_ID_BEING_RESPONDED_TO, &7u16.to_le_bytes());
    push_element(&mut body, element::COMMAND_DATA_SET_TYPE, &NO_DATA_SET.to_le_bytes());
    push_element(&mut body, element::STATUS, &status.to_le_bytes());
    let mut set = Vec::new();
    push_element(&mut set, element::COMMAND_GROUP_LENGTH, &(body.len() as u32).to_le_bytes());
    set.extend(body);
    set
}

#[test]
fn reads_the_fields_and_borrows_the_sop_class() {
    let bytes = store_rsp(0xB000);
    let set = parse(&bytes).unwrap();
    assert_eq!(
        set.fields,
        Fields {
            command_field: 0x8001,
            message_id: None,
            message_id_being_responded_to: Some(7),
            status: Some(0xB000)
        }
    );
    assert_eq!(set.affected_sop_class, Some(&b"1.2.840.10008.5.1.4.1.1.7"[..]));
    assert_eq!(set.fields.operation(), "C-STORE");
    assert!(set.fields.is_response());
    assert_eq!(set.fields.status_class(), Some(StatusClass::Warning));
}

#[test]
fn truncated_elements_are_refused() {
    let bytes = store_rsp(0);
    // Every cut that is not at an element boundary is refused.
    let mut boundaries = vec![0];
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 8 + len;
        boundaries.push(at);
    }
    for cut in 1..bytes.len() {
        let r = parse(&bytes[..cut]);
        if boundaries.contains(&cut) {
            assert!(r.is_ok() || r == Err(CommandSetError::NoCommandField), "cut {cut}: {r:?}");
        } else {
            assert!(
                matches!(r, Err(CommandSetError::Truncated { .. } | CommandSetError::LengthPastEnd { .. })),
                "cut {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn lengths_past_the_end_are_refused_without_overflow() {
    for length in [9, 0x7FFF_FFFF, 0xFFFF_FFFE, u32::MAX] {
        let mut bytes = store_rsp(0);
        raw(&mut bytes, 0, 0x1000, length, b"12345678");
        assert_eq!(
            parse(&bytes),
            Err(CommandSetError::LengthPastEnd { offset: store_rsp(0).len(), length }),
            "length {length:#x}"
        );
    }
}

#[test]
fn other_groups_are_refused() {
    let mut bytes = store_rsp(0);
    raw(&mut bytes, 0x0008, 0x0016, 2, b"1\0");
    assert!(matches!(parse(&bytes), Err(CommandSetError::NotCommandGroup { group: 0x0008, element: 0x0016, .. })));
    // Even before the Command Field.
    let mut first = Vec::new();
    raw(&mut first, 0x0002, 0x0000, 4, &[0; 4]);
    first.extend(store_rsp(0));
    assert!(matches!(parse(&first), Err(CommandSetError::NotCommandGroup { offset: 0, .. })));
}

#[test]
fn odd_lengths_walk_but_us_fields_must_be_two_bytes() {
    // An odd-length (unpadded) UID is read as sent.
    let mut bytes = Vec::new();
    push_element(&mut bytes, element::AFFECTED_SOP_CLASS_UID, b"1.2.840.10008.1.1");
    push_element(&mut bytes, element::COMMAND_FIELD, &C_ECHO_RSP.to_le_bytes());
    let set = parse(&bytes).unwrap();
    assert_eq!(set.affected_sop_class, Some(&b"1.2.840.10008.1.1"[..]));
    assert_eq!(set.fields.command_field, C_ECHO_RSP);
    for (element, value) in [
        (element::COMMAND_FIELD, &[0x30, 0x80, 0][..]),
        (element::STATUS, &[0][..]),
        (element::MESSAGE_ID, &[][..]),
        (element::MESSAGE_ID_BEING_RESPONDED_TO, &[1, 0, 0, 0][..]),
    ] {
        let mut bad = Vec::new();
        push_element(&mut bad, element::COMMAND_FIELD, &C_ECHO_RSP.to_le_bytes());
        push_element(&mut bad, element, value);
        assert_eq!(
            parse(&bad),
            Err(CommandSetError::BadUsLength { element, length: value.len() as u32 }),
            "({element:04X})"
        );
    }
}

#[test]
fn a_command_field_is_required() {
    assert_eq!(parse(&[]), Err(CommandSetError::NoCommandField));
    let mut bytes = Vec::new();
    push_element(&mut bytes, element::STATUS, &0u16.to_le_bytes());
    assert_eq!(parse(&bytes), Err(CommandSetError::NoCommandField));
}

#[test]
fn status_classes_follow_ps3_7_annex_c() {
    use StatusClass::*;
    for (status, class) in [
        (0x0000, Success),
        (0xFF00, Pending),
        (0xFF01, Pending),
        (0xFE00, Cancel),
        (0xB000, Warning),
        (0xBFFF, Warning),
        (0x0001, Warning),
        (0x0107, Warning),
        (0x0116, Warning),
        (0xA700, Failure),
        (0xA900, Failure),
        (0xC000, Failure),
        (0x0122, Failure),
        (0x0211, Failure),
        (0x1234, Failure),
        (0xFF02, Failure),
    ] {
        assert_eq!(StatusClass::of(status), class, "{status:#06x}");
    }
    assert_eq!(Status(0x0110).to_string(), "0x0110 (failure: processing failure)");
    assert_eq!(Status(0x0000).to_string(), "0x0000 (success)");
    assert_eq!(Status(0xB007).to_string(), "0xB007 (warning)");
    assert_eq!(Status(0xC211).to_string(), "0xC211 (failure: cannot understand)");
    assert_eq!(Status(0x1234).to_string(), "0x1234 (failure (unknown status))");
}

#[test]
fn the_table_rows_are_disjoint() {
    for (i, (a0, a1, ..)) in STATUS_TABLE.iter().enumerate() {
        assert!(a0 <= a1);
        for (b0, b1, ..) in &STATUS_TABLE[i + 1..] {
            assert!(a1 < b0 || b1 < a0, "{a0:#06x}..{a1:#06x} overlaps {b0:#06x}..{b1:#06x}");
        }
    }
}

#[test]
fn operation_names_cover_requests_and_responses() {
    assert_eq!(operation_name(0x0001), "C-STORE");
    assert_eq!(operation_name(0x8001), "C-STORE");
    assert_eq!(operation_name(0x0FFF), "C-CANCEL");
    assert_eq!(operation_name(0x8150), "N-DELETE");
    assert_eq!(operation_name(0x4242), "other");
}

proptest! {
    /// Arbitrary bytes never panic, and an accepted set is one whose
    /// elements tile the input exactly, all in group 0000.
    #[test]
    fn arbitrary_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(set) = parse(&bytes) {
            let mut at = 0;
            while at < bytes.len() {
                prop_assert_eq!(&bytes[at..at + 2], &[0, 0]);
                let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
                at += 8 + len;
            }
            prop_assert_eq!(at, bytes.len());
            let _ = set.fields.operation();
        }
    }

    /// A valid set with an appended element of any header survives or fails
    /// by the rules, never silently changing the fields already read.
    #[test]
    fn appended_elements_keep_or_refuse(group in 0u16..3, element in any::<u16>(), length in any::<u32>(), value in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut bytes = store_rsp(0x0000);
        raw(&mut bytes, group, element, length, &value);
        match parse(&bytes) {
            Ok(set) => {
                prop_assert_eq!(group, 0);
                prop_assert_eq!(length as usize, value.len());
                prop_assert_eq!(set.fields.message_id_being_responded_to.is_some(), true);
            }
            Err(CommandSetError::NotCommandGroup { .. }) => prop_assert!(group != 0),
            Err(_) => {}
        }
    }
}
