//! The audit trail's gauges: how many ATNA messages wait in the queue, and
//! whether the syslog receiver was reachable at the last attempt, so that an
//! outage shows on a dashboard, not only in the log.

use prometheus::{IntGaugeVec, Opts, Registry};

/// The only sink so far.
pub(super) const SINK: &str = "syslog";

pub(super) struct AuditGauges {
    pub queue: IntGaugeVec,
    pub receiver_up: IntGaugeVec,
}

impl AuditGauges {
    pub fn register(registry: &Registry) -> AuditGauges {
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["sink"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("metric names are unique constants");
            g
        };
        let queue = gauge(
            "dicomgate_audit_queue_messages",
            "IHE ATNA audit messages waiting to be sent (at most 1000; beyond, new ones are dropped).",
        );
        let receiver_up = gauge(
            "dicomgate_audit_receiver_up",
            "1 when the last connection or send to the audit receiver succeeded, 0 when it failed; \
             absent without audit.syslog or before the first attempt.",
        );
        queue.with_label_values(&[SINK]).set(0);
        AuditGauges { queue, receiver_up }
    }
}
