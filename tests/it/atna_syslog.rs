//! Issue 14: IHE ATNA audit messages reach a real syslog receiver (rsyslogd),
//! over TCP (RFC 6587 octet counting) and TLS (RFC 5425, rsyslog-gnutls)
//! with a client certificate; each is a schema-valid DICOM AuditMessage.
//! A receiver that is down never slows or stops the gateway: messages wait
//! in the bounded queue, go out when it comes back, and what cannot be
//! delivered is counted as dropped.

use crate::support;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::atna::{assert_well_formed, is_event, ReceiverTls, Rsyslog};
use crate::support::gateway::{GatewaySpec, ListenerSpec, RunningGateway, Security};
use crate::support::pki::pki;
use crate::support::raw;
use crate::support::scp::TestScp;
use crate::support::{scu, CLOUD_AE, PACS_AE};
use tokio::process::Command;

/// Generous: a 2-core box shared by several suites, and rsyslog's file
/// writer is asynchronous.
const ARRIVE: Duration = Duration::from_secs(15);

const APPLICATION_ACTIVITY: &str = "110100";
const SECURITY_ALERT: &str = "110113";
const APPLICATION_START: &str = "110120";
const APPLICATION_STOP: &str = "110121";
const NODE_AUTHENTICATION: &str = "110126";
const SOFTWARE_CONFIGURATION: &str = "110131";

macro_rules! require_rsyslog {
    () => {
        if !support::atna::receiver_present() {
            return;
        }
    };
}

fn audit_yaml(address: &str, transport: &str, extra: &str) -> String {
    format!(
        "audit:\n  source_id: dicomgate-test\n  syslog:\n    address: {address}\n    transport: {transport}\n{extra}"
    )
}

/// A plaintext listener (the audit trail does not depend on the listener's
/// security) in front of `backend`, with the audit section appended.
fn gateway_yaml(backend: std::net::SocketAddr, audit: &str) -> String {
    let spec = GatewaySpec::store(&[backend]).listener(|l| *l = ListenerSpec::plaintext("store"));
    format!("{}{audit}", spec.to_yaml())
}

async fn start(dir: &Path, yaml: &str) -> RunningGateway {
    pki().write_to(dir);
    RunningGateway::start_yaml(dir, yaml).await
}

/// An A-ASSOCIATE-RQ from a calling AE title the listener does not admit.
async fn refused_calling_ae(gw: &RunningGateway, calling: &str) {
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, calling)).await.expect("send RQ");
    raw::expect_rejection(&mut s, (1, 1, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_receiver_gets_start_refused_calling_ae_and_stop() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let receiver = Rsyslog::start(tmp.path(), ReceiverTls::Off).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let mut gw = start(tmp.path(), &gateway_yaml(scp.addr, &audit_yaml(&receiver.address(), "tcp", ""))).await;

    let started =
        receiver.wait_for("Application Start", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START)).await;
    assert_well_formed(&started);
    assert_eq!(started.severity, "5", "a success is a notice");
    assert!(started.xml.contains(r#"AuditSourceID="dicomgate-test""#), "{}", started.xml);
    assert!(started.xml.contains(r#"AlternativeUserID="AETITLES=PACS""#), "the gateway's AE titles: {}", started.xml);

    refused_calling_ae(&gw, "INTRUDER").await;
    let alert = receiver
        .wait_for("Security Alert naming INTRUDER", ARRIVE, |m| {
            is_event(m, SECURITY_ALERT, NODE_AUTHENTICATION) && m.xml.contains("INTRUDER")
        })
        .await;
    assert_well_formed(&alert);
    assert_eq!(alert.severity, "4", "a refusal is a warning");
    assert!(alert.xml.contains(r#"EventOutcomeIndicator="4""#), "{}", alert.xml);
    assert!(
        alert.xml.contains(r#"UserID="INTRUDER" AlternativeUserID="AETITLES=INTRUDER" UserIsRequestor="true""#),
        "the refused peer is the requesting participant: {}",
        alert.xml
    );
    assert!(alert.xml.contains(r#"NetworkAccessPointTypeCode="2" NetworkAccessPointID="127.0.0.1""#), "{}", alert.xml);

    // An accepted association is no security event.
    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("echo through the gateway");

    gw.signal_shutdown();
    gw.join(Duration::from_secs(15)).await;
    let stopped =
        receiver.wait_for("Application Stop", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_STOP)).await;
    assert_well_formed(&stopped);
    let all = receiver.messages();
    assert_eq!(all.len(), 3, "start, one alert, stop; nothing for the accepted echo: {all:#?}");
    assert_eq!(gw.metrics.audit_messages(true), 3);
    assert_eq!(gw.metrics.audit_messages(false), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_receiver_with_client_certificate_gets_start_alert_and_stop() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let receiver = Rsyslog::start(tmp.path(), ReceiverTls::ClientCertificate).await;
    let scp = TestScp::spawn(PACS_AE).await;
    // A TLS listener that requires client certificates from the test CA.
    let spec = GatewaySpec::store(&[scp.addr]).listener(|l| {
        l.security = Security::Tls { client_ca: Some("ca.pem".into()), client_certificates: Vec::new() };
    });
    let tls = "    ca: ca.pem\n    certificate: client.pem\n    private_key: client.key\n";
    let yaml = format!("{}{}", spec.to_yaml(), audit_yaml(&receiver.address(), "tls", tls));
    let mut gw = start(tmp.path(), &yaml).await;

    let started = receiver
        .wait_for("Application Start over TLS", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START))
        .await;
    assert_well_formed(&started);

    // A cloud client without a certificate: the handshake fails.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    if let Ok(mut s) = raw::tls_over(tcp, pki().client_config(None)).await {
        // TLS 1.3: the refusal (alert certificate_required) arrives after
        // the client's Finished; whatever comes back, no association.
        let _ = raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await;
        let next = raw::read_pdu(&mut s, support::PROMPT).await;
        assert!(!matches!(next, raw::Next::Pdu(_)), "no PDU without a client certificate: {next:?}");
    }
    let alert = receiver
        .wait_for("Security Alert for the missing client certificate", ARRIVE, |m| {
            is_event(m, SECURITY_ALERT, NODE_AUTHENTICATION) && m.xml.contains("client certificate refused or missing")
        })
        .await;
    assert_well_formed(&alert);
    assert!(alert.xml.contains(r#"UserIsRequestor="true" NetworkAccessPointTypeCode="2""#), "{}", alert.xml);

    gw.signal_shutdown();
    gw.join(Duration::from_secs(15)).await;
    let stopped =
        receiver.wait_for("Application Stop", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_STOP)).await;
    assert_well_formed(&stopped);
    assert_eq!(gw.metrics.audit_messages(false), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_receiver_gets_one_message_per_datagram() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let receiver = Rsyslog::start_with_udp(tmp.path()).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let address = format!("127.0.0.1:{}", receiver.udp_port.expect("udp"));
    let mut gw = start(tmp.path(), &gateway_yaml(scp.addr, &audit_yaml(&address, "udp", ""))).await;
    let started = receiver
        .wait_for("Application Start by UDP", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START))
        .await;
    assert_well_formed(&started);
    refused_calling_ae(&gw, "DATAGRAM").await;
    let alert = receiver.wait_for("the alert by UDP", ARRIVE, |m| m.xml.contains("DATAGRAM")).await;
    assert_well_formed(&alert);
    gw.signal_shutdown();
    gw.join(Duration::from_secs(15)).await;
    receiver.wait_for("Application Stop by UDP", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_STOP)).await;
    assert_eq!(receiver.messages().len(), 3, "{:#?}", receiver.messages());
}

/// ATNA node authentication works both ways: without its certificate the
/// gateway is refused by the repository, and keeps serving regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_receiver_refuses_a_gateway_without_client_certificate_and_the_gateway_serves_on() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let receiver = Rsyslog::start(tmp.path(), ReceiverTls::ClientCertificate).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let yaml = gateway_yaml(scp.addr, &audit_yaml(&receiver.address(), "tls", "    ca: ca.pem\n"));
    let mut gw = start(tmp.path(), &yaml).await;
    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("echo while the repository refuses us");
    gw.signal_shutdown();
    gw.join(Duration::from_secs(20)).await;
    assert_eq!(gw.metrics.audit_messages(true), 0, "{:#?}", receiver.messages());
    assert_eq!(gw.metrics.audit_messages(false), 2, "Application Start and Stop, undeliverable");
    assert!(receiver.messages().is_empty(), "{:#?}", receiver.messages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_at_start_does_not_stop_the_gateway_and_gets_the_queue_later() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let port = support::ports::free_port();
    let scp = TestScp::spawn(PACS_AE).await;
    let address = format!("127.0.0.1:{port}");
    let mut gw = start(tmp.path(), &gateway_yaml(scp.addr, &audit_yaml(&address, "tcp", ""))).await;

    // Nobody listens: the gateway serves normally, refusals included.
    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("echo with the receiver down");
    refused_calling_ae(&gw, "EARLYBIRD").await;
    assert_eq!(gw.metrics.audit_messages(true), 0);

    // The receiver comes up: the queued Application Start and alert follow.
    let receiver = Rsyslog::start_on(tmp.path(), ReceiverTls::Off, port).await;
    let started = receiver
        // The delivery task may be in its longest backoff (30 s).
        .wait_for("the queued Application Start", Duration::from_secs(45), |m| {
            is_event(m, APPLICATION_ACTIVITY, APPLICATION_START)
        })
        .await;
    assert_well_formed(&started);
    receiver.wait_for("the queued alert", ARRIVE, |m| m.xml.contains("EARLYBIRD")).await;
    gw.signal_shutdown();
    gw.join(Duration::from_secs(15)).await;
    assert_eq!(gw.metrics.audit_messages(false), 0, "nothing was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_stopped_gateway_serves_and_counts_dropped_messages() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let mut receiver = Rsyslog::start(tmp.path(), ReceiverTls::Off).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let mut gw = start(tmp.path(), &gateway_yaml(scp.addr, &audit_yaml(&receiver.address(), "tcp", ""))).await;
    receiver.wait_for("Application Start", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START)).await;
    let sent_before = gw.metrics.audit_messages(true);

    receiver.stop().await;
    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("echo with the receiver stopped");
    refused_calling_ae(&gw, "NOBODYHOME").await;
    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("echo again");

    // At exit the alert and Application Stop cannot be delivered.
    gw.signal_shutdown();
    gw.join(Duration::from_secs(20)).await;
    assert_eq!(gw.metrics.audit_messages(true), sent_before, "nothing reached a stopped receiver");
    assert_eq!(gw.metrics.audit_messages(false), 2, "the alert and Application Stop were dropped and counted");
    let text = gw.metrics.render();
    assert!(text.contains(r#"dicomgate_audit_messages_total{result="dropped",sink="syslog"} 2"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_the_trail_to_the_new_receiver_and_audits_itself() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let old_dir = tmp.path().join("old");
    let new_dir = tmp.path().join("new");
    for d in [&old_dir, &new_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let old = Rsyslog::start(&old_dir, ReceiverTls::Off).await;
    let new = Rsyslog::start(&new_dir, ReceiverTls::Off).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let mut gw = start(tmp.path(), &gateway_yaml(scp.addr, &audit_yaml(&old.address(), "tcp", ""))).await;
    old.wait_for("Application Start", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START)).await;

    gw.reload(&gateway_yaml(scp.addr, &audit_yaml(&new.address(), "tcp", ""))).await;
    let reloaded = new
        .wait_for("the reload alert at the new receiver", ARRIVE, |m| {
            is_event(m, SECURITY_ALERT, SOFTWARE_CONFIGURATION) && m.xml.contains(r#"EventOutcomeIndicator="0""#)
        })
        .await;
    assert_well_formed(&reloaded);
    assert!(reloaded.event_type_codes().contains(&"110129".to_owned()), "Security Configuration too");

    // A broken file: refused, audited as a failure, the trail stays put.
    gw.reload("listeners: {}\n").await;
    let refused = new
        .wait_for("the refused reload", ARRIVE, |m| {
            is_event(m, SECURITY_ALERT, SOFTWARE_CONFIGURATION) && m.xml.contains(r#"EventOutcomeIndicator="8""#)
        })
        .await;
    assert_well_formed(&refused);
    assert!(refused.xml.contains("no listener is configured"), "the reason: {}", refused.xml);
    gw.signal_shutdown();
    gw.join(Duration::from_secs(15)).await;
    new.wait_for("Application Stop", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_STOP)).await;
    assert_eq!(old.messages().len(), 1, "only Application Start went to the old receiver: {:#?}", old.messages());
}

/// The daemon binary, real SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sends_application_stop_at_sigterm() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().expect("tempdir");
    pki().write_to(tmp.path());
    let receiver = Rsyslog::start(tmp.path(), ReceiverTls::Off).await;
    let scp = TestScp::spawn(PACS_AE).await;
    let config = tmp.path().join("dicomgate.yaml");
    std::fs::write(&config, gateway_yaml(scp.addr, &audit_yaml(&receiver.address(), "tcp", ""))).expect("write");
    let log = std::fs::File::create(tmp.path().join("dicomgate.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dicomgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dicomgate");
    let pid = child.id().expect("pid").to_string();
    let started = receiver
        .wait_for("Application Start from the daemon", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_START))
        .await;
    assert_eq!(started.procid, pid, "PROCID is the daemon's PID");
    assert!(started.xml.contains(&format!(r#"UserID="{pid}""#)), "UserID is the PID too: {}", started.xml);

    let status = std::process::Command::new("kill").args(["-s", "TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exit = support::within(Duration::from_secs(20), "dicomgate to exit", child.wait()).await.expect("wait");
    assert!(exit.success(), "exit 0 after SIGTERM: {exit:?}");
    let stopped = receiver
        .wait_for("Application Stop at SIGTERM", ARRIVE, |m| is_event(m, APPLICATION_ACTIVITY, APPLICATION_STOP))
        .await;
    assert_eq!(stopped.procid, pid);
    if let Err(problems) = support::atna::schema::check(&stopped.xml) {
        panic!("{problems:?}\n{}", stopped.xml);
    }
}
