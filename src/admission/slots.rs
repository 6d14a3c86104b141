//! The association slots of one listener (`max_connections`), taken when a
//! connection graduates from the pre-association budget ([`super::budget`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
