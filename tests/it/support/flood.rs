//! The attacks of issue 20, as clients: a flood of A-ASSOCIATE-RQs that
//! never close their side ([`rq_flood`]), connections from many source
//! addresses that reconnect as soon as the gateway closes them
//! ([`Reconnecting`]), garbage instead of a TLS ClientHello ([`garbage_tls`]),
//! and the peer that must still get through: one that sends its RQ a
//! fixed time after connecting ([`prompt_association`]). Loopback only;
//! every loop is bounded in count and every wait has a deadline.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::raw::{self, connect_from, tls_over, Next};
use super::{hostile::Prng, wire};

/// What one connection of a flood saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// A-ASSOCIATE-RJ (result, source, reason).
    Rejected(u8, u8, u8),
    Accepted,
    Aborted,
    /// Closed (or the TLS handshake refused) without a PDU.
    Closed,
    /// Neither within the deadline.
    Nothing,
    /// Could not connect.
    ConnectFailed,
}

/// A finished [`rq_flood`].
#[derive(Debug, Default)]
pub struct FloodReport {
    pub seen: BTreeMap<Seen, usize>,
    /// From the first connect to the last.
    pub took: Duration,
    pub started: usize,
    /// From the answer to the gateway's FIN, at most.
    pub longest_after_answer: Duration,
}

impl FloodReport {
    /// Connections started per second.
    pub fn rate(&self) -> f64 {
        self.started as f64 / self.took.as_secs_f64().max(1e-3)
    }

    pub fn count(&self, seen: Seen) -> usize {
        self.seen.get(&seen).copied().unwrap_or(0)
    }
}

/// `count` connections from `source` to `addr`, started `rate` per second
/// (a task each), each sending `rq` (after a TLS handshake with `tls`) and
/// then never closing: it reads until the gateway's FIN and keeps its side
/// open until `hold` after the answer, as a peer that never closes would
/// (the gateway's farewell lingers for such a peer).
pub async fn rq_flood(
    addr: SocketAddr,
    source: IpAddr,
    rate: u32,
    count: usize,
    rq: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
    hold: Duration,
) -> FloodReport {
    let rq = Arc::new(rq);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        tick.tick().await;
        let (rq, tls) = (rq.clone(), tls.clone());
        tasks.push(tokio::spawn(async move { one_rq(addr, source, &rq, tls, hold).await }));
    }
    let took = started.elapsed();
    let mut report = FloodReport { took, started: count, ..FloodReport::default() };
    for t in tasks {
        let (seen, lived) = super::within(hold * 2, "a flood connection", t).await.expect("flood task");
        *report.seen.entry(seen).or_default() += 1;
        report.longest_after_answer = report.longest_after_answer.max(lived);
    }
    report
}

async fn one_rq(
    addr: SocketAddr,
    source: IpAddr,
    rq: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
    hold: Duration,
) -> (Seen, Duration) {
    let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(10), connect_from(source, addr)).await else {
        return (Seen::ConnectFailed, Duration::ZERO);
    };
    let _ = tcp.set_nodelay(true);
    match tls {
        None => rq_and_hold(tcp, rq, hold).await,
        Some(config) => match tokio::time::timeout(Duration::from_secs(10), tls_over(tcp, config)).await {
            Ok(Ok(s)) => rq_and_hold(s, rq, hold).await,
            _ => (Seen::Closed, Duration::ZERO),
        },
    }
}

async fn rq_and_hold<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, rq: &[u8], hold: Duration) -> (Seen, Duration) {
    if raw::send(&mut s, rq).await.is_err() {
        return (Seen::Closed, Duration::ZERO);
    }
    let seen = match raw::read_pdu(&mut s, hold).await {
        Next::Pdu(p) if p.pdu_type == 0x02 => Seen::Accepted,
        Next::Pdu(p) => match (p.rejection(), p.abort()) {
            (Some((r, s, why)), _) => Seen::Rejected(r, s, why),
            _ => Seen::Aborted,
        },
        Next::Closed { .. } | Next::Failed { .. } => return (Seen::Closed, Duration::ZERO),
        Next::TimedOut { .. } => return (Seen::Nothing, hold),
    };
    // Never close: read to the gateway's FIN, then keep our side open.
    let answered = Instant::now();
    let mut sink = [0u8; 512];
    let fin = loop {
        match tokio::time::timeout_at(answered + hold, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break answered.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => break hold,
        }
    };
    tokio::time::sleep_until(answered + hold).await;
    (seen, fin)
}

/// 127.1.X.Y: `n` attacker addresses inside 127.0.0.0/8, none of them
/// 127.0.0.x (the suites' own peers).
pub fn attacker_addresses(n: usize) -> Vec<IpAddr> {
    (0..n as u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x7F01_0000 + 1 + i))).collect()
}

/// How a reconnecting attacker holds its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// TCP connect, then nothing.
    Silent,
    /// A complete TLS handshake, then nothing.
    TlsSilent,
}

/// Attackers that hold a connection until the gateway closes it and then
/// reconnect at once, each from its own address in turn, until stopped.
pub struct Reconnecting {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Reconnecting {
    /// `workers` connections at a time, cycling over `sources`.
    pub fn start(
        hold: Hold,
        sources: Vec<IpAddr>,
        workers: usize,
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Reconnecting {
        let (stop, connects) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let sources = Arc::new(sources);
        let workers = (0..workers)
            .map(|w| {
                let (stop, connects, sources, tls) = (stop.clone(), connects.clone(), sources.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let source = sources[(w + round * 7919) % sources.len()];
                        round += 1;
                        let Ok(Ok(tcp)) =
                            tokio::time::timeout(Duration::from_secs(5), connect_from(source, addr)).await
                        else {
                            continue;
                        };
                        connects.fetch_add(1, Ordering::Relaxed);
                        match hold {
                            Hold::Silent => until_closed(tcp, &stop).await,
                            Hold::TlsSilent => {
                                if let Ok(Ok(s)) =
                                    tokio::time::timeout(Duration::from_secs(5), tls_over(tcp, tls.clone())).await
                                {
                                    until_closed(s, &stop).await
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Reconnecting { stop, connects, workers, started: Instant::now() }
    }

    /// Connections made so far.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    /// Stops reconnecting, closes what is open; returns (connections, per second).
    pub async fn stop(self) -> (usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let took = self.started.elapsed();
        for w in self.workers {
            super::within(Duration::from_secs(20), "an attacker to stop", w).await.expect("attacker task");
        }
        let n = self.connects.load(Ordering::Relaxed);
        (n, n as f64 / took.as_secs_f64())
    }
}

/// Reads (and drops) until the peer closes or `stop` is set.
async fn until_closed<S: AsyncRead + Unpin>(mut s: S, stop: &AtomicBool) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            _ => {}
        }
    }
}

/// [`prompt_association`] on a thread (and runtime) of its own, as a peer
/// on another machine would be: the attackers' tasks in this process must
/// not delay its ClientHello after its TCP connect, which no real client
/// does (its ClientHello leaves with the handshake's last ACK).
pub async fn prompt_association_apart(
    addr: SocketAddr,
    source: IpAddr,
    delay: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Duration, String> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("peer runtime");
        rt.block_on(prompt_association(addr, source, delay, tls))
    })
    .await
    .expect("peer thread")
}

/// One association from `source` whose RQ goes out `delay` after the TCP
/// connect (TLS in between), released when accepted. `Err`: what happened
/// instead, in words.
pub async fn prompt_association(
    addr: SocketAddr,
    source: IpAddr,
    delay: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let tcp = match tokio::time::timeout(Duration::from_secs(10), connect_from(source, addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect: timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    let mut s = match tokio::time::timeout(Duration::from_secs(10), tls_over(tcp, tls)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("TLS handshake failed after {:?}: {e}", started.elapsed())),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    tokio::time::sleep_until(started + delay).await;
    if raw::send(&mut s, &wire::associate_rq(1, 1)).await.is_err() {
        return Err(format!("closed before the RQ ({:?} after connect)", started.elapsed()));
    }
    match raw::read_pdu(&mut s, Duration::from_secs(10)).await {
        Next::Pdu(p) if p.pdu_type == 0x02 => {}
        other => return Err(format!("no A-ASSOCIATE-AC: {other:?}")),
    }
    let took = started.elapsed();
    raw::release(&mut s).await;
    let _ = s.shutdown().await;
    Ok(took)
}

/// `n` connections from `source`, `parallel` at a time, each sending 512
/// random bytes instead of a ClientHello and reading until the gateway
/// closes. Returns how many ended with the gateway's close within 10 s.
pub async fn garbage_tls(addr: SocketAddr, source: IpAddr, n: usize, parallel: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let seeds = Arc::new(Mutex::new(Prng::new(20)));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, closed, seeds) = (next.clone(), closed.clone(), seeds.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    let mut junk = seeds.lock().expect("prng").bytes(512);
                    // No TLS record type (0x14–0x17) and no PDU type: garbage.
                    junk[0] |= 0x80;
                    let Ok(Ok(mut tcp)) =
                        tokio::time::timeout(Duration::from_secs(10), connect_from(source, addr)).await
                    else {
                        continue;
                    };
                    let _ = tcp.write_all(&junk).await;
                    let mut buf = [0u8; 256];
                    let end = tokio::time::timeout(Duration::from_secs(10), async {
                        loop {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    });
                    if end.await.is_ok() {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        super::within(Duration::from_secs(120), "the garbage flood", w).await.expect("garbage worker");
    }
    closed.load(Ordering::SeqCst)
}

/// Samples `pid`'s open file descriptors every 20 ms until `stop`; the peak.
pub fn sample_fds(pid: u32, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
            peak = peak.max(n);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    })
}
