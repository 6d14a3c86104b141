//! What the status page and `/status` show, gathered in one place: the
//! [`StatusBoard`] the gateway keeps up to date (listeners as configured
//! and bound, the last reload), plus the live sources it points to (backend
//! health, the ring of recent associations, the metrics' counters). A
//! request takes one [`Snapshot`] of all of it; the HTML page and the JSON
//! are two renderings of that snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use time::OffsetDateTime;

use crate::admission::Blocklist;
use crate::backend::health::StatusView;
use crate::backend::HealthRegistry;
use crate::config::{ListenerConfig, Security};
use crate::lifecycle::State;
use crate::metrics::Metrics;
use crate::pki::CertificateInfo;
use crate::recent::{RecentAssociation, RecentAssociations};
use crate::report::Outcome;
use crate::tls::crl::{CrlInfo, CrlView};

/// State the gateway publishes for the admin endpoint. Shared; cheap to read.
#[derive(Debug)]
pub struct StatusBoard {
    pub health: Arc<HealthRegistry>,
    pub recent: Arc<RecentAssociations>,
    started: SystemTime,
    listeners: RwLock<BTreeMap<String, ListenerView>>,
    last_reload: Mutex<Option<ReloadView>>,
}

impl StatusBoard {
    pub fn new(health: Arc<HealthRegistry>, recent: Arc<RecentAssociations>) -> StatusBoard {
        StatusBoard {
            health,
            recent,
            started: SystemTime::now(),
            listeners: RwLock::default(),
            last_reload: Mutex::default(),
        }
    }

    /// Replaces the listeners shown (at start and after each successful reload).
    pub fn set_listeners(&self, listeners: impl IntoIterator<Item = ListenerView>) {
        let map = listeners.into_iter().map(|l| (l.name.clone(), l)).collect();
        *self.listeners.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Every CRL loaded now (listeners' `client_crls`, backends' `crls`),
    /// from the listeners shown and the backends' published health view.
    pub fn crls(&self) -> Vec<LoadedCrl> {
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        let of_listeners = listeners.values().flat_map(|l| {
            l.crls.iter().map(|view| LoadedCrl { listener: true, owner: l.name.clone(), view: view.clone() })
        });
        let backends = self.health.status().backends;
        let of_backends = backends.into_iter().flat_map(|(name, b)| {
            b.crls.into_iter().map(move |view| LoadedCrl { listener: false, owner: name.clone(), view })
        });
        of_listeners.chain(of_backends).collect()
    }

    /// Records a reload's result; `error` is the message logged on failure.
    pub fn reload_finished(&self, error: Option<String>) {
        let view = ReloadView { at: SystemTime::now(), ok: error.is_none(), error };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
    }

    /// Everything one response shows, read once.
    pub fn snapshot(&self, state: State, metrics: &Metrics) -> Snapshot {
        let now = SystemTime::now();
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| ListenerStatus::new(l.clone(), metrics))
            .collect();
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            state: state.as_str(),
            now,
            started: self.started,
            uptime_seconds: now.duration_since(self.started).unwrap_or(Duration::ZERO).as_secs(),
            last_reload: self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            listeners,
            backends: self.health.status(),
            recent_associations: self.recent.newest_first(),
            blocked_sources: self.blocked_sources(),
        }
    }

    fn views(&self) -> Vec<ListenerView> {
        self.listeners.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Every source blocked now, by listener.
    fn blocked_sources(&self) -> Vec<BlockedSource> {
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        for view in self.views() {
            out.extend(view.blocklist.list(now).into_iter().map(|b| BlockedSource {
                listener: view.name.clone(),
                source: b.source.to_string(),
                address: b.ip.to_canonical().to_string(),
                // Rounded up: "0 s left" would read as not blocked.
                seconds_left: b.left.as_secs() + u64::from(b.left.subsec_nanos() > 0),
                block_seconds: b.block.as_secs(),
                blocks: b.blocks,
            }));
        }
        out
    }

    /// (listener, sources blocked now), every listener (`dicomgate_sources_blocked`).
    pub fn sources_blocked(&self) -> Vec<(String, usize)> {
        let now = tokio::time::Instant::now();
        self.views().into_iter().map(|v| (v.name.clone(), v.blocklist.count(now))).collect()
    }
}

/// A loaded CRL and whose it is.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// A listener's `client_crls` (else a backend's `crls`).
    pub listener: bool,
    /// The listener's or backend's name.
    pub owner: String,
    pub view: CrlView,
}

/// The `/status` document and the page's content.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    /// `starting`, `ready`, `reloading`, `draining`, `stopped`.
    pub state: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub now: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub started: SystemTime,
    pub uptime_seconds: u64,
    pub last_reload: Option<ReloadView>,
    pub listeners: Vec<ListenerStatus>,
    /// Each backend's servers in configured (failover) order.
    #[serde(flatten)]
    pub backends: StatusView,
    /// Newest first, at most [`crate::recent::CAPACITY`].
    pub recent_associations: Vec<RecentAssociation>,
    /// Sources blocked by the guessing protection, longest left first per listener.
    pub blocked_sources: Vec<BlockedSource>,
}

impl Snapshot {
    pub fn to_json(&self) -> String {
        // Plain structs of strings and numbers: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned()) + "\n"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadView {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub ok: bool,
    pub error: Option<String>,
}

/// A listener as configured and bound; fixed until the next reload.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerView {
    pub name: String,
    pub address: SocketAddr,
    /// "Secured" (TLS) or "UNSECURED" (`insecure_plaintext`), the guide's words.
    pub security: &'static str,
    pub certificate: Option<CertificateView>,
    pub tls_versions: Vec<String>,
    /// "Anonymous" or "Authenticated" (client certificates required); TLS only.
    pub scu: Option<&'static str>,
    pub allow: Vec<String>,
    /// `None`: any calling AE title.
    pub calling_ae_titles: Option<Vec<String>>,
    /// Called AE title (or `*`) → backend.
    pub routes: Vec<(String, String)>,
    pub max_connections: usize,
    pub proxy_protocol: bool,
    /// `tls.client_crls` as read at start or the last reload.
    pub crls: Vec<CrlView>,
    /// The listener's guessing protection (live, kept across reloads).
    #[serde(skip)]
    pub blocklist: Arc<Blocklist>,
}

impl ListenerView {
    pub fn new(
        config: &ListenerConfig,
        address: SocketAddr,
        certificate: Option<&CertificateInfo>,
        crls: &[CrlInfo],
        blocklist: Arc<Blocklist>,
    ) -> ListenerView {
        let (security, tls_versions, scu) = match &config.security {
            Security::Tls(t) => (
                "Secured",
                t.versions.iter().map(|v| format!("TLS {v}")).collect(),
                Some(if t.client_auth.required() { "Authenticated" } else { "Anonymous" }),
            ),
            Security::Plaintext => ("UNSECURED", Vec::new(), None),
        };
        let routes = config
            .routes
            .exact
            .iter()
            .map(|(ae, b)| (ae.to_string(), b.clone()))
            .chain(config.routes.fallback.iter().map(|b| ("*".to_owned(), b.clone())))
            .collect();
        ListenerView {
            name: config.name.clone(),
            address,
            security,
            certificate: certificate.map(CertificateView::new),
            tls_versions,
            scu,
            allow: config.allow.iter().map(|n| n.to_string()).collect(),
            calling_ae_titles: config.calling_ae_titles.as_ref().map(|l| l.iter().map(|a| a.to_string()).collect()),
            routes,
            max_connections: config.max_connections,
            proxy_protocol: config.proxy_protocol.is_some(),
            crls: crls.iter().map(|c| c.view(&format!("listeners.{}.tls", config.name))).collect(),
            blocklist,
        }
    }
}

/// A source the guessing protection refuses at accept now.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedSource {
    pub listener: String,
    /// An IPv4 address or an IPv6 /64.
    pub source: String,
    /// The address whose refusal started the block.
    pub address: String,
    pub seconds_left: u64,
    pub block_seconds: u64,
    /// Blocks in a row (each doubles the last, up to `guessing.max_block`).
    pub blocks: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    pub subject: String,
    pub fingerprint_sha256: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    #[serde(skip)]
    not_after_unix: i64,
}

impl CertificateView {
    fn new(c: &CertificateInfo) -> CertificateView {
        let unix = c.not_after.unix_timestamp();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
        CertificateView {
            subject: c.subject.clone(),
            fingerprint_sha256: c.fingerprint_sha256.clone(),
            not_after: humantime::format_rfc3339_seconds(at).to_string(),
            not_after_unix: unix,
        }
    }

    /// Whole days left, from the clock now (the page is read for years).
    pub fn days_left(&self) -> i64 {
        (self.not_after_unix - OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86_400)
    }
}

/// A listener with its live counters.
#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    #[serde(flatten)]
    pub view: ListenerView,
    pub certificate_days_left: Option<i64>,
    pub active_connections: i64,
    /// `dicomgate_connections_total` by outcome, since start.
    pub connections: BTreeMap<&'static str, u64>,
}

impl ListenerStatus {
    fn new(view: ListenerView, metrics: &Metrics) -> ListenerStatus {
        let connections = Outcome::labels().map(|o| (o, metrics.connections(&view.name, o))).collect();
        ListenerStatus {
            certificate_days_left: view.certificate.as_ref().map(CertificateView::days_left),
            active_connections: metrics.active(&view.name),
            connections,
            view,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}
