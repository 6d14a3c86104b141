//! Issue 20, finding 4: refusals of an allowed peer are counted exactly and
//! audited as summaries. 1,500 connections from an allowed address send
//! garbage instead of a TLS ClientHello; the real daemon, at defaults, with
//! a real syslog receiver (rsyslogd): the counters add up to 1,500, the log
//! stays short, and the ATNA trail holds a few Security Alerts (each the
//! first of a quiet source and reason, or one summary per interval) whose
//! counts add up to 1,500, each a valid PS3.15 AuditMessage. Then the
//! receiver goes away and the dashboard's gauges say so.

use crate::support;
use std::time::Duration;

use tokio::time::Instant;

use crate::deny_service::{config, intruder_rq, source};
use crate::support::atna::{schema, Received, ReceiverTls, Rsyslog};
use crate::support::attack::size_from_env;
use crate::support::flood::garbage_tls;
use crate::support::raw;
use crate::support::wire;

const SECURITY_ALERT: &str = r#"<EventID csd-code="110113""#;

/// How many refusals an alert about `ip` stands for: the count of a summary
/// (its EventOutcomeDescription starts with `summary: COUNT more`), else 1.
fn stands_for(m: &Received) -> u64 {
    let Some((_, rest)) = m.xml.split_once("<EventOutcomeDescription>summary: ") else { return 1 };
    rest.split_once(' ').and_then(|(n, _)| n.parse().ok()).expect("summary: COUNT more")
}

fn alerts_about(r: &Rsyslog, ip: &str) -> Vec<Received> {
    let participant = format!(r#"NetworkAccessPointID="{ip}""#);
    r.messages().into_iter().filter(|m| m.xml.contains(SECURITY_ALERT) && m.xml.contains(&participant)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tls_from_an_allowed_address_is_counted_exactly_and_audited_as_summaries() {
    require_tool!("storescp");
    if !support::atna::receiver_present() {
        return;
    }
    let n = size_from_env("DENY_GARBAGE", 1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rsyslog = Rsyslog::start(dir.path(), ReceiverTls::Off).await;
    let audit = format!(
        "audit:\n  source_id: dicomgate-test\n  syslog:\n    address: {}\n    transport: tcp\n",
        rsyslog.address()
    );
    let (mut daemon, mut scp) =
        support::daemon::start_with_storescp(dir.path(), |d, scp| config(d, scp, "", &audit)).await;
    let addr = daemon.addr("store");
    rsyslog.wait_for("Application Start", Duration::from_secs(15), |m| m.xml.contains(r#"csd-code="110120""#)).await;
    let lines_before = daemon.log_text().lines().count();

    let started = Instant::now();
    let closed = garbage_tls(addr, source(2), n, 32).await;
    let took = started.elapsed();
    let scrape = daemon.wait_idle(&["store"], Duration::from_secs(30)).await;
    let (tls, blocked) = (scrape.connections("store", "tls_error"), scrape.connections("store", "blocked"));

    // The summary comes within one refusal-log interval (10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let alerts = alerts_about(&rsyslog, "127.0.0.2");
        if alerts.iter().map(stands_for).sum::<u64>() >= n as u64 || Instant::now() >= deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = daemon.log_text();
    let lines = log.lines().count() - lines_before;
    let counts: Vec<u64> = alerts.iter().map(stands_for).collect();
    eprintln!(
        "garbage TLS: {n} connections from 127.0.0.2 in {took:?}, {closed} closed by the gateway; tls_error {tls} + \
         blocked {blocked}; {lines} log lines; {} ATNA Security Alerts about 127.0.0.2 standing for {counts:?}",
        alerts.len()
    );
    assert_eq!(closed, n, "every garbage connection closed by the gateway");
    assert_eq!(tls + blocked, n as u64, "counted exactly, each once:\n{}", scrape.0);
    assert!(tls >= 10, "the first ten failed handshakes are what blocks the source:\n{}", scrape.0);
    assert!(lines <= 60, "{lines} log lines for {n} refusals:\n{log}");
    assert!(alerts.len() <= 10, "{} ATNA messages about one source", alerts.len());
    assert_eq!(counts.iter().sum::<u64>(), n as u64, "the alerts' counts add up to the refusals");
    assert_eq!(counts[0], 1, "the first alert is the first refusal in full, not a summary");
    for m in &alerts {
        if let Err(problems) = schema::check(&m.xml) {
            panic!("not a valid AuditMessage:\n{}\n{}", problems.join("\n"), m.xml);
        }
    }
    let s = daemon.scrape().await;
    assert_eq!(s.value("dicomgate_audit_receiver_up", &[("sink", "syslog")]), 1.0, "{}", s.0);
    assert_eq!(s.value("dicomgate_audit_queue_messages", &[("sink", "syslog")]), 0.0, "{}", s.0);
    assert_eq!(s.value("dicomgate_audit_messages_total", &[("result", "dropped")]), 0.0, "{}", s.0);

    // The receiver goes away: the next Security Alert waits in the queue,
    // and the gauges show the outage.
    rsyslog.stop().await;
    let mut s3 = raw::connect(source(3), addr, Some(wire::insecure_client())).await;
    raw::send(&mut s3, &intruder_rq()).await.expect("RQ");
    raw::expect_rejection(&mut s3, (1, 1, 3)).await;
    let mut down = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let s = daemon.scrape().await;
        if s.value("dicomgate_audit_receiver_up", &[("sink", "syslog")]) == 0.0
            && s.value("dicomgate_audit_queue_messages", &[("sink", "syslog")]) >= 1.0
        {
            down = s.0;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!down.is_empty(), "receiver down, but the gauges do not say so:\n{}", daemon.scrape().await.0);
    daemon.assert_running();
    scp.assert_running();
}
