//! The IHE ATNA audit trail: DICOM audit messages (PS3.15 A.5) sent as
//! RFC 5424 syslog to an Audit Record Repository or SIEM (`audit.syslog`,
//! IHE ITI-20 "Record Audit Event"). The gateway is an ATNA Secure Node.
//!
//! - [`event`]: what is audited, and the mapping from a finished connection;
//! - [`message`]: the `AuditMessage` XML;
//! - [`syslog`]: the RFC 5424 header and the transports' framing;
//! - [`transport`]: UDP, TCP and TLS connections to the receiver;
//! - [`queue`]: the bounded queue and the delivery task.
//!
//! [`AuditSink`] is the handle the rest of the gateway holds. Recording an
//! event never waits on the network: it renders the message and pushes it
//! onto the queue (dropping the newest when full: the first events of an
//! attack are the ones an investigator needs). The per-connection log
//! line of [`crate::audit`] is unaffected and stays the complete record.

pub mod event;
pub mod message;
pub mod queue;
pub mod syslog;
pub mod transport;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use event::{AlertReason, AuditEvent, EventKind};
use message::EventOutcome;
use queue::Queue;
use transport::Connector;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::report::Report;
use crate::tls::TlsError;

/// How long a stopping gateway waits for queued messages (Application Stop
/// among them) to reach the receiver; the rest is counted as dropped.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AtnaError {
    #[error("audit.syslog: {0}")]
    Tls(#[from] TlsError),
    #[error("audit.syslog.address: {name:?} is not a name a TLS certificate can carry: set audit.syslog.server_name")]
    ServerName { name: String },
}

/// Who is reporting: the fields every message carries about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `UserID` of the gateway's participant (PS3.15 A.5.2.1: the
    /// process ID, as in the local logs) and the syslog PROCID.
    pub pid: u32,
    /// RFC 5424 HOSTNAME field.
    pub hostname: String,
    /// `AuditSourceID`: `audit.source_id`, or the host name.
    pub source_id: String,
    pub enterprise_site_id: Option<String>,
    /// The AE titles the gateway answers to: every listener's exact routes.
    pub ae_titles: Vec<String>,
}

impl Identity {
    pub fn from_config(config: &Config) -> Identity {
        let host = host_name();
        let ae_titles: BTreeSet<String> =
            config.listeners.values().flat_map(|l| l.routes.exact.keys().map(|ae| ae.as_str().to_owned())).collect();
        Identity {
            pid: std::process::id(),
            hostname: syslog::hostname_field(host.as_deref().unwrap_or("")),
            source_id: config.audit.source_id.clone().or(host).unwrap_or_else(|| "dicomgate".to_owned()),
            enterprise_site_id: config.audit.enterprise_site_id.clone(),
            ae_titles: ae_titles.into_iter().collect(),
        }
    }

    /// `AlternativeUserID` of a DICOM application (PS3.15 A.5.2.2).
    pub fn ae_titles_attribute(&self) -> Option<String> {
        (!self.ae_titles.is_empty()).then(|| format!("AETITLES={}", self.ae_titles.join(";")))
    }
}

/// The kernel's host name (Linux); `None` elsewhere or when unset.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "(none)").then(|| name.to_owned())
}

/// A configuration's audit settings, loaded (TLS files read) but not yet in
/// use: built before anything changes, so a bad file fails the start or the
/// reload instead of silently stopping the trail.
pub struct Prepared {
    identity: Identity,
    connector: Option<Arc<Connector>>,
}

impl Prepared {
    pub fn new(config: &Config) -> Result<Prepared, AtnaError> {
        Ok(Prepared {
            identity: Identity::from_config(config),
            connector: transport::shared(config.audit.syslog.as_ref())?,
        })
    }
}

/// The handle to the audit trail. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<Queue>,
    connector: watch::Sender<Option<Arc<Connector>>>,
    identity: Mutex<Arc<Identity>>,
    closing: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSink({:?})", self.shared.connector.borrow().as_deref())
    }
}

impl AuditSink {
    /// Starts the delivery task (on the current tokio runtime).
    pub fn start(prepared: Prepared, metrics: Metrics) -> AuditSink {
        let sink = AuditSink::idle(prepared, metrics);
        let task = tokio::spawn(queue::deliver(
            sink.shared.queue.clone(),
            sink.shared.connector.subscribe(),
            sink.shared.closing.clone(),
        ));
        *lock(&sink.shared.task) = Some(task);
        sink
    }

    /// A sink that sends nothing (no `audit.syslog`, or a unit test).
    pub fn disabled() -> AuditSink {
        let identity = Identity {
            pid: std::process::id(),
            hostname: "-".to_owned(),
            source_id: "dicomgate".to_owned(),
            enterprise_site_id: None,
            ae_titles: Vec::new(),
        };
        AuditSink::idle(Prepared { identity, connector: None }, Metrics::new())
    }

    fn idle(prepared: Prepared, metrics: Metrics) -> AuditSink {
        if let Some(c) = &prepared.connector {
            tracing::info!(receiver = ?c, "audit trail: IHE ATNA messages go to this syslog receiver");
        }
        let (connector, _) = watch::channel(prepared.connector);
        AuditSink {
            shared: Arc::new(Shared {
                queue: Arc::new(Queue::new(queue::CAPACITY, metrics)),
                connector,
                identity: Mutex::new(Arc::new(prepared.identity)),
                closing: CancellationToken::new(),
                task: Mutex::new(None),
            }),
        }
    }

    /// Switches to a reloaded configuration. Messages already queued go to
    /// the new receiver (they were not delivered to the old one).
    pub fn apply(&self, prepared: Prepared) {
        *lock(&self.shared.identity) = Arc::new(prepared.identity);
        let changed = {
            let old = self.shared.connector.borrow();
            old.as_ref().map(|c| &c.config) != prepared.connector.as_ref().map(|c| &c.config)
        };
        if changed {
            match &prepared.connector {
                Some(c) => tracing::info!(receiver = ?c, "audit trail: syslog receiver changed"),
                None => tracing::info!("audit trail: no syslog receiver configured any more"),
            }
        }
        // Always replaced, even when unchanged: reload re-reads the CA and
        // client certificate files, and the next connection uses them.
        self.shared.connector.send_replace(prepared.connector);
    }

    /// Queues `event` for the receiver; does nothing when none is configured.
    pub fn record(&self, event: AuditEvent) {
        if self.shared.connector.borrow().is_none() {
            return;
        }
        let identity = lock(&self.shared.identity).clone();
        let xml = message::render(&event, &identity);
        tracing::debug!(target: "dicomgate::atna", event = ?event.kind.codes().1, "audit message queued");
        self.shared.queue.push(syslog::format(event.time, &identity.hostname, identity.pid, event.outcome, &xml));
    }

    /// The hook at the end of every connection: a Security Alert when the
    /// outcome is one the audit trail reports ([`event`] has the table).
    pub fn connection_ended(&self, report: &Report) {
        if self.shared.connector.borrow().is_none() {
            return;
        }
        if let Some(event) = AuditEvent::for_connection(report) {
            self.record(event);
        }
    }

    /// One Security Alert carrying the count of further refusals of one
    /// source and reason in the last `interval` (the refusal log's summary;
    /// the first was reported by [`AuditSink::connection_ended`]).
    pub fn refusals_summarised(
        &self,
        listener: &str,
        source: Option<std::net::IpAddr>,
        reason: AlertReason,
        count: u64,
        interval: Duration,
    ) {
        if self.shared.connector.borrow().is_none() {
            return;
        }
        self.record(AuditEvent::summary(listener, source, reason, count, interval));
    }

    /// Application Start: the gateway is ready (listeners bound, serving).
    pub fn application_started(&self) {
        self.record(AuditEvent::now(EventKind::ApplicationStart, EventOutcome::Success, None));
    }

    /// Application Stop: the gateway has drained and is about to exit.
    pub fn application_stopped(&self) {
        self.record(AuditEvent::now(EventKind::ApplicationStop, EventOutcome::Success, None));
    }

    /// A reload was applied (`Ok`) or refused (`Err` with the reason).
    pub fn config_reloaded(&self, result: Result<(), String>) {
        let (outcome, description) = match result {
            Ok(()) => (EventOutcome::Success, "configuration reloaded".to_owned()),
            Err(why) => {
                (EventOutcome::SeriousFailure, format!("configuration reload refused, previous one kept: {why}"))
            }
        };
        self.record(AuditEvent::now(EventKind::ConfigReload, outcome, Some(description)));
    }

    /// Lets the delivery task send what is queued for up to `within`, then
    /// stops it; messages still queued are counted as dropped.
    pub async fn close(&self, within: Duration) {
        self.shared.closing.cancel();
        let task = lock(&self.shared.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(within, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                self.shared.queue.abandon_in_flight();
            }
        }
        let left = self.shared.queue.drop_all();
        if left > 0 {
            tracing::warn!(dropped = left, "audit messages not delivered before exit");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single assignment or clone, so a
    // poisoned lock still holds a consistent value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
