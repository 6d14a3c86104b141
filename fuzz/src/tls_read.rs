//! The TLS stream's bulk read path (`dicomgate::tls::stream::poll_read_bulk`)
//! after a real handshake, over an in-memory transport whose cuts, stalls,
//! corruptions and write refusals the fuzzer chooses.
//!
//! Input: `[flags] [len: 2] [k] k × ([pos: 4] [xor]) [steering…]`
//! - flags bit 0: the gateway is the TLS client (else the server);
//!   bit 1: TLS 1.2 (else 1.3); bit 2: the peer sends close_notify at the
//!   end; bit 3: the peer sends a KeyUpdate midway (TLS 1.3); bit 4: junk
//!   after the end; bit 5: the transport refuses writes (a full socket).
//! - len × 3: plaintext bytes the peer sends; k ≤ 4 byte corruptions of the
//!   ciphertext (position modulo its length, xor value).
//! - steering bytes, cycled: each transport read's size (0 = one `Pending`)
//!   and each caller's read size above the bulk minimum.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use dicomgate::tls::stream::{poll_read_bulk, Transport, BULK_READ_MIN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ConnectionCommon;
use tokio::io::{AsyncRead, ReadBuf};

/// Server configurations for TLS 1.3 and 1.2, and a client configuration,
/// around one certificate generated once per process.
fn configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CONFIGS.get_or_init(|| {
        let pair = dicomgate::pki::generate_self_signed(&dicomgate::pki::CertSpec {
            common_name: "fuzz".to_owned(),
            subject_alt_names: vec!["localhost".to_owned()],
            days: 1,
            key_type: dicomgate::pki::KeyType::EcdsaP256,
        })
        .expect("test certificate");
        let server = |version: &'static rustls::SupportedProtocolVersion| {
            let cert = CertificateDer::from(pair.certificate_der.clone());
            let key = PrivateKeyDer::try_from(pair.private_key_der.clone()).expect("test key");
            let config = rustls::ServerConfig::builder_with_provider(dicomgate::tls::provider())
                .with_protocol_versions(&[version])
                .expect("protocol version")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("server configuration");
            Arc::new(config)
        };
        // The echo SCU's `--insecure` client: it still checks signatures.
        let client =
            dicomgate::echo::client_config(&dicomgate::echo::Trust::Insecure, None).expect("client configuration");
        (server(&rustls::version::TLS13), server(&rustls::version::TLS12), client)
    })
}

/// Moves what `from` has queued into `to`; false when there was nothing.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> bool {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).expect("write to memory");
    }
    let mut rd = &bytes[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read from memory");
        to.process_new_packets().expect("in-memory handshake");
    }
    !bytes.is_empty()
}

fn seal<P>(peer: &mut ConnectionCommon<P>, mut plain: &[u8], out: &mut Vec<u8>) {
    while !plain.is_empty() {
        let n = peer.writer().write(plain).expect("seal");
        plain = &plain[n..];
        while peer.wants_write() {
            peer.write_tls(out).expect("write to memory");
        }
    }
}

/// The transport: serves the ciphertext in fuzzer-sized reads, records
/// what the gateway writes.
struct Memory {
    incoming: Vec<u8>,
    at: usize,
    cuts: VecDeque<u8>,
    written: Vec<u8>,
    refuse_writes: bool,
}

impl AsyncRead for Memory {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let cut = me.cuts.pop_front().unwrap_or(255);
        me.cuts.push_back(cut);
        if cut == 0 {
            // A stall; the harness polls again (the waker is a no-op).
            return Poll::Pending;
        }
        let n = (usize::from(cut) * 67).min(buf.remaining()).min(me.incoming.len() - me.at);
        buf.put_slice(&me.incoming[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}

impl Transport for Memory {
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.refuse_writes {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
}

/// Invariants: the read path never panics and ends (every poll makes
/// progress or ends); what it delivers is a prefix of what the peer sent;
/// without corruption it delivers everything, then a clean end after
/// close_notify or `UnexpectedEof` without it; a TLS error (`InvalidData`)
/// has sent the peer a fatal alert unless the transport refused writes.
pub fn tls_read(data: &[u8]) {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (len, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])) * 3, rest),
        _ => (1000, rest),
    };
    let (k, mut rest) = rest.split_first().map_or((0, rest), |(k, r)| (usize::from(*k % 5), r));
    let mut corruptions = Vec::new();
    for _ in 0..k {
        if let [a, b, c, d, x, r @ ..] = rest {
            corruptions.push((u32::from_le_bytes([*a, *b, *c, *d]) as usize, *x));
            rest = r;
        }
    }
    let steering: VecDeque<u8> = rest.iter().copied().collect();
    let (tls13, tls12, client_config) = configs();
    let server_config = if flags & 2 != 0 { tls12.clone() } else { tls13.clone() };
    let name = ServerName::try_from("localhost").expect("server name");
    let mut client = rustls::ClientConnection::new(client_config.clone(), name).expect("client connection");
    let mut server = rustls::ServerConnection::new(server_config).expect("server connection");
    for _ in 0..20 {
        let a = transfer(client.deref_mut(), server.deref_mut());
        let b = transfer(server.deref_mut(), client.deref_mut());
        if !a && !b {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking(), "in-memory handshake did not finish");
    if flags & 1 != 0 {
        run(client.deref_mut(), server.deref_mut(), flags, len, &corruptions, steering);
    } else {
        run(server.deref_mut(), client.deref_mut(), flags, len, &corruptions, steering);
    }
}

fn run<G, P>(
    gateway: &mut ConnectionCommon<G>,
    peer: &mut ConnectionCommon<P>,
    flags: u8,
    len: usize,
    corruptions: &[(usize, u8)],
    mut steering: VecDeque<u8>,
) {
    let sent: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
    let mut ciphertext = Vec::new();
    let (first, second) = sent.split_at(len / 2);
    seal(peer, first, &mut ciphertext);
    if flags & 8 != 0 && flags & 2 == 0 {
        peer.refresh_traffic_keys().expect("KeyUpdate");
    }
    seal(peer, second, &mut ciphertext);
    if flags & 4 != 0 {
        peer.send_close_notify();
        while peer.wants_write() {
            peer.write_tls(&mut ciphertext).expect("write to memory");
        }
    }
    if flags & 16 != 0 {
        ciphertext.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]);
    }
    // Junk without a close_notify before it is a corruption of the stream.
    let mut corrupted = flags & 16 != 0 && flags & 4 == 0;
    if !ciphertext.is_empty() {
        for &(pos, xor) in corruptions {
            let at = pos % ciphertext.len();
            ciphertext[at] ^= xor;
            corrupted |= xor != 0;
        }
    }
    let sizes: VecDeque<u8> = steering.iter().rev().copied().collect();
    if steering.is_empty() {
        steering.push_back(255);
    }
    let total = ciphertext.len();
    let mut io =
        Memory { incoming: ciphertext, at: 0, cuts: steering, written: Vec::new(), refuse_writes: flags & 32 != 0 };
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut buf = vec![0u8; BULK_READ_MIN + 255 * 997];
    let mut sizes = sizes.into_iter().cycle();
    // Each poll consumes ciphertext, stalls once per zero cut, or ends.
    let bound = 4 * (total + 10) + 10;
    let mut end = None;
    for _ in 0..bound {
        let size = BULK_READ_MIN + usize::from(sizes.next().unwrap_or(0)) * 997;
        let mut read_buf = ReadBuf::new(&mut buf[..size]);
        match poll_read_bulk(&mut io, gateway, &mut cx, &mut read_buf) {
            Poll::Pending => continue,
            Poll::Ready(Ok(())) if read_buf.filled().is_empty() => {
                end = Some(Ok(()));
                break;
            }
            Poll::Ready(Ok(())) => got.extend_from_slice(read_buf.filled()),
            Poll::Ready(Err(e)) => {
                end = Some(Err(e));
                break;
            }
        }
    }
    let end = end.expect("the read path neither ended nor failed within its bound");
    assert!(sent.starts_with(&got), "delivered bytes the peer did not send");
    if !corrupted {
        assert_eq!(got.len(), sent.len(), "uncorrupted stream not delivered whole: {end:?}");
        match (flags & 4 != 0, &end) {
            (true, Ok(())) => {}
            (false, Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            (close_notify, end) => panic!("close_notify sent: {close_notify}, but the end is {end:?}"),
        }
    }
    if let Err(e) = &end {
        if e.kind() == io::ErrorKind::InvalidData && !io.refuse_writes {
            assert!(!io.written.is_empty(), "TLS error without an alert to the peer: {e}");
            let mut rd = &io.written[..];
            let mut alerted = false;
            while !rd.is_empty() && !alerted {
                if peer.read_tls(&mut rd).unwrap_or(0) == 0 {
                    break;
                }
                alerted = matches!(peer.process_new_packets(), Err(rustls::Error::AlertReceived(_)));
            }
            assert!(alerted, "the peer did not receive a fatal alert after: {e}");
        }
    }
}
