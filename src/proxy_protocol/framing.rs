//! Framing of a PROXY header, sans-IO: how many more bytes the header needs,
//! judged on the bytes seen so far, without parsing its fields. The reader
//! takes exactly that many off the socket, so not one byte of the TLS
//! handshake behind the header is consumed (no buffer to hand on).
//!
//! Why not `TcpStream::peek` plus `ppp`'s partial-header results instead:
//! a peek returns at once whenever any byte is queued, so a header that
//! arrives in pieces would make the task spin (or sleep) until the rest comes,
//! and `ppp` reports "incomplete" without saying how much is missing or
//! whether the bytes seen already rule a header out (a client that bypasses
//! the balancer must be refused at its first byte). The few lines below do
//! both; `ppp` still parses the fields of the complete header.

use super::{malformed, ProxyError};
use crate::config::ProxyVersions;

/// §2.2: the v2 signature.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// §2.2: signature, version/command, family/protocol, 2-byte length.
pub(super) const V2_FIXED: usize = 16;
/// Largest v2 address-and-TLV block accepted. Addresses take at most 216
/// bytes (AF_UNIX); the rest is TLVs (unique ID, TLS details, cloud endpoint
/// IDs), a few hundred bytes in practice. The spec allows 65,535: a bound of
/// our own keeps the per-connection buffer small.
pub const MAX_V2_BODY: usize = 4096;
/// §2.1: "PROXY" + max addresses + CRLF.
pub const V1_MAX: usize = 107;
/// §2.1: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// How far a header in `buf` (the first bytes of the connection) has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// At least this many more bytes, and reading exactly this many cannot
    /// go past the end of the header.
    More(usize),
    /// `buf` is exactly one whole header.
    Complete,
}

/// Framing, without parsing the fields: what the next read must be. Errors
/// as soon as the bytes seen rule out a valid header.
pub fn needed(buf: &[u8], accepted: ProxyVersions) -> Result<Need, ProxyError> {
    let Some(&first) = buf.first() else { return Ok(Need::More(1)) };
    match first {
        b'P' => {
            let seen = buf.len().min(V1_PREFIX.len());
            if buf[..seen] != V1_PREFIX[..seen] {
                return Err(ProxyError::Missing(first));
            }
            // Only a whole "PROXY " is a v1 header in the wrong place.
            if seen < V1_PREFIX.len() {
                return Ok(Need::More(V1_PREFIX.len() - seen));
            }
            if accepted == ProxyVersions::V2 {
                return Err(ProxyError::WrongVersion { got: 1, accepted });
            }
            if buf.len() < V1_MIN {
                return Ok(Need::More(V1_MIN - buf.len()));
            }
            // CR appears only in the final CRLF (§2.1).
            if let Some(cr) = buf.iter().position(|&b| b == b'\r') {
                if cr + 1 < buf.len() {
                    return if buf[cr + 1] == b'\n' && cr + 2 == buf.len() {
                        Ok(Need::Complete)
                    } else {
                        Err(malformed(1, "a CR inside the line, or bytes after its CRLF"))
                    };
                }
            }
            // Ending in CR: exactly the LF is missing; otherwise the whole
            // CRLF is, so two more bytes cannot overshoot.
            let more = if buf.last() == Some(&b'\r') { 1 } else { 2 };
            if buf.len() + more > V1_MAX {
                return Err(ProxyError::V1TooLong);
            }
            Ok(Need::More(more))
        }
        0x0D => {
            let seen = buf.len().min(V2_SIGNATURE.len());
            if buf[..seen] != V2_SIGNATURE[..seen] {
                return Err(ProxyError::Missing(first));
            }
            if seen < V2_SIGNATURE.len() {
                return Ok(Need::More(V2_SIGNATURE.len() - seen));
            }
            if accepted == ProxyVersions::V1 {
                return Err(ProxyError::WrongVersion { got: 2, accepted });
            }
            if buf.len() < V2_FIXED {
                return Ok(Need::More(V2_FIXED - buf.len()));
            }
            // §2.2: the high nibble of byte 13 is the version, 2.
            if buf[12] >> 4 != 0x2 {
                return Err(malformed(2, format!("version nibble 0x{:X}, expected 0x2", buf[12] >> 4)));
            }
            let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if body > MAX_V2_BODY {
                return Err(ProxyError::V2TooLong(body));
            }
            let total = V2_FIXED + body;
            match buf.len().cmp(&total) {
                std::cmp::Ordering::Less => Ok(Need::More(total - buf.len())),
                std::cmp::Ordering::Equal => Ok(Need::Complete),
                std::cmp::Ordering::Greater => Err(malformed(2, "bytes after the declared length")),
            }
        }
        other => Err(ProxyError::Missing(other)),
    }
}
