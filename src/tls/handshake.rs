//! The TLS handshake, driven through rustls's unbuffered API over buffers
//! of ours, and the hand-over to our record layer: rustls's kernel-TLS
//! interface gives the traffic keys and sequence numbers, and keeps the key
//! schedule (TLS 1.3 KeyUpdate) and the client's ticket store.
//!
//! Application data that arrives with the peer's last flight is decrypted
//! by rustls (into a copy; at most what one read brought) and handed to the
//! stream ahead of the records after it. Every wait here is under the
//! caller's deadline; a failed handshake sends rustls's alert without
//! waiting for the peer to take it, as tokio-rustls does.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig, SupportedCipherSuite};

use super::record::{Opener, Sealer, Version};
use super::rx::{RxBuf, TlsRx};
use super::stream::{Stream, Tls};
use super::transport::{self, Transport};
use super::tx::Kernel;
use super::SessionInfo;

/// The handshake's receive buffer starts here and doubles as records need.
const INITIAL_BUFFER: usize = 4 * 1024;
/// rustls joins a handshake message split over records inside our buffer:
/// room for the largest message it accepts (64 KiB) and the record after it.
const MAX_BUFFER: usize = 128 * 1024;
/// Application data accepted together with the handshake's last flight.
const MAX_EARLY_PLAINTEXT: usize = MAX_BUFFER;

/// The gateway as TLS server: the handshake, then a [`Stream`] with our
/// record layer, and what the audit records of the session.
pub async fn accept<T: Transport>(io: T, config: Arc<ServerConfig>) -> io::Result<(Stream<T>, SessionInfo)> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let leftovers = drive(&io, &mut conn).await?;
    let info = SessionInfo::of(&conn);
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(invalid)?;
    let (version, suite) = (kernel.protocol_version(), kernel.negotiated_cipher_suite());
    let stream = established(io, (version, suite), secrets, Kernel::Server(kernel), leftovers)?;
    Ok((stream, info))
}

/// The gateway as TLS client of a backend SCP.
pub async fn connect<T: Transport>(
    io: T,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<Stream<T>> {
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
    let leftovers = drive(&io, &mut conn).await?;
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(invalid)?;
    let (version, suite) = (kernel.protocol_version(), kernel.negotiated_cipher_suite());
    established(io, (version, suite), secrets, Kernel::Client(kernel), leftovers)
}

fn invalid(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")
}

/// What arrived after the handshake's last message.
struct Leftovers {
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
}

fn established<T: Transport>(
    io: T,
    (version, suite): (ProtocolVersion, SupportedCipherSuite),
    secrets: ExtractedSecrets,
    kernel: Kernel,
    leftovers: Leftovers,
) -> io::Result<Stream<T>> {
    let version = match version {
        ProtocolVersion::TLSv1_3 => Version::Tls13,
        ProtocolVersion::TLSv1_2 => Version::Tls12,
        other => return Err(invalid(rustls::Error::General(format!("negotiated {other:?}")))),
    };
    let limit = match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let client = kernel.is_client();
    let opener = Opener::new(version, secrets.rx).map_err(invalid)?;
    let sealer = Sealer::new(version, secrets.tx, limit).map_err(invalid)?;
    // TLS 1.2 has no KeyUpdate and no tickets after the handshake.
    let kernel = if version == Version::Tls12 { Kernel::None } else { kernel };
    let rx = RxBuf::after_handshake(&leftovers.plaintext, &leftovers.ciphertext);
    Ok(Stream::with_tls(io, rx, Tls::new(TlsRx::new(opener, client), sealer, kernel)))
}

/// The two unbuffered connection types, as the driver uses them.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

enum Next {
    Again,
    Read,
    /// rustls may send application data; the handshake may still wait for
    /// the client's Finished (TLS 1.3 server).
    Established,
    Closed,
    Failed(rustls::Error),
}

async fn drive<T: Transport, C: Unbuffered>(io: &T, conn: &mut C) -> io::Result<Leftovers> {
    let mut incoming = vec![0u8; INITIAL_BUFFER];
    let mut used = 0;
    let mut outgoing = Vec::new();
    let mut plaintext = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..used]);
        let next = match state {
            Err(error) => Next::Failed(error),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut next = Next::Again;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) if plaintext.len() + record.payload.len() <= MAX_EARLY_PLAINTEXT => {
                            discard += record.discard;
                            plaintext.extend_from_slice(record.payload);
                        }
                        Ok(_) => {
                            next = Next::Failed(rustls::Error::General("too much data with the handshake".into()));
                            break;
                        }
                        Err(error) => {
                            next = Next::Failed(error);
                            break;
                        }
                    }
                }
                next
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => match encode_into(&mut encode, &mut outgoing) {
                Ok(()) => Next::Again,
                Err(error) => Next::Failed(error),
            },
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transport::write_all(io, &outgoing).await?;
                outgoing.clear();
                transmit.done();
                Next::Again
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::WriteTraffic(_)) => Next::Established,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Next::Closed,
            // Early data is not enabled in our configurations.
            Ok(_) => Next::Failed(rustls::Error::General("unexpected handshake state".into())),
        };
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
        }
        match next {
            Next::Again => {}
            Next::Established if !conn.handshaking() => break,
            Next::Read | Next::Established => read_more(io, &mut incoming, &mut used).await?,
            Next::Closed => return Err(eof()),
            Next::Failed(error) => {
                send_alert(io, conn, &mut incoming[..used]);
                return Err(invalid(error));
            }
        }
    }
    incoming.truncate(used);
    Ok(Leftovers { plaintext, ciphertext: incoming })
}

fn encode_into<D>(encode: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
    // A record is never empty: an empty buffer asks for its size.
    let need = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    let at = out.len();
    out.resize(at + need, 0);
    let n = encode.encode(&mut out[at..]).map_err(|e| rustls::Error::General(e.to_string()))?;
    out.truncate(at + n);
    Ok(())
}

async fn read_more<T: Transport>(io: &T, incoming: &mut Vec<u8>, used: &mut usize) -> io::Result<()> {
    if *used == incoming.len() {
        if incoming.len() >= MAX_BUFFER {
            return Err(invalid(rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge)));
        }
        let len = (incoming.len() * 2).min(MAX_BUFFER);
        incoming.resize(len, 0);
    }
    let n = poll_fn(|cx| transport::poll_read(io, cx, &mut incoming[*used..])).await?;
    if n == 0 {
        return Err(eof());
    }
    *used += n;
    Ok(())
}

/// The alert rustls queued for its error, as far as the transport takes it
/// now. rustls hands it out from the next `process_tls_records` call, before
/// it looks at the input again; that is the only call made: after a
/// deframing error rustls does not remember that it failed, so a second call
/// would deframe the same bytes again and trip its own assertion that a fatal
/// alert goes out once (a panic per hostile ClientHello). The unprocessed
/// bytes are passed, not an empty buffer: rustls's message joiner refers to
/// them.
fn send_alert<T: Transport, C: Unbuffered>(io: &T, conn: &mut C, incoming: &mut [u8]) {
    let mut outgoing = Vec::new();
    let UnbufferedStatus { state, .. } = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
        if encode_into(&mut encode, &mut outgoing).is_ok() && !outgoing.is_empty() {
            let _ = io.try_write_vectored(&[IoSlice::new(&outgoing)]);
        }
    }
}
