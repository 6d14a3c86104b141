//! The pre-association budget: connections that have not yet delivered a
//! whole A-ASSOCIATE-RQ (PROXY header, TLS handshake, first PDU) are counted
//! apart from established associations, so that silent or slow peers cannot
//! take the slots of the peers that do their part promptly.
//!
//! The rule (docs/admission.md), after HAProxy's per-source stick-table
//! limits, nginx `limit_conn` and Envoy's overload manager, but evicting
//! instead of refusing so that the newest connection always gets its chance:
//!
//! - a listener holds at most [`Budget::capacity`] pre-association
//!   connections (default: `max_connections`, at least [`MIN_BUDGET`]);
//! - a [`Source`] (an IPv4 address, an IPv6 /64) holds [`Budget::per_source`]
//!   of them (a quarter) as of right: a new connection from a source at that
//!   share evicts the source's connections that have had [`STALE_AFTER`] to
//!   send their RQ. Younger ones are kept (a burst of a real peer's
//!   associations from one address is not cut short while the budget has room);
//! - when the whole budget is full, a new connection evicts first a
//!   connection that has had [`STALE_AFTER`], then one of a source that has
//!   had no association forwarded lately, then one that has made the least
//!   progress ([`Progress`]: found silent, not yet looked at, speaking, TLS
//!   done), there the oldest of the busiest source
//!   ([`super::table::Table::victim`]). A peer that has started its
//!   handshake is thus never evicted for a silent connection, and a known
//!   peer never for an unknown one, whatever the number of addresses they
//!   come from;
//! - a connection leaves the budget when its A-ASSOCIATE-RQ has been read.
//!
//! Evicting is taking the entry out and telling the connection's task why
//! (its [`Notice`], see [`super::eviction`]): the task closes the connection
//! and counts the eviction, unless the connection ended on its own at the same
//! moment (its ACSE deadline): then it is counted once, by its own outcome. All work
//! here is a short critical section on a std mutex: O(sources) at worst, and
//! sources are bounded by the budget itself. It never awaits.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::eviction::{Eviction, Notice};
use super::source::Source;
use super::table::{Entry, Progress, Table};

/// The smallest pre-association budget, whatever `max_connections` says: a
/// listener with a handful of association slots still answers a burst of
/// newcomers (with RJ 2/3/2 if need be) instead of evicting at once.
pub const MIN_BUDGET: usize = 32;
/// The per-source cap is the budget divided by this (at least [`MIN_PER_SOURCE`]).
const PER_SOURCE_SHARE: usize = 4;
const MIN_PER_SOURCE: usize = 8;
/// How long a pre-association connection may go without a complete RQ
/// before it is the first to be evicted (by a newer one of its source over
/// the share, or by anyone when the budget is full): a TLS handshake and an
/// RQ take a few round trips, well under a second even across a continent.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

impl Table {
    /// Evicts the stale entries of `source` while it holds `share` or more.
    fn trim_source(&mut self, source: Source, share: usize, now: Instant) {
        while self.count_of(source) >= share {
            let Some(id) = self.stale_of(source, now) else { break };
            self.evict(id, Eviction::SourceCap);
        }
    }
}

/// Locks, recovering from poisoning: the table stays consistent across every
/// statement that can panic (none on this path allocate outside an insert).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One listener's pre-association budget. Shared across reloads.
#[derive(Default)]
pub struct Budget {
    capacity: AtomicUsize,
    table: Mutex<Table>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").field("capacity", &self.capacity()).field("len", &self.len()).finish()
    }
}

impl Budget {
    pub fn new(max_connections: usize) -> Budget {
        let b = Budget::default();
        b.resize(max_connections);
        b
    }

    /// Follows a reload's `max_connections`; live entries stay (a smaller
    /// budget is reached by the next admissions' evictions).
    pub fn resize(&self, max_connections: usize) {
        self.capacity.store(max_connections.max(MIN_BUDGET), Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn per_source(&self) -> usize {
        (self.capacity() / PER_SOURCE_SHARE).max(MIN_PER_SOURCE).min(self.capacity())
    }

    /// An association of `ip` was forwarded: its source is known for
    /// `KNOWN_FOR` (an hour), and its connections evicted last.
    pub fn forwarded(&self, ip: IpAddr) {
        lock(&self.table).mark_known(Source::of(ip), Instant::now());
    }

    /// Pre-association connections now.
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters a new connection, evicting as the rule says. `capped`: whether
    /// the per-source cap applies to `ip` (not to a trusted load balancer,
    /// whose connections carry many clients; see [`Ticket::rekey`]).
    /// The victims learn of it from their [`Notice`].
    pub fn enter(self: &Arc<Self>, ip: IpAddr, capped: bool) -> Ticket {
        self.enter_at(ip, capped, Progress::Accepted)
    }

    /// [`Budget::enter`] for a connection already known to be this far
    /// (its first bytes were waiting at accept: [`Progress::Speaking`]).
    pub fn enter_at(self: &Arc<Self>, ip: IpAddr, capped: bool, progress: Progress) -> Ticket {
        let (capacity, per_source, now) = (self.capacity(), self.per_source(), Instant::now());
        let source = Source::of(ip);
        let notice = Arc::new(Notice::default());
        let mut t = lock(&self.table);
        if capped {
            t.trim_source(source, per_source, now);
        }
        while t.len() >= capacity {
            let Some(victim) = t.victim(now) else { break };
            t.evict(victim, Eviction::BudgetFull);
        }
        let known = t.is_known(source, now);
        let entry = Entry { ip, source, since: now, progress, known, notice: notice.clone() };
        let id = t.insert(entry);
        drop(t);
        Ticket { budget: self.clone(), id, notice, held: true }
    }
}

/// A connection's place in the budget; leaving it (drop or [`Ticket::leave`])
/// frees the place.
pub struct Ticket {
    budget: Arc<Budget>,
    id: u64,
    notice: Arc<Notice>,
    held: bool,
}

impl Ticket {
    /// How this connection learns that it was evicted.
    pub fn notice(&self) -> Arc<Notice> {
        self.notice.clone()
    }

    /// The connection got further ([`Progress`]): it is evicted later.
    pub fn progress(&self, progress: Progress) {
        if self.held {
            lock(&self.budget.table).advance(self.id, progress);
        }
    }

    /// Behind a load balancer: the PROXY header named the real client, so the
    /// entry moves to that source (keeping its age) and the per-source cap
    /// applies to it (the victims learn of it from their [`Notice`]).
    /// `false`: this connection itself had already been evicted.
    pub fn rekey(&mut self, client: IpAddr) -> bool {
        let (per_source, now) = (self.budget.per_source(), Instant::now());
        let mut t = lock(&self.budget.table);
        let Some(mut entry) = t.remove(self.id) else { return false };
        entry.ip = client;
        entry.source = Source::of(client);
        entry.known = t.is_known(entry.source, now);
        t.trim_source(entry.source, per_source, now);
        t.put(self.id, entry);
        true
    }

    /// Leaves the budget (the RQ was read). `false`: it had been evicted.
    pub fn leave(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        lock(&self.budget.table).remove(self.id).is_some()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn evicted(t: &Ticket) -> Option<(IpAddr, Eviction)> {
        t.notice().eviction()
    }

    #[test]
    fn defaults_follow_max_connections() {
        let b = Budget::new(256);
        assert_eq!((b.capacity(), b.per_source()), (256, 64));
        let small = Budget::new(1);
        assert_eq!((small.capacity(), small.per_source()), (MIN_BUDGET, MIN_PER_SOURCE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_over_its_share_evicts_its_own_oldest_once_they_are_stale() {
        let b = Arc::new(Budget::new(256));
        let mut tickets: Vec<Ticket> = (0..64).map(|_| b.enter(ip(2), true)).collect();
        // A burst: the oldest had no time yet, so the 65th is let in over the share.
        let young = b.enter(ip(2), true);
        assert!(tickets.iter().chain([&young]).all(|t| evicted(t).is_none()));
        assert_eq!(b.len(), 65);
        tokio::time::advance(STALE_AFTER).await;
        // Now the source is trimmed back under its share, oldest first.
        let newest = b.enter(ip(2), true);
        assert_eq!(evicted(&tickets[0]), Some((ip(2), Eviction::SourceCap)));
        assert_eq!(evicted(&tickets[1]), Some((ip(2), Eviction::SourceCap)));
        assert!(tickets[2..].iter().chain([&newest, &young]).all(|t| evicted(t).is_none()));
        assert_eq!(b.len(), 64);
        // Another source is untouched by all this.
        let other = b.enter(ip(1), true);
        assert!(evicted(&other).is_none());
        assert_eq!(tickets.iter().filter(|t| evicted(t).is_some()).count(), 2);
        assert!(!tickets[0].leave(), "an evicted ticket is no longer in the budget");
        assert!(tickets[2].leave());
        assert_eq!(b.len(), 64);
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_of_the_busiest_source() {
        let b = Arc::new(Budget::new(32)); // per source: 8
        let quiet = b.enter(ip(1), true);
        let mut held = Vec::new();
        for source in 2..=5 {
            for _ in 0..(if source == 3 { 8 } else { 7 }) {
                held.push((source, b.enter(ip(source), true)));
            }
        }
        assert_eq!(b.len(), 30);
        held.push((6, b.enter(ip(6), true)));
        let seventh = b.enter(ip(7), true);
        assert_eq!(b.len(), 32);
        assert!(held.iter().map(|(_, t)| t).chain([&quiet, &seventh]).all(|t| evicted(t).is_none()));
        let _eighth = b.enter(ip(8), true);
        let victims: Vec<_> = held.iter().filter_map(|(s, t)| evicted(t).map(|e| (*s, e))).collect();
        assert_eq!(victims, vec![(3, (ip(3), Eviction::BudgetFull))], "source 3 holds the most");
        let first_of_3 = held.iter().find(|(s, _)| *s == 3).expect("source 3");
        assert!(evicted(&first_of_3.1).is_some(), "its oldest");
        assert!(evicted(&quiet).is_none(), "the source with one connection is never the victim");
        assert_eq!(b.len(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_has_spoken_survives_silent_connections_from_any_number_of_sources() {
        let b = Arc::new(Budget::new(256));
        let peer = b.enter(ip(1), true);
        peer.progress(Progress::Speaking);
        let mut silent = Vec::new();
        // 20,000 silent connections from 1,000 addresses over 0.4 s.
        for i in 0..20_000u32 {
            silent.push(b.enter(IpAddr::V4(Ipv4Addr::from(0x7F01_0000 + i % 1000)), true));
            if i % 50 == 0 {
                tokio::time::advance(Duration::from_millis(1)).await;
            }
        }
        assert!(evicted(&peer).is_none());
        peer.progress(Progress::Secured);
        assert_eq!(b.len(), 256);
        assert_eq!(silent.iter().filter(|t| evicted(t).is_none()).count(), 255);

        // A connection that finished its handshake and went silent keeps its
        // place only until it has had its second: then it goes before young
        // silent ones.
        drop(silent);
        tokio::time::advance(STALE_AFTER).await;
        let young: Vec<Ticket> =
            (0..255u32).map(|i| b.enter(IpAddr::V4(Ipv4Addr::from(0x7F02_0000 + i)), true)).collect();
        assert!(evicted(&peer).is_none());
        let _newcomer = b.enter(ip(2), true);
        assert_eq!(evicted(&peer), Some((ip(1), Eviction::BudgetFull)));
        assert!(young.iter().all(|t| evicted(t).is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn rekey_moves_a_balancer_connection_to_its_client_and_applies_the_share() {
        let b = Arc::new(Budget::new(256));
        let lb = ip(9);
        let mut from_client: Vec<Ticket> = (0..64)
            .map(|_| {
                let mut t = b.enter(lb, false);
                assert!(t.rekey(ip(2)));
                t
            })
            .collect();
        assert!(from_client.iter().all(|t| evicted(t).is_none()));
        tokio::time::advance(STALE_AFTER).await;
        let mut late = b.enter(lb, false);
        assert!(late.rekey(ip(2)));
        // Evicted under the client's address, where the cap applies, not the balancer's.
        assert_eq!(evicted(&from_client[0]), Some((ip(2), Eviction::SourceCap)));
        assert!(from_client[1..].iter().chain([&late]).all(|t| evicted(t).is_none()));
        assert!(!from_client[0].rekey(ip(2)), "evicted");
        assert_eq!(b.len(), 64);
    }

    /// An eviction is counted only when it is what closes the connection.
    #[tokio::test(start_paused = true)]
    async fn an_eviction_counts_only_if_it_closes_the_connection() {
        let b = Arc::new(Budget::new(32)); // per source: 8
        let mut waiting: Vec<Ticket> = (0..8).map(|_| b.enter(ip(2), true)).collect();
        tokio::time::advance(STALE_AFTER).await;

        // Still waiting for its RQ when evicted: the eviction closes it.
        let first = waiting.remove(0);
        let notice = first.notice();
        let guarded = tokio::spawn(async move {
            notice
                .guard(async move {
                    let _ticket = first;
                    std::future::pending::<()>().await
                })
                .await
        });
        tokio::task::yield_now().await;
        assert!(!guarded.is_finished());
        let _newcomer = b.enter(ip(2), true);
        assert_eq!(guarded.await.expect("join"), Some((ip(2), Eviction::SourceCap)));

        // The race: the connection ends by itself (say its ACSE deadline
        // fired, outcome `timeout`) in the very poll in which a newcomer
        // evicts it. It was evicted, but not closed by the eviction: not counted.
        let second = waiting.remove(0);
        let notice = second.notice();
        let (budget, mut newcomer) = (b.clone(), None);
        let kept = &mut newcomer;
        let counted = notice
            .guard(async move {
                *kept = Some(budget.enter(ip(2), true));
                drop(second);
            })
            .await;
        assert_eq!(notice.eviction(), Some((ip(2), Eviction::SourceCap)), "the evictor did evict it");
        assert_eq!(counted, None, "but it ended by itself: counted by its own outcome only");

        // Evicted before its task ran at all: the eviction wins (biased).
        let third = waiting.remove(0);
        let notice = third.notice();
        let _newcomer = b.enter(ip(2), true);
        assert_eq!(notice.guard(async move { drop(third) }).await, Some((ip(2), Eviction::SourceCap)));
    }
}
