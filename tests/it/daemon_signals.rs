//! The daemon as an admin runs it: the real binary, real signals, real DCMTK
//! peers. Reload rotates the certificate under a live transfer; an invalid
//! reload keeps serving; SIGTERM drains a transfer in flight; JSON logs carry
//! one audit object per connection.

use crate::support;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::dicom_file::{new_uid, ScImage};
use crate::support::pki::{pki, CapturingVerifier};
use crate::support::tools::{args, free_port, output_text, run_scu, ScpProcess};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

fn write_identity(dir: &Path, cert_pem: &str, key_pem: &str) {
    std::fs::write(dir.join("scp_cert.pem"), cert_pem).expect("cert");
    std::fs::write(dir.join("scp_key.pem"), key_pem).expect("key");
}

/// The daemon's configuration: its listener and admin endpoint on port 0
/// (the kernel picks; [`Daemon`] reads the bound addresses from the startup
/// lines), the backend on `backend`.
fn config_text(backend: u16, json: bool) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
log: {{format: {format}, level: info}}
shutdown: {{grace_period: 60s}}
backends:
  pacs: {{ae_title: STORESCP, servers: ["127.0.0.1:{backend}"]}}
listeners:
  store:
    listen: "127.0.0.1:0"
    tls: {{certificate: scp_cert.pem, private_key: scp_key.pem}}
    allow: [127.0.0.0/8]
    calling_ae_titles: [BUTTERFLY]
    routes: {{STORESCP: pacs}}
    timeouts: {{acse: 10s, dimse: 60s, connect: 5s}}
"#,
        format = if json { "json" } else { "text" }
    )
}

/// `n` images of `side`×`side` bytes of pixels in `dir`; returns their paths.
fn images(dir: &Path, n: u32, side: u16) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("image dir");
    let (study, series) = (new_uid(), new_uid());
    (0..n)
        .map(|i| {
            let mut img = ScImage::numbered(&study, &series, i + 1);
            img.rows = side;
            img.columns = side;
            let path = dir.join(format!("img{i:03}.dcm"));
            img.write(&path);
            path.display().to_string()
        })
        .collect()
}

/// A storescp that sleeps one second after each object, so a transfer of a
/// few objects is reliably in flight while the test signals the gateway.
async fn slow_pacs(dir: &Path) -> ScpProcess {
    let port = free_port();
    let out = dir.join("received");
    std::fs::create_dir_all(&out).expect("received dir");
    let a = args(&["-aet", "STORESCP", "--sleep-after", "1", "-od", &out.display().to_string(), &port.to_string()]);
    ScpProcess::spawn("storescp", &a, port, dir).await
}

fn storescu(store: SocketAddr, files: &[String]) -> Vec<String> {
    let mut a = args(&["+tla", "-ic", "-aet", "BUTTERFLY", "-aec", "STORESCP", "-to", "30", "-ta", "30", "-td", "60"]);
    a.extend([store.ip().to_string(), store.port().to_string()]);
    a.extend(files.iter().cloned());
    a
}

fn received(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("received")).map(|d| d.count()).unwrap_or(0)
}

/// The leaf certificate a new TLS connection to `addr` is shown.
async fn presented_certificate(addr: SocketAddr) -> Vec<u8> {
    support::init();
    let verifier = CapturingVerifier::new();
    let connector = tokio_rustls::TlsConnector::from(verifier.client_config());
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let _tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    verifier.seen().expect("a certificate").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_the_certificate_without_cutting_a_live_transfer() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = slow_pacs(dir.path()).await;
    let first = &pki().server;
    write_identity(dir.path(), &first.cert_pem, &first.key_pem);
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text(pacs.addr.port(), false)).expect("config");
    let daemon = Daemon::start(&config).await;
    let store = daemon.addr("store");
    assert_eq!(presented_certificate(store).await, first.cert_der.to_vec());

    let files = images(&dir.path().join("images"), 4, 512);
    let transfer = tokio::spawn({
        let (a, d) = (storescu(store, &files), dir.path().to_owned());
        async move { run_scu("storescu", &a, &d, Duration::from_secs(120)).await }
    });
    // In flight: the association is up and the PACS is sleeping after object 1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received(dir.path()) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "transfer never started:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rotate: the same file names, another certificate (a self-signed one).
    let second = &pki().cloud;
    write_identity(dir.path(), &second.cert_pem, &second.key_pem);
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10)).await;
    assert_eq!(presented_certificate(store).await, second.cert_der.to_vec(), "new connections see the new certificate");
    assert!(received(dir.path()) < files.len(), "the transfer must still be in flight after the reload");

    let out = transfer.await.expect("storescu task");
    assert!(out.status.success(), "the live transfer was cut:\n{}", output_text(&out));
    assert_eq!(received(dir.path()), files.len());
    assert_eq!(daemon.scrape().await.value("dicomgate_config_reloads_total", &[("result", "success")]), 1.0);
    // The audit line is written when the gateway's side of the association
    // has closed too, a moment after storescu exits.
    daemon.wait_for_log("dimse=\"C-STORE rq=4 success=4\"", Duration::from_secs(10)).await;
    let log = daemon.log_text();
    let reloaded_at = log.find("configuration reloaded").expect("reload line");
    let ended_at = log.rfind("outcome=\"forwarded\"").expect("audit line of the transfer");
    assert!(ended_at > reloaded_at, "the transfer ended after the reload");
    drop(pacs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_serving_and_names_the_key() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let out = dir.path().join("received");
    std::fs::create_dir_all(&out).expect("dir");
    let a = args(&["-aet", "STORESCP", "-od", &out.display().to_string(), &port.to_string()]);
    let _pacs = ScpProcess::spawn("storescp", &a, port, dir.path()).await;
    write_identity(dir.path(), &pki().server.cert_pem, &pki().server.key_pem);
    let config = dir.path().join("config.yaml");
    let good = config_text(port, false);
    std::fs::write(&config, &good).expect("config");
    let daemon = Daemon::start(&config).await;
    let store = daemon.addr("store");

    std::fs::write(&config, good.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/33]")).expect("broken config");
    daemon.signal("HUP");
    daemon.wait_for_log("reload failed", Duration::from_secs(10)).await;
    assert!(daemon.log_text().contains("listeners.store.allow[0]"), "{}", daemon.log_text());
    assert_eq!(daemon.scrape().await.value("dicomgate_config_reloads_total", &[("result", "failure")]), 1.0);
    assert_eq!(daemon.get("/readyz").await.0, 200);

    let echo = args(&["+tla", "-ic", "-aet", "BUTTERFLY", "-aec", "STORESCP", "127.0.0.1", &store.port().to_string()]);
    let o = run_scu("echoscu", &echo, dir.path(), Duration::from_secs(30)).await;
    assert!(o.status.success(), "still serving the old configuration:\n{}", output_text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_in_flight_finish_then_exits_zero() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = slow_pacs(dir.path()).await;
    write_identity(dir.path(), &pki().server.cert_pem, &pki().server.key_pem);
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text(pacs.addr.port(), false)).expect("config");
    let mut daemon = Daemon::start(&config).await;
    let store = daemon.addr("store");
    assert_eq!(daemon.get("/readyz").await.0, 200);

    let files = images(&dir.path().join("images"), 3, 256);
    let transfer = tokio::spawn({
        let (a, d) = (storescu(store, &files), dir.path().to_owned());
        async move { run_scu("storescu", &a, &d, Duration::from_secs(120)).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received(dir.path()) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "transfer never started:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.signal("TERM");
    daemon.wait_for_log("draining live associations", Duration::from_secs(10)).await;
    assert_eq!(daemon.get("/readyz").await.0, 503, "not ready while draining");
    assert!(TcpStream::connect(store).await.is_err(), "no new connections while draining");

    let out = transfer.await.expect("storescu task");
    assert!(out.status.success(), "the transfer in flight was cut:\n{}", output_text(&out));
    assert_eq!(received(dir.path()), files.len(), "every file arrived");
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    drop(pacs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_audit_object_per_connection() {
    require_tool!(dcmtk);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let a = args(&["-aet", "STORESCP", "--ignore", &port.to_string()]);
    let _pacs = ScpProcess::spawn("storescp", &a, port, dir.path()).await;
    write_identity(dir.path(), &pki().server.cert_pem, &pki().server.key_pem);
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_text(port, true)).expect("config");
    let daemon = Daemon::start(&config).await;
    let store = daemon.addr("store");

    for calling in ["BUTTERFLY", "INTRUDER"] {
        let echo = args(&["+tla", "-ic", "-aet", calling, "-aec", "STORESCP", "127.0.0.1", &store.port().to_string()]);
        run_scu("echoscu", &echo, dir.path(), Duration::from_secs(30)).await;
    }
    // Each audit line is written when the gateway's side has closed, which
    // may be a moment after the SCU exits: wait for both.
    daemon.wait_for_log("rejected_calling_ae", Duration::from_secs(10)).await;
    daemon.wait_for_log("C-ECHO rq=1 success=1", Duration::from_secs(10)).await;
    let mut audits = Vec::new();
    for line in daemon.log_text().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        if value["target"] == "dicomgate::audit" {
            audits.push(value);
        }
    }
    assert_eq!(audits.len(), 2, "one audit object per connection: {audits:?}");
    let by_outcome =
        |o: &str| audits.iter().find(|a| a["outcome"] == o).unwrap_or_else(|| panic!("no {o}: {audits:?}"));
    let ok = by_outcome("forwarded");
    assert_eq!(ok["outcome"], "forwarded");
    assert_eq!(ok["calling_ae"], "BUTTERFLY");
    assert_eq!(ok["dimse"], "C-ECHO rq=1 success=1");
    assert_eq!(ok["tls_version"], "TLSv1.3");
    assert!(ok["duration_ms"].is_u64());
    let rejected = by_outcome("rejected_calling_ae");
    assert_eq!(rejected["association"], "rejected-permanent, service-user, calling-AE-title-not-recognized (1/1/3)");
}
