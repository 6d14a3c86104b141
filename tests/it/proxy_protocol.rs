//! PROXY protocol on listeners, with HAProxy itself (`mode tcp`,
//! `send-proxy` / `send-proxy-v2`) in front of the gateway: the allow list
//! applies to the client address the header carries, not to the balancer's,
//! and the audit line records both. A connection that bypasses the balancer,
//! brings the wrong header version, or a LOCAL header (unless allowed), is
//! refused.
//!
//! Clients connect from 127.0.0.1 or 127.0.0.2 (both loopback on Linux);
//! HAProxy always connects to the gateway from 127.0.0.1.

use crate::support;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::support::dcmtk::storescp;
use crate::support::gateway::RunningGateway;
use crate::support::logs;
use crate::support::pki::pki;
use crate::support::raw::{self, Answer};
use crate::support::tools::{args, free_port, is_listening, output_text, run_scu, ScpProcess};
use dicomgate::report::Outcome;

const LO1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PROMPT: Duration = Duration::from_secs(10);

/// Two TLS listeners behind the balancer (`proxy_protocol_from` 127.0.0.1):
/// `NAME_lo1` admits only 127.0.0.1, `NAME_lo2` only 127.0.0.2.
fn config(scp: &ScpProcess, name: &str, version: &str) -> String {
    let mut y = format!(
        "log: {{level: warn}}\nshutdown: {{grace_period: 1s}}\nbackends:\n  pacs:\n    ae_title: PACS\n    \
         servers: [\"{}\"]\n    health_check: {{mode: \"off\"}}\nlisteners:\n",
        scp.addr
    );
    for (suffix, allow) in [("lo1", "127.0.0.1/32"), ("lo2", "127.0.0.2/32")] {
        let _ = write!(
            y,
            "  {name}_{suffix}:\n    listen: 127.0.0.1:0\n    tls: {{certificate: server.pem, private_key: server.key}}\n    \
             proxy_protocol: {version}\n    proxy_protocol_from: [127.0.0.1/32]\n    allow: [{allow}]\n    \
             routes: {{PACS: pacs}}\n    timeouts: {{acse: 5s, dimse: 10s, connect: 2s}}\n"
        );
    }
    y
}

/// HAProxy in `mode tcp`, one frontend per target, each server line with
/// `send` (`send-proxy` or `send-proxy-v2`). Returns the child and the
/// frontends' addresses in `targets` order.
async fn haproxy(targets: &[SocketAddr], send: &str, dir: &Path) -> (ScpProcess, Vec<SocketAddr>) {
    let mut cfg = String::from(
        "global\n    maxconn 64\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n",
    );
    let mut frontends = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let port = free_port();
        frontends.push(SocketAddr::from(([127, 0, 0, 1], port)));
        let _ = write!(
            cfg,
            "\nfrontend fe{i}\n    bind 127.0.0.1:{port}\n    default_backend be{i}\n\nbackend be{i}\n    \
             server gw {target} {send}\n"
        );
    }
    let path = dir.join(format!("haproxy-{send}.cfg"));
    std::fs::write(&path, &cfg).expect("write haproxy.cfg");
    // -db: stay in the foreground (a child we can kill), no daemon.
    let a = args(&["-db", "-f", &path.display().to_string()]);
    let last = frontends.last().expect("one frontend").port();
    let peer = ScpProcess::spawn_named("haproxy", &format!("haproxy-{send}"), &a, last, dir).await;
    for f in &frontends {
        support::wait_until(PROMPT, "haproxy frontends listen", || is_listening(f.port()), String::new).await;
    }
    (peer, frontends)
}

/// Associates through `frontend` from `from` over TLS; returns the answer.
async fn try_associate(frontend: SocketAddr, from: IpAddr) -> Answer {
    let mut s = raw::connect(from, frontend, Some(pki().client_config(None))).await;
    let answer = raw::associate(&mut *s, "PACS", "CLOUD").await;
    if matches!(answer, Answer::Accepted(_)) {
        raw::release(&mut *s).await;
    }
    answer
}

async fn allow_list_applies_to_the_carried_address(name: &str, version: &str, send: &str) {
    logs::capture();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    pki().write_to(dir);
    let mut scp = storescp("PACS", &[], dir).await;
    let gw = RunningGateway::start_yaml(dir, &config(&scp, name, version)).await;
    let (lo1, lo2) = (format!("{name}_lo1"), format!("{name}_lo2"));
    let (mut balancer, fe) = haproxy(&[gw.addr_of(&lo1), gw.addr_of(&lo2)], send, dir).await;

    // Listener admitting 127.0.0.1 only: the balancer is 127.0.0.1, but the
    // client behind it is 127.0.0.2 — refused.
    assert_eq!(try_associate(fe[0], LO2).await, Answer::Closed, "127.0.0.2 admitted where only 127.0.0.1 is");
    assert!(matches!(try_associate(fe[0], LO1).await, Answer::Accepted(_)), "127.0.0.1 refused");
    // And the other way round.
    assert!(matches!(try_associate(fe[1], LO2).await, Answer::Accepted(_)), "127.0.0.2 refused");
    assert_eq!(try_associate(fe[1], LO1).await, Answer::Closed, "127.0.0.1 admitted where only 127.0.0.2 is");

    for listener in [&lo1, &lo2] {
        support::wait_until(
            PROMPT,
            &format!("{listener}: one denied_ip and one forwarded"),
            || {
                gw.metrics.connections(listener, Outcome::DeniedIp.as_str()) == 1
                    && gw.metrics.connections(listener, Outcome::Forwarded.as_str()) == 1
            },
            || format!("{}\n{}", gw.metrics.render(), balancer.log_text()),
        )
        .await;
        assert_eq!(gw.metrics.connections(listener, Outcome::ProtocolError.as_str()), 0);
    }

    // A refusal is counted and logged once as a refusal of the client (issue
    // 11: no audit line per refused connection); the audit line of the
    // admitted one names the client as `peer` and the balancer as `proxy`.
    let denied =
        logs::matching(&["dicomgate::refusals", &format!("listener={lo1} "), "source=127.0.0.2 ", "proxy_denied_ip"]);
    assert_eq!(denied.len(), 1, "refusal lines: {denied:#?}");
    let audited = logs::matching(&[&format!("listener={lo1} "), "peer=\"127.0.0.2:", "connection ended"]);
    assert!(audited.is_empty(), "audit line for a refused client: {audited:#?}");
    // The counter moves a moment before the audit line is written: wait for it.
    let pattern = [&format!("listener={lo2} ") as &str, "peer=\"127.0.0.2:", "proxy=\"127.0.0.1:", "forwarded"];
    support::wait_until(
        PROMPT,
        "the audit line of the forwarded association",
        || !logs::matching(&pattern).is_empty(),
        String::new,
    )
    .await;
    let forwarded = logs::matching(&pattern);
    assert_eq!(forwarded.len(), 1, "audit lines: {forwarded:#?}");

    balancer.assert_running();
    scp.assert_running();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v1_carries_the_client_address() {
    require_tool!("haproxy", "storescp");
    allow_list_applies_to_the_carried_address("v1", "v1", "send-proxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_carries_the_client_address() {
    require_tool!("haproxy", "storescp");
    allow_list_applies_to_the_carried_address("v2", "v2", "send-proxy-v2").await;
}

/// The v2 LOCAL header (a balancer's own health check): 16 bytes, no address.
const V2_LOCAL: [u8; 16] =
    [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_bypass_the_balancer_or_bring_the_wrong_header_are_refused() {
    require_tool!("storescp");
    logs::capture();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    pki().write_to(dir);
    let mut scp = storescp("PACS", &[], dir).await;
    // direct_lo2 opts in to LOCAL headers and admits the balancer's address.
    let yaml = config(&scp, "direct", "v2").replace(
        "    proxy_protocol_from: [127.0.0.1/32]\n    allow: [127.0.0.2/32]",
        "    proxy_protocol_from: [127.0.0.1/32]\n    proxy_protocol_allow_local: true\n    allow: [127.0.0.2/32, 127.0.0.1/32]",
    );
    let gw = RunningGateway::start_yaml(dir, &yaml).await;
    let listener = gw.addr_of("direct_lo1");
    let tls = || Some(pki().client_config(None));

    // From the balancer's address but without a header: the TLS ClientHello
    // is not a PROXY header.
    let mut s = raw::connect(LO1, listener, tls()).await;
    assert_eq!(raw::associate(&mut *s, "PACS", "CLOUD").await, Answer::Closed);
    // From an address that is not a balancer: closed at accept.
    let mut s = raw::connect(LO2, listener, tls()).await;
    assert_eq!(raw::associate(&mut *s, "PACS", "CLOUD").await, Answer::Closed);
    // A v1 header where v2 is configured.
    let v1 = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 2762\r\n";
    let mut s = raw::connect_with(LO1, listener, v1, tls()).await;
    assert_eq!(raw::associate(&mut *s, "PACS", "CLOUD").await, Answer::Closed);
    // LOCAL carries no client: refused on a DICOM listener (issue 11; health
    // checks belong on /readyz) ...
    let mut s = raw::connect_with(LO1, listener, &V2_LOCAL, tls()).await;
    assert_eq!(raw::associate(&mut *s, "PACS", "CLOUD").await, Answer::Closed, "LOCAL admitted by default");
    // ... unless proxy_protocol_allow_local: then the balancer speaking for
    // itself is judged by its own address (127.0.0.1, admitted there).
    let mut s = raw::connect_with(LO1, gw.addr_of("direct_lo2"), &V2_LOCAL, tls()).await;
    assert!(matches!(raw::associate(&mut *s, "PACS", "CLOUD").await, Answer::Accepted(_)), "allowed LOCAL refused");
    raw::release(&mut *s).await;
    drop(s);

    let m = &gw.metrics;
    support::wait_until(
        PROMPT,
        "3 protocol_error and 1 denied_ip on lo1, 1 forwarded on lo2",
        || {
            m.connections("direct_lo1", Outcome::ProtocolError.as_str()) == 3
                && m.connections("direct_lo1", Outcome::DeniedIp.as_str()) == 1
                && m.connections("direct_lo2", Outcome::Forwarded.as_str()) == 1
        },
        || m.render(),
    )
    .await;
    assert_eq!(m.connections("direct_lo1", Outcome::Forwarded.as_str()), 0);
    let local = logs::matching(&["listener=direct_lo1 ", "protocol_error", "v2 LOCAL carries no client", "/readyz"]);
    assert_eq!(local.len(), 1, "audit lines: {local:#?}");
    let why = logs::matching(&["listener=direct_lo1 ", "protocol_error", "no PROXY protocol header", "TLS handshake"]);
    assert_eq!(why.len(), 1, "audit lines: {why:#?}");
    let wrong = logs::matching(&["listener=direct_lo1 ", "protocol_error", "accepts v2 only"]);
    assert_eq!(wrong.len(), 1, "audit lines: {wrong:#?}");
    let untrusted =
        logs::matching(&["dicomgate::refusals", "listener=direct_lo1 ", "not_load_balancer", "proxy_protocol_from"]);
    assert_eq!(untrusted.len(), 1, "refusal lines: {untrusted:#?}");
    scp.assert_running();
    gw.stop().await;
}

/// The shipped example (deploy/haproxy/haproxy.cfg) parses.
#[tokio::test]
async fn the_example_haproxy_cfg_is_valid() {
    require_tool!("haproxy");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = args(&["-c", "-f", &example.display().to_string()]);
    let out = run_scu("haproxy", &a, dir.path(), PROMPT).await;
    assert!(out.status.success(), "{}", output_text(&out));
}
