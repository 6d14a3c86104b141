//! Issue 11, honest ends, against the real daemon: a TLS client that closes
//! TCP without close_notify after its association is accepted is recorded
//! as `truncated` (audit `end` and `dicomgate_association_ends_total`), and
//! one that closes with close_notify as `closed`. No limit or timeout key
//! is set.

use crate::support;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::raw::{associate, Answer};
use crate::support::scp::TestScp;
use crate::support::wire::{insecure_client, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(backend: std::net::SocketAddr) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
log: {{format: json, level: info}}
backends:
  pacs: {{ae_title: PACS, servers: ["{backend}"], health_check: {{mode: "off"}}}}
listeners:
  store:
    listen: "127.0.0.1:0"
    tls: {{certificate: server.pem, private_key: server.key}}
    allow: [127.0.0.0/8]
    routes: {{PACS: pacs}}
"#
    )
}

fn audit_ends(daemon: &Daemon) -> Vec<(String, String)> {
    daemon
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "dicomgate::audit")
        .map(|v| (v["end"].as_str().unwrap_or("?").to_owned(), v["detail"].as_str().unwrap_or("?").to_owned()))
        .collect()
}

async fn wait_for_audits(daemon: &Daemon, n: usize) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ends = audit_ends(daemon);
        if ends.len() >= n {
            return ends;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} audit lines expected:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tls_close_without_close_notify_is_truncated_and_with_it_closed() {
    let scp = TestScp::spawn("PACS").await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::pki::pki().write_to(dir.path());
    let path = dir.path().join("dicomgate.yaml");
    std::fs::write(&path, config(scp.addr)).expect("config");
    let daemon = Daemon::start(&path).await;
    let store = daemon.addr("store");

    // Without close_notify: FIN straight on the TCP socket under TLS.
    let mut tls = tls_connect(store, insecure_client()).await.expect("TLS");
    assert!(matches!(associate(&mut tls, "PACS", "CLOUD").await, Answer::Accepted(_)));
    let (mut tcp, _session) = tls.into_inner();
    tcp.shutdown().await.expect("TCP FIN");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut rest)).await;
    let ends = wait_for_audits(&daemon, 1).await;
    assert_eq!(
        ends[0],
        ("truncated".to_owned(), "closed by the client without TLS close_notify".to_owned()),
        "{ends:?}"
    );

    // With close_notify (tokio-rustls sends it on shutdown).
    let mut tls = tls_connect(store, insecure_client()).await.expect("TLS");
    assert!(matches!(associate(&mut tls, "PACS", "CLOUD").await, Answer::Accepted(_)));
    tls.shutdown().await.expect("close_notify and FIN");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut rest)).await;
    let ends = wait_for_audits(&daemon, 2).await;
    assert_eq!(ends[1], ("closed".to_owned(), "closed by the client".to_owned()), "{ends:?}");

    let scrape = daemon.scrape().await;
    let ended = |end: &str| scrape.value("dicomgate_association_ends_total", &[("listener", "store"), ("end", end)]);
    assert_eq!((ended("truncated"), ended("closed")), (1.0, 1.0), "{}", scrape.0);
}

/// An SCP that answers the A-ASSOCIATE-RQ with itself as the AC (the
/// gateway reads only the items it needs) and reads whatever comes until the
/// gateway closes its side; then, if `garbage`, it sends bytes that are no PDU.
async fn raw_scp(garbage: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut ac = vec![0u8; 6];
        s.read_exact(&mut ac).await.expect("RQ header");
        let len = u32::from_be_bytes([ac[2], ac[3], ac[4], ac[5]]) as usize;
        ac.resize(6 + len, 0);
        s.read_exact(&mut ac[6..]).await.expect("RQ body");
        ac[0] = 0x02;
        s.write_all(&ac).await.expect("AC");
        let mut sink = vec![0u8; 4096];
        while let Ok(1..) = s.read(&mut sink).await {}
        if garbage {
            let _ = s.write_all(&[0xFF, 0, 0, 0, 0, 4, 1, 2, 3, 4]).await;
        }
        let _ = s.shutdown().await;
    });
    addr
}

/// The client finishes cleanly (close_notify, FIN), then the SCP sends
/// garbage: the association's end is the SCP's protocol error, not the
/// client's clean close.
#[tokio::test]
async fn a_failure_after_the_other_direction_finished_is_what_is_recorded() {
    let scp = raw_scp(true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::pki::pki().write_to(dir.path());
    let path = dir.path().join("dicomgate.yaml");
    std::fs::write(&path, config(scp)).expect("config");
    let daemon = Daemon::start(&path).await;

    let mut tls = tls_connect(daemon.addr("store"), insecure_client()).await.expect("TLS");
    assert!(matches!(associate(&mut tls, "PACS", "CLOUD").await, Answer::Accepted(_)));
    tls.shutdown().await.expect("close_notify and FIN");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut rest)).await;
    let ends = wait_for_audits(&daemon, 1).await;
    assert_eq!(ends[0], ("protocol_error".to_owned(), "backend sent unknown PDU type 0xFF".to_owned()), "{ends:?}");
    let scrape = daemon.scrape().await;
    let ended = |end: &str| scrape.value("dicomgate_association_ends_total", &[("listener", "store"), ("end", end)]);
    assert_eq!((ended("protocol_error"), ended("closed")), (1.0, 0.0), "{}", scrape.0);
}

/// `timeouts.association` (the test is about that key, so it is set): an
/// association that keeps sending, which the DIMSE idle timer never ends,
/// is aborted at its lifetime and recorded as `lifetime_exceeded`.
#[tokio::test]
async fn a_busy_association_ends_at_timeouts_association() {
    let scp = raw_scp(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::pki::pki().write_to(dir.path());
    let path = dir.path().join("dicomgate.yaml");
    let yaml = config(scp).replace("    routes:", "    timeouts: {association: 2s}\n    routes:");
    std::fs::write(&path, yaml).expect("config");
    let daemon = Daemon::start(&path).await;

    let mut tls = tls_connect(daemon.addr("store"), insecure_client()).await.expect("TLS");
    assert!(matches!(associate(&mut tls, "PACS", "CLOUD").await, Answer::Accepted(_)));
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut rest)).await;
        rest
    });
    // One-byte dataset PDVs, one every 100 ms, for at most 10 s: never idle.
    let tiny = [0x04, 0, 0, 0, 0, 7, 0, 0, 0, 3, 1, 0x00, 0xAB];
    for _ in 0..100 {
        if wr.write_all(&tiny).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = reader.await.expect("reader");
    assert!(rest.ends_with(&[0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0]), "our A-ABORT last: {rest:02X?}");
    let ends = wait_for_audits(&daemon, 1).await;
    assert_eq!(ends[0], ("lifetime_exceeded".to_owned(), "timeouts.association reached".to_owned()), "{ends:?}");
}
