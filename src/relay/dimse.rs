//! DIMSE awareness without touching datasets: a streaming walker over the
//! PDV items of P-DATA-TF bodies (PS3.8 §9.3.5.1, Annex E) that collects only
//! command fragments (message control header bit 0) and reads a few fields of
//! each complete command set with [`crate::dicom::command_set::parse`].
//!
//! The collected bytes are bounded: a command set larger than [`MAX_COMMAND`]
//! is skipped, not buffered. Dataset fragments are skipped by arithmetic.

/// Real command sets are a few hundred bytes; 64 KiB leaves room for long
/// UIDs and private elements while bounding memory per direction.
pub const MAX_COMMAND: usize = 64 * 1024;

/// Capacity the command buffer keeps between command sets: a typical one
/// fits, so the common case does not reallocate.
const KEPT_COMMAND_CAPACITY: usize = 1024;

use super::framer::Sink;
use crate::dicom::command_set;

/// What the relay counts of a command set (`Copy`: nothing is allocated
/// per command), and its status classes; both from the one reader in
/// [`crate::dicom::command_set`].
pub use crate::dicom::command_set::{Fields as Command, StatusClass};

#[derive(Debug)]
enum State {
    /// Reading the 6-byte PDV item header: length (4), context id (1), control (1).
    Header { bytes: [u8; 6], have: usize },
    /// Inside a PDV's fragment.
    Fragment { remaining: u32, command: bool, last: bool },
}

/// Walks the PDV items of one direction's P-DATA bodies, fed in arbitrary
/// chunks. PDV items never span P-DATA PDUs (PS3.8 §9.3.5), so the framer
/// calls [`PdvWalker::end_of_pdu`] at each PDU end to resynchronise.
#[derive(Debug)]
pub struct PdvWalker {
    state: State,
    command: Vec<u8>,
    /// The current command set outgrew [`MAX_COMMAND`]: skip it.
    overflow: bool,
    /// The PDU's PDV structure is broken; ignore the rest of this PDU.
    broken: bool,
}

impl Default for PdvWalker {
    fn default() -> Self {
        PdvWalker {
            state: State::Header { bytes: [0; 6], have: 0 },
            command: Vec::new(),
            overflow: false,
            broken: false,
        }
    }
}

impl PdvWalker {
    /// Feeds P-DATA body bytes; complete commands go to `out`.
    pub fn feed<S: Sink<Command> + ?Sized>(&mut self, mut data: &[u8], out: &mut S) {
        while !data.is_empty() && !self.broken {
            match &mut self.state {
                State::Header { bytes, have } => {
                    let take = (6 - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == 6 {
                        let item_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        let control = bytes[5];
                        if item_len < 2 {
                            self.broken = true;
                            return;
                        }
                        self.state = State::Fragment {
                            remaining: item_len - 2,
                            command: control & 0x01 != 0,
                            last: control & 0x02 != 0,
                        };
                        self.finish_if_empty(out);
                    }
                }
                State::Fragment { remaining, command, .. } => {
                    // `remaining` fits in usize on every supported target.
                    let take = (*remaining as usize).min(data.len());
                    if *command && !self.overflow {
                        if self.command.len() + take > MAX_COMMAND {
                            self.overflow = true;
                            self.command = Vec::new();
                        } else {
                            // Grow by doubling, but never past MAX_COMMAND:
                            // the bound is on capacity, not just length.
                            let need = self.command.len() + take;
                            if need > self.command.capacity() {
                                let target = (self.command.capacity() * 2).clamp(need, MAX_COMMAND);
                                self.command.reserve_exact(target - self.command.len());
                            }
                            self.command.extend_from_slice(&data[..take]);
                        }
                    }
                    *remaining -= take as u32;
                    data = &data[take..];
                    self.finish_if_empty(out);
                }
            }
        }
    }

    fn finish_if_empty<S: Sink<Command> + ?Sized>(&mut self, out: &mut S) {
        if let State::Fragment { remaining: 0, command, last } = self.state {
            if command && last {
                if !self.overflow {
                    // An unreadable command set is relayed, just not counted.
                    if let Ok(set) = command_set::parse(&self.command) {
                        out.put(set.fields);
                    }
                }
                self.forget_command();
            }
            self.state = State::Header { bytes: [0; 6], have: 0 };
        }
    }

    /// Drops the collected command set. Its buffer keeps a small capacity
    /// for the next one, never the peak: one large command set must not
    /// pin [`MAX_COMMAND`] bytes for the rest of the association.
    fn forget_command(&mut self) {
        self.command.clear();
        self.command.shrink_to(KEPT_COMMAND_CAPACITY);
        self.overflow = false;
    }

    /// Heap bytes held: the command set buffer's capacity.
    pub fn heap_bytes(&self) -> usize {
        self.command.capacity()
    }

    /// Called at the end of each P-DATA-TF PDU.
    pub fn end_of_pdu(&mut self) {
        if !matches!(self.state, State::Header { have: 0, .. }) {
            // A PDV claimed to run past its PDU: broken framing; the partial
            // command is dropped.
            self.forget_command();
        }
        self.state = State::Header { bytes: [0; 6], have: 0 };
        self.broken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::command_set::push_element;
    use crate::dicom::command_set::tests::store_rsp;

    /// PDV items for `data`, split into fragments of `frag` bytes.
    fn pdvs(data: &[u8], command: bool, frag: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = data.chunks(frag.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&(c.len() as u32 + 2).to_be_bytes());
            out.push(1);
            let last = i + 1 == chunks.len();
            out.push(u8::from(command) | (u8::from(last) << 1));
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn reads_a_fragmented_command_and_skips_datasets() {
        let mut body = pdvs(&store_rsp(0xA700), true, 10);
        body.extend(pdvs(&[0xAB; 5000], false, 4000));
        body.extend(pdvs(&store_rsp(0x0000), true, 1000));
        for chunk in [1, 3, 7, 64, body.len()] {
            let mut w = PdvWalker::default();
            let mut out = Vec::new();
            for c in body.chunks(chunk) {
                w.feed(c, &mut out);
            }
            assert_eq!(out.len(), 2, "chunk {chunk}");
            assert_eq!(out[0].operation(), "C-STORE");
            assert!(out[0].is_response());
            assert_eq!(out[0].status_class(), Some(StatusClass::Failure));
            assert_eq!(out[0].message_id_being_responded_to, Some(7));
            assert_eq!(out[1].status_class(), Some(StatusClass::Success));
        }
    }

    #[test]
    fn oversized_command_is_skipped_not_buffered() {
        let mut big = store_rsp(0);
        push_element(&mut big, 0x1030, &vec![b'A'; MAX_COMMAND]);
        let mut body = pdvs(&big, true, 16000);
        body.extend(pdvs(&store_rsp(0), true, 100));
        let mut w = PdvWalker::default();
        let mut out = Vec::new();
        w.feed(&body, &mut out);
        assert_eq!(out.len(), 1);
        assert!(w.command.capacity() <= MAX_COMMAND + 16000);
    }

    #[test]
    fn unreadable_command_sets_are_not_counted() {
        let mut w = PdvWalker::default();
        let mut out = Vec::new();
        // Header-only garbage, then a length past the end.
        w.feed(&[0, 0, 0, 1, 1, 3, 0xFF, 0xFF], &mut out);
        w.end_of_pdu();
        w.feed(&[0, 0, 0, 3, 1, 3, 0xFF], &mut out);
        w.end_of_pdu();
        // A command set with a dataset element in it.
        let mut mixed = store_rsp(0);
        mixed.extend_from_slice(&[0x08, 0, 0x16, 0, 2, 0, 0, 0, b'1', 0]);
        w.feed(&pdvs(&mixed, true, 7), &mut out);
        w.end_of_pdu();
        assert!(out.is_empty(), "{out:?}");
        w.feed(&pdvs(&store_rsp(0), true, 7), &mut out);
        assert_eq!(out.len(), 1);
    }
}
