//! Issue 20: an allowed peer, an AE-title guesser or an off-list scanner
//! cannot deny service. The real `dicomgate run`, at default limits and
//! timeouts (no `max_connections`, no `timeouts`; `guessing` only where the
//! test is about it), against the attacks that worked on the release before:
//!
//! - a flood of A-ASSOCIATE-RQs with an unknown calling AE title that never
//!   close their side, while 20 real `echoscu` associations must succeed
//!   (a refused RQ held an association slot through its farewell);
//! - the same with every slot taken (RJ 2/3/2): open file descriptors stay
//!   bounded (they grew with the refusal rate × the 3 s farewell);
//! - 64 connections from outside `admin.allow`, held and reopened, while
//!   `/readyz` from an allowed address must answer within a second;
//! - 1,500 garbage-TLS connections from an allowed address: counted
//!   exactly, a bounded log and a bounded number of ATNA messages whose
//!   counts add up.
//!
//! CI runs these sizes; `scripts/abuse.sh` runs them with `DICOMGATE_BINARY`
//! unset (this build) at larger sizes. Loopback only; every loop is bounded
//! in count and every wait has a deadline; the daemon, `storescp` and
//! `rsyslogd` are killed by their PIDs when a test ends.

use crate::support;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::attack::size_from_env;
use crate::support::daemon::{require_nofile, Daemon};
use crate::support::dcmtk::cloud_echoscu;
use crate::support::flood::{rq_flood, sample_fds, Seen};
use crate::support::raw::{self, ae, Next};
use crate::support::tools::{output_text, ScpProcess};
use crate::support::wire;

/// How long a flood connection keeps its side open after the gateway's
/// answer: longer than the gateway's whole farewell (3 s).
const HOLD: Duration = Duration::from_secs(4);

pub(crate) fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// One TLS listener `store` admitting 127.0.0.0/8, calling AE `CLOUD`, `PACS`
/// → `scp`; no limit or timeout key unless `extra` (listener keys) says so;
/// the admin endpoint for 127.0.0.1 only; `audit` appended as is.
pub(crate) fn config(dir: &Path, scp: SocketAddr, extra: &str, audit: &str) -> PathBuf {
    let yaml = format!(
        "log: {{format: json, level: info}}\nadmin: {{listen: \"127.0.0.1:0\", allow: [127.0.0.1/32]}}\n{audit}\
         backends:\n  pacs:\n    ae_title: PACS\n    servers: [\"{scp}\"]\n    health_check: {{mode: \"off\"}}\n\
         listeners:\n  store:\n    listen: 127.0.0.1:0\n    tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}\n    \
         allow: [127.0.0.0/8]\n    calling_ae_titles: [CLOUD]\n    routes: {{PACS: pacs}}\n{extra}"
    );
    let path = dir.join("dicomgate.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

async fn start(dir: &Path, extra: &'static str) -> (Daemon, ScpProcess) {
    support::daemon::start_with_storescp(dir, move |d, scp| config(d, scp, extra, "")).await
}

/// The RQ of an AE-title guesser: called `PACS`, calling `INTRUDER`.
pub(crate) fn intruder_rq() -> Vec<u8> {
    let mut rq = wire::associate_rq(1, 1);
    rq[26..42].copy_from_slice(&ae("INTRUDER"));
    rq
}

/// The bad-AE flood of finding 1, from 127.0.0.2, while 127.0.0.1 runs 20
/// `echoscu` associations one after another. Returns the figures line.
async fn bad_ae_flood(extra: &'static str, guessing: bool) {
    require_tool!("echoscu", "storescp");
    let rate = size_from_env("DENY_RQ_RATE", 250) as u32;
    let count = rate as usize * size_from_env("DENY_RQ_SECONDS", 6);
    require_nofile(HOLD.as_secs() * 2 * rate as u64 + 512);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) = start(dir.path(), extra).await;
    let addr = daemon.addr("store");
    let fds_before = daemon.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_fds(daemon.pid(), stop.clone());
    let tls = Some(wire::insecure_client());
    let flood = tokio::spawn(rq_flood(addr, source(2), rate, count, intruder_rq(), tls, HOLD));

    // Let the flood build up (at the old release, 120/s filled every slot).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let echoes_started = Instant::now();
    let mut failed = Vec::new();
    for i in 0..20 {
        let out = cloud_echoscu(addr, true, Duration::from_secs(30)).await;
        if !out.status.success() {
            failed.push(format!("echo {i}: {}", output_text(&out)));
        }
    }
    let echoes_took = echoes_started.elapsed();
    let flooding = !flood.is_finished();
    let report = support::within(Duration::from_secs(60), "the flood", flood).await.expect("flood");
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.expect("fd sampler");
    let scrape = daemon.wait_idle(&["store"], Duration::from_secs(30)).await;
    let skipped = scrape.value("dicomgate_refusal_farewells_skipped_total", &[("listener", "store")]);
    eprintln!(
        "bad-AE flood ({}): {count} RQs from 127.0.0.2 at {:.0}/s, never closing: {:?}; the gateway's FIN came \
         within {:?} of its answer; 20 echoscu from 127.0.0.1 in {echoes_took:?} (flood still running at the end: \
         {flooding}): {} failed; fds {fds_before} → peak {peak}; farewells skipped {skipped}; outcomes: \
         rejected_calling_ae {} blocked {} forwarded {}",
        if guessing { "guessing protection at its defaults" } else { "guessing: {enabled: false}" },
        report.rate(),
        report.seen,
        report.longest_after_answer,
        failed.len(),
        scrape.connections("store", "rejected_calling_ae"),
        scrape.connections("store", "blocked"),
        scrape.connections("store", "forwarded"),
    );
    assert!(failed.is_empty(), "{} of 20 echoes failed under the flood:\n{}", failed.len(), failed.join("\n"));
    assert!(report.rate() >= 200.0, "the flood ran at {:.0}/s, below the 200/s of the finding", report.rate());
    assert!(flooding, "the flood was over before the 20 echoes were");
    assert_eq!(scrape.connections("store", "forwarded"), 20, "{}", scrape.0);
    let (refused, blocked) =
        (scrape.connections("store", "rejected_calling_ae"), scrape.connections("store", "blocked"));
    assert_eq!(refused + blocked, count as u64, "every flood connection counted once:\n{}", scrape.0);
    if guessing {
        assert!(blocked > 0 && refused >= 10, "the guesser was not blocked:\n{}", scrape.0);
    } else {
        assert_eq!(report.count(Seen::Rejected(1, 1, 3)), count, "every RQ answered with RJ 1/1/3: {:?}", report.seen);
        // The farewells in progress, and what is in the budget, at most.
        assert!(peak <= fds_before + 64 + 256, "fds {fds_before} → {peak} under the flood");
    }
    daemon.assert_running();
    scp.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ae_flood_that_never_closes_does_not_keep_twenty_associations_out() {
    bad_ae_flood("", true).await;
}

/// The same with the guessing protection off: the slots themselves must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ae_flood_without_guessing_protection_holds_no_slot_and_bounded_fds() {
    bad_ae_flood("    guessing: {enabled: false}\n", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rj_storm_with_every_slot_taken_keeps_file_descriptors_bounded() {
    require_tool!("storescp");
    // The test is about the limit: one slot, so one held association fills it
    // (budget 32, farewell cap 8).
    let rate = size_from_env("DENY_RQ_RATE", 250) as u32;
    let count = rate as usize * size_from_env("DENY_RQ_SECONDS", 6);
    require_nofile(HOLD.as_secs() * 2 * rate as u64 + 512);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) = start(dir.path(), "    max_connections: 1\n").await;
    let addr = daemon.addr("store");
    let client = wire::insecure_client();
    let mut held = raw::tls_connect(addr, client.clone()).await.expect("TLS");
    raw::send(&mut held, &wire::associate_rq(1, 1)).await.expect("RQ");
    assert!(matches!(raw::read_pdu(&mut held, support::PROMPT).await, Next::Pdu(p) if p.pdu_type == 0x02));
    let fds_before = daemon.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_fds(daemon.pid(), stop.clone());
    let report = rq_flood(addr, source(2), rate, count, wire::associate_rq(1, 1), Some(client), HOLD).await;
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.expect("fd sampler");
    raw::release(&mut held).await;
    drop(held);
    let scrape = daemon.wait_idle(&["store"], Duration::from_secs(30)).await;
    let skipped = scrape.value("dicomgate_refusal_farewells_skipped_total", &[("listener", "store")]);
    eprintln!(
        "RJ 2/3/2 storm: {count} RQs at {:.0}/s, never closing: {:?}; FIN within {:?} of the RJ; fds {fds_before} \
         → peak {peak} (budget 32 + farewell cap 8); farewells skipped {skipped}",
        report.rate(),
        report.seen,
        report.longest_after_answer
    );
    // Each got RJ 2/3/2, or was evicted from the pre-association budget (32
    // here) during its handshake by the flood's newer connections.
    let (rejected, evicted) = (report.count(Seen::Rejected(2, 3, 2)), report.count(Seen::Closed));
    assert_eq!(rejected + evicted, count, "RJ 2/3/2 or evicted: {:?}", report.seen);
    assert!(rejected >= count * 9 / 10, "RJ 2/3/2 for {rejected} of {count}");
    assert_eq!(scrape.connections("store", "limit"), count as u64, "every one counted once:\n{}", scrape.0);
    assert!(skipped > 0.0, "the farewell cap was never reached by peers that never close:\n{}", scrape.0);
    assert!(peak <= fds_before + 32 + 8 + 16, "fds {fds_before} → {peak} under the RJ storm");
    daemon.assert_running();
    scp.assert_running();
}

/// `GET /readyz` from 127.0.0.1: (status, how long it took); `None` after 15 s.
async fn readyz(admin: SocketAddr) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: dicomgate\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
    };
    let code = tokio::time::timeout(Duration::from_secs(15), exchange).await.ok().flatten();
    (code, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_list_admin_connections_held_and_reopened_do_not_delay_readyz() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) = start(dir.path(), "").await;
    let admin = daemon.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    // 64 silent connections from 127.0.0.9 (not in admin.allow), each
    // reopened as soon as it is closed, for as long as the probes run.
    let holders: Vec<_> = (0..64)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = raw::connect_from(source(9), admin).await else { continue };
                    opened += 1;
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                }
                opened
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut probes = Vec::new();
    for _ in 0..20 {
        probes.push(readyz(admin).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for h in holders {
        opened += support::within(Duration::from_secs(20), "a holder", h).await.expect("holder");
    }
    let slowest = probes.iter().map(|(_, took)| *took).max().unwrap_or_default();
    let (_, body) = daemon.get("/metrics").await;
    let denied = support::daemon::Scrape(body).value("dicomgate_admin_requests_denied_total", &[]);
    eprintln!(
        "admin: 64 off-list connections from 127.0.0.9 held and reopened ({opened} opened); 20 /readyz from \
         127.0.0.1: slowest {slowest:?}, all: {:?}; denied {denied}",
        probes.iter().map(|(c, t)| (c.unwrap_or(0), t.as_millis())).collect::<Vec<_>>()
    );
    assert!(probes.iter().all(|(code, _)| *code == Some(200)), "/readyz: {probes:?}");
    assert!(slowest < Duration::from_secs(1), "/readyz took {slowest:?} with off-list peers holding the endpoint");
    assert!(denied >= 64.0 && denied <= opened as f64, "denied {denied} of {opened} off-list connections");
    daemon.assert_running();
    scp.assert_running();
}
