//! Issue 11, honest ends: when `shutdown.grace_period` is over, a connection
//! stuck in ANY phase ends (not only the relay). One daemon, five stuck
//! connections — a silent load balancer (PROXY header), a silent TCP peer
//! (TLS handshake), a silent TLS peer (first PDU), a backend whose TLS
//! handshake never completes (backend connect), an SCP that never answers
//! (SCP answer) — then SIGTERM: each gets its own audit line saying the
//! shutdown ended it, in its phase. No timeout key is set: the ACSE (30 s)
//! and connect (10 s) defaults are far beyond the 1 s grace period, so an
//! end by timeout would show in the audit as `timeout` or
//! `backend_unavailable`, not `shutdown`.

use crate::support;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::raw::{associate_rq, send};
use crate::support::wire::{insecure_client, tls_connect};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn config(tls_backend: u16, mute_backend: u16) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
log: {{format: json, level: info}}
shutdown: {{grace_period: 1s}}
backends:
  handshake:
    ae_title: PACS
    servers: ["127.0.0.1:{tls_backend}"]
    tls: {{ca: ca.pem, server_name: localhost}}
    health_check: {{mode: "off"}}
  mute:
    ae_title: PACS
    servers: ["127.0.0.1:{mute_backend}"]
    health_check: {{mode: "off"}}
listeners:
  store:
    listen: "127.0.0.1:0"
    tls: {{certificate: server.pem, private_key: server.key}}
    allow: [127.0.0.0/8]
    routes: {{HANDSHAKE: handshake, MUTE: mute}}
  balanced:
    listen: "127.0.0.1:0"
    insecure_plaintext: true
    allow: [127.0.0.0/8]
    proxy_protocol: v2
    proxy_protocol_from: [127.0.0.1/32]
    routes: {{"*": mute}}
"#
    )
}

fn audits(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "dicomgate::audit")
        .collect()
}

#[tokio::test]
async fn the_grace_period_ends_a_connection_stuck_in_any_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::pki::pki().write_to(dir.path());
    // A backend that accepts TCP and never speaks TLS, and an SCP that takes
    // the A-ASSOCIATE-RQ and never answers: the test holds both sockets.
    let tls_backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mute_backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (tls_port, mute_port) =
        (tls_backend.local_addr().expect("addr").port(), mute_backend.local_addr().expect("addr").port());
    let path = dir.path().join("dicomgate.yaml");
    std::fs::write(&path, config(tls_port, mute_port)).expect("config");
    let mut daemon = Daemon::start(&path).await;
    let (store, balanced) = (daemon.addr("store"), daemon.addr("balanced"));

    let _proxy_header = TcpStream::connect(balanced).await.expect("connect");
    let _tls_handshake = TcpStream::connect(store).await.expect("connect");
    let _first_pdu = tls_connect(store, insecure_client()).await.expect("TLS");
    let mut backend_connect = tls_connect(store, insecure_client()).await.expect("TLS");
    send(&mut backend_connect, &associate_rq("HANDSHAKE", "CLOUD")).await.expect("send RQ");
    let (_held_tls, _) = tokio::time::timeout(Duration::from_secs(10), tls_backend.accept())
        .await
        .expect("the gateway connects to the TLS backend")
        .expect("accept");
    let mut scp_answer = tls_connect(store, insecure_client()).await.expect("TLS");
    let rq = associate_rq("MUTE", "CLOUD");
    send(&mut scp_answer, &rq).await.expect("send RQ");
    let (mut held_scp, _) = tokio::time::timeout(Duration::from_secs(10), mute_backend.accept())
        .await
        .expect("the gateway connects to the SCP")
        .expect("accept");
    let mut forwarded = vec![0u8; rq.len()];
    held_scp.read_exact(&mut forwarded).await.expect("the RQ reaches the SCP");

    let live = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = daemon.scrape().await;
        if s.active("store") == 4 && s.active("balanced") == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < live, "the five connections are not all live:\n{}", s.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}:\n{}", daemon.log_text());

    let audits = audits(&daemon);
    assert_eq!(audits.len(), 5, "one audit line per connection: {audits:#?}");
    for phase in ["proxy header", "TLS handshake", "first PDU", "backend connect"] {
        let detail = format!("the gateway shut down during the {phase} (grace period over)");
        let found = audits.iter().find(|a| a["detail"] == detail.as_str());
        let audit = found.unwrap_or_else(|| panic!("no audit with {detail:?}: {audits:#?}"));
        assert_eq!(audit["outcome"], "shutdown", "{audit}");
    }
    let answer = audits.iter().find(|a| a["outcome"] == "forwarded").expect("the forwarded association");
    assert_eq!(answer["association"], "no valid answer from the SCP: no answer before the shutdown grace period ended");
    // Our A-ABORT (PS3.8 §9.3.8: 07 00, length 4) reached the waiting SCP.
    let mut abort = [0u8; 10];
    held_scp.read_exact(&mut abort).await.expect("A-ABORT to the SCP");
    assert_eq!(abort[..2], [0x07, 0x00]);
}
