//! `dicomgate echo` (issue 4): the cloud's "Echo" button on the command line.
//! Against DCMTK `storescp` (plain and TLS, with gen-cert's pairs), against
//! fake SCPs for the exact words of A-ASSOCIATE-RJ and A-ABORT, and against
//! a closed port and a silent listener. Exit codes are the documented ones.
//!
//! Tests with a `storescp` child run on a current-thread runtime only for
//! the child's handle: the blocking `dicomgate` runs hold up no task.

use crate::support;
use crate::support::cli::{code, dicomgate, gen_cert, stderr, stdout};
use crate::support::dcmtk::storescp;
use crate::support::scp::one_shot_scp;
use crate::support::tools::output_text;

const ACCEPTED: i32 = 0;
const USAGE: i32 = 2;
const REJECTED: i32 = 3;
const ABORTED: i32 = 4;
const TLS: i32 = 5;
const TIMEOUT: i32 = 6;
const UNREACHABLE: i32 = 7;
const CONFIG: i32 = 64;

fn echo(target: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["echo", target, "--calling-ae", "BUTTERFLY", "--called-ae", "PACS", "--timeout", "20s"];
    args.extend_from_slice(extra);
    dicomgate(&args)
}

fn assert_accepted(out: &std::process::Output) {
    assert_eq!(code(out), ACCEPTED, "{}", output_text(out));
    assert_eq!(stdout(out).lines().next(), Some("Accepted"), "{}", output_text(out));
}

#[tokio::test]
async fn issue4_echo_plain_storescp_is_accepted() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let scp = storescp("PACS", &[], dir.path()).await;
    let port = scp.addr.port();
    let out = echo(&format!("127.0.0.1:{port}"), &[]);
    assert_accepted(&out);
    assert!(stdout(&out).contains("plain TCP, unsecured"), "{}", output_text(&out));
}

#[tokio::test]
async fn issue4_echo_tls_storescp_with_gen_cert_pair_is_accepted() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    // The default RSA pair, served by DCMTK (OpenSSL), pinned by echo --ca.
    let (cert, key) = gen_cert(&dir.path().join("scp"), "pacs-gw", "rsa2048", &["--san", "localhost"]);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let scp = storescp("PACS", &["+tls", &key_s, &cert_s, "-ic"], dir.path()).await;
    let port = scp.addr.port();
    let out = echo(&format!("127.0.0.1:{port}"), &["--tls", "--ca", &cert_s]);
    assert_accepted(&out);
    assert!(stdout(&out).contains("TLS 1."), "{}", output_text(&out));
    // WebPKI path too: the name must match a SAN.
    let by_name = echo(&format!("localhost:{port}"), &["--tls", "--ca", &cert_s]);
    assert_accepted(&by_name);
}

#[tokio::test]
async fn issue4_echo_tls_client_certificate_from_gen_cert() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = gen_cert(&dir.path().join("scp"), "pacs-gw", "ecdsa-p256", &[]);
    let (client_cert, client_key) = gen_cert(&dir.path().join("scu"), "cloud", "ecdsa-p256", &[]);
    let s = |p: &std::path::Path| p.display().to_string();
    // storescp requires a client certificate and trusts exactly ours.
    let scp = storescp("PACS", &["+tls", &s(&key), &s(&cert), "+cf", &s(&client_cert), "-rc"], dir.path()).await;
    let port = scp.addr.port();
    let target = format!("127.0.0.1:{port}");

    let anonymous = echo(&target, &["--tls", "--ca", &s(&cert)]);
    assert_eq!(code(&anonymous), TLS, "{}\n{}", output_text(&anonymous), scp.log_text());
    assert!(stderr(&anonymous).contains("refused our client certificate"), "{}", output_text(&anonymous));

    let authenticated =
        echo(&target, &["--tls", "--ca", &s(&cert), "--cert", &s(&client_cert), "--key", &s(&client_key)]);
    assert_accepted(&authenticated);
}

#[tokio::test]
async fn issue4_echo_tls_untrusted_certificate_names_the_reason() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = gen_cert(&dir.path().join("scp"), "pacs-gw", "ecdsa-p256", &[]);
    let (other, _) = gen_cert(&dir.path().join("other"), "someone-else", "ecdsa-p256", &[]);
    let scp =
        storescp("PACS", &["+tls", &key.display().to_string(), &cert.display().to_string(), "-ic"], dir.path()).await;
    let port = scp.addr.port();
    let out = echo(&format!("127.0.0.1:{port}"), &["--tls", "--ca", &other.display().to_string()]);
    assert_eq!(code(&out), TLS, "{}", output_text(&out));
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", output_text(&out));
    // Plain DICOM to a TLS port: said so, not mistaken for a rejection.
    let plain = echo(&format!("127.0.0.1:{port}"), &[]);
    assert_eq!(code(&plain), ABORTED, "{}", output_text(&plain));
    assert!(stderr(&plain).contains("try --tls"), "{}", output_text(&plain));
}

#[tokio::test]
async fn issue4_echo_storescp_refusal_is_told_in_words() {
    require_tool!("storescp");
    let dir = tempfile::tempdir().expect("tempdir");
    let scp = storescp("PACS", &["--refuse"], dir.path()).await;
    let port = scp.addr.port();
    let out = echo(&format!("127.0.0.1:{port}"), &[]);
    assert_eq!(code(&out), REJECTED, "{}", output_text(&out));
    assert!(
        stderr(&out).contains("A-ASSOCIATE-RJ rejected-permanent, service-user, no-reason-given (1/1/1)"),
        "{}",
        output_text(&out)
    );
}

/// Each row of the rejection table (docs/architecture.md), as a fake SCP sends it.
#[test]
fn issue4_echo_prints_each_rejection_of_the_design_table() {
    for (triple, words) in [
        ((1, 1, 3), "rejected-permanent, service-user, calling-AE-title-not-recognized (1/1/3)"),
        ((1, 1, 7), "rejected-permanent, service-user, called-AE-title-not-recognized (1/1/7)"),
        ((1, 2, 2), "rejected-permanent, service-provider (ACSE), protocol-version-not-supported (1/2/2)"),
        ((2, 3, 1), "rejected-transient, service-provider (presentation), temporary-congestion (2/3/1)"),
        ((2, 3, 2), "rejected-transient, service-provider (presentation), local-limit-exceeded (2/3/2)"),
    ] {
        let (result, source, reason) = triple;
        let addr = one_shot_scp(vec![0x03, 0, 0, 0, 0, 4, 0, result, source, reason]);
        let out = echo(&addr.to_string(), &[]);
        assert_eq!(code(&out), REJECTED, "{}", output_text(&out));
        assert!(
            stderr(&out).contains(&format!("association rejected: A-ASSOCIATE-RJ {words}")),
            "{}",
            output_text(&out)
        );
    }
}

#[test]
fn issue4_echo_prints_abort_source_and_reason() {
    let addr = one_shot_scp(vec![0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
    let out = echo(&addr.to_string(), &[]);
    assert_eq!(code(&out), ABORTED, "{}", output_text(&out));
    assert!(
        stderr(&out).contains("A-ABORT service-provider, invalid-PDU-parameter-value (2/6)"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn issue4_echo_closed_port_is_connection_refused() {
    let port = support::ports::free_port();
    let out = echo(&format!("127.0.0.1:{port}"), &[]);
    assert_eq!(code(&out), UNREACHABLE, "{}", output_text(&out));
    assert!(stderr(&out).contains("connection refused"), "{}", output_text(&out));
}

#[test]
// Times a child process from a plain (non-tokio) test: the std clock is right.
#[allow(clippy::disallowed_methods)]
fn issue4_echo_silent_listener_times_out_naming_the_phase() {
    // The kernel completes the TCP handshake from the backlog; nobody ever
    // answers the A-ASSOCIATE-RQ.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let started = std::time::Instant::now();
    let out = dicomgate(&["echo", &addr, "--timeout", "1s"]);
    assert_eq!(code(&out), TIMEOUT, "{}", output_text(&out));
    assert!(stderr(&out).contains("timed out during the association request (A-ASSOCIATE)"), "{}", output_text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(listener);
}

#[test]
fn issue4_echo_usage_and_file_errors_send_nothing() {
    // --tls needs a trust decision.
    let out = dicomgate(&["echo", "127.0.0.1:9", "--tls"]);
    assert_eq!(code(&out), USAGE, "{}", output_text(&out));
    assert!(stderr(&out).contains("--ca"), "{}", output_text(&out));
    // AE titles are checked like the configuration's.
    let long = dicomgate(&["echo", "127.0.0.1:9", "--calling-ae", "BUTTERFLY CLOUD ONE"]);
    assert_eq!(code(&long), USAGE, "{}", output_text(&long));
    assert!(stderr(&long).contains("longer than 16"), "{}", output_text(&long));
    let no_port = dicomgate(&["echo", "pacs.example"]);
    assert_eq!(code(&no_port), USAGE, "{}", output_text(&no_port));
    // A key that does not belong to the certificate: both files named.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = gen_cert(&dir.path().join("a"), "a", "ecdsa-p256", &[]);
    let (_, other_key) = gen_cert(&dir.path().join("b"), "b", "ecdsa-p256", &[]);
    let (c, k) = (cert.display().to_string(), other_key.display().to_string());
    let mismatch = dicomgate(&["echo", "127.0.0.1:9", "--tls", "--insecure", "--cert", &c, "--key", &k]);
    assert_eq!(code(&mismatch), CONFIG, "{}", output_text(&mismatch));
    assert!(stderr(&mismatch).contains(&c) && stderr(&mismatch).contains(&k), "{}", output_text(&mismatch));
}
