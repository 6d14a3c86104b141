//! The TLS stream (`dicomgate::tls::stream`: our record layer after a
//! rustls handshake), over real loopback sockets, against a rustls peer
//! driven record by record so the tests choose exactly what arrives:
//! ciphertext cut at random points, every AEAD of TLS 1.3 and 1.2,
//! KeyUpdates in both directions and at the key's limit, a corrupted
//! record, bytes after close_notify, a TCP end without close_notify, and
//! (gateway as client) NewSessionTickets between data records and a
//! resumption with them. Both read interfaces are used: the relay's
//! (`Source`: plaintext where it was decrypted, consumed in random
//! amounts) and `AsyncRead`; and both write interfaces: the relay's
//! (`Sink`: sealed in place) and `AsyncWrite`.
//!
//! Every test runs under [`DEADLINE`]; a hang is a failure, not a wait.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step is the test's failure")]

use std::future::poll_fn;
use std::io::{self, Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use dicomgate::tls::handshake;
use dicomgate::tls::stream::{Sink, Source, Stream};
use rustls::crypto::aws_lc_rs::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::SupportedCipherSuite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on each whole test (they take well under a second each when idle).
const DEADLINE: Duration = Duration::from_secs(60);

async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, test).await.expect("test exceeded its deadline")
}

/// A deterministic xorshift generator: random cuts that replay identically.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;

/// Server and client configurations around one fresh self-signed
/// certificate, the server restricted to `suite`.
fn configs(suite: SupportedCipherSuite) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let generated = dicomgate::pki::generate_self_signed(&dicomgate::pki::CertSpec {
        common_name: "test".to_owned(),
        subject_alt_names: vec!["localhost".to_owned()],
        days: 1,
        key_type: dicomgate::pki::KeyType::EcdsaP256,
    })
    .unwrap();
    let cert = CertificateDer::from(generated.certificate_der.clone());
    let key = PrivateKeyDer::try_from(generated.private_key_der.clone()).unwrap();
    let provider =
        rustls::crypto::CryptoProvider { cipher_suites: vec![suite], ..rustls::crypto::aws_lc_rs::default_provider() };
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => TLS13,
        SupportedCipherSuite::Tls12(_) => TLS12,
    };
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    server.enable_secret_extraction = true;
    // The echo SCU's client configuration, pinning the test certificate.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("server.pem");
    std::fs::write(&pem, &generated.certificate_pem).unwrap();
    let client = dicomgate::echo::client_config(&dicomgate::echo::Trust::CaFile(pem), None).unwrap();
    let mut client = Arc::unwrap_or_clone(client);
    client.enable_secret_extraction = true;
    (Arc::new(server), Arc::new(client))
}

/// The other end, as a rustls connection whose records the test writes and
/// reads itself.
struct Peer {
    tcp: TcpStream,
    conn: rustls::Connection,
}

impl Peer {
    /// The records carrying `plain`, not yet sent.
    fn seal(&mut self, mut plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !plain.is_empty() {
            // rustls takes at most its send-buffer limit at a time.
            let n = self.conn.writer().write(plain).unwrap();
            plain = &plain[n..];
            self.queued_into(&mut out);
        }
        out
    }

    /// Whatever rustls queued (tickets, KeyUpdate, alerts), not yet sent.
    fn queued(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.queued_into(&mut out);
        out
    }

    fn queued_into(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            self.conn.write_tls(out).unwrap();
        }
    }

    /// Sends `bytes` in writes cut at random points.
    async fn send_cut(&mut self, mut bytes: &[u8], rng: &mut Rng) {
        while !bytes.is_empty() {
            let n = (1 + rng.below(40_000)).min(bytes.len());
            self.tcp.write_all(&bytes[..n]).await.unwrap();
            bytes = &bytes[n..];
        }
    }

    /// Reads and decrypts until `want` plaintext bytes, the TCP end, or a
    /// TLS error (an alert received is one); returns the plaintext and how it ended.
    async fn receive(&mut self, want: usize) -> (Vec<u8>, Result<(), rustls::Error>) {
        let mut plain = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while plain.len() < want {
            let n = self.tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                if self.conn.read_tls(&mut rd).unwrap() == 0 {
                    break;
                }
                if let Err(e) = self.conn.process_new_packets() {
                    return (plain, Err(e));
                }
                let _ = self.conn.reader().read_to_end(&mut plain);
            }
        }
        (plain, Ok(()))
    }

    /// Ends the test's side: FIN, then reads to the end so the gateway's
    /// close is a FIN, not an RST (unread data would make it one).
    async fn finish(mut self) {
        self.tcp.shutdown().await.unwrap();
        let _ = self.tcp.read_to_end(&mut Vec::new()).await;
    }
}

/// The gateway as TLS server, the peer as client.
async fn gateway_as_server(suite: SupportedCipherSuite) -> (Stream, Peer) {
    let (server, client) = configs(suite);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (tcp, conn) = tls.into_inner();
        Peer { tcp, conn: conn.into() }
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        handshake::accept(tcp, server).await.unwrap().0
    };
    let (peer, gateway) = tokio::join!(connect, accept);
    (gateway, peer)
}

/// The gateway as TLS client of `listener`, the peer as server.
async fn gateway_as_client(
    listener: &TcpListener,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Stream, Peer) {
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        handshake::connect(tcp, client, ServerName::try_from("localhost").unwrap()).await.unwrap()
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.unwrap();
        let (tcp, conn) = tls.into_inner();
        Peer { tcp, conn: conn.into() }
    };
    let (gateway, peer) = tokio::join!(connect, accept);
    (gateway, peer)
}

/// Reads until `want` bytes, the end, or an error: by turns through the
/// relay's interface (consuming a random part of what is there) and
/// through `AsyncRead` with a random size.
async fn read_random(stream: &mut Stream, want: usize, rng: &mut Rng) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 300_000];
    while got.len() < want {
        if rng.below(2) == 0 {
            let mut reader = stream.reader();
            match poll_fn(|cx| reader.poll_fill(cx)).await {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return (got, Err(e)),
            }
            let (data, segments) = reader.plaintext();
            let total: usize = segments.iter().map(|s| s.len()).sum();
            assert!(total > 0, "a fill with nothing in it");
            let mut take = if rng.below(2) == 0 { total } else { 1 + rng.below(total) };
            let n = take;
            for segment in segments {
                let part = take.min(segment.len());
                got.extend_from_slice(&data[segment.start..segment.start + part]);
                take -= part;
            }
            reader.consume(n);
        } else {
            let size = 1 + rng.below(buf.len());
            match stream.read(&mut buf[..size]).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    }
    (got, Ok(()))
}

fn every_suite() -> [SupportedCipherSuite; 6] {
    [
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

#[tokio::test]
async fn random_cuts_and_read_sizes_deliver_every_byte_then_the_clean_end_for_every_suite() {
    bounded(async {
        for (seed, suite) in every_suite().into_iter().enumerate() {
            let seed = seed as u64 + 1;
            let (mut gateway, mut peer) = gateway_as_server(suite).await;
            let sent = data(1_500_000 + seed as usize);
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut rng = Rng(seed * 7919);
                    let mut records = peer.seal(&sent);
                    peer.conn.send_close_notify();
                    records.extend(peer.queued());
                    peer.send_cut(&records, &mut rng).await;
                    peer.finish().await;
                })
            };
            let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(seed)).await;
            // After the clean end, reads keep returning it.
            assert_eq!(gateway.read(&mut [0; 100]).await.unwrap(), 0);
            assert!(!poll_fn(|cx| gateway.reader().poll_fill(cx)).await.unwrap());
            drop(gateway);
            writer.await.unwrap();
            assert!(end.is_ok(), "{suite:?}: {end:?}");
            assert!(got == sent, "{suite:?}: {} bytes received of {}", got.len(), sent.len());
        }
    })
    .await;
}

/// What the relay does towards a TLS peer: plaintext that lies in another
/// buffer, in several segments, sealed where it lies and sent.
#[tokio::test]
async fn the_sink_seals_in_place_and_the_peer_reads_every_byte_for_every_suite() {
    bounded(async {
        for suite in every_suite() {
            let (mut gateway, mut peer) = gateway_as_server(suite).await;
            let sent = data(700_001);
            let mut buf = sent.clone();
            // Segments of odd sizes, some above a record's 16 KiB, with gaps
            // the sink must skip.
            let mut segments = Vec::new();
            let (mut at, mut rng, mut expect) = (0, Rng(5), Vec::new());
            while at < buf.len() {
                let len = (1 + rng.below(40_000)).min(buf.len() - at);
                segments.push(at..at + len);
                expect.extend_from_slice(&sent[at..at + len]);
                at += len + rng.below(3).min(buf.len() - at - len);
            }
            let receiver = tokio::spawn(async move {
                let (plain, end) = peer.receive(expect.len()).await;
                end.unwrap();
                assert!(plain == expect, "{} bytes", plain.len());
                peer
            });
            let (_, mut writer) = gateway.split();
            for chunk in segments.chunks(7) {
                let n: usize = chunk.iter().map(|s| s.len()).sum();
                poll_fn(|cx| writer.poll_send(cx, &mut buf, chunk, n)).await.unwrap();
            }
            drop(writer);
            let peer = receiver.await.unwrap();
            drop(gateway);
            peer.finish().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_key_update_from_the_peer_is_followed_and_answered() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(suites::TLS13_AES_256_GCM_SHA384).await;
        let (first, second) = (data(300_000), data(200_001));
        let mut records = peer.seal(&first);
        // Sends KeyUpdate(update_requested): the gateway must switch its
        // read keys and answer with its own KeyUpdate.
        peer.conn.refresh_traffic_keys().unwrap();
        records.extend(peer.queued());
        records.extend(peer.seal(&second));
        peer.send_cut(&records, &mut Rng(11)).await;
        let (got, end) = read_random(&mut gateway, first.len() + second.len(), &mut Rng(12)).await;
        end.unwrap();
        assert!(got == [first, second].concat(), "{} bytes", got.len());
        // The peer must be able to decrypt the gateway's next data: our
        // KeyUpdate precedes it (RFC 8446 §4.6.3).
        let reply = data(100_000);
        gateway.write_all(&reply).await.unwrap();
        let (plain, end) = peer.receive(reply.len()).await;
        end.unwrap();
        assert!(plain == reply);
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_key_update_from_the_gateway_is_followed_by_the_peer() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(suites::TLS13_AES_128_GCM_SHA256).await;
        gateway.refresh_traffic_keys().unwrap();
        let sent = data(250_000);
        gateway.write_all(&sent).await.unwrap();
        gateway.flush().await.unwrap();
        let (plain, end) = peer.receive(sent.len()).await;
        end.unwrap();
        assert!(plain == sent);
        // The peer's answer (its own KeyUpdate, which rustls sends before
        // its next record) precedes its data; the gateway must switch keys
        // between them.
        let back = data(400_003);
        let records = peer.seal(&back);
        peer.send_cut(&records, &mut Rng(21)).await;
        let (got, end) = read_random(&mut gateway, back.len(), &mut Rng(22)).await;
        end.unwrap();
        assert!(got == back, "{} bytes", got.len());
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

/// A sending key at its confidentiality limit: TLS 1.3 updates it before
/// the next record (the peer follows), TLS 1.2 refuses to send more and
/// closes, as rustls does.
#[tokio::test]
async fn a_key_at_its_limit_is_updated_in_tls13_and_ends_tls12() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(suites::TLS13_CHACHA20_POLY1305_SHA256).await;
        gateway.set_key_limit(3);
        let sent = data(200_000);
        let mut buf = sent.clone();
        let (_, mut writer) = gateway.split();
        // 20 records through the relay's interface, 2 per batch, 3 at most per key.
        for at in (0..buf.len()).step_by(20_000) {
            let segment = at..(at + 20_000).min(sent.len());
            let n = segment.len();
            poll_fn(|cx| writer.poll_send(cx, &mut buf, std::slice::from_ref(&segment), n)).await.unwrap();
        }
        drop(writer);
        let (plain, end) = peer.receive(sent.len()).await;
        end.unwrap();
        assert!(plain == sent);
        drop(gateway);
        peer.finish().await;

        let (mut gateway, mut peer) = gateway_as_server(suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
        gateway.set_key_limit(3);
        let err = gateway.write_all(&data(100_000)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        drop(gateway);
        let (plain, end) = peer.receive(usize::MAX).await;
        end.unwrap();
        assert!(!plain.is_empty() && plain.len() % 16384 == 0 && plain.len() <= 3 * 16384, "{}", plain.len());
        assert_eq!(peer.conn.reader().read(&mut [0; 1]).unwrap(), 0, "then close_notify");
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_corrupted_record_is_an_error_and_the_peer_gets_bad_record_mac() {
    bounded(async {
        for suite in [suites::TLS13_AES_256_GCM_SHA384, suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384] {
            let (mut gateway, mut peer) = gateway_as_server(suite).await;
            let good = data(100_000);
            let mut records = peer.seal(&good);
            let mut bad = peer.seal(&data(10_000));
            // A byte inside the first record's ciphertext (after its 5-byte header).
            bad[100] ^= 0x40;
            records.extend(bad);
            peer.send_cut(&records, &mut Rng(31)).await;
            let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(32)).await;
            let err = end.expect_err("a clean end instead of an error");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{suite:?}: {err}");
            assert!(got == good, "{suite:?}: the records before the bad one are delivered");
            // The error stays.
            assert!(poll_fn(|cx| gateway.reader().poll_fill(cx)).await.is_err());
            // Closed before the peer looks: the alert must have been sent by
            // the failed read itself.
            drop(gateway);
            let (_, end) = peer.receive(usize::MAX).await;
            assert_eq!(end, Err(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)), "{suite:?}");
            peer.finish().await;
        }
    })
    .await;
}

#[tokio::test]
async fn bytes_after_close_notify_are_ignored() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(suites::TLS13_AES_256_GCM_SHA384).await;
        let sent = data(200_000);
        let mut records = peer.seal(&sent);
        peer.conn.send_close_notify();
        records.extend(peer.queued());
        // In the same segment: garbage, then what looks like another record.
        records.extend_from_slice(b"not TLS at all");
        records.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x20]);
        records.extend_from_slice(&[0xEE; 32]);
        peer.tcp.write_all(&records).await.unwrap();
        let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(41)).await;
        end.unwrap();
        assert!(got == sent, "{} bytes", got.len());
        assert_eq!(gateway.read(&mut [0; 100]).await.unwrap(), 0);
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_tcp_end_without_close_notify_is_unexpected_eof() {
    bounded(async {
        for suite in [suites::TLS13_AES_256_GCM_SHA384, suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256] {
            let (mut gateway, mut peer) = gateway_as_server(suite).await;
            let sent = data(500_000);
            let records = peer.seal(&sent);
            // And half a record more: cut mid-record.
            let mut more = peer.seal(&data(1000));
            more.truncate(500);
            peer.send_cut(&[records, more].concat(), &mut Rng(51)).await;
            // FIN without close_notify: truncation, not a clean end.
            peer.tcp.shutdown().await.unwrap();
            let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(52)).await;
            assert!(got == sent, "{} bytes", got.len());
            assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            drop(gateway);
            peer.finish().await;
        }
    })
    .await;
}

#[tokio::test]
async fn our_close_is_a_close_notify_the_peer_sees_as_a_clean_end() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(suites::TLS13_AES_256_GCM_SHA384).await;
        gateway.write_all(b"last PDU").await.unwrap();
        gateway.shutdown().await.unwrap();
        let (plain, end) = peer.receive(usize::MAX).await;
        end.unwrap();
        assert_eq!(plain, b"last PDU");
        let mut rest = Vec::new();
        assert_eq!(peer.conn.reader().read_to_end(&mut rest).unwrap(), 0, "close_notify received");
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn the_client_side_reads_data_between_session_tickets_and_key_updates_and_resumes() {
    bounded(async {
        let (server, client) = configs(suites::TLS13_AES_256_GCM_SHA384);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut gateway, mut peer) = gateway_as_client(&listener, server.clone(), client.clone()).await;
        // The server's NewSessionTickets go out right after the handshake,
        // between the data records; the gateway must store them.
        let (first, second) = (data(1_000_000), data(700_001));
        let mut records = peer.queued();
        records.extend(peer.seal(&first));
        peer.conn.refresh_traffic_keys().unwrap();
        records.extend(peer.queued());
        records.extend(peer.seal(&second));
        peer.conn.send_close_notify();
        records.extend(peer.queued());
        let writer = tokio::spawn(async move {
            peer.send_cut(&records, &mut Rng(61)).await;
            peer.finish().await;
        });
        let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(62)).await;
        end.unwrap();
        assert!(got == [first, second].concat(), "{} bytes", got.len());
        drop(gateway);
        writer.await.unwrap();
        // The tickets were taken: a second connection resumes.
        let (gateway, peer) = gateway_as_client(&listener, server, client).await;
        assert_eq!(peer.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn tls12_client_side_and_resumption() {
    bounded(async {
        let (server, client) = configs(suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut gateway, mut peer) = gateway_as_client(&listener, server.clone(), client.clone()).await;
        let sent = data(300_000);
        let mut records = peer.seal(&sent);
        peer.conn.send_close_notify();
        records.extend(peer.queued());
        let writer = tokio::spawn(async move {
            peer.send_cut(&records, &mut Rng(71)).await;
            peer.finish().await;
        });
        let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(72)).await;
        end.unwrap();
        assert!(got == sent);
        drop(gateway);
        writer.await.unwrap();
        let (gateway, peer) = gateway_as_client(&listener, server, client).await;
        assert_eq!(peer.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

/// What a scanner sends instead of a ClientHello (random bytes, a record
/// header claiming an unknown type, an oversized handshake record): the
/// handshake fails with an error and, where rustls has one, its alert goes
/// out; it never panics. A second pass of rustls over the same bytes to
/// fetch the alert once made it assert (a panic per hostile connection).
#[tokio::test]
async fn garbage_instead_of_a_client_hello_fails_the_handshake_without_a_panic() {
    bounded(async {
        let (server, _) = configs(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384);
        let mut rng = Rng(0x5eed);
        let mut random: Vec<u8> = (0..4096).map(|_| rng.below(256) as u8).collect();
        random[0] |= 0x80;
        let inputs = [
            random,
            vec![0x42, 0x03, 0x03, 0x00, 0x10, 1, 2, 3],
            vec![0x16, 0x03, 0x01, 0xFF, 0xFF, 0x01, 0x00, 0xFF, 0xFB],
            vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00],
        ];
        for input in inputs {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut peer = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            peer.write_all(&input).await.unwrap();
            // A task of its own: a panic inside is an Err from its handle.
            let server = server.clone();
            let handshake = tokio::spawn(async move { handshake::accept(tcp, server).await.map(|_| ()) });
            let result = handshake.await.expect("the handshake task must not panic");
            assert!(result.is_err(), "{:02X?} accepted", &input[..input.len().min(9)]);
        }
    })
    .await
}
