//! The hostile first bytes of the abuse suite, as a table: where each input
//! goes, what is sent, whether our side stays open, when the gateway must
//! have closed and what it may answer; and the client that runs one case
//! (sending while reading, timing the close).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::{associate_rq, read_until_close, Ending};

/// The ACSE deadline of every listener in the abuse suite (accept → complete A-ASSOCIATE-RQ).
pub const ACSE: Duration = Duration::from_secs(2);
/// How late after the deadline a close may come on a loaded 2-core box.
pub const LATE: Duration = Duration::from_secs(3);
/// How early a "closed at the deadline" may look from the client's side (the
/// gateway starts its clock after accept, a moment after our connect returns).
pub const EARLY: Duration = Duration::from_millis(250);

/// Where a hostile input goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The plaintext listener.
    Plain,
    /// Raw TCP bytes to the TLS listener (no handshake).
    TlsRaw,
    /// The TLS listener, after a completed handshake.
    Tls,
}

/// When the gateway must have closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Well before the ACSE deadline.
    AtOnce,
    /// At the ACSE deadline.
    AtDeadline,
}

/// What the gateway may send before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Nothing,
    /// A-ABORT from the service provider (source 2) with this reason.
    Abort(u8),
    /// Whatever TLS says (an alert or nothing), but no DICOM PDU.
    NoDicom,
}

/// One hostile input and what the gateway must do with it.
pub struct Case {
    pub name: String,
    pub port: Port,
    bytes: Vec<u8>,
    /// Keep our side open after sending (else half-close at once).
    hold: bool,
    when: When,
    answer: Answer,
}

fn case(name: impl Into<String>, port: Port, bytes: Vec<u8>, hold: bool, when: When, answer: Answer) -> Case {
    Case { name: name.into(), port, bytes, hold, when, answer }
}

/// PS3.8 provider A-ABORT reasons (§9.3.8).
pub const NOT_SPECIFIED: u8 = 0;
const UNEXPECTED_PDU: u8 = 2;
const INVALID_PARAMETER_VALUE: u8 = 6;

pub fn hostile_cases() -> Vec<Case> {
    use Answer::*;
    use Port::*;
    use When::*;
    let mut cases = Vec::new();
    let mut rng = Prng::new(7);
    for seed in 0..3 {
        // Random bytes whose first byte is no PDU type (and no TLS record type).
        let mut junk = rng.bytes(4096);
        junk[0] |= 0x80;
        cases.push(case(format!("random bytes #{seed}, plaintext"), Plain, junk.clone(), true, AtOnce, Nothing));
        cases.push(case(
            format!("random bytes #{seed} instead of a ClientHello"),
            TlsRaw,
            junk.clone(),
            true,
            AtOnce,
            NoDicom,
        ));
        cases.push(case(format!("random bytes #{seed} after the TLS handshake"), Tls, junk, true, AtOnce, Nothing));
    }
    let rq = associate_rq(1, 1);
    cases.push(case("plaintext A-ASSOCIATE-RQ on the TLS port", TlsRaw, rq.clone(), true, AtOnce, NoDicom));
    let mut header_then_junk = vec![0x01, 0, 0, 0, 0x10, 0x00];
    header_then_junk.extend(rng.bytes(100));
    cases.push(case(
        "RQ header of 4 KiB, 100 bytes of garbage, then silence",
        Tls,
        header_then_junk,
        true,
        AtDeadline,
        Abort(NOT_SPECIFIED),
    ));
    let huge = vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    cases.push(case(
        "RQ declaring 0xFFFFFFFF bytes, plaintext",
        Plain,
        huge.clone(),
        true,
        AtOnce,
        Abort(INVALID_PARAMETER_VALUE),
    ));
    cases.push(case("RQ declaring 0xFFFFFFFF bytes, TLS", Tls, huge, true, AtOnce, Abort(INVALID_PARAMETER_VALUE)));
    let pdata = vec![0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    cases.push(case("P-DATA-TF of 0xFFFFFFFF bytes first", Plain, pdata, true, AtOnce, Abort(UNEXPECTED_PDU)));
    let wide = associate_rq(128, 100);
    assert!(wide.len() > 64 * 1024, "the wide RQ must exceed the default bound");
    cases.push(case(
        "RQ with 128 contexts × 100 syntaxes, plaintext",
        Plain,
        wide.clone(),
        true,
        AtOnce,
        Abort(INVALID_PARAMETER_VALUE),
    ));
    cases.push(case(
        "RQ with 128 contexts × 100 syntaxes, TLS",
        Tls,
        wide,
        true,
        AtOnce,
        Abort(INVALID_PARAMETER_VALUE),
    ));
    let mut short = vec![0x01, 0, 0, 0, 0, 10];
    short.extend([0u8; 10]);
    cases.push(case("RQ shorter than its fixed part", Plain, short, true, AtOnce, Abort(INVALID_PARAMETER_VALUE)));
    let mut overrun = rq.clone();
    overrun[76..78].copy_from_slice(&[0xFF, 0xFF]); // first item (application context) claims 64 KiB
    cases.push(case(
        "RQ whose first item overruns the PDU",
        Plain,
        overrun,
        true,
        AtOnce,
        Abort(INVALID_PARAMETER_VALUE),
    ));
    cases.push(case(
        "first 40 bytes of an RQ, then close, plaintext",
        Plain,
        rq[..40].to_vec(),
        false,
        AtOnce,
        Nothing,
    ));
    cases.push(case("first 40 bytes of an RQ, then close, TLS", Tls, rq[..40].to_vec(), false, AtOnce, Nothing));
    cases.push(case(
        "first 40 bytes of an RQ, then silence",
        Plain,
        rq[..40].to_vec(),
        true,
        AtDeadline,
        Abort(NOT_SPECIFIED),
    ));
    cases.push(case(
        "first 3 bytes of an RQ, then silence, plaintext",
        Plain,
        rq[..3].to_vec(),
        true,
        AtDeadline,
        Nothing,
    ));
    cases.push(case("first 3 bytes of an RQ, then silence, TLS", Tls, rq[..3].to_vec(), true, AtDeadline, Nothing));
    cases
}

/// Sends `bytes` while reading whatever comes back until the gateway closes.
async fn exchange<S>(s: S, bytes: Vec<u8>, hold: bool, since: Instant) -> Ending
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut r, mut w) = tokio::io::split(s);
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        // The gateway may close before it has read everything: write errors are expected.
        let _ = w.write_all(&bytes).await;
        let _ = w.flush().await;
        if !hold {
            let _ = w.shutdown().await;
        }
        let _ = done_rx.await;
    });
    let ending = read_until_close(&mut r, since, ACSE + LATE + Duration::from_secs(1)).await;
    let _ = done.send(());
    let _ = writer.await;
    ending
}

pub async fn run_case(c: &Case, addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Ending {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{}: connect: {e}", c.name));
    let since = Instant::now();
    if c.port == Port::Tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await;
        let tls = tls.unwrap_or_else(|e| panic!("{}: TLS handshake: {e}", c.name));
        exchange(tls, c.bytes.clone(), c.hold, since).await
    } else {
        exchange(tcp, c.bytes.clone(), c.hold, since).await
    }
}

pub fn check_case(c: &Case, ending: &Ending) -> String {
    let limit = match c.when {
        When::AtOnce => ACSE / 2,
        When::AtDeadline => ACSE + LATE,
    };
    let closed = ending.assert_closed_within(limit, &c.name);
    if c.when == When::AtDeadline {
        assert!(closed + EARLY >= ACSE, "{}: closed after {closed:?}, before the ACSE deadline", c.name);
    }
    let is_dicom = ending.received.first().is_some_and(|b| (0x01..=0x07).contains(b));
    match c.answer {
        Answer::Nothing => {
            assert!(ending.received.is_empty(), "{}: expected no answer, got {:02X?}", c.name, ending.received)
        }
        Answer::NoDicom => assert!(!is_dicom, "{}: a DICOM PDU came back: {:02X?}", c.name, ending.received),
        Answer::Abort(reason) => assert_eq!(
            ending.abort(),
            Some((2, reason)),
            "{}: expected A-ABORT (2, {reason}), got {:02X?}",
            c.name,
            ending.received
        ),
    }
    format!("{:>8.0?}  {}", closed, c.name)
}

/// A small deterministic PRNG (xorshift64*), so "random" inputs are the same
/// on every run and a failure can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 32) as u8).collect()
    }
}
