//! SIGHUP's first half: re-read the configuration file and build everything
//! it names (certificates loaded, missing keys generated, backends and
//! listener runtimes prepared, the audit trail's settings), off the async
//! workers, changing nothing. [`super::serving`] then applies the result
//! all or nothing; live associations keep the snapshot they started with.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ServeError;
use crate::atna;
use crate::backend::HealthRegistry;
use crate::config::Config;
use crate::prepare::{self, Backends, Generation, Prepared, PreparedListener};

/// A new configuration, loaded and prepared, not yet applied.
pub(super) struct Reloaded {
    pub config: Config,
    pub backends: Backends,
    pub listeners: BTreeMap<String, PreparedListener>,
    pub audit: atna::Prepared,
}

/// Re-reads the file `current` was loaded from and prepares it.
pub(super) async fn load(current: &Config, health: Arc<HealthRegistry>) -> Result<Reloaded, ServeError> {
    let path = current.source.clone().ok_or(ServeError::NoConfigFile)?;
    // File reads, certificate loading and key generation block: off the
    // async workers, which keep serving live associations meanwhile.
    tokio::task::spawn_blocking(move || -> Result<Reloaded, ServeError> {
        let config = Config::load(&path)?;
        let Prepared { backends, listeners } = prepare::gateway(&config, &health, Generation::Create)?;
        let audit = atna::Prepared::new(&config)?;
        Ok(Reloaded { config, backends, listeners, audit })
    })
    .await?
}

/// What a reload cannot change while running, said once it is applied.
pub(super) fn warn_restart_only(current: &Config, new: &Config) {
    let admin = |c: &Config| c.admin.as_ref().map(|a| (a.listen, a.allow.clone()));
    if admin(current) != admin(new) {
        tracing::warn!(target: super::LOG_TARGET, "admin.listen or admin.allow changed: takes effect at the next restart");
    }
    if current.log.level != new.log.level || current.log.format != new.log.format {
        tracing::warn!(target: super::LOG_TARGET, "log settings changed: take effect at the next restart");
    }
}
