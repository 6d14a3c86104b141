//! Shutdown: stop accepting, let live associations run for the grace period,
//! then A-ABORT the rest and return `Ok` (docs/operations.md, "Signals and lifecycle").

use crate::support;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::gateway::GatewaySpec;
use crate::support::pki::pki;
use crate::support::raw;
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_active, CLOUD_AE, PACS_AE, PROMPT};
use dicom_ul::Pdu;

/// `shutdown.grace_period` in the generated configuration.
const GRACE: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn shutdown_with_nothing_live_returns_promptly() {
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;
    scu::echo_tls(gw.addr(), pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("C-ECHO");
    wait_for_active(&gw.metrics, "store", 0).await;
    let started = Instant::now();
    gw.stop().await;
    assert!(started.elapsed() < GRACE, "idle gateway took {:?} to stop", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_for_the_grace_period_then_aborts() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let mut gw = GatewaySpec::store(&[scp.addr]).start().await;
    let addr = gw.addr();
    let mut a = scu::associate_tls(addr, pki().client_config(None), CLOUD_AE, PACS_AE).await.expect("associate");
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    wait_for_active(&gw.metrics, "store", 1).await;

    gw.signal_shutdown();
    let signalled = Instant::now();
    // The live association keeps working during the grace period...
    assert_eq!(scu::echo(&mut a, 1).await, Ok(0));
    // ...while no new TLS session is accepted.
    let new = tokio::time::timeout(Duration::from_secs(2), async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        raw::tls_over(tcp, pki().client_config(None)).await
    })
    .await;
    assert!(!matches!(new, Ok(Ok(_))), "a new TLS session was accepted after shutdown was signalled");

    // After the grace period, the rest is aborted.
    let pdu = support::within(GRACE + PROMPT, "A-ABORT after the grace period", a.receive())
        .await
        .expect("the client should receive an A-ABORT");
    assert!(matches!(pdu, Pdu::AbortRQ { .. }), "got {pdu:?}");
    assert!(
        signalled.elapsed() >= GRACE - Duration::from_millis(300),
        "aborted after {:?}, before the grace period",
        signalled.elapsed()
    );
    loop {
        match scp.next_event(PROMPT).await {
            ScpEvent::Aborted(_) => break,
            ScpEvent::Echo => continue,
            other => panic!("backend: expected A-ABORT, got {other:?}"),
        }
    }
    gw.join(PROMPT).await;
}
