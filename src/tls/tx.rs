//! The sending side of a TLS stream, and the state both halves share.
//!
//! Relayed data is sealed where it lies — in the other stream's receive
//! buffer — and written with one `writev` of header, payload and trailer per
//! record ([`Batch`]). Our own small messages (alerts, KeyUpdate, PDUs
//! before the relay, close_notify) are sealed into [`Shared::pending`].
//!
//! Wire order is seal order: records sealed while a batch is partly
//! written wait in `pending` until the batch is out; a batch takes what is
//! pending as its prefix. The read half may write `pending` itself (a fatal
//! alert, our KeyUpdate answer) only when no batch is in flight, and only
//! as far as the transport takes it without waiting.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets};

use super::record::{ContentType, Sealed, Sealer, Version, MAX_FRAGMENT};
use super::transport::{poll_write, Transport};

/// `pending` beyond this makes a copying write wait for the transport.
const PENDING_LIMIT: usize = 64 * 1024;
/// iovecs per `writev` (Linux takes 1024; a batch needs 1 + 3 per record).
const MAX_IOV: usize = 256;
/// KeyUpdate (RFC 8446 §4.6.3): type 24, length 1, request_update.
const KEY_UPDATE: u8 = 24;

/// What rustls keeps after the handshake: the key schedule (TLS 1.3
/// KeyUpdate) and, as a client, the session ticket store.
pub(crate) enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
    /// TLS 1.2 has neither: nothing is kept.
    None,
}

impl Kernel {
    pub(crate) fn is_client(&self) -> bool {
        matches!(self, Kernel::Client(_))
    }

    pub(crate) fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::None => Err(rustls::Error::General("no KeyUpdate in TLS 1.2".into())),
        }
    }

    pub(crate) fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::None => Err(rustls::Error::General("no KeyUpdate in TLS 1.2".into())),
        }
    }

    /// A TLS 1.3 NewSessionTicket body, for the client's resumption store.
    pub(crate) fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), rustls::Error> {
        match self {
            Kernel::Client(k) => k.handle_new_session_ticket(body),
            _ => Err(rustls::Error::General("session ticket on the server side".into())),
        }
    }
}

/// What both halves of a TLS stream use.
pub(crate) struct Shared {
    pub(crate) sealer: Sealer,
    pub(crate) kernel: Kernel,
    /// Sealed records not yet written, in sequence order after any batch in flight.
    pending: Vec<u8>,
    /// A batch is sealed and partly written: nothing else may be written before it ends.
    in_flight: bool,
    /// Our KeyUpdate answer is out and no application data followed yet: one
    /// answer covers any number of requests (RFC 8446 §4.6.3).
    key_update_answered: bool,
    /// A close_notify or fatal alert was sealed: nothing may follow it.
    closed: bool,
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave a record half-sealed in
    // `pending` (sealing appends only once it succeeded).
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the TLS stream is closed for writing")
}

impl Shared {
    pub(crate) fn new(sealer: Sealer, kernel: Kernel, pending: Vec<u8>) -> Shared {
        Shared { sealer, kernel, pending, in_flight: false, key_update_answered: false, closed: false }
    }

    fn seal(&mut self, content_type: ContentType, message: &[u8]) -> Result<(), rustls::Error> {
        self.sealer.seal_into(content_type, message, &mut self.pending)
    }

    /// A fatal alert; nothing is sent after it.
    pub(crate) fn fatal_alert(&mut self, description: AlertDescription) {
        if !self.closed {
            self.closed = true;
            let _ = self.seal(ContentType::Alert, &[2, u8::from(description)]);
        }
    }

    pub(crate) fn warning_alert(&mut self, description: AlertDescription) {
        if !self.closed {
            let _ = self.seal(ContentType::Alert, &[1, u8::from(description)]);
        }
    }

    /// close_notify, unless a record is half written (the stream is torn
    /// already: the peer must see a truncation, not a clean end).
    fn close_notify(&mut self) {
        if !self.closed && !self.in_flight {
            self.warning_alert(AlertDescription::CloseNotify);
            self.closed = true;
        }
    }

    /// Sends our KeyUpdate and switches to the next key (TLS 1.3).
    pub(crate) fn key_update(&mut self, request_update: bool) -> Result<(), rustls::Error> {
        if self.closed {
            return Ok(());
        }
        self.seal(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, u8::from(request_update)])?;
        let next = self.kernel.update_tx()?;
        self.sealer.rekey(next)
    }

    /// The peer asked for our KeyUpdate.
    pub(crate) fn answer_key_update(&mut self) -> Result<(), rustls::Error> {
        if self.key_update_answered {
            return Ok(());
        }
        self.key_update_answered = true;
        self.key_update(false)
    }

    /// Before sealing `records` of application data: a key at its limit is
    /// replaced (TLS 1.3) or the connection ends (TLS 1.2), as rustls does.
    fn fresh_key_for(&mut self, records: u64) -> io::Result<()> {
        if self.closed {
            return Err(closed_error());
        }
        if !self.sealer.near_limit(records) {
            return Ok(());
        }
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        match self.sealer.version() {
            Version::Tls13 => {
                self.key_update(false).map_err(invalid)?;
                // One batch is far below any suite's limit (2^24 records at least).
                if self.sealer.near_limit(records) {
                    return Err(invalid(rustls::Error::EncryptError));
                }
                Ok(())
            }
            Version::Tls12 => {
                self.close_notify();
                Err(invalid(rustls::Error::EncryptError))
            }
        }
    }

    /// Writes `pending` as far as the transport takes it; `WouldBlock` if
    /// some is left. Never while a batch is in flight.
    fn write_pending<T: Transport>(&mut self, io: &T) -> io::Result<()> {
        while !self.pending.is_empty() && !self.in_flight {
            let n = io.try_write_vectored(&[IoSlice::new(&self.pending)])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        if self.pending.is_empty() {
            // Control messages are rare: do not keep their capacity.
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// [`Shared::write_pending`] without waiting; a failure is left to the
    /// writing side, which meets the same transport.
    pub(crate) fn write_pending_now<T: Transport>(&mut self, io: &T) {
        let _ = self.write_pending(io);
    }
}

/// Waits until `pending` is written.
fn poll_flush_pending<T: Transport>(io: &T, shared: &Mutex<Shared>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        match lock(shared).write_pending(io) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(io.poll_write_ready(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A copying write (our own PDUs, the phases before the relay): at most one
/// record's worth of `data` is sealed into `pending` per call.
pub(crate) fn poll_write_copy<T: Transport>(
    io: &T,
    shared: &Mutex<Shared>,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    if data.is_empty() {
        return Poll::Ready(Ok(0));
    }
    loop {
        let mut s = lock(shared);
        if s.in_flight {
            return Poll::Ready(Err(io::Error::other("a relayed TLS record is half written")));
        }
        if s.pending.len() >= PENDING_LIMIT {
            match s.write_pending(io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(s);
                    ready!(io.poll_write_ready(cx))?;
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
                Ok(()) => {}
            }
        }
        let take = data.len().min(MAX_FRAGMENT);
        if let Err(e) = s.fresh_key_for(1) {
            s.write_pending_now(io);
            return Poll::Ready(Err(e));
        }
        s.seal(ContentType::ApplicationData, &data[..take])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        s.key_update_answered = false;
        s.write_pending_now(io);
        return Poll::Ready(Ok(take));
    }
}

pub(crate) fn poll_flush<T: Transport>(io: &T, shared: &Mutex<Shared>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    poll_flush_pending(io, shared, cx)
}

/// close_notify (RFC 8446 §6.1), then the TCP half-close.
pub(crate) fn poll_shutdown<T: Transport>(
    io: &T,
    shared: &Mutex<Shared>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    lock(shared).close_notify();
    ready!(poll_flush_pending(io, shared, cx))?;
    Poll::Ready(io.shutdown_write())
}

/// One record of a batch: header and trailer here, payload in the source's buffer.
#[derive(Debug, Clone)]
struct Piece {
    sealed: Option<Sealed>,
    payload: Range<usize>,
}

impl Piece {
    fn wire_len(&self) -> usize {
        self.sealed.map_or(0, |s| s.header().len() + s.trailer().len()) + self.payload.len()
    }
}

/// The relayed bytes being written: the control records sealed before them,
/// then one piece per record (one per segment for a plain stream).
#[derive(Default)]
pub(crate) struct Batch {
    prefix: Vec<u8>,
    pieces: Vec<Piece>,
    total: usize,
    written: usize,
    active: bool,
}

impl Batch {
    /// Heap held (the relay's memory bound counts it).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.prefix.capacity() + self.pieces.capacity() * std::mem::size_of::<Piece>()
    }

    /// Most pieces one batch holds: a TLS source hands out at most
    /// `MAX_SEGMENTS` records, a plain one at most a buffer's worth.
    pub(crate) const HEAP: usize = (super::rx::MAX_SEGMENTS + 1) * std::mem::size_of::<Piece>();
}

/// Sends the first `n` bytes of `segments` (ranges of `buf`), sealing them
/// in place first when `shared` is a TLS stream's. Must be polled with the
/// same arguments until it completes.
pub(crate) fn poll_send<T: Transport>(
    io: &T,
    shared: Option<&Mutex<Shared>>,
    batch: &mut Batch,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    segments: &[Range<usize>],
    n: usize,
) -> Poll<io::Result<()>> {
    if !batch.active {
        if let Err(e) = seal_batch(shared, batch, buf, segments, n) {
            if let Some(shared) = shared {
                // A close_notify at the key's end, if that is what failed.
                lock(shared).write_pending_now(io);
            }
            return Poll::Ready(Err(e));
        }
    }
    while batch.written < batch.total {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let count = gather(batch, buf, &mut slices);
        let wrote = ready!(poll_write(io, cx, &slices[..count]))?;
        batch.written += wrote;
    }
    batch.active = false;
    batch.pieces.clear();
    // Control records are rare: do not keep their capacity.
    batch.prefix = Vec::new();
    if let Some(shared) = shared {
        let mut s = lock(shared);
        s.in_flight = false;
        s.write_pending_now(io);
    }
    Poll::Ready(Ok(()))
}

fn seal_batch(
    shared: Option<&Mutex<Shared>>,
    batch: &mut Batch,
    buf: &mut [u8],
    segments: &[Range<usize>],
    n: usize,
) -> io::Result<()> {
    batch.pieces.clear();
    let mut left = n;
    for segment in segments {
        let take = segment.len().min(left);
        let mut at = segment.start;
        let end = segment.start + take;
        while at < end {
            let next = if shared.is_some() { (at + MAX_FRAGMENT).min(end) } else { end };
            batch.pieces.push(Piece { sealed: None, payload: at..next });
            at = next;
        }
        left -= take;
        if left == 0 {
            break;
        }
    }
    if let Some(shared) = shared {
        let mut s = lock(shared);
        s.fresh_key_for(batch.pieces.len() as u64)?;
        // What was sealed before goes first; the vectors swap capacity.
        std::mem::swap(&mut batch.prefix, &mut s.pending);
        for piece in &mut batch.pieces {
            let sealed = s
                .sealer
                .seal_in_place(ContentType::ApplicationData, &mut buf[piece.payload.clone()])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            piece.sealed = Some(sealed);
        }
        s.key_update_answered = false;
        s.in_flight = true;
    }
    batch.total = batch.prefix.len() + batch.pieces.iter().map(Piece::wire_len).sum::<usize>();
    batch.written = 0;
    batch.active = true;
    Ok(())
}

/// The unwritten rest of the batch as iovecs; returns how many.
fn gather<'a>(batch: &'a Batch, buf: &'a [u8], slices: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
    let mut skip = batch.written;
    let mut count = 0;
    let mut push = |bytes: &'a [u8]| {
        if count == MAX_IOV || bytes.is_empty() {
            return;
        }
        if skip >= bytes.len() {
            skip -= bytes.len();
            return;
        }
        slices[count] = IoSlice::new(&bytes[skip..]);
        skip = 0;
        count += 1;
    };
    push(&batch.prefix);
    for piece in &batch.pieces {
        match &piece.sealed {
            Some(sealed) => {
                push(sealed.header());
                push(&buf[piece.payload.clone()]);
                push(sealed.trailer());
            }
            None => push(&buf[piece.payload.clone()]),
        }
    }
    count
}
