//! Delivery: a bounded in-memory queue and the one background task that
//! empties it into the receiver.
//!
//! Producers (connection tasks, the lifecycle) only push: a push never waits
//! and never fails; when the queue is full the NEWEST message is dropped and
//! counted: the first events of an outage or an attack are the ones an
//! investigator needs, and the refusal summaries keep counting what is
//! dropped. An outage of the receiver costs messages, never an association's
//! time or the gateway's memory. The task connects on demand, retries with
//! exponential backoff, and reconnects when the configuration names another
//! receiver (reload). It logs one warning per outage, not one per message;
//! `dicomgate_audit_queue_messages` and `dicomgate_audit_receiver_up` show
//! the queue and the outage on a dashboard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::transport::{Connection, Connector};
use crate::metrics::Metrics;

/// Messages held while the receiver is unreachable (a few hours of refusals
/// at a busy site; about 2 MB at most).
pub const CAPACITY: usize = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The bounded queue shared by producers and the delivery task.
pub struct Queue {
    messages: Mutex<VecDeque<Vec<u8>>>,
    capacity: usize,
    ready: Notify,
    metrics: Metrics,
    /// A message is out of the queue, being sent (so an aborted delivery
    /// task can still be counted exactly).
    in_flight: AtomicBool,
}

impl Queue {
    pub fn new(capacity: usize, metrics: Metrics) -> Queue {
        Queue {
            messages: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            metrics,
            in_flight: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        // A panic while holding this lock cannot leave the deque invalid
        // (every operation is one push or pop), so a poisoned lock is usable.
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `msg`; when full, drops it (the newest) instead.
    pub fn push(&self, msg: Vec<u8>) {
        let queued = {
            let mut q = self.lock();
            let room = q.len() < self.capacity;
            if room {
                q.push_back(msg);
            }
            self.metrics.set_audit_queue(q.len());
            room
        };
        if queued {
            self.ready.notify_one();
        } else {
            self.metrics.audit_message(false, 1);
        }
    }

    /// Puts back a message whose send failed, at the front where it was;
    /// when newer ones filled the queue meanwhile, the newest makes room.
    fn unpop(&self, msg: Vec<u8>) {
        self.in_flight.store(false, Ordering::Release);
        let dropped = {
            let mut q = self.lock();
            let dropped = q.len() >= self.capacity && q.pop_back().is_some();
            q.push_front(msg);
            self.metrics.set_audit_queue(q.len());
            dropped
        };
        if dropped {
            self.metrics.audit_message(false, 1);
        }
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let msg = {
            let mut q = self.lock();
            let msg = q.pop_front();
            self.metrics.set_audit_queue(q.len());
            msg
        };
        self.in_flight.store(msg.is_some(), Ordering::Release);
        msg
    }

    fn sent(&self) {
        self.in_flight.store(false, Ordering::Release);
        self.metrics.audit_message(true, 1);
    }

    /// Counts as dropped the message a stopped delivery task was sending.
    pub fn abandon_in_flight(&self) {
        if self.in_flight.swap(false, Ordering::AcqRel) {
            self.metrics.audit_message(false, 1);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the queue, counting every message as dropped.
    pub fn drop_all(&self) -> usize {
        let n = {
            let mut q = self.lock();
            let n = q.len();
            q.clear();
            self.metrics.set_audit_queue(0);
            n
        };
        self.metrics.audit_message(false, n as u64);
        n
    }
}

/// The delivery task. Runs until `closing` is cancelled AND the queue is
/// empty or the receiver unreachable (the caller bounds how long it waits),
/// or until every [`super::AuditSink`] handle is gone.
pub async fn deliver(
    queue: Arc<Queue>,
    mut connector: watch::Receiver<Option<Arc<Connector>>>,
    closing: CancellationToken,
) {
    let mut connection: Option<Connection> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut outage = false;
    let mut active: Option<Arc<Connector>> = None;
    loop {
        let latest = connector.borrow_and_update().clone();
        let same = match (&latest, &active) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // Reloaded: another receiver, or re-read CA and client files.
            connection = None;
            outage = false;
            backoff = FIRST_BACKOFF;
            active = latest;
            if active.is_none() {
                queue.metrics.set_audit_receiver_up(None);
            }
        }
        let Some(current) = active.clone() else {
            // No sink configured: nothing should be queued; what is, is lost.
            queue.drop_all();
            if closing.is_cancelled() {
                return;
            }
            tokio::select! {
                r = connector.changed() => if r.is_err() { return },
                _ = closing.cancelled() => {}
            }
            continue;
        };
        let Some(msg) = queue.pop() else {
            if closing.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = queue.ready.notified() => {}
                r = connector.changed() => if r.is_err() { return },
                _ = closing.cancelled() => {}
            }
            continue;
        };
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match current.connect().await {
                Ok(conn) => {
                    if outage {
                        tracing::info!(receiver = ?current, "audit receiver reachable again");
                    }
                    outage = false;
                    queue.metrics.set_audit_receiver_up(Some(true));
                    connection.insert(conn)
                }
                Err(e) => {
                    queue.metrics.set_audit_receiver_up(Some(false));
                    queue.unpop(msg);
                    if !outage {
                        tracing::warn!(
                            receiver = ?current, error = %e, queued = queue.len(),
                            "cannot reach the audit receiver; queueing audit messages (new ones are dropped beyond {CAPACITY}) and retrying"
                        );
                    }
                    outage = true;
                    if !back_off(&mut backoff, &mut connector, &closing).await {
                        return;
                    }
                    continue;
                }
            },
        };
        match conn.send(&msg).await {
            Ok(()) => {
                queue.sent();
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                // Also a receiver that accepts the handshake and then refuses
                // us (TLS 1.3 reports a refused client certificate on the
                // first write): back off as for a failed connect.
                connection = None;
                queue.metrics.set_audit_receiver_up(Some(false));
                queue.unpop(msg);
                if !outage {
                    tracing::warn!(receiver = ?current, error = %e, "audit receiver connection lost; reconnecting");
                }
                outage = true;
                if !back_off(&mut backoff, &mut connector, &closing).await {
                    return;
                }
            }
        }
    }
}

/// After a failed connect or send: waits out `backoff` (cut short by a
/// reload or by closing) and doubles it. False when the task should end
/// (closing, or every sink handle gone).
async fn back_off(
    backoff: &mut Duration,
    connector: &mut watch::Receiver<Option<Arc<Connector>>>,
    closing: &CancellationToken,
) -> bool {
    if closing.is_cancelled() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        r = connector.changed() => if r.is_err() { return false },
        _ = closing.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_keeps_the_oldest_drops_the_newest_and_counts_it() {
        let metrics = Metrics::new();
        let q = Queue::new(3, metrics.clone());
        for i in 0..5u8 {
            q.push(vec![i]);
        }
        assert_eq!(metrics.audit_messages(false), 2);
        assert_eq!(metrics.audit_queue(), 3);
        assert_eq!(q.pop(), Some(vec![0]), "0, 1, 2 kept; 3 and 4 dropped");
        q.unpop(vec![0]);
        q.push(vec![5]);
        assert_eq!(metrics.audit_messages(false), 3, "still full: 5 dropped");
        // A failed send of the oldest while newer ones filled the queue: the
        // oldest goes back first, the newest makes room.
        let oldest = q.pop().expect("non-empty");
        q.push(vec![6]);
        q.unpop(oldest);
        assert_eq!(metrics.audit_messages(false), 4);
        assert_eq!(q.pop(), Some(vec![0]));
        assert_eq!(q.pop(), Some(vec![1]));
        assert_eq!(q.pop(), Some(vec![2]));
        assert_eq!((q.pop(), metrics.audit_queue()), (None, 0));
        q.push(vec![7]);
        assert_eq!(q.drop_all(), 1);
        assert_eq!(metrics.audit_messages(false), 5);
        assert!(q.is_empty());
    }
}
