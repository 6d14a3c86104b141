//! Helpers for the `gen-cert` and `echo` command tests: run the real
//! `dicomgate` binary, external tools that skip locally but are required
//! under `CI=true`, DCMTK `storescp` children killed by PID on drop, free
//! ports, and tiny fake SCPs that answer with fixed PDUs.
//!
//! Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn dicomgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dicomgate")).args(args).stdin(Stdio::null()).output().expect("run dicomgate")
}

/// Exit code of a finished process (`-1` when killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything a process said, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("exit: {}\n--- stdout\n{}--- stderr\n{}", out.status, stdout(out), stderr(out))
}

/// Whether this is a CI run, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether `tool` runs (`tool version_arg` exits 0).
pub fn tool_available(tool: &str, version_arg: &str) -> bool {
    Command::new(tool).arg(version_arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Returns from the test when `$tool` is missing (printing why), except
/// under `CI=true`, where a missing tool is a failure.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr, $version_arg:expr, $package:expr) => {
        if !$crate::support_pki::tool_available($tool, $version_arg) {
            if $crate::support_pki::in_ci() {
                panic!("{} is required in CI (apt-get install -y {})", $tool, $package);
            }
            eprintln!("skipped: {} missing", $tool);
            return;
        }
    };
}

/// Runs `openssl args…`; panics with its output when it fails.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}:\n{}", text(&out));
    format!("{}{}", stdout(&out), stderr(&out))
}

#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

/// Unix permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Runs `dicomgate gen-cert --dir DIR --cn CN --key-type … [extra…]` and
/// returns (certificate, key) paths.
pub fn gen_cert(dir: &Path, cn: &str, key_type: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir_text = dir.display().to_string();
    let mut args = vec!["gen-cert", "--dir", &dir_text, "--cn", cn, "--key-type", key_type];
    args.extend_from_slice(extra);
    let out = dicomgate(&args);
    assert_eq!(code(&out), 0, "gen-cert:\n{}", text(&out));
    (dir.join("scp_cert.pem"), dir.join("scp_key.pem"))
}

/// A child process killed (by its own PID) and reaped when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts DCMTK `storescp` on a free port with `args` (before the port) and
/// waits until it listens. Returns the guard and the port.
pub fn storescp(dir: &Path, args: &[&str]) -> (ChildGuard, u16) {
    let port = free_port();
    let log = dir.join(format!("storescp-{port}.log"));
    let file = std::fs::File::create(&log).expect("create log");
    let err = file.try_clone().expect("clone log");
    let out_dir = dir.join("received");
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let child = Command::new("storescp")
        .arg("-od")
        .arg(&out_dir)
        .args(args)
        .arg(port.to_string())
        .env("TCP_NODELAY", "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .expect("spawn storescp");
    let mut guard = ChildGuard { child, log };
    // Synchronous test helper, outside any tokio runtime: the std clock and
    // sleep are right here.
    #[allow(clippy::disallowed_methods)]
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_listening(port) {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("storescp exited ({status}):\n{}", guard.log_text());
        }
        #[allow(clippy::disallowed_methods)]
        {
            assert!(Instant::now() < deadline, "storescp did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (guard, port)
}

/// Whether something listens on TCP `port` (Linux /proc), checked without
/// connecting, so no probe association disturbs the SCP.
pub fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
            })
        })
    })
}

/// A fake SCP on a thread: accepts one connection, reads the A-ASSOCIATE-RQ
/// and answers with `reply` (e.g. an A-ASSOCIATE-RJ), then closes.
pub fn one_shot_scp(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut header = [0u8; 6];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let _ = s.write_all(&reply);
        let _ = s.flush();
        // Wait for the client to close first, so our reply is not lost to
        // a reset.
        let _ = s.read(&mut [0u8; 64]);
    });
    addr
}
