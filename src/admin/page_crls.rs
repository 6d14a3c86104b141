//! The status page's "Certificate revocation lists" section: each CRL a
//! listener (`tls.client_crls`) or backend (`tls.crls`) checks against, its
//! issuer, when it was issued, when the next one is due (highlighted as it
//! nears, red once passed: every handshake it governs is then refused) and
//! how many serial numbers it lists. Absent when no CRL is configured.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::page::{clock, esc, span};
use super::status::Snapshot;
use crate::tls::crl::CrlView;

/// nextUpdate is highlighted when it is this close (the alert rule's threshold).
const SOON: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) fn section(h: &mut String, s: &Snapshot) {
    let listeners = s.listeners.iter().flat_map(|l| l.view.crls.iter().map(move |c| ("listener", &l.view.name, c)));
    let backends = s.backends.backends.iter().flat_map(|(name, b)| b.crls.iter().map(move |c| ("backend", name, c)));
    let rows: Vec<_> = listeners.chain(backends).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<section id=\"crls\"><h2>Certificate revocation lists<small>re-read on reload (SIGHUP); a certificate \
         they list is refused</small></h2><table><tr><th>Used by</th><th>Key / file</th><th>Issuer</th>\
         <th>Issued</th><th>Next update</th><th>Revoked</th></tr>"
    );
    for (kind, name, crl) in rows {
        row(h, kind, name, crl, s.now);
    }
    h.push_str("</table></section>\n");
}

fn row(h: &mut String, kind: &str, name: &str, crl: &CrlView, now: SystemTime) {
    let at = |text: &str| humantime::parse_rfc3339(text).ok();
    let next = match at(&crl.next_update) {
        Some(t) => match t.duration_since(now) {
            Ok(left) => {
                let class = if left < SOON { "warn" } else { "ok" };
                format!("{} <span class=\"b {class}\">in {}</span>", clock(t), span(left))
            }
            Err(_) => format!("{} <span class=\"b bad\">PASSED</span>", clock(t)),
        },
        None => esc(&crl.next_update),
    };
    let issued = at(&crl.this_update).map(clock).unwrap_or_else(|| esc(&crl.this_update));
    let _ = writeln!(
        h,
        "<tr><td>{kind} <b>{}</b></td><td class=\"mono\">{}<br><span class=\"mut\">{}</span></td><td>{}</td>\
         <td class=\"nw\">{issued}</td><td class=\"nw\">{next}</td><td class=\"n\">{}</td></tr>",
        esc(name),
        esc(&crl.key),
        esc(&crl.file),
        esc(&crl.issuer),
        crl.revoked
    );
}
