//! The most recent finished connections, for the status page and `/status`
//! (docs/status-page.md): a fixed-capacity ring of their reports, newest
//! last.
//!
//! Cost per connection: one short mutex hold to push the report (moved, not
//! copied); nothing on the relay path. Memory is bounded by [`CAPACITY`]
//! entries of [`RecentAssociation`], whose strings are bounded by what a
//! report holds (AE titles ≤ 16 bytes, names from the configuration, short
//! texts, a few dozen DIMSE counts).
//!
//! Only what the audit line already carries is kept: identifiers and
//! counters, never PDU contents (no PHI).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::ser::SerializeStruct;
use serde::Serialize;

use crate::report::{millis, Report};

/// How many finished connections are kept.
pub const CAPACITY: usize = 100;

/// One finished connection, as the page and `/status` show it: its report
/// and when it ended.
#[derive(Debug, Clone)]
pub struct RecentAssociation {
    pub ended: SystemTime,
    pub report: Report,
}

/// `/status`'s JSON of one entry. Field names are API; the texts are the
/// audit line's.
impl Serialize for RecentAssociation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.report;
        let mut o = s.serialize_struct("RecentAssociation", 17)?;
        o.serialize_field("ended", &humantime::format_rfc3339_millis(self.ended).to_string())?;
        o.serialize_field("listener", &r.listener)?;
        o.serialize_field("conn", &r.id.to_string())?;
        o.serialize_field("peer", &r.trail.client())?;
        o.serialize_field("proxy", &r.trail.proxy())?;
        o.serialize_field("calling_ae", &r.trail.calling_ae)?;
        o.serialize_field("called_ae", &r.trail.called_ae)?;
        o.serialize_field("backend", &r.trail.backend)?;
        o.serialize_field("server", &r.server)?;
        o.serialize_field("outcome", r.outcome.as_str())?;
        o.serialize_field("association", &r.association.as_ref().map(ToString::to_string))?;
        o.serialize_field("end", &r.end.map(|e| e.as_str()))?;
        o.serialize_field("dimse", &r.dimse())?;
        o.serialize_field("detail", &r.detail)?;
        o.serialize_field("bytes_to_backend", &r.bytes_to_backend)?;
        o.serialize_field("bytes_to_client", &r.bytes_to_client)?;
        o.serialize_field("duration_ms", &millis(r.duration))?;
        o.end()
    }
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
    pub fn record(&self, report: Report) {
        let entry = RecentAssociation { ended: SystemTime::now(), report };
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
    use crate::report::{Association, ConnectionId, Outcome, Trail};
    use std::time::Duration;

    fn report(n: usize, outcome: Outcome) -> Report {
        let mut trail = Trail::new(([127, 0, 0, 1], 40000).into());
        trail.calling_ae = Some(format!("AE{n}"));
        Report::new("store", ConnectionId::next(), trail, outcome, Duration::from_millis(3))
    }

    #[test]
    fn keeps_the_newest_capacity_entries_newest_first() {
        let ring = RecentAssociations::new();
        for n in 0..CAPACITY + 7 {
            ring.record(report(n, Outcome::Forwarded));
        }
        let entries = ring.newest_first();
        assert_eq!(entries.len(), CAPACITY);
        assert_eq!(entries[0].report.trail.calling_ae.as_deref(), Some(format!("AE{}", CAPACITY + 6).as_str()));
        assert_eq!(entries[CAPACITY - 1].report.trail.calling_ae.as_deref(), Some("AE7"));
    }

    #[test]
    fn the_json_keeps_its_field_names() {
        let mut r = report(1, Outcome::Forwarded);
        r.association = Some(Association::RejectedByScp((1, 1, 3)));
        let ring = RecentAssociations::new();
        ring.record(r);
        let json = serde_json::to_value(&ring.newest_first()[0]).expect("json");
        assert_eq!(json["outcome"], "forwarded");
        assert_eq!(json["peer"], "127.0.0.1:40000");
        assert_eq!(json["calling_ae"], "AE1");
        assert!(json["association"].as_str().is_some_and(|a| a.starts_with("rejected by the SCP")), "{json}");
        assert_eq!(json["duration_ms"], 3);
        assert!(json["proxy"].is_null() && json["end"].is_null());
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
