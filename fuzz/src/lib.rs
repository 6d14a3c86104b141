//! Fuzz harnesses for the code that reads hostile bytes, shared by the
//! cargo-fuzz targets (`fuzz_targets/`) and by `tests/it/fuzz_corpus.rs`, which
//! replays the checked-in corpus in every `cargo test`.
//!
//! Each harness states the invariants it checks; a panic is a finding.
//!
//! - [`first_pdu`]: the connection's first bytes through the gateway's own
//!   bounded reader, the A-ASSOCIATE-RQ parser and the routing policy.
//! - [`relay_framer`]: a relayed byte stream cut at fuzzer-chosen points must
//!   give the framer's one-piece result (chunk independence).
//! - [`command_walker`]: the DIMSE command-set reader and the PDV walker agree,
//!   whatever the fragmentation.
//! - [`tls_read`]: the TLS stream's receive path (our record layer) after
//!   the gateway's own handshake against rustls, over ciphertext cut,
//!   stalled and corrupted at fuzzer-chosen points, TLS 1.2 and 1.3, every AEAD.
//! - [`tls_handshake`]: the gateway's TLS server handshake fed whatever a
//!   scanner sends instead of a ClientHello: it fails, never panics, never hangs.

mod tls_read;

use std::sync::OnceLock;
use std::time::Duration;

use dicomgate::config::{Config, ListenerConfig};
use dicomgate::connection::first_pdu::read_associate_rq;
use dicomgate::dicom::associate::{self, patch_called_ae, patch_calling_ae};
use dicomgate::dicom::command_set;
use dicomgate::dicom::AeTitle;
use dicomgate::relay::dimse::{Command, PdvWalker, MAX_COMMAND};
use dicomgate::relay::framer::{FrameError, FrameEvent, Framer};
use dicomgate::routing::{decide, Decision};
pub use tls_read::{tls_handshake, tls_read};

/// Two listeners with the policies that matter: an allow list of calling AE
/// titles with exact routes, and "anyone, any called AE title" (`*`).
const CONFIG: &str = r#"
backends:
  pacs: {ae_title: PACS, servers: ["127.0.0.1:104"], health_check: {mode: "off"}}
  mwl: {ae_title: MWL, servers: ["127.0.0.1:105"], health_check: {mode: "off"}}
listeners:
  store:
    listen: 127.0.0.1:2762
    insecure_plaintext: true
    allow: [127.0.0.1/32]
    calling_ae_titles: [BUTTERFLY, CLOUD]
    routes: {PACS: pacs, STORESCP: pacs, MWL: mwl}
  open:
    listen: 127.0.0.1:2763
    insecure_plaintext: true
    allow: [127.0.0.1/32]
    routes: {"*": pacs}
    max_associate_rq_length: 1048576
"#;

fn listeners() -> &'static [std::sync::Arc<ListenerConfig>] {
    static LISTENERS: OnceLock<Vec<std::sync::Arc<ListenerConfig>>> = OnceLock::new();
    LISTENERS.get_or_init(|| {
        let config = Config::from_yaml_str(CONFIG, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("fuzz listener configuration refused: {e}"));
        config.listeners.into_values().collect()
    })
}

/// One current-thread runtime for the async reader (its deadline needs tokio's timer).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime for the fuzz reader")
    })
}

/// The connection's first bytes, as the gateway handles them.
///
/// Invariants: the reader returns at most one whole A-ASSOCIATE-RQ (type 0x01,
/// length as declared, within the listener's bound); the parser never panics,
/// even on bytes the reader would refuse; a parsed view agrees with the raw
/// fields; routing is deterministic and forwards only what the policy allows;
/// patching the AE fields keeps the PDU's length and parse.
pub fn first_pdu(data: &[u8]) {
    for listener in listeners() {
        let limit = listener.max_associate_rq_length;
        let read = runtime().block_on(async {
            let mut stream = data;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
            read_associate_rq(&mut stream, limit, deadline).await
        });
        if let Ok(pdu) = &read {
            assert_eq!(pdu[0], 0x01, "reader returned a non-RQ");
            let declared = u32::from_be_bytes([pdu[2], pdu[3], pdu[4], pdu[5]]);
            assert!(declared <= limit, "reader returned {declared} bytes over the limit {limit}");
            assert_eq!(pdu.len(), 6 + declared as usize, "reader returned a PDU of the wrong length");
            assert_eq!(&data[..pdu.len()], &pdu[..], "reader changed the bytes");
            check_rq(pdu);
        }
        // Also parse the raw bytes, so mutations reach the parser without a valid header.
        check_rq(data);
    }
}

fn check_rq(pdu: &[u8]) {
    let Ok(view) = associate::parse(pdu) else { return };
    assert!(view.presentation_contexts >= 1, "parsed an RQ without presentation contexts");
    assert_eq!(&view.called_ae[..], &pdu[10..26]);
    assert_eq!(&view.calling_ae[..], &pdu[26..42]);
    for &(value, offset) in &view.max_lengths {
        assert_eq!(pdu.get(offset..offset + 4), Some(&value.to_be_bytes()[..]), "max length offset is wrong");
    }
    for listener in listeners() {
        let decision = decide(&view, listener);
        assert_eq!(decision, decide(&view, listener), "routing is not deterministic");
        let Decision::Forward { backend, calling, called } = decision else { continue };
        assert!(view.supports_protocol_version_1(), "forwarded without protocol version 1");
        assert_eq!(AeTitle::from_wire(&view.calling_ae).ok(), Some(calling.clone()));
        assert_eq!(AeTitle::from_wire(&view.called_ae).ok(), Some(called.clone()));
        if let Some(allowed) = &listener.calling_ae_titles {
            assert!(allowed.contains(&calling), "forwarded a calling AE title that is not allowed");
        }
        assert_eq!(listener.routes.lookup(&called), Some(backend.as_str()));
        // The forwarded RQ is patched in place (rewrite); it must stay the same
        // length and still parse to the same structure.
        let mut patched = pdu.to_vec();
        patch_called_ae(&mut patched, &called.to_wire());
        patch_calling_ae(&mut patched, &calling.to_wire());
        assert_eq!(patched.len(), pdu.len());
        let again = associate::parse(&patched).expect("a patched RQ still parses");
        assert_eq!(again.presentation_contexts, view.presentation_contexts);
        assert_eq!(again.max_lengths, view.max_lengths);
    }
}

/// What feeding a stream to a [`Framer`] gave.
#[derive(Debug)]
struct Fed {
    events: Vec<FrameEvent>,
    forwarded: usize,
    error: Option<FrameError>,
    at_boundary: bool,
}

fn feed(limit: u32, stream: &[u8], cuts: &[u8]) -> Fed {
    let mut framer = Framer::new(limit);
    let mut events = Vec::new();
    let (mut pos, mut forwarded, mut i) = (0, 0, 0);
    while pos < stream.len() {
        let n = match cuts {
            [] => stream.len() - pos,
            _ => usize::from(cuts[i % cuts.len()]).max(1).min(stream.len() - pos),
        };
        match framer.feed(&stream[pos..pos + n], &mut events) {
            Ok(k) => {
                assert_eq!(k, n, "Ok must mean the whole chunk may be forwarded");
                forwarded += k;
            }
            Err((k, error)) => {
                assert!(k <= n, "more bytes to forward than were fed");
                return Fed { events, forwarded: forwarded + k, error: Some(error), at_boundary: framer.at_boundary() };
            }
        }
        pos += n;
        i += 1;
    }
    Fed { events, forwarded, error: None, at_boundary: framer.at_boundary() }
}

/// A relayed byte stream. Input: one control byte (bits 0–1 choose the
/// P-DATA limit: 4 KiB, 16 KiB, 1 MiB, none; bits 2–5 how many chunk-size
/// bytes follow), the chunk sizes (cycled), then the stream.
///
/// Invariants: the same events and the same error whatever the cutting;
/// the same count of bytes to forward, except that a refused header that
/// straddles two chunks has had its first 1–5 bytes forwarded already (the
/// framer then reports that the stream is not at a PDU boundary); the
/// complete PDUs reported account exactly for the bytes forwarded when the
/// stream ends on a boundary.
pub fn relay_framer(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let limit = [4096, 16384, 1 << 20, u32::MAX][usize::from(control & 0x03)];
    let cut_count = usize::from(control >> 2) % 16;
    let (cuts, stream) = rest.split_at(cut_count.min(rest.len()));

    let whole = feed(limit, stream, &[]);
    let split = feed(limit, stream, cuts);
    assert_eq!(whole.events, split.events, "events depend on the chunking (cuts {cuts:?})");
    assert_eq!(whole.error, split.error, "the error depends on the chunking (cuts {cuts:?})");
    match whole.error {
        None => {
            assert_eq!(whole.forwarded, stream.len());
            assert_eq!(split.forwarded, stream.len());
            assert_eq!(whole.at_boundary, split.at_boundary);
        }
        Some(_) => {
            assert!(whole.at_boundary, "in one piece the refused header is never forwarded");
            if split.at_boundary {
                assert_eq!(split.forwarded, whole.forwarded, "cuts {cuts:?}");
            } else {
                let extra = split.forwarded.checked_sub(whole.forwarded);
                assert!(matches!(extra, Some(1..=5)), "forwarded {} vs {}", split.forwarded, whole.forwarded);
            }
        }
    }
    let pdu_bytes: usize = whole
        .events
        .iter()
        .map(|e| match e {
            FrameEvent::Pdu { length, .. } => 6 + *length as usize,
            _ => 0,
        })
        .sum();
    assert!(pdu_bytes <= whole.forwarded, "PDUs reported beyond the bytes forwarded");
    if whole.at_boundary {
        assert_eq!(pdu_bytes, whole.forwarded, "forwarded bytes not accounted for by whole PDUs");
    }
}

fn walk(body: &[u8], chunk: usize) -> Vec<Command> {
    let mut walker = PdvWalker::default();
    let mut out = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        walker.feed(piece, &mut out);
    }
    walker.end_of_pdu();
    out
}

fn pdv(out: &mut Vec<u8>, payload: &[u8], control: u8) {
    let len = u32::try_from(payload.len() + 2).expect("PDV below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.push(1);
    out.push(control);
    out.extend_from_slice(payload);
}

/// Command-set bytes and P-DATA bodies.
///
/// Invariants: [`command_set::parse`] never panics; the same bytes wrapped in
/// one command PDV, or fragmented over two, give the walker exactly the
/// fields `command_set::parse` gives; the bytes taken as a P-DATA body give the same
/// commands fed whole or in small pieces.
pub fn command_walker(data: &[u8]) {
    let direct = command_set::parse(data).ok().map(|set| set.fields);
    if let Some(c) = &direct {
        let _ = (c.operation(), c.is_response(), c.status_class());
    }
    if data.len() <= MAX_COMMAND {
        let expected: Vec<Command> = direct.into_iter().collect();
        let mut one = Vec::new();
        pdv(&mut one, data, 0x03);
        assert_eq!(walk(&one, one.len()), expected, "one command PDV");
        let (a, b) = data.split_at(data.len() / 2);
        let mut two = Vec::new();
        pdv(&mut two, a, 0x01);
        pdv(&mut two, b, 0x03);
        assert_eq!(walk(&two, two.len()), expected, "command fragmented over two PDVs");
        assert_eq!(walk(&two, 3), expected, "fragmented command fed in 3-byte pieces");
    }
    let whole = walk(data, data.len());
    for chunk in [1, 2, 7] {
        assert_eq!(walk(data, chunk), whole, "P-DATA body fed in {chunk}-byte pieces");
    }
}
