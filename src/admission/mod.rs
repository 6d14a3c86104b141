//! Admission of one listener's connections (docs/admission.md): the
//! pre-association budget that connections live in until their
//! A-ASSOCIATE-RQ is read ([`Budget`]), the association slots
//! (`max_connections`) they then take ([`Slots`]), how an eviction from the
//! budget reaches the evicted connection ([`Notice`]), and [`Admission`],
//! the per-connection handle that trades the one for the other.
//!
//! The accept loop (`crate::listener`) enters each connection into the
//! budget; the connection (`crate::connection`) graduates it. Both depend on
//! this module, and it on neither.

mod budget;
mod eviction;
mod slots;

use std::net::SocketAddr;
use std::sync::Arc;

pub use budget::{Budget, Ticket, MIN_BUDGET, STALE_AFTER};
pub use eviction::{Eviction, Notice};
pub use slots::{SlotGuard, Slots};

/// One listener's admission state, kept across reloads (a reload only
/// changes the numbers) so live connections keep counting.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Established associations (`max_connections`).
    pub slots: Arc<Slots>,
    /// Connections before their A-ASSOCIATE-RQ.
    pub budget: Arc<Budget>,
}

impl Limits {
    pub fn new(max_connections: usize) -> Limits {
        Limits { slots: Arc::new(Slots::new(max_connections)), budget: Arc::new(Budget::new(max_connections)) }
    }

    /// A reload's new `max_connections`; live connections stay counted.
    pub fn resize(&self, max_connections: usize) {
        self.slots.set_limit(max_connections);
        self.budget.resize(max_connections);
    }
}

/// What [`Admission::graduate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graduation {
    /// Out of the budget, holding an association slot.
    Admitted,
    /// No association slot free: answer A-ASSOCIATE-RJ 2/3/2.
    NoSlot,
    /// Evicted from the budget in the instant before the RQ was complete: the
    /// connection ends now, counted as evicted by its own outcome (the
    /// listener's guard, which counts an eviction only when it is what drops
    /// the connection, then finds it finished).
    Evicted(Eviction),
}

/// What the listener hands a connection: its pre-association ticket, then
/// (from [`Admission::graduate`]) its association slot.
pub struct Admission {
    ticket: Option<Ticket>,
    slots: Arc<Slots>,
    slot: Option<SlotGuard>,
}

impl Admission {
    pub fn new(ticket: Ticket, slots: Arc<Slots>) -> Admission {
        Admission { ticket: Some(ticket), slots, slot: None }
    }

    /// Outside any budget (unit tests of the connection task).
    pub fn unbudgeted(slots: Arc<Slots>) -> Admission {
        Admission { ticket: None, slots, slot: None }
    }

    /// The PROXY header named the client (see [`Ticket::rekey`]). Evicted
    /// already: nothing to do, the connection's guard closes it.
    pub fn client_known(&mut self, client: Option<SocketAddr>) {
        let (Some(ticket), Some(client)) = (self.ticket.as_mut(), client) else { return };
        let _ = ticket.rekey(client.ip());
    }

    /// The A-ASSOCIATE-RQ has been read: leave the pre-association budget and
    /// take an association slot.
    pub fn graduate(&mut self) -> Graduation {
        if let Some(mut ticket) = self.ticket.take() {
            if !ticket.leave() {
                // Out of the budget and not by leaving: evicted, and the
                // evictor wrote why before taking the entry out.
                let why = ticket.notice().eviction().map_or(Eviction::BudgetFull, |(_, why)| why);
                return Graduation::Evicted(why);
            }
        }
        self.slot = self.slots.try_acquire();
        if self.slot.is_some() {
            Graduation::Admitted
        } else {
            Graduation::NoSlot
        }
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
    async fn graduation_trades_the_ticket_for_a_slot() {
        let b = Arc::new(Budget::new(32)); // per source: 8
        let slots = Arc::new(Slots::new(1));
        let mut first = Admission::new(b.enter(ip(1), true), slots.clone());
        let mut second = Admission::new(b.enter(ip(1), true), slots.clone());
        assert_eq!(b.len(), 2);
        assert_eq!(first.graduate(), Graduation::Admitted);
        assert_eq!(second.graduate(), Graduation::NoSlot, "no slot left: RJ 2/3/2");
        assert_eq!((b.len(), slots.live()), (0, 1));
        drop(first);
        assert_eq!(slots.live(), 0);

        // Evicted just before its RQ was complete: no slot, no RJ.
        let mut stale: Vec<Admission> = (0..8).map(|_| Admission::new(b.enter(ip(2), true), slots.clone())).collect();
        tokio::time::advance(STALE_AFTER).await;
        let _newcomer = b.enter(ip(2), true);
        assert_eq!(stale[0].graduate(), Graduation::Evicted(Eviction::SourceCap));
        assert_eq!(slots.live(), 0);
        assert_eq!(stale[1].graduate(), Graduation::Admitted);
    }
}
