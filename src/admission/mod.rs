//! Admission of one listener's connections (docs/admission.md): the
//! pre-association budget that connections live in until their
//! A-ASSOCIATE-RQ is read ([`Budget`], its table and eviction rule in
//! `budget::table`), the association slots (`max_connections`) that only a forwarded
//! association takes ([`Slots`]), the cap on farewells of refusals outside
//! both ([`farewells`]), the AE-title guessing protection ([`blocklist`]),
//! how an eviction reaches the evicted connection ([`Notice`]), and
//! [`Admission`], the per-connection handle that walks a connection through
//! them. Per-source rules count by [`Source`] (an IPv4 address, an IPv6 /64).
//!
//! The accept loop (`crate::listener`) enters each connection into the
//! budget; the connection (`crate::connection`) moves it on. Both depend on
//! this module, and it on neither.

pub mod blocklist;
mod budget;
mod eviction;
pub mod farewells;
mod slots;
mod source;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;

pub use blocklist::{Blocked, Blocklist, Verdict};
pub use budget::{Budget, Ticket, MIN_BUDGET, STALE_AFTER};
pub use eviction::{Eviction, Notice};
pub use farewells::{FarewellPermit, Farewells};
pub use slots::{SlotGuard, Slots};
pub use source::Source;
pub use table::Progress;

/// One listener's admission state, kept across reloads (a reload only
/// changes the numbers) so live connections keep counting.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Established associations (`max_connections`).
    pub slots: Arc<Slots>,
    /// Connections before their A-ASSOCIATE-RQ.
    pub budget: Arc<Budget>,
    /// Farewells of refusals that hold neither.
    pub farewells: Arc<Farewells>,
    /// Sources refused at accept for guessing (`guessing`).
    pub blocklist: Arc<Blocklist>,
}

impl Limits {
    pub fn new(max_connections: usize) -> Limits {
        let budget = Arc::new(Budget::new(max_connections));
        let farewells = Arc::new(Farewells::new(farewells::cap_for(budget.capacity())));
        Limits {
            slots: Arc::new(Slots::new(max_connections)),
            budget,
            farewells,
            blocklist: Arc::new(Blocklist::new()),
        }
    }

    /// A reload's new `max_connections`; live connections stay counted.
    pub fn resize(&self, max_connections: usize) {
        self.slots.set_limit(max_connections);
        self.budget.resize(max_connections);
        self.farewells.set_cap(farewells::cap_for(self.budget.capacity()));
    }
}

/// What the listener hands a connection: its pre-association ticket, then
/// (from [`Admission::take_slot`]) its association slot, and the listener's
/// farewell cap and blocklist.
pub struct Admission {
    ticket: Option<Ticket>,
    /// The client (the PROXY header's, behind a balancer).
    client: Option<std::net::IpAddr>,
    budget: Arc<Budget>,
    slots: Arc<Slots>,
    slot: Option<SlotGuard>,
    farewells: Arc<Farewells>,
    pub blocklist: Arc<Blocklist>,
}

impl Admission {
    pub fn new(ticket: Ticket, client: std::net::IpAddr, limits: &Limits) -> Admission {
        Admission {
            ticket: Some(ticket),
            client: Some(client),
            budget: limits.budget.clone(),
            slots: limits.slots.clone(),
            slot: None,
            farewells: limits.farewells.clone(),
            blocklist: limits.blocklist.clone(),
        }
    }

    /// Outside any budget (unit tests of the connection task).
    pub fn unbudgeted(limits: &Limits) -> Admission {
        Admission {
            ticket: None,
            client: None,
            budget: limits.budget.clone(),
            slots: limits.slots.clone(),
            slot: None,
            farewells: limits.farewells.clone(),
            blocklist: limits.blocklist.clone(),
        }
    }

    /// The PROXY header named the client (see [`Ticket::rekey`]). Evicted
    /// already: nothing to do, the connection's guard closes it.
    pub fn client_known(&mut self, client: Option<SocketAddr>) {
        let Some(client) = client else { return };
        self.client = Some(client.ip());
        if let Some(ticket) = self.ticket.as_mut() {
            let _ = ticket.rekey(client.ip());
        }
    }

    /// The connection got further: it is evicted later than silent ones.
    pub fn progress(&self, progress: Progress) {
        if let Some(ticket) = &self.ticket {
            ticket.progress(progress);
        }
    }

    /// The A-ASSOCIATE-RQ has been read: leave the pre-association budget.
    /// `Err`: evicted in the instant before (the connection ends now,
    /// counted by its own outcome; the listener's guard, which counts an
    /// eviction only when it is what drops the connection, finds it finished).
    pub fn leave_budget(&mut self) -> Result<(), Eviction> {
        let Some(mut ticket) = self.ticket.take() else { return Ok(()) };
        if ticket.leave() {
            return Ok(());
        }
        // Out of the budget and not by leaving: evicted, and the evictor
        // wrote why before taking the entry out.
        Err(ticket.notice().eviction().map_or(Eviction::BudgetFull, |(_, why)| why))
    }

    /// Policy said forward: take an association slot. `false`: none free
    /// (answer A-ASSOCIATE-RJ 2/3/2). With a slot the association goes to
    /// an SCP, and its source is known to the budget from now on.
    pub fn take_slot(&mut self) -> bool {
        self.slot = self.slots.try_acquire();
        if let (Some(_), Some(client)) = (&self.slot, self.client) {
            self.budget.forwarded(client);
        }
        self.slot.is_some()
    }

    /// A place for a whole farewell after a refusal that holds neither a
    /// place in the budget nor a slot; `None` at the listener's cap.
    pub fn farewell(&self) -> Option<FarewellPermit> {
        self.farewells.try_begin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_leaves_the_budget_then_takes_a_slot_only_if_forwarded() {
        let limits = Limits::new(1); // budget 32, per source 8; one slot
        let b = limits.budget.clone();
        let mut first = Admission::new(b.enter(ip(1), true), ip(1), &limits);
        let mut refused = Admission::new(b.enter(ip(1), true), ip(1), &limits);
        let mut second = Admission::new(b.enter(ip(1), true), ip(1), &limits);
        assert_eq!(b.len(), 3);
        assert_eq!(first.leave_budget(), Ok(()));
        assert!(first.take_slot());
        // A refused RQ leaves the budget and takes no slot.
        assert_eq!(refused.leave_budget(), Ok(()));
        assert_eq!(limits.slots.live(), 1);
        assert_eq!(second.leave_budget(), Ok(()));
        assert!(!second.take_slot(), "no slot left: RJ 2/3/2");
        assert_eq!((b.len(), limits.slots.live()), (0, 1));
        drop(first);
        assert_eq!(limits.slots.live(), 0);

        // Evicted just before its RQ was complete: no slot, no RJ.
        let mut stale: Vec<Admission> = (0..8).map(|_| Admission::new(b.enter(ip(2), true), ip(2), &limits)).collect();
        tokio::time::advance(STALE_AFTER).await;
        let _newcomer = b.enter(ip(2), true);
        assert_eq!(stale[0].leave_budget(), Err(Eviction::SourceCap));
        assert_eq!(stale[1].leave_budget(), Ok(()));
        assert!(stale[1].take_slot());
    }

    #[test]
    fn farewells_are_capped_per_listener() {
        let limits = Limits::new(256);
        let a = Admission::unbudgeted(&limits);
        let permits: Vec<_> = (0..64).map(|_| a.farewell().expect("under the cap")).collect();
        assert!(a.farewell().is_none(), "a quarter of the budget");
        drop(permits);
        assert!(a.farewell().is_some());
    }
}
