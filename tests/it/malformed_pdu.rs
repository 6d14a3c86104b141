//! Misbehaving peers before the association: each gets an A-ABORT or a close
//! within its deadline, is counted, never reaches a backend, and does not
//! hold up another client being served at the same time.

use crate::support;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::gateway::{GatewaySpec, RunningGateway};
use crate::support::pki::pki;
use crate::support::raw;
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

const ACSE: Duration = Duration::from_secs(2);

async fn start() -> (TestScp, RunningGateway) {
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.acse = "2s".into()).start().await;
    (scp, gw)
}

/// Runs `bad` (a misbehaving client, asserting what it sees) in its own
/// task while a well-behaved client does a C-ECHO; both must succeed.
async fn alongside_a_good_client(
    gw: &RunningGateway,
    scp: &mut TestScp,
    bad: impl Future<Output = ()> + Send + 'static,
) {
    let bad = tokio::spawn(bad);
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE)
        .await
        .expect("the good client was not served while a bad one was connected");
    support::within(ACSE + PROMPT, "the misbehaving client's end", bad).await.expect("misbehaving client task");
    let events = scp.drain();
    assert_eq!(
        events.iter().filter(|e| matches!(e, ScpEvent::Associated { .. })).count(),
        1,
        "only the good client may reach the backend: {events:?}"
    );
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_4_gib_is_aborted() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        let mut pdu = vec![0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF];
        pdu.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        let _ = raw::send(&mut s, &pdu).await;
        raw::expect_provider_abort(&mut s, PROMPT).await;
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_just_over_64_kib_is_aborted() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        let len: u32 = 64 * 1024 + 1;
        let mut pdu = vec![0x01, 0x00];
        pdu.extend_from_slice(&len.to_be_bytes());
        let _ = raw::send(&mut s, &pdu).await;
        raw::expect_provider_abort(&mut s, PROMPT).await;
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_data_as_first_pdu_is_aborted() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        // P-DATA-TF with one PDV item: length 4, context 1, last command fragment.
        let pdata = [0x04, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x04, 0x01, 0x03, 0x00, 0x00];
        raw::send(&mut s, &pdata).await.expect("send P-DATA");
        let reason = raw::expect_provider_abort(&mut s, PROMPT).await;
        assert!(matches!(reason, 0..=2), "A-ABORT reason {reason} for an unexpected PDU");
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_rq_as_first_pdu_is_aborted() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        let release_rq = [0x05, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];
        raw::send(&mut s, &release_rq).await.expect("send");
        raw::expect_provider_abort(&mut s, PROMPT).await;
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_pdu_is_closed_without_reply() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        raw::send(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
        raw::expect_closed(&mut s, PROMPT).await;
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rq_too_short_for_its_fixed_fields_is_aborted_or_closed() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let bad = async move {
        let rq = [0x01, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x01, 0, 0, b'P', b'A', b'C', b'S', b' ', b' '];
        raw::send(&mut s, &rq).await.expect("send");
        raw::expect_abort_or_close(&mut s, PROMPT).await;
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(start_paused = true)]
async fn truncated_rq_then_silence_is_ended_at_the_acse_timeout() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let rq = raw::associate_rq(PACS_AE, CLOUD_AE);
    raw::send(&mut s, &rq[..20]).await.expect("send partial RQ");
    let sent = Instant::now();
    let bad = async move {
        raw::expect_abort_or_close(&mut s, ACSE + PROMPT).await;
        let waited = sent.elapsed();
        assert!(
            waited >= ACSE - Duration::from_millis(600),
            "closed after {waited:?}, before the ACSE timeout ({ACSE:?})"
        );
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::Timeout, 1).await;
}

#[tokio::test(start_paused = true)]
async fn silent_client_after_tls_is_ended_at_the_acse_timeout() {
    let (mut scp, gw) = start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let connected = Instant::now();
    let bad = async move {
        raw::expect_abort_or_close(&mut s, ACSE + PROMPT).await;
        assert!(connected.elapsed() >= ACSE - Duration::from_millis(600));
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::Timeout, 1).await;
}

#[tokio::test(start_paused = true)]
async fn silent_tcp_client_without_tls_is_ended_at_the_acse_timeout() {
    // "accept → complete A-ASSOCIATE-RQ (TLS included)": a peer that never
    // sends a ClientHello must not hold a connection slot forever.
    let (mut scp, gw) = start().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let connected = Instant::now();
    let bad = async move {
        match raw::read_pdu(&mut tcp, ACSE + PROMPT).await {
            raw::Next::Closed { .. } => {}
            other => panic!("silent TCP peer: expected close, got {other:?}"),
        }
        assert!(connected.elapsed() >= ACSE - Duration::from_millis(600));
    };
    alongside_a_good_client(&gw, &mut scp, bad).await;
    wait_for_count(&gw.metrics, "store", Outcome::Timeout, 1).await;
}
