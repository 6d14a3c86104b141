//! The metrics of admission beyond the connection outcomes: farewells
//! skipped at the listener's farewell cap, and the sources the AE-title
//! guessing protection blocks now (read at each scrape, so a block that
//! ran out is gone from the next scrape without anyone touching it).

use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

const SOURCES_BLOCKED: &str = "dicomgate_sources_blocked";
const SOURCES_BLOCKED_HELP: &str =
    "Sources (IPv4 addresses, IPv6 /64s) the AE-title guessing protection refuses at accept now.";

/// Reads (listener, sources blocked now) for every listener.
pub type BlockedReader = Box<dyn Fn() -> Vec<(String, usize)> + Send + Sync>;

pub(super) struct AdmissionMetrics {
    pub farewells_skipped: IntCounterVec,
    pub sources_blocked: Arc<SourcesBlocked>,
}

impl AdmissionMetrics {
    pub fn register(registry: &Registry) -> AdmissionMetrics {
        let farewells_skipped = IntCounterVec::new(
            Opts::new(
                "dicomgate_refusal_farewells_skipped_total",
                "Refused associations closed at once, their RJ sent only as far as the socket took it, \
                 because the listener's cap on farewells in progress was reached.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        registry.register(Box::new(farewells_skipped.clone())).expect("metric names are unique constants");
        let sources_blocked = Arc::new(SourcesBlocked { template: gauge_vec(), read: RwLock::new(None) });
        registry.register(Box::new(ArcCollector(sources_blocked.clone()))).expect("metric names are unique constants");
        AdmissionMetrics { farewells_skipped, sources_blocked }
    }
}

fn gauge_vec() -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(SOURCES_BLOCKED, SOURCES_BLOCKED_HELP), &["listener"]).expect("valid metric")
}

/// `dicomgate_sources_blocked{listener}`, from the reader the server sets.
pub(super) struct SourcesBlocked {
    /// Only for its descriptor: a scrape builds a fresh vector.
    template: IntGaugeVec,
    read: RwLock<Option<BlockedReader>>,
}

impl SourcesBlocked {
    pub fn set_reader(&self, reader: BlockedReader) {
        *self.read.write().unwrap_or_else(|p| p.into_inner()) = Some(reader);
    }
}

struct ArcCollector(Arc<SourcesBlocked>);

impl Collector for ArcCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.template.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let read = self.0.read.read().unwrap_or_else(|p| p.into_inner());
        let Some(read) = read.as_ref() else { return Vec::new() };
        let now = gauge_vec();
        for (listener, blocked) in read() {
            now.with_label_values(&[listener.as_str()]).set(i64::try_from(blocked).unwrap_or(i64::MAX));
        }
        now.collect()
    }
}
