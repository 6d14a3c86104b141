//! Backend selection: servers tried in order, failover to the next, and an
//! A-ASSOCIATE-RJ 2/3/1 (temporary congestion) when none is reachable.

use crate::support;
use crate::support::gateway::GatewaySpec;
use crate::support::pki::pki;
use crate::support::raw;
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

const TEMPORARY_CONGESTION: (u8, u8, u8) = (2, 3, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backend_servers_down_is_rejected_2_3_1() {
    let down1 = raw::closed_port().await;
    let down2 = raw::closed_port().await;
    let gw = GatewaySpec::store(&[down1, down2]).start().await;

    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.expect("send RQ");
    raw::expect_rejection(&mut s, TEMPORARY_CONGESTION).await;
    wait_for_count(&gw.metrics, "store", Outcome::BackendUnavailable, 1).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::BackendUnavailable]);

    // dicom-ul sees a rejection too (whatever it calls it), not an AC.
    let r = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await;
    assert!(r.is_err(), "association accepted with every backend down");
    wait_for_count(&gw.metrics, "store", Outcome::BackendUnavailable, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_server_down_second_up_succeeds() {
    let down = raw::closed_port().await;
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[down, scp.addr]).start().await;

    for _ in 0..2 {
        scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE)
            .await
            .expect("C-ECHO via the second server");
    }
    let events = scp.drain();
    assert_eq!(events.iter().filter(|e| **e == ScpEvent::Echo).count(), 2, "{events:?}");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 2).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::Forwarded]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_server_up_is_preferred() {
    let mut first = TestScp::spawn(PACS_AE).await;
    let mut second = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[first.addr, second.addr]).start().await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("C-ECHO");
    assert_eq!(first.next_event(PROMPT).await, ScpEvent::Connected);
    second.assert_untouched();
}
