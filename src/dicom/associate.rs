//! A-ASSOCIATE-RQ/AC as raw bytes (PS3.8 §9.3.2, §9.3.3).
//!
//! Policy reads the fixed fields straight from the bytes (AE titles, protocol
//! version) and a small walker checks that the variable items are well formed,
//! skipping unknown items and sub-items as PS3.8 §9.3.1 requires. The bytes are
//! forwarded unchanged, except for in-place patches of the 16-byte AE fields
//! (the PDU length never changes).

/// Offsets within the whole PDU (header included), PS3.8 Table 9-11.
const PROTOCOL_VERSION: usize = 6;
const CALLED_AE: std::ops::Range<usize> = 10..26;
const CALLING_AE: std::ops::Range<usize> = 26..42;
/// First variable item: after 32 reserved bytes.
const ITEMS_START: usize = 74;

const ITEM_APPLICATION_CONTEXT: u8 = 0x10;
const ITEM_PRESENTATION_CONTEXT_RQ: u8 = 0x20;
const ITEM_PRESENTATION_CONTEXT_AC: u8 = 0x21;
const ITEM_USER_INFORMATION: u8 = 0x50;
const SUB_ITEM_MAX_LENGTH: u8 = 0x51;
const SUB_ITEM_IMPLEMENTATION_CLASS_UID: u8 = 0x52;
const SUB_ITEM_IMPLEMENTATION_VERSION_NAME: u8 = 0x55;

/// Why an A-ASSOCIATE PDU is malformed. Answered with A-ABORT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedAssociate {
    #[error("PDU of {0} bytes is shorter than the 74-byte fixed part of an A-ASSOCIATE PDU")]
    TooShort(usize),
    #[error("item 0x{item:02X} at offset {offset} claims {length} bytes, past the end of the PDU")]
    ItemOverrun { item: u8, offset: usize, length: usize },
    #[error(
        "user information sub-item 0x{item:02X} at offset {offset} claims {length} bytes, past the end of its item"
    )]
    SubItemOverrun { item: u8, offset: usize, length: usize },
    #[error("maximum length sub-item has length {0}, expected 4")]
    BadMaxLength(usize),
    #[error("no application context item")]
    NoApplicationContext,
    #[error("no presentation context item")]
    NoPresentationContext,
}

/// What the gateway needs from an A-ASSOCIATE-RQ or -AC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateView {
    pub protocol_version: u16,
    pub called_ae: [u8; 16],
    pub calling_ae: [u8; 16],
    pub presentation_contexts: usize,
    /// Every Maximum Length Received sub-item (PS3.8 D.1: there should be
    /// one; nothing stops a peer from sending more) and the offset of its
    /// 4-byte value, so a relay that enforces a bound can clamp each in place.
    /// At most one per 8 bytes of the PDU.
    pub max_lengths: Vec<(u32, usize)>,
    pub implementation_class_uid: Option<String>,
    pub implementation_version_name: Option<String>,
}

impl AssociateView {
    /// Bit 0 of the protocol-version field: "Version 1" (PS3.8 §9.3.2).
    pub fn supports_protocol_version_1(&self) -> bool {
        self.protocol_version & 0x0001 != 0
    }
}

/// Parses a whole A-ASSOCIATE-RQ or -AC PDU (header included). The caller has
/// already checked the type byte and that the header length matches `pdu`.
pub fn parse(pdu: &[u8]) -> Result<AssociateView, MalformedAssociate> {
    if pdu.len() < ITEMS_START {
        return Err(MalformedAssociate::TooShort(pdu.len()));
    }
    let mut view = AssociateView {
        protocol_version: u16::from_be_bytes([pdu[PROTOCOL_VERSION], pdu[PROTOCOL_VERSION + 1]]),
        called_ae: field16(&pdu[CALLED_AE]),
        calling_ae: field16(&pdu[CALLING_AE]),
        presentation_contexts: 0,
        max_lengths: Vec::new(),
        implementation_class_uid: None,
        implementation_version_name: None,
    };
    let mut application_context = false;
    let mut offset = ITEMS_START;
    while offset < pdu.len() {
        let (item, body_start, body_end) = item_at(pdu, offset, pdu.len()).ok_or(MalformedAssociate::ItemOverrun {
            item: pdu[offset],
            offset,
            length: item_len(pdu, offset),
        })?;
        match item {
            ITEM_APPLICATION_CONTEXT => application_context = true,
            ITEM_PRESENTATION_CONTEXT_RQ | ITEM_PRESENTATION_CONTEXT_AC => view.presentation_contexts += 1,
            ITEM_USER_INFORMATION => parse_user_information(pdu, body_start, body_end, &mut view)?,
            _ => {} // PS3.8 §9.3.1: unrecognised items are ignored.
        }
        offset = body_end;
    }
    if !application_context {
        return Err(MalformedAssociate::NoApplicationContext);
    }
    if view.presentation_contexts == 0 {
        return Err(MalformedAssociate::NoPresentationContext);
    }
    Ok(view)
}

fn parse_user_information(
    pdu: &[u8],
    start: usize,
    end: usize,
    view: &mut AssociateView,
) -> Result<(), MalformedAssociate> {
    let mut offset = start;
    while offset < end {
        let (item, body_start, body_end) = item_at(pdu, offset, end).ok_or(MalformedAssociate::SubItemOverrun {
            item: pdu[offset],
            offset,
            length: item_len(pdu, offset),
        })?;
        let body = &pdu[body_start..body_end];
        match item {
            SUB_ITEM_MAX_LENGTH => {
                let value: [u8; 4] = body.try_into().map_err(|_| MalformedAssociate::BadMaxLength(body.len()))?;
                view.max_lengths.push((u32::from_be_bytes(value), body_start));
            }
            SUB_ITEM_IMPLEMENTATION_CLASS_UID => view.implementation_class_uid = Some(printable(body)),
            SUB_ITEM_IMPLEMENTATION_VERSION_NAME => view.implementation_version_name = Some(printable(body)),
            _ => {}
        }
        offset = body_end;
    }
    Ok(())
}

/// Item header: type (1), reserved (1), length (2, big endian). Returns the
/// item type and its body range if it fits before `end`.
fn item_at(pdu: &[u8], offset: usize, end: usize) -> Option<(u8, usize, usize)> {
    let body_start = offset.checked_add(4)?;
    if body_start > end {
        return None;
    }
    let body_end = body_start + item_len(pdu, offset);
    (body_end <= end).then_some((pdu[offset], body_start, body_end))
}

fn item_len(pdu: &[u8], offset: usize) -> usize {
    match (pdu.get(offset + 2), pdu.get(offset + 3)) {
        (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => 0,
    }
}

fn field16(bytes: &[u8]) -> [u8; 16] {
    let mut f = [0u8; 16];
    f.copy_from_slice(bytes);
    f
}

/// UIDs and version names are ASCII; anything else is escaped so that logs
/// stay one line and cannot be forged.
fn printable(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    super::ae::display_raw(trimmed)
}

/// Overwrites the called AE field of an A-ASSOCIATE-RQ/AC in place.
pub fn patch_called_ae(pdu: &mut [u8], value: &[u8; 16]) {
    if pdu.len() >= ITEMS_START {
        pdu[CALLED_AE].copy_from_slice(value);
    }
}

/// Overwrites the calling AE field of an A-ASSOCIATE-RQ/AC in place.
pub fn patch_calling_ae(pdu: &mut [u8], value: &[u8; 16]) {
    if pdu.len() >= ITEMS_START {
        pdu[CALLING_AE].copy_from_slice(value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal but complete A-ASSOCIATE-RQ (Verification SOP class).
    pub(crate) fn sample_rq(called: &[u8; 16], calling: &[u8; 16]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        body.extend_from_slice(called);
        body.extend_from_slice(calling);
        body.extend_from_slice(&[0u8; 32]);
        let app = b"1.2.840.10008.3.1.1.1";
        push_item(&mut body, 0x10, app);
        let mut pc = vec![0x01, 0x00, 0x00, 0x00];
        push_item(&mut pc, 0x30, b"1.2.840.10008.1.1");
        push_item(&mut pc, 0x40, b"1.2.840.10008.1.2");
        push_item(&mut body, 0x20, &pc);
        let mut ui = Vec::new();
        push_item(&mut ui, 0x51, &16384u32.to_be_bytes());
        push_item(&mut ui, 0x52, b"1.2.3.4");
        push_item(&mut ui, 0x7F, b"unknown sub-item");
        push_item(&mut body, 0x50, &ui);
        push_item(&mut body, 0x99, b"unknown item");
        let mut pdu = vec![0x01, 0x00];
        pdu.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        pdu.extend_from_slice(&body);
        pdu
    }

    fn push_item(out: &mut Vec<u8>, item: u8, body: &[u8]) {
        out.push(item);
        out.push(0);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
    }

    #[test]
    fn parses_fields_and_skips_unknown_items() {
        let pdu = sample_rq(b"PACS            ", b"BUTTERFLY       ");
        let v = parse(&pdu).unwrap();
        assert!(v.supports_protocol_version_1());
        assert_eq!(&v.called_ae, b"PACS            ");
        assert_eq!(&v.calling_ae, b"BUTTERFLY       ");
        assert_eq!(v.presentation_contexts, 1);
        let [(max, at)] = v.max_lengths[..] else { panic!("one Maximum Length: {:?}", v.max_lengths) };
        assert_eq!(max, 16384);
        assert_eq!(pdu[at..at + 4], 16384u32.to_be_bytes());
        assert_eq!(v.implementation_class_uid.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn overruns_are_malformed() {
        let mut pdu = sample_rq(b"PACS            ", b"BUTTERFLY       ");
        // Claim more bytes for the application context item than there are.
        pdu[ITEMS_START + 2] = 0xFF;
        assert!(matches!(parse(&pdu), Err(MalformedAssociate::ItemOverrun { .. })));
        assert_eq!(parse(&pdu[..40]), Err(MalformedAssociate::TooShort(40)));
        let short = sample_rq(b"PACS            ", b"BUTTERFLY       ");
        assert!(parse(&short[..short.len() - 3]).is_err());
    }

    #[test]
    fn patches_ae_fields_in_place() {
        let mut pdu = sample_rq(b"GATEWAY         ", b"BUTTERFLY       ");
        let len = pdu.len();
        patch_called_ae(&mut pdu, b"PACS            ");
        assert_eq!(pdu.len(), len);
        assert_eq!(&parse(&pdu).unwrap().called_ae, b"PACS            ");
        patch_calling_ae(&mut pdu, b"X               ");
        assert_eq!(&parse(&pdu).unwrap().calling_ae, b"X               ");
    }
}
