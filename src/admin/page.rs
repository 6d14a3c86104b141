//! `GET /`: the status page for the person on call (docs/status-page.md; HAProxy's stats page and F5's pool view are the models).
//!
//! Server-rendered HTML from one [`Snapshot`], readable without JavaScript:
//! there is no script at all (a `<meta http-equiv=refresh>` reloads it), the
//! CSS is inline and allowed by its hash, nothing is fetched from anywhere
//! (a DMZ host has no internet). Every value that can come from the wire or
//! the configuration goes through [`esc`]: an AE title `<script>` is text.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use super::status::{ListenerStatus, Snapshot};
use crate::backend::health::{BackendView, ServerView};
use crate::pki::EXPIRY_WARNING_DAYS;
use crate::recent::RecentAssociation;

/// Seconds between automatic reloads of the page.
pub const REFRESH_SECONDS: u32 = 10;

const CSS: &str = "\
:root{--fg:#1d2430;--mut:#5f6b7a;--line:#d9dee5;--bg:#f4f6f9;--card:#fff;--ok:#17803d;--okb:#e3f4e8;\
--bad:#b42318;--badb:#fde8e6;--warn:#8a5a00;--warnb:#fff3d6;--info:#1f5fbf;--infob:#e4eefc}\
*{box-sizing:border-box}\
body{margin:0;font:13px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--fg);background:var(--bg)}\
header{background:#17202c;color:#fff;padding:10px 18px;display:flex;flex-wrap:wrap;gap:6px 22px;align-items:baseline}\
header h1{font-size:18px;margin:0 8px 0 0;letter-spacing:.3px}\
header .kv{color:#c4ccd8}header .kv b{color:#fff;font-weight:600}\
main{padding:12px 18px 24px}\
section{background:var(--card);border:1px solid var(--line);border-radius:6px;margin:0 0 14px;overflow-x:auto}\
h2{font-size:14px;margin:0;padding:8px 12px;border-bottom:1px solid var(--line);background:#fafbfc}\
h2 small{color:var(--mut);font-weight:400;margin-left:8px}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;vertical-align:top;padding:5px 10px;border-bottom:1px solid #edf0f3}\
th{font-size:11px;text-transform:uppercase;letter-spacing:.4px;color:var(--mut);font-weight:600;white-space:nowrap}\
tr:last-child td{border-bottom:0}\
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
.mono{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:12px}\
.fp{font-size:10.5px;color:var(--mut);word-break:break-all;max-width:330px}\
.mut{color:var(--mut)}.nw{white-space:nowrap}\
.b{display:inline-block;padding:1px 7px;border-radius:10px;font-size:11.5px;font-weight:600;white-space:nowrap}\
.ok{background:var(--okb);color:var(--ok)}.bad{background:var(--badb);color:var(--bad)}\
.warn{background:var(--warnb);color:var(--warn)}.info{background:var(--infob);color:var(--info)}\
.neutral{background:#eceff3;color:var(--mut)}\
ul.c{list-style:none;margin:0;padding:0}ul.c li{white-space:nowrap}\
tr.refused td{background:#fff6f5}tr.refused td:first-child{box-shadow:inset 3px 0 0 var(--bad)}\
tr.first td{border-top:1px solid var(--line)}\
.why{color:var(--bad);font-size:12px}\
footer{color:var(--mut);padding:0 18px 16px;font-size:12px}";

/// The `Content-Security-Policy` of the page: nothing may load or run but
/// the inline stylesheet above (allowed by its SHA-256), no framing, no forms.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CSS.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
});

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>dicomgate status — {}</title><style>{CSS}</style></head><body>",
        esc(s.state)
    );
    header(&mut h, s);
    h.push_str("<main>\n");
    listeners(&mut h, s);
    super::page_blocked::blocked(&mut h, s);
    backends(&mut h, s);
    super::page_crls::section(&mut h, s);
    recent(&mut h, s);
    let _ = writeln!(
        h,
        "</main><footer>Rendered {} · reloads every {REFRESH_SECONDS} s · machine-readable: \
         <span class=\"mono\">/status</span> (JSON), <span class=\"mono\">/metrics</span> (Prometheus)</footer>\
         </body></html>",
        clock(s.now)
    );
    h
}

fn header(h: &mut String, s: &Snapshot) {
    let state_class = match s.state {
        "ready" => "ok",
        "reloading" | "starting" => "warn",
        _ => "bad",
    };
    let _ = write!(
        h,
        "<header><h1>dicomgate</h1>\
         <span class=\"kv\">state <span class=\"b {state_class}\" id=\"state\">{}</span></span>\
         <span class=\"kv\">version <b>{}</b></span>\
         <span class=\"kv\">up <b>{}</b> <span title=\"{}\">since {}</span></span>",
        esc(s.state),
        esc(s.version),
        span(Duration::from_secs(s.uptime_seconds)),
        esc(&rfc3339(s.started)),
        clock(s.started),
    );
    let servers: Vec<&ServerView> = s.backends.backends.values().flat_map(|b| &b.servers).collect();
    let down = servers.iter().filter(|v| v.state == "down").count();
    let _ = write!(
        h,
        "<span class=\"kv\">backend servers <span class=\"b {}\" id=\"servers\">{} of {} down</span></span>",
        if down == 0 { "ok" } else { "bad" },
        down,
        servers.len()
    );
    match &s.last_reload {
        None => h.push_str("<span class=\"kv\">last reload <b>none</b></span>"),
        Some(r) if r.ok => {
            let _ = write!(h, "<span class=\"kv\">last reload <span class=\"b ok\">ok</span> {}</span>", clock(r.at));
        }
        Some(r) => {
            let _ = write!(
                h,
                "<span class=\"kv\">last reload <span class=\"b bad\">failed</span> {} — still serving the previous configuration: \
                 <span class=\"mono\">{}</span></span>",
                clock(r.at),
                esc(r.error.as_deref().unwrap_or("see the log"))
            );
        }
    }
    h.push_str("</header>\n");
}

fn listeners(h: &mut String, s: &Snapshot) {
    let _ = writeln!(
        h,
        "<section id=\"listeners\"><h2>Listeners<small>{} configured</small></h2><table>\
         <tr><th>Listener</th><th>Security</th><th>Certificate</th><th>Allow</th><th>Calling AE</th>\
         <th>Routes (called AE → backend)</th><th>Active / limit</th><th>Since start</th></tr>",
        s.listeners.len()
    );
    for l in &s.listeners {
        listener_row(h, l);
    }
    if s.listeners.is_empty() {
        h.push_str("<tr><td colspan=\"8\" class=\"mut\">no listeners</td></tr>");
    }
    h.push_str("</table></section>\n");
}

fn listener_row(h: &mut String, l: &ListenerStatus) {
    let v = &l.view;
    let _ = write!(
        h,
        "<tr><td><b>{}</b><br><span class=\"mono mut\">{}</span>{}</td>",
        esc(&v.name),
        esc(&v.address.to_string()),
        if v.proxy_protocol { "<br><span class=\"b info\">PROXY protocol</span>" } else { "" }
    );
    if v.security == "Secured" {
        let _ = write!(
            h,
            "<td><span class=\"b ok\">Secured</span><br><span class=\"mut\">{}</span><br>SCU {}</td>",
            esc(&v.tls_versions.join(", ")),
            esc(v.scu.unwrap_or("-"))
        );
    } else {
        h.push_str("<td><span class=\"b bad\">UNSECURED</span><br><span class=\"why\">test data only</span></td>");
    }
    match &v.certificate {
        Some(c) => {
            let days = c.days_left();
            let class = if days < 0 {
                "bad"
            } else if days < EXPIRY_WARNING_DAYS {
                "warn"
            } else {
                "ok"
            };
            let _ = write!(
                h,
                "<td>{}<br><span class=\"b {class}\">{days} days left</span> <span class=\"mut\">until {}</span>\
                 <div class=\"mono fp\" title=\"SHA-256 fingerprint\">{}</div></td>",
                esc(&c.subject),
                esc(&c.not_after),
                esc(&c.fingerprint_sha256)
            );
        }
        None => h.push_str("<td class=\"mut\">-</td>"),
    }
    let _ = write!(h, "<td class=\"mono\">{}</td>", list(&v.allow));
    match &v.calling_ae_titles {
        Some(titles) => {
            let _ = write!(h, "<td class=\"mono\">{}</td>", list(titles));
        }
        None => h.push_str("<td class=\"mut\">any</td>"),
    }
    let routes: Vec<String> = v.routes.iter().map(|(ae, b)| format!("{ae} → {b}")).collect();
    let _ = write!(h, "<td class=\"mono\">{}</td>", list(&routes));
    let _ =
        write!(h, "<td class=\"n\"><b>{}</b> / {}</td><td><ul class=\"c\">", l.active_connections, v.max_connections);
    for (outcome, n) in &l.connections {
        // Zero counts would bury the few that matter.
        if *n == 0 && *outcome != "forwarded" {
            continue;
        }
        let class = if *outcome == "forwarded" { "ok" } else { "bad" };
        let _ = write!(h, "<li><span class=\"b {class}\">{}</span> {n}</li>", esc(outcome));
    }
    h.push_str("</ul></td></tr>\n");
}

fn backends(h: &mut String, s: &Snapshot) {
    let _ = writeln!(
        h,
        "<section id=\"backends\"><h2>Backends<small>servers in failover order; down servers are tried last</small></h2>\
         <table><tr><th>Backend</th><th>#</th><th>Server</th><th>State</th><th>Since</th><th>Last probe</th>\
         <th>Latency</th></tr>"
    );
    for (name, b) in &s.backends.backends {
        for (i, server) in b.servers.iter().enumerate() {
            server_row(h, name, b, i, server, s.now);
        }
    }
    if s.backends.backends.is_empty() {
        h.push_str("<tr><td colspan=\"7\" class=\"mut\">no backends</td></tr>");
    }
    h.push_str("</table></section>\n");
}

fn server_row(h: &mut String, name: &str, b: &BackendView, i: usize, server: &ServerView, now: SystemTime) {
    h.push_str(if i == 0 { "<tr class=\"first\">" } else { "<tr>" });
    if i == 0 {
        let hc = &b.health_check;
        let _ = write!(
            h,
            "<td rowspan=\"{}\"><b>{}</b><br><span class=\"mono\">{}</span>{}<br><span class=\"mut\">check: {}{}</span></td>",
            b.servers.len(),
            esc(name),
            esc(&b.ae_title),
            if b.tls { " <span class=\"b ok\">TLS</span>" } else { " <span class=\"b neutral\">plain</span>" },
            esc(hc.mode),
            if hc.mode == "off" { String::new() } else { format!(" every {}s", hc.interval_seconds) },
        );
    }
    let class = match server.state {
        "up" => "ok",
        "down" => "bad",
        _ => "neutral",
    };
    let since = match server.last_change.as_deref() {
        Some(at) => match humantime::parse_rfc3339(at) {
            Ok(t) => format!("{} <span class=\"mut\">({} ago)</span>", clock(t), span(elapsed(t, now))),
            Err(_) => esc(at),
        },
        None => "<span class=\"mut\">-</span>".to_owned(),
    };
    // Marked down by a real association's failed connect (before any probe
    // said so): the why goes beside the state, not only into /status.
    let failed_connect = match &server.last_failed_connect {
        Some(c) if server.state == "down" => format!(
            "<br><span class=\"why\">connect failed {}: {}</span>",
            humantime::parse_rfc3339(&c.at).map(clock).unwrap_or_default(),
            esc(&c.error)
        ),
        _ => String::new(),
    };
    let _ = write!(
        h,
        "<td class=\"n\">{}</td><td class=\"mono\">{}</td><td><span class=\"b {class}\">{}</span>{failed_connect}</td>\
         <td class=\"nw\">{since}</td>",
        i + 1,
        esc(&server.server),
        esc(server.state),
    );
    match &server.last_probe {
        Some(p) => {
            let _ = write!(
                h,
                "<td><span class=\"b {}\">{}</span> {} <span class=\"mut\">{}</span></td><td class=\"n\">{:.1} ms</td>",
                if p.ok { "ok" } else { "bad" },
                if p.ok { "ok" } else { "failed" },
                esc(&p.result),
                humantime::parse_rfc3339(&p.at).map(clock).unwrap_or_default(),
                p.latency_ms
            );
        }
        None => h.push_str("<td class=\"mut\">not probed</td><td class=\"n mut\">-</td>"),
    }
    h.push_str("</tr>\n");
}

fn recent(h: &mut String, s: &Snapshot) {
    let refused = s.recent_associations.iter().filter(|a| a.report.refused()).count();
    let _ = writeln!(
        h,
        "<section id=\"recent\"><h2>Recent associations<small>last {} (newest first, at most {}); {refused} refused</small></h2>\
         <table><tr><th>Ended</th><th>Listener</th><th>Peer</th><th>Calling → called AE</th><th>Backend / server</th>\
         <th>Outcome</th><th>DIMSE</th><th>Bytes ↑ / ↓</th><th>Duration</th></tr>",
        s.recent_associations.len(),
        crate::recent::CAPACITY
    );
    for a in &s.recent_associations {
        association_row(h, a);
    }
    if s.recent_associations.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"mut\">no connection has ended since start</td></tr>");
    }
    h.push_str("</table></section>\n");
}

fn association_row(h: &mut String, a: &RecentAssociation) {
    let r = &a.report;
    let opt = |v: Option<&str>| v.map(esc).unwrap_or_else(|| "-".to_owned());
    let via = r
        .trail
        .proxy()
        .map(|p| format!("<br><span class=\"mut\">via {}</span>", esc(&p.to_string())))
        .unwrap_or_default();
    let refused = r.refused();
    let _ = write!(
        h,
        "<tr{}><td class=\"nw\" title=\"{} conn {}\">{}</td><td>{}</td><td class=\"mono\">{}{via}</td>\
         <td class=\"mono nw\">{} → {}</td><td>{}<br><span class=\"mono mut\">{}</span></td>",
        if refused { " class=\"refused\"" } else { "" },
        esc(&rfc3339(a.ended)),
        r.id,
        clock(a.ended),
        esc(&r.listener),
        esc(&r.trail.client().to_string()),
        opt(r.trail.calling_ae.as_deref()),
        opt(r.trail.called_ae.as_deref()),
        opt(r.trail.backend.as_deref()),
        opt(r.server.as_deref()),
    );
    let class = if refused { "bad" } else { "ok" };
    let _ = write!(h, "<td><span class=\"b {class}\">{}</span>", esc(r.outcome.as_str()));
    if let Some(association) = &r.association {
        let _ = write!(h, " {}", esc(&association.to_string()));
    }
    if let Some(end) = r.end {
        let _ = write!(h, " <span class=\"mut\">→ {}</span>", esc(end.as_str()));
    }
    if let Some(detail) = &r.detail {
        let _ = write!(h, "<br><span class=\"{}\">{}</span>", if refused { "why" } else { "mut" }, esc(detail));
    }
    let _ = writeln!(
        h,
        "</td><td class=\"mono\">{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{}</td></tr>",
        opt(r.dimse().as_deref()),
        bytes(r.bytes_to_backend),
        bytes(r.bytes_to_client),
        millis(crate::report::millis(r.duration))
    );
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "<span class=\"mut\">-</span>".to_owned();
    }
    items.iter().map(|i| esc(i)).collect::<Vec<_>>().join("<br>")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `YYYY-MM-DD hh:mm:ss` UTC.
pub(super) fn clock(t: SystemTime) -> String {
    let text = rfc3339(t);
    esc(text.trim_end_matches('Z').replacen('T', " ", 1).as_str())
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`: two units at most.
pub(super) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn millis(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        span(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        assert_eq!(esc("BUTTERFLY"), "BUTTERFLY");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(span(Duration::from_secs(59)), "59s");
        assert_eq!(span(Duration::from_secs(3_725)), "1h 2m");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 7_200)), "2d 2h");
        assert_eq!(millis(42), "42 ms");
    }

    #[test]
    fn the_policy_allows_exactly_the_stylesheet() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("script-src"), "{csp}");
    }

    #[test]
    fn a_server_marked_down_by_a_failed_connect_says_why() {
        use crate::backend::health::{CheckView, FailedConnectView};
        let check = CheckView {
            mode: "echo",
            interval_seconds: 10.0,
            timeout_seconds: 5.0,
            fall: 3,
            rise: 2,
            calling_ae_title: "DICOMGATE".into(),
        };
        let backend = BackendView {
            ae_title: "PACS".into(),
            tls: false,
            health_check: check,
            servers: Vec::new(),
            crls: Vec::new(),
        };
        let server = ServerView {
            server: "10.0.0.1:104".into(),
            state: "down",
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_change: None,
            last_probe: None,
            last_failed_connect: Some(FailedConnectView {
                at: "2026-12-06T10:00:00.000Z".into(),
                error: "connect timed out after 4s <script>".into(),
            }),
        };
        let mut h = String::new();
        server_row(&mut h, "pacs", &backend, 1, &server, SystemTime::now());
        assert!(h.contains("connect failed") && h.contains("connect timed out after 4s &lt;script&gt;"), "{h}");
    }
}
