//! Backend health monitors against real SCPs (DCMTK): a server stopped
//! mid-run is marked down within its probe window and new associations go to
//! the next server with no client-visible failure; a server that accepts TCP
//! but never answers is skipped once the echo check marks it down (a TCP
//! monitor would not); an echo with an AE title the SCP does not serve marks
//! it down; a reload replaces the monitors and keeps what it can.

use crate::support;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::dcmtk::{echoscu, storescp, wlmscpfs};
use crate::support::gateway::RunningGateway;
use crate::support::tools::{args, output_text, ScpProcess};
use dicomgate::report::Outcome;

/// Probe settings of these tests: a window (fall × interval + timeout) of
/// 1.2 s.
const INTERVAL: Duration = Duration::from_millis(400);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(15);

fn health(mode: &str) -> String {
    format!(
        "{{mode: {mode}, interval: {}ms, timeout: {}ms, fall: {FALL}, rise: {RISE}, calling_ae_title: DICOMGATE}}",
        INTERVAL.as_millis(),
        INTERVAL.as_millis()
    )
}

fn servers(list: &[SocketAddr]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A plaintext listener `store` (the client side is not under test here).
fn listener(routes: &str) -> String {
    format!(
        "listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    \
         routes: {routes}\n    timeouts: {{acse: 3s, dimse: 10s, connect: 2s}}\n"
    )
}

fn prelude() -> &'static str {
    "admin: {listen: 127.0.0.1:0}\nlog: {level: warn}\nshutdown: {grace_period: 1s}\n"
}

async fn assert_echo_ok(gw: &RunningGateway, called: &str, dir: &Path) {
    let out = echoscu(gw.addr_of("store"), "CLOUD", called, dir).await;
    assert!(
        out.status.success(),
        "echoscu through the gateway failed:\n{}\n{}",
        output_text(&out),
        gw.health.status_json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_marked_down_within_its_probe_window_and_traffic_moves_on() {
    require_tool!("storescp", "echoscu");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let first = storescp("PACS", &[], dir).await;
    let mut second = storescp("PACS", &[], dir).await;
    let (a, b) = (first.addr, second.addr);
    let yaml = format!(
        "{}backends:\n  pacs:\n    ae_title: PACS\n    servers: {}\n    health_check: {}\n{}",
        prelude(),
        servers(&[a, b]),
        health("echo"),
        listener("{PACS: pacs}")
    );
    let gw = RunningGateway::start_yaml(dir, &yaml).await;
    gw.wait_state("pacs", a, "up", SETTLE).await;
    gw.wait_state("pacs", b, "up", SETTLE).await;
    assert_eq!(gw.metrics.backend_up("pacs", &a.to_string()), Some(true));
    assert_echo_ok(&gw, "PACS", dir).await;

    first.kill().await;
    let window = INTERVAL * FALL + INTERVAL;
    let took = gw.wait_state("pacs", a, "down", window + SLACK * 3).await;
    assert!(took <= window + SLACK, "marked down after {took:?}; the probe window is {window:?}");
    assert_eq!(gw.metrics.backend_up("pacs", &a.to_string()), Some(false));
    assert_eq!(gw.server_state("pacs", b), "up");
    let why = gw.last_probe("pacs", a);
    assert!(why.contains("refused"), "last probe of the stopped server: {why}");

    // New associations go to the second server: no client sees a failure.
    for _ in 0..3 {
        assert_echo_ok(&gw, "PACS", dir).await;
    }
    support::wait_until(
        SETTLE,
        "4 forwarded associations counted",
        || gw.metrics.connections("store", Outcome::Forwarded.as_str()) == 4,
        || gw.metrics.render(),
    )
    .await;
    assert_eq!(gw.metrics.connections("store", Outcome::BackendUnavailable.as_str()), 0);
    second.assert_running();

    // Back on its port: up again after `rise` good probes.
    let revived = ScpProcess::spawn_named(
        "storescp",
        "storescp-revived",
        &args(&["-aet", "PACS", "-dhl", &a.port().to_string()]),
        a.port(),
        dir,
    )
    .await;
    let took = gw.wait_state("pacs", a, "up", SETTLE).await;
    assert!(took <= INTERVAL * (RISE + 1) + SLACK, "marked up again after {took:?}");
    assert_eq!(gw.metrics.backend_up("pacs", &a.to_string()), Some(true));
    drop(revived);
    gw.stop().await;
}

/// A TCP listener that accepts and then says nothing: a hung PACS.
async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_skipped_once_the_echo_check_marks_it_down() {
    require_tool!("storescp", "echoscu");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (hung, hung_task) = silent_server().await;
    let mut good = storescp("PACS", &[], dir).await;
    // Same servers twice: `pacs` with the echo check, `unchecked` without.
    let yaml = format!(
        "{}backends:\n  pacs:\n    ae_title: PACS\n    servers: {list}\n    health_check: {}\n  \
         unchecked:\n    ae_title: PACS\n    servers: {list}\n    health_check: {{mode: \"off\"}}\n{}",
        prelude(),
        health("echo"),
        listener("{PACS: pacs, NOCHECK: unchecked}"),
        list = servers(&[hung, good.addr]),
    );
    let gw = RunningGateway::start_yaml(dir, &yaml).await;
    gw.wait_state("pacs", hung, "down", SETTLE).await;
    gw.wait_state("pacs", good.addr, "up", SETTLE).await;
    let why = gw.last_probe("pacs", hung);
    assert!(why.contains("probe timeout"), "last probe of the hung server: {why}");
    assert_eq!(gw.server_state("unchecked", hung), "unchecked");
    assert_eq!(gw.metrics.backend_up("unchecked", &hung.to_string()), None, "mode off exports no verdict");

    // The TCP connect to the hung server succeeds, so only the echo check
    // keeps associations away from it.
    let started = tokio::time::Instant::now();
    assert_echo_ok(&gw, "PACS", dir).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the association waited for the hung server");

    // Without a check, the first server in order gets the association and
    // never answers: the client gets A-ABORT after the ACSE timeout.
    let out = echoscu(gw.addr_of("store"), "CLOUD", "NOCHECK", dir).await;
    assert!(!out.status.success(), "an association through the hung server succeeded:\n{}", output_text(&out));
    good.assert_running();
    hung_task.abort();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_with_an_ae_title_the_scp_does_not_serve_marks_it_down_and_a_reload_fixes_it() {
    require_tool!("wlmscpfs", "dump2dcm", "echoscu");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    // wlmscpfs has one directory per AE title it serves: MWL only.
    let mut mwl = wlmscpfs("MWL", dir).await;
    let config = |wrong_ae: &str| {
        format!(
            "{}backends:\n  right:\n    ae_title: MWL\n    servers: {list}\n    health_check: {h}\n  \
             wrong:\n    ae_title: {wrong_ae}\n    servers: {list}\n    health_check: {h}\n  \
             tcp_only:\n    ae_title: NOTMWL\n    servers: {list}\n    health_check: {tcp}\n{}",
            prelude(),
            listener("{MWL: right}"),
            list = servers(&[mwl.addr]),
            h = health("echo"),
            tcp = health("tcp"),
        )
    };
    let mut gw = RunningGateway::start_yaml(dir, &config("NOTMWL")).await;
    let server = mwl.addr;
    gw.wait_state("right", server, "up", SETTLE).await;
    gw.wait_state("wrong", server, "down", SETTLE).await;
    // F5's TCP monitor would call it up: the port is open.
    gw.wait_state("tcp_only", server, "up", SETTLE).await;
    let why = gw.last_probe("wrong", server);
    assert!(why.contains("called-AE-title-not-recognized"), "last probe with the wrong AE title: {why}");
    assert_eq!(gw.metrics.backend_up("wrong", &server.to_string()), Some(false));
    assert_echo_ok(&gw, "MWL", dir).await;

    // GET /status shows each server's state, last result and change.
    let (code, body) = gw.admin_get("/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    let wrong = &status["backends"]["wrong"];
    assert_eq!(wrong["ae_title"], "NOTMWL");
    assert_eq!(wrong["servers"][0]["state"], "down");
    assert_eq!(wrong["servers"][0]["last_probe"]["ok"], false);
    assert!(wrong["servers"][0]["last_change"].is_string());
    assert!(status["backends"]["right"]["servers"][0]["last_probe"]["latency_ms"].is_number());

    let right_changed = status["backends"]["right"]["servers"][0]["last_change"].clone();

    // SIGHUP with the AE title corrected: the new monitor judges afresh.
    gw.reload(&config("MWL")).await;
    gw.wait_state("wrong", server, "up", SETTLE).await;
    assert_eq!(gw.metrics.backend_up("wrong", &server.to_string()), Some(true));
    // An unchanged backend kept its state through the reload (no new change).
    let status: serde_json::Value = serde_json::from_str(&gw.health.status_json()).expect("status is JSON");
    assert_eq!(status["backends"]["right"]["servers"][0]["state"], "up");
    assert_eq!(status["backends"]["right"]["servers"][0]["last_change"], right_changed);
    mwl.assert_running();
    gw.stop().await;
}
