//! Issue 14: with the receiver unreachable the audit trail holds at most
//! 1,000 messages (the product default, no key to raise it), drops the
//! oldest beyond that, and counts every message it gives up on.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_receiver_keeps_the_newest_thousand_and_counts_the_rest() {
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

    sink.close(Duration::from_secs(5)).await;
    assert_eq!(metrics.audit_messages(false), 1200, "at exit every undelivered message is counted");
    assert_eq!(metrics.audit_messages(true), 0);
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
