//! Sans-IO PDU framer for one direction of an established association.
//!
//! It watches the byte stream without holding it: fed chunks of any size, it
//! tracks PDU boundaries (6-byte header, then `length` body bytes), checks each
//! header, and keeps only the 4-byte bodies of the small control PDUs it must
//! understand (A-ABORT's source and reason). P-DATA bodies pass straight
//! through — only their PDV headers and command fragments are looked at, by
//! [`PdvWalker`] — so memory stays constant whatever a PDU claims.
//!
//! Events go to a [`Sink`] as they happen instead of into a vector the caller
//! drains: one read of tiny PDUs (13 bytes each for a 1-byte PDV) yields tens
//! of thousands of events, and a vector would keep that capacity for the
//! association's life (issue 11). The relay handles each event in place.

use super::dimse::{Command, PdvWalker};
use crate::dicom::pdu::{PduHeader, PduType, HEADER_LEN};

/// Bytes of a control PDU body kept for inspection (A-ASSOCIATE-RJ, A-RELEASE-*,
/// A-ABORT all have 4-byte bodies, PS3.8 §9.3.4–9.3.8).
const CONTROL_BODY: usize = 4;

/// Where the framer and the PDV walker put what they see, one item at a
/// time. `Vec` collects (tests, fuzzing); the relay acts on each item at once
/// so that nothing accumulates.
pub trait Sink<T> {
    fn put(&mut self, item: T);
}

impl<T> Sink<T> for Vec<T> {
    fn put(&mut self, item: T) {
        self.push(item);
    }
}

/// Passes the walker's commands on as [`FrameEvent::Command`].
struct Commands<'a, S: ?Sized>(&'a mut S);

impl<S: Sink<FrameEvent> + ?Sized> Sink<Command> for Commands<'_, S> {
    fn put(&mut self, command: Command) {
        self.0.put(FrameEvent::Command(command));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete PDU passed.
    Pdu { pdu_type: PduType, length: u32 },
    /// A complete A-ABORT passed, with its source and reason bytes.
    Abort { source: u8, reason: u8 },
    /// A complete DIMSE command set passed (inside P-DATA-TF).
    Command(Command),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown PDU type 0x{0:02X}")]
    UnknownType(u8),
    #[error("{pdu} of {length} bytes exceeds the limit of {limit} bytes")]
    TooLong { pdu: &'static str, length: u32, limit: u32 },
    #[error("{pdu} has a {length}-byte body, expected 4")]
    BadControlLength { pdu: &'static str, length: u32 },
    #[error("{0} is not allowed once the association is established")]
    Unexpected(&'static str),
}

#[derive(Debug)]
enum State {
    Header { bytes: [u8; HEADER_LEN], have: usize },
    Body { pdu_type: PduType, length: u32, remaining: u32, control: [u8; CONTROL_BODY], have: usize },
}

#[derive(Debug)]
pub struct Framer {
    state: State,
    max_pdu_length: u32,
    pdv: PdvWalker,
}

impl Framer {
    /// `max_pdu_length` bounds the declared length of P-DATA-TF PDUs (the
    /// variable field, as the Maximum Length sub-item counts it, PS3.8 D.1);
    /// control PDUs must have their fixed 4-byte bodies.
    pub fn new(max_pdu_length: u32) -> Framer {
        Framer { state: State::Header { bytes: [0; HEADER_LEN], have: 0 }, max_pdu_length, pdv: PdvWalker::default() }
    }

    /// True between PDUs: a PDU of our own (A-ABORT) can be sent here.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Consumes `data`. Returns how many bytes are valid to forward: all of
    /// them, or on error the bytes before the offending header (after which
    /// [`Framer::at_boundary`] tells whether the forwarded stream ended on a
    /// PDU boundary). Events for PDUs completed within `data` go to `events`
    /// in stream order.
    pub fn feed<S: Sink<FrameEvent> + ?Sized>(
        &mut self,
        data: &[u8],
        events: &mut S,
    ) -> Result<usize, (usize, FrameError)> {
        let mut pos = 0;
        while pos < data.len() {
            match &mut self.state {
                State::Header { bytes, have } => {
                    let take = (HEADER_LEN - *have).min(data.len() - pos);
                    bytes[*have..*have + take].copy_from_slice(&data[pos..pos + take]);
                    *have += take;
                    pos += take;
                    if *have < HEADER_LEN {
                        continue;
                    }
                    let header = PduHeader::parse(bytes);
                    let pdu_type = match self.check(header) {
                        Ok(t) => t,
                        Err(e) if pos >= HEADER_LEN => {
                            // The whole header is in this chunk: the bytes before
                            // it end on a boundary, and nothing of it is forwarded.
                            self.state = State::Header { bytes: [0; HEADER_LEN], have: 0 };
                            return Err((pos - HEADER_LEN, e));
                        }
                        // Part of the header went out with the previous chunk:
                        // the stream cannot end cleanly any more.
                        Err(e) => return Err((0, e)),
                    };
                    if header.length == 0 {
                        events.put(FrameEvent::Pdu { pdu_type, length: 0 });
                        self.state = State::Header { bytes: [0; HEADER_LEN], have: 0 };
                    } else {
                        self.state = State::Body {
                            pdu_type,
                            length: header.length,
                            remaining: header.length,
                            control: [0; CONTROL_BODY],
                            have: 0,
                        };
                    }
                }
                State::Body { pdu_type, length, remaining, control, have } => {
                    // `remaining` fits in usize on every supported target (>= 32 bits).
                    let take = (*remaining as usize).min(data.len() - pos);
                    if *pdu_type == PduType::PData {
                        self.pdv.feed(&data[pos..pos + take], &mut Commands(&mut *events));
                    } else {
                        let keep = take.min(CONTROL_BODY - *have);
                        control[*have..*have + keep].copy_from_slice(&data[pos..pos + keep]);
                        *have += keep;
                    }
                    pos += take;
                    // take <= remaining, so this cannot underflow.
                    *remaining -= take as u32;
                    if *remaining == 0 {
                        if *pdu_type == PduType::PData {
                            self.pdv.end_of_pdu();
                        }
                        events.put(FrameEvent::Pdu { pdu_type: *pdu_type, length: *length });
                        if *pdu_type == PduType::Abort {
                            events.put(FrameEvent::Abort { source: control[2], reason: control[3] });
                        }
                        self.state = State::Header { bytes: [0; HEADER_LEN], have: 0 };
                    }
                }
            }
        }
        Ok(pos)
    }

    /// Heap bytes this framer holds: the command set being collected (at
    /// most [`super::dimse::MAX_COMMAND`]).
    pub fn heap_bytes(&self) -> usize {
        self.pdv.heap_bytes()
    }

    fn check(&self, header: PduHeader) -> Result<PduType, FrameError> {
        let pdu_type = header.pdu_type().ok_or(FrameError::UnknownType(header.type_byte))?;
        match pdu_type {
            PduType::PData => {
                if header.length > self.max_pdu_length {
                    return Err(FrameError::TooLong {
                        pdu: pdu_type.name(),
                        length: header.length,
                        limit: self.max_pdu_length,
                    });
                }
            }
            PduType::ReleaseRq | PduType::ReleaseRp | PduType::Abort => {
                if header.length != CONTROL_BODY as u32 {
                    return Err(FrameError::BadControlLength { pdu: pdu_type.name(), length: header.length });
                }
            }
            PduType::AssociateRq | PduType::AssociateAc | PduType::AssociateRj => {
                return Err(FrameError::Unexpected(pdu_type.name()));
            }
        }
        Ok(pdu_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdata(body_len: usize) -> Vec<u8> {
        let mut v = vec![0x04, 0];
        v.extend_from_slice(&(body_len as u32).to_be_bytes());
        v.extend((0..body_len).map(|i| i as u8));
        v
    }

    const RELEASE_RQ: [u8; 10] = [0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    const ABORT: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6];

    fn stream() -> Vec<u8> {
        let mut s = pdata(300);
        s.extend(pdata(1));
        s.extend(RELEASE_RQ);
        s.extend(pdata(70_000));
        s.extend(ABORT);
        s
    }

    fn run(data: &[u8], chunks: &[usize]) -> (Vec<FrameEvent>, usize) {
        let mut f = Framer::new(u32::MAX);
        let mut events = Vec::new();
        let mut pos = 0;
        let mut forwarded = 0;
        let mut i = 0;
        while pos < data.len() {
            let n = chunks[i % chunks.len()].max(1).min(data.len() - pos);
            forwarded += f.feed(&data[pos..pos + n], &mut events).expect("valid stream");
            pos += n;
            i += 1;
        }
        assert!(f.at_boundary());
        (events, forwarded)
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let data = stream();
        let (reference, n) = run(&data, &[data.len()]);
        assert_eq!(n, data.len());
        assert_eq!(reference.len(), 6);
        assert_eq!(reference[5], FrameEvent::Abort { source: 2, reason: 6 });
        for chunks in [&[1][..], &[2, 3, 5], &[6], &[7, 4096], &[16384, 1, 9]] {
            assert_eq!(run(&data, chunks).0, reference, "chunks {chunks:?}");
        }
    }

    #[test]
    fn unknown_type_is_refused_after_the_valid_prefix() {
        let mut data = pdata(10);
        data.extend([0x16, 3, 1, 0, 5]);
        data.push(0);
        let mut f = Framer::new(u32::MAX);
        let err = f.feed(&data, &mut Vec::new()).unwrap_err();
        assert_eq!(err, (16, FrameError::UnknownType(0x16)));
        assert!(f.at_boundary());
        // Split across chunks: part of the bad header was already forwarded.
        let mut f = Framer::new(u32::MAX);
        assert_eq!(f.feed(&[0x16, 3], &mut Vec::new()), Ok(2));
        assert_eq!(f.feed(&[1, 0, 5, 0], &mut Vec::new()), Err((0, FrameError::UnknownType(0x16))));
        assert!(!f.at_boundary());
    }

    #[test]
    fn oversized_and_misplaced_pdus_are_refused() {
        let mut f = Framer::new(1000);
        assert!(matches!(f.feed(&pdata(1001), &mut Vec::new()), Err((0, FrameError::TooLong { .. }))));
        let mut f = Framer::new(1000);
        let rq = [0x01, 0, 0, 0, 0, 10];
        assert!(matches!(f.feed(&rq, &mut Vec::new()), Err((0, FrameError::Unexpected(_)))));
        let mut f = Framer::new(1000);
        let long_abort = [0x07, 0, 0, 0, 0, 5];
        assert!(matches!(f.feed(&long_abort, &mut Vec::new()), Err((0, FrameError::BadControlLength { .. }))));
    }

    #[test]
    fn boundary_tracking() {
        let mut f = Framer::new(u32::MAX);
        let data = pdata(10);
        f.feed(&data[..3], &mut Vec::new()).unwrap();
        assert!(!f.at_boundary());
        f.feed(&data[3..], &mut Vec::new()).unwrap();
        assert!(f.at_boundary());
    }
}
