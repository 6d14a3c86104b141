//! Certificate revocation (issue 22): `listeners.NAME.tls.client_crls` and
//! `backends.NAME.tls.crls`, against a real CA run with `openssl ca` in a
//! temporary directory (index.txt, `-revoke`, `-gencrl`), the real daemon,
//! DCMTK's `echoscu +tls` and `storescp +tls`, `openssl s_client`, and an
//! rsyslogd receiver for the ATNA alert.
//!
//! The policy under test (docs/security.md): a listed certificate is refused
//! with the alert certificate_revoked, audited as `tls_revoked` with its
//! serial; a CRL past nextUpdate, of a CA not in the bundle, not signed by
//! it, or one webpki cannot use is an error naming the key and the file at
//! `check`, start and reload; SIGHUP re-reads CRLs without touching live
//! associations.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::atna::{self, ReceiverTls, Rsyslog};
use crate::support::cli::{code, dicomgate, stderr, stdout};
use crate::support::daemon::{run_until, Daemon};
use crate::support::dcmtk::storescp;
use crate::support::gateway::RunningGateway;
use crate::support::openssl_ca::{self, openssl_time, Issued, OpensslCa, Usage};
use crate::support::pki::pki;
use crate::support::tools::{args, output_text, run_scu};
use crate::support::{scu, CLOUD_AE, PACS_AE, PROMPT};
use dicomgate::report::Outcome;

const VENDOR_CA: &str = "Vendor Cloud CA";
/// As x509-parser (and so the status page, metrics and audit) writes it.
const VENDOR_ISSUER: &str = "CN=Vendor Cloud CA, O=dicomgate tests";
const SCU_DEADLINE: Duration = Duration::from_secs(30);

/// The vendor's CA with two client certificates, `good` and `leaked`;
/// `leaked` revoked when `revoke_leaked`. The test PKI (the gateway's
/// server certificate, `ca.pem` to trust it) is written to `dir` too.
struct Vendor {
    ca: OpensslCa,
    good: Issued,
    leaked: Issued,
}

fn vendor(dir: &Path, revoke_leaked: bool) -> Vendor {
    pki().write_to(dir);
    let ca = OpensslCa::create(dir, "vendor-ca", VENDOR_CA);
    let good = ca.issue("cloud-good", "cloud-good", Usage::Client);
    let leaked = ca.issue("cloud-leaked", "cloud-leaked", Usage::Client);
    if revoke_leaked {
        ca.revoke(&leaked);
    }
    Vendor { ca, good, leaked }
}

/// A TLS listener `NAME` requiring client certificates of the vendor CA,
/// checked against `crls`, routing PACS to backend `pacs`.
fn listener(name: &str, crls: &[&str]) -> String {
    let crls: Vec<String> = crls.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "  {name}:\n    listen: 127.0.0.1:0\n    tls:\n      certificate: server.pem\n      private_key: server.key\n      \
         client_ca: vendor-ca/ca.pem\n      client_crls: [{}]\n    allow: [127.0.0.1/32]\n    calling_ae_titles: [CLOUD]\n    \
         routes: {{PACS: pacs}}\n    timeouts: {{acse: 10s, dimse: 20s, connect: 5s}}\n",
        crls.join(", ")
    )
}

fn config(scp: SocketAddr, listeners: &[String], extra: &str) -> String {
    format!(
        "log: {{level: info}}\nadmin: {{listen: 127.0.0.1:0}}\nshutdown: {{grace_period: 1s}}\n{extra}backends:\n  pacs:\n    \
         ae_title: PACS\n    servers: [\"{scp}\"]\nlisteners:\n{}",
        listeners.concat()
    )
}

/// `echoscu +tls KEY CERT` as the cloud, trusting the gateway's test CA.
async fn echoscu_as(addr: SocketAddr, who: &Issued, dir: &Path) -> Output {
    let (key, cert) = (who.key.display().to_string(), who.cert.display().to_string());
    let mut a = args(&["+tls", &key, &cert, "+cf", "ca.pem", "-aet", CLOUD_AE, "-aec", PACS_AE]);
    a.extend(args(&["-to", "10", "-ta", "10", "-td", "10", &addr.ip().to_string(), &addr.port().to_string()]));
    run_scu("echoscu", &a, dir, SCU_DEADLINE).await
}

async fn assert_echo_ok(addr: SocketAddr, who: &Issued, dir: &Path, what: &str) {
    let out = echoscu_as(addr, who, dir).await;
    assert!(out.status.success(), "{what}: echoscu should succeed:\n{}", output_text(&out));
}

async fn assert_echo_refused(addr: SocketAddr, who: &Issued, dir: &Path, what: &str) {
    let out = echoscu_as(addr, who, dir).await;
    assert!(!out.status.success(), "{what}: echoscu should fail:\n{}", output_text(&out));
}

/// The audit lines of the daemon's log with `outcome` `tls_revoked`.
fn revoked_audit_lines(daemon: &Daemon) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("connection ended") && l.contains("tls_revoked"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_a_valid_one_accepted() {
    require_tool!("echoscu", "storescp", "openssl");
    if !atna::receiver_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let v = vendor(dir, true);
    let pem = v.ca.gencrl(&dir.join("vendor.crl.pem"));
    OpensslCa::to_der(&pem, &dir.join("vendor.crl"));
    let scp = storescp(PACS_AE, &[], dir).await;
    let receiver = Rsyslog::start(dir, ReceiverTls::Off).await;
    let audit = format!("audit:\n  syslog: {{address: \"{}\", transport: tcp}}\n", receiver.address());
    let yaml =
        config(scp.addr, &[listener("store", &["vendor.crl.pem"]), listener("store_der", &["vendor.crl"])], &audit);
    std::fs::write(dir.join("gw.yaml"), &yaml).expect("write config");
    let daemon = Daemon::start(&dir.join("gw.yaml")).await;

    for name in ["store", "store_der"] {
        let addr = daemon.addr(name);
        assert_echo_refused(addr, &v.leaked, dir, &format!("{name}: revoked certificate")).await;
        assert_echo_ok(addr, &v.good, dir, &format!("{name}: valid certificate of the same CA")).await;
    }
    // OpenSSL's own words for the alert (TLS 1.2: the refusal is inside the handshake).
    let addr = daemon.addr("store").to_string();
    let (key, cert) = (v.leaked.key.display().to_string(), v.leaked.cert.display().to_string());
    let s_client = args(&["s_client", "-connect", &addr, "-tls1_2", "-cert", &cert, "-key", &key, "-CAfile", "ca.pem"]);
    let out = run_scu("openssl", &s_client, dir, SCU_DEADLINE).await;
    assert!(output_text(&out).contains("certificate revoked"), "s_client:\n{}", output_text(&out));

    // Counted under their own outcome, nothing else refused.
    let scrape = wait_for_scrape(&daemon, |s| s.connections("store", "tls_revoked") == 2).await;
    for (name, revoked) in [("store", 2), ("store_der", 1)] {
        assert_eq!(scrape.connections(name, Outcome::TlsRevoked.as_str()), revoked, "{}", scrape.0);
        assert_eq!(scrape.connections(name, Outcome::Forwarded.as_str()), 1, "{}", scrape.0);
        assert_eq!(scrape.connections(name, Outcome::TlsError.as_str()), 0, "{}", scrape.0);
    }
    // The audit line says revoked, with the serial the CA's index knows: one
    // per listener. The second refusal of the same kind from the same source
    // (s_client on `store`) is counted, and summarised in the refusal log,
    // not written as a line of its own (docs/admission.md).
    let lines = revoked_audit_lines(&daemon);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let serial = format!("serial {}", v.leaked.serial);
    assert!(lines.iter().all(|l| l.contains("revoked") && l.contains(&serial)), "{serial}: {lines:#?}");
    // ATNA: a Node Authentication Security Alert naming it.
    let alert = receiver
        .wait_for("Node Authentication alert for the revoked certificate", PROMPT, |m| {
            atna::is_event(m, "110113", "110126") && m.xml.contains("revoked") && m.xml.contains(&serial)
        })
        .await;
    assert_eq!(alert.procid, daemon.pid().to_string(), "PROCID is the daemon's");
    if let Err(problems) = atna::schema::check(&alert.xml) {
        panic!("not a valid AuditMessage: {problems:#?}\n{}", alert.xml);
    }

    // The CRL as the metrics, /status and the page show it.
    let next_update = scrape
        .value("dicomgate_tls_crl_next_update_timestamp_seconds", &[("listener", "store"), ("issuer", VENDOR_ISSUER)]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    // default_crl_days = 7 in the CA's configuration.
    assert!((now + 6.9 * 86_400.0..now + 7.1 * 86_400.0).contains(&next_update), "{next_update}\n{}", scrape.0);
    let (_, status) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let store =
        status["listeners"].as_array().expect("listeners").iter().find(|l| l["name"] == "store").expect("store");
    let crl = &store["crls"][0];
    assert_eq!((crl["key"].as_str(), crl["revoked"].as_u64()), (Some("listeners.store.tls.client_crls[0]"), Some(1)));
    assert_eq!(crl["issuer"].as_str(), Some(VENDOR_ISSUER));
    let (_, page) = daemon.get("/").await;
    assert!(page.contains("Certificate revocation lists") && page.contains("listeners.store_der.tls.client_crls[0]"));
}

async fn wait_for_scrape(
    daemon: &Daemon,
    cond: impl Fn(&crate::support::daemon::Scrape) -> bool,
) -> crate::support::daemon::Scrape {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let scrape = daemon.scrape().await;
        if cond(&scrape) || tokio::time::Instant::now() >= deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_after_start_is_refused_after_sighup_while_its_live_association_goes_on() {
    require_tool!("echoscu", "openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let v = vendor(dir, false);
    let crl = v.ca.gencrl(&dir.join("vendor.crl.pem"));
    // Serves associations concurrently (storescp takes one at a time, and
    // one stays open here).
    let scp = crate::support::scp::TestScp::spawn(PACS_AE).await;
    std::fs::write(dir.join("gw.yaml"), config(scp.addr, &[listener("store", &["vendor.crl.pem"])], "")).expect("yaml");
    let daemon = Daemon::start(&dir.join("gw.yaml")).await;
    let addr = daemon.addr("store");

    // A live association with the certificate about to be revoked.
    let tls = openssl_ca::client_config(&v.leaked, &dir.join("ca.pem"));
    let mut live = scu::associate_tls(addr, tls, CLOUD_AE, PACS_AE).await.expect("associate before revocation");
    assert_eq!(scu::echo(&mut live, 1).await, Ok(0));

    // The CA revokes it and publishes a new CRL; the file is replaced as a
    // fetch job would (write, then rename); SIGHUP.
    v.ca.revoke(&v.leaked);
    let fresh = v.ca.gencrl(&dir.join("vendor.crl.new"));
    std::fs::rename(&fresh, &crl).expect("replace the CRL");
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", PROMPT).await;

    // The live association was not cut: it still echoes (and releases, below).
    assert_eq!(scu::echo(&mut live, 2).await, Ok(0), "the live association after SIGHUP");
    assert_echo_refused(addr, &v.leaked, dir, "revoked after start, after SIGHUP").await;
    assert_echo_ok(addr, &v.good, dir, "the other certificate").await;
    assert_eq!(scu::echo(&mut live, 3).await, Ok(0), "the live association, still");
    live.release().await.expect("release the live association");

    let scrape = wait_for_scrape(&daemon, |s| s.connections("store", "tls_revoked") == 1).await;
    assert_eq!(scrape.connections("store", "tls_revoked"), 1, "{}", scrape.0);
    assert_eq!(scrape.connections("store", "forwarded"), 2, "{}", scrape.0);
    assert!(revoked_audit_lines(&daemon).iter().any(|l| l.contains(&format!("serial {}", v.leaked.serial))));
    let (_, status) = daemon.get("/status").await;
    assert!(status.contains("\"revoked\": 1"), "the reloaded CRL lists one serial:\n{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_next_update_is_refused_at_check_start_and_reload() {
    require_tool!("storescp", "echoscu", "openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let v = vendor(dir, true);
    let stale =
        v.ca.gencrl_dated(&dir.join("stale.crl.pem"), Some((&openssl_time(-2 * 86_400), &openssl_time(-86_400))));
    let good = v.ca.gencrl(&dir.join("vendor.crl.pem"));
    let scp = storescp(PACS_AE, &[], dir).await;
    let stale_yaml = dir.join("stale.yaml");
    std::fs::write(&stale_yaml, config(scp.addr, &[listener("store", &["stale.crl.pem"])], "")).expect("yaml");
    let key = "listeners.store.tls.client_crls[0]";
    let named = |text: &str| text.contains(key) && text.contains("stale.crl.pem") && text.contains("nextUpdate");

    let out = dicomgate(&["check", "--config", &stale_yaml.display().to_string()]);
    assert_eq!(code(&out), 64, "check:\n{}", output_text(&out));
    assert!(named(&stderr(&out)), "check names the key and the file:\n{}", output_text(&out));
    let run = run_until(&["run", "--config", &stale_yaml.display().to_string()], SCU_DEADLINE).await;
    let run = run.unwrap_or_else(|said| panic!("run with a stale CRL kept running:\n{said}"));
    assert_eq!(run.status.code(), Some(64), "run:\n{}", output_text(&run));
    assert!(named(&stderr(&run)), "run names the key and the file:\n{}", output_text(&run));

    // Running with a current CRL; a stale one swapped in is refused on
    // reload and the previous list keeps working.
    std::fs::write(dir.join("gw.yaml"), config(scp.addr, &[listener("store", &["vendor.crl.pem"])], "")).expect("yaml");
    let daemon = Daemon::start(&dir.join("gw.yaml")).await;
    std::fs::copy(&stale, &good).expect("swap in the stale CRL");
    daemon.signal("HUP");
    daemon.wait_for_log("reload failed", PROMPT).await;
    let log = daemon.log_text();
    let named_on_reload = log.contains(key) && log.contains("vendor.crl.pem") && log.contains("nextUpdate");
    assert!(named_on_reload, "the reload error names the key and the file:\n{log}");
    let addr = daemon.addr("store");
    assert_echo_refused(addr, &v.leaked, dir, "revoked, old list still in force").await;
    assert_echo_ok(addr, &v.good, dir, "valid, old list still in force").await;
    let scrape = daemon.scrape().await;
    assert_eq!(scrape.value("dicomgate_config_reloads_total", &[("result", "failure")]), 1.0, "{}", scrape.0);
}

/// A CRL whose nextUpdate passes while loaded refuses every certificate it
/// governs (expiration enforced), with a detail saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_that_expires_while_loaded_refuses_every_client() {
    require_tool!("openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let v = vendor(dir, false);
    const VALID_FOR: i64 = 8;
    let dates = (openssl_time(-60), openssl_time(VALID_FOR));
    v.ca.gencrl_dated(&dir.join("short.crl.pem"), Some((&dates.0, &dates.1)));
    let expires = tokio::time::Instant::now() + Duration::from_secs(VALID_FOR as u64);
    let scp = crate::support::scp::TestScp::spawn(PACS_AE).await;
    let gw = RunningGateway::start_yaml(dir, &config(scp.addr, &[listener("store", &["short.crl.pem"])], "")).await;
    tokio::time::sleep_until(expires + Duration::from_secs(1)).await;
    let tls = openssl_ca::client_config(&v.good, &dir.join("ca.pem"));
    let refused = scu::echo_tls(gw.addr(), tls, CLOUD_AE, PACS_AE).await;
    assert!(refused.is_err(), "a valid certificate under an expired CRL must be refused");
    crate::support::wait_for_count(&gw.metrics, "store", Outcome::TlsError, 1).await;
    let recent = gw.admin_get("/status").await.1;
    assert!(recent.contains("revocation list expired"), "{recent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_pem_and_der_crls_and_names_foreign_forged_and_v1_ones() {
    require_tool!("openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let v = vendor(dir, true);
    let pem = v.ca.gencrl(&dir.join("vendor.crl.pem"));
    OpensslCa::to_der(&pem, &dir.join("vendor.crl"));
    let other = OpensslCa::create(dir, "other-ca", "Some Other CA");
    other.gencrl(&dir.join("other.crl.pem"));
    // Same name as the vendor's CA, another key: a forged list.
    let impostor = OpensslCa::create(dir, "impostor-ca", VENDOR_CA);
    impostor.gencrl(&dir.join("forged.crl.pem"));
    v.ca.gencrl_v1(&dir.join("v1.crl.pem"));
    // `check` warns about keys others can read; not what this test is about.
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let scp: SocketAddr = "127.0.0.1:104".parse().expect("addr");
    let check = |crls: &[&str]| {
        let path = dir.join("check.yaml");
        std::fs::write(&path, config(scp, &[listener("store", crls)], "")).expect("yaml");
        dicomgate(&["check", "--config", &path.display().to_string()])
    };

    let out = check(&["vendor.crl.pem", "vendor.crl"]);
    // Two lists of one CA: refused, naming both positions.
    assert_eq!(code(&out), 64, "{}", output_text(&out));
    assert!(
        stderr(&out).contains("client_crls[1]") && stderr(&out).contains("client_crls[0]"),
        "{}",
        output_text(&out)
    );
    for file in ["vendor.crl.pem", "vendor.crl"] {
        let out = check(&[file]);
        assert_eq!(code(&out), 0, "{file}:\n{}", output_text(&out));
        let line = format!(
            "listeners.store.tls.client_crls[0]: {}: CRL of {VENDOR_ISSUER}, 1 revoked",
            dir.join(file).display()
        );
        assert!(stdout(&out).contains(&line), "{file}: no {line:?} in\n{}", output_text(&out));
    }
    for (file, why) in [
        ("other.crl.pem", "not a certificate in client_ca"),
        ("forged.crl.pem", "not signed by"),
        ("v1.crl.pem", "crlnumber"),
    ] {
        let out = check(&["vendor.crl.pem", file]);
        assert_eq!(code(&out), 64, "{file}:\n{}", output_text(&out));
        let err = stderr(&out);
        let path = dir.join(file).display().to_string();
        assert!(
            err.contains("listeners.store.tls.client_crls[1]") && err.contains(&path) && err.contains(why),
            "{file}: expected the key, {path} and {why:?}:\n{err}"
        );
    }
    // Judged before generate_if_missing has made the listener's pair, too.
    let yaml = config(scp, &[listener("store", &["forged.crl.pem"])], "").replace(
        "      certificate: server.pem\n      private_key: server.key\n",
        "      certificate: new.pem\n      private_key: new.key\n      generate_if_missing: true\n",
    );
    std::fs::write(dir.join("generate.yaml"), yaml).expect("yaml");
    let out = dicomgate(&["check", "--config", &dir.join("generate.yaml").display().to_string()]);
    assert_eq!(code(&out), 64, "{}", output_text(&out));
    assert!(
        stderr(&out).contains("listeners.store.tls.client_crls[0]") && stderr(&out).contains("not signed by"),
        "{}",
        output_text(&out)
    );
    assert!(!dir.join("new.pem").exists(), "check writes nothing");
    // Without client_ca a CRL would check nothing: refused.
    let yaml = config(scp, &[listener("store", &["vendor.crl.pem"])], "")
        .replace("      client_ca: vendor-ca/ca.pem\n", "      client_certificates: [cloud.pem]\n");
    std::fs::write(dir.join("pinned.yaml"), yaml).expect("yaml");
    let out = dicomgate(&["check", "--config", &dir.join("pinned.yaml").display().to_string()]);
    assert_eq!(code(&out), 64, "{}", output_text(&out));
    assert!(
        stderr(&out).contains("listeners.store.tls.client_crls: is set but client_ca is not"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_scp_whose_certificate_is_revoked_is_refused_and_the_health_check_says_why() {
    require_tool!("storescp", "echoscu", "openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pki().write_to(dir);
    let hospital = OpensslCa::create(dir, "hospital-ca", "Hospital CA");
    let revoked = hospital.issue("pacs-revoked", "pacs", Usage::Server);
    let good = hospital.issue("archive", "archive", Usage::Server);
    hospital.revoke(&revoked);
    hospital.gencrl(&dir.join("hospital.crl.pem"));
    let tls_scp = |who: &Issued| {
        let (key, cert) = (who.key.display().to_string(), who.cert.display().to_string());
        vec!["+tls".to_owned(), key, cert, "-ic".to_owned()]
    };
    let pacs_args = tls_scp(&revoked);
    let archive_args = tls_scp(&good);
    let pacs = storescp(PACS_AE, &pacs_args.iter().map(String::as_str).collect::<Vec<_>>(), dir).await;
    let archive = storescp("ARCHIVE", &archive_args.iter().map(String::as_str).collect::<Vec<_>>(), dir).await;
    let tls = "{ca: hospital-ca/ca.pem, server_name: localhost, crls: [hospital.crl.pem]}";
    let health = "{mode: echo, interval: 500ms, fall: 1, rise: 1}";
    let yaml = format!(
        "log: {{level: warn}}\nadmin: {{listen: 127.0.0.1:0}}\nshutdown: {{grace_period: 1s}}\nbackends:\n  \
         pacs: {{ae_title: PACS, servers: [\"{}\"], tls: {tls}, health_check: {health}}}\n  \
         archive: {{ae_title: ARCHIVE, servers: [\"{}\"], tls: {tls}, health_check: {health}}}\n\
         listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n    \
         routes: {{PACS: pacs, ARCHIVE: archive}}\n",
        pacs.addr, archive.addr
    );
    let gw = RunningGateway::start_yaml(dir, &yaml).await;
    gw.wait_state("archive", archive.addr, "up", Duration::from_secs(15)).await;
    gw.wait_state("pacs", pacs.addr, "down", Duration::from_secs(15)).await;
    let probe = gw.last_probe("pacs", pacs.addr);
    assert!(probe.contains("Revoked") && probe.contains("tls.crls"), "last probe: {probe}");

    // An association routed to it is refused; the good SCP is reached.
    assert!(scu::echo_plain(gw.addr(), CLOUD_AE, PACS_AE).await.is_err(), "forwarded to a revoked SCP");
    scu::echo_plain(gw.addr(), CLOUD_AE, "ARCHIVE").await.expect("the SCP with a valid certificate");
    crate::support::wait_for_count(&gw.metrics, "store", Outcome::BackendUnavailable, 1).await;
    assert!(!pacs.log_text().contains("Association Received"), "nothing reached the revoked SCP:\n{}", pacs.log_text());

    let (_, status) = gw.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let pacs_view = &status["backends"]["pacs"];
    assert_eq!(pacs_view["crls"][0]["key"].as_str(), Some("backends.pacs.tls.crls[0]"));
    assert_eq!(pacs_view["crls"][0]["revoked"].as_u64(), Some(1));
    let result = pacs_view["servers"][0]["last_probe"]["result"].as_str().unwrap_or_default();
    assert!(result.contains("revoked"), "{pacs_view:#}");
    let (_, page) = gw.admin_get("/").await;
    assert!(page.contains("backends.pacs.tls.crls[0]") && page.contains("revoked"), "status page");
    let scrape = gw.metrics.render();
    assert!(
        scrape.contains("dicomgate_tls_crl_next_update_timestamp_seconds{backend=\"pacs\",issuer=\"CN=Hospital CA, O=dicomgate tests\"}"),
        "{scrape}"
    );
}
