//! Attack clients for the abuse suite: slowloris connections that keep
//! coming back until told to stop, and a connect-and-close flood. All on
//! loopback, bounded in count, each wait under a deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{raw, wire};

/// The slow ways of holding a connection open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// Plaintext listener: connect, send nothing.
    PlainSilent,
    /// Plaintext listener: an A-ASSOCIATE-RQ, one byte a second.
    PlainDrip,
    /// TLS listener: connect, send nothing (the handshake never starts).
    TlsSilent,
    /// TLS listener: a ClientHello, one byte a second.
    TlsHelloDrip,
    /// TLS listener: complete the handshake, then the RQ one byte a second.
    TlsRqDrip,
}

impl Slow {
    pub const ALL: [Slow; 5] =
        [Slow::PlainSilent, Slow::PlainDrip, Slow::TlsSilent, Slow::TlsHelloDrip, Slow::TlsRqDrip];

    pub fn on_tls_listener(self) -> bool {
        matches!(self, Slow::TlsSilent | Slow::TlsHelloDrip | Slow::TlsRqDrip)
    }
}

/// Shared state of a slowloris run.
#[derive(Default)]
pub struct Pressure {
    /// Connections currently open (connected and not yet closed by the gateway).
    pub open: AtomicUsize,
    /// Set to stop reconnecting; open connections still run to their close.
    pub stop: AtomicBool,
}

/// One slow connection's life: how long the gateway let it live.
#[derive(Debug, Clone, Copy)]
pub struct Life {
    pub kind: Slow,
    /// From TCP connect to the gateway's close; `None`: still open at `give_up`.
    pub lived: Option<Duration>,
}

/// Runs `kind` from `source` against `addr` over and over until `pressure.stop` is set;
/// each connection lasts until the gateway closes it (or `give_up` passes).
/// The first connection waits `start_after`, so that a large run ramps up
/// instead of overflowing the listener's accept queue: a connection the kernel
/// holds back there looks open to us long before the gateway has accepted it
/// and started its ACSE clock.
pub async fn slowloris(
    kind: Slow,
    source: IpAddr,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pressure: Arc<Pressure>,
    start_after: Duration,
    give_up: Duration,
) -> Vec<Life> {
    tokio::time::sleep(start_after).await;
    let mut lives = Vec::new();
    let rq = wire::associate_rq(1, 1);
    let hello = raw::client_hello(tls.clone());
    while !pressure.stop.load(Ordering::SeqCst) {
        let connect = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await
        };
        let Ok(tcp) = tokio::time::timeout(Duration::from_secs(10), connect).await else {
            panic!("{kind:?}: connect to {addr} timed out");
        };
        let tcp = tcp.unwrap_or_else(|e| panic!("{kind:?}: connect to {addr}: {e}"));
        let since = Instant::now();
        pressure.open.fetch_add(1, Ordering::SeqCst);
        let closed = match kind {
            Slow::PlainSilent | Slow::TlsSilent => drip(tcp, &[], since, give_up).await,
            Slow::PlainDrip => drip(tcp, &rq, since, give_up).await,
            Slow::TlsHelloDrip => drip(tcp, &hello, since, give_up).await,
            Slow::TlsRqDrip => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let handshake = tokio::time::timeout(give_up, TlsConnector::from(tls.clone()).connect(name, tcp));
                match handshake.await {
                    Ok(Ok(stream)) => drip(stream, &rq, since, give_up).await,
                    // The gateway closed during the handshake (its deadline covers TLS).
                    Ok(Err(_)) => Some(since.elapsed()),
                    Err(_) => None,
                }
            }
        };
        pressure.open.fetch_sub(1, Ordering::SeqCst);
        lives.push(Life { kind, lived: closed });
        if closed.is_none() {
            break;
        }
    }
    lives
}

/// Sends `bytes` one per second (nothing when empty) until the peer closes;
/// returns when it closed, measured from `since`.
async fn drip<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    bytes: &[u8],
    since: Instant,
    give_up: Duration,
) -> Option<Duration> {
    let deadline = since + give_up;
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(since.elapsed()),
                Ok(_) => {} // a TLS alert or an A-ABORT: keep reading to the close
            },
            _ = tick.tick(), if next < bytes.len() => {
                if s.write_all(&bytes[next..next + 1]).await.is_err() || s.flush().await.is_err() {
                    return Some(since.elapsed());
                }
                next += 1;
            }
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// The ways of connecting and closing at once in a flood.
#[derive(Debug, Clone, Copy)]
pub enum Flash {
    /// TCP connect to the TLS listener, close with FIN.
    TcpFin,
    /// TCP connect to the TLS listener, close with RST (SO_LINGER 0).
    TcpRst,
    /// Complete a TLS handshake, then close.
    TlsHandshake,
    /// TCP connect to the plaintext listener, close with RST.
    PlainRst,
}

impl Flash {
    pub fn of(i: usize) -> Flash {
        [Flash::TcpFin, Flash::TcpRst, Flash::TlsHandshake, Flash::PlainRst][i % 4]
    }
}

/// `count` connect-and-close connections, `parallel` at a time, from source
/// addresses 127.0.0.1–127.0.0.8 (so ephemeral ports do not run out in the
/// larger runs). Returns how many failed to connect.
pub async fn flood(
    count: usize,
    parallel: usize,
    tls_addr: SocketAddr,
    plain_addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (next, failed, tls) = (next.clone(), failed.clone(), tls.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let kind = Flash::of(i);
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8));
                let target = if matches!(kind, Flash::PlainRst) { plain_addr } else { tls_addr };
                let ok = tokio::time::timeout(Duration::from_secs(10), flash(kind, source, target, tls.clone()))
                    .await
                    .is_ok_and(|r| r.is_ok());
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("flood worker");
    }
    failed.load(Ordering::SeqCst)
}

async fn flash(kind: Flash, source: IpAddr, target: SocketAddr, tls: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target).await?;
    match kind {
        Flash::TcpFin => {
            let mut tcp = tcp;
            tcp.shutdown().await?;
        }
        Flash::TcpRst | Flash::PlainRst => tcp.set_zero_linger()?,
        Flash::TlsHandshake => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut s = TlsConnector::from(tls).connect(name, tcp).await?;
            // close_notify and FIN; the gateway may already have gone.
            let _ = s.shutdown().await;
        }
    }
    Ok(())
}

/// Reads a size from the environment (the larger runs of `scripts/abuse.sh`),
/// else the CI default.
pub fn size_from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// TcpExt ListenDrops of /proc/net/netstat (system-wide): handshakes the
/// kernel dropped because a listener's accept queue was full.
pub fn listen_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenDrops")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
