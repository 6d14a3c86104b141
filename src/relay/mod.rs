//! The relay: after the A-ASSOCIATE-AC, bytes flow both ways through a PDU
//! framer until release, abort, close, idle timeout or forced shutdown.
//!
//! Each direction is a pump (read → frame → write); the two pumps run
//! concurrently in one task and each finishes on its own, so a half-close on
//! one side is propagated (shutdown of the other side's write half, which
//! sends TLS close_notify) while the other direction keeps flowing. Only an
//! abnormal end (protocol error, truncation, I/O error), the idle timeout or a
//! forced shutdown stops both; then the gateway sends its own A-ABORT to every
//! peer whose stream is at a PDU boundary, and closes.
//!
//! Nothing is copied: each pump reads plaintext where its source stream
//! received it (decrypted in place under TLS, `tls::stream::Source`), the
//! framer looks at it there, and the sink sends it from there (sealed in
//! place under TLS, one `writev` per fill, `tls::stream::Sink`). Nothing
//! is buffered beyond the source's receive buffer (4 KiB growing to
//! 256 KiB under load), and nothing read is logged: PDUs carry patient data.

pub mod dimse;
mod end;
pub mod framer;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::poll_fn;

use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::dicom::pdu::{provider_abort, AbortReason, PduType};
use crate::farewell;
use crate::tls::stream::{self, Duplex, Sink, Source};
use dimse::StatusClass;
use end::{failed_end, finished_end, PumpEnd};
pub use end::{End, IoFailure, RelayEnd, Truncation};
use framer::{FrameEvent, Framer};

/// Heap one direction of the relay may hold, whatever the PDU mix (tiny
/// PDUs, many PDVs per PDU, fragmented or oversized command sets, tiny TLS
/// records): the source's receive side ([`stream::RECEIVE_HEAP`]: its
/// buffer, the plaintext segments, a post-handshake message being
/// collected), the sink's batch ([`stream::SEND_HEAP`]), the command set
/// being collected and the per-operation counts (13 operations × 6 classes
/// at most). Nothing is kept per PDU, PDV or record; an association's relay
/// holds at most twice this (issue 11).
pub const HEAP_PER_DIRECTION: usize = stream::RECEIVE_HEAP + stream::SEND_HEAP + dimse::MAX_COMMAND + OPERATIONS_HEAP;
const OPERATIONS_HEAP: usize = 13 * 6 * std::mem::size_of::<((&str, Option<StatusClass>), u64)>();

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// No bytes in either direction for this long → A-ABORT both sides.
    pub idle: Duration,
    /// After A-RELEASE-RP or A-ABORT has passed, how long the peers may take
    /// to close; also bounds each close_notify/shutdown.
    pub closing: Duration,
    /// Largest P-DATA-TF variable field the client may send (the backend's
    /// Maximum Length, clamped).
    pub max_to_backend: u32,
    /// Largest P-DATA-TF variable field the backend may send.
    pub max_to_client: u32,
    pub mode: RelayMode,
    /// `timeouts.association`: when the association must end, whatever it
    /// is doing (A-ABORT both sides). `None`: no limit.
    pub end_by: Option<Instant>,
}

/// Defined with the configuration that chooses it (`relay_mode`).
pub use crate::config::RelayMode;

/// Per-association DIMSE counts: (operation, `None` for requests or the
/// response's status class) → count.
pub type Operations = BTreeMap<(&'static str, Option<StatusClass>), u64>;

/// Renders [`Operations`] for the audit event: `C-STORE rq=20 success=20`.
pub fn describe_operations(ops: &Operations) -> String {
    let mut by_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((op, class), n) in ops {
        let key = class.map_or("rq", StatusClass::as_str);
        by_op.entry(op).or_default().push(format!("{key}={n}"));
    }
    by_op.iter().map(|(op, parts)| format!("{op} {}", parts.join(" "))).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayReport {
    pub end: RelayEnd,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub operations: Operations,
}

/// Counters the pumps feed as they go (Prometheus handles).
pub struct Counters {
    pub to_backend: prometheus::IntCounter,
    pub to_client: prometheus::IntCounter,
    /// `dicomgate_dimse_operations_total` for the association's listener.
    pub dimse: Option<crate::metrics::DimseCounter>,
}

impl Counters {
    fn count(&self, op: &'static str, class: StatusClass) {
        if let Some(dimse) = &self.dimse {
            dimse.count(op, class.as_str());
        }
    }
}

/// Relays until the association ends; `force_abort` ends it at once with
/// A-ABORT to both peers (shutdown after the grace period).
pub async fn relay<C, B>(
    mut client: C,
    mut backend: B,
    settings: RelaySettings,
    counters: Counters,
    force_abort: CancellationToken,
) -> RelayReport
where
    C: Duplex + Send,
    B: Duplex + Send,
{
    let (mut client_rd, mut client_wr) = client.halves();
    let (mut backend_rd, mut backend_wr) = backend.halves();
    let activity = Activity::new();
    let stop = CancellationToken::new();
    let mut up = Pump::new(Side::Client, settings.max_to_backend, settings.mode);
    let mut down = Pump::new(Side::Backend, settings.max_to_client, settings.mode);

    let cause = {
        let pumps = async {
            tokio::join!(
                up.run(&mut client_rd, &mut backend_wr, &activity, &counters, &stop, settings.closing),
                down.run(&mut backend_rd, &mut client_wr, &activity, &counters, &stop, settings.closing),
            )
        };
        tokio::pin!(pumps);
        tokio::select! {
            biased;
            _ = &mut pumps => Cause::Finished,
            _ = stop.cancelled() => Cause::PumpFailed,
            _ = force_abort.cancelled() => Cause::Shutdown,
            _ = activity.expired(settings) => Cause::Idle,
            () = lifetime(settings.end_by) => Cause::Lifetime,
        }
        // The pumps are dropped here; their state is in `up` and `down`.
    };

    let end = match cause {
        Cause::Finished => finished_end(&up, &down),
        Cause::PumpFailed => failed_end(&up, &down),
        Cause::Shutdown => RelayEnd::Shutdown,
        Cause::Idle => RelayEnd::IdleTimeout,
        Cause::Lifetime => RelayEnd::LifetimeExceeded,
    };
    if cause != Cause::Finished {
        // Our own A-ABORT, unless a peer's A-ABORT or the release already went
        // through (the association is over; adding an abort would confuse).
        let already_over = activity.closing.load(Ordering::Relaxed);
        // Each peer's farewell (A-ABORT, close_notify) has one short budget,
        // and the two run together: a peer that stopped reading cannot hold
        // the other, nor the task (issue 11).
        let abort = provider_abort(AbortReason::NotSpecified);
        let send_abort = !already_over;
        let (client_abort, backend_abort) = (send_abort && down.writer_clean, send_abort && up.writer_clean);
        tokio::join!(
            farewell::to_half(&mut client_wr, client_abort.then_some(&abort[..]), settings.closing),
            farewell::to_half(&mut backend_wr, backend_abort.then_some(&abort[..]), settings.closing),
        );
    }
    let mut operations = up.operations;
    for (k, n) in down.operations {
        *operations.entry(k).or_default() += n;
    }
    RelayReport { end, bytes_to_backend: up.bytes, bytes_to_client: down.bytes, operations }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Finished,
    PumpFailed,
    Shutdown,
    Idle,
    Lifetime,
}

/// Completes at `end_by`; never without one.
async fn lifetime(end_by: Option<Instant>) {
    match end_by {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One direction's state; lives outside the pump future so that it survives
/// the future's cancellation.
struct Pump {
    from: Side,
    mode: RelayMode,
    framer: Framer,
    operations: Operations,
    bytes: u64,
    /// The stream we write to ends on a PDU boundary: our own A-ABORT may go there.
    writer_clean: bool,
    release_rp: bool,
    abort: Option<(u8, u8)>,
    end: Option<PumpEnd>,
    ended_at: Option<Instant>,
}

impl Pump {
    fn new(from: Side, max_pdu_length: u32, mode: RelayMode) -> Pump {
        Pump {
            from,
            mode,
            framer: Framer::new(max_pdu_length),
            operations: Operations::new(),
            bytes: 0,
            writer_clean: true,
            release_rp: false,
            abort: None,
            end: None,
            ended_at: None,
        }
    }

    async fn run<R: Source, W: Sink>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        activity: &Activity,
        counters: &Counters,
        stop: &CancellationToken,
        closing: Duration,
    ) {
        let end = self.pump(rd, wr, activity, counters).await;
        self.ended_at = Some(Instant::now());
        let failure = end.is_failure();
        self.end = Some(end);
        if failure {
            stop.cancel();
        } else {
            // Propagate the half-close: the other peer sees EOF (and, over
            // TLS, close_notify) after every byte before it.
            let _ = timeout(closing, tokio::io::AsyncWriteExt::shutdown(wr)).await;
        }
    }

    /// Reads, frames (in `Dicom` mode) and forwards until the source ends
    /// or fails, or a PDU is refused.
    async fn pump<R: Source, W: Sink>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        activity: &Activity,
        counters: &Counters,
    ) -> PumpEnd {
        if self.mode == RelayMode::Bytes {
            // Without framing the gateway cannot know where PDUs end.
            self.writer_clean = false;
        }
        loop {
            match poll_fn(|cx| rd.poll_fill(cx)).await {
                Ok(true) => {}
                Ok(false) => return self.eof(true),
                // A TLS peer that closes without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return self.eof(false),
                Err(e) => return PumpEnd::ReadError(Arc::new(e)),
            }
            activity.touch();
            let (buf, segments) = rd.plaintext();
            let total: usize = segments.iter().map(|s| s.len()).sum();
            let (valid, error) = match self.mode {
                RelayMode::Dicom => self.frame(buf, segments, activity, counters),
                RelayMode::Bytes => (total, None),
            };
            if valid > 0 {
                if self.mode == RelayMode::Dicom {
                    self.writer_clean = false;
                }
                if let Err(e) = poll_fn(|cx| wr.poll_send(cx, buf, segments, valid)).await {
                    return PumpEnd::WriteError(Arc::new(e));
                }
                if self.mode == RelayMode::Dicom {
                    self.writer_clean = self.framer.at_boundary();
                }
                self.bytes += valid as u64;
                self.byte_counter(counters).inc_by(valid as u64);
            }
            rd.consume(total);
            if let Some(e) = error {
                return PumpEnd::Protocol(e);
            }
        }
    }

    /// Feeds the framer every segment in order; returns the bytes valid to
    /// forward and the error that stopped it, if any. Events are handled as
    /// the framer sees them: nothing per PDU is collected, whatever the PDU
    /// mix (see `framer`).
    fn frame(
        &mut self,
        buf: &[u8],
        segments: &[std::ops::Range<usize>],
        activity: &Activity,
        counters: &Counters,
    ) -> (usize, Option<framer::FrameError>) {
        let mut seen = Seen {
            release_rp: &mut self.release_rp,
            abort: &mut self.abort,
            operations: &mut self.operations,
            activity,
            counters,
        };
        let mut valid = 0;
        for segment in segments {
            match self.framer.feed(&buf[segment.clone()], &mut seen) {
                Ok(n) => valid += n,
                Err((n, e)) => return (valid + n, Some(e)),
            }
        }
        (valid, None)
    }

    /// Heap bytes this direction holds besides its streams: the command set
    /// being collected, the per-operation counts (a few dozen keys at most).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<((&str, Option<StatusClass>), u64)>();
        self.framer.heap_bytes() + self.operations.len() * entry
    }

    fn byte_counter<'c>(&self, counters: &'c Counters) -> &'c prometheus::IntCounter {
        match self.from {
            Side::Client => &counters.to_backend,
            Side::Backend => &counters.to_client,
        }
    }

    fn eof(&self, close_notify: bool) -> PumpEnd {
        if self.framer.at_boundary() {
            PumpEnd::Eof { close_notify }
        } else {
            PumpEnd::Truncated
        }
    }
}

/// What the relay does with each framer event, as it happens.
struct Seen<'a> {
    release_rp: &'a mut bool,
    abort: &'a mut Option<(u8, u8)>,
    operations: &'a mut Operations,
    activity: &'a Activity,
    counters: &'a Counters,
}

impl framer::Sink<FrameEvent> for Seen<'_> {
    fn put(&mut self, event: FrameEvent) {
        match event {
            FrameEvent::Pdu { pdu_type: PduType::ReleaseRp, .. } => {
                *self.release_rp = true;
                self.activity.closing.store(true, Ordering::Relaxed);
            }
            FrameEvent::Abort { source, reason } => {
                *self.abort = Some((source, reason));
                self.activity.closing.store(true, Ordering::Relaxed);
            }
            FrameEvent::Command(cmd) => {
                let op = cmd.operation();
                let class = if cmd.is_response() { cmd.status_class() } else { None };
                if let Some(class) = class {
                    self.counters.count(op, class);
                }
                *self.operations.entry((op, class)).or_default() += 1;
            }
            FrameEvent::Pdu { .. } => {}
        }
    }
}

/// When anything was last read, shared by both pumps (atomics: the relay
/// future must be Send).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// A-RELEASE-RP or A-ABORT has passed: the peers should close now.
    closing: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0), closing: AtomicBool::new(false) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes when nothing was read for `idle` (or for `closing` once the
    /// association is over).
    async fn expired(&self, settings: RelaySettings) {
        loop {
            let limit = if self.closing.load(Ordering::Relaxed) { settings.closing } else { settings.idle };
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            // Wake at least every `closing` so that a release or abort seen
            // meanwhile shortens the wait.
            sleep_until(deadline.min(now + settings.closing)).await;
        }
    }
}

#[cfg(test)]
mod tests;
