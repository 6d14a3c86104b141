//! The one DIMSE command-set reader (PS3.7 §6.3, §9.3, §10.3) and the one
//! status table (PS3.7 Annex C), used by the relay's PDV walker and by the
//! echo SCU.
//!
//! A command set is always Implicit VR Little Endian (PS3.7 §6.3.1): each
//! element is group (2), element (2), value length (4), value, all little
//! endian, and every element is in group 0000. The reader walks it without
//! allocating; what it returns borrows from the bytes or is `Copy`.
//!
//! The rules, the same for both users:
//! - an element in another group, an element cut short (header or value)
//!   and a value length past the end make the whole set unreadable;
//! - a US field this reads (Command Field, Message IDs, Status) must be
//!   exactly 2 bytes;
//! - an odd value length breaks PS3.5 §7.1.1 but leaves the walk well
//!   defined, so it is accepted (a sloppy peer's UID);
//! - the Command Field is required; everything else is optional here (which
//!   fields a message needs is its reader's business).

use std::fmt;

/// Element numbers in group 0000 (PS3.7 Annex E).
pub mod element {
    pub const COMMAND_GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
}

/// Command Field values used by name (PS3.7 Table E.1-1).
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows (PS3.7 Table E.1-1).
pub const NO_DATA_SET: u16 = 0x0101;

/// Why a command set is unreadable; `offset` is where the element starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandSetError {
    #[error("element at byte {offset} is cut short")]
    Truncated { offset: usize },
    #[error("element at byte {offset} claims {length} bytes, past the end of the command set")]
    LengthPastEnd { offset: usize, length: u32 },
    #[error("element ({group:04X},{element:04X}) at byte {offset} is not in the command group 0000")]
    NotCommandGroup { offset: usize, group: u16, element: u16 },
    #[error("element (0000,{element:04X}) is {length} bytes, not the 2 of a US value")]
    BadUsLength { element: u16, length: u32 },
    #[error("no Command Field (0000,0100)")]
    NoCommandField,
}

/// The fields the gateway acts on: `Copy`, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub status: Option<u16>,
}

impl Fields {
    /// The operation's name, e.g. `C-STORE` for both C-STORE-RQ and -RSP.
    pub fn operation(&self) -> &'static str {
        operation_name(self.command_field)
    }

    /// Responses have bit 15 of the command field set (PS3.7 §9.3, §10.3).
    pub fn is_response(&self) -> bool {
        self.command_field & 0x8000 != 0
    }

    pub fn status_class(&self) -> Option<StatusClass> {
        self.status.map(StatusClass::of)
    }
}

/// A read command set: its [`Fields`] and the Affected SOP Class UID as
/// sent, without the NUL padding (borrowed from the bytes read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSet<'a> {
    pub fields: Fields,
    pub affected_sop_class: Option<&'a [u8]>,
}

/// Reads a whole command set (see the module's rules).
pub fn parse(bytes: &[u8]) -> Result<CommandSet<'_>, CommandSetError> {
    let mut fields = Fields::default();
    let mut have_field = false;
    let mut affected_sop_class = None;
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let header: &[u8; 8] =
            rest.get(..8).and_then(|h| h.try_into().ok()).ok_or(CommandSetError::Truncated { offset })?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if group != 0x0000 {
            return Err(CommandSetError::NotCommandGroup { offset, group, element });
        }
        let value = usize::try_from(length)
            .ok()
            .and_then(|len| rest.get(8..8usize.checked_add(len)?))
            .ok_or(CommandSetError::LengthPastEnd { offset, length })?;
        let us = || match value {
            [lo, hi] => Ok(Some(u16::from_le_bytes([*lo, *hi]))),
            _ => Err(CommandSetError::BadUsLength { element, length }),
        };
        match element {
            element::COMMAND_FIELD => {
                fields.command_field = us()?.unwrap_or_default();
                have_field = true;
            }
            element::MESSAGE_ID => fields.message_id = us()?,
            element::MESSAGE_ID_BEING_RESPONDED_TO => fields.message_id_being_responded_to = us()?,
            element::STATUS => fields.status = us()?,
            element::AFFECTED_SOP_CLASS_UID => {
                affected_sop_class = Some(value.strip_suffix(&[0]).unwrap_or(value));
            }
            _ => {}
        }
        offset += 8 + value.len();
    }
    if !have_field {
        return Err(CommandSetError::NoCommandField);
    }
    Ok(CommandSet { fields, affected_sop_class })
}

/// Appends one Implicit VR LE group-0000 element (for writing command sets).
pub fn push_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    // Command set values are a few dozen bytes; the cast cannot truncate.
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// The operation's name for a Command Field, request or response alike.
pub fn operation_name(command_field: u16) -> &'static str {
    match command_field & 0x7FFF {
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

/// Status classes of PS3.7 Annex C (also the metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusClass {
    Success,
    Warning,
    Failure,
    Pending,
    Cancel,
}

/// The status table: (first, last, class, meaning). First match wins; a
/// status in no row is a failure of unknown meaning (PS3.7 C.1.4: anything
/// not success, warning, pending or cancel is a failure).
const STATUS_TABLE: &[(u16, u16, StatusClass, &str)] = {
    use StatusClass::*;
    &[
        (0x0000, 0x0000, Success, ""),
        (0x0001, 0x0001, Warning, "requested optional attributes are not supported"),
        (0x0107, 0x0107, Warning, "attribute list error"),
        (0x0116, 0x0116, Warning, "attribute value out of range"),
        (0xB000, 0xBFFF, Warning, ""),
        (0xFE00, 0xFE00, Cancel, ""),
        (0xFF00, 0xFF01, Pending, ""),
        (0x0105, 0x0105, Failure, "no such attribute"),
        (0x0106, 0x0106, Failure, "invalid attribute value"),
        (0x0110, 0x0110, Failure, "processing failure"),
        (0x0111, 0x0111, Failure, "duplicate SOP instance"),
        (0x0112, 0x0112, Failure, "no such SOP instance"),
        (0x0117, 0x0117, Failure, "invalid object instance"),
        (0x0118, 0x0118, Failure, "no such SOP class"),
        (0x0119, 0x0119, Failure, "class-instance conflict"),
        (0x0120, 0x0120, Failure, "missing attribute"),
        (0x0121, 0x0121, Failure, "missing attribute value"),
        (0x0122, 0x0122, Failure, "SOP class not supported"),
        (0x0124, 0x0124, Failure, "not authorized"),
        (0x0210, 0x0210, Failure, "duplicate invocation"),
        (0x0211, 0x0211, Failure, "unrecognized operation"),
        (0x0212, 0x0212, Failure, "mistyped argument"),
        (0x0213, 0x0213, Failure, "resource limitation"),
        (0xA700, 0xA7FF, Failure, "out of resources"),
        (0xA900, 0xA9FF, Failure, "data set does not match SOP class"),
        (0xC000, 0xCFFF, Failure, "cannot understand"),
    ]
};

fn status_row(status: u16) -> Option<(StatusClass, &'static str)> {
    STATUS_TABLE.iter().find(|(first, last, ..)| (*first..=*last).contains(&status)).map(|(_, _, c, m)| (*c, *m))
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        status_row(status).map_or(StatusClass::Failure, |(class, _)| class)
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

/// A status in words, e.g. `0x0110 (failure: processing failure)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        match status_row(status) {
            Some((class, "")) => write!(f, "0x{status:04X} ({})", class.as_str()),
            Some((class, meaning)) => write!(f, "0x{status:04X} ({}: {meaning})", class.as_str()),
            None => write!(f, "0x{status:04X} (failure (unknown status))"),
        }
    }
}

#[cfg(test)]
#[path = "command_set_tests.rs"]
pub(crate) mod tests;
