//! Issue 11, configuration footguns, through the real binary: each error
//! names its key path; an X.509 v1 certificate (what `openssl x509 -req`
//! without `-extfile` still makes) is refused at load with how to re-issue
//! it, a pinned v1 client certificate is refused the same way, and a v1
//! client certificate gets an audit line that says so; `run`
//! warns like `check` about a private key that group or others can read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::daemon::{run_to_exit, Daemon};
use crate::support::pki::pki;

const WITHIN: Duration = Duration::from_secs(30);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `v1ca.pem`/`v1ca.key` (a self-signed CA) and `NAME.pem`/`NAME.key`, an
/// X.509 v1 certificate it signed the way OpenSSL makes them by default.
fn openssl_v1(dir: &Path, name: &str) {
    if !dir.join("v1ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "v1ca.key",
                "-out",
                "v1ca.pem",
                "-subj",
                "/CN=v1 CA",
            ],
        );
    }
    let (csr, key, pem) = (format!("{name}.csr"), format!("{name}.key"), format!("{name}.pem"));
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(dir, &["x509", "-req", "-in", &csr, "-CA", "v1ca.pem", "-CAkey", "v1ca.key", "-out", &pem, "-days", "30"]);
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in", &pem]).current_dir(dir).output();
    let text = String::from_utf8_lossy(&text.expect("openssl x509 -text").stdout).into_owned();
    assert!(text.contains("Version: 1 (0x0)"), "not a v1 certificate:\n{text}");
}

fn config(tls: &str, extra: &str) -> String {
    format!(
        r#"
log: {{format: json, level: info}}
backends:
  pacs: {{ae_title: PACS, servers: ["127.0.0.1:9"], health_check: {{mode: "off"}}}}
listeners:
  store:
    listen: "127.0.0.1:0"
    tls: {tls}
    allow: [127.0.0.0/8]
    routes: {{"*": pacs}}
{extra}"#
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn footgun_settings_fail_check_and_run_naming_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki().write_to(dir.path());
    let tls = "{certificate: server.pem, private_key: server.key";
    let cases = [
        (format!("{tls}, client_certificates: []}}"), "", "listeners.store.tls.client_certificates"),
        (format!("{tls}}}"), "    timeouts: {dimse: 1000000000y}\n", "listeners.store.timeouts.dimse"),
        (format!("{tls}}}"), "    relay_mode: bytes\n", "listeners.store.relay_mode"),
    ];
    let path = dir.path().join("dicomgate.yaml");
    let path_arg = path.display().to_string();
    for (tls, extra, key) in &cases {
        std::fs::write(&path, config(tls, extra)).expect("config");
        for command in ["check", "run"] {
            let out = run_to_exit(&[command, "--config", &path_arg], WITHIN).await;
            assert_eq!(out.status.code(), Some(64), "{command} {key}: {}", stderr(&out));
            assert!(stderr(&out).contains(key), "{command}: {key} not named:\n{}", stderr(&out));
        }
    }
}

#[tokio::test]
async fn an_x509_v1_listener_certificate_is_refused_with_how_to_reissue_it() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_v1(dir.path(), "v1");
    let path = dir.path().join("dicomgate.yaml");
    std::fs::write(&path, config("{certificate: v1.pem, private_key: v1.key}", "")).expect("config");
    let path_arg = path.display().to_string();
    for command in ["check", "run"] {
        let out = run_to_exit(&[command, "--config", &path_arg], WITHIN).await;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{command}: {said}");
        for needle in ["listeners.store.tls", "v1.pem", "X.509 v1", "dicomgate gen-cert", "-extfile"] {
            assert!(said.contains(needle), "{command}: no {needle:?} in:\n{said}");
        }
    }
}

/// Issue 20, finding 8: a pinned v1 client certificate loaded fine and then
/// failed every handshake; `check` and `run` now refuse it, naming the key,
/// the file and how to reissue it.
#[tokio::test]
async fn a_pinned_x509_v1_client_certificate_fails_check_and_run() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    pki().write_to(dir.path());
    openssl_v1(dir.path(), "cloud_v1");
    let path = dir.path().join("dicomgate.yaml");
    let tls = "{certificate: server.pem, private_key: server.key, client_certificates: [cloud.pem, cloud_v1.pem]}";
    std::fs::write(&path, config(tls, "")).expect("config");
    let path_arg = path.display().to_string();
    for command in ["check", "run"] {
        let out = run_to_exit(&[command, "--config", &path_arg], WITHIN).await;
        let said = stderr(&out);
        eprintln!("{command}: {said}");
        assert_eq!(out.status.code(), Some(64), "{command}: {said}");
        for needle in ["listeners.store.tls.client_certificates[1]", "cloud_v1.pem", "X.509 v1", "dicomgate gen-cert"] {
            assert!(said.contains(needle), "{command}: no {needle:?} in:\n{said}");
        }
    }
}

#[tokio::test]
async fn a_v1_client_certificate_is_audited_as_such() {
    require_tool!("openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    pki().write_to(dir.path());
    openssl_v1(dir.path(), "cloud_v1");
    let path = dir.path().join("dicomgate.yaml");
    let tls = "{certificate: server.pem, private_key: server.key, client_ca: v1ca.pem}";
    std::fs::write(&path, config(tls, "")).expect("config");
    let daemon = Daemon::start(&path).await;

    // rustls refuses to even load a v1 client certificate; OpenSSL sends it.
    let store = daemon.addr("store").to_string();
    let s_client = ["s_client", "-connect", &store, "-cert", "cloud_v1.pem", "-key", "cloud_v1.key", "-brief"];
    let out = tokio::process::Command::new("openssl")
        .args(s_client)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let _ = tokio::time::timeout(WITHIN, out).await.expect("openssl s_client ends");
    daemon.wait_for_log("connection ended", WITHIN).await;
    let audit = daemon
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "dicomgate::audit")
        .expect("an audit line");
    assert_eq!(audit["outcome"], "tls_error", "{audit}");
    let detail = audit["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("X.509 v1") && detail.contains("dicomgate gen-cert"), "{audit}");
}

#[tokio::test]
async fn run_warns_about_a_private_key_others_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki().write_to(dir.path());
    let key = dir.path().join("server.key");
    let path = dir.path().join("dicomgate.yaml");
    std::fs::write(&path, config("{certificate: server.pem, private_key: server.key}", "")).expect("config");
    let warning = "readable by group or others; run chmod 600";

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let mut private = Daemon::start(&path).await;
    private.signal("TERM");
    private.wait_exit(WITHIN).await;
    assert!(!private.log_text().contains(warning), "{}", private.log_text());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod 640");
    let mut shared = Daemon::start(&path).await;
    shared.signal("TERM");
    shared.wait_exit(WITHIN).await;
    let log = shared.log_text();
    assert!(log.contains(warning) && log.contains("listeners.store.tls.private_key"), "{log}");
}
