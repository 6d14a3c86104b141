//! `dicomgate echo` against dicomgate itself (issue 4): Accepted through the
//! gateway to DCMTK `storescp`, the printed reason for each A-ASSOCIATE-RJ of
//! the rejection table (docs/architecture.md) that an SCU can provoke, and a listener pinning a
//! gen-cert client certificate, checked with both `dicomgate echo` and
//! DCMTK `echoscu +tls`.
//!
//! The "unsupported protocol version" row cannot be provoked by `echo` (it
//! always requests version 1); the core's raw-PDU tests cover it.

use crate::support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::cli::{code, dicomgate, gen_cert, stderr, stdout};
use crate::support::dcmtk::storescp;
use crate::support::gateway::RunningGateway;
use crate::support::tools::output_text;

const REJECTED: i32 = 3;
const TLS: i32 = 5;

struct Pki {
    scp_cert: PathBuf,
    scp_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let (scp_cert, scp_key) = gen_cert(&dir.join("scp"), "gw", "ecdsa-p256", &["--san", "localhost"]);
    let (client_cert, client_key) = gen_cert(&dir.join("scu"), "cloud", "ecdsa-p256", &[]);
    Pki { scp_cert, scp_key, client_cert, client_key }
}

fn yaml(pki: &Pki, scp_port: u16, dead_port: u16) -> String {
    let (cert, key) = (pki.scp_cert.display(), pki.scp_key.display());
    let client = pki.client_cert.display();
    format!(
        r#"
shutdown: {{grace_period: 1s}}
backends:
  pacs:
    ae_title: STORESCP
    servers: [127.0.0.1:{scp_port}]
    health_check: {{mode: "off"}}
  dead:
    ae_title: DEAD
    servers: [127.0.0.1:{dead_port}]
    health_check: {{mode: "off"}}
listeners:
  store:
    listen: 127.0.0.1:0
    tls: {{certificate: {cert}, private_key: {key}}}
    allow: [127.0.0.1/32]
    calling_ae_titles: [BUTTERFLY]
    routes: {{PACS: pacs, DEAD: dead}}
    timeouts: {{acse: 10s, connect: 2s}}
  pinned:
    listen: 127.0.0.1:0
    tls:
      certificate: {cert}
      private_key: {key}
      client_certificates: [{client}]
    allow: [127.0.0.1/32]
    calling_ae_titles: [BUTTERFLY]
    routes: {{PACS: pacs}}
  limited:
    listen: 127.0.0.1:0
    insecure_plaintext: true
    allow: [127.0.0.1/32]
    calling_ae_titles: [BUTTERFLY]
    routes: {{PACS: pacs}}
    max_connections: 1
"#
    )
}

/// `dicomgate echo` off the runtime's workers.
async fn echo(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        dicomgate(&refs)
    })
    .await
    .expect("echo thread")
}

fn echo_args(addr: SocketAddr, calling: &str, called: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["echo", &addr.to_string(), "--calling-ae", calling, "--called-ae", called, "--timeout", "20s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn assert_rejected(out: &Output, words: &str) {
    assert_eq!(code(out), REJECTED, "{}", output_text(out));
    assert!(stderr(out).contains(&format!("association rejected: A-ASSOCIATE-RJ {words}")), "{}", output_text(out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_echo_through_dicomgate_accepted_and_each_rejection_in_words() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let scp = storescp("STORESCP", &[], dir.path()).await;
    let scp_port = scp.addr.port();
    let dead_port = support::ports::free_port();
    let gw = RunningGateway::start_yaml(dir.path(), &yaml(&pki, scp_port, dead_port)).await;
    let (store, limited) = (gw.addr_of("store"), gw.addr_of("limited"));
    let ca = pki.scp_cert.display().to_string();
    let tls = ["--tls", "--ca", ca.as_str()];

    let ok = echo(echo_args(store, "BUTTERFLY", "PACS", &tls)).await;
    assert_eq!(code(&ok), 0, "{}", output_text(&ok));
    assert_eq!(stdout(&ok).lines().next(), Some("Accepted"), "{}", output_text(&ok));

    let calling = echo(echo_args(store, "INTRUDER", "PACS", &tls)).await;
    assert_rejected(&calling, "rejected-permanent, service-user, calling-AE-title-not-recognized (1/1/3)");

    let called = echo(echo_args(store, "BUTTERFLY", "NOSUCHAE", &tls)).await;
    assert_rejected(&called, "rejected-permanent, service-user, called-AE-title-not-recognized (1/1/7)");

    let dead = echo(echo_args(store, "BUTTERFLY", "DEAD", &tls)).await;
    assert_rejected(&dead, "rejected-transient, service-provider (presentation), temporary-congestion (2/3/1)");

    // One association holds the only slot; the next is over the limit. (A
    // connection that sends nothing holds no slot: issue 11.)
    let holder = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("BUTTERFLY")
        .called_ae_title("PACS")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish_async(limited)
        .await
        .expect("holder association");
    let limited = echo(echo_args(limited, "BUTTERFLY", "PACS", &[])).await;
    assert_rejected(&limited, "rejected-transient, service-provider (presentation), local-limit-exceeded (2/3/2)");
    drop(holder);

    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_listener_pinning_a_gen_cert_client_certificate() {
    require_tool!("storescp");
    require_tool!("echoscu");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let scp = storescp("STORESCP", &[], dir.path()).await;
    let scp_port = scp.addr.port();
    let gw = RunningGateway::start_yaml(dir.path(), &yaml(&pki, scp_port, support::ports::free_port())).await;
    let pinned = gw.addr_of("pinned");
    let s = |p: &PathBuf| p.display().to_string();

    // SCU authentication "Authenticated": the pinned certificate gets in...
    let with_cert = echo(echo_args(
        pinned,
        "BUTTERFLY",
        "PACS",
        &["--tls", "--ca", &s(&pki.scp_cert), "--cert", &s(&pki.client_cert), "--key", &s(&pki.client_key)],
    ))
    .await;
    assert_eq!(code(&with_cert), 0, "{}", output_text(&with_cert));

    // ...an anonymous client does not, and is told why.
    let anonymous = echo(echo_args(pinned, "BUTTERFLY", "PACS", &["--tls", "--ca", &s(&pki.scp_cert)])).await;
    assert_eq!(code(&anonymous), TLS, "{}", output_text(&anonymous));

    // DCMTK's echoscu with the same gen-cert pair (OpenSSL client side).
    let port = pinned.port().to_string();
    let (key, cert, ca) = (s(&pki.client_key), s(&pki.client_cert), s(&pki.scp_cert));
    let echoscu = tokio::task::spawn_blocking(move || {
        Command::new("echoscu")
            .args(["-aet", "BUTTERFLY", "-aec", "PACS", "+tls", &key, &cert, "+cf", &ca])
            .args(["127.0.0.1", &port])
            .env("TCP_NODELAY", "1")
            .output()
            .expect("run echoscu")
    })
    .await
    .expect("echoscu thread");
    assert!(echoscu.status.success(), "echoscu:\n{}", output_text(&echoscu));

    gw.stop().await;
}
