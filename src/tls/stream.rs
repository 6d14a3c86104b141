//! The stream type both legs of a relayed association use (plain TCP, TLS as
//! server towards the cloud, TLS as client towards an SCP), and its bulk read
//! path.
//!
//! Large reads bypass tokio-rustls: one `recv` of up to the caller's free
//! space is fed to rustls from memory. tokio-rustls lets rustls read the
//! socket itself, 4 KiB at a time (several syscalls per 16 KiB record, the
//! largest cost the relay's profile showed). The bulk path relies only on
//! rustls' documented contract — `read_tls` takes arbitrary chunks and returns
//! `Ok(0)` once close_notify was received, `process_new_packets` queues the
//! alert for a fatal error, plaintext is drained through `reader()` — and on
//! one protocol fact: a record carries at most 16 KiB of plaintext. Whatever
//! rustls queues while reading (a fatal alert above all) is written before
//! the read returns, as far as the socket takes it without waiting; the rest
//! goes out with the next write. (rustls itself holds a KeyUpdate answer
//! until the next record it sends, as RFC 8446 §4.6.3 allows.) tests/tls_stream.rs and
//! the `tls_read` fuzz target hold it to that.

use std::io::{self, Read as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Either leg of a relayed association: plain TCP or TLS (as server towards
/// the cloud, as client towards an SCP). One type, so the relay is compiled once.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Most plaintext one TLS record can carry (RFC 8446 §5.1, RFC 5246 §6.2.1),
/// plus room for a record's header, tag and padding.
pub const RECORD_SLACK: usize = 16 * 1024 + 512;

/// Reads of at least this much go through [`poll_read_bulk`]; smaller ones
/// (the first PDU's header, control PDUs) through tokio-rustls.
pub const BULK_READ_MIN: usize = 2 * RECORD_SLACK;

/// What the bulk path needs of the transport under TLS. Writing must not
/// wait or register for write readiness: the read side must not steal the
/// wake-up the writing side of the same stream waits for.
pub trait Transport: AsyncRead + Unpin {
    /// Writes what the transport takes now; `WouldBlock` when it takes nothing.
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Transport for TcpStream {
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) if buf.remaining() >= BULK_READ_MIN => {
                let (tcp, conn) = s.get_mut();
                poll_read_bulk(tcp, conn, cx, buf)
            }
            Stream::Client(s) if buf.remaining() >= BULK_READ_MIN => {
                let (tcp, conn) = s.get_mut();
                poll_read_bulk(tcp, conn, cx, buf)
            }
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

thread_local! {
    /// Ciphertext staging for [`poll_read_bulk`]; fully consumed within one
    /// call, so one per thread serves every connection.
    static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The bulk read path: one read of the transport of up to the caller's free
/// space less [`RECORD_SLACK`], all of it fed to rustls, the plaintext moved
/// into `buf`. `buf` must have at least [`BULK_READ_MIN`] bytes free.
///
/// No plaintext is lost or held here: the plaintext of the ciphertext read
/// is at most as long, and the record rustls may have held partly from
/// before adds at most 16 KiB, so it all fits in `buf`. Ends like
/// tokio-rustls: `Ok` with nothing added at close_notify, `UnexpectedEof`
/// at a transport end without it, `InvalidData` (after sending the alert) at
/// a TLS error.
pub fn poll_read_bulk<T: Transport, D>(
    io: &mut T,
    conn: &mut rustls::ConnectionCommon<D>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    assert!(buf.remaining() >= BULK_READ_MIN, "bulk read into {} free bytes", buf.remaining());
    let start = buf.filled().len();
    loop {
        // Plaintext rustls already has (or the end of the stream).
        match conn.reader().read(buf.initialize_unfilled()) {
            Ok(n) => {
                // n == 0: close_notify received, a clean end (`buf` is not full).
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        let want = buf.remaining() - RECORD_SLACK;
        let step = STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            if staging.len() < want {
                staging.resize(want, 0);
            }
            let mut ciphertext = ReadBuf::new(&mut staging[..want]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut ciphertext))?;
            Poll::Ready(match ciphertext.filled() {
                // Transport end: rustls decides between a clean end and truncation.
                [] => conn.read_tls(&mut io::empty()).map(|_| ()),
                bytes => feed(conn, bytes, buf),
            })
        });
        let fed = ready!(step);
        // Before the error, if any: a fatal error's alert is what this sends.
        flush_queued(io, conn);
        fed?;
        if buf.filled().len() > start {
            return Poll::Ready(Ok(()));
        }
    }
}

/// Gives rustls every byte of `ciphertext` (it takes a bounded amount per
/// `read_tls`), moving plaintext into `buf` as records complete.
fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, mut ciphertext: &[u8], buf: &mut ReadBuf<'_>) -> io::Result<()> {
    while !ciphertext.is_empty() {
        if conn.read_tls(&mut ciphertext)? == 0 {
            // close_notify already received: what follows it is not data.
            break;
        }
        conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match conn.reader().read(buf.initialize_unfilled()) {
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // UnexpectedEof cannot happen mid-feed (no transport end yet);
            // anything else is rustls' to report.
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the TLS output rustls queued while reading, as far as the
/// transport takes it now. A failure is left to the writing side, which
/// meets the same transport (and sends what stayed queued first).
fn flush_queued<T: Transport, D>(io: &mut T, conn: &mut rustls::ConnectionCommon<D>) {
    struct Now<'a, T>(&'a mut T);
    impl<T: Transport> io::Write for Now<'_, T> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.try_write_now(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    while conn.wants_write() {
        match conn.write_tls(&mut Now(io)) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
}
