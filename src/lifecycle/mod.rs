//! The daemon's lifecycle as a small state machine (docs/architecture.md, "Lifecycle"):
//!
//! ```text
//! Starting ──▶ Ready ◀──▶ Reloading
//!                │            │
//!                └────▶ Draining ──▶ Stopped
//! ```
//!
//! Transitions only go forward into Draining/Stopped: once draining, nothing
//! can make the daemon Ready again (and systemd is never told READY=1 after
//! STOPPING=1). `/readyz` reads this state.
//!
//! [`sockets`], [`upgrade`] and [`handshake`]: listening sockets passed by
//! systemd or by the previous process, the SIGUSR2 hand-over to a new
//! process, and what the two say to each other meanwhile.

pub mod handshake;
pub mod sockets;
pub mod upgrade;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Ready,
    Reloading,
    Draining,
    Stopped,
}

impl State {
    /// Whether a load balancer should send new connections (`/readyz` 200).
    pub fn is_ready(self) -> bool {
        matches!(self, State::Ready | State::Reloading)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Reloading => "reloading",
            State::Draining => "draining",
            State::Stopped => "stopped",
        }
    }

    fn allows(self, next: State) -> bool {
        use State::*;
        matches!(
            (self, next),
            (Starting, Ready)
                | (Ready, Reloading)
                | (Reloading, Ready)
                | (Starting | Ready | Reloading, Draining)
                | (_, Stopped)
        )
    }
}

/// Owner side of the lifecycle state.
#[derive(Debug)]
pub struct Lifecycle {
    tx: watch::Sender<State>,
    /// Set once a new process has taken over (SIGUSR2): from then on it is
    /// the service's main process and our STOPPING=1 must not reach systemd.
    handed_over: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle { tx: watch::Sender::new(State::Starting), handed_over: AtomicBool::new(false) }
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }

    pub fn state(&self) -> State {
        *self.tx.borrow()
    }

    /// Moves to `next` if the state machine allows it; returns whether it did.
    pub fn set(&self, next: State) -> bool {
        let mut changed = false;
        self.tx.send_if_modified(|current| {
            if *current != next && current.allows(next) {
                *current = next;
                changed = true;
            }
            changed
        });
        if changed && !self.handed_over.load(Ordering::SeqCst) {
            notify_systemd(next);
        }
        changed
    }

    /// A new process is ready and is the main process now: drain without
    /// telling systemd anything more.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
        self.set(State::Draining);
    }
}

/// Tells systemd (Type=notify) about the transition; a no-op without
/// `NOTIFY_SOCKET`. RELOADING=1 carries MONOTONIC_USEC as systemd ≥ 253
/// requires for Type=notify-reload.
fn notify_systemd(state: State) {
    use sd_notify::NotifyState as N;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = format!("STATUS={}", state.as_str());
    let result = match state {
        State::Starting => return,
        State::Ready => sd_notify::notify(&[N::Ready, N::Custom(&status)]),
        State::Reloading => match N::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(&[N::Reloading, now, N::Custom(&status)]),
            Err(_) => sd_notify::notify(&[N::Reloading, N::Custom(&status)]),
        },
        State::Draining | State::Stopped => sd_notify::notify(&[N::Stopping, N::Custom(&status)]),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_ready_after_draining() {
        let l = Lifecycle::new();
        assert!(l.set(State::Ready));
        assert!(l.set(State::Reloading));
        assert!(l.set(State::Ready));
        assert!(l.set(State::Draining));
        assert!(!l.set(State::Ready));
        assert!(!l.set(State::Reloading));
        assert_eq!(l.state(), State::Draining);
        assert!(l.set(State::Stopped));
        assert!(!l.set(State::Draining));
    }

    #[test]
    fn readiness() {
        assert!(State::Ready.is_ready());
        assert!(State::Reloading.is_ready());
        assert!(!State::Starting.is_ready());
        assert!(!State::Draining.is_ready());
    }
}
