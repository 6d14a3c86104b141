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
//! Evicting is cancelling the connection's task (its socket is closed). All
//! work here is a short critical section on a std mutex: O(sources) at worst,
//! and sources are bounded by the budget itself. It never awaits.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// Why a pre-association connection was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Eviction {
    /// Its source reached the per-source cap with a newer connection.
    SourceCap,
    /// The listener's budget was full; it was the oldest of the busiest source.
    BudgetFull,
}

impl Eviction {
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::SourceCap => "source_cap",
            Eviction::BudgetFull => "budget_full",
        }
    }
}

/// A pre-association connection as the budget sees it.
struct Entry {
    id: u64,
    since: Instant,
    evict: CancellationToken,
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

    fn evict_oldest_of(&mut self, source: IpAddr) {
        let Some(queue) = self.by_source.get_mut(&source) else { return };
        if let Some(victim) = queue.pop_front() {
            self.len -= 1;
            victim.evict.cancel();
        }
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
    }

    /// Evicts the oldest entries of `source` while it holds `share` or more
    /// and the oldest has had [`STALE_AFTER`]; returns how many.
    fn trim_source(&mut self, source: IpAddr, share: usize, now: Instant) -> usize {
        let mut evicted = 0;
        while self
            .by_source
            .get(&source)
            .and_then(|q| q.front().map(|oldest| (q.len(), oldest.since)))
            .is_some_and(|(len, since)| len >= share && now.duration_since(since) >= STALE_AFTER)
        {
            self.evict_oldest_of(source);
            evicted += 1;
        }
        evicted
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
    /// Returns the ticket and each eviction it caused (the victim's source, why).
    pub fn enter(self: &Arc<Self>, source: IpAddr, capped: bool) -> (Ticket, Vec<(IpAddr, Eviction)>) {
        let mut evicted = Vec::new();
        let (capacity, per_source, now) = (self.capacity(), self.per_source(), Instant::now());
        let mut t = lock(&self.table);
        if capped {
            let n = t.trim_source(source, per_source, now);
            evicted.extend(std::iter::repeat_n((source, Eviction::SourceCap), n));
        }
        while t.len >= capacity {
            let Some(busiest) = t.busiest() else { break };
            t.evict_oldest_of(busiest);
            evicted.push((busiest, Eviction::BudgetFull));
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = CancellationToken::new();
        t.by_source.entry(source).or_default().push_back(Entry { id, since: now, evict: evict.clone() });
        t.len += 1;
        drop(t);
        (Ticket { budget: self.clone(), source, id, since: now, evict, held: true }, evicted)
    }
}

/// A connection's place in the budget; leaving it (drop or [`Ticket::leave`])
/// frees the place.
pub struct Ticket {
    budget: Arc<Budget>,
    source: IpAddr,
    id: u64,
    since: Instant,
    evict: CancellationToken,
    held: bool,
}

impl Ticket {
    /// Cancelled when this connection is evicted.
    pub fn evicted(&self) -> CancellationToken {
        self.evict.clone()
    }

    /// Behind a load balancer: the PROXY header named the real client, so the
    /// entry moves to that source (keeping its age) and the per-source cap
    /// applies to it. Returns the evictions it caused; `None`: this
    /// connection itself had already been evicted.
    pub fn rekey(&mut self, client: IpAddr) -> Option<Vec<(IpAddr, Eviction)>> {
        let (per_source, now) = (self.budget.per_source(), Instant::now());
        let mut t = lock(&self.budget.table);
        if !t.remove(self.source, self.id) {
            return None;
        }
        let n = t.trim_source(client, per_source, now);
        let evicted = vec![(client, Eviction::SourceCap); n];
        let queue = t.by_source.entry(client).or_default();
        // Keep the order by age: entries of this source may be younger.
        let at = queue.iter().position(|e| e.id > self.id).unwrap_or(queue.len());
        queue.insert(at, Entry { id: self.id, since: self.since, evict: self.evict.clone() });
        t.len += 1;
        self.source = client;
        Some(evicted)
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

/// The association slots of one listener (`max_connections`): a count and a
/// limit that a reload can change while the count goes on. (A semaphore
/// replaced on reload would forget the live associations.)
#[derive(Debug, Default)]
pub struct Slots {
    live: AtomicUsize,
    limit: AtomicUsize,
}

impl Slots {
    pub fn new(limit: usize) -> Slots {
        Slots { live: AtomicUsize::new(0), limit: AtomicUsize::new(limit) }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    /// Associations holding a slot now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        let limit = self.limit();
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| (live < limit).then_some(live + 1))
            .ok()
            .map(|_| SlotGuard(self.clone()))
    }
}

/// An association slot, given back on drop.
#[derive(Debug)]
pub struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts and logs an eviction (the victim's source, why).
pub type OnEvict = Box<dyn Fn(IpAddr, Eviction) + Send + Sync>;

/// What the listener hands a connection: its pre-association ticket, then
/// (from [`Admission::graduate`]) its association slot.
pub struct Admission {
    ticket: Option<Ticket>,
    slots: Arc<Slots>,
    slot: Option<SlotGuard>,
    on_evict: Option<OnEvict>,
}

impl Admission {
    pub fn new(ticket: Ticket, slots: Arc<Slots>, on_evict: OnEvict) -> Admission {
        Admission { ticket: Some(ticket), slots, slot: None, on_evict: Some(on_evict) }
    }

    /// Outside any budget (unit tests of the connection task).
    pub fn unbudgeted(slots: Arc<Slots>) -> Admission {
        Admission { ticket: None, slots, slot: None, on_evict: None }
    }

    /// The PROXY header named the client (see [`Ticket::rekey`]).
    pub fn client_known(&mut self, client: Option<SocketAddr>) {
        let (Some(ticket), Some(client)) = (self.ticket.as_mut(), client) else { return };
        if let (Some(evicted), Some(count)) = (ticket.rekey(client.ip()), self.on_evict.as_ref()) {
            for (source, why) in evicted {
                count(source, why);
            }
        }
    }

    /// The A-ASSOCIATE-RQ has been read: leave the pre-association budget and
    /// take an association slot. `false`: no slot free (answer RJ 2/3/2), or
    /// evicted a moment ago (the task is being cancelled).
    pub fn graduate(&mut self) -> bool {
        if let Some(mut ticket) = self.ticket.take() {
            if !ticket.leave() {
                return false;
            }
        }
        self.slot = self.slots.try_acquire();
        self.slot.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
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
        let mut tickets: Vec<Ticket> = (0..64).map(|_| b.enter(ip(2), true).0).collect();
        // A burst: the oldest had no time yet, so the 65th is let in over the share.
        let (young, evicted) = b.enter(ip(2), true);
        assert!(evicted.is_empty() && !young.evicted().is_cancelled());
        assert_eq!(b.len(), 65);
        tokio::time::advance(STALE_AFTER).await;
        // Now the source is trimmed back under its share, oldest first.
        let (newest, evicted) = b.enter(ip(2), true);
        assert_eq!(evicted, vec![(ip(2), Eviction::SourceCap); 2]);
        assert!(tickets[0].evicted().is_cancelled() && tickets[1].evicted().is_cancelled());
        assert!(tickets[2..].iter().all(|t| !t.evicted().is_cancelled()));
        assert!(!newest.evicted().is_cancelled() && !young.evicted().is_cancelled());
        assert_eq!(b.len(), 64);
        // Another source is untouched by all this.
        let (other, evicted) = b.enter(ip(1), true);
        assert!(evicted.is_empty() && !other.evicted().is_cancelled());
        assert!(!tickets[0].leave(), "an evicted ticket is no longer in the budget");
        assert!(tickets[2].leave());
        assert_eq!(b.len(), 64);
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_of_the_busiest_source() {
        let b = Arc::new(Budget::new(32)); // per source: 8
        let quiet = b.enter(ip(1), true).0;
        let mut held = Vec::new();
        for source in 2..=5 {
            for _ in 0..(if source == 3 { 8 } else { 7 }) {
                held.push((source, b.enter(ip(source), true).0));
            }
        }
        assert_eq!(b.len(), 30);
        held.push((6, b.enter(ip(6), true).0));
        let (_seventh, none) = b.enter(ip(7), true);
        assert!(none.is_empty());
        assert_eq!(b.len(), 32);
        let (_, evicted) = b.enter(ip(8), true);
        assert_eq!(evicted, vec![(ip(3), Eviction::BudgetFull)], "source 3 holds the most");
        let first_of_3 = held.iter().find(|(s, _)| *s == 3).expect("source 3");
        assert!(first_of_3.1.evicted().is_cancelled());
        assert!(!quiet.evicted().is_cancelled(), "the source with one connection is never the victim");
    }

    #[tokio::test(start_paused = true)]
    async fn rekey_moves_a_balancer_connection_to_its_client_and_applies_the_share() {
        let b = Arc::new(Budget::new(256));
        let lb = ip(9);
        let mut from_client: Vec<Ticket> = (0..64)
            .map(|_| {
                let mut t = b.enter(lb, false).0;
                assert_eq!(t.rekey(ip(2)), Some(vec![]));
                t
            })
            .collect();
        tokio::time::advance(STALE_AFTER).await;
        let mut late = b.enter(lb, false).0;
        assert_eq!(late.rekey(ip(2)), Some(vec![(ip(2), Eviction::SourceCap)]));
        assert!(from_client[0].evicted().is_cancelled());
        assert_eq!(from_client[0].rekey(ip(2)), None, "evicted");
        assert_eq!(b.len(), 64);
    }

    #[test]
    fn slots_keep_counting_across_a_new_limit() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.try_acquire().expect("1");
        let _b = slots.try_acquire().expect("2");
        assert!(slots.try_acquire().is_none());
        slots.set_limit(1);
        drop(a);
        assert!(slots.try_acquire().is_none(), "two live, one given back, limit 1: still full");
        slots.set_limit(3);
        assert!(slots.try_acquire().is_some());
        assert_eq!(slots.live(), 1);
    }

    #[test]
    fn graduation_trades_the_ticket_for_a_slot() {
        let b = Arc::new(Budget::new(256));
        let slots = Arc::new(Slots::new(1));
        let mut first = Admission::new(b.enter(ip(1), true).0, slots.clone(), Box::new(|_, _| {}));
        let mut second = Admission::new(b.enter(ip(1), true).0, slots.clone(), Box::new(|_, _| {}));
        assert_eq!(b.len(), 2);
        assert!(first.graduate());
        assert!(!second.graduate(), "no slot left: RJ 2/3/2");
        assert_eq!((b.len(), slots.live()), (0, 1));
        drop(first);
        assert_eq!(slots.live(), 0);
    }
}
