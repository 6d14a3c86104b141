//! The answer to an A-ASSOCIATE-RQ the gateway refuses after reading it
//! (policy, or no association slot): such a connection is out of the
//! pre-association budget and holds no slot, so its farewell is bounded in
//! number by the listener's farewell cap (`admission::farewells`). Under the
//! cap: the whole farewell (the RJ, close_notify, a short linger). Past it:
//! the RJ as far as the socket takes it at once, then the close, counted
//! in `dicomgate_refusal_farewells_skipped_total`. A refused peer that
//! reads promptly sees the same RJ either way; one that holds the
//! connection open no longer holds a file descriptor for it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{send_and_close, write_flush};
use crate::admission::Admission;
use crate::metrics::Metrics;

/// Sends `pdu` and closes: a whole farewell while the listener's cap
/// allows, else [`send_at_once`].
pub(super) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    pdu: &[u8],
    admission: &Admission,
    metrics: &Metrics,
    listener: &str,
) {
    match admission.farewell() {
        Some(_permit) => send_and_close(stream, pdu).await,
        None => {
            metrics.refusal_farewell_skipped(listener);
            send_at_once(stream, pdu);
        }
    }
}

/// Writes `pdu` and a close (TLS close_notify, then FIN) as far as the
/// socket takes them without waiting; the caller then drops the stream.
/// The peer has sent its whole RQ and nothing since, so closing leaves no
/// unread input behind and the kernel sends FIN, not RST: a peer that
/// reads gets the RJ.
pub(super) fn send_at_once<S: AsyncWrite + Unpin>(stream: &mut S, pdu: &[u8]) {
    if poll_once(write_flush(stream, pdu)).is_some_and(|r| r.is_ok()) {
        let _ = poll_once(stream.shutdown());
    }
}

/// Polls `work` once: its result if it completes without waiting.
fn poll_once<T>(work: impl Future<Output = T>) -> Option<T> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(work).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn at_once_the_pdu_and_the_close_reach_a_peer_that_reads_later() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut ours, _) = listener.accept().await.expect("accept");
        send_at_once(&mut ours, &[0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2]);
        drop(ours);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read to the close");
        assert_eq!(got, [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2]);
    }
}
