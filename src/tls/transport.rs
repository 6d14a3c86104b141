//! What a stream needs of the connection under it: readiness and
//! non-blocking reads and writes through a shared reference, so that the
//! read half and the write half of one stream can work at the same time
//! (and the read half can send an alert without waiting for, or stealing
//! the wake-up of, the write half). `TcpStream` in the daemon; an in-memory
//! transport in the fuzz harness.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

pub trait Transport {
    /// Ready (or possibly ready) to read; registers the task's waker otherwise.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is there now; `WouldBlock` when nothing is (and forgets the readiness).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Ready (or possibly ready) to write; registers the task's waker otherwise.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Writes what the transport takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Half-closes: the peer reads an end after everything written.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        // What tokio's own `poll_shutdown` does, through a shared reference.
        match socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write) {
            // Already closed by the peer: nothing left to half-close.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

/// One non-blocking read: `Ready` with the count (0 at the end), or
/// `Pending` with the waker registered.
pub fn poll_read<T: Transport>(io: &T, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_read_ready(cx))?;
        match io.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// One non-blocking vectored write, like [`poll_read`].
pub fn poll_write<T: Transport>(io: &T, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_write_ready(cx))?;
        match io.try_write_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(0) if bufs.iter().any(|b| !b.is_empty()) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            other => return Poll::Ready(other),
        }
    }
}

/// Writes all of `bytes`.
pub async fn write_all<T: Transport>(io: &T, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| poll_write(io, cx, &[IoSlice::new(bytes)])).await?;
        bytes = &bytes[n..];
    }
    Ok(())
}
