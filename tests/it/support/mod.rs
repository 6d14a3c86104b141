//! The one test harness of the integration tests (`tests/it`):
//!
//! - in-process gateway: [`gateway`] (generated or literal YAML, port 0,
//!   reload, health, admin), [`pki`] (the in-memory test PKI), [`logs`];
//! - the real binary as a child: [`daemon`] (`dicomgate run`, bound
//!   addresses read from its startup lines), [`cli`] (one-shot commands);
//! - peers: [`scp`] / [`scu`] (dicom-ul), [`dimse`], [`dicom_file`], [`raw`]
//!   (hand-built PDUs, PROXY headers, raw TLS), [`wire`], [`hostile`],
//!   [`attack`] and [`flood`] (misbehaving and flooding clients);
//! - a real CA: [`openssl_ca`] (`openssl ca`: issue, revoke, CRLs);
//! - external programs: [`tools`] (availability, children killed on drop),
//!   [`dcmtk`], [`ports`] (for children that cannot bind port 0), [`atna`]
//!   (an rsyslogd receiver and the PS3.15 A.5.1 AuditMessage checker).
//!
//! Missing tools skip a test locally and fail it under `CI=true`
//! ([`require_tool!`], [`ci`]). Every wait has a deadline; only children
//! this harness spawned are killed, by their own handle.

pub mod atna;
pub mod attack;
pub mod cli;
pub mod daemon;
pub mod dcmtk;
pub mod dicom_file;
pub mod dimse;
pub mod flood;
pub mod gateway;
pub mod hostile;
pub mod logs;
pub mod openssl_ca;
pub mod pki;
pub mod ports;
pub mod raw;
pub mod scp;
pub mod scu;
pub mod tools;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use dicomgate::report::Outcome;
use dicomgate::Metrics;

/// Deadline for anything that should happen "at once" on a loaded 2-core box.
pub const PROMPT: Duration = Duration::from_secs(5);

/// The calling AE title the test cloud uses, and the SCP's.
pub const CLOUD_AE: &str = "CLOUD";
pub const PACS_AE: &str = "PACS";

/// Whether this is a CI run, where a missing tool fails the test instead of
/// skipping it (`CI` set to anything but empty, `0` or `false`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Reports a test that cannot run here (a tool is missing): fails under
/// `CI=true`; otherwise prints `skipped: WHY` and, when `scripts/test.sh`
/// set `DICOMGATE_SKIPPED`, appends `TEST: WHY` to that file, so the run
/// ends with a summary of what did not run instead of hiding it in
/// captured output. The caller returns from the test.
pub fn skip(why: &str) {
    assert!(!ci(), "{why}: required in CI (scripts/install-test-deps.sh installs it)");
    eprintln!("skipped: {why}");
    if let Some(path) = std::env::var_os("DICOMGATE_SKIPPED") {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        let line = format!("{test}: {why}\n");
        // O_APPEND: lines of tests running in parallel do not interleave.
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
        if let Ok(mut file) = file {
            let _ = std::io::Write::write_all(&mut file, line.as_bytes());
        }
    }
}

/// Returns from the test when one of the programs is missing, printing
/// `skipped: [..] missing (apt-get install -y PACKAGE)` on stderr, except
/// under `CI=true`, where it panics (a CI box without the tool is broken).
///
/// `require_tool!("openssl")`, `require_tool!("haproxy", "storescp")`, or
/// `require_tool!(dcmtk)` for every DCMTK program the suites run.
#[macro_export]
macro_rules! require_tool {
    (dcmtk) => {
        if !$crate::support::tools::present(&$crate::support::dcmtk::TOOLS) {
            return;
        }
    };
    ($($tool:expr),+ $(,)?) => {
        if !$crate::support::tools::present(&[$($tool),+]) {
            return;
        }
    };
}

/// Installs the process-wide rustls crypto provider once (dicom-ul needs
/// one chosen; a second install in the same process is harmless).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Awaits `fut` or panics naming `what` once `within` has passed.
pub async fn within<T>(within: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `within` with
/// `what` and the text `context()` returns then. Returns how long it took.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!("not within {within:?}: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `dicomgate_connections_total{listener,outcome}` reaches
/// `expected` (the gateway counts a connection when its task ends, which can
/// be a moment after the peer saw the last byte), then checks it is exactly
/// `expected`.
pub async fn wait_for_count(metrics: &Metrics, listener: &str, outcome: Outcome, expected: u64) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let now = metrics.connections(listener, outcome.as_str());
        if now >= expected {
            assert_eq!(
                now,
                expected,
                "dicomgate_connections_total{{listener={listener:?},outcome={:?}}}",
                outcome.as_str()
            );
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "dicomgate_connections_total{{listener={listener:?},outcome={:?}}} is {now}, \
                 expected {expected}\n{}",
                outcome.as_str(),
                metrics.render()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `dicomgate_active_connections{listener}` is `expected`.
pub async fn wait_for_active(metrics: &Metrics, listener: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    while metrics.active(listener) != expected {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "dicomgate_active_connections{{listener={listener:?}}} is {}, expected {expected}",
                metrics.active(listener)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that no connection of `listener` ended with any outcome other
/// than those listed (catches a test passing for the wrong reason).
pub fn assert_only_outcomes(metrics: &Metrics, listener: &str, allowed: &[Outcome]) {
    for outcome in Outcome::ALL {
        if !allowed.contains(&outcome) {
            assert_eq!(
                metrics.connections(listener, outcome.as_str()),
                0,
                "unexpected outcome {:?} counted on {listener:?}\n{}",
                outcome.as_str(),
                metrics.render()
            );
        }
    }
}
