//! Issues 14 and 20: with the receiver unreachable the audit trail holds at
//! most 1,000 messages (the product default, no key to raise it), keeps the
//! oldest and drops the newest beyond that (the first events of an outage or
//! an attack are the ones an investigator needs), counts every message it
//! gives up on, and delivers the kept ones, oldest first, once a receiver
//! listens.

use crate::support;
use std::path::Path;
use std::time::Duration;

use dicomgate::atna::event::{AuditEvent, EventKind};
use dicomgate::atna::message::EventOutcome;
use dicomgate::atna::{AuditSink, Prepared};
use dicomgate::{Config, Metrics};

fn config(address: &str) -> Config {
    let yaml = format!(
        "audit: {{syslog: {{address: \"{address}\", transport: tcp}}}}\n\
         backends: {{pacs: {{ae_title: PACS, servers: [\"127.0.0.1:104\"]}}}}\n\
         listeners: {{store: {{listen: \"127.0.0.1:0\", insecure_plaintext: true, allow: [127.0.0.1/32], routes: {{PACS: pacs}}}}}}\n"
    );
    Config::from_yaml_str(&yaml, Path::new(".")).expect("valid config")
}

/// The `event N` numbers of the octet-counted syslog messages (RFC 6587)
/// a receiver on `listener` gets, until `want` arrived or `within` passed.
async fn receive(listener: tokio::net::TcpListener, want: usize, within: Duration) -> Vec<u32> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    let Ok(Ok((mut s, _))) = tokio::time::timeout_at(deadline, listener.accept()).await else { return events };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while events.len() < want {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        // LEN SP MSG, as many as are whole.
        while let Some(sp) = buf.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&buf[..sp]).ok().and_then(|l| l.parse().ok()).expect("octet count");
            if buf.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8_lossy(&buf[sp + 1..sp + 1 + len]).into_owned();
            let n: Option<u32> =
                msg.split("event ").nth(1).and_then(|t| t.split('<').next()).and_then(|t| t.parse().ok());
            events.extend(n);
            buf.drain(..sp + 1 + len);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_receiver_keeps_the_oldest_thousand_and_counts_the_rest() {
    // A port nobody listens on: bound, then closed.
    let port = support::ports::free_port();
    let metrics = Metrics::new();
    let sink =
        AuditSink::start(Prepared::new(&config(&format!("127.0.0.1:{port}"))).expect("prepared"), metrics.clone());

    // `record` is synchronous: it cannot wait for the network.
    for i in 0..1200u32 {
        sink.record(AuditEvent::now(EventKind::ConfigReload, EventOutcome::Success, Some(format!("event {i}"))));
    }

    // 200 over the capacity are dropped (one more may be in a connect
    // attempt, outside the queue, at any moment).
    support::wait_until(
        support::PROMPT,
        "200 messages dropped",
        || metrics.audit_messages(false) >= 199,
        || metrics.render(),
    )
    .await;
    let dropped = metrics.audit_messages(false);
    assert!((199..=200).contains(&dropped), "dropped {dropped}");
    assert_eq!(metrics.audit_messages(true), 0);
    assert!(metrics.audit_queue() >= 999, "queued: {}", metrics.audit_queue());

    // A receiver comes up on that port: the kept messages arrive, the
    // oldest first, none of the newest that were dropped.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the receiver's port");
    let events = receive(listener, 1200 - dropped as usize, Duration::from_secs(40)).await;
    assert_eq!(events.len(), 1200 - dropped as usize, "delivered: {} of the kept", events.len());
    assert_eq!(events[..3], [0, 1, 2], "the oldest first");
    assert!(events.iter().all(|n| *n <= 1000), "a dropped newest one was delivered: {:?}", events.iter().max());
    assert_eq!(metrics.audit_messages(true), events.len() as u64);

    sink.close(Duration::from_secs(5)).await;
    assert_eq!(metrics.audit_messages(false), dropped, "nothing more dropped");
}

#[tokio::test]
async fn without_audit_syslog_nothing_is_queued_or_counted() {
    let yaml = "backends: {pacs: {ae_title: PACS, servers: [\"127.0.0.1:104\"]}}\n\
                listeners: {store: {listen: \"127.0.0.1:0\", insecure_plaintext: true, allow: [127.0.0.1/32], routes: {PACS: pacs}}}\n";
    let config = Config::from_yaml_str(yaml, Path::new(".")).expect("valid config");
    let metrics = Metrics::new();
    let sink = AuditSink::start(Prepared::new(&config).expect("prepared"), metrics.clone());
    sink.application_started();
    sink.application_stopped();
    sink.close(Duration::from_secs(1)).await;
    assert_eq!((metrics.audit_messages(true), metrics.audit_messages(false)), (0, 0));
}
