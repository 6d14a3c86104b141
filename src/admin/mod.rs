//! The admin HTTP endpoint on `admin.listen` (docs/architecture.md, "Stable interfaces";
//! "Metrics"):
//!
//! - `GET /`: the status page for a person ([`page`]);
//! - `GET /status`: the same content as JSON ([`status::Snapshot`]): lifecycle,
//!   listeners, each backend server's health, the CRLs in use, the recent
//!   associations;
//! - `GET /metrics`: the Prometheus text exposition of [`Metrics`];
//! - `GET /healthz`: 200 while the process can answer at all (liveness);
//! - `GET /readyz`: 200 only in a lifecycle state that accepts new
//!   connections, else 503 with the state name (readiness; a load balancer
//!   stops sending traffic while the daemon starts or drains). Backend
//!   health does not enter into it.
//!
//! Who may ask: sources in `admin.allow` (default loopback only), because
//! these pages show peers, AE titles and allow lists. Others are closed
//! right after `accept`, before they take a connection permit or a byte of
//! HTTP is read, counted in `dicomgate_admin_requests_denied_total` and never
//! logged one line each (anyone who can reach the port could fill the log).
//! So an off-list peer cannot hold the endpoint: a health checker on the
//! allow list always finds a permit (issue 20, finding 2).
//!
//! `HEAD` is answered like `GET` without a body; other paths get 404, other
//! methods 405. HTTP parsing is hyper's (HTTP/1.1 only); this module owns the
//! routing and the bounds for allowed peers: a permit per connection (an
//! allowed connection waits for one, and the accept loop with it), a header
//! read deadline that also closes idle keep-alive connections, a bounded
//! read buffer and a maximum connection age. The accept loop backs off on
//! errors instead of ending; it stops when `stop` is cancelled.
//!
//! The endpoint keeps serving while the gateway drains (that is when
//! `/readyz` must say 503); the caller cancels `stop` once the gateway has
//! stopped.

pub mod page;
mod page_blocked;
mod page_crls;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::HealthRegistry;
use crate::config::AdminConfig;
use crate::lifecycle::State;
use crate::listener::Acceptor;
use crate::metrics::Metrics;
use crate::recent::RecentAssociations;
use status::StatusBoard;

/// Concurrent admin connections. Prometheus and a health checker need a
/// handful; further connections wait in the kernel's accept backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// A request's header must arrive within this. hyper starts the clock again
/// whenever it waits for the next request on a kept-alive connection, so it
/// also closes idle connections (slowloris and forgotten sockets alike).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection older than this is told to close after its current response.
/// Bounds a client that keeps requesting but never reads its responses.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Once a connection is asked to close (age or shutdown), its in-flight
/// response gets this long before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes hyper may buffer per connection. Our requests are one line and a few
/// headers; hyper's default (~400 KiB) is meant for proxies. hyper panics
/// below 8192, so this constant must stay at or above it.
const MAX_BUF_SIZE: usize = 16 * 1024;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// What the endpoint serves, and to whom.
#[derive(Clone)]
pub struct AdminContext {
    pub metrics: Metrics,
    pub state: watch::Receiver<State>,
    pub board: Arc<StatusBoard>,
    /// `admin.allow`: sources outside it are closed at accept.
    pub allow: Arc<AdminConfig>,
}

/// `admin.allow` when the configuration has no `admin` section to take it
/// from (tests, embedding): loopback only, as the configuration's default.
pub fn loopback_only() -> Arc<AdminConfig> {
    let allow = crate::config::DEFAULT_ADMIN_ALLOW.iter().filter_map(|n| n.parse().ok()).collect();
    Arc::new(AdminConfig { listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), allow })
}

/// Serves the admin endpoint on `listener` until `stop` is cancelled, then
/// asks open connections to close and waits for them (at most
/// `CLOSE_GRACE`). No listeners or backends to show; loopback only.
pub async fn serve(listener: TcpListener, metrics: Metrics, state: watch::Receiver<State>, stop: CancellationToken) {
    let board = Arc::new(StatusBoard::new(Arc::new(HealthRegistry::new()), Arc::new(RecentAssociations::new())));
    serve_with(listener, AdminContext { metrics, state, board, allow: loopback_only() }, stop).await
}

/// [`serve`] with the gateway's status board and access list.
pub async fn serve_with(listener: TcpListener, ctx: AdminContext, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let mut acceptor = Acceptor::new(&listener, &stop, "admin");
    while let Some((tcp, peer)) = acceptor.next().await {
        // Decided once per connection, before anything else: the source
        // cannot change mid-connection, and an off-list peer must not hold
        // a permit (or the accept loop) for hyper's header timeout.
        if !ctx.allow.allows(peer.ip()) {
            drop(tcp);
            ctx.metrics.admin_request_denied();
            continue;
        }
        // At the cap an allowed connection waits here, in our hands, and
        // the others in the kernel's backlog (as in mini-redis, but after
        // the allow list).
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                // Only a closed semaphore fails, and this one is never closed.
                Err(_) => break,
            },
        };
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tracker.spawn(async move {
            serve_connection(tcp, ctx, stop).await;
            drop(permit);
        });
    }
    tracker.close();
    // Every connection task sees `stop` and ends within CLOSE_GRACE; the
    // extra timeout only guards against a bug there holding shutdown.
    if tokio::time::timeout(CLOSE_GRACE * 2, tracker.wait()).await.is_err() {
        tracing::warn!("admin endpoint: connections still open at shutdown");
    }
}

/// One allowed peer's connection.
async fn serve_connection(tcp: TcpStream, ctx: AdminContext, stop: CancellationToken) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(req.method(), req.uri().path(), &ctx);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            log_connection_end(result);
            return;
        }
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
    }
    // Finish the response in flight, if any, then close; idle connections
    // close at once.
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(CLOSE_GRACE, conn).await {
        Ok(result) => log_connection_end(result),
        Err(_) => tracing::debug!("admin endpoint: connection dropped after close grace"),
    }
}

/// Peers that vanish, time out or speak garbage are routine on a scrape
/// endpoint: debug level only.
fn log_connection_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin endpoint: connection ended with an error");
    }
}

/// The whole routing table. Pure apart from reading the metrics, the
/// lifecycle state and the status board, so it is unit-tested without sockets.
fn respond(method: &Method, path: &str, ctx: &AdminContext) -> Response<Full<Bytes>> {
    let known = matches!(path, "/" | "/status" | "/metrics" | "/healthz" | "/readyz");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    // hyper sends HEAD responses without their body but with the length the
    // body would have had, so HEAD shares the GET path.
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        // RFC 9110 §15.5.6: a 405 must list the allowed methods.
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // Copy the state out: a watch borrow must not be held across anything else.
    let current = *ctx.state.borrow();
    match path {
        "/" => html(page::render(&ctx.board.snapshot(current, &ctx.metrics))),
        "/status" => {
            let json = ctx.board.snapshot(current, &ctx.metrics).to_json();
            let mut response = body(StatusCode::OK, json);
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = body(StatusCode::OK, ctx.metrics.render());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
            response
        }
        "/readyz" => {
            if current.is_ready() {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, current.as_str())
            }
        }
        _ => text(StatusCode::OK, "ok"),
    }
}

/// The status page, with the headers that keep a browser strict: nothing
/// loads or runs but the page's own stylesheet, no MIME sniffing, no
/// framing, no referrer.
fn html(page: String) -> Response<Full<Bytes>> {
    let mut response = body(StatusCode::OK, page);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    if let Ok(csp) = HeaderValue::from_str(&page::CONTENT_SECURITY_POLICY) {
        headers.insert(CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    response
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = body(status, message);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

fn body(status: StatusCode, content: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(content.into()));
    *response.status_mut() = status;
    // Health and metrics are live values; a cache in between would lie.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;

    fn content_type(r: &Response<Full<Bytes>>) -> &str {
        r.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn context(metrics: Metrics, lifecycle: &Lifecycle) -> AdminContext {
        let board = Arc::new(StatusBoard::new(Arc::new(HealthRegistry::new()), Arc::new(RecentAssociations::new())));
        AdminContext { metrics, state: lifecycle.subscribe(), board, allow: loopback_only() }
    }

    #[test]
    fn routes_and_methods() {
        let metrics = Metrics::new();
        metrics.register_listener("store", crate::report::Outcome::labels());
        let lifecycle = Lifecycle::new();
        let ctx = context(metrics, &lifecycle);

        let r = respond(&Method::GET, "/metrics", &ctx);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(content_type(&r), "text/plain; version=0.0.4");

        for method in [Method::GET, Method::HEAD] {
            assert_eq!(respond(&method, "/healthz", &ctx).status(), StatusCode::OK);
        }
        let page = respond(&Method::GET, "/", &ctx);
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(content_type(&page), "text/html; charset=utf-8");
        assert!(page.headers().contains_key(CONTENT_SECURITY_POLICY));
        assert_eq!(respond(&Method::GET, "/index.html", &ctx).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/nope", &ctx).status(), StatusCode::NOT_FOUND);
        let r = respond(&Method::POST, "/metrics", &ctx);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers().get(ALLOW).map(|v| v.as_bytes()), Some(&b"GET, HEAD"[..]));
    }

    #[test]
    fn readiness_follows_the_lifecycle() {
        let lifecycle = Lifecycle::new();
        let ctx = context(Metrics::new(), &lifecycle);
        let status = || respond(&Method::GET, "/readyz", &ctx).status();

        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE, "starting");
        assert!(lifecycle.set(State::Ready));
        assert_eq!(status(), StatusCode::OK);
        assert!(lifecycle.set(State::Reloading));
        assert_eq!(status(), StatusCode::OK, "reloading keeps serving the old config");
        assert!(lifecycle.set(State::Draining));
        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE);
        // Liveness is independent of readiness.
        assert_eq!(respond(&Method::GET, "/healthz", &ctx).status(), StatusCode::OK);
    }

    #[test]
    fn status_is_json_and_read_only() {
        let lifecycle = Lifecycle::new();
        let ctx = context(Metrics::new(), &lifecycle);
        let r = respond(&Method::GET, "/status", &ctx);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(content_type(&r), "application/json");
        assert_eq!(respond(&Method::POST, "/status", &ctx).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_default_access_list_is_loopback_only() {
        let allow = loopback_only();
        assert!(allow.allows("127.0.0.1".parse().expect("ip")));
        assert!(allow.allows("127.0.0.2".parse().expect("ip")));
        assert!(allow.allows("::1".parse().expect("ip")));
        assert!(allow.allows("::ffff:127.0.0.1".parse().expect("ip")), "IPv4-mapped loopback");
        assert!(!allow.allows("10.0.0.1".parse().expect("ip")));
        assert!(!allow.allows("::ffff:10.0.0.1".parse().expect("ip")));
    }
}
