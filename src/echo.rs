//! `dicomgate echo`: a C-ECHO SCU that reports like the cloud's "Echo"
//! button — `Accepted`, or exactly what went wrong: the A-ASSOCIATE-RJ
//! result/source/reason, the A-ABORT source/reason, the TLS failure with
//! rustls' reason, the phase that timed out, a refused connection.
//!
//! [`EchoRequest::from_options`] turns the command line into validated values
//! (AE titles, address, TLS configuration); [`c_echo`] runs one exchange
//! under a single deadline, each phase named in its errors (`check --echo`
//! and health checks can call it directly); [`echo_command`] prints and maps
//! the outcome to an exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | `Accepted`: association accepted, C-ECHO status 0x0000 |
//! | 1 | internal error |
//! | 2 | usage: bad HOST:PORT, AE title, `--tls` without `--ca`/`--insecure` |
//! | 3 | association rejected (A-ASSOCIATE-RJ) |
//! | 4 | association aborted (A-ABORT), connection closed or reset by the peer, or an answer that is not DICOM |
//! | 5 | TLS failure (certificate, alert, handshake) |
//! | 6 | timeout (`--timeout`, whole exchange) |
//! | 7 | cannot connect: refused, unreachable, name lookup failed |
//! | 8 | associated, but Verification refused or C-ECHO status not Success |
//! | 64 | `--ca`, `--cert` or `--key` file unusable |

mod association;
mod client_tls;
mod dimse;
mod request;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

pub use association::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
pub use client_tls::{client_config, describe_tls_error, Trust};
pub use dimse::describe_status;
pub use request::{EchoOptions, SetupError};

use crate::dicom::pdu::{describe_abort, describe_rejection};
use crate::dicom::AeTitle;
use crate::exit;

/// One validated echo: where, as whom, how.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub host: String,
    pub port: u16,
    pub calling_ae: AeTitle,
    pub called_ae: AeTitle,
    pub tls: Option<EchoTls>,
    /// For the whole exchange: lookup, connect, TLS, association, echo, release.
    pub timeout: Duration,
}

/// TLS to the SCP.
#[derive(Debug, Clone)]
pub struct EchoTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// What a successful echo saw.
#[derive(Debug)]
pub struct Accepted {
    pub peer: SocketAddr,
    /// Protocol version and cipher suite, for TLS.
    pub tls: Option<String>,
    pub elapsed: Duration,
    /// The echo succeeded but the release did not go cleanly.
    pub release_problem: Option<EchoError>,
}

/// The phases of one echo; timeouts and failures name theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Resolve,
    Connect,
    TlsHandshake,
    Associate,
    Echo,
    Release,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Resolve => "name lookup",
            Phase::Connect => "TCP connect",
            Phase::TlsHandshake => "TLS handshake",
            Phase::Associate => "association request (A-ASSOCIATE)",
            Phase::Echo => "C-ECHO",
            Phase::Release => "release (A-RELEASE)",
        })
    }
}

/// Why an echo failed, in the words of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connection refused by {addr} (nothing listens on that port, or a firewall rejects the connection)")]
    Refused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("timed out during the {phase}: no answer within the --timeout deadline")]
    Timeout { phase: Phase },
    #[error("TLS failed during the {phase}: {reason}")]
    Tls { phase: Phase, reason: String },
    /// `origin` is PS3.8's "Source" field (not named `source`: thiserror
    /// reserves that name for the underlying error).
    #[error("association rejected: A-ASSOCIATE-RJ {}", describe_rejection((*.result, *.origin, *.reason)))]
    Rejected { result: u8, origin: u8, reason: u8 },
    #[error("association aborted during the {phase}: A-ABORT {}", describe_abort(*.origin, *.reason))]
    Aborted { phase: Phase, origin: u8, reason: u8 },
    #[error("the SCP {how} the connection during the {phase} without a DICOM answer{hint}")]
    Closed {
        phase: Phase,
        how: &'static str,
        /// Empty, or what this usually means.
        hint: &'static str,
    },
    #[error("the connection failed during the {phase}: {source}")]
    Io { phase: Phase, source: io::Error },
    #[error("the answer during the {phase} is not a DICOM PDU (first byte 0x{first_byte:02X}){}", not_dicom_hint(*.first_byte))]
    NotDicom { phase: Phase, first_byte: u8 },
    #[error("protocol error during the {phase}: {what}")]
    Protocol { phase: Phase, what: String },
    #[error("association accepted, but the SCP refused the Verification service: {reason}")]
    ContextRefused { reason: String },
    #[error("C-ECHO failed: the SCP answered with status {}", describe_status(*.status))]
    Status { status: u16 },
    #[error("internal error: {what}")]
    Internal { what: String },
}

fn not_dicom_hint(first_byte: u8) -> &'static str {
    match first_byte {
        0x15 | 0x16 => ": it looks like TLS, add --tls",
        b'H' => ": it looks like HTTP",
        _ => "",
    }
}

impl EchoError {
    /// The documented exit code (module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            EchoError::Rejected { .. } => exit::ECHO_REJECTED,
            EchoError::Aborted { .. }
            | EchoError::Closed { .. }
            | EchoError::Io { .. }
            | EchoError::NotDicom { .. }
            | EchoError::Protocol { .. } => exit::ECHO_ABORTED,
            EchoError::Tls { .. } => exit::ECHO_TLS,
            EchoError::Timeout { .. } => exit::ECHO_TIMEOUT,
            EchoError::Resolve { .. } | EchoError::Refused { .. } | EchoError::Connect { .. } => exit::ECHO_UNREACHABLE,
            EchoError::ContextRefused { .. } | EchoError::Status { .. } => exit::ECHO_FAILED,
            EchoError::Internal { .. } => exit::FAILURE,
        }
    }

    /// Classifies an I/O error of an established (TLS) stream: rustls'
    /// errors arrive wrapped in `io::Error` and are reported as TLS failures
    /// (e.g. the SCP's alert refusing our client certificate, which TLS 1.3
    /// delivers after the handshake).
    fn from_io(phase: Phase, e: io::Error) -> EchoError {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return EchoError::Tls { phase, reason: describe_tls_error(tls) };
        }
        let how = match e.kind() {
            io::ErrorKind::UnexpectedEof => "closed",
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
            io::ErrorKind::BrokenPipe => "closed",
            _ => return EchoError::Io { phase, source: e },
        };
        if phase == Phase::TlsHandshake {
            return EchoError::Tls {
                phase,
                reason: format!("the SCP {how} the connection (is this a plain DICOM port? try without --tls)"),
            };
        }
        EchoError::Closed { phase, how, hint: "" }
    }
}

/// Runs one C-ECHO exchange under `request.timeout`.
pub async fn c_echo(request: &EchoRequest) -> Result<Accepted, EchoError> {
    let started = Instant::now();
    let deadline = started + request.timeout;
    let tcp = connect(&request.host, request.port, deadline).await?;
    // Small PDUs, one request at a time: do not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(|source| EchoError::Io { phase: Phase::Connect, source })?;
    let (mut stream, tls): (Box<dyn association::Stream>, _) = match &request.tls {
        None => (Box::new(tcp), None),
        Some(t) => {
            let connector = tokio_rustls::TlsConnector::from(t.config.clone());
            let phase = Phase::TlsHandshake;
            let s = match timeout_at(deadline, connector.connect(t.server_name.clone(), tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(EchoError::from_io(phase, e)),
                Err(_) => return Err(EchoError::Timeout { phase }),
            };
            let (_, conn) = s.get_ref();
            let version = conn.protocol_version().map_or("TLS".to_owned(), tls_version_text);
            let suite = conn.negotiated_cipher_suite().map(|s| format!(" {:?}", s.suite())).unwrap_or_default();
            (Box::new(s), Some(format!("{version}{suite}")))
        }
    };
    let stream = &mut *stream;
    match association::associate(stream, &request.calling_ae, &request.called_ae, deadline).await {
        Ok(()) => {}
        Err(e @ EchoError::ContextRefused { .. }) => {
            // The association itself stands: end it politely.
            let _ = association::release(stream, deadline).await;
            return Err(e);
        }
        Err(EchoError::Closed { phase, how, .. }) if request.tls.is_none() => {
            // A TLS port drops a plain A-ASSOCIATE-RQ exactly like this; a
            // DICOM SCP that refuses us would say so with an A-ASSOCIATE-RJ.
            return Err(EchoError::Closed { phase, how, hint: " (is this a DICOM-TLS port? try --tls)" });
        }
        Err(e) => return Err(e),
    }
    let status = association::echo(stream, deadline).await?;
    let release_problem = association::release(stream, deadline).await.err();
    // close_notify for TLS, FIN for TCP; the result no longer matters.
    let _ = timeout_at(deadline, tokio::io::AsyncWriteExt::shutdown(stream)).await;
    if status != 0x0000 {
        return Err(EchoError::Status { status });
    }
    Ok(Accepted { peer, tls, elapsed: started.elapsed(), release_problem })
}

fn tls_version_text(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Resolves and connects, trying each address in turn (IPv6 and IPv4).
async fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, EchoError> {
    let addrs: Vec<SocketAddr> = match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(source)) => return Err(EchoError::Resolve { host: host.to_owned(), source }),
        Err(_) => return Err(EchoError::Timeout { phase: Phase::Resolve }),
    };
    let mut last = None;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(source)) if source.kind() == io::ErrorKind::ConnectionRefused => {
                last = Some(EchoError::Refused { addr })
            }
            Ok(Err(source)) => last = Some(EchoError::Connect { addr, source }),
            Err(_) => return Err(EchoError::Timeout { phase: Phase::Connect }),
        }
    }
    Err(last.unwrap_or_else(|| EchoError::Resolve {
        host: host.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address found"),
    }))
}

/// Runs `dicomgate echo`; returns the process exit code. It runs its own
/// single-threaded runtime (on a separate thread if called from inside one,
/// where blocking on a second runtime would panic).
pub fn echo_command(options: &EchoOptions) -> u8 {
    let request = match EchoRequest::from_options(options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dicomgate echo: {e}");
            return e.exit_code();
        }
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| s.spawn(|| run_and_report(&request)).join().unwrap_or(exit::FAILURE));
    }
    run_and_report(&request)
}

fn run_and_report(request: &EchoRequest) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dicomgate echo: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(c_echo(request)) {
        Ok(accepted) => {
            println!("Accepted");
            println!(
                "  {} -> {}@{} ({}), {} ms",
                request.calling_ae,
                request.called_ae,
                accepted.peer,
                accepted.tls.as_deref().unwrap_or("plain TCP, unsecured"),
                accepted.elapsed.as_millis()
            );
            if let Some(problem) = accepted.release_problem {
                eprintln!("dicomgate echo: warning: the echo succeeded, but {problem}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("dicomgate echo: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        let codes = [
            EchoError::Rejected { result: 1, origin: 1, reason: 3 }.exit_code(),
            EchoError::Aborted { phase: Phase::Echo, origin: 2, reason: 0 }.exit_code(),
            EchoError::Tls { phase: Phase::TlsHandshake, reason: String::new() }.exit_code(),
            EchoError::Timeout { phase: Phase::Associate }.exit_code(),
            EchoError::Refused { addr: SocketAddr::from(([127, 0, 0, 1], 1)) }.exit_code(),
            EchoError::Status { status: 0x0110 }.exit_code(),
        ];
        assert_eq!(codes, [3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn rejection_is_told_in_words() {
        let e = EchoError::Rejected { result: 1, origin: 1, reason: 3 };
        assert_eq!(
            e.to_string(),
            "association rejected: A-ASSOCIATE-RJ rejected-permanent, service-user, calling-AE-title-not-recognized (1/1/3)"
        );
        let a = EchoError::NotDicom { phase: Phase::Associate, first_byte: 0x15 };
        assert!(a.to_string().ends_with("add --tls"), "{a}");
    }
}
