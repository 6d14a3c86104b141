//! External programs (DCMTK, HAProxy, OpenSSL, promtool, …): availability
//! (the body of [`crate::require_tool!`]: skip locally, fail under
//! `CI=true`), long-running peers killed on drop (by their own PID, via
//! tokio's `kill_on_drop`), client runs under a deadline, free ports, and
//! waiting for a child to listen without connecting to it (a probe
//! association would disturb an SCP and its log).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Whether `program` runs at all: one of `--version`, `-v` or `version`
/// exits 0 (DCMTK knows the first, HAProxy the second, OpenSSL the third).
pub fn available(program: &str) -> bool {
    ["--version", "-v", "version"].iter().any(|flag| {
        std::process::Command::new(program)
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The Debian package that provides `program`, for the skip/fail message.
fn package_of(program: &str) -> &str {
    match program {
        "echoscu" | "storescu" | "findscu" | "storescp" | "wlmscpfs" | "dump2dcm" => "dcmtk",
        "promtool" => "prometheus",
        "testssl" => "testssl.sh",
        "systemd-analyze" | "systemd-socket-activate" => "systemd",
        "rsyslogd" => "rsyslog",
        // From PyPI (scripts/install-test-deps.sh): the message names the installer.
        "check-jsonschema" => "python3-pip && pip install check-jsonschema",
        other => other,
    }
}

/// Whether every one of `tools` runs (the body of [`require_tool!`]). When
/// one does not: panics under `CI=true`, else prints `skipped: [..] missing`
/// with the packages to install on stderr and returns false.
pub fn present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !available(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| package_of(t)).collect();
    packages.sort_unstable();
    packages.dedup();
    let install = format!("apt-get install -y {}", packages.join(" "));
    super::skip(&format!("{missing:?} missing ({install})"));
    false
}

pub use super::ports::free_port;

/// Strings for argument lists.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn command(program: &str, args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("TCP_NODELAY", "1").stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A long-running child (a DCMTK SCP, HAProxy); killed (by PID) when dropped.
pub struct ScpProcess {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl ScpProcess {
    /// Spawns `program args…` with output to `dir/PROGRAM.log` and waits
    /// until it listens on `port` (see [`Self::spawn_named`]).
    pub async fn spawn(program: &str, args: &[String], port: u16, dir: &Path) -> ScpProcess {
        Self::spawn_named(program, program, args, port, dir).await
    }

    /// Spawns `program args…` in `dir` with output to `dir/NAME.log` (so
    /// several children of one program can share `dir`) and waits until it
    /// listens on 127.0.0.1:`port` (checked in /proc/net/tcp, so no probe
    /// association disturbs the SCP), at most 10 s.
    pub async fn spawn_named(program: &str, name: &str, args: &[String], port: u16, dir: &Path) -> ScpProcess {
        let log = dir.join(format!("{name}.log"));
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
        ScpProcess { name: name.to_owned(), addr: SocketAddr::from(([127, 0, 0, 1], port)), log, child }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts the child is still running (it did not crash on our traffic).
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

/// Socket inodes listening on TCP `port` at any local address (Linux
/// /proc/net/tcp{,6}: column 1 is `ADDR:PORT` in hex, 3 the state, `0A`
/// LISTEN, 9 the inode).
fn listening_inodes(port: u16) -> Vec<String> {
    let wanted = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[1].ends_with(&wanted) && cols[3] == "0A" {
                inodes.push(cols[9].to_owned());
            }
        }
    }
    inodes
}

/// Whether a socket listens on TCP `port`, whoever owns it.
pub fn is_listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// Runs a client (an SCU, `haproxy -c`) to completion under `deadline`
/// (killed if it overruns).
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
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
