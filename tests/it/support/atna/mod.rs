//! ATNA test helpers: the PS3.15 A.5.1 schema checker and a real syslog
//! receiver (rsyslogd with imtcp, optionally over TLS with rsyslog-gnutls)
//! on a free loopback port, writing every message it gets to a file.
//!
//! rsyslogd runs in the foreground (`-n`) with its own configuration, PID
//! file (`-i`) and work directory in the test's temporary directory, and is
//! killed through its own child handle: nothing on the system is touched.
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::tools::{args, free_port, ScpProcess};

/// Whether rsyslogd and its TLS driver (rsyslog-gnutls) are installed; like
/// [`crate::support::tools::present`], a missing one fails under `CI=true`.
pub fn receiver_present() -> bool {
    if !crate::support::tools::present(&["rsyslogd"]) {
        return false;
    }
    let gtls = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .any(|arch| arch.path().join("rsyslog/lmnsd_gtls.so").exists());
    if !gtls {
        crate::support::skip("rsyslog-gnutls missing (apt-get install -y rsyslog-gnutls)");
    }
    gtls
}

/// How the receiver authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverTls {
    /// Plain imtcp (RFC 6587).
    Off,
    /// TLS, and the client must present a certificate chaining to the test CA.
    ClientCertificate,
}

/// One message as rsyslog parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub facility: String,
    pub severity: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    /// The MSG part, byte order mark removed.
    pub xml: String,
    /// Whether MSG started with the UTF-8 BOM (RFC 5424 §6.4).
    pub bom: bool,
}

impl Received {
    fn parse(line: &str) -> Option<Received> {
        let mut f = line.splitn(6, '|');
        let (facility, severity, app_name, procid, msgid, msg) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let bom = msg.starts_with('\u{FEFF}');
        Some(Received {
            facility: facility.into(),
            severity: severity.into(),
            app_name: app_name.into(),
            procid: procid.into(),
            msgid: msgid.into(),
            xml: msg.trim_start_matches('\u{FEFF}').into(),
            bom,
        })
    }

    /// The `csd-code` of EventTypeCode elements, in order.
    pub fn event_type_codes(&self) -> Vec<String> {
        let doc = roxmltree::Document::parse(&self.xml).expect("well-formed");
        doc.descendants()
            .filter(|n| n.has_tag_name("EventTypeCode"))
            .filter_map(|n| n.attribute("csd-code").map(str::to_owned))
            .collect()
    }
}

/// A running rsyslogd receiving on 127.0.0.1:`port`.
pub struct Rsyslog {
    pub port: u16,
    /// imudp on this port too (RFC 5426), when started with [`Rsyslog::start_with_udp`].
    pub udp_port: Option<u16>,
    pub out: PathBuf,
    process: Option<ScpProcess>,
}

impl Rsyslog {
    /// Starts rsyslogd in `dir` (which holds the test PKI: `ca.pem`,
    /// `server.pem`, `server.key`) on a fresh port.
    pub async fn start(dir: &Path, tls: ReceiverTls) -> Rsyslog {
        Rsyslog::start_on(dir, tls, free_port()).await
    }

    /// Starts (or restarts) rsyslogd on a given port.
    pub async fn start_on(dir: &Path, tls: ReceiverTls, port: u16) -> Rsyslog {
        Rsyslog::spawn(dir, tls, port, None).await
    }

    /// Plain imtcp plus imudp on a second port. rsyslogd activates its
    /// inputs together, so once the TCP port listens the UDP one is bound.
    pub async fn start_with_udp(dir: &Path) -> Rsyslog {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe a free UDP port");
        let udp_port = udp.local_addr().expect("addr").port();
        drop(udp);
        Rsyslog::spawn(dir, ReceiverTls::Off, free_port(), Some(udp_port)).await
    }

    async fn spawn(dir: &Path, tls: ReceiverTls, port: u16, udp_port: Option<u16>) -> Rsyslog {
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let out = dir.join("received.log");
        let d = |name: &str| dir.join(name).display().to_string();
        let mut conf = format!("global(workDirectory=\"{}\"", work.display());
        if tls != ReceiverTls::Off {
            conf.push_str(&format!(
                " DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                d("ca.pem"),
                d("server.pem"),
                d("server.key")
            ));
        }
        conf.push_str(")\n");
        match tls {
            ReceiverTls::Off => conf.push_str("module(load=\"imtcp\")\n"),
            ReceiverTls::ClientCertificate => conf.push_str(
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"x509/certvalid\")\n",
            ),
        }
        conf.push_str(
            "template(name=\"atna\" type=\"string\" \
             string=\"%syslogfacility%|%syslogseverity%|%app-name%|%procid%|%msgid%|%msg%\\n\")\n",
        );
        conf.push_str(&format!("input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n"));
        if let Some(udp) = udp_port {
            conf.push_str(&format!(
                "module(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\")\n"
            ));
        }
        conf.push_str(&format!("action(type=\"omfile\" file=\"{}\" template=\"atna\")\n", out.display()));
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let pid = dir.join("rsyslog.pid");
        let _ = std::fs::remove_file(&pid);
        let argv = args(&["-n", "-f", &conf_path.display().to_string(), "-i", &pid.display().to_string()]);
        let process = ScpProcess::spawn_named("rsyslogd", "rsyslogd", &argv, port, dir).await;
        Rsyslog { port, udp_port, out, process: Some(process) }
    }

    /// `HOST:PORT` for `audit.syslog.address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn messages(&self) -> Vec<Received> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().filter_map(Received::parse).collect()
    }

    /// rsyslogd's own output (errors about TLS peers land here).
    pub fn log_text(&self) -> String {
        self.process.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// Waits until a message satisfies `pred` and returns it.
    pub async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the receiver got no {what} within {within:?}; it has:\n{:#?}\nrsyslogd says:\n{}",
                    self.messages(),
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills rsyslogd (its own child, by handle) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill().await;
        }
    }
}

/// Whether `xml` is the event: EventID `event_id` with EventTypeCode `type_code`.
pub fn is_event(m: &Received, event_id: &str, type_code: &str) -> bool {
    m.xml.contains(&format!(r#"<EventID csd-code="{event_id}" codeSystemName="DCM""#))
        && m.event_type_codes().iter().any(|c| c == type_code)
}

/// Asserts the ITI-20 syslog header fields and the schema.
pub fn assert_well_formed(m: &Received) {
    assert_eq!(m.facility, "10", "facility security/authorization: {m:?}");
    assert!(m.severity == "5" || m.severity == "4", "severity notice or warning: {m:?}");
    assert_eq!(m.app_name, "dicomgate");
    assert_eq!(m.msgid, "IHE+RFC-3881");
    assert_eq!(m.procid, std::process::id().to_string(), "PROCID is the gateway's process ID (in-process here)");
    assert!(m.bom, "MSG starts with the UTF-8 BOM: {m:?}");
    if let Err(problems) = schema::check(&m.xml) {
        panic!("not a valid AuditMessage:\n{}\n{}", problems.join("\n"), m.xml);
    }
}
