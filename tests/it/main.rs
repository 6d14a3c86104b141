//! The integration tests of dicomgate: one crate, one binary (building and
//! linking a binary per file cost more than running the tests), a module per
//! operational scenario. `support` is the harness they share (see its
//! module doc): the in-process gateway, the real daemon as a child, the
//! test PKI, DCMTK and other real peers.
//!
//! Run one module with `cargo test --test it abuse::` (or with nextest:
//! `cargo nextest run --test it -E 'test(/^abuse::/)'`). The system suites
//! that boot a VM, build a container image or create network namespaces are
//! scripts (`scripts/system-test.sh`, `scripts/fault-test.sh`), not modules.

#[macro_use]
mod support;

mod abuse;
mod admin_http;
mod admin_page;
mod admission;
mod admission_defaults;
mod ae_rewrite;
mod association;
mod atna_message;
mod atna_queue;
mod atna_syslog;
mod backend_failover;
mod backend_health;
mod backend_tls;
mod cli_echo;
mod cli_echo_gateway;
mod cli_gen_cert;
mod config_footguns;
mod daemon_signals;
mod deny_service;
mod dimse_relay;
mod forwarding;
mod fuzz_corpus;
mod guessing;
mod hitless_upgrade;
mod honest_ends;
mod interop_dcmtk;
mod lifecycle;
mod malformed_pdu;
mod many_sources;
mod memory_bound;
mod package;
mod prometheus_rules;
mod proxy_protocol;
mod refusal_summaries;
mod relay;
mod rolling_restart;
mod schema;
mod security_tls;
mod shutdown_phases;
mod socket_activation;
mod systemd_unit;
mod tls_client_auth;
mod tls_revocation;
mod tls_stream;
