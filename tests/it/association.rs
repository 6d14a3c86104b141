//! Association policy end to end: a TLS (or plaintext) client through the
//! gateway to a plain dicom-ul SCP, and every A-ASSOCIATE-RJ the gateway
//! answers on its own (docs/architecture.md rejection table, "Authorize on the raw
//! 16-byte AE fields").

use crate::support;
use crate::support::gateway::{GatewaySpec, ListenerSpec};
use crate::support::pki::pki;
use crate::support::raw::{self, ae, ae_raw};
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

const CALLING_AE_NOT_RECOGNIZED: (u8, u8, u8) = (1, 1, 3);
const CALLED_AE_NOT_RECOGNIZED: (u8, u8, u8) = (1, 1, 7);
const PROTOCOL_VERSION_NOT_SUPPORTED: (u8, u8, u8) = (1, 2, 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_tls_gateway_reaches_plain_scp() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;

    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("C-ECHO through the gateway");

    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Connected);
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Associated { calling: CLOUD_AE.into(), called: PACS_AE.into() });
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Echo);
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Released);
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    support::wait_for_active(&gw.metrics, "store", 0).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::Forwarded]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_plaintext_listener() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| *l = ListenerSpec::plaintext("store")).start().await;

    scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.expect("C-ECHO through the plaintext listener");

    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Echo);
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;

    // A TLS ClientHello on a plaintext listener is not a PDU: no TLS answer.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let _ = raw::send(&mut tcp, &raw::client_hello(pki().client_config(None))).await;
    raw::expect_closed(&mut tcp, PROMPT).await;
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_ae_not_allowed_is_rejected_1_1_3() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;

    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, "INTRUDER")).await.expect("send RQ");
    raw::expect_rejection(&mut s, CALLING_AE_NOT_RECOGNIZED).await;

    // Case sensitive: "cloud" is not "CLOUD".
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, "cloud")).await.expect("send RQ");
    raw::expect_rejection(&mut s, CALLING_AE_NOT_RECOGNIZED).await;

    wait_for_count(&gw.metrics, "store", Outcome::RejectedCallingAe, 2).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::RejectedCallingAe]);
    scp.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_called_ae_is_rejected_1_1_7() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;

    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq("NOWHERE", CLOUD_AE)).await.expect("send RQ");
    raw::expect_rejection(&mut s, CALLED_AE_NOT_RECOGNIZED).await;

    wait_for_count(&gw.metrics, "store", Outcome::RejectedCalledAe, 1).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::RejectedCalledAe]);
    scp.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_ae_titles_are_accepted_after_trimming_spaces() {
    // Leading and trailing spaces are not significant (PS3.8 §9.3.2).
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;

    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    let rq = raw::associate_rq_with(ae("  PACS"), ae("   CLOUD"), 0x0001);
    raw::send(&mut s, &rq).await.expect("send RQ");
    match raw::read_pdu(&mut s, PROMPT).await {
        raw::Next::Pdu(pdu) => assert_eq!(pdu.pdu_type, 0x02, "expected A-ASSOCIATE-AC: {pdu:?}"),
        other => panic!("expected A-ASSOCIATE-AC, got {other:?}"),
    }
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    support::wait_for_active(&gw.metrics, "store", 1).await;
    drop(s);
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_version_without_bit_0_is_rejected_1_2_2() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;

    for version in [0x0000u16, 0x0002] {
        let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
        let rq = raw::associate_rq_with(ae(PACS_AE), ae(CLOUD_AE), version);
        raw::send(&mut s, &rq).await.expect("send RQ");
        raw::expect_rejection(&mut s, PROTOCOL_VERSION_NOT_SUPPORTED).await;
    }
    wait_for_count(&gw.metrics, "store", Outcome::ProtocolError, 2).await;
    scp.assert_untouched();
}

/// Raw 16-byte fields that dicom-ul would "clean up" into a valid title
/// (TAB trimmed, NUL kept, all-spaces empty) or that are simply invalid.
fn malformed_fields(title: &str) -> Vec<(&'static str, [u8; 16])> {
    let t = title.as_bytes();
    let with = |prefix: &[u8], suffix: &[u8]| {
        let mut v = prefix.to_vec();
        v.extend_from_slice(t);
        v.extend_from_slice(suffix);
        v
    };
    vec![
        ("leading TAB", ae_raw(&with(b"\t", b""), b' ')),
        ("trailing TAB", ae_raw(&with(b"", b"\t"), b' ')),
        ("NUL padding", ae_raw(t, 0x00)),
        ("embedded NUL", ae_raw(&with(b"", b"\0X"), b' ')),
        ("backslash", ae_raw(&with(b"", b"\\"), b' ')),
        ("all spaces", [b' '; 16]),
        ("DEL", ae_raw(&with(b"", b"\x7f"), b' ')),
        ("Latin-1 byte", ae_raw(&with(b"", b"\xe9"), b' ')),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calling_ae_fields_are_rejected_1_1_3() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    // Both with the allow list of calling AE titles and with any calling AE
    // (no list): bytes that are not a valid AE title never pass.
    for with_list in [true, false] {
        let gw = GatewaySpec::store(&[scp.addr])
            .listener(|l| {
                if !with_list {
                    l.calling_ae_titles = None;
                }
            })
            .start()
            .await;
        let cases = malformed_fields(CLOUD_AE);
        for (what, field) in &cases {
            let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
            let rq = raw::associate_rq_with(ae(PACS_AE), *field, 0x0001);
            raw::send(&mut s, &rq).await.expect("send RQ");
            match raw::read_pdu(&mut s, PROMPT).await {
                raw::Next::Pdu(pdu) if pdu.rejection() == Some(CALLING_AE_NOT_RECOGNIZED) => {}
                other => panic!("calling AE with {what} (list: {with_list}): expected RJ 1/1/3, got {other:?}"),
            }
        }
        wait_for_count(&gw.metrics, "store", Outcome::RejectedCallingAe, cases.len() as u64).await;
        scp.assert_untouched();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_called_ae_fields_are_rejected_1_1_7() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    // With an exact route only, and with the "*" route that matches any
    // *valid* called AE title.
    for wildcard in [false, true] {
        let gw = GatewaySpec::store(&[scp.addr])
            .listener(|l| {
                if wildcard {
                    l.routes = vec![("*".into(), "pacs".into())];
                }
            })
            .start()
            .await;
        let cases = malformed_fields(PACS_AE);
        for (what, field) in &cases {
            let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
            let rq = raw::associate_rq_with(*field, ae(CLOUD_AE), 0x0001);
            raw::send(&mut s, &rq).await.expect("send RQ");
            match raw::read_pdu(&mut s, PROMPT).await {
                raw::Next::Pdu(pdu) if pdu.rejection() == Some(CALLED_AE_NOT_RECOGNIZED) => {}
                other => panic!("called AE with {what} (wildcard: {wildcard}): expected RJ 1/1/7, got {other:?}"),
            }
        }
        wait_for_count(&gw.metrics, "store", Outcome::RejectedCalledAe, cases.len() as u64).await;
        scp.assert_untouched();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_route_forwards_any_valid_called_ae_unchanged() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.routes = vec![("*".into(), "pacs".into())]).start().await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, "ANY_SCP").await.expect("C-ECHO via the * route");
    assert_eq!(
        scp.next_association_event(PROMPT).await,
        ScpEvent::Associated { calling: CLOUD_AE.into(), called: "ANY_SCP".into() }
    );
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}
