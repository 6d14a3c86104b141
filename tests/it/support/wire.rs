//! What the robustness suites add to [`super::raw`]: A-ASSOCIATE-RQ bytes
//! of any size, a TLS client that trusts anything (the attacker does not
//! care who we are), a TLS connect without a deadline of its own (floods set
//! theirs), and "what did the gateway do and when" readers that time the
//! close. The rest (AE fields, `send`, A-RELEASE-RQ) is [`super::raw`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::dimse::{IMPLICIT_VR_LE, VERIFICATION};
use super::raw::{ae, item, tls_over};
use super::{CLOUD_AE, PACS_AE};

/// An A-ASSOCIATE-RQ (PS3.8 §9.3.2) from `CLOUD` to `PACS` proposing
/// `contexts` presentation contexts (Verification first), each with
/// `syntaxes` transfer syntaxes (Implicit VR LE first, then made-up UIDs).
pub fn associate_rq(contexts: usize, syntaxes: usize) -> Vec<u8> {
    assert!((1..=128).contains(&contexts), "presentation context IDs are odd numbers 1..=255");
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    body.extend_from_slice(&ae(PACS_AE));
    body.extend_from_slice(&ae(CLOUD_AE));
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, b"1.2.840.10008.3.1.1.1");
    for c in 0..contexts {
        let id = u8::try_from(2 * c + 1).expect("odd id below 256");
        let mut pc = vec![id, 0, 0, 0];
        let abstract_syntax = if c == 0 { VERIFICATION.to_owned() } else { format!("1.2.840.10008.5.1.4.1.1.{c}") };
        item(&mut pc, 0x30, abstract_syntax.as_bytes());
        for s in 0..syntaxes {
            let ts = if s == 0 { IMPLICIT_VR_LE.to_owned() } else { format!("1.2.826.0.1.3680043.10.9.{s}") };
            item(&mut pc, 0x40, ts.as_bytes());
        }
        item(&mut body, 0x20, &pc);
    }
    let mut user = Vec::new();
    item(&mut user, 0x51, &16384u32.to_be_bytes());
    item(&mut user, 0x52, b"1.2.826.0.1.3680043.10.9");
    item(&mut body, 0x50, &user);
    let mut pdu = vec![0x01, 0x00];
    pdu.extend_from_slice(&u32::try_from(body.len()).expect("RQ below 4 GiB").to_be_bytes());
    pdu.extend_from_slice(&body);
    pdu
}

/// A TLS client configuration that trusts any server (an attacker does not
/// verify): the echo SCU's `--insecure` configuration.
pub fn insecure_client() -> Arc<rustls::ClientConfig> {
    super::init();
    dicomgate::echo::client_config(&dicomgate::echo::Trust::Insecure, None).expect("insecure client config")
}

/// TCP connect and TLS handshake, with no deadline of its own (unlike
/// [`super::raw::tls_connect`]): the caller's deadline applies.
pub async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, config).await
}

/// What the gateway sent until it closed the connection, and when it closed.
#[derive(Debug)]
pub struct Ending {
    /// Everything received before the close.
    pub received: Vec<u8>,
    /// Time from `since` to the close; `None`: still open at the deadline.
    pub closed_after: Option<Duration>,
}

impl Ending {
    /// The first PDU's type and body, when the bytes received hold a whole one.
    pub fn first_pdu(&self) -> Option<(u8, &[u8])> {
        let r = &self.received;
        let len = u32::from_be_bytes(r.get(2..6)?.try_into().ok()?) as usize;
        Some((r[0], r.get(6..6 + len)?))
    }

    /// (source, reason) when the gateway's first PDU was an A-ABORT.
    pub fn abort(&self) -> Option<(u8, u8)> {
        match self.first_pdu() {
            Some((0x07, b)) if b.len() == 4 => Some((b[2], b[3])),
            _ => None,
        }
    }

    /// Panics unless the peer closed within `limit` of the start.
    pub fn assert_closed_within(&self, limit: Duration, what: &str) -> Duration {
        match self.closed_after {
            Some(d) if d <= limit => d,
            Some(d) => panic!("{what}: closed after {d:?}, expected within {limit:?}"),
            None => panic!("{what}: still open after {limit:?}; received {:02X?}", self.received),
        }
    }
}

/// Reads until EOF, reset or a read error (all mean "closed"), keeping what
/// arrives (at most 1 MiB), for at most `limit` measured from `since`.
pub async fn read_until_close<S: AsyncRead + Unpin>(s: &mut S, since: Instant, limit: Duration) -> Ending {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = since + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Ending { received, closed_after: None },
            Ok(Ok(0)) | Ok(Err(_)) => return Ending { received, closed_after: Some(since.elapsed()) },
            Ok(Ok(n)) => {
                if received.len() < 1024 * 1024 {
                    received.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// Reads one whole PDU (type, body) within `within`; `None` on close or deadline.
pub async fn read_pdu<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(within, async {
        let mut header = [0u8; 6];
        s.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let mut body = vec![0u8; usize::try_from(len).ok().filter(|l| *l <= 1024 * 1024)?];
        s.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    })
    .await
    .ok()
    .flatten()
}
