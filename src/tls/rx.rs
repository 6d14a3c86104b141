//! The receiving side of a stream: one buffer, filled by reads of the
//! transport; under TLS each complete record is decrypted where it lies and
//! its plaintext handed out as a segment of that buffer, so the relay reads
//! and forwards it without a copy ([`RxBuf`]). Alerts and post-handshake
//! messages (KeyUpdate, NewSessionTicket, renegotiation requests) are
//! handled here ([`TlsRx`]).
//!
//! The one move left is the incomplete record at the end of a read (at most
//! one record, ≤ 18 KiB, against reads of up to 256 KiB): it goes to the
//! front of the buffer once everything before it is consumed, because a
//! record is decrypted in one piece.
//!
//! The buffer is allocated at the first byte (an idle connection waits for
//! readiness without one), starts at 4 KiB and grows ×4 while reads fill
//! it, up to [`MAX_BUFFER`] — or at once to the length a record header
//! announces.

use std::io;
use std::ops::Range;
use std::sync::Mutex;

use rustls::{AlertDescription, HandshakeType, InvalidMessage, PeerMisbehaved};

use super::record::{record_len, ContentType, Fatal, Opener, Version, HEADER_LEN};
use super::transport::Transport;
use super::tx::{lock, Shared};

const INITIAL_BUFFER: usize = 4 * 1024;
/// The largest a receive buffer grows: large reads mean many records per
/// `recv` and large `writev`s, which is where a relay's CPU goes.
pub const MAX_BUFFER: usize = 256 * 1024;
/// Plaintext segments handed out per fill: one `writev`'s worth of iovecs.
pub const MAX_SEGMENTS: usize = 64;
/// Longest post-handshake handshake message collected (a NewSessionTicket
/// is a few hundred bytes; KeyUpdate five).
pub const MAX_HANDSHAKE_MESSAGE: usize = 16 * 1024;

/// How the stream ended; kept, so every later read ends the same way.
#[derive(Debug, Clone)]
pub(crate) enum End {
    Clean,
    Failed { kind: io::ErrorKind, error: Option<rustls::Error> },
}

impl End {
    fn truncated() -> End {
        End::Failed { kind: io::ErrorKind::UnexpectedEof, error: None }
    }

    /// `Ok(false)`: the clean end.
    pub(crate) fn result(&self) -> io::Result<bool> {
        match self {
            End::Clean => Ok(false),
            End::Failed { kind, error: Some(e) } => Err(io::Error::new(*kind, e.clone())),
            End::Failed { kind, error: None } => {
                Err(io::Error::new(*kind, "peer closed connection without sending TLS close_notify"))
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct RxBuf {
    buf: Vec<u8>,
    /// Plaintext ready, in order: `segments[head..]`.
    segments: Vec<Range<usize>>,
    head: usize,
    /// `opened..filled`: ciphertext received, not yet opened (TLS).
    opened: usize,
    filled: usize,
    pub(crate) end: Option<End>,
}

impl RxBuf {
    /// Starts with what arrived during the handshake: plaintext rustls
    /// decrypted, then ciphertext of records after it.
    pub(crate) fn after_handshake(plaintext: &[u8], ciphertext: &[u8]) -> RxBuf {
        let mut rx = RxBuf::default();
        if plaintext.is_empty() && ciphertext.is_empty() {
            return rx;
        }
        rx.buf = Vec::with_capacity(INITIAL_BUFFER.max(plaintext.len() + ciphertext.len()));
        rx.buf.extend_from_slice(plaintext);
        rx.buf.extend_from_slice(ciphertext);
        let len = rx.buf.capacity();
        rx.buf.resize(len, 0);
        if !plaintext.is_empty() {
            rx.segments.push(0..plaintext.len());
        }
        rx.opened = plaintext.len();
        rx.filled = plaintext.len() + ciphertext.len();
        rx
    }

    /// Anything received and not yet consumed (or a buffer to read into).
    pub(crate) fn has_bytes(&self) -> bool {
        !self.buf.is_empty()
    }

    pub(crate) fn has_data(&self) -> bool {
        self.head < self.segments.len()
    }

    /// The plaintext ready: the buffer and the ranges of it, in order.
    pub(crate) fn plaintext(&mut self) -> (&mut [u8], &[Range<usize>]) {
        (&mut self.buf, &self.segments[self.head..])
    }

    pub(crate) fn consume(&mut self, mut n: usize) {
        while n > 0 && self.head < self.segments.len() {
            let segment = &mut self.segments[self.head];
            let take = n.min(segment.len());
            segment.start += take;
            n -= take;
            if segment.start == segment.end {
                self.head += 1;
            }
        }
        if self.head == self.segments.len() {
            self.segments.clear();
            self.head = 0;
            if self.opened == self.filled {
                self.opened = 0;
                self.filled = 0;
            }
        }
    }

    /// Heap held (the relay's memory bound counts it).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.segments.capacity() * std::mem::size_of::<Range<usize>>()
    }

    /// Where the next read goes, with room for at least `need` bytes
    /// counted from the first unopened one. Only called with no plaintext
    /// outstanding.
    pub(crate) fn space(&mut self, need: usize) -> &mut [u8] {
        debug_assert!(!self.has_data());
        if self.opened > 0 {
            // The incomplete record at the end moves to the front.
            self.buf.copy_within(self.opened..self.filled, 0);
            self.filled -= self.opened;
            self.opened = 0;
        }
        let want = need.max(INITIAL_BUFFER).min(MAX_BUFFER.max(need));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// `n` bytes were read into [`RxBuf::space`]; a plain stream's are plaintext.
    pub(crate) fn received(&mut self, n: usize, plain: bool) {
        let offered = self.buf.len() - self.filled;
        let start = self.filled;
        self.filled += n;
        if plain {
            self.segments.push(start..self.filled);
            self.opened = self.filled;
        }
        // Reads that fill at least half of what they were offered grow the buffer.
        if n * 2 >= offered && self.buf.len() < MAX_BUFFER {
            let len = (self.buf.len() * 4).min(MAX_BUFFER);
            self.buf.resize(len, 0);
        }
    }
}

/// The TLS receiving state after the handshake.
pub(crate) struct TlsRx {
    opener: Opener,
    client: bool,
    /// A post-handshake handshake message arriving in pieces (rare; freed when whole).
    joiner: Vec<u8>,
    close_notify: bool,
    // rustls's (and BoringSSL's) bounds on what a peer may make us do for free.
    allowed_key_updates: u8,
    allowed_warnings: u8,
    allowed_renegotiations: u8,
}

const KEY_UPDATES_BETWEEN_DATA: u8 = 32;

impl TlsRx {
    pub(crate) fn new(opener: Opener, client: bool) -> TlsRx {
        TlsRx {
            opener,
            client,
            joiner: Vec::new(),
            close_notify: false,
            allowed_key_updates: KEY_UPDATES_BETWEEN_DATA,
            allowed_warnings: 4,
            allowed_renegotiations: 1,
        }
    }

    pub(crate) fn close_notify_received(&self) -> bool {
        self.close_notify
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.joiner.capacity()
    }

    /// Opens the complete records in `rx`, up to [`MAX_SEGMENTS`] of
    /// plaintext. Returns `Some(n)` when nothing could be opened because
    /// the next record needs `n` bytes from its first, `None` after progress.
    pub(crate) fn open_records<T: Transport>(
        &mut self,
        rx: &mut RxBuf,
        shared: &Mutex<Shared>,
        io: &T,
    ) -> Result<Option<usize>, Fatal> {
        let mut progress = false;
        while rx.segments.len() - rx.head < MAX_SEGMENTS && !self.close_notify {
            let available = &rx.buf[rx.opened..rx.filled];
            let len = match record_len(self.opener.version(), available) {
                None => return Ok((!progress).then_some(HEADER_LEN)),
                Some(len) => len?,
            };
            if available.len() < len {
                return Ok((!progress).then_some(len));
            }
            let start = rx.opened;
            let opened = self.opener.open(&mut rx.buf[start..start + len])?;
            rx.opened += len;
            progress = true;
            let payload = start + opened.payload.start..start + opened.payload.end;
            match opened.content_type {
                ContentType::ApplicationData => {
                    if !payload.is_empty() {
                        self.allowed_key_updates = KEY_UPDATES_BETWEEN_DATA;
                        if rx.segments.last().is_some_and(|last| last.end == payload.start) {
                            // Plaintext right after plaintext (rustls's handshake leftovers).
                            if let Some(last) = rx.segments.last_mut() {
                                last.end = payload.end;
                            }
                        } else {
                            rx.segments.push(payload);
                        }
                    }
                }
                ContentType::Alert => {
                    if self.alert(&rx.buf[payload])? {
                        self.close_notify = true;
                        rx.end = Some(End::Clean);
                    }
                }
                ContentType::Handshake => self.handshake(&rx.buf[payload], shared, io)?,
                // The opener refuses these after the handshake.
                ContentType::ChangeCipherSpec => {}
            }
        }
        Ok(None)
    }

    /// An alert; `Ok(true)` for close_notify.
    fn alert(&mut self, payload: &[u8]) -> Result<bool, Fatal> {
        let &[level, description] = payload else {
            return Err(Fatal::new(AlertDescription::DecodeError, InvalidMessage::MessageTooShort));
        };
        let description = AlertDescription::from(description);
        if level != 1 && level != 2 {
            return Err(Fatal::new(AlertDescription::IllegalParameter, rustls::Error::AlertReceived(description)));
        }
        if description == AlertDescription::CloseNotify {
            return Ok(true);
        }
        if level == 2 {
            return Err(Fatal { alert: None, error: rustls::Error::AlertReceived(description) });
        }
        self.allowed_warnings = self
            .allowed_warnings
            .checked_sub(1)
            .ok_or_else(|| Fatal::new(AlertDescription::DecodeError, PeerMisbehaved::TooManyWarningAlertsReceived))?;
        // Warnings are outlawed in TLS 1.3, except (for no good reason) user_canceled.
        if self.opener.version() == Version::Tls13 && description != AlertDescription::UserCanceled {
            return Err(Fatal::new(AlertDescription::DecodeError, rustls::Error::AlertReceived(description)));
        }
        Ok(false)
    }

    /// Handshake records after the handshake: collected into whole messages.
    fn handshake<T: Transport>(&mut self, payload: &[u8], shared: &Mutex<Shared>, io: &T) -> Result<(), Fatal> {
        if payload.is_empty() {
            return Err(Fatal::new(AlertDescription::UnexpectedMessage, InvalidMessage::InvalidEmptyPayload));
        }
        if self.joiner.len() + payload.len() > MAX_HANDSHAKE_MESSAGE + 4 {
            return Err(Fatal::new(AlertDescription::UnexpectedMessage, InvalidMessage::HandshakePayloadTooLarge));
        }
        let mut joiner = std::mem::take(&mut self.joiner);
        joiner.extend_from_slice(payload);
        let mut at = 0;
        let result = loop {
            let rest = &joiner[at..];
            let [typ, a, b, c, ..] = *rest else { break Ok(()) };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_HANDSHAKE_MESSAGE {
                break Err(Fatal::new(AlertDescription::UnexpectedMessage, InvalidMessage::HandshakePayloadTooLarge));
            }
            let Some(body) = rest.get(4..4 + len) else { break Ok(()) };
            // A key change must end its record (RFC 8446 §5.1).
            let last = rest.len() == 4 + len;
            if let Err(fatal) = self.message(typ, body, last, shared, io) {
                break Err(fatal);
            }
            at += 4 + len;
        };
        joiner.drain(..at);
        if !joiner.is_empty() {
            self.joiner = joiner;
        }
        result
    }

    fn message<T: Transport>(
        &mut self,
        typ: u8,
        body: &[u8],
        last: bool,
        shared: &Mutex<Shared>,
        io: &T,
    ) -> Result<(), Fatal> {
        let internal = |e: rustls::Error| Fatal::new(AlertDescription::InternalError, e);
        match (self.opener.version(), HandshakeType::from(typ)) {
            (Version::Tls13, HandshakeType::KeyUpdate) => {
                let requested = match body {
                    [0] => false,
                    [1] => true,
                    _ => return Err(Fatal::new(AlertDescription::DecodeError, InvalidMessage::InvalidKeyUpdate)),
                };
                if !last {
                    return Err(Fatal::new(
                        AlertDescription::UnexpectedMessage,
                        PeerMisbehaved::KeyEpochWithPendingFragment,
                    ));
                }
                self.allowed_key_updates = self.allowed_key_updates.checked_sub(1).ok_or_else(|| {
                    Fatal::new(AlertDescription::UnexpectedMessage, PeerMisbehaved::TooManyKeyUpdateRequests)
                })?;
                let mut s = lock(shared);
                let next = s.kernel.update_rx().map_err(internal)?;
                self.opener.rekey(next).map_err(internal)?;
                if requested {
                    s.answer_key_update().map_err(internal)?;
                    s.write_pending_now(io);
                }
                Ok(())
            }
            (Version::Tls13, HandshakeType::NewSessionTicket) if self.client => {
                lock(shared).kernel.new_session_ticket(body).map_err(|e| Fatal::new(AlertDescription::DecodeError, e))
            }
            (Version::Tls12, HandshakeType::HelloRequest) if self.client => self.refuse_renegotiation(shared, io),
            (Version::Tls12, HandshakeType::ClientHello) if !self.client => self.refuse_renegotiation(shared, io),
            (_, got_type) => Err(Fatal::new(
                AlertDescription::UnexpectedMessage,
                rustls::Error::InappropriateHandshakeMessage { expect_types: Vec::new(), got_type },
            )),
        }
    }

    /// Once with a no_renegotiation warning, as rustls does; then fatally.
    fn refuse_renegotiation<T: Transport>(&mut self, shared: &Mutex<Shared>, io: &T) -> Result<(), Fatal> {
        self.allowed_renegotiations = self.allowed_renegotiations.checked_sub(1).ok_or_else(|| {
            Fatal::new(AlertDescription::NoRenegotiation, PeerMisbehaved::TooManyRenegotiationRequests)
        })?;
        let mut s = lock(shared);
        s.warning_alert(AlertDescription::NoRenegotiation);
        s.write_pending_now(io);
        Ok(())
    }
}

/// A fatal error found while reading: the alert goes out now (as far as the
/// transport takes it), and the stream's end is the error.
pub(crate) fn fail<T: Transport>(rx: &mut RxBuf, shared: &Mutex<Shared>, io: &T, fatal: Fatal) {
    let mut s = lock(shared);
    if let Some(alert) = fatal.alert {
        s.fatal_alert(alert);
    }
    s.write_pending_now(io);
    rx.end = Some(End::Failed { kind: io::ErrorKind::InvalidData, error: Some(fatal.error) });
}

/// The transport ended: clean after close_notify, truncated otherwise.
pub(crate) fn transport_end(rx: &mut RxBuf, tls: Option<&TlsRx>) {
    rx.end = Some(match tls {
        Some(tls) if !tls.close_notify_received() => End::truncated(),
        _ => End::Clean,
    });
}
