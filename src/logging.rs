//! Logging to stderr with tracing-subscriber: `log.format` text or json,
//! `log.level` as a filter directive; `RUST_LOG`, when set, overrides it.
//! In json mode every event, the audit event included, is one JSON object
//! per line.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Call once, before the runtime starts.
pub fn init(cfg: &LogConfig) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => EnvFilter::builder().parse_lossy(directive),
        // Validated when the configuration was loaded.
        _ => EnvFilter::builder().parse_lossy(&cfg.level),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // Already installed (tests): keep the first.
    let _ = result;
}
