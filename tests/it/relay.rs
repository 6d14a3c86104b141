//! The relay after the association: traffic both ways, the DIMSE idle
//! timeout (A-ABORT to both sides), and aborts passed through.

use crate::support;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::gateway::GatewaySpec;
use crate::support::pki::pki;
use crate::support::raw::{self, Next};
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_active, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource};
use dicom_ul::Pdu;
use dicomgate::report::Outcome;

const DIMSE: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn idle_association_is_aborted_on_both_sides_after_dimse_timeout() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.dimse = "1s".into()).start().await;

    let mut a = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("associate");
    // Traffic resets the idle clock: three echoes with idle gaps of half the
    // timeout (deliberate gaps, not synchronisation) span more than DIMSE.
    for id in 1..=3 {
        if id > 1 {
            tokio::time::sleep(DIMSE / 2).await;
        }
        assert_eq!(scu::echo(&mut a, id).await, Ok(0), "echo {id}");
    }
    let idle_from = Instant::now();
    let pdu = support::within(DIMSE + PROMPT, "A-ABORT at the client", a.receive())
        .await
        .expect("the client should receive a PDU, not an error");
    let waited = idle_from.elapsed();
    assert_eq!(
        pdu,
        Pdu::AbortRQ { source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified) },
        "client side"
    );
    assert!(waited >= DIMSE - Duration::from_millis(300), "aborted after {waited:?} idle, before the DIMSE timeout");

    let mut seen = Vec::new();
    loop {
        match scp.next_event(PROMPT).await {
            ScpEvent::Aborted(source) => {
                assert_eq!(
                    source,
                    AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified),
                    "backend side"
                );
                break;
            }
            ScpEvent::Closed(why) => panic!("backend closed without A-ABORT: {why} ({seen:?})"),
            other => seen.push(other),
        }
    }
    assert_eq!(seen.iter().filter(|e| **e == ScpEvent::Echo).count(), 3);
    wait_for_active(&gw.metrics, "store", 0).await;
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}

#[tokio::test(start_paused = true)]
async fn idle_abort_bytes_are_exact() {
    // The same over a raw socket: `07 00 00000004 00 00 02 00`.
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.dimse = "1s".into()).start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.expect("RQ");
    match raw::read_pdu(&mut s, PROMPT).await {
        Next::Pdu(p) if p.pdu_type == 0x02 => {}
        other => panic!("expected A-ASSOCIATE-AC, got {other:?}"),
    }
    match raw::read_pdu(&mut s, DIMSE + PROMPT).await {
        Next::Pdu(p) => {
            assert_eq!((p.pdu_type, p.body.as_slice()), (0x07, [0x00, 0x00, 0x02, 0x00].as_slice()), "idle A-ABORT")
        }
        other => panic!("expected A-ABORT, got {other:?}"),
    }
    raw::expect_closed(&mut s, PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_is_relayed_to_the_backend_unchanged() {
    // Raw client: dicom-ul's own abort() claims to be the service provider.
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.expect("RQ");
    match raw::read_pdu(&mut s, PROMPT).await {
        Next::Pdu(p) if p.pdu_type == 0x02 => {}
        other => panic!("expected A-ASSOCIATE-AC, got {other:?}"),
    }
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    // A-ABORT, source 0 (service-user), and keep the socket open.
    raw::send(&mut s, &[0x07, 0x00, 0, 0, 0, 4, 0x00, 0x00, 0x00, 0x00]).await.expect("A-ABORT");
    assert_eq!(scp.next_event(PROMPT).await, ScpEvent::Aborted(AbortRQSource::ServiceUser));
    raw::expect_closed(&mut s, PROMPT).await;
    wait_for_active(&gw.metrics, "store", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_echoes_on_one_association() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;
    let mut a = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("associate");
    for id in 1..=50 {
        assert_eq!(scu::echo(&mut a, id).await, Ok(0), "echo {id}");
    }
    a.release().await.expect("release");
    let events = scp.drain();
    assert_eq!(events.iter().filter(|e| **e == ScpEvent::Echo).count(), 50, "{events:?}");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    let text = gw.metrics.render();
    assert!(
        text.contains(r#"dicomgate_bytes_total{direction="to_backend",listener="store"}"#),
        "bytes metric missing:\n{text}"
    );
}
