//! AE-title guessing protection (`listeners.NAME.guessing`, docs/admission.md):
//! a [`Source`] whose associations are refused `after` times in a row (calling
//! or called AE title refused, TLS handshake failed) with no forwarded
//! association in between is refused at accept, before TLS, for a cool-down
//! that starts at `block` and doubles with each repeat up to `max_block`.
//! A forwarded association forgets the source; SIGHUP forgets everyone.
//!
//! Per listener, kept across reloads like the other limits (a reload only
//! changes the settings). Bounded: at most [`MAX_SOURCES`] sources are
//! remembered; a new one displaces the unblocked source refused longest ago,
//! or is not remembered when every one is blocked. Short critical sections
//! on a std mutex; never awaits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::source::Source;
use crate::config::GuessingConfig;

/// Sources remembered per listener.
pub const MAX_SOURCES: usize = 4096;
/// A source not refused for this long (and not blocked) is forgotten: its
/// next block starts at `block` again.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
struct Record {
    /// The address last refused (for the status page; the source may be a /64).
    ip: IpAddr,
    /// Refusals since the last block started (or since the record began).
    consecutive: u32,
    last_refused: Instant,
    /// Blocks so far: the next one lasts `block × 2^blocks`.
    blocks: u32,
    /// The current (or last) block: its end and its length.
    until: Option<Instant>,
    block: Duration,
}

impl Record {
    fn blocked_at(&self, now: Instant) -> Option<Duration> {
        self.until.filter(|until| *until > now).map(|until| until - now)
    }

    fn forgettable(&self, now: Instant) -> bool {
        self.blocked_at(now).is_none() && now.duration_since(self.last_refused) >= FORGET_AFTER
    }
}

/// A source blocked now, as the status page and `/status` list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub source: Source,
    /// The address whose refusal started the block.
    pub ip: IpAddr,
    pub left: Duration,
    /// The block's length, and how many blocks this source has had in a row.
    pub block: Duration,
    pub blocks: u32,
}

/// What a refusal did to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; `after` not reached.
    Counted,
    /// This refusal started a block of this length (the `blocks`-th in a row).
    Blocked { block: Duration, blocks: u32 },
    /// Not remembered (protection off, or every remembered source is blocked).
    Ignored,
}

/// One listener's guessing protection.
#[derive(Debug, Default)]
pub struct Blocklist {
    table: Mutex<HashMap<Source, Record>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the map consistent (single inserts/removes).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Blocklist {
    pub fn new() -> Blocklist {
        Blocklist::default()
    }

    /// How long `ip`'s source stays blocked; `None`: not blocked.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let t = lock(&self.table);
        if t.is_empty() {
            return None;
        }
        t.get(&Source::of(ip)).and_then(|r| r.blocked_at(now))
    }

    /// An association of `ip` was refused (or its TLS handshake failed).
    pub fn refused(&self, ip: IpAddr, policy: &GuessingConfig, now: Instant) -> Verdict {
        if !policy.enabled {
            return Verdict::Ignored;
        }
        let source = Source::of(ip);
        let mut t = lock(&self.table);
        if !t.contains_key(&source) && !make_room(&mut t, now) {
            return Verdict::Ignored;
        }
        let fresh = Record { ip, consecutive: 0, last_refused: now, blocks: 0, until: None, block: Duration::ZERO };
        let r = t.entry(source).or_insert_with(|| fresh.clone());
        if r.forgettable(now) {
            *r = fresh;
        }
        // A connection that began before the block: the block stands as it is.
        if r.blocked_at(now).is_some() {
            return Verdict::Ignored;
        }
        r.ip = ip;
        r.last_refused = now;
        r.consecutive += 1;
        if r.consecutive < policy.after {
            return Verdict::Counted;
        }
        let block = policy.block.saturating_mul(1 << r.blocks.min(20)).min(policy.max_block);
        r.blocks += 1;
        r.consecutive = 0;
        r.until = Some(now + block);
        r.block = block;
        Verdict::Blocked { block, blocks: r.blocks }
    }

    /// An association of `ip` was forwarded: its source starts afresh.
    pub fn forwarded(&self, ip: IpAddr) {
        let mut t = lock(&self.table);
        if !t.is_empty() {
            t.remove(&Source::of(ip));
        }
    }

    /// Forgets every source (SIGHUP). Returns how many were blocked.
    pub fn clear(&self, now: Instant) -> usize {
        let mut t = lock(&self.table);
        let blocked = t.values().filter(|r| r.blocked_at(now).is_some()).count();
        t.clear();
        blocked
    }

    /// The sources blocked now, longest left first.
    pub fn list(&self, now: Instant) -> Vec<Blocked> {
        let t = lock(&self.table);
        let mut out: Vec<Blocked> = t
            .iter()
            .filter_map(|(source, r)| {
                let left = r.blocked_at(now)?;
                Some(Blocked { source: *source, ip: r.ip, left, block: r.block, blocks: r.blocks })
            })
            .collect();
        out.sort_by(|a, b| b.left.cmp(&a.left).then(a.source.cmp(&b.source)));
        out
    }

    /// Sources blocked now (`dicomgate_sources_blocked`).
    pub fn count(&self, now: Instant) -> usize {
        lock(&self.table).values().filter(|r| r.blocked_at(now).is_some()).count()
    }
}

/// Frees a place for a new source: forgets the quiet, then the unblocked
/// source refused longest ago. `false`: every remembered source is blocked.
fn make_room(t: &mut HashMap<Source, Record>, now: Instant) -> bool {
    if t.len() < MAX_SOURCES {
        return true;
    }
    t.retain(|_, r| !r.forgettable(now));
    if t.len() < MAX_SOURCES {
        return true;
    }
    let oldest = t.iter().filter(|(_, r)| r.blocked_at(now).is_none()).min_by_key(|(_, r)| r.last_refused);
    match oldest.map(|(s, _)| *s) {
        Some(source) => t.remove(&source).is_some(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> GuessingConfig {
        GuessingConfig { enabled: true, after: 3, block: Duration::from_secs(60), max_block: Duration::from_secs(200) }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_refusals_block_with_doubling_up_to_the_maximum() {
        let (b, p, guesser) = (Blocklist::new(), policy(), ip("127.0.0.2"));
        let mut lengths = Vec::new();
        for _ in 0..4 {
            assert_eq!(b.refused(guesser, &p, Instant::now()), Verdict::Counted);
            assert_eq!(b.refused(guesser, &p, Instant::now()), Verdict::Counted);
            let Verdict::Blocked { block, .. } = b.refused(guesser, &p, Instant::now()) else { panic!("no block") };
            lengths.push(block.as_secs());
            assert_eq!(b.blocked(guesser, Instant::now()), Some(block));
            assert_eq!(b.count(Instant::now()), 1);
            tokio::time::advance(block).await;
            assert_eq!(b.blocked(guesser, Instant::now()), None, "the cool-down is over");
        }
        assert_eq!(lengths, [60, 120, 200, 200]);
        // Another address of the same IPv6 /64 is the same source.
        let (v6a, v6b) = (ip("2001:db8::1"), ip("2001:db8::2"));
        b.refused(v6a, &p, Instant::now());
        b.refused(v6b, &p, Instant::now());
        assert!(matches!(b.refused(v6a, &p, Instant::now()), Verdict::Blocked { .. }));
        assert!(b.blocked(ip("2001:db8::ffff"), Instant::now()).is_some());
        assert_eq!(b.list(Instant::now()).len(), 1);
        assert_eq!(b.clear(Instant::now()), 1, "SIGHUP");
        assert_eq!(b.blocked(v6a, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_succeeds_between_mistakes_is_never_blocked() {
        let (b, p, cloud) = (Blocklist::new(), policy(), ip("127.0.0.1"));
        for _ in 0..1000 {
            assert_eq!(b.refused(cloud, &p, Instant::now()), Verdict::Counted);
            assert_eq!(b.refused(cloud, &p, Instant::now()), Verdict::Counted);
            b.forwarded(cloud);
        }
        assert_eq!(b.blocked(cloud, Instant::now()), None);
        let off = GuessingConfig { enabled: false, ..p };
        for _ in 0..10 {
            assert_eq!(b.refused(cloud, &off, Instant::now()), Verdict::Ignored);
        }
        assert_eq!(b.blocked(cloud, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_sources_are_bounded() {
        let (b, p) = (Blocklist::new(), GuessingConfig { after: 1, ..policy() });
        for i in 0..MAX_SOURCES as u32 {
            let v4 = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            assert!(matches!(b.refused(v4, &p, Instant::now()), Verdict::Blocked { .. }));
        }
        assert_eq!(b.refused(ip("192.0.2.1"), &p, Instant::now()), Verdict::Ignored, "all blocked: not remembered");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(b.refused(ip("192.0.2.1"), &p, Instant::now()), Verdict::Blocked { .. }));
        assert_eq!(lock(&b.table).len(), MAX_SOURCES);
    }
}
