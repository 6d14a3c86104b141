//! Starts the real gateway in-process: a YAML file is generated from a small
//! spec (so every test exercises the documented configuration keys) or given
//! literally, written to `dicomgate.yaml` in a directory holding the test
//! PKI, loaded with `Config::load` as `dicomgate run` would, bound on port 0
//! and run (reloadable) until the test drops or stops it. The running
//! gateway also answers for its backends' health and its admin endpoint.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicomgate::backend::health::ServerView;
use dicomgate::backend::HealthRegistry;
use dicomgate::server::ServeError;
use dicomgate::{Config, Gateway, Metrics};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::pki::{pki, PkiFiles};

/// How a listener is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// `tls:` with the test server certificate; optional client authentication.
    Tls {
        client_ca: Option<String>,
        /// File names relative to the config directory (e.g. `cloud.pem`).
        client_certificates: Vec<String>,
    },
    /// `tls:` with `generate_if_missing: true` and these (absent) file names.
    Generate { certificate: String, private_key: String },
    /// `insecure_plaintext: true`.
    Plaintext,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub security: Security,
    pub allow: Vec<String>,
    /// `None`: key omitted (any calling AE title).
    pub calling_ae_titles: Option<Vec<String>>,
    /// Called AE title (or `*`) → backend name.
    pub routes: Vec<(String, String)>,
    pub max_connections: Option<u32>,
    pub acse: String,
    pub dimse: String,
    pub connect: String,
}

impl ListenerSpec {
    /// A TLS listener admitting 127.0.0.1, calling AE `CLOUD`, routing `PACS` to `pacs`.
    pub fn tls(name: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.to_owned(),
            security: Security::Tls { client_ca: None, client_certificates: Vec::new() },
            allow: vec!["127.0.0.1/32".into()],
            calling_ae_titles: Some(vec![super::CLOUD_AE.into()]),
            routes: vec![(super::PACS_AE.into(), "pacs".into())],
            max_connections: None,
            acse: "3s".into(),
            dimse: "30s".into(),
            connect: "2s".into(),
        }
    }

    pub fn plaintext(name: &str) -> ListenerSpec {
        ListenerSpec { security: Security::Plaintext, ..ListenerSpec::tls(name) }
    }

    pub fn route(mut self, called: &str, backend: &str) -> Self {
        self.routes = vec![(called.into(), backend.into())];
        self
    }
}

#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub ae_title: String,
    pub servers: Vec<SocketAddr>,
}

/// The whole configuration of one test gateway.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub backends: Vec<BackendSpec>,
    pub listeners: Vec<ListenerSpec>,
}

impl GatewaySpec {
    /// One TLS listener `store` (see [`ListenerSpec::tls`]) in front of
    /// backend `pacs` (AE `PACS`) at `servers`.
    pub fn store(servers: &[SocketAddr]) -> GatewaySpec {
        GatewaySpec {
            backends: vec![BackendSpec {
                name: "pacs".into(),
                ae_title: super::PACS_AE.into(),
                servers: servers.to_vec(),
            }],
            listeners: vec![ListenerSpec::tls("store")],
        }
    }

    /// Edits the first (usually only) listener.
    pub fn listener(mut self, edit: impl FnOnce(&mut ListenerSpec)) -> Self {
        edit(&mut self.listeners[0]);
        self
    }

    pub fn to_yaml(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut y = String::new();
        y.push_str("log:\n  level: warn\nshutdown:\n  grace_period: 1s\nbackends:\n");
        for b in &self.backends {
            let servers: Vec<String> = b.servers.iter().map(|s| q(&s.to_string())).collect();
            let _ = writeln!(y, "  {}:", b.name);
            let _ = writeln!(y, "    ae_title: {}", q(&b.ae_title));
            let _ = writeln!(y, "    servers: [{}]", servers.join(", "));
            // Health probes would be extra associations at the test SCPs.
            y.push_str("    health_check:\n      mode: \"off\"\n");
        }
        y.push_str("listeners:\n");
        for l in &self.listeners {
            let _ = writeln!(y, "  {}:", l.name);
            y.push_str("    listen: 127.0.0.1:0\n");
            match &l.security {
                Security::Tls { client_ca, client_certificates } => {
                    y.push_str("    tls:\n      certificate: server.pem\n      private_key: server.key\n");
                    if let Some(ca) = client_ca {
                        let _ = writeln!(y, "      client_ca: {}", q(ca));
                    }
                    if !client_certificates.is_empty() {
                        let list: Vec<String> = client_certificates.iter().map(|c| q(c)).collect();
                        let _ = writeln!(y, "      client_certificates: [{}]", list.join(", "));
                    }
                }
                Security::Generate { certificate, private_key } => {
                    let _ = writeln!(y, "    tls:\n      certificate: {}", q(certificate));
                    let _ = writeln!(y, "      private_key: {}", q(private_key));
                    y.push_str("      generate_if_missing: true\n");
                }
                Security::Plaintext => y.push_str("    insecure_plaintext: true\n"),
            }
            let allow: Vec<String> = l.allow.iter().map(|a| q(a)).collect();
            let _ = writeln!(y, "    allow: [{}]", allow.join(", "));
            if let Some(calling) = &l.calling_ae_titles {
                let list: Vec<String> = calling.iter().map(|c| q(c)).collect();
                let _ = writeln!(y, "    calling_ae_titles: [{}]", list.join(", "));
            }
            y.push_str("    routes:\n");
            for (called, backend) in &l.routes {
                let _ = writeln!(y, "      {}: {}", q(called), backend);
            }
            if let Some(max) = l.max_connections {
                let _ = writeln!(y, "    max_connections: {max}");
            }
            let _ = writeln!(y, "    timeouts: {{acse: {}, dimse: {}, connect: {}}}", l.acse, l.dimse, l.connect);
        }
        y
    }

    /// Writes the test PKI and the YAML into a fresh temporary directory
    /// (kept until the gateway is dropped), loads, binds and spawns the
    /// gateway.
    pub async fn start(&self) -> RunningGateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        pki().write_to(tmp.path());
        let mut gw = RunningGateway::start_yaml(tmp.path(), &self.to_yaml()).await;
        gw._tmp = Some(tmp);
        gw
    }
}

/// A gateway serving in a background task. Dropping it signals shutdown.
pub struct RunningGateway {
    /// The configuration directory: `dicomgate.yaml`, and the test PKI when
    /// written there ([`GatewaySpec::start`] does).
    pub dir: PathBuf,
    _tmp: Option<TempDir>,
    pub files: PkiFiles,
    pub yaml: String,
    addrs: Vec<(String, SocketAddr)>,
    pub metrics: Metrics,
    pub health: Arc<HealthRegistry>,
    /// The admin endpoint, when the YAML sets `admin.listen`.
    pub admin: Option<SocketAddr>,
    reload: mpsc::Sender<()>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

/// With `DICOMGATE_CONFIG_CORPUS` set (.ci/run sets it around
/// scripts/test.sh), every configuration a test starts a gateway with is
/// copied there, named by its hash, so scripts/check-config-corpus.sh can
/// check that the JSON Schema accepts every config the suite uses.
fn record_config(yaml: &str) {
    use std::hash::{Hash, Hasher};
    let Some(dir) = std::env::var_os("DICOMGATE_CONFIG_CORPUS") else { return };
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    yaml.hash(&mut hash);
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create DICOMGATE_CONFIG_CORPUS");
    std::fs::write(dir.join(format!("{:016x}.yaml", hash.finish())), yaml).expect("record config");
}

impl RunningGateway {
    /// Writes `yaml` to `dir/dicomgate.yaml` (the test shows the keys it
    /// exercises; files it names must already be in `dir`), loads it as
    /// `dicomgate run` would, binds and serves, with SIGHUP-style reload
    /// through [`Self::reload`].
    pub async fn start_yaml(dir: &Path, yaml: &str) -> RunningGateway {
        super::init();
        let path = dir.join("dicomgate.yaml");
        std::fs::write(&path, yaml).expect("write yaml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config refused: {e}\n---\n{yaml}"));
        record_config(yaml);
        let names: Vec<String> = config.listeners.keys().cloned().collect();
        let metrics = Metrics::new();
        let gateway = Gateway::bind(config, metrics.clone())
            .await
            .unwrap_or_else(|e| panic!("Gateway::bind failed: {e}\n---\n{yaml}"));
        let addrs = names
            .into_iter()
            .map(|name| {
                let addr = gateway.listener_addr(&name).unwrap_or_else(|| panic!("listener_addr({name:?}) is None"));
                (name, addr)
            })
            .collect();
        let health = gateway.health();
        let admin = gateway.admin_addr();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (reload, reload_rx) = mpsc::channel(1);
        let handle = tokio::spawn(gateway.run_with_reload(
            async move {
                let _ = shutdown_rx.await;
            },
            reload_rx,
        ));
        RunningGateway {
            dir: dir.to_owned(),
            _tmp: None,
            files: PkiFiles { dir: dir.to_owned() },
            yaml: yaml.to_owned(),
            addrs,
            metrics,
            health,
            admin,
            reload,
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// The bound address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {listener:?}"))
    }

    /// Rewrites the configuration file and asks for a reload (as SIGHUP would).
    pub async fn reload(&mut self, yaml: &str) {
        std::fs::write(self.dir.join("dicomgate.yaml"), yaml).expect("write yaml");
        yaml.clone_into(&mut self.yaml);
        self.reload.send(()).await.expect("gateway still running");
    }

    /// What `/status` shows for one server of a backend, if it has that server.
    fn server_view<T>(&self, backend: &str, server: SocketAddr, f: impl FnOnce(&ServerView) -> T) -> Option<T> {
        let status = self.health.status();
        let view = status.backends.get(backend)?.servers.iter().find(|s| s.server == server.to_string())?;
        Some(f(view))
    }

    /// `health.state` of a backend server, as `/status` shows it (`absent`
    /// when there is no such server).
    pub fn server_state(&self, backend: &str, server: SocketAddr) -> String {
        self.server_view(backend, server, |s| s.state.to_owned()).unwrap_or_else(|| "absent".to_owned())
    }

    /// The result text of the server's last health probe (empty before the first).
    pub fn last_probe(&self, backend: &str, server: SocketAddr) -> String {
        self.server_view(backend, server, |s| s.last_probe.as_ref().map(|p| p.result.clone()))
            .flatten()
            .unwrap_or_default()
    }

    /// Waits until the server's state is `state` (`up`, `down`); returns how long it took.
    pub async fn wait_state(&self, backend: &str, server: SocketAddr, state: &str, within: Duration) -> Duration {
        super::wait_until(
            within,
            &format!("backend {backend} server {server} {state}"),
            || self.server_state(backend, server) == state,
            || self.health.status_json(),
        )
        .await
    }

    /// `GET path` on the admin endpoint: status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin.expect("admin.listen configured"), path).await
    }

    /// Completes the shutdown future given to `run` (as SIGTERM would).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return (after [`Self::signal_shutdown`]) and
    /// checks that it returned `Ok`.
    pub async fn join(&mut self, within: Duration) {
        if let Some(handle) = self.handle.take() {
            let result = super::within(within, "Gateway::run to return", handle).await.expect("gateway task panicked");
            if let Err(e) = result {
                panic!("Gateway::run returned an error: {e}");
            }
        }
    }

    /// Signals shutdown and checks that `run` returns `Ok` within the grace
    /// period plus a margin.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        self.join(Duration::from_secs(10)).await;
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `GET path` (HTTP/1.1, `Connection: close`) on an admin endpoint: status
/// code (0 when unparsable) and body, within 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let rq = format!("GET {path} HTTP/1.1\r\nHost: dicomgate\r\nConnection: close\r\n\r\n");
        s.write_all(rq.as_bytes()).await.expect("send request");
        let mut text = String::new();
        s.read_to_string(&mut text).await.expect("read response");
        text
    };
    let text = super::within(Duration::from_secs(10), "the admin endpoint to answer", exchange).await;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}
