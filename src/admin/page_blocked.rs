//! The status page's "Blocked sources" section: who the AE-title guessing
//! protection refuses at accept now, and for how much longer.

use std::fmt::Write as _;
use std::time::Duration;

use super::page::{esc, span};
use super::status::Snapshot;

/// The section; absent while nothing is blocked (the normal case).
pub(super) fn blocked(h: &mut String, s: &Snapshot) {
    if s.blocked_sources.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<section id=\"blocked\"><h2>Blocked sources<small>refused at accept after repeated refused associations \
         or failed TLS handshakes (guessing protection); SIGHUP unblocks all</small></h2><table>\
         <tr><th>Listener</th><th>Source</th><th>Last refused address</th><th>Time left</th><th>Block</th></tr>"
    );
    for b in &s.blocked_sources {
        let _ = writeln!(
            h,
            "<tr class=\"refused\"><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td>\
             <td class=\"n\"><span class=\"b bad\">{} left</span></td><td class=\"n\">{} <span class=\"mut\">(#{} in a row)</span></td></tr>",
            esc(&b.listener),
            esc(&b.source),
            esc(&b.address),
            span(Duration::from_secs(b.seconds_left)),
            span(Duration::from_secs(b.block_seconds)),
            b.blocks
        );
    }
    h.push_str("</table></section>\n");
}
