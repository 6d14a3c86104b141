//! Accepting that cannot die: the one accept loop step of every listening
//! socket (the DICOM listeners and the admin endpoint). An accept error
//! (EMFILE when the descriptors run out, ECONNABORTED, …) is transient: it
//! is logged and retried after a back-off that doubles from 5 ms to 1 s,
//! and resets on the next success. Only `stop` ends it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts from one listening socket until stopped.
pub struct Acceptor<'a> {
    listener: &'a TcpListener,
    stop: &'a CancellationToken,
    /// Names the socket in the log line of a failed accept.
    name: &'a str,
    backoff: Duration,
}

impl<'a> Acceptor<'a> {
    pub fn new(listener: &'a TcpListener, stop: &'a CancellationToken, name: &'a str) -> Acceptor<'a> {
        Acceptor { listener, stop, name, backoff: BACKOFF_START }
    }

    /// The next connection; `None` once `stop` is cancelled.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return None,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok(a) => {
                    self.backoff = BACKOFF_START;
                    return Some(a);
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, retry_in = ?self.backoff, "accept failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
