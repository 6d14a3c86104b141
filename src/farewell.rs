//! The end of a connection the gateway ends itself: our last PDU (an
//! A-ASSOCIATE-RJ or A-ABORT), the close (TLS close_notify, then TCP FIN)
//! and, on a whole stream, a short linger — all under one short budget of
//! their own, not the ACSE timeout, so that a peer that stopped reading
//! cannot hold a refused connection, an aborted association or the
//! shutdown for minutes (issue 11). Used before the relay
//! ([`crate::connection`]) and when the relay ends abnormally
//! ([`crate::relay`]).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// The farewell's budget: the last PDU, the shutdown and the linger together.
pub const FAREWELL: Duration = Duration::from_secs(3);
/// How long, and how much, a closing connection is drained (see
/// [`linger_close`]); within [`FAREWELL`].
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Writes `bytes` and flushes (a TLS stream may hold records until then).
pub async fn write_flush<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

/// Sends a final PDU of our own, then closes (TLS close_notify included),
/// all within [`FAREWELL`].
pub async fn send_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, pdu: &[u8]) {
    let farewell = async {
        if write_flush(stream, pdu).await.is_ok() {
            linger_close(stream).await;
        }
    };
    // Boxed: the timers would otherwise sit in every connection's future.
    let _ = Box::pin(timeout(FAREWELL, farewell)).await;
}

/// Closes within [`FAREWELL`] (see `linger_close`).
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = Box::pin(timeout(FAREWELL, linger_close(stream))).await;
}

/// Our last PDU (if any) and the close, to one peer's sending half (the
/// relay's; its receiving half belongs to the other pump), within `budget`
/// (at most [`FAREWELL`]).
pub async fn to_half<W: AsyncWrite + Unpin>(wr: &mut W, last: Option<&[u8]>, budget: Duration) {
    let farewell = async {
        if let Some(pdu) = last {
            if write_flush(wr, pdu).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let _ = timeout(budget.min(FAREWELL), farewell).await;
}

/// Lingering close: half-close our side, then drain what the peer still
/// sends for a moment. Closing a socket with unread input makes the kernel
/// send RST, which can destroy our final PDU before the peer reads it.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let drain = async {
        // On the heap: an array here would sit in every connection's future.
        let mut sink = vec![0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}
