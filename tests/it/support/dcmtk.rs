//! DCMTK as the independent peers: the programs `require_tool!(dcmtk)`
//! checks, `dump2dcm`, `echoscu` (plain with chosen AE titles, or as the
//! cloud over TLS), and the SCPs put behind the gateway (`storescp`,
//! `wlmscpfs` with one worklist item). All run with `TCP_NODELAY=1` (DCMTK
//! 3.6.7 otherwise waits ~40 ms per PDU for a delayed ACK). DCMTK SCPs take
//! their port on the command line and cannot bind port 0 and report it,
//! hence [`super::ports::free_port`]. The process plumbing is in
//! [`super::tools`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use super::tools::{args, free_port, output_text, run_scu, ScpProcess};

/// The DCMTK programs the suites run (`require_tool!(dcmtk)`).
pub const TOOLS: [&str; 6] = ["echoscu", "storescu", "findscu", "storescp", "wlmscpfs", "dump2dcm"];

/// Turns a DCMTK text dump into a DICOM file with `dump2dcm`.
pub async fn dump2dcm(dump: &str, out: &Path, dir: &Path) {
    let src = out.with_extension("dump");
    std::fs::write(&src, dump).expect("write dump");
    let args = vec![src.display().to_string(), out.display().to_string()];
    let o = run_scu("dump2dcm", &args, dir, Duration::from_secs(20)).await;
    assert!(o.status.success(), "dump2dcm failed:\n{}", output_text(&o));
}

/// `echoscu` (plain TCP) to `addr` with these AE titles.
pub async fn echoscu(addr: SocketAddr, calling: &str, called: &str, dir: &Path) -> Output {
    let a = args(&[
        "-aet",
        calling,
        "-aec",
        called,
        "-to",
        "10",
        "-ta",
        "10",
        "-td",
        "10",
        &addr.ip().to_string(),
        &addr.port().to_string(),
    ]);
    run_scu("echoscu", &a, dir, Duration::from_secs(30)).await
}

/// `echoscu` as the cloud (`CLOUD` calling `PACS`; with `tls`, `+tla -ic`:
/// TLS without verifying the certificate, as the README walk-through does)
/// to `addr`, under `deadline`.
pub async fn cloud_echoscu(addr: SocketAddr, tls: bool, deadline: Duration) -> Output {
    let mut a = args(&["-aet", super::CLOUD_AE, "-aec", super::PACS_AE, "-to", "10", "-ta", "10", "-td", "10"]);
    if tls {
        a.extend(args(&["+tla", "-ic"]));
    }
    a.extend([addr.ip().to_string(), addr.port().to_string()]);
    run_scu("echoscu", &a, &std::env::temp_dir(), deadline).await
}

/// Asserts that a C-ECHO from the cloud through the gateway succeeds.
pub async fn assert_echo(addr: SocketAddr, tls: bool) {
    let out = cloud_echoscu(addr, tls, Duration::from_secs(30)).await;
    assert!(out.status.success(), "echoscu to {addr} (tls {tls}) failed:\n{}", output_text(&out));
}

/// `storescp` with AE title `ae` (it accepts any called AE title) and
/// `extra` options, on a free port, logging to `dir/storescp-PORT.log`.
pub async fn storescp(ae: &str, extra: &[&str], dir: &Path) -> ScpProcess {
    let port = free_port();
    let mut a = args(&["-aet", ae, "-ta", "10", "-td", "20", "-dhl"]);
    a.extend(args(extra));
    a.push(port.to_string());
    ScpProcess::spawn_named("storescp", &format!("storescp-{port}"), &a, port, dir).await
}

/// One worklist item (a lung ultrasound for `Gateway^Worklist`).
pub const WORKLIST_DUMP: &str = r#"
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [ACC-MWL-1]
(0010,0010) PN [Gateway^Worklist]
(0010,0020) LO [PID-MWL-1]
(0010,0030) DA [19700101]
(0010,0040) CS [O]
(0020,000d) UI [2.25.3141592653589793238462643383279]
(0032,1032) PN [Referrer^Doctor]
(0032,1060) LO [Lung ultrasound]
(0040,0100) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=9)
    (0008,0060) CS [US]
    (0040,0001) AE [BUTTERFLY]
    (0040,0002) DA [20240102]
    (0040,0003) TM [101500]
    (0040,0006) PN [Operator^Test]
    (0040,0007) LO [Lung US]
    (0040,0009) SH [SPS-1]
    (0040,0010) SH [STATION1]
    (0040,0011) SH [ROOM1]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0040,1001) SH [RP-1]
(0040,1003) SH [LOW]
"#;

/// `wlmscpfs -s` serving AE title `ae` from `dir/worklist/AE` (one item from
/// [`WORKLIST_DUMP`] and the `lockfile` it requires): every other called AE
/// title is refused (A-ASSOCIATE-RJ 1/1/7).
pub async fn wlmscpfs(ae: &str, dir: &Path) -> ScpProcess {
    let ae_dir = dir.join("worklist").join(ae);
    std::fs::create_dir_all(&ae_dir).expect("mkdir worklist");
    std::fs::write(ae_dir.join("lockfile"), b"").expect("lockfile");
    dump2dcm(WORKLIST_DUMP, &ae_dir.join("item1.wl"), dir).await;
    let port = free_port();
    let a = args(&["-s", "-dfp", "worklist", "-ta", "10", "-td", "20", "-dhl", &port.to_string()]);
    ScpProcess::spawn_named("wlmscpfs", &format!("wlmscpfs-{port}"), &a, port, dir).await
}
