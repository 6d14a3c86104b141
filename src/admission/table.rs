//! The pre-association budget's table: every connection that has not yet
//! delivered its A-ASSOCIATE-RQ, indexed by whether its source is known (has
//! had an association forwarded within [`KNOWN_FOR`]), by how far it has got
//! ([`Progress`]) and by [`Source`], and the one rule that picks whom to
//! evict ([`Table::victim`]). No I/O, no clock of its own: the budget passes `now`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::STALE_AFTER;
use super::eviction::{Eviction, Notice};
use super::source::Source;

/// How far a pre-association connection has got. Eviction takes the least
/// advanced first: a connection that has sent nothing has cost its peer one
/// SYN, one that finished its TLS handshake has cost it a handshake and is
/// one PDU from being an association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Its task looked and found nothing to read yet.
    Silent = 0,
    /// Accepted, its task not yet run: not looked at, so not yet found
    /// silent. Under a flood the accept loop runs ahead of the connection
    /// tasks; a newcomer must not lose its place before anyone has looked.
    Accepted = 1,
    /// Bytes arrived (a ClientHello, or the start of a plaintext RQ).
    Speaking = 2,
    /// TLS handshake complete, waiting for the A-ASSOCIATE-RQ.
    Secured = 3,
}

const PROGRESS: usize = 4;
/// Per progress, entries of unknown sources, then of known ones.
const TIERS: usize = 2 * PROGRESS;

/// How long a source that had an association forwarded stays known: its
/// connections are evicted after everyone else's (but the stale).
pub const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// Known sources remembered per listener; the least recently forwarded goes.
pub const MAX_KNOWN: usize = 1024;

pub(super) struct Entry {
    pub ip: IpAddr,
    pub source: Source,
    pub since: Instant,
    pub progress: Progress,
    /// The source was known when the entry came in (or moved to it).
    pub known: bool,
    pub notice: Arc<Notice>,
}

impl Entry {
    fn tier(&self) -> usize {
        usize::from(self.known) * PROGRESS + self.progress as usize
    }
}

/// The entries of one [`Progress`] tier, oldest first (ids grow with time).
#[derive(Default)]
struct Tier {
    order: BTreeSet<u64>,
    by_source: HashMap<Source, BTreeSet<u64>>,
}

impl Tier {
    fn add(&mut self, id: u64, source: Source) {
        self.order.insert(id);
        self.by_source.entry(source).or_default().insert(id);
    }

    fn remove(&mut self, id: u64, source: Source) {
        self.order.remove(&id);
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
    }

    /// The oldest entry of the source holding the most entries in this tier
    /// (on a tie, the source whose oldest is oldest). O(sources in the tier).
    fn busiest_oldest(&self) -> Option<u64> {
        self.by_source
            .values()
            .filter_map(|ids| ids.first().map(|oldest| (ids.len(), *oldest)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, oldest)| oldest)
    }
}

#[derive(Default)]
pub(super) struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    tiers: [Tier; TIERS],
    /// Entries per source, all tiers (the per-source share).
    per_source: HashMap<Source, usize>,
    /// Sources with an association forwarded, and when (the last).
    known: HashMap<Source, Instant>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn insert(&mut self, entry: Entry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.put(id, entry);
        id
    }

    /// Puts an entry back under its old id (a rekey keeps its age).
    pub fn put(&mut self, id: u64, entry: Entry) {
        self.tiers[entry.tier()].add(id, entry.source);
        *self.per_source.entry(entry.source).or_default() += 1;
        self.entries.insert(id, entry);
    }

    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.tiers[entry.tier()].remove(id, entry.source);
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// Moves an entry up to `progress`; the one way down is from
    /// `Accepted` to `Silent`, once its task has looked. `false`: not in the table.
    pub fn advance(&mut self, id: u64, progress: Progress) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else { return false };
        let looked = entry.progress == Progress::Accepted && progress == Progress::Silent;
        if progress > entry.progress || looked {
            self.tiers[entry.tier()].remove(id, entry.source);
            entry.progress = progress;
            self.tiers[entry.tier()].add(id, entry.source);
        }
        true
    }

    /// Whether `source` had an association forwarded within [`KNOWN_FOR`].
    pub fn is_known(&self, source: Source, now: Instant) -> bool {
        self.known.get(&source).is_some_and(|at| now.duration_since(*at) < KNOWN_FOR)
    }

    /// `source` had an association forwarded now.
    pub fn mark_known(&mut self, source: Source, now: Instant) {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&source) {
            self.known.retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN {
                let oldest = self.known.iter().min_by_key(|(_, at)| **at).map(|(s, _)| *s);
                if let Some(oldest) = oldest {
                    self.known.remove(&oldest);
                }
            }
        }
        self.known.insert(source, now);
    }

    pub fn count_of(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    fn is_stale(&self, id: u64, now: Instant) -> bool {
        self.entries.get(&id).is_some_and(|e| now.duration_since(e.since) >= STALE_AFTER)
    }

    /// Whom to evict when the budget is full:
    ///
    /// 1. an entry that has had [`STALE_AFTER`] to send its RQ, unknown
    ///    sources first, least advanced first, oldest first: a prompt peer
    ///    is never among them, and a peer that finished a handshake and then
    ///    went silent must not keep its place for the whole ACSE timeout;
    /// 2. else an entry of an unknown source before one of a known source
    ///    (one that had an association forwarded within [`KNOWN_FOR`]);
    ///    there, the least advanced; there, the oldest entry of the source
    ///    holding the most.
    ///
    /// So silent connections, from however many addresses, only ever evict
    /// each other while a peer that has spoken waits for its RQ, and no
    /// connection from addresses that never got an association through
    /// evicts one from an address that did.
    pub fn victim(&self, now: Instant) -> Option<u64> {
        let stale = self.tiers.iter().filter_map(|t| t.order.first().copied()).find(|id| self.is_stale(*id, now));
        stale.or_else(|| self.tiers.iter().find(|t| !t.order.is_empty()).and_then(Tier::busiest_oldest))
    }

    /// The oldest stale entry of `source`, least advanced first.
    pub fn stale_of(&self, source: Source, now: Instant) -> Option<u64> {
        self.tiers
            .iter()
            .filter_map(|t| t.by_source.get(&source).and_then(|ids| ids.first().copied()))
            .find(|id| self.is_stale(*id, now))
    }

    /// Takes `id` out and tells its connection why.
    pub fn evict(&mut self, id: u64, why: Eviction) {
        if let Some(victim) = self.remove(id) {
            victim.notice.evict(victim.ip, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn entry(last: u8, since: Instant, progress: Progress) -> Entry {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        Entry { ip, source: Source::of(ip), since, progress, known: false, notice: Arc::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn the_victim_is_stale_first_then_least_advanced_then_busiest_source() {
        let mut t = Table::default();
        let start = Instant::now();
        let secured_old = t.insert(entry(1, start, Progress::Secured));
        tokio::time::advance(STALE_AFTER / 2).await;
        let speaking = t.insert(entry(2, Instant::now(), Progress::Speaking));
        let silent_a = t.insert(entry(3, Instant::now(), Progress::Silent));
        let silent_b1 = t.insert(entry(4, Instant::now(), Progress::Silent));
        let silent_b2 = t.insert(entry(4, Instant::now(), Progress::Silent));
        let now = Instant::now();
        // Nothing stale: the silent tier, its busiest source (4), oldest first.
        assert_eq!(t.victim(now), Some(silent_b1));
        t.evict(silent_b1, Eviction::BudgetFull);
        // 3 and 4 hold one each now: the older one.
        assert_eq!(t.victim(now), Some(silent_a));
        t.evict(silent_a, Eviction::BudgetFull);
        t.evict(silent_b2, Eviction::BudgetFull);
        assert_eq!(t.victim(now), Some(speaking), "then the tier above");
        // Once the secured one has had its second, it goes before anyone young.
        tokio::time::advance(STALE_AFTER / 2).await;
        assert_eq!(t.victim(Instant::now()), Some(secured_old));
        assert!(t.advance(speaking, Progress::Secured));
        assert!(!t.advance(silent_a, Progress::Secured), "evicted");
        assert_eq!((t.len(), t.count_of(Source::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))))), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_not_yet_looked_at_goes_after_the_silent_and_a_known_source_after_everyone() {
        let mut t = Table::default();
        let now = Instant::now();
        let older = t.insert(entry(1, now, Progress::Accepted));
        let younger = t.insert(entry(2, now, Progress::Accepted));
        assert_eq!(t.victim(now), Some(older), "oldest first while neither was looked at");
        assert!(t.advance(younger, Progress::Silent));
        assert_eq!(t.victim(now), Some(younger), "looked at and found silent: before one not yet looked at");
        assert!(t.advance(younger, Progress::Speaking));
        assert!(t.advance(younger, Progress::Silent), "still in the table");
        assert_eq!(t.victim(now), Some(older), "never back down once it has spoken");

        let mut t = Table::default();
        let cloud = Source::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        t.mark_known(cloud, now);
        let known = t.insert(Entry { known: t.is_known(cloud, now), ..entry(1, now, Progress::Silent) });
        let secured = t.insert(entry(2, now, Progress::Secured));
        assert_eq!(t.victim(now), Some(secured), "an unknown source's, however advanced");
        t.evict(secured, Eviction::BudgetFull);
        assert_eq!(t.victim(now), Some(known));
        tokio::time::advance(KNOWN_FOR).await;
        assert!(!t.is_known(cloud, Instant::now()));
    }
}
