//! Logs captured in memory (for the audit line): installed once per test
//! binary as the global subscriber; tests look for their own lines.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LINES: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(m) = LINES.get() {
            m.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing `dicomgate` logs at info level.
pub fn capture() {
    if LINES.set(Mutex::new(Vec::new())).is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("dicomgate=info")
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init();
    }
}

/// Captured lines containing every one of `needles`.
pub fn matching(needles: &[&str]) -> Vec<String> {
    let Some(m) = LINES.get() else { return Vec::new() };
    let text = String::from_utf8_lossy(&m.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
}
