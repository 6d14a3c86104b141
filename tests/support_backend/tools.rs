//! External programs: availability (skip locally, fail in CI), long-running
//! peers (DCMTK SCPs, HAProxy) killed on drop by their own handle, client
//! runs under a deadline, and waiting for a child to listen without
//! connecting to it (a probe association would disturb the SCP's log).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Whether `program` runs at all (`--version` or `-v`, whichever it knows).
pub fn available(program: &str) -> bool {
    ["--version", "-v"].iter().any(|flag| {
        std::process::Command::new(program)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Whether this is a CI run, where a missing tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Returns from the test when one of the programs is missing (printing
/// `skipped: … missing`), except under `CI=true`, where it panics.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        let missing: Vec<&str> =
            [$($tool),+].into_iter().filter(|t| !$crate::support_backend::tools::available(t)).collect();
        if !missing.is_empty() {
            if $crate::support_backend::tools::in_ci() {
                panic!("{missing:?} required in CI (scripts/install-test-deps.sh installs them)");
            }
            eprintln!("skipped: {missing:?} missing");
            return;
        }
    };
}

/// A loopback port that was free a moment ago (bound to 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn command(program: &str, args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("TCP_NODELAY", "1").stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A long-running child (an SCP, HAProxy); killed when dropped.
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl Peer {
    /// Spawns `program args…` in `dir`, output to `dir/LOGNAME.log`, and
    /// waits until 127.0.0.1:`port` listens (at most 10 s).
    pub async fn spawn(program: &str, log_name: &str, args: &[String], port: u16, dir: &Path) -> Peer {
        let log = dir.join(format!("{log_name}.log"));
        let file = std::fs::File::create(&log).expect("create log");
        let err = file.try_clone().expect("clone log");
        let mut child = command(program, args, dir)
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{program} exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{program} did not listen on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Peer { name: log_name.to_owned(), addr: SocketAddr::from(([127, 0, 0, 1], port)), log, child }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    /// Kills the child and waits until it is gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Whether a socket listens on `port` (Linux /proc/net/tcp{,6}).
pub fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .map(|text| {
                text.lines().skip(1).any(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

/// Runs a client to completion under `deadline` (killed if it overruns).
pub async fn run(program: &str, args: &[String], dir: &Path, deadline: Duration) -> Output {
    let mut cmd = command(program, args, dir);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{program}: {e}")),
        Err(_) => panic!("{program} {args:?} did not finish within {deadline:?}"),
    }
}

pub fn output_text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// DCMTK `echoscu` (plain TCP) to `addr` with these AE titles.
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
    run("echoscu", &a, dir, Duration::from_secs(30)).await
}

/// A DCMTK SCP: `storescp` accepts any called AE title; `wlmscpfs` only
/// those with a directory under its data file path.
pub async fn storescp(ae: &str, extra: &[&str], dir: &Path) -> Peer {
    let port = free_port();
    let mut a = args(&["-aet", ae, "-ta", "10", "-td", "20", "-dhl"]);
    a.extend(args(extra));
    a.push(port.to_string());
    Peer::spawn("storescp", &format!("storescp-{port}"), &a, port, dir).await
}

/// Turns a DCMTK text dump into a DICOM file.
pub async fn dump2dcm(dump: &str, out: &Path, dir: &Path) {
    let src = out.with_extension("dump");
    std::fs::write(&src, dump).expect("write dump");
    let a = vec![src.display().to_string(), out.display().to_string()];
    let o = run("dump2dcm", &a, dir, Duration::from_secs(20)).await;
    assert!(o.status.success(), "dump2dcm failed:\n{}", output_text(&o));
}

/// One worklist item (a lung ultrasound for `Gateway^Worklist`).
pub const WORKLIST_DUMP: &str = r#"
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [ACC-REWRITE-1]
(0010,0010) PN [Gateway^Worklist]
(0010,0020) LO [PID-REWRITE-1]
(0010,0030) DA [19700101]
(0010,0040) CS [O]
(0020,000d) UI [2.25.271828182845904523536028747135]
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

/// `wlmscpfs` serving AE title `ae` (directory `root/AE` with one item and
/// the `lockfile` it requires): every other called AE title is refused.
pub async fn wlmscpfs(ae: &str, dir: &Path) -> Peer {
    let ae_dir = dir.join("worklist").join(ae);
    std::fs::create_dir_all(&ae_dir).expect("mkdir worklist");
    std::fs::write(ae_dir.join("lockfile"), b"").expect("lockfile");
    dump2dcm(WORKLIST_DUMP, &ae_dir.join("item1.wl"), dir).await;
    let port = free_port();
    let a = args(&["-s", "-dfp", "worklist", "-ta", "10", "-td", "20", "-dhl", &port.to_string()]);
    Peer::spawn("wlmscpfs", &format!("wlmscpfs-{port}"), &a, port, dir).await
}
