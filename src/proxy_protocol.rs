//! The PROXY protocol header an L4 load balancer (HAProxy `send-proxy` /
//! `send-proxy-v2`, hardware LBs) puts in front of the client's bytes, so the
//! allow list and the audit see the real client address
//! (`listeners.NAME.proxy_protocol`).
//!
//! Framing is ours and sans-IO ([`needed`]): it says how many more bytes a
//! header needs, so the reader takes exactly the header off the socket and
//! not one byte of the TLS handshake behind it (no buffer to hand on). The
//! field parsing of a complete header is the `ppp` crate's ([`parse`]). The
//! reader ([`read_header`]) runs in the connection task, under the ACSE
//! deadline, before TLS; the spec's rules it follows (HAProxy's
//! proxy-protocol.txt):
//!
//! - the receiver is configured for the header and never guesses whether one
//!   is present (§2: a missing header is an error, not a direct client);
//! - v1 (§2.1) is one text line of at most 107 bytes ending in CRLF, the
//!   shortest being `PROXY UNKNOWN\r\n` (15 bytes);
//! - v2 (§2.2) is a 16-byte fixed part — the 12-byte signature
//!   `\r\n\r\n\0\r\nQUIT\n`, version/command, family/protocol, a big-endian
//!   length — and exactly that many bytes of addresses and TLVs;
//! - v2 `LOCAL` (health checks of the balancer itself) and v1 `UNKNOWN` / v2
//!   `UNSPEC` carry no client: the connection's own endpoints apply (§2.1,
//!   §2.2), so the allow list judges the balancer's address.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use crate::config::ProxyVersions;

/// §2.2: the v2 signature.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// §2.2: signature, version/command, family/protocol, 2-byte length.
const V2_FIXED: usize = 16;
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

/// The client a header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// A relayed TCP connection from this client address.
    Client(SocketAddr),
    /// v2 `LOCAL`: the balancer's own connection (its health check).
    Local,
    /// v1 `UNKNOWN`, v2 `UNSPEC` or `UNIX`: the balancer does not know an IP
    /// client address.
    Unknown,
}

/// A complete, valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    pub carried: Carried,
}

impl ProxyHeader {
    /// The client address to judge and audit: the carried one, or the
    /// balancer's own (`lb`) when the header carries none.
    pub fn client_or(&self, lb: SocketAddr) -> SocketAddr {
        match self.carried {
            Carried::Client(addr) => addr,
            Carried::Local | Carried::Unknown => lb,
        }
    }

    /// For the audit: `v2`, `v2 LOCAL`, `v1 UNKNOWN`, …
    pub fn describe(&self) -> String {
        match self.carried {
            Carried::Client(_) => format!("v{}", self.version),
            Carried::Local => format!("v{} LOCAL", self.version),
            Carried::Unknown if self.version == 1 => "v1 UNKNOWN".to_owned(),
            Carried::Unknown => format!("v{} UNSPEC", self.version),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("closed by the peer before sending a PROXY protocol header")]
    ClosedEarly,
    #[error("no PROXY protocol header (the connection starts with byte 0x{0:02X}{hint}); this listener requires one from its load balancer", hint = first_byte_hint(*.0))]
    Missing(u8),
    #[error("PROXY protocol v{got} header, but this listener accepts {accepted} only (listeners.*.proxy_protocol)", accepted = .accepted.as_str())]
    WrongVersion { got: u8, accepted: ProxyVersions },
    #[error("PROXY protocol v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY protocol v2 header declares {0} bytes of addresses and TLVs; the limit is {MAX_V2_BODY}")]
    V2TooLong(usize),
    #[error("malformed PROXY protocol v{version} header: {why}")]
    Malformed { version: u8, why: String },
    #[error("closed by the peer in the middle of the PROXY protocol header")]
    Truncated,
    #[error("no complete PROXY protocol header within the ACSE timeout ({0} bytes received)")]
    Timeout(usize),
    #[error("read failed: {0}")]
    Io(std::io::Error),
}

impl ProxyError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProxyError::Timeout(_))
    }
}

fn first_byte_hint(byte: u8) -> &'static str {
    match byte {
        0x16 => ": a TLS handshake, sent directly instead of through the load balancer",
        0x01 => ": a DICOM A-ASSOCIATE-RQ, sent directly instead of through the load balancer",
        _ => "",
    }
}

fn malformed(version: u8, why: impl Into<String>) -> ProxyError {
    ProxyError::Malformed { version, why: why.into() }
}

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

/// Parses one complete header (as framed by [`needed`]).
pub fn parse(header: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if header.first() == Some(&b'P') {
        let parsed = ppp::v1::Header::try_from(header).map_err(|e| malformed(1, e.to_string()))?;
        if parsed.header.len() != header.len() {
            return Err(malformed(1, "bytes after the CRLF"));
        }
        let carried = match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => Carried::Client(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Tcp6(a) => Carried::Client(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Unknown => Carried::Unknown,
        };
        return Ok(ProxyHeader { version: 1, carried });
    }
    let parsed = ppp::v2::Header::try_from(header).map_err(|e| malformed(2, e.to_string()))?;
    if parsed.len() != header.len() {
        return Err(malformed(2, "bytes after the declared length"));
    }
    let carried = match parsed.command {
        ppp::v2::Command::Local => Carried::Local,
        ppp::v2::Command::Proxy => {
            if parsed.protocol == ppp::v2::Protocol::Datagram {
                return Err(malformed(2, "it describes a UDP (datagram) connection; this listener is TCP"));
            }
            match parsed.addresses {
                ppp::v2::Addresses::IPv4(a) => Carried::Client(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v2::Addresses::IPv6(a) => Carried::Client(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => Carried::Unknown,
            }
        }
    };
    Ok(ProxyHeader { version: 2, carried })
}

/// Reads exactly one header off `stream` by `deadline`, never a byte more.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    accepted: ProxyVersions,
    deadline: Instant,
) -> Result<ProxyHeader, ProxyError> {
    let mut buf: Vec<u8> = Vec::with_capacity(V2_FIXED);
    loop {
        let more = match needed(&buf, accepted)? {
            Need::Complete => return parse(&buf),
            Need::More(n) => n,
        };
        let start = buf.len();
        buf.resize(start + more, 0);
        let mut filled = start;
        while filled < buf.len() {
            let n = match timeout_at(deadline, stream.read(&mut buf[filled..])).await {
                Err(_) => return Err(ProxyError::Timeout(filled)),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Ok(Err(e)) => return Err(ProxyError::Io(e)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(if filled == 0 { ProxyError::ClosedEarly } else { ProxyError::Truncated });
            }
            filled += n;
            // Judge what has arrived at once: a client that bypasses the
            // balancer is refused at its first byte, not at the deadline.
            needed(&buf[..filled], accepted)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&2762u16.to_be_bytes());
        v2(0x1, 0x11, &body)
    }

    /// Feeds `input` as [`read_header`] would if every read returned a
    /// single byte (the worst fragmentation), and returns the result with
    /// how many bytes were consumed.
    fn frame(input: &[u8], accepted: ProxyVersions) -> (Result<ProxyHeader, ProxyError>, usize) {
        let mut buf = Vec::new();
        loop {
            match needed(&buf, accepted) {
                Err(e) => return (Err(e), buf.len()),
                Ok(Need::Complete) => return (parse(&buf), buf.len()),
                Ok(Need::More(n)) => {
                    assert!(n >= 1);
                    let Some(&next) = input.get(buf.len()) else { return (Err(ProxyError::Truncated), buf.len()) };
                    buf.push(next);
                }
            }
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_are_read_to_the_crlf_and_no_further() {
        let mut input = b"PROXY TCP4 34.203.166.92 10.0.0.1 51234 2762\r\n".to_vec();
        let len = input.len();
        input.extend_from_slice(&[0x16, 0x03, 0x01]);
        let (r, used) = frame(&input, ProxyVersions::Any);
        assert_eq!(used, len);
        let h = r.unwrap();
        assert_eq!(h.carried, Carried::Client("34.203.166.92:51234".parse().unwrap()));
        assert_eq!(h.version, 1);

        let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 2762\r\n\x01\x00";
        let (r, used) = frame(input, ProxyVersions::V1);
        assert_eq!(used, input.len() - 2);
        let expected = SocketAddr::new(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()), 4000);
        assert_eq!(r.unwrap().carried, Carried::Client(expected));
    }

    #[test]
    fn v1_unknown_is_the_shortest_header_and_carries_no_client() {
        let input = b"PROXY UNKNOWN\r\n\x16";
        let (r, used) = frame(input, ProxyVersions::Any);
        assert_eq!(used, 15);
        let h = r.unwrap();
        assert_eq!(h.carried, Carried::Unknown);
        let lb: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        assert_eq!(h.client_or(lb), lb);
        assert_eq!(h.describe(), "v1 UNKNOWN");
        // §2.1: anything between UNKNOWN and CRLF is ignored.
        let (r, _) = frame(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyVersions::Any);
        assert_eq!(r.unwrap().carried, Carried::Unknown);
    }

    #[test]
    fn v2_proxy_local_and_unspec() {
        let mut input = v2_tcp4([34, 203, 166, 92], 51234);
        let len = input.len();
        input.extend_from_slice(b"\x16\x03\x01");
        let (r, used) = frame(&input, ProxyVersions::V2);
        assert_eq!(used, len);
        assert_eq!(r.unwrap().carried, Carried::Client(SocketAddr::from((Ipv4Addr::new(34, 203, 166, 92), 51234))));

        let (r, used) = frame(&v2(0x0, 0x00, &[]), ProxyVersions::Any);
        assert_eq!(used, 16);
        let h = r.unwrap();
        assert_eq!(h.carried, Carried::Local);
        assert_eq!(h.describe(), "v2 LOCAL");

        let (r, _) = frame(&v2(0x1, 0x00, &[]), ProxyVersions::Any);
        assert_eq!(r.unwrap().carried, Carried::Unknown);
    }

    #[test]
    fn v2_ipv6_with_tlvs() {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&2762u16.to_be_bytes());
        body.extend_from_slice(&[0x05, 0x00, 0x04, b'a', b'b', b'c', b'd']); // PP2_TYPE_UNIQUE_ID
        let (r, used) = frame(&v2(0x1, 0x21, &body), ProxyVersions::Any);
        assert_eq!(used, 16 + body.len());
        assert_eq!(r.unwrap().carried, Carried::Client("[2001:db8::7]:1234".parse().unwrap()));
    }

    #[test]
    fn the_wrong_version_is_refused_once_its_signature_is_complete() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let (r, used) = frame(v1, ProxyVersions::V2);
        assert!(matches!(r, Err(ProxyError::WrongVersion { got: 1, .. })), "{r:?}");
        assert_eq!(used, 6);
        let (r, used) = frame(&v2_tcp4([1, 2, 3, 4], 1), ProxyVersions::V1);
        assert!(matches!(r, Err(ProxyError::WrongVersion { got: 2, .. })), "{r:?}");
        assert_eq!(used, 12);
        // Something else starting with "P" is no header at all.
        let (r, _) = frame(b"PUT / HTTP/1.1\r\n", ProxyVersions::V2);
        assert!(matches!(r, Err(ProxyError::Missing(b'P'))), "{r:?}");
    }

    #[test]
    fn a_direct_client_is_refused_at_the_first_byte() {
        for (first, hint) in [(0x16u8, "TLS"), (0x01, "A-ASSOCIATE-RQ"), (b'G', "")] {
            let (r, used) = frame(&[first, 0, 0, 0], ProxyVersions::Any);
            let e = r.unwrap_err();
            assert!(matches!(e, ProxyError::Missing(b) if b == first), "{e:?}");
            assert!(e.to_string().contains(hint), "{e}");
            assert_eq!(used, 1);
        }
        // "P…" that is not "PROXY ": refused as soon as it differs.
        let (r, used) = frame(b"POST / HTTP/1.1\r\n", ProxyVersions::Any);
        assert!(matches!(r, Err(ProxyError::Missing(b'P'))), "{r:?}");
        assert_eq!(used, 2);
        // A v2 signature that goes wrong at byte 8.
        let mut bad = V2_SIGNATURE.to_vec();
        bad[7] = b'X';
        let (r, _) = frame(&bad, ProxyVersions::Any);
        assert!(matches!(r, Err(ProxyError::Missing(0x0D))), "{r:?}");
    }

    #[test]
    fn bounds_hold() {
        let long = format!("PROXY TCP4 {} 1 2\r\n", "1".repeat(100));
        let (r, used) = frame(long.as_bytes(), ProxyVersions::Any);
        assert!(matches!(r, Err(ProxyError::V1TooLong)), "{r:?}");
        assert!(used <= V1_MAX);

        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        let (r, used) = frame(&h, ProxyVersions::Any);
        assert!(matches!(r, Err(ProxyError::V2TooLong(65535))), "{r:?}");
        assert_eq!(used, 16);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
        ] {
            let (r, _) = frame(bad, ProxyVersions::Any);
            assert!(r.is_err(), "{:?} accepted: {r:?}", String::from_utf8_lossy(bad));
        }
        // v2: version 3; command 0xF; IPv4 family with too short a block; UDP.
        let mut h = v2_tcp4([1, 2, 3, 4], 1);
        h[12] = 0x31;
        assert!(matches!(frame(&h, ProxyVersions::Any).0, Err(ProxyError::Malformed { version: 2, .. })));
        let mut h = v2_tcp4([1, 2, 3, 4], 1);
        h[12] = 0x2F;
        assert!(frame(&h, ProxyVersions::Any).0.is_err());
        assert!(frame(&v2(0x1, 0x11, &[1, 2, 3, 4]), ProxyVersions::Any).0.is_err());
        let mut h = v2_tcp4([1, 2, 3, 4], 1);
        h[13] = 0x12;
        assert!(frame(&h, ProxyVersions::Any).0.is_err());
    }

    #[test]
    fn no_input_panics_or_overreads() {
        // A small deterministic generator: prefixes of valid headers with
        // random tails, and random bytes.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seeds: [Vec<u8>; 3] =
            [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), v2_tcp4([9, 9, 9, 9], 9), V2_SIGNATURE.to_vec()];
        for i in 0..20_000 {
            let base = &seeds[i % 3];
            let keep = (next() as usize) % (base.len() + 1);
            let mut input = base[..keep].to_vec();
            let extra = (next() as usize) % 64;
            input.extend((0..extra).map(|_| next() as u8));
            for accepted in [ProxyVersions::V1, ProxyVersions::V2, ProxyVersions::Any] {
                let (r, used) = frame(&input, accepted);
                assert!(used <= input.len());
                if let Ok(h) = r {
                    // A header that parsed was consumed exactly.
                    assert_eq!(parse(&input[..used]).ok(), Some(h));
                }
            }
        }
    }

    #[tokio::test]
    async fn read_header_leaves_the_following_bytes_in_the_stream() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let header = v2_tcp4([34, 203, 166, 92], 443);
        tokio::io::AsyncWriteExt::write_all(&mut client, &header).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"\x01rest").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let h = read_header(&mut server, ProxyVersions::Any, deadline).await.unwrap();
        assert_eq!(h.carried, Carried::Client("34.203.166.92:443".parse().unwrap()));
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x01rest");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_early_close_are_told_apart() {
        let (mut client, mut server) = tokio::io::duplex(256);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let e = read_header(&mut server, ProxyVersions::Any, deadline).await.unwrap_err();
        assert!(matches!(e, ProxyError::Timeout(10)), "{e:?}");
        drop(client);
        let e = read_header(&mut server, ProxyVersions::Any, Instant::now() + std::time::Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::ClosedEarly), "{e:?}");
    }
}
