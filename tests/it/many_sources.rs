//! Issue 20, finding 3: many source addresses do not defeat the
//! pre-association budget. 1,000 attacker addresses in 127.0.0.0/8 hold
//! connections and reconnect as soon as the gateway closes them (silent TCP;
//! and in a second test, a completed TLS handshake and then silence), at
//! whatever rate the gateway accepts them, while a peer that sends its
//! A-ASSOCIATE-RQ 150 ms after connecting must succeed at least 24 times in
//! 25 from the cloud's address (known: it had an association before), and, against
//! silent attackers, also from 25 fresh addresses (the budget's progress
//! ranking alone; against attackers that complete handshakes a fresh address
//! is measured and reported). The real daemon at defaults (budget 256, share
//! 64: at the release before, 11 of 25 got through).
//!
//! `MANY_SOURCES_ADDRESSES` and `MANY_SOURCES_WORKERS` (concurrent attacker
//! connections) set the sizes; `scripts/abuse.sh` runs larger ones.

use crate::support;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;

use crate::deny_service::source;
use crate::support::attack::{listen_drops, size_from_env};
use crate::support::daemon::require_nofile;
use crate::support::flood::{attacker_addresses, prompt_association, prompt_association_apart, Hold, Reconnecting};
use crate::support::wire;

/// How long after its TCP connect the prompt peer sends its RQ.
const RQ_AFTER: Duration = Duration::from_millis(150);
const ROUNDS: usize = 25;

/// `24/25 succeeded, slowest 212 ms; failures: [...]`
fn summary(results: &[Result<Duration, String>]) -> String {
    let ok: Vec<Duration> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    format!("{}/{} succeeded, slowest {:?}; failures: {failures:?}", ok.len(), results.len(), ok.iter().max())
}

async fn prompt_peer_survives(hold: Hold) {
    require_tool!("storescp");
    let addresses = size_from_env("MANY_SOURCES_ADDRESSES", 1000);
    let workers = size_from_env("MANY_SOURCES_WORKERS", 1000);
    require_nofile(workers as u64 + 512);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, mut scp) =
        support::daemon::start_with_storescp(dir.path(), |d, scp| crate::deny_service::config(d, scp, "", "")).await;
    let addr = daemon.addr("store");
    let tls = wire::insecure_client();
    // The cloud had an association through before the attack began (within
    // the hour that makes a source known).
    prompt_association(addr, source(1), Duration::ZERO, tls.clone()).await.expect("the cloud's association");
    let drops_before = listen_drops();
    let attack = Reconnecting::start(hold, attacker_addresses(addresses), workers, addr, tls.clone());

    // Pressure first: the budget is full and evicting.
    let evicted = |s: &support::daemon::Scrape| s.value("dicomgate_preassociation_evictions_total", &[]) as u64;
    let ramp = Instant::now();
    while evicted(&daemon.scrape().await) < 1000 {
        if ramp.elapsed() > Duration::from_secs(60) {
            panic!("no pressure after 60 s: {} connects:\n{}", attack.connects(), daemon.scrape().await.0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (before, connects_before, started) = (daemon.scrape().await, attack.connects(), Instant::now());
    // Cold: every round from an address that never had an association, so
    // only the budget's progress ranking protects it. Then known: rounds
    // from 127.0.0.1, the cloud.
    let mut cold = Vec::new();
    for round in 0..ROUNDS {
        let fresh = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + round as u8));
        cold.push(prompt_association_apart(addr, fresh, RQ_AFTER, tls.clone()).await);
    }
    let mut known = Vec::new();
    for _ in 0..ROUNDS {
        known.push(prompt_association_apart(addr, source(1), RQ_AFTER, tls.clone()).await);
    }
    let took = started.elapsed();
    let (after, connects_during) = (daemon.scrape().await, attack.connects() - connects_before);
    let (total, _) = attack.stop().await;
    let by = |s: &support::daemon::Scrape, reason| {
        s.value("dicomgate_preassociation_evictions_total", &[("reason", reason)]) as u64
    };
    eprintln!(
        "{workers} attackers ({hold:?}) from {addresses} addresses: {:.0} connections/s during the rounds \
         ({connects_during} in {took:?}; {total} in all; kernel listen drops {}); evictions during the rounds: \
         source_cap {} budget_full {}; a peer sending its RQ {RQ_AFTER:?} after connect: {}; from a known source: {}",
        connects_during as f64 / took.as_secs_f64(),
        listen_drops().saturating_sub(drops_before),
        by(&after, "source_cap") - by(&before, "source_cap"),
        by(&after, "budget_full") - by(&before, "budget_full"),
        summary(&cold),
        summary(&known),
    );
    // A fresh address is indistinguishable from attackers that complete
    // their handshakes until it sends its RQ: no ranking can keep every such
    // newcomer for 150 ms once they arrive faster than the budget divided by
    // that time (docs/admission.md). It is measured, not asserted, there.
    let asserted: &[(&str, &Vec<_>)] = match hold {
        Hold::Silent => &[("from fresh addresses", &cold), ("from a known source", &known)],
        Hold::TlsSilent => &[("from a known source", &known)],
    };
    if std::env::var_os("MANY_SOURCES_DEBUG").is_some() {
        let log = daemon.log_text();
        let about: Vec<&str> = log.lines().filter(|l| l.contains("127.0.2.") || l.contains("127.0.0.1:")).collect();
        eprintln!("the gateway's lines about the peers:\n{}", about.join("\n"));
    }
    for (what, results) in asserted {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(ok >= ROUNDS - 1, "{what}: {ok}/{ROUNDS} prompt associations succeeded: {failures:?}");
    }
    assert!(
        evicted(&after) - evicted(&before) >= ROUNDS as u64 * 20,
        "the budget was not under pressure during the rounds:\n{}",
        after.0
    );
    daemon.assert_running();
    scp.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_peer_gets_through_silent_connections_from_a_thousand_addresses() {
    prompt_peer_survives(Hold::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_peer_gets_through_completed_tls_handshakes_from_a_thousand_addresses() {
    prompt_peer_survives(Hold::TlsSilent).await;
}
