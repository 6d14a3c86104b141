//! Issue 20: the AE-title guessing protection on the real daemon. A source
//! whose associations are refused ten times in a row (the default `after`)
//! is closed at accept, before TLS; it is listed on the status page and in
//! `/status` with its time left and counted in `dicomgate_sources_blocked`;
//! the block ends after its cool-down, the next one lasts twice as long,
//! and SIGHUP ends it at once. A peer that succeeds between its mistakes is
//! never blocked, and other sources are never affected. Only `block` and
//! `max_block` are set (the defaults, a minute and more, would make a slow
//! test); `after` is the default.

use crate::support;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::deny_service::{config, intruder_rq, source};
use crate::support::daemon::Daemon;
use crate::support::raw::{self, Next};
use crate::support::wire;

/// Refused by policy: RJ 1/1/3, then the close.
async fn refused(addr: SocketAddr, from: IpAddr) {
    let mut s = raw::connect(from, addr, Some(wire::insecure_client())).await;
    raw::send(&mut s, &intruder_rq()).await.expect("RQ");
    raw::expect_rejection(&mut s, (1, 1, 3)).await;
}

/// A whole association (AC, release). `false`: refused or closed.
async fn associates(addr: SocketAddr, from: IpAddr) -> bool {
    let mut s = raw::connect(from, addr, Some(wire::insecure_client())).await;
    if raw::send(&mut s, &wire::associate_rq(1, 1)).await.is_err() {
        return false;
    }
    match raw::read_pdu(&mut s, support::PROMPT).await {
        Next::Pdu(p) if p.pdu_type == 0x02 => {
            raw::release(&mut s).await;
            true
        }
        _ => false,
    }
}

/// Whether a TCP connection from `from` is closed at once without a byte
/// (blocked), rather than left open for a TLS ClientHello.
async fn closed_at_accept(addr: SocketAddr, from: IpAddr) -> bool {
    let mut tcp = raw::connect_from(from, addr).await.expect("connect");
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// `/status`'s blocked sources: (source, seconds left, block seconds).
async fn blocked_sources(daemon: &Daemon) -> Vec<(String, u64, u64)> {
    let (_, body) = daemon.get("/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
    json["blocked_sources"]
        .as_array()
        .expect("blocked_sources")
        .iter()
        .map(|b| {
            let n = |k: &str| b[k].as_u64().unwrap_or(0);
            (b["source"].as_str().unwrap_or("").to_owned(), n("seconds_left"), n("block_seconds"))
        })
        .collect()
}

/// Waits until `outcome` reaches `n`: a connection is recorded when it
/// ends, a moment after the peer saw the RJ (or the release) and the close.
async fn recorded(daemon: &Daemon, outcome: &str, n: u64) {
    let deadline = Instant::now() + support::PROMPT;
    while daemon.scrape().await.connections("store", outcome) < n {
        assert!(Instant::now() < deadline, "{n} {outcome} not recorded:\n{}", daemon.scrape().await.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refusals_recorded(daemon: &Daemon, n: u64) {
    recorded(daemon, "rejected_calling_ae", n).await;
}

async fn sources_blocked_metric(daemon: &Daemon) -> f64 {
    daemon.scrape().await.value("dicomgate_sources_blocked", &[("listener", "store")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessing_source_is_blocked_then_unblocked_and_a_peer_that_succeeds_between_mistakes_never_is() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "    guessing: {block: 2s, max_block: 30s}\n";
    let (mut daemon, mut scp) = support::daemon::start_with_storescp(dir.path(), |d, s| config(d, s, extra, "")).await;
    let addr = daemon.addr("store");
    let (guesser, cloud, other) = (source(2), source(3), source(1));

    // Ten refusals in a row: the eleventh connection is closed at accept.
    for _ in 0..10 {
        refused(addr, guesser).await;
    }
    refusals_recorded(&daemon, 10).await;
    assert!(closed_at_accept(addr, guesser).await, "not blocked after ten refusals in a row");
    let listed = blocked_sources(&daemon).await;
    assert!(matches!(&listed[..], [(s, left, 2)] if s == "127.0.0.2" && (1..=2).contains(left)), "{listed:?}");
    assert_eq!(sources_blocked_metric(&daemon).await, 1.0);
    let (_, page) = daemon.get("/").await;
    assert!(page.contains("Blocked sources") && page.contains("127.0.0.2"), "the status page lists it:\n{page}");
    assert!(associates(addr, other).await, "another source is not affected");

    // The cool-down ends by itself: connections are served again (an AE
    // title refused again, not a close at accept).
    let blocked_at = Instant::now();
    while closed_at_accept(addr, guesser).await {
        assert!(blocked_at.elapsed() < Duration::from_secs(10), "still blocked 10 s after a 2 s block");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unblocked_after = blocked_at.elapsed();
    assert_eq!(sources_blocked_metric(&daemon).await, 0.0);
    // No success in between: the next block lasts twice as long ...
    for _ in 0..10 {
        refused(addr, guesser).await;
    }
    refusals_recorded(&daemon, 20).await;
    let listed = blocked_sources(&daemon).await;
    assert!(matches!(&listed[..], [(_, _, 4)]), "the second block doubles: {listed:?}");
    // ... unless SIGHUP ends it.
    daemon.signal("HUP");
    daemon.wait_for_log("sources blocked by the guessing protection are unblocked", Duration::from_secs(10)).await;
    assert!(associates(addr, guesser).await, "unblocked by SIGHUP");
    assert!(blocked_sources(&daemon).await.is_empty());

    // A peer that succeeds between its mistakes: 9 refusals, 1 association, five times.
    for round in 0..5 {
        for _ in 0..9 {
            refused(addr, cloud).await;
        }
        refusals_recorded(&daemon, 20 + 9 * (round + 1)).await;
        assert!(associates(addr, cloud).await, "round {round}: the cloud was blocked");
    }
    recorded(&daemon, "forwarded", 7).await;
    let scrape = daemon.scrape().await;
    eprintln!(
        "guessing: blocked after 10 refusals; served again {unblocked_after:?} after a 2 s block; the second \
         block 4 s, ended by SIGHUP; 45 refusals from a peer that succeeds every tenth time: never blocked; \
         outcomes: blocked {} rejected_calling_ae {} forwarded {}",
        scrape.connections("store", "blocked"),
        scrape.connections("store", "rejected_calling_ae"),
        scrape.connections("store", "forwarded"),
    );
    assert_eq!(scrape.connections("store", "rejected_calling_ae"), 10 + 10 + 45, "{}", scrape.0);
    assert_eq!(scrape.connections("store", "forwarded"), 1 + 1 + 5, "{}", scrape.0);
    daemon.assert_running();
    scp.assert_running();
}
