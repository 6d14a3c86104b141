//! The CRLs in effect, told to the log and the metrics at start and after
//! each reload (the status page reads them from the [`StatusBoard`]).

use crate::admin::status::StatusBoard;
use crate::metrics::{CrlOwner, CrlSeries, Metrics};

/// Logs each loaded CRL and makes `dicomgate_tls_crl_next_update_timestamp_seconds`
/// exactly the set loaded now (series of CRLs no longer configured go away).
pub(super) fn publish(board: &StatusBoard, metrics: &Metrics) {
    let crls = board.crls();
    for crl in &crls {
        let v = &crl.view;
        tracing::info!(
            key = %v.key, file = %v.file, issuer = %v.issuer, revoked = v.revoked,
            this_update = %v.this_update, next_update = %v.next_update,
            "certificate revocation list loaded"
        );
    }
    let series: Vec<CrlSeries<'_>> = crls
        .iter()
        .map(|c| {
            let owner = if c.listener { CrlOwner::Listener(&c.owner) } else { CrlOwner::Backend(&c.owner) };
            (owner, c.view.issuer.as_str(), c.view.next_update_unix)
        })
        .collect();
    metrics.set_crl_next_updates(&series);
}
