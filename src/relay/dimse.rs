//! DIMSE awareness without touching datasets: a streaming walker over the
//! PDV items of P-DATA-TF bodies (PS3.8 §9.3.5.1, Annex E) that collects only
//! command fragments (message control header bit 0) and reads a few fields of
//! each complete command set.
//!
//! Command sets are always Implicit VR Little Endian (PS3.7 §6.3.1). The
//! collected bytes are bounded: a command set larger than [`MAX_COMMAND`]
//! is skipped, not buffered. Dataset fragments are skipped by arithmetic.

/// Real command sets are a few hundred bytes; 64 KiB leaves room for long
/// UIDs and private elements while bounding memory per direction.
pub const MAX_COMMAND: usize = 64 * 1024;

const TAG_AFFECTED_SOP_CLASS: u32 = 0x0000_0002;
const TAG_COMMAND_FIELD: u32 = 0x0000_0100;
const TAG_MESSAGE_ID: u32 = 0x0000_0110;
const TAG_MESSAGE_ID_RESPONDED: u32 = 0x0000_0120;
const TAG_STATUS: u32 = 0x0000_0900;

/// What the gateway reads of one command set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub responded_id: Option<u16>,
    pub status: Option<u16>,
    pub affected_sop_class: Option<String>,
}

impl Command {
    /// The operation's name, e.g. `C-STORE` for both C-STORE-RQ and -RSP.
    pub fn operation(&self) -> &'static str {
        match self.command_field & 0x7FFF {
            0x0001 => "C-STORE",
            0x0010 => "C-GET",
            0x0020 => "C-FIND",
            0x0021 => "C-MOVE",
            0x0030 => "C-ECHO",
            0x0FFF => "C-CANCEL",
            0x0100 => "N-EVENT-REPORT",
            0x0110 => "N-GET",
            0x0120 => "N-SET",
            0x0130 => "N-ACTION",
            0x0140 => "N-CREATE",
            0x0150 => "N-DELETE",
            _ => "other",
        }
    }

    /// Responses have bit 15 of the command field set (PS3.7 §9.3, §10.3).
    pub fn is_response(&self) -> bool {
        self.command_field & 0x8000 != 0
    }

    pub fn status_class(&self) -> Option<StatusClass> {
        self.status.map(StatusClass::of)
    }
}

/// Status classes of PS3.7 Annex C, as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusClass {
    Success,
    Warning,
    Failure,
    Pending,
    Cancel,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            0x0000 => StatusClass::Success,
            0xFF00 | 0xFF01 => StatusClass::Pending,
            0xFE00 => StatusClass::Cancel,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
            _ => StatusClass::Failure,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "success",
            StatusClass::Warning => "warning",
            StatusClass::Failure => "failure",
            StatusClass::Pending => "pending",
            StatusClass::Cancel => "cancel",
        }
    }
}

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
    /// Feeds P-DATA body bytes; complete commands are appended to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Command>) {
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

    fn finish_if_empty(&mut self, out: &mut Vec<Command>) {
        if let State::Fragment { remaining: 0, command, last } = self.state {
            if command && last {
                if !self.overflow {
                    if let Some(c) = parse_command(&self.command) {
                        out.push(c);
                    }
                }
                self.command.clear();
                self.overflow = false;
            }
            self.state = State::Header { bytes: [0; 6], have: 0 };
        }
    }

    /// Called at the end of each P-DATA-TF PDU.
    pub fn end_of_pdu(&mut self) {
        if !matches!(self.state, State::Header { have: 0, .. }) {
            // A PDV claimed to run past its PDU: broken framing; the partial
            // command is dropped.
            self.command.clear();
            self.overflow = false;
        }
        self.state = State::Header { bytes: [0; 6], have: 0 };
        self.broken = false;
    }
}

/// Reads the fields we count from an Implicit VR LE command set. Unknown
/// elements are skipped; a truncated element ends the walk.
pub fn parse_command(mut bytes: &[u8]) -> Option<Command> {
    let mut cmd = Command::default();
    let mut have_field = false;
    while bytes.len() >= 8 {
        let group = u16::from_le_bytes([bytes[0], bytes[1]]);
        let element = u16::from_le_bytes([bytes[2], bytes[3]]);
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let value = bytes.get(8..8usize.checked_add(len)?)?;
        let tag = (u32::from(group) << 16) | u32::from(element);
        let us = || (value.len() == 2).then(|| u16::from_le_bytes([value[0], value[1]]));
        match tag {
            TAG_COMMAND_FIELD => {
                cmd.command_field = us()?;
                have_field = true;
            }
            TAG_MESSAGE_ID => cmd.message_id = us(),
            TAG_MESSAGE_ID_RESPONDED => cmd.responded_id = us(),
            TAG_STATUS => cmd.status = us(),
            TAG_AFFECTED_SOP_CLASS => {
                let text = value.strip_suffix(&[0]).unwrap_or(value);
                cmd.affected_sop_class = Some(crate::dicom::ae::display_raw(text));
            }
            _ => {}
        }
        bytes = &bytes[8 + len..];
    }
    have_field.then_some(cmd)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn element(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
        out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        out.extend_from_slice(&(tag as u16).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }

    /// A C-STORE-RSP command set with the given status.
    pub(crate) fn store_rsp(status: u16) -> Vec<u8> {
        let mut body = Vec::new();
        element(&mut body, TAG_AFFECTED_SOP_CLASS, b"1.2.840.10008.5.1.4.1.1.7\0");
        element(&mut body, TAG_COMMAND_FIELD, &0x8001u16.to_le_bytes());
        element(&mut body, TAG_MESSAGE_ID_RESPONDED, &7u16.to_le_bytes());
        element(&mut body, 0x0000_0800, &0x0101u16.to_le_bytes());
        element(&mut body, TAG_STATUS, &status.to_le_bytes());
        let mut set = Vec::new();
        element(&mut set, 0x0000_0000, &(body.len() as u32).to_le_bytes());
        set.extend(body);
        set
    }

    /// PDV items for `data`, split into fragments of `frag` bytes.
    pub(crate) fn pdvs(data: &[u8], command: bool, frag: usize) -> Vec<u8> {
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
            assert_eq!(out[0].responded_id, Some(7));
            assert_eq!(out[0].affected_sop_class.as_deref(), Some("1.2.840.10008.5.1.4.1.1.7"));
            assert_eq!(out[1].status_class(), Some(StatusClass::Success));
        }
    }

    #[test]
    fn status_classes_follow_ps3_7_annex_c() {
        assert_eq!(StatusClass::of(0x0000), StatusClass::Success);
        assert_eq!(StatusClass::of(0xFF00), StatusClass::Pending);
        assert_eq!(StatusClass::of(0xFF01), StatusClass::Pending);
        assert_eq!(StatusClass::of(0xFE00), StatusClass::Cancel);
        assert_eq!(StatusClass::of(0xB000), StatusClass::Warning);
        assert_eq!(StatusClass::of(0x0107), StatusClass::Warning);
        assert_eq!(StatusClass::of(0xA700), StatusClass::Failure);
        assert_eq!(StatusClass::of(0xC000), StatusClass::Failure);
        assert_eq!(StatusClass::of(0x0122), StatusClass::Failure);
    }

    #[test]
    fn oversized_command_is_skipped_not_buffered() {
        let mut big = store_rsp(0);
        element(&mut big, 0x0000_1030, &vec![b'A'; MAX_COMMAND]);
        let mut body = pdvs(&big, true, 16000);
        body.extend(pdvs(&store_rsp(0), true, 100));
        let mut w = PdvWalker::default();
        let mut out = Vec::new();
        w.feed(&body, &mut out);
        assert_eq!(out.len(), 1);
        assert!(w.command.capacity() <= MAX_COMMAND + 16000);
    }

    #[test]
    fn garbage_never_panics() {
        let mut w = PdvWalker::default();
        let mut out = Vec::new();
        w.feed(&[0, 0, 0, 1, 1, 3, 0xFF, 0xFF], &mut out);
        w.end_of_pdu();
        w.feed(&[0, 0, 0, 3, 1, 3, 0xFF], &mut out);
        w.end_of_pdu();
        assert!(parse_command(&[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
    }
}
