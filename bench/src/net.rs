//! Client connections to the proxy under test: TCP_NODELAY, TLS 1.3 (or plain
//! for a no-proxy baseline), no session resumption (every association pays a
//! full handshake, as a cloud SCU opening a fresh connection does), and no
//! certificate verification (the bench certificate is self-signed; the
//! handshake signature is still checked).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Aes128,
    Aes256,
    Plain,
}

impl Suite {
    pub fn parse(s: &str) -> Option<Suite> {
        match s {
            "aes128" => Some(Suite::Aes128),
            "aes256" => Some(Suite::Aes256),
            "plain" => Some(Suite::Plain),
            _ => None,
        }
    }
}

pub struct Client {
    connector: Option<TlsConnector>,
}

impl Client {
    pub fn new(suite: Suite) -> Client {
        let cipher_suites = match suite {
            Suite::Aes128 => vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
            Suite::Aes256 => vec![aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384],
            Suite::Plain => return Client { connector: None },
        };
        let provider = Arc::new(CryptoProvider { cipher_suites, ..aws_lc_rs::default_provider() });
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 with the aws-lc-rs provider")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Client { connector: Some(TlsConnector::from(Arc::new(config))) }
    }

    pub async fn connect(&self, addr: SocketAddr) -> io::Result<Conn> {
        self.connect_from(addr, None).await
    }

    /// As [`Client::connect`], from the loopback `source` address when given.
    pub async fn connect_from(&self, addr: SocketAddr, source: Option<std::net::IpAddr>) -> io::Result<Conn> {
        let tcp = match source {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket =
                    if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        match &self.connector {
            None => Ok(Conn::Plain(tcp)),
            Some(c) => {
                let name = ServerName::IpAddress(addr.ip().into());
                Ok(Conn::Tls(Box::new(c.connect(name, tcp).await?)))
            }
        }
    }
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// "TLSv1_3 TLS13_AES_128_GCM_SHA256", or "plain".
    pub fn describe(&self) -> String {
        match self {
            Conn::Plain(_) => "plain".to_owned(),
            Conn::Tls(s) => {
                let c = s.get_ref().1;
                format!(
                    "{:?}/{:?}",
                    c.protocol_version().unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                    c.negotiated_cipher_suite().map(|s| s.suite())
                )
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
