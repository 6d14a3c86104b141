//! The PROXY protocol header an L4 load balancer (HAProxy `send-proxy` /
//! `send-proxy-v2`, hardware LBs) puts in front of the client's bytes, so the
//! allow list and the audit see the real client address
//! (`listeners.NAME.proxy_protocol`).
//!
//! Framing is ours and sans-IO ([`needed`], in `framing`, which also says why
//! not `peek`): it says how many more bytes a header needs, so the reader
//! takes exactly the header off the socket and not one byte of the TLS
//! handshake behind it (no buffer to hand on). The
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
//!   §2.2). A DICOM listener refuses them unless
//!   `proxy_protocol_allow_local` is set (then the allow list judges the
//!   balancer's address); health checks belong on the admin `/readyz`.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use crate::config::ProxyVersions;
use framing::V2_FIXED;
pub use framing::{needed, Need, MAX_V2_BODY, V1_MAX, V2_SIGNATURE};

mod framing;

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

    /// The client address the header carries, if it carries one.
    pub fn carried_client(&self) -> Option<SocketAddr> {
        match self.carried {
            Carried::Client(addr) => Some(addr),
            Carried::Local | Carried::Unknown => None,
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
mod tests;
