//! DICOM-TLS from the gateway to the SCP (`backends.NAME.tls`), against
//! DCMTK's `storescp +tls` requiring a client certificate: the cloud's TLS
//! ends at the gateway and a second TLS session, with the gateway's own
//! client certificate, carries the association to the SCP. The health check
//! speaks the same TLS, so a missing client certificate or an untrusted SCP
//! certificate shows up in `/status` before a client notices.

use crate::support;
use std::path::Path;
use std::time::Duration;

use crate::support::dcmtk::{dump2dcm, storescp};
use crate::support::gateway::RunningGateway;
use crate::support::pki::pki;
use crate::support::tools::{args, output_text, run_scu, ScpProcess};
use dicomgate::report::Outcome;

const SETTLE: Duration = Duration::from_secs(15);
const SCU_DEADLINE: Duration = Duration::from_secs(60);

/// `storescp +tls` with the test server certificate, requiring a client
/// certificate that chains to the test CA (`--require-peer-cert`, named
/// although it is the default), storing into `dir/received`.
async fn tls_storescp(dir: &Path) -> ScpProcess {
    pki().write_to(dir);
    std::fs::create_dir_all(dir.join("received")).expect("mkdir");
    storescp(
        "PACS",
        &["+tls", "server.key", "server.pem", "+cf", "ca.pem", "--require-peer-cert", "-od", "received"],
        dir,
    )
    .await
}

/// A TLS listener `store` in front of backend `pacs` with `backend_tls`.
fn config(scp: &ScpProcess, backend_tls: &str) -> String {
    format!(
        "log: {{level: warn}}\nshutdown: {{grace_period: 1s}}\nbackends:\n  pacs:\n    ae_title: PACS\n    \
         servers: [\"{}\"]\n    tls: {backend_tls}\n    health_check: {{mode: echo, interval: 500ms, fall: 2, rise: 1}}\n\
         listeners:\n  store:\n    listen: 127.0.0.1:0\n    tls: {{certificate: server.pem, private_key: server.key}}\n    \
         allow: [127.0.0.1/32]\n    calling_ae_titles: [CLOUD]\n    routes: {{PACS: pacs}}\n    \
         timeouts: {{acse: 10s, dimse: 20s, connect: 5s}}\n",
        scp.addr
    )
}

/// DCMTK SCU arguments: anonymous TLS to the gateway, trusting the test CA.
fn scu_args(gw: &RunningGateway, extra: &[&str]) -> Vec<String> {
    let addr = gw.addr_of("store");
    let mut a =
        args(&["+tla", "+cf", "ca.pem", "-aet", "CLOUD", "-aec", "PACS", "-to", "10", "-ta", "10", "-td", "20"]);
    a.push(addr.ip().to_string());
    a.push(addr.port().to_string());
    a.extend(args(extra));
    a
}

const IMAGE_DUMP: &str = r#"
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [2.25.16180339887498948482045868343656]
(0008,0060) CS [OT]
(0010,0010) PN [Backend^Tls]
(0010,0020) LO [PID-TLS-1]
(0020,000d) UI [2.25.14142135623730950488016887242097]
(0020,000e) UI [2.25.17320508075688772935274463415058]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_tls_to_storescp_with_a_client_certificate() {
    require_tool!("storescp", "echoscu", "storescu", "dump2dcm");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut scp = tls_storescp(dir).await;
    let tls = "{ca: ca.pem, server_name: localhost, certificate: client.pem, private_key: client.key}";
    let gw = RunningGateway::start_yaml(dir, &config(&scp, tls)).await;

    // The health check's echo already crosses the backend TLS.
    gw.wait_state("pacs", scp.addr, "up", SETTLE).await;
    let probe = gw.last_probe("pacs", scp.addr);
    assert!(probe.starts_with("C-ECHO accepted (TLS"), "last probe: {probe}");

    let out = run_scu("echoscu", &scu_args(&gw, &[]), dir, SCU_DEADLINE).await;
    assert!(out.status.success(), "echoscu failed:\n{}\n--- storescp\n{}", output_text(&out), scp.log_text());

    dump2dcm(IMAGE_DUMP, &dir.join("image.dcm"), dir).await;
    let out = run_scu("storescu", &scu_args(&gw, &["image.dcm"]), dir, SCU_DEADLINE).await;
    assert!(out.status.success(), "storescu failed:\n{}\n--- storescp\n{}", output_text(&out), scp.log_text());
    let stored: Vec<Vec<u8>> = std::fs::read_dir(dir.join("received"))
        .expect("received dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(stored.len(), 1, "storescp stored {} files\n{}", stored.len(), scp.log_text());
    assert!(stored[0].windows(11).any(|w| w == b"Backend^Tls"), "the stored file is not ours");

    support::wait_until(
        SETTLE,
        "two forwarded associations",
        || gw.metrics.connections("store", Outcome::Forwarded.as_str()) == 2,
        || gw.metrics.render(),
    )
    .await;
    scp.assert_running();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_client_certificate_the_scp_refuses_and_the_check_says_so() {
    require_tool!("storescp", "echoscu");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut scp = tls_storescp(dir).await;
    let gw = RunningGateway::start_yaml(dir, &config(&scp, "{ca: ca.pem, server_name: localhost}")).await;

    gw.wait_state("pacs", scp.addr, "down", SETTLE).await;
    let probe = gw.last_probe("pacs", scp.addr);
    assert!(probe.contains("TLS"), "the probe should blame TLS: {probe}");

    // The only server is marked down but still tried: the SCP refuses the
    // session and the client's association fails.
    let out = run_scu("echoscu", &scu_args(&gw, &[]), dir, SCU_DEADLINE).await;
    assert!(!out.status.success(), "echo succeeded without a client certificate:\n{}", output_text(&out));
    scp.assert_running();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_scp_certificate_from_another_ca_fails_the_connect_and_the_client_gets_2_3_1() {
    require_tool!("storescp", "echoscu");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut scp = tls_storescp(dir).await;
    let tls = "{ca: other_ca.pem, server_name: localhost, certificate: client.pem, private_key: client.key}";
    let gw = RunningGateway::start_yaml(dir, &config(&scp, tls)).await;

    gw.wait_state("pacs", scp.addr, "down", SETTLE).await;
    let probe = gw.last_probe("pacs", scp.addr);
    assert!(probe.to_lowercase().contains("certificate"), "the probe should name the certificate: {probe}");

    let out = run_scu("echoscu", &scu_args(&gw, &[]), dir, SCU_DEADLINE).await;
    let text = output_text(&out);
    assert!(!out.status.success(), "echo succeeded through an untrusted SCP:\n{text}");
    assert!(text.contains("Rejected"), "expected an A-ASSOCIATE-RJ:\n{text}");
    support::wait_until(
        SETTLE,
        "one backend_unavailable",
        || gw.metrics.connections("store", Outcome::BackendUnavailable.as_str()) == 1,
        || gw.metrics.render(),
    )
    .await;
    scp.assert_running();
    gw.stop().await;
}
