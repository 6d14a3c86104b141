//! TLS on the listener: client certificates (pinned, exact DER — including
//! the guide's self-signed CA:true certificate — and CA-validated), refusal
//! of unknown ones, TLS versions, and `generate_if_missing`.

use crate::support;
use std::sync::Arc;

use crate::support::gateway::{GatewaySpec, RunningGateway, Security};
use crate::support::pki::{pki, CapturingVerifier};
use crate::support::raw::{self, Next};
use crate::support::scp::{ScpEvent, TestScp};
use crate::support::{scu, wait_for_count, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

async fn pinned_gateway(scp: &TestScp) -> RunningGateway {
    GatewaySpec::store(&[scp.addr])
        .listener(|l| l.security = Security::Tls { client_ca: None, client_certificates: vec!["cloud.pem".into()] })
        .start()
        .await
}

async fn ca_gateway(scp: &TestScp) -> RunningGateway {
    GatewaySpec::store(&[scp.addr])
        .listener(|l| l.security = Security::Tls { client_ca: Some("ca.pem".into()), client_certificates: Vec::new() })
        .start()
        .await
}

/// Tries TLS + A-ASSOCIATE-RQ with `config` and asserts the gateway let
/// nothing through: the handshake fails, or (TLS 1.3, where the client
/// finishes first) the connection dies before any PDU comes back.
async fn assert_refused(gw: &RunningGateway, config: Arc<rustls::ClientConfig>, who: &str) {
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let Ok(mut s) = raw::tls_over(tcp, config).await else {
        return;
    };
    if raw::send(&mut s, &raw::associate_rq(PACS_AE, CLOUD_AE)).await.is_err() {
        return;
    }
    match raw::read_pdu(&mut s, PROMPT).await {
        Next::Closed { partial } | Next::Failed { partial, .. } if partial.is_empty() => {}
        other => panic!("{who}: expected the TLS session to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_self_signed_ca_true_client_cert_is_accepted() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = pinned_gateway(&scp).await;
    let p = pki();
    scu::echo_tls(gw.addr(), p.client_config(Some(&p.cloud)), CLOUD_AE, PACS_AE)
        .await
        .expect("C-ECHO with the pinned certificate");
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::Forwarded]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_cert_is_refused_on_pinned_listener() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = pinned_gateway(&scp).await;
    let p = pki();

    assert_refused(&gw, p.client_config(Some(&p.stranger)), "stranger").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 1).await;
    // Signed by the test CA is not enough where only pinning is configured.
    assert_refused(&gw, p.client_config(Some(&p.client)), "CA-signed, not pinned").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 2).await;
    // No certificate at all ("Anonymous") is refused where one is required.
    assert_refused(&gw, p.client_config(None), "anonymous").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 3).await;

    support::assert_only_outcomes(&gw.metrics, "store", &[Outcome::TlsError]);
    scp.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_validated_client_cert_is_accepted() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = ca_gateway(&scp).await;
    let p = pki();
    scu::echo_tls(gw.addr(), p.client_config(Some(&p.client)), CLOUD_AE, PACS_AE)
        .await
        .expect("C-ECHO with a CA-signed client certificate");
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_from_another_ca_is_refused() {
    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = ca_gateway(&scp).await;
    let p = pki();
    assert_refused(&gw, p.client_config(Some(&p.other_ca_client)), "other CA").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 1).await;
    assert_refused(&gw, p.client_config(Some(&p.stranger)), "self-signed").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 2).await;
    assert_refused(&gw, p.client_config(None), "anonymous").await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 3).await;
    scp.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_and_pinned_together_accept_either() {
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr])
        .listener(|l| {
            l.security =
                Security::Tls { client_ca: Some("ca.pem".into()), client_certificates: vec!["cloud.pem".into()] }
        })
        .start()
        .await;
    let p = pki();
    for (who, id) in [("CA-signed", &p.client), ("pinned", &p.cloud)] {
        scu::echo_tls(gw.addr(), p.client_config(Some(id)), CLOUD_AE, PACS_AE)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
    }
    assert_refused(&gw, p.client_config(Some(&p.stranger)), "stranger").await;
    wait_for_count(&gw.metrics, "store", Outcome::Forwarded, 2).await;
    wait_for_count(&gw.metrics, "store", Outcome::TlsError, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_both_accepted_by_default() {
    let scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr]).start().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki().ca.cert_der.clone()).expect("CA");
        let config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        let s = raw::tls_connect(gw.addr(), Arc::new(config)).await.unwrap_or_else(|e| panic!("{version:?}: {e}"));
        let (_, conn) = s.get_ref();
        assert_eq!(conn.protocol_version(), Some(version.version));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_if_missing_creates_key_and_cert_and_serves_them() {
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;

    let mut scp = TestScp::spawn(PACS_AE).await;
    let gw = GatewaySpec::store(&[scp.addr])
        .listener(|l| {
            l.security = Security::Generate { certificate: "scp_cert.pem".into(), private_key: "scp_key.pem".into() }
        })
        .start()
        .await;
    let cert_path = gw.dir.join("scp_cert.pem");
    let key_path = gw.dir.join("scp_key.pem");
    assert!(cert_path.is_file(), "certificate not generated");
    assert!(key_path.is_file(), "private key not generated");
    let mode = std::fs::metadata(&key_path).expect("key metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode is {mode:o}");
    let pem = std::fs::read(&cert_path).expect("read cert");
    let generated: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .expect("generated certificate is PEM");
    assert!(!generated.is_empty(), "no certificate in the generated PEM");

    let verifier = CapturingVerifier::new();
    scu::echo_tls(gw.addr(), verifier.client_config(), CLOUD_AE, PACS_AE)
        .await
        .expect("C-ECHO with the generated certificate");
    assert_eq!(
        verifier.seen().as_ref(),
        Some(&generated[0]),
        "the gateway served another certificate than the one it wrote"
    );
    assert!(matches!(scp.next_association_event(PROMPT).await, ScpEvent::Associated { .. }));
}
