//! Interoperability with DCMTK as the independent DICOM implementation, on
//! both sides of the gateway: DCMTK SCUs over DICOM-TLS to the gateway, the
//! gateway in plain DICOM to DCMTK SCPs (storescp, wlmscpfs).
//!
//! Skipped with "skipped: dcmtk missing" when the tools are absent, except
//! under `CI=true`, where that is a failure.

use crate::support;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::dcmtk;
use crate::support::dicom_file::{new_uid, read_part10, ScImage};
use crate::support::gateway::{BackendSpec, GatewaySpec, ListenerSpec, RunningGateway, Security};
use crate::support::tools::{args, output_text, run_scu, ScpProcess};
use crate::support::{wait_for_count, CLOUD_AE, PACS_AE};
use dicomgate::report::Outcome;

const MWL_AE: &str = "MWL";
const SCU_DEADLINE: Duration = Duration::from_secs(60);

/// storescp (`PACS`, bit-preserving, into `dir/received`) behind listener
/// `store`; wlmscpfs (`MWL`, worklist in `dir/worklist/MWL`) behind
/// `worklist` when `with_worklist`.
struct Setup {
    gw: RunningGateway,
    storescp: ScpProcess,
    wlmscpfs: Option<ScpProcess>,
    work: tempfile::TempDir,
}

async fn setup(with_worklist: bool, store_security: Security) -> Setup {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    std::fs::create_dir_all(dir.join("received")).expect("mkdir");
    let storescp = dcmtk::storescp(PACS_AE, &["+B", "-od", "received"], dir).await;

    let mut spec = GatewaySpec::store(&[storescp.addr]).listener(|l| {
        l.security = store_security;
        l.acse = "10s".into();
        l.dimse = "20s".into();
    });
    let mut wlmscpfs = None;
    if with_worklist {
        let p = dcmtk::wlmscpfs(MWL_AE, dir).await;
        spec.backends.push(BackendSpec { name: "worklist".into(), ae_title: MWL_AE.into(), servers: vec![p.addr] });
        let mut l = ListenerSpec::tls("worklist").route(MWL_AE, "worklist");
        l.acse = "10s".into();
        l.dimse = "20s".into();
        spec.listeners.push(l);
        wlmscpfs = Some(p);
    }
    let gw = spec.start().await;
    Setup { gw, storescp, wlmscpfs, work }
}

/// TLS arguments for a DCMTK SCU: anonymous, trusting the test CA.
fn tls_anonymous(gw: &RunningGateway) -> Vec<String> {
    args(&["+tla", "+cf", &gw.files.cert("ca").display().to_string()])
}

/// TLS arguments for a DCMTK SCU presenting `name.key` / `name.pem`.
fn tls_with_identity(gw: &RunningGateway, name: &str) -> Vec<String> {
    args(&[
        "+tls",
        &gw.files.key(name).display().to_string(),
        &gw.files.cert(name).display().to_string(),
        "+cf",
        &gw.files.cert("ca").display().to_string(),
    ])
}

fn timeouts() -> Vec<String> {
    args(&["-to", "10", "-ta", "10", "-td", "20"])
}

fn target(addr: std::net::SocketAddr) -> Vec<String> {
    args(&[&addr.ip().to_string(), &addr.port().to_string()])
}

async fn echoscu(s: &Setup, tls: Vec<String>) -> std::process::Output {
    let mut a = tls;
    a.extend(timeouts());
    a.extend(args(&["-aet", CLOUD_AE, "-aec", PACS_AE]));
    a.extend(target(s.gw.addr_of("store")));
    run_scu("echoscu", &a, s.work.path(), SCU_DEADLINE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_tls_through_gateway_to_storescp() {
    require_tool!(dcmtk);
    let mut s = setup(false, tls_default()).await;
    let out = echoscu(&s, tls_anonymous(&s.gw)).await;
    assert!(out.status.success(), "echoscu failed:\n{}", output_text(&out));
    wait_for_count(&s.gw.metrics, "store", Outcome::Forwarded, 1).await;
    s.storescp.assert_running();
}

fn tls_default() -> Security {
    Security::Tls { client_ca: None, client_certificates: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_with_pinned_guide_style_certificate() {
    // The guide's "SCU authentication: Authenticated": the cloud presents its
    // self-signed CA:true certificate, pinned at the gateway.
    require_tool!(dcmtk);
    let pinned = Security::Tls { client_ca: None, client_certificates: vec!["cloud.pem".into()] };
    let s = setup(false, pinned).await;
    let out = echoscu(&s, tls_with_identity(&s.gw, "cloud")).await;
    assert!(out.status.success(), "pinned echoscu failed:\n{}", output_text(&out));
    wait_for_count(&s.gw.metrics, "store", Outcome::Forwarded, 1).await;

    let out = echoscu(&s, tls_with_identity(&s.gw, "client")).await;
    assert!(!out.status.success(), "a certificate that is not pinned was accepted:\n{}", output_text(&out));
    wait_for_count(&s.gw.metrics, "store", Outcome::TlsError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_rejected_calling_ae_sees_rejection() {
    require_tool!(dcmtk);
    let s = setup(false, tls_default()).await;
    let mut a = tls_anonymous(&s.gw);
    a.extend(timeouts());
    a.extend(args(&["-aet", "INTRUDER", "-aec", PACS_AE]));
    a.extend(target(s.gw.addr_of("store")));
    let out = run_scu("echoscu", &a, s.work.path(), SCU_DEADLINE).await;
    assert!(!out.status.success(), "INTRUDER was accepted");
    let text = output_text(&out);
    assert!(
        text.contains("Calling AE Title Not Recognized") || text.contains("Rejected Permanent"),
        "echoscu did not report the 1/1/3 rejection:\n{text}"
    );
    wait_for_count(&s.gw.metrics, "store", Outcome::RejectedCallingAe, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_tls_twenty_files_arrive_bit_identical() {
    require_tool!(dcmtk);
    let mut s = setup(false, tls_default()).await;
    let dir = s.work.path();
    std::fs::create_dir_all(dir.join("send")).expect("mkdir");
    let (study, series) = (new_uid(), new_uid());
    let mut sent = BTreeMap::new();
    let mut files = Vec::new();
    for n in 1..=24 {
        let image = ScImage::numbered(&study, &series, n);
        let path = dir.join("send").join(format!("img{n:03}.dcm"));
        image.write(&path);
        sent.insert(image.sop_instance_uid.clone(), image.dataset());
        files.push(path.display().to_string());
    }

    let mut a = tls_anonymous(&s.gw);
    a.extend(timeouts());
    a.extend(args(&["-aet", CLOUD_AE, "-aec", PACS_AE]));
    a.extend(target(s.gw.addr_of("store")));
    a.extend(files);
    let out = run_scu("storescu", &a, dir, SCU_DEADLINE).await;
    assert!(out.status.success(), "storescu failed:\n{}", output_text(&out));

    let received = received_datasets(&dir.join("received"));
    assert_eq!(
        received.len(),
        sent.len(),
        "storescp stored {} of {} files\n{}",
        received.len(),
        sent.len(),
        s.storescp.log_text()
    );
    for (uid, dataset) in &sent {
        let got = received.get(uid).unwrap_or_else(|| panic!("instance {uid} not received"));
        assert!(got == dataset, "instance {uid}: received data set differs ({} vs {} bytes)", got.len(), dataset.len());
    }
    wait_for_count(&s.gw.metrics, "store", Outcome::Forwarded, 1).await;
    s.storescp.assert_running();
    let metrics = s.gw.metrics.render();
    assert!(metrics.contains("C-STORE"), "no C-STORE counted in dicomgate_dimse_operations_total:\n{metrics}");
}

/// SOP Instance UID → data set bytes of every file storescp wrote.
fn received_datasets(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read received dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read received file");
        let p = read_part10(&bytes).unwrap_or_else(|e| panic!("{}: not a Part-10 file: {e}", path.display()));
        assert_eq!(
            p.transfer_syntax,
            support::dicom_file::EXPLICIT_VR_LE,
            "{}: stored in another transfer syntax",
            path.display()
        );
        out.insert(p.media_storage_sop_instance_uid, p.dataset);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findscu_worklist_through_gateway_to_wlmscpfs() {
    require_tool!(dcmtk);
    let mut s = setup(true, tls_default()).await;
    let dir = s.work.path();
    std::fs::create_dir_all(dir.join("responses")).expect("mkdir");
    let mut a = args(&["-W"]);
    a.extend(tls_anonymous(&s.gw));
    a.extend(timeouts());
    a.extend(args(&[
        "-aet",
        CLOUD_AE,
        "-aec",
        MWL_AE,
        "-X",
        "-od",
        "responses",
        "-k",
        "(0010,0010)",
        "-k",
        "(0010,0020)",
        "-k",
        "(0040,0100)[0].(0008,0060)=US",
        "-k",
        "(0040,0100)[0].(0040,0001)",
    ]));
    a.extend(target(s.gw.addr_of("worklist")));
    let out = run_scu("findscu", &a, dir, SCU_DEADLINE).await;
    assert!(out.status.success(), "findscu failed:\n{}", output_text(&out));

    let responses: Vec<Vec<u8>> = std::fs::read_dir(dir.join("responses"))
        .expect("responses dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read response"))
        .collect();
    let wl = s.wlmscpfs.as_mut().map(|p| p.log_text()).unwrap_or_default();
    assert_eq!(responses.len(), 1, "expected one worklist item:\n{}\n{wl}", output_text(&out));
    let r = &responses[0];
    for expected in ["Gateway^Worklist", "PID-MWL-1", "BUTTERFLY"] {
        assert!(
            r.windows(expected.len()).any(|w| w == expected.as_bytes()),
            "{expected} missing from the worklist response"
        );
    }
    wait_for_count(&s.gw.metrics, "worklist", Outcome::Forwarded, 1).await;
    // One match: one pending response, then the final success (PS3.4 K.4.1.3).
    let text = s.gw.metrics.render();
    for (status, n) in [("pending", 1), ("success", 1)] {
        let line = format!(
            "dicomgate_dimse_operations_total{{listener=\"worklist\",operation=\"C-FIND\",status=\"{status}\"}} {n}"
        );
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }

    // A query for another modality finds nothing (the SCP really filtered).
    std::fs::remove_dir_all(dir.join("responses")).expect("rm");
    std::fs::create_dir_all(dir.join("responses")).expect("mkdir");
    let a: Vec<String> = a
        .into_iter()
        .map(|x| if x == "(0040,0100)[0].(0008,0060)=US" { "(0040,0100)[0].(0008,0060)=MR".to_owned() } else { x })
        .collect();
    let out = run_scu("findscu", &a, dir, SCU_DEADLINE).await;
    assert!(out.status.success(), "findscu (MR) failed:\n{}", output_text(&out));
    let n = std::fs::read_dir(dir.join("responses")).expect("responses").count();
    assert_eq!(n, 0, "an MR query matched the US worklist item");
    if let Some(p) = s.wlmscpfs.as_mut() {
        p.assert_running();
    }
}
