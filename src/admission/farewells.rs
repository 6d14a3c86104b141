//! The farewells a listener gives at once: a refusal after the RQ was read
//! (calling or called AE refused, no association slot) is out of the
//! pre-association budget and holds no association slot, yet its farewell
//! (the A-ASSOCIATE-RJ, close_notify, a short linger: up to 3 s against a
//! peer that never closes) holds a file descriptor. Bounding their number
//! bounds those descriptors whatever the refusal rate (issue 20, finding 6).
//!
//! Past the cap a refusal still sends its RJ, but only as far as the socket
//! takes it at once, and closes (`connection::refusal`): counted in
//! `dicomgate_refusal_farewells_skipped_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The cap, from the listener's pre-association budget: a quarter of it, at
/// least `MIN_FAREWELLS` (64 at the default `max_connections` of 256). A
/// refused peer that reads its RJ and closes takes milliseconds; the cap is
/// only reached by peers that hold the connection open after a refusal.
pub fn cap_for(budget_capacity: usize) -> usize {
    (budget_capacity / 4).max(MIN_FAREWELLS)
}

const MIN_FAREWELLS: usize = 8;

/// Farewells in progress on one listener, and their cap. Shared across
/// reloads like the other limits.
#[derive(Debug, Default)]
pub struct Farewells {
    live: AtomicUsize,
    cap: AtomicUsize,
}

impl Farewells {
    pub fn new(cap: usize) -> Farewells {
        Farewells { live: AtomicUsize::new(0), cap: AtomicUsize::new(cap) }
    }

    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Farewells in progress now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A place for one farewell; `None` at the cap.
    pub fn try_begin(self: &Arc<Self>) -> Option<FarewellPermit> {
        let cap = self.cap();
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| (live < cap).then_some(live + 1))
            .ok()
            .map(|_| FarewellPermit(self.clone()))
    }
}

/// One farewell's place, given back on drop.
#[derive(Debug)]
pub struct FarewellPermit(Arc<Farewells>);

impl Drop for FarewellPermit {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_bounds_farewells_in_progress() {
        assert_eq!(cap_for(256), 64);
        assert_eq!(cap_for(32), 8);
        let f = Arc::new(Farewells::new(2));
        let a = f.try_begin().expect("1");
        let _b = f.try_begin().expect("2");
        assert!(f.try_begin().is_none());
        drop(a);
        assert_eq!(f.live(), 1);
        assert!(f.try_begin().is_some());
    }
}
