//! The TLS stream's receive path (`dicomgate::tls::stream`: our record
//! layer after a rustls handshake) over an in-memory transport whose cuts,
//! stalls, corruptions and write refusals the fuzzer chooses. The gateway's
//! side is made by the gateway's own handshake (`tls::handshake`) against a
//! rustls peer, in memory.
//!
//! Input: `[flags] [len: 2] [k] k × ([pos: 4] [xor]) [steering…]`
//! - flags bit 0: the gateway is the TLS client (else the server);
//!   bit 1: TLS 1.2 (else 1.3); bit 2: the peer sends close_notify at the
//!   end; bit 3: the peer sends a KeyUpdate midway (TLS 1.3); bit 4: junk
//!   after the end; bit 5: the transport refuses writes (a full socket);
//!   bits 6–7: the AEAD (0: AES-256-GCM, 1: AES-128-GCM, 2: ChaCha20-Poly1305, 3: AES-256-GCM).
//! - len × 3: plaintext bytes the peer sends; k ≤ 4 byte corruptions of the
//!   ciphertext (position modulo its length, xor value).
//! - steering bytes, cycled: each transport read's size in units of 67
//!   bytes (0: the read finds nothing, the task must wait for readiness,
//!   and after the wake-up the read gets 67 bytes — a stall is bounded, a
//!   transport that never delivers cannot be required to end), and, read
//!   backwards, how the caller reads: through the relay's interface
//!   (consuming all or part of what is there) or through `AsyncRead`.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use dicomgate::tls::handshake;
use dicomgate::tls::stream::{Source, Stream};
use dicomgate::tls::transport::Transport;
use rustls::crypto::aws_lc_rs::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ConnectionCommon, SupportedCipherSuite};
use tokio::io::{AsyncRead, ReadBuf};

type ServerConfigs = Vec<Arc<rustls::ServerConfig>>;

/// Server configurations for TLS 1.3 and 1.2 × three AEADs (index:
/// version × 3 + AEAD), and a client configuration, around one certificate
/// generated once per process. The gateway's need secret extraction (its
/// record layer takes the keys from rustls).
fn configs() -> &'static (ServerConfigs, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(ServerConfigs, Arc<rustls::ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let pair = dicomgate::pki::generate_self_signed(&dicomgate::pki::CertSpec {
            common_name: "fuzz".to_owned(),
            subject_alt_names: vec!["localhost".to_owned()],
            days: 1,
            key_type: dicomgate::pki::KeyType::EcdsaP256,
        })
        .expect("test certificate");
        let server = |suite: SupportedCipherSuite| {
            let cert = CertificateDer::from(pair.certificate_der.clone());
            let key = PrivateKeyDer::try_from(pair.private_key_der.clone()).expect("test key");
            let version = match suite {
                SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
                SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            };
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .expect("protocol version")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("server configuration");
            config.enable_secret_extraction = true;
            Arc::new(config)
        };
        let servers = [
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_CHACHA20_POLY1305_SHA256,
            suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        .into_iter()
        .map(server)
        .collect();
        // The echo SCU's `--insecure` client: it still checks signatures.
        let client =
            dicomgate::echo::client_config(&dicomgate::echo::Trust::Insecure, None).expect("client configuration");
        let mut client = Arc::unwrap_or_clone(client);
        client.enable_secret_extraction = true;
        (servers, Arc::new(client))
    })
}

/// The in-memory transport's state, shared between the stream under test
/// and the harness (which plays the peer's side of the wire).
#[derive(Default)]
struct Wire {
    incoming: Vec<u8>,
    at: usize,
    cuts: Vec<u8>,
    next_cut: usize,
    /// The current zero cut has stalled once; its read now delivers.
    stalled: bool,
    /// A stall is armed: readiness is gone until the harness wakes the task.
    not_ready: bool,
    /// The waker registered while not ready.
    waker: Option<Waker>,
    written: Vec<u8>,
    refuse_writes: bool,
    /// The receive path must never wait for write readiness.
    write_ready_polled: bool,
    /// The peer's side is closed after `incoming` (else more may come).
    closed: bool,
}

#[derive(Clone, Default)]
struct Memory(Rc<RefCell<Wire>>);

impl Transport for Memory {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wire = self.0.borrow_mut();
        if wire.not_ready {
            wire.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut wire = self.0.borrow_mut();
        if wire.at == wire.incoming.len() && !wire.closed {
            wire.not_ready = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let cut = if wire.cuts.is_empty() { 255 } else { wire.cuts[wire.next_cut % wire.cuts.len()] };
        let units = match cut {
            0 if !wire.stalled => {
                // Nothing there: readiness is cleared, as tokio does.
                wire.stalled = true;
                wire.not_ready = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            0 => 1,
            n => usize::from(n),
        };
        wire.stalled = false;
        wire.next_cut += 1;
        let n = (units * 67).min(buf.len()).min(wire.incoming.len() - wire.at);
        buf[..n].copy_from_slice(&wire.incoming[wire.at..wire.at + n]);
        wire.at += n;
        Ok(n)
    }

    fn poll_write_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wire = self.0.borrow_mut();
        wire.write_ready_polled = true;
        Poll::Ready(Ok(()))
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut wire = self.0.borrow_mut();
        if wire.refuse_writes {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for buf in bufs {
            wire.written.extend_from_slice(buf);
            n += buf.len();
        }
        Ok(n)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs the gateway's handshake against `peer` in memory.
fn handshake_with<P, F: Future<Output = io::Result<T>>, T>(
    memory: &Memory,
    peer: &mut ConnectionCommon<P>,
    handshake: F,
) -> T {
    let mut handshake = pin!(handshake);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..50 {
        if let Poll::Ready(done) = handshake.as_mut().poll(&mut cx) {
            return done.expect("in-memory handshake");
        }
        // The gateway's flight to the peer, the peer's answer back.
        let written = std::mem::take(&mut memory.0.borrow_mut().written);
        let mut rd = &written[..];
        while !rd.is_empty() {
            peer.read_tls(&mut rd).expect("peer reads from memory");
            peer.process_new_packets().expect("peer accepts the handshake");
        }
        let mut answer = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut answer).expect("write to memory");
        }
        let mut wire = memory.0.borrow_mut();
        wire.not_ready = false;
        wire.waker = None;
        let at = wire.at;
        wire.incoming.drain(..at);
        wire.at = 0;
        wire.incoming.extend_from_slice(&answer);
    }
    panic!("in-memory handshake did not finish");
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

/// Invariants: the read path never panics and ends (every poll makes
/// progress or ends; a `Pending` has registered a wake-up with the
/// transport; the read side never waits for write readiness); what it
/// delivers is a prefix of what the peer sent; without corruption it
/// delivers everything, then a clean end after close_notify or
/// `UnexpectedEof` without it; a TLS error (`InvalidData`) has sent the
/// peer a fatal alert unless the transport refused writes.
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
    let steering = rest.to_vec();
    let (servers, client_config) = configs();
    let aead = [0, 1, 2, 0][usize::from(flags >> 6)];
    let server_config = servers[usize::from(flags & 2 != 0) * 3 + aead].clone();
    let name = ServerName::try_from("localhost").expect("server name");
    let memory = Memory::default();
    if flags & 1 != 0 {
        let mut peer = rustls::ServerConnection::new(server_config).expect("server connection");
        let gateway =
            handshake_with(&memory, &mut peer, handshake::connect(memory.clone(), client_config.clone(), name));
        run(gateway, &memory, &mut peer, flags, len, &corruptions, steering);
    } else {
        let mut peer = rustls::ClientConnection::new(client_config.clone(), name).expect("client connection");
        let (gateway, _) = handshake_with(&memory, &mut peer, handshake::accept(memory.clone(), server_config));
        run(gateway, &memory, &mut peer, flags, len, &corruptions, steering);
    }
}

fn run<P>(
    mut gateway: Stream<Memory>,
    memory: &Memory,
    peer: &mut ConnectionCommon<P>,
    flags: u8,
    len: usize,
    corruptions: &[(usize, u8)],
    steering: Vec<u8>,
) {
    let sent: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
    // The gateway's last flight (a client's Finished, a server's tickets) to the peer...
    let written = std::mem::take(&mut memory.0.borrow_mut().written);
    let mut rd = &written[..];
    while !rd.is_empty() {
        peer.read_tls(&mut rd).expect("peer reads from memory");
        peer.process_new_packets().expect("peer takes the last flight");
    }
    // ...and what the peer queued after it (TLS 1.3 tickets for a client gateway) comes first.
    let mut ciphertext = Vec::new();
    while peer.wants_write() {
        peer.write_tls(&mut ciphertext).expect("write to memory");
    }
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
    let total = ciphertext.len();
    let zeros = steering.iter().filter(|&&c| c == 0).count();
    let how: Vec<u8> = steering.iter().rev().copied().collect();
    {
        let mut wire = memory.0.borrow_mut();
        wire.incoming = ciphertext;
        wire.at = 0;
        wire.cuts = steering;
        wire.refuse_writes = flags & 32 != 0;
        wire.write_ready_polled = false;
        wire.closed = true;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 255 * 67 + 1];
    let mut how = how.into_iter().cycle();
    // Each poll consumes ciphertext, stalls once per zero cut, or ends.
    let bound = 4 * (total + 10) + 10 + 2 * zeros * (total / 67 + 2);
    let mut end = None;
    for _ in 0..bound {
        let step = how.next().unwrap_or(0);
        let poll = if step & 1 == 0 {
            let mut reader = gateway.reader();
            match reader.poll_fill(&mut cx) {
                Poll::Ready(Ok(true)) => {
                    let (data, segments) = reader.plaintext();
                    let ready: usize = segments.iter().map(|s| s.len()).sum();
                    assert!(ready > 0, "a fill that is ready with nothing in it");
                    let take = if step & 2 == 0 { ready } else { 1 + usize::from(step >> 2) % ready };
                    let mut left = take;
                    for segment in segments {
                        let part = left.min(segment.len());
                        got.extend_from_slice(&data[segment.start..segment.start + part]);
                        left -= part;
                    }
                    reader.consume(take);
                    Poll::Ready(Ok(true))
                }
                other => other,
            }
        } else {
            let size = 1 + usize::from(step) * 67;
            let mut read_buf = ReadBuf::new(&mut buf[..size]);
            match std::pin::Pin::new(&mut gateway).poll_read(&mut cx, &mut read_buf) {
                Poll::Ready(Ok(())) if read_buf.filled().is_empty() => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => {
                    got.extend_from_slice(read_buf.filled());
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        };
        let mut wire = memory.0.borrow_mut();
        assert!(!wire.write_ready_polled, "the read path waited for write readiness");
        match poll {
            Poll::Pending => {
                // No busy loop: a Pending must have registered a wake-up,
                // which the harness now delivers (readiness returns).
                assert!(wire.waker.take().is_some(), "Pending without a registered wake-up");
                wire.not_ready = false;
            }
            Poll::Ready(Ok(true)) => {}
            Poll::Ready(Ok(false)) => {
                end = Some(Ok(()));
                break;
            }
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
    let wire = memory.0.borrow();
    if let Err(e) = &end {
        if e.kind() == io::ErrorKind::InvalidData && !wire.refuse_writes {
            assert!(!wire.written.is_empty(), "TLS error without an alert to the peer: {e}");
            let mut rd = &wire.written[..];
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
    // What the gateway wrote otherwise (a KeyUpdate answer) must be readable by the peer.
    if end.is_ok() && !wire.refuse_writes {
        let mut rd = &wire.written[..];
        while !rd.is_empty() {
            if peer.read_tls(&mut rd).unwrap_or(0) == 0 {
                break;
            }
            peer.process_new_packets().expect("the gateway's own records are valid");
        }
        let _ = peer.reader().read(&mut [0; 1]);
    }
}

/// What a scanner or a broken client sends instead of a proper handshake:
/// `data` as the client's bytes to the gateway's TLS server handshake
/// (`tls::handshake::accept`), then the end of the stream.
///
/// Input: `[cut] [config] [bytes…]`; `cut` sets the transport's read size
/// (in units of 67 bytes, 0 stalls once), `config` picks the server's
/// version and AEAD like `tls_read`'s flags. Invariants: no panic (rustls's
/// own assertions included, see `send_alert`), and the handshake ends —
/// with an error, since no client can finish a handshake blind — within a
/// bounded number of polls.
pub fn tls_handshake(data: &[u8]) {
    let [cut, config, bytes @ ..] = data else { return };
    let (servers, _) = configs();
    let server = servers[usize::from(*config) % servers.len()].clone();
    let memory = Memory::default();
    {
        let mut wire = memory.0.borrow_mut();
        wire.incoming = bytes.to_vec();
        wire.cuts = vec![*cut];
        wire.closed = true;
    }
    let mut handshake = pin!(handshake::accept(memory.clone(), server));
    let mut cx = Context::from_waker(Waker::noop());
    // Every poll reads at least 67 bytes or ends (a zero cut stalls once).
    for _ in 0..(2 * bytes.len() / 67 + 16) {
        match handshake.as_mut().poll(&mut cx) {
            Poll::Ready(result) => {
                assert!(result.is_err(), "a handshake finished without a client");
                return;
            }
            Poll::Pending => {
                let mut wire = memory.0.borrow_mut();
                assert!(wire.waker.take().is_some(), "Pending without a registered wake-up");
                wire.not_ready = false;
            }
        }
    }
    panic!("the handshake neither ended nor failed within its bound");
}
