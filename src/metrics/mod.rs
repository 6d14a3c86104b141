//! Every metric name, in one place (docs/architecture.md, "Stable
//! interfaces"). Names are API: dashboards and alerts depend on them. Label
//! values come from the module that decides them (`report::Outcome`,
//! `relay::End`, …), as strings.
//!
//! The registry is owned by [`Metrics`] and passed in; there is no global.

mod admission;
mod audit;
mod crl;
mod labels;

use std::sync::Arc;

pub use admission::BlockedReader;
pub use crl::{CrlOwner, CrlSeries};
pub use labels::Direction;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The gateway's metrics. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections_total: IntCounterVec,
    active_connections: IntGaugeVec,
    bytes_total: IntCounterVec,
    association_duration_seconds: HistogramVec,
    backend_up: IntGaugeVec,
    dimse_operations_total: IntCounterVec,
    association_results_total: IntCounterVec,
    association_ends_total: IntCounterVec,
    backend_association_response_seconds: HistogramVec,
    tls_certificate_expiry_timestamp_seconds: IntGaugeVec,
    config_reloads_total: IntCounterVec,
    admin_requests_denied_total: prometheus::IntCounter,
    listener_max_connections: IntGaugeVec,
    audit_messages_total: IntCounterVec,
    audit: audit::AuditGauges,
    preassociation_evictions_total: IntCounterVec,
    tls_crl_next_update_timestamp_seconds: crl::CrlGauges,
    admission: admission::AdmissionMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Registration fails only on duplicate or malformed names, which are
        // constants here: a failure is a programming error caught by tests.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("metric names are unique constants");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let inner = Inner {
            connections_total: counter(
                "dicomgate_connections_total",
                "Connections accepted, by how they ended.",
                &["listener", "outcome"],
            ),
            active_connections: gauge("dicomgate_active_connections", "Connections open now.", &["listener"]),
            bytes_total: counter(
                "dicomgate_bytes_total",
                "Bytes relayed after the association request, by direction.",
                &["listener", "direction"],
            ),
            association_duration_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "dicomgate_association_duration_seconds",
                        "Duration of forwarded associations, from accept to close.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            backend_up: gauge(
                "dicomgate_backend_up",
                "1 when the backend server is considered up, 0 when down.",
                &["backend", "server"],
            ),
            dimse_operations_total: counter(
                "dicomgate_dimse_operations_total",
                "DIMSE responses relayed, by operation and status class.",
                &["listener", "operation", "status"],
            ),
            association_results_total: counter(
                "dicomgate_association_results_total",
                "What SCPs answered forwarded A-ASSOCIATE-RQs.",
                &["listener", "result"],
            ),
            association_ends_total: counter(
                "dicomgate_association_ends_total",
                "How established associations ended.",
                &["listener", "end"],
            ),
            backend_association_response_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "dicomgate_backend_association_response_seconds",
                        "Time from forwarding the A-ASSOCIATE-RQ to the SCP's AC/RJ/ABORT.",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            tls_certificate_expiry_timestamp_seconds: gauge(
                "dicomgate_tls_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter) of the listener's certificate, Unix seconds.",
                &["listener"],
            ),
            config_reloads_total: counter(
                "dicomgate_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            admin_requests_denied_total: reg(
                &registry,
                prometheus::IntCounter::new(
                    "dicomgate_admin_requests_denied_total",
                    "Admin endpoint connections closed at accept because the source is not in admin.allow.",
                )
                .expect("valid metric"),
            ),
            listener_max_connections: gauge(
                "dicomgate_listener_max_connections",
                "The listener's max_connections, to compare dicomgate_active_connections with.",
                &["listener"],
            ),
            audit_messages_total: counter(
                "dicomgate_audit_messages_total",
                "IHE ATNA audit messages, by sink and result (sent, or dropped undelivered).",
                &["sink", "result"],
            ),
            audit: audit::AuditGauges::register(&registry),
            preassociation_evictions_total: counter(
                "dicomgate_preassociation_evictions_total",
                "Connections closed before their A-ASSOCIATE-RQ to make room for newer ones, by reason.",
                &["listener", "reason"],
            ),
            tls_crl_next_update_timestamp_seconds: reg(&registry, crl::CrlGauges::new()),
            admission: admission::AdmissionMetrics::register(&registry),
            registry,
        };
        // Both results exported as 0 from the start, so dashboards and
        // increase() see a first failed reload.
        for result in ["success", "failure"] {
            inner.config_reloads_total.with_label_values(&[result]);
        }
        register_process_collector(&inner.registry);
        // Both results exported as 0 from the start, so an alert on
        // increase(...{result="dropped"}) works on a fresh process.
        for result in ["sent", "dropped"] {
            inner.audit_messages_total.with_label_values(&["syslog", result]);
        }
        Metrics { inner: Arc::new(inner) }
    }

    /// Creates the label sets a listener will use, so that every outcome (all
    /// of `outcomes`) is exported as 0 from the start (rate() and absent()
    /// work on fresh starts).
    pub fn register_listener<'a>(&self, listener: &str, outcomes: impl IntoIterator<Item = &'a str>) {
        for outcome in outcomes {
            self.inner.connections_total.with_label_values(&[listener, outcome]);
        }
        self.inner.active_connections.with_label_values(&[listener]);
        for d in [Direction::ToBackend, Direction::ToClient] {
            self.inner.bytes_total.with_label_values(&[listener, d.as_str()]);
        }
        self.register_admission(listener);
    }

    /// The pre-association eviction and skipped-farewell series of a
    /// listener, exported as 0 from the start.
    fn register_admission(&self, listener: &str) {
        for reason in ["source_cap", "budget_full"] {
            self.inner.preassociation_evictions_total.with_label_values(&[listener, reason]);
        }
        self.inner.admission.farewells_skipped.with_label_values(&[listener]);
    }

    /// A refusal closed without its whole farewell (the listener's farewell cap).
    pub fn refusal_farewell_skipped(&self, listener: &str) {
        self.inner.admission.farewells_skipped.with_label_values(&[listener]).inc();
    }

    /// How a scrape learns `dicomgate_sources_blocked{listener}`.
    pub fn read_sources_blocked(&self, reader: BlockedReader) {
        self.inner.admission.sources_blocked.set_reader(reader);
    }

    /// `reason`: a [`crate::admission::Eviction::as_str`].
    pub fn preassociation_evicted(&self, listener: &str, reason: &str) {
        self.inner.preassociation_evictions_total.with_label_values(&[listener, reason]).inc();
    }

    /// `outcome`: a [`crate::report::Outcome::as_str`].
    pub fn connection_ended(&self, listener: &str, outcome: &str) {
        self.inner.connections_total.with_label_values(&[listener, outcome]).inc();
    }

    /// Counts the connection as active until the guard is dropped.
    pub fn active_guard(&self, listener: &str) -> ActiveGuard {
        let gauge = self.inner.active_connections.with_label_values(&[listener]);
        gauge.inc();
        ActiveGuard(gauge)
    }

    pub fn add_bytes(&self, listener: &str, direction: Direction, n: u64) {
        self.inner.bytes_total.with_label_values(&[listener, direction.as_str()]).inc_by(n);
    }

    /// A handle for one listener and direction, so the relay's hot loop does
    /// not look labels up per chunk.
    pub fn bytes_counter(&self, listener: &str, direction: Direction) -> prometheus::IntCounter {
        self.inner.bytes_total.with_label_values(&[listener, direction.as_str()])
    }

    pub fn observe_association(&self, listener: &str, seconds: f64) {
        self.inner.association_duration_seconds.with_label_values(&[listener]).observe(seconds);
    }

    pub fn set_backend_up(&self, backend: &str, server: &str, up: bool) {
        self.inner.backend_up.with_label_values(&[backend, server]).set(i64::from(up));
    }

    /// Removes a server's `dicomgate_backend_up` series (no longer monitored,
    /// or not probed yet), so no stale value stays exported.
    pub fn forget_backend_server(&self, backend: &str, server: &str) {
        let _ = self.inner.backend_up.remove_label_values(&[backend, server]);
    }

    /// Current `dicomgate_backend_up{backend,server}`: `None` when not exported.
    pub fn backend_up(&self, backend: &str, server: &str) -> Option<bool> {
        use prometheus::core::Collector;
        let families = self.inner.backend_up.collect();
        families.iter().flat_map(|f| f.get_metric()).find_map(|m| {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value());
            (label("backend") == Some(backend) && label("server") == Some(server))
                .then(|| m.get_gauge().get_value() != 0.0)
        })
    }

    /// `dicomgate_dimse_operations_total` for one listener, for the relay's
    /// hot path.
    pub fn dimse_counter(&self, listener: &str) -> DimseCounter {
        DimseCounter { family: self.inner.dimse_operations_total.clone(), listener: listener.to_owned() }
    }

    /// `result`: a [`crate::report::AssociationResult::as_str`].
    pub fn association_result(&self, listener: &str, result: &str) {
        self.inner.association_results_total.with_label_values(&[listener, result]).inc();
    }

    /// `end`: a [`crate::relay::End::as_str`].
    pub fn association_ended(&self, listener: &str, end: &str) {
        self.inner.association_ends_total.with_label_values(&[listener, end]).inc();
    }

    /// Records how long the SCP took to answer a forwarded A-ASSOCIATE-RQ.
    pub fn observe_scp_answer(&self, listener: &str, seconds: f64) {
        self.inner.backend_association_response_seconds.with_label_values(&[listener]).observe(seconds);
    }

    pub fn dimse_operation(&self, listener: &str, operation: &str, status: &str) {
        self.inner.dimse_operations_total.with_label_values(&[listener, operation, status]).inc();
    }

    pub fn set_certificate_expiry(&self, listener: &str, unix_seconds: i64) {
        self.inner.tls_certificate_expiry_timestamp_seconds.with_label_values(&[listener]).set(unix_seconds);
    }

    /// `dicomgate_tls_crl_next_update_timestamp_seconds`: the CRLs loaded
    /// now (at start and after each reload), replacing the previous set.
    pub fn set_crl_next_updates(&self, series: &[CrlSeries<'_>]) {
        self.inner.tls_crl_next_update_timestamp_seconds.replace(series);
    }

    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.inner.config_reloads_total.with_label_values(&[result]).inc();
    }

    /// The listener's `max_connections` (at start and after each reload).
    pub fn set_connection_limit(&self, listener: &str, max: usize) {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.inner.listener_max_connections.with_label_values(&[listener]).set(max);
    }

    /// A connection to the admin endpoint from a source not in `admin.allow`.
    pub fn admin_request_denied(&self) {
        self.inner.admin_requests_denied_total.inc();
    }

    /// Counts one audit message handed to the syslog receiver (`sent`) or
    /// given up on (`dropped`: queue full, sink removed, or still queued at exit).
    pub fn audit_message(&self, sent: bool, n: u64) {
        let result = if sent { "sent" } else { "dropped" };
        self.inner.audit_messages_total.with_label_values(&["syslog", result]).inc_by(n);
    }

    /// `dicomgate_audit_queue_messages{sink="syslog"}`.
    pub fn set_audit_queue(&self, messages: usize) {
        self.inner.audit.queue.with_label_values(&[audit::SINK]).set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub fn audit_queue(&self) -> i64 {
        self.inner.audit.queue.with_label_values(&[audit::SINK]).get()
    }

    /// `dicomgate_audit_receiver_up{sink="syslog"}`; `None` removes it (no receiver configured).
    pub fn set_audit_receiver_up(&self, up: Option<bool>) {
        match up {
            Some(up) => self.inner.audit.receiver_up.with_label_values(&[audit::SINK]).set(i64::from(up)),
            None => {
                let _ = self.inner.audit.receiver_up.remove_label_values(&[audit::SINK]);
            }
        }
    }

    /// Current value of `dicomgate_audit_messages_total{sink="syslog",result}`.
    pub fn audit_messages(&self, sent: bool) -> u64 {
        let result = if sent { "sent" } else { "dropped" };
        self.inner.audit_messages_total.with_label_values(&["syslog", result]).get()
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.inner.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Current value of `dicomgate_connections_total{listener,outcome}` (tests, `check`).
    pub fn connections(&self, listener: &str, outcome: &str) -> u64 {
        self.inner.connections_total.with_label_values(&[listener, outcome]).get()
    }

    /// Current value of `dicomgate_active_connections{listener}`.
    pub fn active(&self, listener: &str) -> i64 {
        self.inner.active_connections.with_label_values(&[listener]).get()
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

/// The standard `process_*` metrics (RSS, open fds, CPU, start time), read
/// from /proc at each scrape. Other platforms have no /proc: nothing is added.
fn register_process_collector(registry: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        // Fails only on a duplicate registration, which a fresh registry cannot have.
        if let Err(e) = registry.register(Box::new(collector)) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

/// `dicomgate_dimse_operations_total{listener}`: the relay counts each DIMSE
/// response by operation (`C-STORE`, …) and status class (`success`, …).
#[derive(Clone)]
pub struct DimseCounter {
    family: IntCounterVec,
    listener: String,
}

impl DimseCounter {
    pub fn count(&self, operation: &str, status: &str) {
        self.family.with_label_values(&[self.listener.as_str(), operation, status]).inc();
    }
}

/// Decrements `dicomgate_active_connections` when dropped.
pub struct ActiveGuard(prometheus::IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_metric_is_exported() {
        let m = Metrics::new();
        m.register_listener("store", ["forwarded", "denied_ip", "limit"]);
        m.set_backend_up("pacs", "127.0.0.1:104", true);
        m.dimse_operation("store", "C-ECHO", "success");
        m.set_certificate_expiry("store", 1);
        m.config_reload(true);
        m.set_connection_limit("store", 256);
        m.observe_association("store", 0.5);
        m.set_crl_next_updates(&[(CrlOwner::Listener("store"), "CN=CA", 1)]);
        let text = m.render();
        for name in [
            "dicomgate_connections_total",
            "dicomgate_active_connections",
            "dicomgate_bytes_total",
            "dicomgate_association_duration_seconds",
            "dicomgate_backend_up",
            "dicomgate_dimse_operations_total",
            "dicomgate_tls_certificate_expiry_timestamp_seconds",
            "dicomgate_config_reloads_total",
            "dicomgate_admin_requests_denied_total",
            "dicomgate_listener_max_connections",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "dicomgate_audit_messages_total",
            "dicomgate_audit_queue_messages",
            "dicomgate_preassociation_evictions_total",
            "dicomgate_tls_crl_next_update_timestamp_seconds",
            "dicomgate_refusal_farewells_skipped_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains(r#"dicomgate_connections_total{listener="store",outcome="denied_ip"} 0"#));
    }

    #[test]
    fn crl_series_carry_their_owner_label_and_are_replaced_as_a_set() {
        let m = Metrics::new();
        m.set_crl_next_updates(&[
            (CrlOwner::Listener("store"), "CN=Vendor CA", 100),
            (CrlOwner::Backend("pacs"), "CN=Hospital CA", 200),
        ]);
        let text = m.render();
        assert!(
            text.contains(
                r#"dicomgate_tls_crl_next_update_timestamp_seconds{issuer="CN=Vendor CA",listener="store"} 100"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dicomgate_tls_crl_next_update_timestamp_seconds{backend="pacs",issuer="CN=Hospital CA"} 200"#
            ),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE dicomgate_tls_crl_next_update_timestamp_seconds gauge").count(), 1, "{text}");
        // A reload: the listener's CRL renewed, the backend's removed.
        m.set_crl_next_updates(&[(CrlOwner::Listener("store"), "CN=Vendor CA", 300)]);
        let text = m.render();
        assert!(text.contains(r#"{issuer="CN=Vendor CA",listener="store"} 300"#), "{text}");
        assert!(!text.contains("Hospital CA"), "stale series left: {text}");
        m.set_crl_next_updates(&[]);
        assert!(!m.render().contains("dicomgate_tls_crl_next_update_timestamp_seconds"));
    }

    #[test]
    fn active_guard_decrements() {
        let m = Metrics::new();
        {
            let _g = m.active_guard("a");
            assert_eq!(m.active("a"), 1);
        }
        assert_eq!(m.active("a"), 0);
    }
}
