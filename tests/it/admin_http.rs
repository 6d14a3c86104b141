//! The admin endpoint over real sockets: status codes and content types,
//! `/readyz` following the lifecycle, `/metrics` accepted by `promtool check
//! metrics`, the connection bounds, and shutdown.
//!
//! promtool comes from Debian's `prometheus` package. Without it the promtool
//! test is skipped, except under `CI=true`, where that is a failure.

use std::net::SocketAddr;
use std::time::Duration;

use dicomgate::lifecycle::{Lifecycle, State};
use dicomgate::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for one request/response. Longer than the endpoint's header
/// read timeout, so that the paused-clock test sees the server's deadline
/// fire first.
const PROMPT: Duration = Duration::from_secs(30);

struct Admin {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(metrics: Metrics, lifecycle: &Lifecycle) -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(dicomgate::admin::serve(listener, metrics, lifecycle.subscribe(), stop.clone()));
    Admin { addr, stop, task }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`; the response is read to EOF
/// (no chunked decoding: the endpoint sends complete bodies with a length).
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    tokio::time::timeout(PROMPT, async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect to the admin endpoint");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("read response");
        parse(&raw)
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no complete response within {PROMPT:?}"))
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).expect("response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of header in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    Reply { status, headers, body: body.to_owned() }
}

/// Every metric family of docs/architecture.md with at least one sample.
fn populated_metrics() -> Metrics {
    let m = Metrics::new();
    m.register_listener("store", dicomgate::report::Outcome::labels());
    m.register_listener("worklist", dicomgate::report::Outcome::labels());
    m.set_backend_up("pacs", "10.20.0.15:104", true);
    m.set_backend_up("pacs", "10.20.0.16:104", false);
    m.dimse_operation("store", "C-STORE", "success");
    m.dimse_operation("worklist", "C-FIND", "pending");
    m.observe_association("store", 1.5);
    m.config_reload(true);
    m.config_reload(false);
    m.set_certificate_expiry("store", 1_900_000_000);
    m.connection_ended("store", dicomgate::report::Outcome::Forwarded.as_str());
    m.add_bytes("store", dicomgate::metrics::Direction::ToBackend, 1024);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_heads_unknown_paths_and_methods() {
    let lifecycle = Lifecycle::new();
    let admin = start(Metrics::new(), &lifecycle).await;

    let r = request(admin.addr, "GET", "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    // Alive even while not ready.
    assert_eq!(lifecycle.state(), State::Starting);
    let r = request(admin.addr, "HEAD", "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""), "HEAD has no body");
    assert_eq!(r.header("content-length"), Some("2"), "HEAD announces the GET body's length");

    let r = request(admin.addr, "GET", "/healthz?verbose=1").await;
    assert_eq!(r.status, 200, "a query string does not change the route");

    // "/" is the status page (tests/it/admin_page.rs).
    for path in ["/index.html", "/metrics/", "/health", "/readyz/x"] {
        assert_eq!(request(admin.addr, "GET", path).await.status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = request(admin.addr, method, "/metrics").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_lifecycle() {
    let lifecycle = Lifecycle::new();
    let admin = start(Metrics::new(), &lifecycle).await;

    let r = request(admin.addr, "GET", "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (503, "starting"));

    assert!(lifecycle.set(State::Ready));
    let r = request(admin.addr, "GET", "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));

    assert!(lifecycle.set(State::Reloading));
    assert_eq!(request(admin.addr, "GET", "/readyz").await.status, 200, "a reload keeps serving");
    assert!(lifecycle.set(State::Ready));

    assert!(lifecycle.set(State::Draining));
    let r = request(admin.addr, "GET", "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (503, "draining"));
    // The endpoint itself keeps answering while the gateway drains.
    assert_eq!(request(admin.addr, "GET", "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let lifecycle = Lifecycle::new();
    let admin = start(populated_metrics(), &lifecycle).await;

    let r = request(admin.addr, "GET", "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(r.body.contains(r#"dicomgate_connections_total{listener="store",outcome="forwarded"} 1"#), "{}", r.body);
    assert!(r.body.contains(r#"dicomgate_backend_up{backend="pacs",server="10.20.0.16:104"} 0"#));

    require_tool!("promtool");
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = promtool.expect("run promtool check metrics");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(r.body.as_bytes()).expect("write metrics to promtool");
    }
    let out = child.wait_with_output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.body
    );
    // promtool exits 0 on lint warnings too (e.g. a counter without _total);
    // our names are API, so any remark is a failure here.
    let remarks = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(remarks.trim().is_empty(), "promtool remarks:\n{remarks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_accept_loop_and_closes_idle_connections() {
    let lifecycle = Lifecycle::new();
    let admin = start(Metrics::new(), &lifecycle).await;
    // A kept-alive connection between two scrapes must not hold shutdown up.
    let mut idle = TcpStream::connect(admin.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await.expect("write request");
    let mut seen = Vec::new();
    tokio::time::timeout(PROMPT, async {
        let mut buf = [0u8; 512];
        while !seen.ends_with(b"\r\n\r\nok") {
            let n = idle.read(&mut buf).await.expect("read response");
            assert_ne!(n, 0, "closed before the response: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response on the kept-alive connection");

    let stopping = tokio::time::Instant::now();
    admin.stop.cancel();
    tokio::time::timeout(PROMPT, admin.task).await.expect("serve returns after stop").expect("serve task");
    assert!(stopping.elapsed() < Duration::from_secs(1), "stop took {:?}", stopping.elapsed());
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PROMPT, idle.read(&mut buf)).await.expect("idle connection closed");
    assert!(matches!(n, Ok(0) | Err(_)), "idle connection still open: {n:?}");
    assert!(TcpStream::connect(admin.addr).await.is_err(), "listener still accepting after stop");
}

/// Paused clock: hyper's header-read timer runs on tokio's clock, which
/// advances only when every task waits, so 64 silent connections hold every
/// permit until their header deadline and the 65th is served only then.
#[tokio::test(start_paused = true)]
async fn silent_connections_time_out_and_free_their_permits() {
    let lifecycle = Lifecycle::new();
    let admin = start(Metrics::new(), &lifecycle).await;
    let started = tokio::time::Instant::now();

    let mut silent = Vec::new();
    for _ in 0..dicomgate::admin::MAX_CONNECTIONS {
        silent.push(TcpStream::connect(admin.addr).await.expect("connect"));
    }
    // The kernel completes this connect from the backlog; the endpoint reads
    // it only when a permit is free.
    let reply = request(admin.addr, "GET", "/healthz").await;
    assert_eq!(reply.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= dicomgate::admin::HEADER_READ_TIMEOUT,
        "served after {waited:?}, before a silent connection timed out: the cap did not hold"
    );

    for mut s in silent {
        let mut buf = [0u8; 256];
        // hyper may answer 408 before closing; what matters is the close.
        let closed = tokio::time::timeout(PROMPT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection outlived the header read timeout");
    }
}
