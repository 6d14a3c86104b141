//! The real `dicomgate run` as a child process: started from a YAML file
//! with `listen: 127.0.0.1:0` everywhere (listeners and `admin.listen`), so
//! the kernel picks the ports and the bound addresses are read back from the
//! daemon's own startup lines, text or JSON (no bind-drop-reuse race); its
//! open file descriptors and resident memory read from /proc; its metrics
//! scraped from the admin endpoint; signals sent to its PID. The child is
//! killed (by its PID, via tokio's `kill_on_drop`) when the handle is
//! dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// How long the daemon may take to say "dicomgate ready" on a loaded box.
const STARTUP: Duration = Duration::from_secs(30);

/// The binary under test: this build's, or the one `DICOMGATE_BINARY`
/// names (to measure another build, e.g. the release before a fix, with the
/// same test; see scripts/abuse.sh).
pub fn binary() -> String {
    std::env::var("DICOMGATE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_dicomgate").to_owned())
}

/// Runs `dicomgate ARGS…` to completion under `deadline`.
pub async fn run_to_exit(args: &[&str], deadline: Duration) -> Output {
    run_until(args, deadline)
        .await
        .unwrap_or_else(|said| panic!("dicomgate {args:?} still running after {deadline:?}:\n{said}"))
}

/// Runs `dicomgate ARGS…`; `Err` with what it printed when it is still running
/// at `deadline` (it is then killed, by its PID).
pub async fn run_until(args: &[&str], deadline: Duration) -> Result<Output, String> {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dicomgate");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_task = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v).await;
        v
    });
    let err_task = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v).await;
        v
    });
    let status = tokio::time::timeout(deadline, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let stdout = out_task.await.unwrap_or_default();
    let stderr = err_task.await.unwrap_or_default();
    match status {
        Ok(status) => Ok(Output { status: status.expect("wait for dicomgate"), stdout, stderr }),
        Err(_) => Err(format!(
            "--- stdout\n{}--- stderr\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// A TLS certificate (`gen_cert`), DCMTK's `storescp` as the PACS, and the
/// daemon started with the configuration `write_config` writes for that
/// SCP's address, all in `dir`.
pub async fn start_with_storescp(
    dir: &Path,
    write_config: impl FnOnce(&Path, SocketAddr) -> PathBuf,
) -> (Daemon, super::tools::ScpProcess) {
    super::init();
    gen_cert(dir, 365).await;
    let scp = super::dcmtk::storescp(super::PACS_AE, &[], dir).await;
    let daemon = Daemon::start(&write_config(dir, scp.addr)).await;
    (daemon, scp)
}

/// `dicomgate gen-cert` into `dir` (RSA 2048, the default key type, which
/// every DCMTK TLS profile can use): `scp_cert.pem`, `scp_key.pem`.
pub async fn gen_cert(dir: &Path, days: u32) -> (PathBuf, PathBuf) {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let days = days.to_string();
        let extra = ["--san", "127.0.0.1", "--san", "localhost", "--days", &days];
        super::cli::gen_cert(&dir, "localhost", "rsa2048", &extra)
    })
    .await
    .expect("gen-cert thread")
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    pid: u32,
    pub log: PathBuf,
    listeners: BTreeMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
}

/// Like `support::gateway`'s: with `DICOMGATE_CONFIG_CORPUS` set, keep a copy
/// of every config a daemon started with, for scripts/check-config-corpus.sh.
fn record_config(config: &Path) {
    use std::hash::{Hash, Hasher};
    let Some(dir) = std::env::var_os("DICOMGATE_CONFIG_CORPUS") else { return };
    let yaml = std::fs::read_to_string(config).expect("read daemon config");
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    yaml.hash(&mut hash);
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create DICOMGATE_CONFIG_CORPUS");
    std::fs::write(dir.join(format!("{:016x}.yaml", hash.finish())), yaml).expect("record config");
}

impl Daemon {
    /// Starts `dicomgate run --config CONFIG` (stderr to `CONFIG.log`, at the
    /// configured log format; `RUST_LOG` removed so the configured level
    /// holds) and waits for its "dicomgate ready" line. `log.level` must let
    /// the info-level startup lines through.
    pub async fn start(config: &Path) -> Daemon {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log).expect("create daemon log");
        let mut child = Command::new(binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn dicomgate run");
        let pid = child.id().expect("child pid");
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some((listeners, admin)) = parse_startup(&text) {
                record_config(config);
                return Daemon { child, pid, log, listeners, admin };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dicomgate exited ({status}) before it was ready:\n{text}");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("dicomgate not ready within {STARTUP:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The bound address of the admin endpoint (`admin.listen` must be set).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin.listen in the daemon's configuration")
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `within`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.log_text().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} in the log within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends signal `name` (`HUP`, `TERM`, …) to the daemon's PID.
    pub fn signal(&self, name: &str) {
        let pid = self.pid.to_string();
        let status = std::process::Command::new("kill").args(["-s", name, &pid]).status().expect("run kill");
        assert!(status.success(), "kill -s {name} {pid}");
    }

    /// Waits for the daemon to exit on its own; panics (with the log) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for dicomgate"),
            Err(_) => panic!("dicomgate still running after {within:?}:\n{}", self.log_text()),
        }
    }

    /// `GET path` on the admin endpoint: (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("admin.listen in the daemon's configuration");
        super::gateway::http_get(admin, path).await
    }

    /// Panics (with the log) if the daemon has exited, or if a task of it
    /// panicked (tokio keeps the process running; nothing on the network
    /// path may panic).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("dicomgate exited ({status}):\n{}", self.log_text());
        }
        let log = self.log_text();
        if let Some(at) = log.find("panicked at") {
            panic!("a task of dicomgate panicked:\n{}", &log[at.saturating_sub(200)..(at + 2000).min(log.len())]);
        }
    }

    /// Open file descriptors of the daemon (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map(|d| d.count()).expect("read /proc/PID/fd")
    }

    /// Resident set size in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid).expect("VmRSS in /proc/PID/status")
    }

    /// Scrapes `/metrics` from the admin endpoint (the config must set `admin.listen`).
    pub async fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        Scrape(body)
    }

    /// Waits until no connection is active on any of `listeners`.
    pub async fn wait_idle(&self, listeners: &[&str], within: Duration) -> Scrape {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let scrape = self.scrape().await;
            if listeners.iter().all(|l| scrape.active(l) == 0) {
                return scrape;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("connections still active after {within:?}:\n{}", scrape.0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// MiB in KiB, for RSS margins.
pub const MIB_IN_KIB: u64 = 1024;

/// Resident set size of process `pid` in KiB (VmRSS), if it still runs.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// Listener addresses and the admin address, once "dicomgate ready" is
/// logged. Reads JSON lines (`log.format: json`) and text lines (where
/// tracing writes the message, then `key=value` fields).
fn parse_startup(log: &str) -> Option<(BTreeMap<String, SocketAddr>, Option<SocketAddr>)> {
    let mut listeners = BTreeMap::new();
    let mut admin = None;
    let mut ready = false;
    for line in log.lines() {
        let (message, listener, address) = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => (
                v["message"].as_str().unwrap_or_default().to_owned(),
                v["listener"].as_str().map(str::to_owned),
                v["address"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()),
            ),
            Err(_) => text_fields(line),
        };
        match (message.as_str(), listener, address) {
            // "listening", or "listening WITHOUT TLS …" for a plaintext listener.
            (m, Some(name), Some(a)) if m.starts_with("listening") => {
                listeners.insert(name, a);
            }
            (m, None, Some(a)) if m.starts_with("admin endpoint listening") => admin = Some(a),
            (m, _, _) if m == "dicomgate ready" || m.starts_with("dicomgate ready ") => ready = true,
            _ => {}
        }
    }
    ready.then_some((listeners, admin))
}

/// (message, `listener=`, `address=`) of a text log line such as
/// `… INFO dicomgate::server: listening listener=store address=127.0.0.1:4242 …`.
fn text_fields(line: &str) -> (String, Option<String>, Option<SocketAddr>) {
    let Some((_, rest)) = line.split_once("dicomgate::server: ") else {
        return (String::new(), None, None);
    };
    let field = |key: &str| rest.split(' ').find_map(|w| w.strip_prefix(key)).map(|v| v.trim_matches('"').to_owned());
    let message = rest.split(" listener=").next().unwrap_or(rest).split(" address=").next().unwrap_or(rest);
    (message.to_owned(), field("listener="), field("address=").and_then(|a| a.parse().ok()))
}

/// One scrape of the Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// The sample of `name` whose labels include all of `labels`; 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (metric == name && labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// `dicomgate_connections_total{listener,outcome}`.
    pub fn connections(&self, listener: &str, outcome: &str) -> u64 {
        self.value("dicomgate_connections_total", &[("listener", listener), ("outcome", outcome)]) as u64
    }

    /// All connections ended on `listener`, whatever the outcome.
    pub fn ended(&self, listener: &str) -> u64 {
        self.value("dicomgate_connections_total", &[("listener", listener)]) as u64
    }

    pub fn active(&self, listener: &str) -> i64 {
        self.value("dicomgate_active_connections", &[("listener", listener)]) as i64
    }
}

/// The soft limit on open files of this process (children inherit it).
pub fn nofile_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Panics with advice when `needed` descriptors exceed the soft limit.
pub fn require_nofile(needed: u64) {
    let soft = nofile_soft_limit();
    assert!(
        soft >= needed,
        "this test needs about {needed} open files but the soft limit is {soft}: raise it first (ulimit -n {needed}); \
         scripts/abuse.sh does this for the larger sizes"
    );
}
