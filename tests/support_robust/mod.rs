//! Helpers for the robustness suites (`security_tls`, `abuse`): the real
//! `dicomgate` binary as a child process with its fd count and RSS, DCMTK
//! peers, raw and TLS attack clients, and the skip-locally / fail-in-CI rule
//! for external tools.
//!
//! Everything here talks to loopback only, and every wait has a deadline.
//! Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub mod attack;
pub mod daemon;
pub mod dcmtk;
pub mod hostile;
#[path = "../support/ports.rs"]
pub mod ports;
pub mod wire;

use std::process::Stdio;
use std::time::Duration;

/// Whether this is a CI run, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether `tool args…` runs and exits 0.
pub fn tool_runs(tool: &str, args: &[&str]) -> bool {
    std::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns from the test when a tool is missing (printing why), except under
/// `CI=true`, where it is a failure. Each entry: (program, version args, Debian package).
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr, $args:expr, $package:expr);+ $(;)?) => {
        $(
            if !$crate::support_robust::tool_runs($tool, $args) {
                if $crate::support_robust::in_ci() {
                    panic!("{} is required in CI (scripts/install-test-deps.sh installs {})", $tool, $package);
                }
                eprintln!("skipped: {} missing (apt-get install -y {})", $tool, $package);
                return;
            }
        )+
    };
}

/// Installs the process-wide rustls crypto provider (a second call is harmless).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a size from the environment (the larger runs of `scripts/abuse.sh`),
/// else the CI default.
pub fn size_from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Awaits `fut` or panics naming `what` once `within` has passed.
pub async fn within<T>(within: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// A small deterministic PRNG (xorshift64*), so "random" inputs are the same
/// on every run and a failure can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 32) as u8).collect()
    }
}

/// MiB in KiB, for RSS margins.
pub const MIB_IN_KIB: u64 = 1024;
