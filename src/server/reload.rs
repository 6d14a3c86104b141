//! SIGHUP: re-read the configuration file and apply it all or nothing. The
//! file is read, certificates loaded and keys generated off the async
//! workers; every new address is bound before anything changes; then each
//! listener's snapshot is swapped for new connections (live associations
//! keep theirs), added listeners start, removed ones stop accepting.

use super::*;

/// Re-reads the file and applies it, or changes nothing.
pub(super) async fn reload_config(
    current: &Config,
    slots: &mut BTreeMap<String, Slot>,
    metrics: &Metrics,
    services: &Services,
    tracker: &TaskTracker,
    health: Arc<HealthRegistry>,
) -> Result<(Config, Backends, Vec<ListenerView>, atna::Prepared), ServeError> {
    let path = current.source.clone().ok_or(ServeError::NoConfigFile)?;
    // File reads, certificate loading and key generation block: off the
    // async workers, which keep serving live associations meanwhile.
    let (new, prepared, audit) = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
        let new = Config::load(&path)?;
        let prepared = prepare::gateway(&new, &health, Generation::Create)?;
        let audit = atna::Prepared::new(&new)?;
        Ok((new, prepared, audit))
    })
    .await??;
    let Prepared { backends, listeners } = prepared;
    let path = new.source.as_deref().unwrap_or(std::path::Path::new("-"));

    // Prepare everything that can fail before changing anything.
    let mut prepared = Vec::new();
    let mut views = Vec::new();
    for (name, built) in listeners {
        let listen = built.runtime.config.listen;
        let rebind = slots.get(&name).is_none_or(|s| s.configured != listen);
        let key = format!("listeners.{name}.listen");
        let socket = if rebind { Some(listen_on(&key, listen, None).await?) } else { None };
        prepared.push((name, built, socket));
    }

    let removed: Vec<String> = slots.keys().filter(|n| !new.listeners.contains_key(*n)).cloned().collect();
    for name in &removed {
        if let Some(slot) = slots.remove(name) {
            slot.stop.cancel();
            tracing::info!(listener = %name, "listener removed: no new connections; live ones continue");
        }
    }
    for (name, built, socket) in prepared {
        let max = built.runtime.config.max_connections;
        match (socket, slots.get(&name)) {
            (None, Some(slot)) => {
                banner(&name, slot.bound, &built, metrics);
                views.push(ListenerView::new(
                    &built.runtime.config,
                    slot.bound,
                    built.certificate.as_ref(),
                    &built.crls.infos,
                ));
                // The same counts, new numbers: live connections keep counting.
                let limits = slot.publish.borrow().limits.clone();
                limits.resize(max);
                slot.publish.send_replace(Snapshot { runtime: built.runtime, limits });
            }
            (Some(socket), existing) => {
                // A moved listener keeps counting the connections it accepted at its old address.
                let limits = match existing {
                    Some(old) => {
                        old.stop.cancel();
                        tracing::info!(listener = %name, from = %old.bound, to = %socket.address, "listener moved");
                        let limits = old.publish.borrow().limits.clone();
                        limits.resize(max);
                        limits
                    }
                    None => Limits::new(max),
                };
                metrics.register_listener(&name);
                banner(&name, socket.address, &built, metrics);
                views.push(ListenerView::new(
                    &built.runtime.config,
                    socket.address,
                    built.certificate.as_ref(),
                    &built.crls.infos,
                ));
                let (name, slot) = start_listener(Bound { name, socket, built }, limits, services, tracker);
                slots.insert(name, slot);
            }
            // An unchanged address always has a slot (see `rebind` above).
            (None, None) => {}
        }
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| (a.listen, a.allow.clone()));
    if admin(current) != admin(&new) {
        tracing::warn!("admin.listen or admin.allow changed: takes effect at the next restart");
    }
    if current.log.level != new.log.level || current.log.format != new.log.format {
        tracing::warn!("log settings changed: take effect at the next restart");
    }
    tracing::info!(file = %path.display(), listeners = new.listeners.len(), removed = removed.len(), "configuration reloaded");
    Ok((new, backends, views, audit))
}
