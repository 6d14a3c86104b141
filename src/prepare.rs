//! What `run` (start and reload) and `check` both build from a [`Config`]:
//! backend runtimes (TLS client configurations, health state) and listener
//! runtimes (identity, TLS server configuration, certificate details, routed
//! backends), plus the words that describe a listener (its allow list,
//! calling AE titles and routes). One copy, so `check` judges exactly what
//! `run` would load.
//!
//! Everything here is blocking (file reads, key generation, certificate
//! parsing): reload calls it through `spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use std::fmt;
use std::path::Path;

use crate::backend::{BackendRuntime, HealthRegistry};
use crate::config::{BackendConfig, Config, ListenerConfig, Security};
use crate::connection::ListenerRuntime;
use crate::pki::{self, CertificateInfo};
use crate::tls::crl::{CrlError, CrlSet};
use crate::tls::{self, ServerIdentity, TlsError};

/// Backend runtimes by name.
pub type Backends = BTreeMap<String, Arc<BackendRuntime>>;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("listeners.{listener}.tls: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: TlsError,
    },
    /// Pinned, and refused by rustls in every handshake: said at load.
    #[error(
        "listeners.{listener}.tls.client_certificates[{index}]: {}: the pinned client certificate is X.509 v1, \
         which every TLS handshake refuses (rustls: UnsupportedCertVersion); the cloud must {}",
        .path.display(),
        tls::REISSUE_AS_V3
    )]
    PinnedX509v1 { listener: String, index: usize, path: std::path::PathBuf },
    #[error("backends.{backend}.tls: {source}")]
    BackendTls {
        backend: String,
        #[source]
        source: TlsError,
    },
    /// `owner` is the `tls` section, e.g. `listeners.store.tls`; the error
    /// names the rest of the key (`client_crls[1]`) and the file.
    #[error("{owner}.{source}")]
    Crl {
        owner: String,
        #[source]
        source: Box<CrlError>,
    },
}

impl PrepareError {
    /// A listener's TLS error, with a CRL's named by its full key.
    fn listener_tls(listener: &str, source: TlsError) -> PrepareError {
        match source {
            TlsError::Crl(source) => PrepareError::Crl { owner: format!("listeners.{listener}.tls"), source },
            source => PrepareError::ListenerTls { listener: listener.to_owned(), source },
        }
    }

    fn backend_tls(backend: &str, source: TlsError) -> PrepareError {
        match source {
            TlsError::Crl(source) => PrepareError::Crl { owner: format!("backends.{backend}.tls"), source },
            source => PrepareError::BackendTls { backend: backend.to_owned(), source },
        }
    }
}

/// `tls.generate_if_missing` for a pair that does not exist yet: `run`
/// creates it; `check` writes nothing and reports it instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    Create,
    ReportOnly,
}

/// A listener's runtime and what the banner and `check` show of it.
#[derive(Debug)]
pub struct PreparedListener {
    pub runtime: Arc<ListenerRuntime>,
    /// The leaf certificate, for TLS listeners.
    pub certificate: Option<CertificateInfo>,
    /// `tls.client_crls` as read (empty without).
    pub crls: CrlSet,
}

/// Everything a gateway serves, built from a configuration.
#[derive(Debug)]
pub struct Prepared {
    pub backends: Backends,
    /// By listener name, like `Config::listeners`.
    pub listeners: BTreeMap<String, PreparedListener>,
}

/// The one function that builds a gateway's listeners and backends from a
/// configuration (start and reload; `check` calls the parts one by one to
/// report every problem, not only the first).
pub fn gateway(config: &Config, health: &HealthRegistry, generation: Generation) -> Result<Prepared, PrepareError> {
    let backends = backends(config, health)?;
    let listeners = config
        .listeners
        .iter()
        .map(|(name, lc)| Ok((name.clone(), listener(lc, &backends, generation)?)))
        .collect::<Result<_, PrepareError>>()?;
    Ok(Prepared { backends, listeners })
}

/// Every backend's runtime; servers keep their health state from `health`
/// where their probe is unchanged.
pub fn backends(config: &Config, health: &HealthRegistry) -> Result<Backends, PrepareError> {
    config.backends.values().map(|bc| Ok((bc.name.clone(), backend(bc, health)?))).collect()
}

pub fn backend(bc: &Arc<BackendConfig>, health: &HealthRegistry) -> Result<Arc<BackendRuntime>, PrepareError> {
    let tls = match &bc.tls {
        Some(t) => Some(tls::backend_tls(t).map_err(|source| PrepareError::backend_tls(&bc.name, source))?),
        None => None,
    };
    Ok(Arc::new(BackendRuntime { config: bc.clone(), tls, health: health.health_for(bc) }))
}

/// True when the listener's pair is missing and `generate_if_missing` will
/// create it at the first start (`check` then has nothing to load yet).
pub fn pending_generation(lc: &ListenerConfig) -> bool {
    match &lc.security {
        Security::Tls(t) => t.generate_if_missing && !t.certificate.exists() && !t.private_key.exists(),
        Security::Plaintext => false,
    }
}

/// Loads (and with [`Generation::Create`], first generates) the listener's
/// TLS material and builds its runtime with the backends it routes to.
pub fn listener(
    lc: &Arc<ListenerConfig>,
    backends: &Backends,
    generation: Generation,
) -> Result<PreparedListener, PrepareError> {
    let (acceptor, certificate, crls) = match &lc.security {
        Security::Plaintext => (None, None, CrlSet::default()),
        Security::Tls(t) => {
            let err = |source| PrepareError::listener_tls(&lc.name, source);
            if generation == Generation::Create {
                if let Some(fingerprint) = tls::ensure_generated(t).map_err(err)? {
                    tracing::warn!(
                        listener = %lc.name,
                        certificate = %t.certificate.display(),
                        sha256 = %fingerprint,
                        "generated a self-signed certificate (generate_if_missing): upload this certificate file to the cloud"
                    );
                }
            }
            let identity = ServerIdentity::load(&t.certificate, &t.private_key).map_err(err)?;
            let certificate = identity.chain.first().and_then(|c| pki::inspect_certificate(c).ok());
            // An expired certificate is refused at start and on reload (the
            // old configuration keeps serving): a TLS peer that checks dates
            // cannot connect, and one that does not should not be relied on.
            if let Some(cert) = certificate.as_ref().filter(|c| c.days_left() < 0) {
                return Err(err(TlsError::Expired { path: t.certificate.clone(), not_after: cert.validity_text().1 }));
            }
            pinned_are_v3(lc, &t.client_auth.pinned)?;
            let server = tls::server_config(t, &identity).map_err(err)?;
            (Some(TlsAcceptor::from(server.config)), certificate, server.crls)
        }
    };
    // Only the backends this listener routes to.
    let routed = lc.routes.exact.values().chain(lc.routes.fallback.iter());
    let backends = routed.filter_map(|b| backends.get(b).map(|rt| (b.clone(), rt.clone()))).collect();
    let runtime = Arc::new(ListenerRuntime { config: lc.clone(), acceptor, backends });
    Ok(PreparedListener { runtime, certificate, crls })
}

/// The client-certificate checks of a TLS listener alone (CA, CRLs, pins),
/// for `check` when the listener's own pair does not exist yet.
pub fn client_auth(lc: &ListenerConfig) -> Result<CrlSet, PrepareError> {
    match &lc.security {
        Security::Tls(t) => tls::server::client_auth(t).map_err(|e| PrepareError::listener_tls(&lc.name, e)),
        Security::Plaintext => Ok(CrlSet::default()),
    }
}

/// A pinned X.509 v1 client certificate loads, and then fails every
/// handshake (webpki parses the peer's certificate to check its signature,
/// and refuses v1): refused here, so `check`, the start and a reload say so.
/// A file that does not load is left to the TLS configuration's own error.
fn pinned_are_v3(lc: &ListenerConfig, pinned: &[std::path::PathBuf]) -> Result<(), PrepareError> {
    for (index, path) in pinned.iter().enumerate() {
        let Ok(chain) = pki::load_certificate_chain(path) else { continue };
        if chain.first().is_some_and(|leaf| tls::is_x509_v1(leaf)) {
            return Err(PrepareError::PinnedX509v1 { listener: lc.name.clone(), index, path: path.clone() });
        }
    }
    Ok(())
}

/// What an admin must hear about a TLS listener's certificate and key before
/// anyone connects: the same words from `check` (an expired certificate is
/// an error there, the rest warnings) and in the log at start and reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Expired { listener: String, days_ago: i64 },
    ExpiresSoon { listener: String, days: i64 },
    KeyReadable { listener: String, key: std::path::PathBuf, mode: u32 },
}

impl Finding {
    /// Whether `check` fails on it (`run` refuses an expired certificate
    /// when it loads it, in [`listener`]).
    pub fn is_error(&self) -> bool {
        matches!(self, Finding::Expired { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Expired { listener, days_ago } => {
                write!(f, "listeners.{listener}.tls.certificate: expired {days_ago} days ago")
            }
            Finding::ExpiresSoon { listener, days } => write!(
                f,
                "listeners.{listener}.tls.certificate: expires in {days} days; renew it and upload the new one to the cloud"
            ),
            Finding::KeyReadable { listener, key, mode } => write!(
                f,
                "listeners.{listener}.tls.private_key: {} has mode {mode:04o}, readable by group or others; run chmod 600",
                key.display()
            ),
        }
    }
}

/// The findings for a listener's certificate (when it could be read) and key.
pub fn findings(listener: &str, certificate: Option<&CertificateInfo>, key: &Path) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Some(days) = certificate.map(CertificateInfo::days_left) {
        if days < 0 {
            found.push(Finding::Expired { listener: listener.to_owned(), days_ago: -days });
        } else if days < pki::EXPIRY_WARNING_DAYS {
            found.push(Finding::ExpiresSoon { listener: listener.to_owned(), days });
        }
    }
    // A key others can read is a key others may have.
    if let Some(mode) = crate::config::key_readable_by_others(key) {
        found.push(Finding::KeyReadable { listener: listener.to_owned(), key: key.to_owned(), mode });
    }
    found
}

/// A listener's policy in words, for the startup banner and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// `34.203.166.92/32,10.0.0.0/8`
    pub allow: String,
    /// `BUTTERFLY,OTHER`, or `any`
    pub calling: String,
    /// `PACS→pacs,*→archive`
    pub routes: String,
    /// `Authenticated` (client certificates required) or `Anonymous`; `None` for plaintext.
    pub scu: Option<&'static str>,
}

pub fn describe(lc: &ListenerConfig) -> Description {
    let allow: Vec<String> = lc.allow.iter().map(|n| n.to_string()).collect();
    let routes: Vec<String> = lc
        .routes
        .exact
        .iter()
        .map(|(ae, b)| format!("{ae}→{b}"))
        .chain(lc.routes.fallback.iter().map(|b| format!("*→{b}")))
        .collect();
    let calling = match &lc.calling_ae_titles {
        Some(list) => list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","),
        None => "any".to_owned(),
    };
    let scu = match &lc.security {
        Security::Tls(t) if t.client_auth.required() => Some("Authenticated"),
        Security::Tls(_) => Some("Anonymous"),
        Security::Plaintext => None,
    };
    Description { allow: allow.join(","), calling, routes: routes.join(","), scu }
}
