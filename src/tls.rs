//! TLS: rustls server configurations for listeners, client configurations for
//! backends, client-certificate pinning, and the stream type both legs share.
//!
//! Profile: DICOM PS3.15 B.12 / BCP 195 — TLS 1.2 and 1.3 only, ECDHE with
//! AEAD suites only (rustls offers nothing else), aws-lc-rs as the provider.

use std::fmt;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{BackendTlsConfig, ClientAuth, ListenerTlsConfig, TlsVersion};
use crate::pki;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or parsing a PEM file (the message names the file).
    #[error(transparent)]
    Pem(#[from] pki::PkiError),
    #[error("the private key in {key} does not belong to the certificate in {certificate} (their public keys differ)")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("{path}: the private key is not usable for TLS: {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("{path}: no usable CA certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "{certificate} exists but {missing} does not; refusing to generate over half a pair (remove or restore it)"
    )]
    HalfPair { certificate: PathBuf, missing: PathBuf },
    #[error("{path}: the certificate expired on {not_after}; renew it (dicomgate gen-cert) and upload the new one to the cloud")]
    Expired { path: PathBuf, not_after: String },
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM file of one or more certificates (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pki::load_certificate_chain(path)?)
}

/// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    Ok(pki::load_private_key(path)?)
}

/// The certificate a listener presents, loaded and checked against its key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub certified_key: Arc<rustls::sign::CertifiedKey>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity").field("fingerprint", &self.fingerprint()).finish()
    }
}

impl ServerIdentity {
    pub fn load(certificate: &Path, private_key: &Path) -> Result<ServerIdentity, TlsError> {
        let chain = load_certificates(certificate)?;
        let key = load_private_key(private_key)?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadPrivateKey { path: private_key.to_owned(), reason: e.to_string() })?;
        let certified_key = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch { certificate: certificate.to_owned(), key: private_key.to_owned() })
            }
            // Unknown: the provider could not compare (unusual key types); the
            // handshake itself will fail if they do not belong together.
            Err(_) => {}
        }
        Ok(ServerIdentity { chain, certified_key: Arc::new(certified_key) })
    }

    /// SHA-256 of the leaf certificate, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        self.chain.first().map(|c| pki::sha256_fingerprint(c)).unwrap_or_default()
    }
}

/// Creates the listener's key and self-signed certificate when
/// `generate_if_missing` is set and neither file exists. Returns the new
/// certificate's fingerprint when it generated one.
pub fn ensure_generated(tls: &ListenerTlsConfig) -> Result<Option<String>, TlsError> {
    if !tls.generate_if_missing {
        return Ok(None);
    }
    match (tls.certificate.exists(), tls.private_key.exists()) {
        (true, true) => Ok(None),
        (true, false) => {
            Err(TlsError::HalfPair { certificate: tls.certificate.clone(), missing: tls.private_key.clone() })
        }
        (false, true) => {
            Err(TlsError::HalfPair { certificate: tls.private_key.clone(), missing: tls.certificate.clone() })
        }
        (false, false) => {
            let pair = pki::generate_self_signed(&pki::CertSpec {
                common_name: "dicomgate".to_owned(),
                subject_alt_names: vec!["localhost".to_owned()],
                days: 3650,
                key_type: crate::pki::KeyType::Rsa2048,
            })?;
            // Key first, 0600 from creation: a crash in between leaves no
            // certificate without its key.
            pki::write_file_atomic(&tls.private_key, pair.private_key_pem.as_bytes(), 0o600, false)?;
            pki::write_file_atomic(&tls.certificate, pair.certificate_pem.as_bytes(), 0o644, false)?;
            Ok(Some(pki::sha256_fingerprint(&pair.certificate_der)))
        }
    }
}

fn protocol_versions(versions: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect()
}

/// Builds a listener's rustls configuration from its (already loaded) identity.
pub fn server_config(
    tls: &ListenerTlsConfig,
    identity: &ServerIdentity,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(&tls.versions))?;
    let builder = match client_verifier(&tls.client_auth, &provider)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCertificate(identity.certified_key.clone())));
    // The server's preference decides (BCP 195 §4.2.1); all suites offered
    // are ECDHE + AEAD, but a scanner rightly flags client-ordered choice.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// One certificate for every client (no SNI-based selection: the cloud
/// connects by IP address).
#[derive(Debug)]
struct FixedCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn client_verifier(
    auth: &ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if !auth.required() {
        return Ok(None);
    }
    let chain: Option<Arc<dyn ClientCertVerifier>> = match &auth.ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
            Some(v)
        }
        None => None,
    };
    let mut pinned = Vec::new();
    for path in &auth.pinned {
        // Only the leaf (first certificate) of each file is pinned.
        let certs = load_certificates(path)?;
        pinned.extend(certs.into_iter().take(1));
    }
    if pinned.is_empty() {
        return Ok(chain);
    }
    let hints = chain.as_ref().map(|c| c.root_hint_subjects().to_vec()).unwrap_or_default();
    Ok(Some(Arc::new(PinnedClientVerifier { pinned, chain, hints, provider: provider.clone() })))
}

/// Accepts a client certificate that is byte-for-byte one of the pinned ones,
/// otherwise defers to chain validation when a `client_ca` is configured.
///
/// Pinning exists for the guide's "SCU Authenticated" mode: the cloud's
/// certificate is uploaded to the termination point as is. It is often
/// self-signed with `basicConstraints = CA:true` (Appendix A's openssl.cnf),
/// which webpki rightly refuses as an end-entity certificate, so a pinned
/// certificate is trusted by identity, not by path building. The handshake
/// signature is still verified against its public key, so only the holder of
/// the private key gets in.
struct PinnedClientVerifier {
    pinned: Vec<CertificateDer<'static>>,
    chain: Option<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifier").field("pinned", &self.pinned.len()).finish()
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return Ok(ClientCertVerified::assertion());
        }
        match &self.chain {
            Some(chain) => chain.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// DICOM-TLS towards a backend SCP.
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls").field("server_name", &self.server_name).finish()
    }
}

pub fn backend_tls(cfg: &BackendTlsConfig) -> Result<BackendTls, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(&cfg.ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: cfg.ca.clone(), reason: e.to_string() })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let config = match &cfg.client_identity {
        Some((cert, key)) => {
            let identity = ServerIdentity::load(cert, key)?;
            builder.with_client_auth_cert(identity.chain, load_private_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = match &cfg.server_name {
        // Validated when the configuration was parsed.
        Some(name) => ServerName::try_from(name.clone()).ok(),
        None => None,
    };
    let config = Arc::new(config);
    Ok(BackendTls { connector: tokio_rustls::TlsConnector::from(config.clone()), config, server_name })
}

/// Either leg of a relayed association: plain TCP or TLS (as server towards
/// the cloud, as client towards an SCP). One type, so the relay is compiled once.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) if buf.remaining() >= BULK_READ_MIN => {
                let (tcp, conn) = s.get_mut();
                poll_read_bulk(tcp, conn, cx, buf)
            }
            Stream::Client(s) if buf.remaining() >= BULK_READ_MIN => {
                let (tcp, conn) = s.get_mut();
                poll_read_bulk(tcp, conn, cx, buf)
            }
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// Most plaintext one TLS record can carry (RFC 8446 §5.1, RFC 5246 §6.2.1),
/// plus room for a record's header, tag and padding.
const RECORD_SLACK: usize = 16 * 1024 + 512;

/// Reads of at least this much go through [`poll_read_bulk`]; smaller ones
/// (the first PDU's header, control PDUs) through tokio-rustls.
const BULK_READ_MIN: usize = 2 * RECORD_SLACK;

thread_local! {
    /// Ciphertext staging for [`poll_read_bulk`]; fully consumed within one
    /// call, so one per thread serves every connection.
    static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The bulk read path: one `recv` of up to the caller's free space, fed to
/// rustls from memory. rustls reads the socket 4 KiB at a time by itself
/// (several syscalls per 16 KiB record, the largest cost the profile of the
/// relay showed); this does one per call.
///
/// No plaintext is lost or held here: at most `remaining - RECORD_SLACK`
/// ciphertext bytes are read, and all of it is fed to rustls, so the
/// plaintext it yields (plus at most one record completed from bytes rustls
/// already held) fits in `buf`. rustls keeps its own partial record; if its
/// plaintext buffer were ever full, `read_tls` fails with an error instead of
/// dropping bytes.
fn poll_read_bulk<D>(
    tcp: &mut TcpStream,
    conn: &mut rustls::ConnectionCommon<D>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let start = buf.filled().len();
    loop {
        // Plaintext rustls already has (or the end of the stream).
        match conn.reader().read(buf.initialize_unfilled()) {
            Ok(n) => {
                // n == 0: close_notify received, a clean end.
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        std::task::ready!(tcp.poll_read_ready(cx))?;
        let want = buf.remaining() - RECORD_SLACK;
        let fed = STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            if staging.len() < want {
                staging.resize(want, 0);
            }
            match tcp.try_read(&mut staging[..want]) {
                // TCP end: rustls decides between a clean end and truncation.
                Ok(0) => conn.read_tls(&mut io::empty()).map(|_| ()),
                Ok(n) => feed(conn, &staging[..n], buf),
                // Readiness was stale; try_read cleared it, poll again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            }
        });
        fed?;
        if buf.filled().len() > start {
            return Poll::Ready(Ok(()));
        }
    }
}

/// Gives rustls every byte of `ciphertext`, moving plaintext into `buf` as
/// records complete (rustls accepts at most 4 KiB per `read_tls`).
fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, mut ciphertext: &[u8], buf: &mut ReadBuf<'_>) -> io::Result<()> {
    while !ciphertext.is_empty() {
        if conn.read_tls(&mut ciphertext)? == 0 {
            // close_notify already received: what follows it is not data.
            break;
        }
        conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match conn.reader().read(buf.initialize_unfilled()) {
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
}

/// What the audit records of a TLS session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub version: Option<&'static str>,
    pub suite: Option<String>,
    /// SHA-256 fingerprint of the client certificate, when one was presented.
    pub client_certificate: Option<String>,
}

impl SessionInfo {
    pub fn of(conn: &rustls::ServerConnection) -> SessionInfo {
        SessionInfo {
            version: conn.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                _ => "other",
            }),
            suite: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
            client_certificate: conn.peer_certificates().and_then(|c| c.first()).map(|c| pki::sha256_fingerprint(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A TLS pair over loopback TCP: (server side as the relay sees it, client).
    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Stream, tokio_rustls::client::TlsStream<TcpStream>) {
        let generated = pki::generate_self_signed(&pki::CertSpec {
            common_name: "test".to_owned(),
            subject_alt_names: vec!["localhost".to_owned()],
            days: 1,
            key_type: crate::pki::KeyType::EcdsaP256,
        })
        .unwrap();
        let cert = CertificateDer::from(generated.certificate_der.clone());
        let key = PrivateKeyDer::try_from(generated.private_key_der.clone()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        // The echo SCU's client configuration, pinning the test certificate;
        // the server side pins the protocol version.
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("server.pem");
        std::fs::write(&pem, &generated.certificate_pem).unwrap();
        let client = crate::echo::client_config(&crate::echo::Trust::CaFile(pem), None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(client)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(tcp).await.unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (Stream::Server(Box::new(server)), client)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Reads everything, alternating small reads (tokio-rustls) and large
    /// ones (the bulk path), until the end or an error.
    async fn read_mixed(stream: &mut Stream) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        for i in 0.. {
            let size = if i % 3 == 0 { 7 } else { buf.len() };
            match stream.read(&mut buf[..size]).await {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
        unreachable!()
    }

    #[tokio::test]
    async fn bulk_reads_deliver_every_byte_then_the_clean_end() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = pair(version).await;
            let sent = data(3_000_000);
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    for chunk in sent.chunks(70_001) {
                        client.write_all(chunk).await.unwrap();
                    }
                    client.shutdown().await.unwrap();
                    // Read the server's session tickets before closing: a
                    // socket closed with unread data sends RST, not FIN.
                    let _ = client.read_to_end(&mut Vec::new()).await;
                })
            };
            let (got, end) = read_mixed(&mut server).await;
            drop(server);
            writer.await.unwrap();
            assert!(end.is_ok(), "{end:?}");
            assert!(got == sent, "{version:?}: {} bytes received of {}", got.len(), sent.len());
        }
    }

    #[tokio::test]
    async fn bulk_reads_report_a_close_without_close_notify_as_truncation() {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await;
        let sent = data(500_000);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client.flush().await.unwrap();
                // TCP FIN without close_notify.
                let (mut tcp, _) = client.into_inner();
                tcp.shutdown().await.unwrap();
                let _ = tcp.read_to_end(&mut Vec::new()).await;
            })
        };
        let (got, end) = read_mixed(&mut server).await;
        drop(server);
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
