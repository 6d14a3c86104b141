//! `dicomgate check --config FILE [--echo]`: validates everything `run` would
//! load — the file, every certificate and key, backend TLS material — without
//! binding a port or writing a file, and prints one line per listener in the
//! guide's words (Secured / UNSECURED). With `--echo`, C-ECHOes every backend
//! server as the health check would.
//!
//! Exit codes: 0 all is well; 3 valid but with warnings; 1 an echo failed;
//! 64 the configuration or a certificate/key is invalid.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{health, HealthRegistry};
use crate::config::{Config, ListenerConfig, Security};
use crate::exit;
use crate::pki::{self, CertificateInfo};
use crate::prepare::{self, Backends, Generation};

/// Per backend server, for `--echo`.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code for "valid, but look at the warnings".
pub const WARNINGS: u8 = 3;

#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// Runs `dicomgate check`; returns the process exit code.
pub fn check_command(config_file: &Path, echo: bool) -> u8 {
    let config = match Config::load(config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let mut report = Report::default();
    // The same preparation `run` does, backend by backend and listener by
    // listener so that every problem is reported in one pass.
    let health = HealthRegistry::new();
    let mut backends = Backends::new();
    for bc in config.backends.values() {
        match prepare::backend(bc, &health) {
            Ok(rt) => {
                if let Some(tls) = &rt.tls {
                    print_crls(&format!("backends.{}.tls", bc.name), &tls.crls);
                }
                backends.insert(bc.name.clone(), rt);
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for listener in config.listeners.values() {
        check_listener(listener, &backends, &mut report);
    }
    // The audit trail's CA and client identity, loaded as `run` loads them.
    match crate::atna::Prepared::new(&config) {
        Ok(_) => {
            if let Some(s) = &config.audit.syslog {
                println!("audit: IHE ATNA messages to syslog {} {}", s.transport.as_str(), s.address);
            }
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    let mut echo_failed = false;
    if echo && report.errors.is_empty() {
        echo_failed = !echo_backends(&backends);
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if !report.errors.is_empty() {
        exit::CONFIG
    } else if echo_failed {
        exit::FAILURE
    } else if !report.warnings.is_empty() {
        WARNINGS
    } else {
        println!("configuration OK");
        exit::OK
    }
}

fn check_listener(l: &Arc<ListenerConfig>, backends: &Backends, report: &mut Report) {
    let d = prepare::describe(l);
    let tail = format!("allow {}; calling AE {}; routes {}", d.allow, d.calling, d.routes);
    let scu = d.scu.unwrap_or("-");
    match &l.security {
        Security::Plaintext => {
            println!("{}: {} UNSECURED; {tail}", l.name, l.listen);
            report.warnings.push(format!(
                "listeners.{}: insecure_plaintext: test data only, never patient data (the guide's TLS \"Inactive\")",
                l.name
            ));
        }
        Security::Tls(t) => {
            let versions: Vec<String> = t.versions.iter().map(|v| v.to_string()).collect();
            if prepare::pending_generation(l) {
                println!(
                    "{}: {} Secured (TLS {}; SCU {scu}); certificate will be generated at {} on first start; {tail}",
                    l.name,
                    l.listen,
                    versions.join(", "),
                    t.certificate.display()
                );
                // The client CA, its CRLs and the pins exist already.
                match prepare::client_auth(l) {
                    Ok(crls) => print_crls(&format!("listeners.{}.tls", l.name), &crls),
                    Err(e) => report.errors.push(e.to_string()),
                }
                return;
            }
            // Inspected first: its messages name the file and the fix.
            match pki::inspect_pair(&t.certificate, &t.private_key) {
                Ok(cert) => {
                    println!(
                        "{}: {} Secured (TLS {}; SCU {scu}); certificate {}, expires {} ({} days), SHA-256 {}; {tail}",
                        l.name,
                        l.listen,
                        versions.join(", "),
                        cert.subject,
                        cert.validity_text().1,
                        cert.days_left(),
                        cert.fingerprint_sha256
                    );
                    certificate_warnings(&l.name, &cert, &t.private_key, report);
                }
                Err(e) => report.errors.push(format!("listeners.{}.tls: {e}", l.name)),
            }
            // Then exactly what `run` loads (rustls's own checks included).
            match prepare::listener(l, backends, Generation::ReportOnly) {
                Ok(built) => print_crls(&format!("listeners.{}.tls", l.name), &built.crls),
                Err(e) => {
                    let prefix = format!("listeners.{}.tls", l.name);
                    if !report.errors.iter().any(|x| x.starts_with(&prefix)) {
                        report.errors.push(e.to_string());
                    }
                }
            }
        }
    }
}

/// One line per CRL, and the CA certificates none is from (with CRLs
/// configured, what they issue directly is refused: status unknown).
fn print_crls(owner: &str, crls: &crate::tls::crl::CrlSet) {
    for crl in &crls.infos {
        println!("{}: {}: {crl}", crl.key(owner), crl.path.display());
    }
    for subject in &crls.uncovered {
        println!("{owner}: no CRL from CA {subject}: certificates it issues directly are refused (revocation status unknown)");
    }
}

fn certificate_warnings(listener: &str, cert: &CertificateInfo, key: &Path, report: &mut Report) {
    for finding in prepare::findings(listener, Some(cert), key) {
        let list = if finding.is_error() { &mut report.errors } else { &mut report.warnings };
        list.push(finding.to_string());
    }
}

/// C-ECHOes every backend server, with the health check's own probe;
/// prints one line each. True if all answered.
fn echo_backends(backends: &Backends) -> bool {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return false;
        }
    };
    let mut all_ok = true;
    for backend in backends.values() {
        let (name, ae) = (&backend.config.name, &backend.config.ae_title);
        for server in &backend.config.servers {
            match runtime.block_on(health::echo_probe(backend, server, ECHO_TIMEOUT)) {
                Ok(accepted) => {
                    println!("backend {name} {server} ({ae}): Accepted ({} ms)", accepted.elapsed.as_millis())
                }
                Err(e) => {
                    all_ok = false;
                    println!("backend {name} {server} ({ae}): FAILED: {e}");
                }
            }
        }
    }
    all_ok
}
