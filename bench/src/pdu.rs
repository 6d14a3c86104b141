//! Just enough of the DICOM Upper Layer (PS3.8 §9.3) to drive a proxy:
//! hand-built A-ASSOCIATE-RQ/AC, P-DATA-TF, C-ECHO command sets, release, and
//! a bounded PDU reader. No library: the bench must not share code with the
//! gateway it measures.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

pub const ASSOCIATE_RQ: u8 = 0x01;
pub const ASSOCIATE_AC: u8 = 0x02;
pub const P_DATA: u8 = 0x04;
pub const RELEASE_RQ: u8 = 0x05;
pub const RELEASE_RP: u8 = 0x06;
pub const ABORT: u8 = 0x07;

const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Ultrasound Multi-frame Image Storage: what the raw stream pretends to carry.
const US_MULTIFRAME: &str = "1.2.840.10008.5.1.4.1.1.3.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLEMENTATION_CLASS: &str = "1.2.826.0.1.3680043.9.7777.1";

pub const RELEASE_RQ_PDU: [u8; 10] = [RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0];
pub const RELEASE_RP_PDU: [u8; 10] = [RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0];

fn ae(title: &str) -> [u8; 16] {
    let mut f = [b' '; 16];
    let b = title.as_bytes();
    f[..b.len().min(16)].copy_from_slice(&b[..b.len().min(16)]);
    f
}

fn item(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn user_information(max_length: u32) -> Vec<u8> {
    let mut ui = Vec::new();
    item(&mut ui, 0x51, &max_length.to_be_bytes());
    item(&mut ui, 0x52, IMPLEMENTATION_CLASS.as_bytes());
    item(&mut ui, 0x55, b"DGBENCH");
    let mut out = Vec::new();
    item(&mut out, 0x50, &ui);
    out
}

/// A-ASSOCIATE-RQ proposing Verification (context 1) and US Multi-frame
/// storage (context 3), declaring `max_length` as what we accept (0: any).
pub fn associate_rq(calling: &str, called: &str, max_length: u32) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0, 0];
    body.extend_from_slice(&ae(called));
    body.extend_from_slice(&ae(calling));
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes());
    for (id, abstract_syntax) in [(1u8, VERIFICATION), (3, US_MULTIFRAME)] {
        let mut pc = vec![id, 0, 0, 0];
        item(&mut pc, 0x30, abstract_syntax.as_bytes());
        item(&mut pc, 0x40, EXPLICIT_LE.as_bytes());
        item(&mut pc, 0x40, IMPLICIT_LE.as_bytes());
        item(&mut body, 0x20, &pc);
    }
    body.extend_from_slice(&user_information(max_length));
    pdu(ASSOCIATE_RQ, &body)
}

/// The A-ASSOCIATE-AC for `rq_body` (the RQ without its 6-byte header):
/// every presentation context accepted with its first transfer syntax.
pub fn associate_ac(rq_body: &[u8], max_length: u32) -> Option<Vec<u8>> {
    if rq_body.len() < 68 {
        return None;
    }
    let mut body = rq_body[..68].to_vec();
    item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes());
    let mut pos = 68;
    while pos + 4 <= rq_body.len() {
        let kind = rq_body[pos];
        let len = u16::from_be_bytes([rq_body[pos + 2], rq_body[pos + 3]]) as usize;
        let value = rq_body.get(pos + 4..pos + 4 + len)?;
        if kind == 0x20 && value.len() >= 4 {
            let mut first_ts: Option<&[u8]> = None;
            let mut p = 4;
            while p + 4 <= value.len() {
                let k = value[p];
                let l = u16::from_be_bytes([value[p + 2], value[p + 3]]) as usize;
                let v = value.get(p + 4..p + 4 + l)?;
                if k == 0x40 && first_ts.is_none() {
                    first_ts = Some(v);
                }
                p += 4 + l;
            }
            let mut pc = vec![value[0], 0, 0, 0];
            item(&mut pc, 0x40, first_ts.unwrap_or(IMPLICIT_LE.as_bytes()));
            item(&mut body, 0x21, &pc);
        }
        pos += 4 + len;
    }
    body.extend_from_slice(&user_information(max_length));
    Some(pdu(ASSOCIATE_AC, &body))
}

fn element(out: &mut Vec<u8>, tag: (u16, u16), value: &[u8]) {
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// A command set (Implicit VR Little Endian, PS3.7 §6.3.1) in one P-DATA-TF
/// of one PDV on `context`.
fn command_pdata(context: u8, elements: &[((u16, u16), Vec<u8>)]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (tag, value) in elements {
        element(&mut rest, *tag, value);
    }
    let mut set = Vec::new();
    element(&mut set, (0, 0), &(rest.len() as u32).to_le_bytes());
    set.extend_from_slice(&rest);
    let mut body = Vec::new();
    body.extend_from_slice(&(set.len() as u32 + 2).to_be_bytes());
    body.push(context);
    body.push(0x03); // command, last fragment
    body.extend_from_slice(&set);
    pdu(P_DATA, &body)
}

fn uid(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

pub fn echo_rq(message_id: u16) -> Vec<u8> {
    command_pdata(
        1,
        &[
            ((0, 0x0002), uid(VERIFICATION)),
            ((0, 0x0100), 0x0030u16.to_le_bytes().to_vec()),
            ((0, 0x0110), message_id.to_le_bytes().to_vec()),
            ((0, 0x0800), 0x0101u16.to_le_bytes().to_vec()),
        ],
    )
}

pub fn echo_rsp(context: u8, message_id: u16) -> Vec<u8> {
    command_pdata(
        context,
        &[
            ((0, 0x0002), uid(VERIFICATION)),
            ((0, 0x0100), 0x8030u16.to_le_bytes().to_vec()),
            ((0, 0x0120), message_id.to_le_bytes().to_vec()),
            ((0, 0x0800), 0x0101u16.to_le_bytes().to_vec()),
            ((0, 0x0900), 0u16.to_le_bytes().to_vec()),
        ],
    )
}

/// If `body` (a P-DATA-TF body) holds a complete C-ECHO-RQ command, its
/// presentation context and Message ID.
pub fn parse_echo_rq(body: &[u8]) -> Option<(u8, u16)> {
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let context = *body.get(4)?;
    let control = *body.get(5)?;
    if control & 0x03 != 0x03 {
        return None;
    }
    let set = body.get(6..4 + len)?;
    let (mut command, mut id) = (None, None);
    let mut p = 0;
    while p + 8 <= set.len() {
        let group = u16::from_le_bytes([set[p], set[p + 1]]);
        let elem = u16::from_le_bytes([set[p + 2], set[p + 3]]);
        let l = u32::from_le_bytes(set[p + 4..p + 8].try_into().ok()?) as usize;
        let v = set.get(p + 8..p + 8 + l)?;
        if group == 0 && l == 2 {
            match elem {
                0x0100 => command = Some(u16::from_le_bytes([v[0], v[1]])),
                0x0110 => id = Some(u16::from_le_bytes([v[0], v[1]])),
                _ => {}
            }
        }
        p += 8 + l;
    }
    (command == Some(0x0030)).then_some((context, id?))
}

/// One P-DATA-TF PDU with a single dataset PDV of `pdu_length` variable-field
/// bytes (header included in the result), filled with incompressible bytes.
pub fn bulk_pdata(pdu_length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + pdu_length);
    out.push(P_DATA);
    out.push(0);
    out.extend_from_slice(&(pdu_length as u32).to_be_bytes());
    out.extend_from_slice(&(pdu_length as u32 - 4).to_be_bytes());
    out.push(3); // presentation context 3
    out.push(0x00); // dataset, not last
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < 6 + pdu_length {
        // xorshift64*: cheap and incompressible enough for a byte pipe.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let take = word.len().min(6 + pdu_length - out.len());
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// Reads one PDU: its type and body. Bodies above `limit` are an error.
pub async fn read_pdu<R: AsyncRead + Unpin>(rd: &mut R, limit: u32) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 6];
    rd.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("PDU type 0x{:02X} of {len} bytes exceeds {limit}", header[0]),
        ));
    }
    let mut body = vec![0u8; len as usize];
    rd.read_exact(&mut body).await?;
    Ok((header[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ac_answers_every_context() {
        let rq = associate_rq("A", "B", 0);
        let ac = associate_ac(&rq[6..], 1 << 20).expect("ac");
        assert_eq!(ac[0], ASSOCIATE_AC);
        assert_eq!(ac.windows(2).filter(|w| w == &[0x21, 0]).count(), 2);
    }

    #[test]
    fn echo_round_trip() {
        let rq = echo_rq(7);
        assert_eq!(parse_echo_rq(&rq[6..]), Some((1, 7)));
        assert_eq!(parse_echo_rq(&echo_rsp(1, 7)[6..]), None);
    }
}
