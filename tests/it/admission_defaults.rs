//! Issue 11, at defaults (no `max_connections`, no `timeouts`): hundreds of
//! silent and slow connections from allowed addresses do not keep a real
//! DCMTK `echoscu +tls` out (the pre-association budget evicts the oldest of
//! the busy source), and a flood from a denied address is counted exactly
//! while the log gets a bounded number of summary lines.
//!
//! Loopback only; every loop is bounded in count and every wait has a
//! deadline; the daemon and `storescp` are killed by their PIDs on drop.

use crate::support;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::attack::listen_drops;
use crate::support::daemon::{require_nofile, Daemon, Scrape};
use crate::support::dcmtk::{assert_echo, cloud_echoscu};
use crate::support::tools::{output_text, ScpProcess};
use crate::support::wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Listeners `tls` and `plain`, allowing 127.0.0.1 and 127.0.0.2 only, with
/// no limit or timeout key: the defaults are the product.
fn write_config(dir: &Path, scp: SocketAddr) -> PathBuf {
    let policy = "    allow: [127.0.0.1/32, 127.0.0.2/32]\n    calling_ae_titles: [CLOUD]\n    routes: {PACS: pacs}\n";
    let yaml = format!(
        "log: {{format: json, level: info}}\nadmin: {{listen: \"127.0.0.1:0\"}}\nbackends:\n  pacs:\n    \
         ae_title: PACS\n    servers: [\"{scp}\"]\n    health_check: {{mode: \"off\"}}\nlisteners:\n  \
         tls:\n    listen: 127.0.0.1:0\n    tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}\n{policy}  \
         plain:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n{policy}"
    );
    assert!(!yaml.contains("max_connections") && !yaml.contains("timeouts"), "defaults only");
    let path = dir.join("dicomgate.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

async fn start(dir: &Path) -> (Daemon, ScpProcess) {
    support::daemon::start_with_storescp(dir, write_config).await
}

/// The hostile peers of the first test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// TCP to the TLS listener, then nothing.
    TcpSilent,
    /// A complete TLS handshake, then nothing.
    TlsSilent,
    /// A complete TLS handshake, then the A-ASSOCIATE-RQ one byte a second.
    TlsDrip,
    /// Plaintext listener: the A-ASSOCIATE-RQ one byte a second.
    PlainDrip,
}

impl Hostile {
    const ALL: [Hostile; 4] = [Hostile::TcpSilent, Hostile::TlsSilent, Hostile::TlsDrip, Hostile::PlainDrip];
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Holds one hostile connection until the gateway closes it or `stop`.
/// `connected` counts those whose TCP connect (and handshake, for TLS) completed.
async fn hold(
    kind: Hostile,
    from: IpAddr,
    to: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    connected: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(30), connect_from(from, to)).await else {
        panic!("{kind:?} from {from}: connect to {to} failed or timed out");
    };
    let rq = wire::associate_rq(1, 1);
    match kind {
        Hostile::TcpSilent => {
            connected.fetch_add(1, Ordering::SeqCst);
            drip(tcp, &[], stop).await
        }
        Hostile::PlainDrip => {
            connected.fetch_add(1, Ordering::SeqCst);
            drip(tcp, &rq, stop).await
        }
        Hostile::TlsSilent | Hostile::TlsDrip => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let handshake = tokio_rustls::TlsConnector::from(client).connect(name, tcp);
            // An evicted connection fails its handshake: that is the gateway's answer.
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await {
                connected.fetch_add(1, Ordering::SeqCst);
                drip(tls, if kind == Hostile::TlsDrip { &rq } else { &[] }, stop).await
            }
        }
    }
}

/// Sends `bytes` one a second until the peer closes or `stop`.
async fn drip<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8], stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut next, mut buf) = (0, [0u8; 256]);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            _ = tick.tick(), if next < bytes.len() => {
                if s.write_all(&bytes[next..=next]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                next += 1;
            }
        }
    }
}

fn evictions(s: &Scrape, listener: &str, reason: &str) -> u64 {
    s.value("dicomgate_preassociation_evictions_total", &[("listener", listener), ("reason", reason)]) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_silent_and_slow_allowed_peers_do_not_keep_echoscu_out_at_defaults() {
    require_tool!("echoscu", "storescp");
    let n = support::attack::size_from_env("ADMISSION_HOSTILE", 400);
    require_nofile(2 * n as u64 + 256);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) = start(dir.path()).await;
    let (tls_addr, plain_addr) = (daemon.addr("tls"), daemon.addr("plain"));
    let client = wire::insecure_client();

    // Half from 127.0.0.1 (the same address as echoscu), half from 127.0.0.2.
    let (connected, stop) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
    let drops_before = listen_drops();
    // Connections start evenly over the ramp (at most 1.5 s), so that the
    // larger sizes of scripts/abuse.sh do not only measure the accept queue.
    let ramp = (Duration::from_micros(300) * n as u32).min(Duration::from_millis(1500));
    let mut per_listener = [[0u64; 2]; 2]; // [tls, plain][source .1, .2]
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let kind = Hostile::ALL[i % Hostile::ALL.len()];
            let from = (i / Hostile::ALL.len()) % 2;
            let on_plain = kind == Hostile::PlainDrip;
            per_listener[usize::from(on_plain)][from] += 1;
            let to = if on_plain { plain_addr } else { tls_addr };
            let (client, connected, stop) = (client.clone(), connected.clone(), stop.clone());
            let start_after = ramp * i as u32 / n as u32;
            tokio::spawn(async move {
                tokio::time::sleep(start_after).await;
                hold(kind, source(1 + from as u8), to, client, connected, stop).await
            })
        })
        .collect();

    // Every hostile connection was accepted: it is open, or was evicted;
    // or the kernel dropped its handshake (accept queue full at the larger sizes).
    let ramp_started = Instant::now();
    loop {
        let s = daemon.scrape().await;
        let accepted = s.active("tls") as u64
            + s.active("plain") as u64
            + s.connections("tls", "limit")
            + s.connections("plain", "limit");
        let dropped = listen_drops().saturating_sub(drops_before);
        // A dropped handshake is retried by the client's kernel after 1, 3, 7 s:
        // give those 10 s before going on without them.
        let retried = ramp_started.elapsed() >= ramp + Duration::from_secs(10);
        if accepted >= n as u64 || (accepted + dropped >= n as u64 && retried) {
            break;
        }
        assert!(
            ramp_started.elapsed() < Duration::from_secs(30),
            "only {accepted} of {n} hostile connections accepted ({dropped} kernel drops):\n{}",
            s.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = daemon.scrape().await;
    let open_before = before.active("tls") + before.active("plain");
    let handshaken = connected.load(Ordering::SeqCst);

    let echo_started = Instant::now();
    let (tls_echo, plain_echo) = tokio::join!(
        cloud_echoscu(tls_addr, true, Duration::from_secs(40)),
        cloud_echoscu(plain_addr, false, Duration::from_secs(40))
    );
    let echo_took = echo_started.elapsed();
    let dropped = listen_drops().saturating_sub(drops_before);
    // An evicted connection's task counts its `limit` outcome a moment after
    // the evictor counted the eviction.
    let settled = Instant::now();
    let after = loop {
        let s = daemon.scrape().await;
        let counted = |l| s.connections(l, "limit") == evictions(&s, l, "source_cap") + evictions(&s, l, "budget_full");
        if (counted("tls") && counted("plain")) || settled.elapsed() > Duration::from_secs(5) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    for t in tasks {
        support::within(Duration::from_secs(20), "hostile connections to end", t).await.expect("hostile task");
    }
    eprintln!(
        "admission at defaults: {n} hostile connections ({} TLS-side, {} plaintext; half from 127.0.0.1, half from \
         127.0.0.2), {handshaken} connected (TLS: handshake done), {open_before} open when echoscu started; echoscu +tls and plain together took {echo_took:?}; \
         evictions tls {}+{} (source_cap+budget_full) plain {}+{}; kernel listen drops {dropped}",
        per_listener[0][0] + per_listener[0][1],
        per_listener[1][0] + per_listener[1][1],
        evictions(&after, "tls", "source_cap"),
        evictions(&after, "tls", "budget_full"),
        evictions(&after, "plain", "source_cap"),
        evictions(&after, "plain", "budget_full"),
    );
    for (echo, tls) in [(&tls_echo, true), (&plain_echo, false)] {
        assert!(
            echo.status.success(),
            "echoscu (tls {tls}) at defaults under {n} hostile peers failed:\n{}",
            output_text(echo)
        );
    }
    assert_eq!(after.connections("tls", "forwarded"), 1, "{}", after.0);
    assert_eq!(after.connections("plain", "forwarded"), 1, "{}", after.0);

    // Each listener's budget is 256 (its default max_connections), a
    // source's share 64. The connections beyond the budget (echoscu's
    // included) must have been evicted; and no source is cut below 63 of its
    // own (trimming stops there, and a full budget evicts from the busiest of
    // the two sources, which holds 128 or more). Which rule evicted depends
    // on timing; the bounds do not.
    for (i, listener) in ["tls", "plain"].into_iter().enumerate() {
        let evicted = evictions(&after, listener, "source_cap") + evictions(&after, listener, "budget_full");
        let lower = (per_listener[i].iter().sum::<u64>() + 1).saturating_sub(256 + dropped);
        let upper: u64 = per_listener[i].iter().map(|c| c.saturating_sub(63)).sum();
        assert!((lower..=upper).contains(&evicted), "{listener}: {evicted} evictions, expected {lower}..={upper}");
        assert_eq!(after.connections(listener, "limit"), evicted, "{listener}: evictions are its limit outcomes");
    }
    // Evictions are summarised, not one line each.
    let log = daemon.log_text();
    let refusal_lines = log.lines().filter(|l| l.contains("dicomgate::refusals")).count();
    assert!(refusal_lines <= 8, "{refusal_lines} refusal lines:\n{log}");
    daemon.assert_running();
    scp.assert_running();
}

/// (lines, sum of their counts) of the refusal log for `source`.
fn refusal_lines(log: &str, source: &str) -> (usize, u64) {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "dicomgate::refusals" && v["source"] == source)
        .collect();
    // The first line stands for one refusal; summaries carry a count.
    let total = lines.iter().map(|v| v["count"].as_u64().unwrap_or(1)).sum();
    (lines.len(), total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_address_flood_is_counted_exactly_and_logged_as_summaries() {
    require_tool!("echoscu", "storescp");
    let n = support::attack::size_from_env("ADMISSION_DENIED", 3000);
    let parallel = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) = start(dir.path()).await;
    let tls_addr = daemon.addr("tls");
    let denied = source(3);

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    let mut tcp = connect_from(denied, tls_addr).await.expect("connect from 127.0.0.3");
                    // The gateway closes without a byte.
                    let mut buf = [0u8; 16];
                    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
                    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "denied connection: {read:?}");
                }
            })
        })
        .collect();
    for w in workers {
        support::within(Duration::from_secs(120), "the denied flood", w).await.expect("flood worker");
    }
    let took = started.elapsed();

    let s = daemon.scrape().await;
    assert_eq!(s.connections("tls", "denied_ip"), n as u64, "{}", s.0);
    assert_eq!(s.ended("tls"), n as u64, "only denials on `tls`:\n{}", s.0);

    // The summary comes within one interval: the log's counts add up to n.
    let deadline = Instant::now() + Duration::from_secs(25);
    let (lines, total) = loop {
        let (lines, total) = refusal_lines(&daemon.log_text(), "127.0.0.3");
        if total >= n as u64 || Instant::now() >= deadline {
            break (lines, total);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = daemon.log_text();
    let all_lines = log.lines().count();
    eprintln!(
        "denied flood: {n} connections from 127.0.0.3 in {took:?}; counter {}; {lines} refusal lines for it \
         (counts add up to {total}); {all_lines} log lines in all",
        s.connections("tls", "denied_ip")
    );
    assert_eq!(total, n as u64, "the refusal log's counts:\n{log}");
    // The first at once, then one summary per 10 s interval the flood touched.
    let intervals = took.as_secs() / 10 + 2;
    assert!(lines as u64 <= 1 + intervals, "{lines} refusal lines for a {took:?} flood:\n{log}");
    assert!(!log.contains("\"outcome\":\"denied_ip\""), "an audit line per denied connection:\n{log}");

    assert_echo(tls_addr, true).await;
    daemon.assert_running();
    scp.assert_running();
}
