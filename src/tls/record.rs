//! TLS record protection after the handshake, in place, in buffers the
//! stream owns: opening (RFC 8446 §5.2, RFC 5246 §6.2.3.3 with RFC 5288's
//! AES-GCM and RFC 7905's ChaCha20-Poly1305) and sealing. No I/O, no
//! allocation on the data path.
//!
//! rustls (0.23) does the handshake and the key schedule and hands over the
//! traffic keys through its kernel-TLS interface (`rustls::kernel`); the
//! AEAD is aws-lc-rs, the library rustls itself uses here. What is ours is
//! the record framing: header checks, nonce and additional data, TLS 1.3's
//! inner content type and padding, sequence numbers and their limits. This
//! is what lets a record be decrypted where it was received and its
//! plaintext be written to the backend from there (rustls 0.23 copies every
//! record's plaintext into a `Vec` of its own, buffered or unbuffered API).

use std::ops::Range;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
use rustls::{AlertDescription, ConnectionTrafficSecrets, PeerMisbehaved};

/// type (1), legacy_record_version (2), length (2).
pub const HEADER_LEN: usize = 5;
/// Most plaintext a record may carry (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const MAX_FRAGMENT: usize = 16 * 1024;
/// Longest record on the wire, header included (TLS 1.2 allows 2 KiB of expansion).
pub const MAX_RECORD: usize = HEADER_LEN + MAX_FRAGMENT + 2048;
/// Longest TLS 1.3 ciphertext (RFC 8446 §5.2).
const MAX_CIPHERTEXT_13: usize = MAX_FRAGMENT + 256;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM carries the nonce's last 8 bytes in each record (RFC 5288 §3).
const EXPLICIT_NONCE_LEN: usize = 8;
/// Room before and after a record's payload when it is sealed in place.
pub const MAX_SEAL_HEADER: usize = HEADER_LEN + EXPLICIT_NONCE_LEN;
pub const MAX_SEAL_TRAILER: usize = 1 + TAG_LEN;
/// rustls's own limits: refuse to wrap the sequence number at all costs.
const SEQ_HARD_LIMIT: u64 = 0xffff_ffff_ffff_fffe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// Record content types (RFC 8446 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    ChangeCipherSpec = 0x14,
    Alert = 0x15,
    Handshake = 0x16,
    ApplicationData = 0x17,
}

impl ContentType {
    fn from_byte(b: u8) -> Option<ContentType> {
        match b {
            0x14 => Some(ContentType::ChangeCipherSpec),
            0x15 => Some(ContentType::Alert),
            0x16 => Some(ContentType::Handshake),
            0x17 => Some(ContentType::ApplicationData),
            _ => None,
        }
    }

    fn rustls(self) -> rustls::ContentType {
        rustls::ContentType::from(self as u8)
    }
}

/// A fatal protocol error: the alert we owe the peer (none when the peer's
/// own fatal alert ended the connection) and the error to report.
#[derive(Debug, Clone)]
pub struct Fatal {
    pub alert: Option<AlertDescription>,
    pub error: rustls::Error,
}

impl Fatal {
    pub fn new(alert: AlertDescription, error: impl Into<rustls::Error>) -> Fatal {
        Fatal { alert: Some(alert), error: error.into() }
    }

    fn unexpected(got: ContentType, expect: ContentType) -> Fatal {
        Fatal::new(
            AlertDescription::UnexpectedMessage,
            rustls::Error::InappropriateMessage { expect_types: vec![expect.rustls()], got_type: got.rustls() },
        )
    }

    fn bad_mac() -> Fatal {
        Fatal::new(AlertDescription::BadRecordMac, rustls::Error::DecryptError)
    }

    fn overflow() -> Fatal {
        Fatal::new(AlertDescription::RecordOverflow, rustls::Error::PeerSentOversizedRecord)
    }
}

/// The total length of the record at the start of `buf`, once its header
/// is complete (`None` before). Refuses what no peer of ours may send: an
/// unknown content type, a non-TLS version byte, an oversized record.
pub fn record_len(version: Version, buf: &[u8]) -> Option<Result<usize, Fatal>> {
    let header = buf.get(..HEADER_LEN)?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let max = match version {
        Version::Tls12 => MAX_RECORD - HEADER_LEN,
        Version::Tls13 => MAX_CIPHERTEXT_13,
    };
    Some(if ContentType::from_byte(header[0]).is_none() {
        Err(Fatal::new(AlertDescription::DecodeError, rustls::InvalidMessage::InvalidContentType))
    } else if header[1] != 0x03 {
        Err(Fatal::new(AlertDescription::DecodeError, rustls::InvalidMessage::UnknownProtocolVersion))
    } else if len > max {
        Err(Fatal::overflow())
    } else {
        Ok(HEADER_LEN + len)
    })
}

/// One direction's key, IV and sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 AES-GCM: explicit nonces (RFC 5288); otherwise IV ⊕ sequence (RFC 7905, RFC 8446 §5.3).
    explicit_nonce: bool,
}

impl Keys {
    fn new(version: Version, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Keys, rustls::Error> {
        let (algorithm, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv, false),
            _ => return Err(rustls::Error::General("negotiated an AEAD this record layer does not know".into())),
        };
        let unbound = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| rustls::Error::General("traffic key refused by aws-lc-rs".into()))?;
        let iv: [u8; 12] =
            iv.as_ref().try_into().map_err(|_| rustls::Error::General("traffic IV is not 12 bytes".into()))?;
        Ok(Keys { key: LessSafeKey::new(unbound), iv, seq, explicit_nonce: gcm && version == Version::Tls12 })
    }

    /// IV ⊕ the sequence number as a 96-bit big-endian integer.
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// TLS 1.2's additional data: seq_num, type, version, plaintext length.
fn aad12(seq: u64, header: &[u8], plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&header[..3]);
    // plain_len <= MAX_FRAGMENT, checked by the callers.
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

/// What opening one record gave: its content type and where its plaintext
/// is, relative to the record's first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub content_type: ContentType,
    pub payload: Range<usize>,
}

/// The receiving direction.
pub struct Opener {
    version: Version,
    keys: Keys,
}

impl Opener {
    pub fn new(version: Version, secrets: (u64, ConnectionTrafficSecrets)) -> Result<Opener, rustls::Error> {
        Ok(Opener { version, keys: Keys::new(version, secrets)? })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The peer's KeyUpdate: new keys, sequence from 0 (RFC 8446 §4.6.3).
    pub fn rekey(&mut self, secrets: (u64, ConnectionTrafficSecrets)) -> Result<(), rustls::Error> {
        self.keys = Keys::new(self.version, secrets)?;
        Ok(())
    }

    /// Decrypts the whole record `record` (header included, as measured by
    /// [`record_len`]) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, Fatal> {
        if self.keys.seq >= SEQ_HARD_LIMIT {
            return Err(Fatal::new(AlertDescription::InternalError, rustls::Error::DecryptError));
        }
        let outer = record.first().copied().and_then(ContentType::from_byte).ok_or_else(Fatal::bad_mac)?;
        let opened = match self.version {
            Version::Tls13 => self.open13(outer, record)?,
            Version::Tls12 => self.open12(outer, record)?,
        };
        self.keys.seq += 1;
        Ok(opened)
    }

    fn open13(&mut self, outer: ContentType, record: &mut [u8]) -> Result<Opened, Fatal> {
        // After the handshake every record is protected and typed
        // application_data on the outside; a middlebox CCS is over too.
        if outer != ContentType::ApplicationData {
            return Err(Fatal::unexpected(outer, ContentType::ApplicationData));
        }
        if record.len() < HEADER_LEN + 1 + TAG_LEN {
            return Err(Fatal::bad_mac());
        }
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let nonce = Nonce::assume_unique_for_key(self.keys.nonce());
        let plain = self.keys.key.open_in_place(nonce, Aad::from(&header[..]), body).map_err(|_| Fatal::bad_mac())?;
        if plain.len() > MAX_FRAGMENT + 1 {
            return Err(Fatal::overflow());
        }
        // TLSInnerPlaintext: content, type, zeros (RFC 8446 §5.4).
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(Fatal::new(AlertDescription::UnexpectedMessage, PeerMisbehaved::IllegalTlsInnerPlaintext));
        };
        let inner = ContentType::from_byte(plain[end])
            .filter(|t| *t != ContentType::ChangeCipherSpec)
            .ok_or_else(|| Fatal::new(AlertDescription::UnexpectedMessage, PeerMisbehaved::IllegalTlsInnerPlaintext))?;
        Ok(Opened { content_type: inner, payload: HEADER_LEN..HEADER_LEN + end })
    }

    fn open12(&mut self, outer: ContentType, record: &mut [u8]) -> Result<Opened, Fatal> {
        if outer == ContentType::ChangeCipherSpec {
            return Err(Fatal::unexpected(outer, ContentType::ApplicationData));
        }
        let explicit = if self.keys.explicit_nonce { EXPLICIT_NONCE_LEN } else { 0 };
        if record.len() < HEADER_LEN + explicit + TAG_LEN {
            return Err(Fatal::bad_mac());
        }
        let plain_len = record.len() - HEADER_LEN - explicit - TAG_LEN;
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let nonce = if self.keys.explicit_nonce {
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&self.keys.iv[..4]);
            nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE_LEN]);
            nonce
        } else {
            self.keys.nonce()
        };
        let aad = aad12(self.keys.seq, header, plain_len.min(usize::from(u16::MAX)));
        let nonce = Nonce::assume_unique_for_key(nonce);
        self.keys.key.open_in_place(nonce, Aad::from(aad), &mut body[explicit..]).map_err(|_| Fatal::bad_mac())?;
        if plain_len > MAX_FRAGMENT {
            return Err(Fatal::overflow());
        }
        let start = HEADER_LEN + explicit;
        Ok(Opened { content_type: outer, payload: start..start + plain_len })
    }
}

/// A record sealed in place: its header goes before the payload, its
/// trailer (TLS 1.3's inner content type, then the tag) after.
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    header: [u8; MAX_SEAL_HEADER],
    header_len: u8,
    trailer: [u8; MAX_SEAL_TRAILER],
    trailer_len: u8,
}

impl Sealed {
    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    pub fn trailer(&self) -> &[u8] {
        &self.trailer[..usize::from(self.trailer_len)]
    }
}

/// The sending direction.
pub struct Sealer {
    version: Version,
    keys: Keys,
    /// Records this key may protect (the suite's confidentiality limit).
    limit: u64,
}

impl Sealer {
    pub fn new(
        version: Version,
        secrets: (u64, ConnectionTrafficSecrets),
        confidentiality_limit: u64,
    ) -> Result<Sealer, rustls::Error> {
        Ok(Sealer { version, keys: Keys::new(version, secrets)?, limit: confidentiality_limit.min(SEQ_HARD_LIMIT) })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Our KeyUpdate: new keys, sequence from 0.
    pub fn rekey(&mut self, secrets: (u64, ConnectionTrafficSecrets)) -> Result<(), rustls::Error> {
        self.keys = Keys::new(self.version, secrets)?;
        Ok(())
    }

    /// True when sealing `records` more would pass the key's limit: TLS 1.3
    /// must update its keys first, TLS 1.2 must close.
    pub fn near_limit(&self, records: u64) -> bool {
        self.keys.seq.saturating_add(records) > self.limit
    }

    /// Lowers the records each key may protect, so that tests reach the
    /// limit without sealing 2^24 records.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.min(SEQ_HARD_LIMIT);
    }

    /// Header bytes before each record's payload.
    pub fn header_len(&self) -> usize {
        if self.keys.explicit_nonce {
            HEADER_LEN + EXPLICIT_NONCE_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Encrypts `payload` (at most [`MAX_FRAGMENT`] bytes) where it is.
    pub fn seal_in_place(&mut self, content_type: ContentType, payload: &mut [u8]) -> Result<Sealed, rustls::Error> {
        if payload.len() > MAX_FRAGMENT || self.keys.seq >= SEQ_HARD_LIMIT {
            return Err(rustls::Error::EncryptError);
        }
        let nonce = self.keys.nonce();
        let mut sealed =
            Sealed { header: [0; MAX_SEAL_HEADER], header_len: 0, trailer: [0; MAX_SEAL_TRAILER], trailer_len: 0 };
        let fail = |_| rustls::Error::EncryptError;
        match self.version {
            Version::Tls13 => {
                // The outer type is application_data; the real one is
                // encrypted after the content (RFC 8446 §5.2). No padding.
                let len = (payload.len() + 1 + TAG_LEN) as u16;
                let header = [ContentType::ApplicationData as u8, 0x03, 0x03, (len >> 8) as u8, len as u8];
                sealed.header[..HEADER_LEN].copy_from_slice(&header);
                sealed.header_len = HEADER_LEN as u8;
                sealed.trailer_len = MAX_SEAL_TRAILER as u8;
                let (nonce, aad) = (Nonce::assume_unique_for_key(nonce), Aad::from(header));
                self.keys
                    .key
                    .seal_in_place_scatter(nonce, aad, payload, &[content_type as u8], &mut sealed.trailer)
                    .map_err(fail)?;
            }
            Version::Tls12 => {
                let explicit = if self.keys.explicit_nonce { EXPLICIT_NONCE_LEN } else { 0 };
                let len = (explicit + payload.len() + TAG_LEN) as u16;
                let header = [content_type as u8, 0x03, 0x03, (len >> 8) as u8, len as u8];
                sealed.header[..HEADER_LEN].copy_from_slice(&header);
                // RFC 5288 leaves the explicit part's construction to us:
                // like rustls, IV ⊕ sequence, sent in the clear.
                sealed.header[HEADER_LEN..HEADER_LEN + explicit].copy_from_slice(&nonce[4..4 + explicit]);
                sealed.header_len = (HEADER_LEN + explicit) as u8;
                let aad = aad12(self.keys.seq, &header, payload.len());
                let tag = self
                    .keys
                    .key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), payload)
                    .map_err(fail)?;
                sealed.trailer[..TAG_LEN].copy_from_slice(tag.as_ref());
                sealed.trailer_len = TAG_LEN as u8;
            }
        }
        self.keys.seq += 1;
        Ok(sealed)
    }

    /// Seals `plain` (any length; one record per [`MAX_FRAGMENT`]) onto the
    /// end of `out`, contiguous: for our own small messages (alerts,
    /// KeyUpdate, PDUs before the relay).
    pub fn seal_into(
        &mut self,
        content_type: ContentType,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        let header_len = self.header_len();
        for chunk in plain.chunks(MAX_FRAGMENT) {
            let start = out.len();
            out.resize(start + header_len, 0);
            out.extend_from_slice(chunk);
            let sealed = self.seal_in_place(content_type, &mut out[start + header_len..])?;
            out[start..start + header_len].copy_from_slice(sealed.header());
            out.extend_from_slice(sealed.trailer());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
