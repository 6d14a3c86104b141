//! `rewrite_called_ae_title: true` with DCMTK peers: the cloud calls the
//! gateway `WORKLIST`, the worklist SCP only answers to `MWL` (wlmscpfs has
//! one directory per AE title it serves, and refuses any other called AE
//! title with A-ASSOCIATE-RJ 1/1/7). The forwarded RQ carries `MWL` (bytes
//! patched, PS3.8 §9.3.2); the A-ASSOCIATE-AC returned carries the titles
//! exactly as the client sent them (PS3.8 §9.3.3).

use crate::support;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::support::dcmtk::wlmscpfs;
use crate::support::gateway::RunningGateway;
use crate::support::raw::{self, ae, Answer};
use crate::support::tools::{args, output_text, run_scu, ScpProcess};
use dicomgate::report::Outcome;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Listener `worklist`: `WORKLIST` → backend `mwl` (rewritten to `MWL`),
/// `DIRECT` → backend `direct` (same SCP, no rewrite).
async fn setup(dir: &Path) -> (ScpProcess, RunningGateway) {
    let scp = wlmscpfs("MWL", dir).await;
    let yaml = format!(
        "log: {{level: warn}}\nshutdown: {{grace_period: 1s}}\nbackends:\n  mwl:\n    ae_title: MWL\n    \
         servers: [\"{a}\"]\n    rewrite_called_ae_title: true\n    health_check: {{mode: \"off\"}}\n  direct:\n    \
         ae_title: MWL\n    servers: [\"{a}\"]\n    health_check: {{mode: \"off\"}}\nlisteners:\n  worklist:\n    \
         listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    \
         routes: {{WORKLIST: mwl, DIRECT: direct}}\n    timeouts: {{acse: 10s, dimse: 20s, connect: 5s}}\n",
        a = scp.addr
    );
    let gw = RunningGateway::start_yaml(dir, &yaml).await;
    (scp, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findscu_calls_worklist_and_wlmscpfs_answers_as_mwl() {
    require_tool!("wlmscpfs", "findscu", "dump2dcm");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (mut scp, gw) = setup(dir).await;
    std::fs::create_dir_all(dir.join("responses")).expect("mkdir");
    let addr = gw.addr_of("worklist");
    let mut a = args(&["-W", "-aet", "CLOUD", "-aec", "WORKLIST", "-to", "10", "-ta", "10", "-td", "20"]);
    a.extend(args(&["-X", "-od", "responses", "-k", "(0010,0010)", "-k", "(0040,0100)[0].(0008,0060)=US"]));
    a.extend([addr.ip().to_string(), addr.port().to_string()]);
    let out = run_scu("findscu", &a, dir, Duration::from_secs(60)).await;
    assert!(out.status.success(), "findscu failed:\n{}\n--- wlmscpfs\n{}", output_text(&out), scp.log_text());
    let responses: Vec<Vec<u8>> = std::fs::read_dir(dir.join("responses"))
        .expect("responses")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(responses.len(), 1, "expected the one worklist item:\n{}", output_text(&out));
    assert!(responses[0].windows(16).any(|w| w == b"Gateway^Worklist"), "not the worklist item");
    scp.assert_running();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ac_carries_the_titles_the_client_sent_and_without_rewrite_the_scp_refuses() {
    require_tool!("wlmscpfs", "dump2dcm");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (mut scp, gw) = setup(dir).await;
    let addr = gw.addr_of("worklist");

    let mut s = raw::connect(LOCALHOST, addr, None).await;
    let Answer::Accepted(ac) = raw::associate(&mut *s, "WORKLIST", "CLOUD").await else {
        panic!("WORKLIST (rewritten to MWL) was not accepted\n{}", scp.log_text())
    };
    let (called, calling) = ac.ae_titles();
    assert_eq!(called, ae("WORKLIST"), "called AE in the AC: {:?}", String::from_utf8_lossy(&called));
    assert_eq!(calling, ae("CLOUD"), "calling AE in the AC: {:?}", String::from_utf8_lossy(&calling));
    raw::release(&mut *s).await;
    // Closed before the next association: wlmscpfs -s serves one at a time.
    drop(s);

    // The same SCP without the rewrite: it does check the called AE title.
    let mut s = raw::connect(LOCALHOST, addr, None).await;
    assert_eq!(raw::associate(&mut *s, "DIRECT", "CLOUD").await, Answer::Rejected(1, 1, 7));

    support::wait_until(
        Duration::from_secs(10),
        "two forwarded associations",
        || gw.metrics.connections("worklist", Outcome::Forwarded.as_str()) == 2,
        || gw.metrics.render(),
    )
    .await;
    scp.assert_running();
    gw.stop().await;
}
