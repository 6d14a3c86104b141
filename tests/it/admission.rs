//! Admission before any DICOM: the source-address allow list (checked before
//! TLS) and the per-listener connection limit.

use crate::support;
use std::net::{IpAddr, Ipv4Addr};

use crate::support::gateway::GatewaySpec;
use crate::support::pki::pki;
use crate::support::raw::{self, Next};
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_active, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

const LOCAL_LIMIT_EXCEEDED: (u8, u8, u8) = (2, 3, 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_address_not_allowed_is_closed_before_tls() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await; // allow: 127.0.0.1/32
    let denied = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    let mut tcp = raw::connect_from(denied, gw.addr()).await.expect("connect from 127.0.0.2");
    // A real ClientHello; the gateway must not answer it (no ServerHello,
    // no alert): the connection is closed with zero bytes back.
    let _ = raw::send(&mut tcp, &raw::client_hello(pki().client_config(None))).await;
    match raw::read_pdu(&mut tcp, PROMPT).await {
        Next::Closed { partial } => {
            assert!(
                partial.is_empty(),
                "denied peer received {} bytes, starting {:02X?}",
                partial.len(),
                &partial[..partial.len().min(16)]
            )
        }
        other => panic!("denied peer: expected a close with no bytes, got {other:?}"),
    }
    wait_for_count(&gw.metrics, "store", Outcome::DeniedIp, 1).await;

    // Through the TLS stack too: the handshake cannot complete.
    let tcp = raw::connect_from(denied, gw.addr()).await.expect("connect");
    assert!(
        raw::tls_over(tcp, pki().client_config(None)).await.is_err(),
        "TLS handshake completed for a denied source address"
    );
    wait_for_count(&gw.metrics, "store", Outcome::DeniedIp, 2).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::DeniedIp]);
    scp.assert_untouched();

    // The allowed address is still served.
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("allowed source");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_admits_other_listed_networks() {
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr])
        .listener(|l| l.allow = vec!["127.0.0.1/32".into(), "127.0.0.64/26".into()])
        .start()
        .await;
    for (last, admitted) in [(64u8, true), (127, true), (63, false), (128, false)] {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let tcp = raw::connect_from(src, gw.addr()).await.expect("connect");
        let tls = raw::tls_over(tcp, pki().client_config(None)).await;
        assert_eq!(tls.is_ok(), admitted, "127.0.0.{last}: {tls:?}");
    }
    wait_for_count(&gw.metrics, "store", Outcome::DeniedIp, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_rejected_2_3_2() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.max_connections = Some(1)).start().await;

    // Hold one association open.
    let mut held =
        scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("first association");
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    wait_for_active(&gw.metrics, "store", 1).await;

    // The second gets a real A-ASSOCIATE-RJ 2/3/2 after TLS and its RQ.
    let mut s = raw::tls_connect(gw.addr(), pki().client_config(None)).await.expect("TLS for the overflow connection");
    raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.expect("send RQ");
    raw::expect_rejection(&mut s, LOCAL_LIMIT_EXCEEDED).await;
    wait_for_count(&gw.metrics, "store", Outcome::Limit, 1).await;
    assert!(scp.drain().iter().all(|e| *e != ScpEvent::Connected), "the overflow connection reached the backend");

    // The held association still works, and once released the slot is free.
    assert_eq!(scu::echo(&mut held, 5).await, Ok(0));
    held.release().await.expect("release");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    wait_for_active(&gw.metrics, "store", 0).await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE)
        .await
        .expect("after the held association ended");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_beyond_the_bounded_rejections_is_closed() {
    // Many simultaneous overflow connections: each gets RJ 2/3/2 or, past
    // the bounded number the gateway is willing to answer, a plain close.
    // None may reach the backend, hang, or take the held association down.
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).listener(|l| l.max_connections = Some(1)).start().await;
    let mut held =
        scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("first association");
    wait_for_active(&gw.metrics, "store", 1).await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let addr = gw.addr();
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let Ok(mut s) = raw::tls_over(tcp, pki().client_config(None)).await else {
                return "closed";
            };
            if raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.is_err() {
                return "closed";
            }
            match raw::read_pdu(&mut s, PROMPT).await {
                Next::Pdu(p) if p.rejection() == Some(LOCAL_LIMIT_EXCEEDED) => "rejected",
                Next::Closed { partial } | Next::Failed { partial, .. } if partial.is_empty() => "closed",
                other => panic!("overflow connection: {other:?}"),
            }
        });
    }
    let mut rejected = 0;
    while let Some(r) = tasks.join_next().await {
        if r.expect("overflow task") == "rejected" {
            rejected += 1;
        }
    }
    assert!(rejected >= 1, "no overflow connection got RJ 2/3/2");
    assert_eq!(
        scp.drain().iter().filter(|e| **e == ScpEvent::Connected).count(),
        1,
        "only the held association may reach the backend"
    );
    assert_eq!(scu::echo(&mut held, 9).await, Ok(0));
    held.release().await.expect("release");
}

/// Waits until `dicomgate_config_reloads_total{result="success"}` is `n`.
async fn wait_for_reloads(metrics: &dicomgate::Metrics, n: u64) {
    let line = format!("dicomgate_config_reloads_total{{result=\"success\"}} {n}");
    support::wait_until(PROMPT, "the reload to be applied", || metrics.render().contains(&line), || metrics.render())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lowers_max_connections_keeps_counting_the_live_associations() {
    // Issue 11: a new limit used to come with a fresh semaphore that forgot
    // the associations already running, so a reload could admit past it.
    let scp = TestScp::spawn(PACS_AE).await;
    let spec = GatewaySpec::store(&[scp.addr]).listener(|l| l.max_connections = Some(2));
    let mut gw = spec.start().await;
    let mut first = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("first");
    let second = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("second");
    wait_for_active(&gw.metrics, "store", 2).await;

    gw.reload(&spec.clone().listener(|l| l.max_connections = Some(1)).to_yaml()).await;
    wait_for_reloads(&gw.metrics, 1).await;
    let refused = |expected: u64| {
        let (addr, metrics) = (gw.addr(), gw.metrics.clone());
        async move {
            let mut s = raw::tls_connect(addr, pki().client_config(None)).await.expect("TLS");
            raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.expect("send RQ");
            raw::expect_rejection(&mut s, LOCAL_LIMIT_EXCEEDED).await;
            wait_for_count(&metrics, "store", Outcome::Limit, expected).await;
        }
    };
    // Two live against a limit of one: refused; one live: still refused.
    refused(1).await;
    assert_eq!(scu::echo(&mut first, 3).await, Ok(0), "live associations continue across the reload");
    first.release().await.expect("release first");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    refused(2).await;
    second.release().await.expect("release second");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 2).await;
    wait_for_active(&gw.metrics, "store", 0).await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("within the new limit");
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 3).await;

    // Raising it applies at once to the same count.
    let held = scu::associate_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("held");
    wait_for_active(&gw.metrics, "store", 1).await;
    refused(3).await;
    gw.reload(&spec.clone().listener(|l| l.max_connections = Some(2)).to_yaml()).await;
    wait_for_reloads(&gw.metrics, 2).await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("after raising the limit");
    held.release().await.expect("release held");
}
