//! Issue 14: every audit message the gateway can emit is a valid DICOM
//! AuditMessage (PS3.15 A.5.1: element order, required attributes, code
//! system DCM) coded as A.5.3 says, and nothing a peer sends can break the
//! XML. Pure: no network.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::atna::schema;
use dicomgate::atna::event::{AuditEvent, EventKind};
use dicomgate::atna::message::{self, codes, EventOutcome};
use dicomgate::atna::Identity;
use dicomgate::report::{ConnectionId, Outcome as ConnectionOutcome, Report, Trail};
use dicomgate::tls::HandshakeFailure;

fn identity() -> Identity {
    Identity {
        pid: 4242,
        hostname: "gw1".into(),
        source_id: "gw1.dmz.hospital".into(),
        enterprise_site_id: Some("St. Mary's & Co".into()),
        ae_titles: vec!["MWL".into(), "PACS".into()],
    }
}

fn valid(xml: &str) -> roxmltree::Document<'_> {
    if let Err(problems) = schema::check(xml) {
        panic!("not a valid AuditMessage:\n{}\n{xml}", problems.join("\n"));
    }
    roxmltree::Document::parse(xml).expect("well-formed")
}

fn coded<'a>(doc: &'a roxmltree::Document<'a>, element: &str) -> Vec<(String, String, String)> {
    doc.descendants()
        .filter(|n| n.has_tag_name(element))
        .map(|n| {
            let a = |k: &str| n.attribute(k).unwrap_or_default().to_owned();
            (a("csd-code"), a("codeSystemName"), a("originalText"))
        })
        .collect()
}

fn peer() -> SocketAddr {
    "192.0.2.7:51234".parse().expect("addr")
}

/// A finished connection from [`peer`] on listener `store`.
fn report(outcome: ConnectionOutcome, handshake: Option<HandshakeFailure>, detail: &str) -> Report {
    let mut r = Report::new("store", ConnectionId::next(), Trail::new(peer()), outcome, Duration::from_millis(2));
    r.detail = Some(detail.to_owned());
    r.handshake = handshake;
    r
}

/// A policy refusal of calling AE `calling` (called AE `PACS`).
fn refused(outcome: ConnectionOutcome, calling: &str, detail: &str) -> Report {
    let mut r = report(outcome, None, detail);
    r.trail.calling_ae = Some(calling.to_owned());
    r.trail.called_ae = Some("PACS".to_owned());
    r
}

#[test]
fn application_start_and_stop_are_application_activity() {
    for (kind, type_code, meaning) in [
        (EventKind::ApplicationStart, "110120", "Application Start"),
        (EventKind::ApplicationStop, "110121", "Application Stop"),
    ] {
        let xml = message::render(&AuditEvent::now(kind, EventOutcome::Success, None), &identity());
        let doc = valid(&xml);
        assert_eq!(coded(&doc, "EventID"), [("110100".into(), "DCM".into(), "Application Activity".into())]);
        assert_eq!(coded(&doc, "EventTypeCode"), [(type_code.into(), "DCM".into(), meaning.into())]);
        let event = doc.descendants().find(|n| n.has_tag_name("EventIdentification")).expect("event");
        assert_eq!(event.attribute("EventActionCode"), Some("E"));
        assert_eq!(event.attribute("EventOutcomeIndicator"), Some("0"));
        let app = doc.descendants().find(|n| n.has_tag_name("ActiveParticipant")).expect("participant");
        assert_eq!(app.attribute("UserID"), Some("4242"), "A.5.2.1: a process is identified by its PID");
        assert_eq!(app.attribute("AlternativeUserID"), Some("AETITLES=MWL;PACS"), "A.5.2.2");
        assert_eq!(app.attribute("UserName"), Some("dicomgate"));
        assert_eq!(app.attribute("UserIsRequestor"), Some("false"));
        assert_eq!(coded(&doc, "RoleIDCode"), [("110150".into(), "DCM".into(), "Application".into())]);
        let source = doc.descendants().find(|n| n.has_tag_name("AuditSourceIdentification")).expect("source");
        assert_eq!(source.attribute("AuditSourceID"), Some("gw1.dmz.hospital"));
        assert_eq!(source.attribute("AuditEnterpriseSiteID"), Some("St. Mary's & Co"), "escaped and read back");
    }
}

#[test]
fn refused_calling_ae_is_a_node_authentication_alert_naming_the_peer() {
    let event = AuditEvent::for_connection(&refused(
        ConnectionOutcome::RejectedCallingAe,
        "INTRUDER",
        "calling AE title \"INTRUDER\" is not in calling_ae_titles",
    ))
    .expect("a refused calling AE title is audited");
    let xml = message::render(&event, &identity());
    let doc = valid(&xml);
    assert_eq!(coded(&doc, "EventID"), [("110113".into(), "DCM".into(), "Security Alert".into())]);
    assert_eq!(coded(&doc, "EventTypeCode"), [("110126".into(), "DCM".into(), "Node Authentication".into())]);
    let outcome = doc.descendants().find(|n| n.has_tag_name("EventIdentification")).expect("event");
    assert_eq!(outcome.attribute("EventOutcomeIndicator"), Some("4"));
    let participants: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("ActiveParticipant")).collect();
    assert_eq!(participants.len(), 2, "the gateway (reporting) and the peer (performing)");
    let peer = participants[1];
    assert_eq!(peer.attribute("UserID"), Some("INTRUDER"));
    assert_eq!(peer.attribute("AlternativeUserID"), Some("AETITLES=INTRUDER"));
    assert_eq!(peer.attribute("UserIsRequestor"), Some("true"));
    assert_eq!(peer.attribute("NetworkAccessPointTypeCode"), Some("2"));
    assert_eq!(peer.attribute("NetworkAccessPointID"), Some("192.0.2.7"));
    assert_eq!(participants.iter().filter(|p| p.attribute("UserIsRequestor") == Some("true")).count(), 1);
    let text = doc.descendants().find(|n| n.has_tag_name("EventOutcomeDescription")).and_then(|n| n.text());
    let text = text.expect("a description");
    assert!(text.contains("calling AE title refused on listener store") && text.contains("INTRUDER"), "{text}");
}

#[test]
fn certificate_and_handshake_failures_are_told_apart() {
    // As tokio-rustls returns them: the rustls error inside the io::Error.
    let no_certificate = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::NoCertificatesPresented);
    let no_suite = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
    );
    let handshake = Some(HandshakeFailure::of(&no_certificate));
    let r = report(ConnectionOutcome::TlsError, handshake, &format!("TLS handshake failed: {no_certificate}"));
    let event = AuditEvent::for_connection(&r).expect("audited");
    let xml = message::render(&event, &identity());
    valid(&xml);
    assert!(xml.contains("client certificate refused or missing"), "{xml}");
    assert!(xml.contains(r#"UserID="192.0.2.7:51234""#), "no AE title yet: the address identifies the peer: {xml}");

    let handshake = Some(HandshakeFailure::of(&no_suite));
    let r = report(ConnectionOutcome::TlsError, handshake, &format!("TLS handshake failed: {no_suite}"));
    let event = AuditEvent::for_connection(&r).expect("audited");
    let xml = message::render(&event, &identity());
    valid(&xml);
    assert!(xml.contains("TLS handshake failed on listener store"), "{xml}");
}

#[test]
fn scanner_noise_and_normal_traffic_are_not_audited() {
    for outcome in [
        ConnectionOutcome::Forwarded,
        ConnectionOutcome::DeniedIp,
        ConnectionOutcome::ProtocolError,
        ConnectionOutcome::Timeout,
        ConnectionOutcome::BackendUnavailable,
        ConnectionOutcome::Limit,
    ] {
        let r = refused(outcome, "CLOUD", "whatever");
        assert!(AuditEvent::for_connection(&r).is_none(), "{outcome:?} is counted, not audited");
    }
    // A load balancer's TCP health check on a TLS listener.
    let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
    let probe =
        report(ConnectionOutcome::TlsError, Some(HandshakeFailure::of(&eof)), &format!("TLS handshake failed: {eof}"));
    assert!(AuditEvent::for_connection(&probe).is_none());
}

#[test]
fn hostile_text_from_the_wire_cannot_break_the_xml() {
    let hostile = "\"/><Evil x=\"&amp;\u{1}\u{7f}\n]]>";
    let event =
        AuditEvent::for_connection(&refused(ConnectionOutcome::RejectedCalledAe, hostile, hostile)).expect("audited");
    let xml = message::render(&event, &identity());
    let doc = valid(&xml);
    assert!(!xml.contains('\n'), "one line per message");
    assert!(doc.descendants().all(|n| !n.has_tag_name("Evil")), "no injected element: {xml}");
    let peer = doc.descendants().filter(|n| n.has_tag_name("ActiveParticipant")).nth(1).expect("peer");
    assert!(peer.attribute("UserID").expect("UserID").starts_with("\"/><Evil"), "the text survives, escaped");
}

#[test]
fn reload_results_are_security_alerts_for_software_and_security_configuration() {
    for (outcome, indicator) in [(EventOutcome::Success, "0"), (EventOutcome::SeriousFailure, "8")] {
        let event = AuditEvent::now(EventKind::ConfigReload, outcome, Some("x".repeat(5000)));
        let xml = message::render(&event, &identity());
        let doc = valid(&xml);
        assert_eq!(coded(&doc, "EventID")[0].0, codes::SECURITY_ALERT.code);
        let types: Vec<String> = coded(&doc, "EventTypeCode").into_iter().map(|c| c.0).collect();
        assert_eq!(types, ["110131", "110129"]);
        assert!(xml.contains(&format!(r#"EventOutcomeIndicator="{indicator}""#)));
        let text = doc.descendants().find(|n| n.has_tag_name("EventOutcomeDescription")).and_then(|n| n.text());
        assert!(text.expect("description").chars().count() <= 1025, "descriptions are bounded");
    }
}

#[test]
fn event_time_is_an_xsd_datetime_in_utc() {
    let xml = message::render(&AuditEvent::now(EventKind::ApplicationStart, EventOutcome::Success, None), &identity());
    let doc = valid(&xml);
    let t = doc.descendants().find_map(|n| n.attribute("EventDateTime")).expect("EventDateTime");
    assert!(schema::is_xsd_datetime_with_zone(t) && t.ends_with('Z'), "{t}");
}

/// The checker itself must catch what it is for, or the tests above prove nothing.
#[test]
fn the_schema_checker_rejects_what_the_schema_forbids() {
    let good = message::render(&AuditEvent::now(EventKind::ApplicationStart, EventOutcome::Success, None), &identity());
    assert!(schema::check(&good).is_ok());
    let broken = [
        good.replace(r#" codeSystemName="DCM""#, ""),
        good.replace(r#"EventOutcomeIndicator="0""#, r#"EventOutcomeIndicator="3""#),
        good.replace(r#" UserIsRequestor="false""#, ""),
        // AuditSourceIdentification before ActiveParticipant.
        {
            let (head, rest) = good.split_once("<ActiveParticipant").expect("participant");
            let (participant, tail) = rest.split_once("</ActiveParticipant>").expect("end");
            let (source, end) = tail.split_once("</AuditMessage>").expect("end");
            format!("{head}{source}<ActiveParticipant{participant}</ActiveParticipant></AuditMessage>{end}")
        },
        good.replace("EventDateTime=\"", "EventDateTime=\"x"),
        good.replace("<AuditSourceTypeCode csd-code=\"4\"/>", "<AuditSourceTypeCode csd-code=\"42\"/>"),
        good.replace("<AuditMessage>", "<AuditMessage><Extra/>"),
    ];
    for b in &broken {
        assert!(schema::check(b).is_err(), "should be refused:\n{b}");
    }
}
