//! DCMTK as the independent peers: `storescp` as the backend SCP (killed by
//! its PID on drop) and `echoscu` as the cloud, both with `TCP_NODELAY=1`
//! (DCMTK 3.6.7 otherwise waits ~40 ms per PDU for a delayed ACK).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The backend SCP's AE title and the cloud's calling AE title.
pub const PACS_AE: &str = "PACS";
pub const CLOUD_AE: &str = "CLOUD";

/// `storescp` listening on a free loopback port; killed when dropped.
pub struct Storescp {
    pub addr: SocketAddr,
    child: Child,
    log: std::path::PathBuf,
}

impl Storescp {
    /// Starts `storescp -aet PACS PORT` writing into `dir` and waits until it
    /// listens (seen in /proc/net/tcp, so no probe disturbs it).
    pub async fn start(dir: &Path) -> Storescp {
        let port = free_port();
        let log = dir.join("storescp.log");
        let out = std::fs::File::create(&log).expect("create storescp log");
        let err = out.try_clone().expect("clone log");
        let mut child = Command::new("storescp")
            .args(["-aet", PACS_AE, "-od"])
            .arg(dir)
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn storescp");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("storescp exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(tokio::time::Instant::now() < deadline, "storescp did not listen on {port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Storescp { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, log }
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("storescp exited ({status}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

pub use super::ports::free_port;

/// Whether something listens on loopback or any address at `port` (Linux).
fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|text| {
            text.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
            })
        })
        .unwrap_or(false)
}

/// `echoscu` as the cloud (`+tla -ic`: TLS without verifying the
/// certificate, as the README walk-through does) to `addr`, under `deadline`.
pub async fn echoscu(addr: SocketAddr, tls: bool, deadline: Duration) -> Output {
    let mut cmd = Command::new("echoscu");
    cmd.args(["-aet", CLOUD_AE, "-aec", PACS_AE, "-to", "10", "-ta", "10", "-td", "10"]);
    if tls {
        cmd.args(["+tla", "-ic"]);
    }
    cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
    cmd.env("TCP_NODELAY", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.kill_on_drop(true).spawn().expect("spawn echoscu");
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for echoscu"),
        Err(_) => panic!("echoscu to {addr} (tls {tls}) did not finish within {deadline:?}"),
    }
}

/// Asserts that a C-ECHO through the gateway succeeds.
pub async fn assert_echo(addr: SocketAddr, tls: bool) {
    let out = echoscu(addr, tls, Duration::from_secs(30)).await;
    assert!(out.status.success(), "echoscu to {addr} (tls {tls}) failed:\n{}", super::daemon::output_text(&out));
}
