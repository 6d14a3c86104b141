//! Just enough DIMSE for C-ECHO: command sets are always Implicit VR Little
//! Endian (PS3.7 §6.3.1), so they are built and walked by hand here rather
//! than with the gateway's own code (the tests must be able to disagree).

use std::collections::BTreeMap;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;

fn element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0x0000u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid(value: &str) -> Vec<u8> {
    let mut v = value.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn with_group_length(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 12);
    element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A C-ECHO-RQ command set.
pub fn echo_rq(message_id: u16) -> Vec<u8> {
    let mut b = Vec::new();
    element(&mut b, 0x0002, &uid(VERIFICATION));
    element(&mut b, 0x0100, &C_ECHO_RQ.to_le_bytes());
    element(&mut b, 0x0110, &message_id.to_le_bytes());
    element(&mut b, 0x0800, &0x0101u16.to_le_bytes());
    with_group_length(b)
}

/// A C-ECHO-RSP command set.
pub fn echo_rsp(message_id: u16, status: u16) -> Vec<u8> {
    let mut b = Vec::new();
    element(&mut b, 0x0002, &uid(VERIFICATION));
    element(&mut b, 0x0100, &C_ECHO_RSP.to_le_bytes());
    element(&mut b, 0x0120, &message_id.to_le_bytes());
    element(&mut b, 0x0800, &0x0101u16.to_le_bytes());
    element(&mut b, 0x0900, &status.to_le_bytes());
    with_group_length(b)
}

/// A parsed command set: element number (group 0000) → value.
#[derive(Debug, Clone)]
pub struct Command(pub BTreeMap<u16, Vec<u8>>);

impl Command {
    pub fn parse(bytes: &[u8]) -> Option<Command> {
        let mut map = BTreeMap::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < 8 {
                return None;
            }
            let group = u16::from_le_bytes([rest[0], rest[1]]);
            let elem = u16::from_le_bytes([rest[2], rest[3]]);
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            if group != 0 || rest.len() < 8 + len {
                return None;
            }
            map.insert(elem, rest[8..8 + len].to_vec());
            rest = &rest[8 + len..];
        }
        Some(Command(map))
    }

    pub fn u16(&self, elem: u16) -> Option<u16> {
        let v = self.0.get(&elem)?;
        (v.len() == 2).then(|| u16::from_le_bytes([v[0], v[1]]))
    }

    pub fn command_field(&self) -> Option<u16> {
        self.u16(0x0100)
    }

    pub fn message_id(&self) -> Option<u16> {
        self.u16(0x0110)
    }

    pub fn status(&self) -> Option<u16> {
        self.u16(0x0900)
    }
}
