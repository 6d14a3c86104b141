//! A tiny DICOM Part-10 writer for test data (Secondary Capture images with
//! pseudo-random pixels, Explicit VR Little Endian) and a reader that splits
//! a file into its File Meta Information and its data set bytes, so received
//! files can be compared with sent ones byte for byte.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A fresh UID under the UUID-derived root 2.25 (PS3.5 §B.2).
pub fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let value = (nanos << 24) ^ (u128::from(std::process::id()) << 8) ^ u128::from(n);
    format!("2.25.{}", value % 10u128.pow(37))
}

/// VRs with the 4-byte length form in Explicit VR (PS3.5 §7.1.2).
fn long_form(vr: &[u8; 2]) -> bool {
    matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN")
}

fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if long_form(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&v);
}

/// What goes into one generated image.
#[derive(Debug, Clone)]
pub struct ScImage {
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub patient_name: String,
    pub patient_id: String,
    pub instance_number: u32,
    pub rows: u16,
    pub columns: u16,
    pub seed: u64,
}

impl ScImage {
    /// Image `n` of a series: 64×96 8-bit pixels (6 KiB) from `seed`.
    pub fn numbered(study_uid: &str, series_uid: &str, n: u32) -> ScImage {
        ScImage {
            sop_instance_uid: new_uid(),
            study_uid: study_uid.to_owned(),
            series_uid: series_uid.to_owned(),
            patient_name: "Gateway^Test".into(),
            patient_id: "DG-0001".into(),
            instance_number: n,
            rows: 64,
            columns: 96,
            seed: 0x9E37_79B9_7F4A_7C15 ^ u64::from(n),
        }
    }

    fn pixels(&self) -> Vec<u8> {
        let mut x = self.seed | 1;
        (0..usize::from(self.rows) * usize::from(self.columns))
            .map(|_| {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    /// The data set (no meta), Explicit VR Little Endian, tags ascending.
    pub fn dataset(&self) -> Vec<u8> {
        let mut d = Vec::new();
        element(&mut d, 0x0008, 0x0016, b"UI", SECONDARY_CAPTURE.as_bytes());
        element(&mut d, 0x0008, 0x0018, b"UI", self.sop_instance_uid.as_bytes());
        element(&mut d, 0x0008, 0x0020, b"DA", b"20240102");
        element(&mut d, 0x0008, 0x0030, b"TM", b"101500");
        element(&mut d, 0x0008, 0x0050, b"SH", b"ACC-DG-1");
        element(&mut d, 0x0008, 0x0060, b"CS", b"OT");
        element(&mut d, 0x0008, 0x0064, b"CS", b"WSD");
        element(&mut d, 0x0008, 0x0090, b"PN", b"");
        element(&mut d, 0x0010, 0x0010, b"PN", self.patient_name.as_bytes());
        element(&mut d, 0x0010, 0x0020, b"LO", self.patient_id.as_bytes());
        element(&mut d, 0x0010, 0x0030, b"DA", b"");
        element(&mut d, 0x0010, 0x0040, b"CS", b"");
        element(&mut d, 0x0020, 0x000D, b"UI", self.study_uid.as_bytes());
        element(&mut d, 0x0020, 0x000E, b"UI", self.series_uid.as_bytes());
        element(&mut d, 0x0020, 0x0010, b"SH", b"1");
        element(&mut d, 0x0020, 0x0011, b"IS", b"1");
        let n = self.instance_number.to_string();
        element(&mut d, 0x0020, 0x0013, b"IS", n.as_bytes());
        element(&mut d, 0x0020, 0x0020, b"CS", b"");
        element(&mut d, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
        element(&mut d, 0x0028, 0x0004, b"CS", b"MONOCHROME2");
        element(&mut d, 0x0028, 0x0010, b"US", &self.rows.to_le_bytes());
        element(&mut d, 0x0028, 0x0011, b"US", &self.columns.to_le_bytes());
        element(&mut d, 0x0028, 0x0100, b"US", &8u16.to_le_bytes());
        element(&mut d, 0x0028, 0x0101, b"US", &8u16.to_le_bytes());
        element(&mut d, 0x0028, 0x0102, b"US", &7u16.to_le_bytes());
        element(&mut d, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
        element(&mut d, 0x7FE0, 0x0010, b"OB", &self.pixels());
        d
    }

    /// The whole Part-10 file: preamble, `DICM`, meta group, data set.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut meta = Vec::new();
        element(&mut meta, 0x0002, 0x0001, b"OB", &[0x00, 0x01]);
        element(&mut meta, 0x0002, 0x0002, b"UI", SECONDARY_CAPTURE.as_bytes());
        element(&mut meta, 0x0002, 0x0003, b"UI", self.sop_instance_uid.as_bytes());
        element(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_VR_LE.as_bytes());
        element(&mut meta, 0x0002, 0x0012, b"UI", b"2.25.1234567890123456789");
        element(&mut meta, 0x0002, 0x0013, b"SH", b"DICOMGATE_TEST");
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        element(&mut out, 0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.dataset());
        out
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.file_bytes()).expect("write DICOM file");
    }
}

/// A Part-10 file split into (meta elements by element number, data set bytes).
#[derive(Debug)]
pub struct Part10 {
    pub media_storage_sop_instance_uid: String,
    pub transfer_syntax: String,
    pub dataset: Vec<u8>,
}

fn trim_uid(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim_end_matches(['\0', ' ']).to_owned()
}

/// Parses preamble + meta group (Explicit VR LE, as PS3.10 requires);
/// walks it element by element, so it does not rely on (0002,0000).
pub fn read_part10(bytes: &[u8]) -> Result<Part10, String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("no DICM prefix".into());
    }
    let mut pos = 132;
    let mut sop = None;
    let mut ts = None;
    while pos + 8 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = [bytes[pos + 4], bytes[pos + 5]];
        let (len, header) = if long_form(&vr) {
            let b = bytes.get(pos + 8..pos + 12).ok_or("truncated meta")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        } else {
            (usize::from(u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]])), 8)
        };
        let value = bytes.get(pos + header..pos + header + len).ok_or("truncated meta element")?;
        match elem {
            0x0003 => sop = Some(trim_uid(value)),
            0x0010 => ts = Some(trim_uid(value)),
            _ => {}
        }
        pos += header + len;
    }
    Ok(Part10 {
        media_storage_sop_instance_uid: sop.ok_or("no (0002,0003)")?,
        transfer_syntax: ts.ok_or("no (0002,0010)")?,
        dataset: bytes[pos..].to_vec(),
    })
}
