//! Application Entity titles, parsed strictly (PS3.5 §6.2, VR AE).
//!
//! One rule set for the configuration and the wire: after removing leading and
//! trailing spaces (0x20, and nothing else), 1–16 bytes in 0x20–0x7E, no
//! backslash. dicom-ul's decoding is laxer (it trims TAB and keeps NUL), so
//! policy decisions use only this type, built from the raw 16-byte fields.

use std::fmt;

/// A validated AE title: compare exactly (case sensitive), already trimmed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AeTitle(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    #[error("is empty (an AE title has 1 to 16 characters)")]
    Empty,
    #[error("is longer than 16 characters")]
    TooLong,
    #[error("contains a backslash, which an AE title may not contain")]
    Backslash,
    #[error("contains the byte 0x{0:02X}: only printable ASCII (0x20-0x7E) is allowed")]
    InvalidByte(u8),
}

impl AeTitle {
    /// Maximum length of an AE title in bytes (PS3.5 Table 6.2-1).
    pub const MAX_LEN: usize = 16;

    /// Parses a title as written by an admin (configuration, command line).
    pub fn parse(text: &str) -> Result<AeTitle, AeTitleError> {
        Self::from_bytes(text.as_bytes())
    }

    /// Parses the raw 16-byte field of an A-ASSOCIATE-RQ/AC (PS3.8 §9.3.2).
    pub fn from_wire(field: &[u8; 16]) -> Result<AeTitle, AeTitleError> {
        Self::from_bytes(field)
    }

    fn from_bytes(bytes: &[u8]) -> Result<AeTitle, AeTitleError> {
        let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(start, |i| i + 1);
        let trimmed = &bytes[start..end];
        if let Some(&b) = trimmed.iter().find(|&&b| !(0x20..=0x7E).contains(&b)) {
            return Err(AeTitleError::InvalidByte(b));
        }
        if trimmed.contains(&b'\\') {
            return Err(AeTitleError::Backslash);
        }
        if trimmed.is_empty() {
            return Err(AeTitleError::Empty);
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(AeTitleError::TooLong);
        }
        // Every byte is printable ASCII, so this is valid UTF-8.
        Ok(AeTitle(trimmed.iter().map(|&b| char::from(b)).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 16-byte wire form: the title padded with trailing spaces.
    pub fn to_wire(&self) -> [u8; 16] {
        let mut field = [b' '; 16];
        field[..self.0.len()].copy_from_slice(self.0.as_bytes());
        field
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Renders a raw AE field for logs without trusting it: printable ASCII kept,
/// anything else escaped, so a hostile title cannot forge log lines.
pub fn display_raw(field: &[u8]) -> String {
    let mut out = String::with_capacity(field.len());
    for &b in field {
        if (0x20..=0x7E).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out.trim_end_matches(' ').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(s: &[u8]) -> [u8; 16] {
        let mut f = [b' '; 16];
        f[..s.len()].copy_from_slice(s);
        f
    }

    #[test]
    fn trims_spaces_only() {
        assert_eq!(AeTitle::from_wire(&wire(b"  BUTTERFLY")).unwrap().as_str(), "BUTTERFLY");
        assert_eq!(AeTitle::parse(" PACS ").unwrap().as_str(), "PACS");
        assert_eq!(AeTitle::parse("MY AE").unwrap().as_str(), "MY AE");
    }

    #[test]
    fn rejects_tab_nul_backslash_and_blank() {
        assert_eq!(AeTitle::from_wire(&wire(b"\tBUTTERFLY")), Err(AeTitleError::InvalidByte(0x09)));
        let mut nul = [0u8; 16];
        nul[..4].copy_from_slice(b"PACS");
        assert_eq!(AeTitle::from_wire(&nul), Err(AeTitleError::InvalidByte(0)));
        assert_eq!(AeTitle::from_wire(&wire(b"A\\B")), Err(AeTitleError::Backslash));
        assert_eq!(AeTitle::from_wire(&[b' '; 16]), Err(AeTitleError::Empty));
        assert_eq!(AeTitle::parse("BUTTERFLY CLOUD ONE"), Err(AeTitleError::TooLong));
        assert_eq!(AeTitle::from_wire(&wire(&[0xC3, 0xA9])), Err(AeTitleError::InvalidByte(0xC3)));
    }

    #[test]
    fn case_sensitive_and_round_trips() {
        let a = AeTitle::parse("Pacs").unwrap();
        assert_ne!(a, AeTitle::parse("PACS").unwrap());
        assert_eq!(AeTitle::from_wire(&a.to_wire()).unwrap(), a);
        assert_eq!(AeTitle::parse("0123456789ABCDEF").unwrap().to_wire(), *b"0123456789ABCDEF");
    }

    #[test]
    fn raw_display_escapes() {
        assert_eq!(display_raw(b"A\tB\\C   "), "A\\x09B\\x5CC");
    }
}
