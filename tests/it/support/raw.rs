//! Raw-socket peers: hand-built A-ASSOCIATE-RQ bytes with chosen 16-byte AE
//! fields and protocol version, connections from a chosen source address
//! (optionally with a PROXY header first, optionally TLS), raw TLS, reading
//! PDUs under a deadline, and a whole association request / release. These
//! are how the tests see exactly what the gateway sent (or that it sent
//! nothing). PDU layouts per PS3.8 §9.3.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::dimse;

/// A 16-byte AE title field, space padded (PS3.8 §9.3.2).
pub fn ae(title: &str) -> [u8; 16] {
    let mut f = [b' '; 16];
    let b = title.as_bytes();
    assert!(b.len() <= 16, "AE title too long for the field: {title:?}");
    f[..b.len()].copy_from_slice(b);
    f
}

/// A field from raw bytes, padded with `pad`.
pub fn ae_raw(bytes: &[u8], pad: u8) -> [u8; 16] {
    let mut f = [pad; 16];
    f[..bytes.len()].copy_from_slice(bytes);
    f
}

pub(super) fn item(out: &mut Vec<u8>, item_type: u8, body: &[u8]) {
    out.push(item_type);
    out.push(0);
    out.extend_from_slice(&u16::try_from(body.len()).expect("item fits in 64 KiB").to_be_bytes());
    out.extend_from_slice(body);
}

/// A well-formed A-ASSOCIATE-RQ (PS3.8 §9.3.2) proposing Verification with
/// Implicit VR Little Endian, with the given raw AE fields and version bits.
pub fn associate_rq_with(called: [u8; 16], calling: [u8; 16], protocol_version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&protocol_version.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&called);
    body.extend_from_slice(&calling);
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, b"1.2.840.10008.3.1.1.1");
    let mut pc = vec![1, 0, 0, 0];
    item(&mut pc, 0x30, dimse::VERIFICATION.as_bytes());
    item(&mut pc, 0x40, dimse::IMPLICIT_VR_LE.as_bytes());
    item(&mut body, 0x20, &pc);
    let mut user = Vec::new();
    item(&mut user, 0x51, &16384u32.to_be_bytes());
    item(&mut user, 0x52, b"1.2.826.0.1.3680043.10.1");
    item(&mut body, 0x50, &user);
    let mut pdu = vec![0x01, 0x00];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&body);
    pdu
}

/// [`associate_rq_with`] with ordinary titles and protocol version 1.
pub fn associate_rq(called: &str, calling: &str) -> Vec<u8> {
    associate_rq_with(ae(called), ae(calling), 0x0001)
}

/// One PDU as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPdu {
    pub pdu_type: u8,
    pub body: Vec<u8>,
}

impl RawPdu {
    /// (result, source, reason) of an A-ASSOCIATE-RJ (body `00 result source reason`).
    pub fn rejection(&self) -> Option<(u8, u8, u8)> {
        (self.pdu_type == 0x03 && self.body.len() == 4).then(|| (self.body[1], self.body[2], self.body[3]))
    }

    /// (source, reason) of an A-ABORT (body `00 00 source reason`).
    pub fn abort(&self) -> Option<(u8, u8)> {
        (self.pdu_type == 0x07 && self.body.len() == 4).then(|| (self.body[2], self.body[3]))
    }

    /// Called and calling AE title fields of an A-ASSOCIATE-RQ/AC (body bytes
    /// 4..20 and 20..36, PS3.8 §9.3.2 / §9.3.3).
    pub fn ae_titles(&self) -> ([u8; 16], [u8; 16]) {
        assert!(matches!(self.pdu_type, 0x01 | 0x02) && self.body.len() >= 36, "not an A-ASSOCIATE-RQ/AC: {self:02X?}");
        let mut called = [0u8; 16];
        let mut calling = [0u8; 16];
        called.copy_from_slice(&self.body[4..20]);
        calling.copy_from_slice(&self.body[20..36]);
        (called, calling)
    }
}

/// What the peer did next.
#[derive(Debug)]
pub enum Next {
    Pdu(RawPdu),
    /// EOF, reset or TLS close; `partial` holds any bytes of an incomplete PDU.
    Closed {
        partial: Vec<u8>,
    },
    TimedOut {
        partial: Vec<u8>,
    },
    /// Any other read error (e.g. a TLS alert from the gateway).
    Failed {
        #[expect(dead_code, reason = "shown in assertion messages, through Debug")]
        error: String,
        partial: Vec<u8>,
    },
}

fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Reads one whole PDU, or reports the close / deadline.
pub async fn read_pdu<S: AsyncRead + Unpin + ?Sized>(s: &mut S, within: Duration) -> Next {
    let mut buf = Vec::new();
    let fut = async {
        let mut chunk = [0u8; 4096];
        loop {
            if buf.len() >= 6 {
                let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                if buf.len() >= 6 + len {
                    let body = buf[6..6 + len].to_vec();
                    return Ok(RawPdu { pdu_type: buf[0], body });
                }
            }
            // Read only what this PDU still needs, so nothing of the next one is lost.
            let want = if buf.len() < 6 {
                6 - buf.len()
            } else {
                let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                (6 + len - buf.len()).min(chunk.len())
            };
            match s.read(&mut chunk[..want]).await {
                Ok(0) => return Err(None),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_close(&e) => return Err(None),
                Err(e) => return Err(Some(e)),
            }
        }
    };
    match tokio::time::timeout(within, fut).await {
        Ok(Ok(pdu)) => Next::Pdu(pdu),
        Ok(Err(None)) => Next::Closed { partial: buf },
        Ok(Err(Some(e))) => Next::Failed { error: e.to_string(), partial: buf },
        Err(_) => Next::TimedOut { partial: buf },
    }
}

/// Expects an A-ASSOCIATE-RJ with exactly this triple, then the close.
pub async fn expect_rejection<S: AsyncRead + Unpin>(s: &mut S, triple: (u8, u8, u8)) {
    match read_pdu(s, super::PROMPT).await {
        Next::Pdu(pdu) => {
            assert_eq!(pdu.rejection(), Some(triple), "expected A-ASSOCIATE-RJ {triple:?}, got {pdu:02X?}")
        }
        other => panic!("expected A-ASSOCIATE-RJ {triple:?}, got {other:?}"),
    }
    expect_closed(s, super::PROMPT).await;
}

/// Expects an A-ABORT from the service provider (source 2), then the close.
/// Returns the reason.
pub async fn expect_provider_abort<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> u8 {
    let reason = match read_pdu(s, within).await {
        Next::Pdu(pdu) => match pdu.abort() {
            Some((2, reason)) => reason,
            _ => panic!("expected A-ABORT (source 2), got {pdu:02X?}"),
        },
        other => panic!("expected A-ABORT, got {other:?}"),
    };
    expect_closed(s, super::PROMPT).await;
    reason
}

/// Expects either a provider A-ABORT then close, or a bare close.
pub async fn expect_abort_or_close<S: AsyncRead + Unpin>(s: &mut S, within: Duration) {
    match read_pdu(s, within).await {
        Next::Pdu(pdu) if pdu.abort().map(|(src, _)| src) == Some(2) => expect_closed(s, super::PROMPT).await,
        Next::Closed { partial } if partial.is_empty() => {}
        other => panic!("expected A-ABORT or close, got {other:?}"),
    }
}

/// Expects the peer to close without sending another byte.
pub async fn expect_closed<S: AsyncRead + Unpin>(s: &mut S, within: Duration) {
    match read_pdu(s, within).await {
        Next::Closed { partial } if partial.is_empty() => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// TCP connection from `source` (any port) to `addr`; e.g. 127.0.0.2 to test
/// the allow list.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// TLS client handshake over `tcp`, verifying the server as `localhost`.
pub async fn tls_over(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// TCP connect + TLS handshake to `addr`, under [`super::PROMPT`].
pub async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    super::within(super::PROMPT, "TLS connect", async {
        let tcp = TcpStream::connect(addr).await?;
        tls_over(tcp, config).await
    })
    .await
}

/// Writes and flushes (TLS buffers until flushed).
pub async fn send<S: AsyncWrite + Unpin + ?Sized>(s: &mut S, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

/// The bytes of a TLS ClientHello, as a real client would send first.
pub fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write ClientHello");
    }
    out
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Deadline for a connection or an answer that may cross HAProxy and a real
/// SCP on a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Any client stream: plain TCP, TLS, or a failed TLS session.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection from `from` (any port) to `target`, then TLS (server name
/// `localhost`) when `tls` is given. See [`connect_with`].
pub async fn connect(from: IpAddr, target: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Box<dyn Io> {
    connect_with(from, target, &[], tls).await
}

/// [`connect`], sending `prefix` (e.g. a PROXY protocol header) before
/// anything else. A failed TLS handshake is not an error here: the stream
/// then reads as closed, the way a refused connection looks to tests that
/// only ask "answered?".
pub async fn connect_with(
    from: IpAddr,
    target: SocketAddr,
    prefix: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Box<dyn Io> {
    let mut tcp = super::within(ANSWER_WITHIN, "TCP connect", connect_from(from, target)).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    if !prefix.is_empty() {
        tcp.write_all(prefix).await.expect("send prefix");
    }
    match tls {
        None => Box::new(tcp),
        Some(config) => match super::within(ANSWER_WITHIN, "TLS handshake", tls_over(tcp, config)).await {
            Ok(s) => Box::new(s),
            Err(e) => Box::new(FailedTls(e.to_string())),
        },
    }
}

/// A connection whose TLS handshake failed: every read reports EOF, every
/// write the handshake error.
struct FailedTls(String);

impl AsyncRead for FailedTls {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FailedTls {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, self.0.clone())))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What came back for an A-ASSOCIATE-RQ.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The A-ASSOCIATE-AC.
    Accepted(RawPdu),
    /// result, source, reason.
    Rejected(u8, u8, u8),
    /// source, reason.
    Aborted(u8, u8),
    /// Closed, reset or failed without a PDU.
    Closed,
}

/// Sends [`associate_rq`] and classifies the answer (within 10 s).
pub async fn associate<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(s: &mut S, called: &str, calling: &str) -> Answer {
    if send(s, &associate_rq(called, calling)).await.is_err() {
        return Answer::Closed;
    }
    match read_pdu(s, ANSWER_WITHIN).await {
        Next::Pdu(pdu) if pdu.pdu_type == 0x02 => Answer::Accepted(pdu),
        Next::Pdu(pdu) => match (pdu.rejection(), pdu.abort()) {
            (Some((result, source, reason)), _) => Answer::Rejected(result, source, reason),
            (_, Some((source, reason))) => Answer::Aborted(source, reason),
            _ => panic!("unexpected answer to A-ASSOCIATE-RQ: {pdu:02X?}"),
        },
        Next::Closed { .. } | Next::Failed { .. } => Answer::Closed,
        Next::TimedOut { partial } => {
            panic!("neither an answer nor a close within {ANSWER_WITHIN:?} (read {partial:02X?})")
        }
    }
}

/// An A-RELEASE-RQ (PS3.8 §9.3.6).
pub const RELEASE_RQ: [u8; 10] = [0x05, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];

/// Sends A-RELEASE-RQ, expecting A-RELEASE-RP (within 10 s).
pub async fn release<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(s: &mut S) {
    send(s, &RELEASE_RQ).await.expect("send A-RELEASE-RQ");
    match read_pdu(s, ANSWER_WITHIN).await {
        Next::Pdu(pdu) => assert_eq!(pdu.pdu_type, 0x06, "A-RELEASE-RP expected, got {pdu:02X?}"),
        other => panic!("A-RELEASE-RP expected, got {other:?}"),
    }
}
