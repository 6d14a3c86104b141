//! The conversation between the previous process and its successor during a
//! hitless upgrade (see [`super::upgrade`]), over the datagram socket passed
//! as `dicomgate.upgrade-ready`:
//!
//! ```text
//! successor                          previous
//!   Started{pid}   ───────────────▶   (now it can watch and, if need be, kill it)
//!                  ◀───────────────   Detached (the intermediate shell has exited:
//!                                      the successor is the service manager's child)
//!   MAINPID=, READY=1 to systemd
//!   Ready{pid}     ───────────────▶   stops accepting, drains, exits
//! ```
//!
//! The successor tells systemd it is the main process only after `Detached`:
//! systemd treats a main process that is not its own child as "alien" and
//! then neither waits for it on stop (it sends SIGKILL right after SIGTERM,
//! so the drain is cut) nor expects its exit (docs/upgrade.md).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// How long the successor waits for `Detached` before it reports anyway.
const DETACHED_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The successor runs (sent as soon as it has taken its sockets).
    Started { pid: u32 },
    /// The intermediate that started the successor has exited.
    Detached,
    /// The successor serves; it has told systemd it is the main process.
    Ready { pid: u32 },
}

impl Message {
    pub fn encode(self) -> String {
        match self {
            Message::Started { pid } => format!("STARTED=1\nPID={pid}\n"),
            Message::Detached => "DETACHED=1\n".to_owned(),
            Message::Ready { pid } => format!("READY=1\nMAINPID={pid}\n"),
        }
    }

    /// The message exactly as [`Message::encode`] writes it, or `None`.
    pub fn parse(bytes: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(bytes).ok()?;
        let pid = |rest: &str| rest.strip_suffix('\n')?.parse::<u32>().ok().filter(|p| *p > 0);
        let msg = if let Some(rest) = text.strip_prefix("STARTED=1\nPID=") {
            Message::Started { pid: pid(rest)? }
        } else if let Some(rest) = text.strip_prefix("READY=1\nMAINPID=") {
            Message::Ready { pid: pid(rest)? }
        } else if text == "DETACHED=1\n" {
            Message::Detached
        } else {
            return None;
        };
        // Only the canonical form: a message is never half-understood.
        (msg.encode() == text).then_some(msg)
    }
}

/// The successor's first word, sent as soon as it has the channel (before
/// its configuration is read, so that a failing configuration is a process
/// the previous one sees exit). Logging is not set up yet: a failure here
/// shows as the previous process's "did not start" error.
pub fn announce(channel: &UnixDatagram) {
    let _ = channel.send(Message::Started { pid: std::process::id() }.encode().as_bytes());
}

/// The successor is ready: once detached, tell systemd it is the main
/// process (no-op without NOTIFY_SOCKET), then tell the previous process.
pub fn report_ready(channel: &UnixDatagram) {
    wait_detached(channel);
    let pid = std::process::id();
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        use sd_notify::NotifyState as N;
        if let Err(e) = sd_notify::notify(&[N::MainPid(pid), N::Ready]) {
            tracing::warn!(error = %e, "cannot tell systemd that this process is the new main process");
        }
    }
    if let Err(e) = channel.send(Message::Ready { pid }.encode().as_bytes()) {
        tracing::warn!(error = %e, "cannot report readiness to the previous process; it keeps serving");
    }
}

/// Bounded: the previous process sends `Detached` within milliseconds of
/// our start, so it is normally queued long before we are ready.
fn wait_detached(channel: &UnixDatagram) {
    let mut buf = [0u8; 64];
    if let Err(e) = channel.set_read_timeout(Some(DETACHED_WAIT)) {
        tracing::warn!(error = %e, "upgrade: cannot wait for the previous process");
        return;
    }
    loop {
        match channel.recv(&mut buf) {
            Ok(n) if Message::parse(&buf[..n]) == Some(Message::Detached) => return,
            Ok(_) => tracing::warn!("upgrade: ignored an unexpected message from the previous process"),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "upgrade: the previous process did not confirm that we are detached; systemd may not wait for \
                     this process on stop"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [Message::Started { pid: 7 }, Message::Detached, Message::Ready { pid: 4_194_304 }] {
            assert_eq!(Message::parse(m.encode().as_bytes()), Some(m));
        }
    }

    #[test]
    fn only_the_canonical_form_is_understood() {
        for bad in [
            &b"READY=1\n"[..],
            b"READY=1\nMAINPID=0\n",
            b"READY=1\nMAINPID=+5\n",
            b"READY=1\nMAINPID=05\n",
            b"READY=1\nMAINPID=5",
            b"READY=1\nMAINPID=5\nX=1\n",
            b"STARTED=1\nPID=\n",
            b"DETACHED=1",
            b"\xff",
        ] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn report_ready_waits_for_detached_then_reports() {
        let (ours, theirs) = UnixDatagram::pair().expect("pair");
        ours.send(Message::Detached.encode().as_bytes()).expect("send");
        report_ready(&theirs);
        let mut buf = [0u8; 64];
        let n = ours.recv(&mut buf).expect("recv");
        assert_eq!(Message::parse(&buf[..n]), Some(Message::Ready { pid: std::process::id() }));
    }
}
