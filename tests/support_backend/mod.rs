//! Harness for the backend and PROXY protocol suites (`backend_health`,
//! `backend_tls`, `ae_rewrite`, `proxy_protocol`): the gateway started from
//! literal YAML (so each test shows the keys it exercises), a small rcgen
//! PKI, external peers (DCMTK, HAProxy) as children killed on drop, raw
//! A-ASSOCIATE exchanges, and a log capture for the audit line.
//!
//! Missing tools skip a test locally and fail it under `CI=true`. Every wait
//! has a deadline; ports are taken from the kernel (bound to 0); only
//! children this harness spawned are killed, by their own handle.
#![allow(dead_code)]

pub mod net;
pub mod pki;
pub mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicomgate::backend::HealthRegistry;
use dicomgate::{Config, Gateway, Metrics};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Installs the process-wide rustls provider (DESIGN.md: dicom-ul and the
/// test clients need one chosen).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Polls `cond` every 20 ms until it holds, or panics after `within` with
/// `what` and the text `context()` returns then.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!("not within {within:?}: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway running in-process from `dir/dicomgate.yaml`; dropping it
/// signals shutdown.
pub struct RunningGateway {
    pub dir: PathBuf,
    pub metrics: Metrics,
    pub health: Arc<HealthRegistry>,
    /// The admin endpoint, when the YAML sets `admin.listen`.
    pub admin: Option<SocketAddr>,
    listeners: Vec<(String, SocketAddr)>,
    reload: mpsc::Sender<()>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningGateway {
    /// Writes `yaml` to `dir/dicomgate.yaml`, loads it as `run` would, binds
    /// and serves (with SIGHUP-style reload through [`Self::reload`]).
    pub async fn start(dir: &Path, yaml: &str) -> RunningGateway {
        init();
        let path = dir.join("dicomgate.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config refused: {e}\n---\n{yaml}"));
        let names: Vec<String> = config.listeners.keys().cloned().collect();
        let metrics = Metrics::new();
        let gateway =
            Gateway::bind(config, metrics.clone()).await.unwrap_or_else(|e| panic!("bind failed: {e}\n---\n{yaml}"));
        let listeners = names
            .into_iter()
            .map(|n| {
                let a = gateway.listener_addr(&n).expect("bound listener");
                (n, a)
            })
            .collect();
        let health = gateway.health();
        let admin = gateway.admin_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let (reload, reload_rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let result = gateway
                .run_with_reload(
                    async move {
                        let _ = stop.await;
                    },
                    reload_rx,
                )
                .await;
            if let Err(e) = result {
                panic!("Gateway::run returned an error: {e}");
            }
        });
        RunningGateway {
            dir: dir.to_owned(),
            metrics,
            health,
            admin,
            listeners,
            reload,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {listener:?}"))
    }

    /// Rewrites the configuration file and asks for a reload (SIGHUP).
    pub async fn reload(&self, yaml: &str) {
        std::fs::write(self.dir.join("dicomgate.yaml"), yaml).expect("write config");
        self.reload.send(()).await.expect("gateway still running");
    }

    /// `health.state` of a backend server, as `/status` shows it.
    pub fn server_state(&self, backend: &str, server: SocketAddr) -> String {
        let status = self.health.status();
        status
            .backends
            .get(backend)
            .and_then(|b| b.servers.iter().find(|s| s.server == server.to_string()))
            .map(|s| s.state.to_owned())
            .unwrap_or_else(|| "absent".to_owned())
    }

    pub fn last_probe(&self, backend: &str, server: SocketAddr) -> String {
        let status = self.health.status();
        status
            .backends
            .get(backend)
            .and_then(|b| b.servers.iter().find(|s| s.server == server.to_string()))
            .and_then(|s| s.last_probe.as_ref().map(|p| p.result.clone()))
            .unwrap_or_default()
    }

    /// Waits until the server's state is `state` (`up`, `down`); returns how long it took.
    pub async fn wait_state(&self, backend: &str, server: SocketAddr, state: &str, within: Duration) -> Duration {
        wait_until(
            within,
            &format!("backend {backend} server {server} {state}"),
            || self.server_state(backend, server) == state,
            || self.health.status_json(),
        )
        .await
    }

    /// `GET path` on the admin endpoint: status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.admin.expect("admin.listen configured");
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
            let rq = format!("GET {path} HTTP/1.1\r\nHost: dicomgate\r\nConnection: close\r\n\r\n");
            s.write_all(rq.as_bytes()).await.expect("send request");
            let mut text = String::new();
            s.read_to_string(&mut text).await.expect("read response");
            text
        };
        let text = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("admin answers within 10 s");
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (code, body)
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("gateway stops within 15 s")
                .expect("gateway task did not panic");
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Logs captured in memory (for the audit line): installed once per test
/// binary as the global subscriber; tests look for their own lines.
pub mod logs {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    static LINES: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

    struct Sink;

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(m) = LINES.get() {
                m.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Starts capturing `dicomgate` logs at info level.
    pub fn capture() {
        if LINES.set(Mutex::new(Vec::new())).is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("dicomgate=info")
                .with_ansi(false)
                .with_writer(|| Sink)
                .try_init();
        }
    }

    /// Captured lines containing every one of `needles`.
    pub fn matching(needles: &[&str]) -> Vec<String> {
        let Some(m) = LINES.get() else { return Vec::new() };
        let text = String::from_utf8_lossy(&m.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }
}
