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
//! docs/architecture.md has the whole map (what each module may depend on, the invariants); in short,
//! from the edge inward:
//!
//! - [`cli`]: the clap arguments (only `main` uses them); [`exit`]: the process exit codes;
//!   [`check`]: `dicomgate check`, everything `run` would load, without running.
//! - [`server`]: the gateway's life: bind, start (→ ready), serve (SIGHUP reload, SIGUSR2 hand-over),
//!   drain (→ stopped); [`lifecycle`]: the state machine, sd_notify, sockets passed by systemd
//!   (`lifecycle::sockets`) and the binary upgrade (`lifecycle::upgrade`).
//! - [`admin`]: the admin HTTP endpoint (status page, /status, /metrics, /healthz, /readyz; `admin.allow`).
//! - [`prepare`]: what `run` and `check` both build from a config (listener and backend runtimes,
//!   certificate findings).
//! - [`listener`]: the accept loop (`listener::accept`, which cannot die), the allow list before TLS,
//!   a task and a tracing span per connection.
//! - [`admission`]: the pre-association budget, association slots, eviction.
//! - [`connection`]: one connection, phase by phase, each under a named deadline; each phase returns a
//!   typed result and `connection::record::finish` is the one place they become a [`report::Report`].
//! - [`proxy_protocol`]: the PROXY header of an L4 load balancer (the real client address).
//! - [`tls`]: server and backend client configurations, client-certificate pinning, certificate
//!   revocation lists (`tls::crl`, `tls::revocation`), the handshake (rustls) and our record layer
//!   after it (`tls::record`), and the stream whose plaintext the relay forwards where it was
//!   decrypted (`tls::stream`).
//! - [`farewell`]: our last PDU and the close, bounded in time, for `connection` and `relay` alike.
//! - [`pdu_io`]: the one bounded, deadline-driven reader of whole control PDUs.
//! - [`routing`]: pure policy: (request, listener policy) → forward or a `PolicyRejection`.
//! - [`backend`]: connect to a backend's servers in health order, with failover; health monitors.
//! - [`echo`]: the C-ECHO SCU behind `dicomgate echo` and the health check.
//! - [`relay`]: the PDU-framed, DIMSE-aware relay in both directions.
//! - Consumers of a finished connection's [`report`]: [`audit`] (the audit line), [`recent`] (the
//!   status page's ring), [`atna`] (IHE ATNA messages, DICOM PS3.15 A.5), [`refusals`] (summaries of
//!   what anyone can cause for free).
//! - [`metrics`]: every metric name, one registry (no global); [`logging`]: text or JSON to stderr.
//! - [`config`]: YAML → validated [`config::Config`] (pure; errors name the key path).
//! - [`pki`]: certificate generation and inspection (`gen-cert`, `generate_if_missing`).
//! - [`dicom`]: PDU constants, A-ASSOCIATE-RQ raw view, AE titles, RJ/ABORT PDUs, and the one DIMSE
//!   command-set reader and status table (`dicom::command_set`). No I/O.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
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
pub mod pdu_io;
pub mod pki;
pub mod prepare;
pub mod proxy_protocol;
pub mod recent;
pub mod refusals;
pub mod relay;
pub mod report;
pub mod routing;
pub mod server;
pub mod tls;

pub use config::Config;
pub use metrics::Metrics;
pub use server::Gateway;
