//! What a connection's phases return, and the one place where a finished
//! connection becomes its [`Report`]: [`finish`] builds it from the phases'
//! results and hands it to every consumer (audit line, metrics, the status
//! page's ring, the IHE ATNA trail) or, for what anyone can cause for free,
//! to the refusal log's summaries. Nothing else writes an audit field or a
//! per-connection metric label (live byte and DIMSE counters aside).

use std::net::IpAddr;
use std::time::Duration;

use super::association::{Answer, Exchanged};
pub use super::refused::{Phase, Refused};
use super::Services;
use crate::admission::{Admission, Blocklist, Eviction, Source, Verdict};
use crate::config::{GuessingConfig, ServerAddress};
use crate::dicom::pdu::describe_abort;
use crate::refusals::SummarisedRefusal;
use crate::relay::{End, RelayEnd, RelayReport, Truncation};
use crate::report::{Association, ConnectionId, Outcome, Report, Trail};

/// An association that reached an SCP.
#[derive(Debug)]
pub struct Forwarded {
    pub server: ServerAddress,
    pub exchanged: Exchanged,
    /// `None` unless the SCP accepted and the client got the AC.
    pub relay: Option<RelayReport>,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ending {
    Refused(Refused),
    Forwarded(Box<Forwarded>),
}

impl Ending {
    pub fn outcome(&self) -> Outcome {
        match self {
            Ending::Refused(r) => r.outcome(),
            Ending::Forwarded(_) => Outcome::Forwarded,
        }
    }
}

/// The listener's guessing protection, as [`finish`] needs it: whom it
/// blocks, and the settings of the snapshot the connection was accepted under.
#[derive(Clone, Copy)]
pub struct Guessing<'a> {
    pub blocklist: &'a Blocklist,
    pub policy: &'a GuessingConfig,
}

impl<'a> Guessing<'a> {
    pub fn of(admission: &'a Admission, policy: &'a GuessingConfig) -> Guessing<'a> {
        Guessing { blocklist: &admission.blocklist, policy }
    }
}

/// The end of every connection. What anyone can cause for free (a
/// stranger's PROXY-carried address, a full gateway, an eviction) is counted
/// and summarised per source in the log ([`crate::refusals`]); so are the
/// refusals of allowed peers the audit trail reports, but for the first of
/// a quiet source; everything else becomes a [`Report`]: one audit line, the
/// status page's ring, and the ATNA trail (which decides by outcome what
/// concerns it). The guessing protection learns of every refusal that
/// counts for it and of every forwarded association.
pub fn finish(
    listener: &str,
    id: ConnectionId,
    trail: Trail,
    ending: Ending,
    elapsed: Duration,
    services: &Services,
    guessing: Guessing<'_>,
) {
    let metrics = &services.metrics;
    let outcome = ending.outcome();
    metrics.connection_ended(listener, outcome.as_str());
    let client = trail.client().ip();
    match &ending {
        Ending::Forwarded(_) => guessing.blocklist.forwarded(client),
        Ending::Refused(refused) if refused.guessing() => {
            let verdict = guessing.blocklist.refused(client, guessing.policy, tokio::time::Instant::now());
            if let Verdict::Blocked { block, blocks } = verdict {
                tracing::warn!(
                    target: "dicomgate::refusals",
                    listener = %listener, source = %Source::of(client), block_s = block.as_secs(), blocks,
                    "{}: blocked for {} s after {} refused associations or failed TLS handshakes in a row \
                     (guessing protection; block {blocks} in a row; SIGHUP clears it)",
                    Source::of(client), block.as_secs(), guessing.policy.after
                );
            }
        }
        Ending::Refused(_) => {}
    }
    if let Ending::Refused(refused) = &ending {
        if let Some(refusal) = refused.summarised() {
            if let Refused::Evicted(why) = refused {
                metrics.preassociation_evicted(listener, why.as_str());
            }
            services.refusals.record(listener, client, refusal);
            return;
        }
        if let Some(audited) = refused.audited() {
            if !services.refusals.audited(listener, client, audited) {
                return;
            }
        }
    }
    let report = report(listener, id, trail, ending, elapsed);
    metrics_of(&report, services);
    crate::audit::emit(&report);
    services.atna.connection_ended(&report);
    services.recent.record(report);
}

/// An eviction that closed a connection before it finished (the listener's
/// guard dropped it): counted like [`Refused::Evicted`].
pub fn evicted(listener: &str, source: IpAddr, why: Eviction, services: &Services) {
    services.metrics.connection_ended(listener, Outcome::Limit.as_str());
    services.metrics.preassociation_evicted(listener, why.as_str());
    services.refusals.record(listener, source, SummarisedRefusal::Evicted(why));
}

/// The per-association metrics of a forwarded connection.
fn metrics_of(report: &Report, services: &Services) {
    if report.outcome != Outcome::Forwarded {
        return;
    }
    let (metrics, listener) = (&services.metrics, report.listener.as_str());
    metrics.observe_association(listener, report.duration.as_secs_f64());
    if let Some(result) = report.association.as_ref().and_then(Association::result) {
        metrics.association_result(listener, result.as_str());
    }
    if let Some(waited) = report.scp_answer {
        metrics.observe_scp_answer(listener, waited.as_secs_f64());
    }
    // Only a relayed association has an end (an undelivered AC is not one).
    if let (Some(end), Some(Association::Accepted)) = (report.end, &report.association) {
        metrics.association_ended(listener, end.as_str());
    }
}

/// The report of a finished connection, from the phases' results.
pub fn report(listener: &str, id: ConnectionId, trail: Trail, ending: Ending, elapsed: Duration) -> Report {
    let mut report = Report::new(listener, id, trail, ending.outcome(), elapsed);
    match ending {
        Ending::Refused(refused) => {
            report.detail = Some(refused.to_string());
            report.association = refused.rejection().map(Association::RejectedByGateway);
            report.handshake = refused.handshake_failure();
        }
        Ending::Forwarded(f) => {
            let Forwarded { server, exchanged, relay } = *f;
            report.server = Some(server.to_string());
            report.scp_answer = exchanged.waited;
            report.bytes_to_backend = exchanged.bytes_to_backend;
            report.bytes_to_client = exchanged.bytes_to_client;
            report.association = Some(match exchanged.answer {
                Answer::Accepted(_) => Association::Accepted,
                Answer::Undelivered(e) => {
                    report.end = Some(End::IoError);
                    report.detail = Some(format!("cannot send the A-ASSOCIATE-AC to the client: {e}"));
                    Association::Undelivered
                }
                Answer::Rejected(triple) => Association::RejectedByScp(triple),
                Answer::Aborted { source, reason } => Association::AbortedByScp { source, reason },
                Answer::NoAnswer(why) => Association::NoAnswer(why.to_string()),
                Answer::Malformed(pdu) => Association::Malformed(pdu),
            });
            if let Some(relay) = relay {
                report.bytes_to_backend += relay.bytes_to_backend;
                report.bytes_to_client += relay.bytes_to_client;
                report.end = Some(relay.end.kind());
                report.detail = relay_detail(&relay.end);
                report.operations = relay.operations;
            }
        }
    }
    report
}

fn relay_detail(end: &RelayEnd) -> Option<String> {
    match end {
        RelayEnd::Aborted { by, source, reason } => {
            Some(format!("A-ABORT from the {}: {}", by.as_str(), describe_abort(*source, *reason)))
        }
        RelayEnd::ProtocolError { by, error } => Some(format!("{} sent {error}", by.as_str())),
        RelayEnd::Io { side, error } => Some(format!("{}: {error}", side.as_str())),
        RelayEnd::Closed { by } | RelayEnd::Truncated { by, how: Truncation::MidPdu } => {
            Some(format!("closed by the {}", by.as_str()))
        }
        RelayEnd::Truncated { by, how: Truncation::NoCloseNotify } => {
            Some(format!("closed by the {} without TLS close_notify", by.as_str()))
        }
        RelayEnd::Released | RelayEnd::IdleTimeout | RelayEnd::Shutdown => None,
        RelayEnd::LifetimeExceeded => Some("timeouts.association reached".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ConnectFailure;
    use crate::dicom::pdu::Rejection;
    use crate::relay::Side;

    fn trail() -> Trail {
        let mut t = Trail::new("127.0.0.2:4000".parse().unwrap());
        t.calling_ae = Some("CLOUD".into());
        t.called_ae = Some("PACS".into());
        t.backend = Some("pacs".into());
        t
    }

    fn forwarded(answer: Answer, relay: Option<RelayReport>) -> Ending {
        let exchanged =
            Exchanged { answer, waited: Some(Duration::from_millis(7)), bytes_to_backend: 200, bytes_to_client: 180 };
        let server = ServerAddress { host: "127.0.0.1".into(), port: 104 };
        Ending::Forwarded(Box::new(Forwarded { server, exchanged, relay }))
    }

    fn report_of(trail: Trail, ending: Ending) -> Report {
        report("store", ConnectionId::next(), trail, ending, Duration::from_millis(30))
    }

    #[test]
    fn a_refusal_says_its_phase_side_and_answer() {
        let refused = Refused::Backend(ConnectFailure { attempts: Vec::new() });
        assert_eq!((refused.phase(), refused.side()), (Phase::BackendConnect, Side::Backend));
        let ending = Ending::Refused(refused);
        assert_eq!(ending.outcome(), Outcome::BackendUnavailable);
        let r = report_of(trail(), ending);
        assert_eq!(r.association, Some(Association::RejectedByGateway(Rejection::TemporaryCongestion)));
        assert!(r.detail.as_deref().is_some_and(|d| d.starts_with("no backend server reachable")), "{r:?}");
        assert!(r.refused());
        assert_eq!((r.server, r.end), (None, None));
    }

    #[test]
    fn the_relay_end_and_both_phases_bytes_reach_the_report() {
        let relay = RelayReport {
            end: RelayEnd::Truncated { by: Side::Client, how: Truncation::NoCloseNotify },
            bytes_to_backend: 1000,
            bytes_to_client: 20,
            operations: Default::default(),
        };
        let negotiated = super::super::Negotiated { max_to_backend: 16384, max_to_client: 16384 };
        let r = report_of(trail(), forwarded(Answer::Accepted(negotiated), Some(relay)));
        assert_eq!(r.end, Some(End::Truncated));
        assert_eq!(r.detail.as_deref(), Some("closed by the client without TLS close_notify"));
        assert_eq!((r.bytes_to_backend, r.bytes_to_client), (1200, 200));
        assert!(!r.refused());
        assert_eq!((r.association, r.scp_answer), (Some(Association::Accepted), Some(Duration::from_millis(7))));
        assert_eq!(r.server.as_deref(), Some("127.0.0.1:104"));
    }

    #[test]
    fn a_proxied_client_is_the_peer_and_the_balancer_the_proxy() {
        let mut t = trail();
        t.proxied_client = Some("203.0.113.9:5000".parse().unwrap());
        let r = report_of(t, forwarded(Answer::Rejected((1, 1, 3)), None));
        assert_eq!(r.trail.client(), "203.0.113.9:5000".parse().unwrap());
        assert_eq!(r.trail.proxy(), Some("127.0.0.2:4000".parse().unwrap()));
        assert_eq!(r.association, Some(Association::RejectedByScp((1, 1, 3))));
        assert!(r.refused(), "an SCP's rejection stands out on the page");
        assert_eq!(r.end, None);
    }
}
