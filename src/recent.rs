//! The most recent finished connections, for the status page and `/status`
//! (DESIGN.md, "Admin endpoint"): a fixed-capacity ring of compact copies of
//! the audit record, newest last.
//!
//! Cost per connection: one short mutex hold to push a small struct (its
//! strings are the audit record's, moved or copied once); nothing on the
//! relay path. Memory is bounded by [`CAPACITY`] entries of
//! [`RecentAssociation`], whose strings are bounded by what the audit record
//! holds (AE titles ≤ 16 bytes, names from the configuration, short texts).
//!
//! Only what the audit line already carries is kept: identifiers and
//! counters, never PDU contents (no PHI).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::audit::AuditRecord;
use crate::metrics::Outcome;

/// How many finished connections are kept.
pub const CAPACITY: usize = 100;

/// One finished connection, as the page and `/status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentAssociation {
    /// When the connection ended (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub ended: SystemTime,
    pub listener: String,
    /// The client (after a PROXY header: the address it carried).
    pub peer: Option<SocketAddr>,
    /// Behind a load balancer: the balancer's own address.
    pub proxy: Option<SocketAddr>,
    pub calling_ae: Option<String>,
    pub called_ae: Option<String>,
    pub backend: Option<String>,
    pub server: Option<String>,
    /// `dicomgate_connections_total`'s outcome label.
    #[serde(serialize_with = "outcome_label")]
    pub outcome: Outcome,
    /// The SCP's (or our) answer in words: `accepted`, or the A-ASSOCIATE-RJ reason.
    pub association: Option<String>,
    /// How an established association ended (`released`, `aborted`, …).
    pub end: Option<String>,
    /// DIMSE operations, e.g. `C-ECHO rq=1 success=1`.
    pub dimse: Option<String>,
    /// Why, in words, when something failed or was refused.
    pub detail: Option<String>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub duration_ms: u64,
}

impl RecentAssociation {
    /// Whether the connection was turned away (the page makes these stand out).
    pub fn refused(&self) -> bool {
        self.outcome != Outcome::Forwarded
            || self.association.as_deref().is_some_and(|a| a.starts_with("rejected") || a.contains("abort"))
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn outcome_label<S: serde::Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

/// The ring. Shared by every connection task (writers) and the admin
/// endpoint (reader).
#[derive(Debug)]
pub struct RecentAssociations {
    ring: Mutex<VecDeque<RecentAssociation>>,
}

impl Default for RecentAssociations {
    fn default() -> Self {
        Self::new()
    }
}

impl RecentAssociations {
    pub fn new() -> RecentAssociations {
        RecentAssociations { ring: Mutex::new(VecDeque::with_capacity(CAPACITY)) }
    }

    /// The lock is held only to push or copy out; a poisoned lock still
    /// holds whole entries.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RecentAssociation>> {
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a finished connection: called once, where its audit event is
    /// emitted. The oldest entry makes room when the ring is full.
    pub fn record(&self, record: &AuditRecord, outcome: Outcome, duration: Duration) {
        let entry = RecentAssociation {
            ended: SystemTime::now(),
            listener: record.listener.clone(),
            peer: record.peer,
            proxy: record.proxy,
            calling_ae: record.calling_ae.clone(),
            called_ae: record.called_ae.clone(),
            backend: record.backend.clone(),
            server: record.server.clone(),
            outcome,
            association: record.association.clone(),
            end: record.end.clone(),
            dimse: record.dimse.clone(),
            detail: record.detail.clone(),
            bytes_to_backend: record.bytes_to_backend,
            bytes_to_client: record.bytes_to_client,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        };
        let mut ring = self.lock();
        if ring.len() >= CAPACITY {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// A copy of the ring, newest first.
    pub fn newest_first(&self) -> Vec<RecentAssociation> {
        self.lock().iter().rev().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> AuditRecord {
        let mut r = AuditRecord::new("store", SocketAddr::from(([127, 0, 0, 1], 40000)));
        r.calling_ae = Some(format!("AE{n}"));
        r
    }

    #[test]
    fn keeps_the_newest_capacity_entries_newest_first() {
        let ring = RecentAssociations::new();
        for n in 0..CAPACITY + 7 {
            ring.record(&record(n), Outcome::Forwarded, Duration::from_millis(3));
        }
        let entries = ring.newest_first();
        assert_eq!(entries.len(), CAPACITY);
        assert_eq!(entries[0].calling_ae.as_deref(), Some(format!("AE{}", CAPACITY + 6).as_str()));
        assert_eq!(entries[CAPACITY - 1].calling_ae.as_deref(), Some("AE7"));
    }

    #[test]
    fn refusals_are_marked() {
        let ring = RecentAssociations::new();
        ring.record(&record(0), Outcome::RejectedCallingAe, Duration::ZERO);
        let mut accepted = record(1);
        accepted.association = Some("accepted".into());
        ring.record(&accepted, Outcome::Forwarded, Duration::ZERO);
        let mut scp_rj = record(2);
        scp_rj.association = Some("rejected-permanent, service-user, no-reason-given".into());
        ring.record(&scp_rj, Outcome::Forwarded, Duration::ZERO);
        let refused: Vec<bool> = ring.newest_first().iter().map(|e| e.refused()).collect();
        assert_eq!(refused, [true, false, true]);
    }

    #[test]
    fn entries_stay_small() {
        // The fixed part of one entry; strings add their lengths (AE titles
        // ≤ 16 bytes, names and short texts). See the module comment.
        let size = std::mem::size_of::<RecentAssociation>();
        eprintln!("RecentAssociation: {size} bytes + strings");
        assert!(size <= 512, "{size}");
    }
}
