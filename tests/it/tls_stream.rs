//! The TLS stream's bulk read path (`dicomgate::tls::stream`), over real
//! loopback sockets, against a rustls peer driven record by record so the
//! tests choose exactly what arrives: ciphertext cut at random points,
//! KeyUpdates in both directions, a corrupted record, bytes after
//! close_notify, a TCP end without close_notify, and (gateway as client)
//! NewSessionTickets between data records.
//!
//! Every test runs under [`DEADLINE`]; a hang is a failure, not a wait.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step is the test's failure")]

use std::io::{self, Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use dicomgate::tls::stream::{Stream, BULK_READ_MIN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

    /// A read size: small ones go through tokio-rustls, large ones through the bulk path.
    fn read_size(&mut self) -> usize {
        if self.below(3) == 0 {
            1 + self.below(300)
        } else {
            BULK_READ_MIN + self.below(200_000)
        }
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Server and client configurations around one fresh self-signed certificate.
fn configs(
    version: &'static rustls::SupportedProtocolVersion,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let generated = dicomgate::pki::generate_self_signed(&dicomgate::pki::CertSpec {
        common_name: "test".to_owned(),
        subject_alt_names: vec!["localhost".to_owned()],
        days: 1,
        key_type: dicomgate::pki::KeyType::EcdsaP256,
    })
    .unwrap();
    let cert = CertificateDer::from(generated.certificate_der.clone());
    let key = PrivateKeyDer::try_from(generated.private_key_der.clone()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(dicomgate::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    // The echo SCU's client configuration, pinning the test certificate.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("server.pem");
    std::fs::write(&pem, &generated.certificate_pem).unwrap();
    let client = dicomgate::echo::client_config(&dicomgate::echo::Trust::CaFile(pem), None).unwrap();
    (Arc::new(server), client)
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

/// The gateway as TLS server (`Stream::Server`), the peer as client.
async fn gateway_as_server(version: &'static rustls::SupportedProtocolVersion) -> (Stream, Peer) {
    let (server, client) = configs(version);
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
        tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.unwrap()
    };
    let (peer, gateway) = tokio::join!(connect, accept);
    (Stream::Server(Box::new(gateway)), peer)
}

/// The gateway as TLS client (`Stream::Client`) of `listener`, the peer as server.
async fn gateway_as_client(
    listener: &TcpListener,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Stream, Peer) {
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(client).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.unwrap();
        let (tcp, conn) = tls.into_inner();
        Peer { tcp, conn: conn.into() }
    };
    let (gateway, peer) = tokio::join!(connect, accept);
    (Stream::Client(Box::new(gateway)), peer)
}

/// Reads until `want` bytes, the end, or an error, with random read sizes.
async fn read_random(stream: &mut Stream, want: usize, rng: &mut Rng) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; BULK_READ_MIN + 200_000];
    while got.len() < want {
        let size = rng.read_size();
        match stream.read(&mut buf[..size]).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
    (got, Ok(()))
}

#[tokio::test]
async fn random_cuts_and_read_sizes_deliver_every_byte_then_the_clean_end() {
    bounded(async {
        for (seed, version) in
            [(1, &rustls::version::TLS13), (2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        {
            let (mut gateway, mut peer) = gateway_as_server(version).await;
            let sent = data(3_000_000 + seed as usize);
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
            assert_eq!(gateway.read(&mut vec![0; BULK_READ_MIN]).await.unwrap(), 0);
            drop(gateway);
            writer.await.unwrap();
            assert!(end.is_ok(), "{version:?}: {end:?}");
            assert!(got == sent, "{version:?}: {} bytes received of {}", got.len(), sent.len());
        }
    })
    .await;
}

#[tokio::test]
async fn a_key_update_from_the_peer_is_followed_and_answered() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(&rustls::version::TLS13).await;
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
        // rustls holds its KeyUpdate answer until the next record it sends
        // (RFC 8446 §4.6.3 asks for it before the next application data):
        // the peer must be able to decrypt the gateway's next data with it.
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
        let (mut gateway, mut peer) = gateway_as_server(&rustls::version::TLS13).await;
        let Stream::Server(tls) = &mut gateway else { unreachable!() };
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        let sent = data(250_000);
        gateway.write_all(&sent).await.unwrap();
        gateway.flush().await.unwrap();
        let (plain, end) = peer.receive(sent.len()).await;
        end.unwrap();
        assert!(plain == sent);
        // The peer's answer (its own KeyUpdate, which rustls sends before
        // its next record) precedes its data; the bulk path must switch keys
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

#[tokio::test]
async fn a_corrupted_record_is_an_error_and_the_peer_gets_bad_record_mac() {
    bounded(async {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut gateway, mut peer) = gateway_as_server(version).await;
            let good = data(100_000);
            let mut records = peer.seal(&good);
            let mut bad = peer.seal(&data(10_000));
            // A byte inside the first record's ciphertext (after its 5-byte header).
            bad[100] ^= 0x40;
            records.extend(bad);
            peer.send_cut(&records, &mut Rng(31)).await;
            let mut buf = vec![0u8; BULK_READ_MIN];
            let mut got = Vec::new();
            let err = loop {
                match gateway.read(&mut buf).await {
                    Ok(0) => panic!("{version:?}: a clean end instead of an error"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{version:?}: {err}");
            assert!(got == good, "{version:?}: the records before the bad one are delivered");
            // Closed before the peer looks: the alert must have been sent by
            // the failed read itself.
            drop(gateway);
            let (_, end) = peer.receive(usize::MAX).await;
            assert_eq!(end, Err(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)), "{version:?}");
            peer.finish().await;
        }
    })
    .await;
}

#[tokio::test]
async fn bytes_after_close_notify_are_ignored() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(&rustls::version::TLS13).await;
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
        assert_eq!(gateway.read(&mut vec![0; BULK_READ_MIN]).await.unwrap(), 0);
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_tcp_end_without_close_notify_is_unexpected_eof() {
    bounded(async {
        let (mut gateway, mut peer) = gateway_as_server(&rustls::version::TLS13).await;
        let sent = data(500_000);
        let records = peer.seal(&sent);
        peer.send_cut(&records, &mut Rng(51)).await;
        // FIN without close_notify: truncation, not a clean end.
        peer.tcp.shutdown().await.unwrap();
        let (got, end) = read_random(&mut gateway, usize::MAX, &mut Rng(52)).await;
        assert!(got == sent, "{} bytes", got.len());
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        drop(gateway);
        peer.finish().await;
    })
    .await;
}

#[tokio::test]
async fn the_client_side_reads_data_between_session_tickets_and_key_updates() {
    bounded(async {
        let (server, client) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut gateway, mut peer) = gateway_as_client(&listener, server.clone(), client.clone()).await;
        // The server's NewSessionTickets go out right after the handshake;
        // the gateway's first read is a bulk one, so the bulk path takes them.
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
        let mut rng = Rng(62);
        let mut buf = vec![0u8; BULK_READ_MIN];
        let mut got = Vec::new();
        // Bulk first, then random sizes.
        let n = gateway.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        let (rest, end) = read_random(&mut gateway, usize::MAX, &mut rng).await;
        end.unwrap();
        got.extend(rest);
        assert!(got == [first, second].concat(), "{} bytes", got.len());
        drop(gateway);
        writer.await.unwrap();
        // The tickets were taken: a second connection resumes.
        let (gateway, peer) = gateway_as_client(&listener, server, client).await;
        let Stream::Client(tls) = &gateway else { unreachable!() };
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        drop(gateway);
        peer.finish().await;
    })
    .await;
}
