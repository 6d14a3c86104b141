//! Starts the real gateway in-process: a YAML file is generated from a small
//! spec (so every test exercises the documented configuration keys), parsed
//! with `Config::from_yaml_str` against a temporary directory holding the
//! test PKI, bound on port 0 and run until the test drops or stops it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use dicomgate::server::ServeError;
use dicomgate::{Config, Gateway, Metrics};
use tempfile::TempDir;
use tokio::sync::oneshot;
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

    /// Writes the test PKI into a fresh temporary directory, loads the YAML
    /// against it, binds and spawns the gateway.
    pub async fn start(&self) -> RunningGateway {
        super::init();
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pki().write_to(dir.path());
        let yaml = self.to_yaml();
        std::fs::write(dir.path().join("dicomgate.yaml"), &yaml).expect("write yaml");
        let config = Config::from_yaml_str(&yaml, dir.path())
            .unwrap_or_else(|e| panic!("test config refused: {e}\n---\n{yaml}"));
        let metrics = Metrics::new();
        let gateway = Gateway::bind(config, metrics.clone())
            .await
            .unwrap_or_else(|e| panic!("Gateway::bind failed: {e}\n---\n{yaml}"));
        let addrs = self
            .listeners
            .iter()
            .map(|l| {
                let addr =
                    gateway.listener_addr(&l.name).unwrap_or_else(|| panic!("listener_addr({:?}) is None", l.name));
                (l.name.clone(), addr)
            })
            .collect();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(gateway.run(async move {
            let _ = shutdown_rx.await;
        }));
        RunningGateway { dir, files, yaml, addrs, metrics, shutdown: Some(shutdown), handle: Some(handle) }
    }
}

/// A gateway serving in a background task. Dropping it signals shutdown.
pub struct RunningGateway {
    pub dir: TempDir,
    pub files: PkiFiles,
    pub yaml: String,
    addrs: Vec<(String, SocketAddr)>,
    pub metrics: Metrics,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl RunningGateway {
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
