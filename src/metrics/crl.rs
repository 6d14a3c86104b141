//! `dicomgate_tls_crl_next_update_timestamp_seconds`: one series per CRL,
//! labelled `listener` or `backend` (docs/operations.md, "Metrics") and `issuer`.
//! A gauge vector has one fixed label set, so two vectors carry the two
//! kinds and one collector exports them as one family (the text format
//! allows a family's series different label names). Only the listener
//! vector's descriptor is registered: the registry refuses two descriptors
//! of one name with different labels, and it merges collected families by
//! name without checking them.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

const NAME: &str = "dicomgate_tls_crl_next_update_timestamp_seconds";
const HELP: &str = "nextUpdate of each loaded CRL, Unix seconds: after it, every handshake the CRL governs is refused.";

/// Who checks certificates against a CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlOwner<'a> {
    /// `listeners.NAME.tls.client_crls`
    Listener(&'a str),
    /// `backends.NAME.tls.crls`
    Backend(&'a str),
}

/// One series: owner, issuer, nextUpdate.
pub type CrlSeries<'a> = (CrlOwner<'a>, &'a str, i64);

#[derive(Clone)]
pub(super) struct CrlGauges {
    listener: IntGaugeVec,
    backend: IntGaugeVec,
}

impl CrlGauges {
    pub(super) fn new() -> CrlGauges {
        let vec = |owner: &str| IntGaugeVec::new(Opts::new(NAME, HELP), &[owner, "issuer"]).expect("valid metric");
        CrlGauges { listener: vec("listener"), backend: vec("backend") }
    }

    /// Makes `series` the whole set: new values set, series of CRLs no
    /// longer loaded removed (not left at a stale time).
    pub(super) fn replace(&self, series: &[CrlSeries<'_>]) {
        for (vec, owner, listener) in [(&self.listener, "listener", true), (&self.backend, "backend", false)] {
            let wanted: Vec<(&str, &str, i64)> = series
                .iter()
                .filter_map(|(owner, issuer, at)| match (owner, listener) {
                    (CrlOwner::Listener(name), true) | (CrlOwner::Backend(name), false) => Some((*name, *issuer, *at)),
                    _ => None,
                })
                .collect();
            for stale in labels_of(vec, owner) {
                if !wanted.iter().any(|(name, issuer, _)| stale == [*name, *issuer]) {
                    let _ = vec.remove_label_values(&[&stale[0], &stale[1]]);
                }
            }
            for (name, issuer, at) in wanted {
                vec.with_label_values(&[name, issuer]).set(at);
            }
        }
    }
}

/// The (`owner` label, issuer) values of every series of `vec`.
fn labels_of(vec: &IntGaugeVec, owner: &str) -> Vec<[String; 2]> {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            let label = |name: &str| {
                m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned()).unwrap_or_default()
            };
            [label(owner), label("issuer")]
        })
        .collect()
}

impl Collector for CrlGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.listener.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.listener.collect();
        families.extend(self.backend.collect());
        families
    }
}
