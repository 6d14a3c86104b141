//! dicomgate: DICOM-TLS termination for a hospital DMZ.
//!
//! One association passes these stages, each a module:
//!
//! ```text
//! listener ─▶ connection::client ──────────────────▶ routing ─▶ backend ─▶ connection::association ─▶ relay
//! (accept,    (PROXY header, TLS handshake,           (policy    (health-   (RQ forwarded, SCP's        (PDU-framed,
//!  allow list, first PDU under the ACSE deadline)      on raw     ordered    AC/RJ back, Max Length      DIMSE-aware,
//!  limits)                                             AE fields) failover)  clamped)                    idle timeout)
//! ```
//!
//! - [`config`]: YAML → validated [`config::Config`] (pure; errors name the key path).
//! - [`prepare`]: what `run` and `check` both build from a config (listener and backend runtimes).
//! - [`server`]: builds the runtime snapshot, binds listeners, drains on shutdown.
//! - [`listener`]: accept loop, source allow list, the pre-association budget, the refusal log (summaries, not a line each).
//! - [`proxy_protocol`]: the PROXY header of an L4 load balancer (the real client address).
//! - [`connection`]: one connection, phase by phase, each under a named deadline; `connection::record::finish`
//!   is the one place a finished connection becomes audit event, metrics, status-page entry and ATNA event.
//! - [`tls`]: server configuration, backend client configuration, client-certificate pinning, the
//!   handshake (rustls) and our record layer after it (`tls::record`), and the stream type whose
//!   plaintext the relay forwards where it was decrypted (`tls::stream`).
//! - [`dicom`]: PDU constants, A-ASSOCIATE-RQ raw view, AE titles, RJ/ABORT PDUs, and the one DIMSE
//!   command-set reader and status table (`dicom::command_set`).
//! - [`routing`]: pure policy: (request, listener policy) → forward or reject.
//! - [`backend`]: connect to a backend's servers in health order, with failover; health monitors.
//! - [`relay`]: PDU-framed relay in both directions.
//! - [`farewell`]: our last PDU and the close, bounded, for `connection` and `relay` alike.
//! - [`audit`]: the one structured event per connection.
//! - [`atna`]: IHE ATNA audit messages (DICOM PS3.15 A.5) to a syslog receiver.
//! - [`metrics`]: every metric name and label.
//! - [`pki`]: certificate generation and inspection (`gen-cert`, `generate_if_missing`).
//! - [`echo`]: the C-ECHO SCU behind `dicomgate echo`.
//! - [`check`]: `dicomgate check`, everything `run` would load, without running.
//! - [`cli`]: the clap arguments (only `main` uses them); [`exit`]: the process exit codes.
//! - [`lifecycle`]: starting → ready ⇄ reloading → draining → stopped; sd_notify; sockets passed by
//!   systemd (`lifecycle::sockets`) and the SIGUSR2 binary upgrade (`lifecycle::upgrade`).
//! - [`recent`]: the bounded ring of recently finished connections (status page, `/status`).
//! - [`admin`]: the admin HTTP endpoint (status page, /status, /metrics, /healthz, /readyz; `admin.allow`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod atna;
pub mod audit;
pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
pub mod connection;
pub mod dicom;
pub mod echo;
pub mod exit;
pub mod farewell;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod prepare;
pub mod proxy_protocol;
pub mod recent;
pub mod relay;
pub mod routing;
pub mod server;
pub mod tls;

pub use config::Config;
pub use metrics::Metrics;
pub use server::Gateway;
