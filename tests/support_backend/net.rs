//! A raw DICOM client for the cases a library SCU cannot show: a chosen
//! source address (127.0.0.2 through HAProxy), the exact bytes of the
//! A-ASSOCIATE-AC (AE title fields), a connection that is closed instead of
//! answered. PDU layouts per PS3.8 §9.3.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const DEADLINE: Duration = Duration::from_secs(10);
const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// Connects to `target` from `from` (any port), then TLS (server name
/// `localhost`) when `tls` is given.
pub async fn connect(target: SocketAddr, from: IpAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Box<dyn Io> {
    connect_with(target, from, &[], tls).await
}

/// [`connect`], sending `prefix` (e.g. a PROXY header) before anything else.
pub async fn connect_with(
    target: SocketAddr,
    from: IpAddr,
    prefix: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Box<dyn Io> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source address");
    let mut tcp: TcpStream =
        tokio::time::timeout(DEADLINE, socket.connect(target)).await.expect("connect in time").expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    if !prefix.is_empty() {
        tcp.write_all(prefix).await.expect("send prefix");
    }
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => Box::new(FailedTls(e.to_string())),
                Err(_) => panic!("TLS handshake did not finish within {DEADLINE:?}"),
            }
        }
    }
}

/// A connection whose TLS handshake failed: every read reports EOF, the way
/// a refused connection looks to the tests (which only ask "answered?").
struct FailedTls(String);

impl AsyncRead for FailedTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FailedTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, self.0.clone())))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn item(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0x00];
    v.extend_from_slice(&u16::try_from(body.len()).expect("item length").to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The 16-byte AE title field: the title, space padded (PS3.8 §9.3.2).
pub fn ae_field(title: &str) -> [u8; 16] {
    let mut f = [b' '; 16];
    f[..title.len()].copy_from_slice(title.as_bytes());
    f
}

/// An A-ASSOCIATE-RQ proposing Verification in Implicit VR Little Endian.
pub fn associate_rq(called: &str, calling: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00, 0x00];
    body.extend_from_slice(&ae_field(called));
    body.extend_from_slice(&ae_field(calling));
    body.extend_from_slice(&[0u8; 32]);
    body.extend(item(0x10, APPLICATION_CONTEXT.as_bytes()));
    let mut pc = vec![0x01, 0x00, 0x00, 0x00];
    pc.extend(item(0x30, VERIFICATION.as_bytes()));
    pc.extend(item(0x40, IMPLICIT_LE.as_bytes()));
    body.extend(item(0x20, &pc));
    let mut user = item(0x51, &16384u32.to_be_bytes());
    user.extend(item(0x52, b"1.2.826.0.1.3680043.10.1.1"));
    body.extend(item(0x50, &user));
    let mut pdu = vec![0x01, 0x00];
    pdu.extend_from_slice(&u32::try_from(body.len()).expect("length").to_be_bytes());
    pdu.extend(body);
    pdu
}

/// What came back for an A-ASSOCIATE-RQ.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The whole A-ASSOCIATE-AC PDU.
    Accepted(Vec<u8>),
    /// result, source, reason.
    Rejected(u8, u8, u8),
    Aborted(u8, u8),
    /// Closed (or reset) without a PDU.
    Closed,
}

/// Reads one PDU (at most 64 KiB) under the deadline; `None` when the peer
/// closed or reset first.
pub async fn read_pdu(stream: &mut dyn Io) -> Option<Vec<u8>> {
    let read = async {
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        assert!(len <= 64 * 1024, "PDU of {len} bytes");
        let mut pdu = header.to_vec();
        pdu.resize(6 + len, 0);
        stream.read_exact(&mut pdu[6..]).await.ok()?;
        Some(pdu)
    };
    tokio::time::timeout(DEADLINE, read).await.expect("an answer or a close within the deadline")
}

/// Sends the RQ and classifies the answer.
pub async fn associate(stream: &mut dyn Io, called: &str, calling: &str) -> Answer {
    if stream.write_all(&associate_rq(called, calling)).await.is_err() {
        return Answer::Closed;
    }
    let _ = stream.flush().await;
    match read_pdu(stream).await {
        None => Answer::Closed,
        Some(p) if p[0] == 0x02 => Answer::Accepted(p),
        Some(p) if p[0] == 0x03 && p.len() == 10 => Answer::Rejected(p[7], p[8], p[9]),
        Some(p) if p[0] == 0x07 && p.len() == 10 => Answer::Aborted(p[8], p[9]),
        Some(p) => panic!("unexpected PDU type 0x{:02X}", p[0]),
    }
}

/// A-RELEASE-RQ, expecting A-RELEASE-RP.
pub async fn release(stream: &mut dyn Io) {
    stream.write_all(&[0x05, 0x00, 0, 0, 0, 4, 0, 0, 0, 0]).await.expect("send A-RELEASE-RQ");
    let rp = read_pdu(stream).await.expect("A-RELEASE-RP");
    assert_eq!(rp[0], 0x06, "A-RELEASE-RP expected");
}

/// Called and calling AE title fields of an A-ASSOCIATE-RQ/AC (bytes 10..26
/// and 26..42, PS3.8 §9.3.2 / §9.3.3).
pub fn ae_titles(pdu: &[u8]) -> ([u8; 16], [u8; 16]) {
    let mut called = [0u8; 16];
    let mut calling = [0u8; 16];
    called.copy_from_slice(&pdu[10..26]);
    calling.copy_from_slice(&pdu[26..42]);
    (called, calling)
}
