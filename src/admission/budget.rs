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
//! - a source address holds [`Budget::per_source`] of them (a quarter) as
//!   of right: a new connection from a source at that share evicts the
//!   source's oldest ones that have had [`STALE_AFTER`] to send their RQ.
//!   Younger ones are kept (a burst of a real peer's associations from one
//!   address is not cut short while the budget has room);
//! - when the whole budget is full, a new connection evicts the oldest one of
//!   the source holding the most. A source with few connections in progress
//!   (a legitimate peer) is thus never evicted by a busier one;
//! - a connection leaves the budget when its A-ASSOCIATE-RQ has been read
//!   ("graduates") and only then takes one of `max_connections` association
//!   slots; none free: A-ASSOCIATE-RJ 2/3/2 (local limit exceeded).
//!
//! Evicting is taking the entry out and telling the connection's task why
//! (its [`Notice`], see [`super::eviction`]): the task closes the connection
//! and counts the eviction, unless the connection ended on its own at the same
//! moment (its ACSE deadline): then it is counted once, by its own outcome. All work
//! here is a short critical section on a std mutex: O(sources) at worst, and
//! sources are bounded by the budget itself. It never awaits.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::eviction::{Eviction, Notice};

/// The smallest pre-association budget, whatever `max_connections` says: a
/// listener with a handful of association slots still answers a burst of
/// newcomers (with RJ 2/3/2 if need be) instead of evicting at once.
pub const MIN_BUDGET: usize = 32;
/// The per-source cap is the budget divided by this (at least [`MIN_PER_SOURCE`]).
const PER_SOURCE_SHARE: usize = 4;
const MIN_PER_SOURCE: usize = 8;
/// How long a connection of a source over its share may go without a
/// complete RQ before a newer one of the same source evicts it: a TLS
/// handshake and an RQ take a few round trips, well under a second even
/// across a continent.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// A pre-association connection as the budget sees it.
struct Entry {
    id: u64,
    since: Instant,
    notice: Arc<Notice>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    len: usize,
    /// Oldest first (ids grow monotonically).
    by_source: HashMap<IpAddr, VecDeque<Entry>>,
}

impl Table {
    fn remove(&mut self, source: IpAddr, id: u64) -> bool {
        let Some(queue) = self.by_source.get_mut(&source) else { return false };
        let Some(at) = queue.iter().position(|e| e.id == id) else { return false };
        queue.remove(at);
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
        self.len -= 1;
        true
    }

    fn evict_oldest_of(&mut self, source: IpAddr, why: Eviction) {
        let Some(queue) = self.by_source.get_mut(&source) else { return };
        if let Some(victim) = queue.pop_front() {
            self.len -= 1;
            victim.notice.evict(source, why);
        }
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
    }

    /// Evicts the oldest entries of `source` while it holds `share` or more
    /// and the oldest has had [`STALE_AFTER`].
    fn trim_source(&mut self, source: IpAddr, share: usize, now: Instant) {
        while self
            .by_source
            .get(&source)
            .and_then(|q| q.front().map(|oldest| (q.len(), oldest.since)))
            .is_some_and(|(len, since)| len >= share && now.duration_since(since) >= STALE_AFTER)
        {
            self.evict_oldest_of(source, Eviction::SourceCap);
        }
    }

    /// The source holding the most entries; on a tie, the one whose oldest is oldest.
    fn busiest(&self) -> Option<IpAddr> {
        self.by_source
            .iter()
            .filter_map(|(ip, q)| q.front().map(|oldest| (*ip, q.len(), oldest.id)))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
            .map(|(ip, _, _)| ip)
    }
}

/// Locks, recovering from poisoning: the table stays consistent across every
/// statement that can panic (none on this path allocate outside `push_back`).
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

    /// Pre-association connections now.
    pub fn len(&self) -> usize {
        lock(&self.table).len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters a new connection, evicting as the rule says. `capped`: whether
    /// the per-source cap applies to `source` (not to a trusted load balancer,
    /// whose connections carry many clients; see [`Ticket::rekey`]).
    /// The victims learn of it from their [`Notice`].
    pub fn enter(self: &Arc<Self>, source: IpAddr, capped: bool) -> Ticket {
        let (capacity, per_source, now) = (self.capacity(), self.per_source(), Instant::now());
        let mut t = lock(&self.table);
        if capped {
            t.trim_source(source, per_source, now);
        }
        while t.len >= capacity {
            let Some(busiest) = t.busiest() else { break };
            t.evict_oldest_of(busiest, Eviction::BudgetFull);
        }
        let id = t.next_id;
        t.next_id += 1;
        let notice = Arc::new(Notice::default());
        t.by_source.entry(source).or_default().push_back(Entry { id, since: now, notice: notice.clone() });
        t.len += 1;
        drop(t);
        Ticket { budget: self.clone(), source, id, since: now, notice, held: true }
    }
}

/// A connection's place in the budget; leaving it (drop or [`Ticket::leave`])
/// frees the place.
pub struct Ticket {
    budget: Arc<Budget>,
    source: IpAddr,
    id: u64,
    since: Instant,
    notice: Arc<Notice>,
    held: bool,
}

impl Ticket {
    /// How this connection learns that it was evicted.
    pub fn notice(&self) -> Arc<Notice> {
        self.notice.clone()
    }

    /// Behind a load balancer: the PROXY header named the real client, so the
    /// entry moves to that source (keeping its age) and the per-source cap
    /// applies to it (the victims learn of it from their [`Notice`]).
    /// `false`: this connection itself had already been evicted.
    pub fn rekey(&mut self, client: IpAddr) -> bool {
        let (per_source, now) = (self.budget.per_source(), Instant::now());
        let mut t = lock(&self.budget.table);
        if !t.remove(self.source, self.id) {
            return false;
        }
        t.trim_source(client, per_source, now);
        let queue = t.by_source.entry(client).or_default();
        // Keep the order by age: entries of this source may be younger.
        let at = queue.iter().position(|e| e.id > self.id).unwrap_or(queue.len());
        queue.insert(at, Entry { id: self.id, since: self.since, notice: self.notice.clone() });
        t.len += 1;
        self.source = client;
        true
    }

    /// Leaves the budget (the RQ was read). `false`: it had been evicted.
    pub fn leave(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        lock(&self.budget.table).remove(self.source, self.id)
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
