//! `dicomgate check --config FILE [--echo]`: validates everything `run` would
//! load — the file, every certificate and key, backend TLS material — without
//! binding a port or writing a file, and prints one line per listener in the
//! guide's words (Secured / UNSECURED). With `--echo`, C-ECHOes every backend
//! server as the health check would.
//!
//! Exit codes: 0 all is well; 3 valid but with warnings; 1 an echo failed;
//! 64 the configuration or a certificate/key is invalid.

use std::path::Path;
use std::time::Duration;

use crate::config::{BackendConfig, Config, ListenerConfig, Security};
use crate::echo::{c_echo, EchoRequest, EchoTls};
use crate::exit;
use crate::pki::{self, CertificateInfo};
use crate::tls;

/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARNING_DAYS: i64 = 30;
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
    for listener in config.listeners.values() {
        check_listener(listener, &mut report);
    }
    for backend in config.backends.values() {
        if let Some(t) = &backend.tls {
            if let Err(e) = tls::backend_tls(t) {
                report.errors.push(format!("backends.{}.tls: {e}", backend.name));
            }
        }
    }
    let mut echo_failed = false;
    if echo && report.errors.is_empty() {
        echo_failed = !echo_backends(&config);
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

fn check_listener(l: &ListenerConfig, report: &mut Report) {
    let allow: Vec<String> = l.allow.iter().map(|n| n.to_string()).collect();
    let routes: Vec<String> = l
        .routes
        .exact
        .iter()
        .map(|(ae, b)| format!("{ae}→{b}"))
        .chain(l.routes.fallback.iter().map(|b| format!("*→{b}")))
        .collect();
    let calling = match &l.calling_ae_titles {
        Some(list) => list.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","),
        None => "any".to_owned(),
    };
    let tail = format!("allow {}; calling AE {calling}; routes {}", allow.join(","), routes.join(","));
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
            let scu = if t.client_auth.required() { "Authenticated" } else { "Anonymous" };
            let missing = !t.certificate.exists() && !t.private_key.exists();
            if missing && t.generate_if_missing {
                println!(
                    "{}: {} Secured (TLS {}; SCU {scu}); certificate will be generated at {} on first start; {tail}",
                    l.name,
                    l.listen,
                    versions.join(", "),
                    t.certificate.display()
                );
                return;
            }
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
            // The same loading `run` does (rustls's own checks included).
            if let Err(e) = tls::ServerIdentity::load(&t.certificate, &t.private_key)
                .and_then(|identity| tls::server_config(t, &identity))
            {
                let msg = format!("listeners.{}.tls: {e}", l.name);
                if !report.errors.iter().any(|x| x.starts_with(&format!("listeners.{}.tls", l.name))) {
                    report.errors.push(msg);
                }
            }
        }
    }
}

fn certificate_warnings(listener: &str, cert: &CertificateInfo, key: &Path, report: &mut Report) {
    let days = cert.days_left();
    if days < 0 {
        report.errors.push(format!("listeners.{listener}.tls.certificate: expired {} days ago", -days));
    } else if days < EXPIRY_WARNING_DAYS {
        report.warnings.push(format!(
            "listeners.{listener}.tls.certificate: expires in {days} days; renew it and upload the new one to the cloud"
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(key) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                report.warnings.push(format!(
                    "listeners.{listener}.tls.private_key: {} has mode {mode:04o}, readable by group or others; run chmod 600",
                    key.display()
                ));
            }
        }
    }
}

/// C-ECHOes every backend server; prints one line each. True if all answered.
fn echo_backends(config: &Config) -> bool {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return false;
        }
    };
    let mut all_ok = true;
    for backend in config.backends.values() {
        for server in &backend.servers {
            let line = runtime.block_on(echo_one(backend, &server.host, server.port));
            match line {
                Ok(text) => println!("backend {} {server} ({}): {text}", backend.name, backend.ae_title),
                Err(text) => {
                    all_ok = false;
                    println!("backend {} {server} ({}): FAILED: {text}", backend.name, backend.ae_title);
                }
            }
        }
    }
    all_ok
}

async fn echo_one(backend: &BackendConfig, host: &str, port: u16) -> Result<String, String> {
    let tls = match &backend.tls {
        Some(t) => {
            let loaded = tls::backend_tls(t).map_err(|e| e.to_string())?;
            let server_name = match loaded.server_name {
                Some(n) => n,
                None => rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?,
            };
            Some(EchoTls { config: loaded.config, server_name })
        }
        None => None,
    };
    let request = EchoRequest {
        host: host.to_owned(),
        port,
        calling_ae: backend.health_check.calling_ae_title.clone(),
        called_ae: backend.ae_title.clone(),
        tls,
        timeout: ECHO_TIMEOUT,
    };
    match c_echo(&request).await {
        Ok(accepted) => Ok(format!("Accepted ({} ms)", accepted.elapsed.as_millis())),
        Err(e) => Err(e.to_string()),
    }
}
