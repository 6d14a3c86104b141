//! The refusal log: refusals an attacker can cause for free (a denied
//! source, a connection that is not from a load balancer, a PROXY header
//! carrying a denied client, over the limit, evicted from the pre-association
//! budget) are counted exactly in the metrics, but logged sparingly: the
//! first refusal of a quiet source at once, then at most one summary line per
//! (listener, source, reason) per [`INTERVAL`] with the count. An internet
//! scanner must not flood the journal past its rate limit, which would drop
//! the audit lines of real associations with it.
//!
//! Refusals of allowed peers that the audit trail reports ([`Audited`]: AE
//! titles refused, TLS handshakes failed, blocked sources) go the same way,
//! except that the first of a quiet (source, reason) is reported in full
//! by its connection (audit line, status page, ATNA Security Alert) instead
//! of a line here, and each summary also goes to ATNA as one Security Alert
//! carrying the count (docs/audit.md).
//!
//! The map of sources is bounded ([`MAX_SOURCES`] per listener); past it,
//! new sources are aggregated as "other sources". Recording is a counter
//! update under a short std mutex; lines are written outside the lock.

mod reason;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::atna::AuditSink;
pub use reason::{Audited, SummarisedRefusal};

/// How often repeated refusals are summarised.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Distinct (source, reason) pairs remembered per listener per interval.
pub const MAX_SOURCES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Ip(IpAddr),
    Other,
}

impl Source {
    fn ip(self) -> Option<IpAddr> {
        match self {
            Source::Ip(ip) => Some(ip),
            Source::Other => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(ip) => ip.fmt(f),
            Source::Other => f.write_str("other sources"),
        }
    }
}

/// Refusals since the last summary, per listener.
type Pending = HashMap<String, HashMap<(Source, SummarisedRefusal), u64>>;

/// Shared by every listener of a gateway. Cheap to clone.
#[derive(Clone, Default)]
pub struct RefusalLog {
    pending: Arc<Mutex<Pending>>,
}

impl fmt::Debug for RefusalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusalLog")
    }
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Counters only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One summary: `count` refusals of `source` for `refusal` since the last.
struct Summary {
    listener: String,
    source: Source,
    refusal: SummarisedRefusal,
    count: u64,
}

impl RefusalLog {
    pub fn new() -> RefusalLog {
        RefusalLog::default()
    }

    /// Counts one refusal. `Some(source)`: the first from a quiet (source,
    /// reason), which the caller reports (the source may be "other sources").
    fn count(&self, listener: &str, source: IpAddr, refusal: SummarisedRefusal) -> Option<Source> {
        let mut pending = lock(&self.pending);
        let of_listener = match pending.get_mut(listener) {
            Some(m) => m,
            None => pending.entry(listener.to_owned()).or_default(),
        };
        let mut key = (Source::Ip(source), refusal);
        if !of_listener.contains_key(&key) && of_listener.len() >= MAX_SOURCES {
            key.0 = Source::Other;
        }
        match of_listener.get_mut(&key) {
            Some(count) => {
                *count += 1;
                None
            }
            None => {
                // The first stands for itself: the summary counts the rest.
                of_listener.insert(key, 0);
                Some(key.0)
            }
        }
    }

    /// Notes one refusal anyone can cause. Logs a line only for a (source,
    /// reason) not seen since the last summary; otherwise counts it for the
    /// next summary.
    pub fn record(&self, listener: &str, source: IpAddr, refusal: SummarisedRefusal) {
        if let Some(source) = self.count(listener, source, refusal) {
            tracing::warn!(
                target: "dicomgate::refusals",
                listener = %listener, source = %source, reason = refusal.as_str(),
                "{source}: connection refused ({}): {}; more from this source are summarised every {} s",
                refusal.as_str(), refusal.describe(), INTERVAL.as_secs()
            );
        }
    }

    /// Notes one refusal of an allowed peer that the audit trail reports.
    /// `true`: the first from a quiet (source, reason): the caller reports
    /// it in full; otherwise it is counted for the next summary.
    pub fn audited(&self, listener: &str, source: IpAddr, refusal: Audited) -> bool {
        matches!(self.count(listener, source, SummarisedRefusal::Audited(refusal)), Some(Source::Ip(_)))
    }

    /// Writes one summary line per (listener, source, reason) refused since
    /// the last call (and, for audited refusals, one ATNA Security Alert
    /// with the count), and forgets sources that were quiet.
    pub fn flush(&self, atna: &AuditSink) {
        let summaries = {
            let mut pending = lock(&self.pending);
            let mut out = Vec::new();
            for (listener, of_listener) in pending.iter_mut() {
                // Quiet since the last summary: a new refusal is reported at once again.
                of_listener.retain(|_, count| *count > 0);
                for ((source, refusal), count) in of_listener.iter_mut() {
                    let count = std::mem::take(count);
                    out.push(Summary { listener: listener.clone(), source: *source, refusal: *refusal, count });
                }
            }
            pending.retain(|_, m| !m.is_empty());
            out
        };
        for s in summaries {
            let Summary { listener, source, refusal, count } = &s;
            tracing::warn!(
                target: "dicomgate::refusals",
                listener = %listener, source = %source, reason = refusal.as_str(), count,
                "{source}: {} connections refused ({}) in the last {} s",
                thousands(*count), refusal.as_str(), INTERVAL.as_secs()
            );
            if let SummarisedRefusal::Audited(audited) = refusal {
                if let Some(reason) = audited.alert() {
                    atna.refusals_summarised(listener, source.ip(), reason, *count, INTERVAL);
                }
            }
        }
    }

    /// Summarises every [`INTERVAL`] until `stop`, then once more.
    pub fn spawn_summaries(&self, stop: CancellationToken, atna: AuditSink) -> JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => log.flush(&atna),
                }
            }
            log.flush(&atna);
        })
    }
}

/// 2917 → "2,917": the admin reads these lines, not a parser (fields carry the number).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn counts(log: &RefusalLog, listener: &str) -> HashMap<(Source, SummarisedRefusal), u64> {
        lock(&log.pending).get(listener).cloned().unwrap_or_default()
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2917), "2,917");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_first_refusal_is_logged_and_the_rest_counted_for_the_summary() {
        let log = RefusalLog::new();
        for _ in 0..3000 {
            log.record("store", ip(3), SummarisedRefusal::DeniedIp);
        }
        assert_eq!(counts(&log, "store")[&(Source::Ip(ip(3)), SummarisedRefusal::DeniedIp)], 2999);
        log.flush(&AuditSink::disabled());
        // Summarised and reset; still remembered, so the next one is counted, not logged.
        assert_eq!(counts(&log, "store")[&(Source::Ip(ip(3)), SummarisedRefusal::DeniedIp)], 0);
        log.flush(&AuditSink::disabled());
        assert!(counts(&log, "store").is_empty(), "a quiet source is forgotten");
    }

    #[test]
    fn sources_past_the_bound_are_aggregated() {
        let log = RefusalLog::new();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let source = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i));
            log.record("store", source, SummarisedRefusal::DeniedIp);
            log.record("store", source, SummarisedRefusal::DeniedIp);
        }
        let c = counts(&log, "store");
        assert_eq!(c.len(), MAX_SOURCES + 1);
        // 100 sources × 2 refusals, the first of which opened the "other" entry.
        assert_eq!(c[&(Source::Other, SummarisedRefusal::DeniedIp)], 199);
        // An audited refusal of "other sources" is never reported in full.
        assert!(!log.audited("store", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), Audited::CallingAe));
    }

    #[test]
    fn an_audited_refusal_is_reported_in_full_once_per_quiet_spell() {
        let log = RefusalLog::new();
        let first: Vec<bool> = (0..1500).map(|_| log.audited("store", ip(2), Audited::TlsHandshake)).collect();
        assert_eq!(first.iter().filter(|f| **f).count(), 1);
        assert!(first[0]);
        assert!(log.audited("store", ip(2), Audited::CallingAe), "another reason is reported on its own");
        let key = (Source::Ip(ip(2)), SummarisedRefusal::Audited(Audited::TlsHandshake));
        assert_eq!(counts(&log, "store")[&key], 1499);
        log.flush(&AuditSink::disabled());
        assert!(!log.audited("store", ip(2), Audited::TlsHandshake), "not quiet: counted");
        log.flush(&AuditSink::disabled());
        log.flush(&AuditSink::disabled());
        assert!(log.audited("store", ip(2), Audited::TlsHandshake), "quiet for an interval: in full again");
    }
}
