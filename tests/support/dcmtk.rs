//! DCMTK peers for the interop suite: availability check (skip locally,
//! fail under `CI=true`), SCP children killed on drop (by their own PID,
//! via tokio's `kill_on_drop`), SCU runs under a deadline, free ports, and
//! waiting for a child to listen without connecting to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The DCMTK programs the interop suite runs.
pub const TOOLS: [&str; 6] = ["echoscu", "storescu", "findscu", "storescp", "wlmscpfs", "dump2dcm"];

/// Whether every tool in [`TOOLS`] runs (`--version` exits 0).
pub fn dcmtk_available() -> bool {
    TOOLS.iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Whether this is a CI run (where a missing tool is a failure, not a skip).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Returns from the test (printing "skipped: dcmtk missing") when DCMTK is
/// not installed, except under `CI=true`, where it panics.
#[macro_export]
macro_rules! require_dcmtk {
    () => {
        if !$crate::support::dcmtk::dcmtk_available() {
            if $crate::support::dcmtk::in_ci() {
                panic!("DCMTK tools {:?} are required in CI (apt-get install -y dcmtk)", $crate::support::dcmtk::TOOLS);
            }
            eprintln!("skipped: dcmtk missing");
            return;
        }
    };
}

/// A port on 127.0.0.1 that was free a moment ago (bound to 0, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn command(program: &str, args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("TCP_NODELAY", "1").stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A long-running DCMTK SCP; killed (by PID) when dropped.
pub struct ScpProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl ScpProcess {
    /// Spawns `program args…` with output to `dir/NAME.log` and waits until
    /// it listens on `port` (checked in /proc/net/tcp, so no probe
    /// association disturbs the SCP).
    pub async fn spawn(program: &str, args: &[String], port: u16, dir: &Path) -> ScpProcess {
        let log = dir.join(format!("{program}.log"));
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
        ScpProcess { name: program.to_owned(), addr: SocketAddr::from(([127, 0, 0, 1], port)), log, child }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts the SCP is still running (it did not crash on our traffic).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Whether a socket listens on 127.0.0.1:`port` or 0.0.0.0:`port` (Linux).
fn is_listening(port: u16) -> bool {
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

/// Runs an SCU to completion under `deadline` (killed if it overruns).
pub async fn run_scu(program: &str, args: &[String], dir: &Path, deadline: Duration) -> Output {
    let mut cmd = command(program, args, dir);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{program}: {e}")),
        // Dropping the future drops the child: kill_on_drop ends it.
        Err(_) => panic!("{program} {args:?} did not finish within {deadline:?}"),
    }
}

/// stdout + stderr of a finished process, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Turns a DCMTK text dump into a DICOM file with `dump2dcm`.
pub async fn dump2dcm(dump: &str, out: &Path, dir: &Path) {
    let src = out.with_extension("dump");
    std::fs::write(&src, dump).expect("write dump");
    let args = vec![src.display().to_string(), out.display().to_string()];
    let o = run_scu("dump2dcm", &args, dir, Duration::from_secs(20)).await;
    assert!(o.status.success(), "dump2dcm failed:\n{}", output_text(&o));
}

/// Strings for argument lists.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
