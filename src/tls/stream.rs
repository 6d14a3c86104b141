//! The stream type both legs of a relayed association use: plain TCP, or
//! TLS (as server towards the cloud, as client towards an SCP) after a
//! rustls handshake ([`super::handshake`]), its records protected in the
//! stream's own buffers ([`super::record`]).
//!
//! Two interfaces:
//! - `AsyncRead`/`AsyncWrite`, copying: the phases before the relay and our
//!   own PDUs (A-ABORT, the farewell).
//! - the relay's, without copies: a [`Source`] hands out plaintext where it
//!   lies in its receive buffer (decrypted in place), a [`Sink`] sends it
//!   from there — sealed in place under TLS — in one `writev` per fill.
//!
//! [`Stream::split`] gives both halves at once, borrowing the stream; both
//! work through a shared reference to the transport, so neither waits for
//! the other and the read half never registers for write readiness.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::record::{Sealer, Version};
use super::rx::{self, RxBuf, TlsRx};
use super::transport::{self, Transport};
use super::tx::{self, lock, Batch, Kernel, Shared};

pub use super::rx::{MAX_BUFFER, MAX_HANDSHAKE_MESSAGE, MAX_SEGMENTS};

/// Heap a stream's receiving side holds at most: its buffer, the plaintext
/// segments handed out, a post-handshake message being collected.
pub const RECEIVE_HEAP: usize =
    MAX_BUFFER + MAX_SEGMENTS * std::mem::size_of::<Range<usize>>() + MAX_HANDSHAKE_MESSAGE + 4;
/// Heap a stream's sending half holds at most while relaying: one batch's
/// record descriptors, and our own control records (an alert, a KeyUpdate
/// answer: one per application data sent, so a few at a time).
pub const SEND_HEAP: usize = Batch::HEAP + 1024;

/// Either leg of a relayed association.
pub struct Stream<T = TcpStream> {
    io: T,
    /// Allocated at the first read through it: it sits in every
    /// connection's future, and an idle connection needs none.
    rx: Option<Box<RxBuf>>,
    tls: Option<Box<Tls>>,
}

/// A TLS stream's state after the handshake.
pub(crate) struct Tls {
    rx: TlsRx,
    shared: Mutex<Shared>,
}

impl Tls {
    pub(crate) fn new(rx: TlsRx, sealer: Sealer, kernel: Kernel) -> Tls {
        Tls { rx, shared: Mutex::new(Shared::new(sealer, kernel, Vec::new())) }
    }
}

/// Plaintext in the source's own buffer, for the relay.
pub trait Source {
    /// Waits for plaintext: `Ok(true)` when some is ready
    /// ([`Source::plaintext`]), `Ok(false)` at the clean end (TCP end, or
    /// close_notify under TLS), `UnexpectedEof` at a TCP end without
    /// close_notify, `InvalidData` at a TLS error (its alert already sent).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>;
    /// The buffer and the ranges of it that are plaintext, in order.
    fn plaintext(&mut self) -> (&mut [u8], &[Range<usize>]);
    /// The first `n` bytes of plaintext are done with.
    fn consume(&mut self, n: usize);
    /// Heap held by the receive side.
    fn heap_bytes(&self) -> usize;
}

/// Sends plaintext that lies in another stream's buffer.
pub trait Sink: AsyncWrite + Unpin {
    /// Sends the first `n` bytes of `segments` (ranges of `buf`), which it
    /// may overwrite (TLS seals them in place). Must be polled with the same
    /// arguments until it is ready.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        segments: &[Range<usize>],
        n: usize,
    ) -> Poll<io::Result<()>>;
    /// Heap held by the sending side.
    fn heap_bytes(&self) -> usize;
}

/// A stream the relay can split into a [`Source`] and a [`Sink`].
pub trait Duplex {
    type Source<'a>: Source + Send
    where
        Self: 'a;
    type Sink<'a>: Sink + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Source<'_>, Self::Sink<'_>);
}

impl<T: Transport> Stream<T> {
    pub fn plain(io: T) -> Stream<T> {
        Stream { io, rx: None, tls: None }
    }

    pub(crate) fn with_tls(io: T, rx: RxBuf, tls: Tls) -> Stream<T> {
        let rx = rx.has_bytes().then(|| Box::new(rx));
        Stream { io, rx, tls: Some(Box::new(tls)) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The receiving half alone.
    pub fn reader(&mut self) -> ReadHalf<'_, T> {
        self.split().0
    }

    pub fn split(&mut self) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
        let Stream { io, rx, tls } = self;
        let rx: &mut RxBuf = rx.get_or_insert_with(Box::default);
        let (tls_rx, shared) = match tls {
            Some(tls) => {
                let Tls { rx, shared } = &mut **tls;
                let shared: &Mutex<Shared> = shared;
                (Some((rx, shared)), Some(shared))
            }
            None => (None, None),
        };
        let io: &T = io;
        (ReadHalf { io, rx, tls: tls_rx }, WriteHalf { io, shared, batch: Batch::default() })
    }

    /// Sends a KeyUpdate that also asks for the peer's (TLS 1.3), like
    /// rustls's `refresh_traffic_keys`; it goes out with the next write.
    pub fn refresh_traffic_keys(&mut self) -> Result<(), rustls::Error> {
        let Some(tls) = &self.tls else {
            return Err(rustls::Error::General("KeyUpdate needs TLS".into()));
        };
        let mut shared = lock(&tls.shared);
        if shared.sealer.version() != Version::Tls13 {
            return Err(rustls::Error::General("KeyUpdate needs TLS 1.3".into()));
        }
        shared.key_update(true)
    }

    /// Lowers how many records the current sending key may protect (the
    /// suite's confidentiality limit otherwise): tests reach it quickly.
    pub fn set_key_limit(&mut self, records: u64) {
        if let Some(tls) = &self.tls {
            lock(&tls.shared).sealer.set_limit(records);
        }
    }

    /// Heap this stream holds (receive buffer, TLS state's buffers).
    pub fn heap_bytes(&self) -> usize {
        self.rx.as_ref().map_or(0, |rx| std::mem::size_of::<RxBuf>() + rx.heap_bytes())
            + self.tls.as_ref().map_or(0, |tls| std::mem::size_of::<Tls>() + tls.rx.heap_bytes())
    }
}

/// The receiving half: [`Source`] for the relay.
pub struct ReadHalf<'a, T> {
    io: &'a T,
    rx: &'a mut RxBuf,
    tls: Option<(&'a mut TlsRx, &'a Mutex<Shared>)>,
}

impl<T: Transport> Source for ReadHalf<'_, T> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut need = 1;
        loop {
            if self.rx.has_data() {
                return Poll::Ready(Ok(true));
            }
            if self.rx.end.is_none() {
                if let Some((tls, shared)) = &mut self.tls {
                    match tls.open_records(self.rx, shared, self.io) {
                        Ok(None) => continue,
                        Ok(Some(n)) => need = n,
                        Err(fatal) => {
                            rx::fail(self.rx, shared, self.io, fatal);
                            continue;
                        }
                    }
                }
            }
            if let Some(end) = &self.rx.end {
                return Poll::Ready(end.result());
            }
            let space = self.rx.space(need);
            match ready!(transport::poll_read(self.io, cx, space)) {
                Ok(0) => rx::transport_end(self.rx, self.tls.as_ref().map(|(tls, _)| &**tls)),
                Ok(n) => self.rx.received(n, self.tls.is_none()),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn plaintext(&mut self) -> (&mut [u8], &[Range<usize>]) {
        self.rx.plaintext()
    }

    fn consume(&mut self, n: usize) {
        self.rx.consume(n);
    }

    fn heap_bytes(&self) -> usize {
        self.rx.heap_bytes() + self.tls.as_ref().map_or(0, |(tls, _)| tls.heap_bytes())
    }
}

/// The sending half: [`Sink`] for the relay, `AsyncWrite` for our own PDUs.
pub struct WriteHalf<'a, T> {
    io: &'a T,
    shared: Option<&'a Mutex<Shared>>,
    batch: Batch,
}

impl<T: Transport> Sink for WriteHalf<'_, T> {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        segments: &[Range<usize>],
        n: usize,
    ) -> Poll<io::Result<()>> {
        tx::poll_send(self.io, self.shared, &mut self.batch, cx, buf, segments, n)
    }

    fn heap_bytes(&self) -> usize {
        self.batch.heap_bytes()
    }
}

impl<T: Transport + Sync> Duplex for Stream<T> {
    type Source<'a>
        = ReadHalf<'a, T>
    where
        T: 'a;
    type Sink<'a>
        = WriteHalf<'a, T>
    where
        T: 'a;

    fn halves(&mut self) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
        self.split()
    }
}

fn write<T: Transport>(
    io: &T,
    shared: Option<&Mutex<Shared>>,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    match shared {
        None => transport::poll_write(io, cx, &[IoSlice::new(data)]),
        Some(shared) => tx::poll_write_copy(io, shared, cx, data),
    }
}

fn flush<T: Transport>(io: &T, shared: Option<&Mutex<Shared>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match shared {
        None => Poll::Ready(Ok(())),
        Some(shared) => tx::poll_flush(io, shared, cx),
    }
}

fn shutdown<T: Transport>(io: &T, shared: Option<&Mutex<Shared>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match shared {
        None => Poll::Ready(io.shutdown_write()),
        Some(shared) => tx::poll_shutdown(io, shared, cx),
    }
}

impl<T: Transport> AsyncWrite for WriteHalf<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        write(self.io, self.shared, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        flush(self.io, self.shared, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        shutdown(self.io, self.shared, cx)
    }
}

impl<T: Transport + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        write(&me.io, me.tls.as_ref().map(|tls| &tls.shared), cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        flush(&me.io, me.tls.as_ref().map(|tls| &tls.shared), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        shutdown(&me.io, me.tls.as_ref().map(|tls| &tls.shared), cx)
    }
}

impl<T: Transport + Unpin> AsyncRead for Stream<T> {
    /// Copies plaintext out (the phases before the relay read a few PDUs).
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if me.tls.is_none() && me.rx.as_ref().is_none_or(|rx| !rx.has_data() && rx.end.is_none()) {
            // Plain, nothing buffered: straight into the caller's buffer.
            let n = ready!(transport::poll_read(&me.io, cx, buf.initialize_unfilled()))?;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        let mut reader = me.reader();
        if !ready!(reader.poll_fill(cx))? {
            return Poll::Ready(Ok(()));
        }
        let (data, segments) = reader.plaintext();
        let mut copied = 0;
        for segment in segments {
            let take = segment.len().min(buf.remaining());
            buf.put_slice(&data[segment.start..segment.start + take]);
            copied += take;
            if buf.remaining() == 0 {
                break;
            }
        }
        reader.consume(copied);
        Poll::Ready(Ok(()))
    }
}
