//! The three load generators. Each is bounded in count and in time, and
//! prints one `key=value` line for bench/run.sh to parse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{Client, Conn};
use crate::pdu;

pub struct Target {
    pub addr: SocketAddr,
    pub calling: String,
    pub called: String,
}

async fn associate(conn: &mut Conn, target: &Target) -> std::io::Result<()> {
    conn.write_all(&pdu::associate_rq(&target.calling, &target.called, 0)).await?;
    conn.flush().await?;
    let (kind, _) = pdu::read_pdu(conn, 1 << 20).await?;
    if kind != pdu::ASSOCIATE_AC {
        return Err(std::io::Error::other(format!("association refused: PDU type 0x{kind:02X}")));
    }
    Ok(())
}

async fn release(conn: &mut Conn) -> std::io::Result<()> {
    conn.write_all(&pdu::RELEASE_RQ_PDU).await?;
    conn.flush().await?;
    loop {
        let (kind, _) = pdu::read_pdu(conn, 16 << 20).await?;
        match kind {
            pdu::RELEASE_RP => break,
            pdu::P_DATA => continue,
            other => return Err(std::io::Error::other(format!("PDU type 0x{other:02X} instead of A-RELEASE-RP"))),
        }
    }
    // close_notify, then wait for the peer's close.
    conn.shutdown().await?;
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut rest)).await;
    Ok(())
}

/// Associates, streams `total` bytes of P-DATA-TF PDUs of `pdu_length`, then
/// releases. The clock runs from the first P-DATA byte to the A-RELEASE-RP,
/// so every byte has reached the sink.
pub async fn raw(client: &Client, target: &Target, total: u64, pdu_length: usize) -> std::io::Result<()> {
    let one = pdu::bulk_pdata(pdu_length);
    let mut conn = client.connect(target.addr).await?;
    associate(&mut conn, target).await?;
    let count = total.div_ceil(one.len() as u64).max(1);
    let start = Instant::now();
    for _ in 0..count {
        conn.write_all(&one).await?;
    }
    conn.flush().await?;
    release(&mut conn).await?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = count * one.len() as u64;
    println!(
        "raw bytes={bytes} pdus={count} pdu_length={pdu_length} seconds={secs:.4} mb_per_s={:.1} tls={}",
        bytes as f64 / secs / 1e6,
        conn.describe()
    );
    Ok(())
}

/// `count` associations (TLS connect, A-ASSOCIATE, C-ECHO, A-RELEASE, close),
/// `concurrency` at a time, within `limit`.
pub async fn assoc(
    client: Arc<Client>,
    target: Arc<Target>,
    count: u64,
    concurrency: usize,
    limit: Duration,
) -> std::io::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limit;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, target, next, errors) = (client.clone(), target.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut describe = String::new();
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let t0 = Instant::now();
                let one = async {
                    let mut conn = client.connect(target.addr).await?;
                    associate(&mut conn, &target).await?;
                    conn.write_all(&pdu::echo_rq(1)).await?;
                    conn.flush().await?;
                    let (kind, _) = pdu::read_pdu(&mut conn, 1 << 20).await?;
                    if kind != pdu::P_DATA {
                        return Err(std::io::Error::other("no C-ECHO-RSP"));
                    }
                    release(&mut conn).await?;
                    Ok::<_, std::io::Error>(conn.describe())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(d)) => {
                        latencies.push(t0.elapsed());
                        describe = d;
                    }
                    Ok(Err(e)) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("association failed: {e}");
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (latencies, describe)
        }));
    }
    let mut latencies = Vec::new();
    let mut describe = String::new();
    for t in tasks {
        if let Ok((l, d)) = t.await {
            latencies.extend(l);
            if !d.is_empty() {
                describe = d;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "assoc ok={} errors={} concurrency={concurrency} seconds={secs:.3} per_s={:.1} p50_ms={:.2} p99_ms={:.2} tls={describe}",
        latencies.len(),
        errors.load(Ordering::Relaxed),
        latencies.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}

/// Opens `count` connections (TLS handshake, plus A-ASSOCIATE when
/// `associate_too`), prints `idle ready=…`, holds them for `hold`, closes.
/// The connections come from `sources` loopback addresses in turn
/// (127.0.0.1, 127.0.0.2, …): dicomgate caps what one address may hold
/// before its A-ASSOCIATE-RQ, and the memory benchmark measures connections
/// that are all held.
pub async fn idle(
    client: Arc<Client>,
    target: Arc<Target>,
    count: usize,
    associate_too: bool,
    hold: Duration,
    sources: u8,
) -> std::io::Result<()> {
    let start = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (client, target, permits) = (client.clone(), target.clone(), permits.clone());
        let source = (sources > 1).then(|| std::net::IpAddr::from([127, 0, 0, 1 + (i % sources as usize) as u8]));
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let one = async {
                let mut conn = client.connect_from(target.addr, source).await?;
                if associate_too {
                    associate(&mut conn, &target).await?;
                }
                Ok::<_, std::io::Error>(conn)
            };
            match tokio::time::timeout(Duration::from_secs(20), one).await {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(e)) => {
                    eprintln!("idle connection failed: {e}");
                    None
                }
                Err(_) => None,
            }
        }));
    }
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            conns.push(c);
        }
    }
    println!("idle ready={} failed={} seconds={:.2}", conns.len(), count - conns.len(), start.elapsed().as_secs_f64());
    tokio::time::sleep(hold).await;
    drop(conns);
    Ok(())
}
