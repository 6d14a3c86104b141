//! A checker for the DICOM Audit Message schema (PS3.15 A.5.1, RELAX NG
//! compact), written from the standard's text: element order and
//! cardinality, required and allowed attributes, the enumerated values, and
//! the coded-value shape (`csd-code`, `codeSystemName`, `originalText`
//! required). Returns every problem found, so a failure shows them all.

use roxmltree::{Document, Node};

/// Checks `xml` against the schema.
pub fn check(xml: &str) -> Result<(), Vec<String>> {
    let doc = Document::parse(xml).map_err(|e| vec![format!("not well-formed XML: {e}")])?;
    let mut p = Vec::new();
    let root = doc.root_element();
    if root.tag_name().name() != "AuditMessage" || root.tag_name().namespace().is_some() {
        p.push(format!("root is {:?}, expected AuditMessage without namespace", root.tag_name()));
    }
    attributes(root, &[], &[], &mut p);
    let kids = elements(root);
    let names: Vec<&str> = kids.iter().map(|n| n.tag_name().name()).collect();
    // (EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*)
    let mut i = 0;
    let mut take = |name: &str, min: usize, max: usize, p: &mut Vec<String>| {
        let start = i;
        while i < names.len() && names[i] == name && i - start < max {
            i += 1;
        }
        if i - start < min {
            p.push(format!("AuditMessage: expected at least {min} {name} at position {start}, found {names:?}"));
        }
        start..i
    };
    let event = take("EventIdentification", 1, 1, &mut p);
    let participants = take("ActiveParticipant", 1, usize::MAX, &mut p);
    let source = take("AuditSourceIdentification", 1, 1, &mut p);
    let objects = take("ParticipantObjectIdentification", 0, usize::MAX, &mut p);
    if i != names.len() {
        p.push(format!("AuditMessage: unexpected element {:?} (order is fixed by the schema): {names:?}", names[i]));
    }
    for k in event {
        event_identification(kids[k], &mut p);
    }
    for k in participants {
        active_participant(kids[k], &mut p);
    }
    for k in source {
        audit_source(kids[k], &mut p);
    }
    if !objects.is_empty() {
        p.push("ParticipantObjectIdentification: this checker does not cover it; the gateway never sends one".into());
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err(p)
    }
}

fn elements<'a, 'i>(n: Node<'a, 'i>) -> Vec<Node<'a, 'i>> {
    n.children().filter(|c| c.is_element()).collect()
}

fn attributes(n: Node<'_, '_>, required: &[&str], optional: &[&str], p: &mut Vec<String>) {
    let name = n.tag_name().name();
    for r in required {
        if n.attribute(*r).is_none() {
            p.push(format!("{name}: required attribute {r} missing"));
        }
    }
    for a in n.attributes() {
        if !required.contains(&a.name()) && !optional.contains(&a.name()) {
            p.push(format!("{name}: attribute {} is not in the schema", a.name()));
        }
    }
}

fn one_of(n: Node<'_, '_>, attr: &str, allowed: &[&str], p: &mut Vec<String>) {
    if let Some(v) = n.attribute(attr) {
        if !allowed.contains(&v) {
            p.push(format!("{}: {attr}={v:?} is not one of {allowed:?}", n.tag_name().name()));
        }
    }
}

/// `CodedValueType`: csd-code, codeSystemName, originalText required; displayName optional.
fn coded(n: Node<'_, '_>, p: &mut Vec<String>) {
    attributes(n, &["csd-code", "codeSystemName", "originalText"], &["displayName"], p);
    if !elements(n).is_empty() {
        p.push(format!("{}: a coded value has no child elements", n.tag_name().name()));
    }
    for a in n.attributes() {
        if a.value().trim().is_empty() {
            p.push(format!("{}: {} is empty", n.tag_name().name(), a.name()));
        }
    }
}

fn event_identification(n: Node<'_, '_>, p: &mut Vec<String>) {
    attributes(n, &["EventDateTime", "EventOutcomeIndicator"], &["EventActionCode"], p);
    one_of(n, "EventActionCode", &["C", "R", "U", "D", "E"], p);
    one_of(n, "EventOutcomeIndicator", &["0", "4", "8", "12"], p);
    if let Some(t) = n.attribute("EventDateTime") {
        if !is_xsd_datetime_with_zone(t) {
            p.push(format!("EventIdentification: EventDateTime {t:?} is not an xsd:dateTime with a time zone"));
        }
    }
    // (EventID, EventTypeCode*, EventOutcomeDescription?)
    let kids = elements(n);
    let names: Vec<&str> = kids.iter().map(|k| k.tag_name().name()).collect();
    if names.first() != Some(&"EventID") {
        p.push(format!("EventIdentification: must start with EventID: {names:?}"));
    }
    let mut seen_description = false;
    for (k, name) in kids.iter().zip(&names).skip(1) {
        match *name {
            "EventTypeCode" if !seen_description => coded(*k, p),
            "EventOutcomeDescription" if !seen_description => seen_description = true,
            other => p.push(format!("EventIdentification: {other} not allowed here: {names:?}")),
        }
    }
    if let Some(id) = kids.first() {
        coded(*id, p);
    }
}

fn active_participant(n: Node<'_, '_>, p: &mut Vec<String>) {
    attributes(
        n,
        &["UserID", "UserIsRequestor"],
        &["AlternativeUserID", "UserName", "NetworkAccessPointID", "NetworkAccessPointTypeCode"],
        p,
    );
    one_of(n, "UserIsRequestor", &["true", "false", "1", "0"], p);
    one_of(n, "NetworkAccessPointTypeCode", &["1", "2", "3", "4", "5"], p);
    // (RoleIDCode*, MediaIdentifier?)
    for k in elements(n) {
        match k.tag_name().name() {
            "RoleIDCode" => coded(k, p),
            other => p.push(format!("ActiveParticipant: {other} not expected")),
        }
    }
}

fn audit_source(n: Node<'_, '_>, p: &mut Vec<String>) {
    attributes(n, &["AuditSourceID"], &["AuditEnterpriseSiteID"], p);
    for k in elements(n) {
        if k.tag_name().name() != "AuditSourceTypeCode" {
            p.push(format!("AuditSourceIdentification: {} not expected", k.tag_name().name()));
            continue;
        }
        // A bare code 1–9, or a code with the other coded-value attributes.
        if k.attributes().count() == 1 {
            attributes(k, &["csd-code"], &[], p);
            one_of(k, "csd-code", &["1", "2", "3", "4", "5", "6", "7", "8", "9"], p);
        } else {
            coded(k, p);
        }
    }
}

/// `YYYY-MM-DDThh:mm:ss(.s+)?(Z|±hh:mm)`.
pub fn is_xsd_datetime_with_zone(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' || !digits(8..10) {
        return false;
    }
    if b[10] != b'T' || !digits(11..13) || b[13] != b':' || !digits(14..16) || b[16] != b':' || !digits(17..19) {
        return false;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z" || (rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && rest.as_bytes()[3] == b':')
}
