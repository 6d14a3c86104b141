//! Connections to the syslog receiver: UDP (RFC 5426), TCP (RFC 6587) and
//! TLS (RFC 5425). Each wait has its own deadline ([`CONNECT_TIMEOUT`],
//! [`WRITE_TIMEOUT`]); the caller owns retry and backoff.
//!
//! Syslog over TCP has no acknowledgement: a message written just before the
//! receiver closed can be lost without an error. Before each write the
//! socket is checked for the receiver's close (a read of 0 bytes), so a
//! restarted receiver costs a reconnect rather than messages.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::syslog::octet_counted;
use super::AtnaError;
use crate::config::{SyslogConfig, SyslogTransport};
use crate::tls;

/// Name resolution, TCP connect and TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One message written to the socket.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS 1.3: how long to listen for the receiver refusing our client
/// certificate after the handshake (see [`Connector::connect`]).
pub const TLS13_REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// Everything needed to connect, loaded once per configuration (the CA and
/// client identity files are read when the configuration is applied, so a
/// bad file fails the start or the reload, not the first message).
#[derive(Clone)]
pub struct Connector {
    pub config: SyslogConfig,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.config.transport.as_str(), self.config.address)
    }
}

impl Connector {
    pub fn new(config: &SyslogConfig) -> Result<Connector, AtnaError> {
        let tls = match &config.transport {
            SyslogTransport::Tls(t) => {
                let backend = tls::backend_tls(t)?;
                let name = t.server_name.clone().unwrap_or_else(|| config.address.host.clone());
                // server_name was checked when the configuration was
                // validated; the address's host may still be no valid name.
                let name = ServerName::try_from(name.clone()).map_err(|_| AtnaError::ServerName { name })?;
                Some((backend.connector, name))
            }
            _ => None,
        };
        Ok(Connector { config: config.clone(), tls })
    }

    /// Opens a connection under [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> io::Result<Connection> {
        match timeout(CONNECT_TIMEOUT, self.connect_inner()).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {CONNECT_TIMEOUT:?}"))),
        }
    }

    async fn connect_inner(&self) -> io::Result<Connection> {
        let address = &self.config.address;
        let target = (address.host.as_str(), address.port);
        match (&self.config.transport, &self.tls) {
            (SyslogTransport::Udp, _) => {
                let peer = tokio::net::lookup_host(target)
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{address} does not resolve")))?;
                let local = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(peer).await?;
                Ok(Connection::Udp(socket))
            }
            (SyslogTransport::Tls(_), Some((connector, name))) => {
                let tcp = TcpStream::connect(target).await?;
                let _ = tcp.set_nodelay(true);
                let mut stream = connector.connect(name.clone(), tcp).await?;
                // In TLS 1.3 the client's handshake ends before the server
                // has checked the client certificate; a refusal comes as an
                // alert afterwards, and a message written meanwhile would be
                // counted as sent and lost. The receiver never sends data, so
                // a read that is still pending after a moment means accepted.
                if stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                    let mut byte = [0u8; 1];
                    match timeout(TLS13_REFUSAL_WAIT, stream.read(&mut byte)).await {
                        Err(_) | Ok(Ok(1..)) => {}
                        Ok(Ok(0)) => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "the receiver closed the connection after the TLS handshake",
                            ))
                        }
                        Ok(Err(e)) => return Err(e),
                    }
                }
                Ok(Connection::Tls(Box::new(stream)))
            }
            (SyslogTransport::Tls(_), None) => Err(io::Error::other("TLS client configuration missing")),
            (SyslogTransport::Tcp, _) => {
                let tcp = TcpStream::connect(target).await?;
                let _ = tcp.set_nodelay(true);
                Ok(Connection::Tcp(tcp))
            }
        }
    }
}

pub fn shared(config: Option<&SyslogConfig>) -> Result<Option<Arc<Connector>>, AtnaError> {
    config.map(|c| Connector::new(c).map(Arc::new)).transpose()
}

/// An open connection to the receiver.
pub enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection {
    /// Sends one SYSLOG-MSG, framed for the transport, under [`WRITE_TIMEOUT`].
    pub async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match timeout(WRITE_TIMEOUT, self.send_inner(msg)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("not written within {WRITE_TIMEOUT:?}"))),
        }
    }

    async fn send_inner(&mut self, msg: &[u8]) -> io::Result<()> {
        match self {
            Connection::Udp(socket) => {
                socket.send(msg).await?;
                Ok(())
            }
            Connection::Tcp(tcp) => {
                check_open(tcp)?;
                tcp.write_all(&octet_counted(msg)).await?;
                tcp.flush().await
            }
            Connection::Tls(tls) => {
                check_open(tls.get_ref().0)?;
                tls.write_all(&octet_counted(msg)).await?;
                tls.flush().await
            }
        }
    }
}

/// Fails if the receiver has closed its side. A syslog receiver never sends
/// application data; bytes that do arrive (TLS 1.3 session tickets) are
/// discarded: this connection is only ever written to.
fn check_open(tcp: &TcpStream) -> io::Result<()> {
    let mut scratch = [0u8; 512];
    // Bounded, so a receiver that floods us cannot keep this loop busy.
    for _ in 0..64 {
        match tcp.try_read(&mut scratch) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::ConnectionReset, "the receiver closed the connection")),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
