//! Free ports for child processes (DCMTK SCPs, HAProxy, the daemon binary)
//! that must be told a port before they bind it.
//!
//! Ports come from below the kernel's ephemeral range (32768–60999 here), so
//! they never collide with the source port of an outgoing connection, nor
//! with one of those lingering in TIME_WAIT after the abuse suite's
//! thousands of connections: DCMTK binds without SO_REUSEADDR and would fail
//! on such a port. Each test process walks its own stretch of the range
//! (seeded by its PID), and every candidate is checked by binding it.

use std::sync::atomic::{AtomicU16, Ordering};

const FIRST: u16 = 20_000;
const SPAN: u16 = 12_000;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A port on 127.0.0.1 that was free a moment ago and is not handed out
/// twice by this process.
pub fn free_port() -> u16 {
    let seed = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + (seed + step) % SPAN;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            drop(listener);
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}
