//! The DICOM `AuditMessage` XML (PS3.15 A.5.1, the schema in RELAX NG
//! compact form). Pure: an [`AuditEvent`] and the gateway's [`Identity`] in,
//! one line of XML out.
//!
//! The schema fixes the element order (EventIdentification, ActiveParticipant
//! 1..n, AuditSourceIdentification, ParticipantObjectIdentification 0..n) and
//! makes `csd-code`, `codeSystemName` and `originalText` required on every
//! coded value; attributes are unordered. Values that came from the network
//! (AE titles, TLS error texts) are escaped and stripped of characters XML 1.0
//! cannot carry, so a peer cannot inject markup into the audit trail.
//! No PHI: the gateway never reads data sets, and nothing here could hold one.

use std::fmt::Write as _;

use super::event::{AuditEvent, EventKind, Participant};
use super::Identity;

/// A coded value from the DICOM Controlled Terminology (PS3.16, scheme DCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub meaning: &'static str,
}

/// PS3.16 CID 400 "Audit Event ID" and CID 401/403 "Audit Event Type Code",
/// CID 402 "Audit Active Participant Role ID Code": the codes this gateway
/// emits (PS3.15 A.5.3.1, A.5.3.11).
pub mod codes {
    use super::Code;
    pub const APPLICATION_ACTIVITY: Code = Code { code: "110100", meaning: "Application Activity" };
    pub const SECURITY_ALERT: Code = Code { code: "110113", meaning: "Security Alert" };
    pub const APPLICATION_START: Code = Code { code: "110120", meaning: "Application Start" };
    pub const APPLICATION_STOP: Code = Code { code: "110121", meaning: "Application Stop" };
    pub const NODE_AUTHENTICATION: Code = Code { code: "110126", meaning: "Node Authentication" };
    pub const SECURITY_CONFIGURATION: Code = Code { code: "110129", meaning: "Security Configuration" };
    pub const SOFTWARE_CONFIGURATION: Code = Code { code: "110131", meaning: "Software Configuration" };
    pub const APPLICATION: Code = Code { code: "110150", meaning: "Application" };
}

/// Longest free text (EventOutcomeDescription) in one message: a TLS error or
/// a configuration error list is useful in its first lines, and a syslog
/// datagram must stay well under the UDP limit.
const MAX_DESCRIPTION: usize = 1024;

/// `EventOutcomeIndicator` (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Success = 0,
    MinorFailure = 4,
    SeriousFailure = 8,
}

/// Renders the whole `AuditMessage` document (XML declaration included, no
/// newlines, so one message is one line in a receiver's file).
pub fn render(event: &AuditEvent, identity: &Identity) -> String {
    let mut x = String::with_capacity(1024);
    x.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><AuditMessage>"#);

    let (event_id, type_codes) = event.kind.codes();
    let _ = write!(
        x,
        r#"<EventIdentification EventActionCode="E" EventDateTime="{}" EventOutcomeIndicator="{}">"#,
        event.time, event.outcome as u8
    );
    coded(&mut x, "EventID", event_id);
    for code in type_codes {
        coded(&mut x, "EventTypeCode", *code);
    }
    if let Some(text) = &event.description {
        let _ = write!(x, "<EventOutcomeDescription>{}</EventOutcomeDescription>", escape(text, MAX_DESCRIPTION));
    }
    x.push_str("</EventIdentification>");

    // The gateway itself: a process (UserID = its PID, PS3.15 A.5.2.1) that is
    // a DICOM application (AlternativeUserID = its AE titles, A.5.2.2).
    participant(
        &mut x,
        &Participant {
            user_id: identity.pid.to_string(),
            alternative_user_id: identity.ae_titles_attribute(),
            user_name: Some("dicomgate".to_owned()),
            requestor: false,
            address: None,
            application_role: true,
        },
    );
    if let EventKind::PeerRefused { peer, .. } = &event.kind {
        participant(&mut x, peer);
    }

    x.push_str("<AuditSourceIdentification");
    if let Some(site) = &identity.enterprise_site_id {
        let _ = write!(x, r#" AuditEnterpriseSiteID="{}""#, escape(site, usize::MAX));
    }
    // Type 4: "application server process tier in a multi-tier system"
    // (A.5.1.2.1), the closest of the nine to a gateway in front of a PACS.
    let _ = write!(
        x,
        r#" AuditSourceID="{}"><AuditSourceTypeCode csd-code="4"/></AuditSourceIdentification>"#,
        escape(&identity.source_id, usize::MAX)
    );
    x.push_str("</AuditMessage>");
    x
}

fn coded(x: &mut String, element: &str, code: Code) {
    let _ = write!(x, r#"<{element} csd-code="{}" codeSystemName="DCM" originalText="{}"/>"#, code.code, code.meaning);
}

fn participant(x: &mut String, p: &Participant) {
    let _ = write!(x, r#"<ActiveParticipant UserID="{}""#, escape(&p.user_id, usize::MAX));
    if let Some(alt) = &p.alternative_user_id {
        let _ = write!(x, r#" AlternativeUserID="{}""#, escape(alt, usize::MAX));
    }
    if let Some(name) = &p.user_name {
        let _ = write!(x, r#" UserName="{}""#, escape(name, usize::MAX));
    }
    let _ = write!(x, r#" UserIsRequestor="{}""#, p.requestor);
    if let Some(ip) = p.address {
        // Type 2: IP address (A.5.1, NetworkAccessPointTypeCode).
        let _ = write!(x, r#" NetworkAccessPointTypeCode="2" NetworkAccessPointID="{}""#, ip.to_canonical());
    }
    if p.application_role {
        x.push('>');
        coded(x, "RoleIDCode", codes::APPLICATION);
        x.push_str("</ActiveParticipant>");
    } else {
        x.push_str("/>");
    }
}

/// Escapes XML markup, drops characters XML 1.0 cannot carry (controls other
/// than tab/newline/CR, which become spaces so the message stays one line),
/// and cuts to `max` characters with an ellipsis.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
