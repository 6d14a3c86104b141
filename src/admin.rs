//! The admin HTTP endpoint on `admin.listen` (DESIGN.md, "Metrics"):
//!
//! - `GET /metrics`: the Prometheus text exposition of [`Metrics`];
//! - `GET /healthz`: 200 while the process can answer at all (liveness);
//! - `GET /readyz`: 200 only in a lifecycle state that accepts new
//!   connections, else 503 with the state name (readiness; a load balancer
//!   stops sending traffic while the daemon starts or drains). Backend
//!   health does not enter into it;
//! - `GET /status`: each backend server's health-check state, last probe
//!   result and latency, last change (JSON, [`HealthRegistry::status_json`]).
//!
//! `HEAD` is answered like `GET` without a body; other paths get 404, other
//! methods 405. HTTP parsing is hyper's (HTTP/1.1 only); this module owns the
//! routing and the bounds: a permit per connection taken before `accept`, a
//! header read deadline that also closes idle keep-alive connections, a
//! bounded read buffer and a maximum connection age. The accept loop backs off
//! on errors instead of ending; it stops when `stop` is cancelled.
//!
//! The endpoint keeps serving while the gateway drains (that is when
//! `/readyz` must say 503); the caller cancels `stop` once the gateway has
//! stopped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::HealthRegistry;
use crate::lifecycle::State;
use crate::metrics::Metrics;

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

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Serves the admin endpoint on `listener` until `stop` is cancelled, then
/// asks open connections to close and waits for them (at most
/// `CLOSE_GRACE`).
pub async fn serve(listener: TcpListener, metrics: Metrics, state: watch::Receiver<State>, stop: CancellationToken) {
    serve_with_status(listener, metrics, state, Arc::new(HealthRegistry::new()), stop).await
}

/// [`serve`], with `/status` showing `health` (the gateway's backends).
pub async fn serve_with_status(
    listener: TcpListener,
    metrics: Metrics,
    state: watch::Receiver<State>,
    health: Arc<HealthRegistry>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let mut backoff = BACKOFF_START;
    loop {
        // The permit comes first (as in mini-redis): at the cap we stop
        // accepting rather than accept and drop.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                // Only a closed semaphore fails, and this one is never closed.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => {
                backoff = BACKOFF_START;
                tcp
            }
            Err(e) => {
                // EMFILE, ECONNABORTED, …: transient; the loop must not die.
                tracing::warn!(error = %e, retry_in = ?backoff, "admin endpoint: accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (metrics, state, health, stop) = (metrics.clone(), state.clone(), health.clone(), stop.clone());
        tracker.spawn(async move {
            serve_connection(tcp, metrics, state, health, stop).await;
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

async fn serve_connection(
    tcp: TcpStream,
    metrics: Metrics,
    state: watch::Receiver<State>,
    health: Arc<HealthRegistry>,
    stop: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = match req.uri().path() {
            "/status" => status(req.method(), &health),
            path => respond(req.method(), path, &metrics, &state),
        };
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

/// The whole routing table. Pure apart from reading the metrics and the
/// lifecycle state, so it is unit-tested without sockets.
fn respond(method: &Method, path: &str, metrics: &Metrics, state: &watch::Receiver<State>) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
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
    match path {
        "/metrics" => {
            let mut response = body(StatusCode::OK, metrics.render());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
            response
        }
        "/readyz" => {
            // Copy the state out: a watch borrow must not be held across
            // anything else.
            let current = *state.borrow();
            if current.is_ready() {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, current.as_str())
            }
        }
        _ => text(StatusCode::OK, "ok"),
    }
}

/// `/status`: the backends' health as JSON (GET and HEAD only).
fn status(method: &Method, health: &HealthRegistry) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = body(StatusCode::OK, health.status_json());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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

    #[test]
    fn routes_and_methods() {
        let metrics = Metrics::new();
        metrics.register_listener("store");
        let lifecycle = Lifecycle::new();
        let state = lifecycle.subscribe();

        let r = respond(&Method::GET, "/metrics", &metrics, &state);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(content_type(&r), "text/plain; version=0.0.4");

        for method in [Method::GET, Method::HEAD] {
            assert_eq!(respond(&method, "/healthz", &metrics, &state).status(), StatusCode::OK);
        }
        assert_eq!(respond(&Method::GET, "/", &metrics, &state).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/nope", &metrics, &state).status(), StatusCode::NOT_FOUND);
        let r = respond(&Method::POST, "/metrics", &metrics, &state);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers().get(ALLOW).map(|v| v.as_bytes()), Some(&b"GET, HEAD"[..]));
    }

    #[test]
    fn readiness_follows_the_lifecycle() {
        let metrics = Metrics::new();
        let lifecycle = Lifecycle::new();
        let state = lifecycle.subscribe();
        let status = || respond(&Method::GET, "/readyz", &metrics, &state).status();

        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE, "starting");
        assert!(lifecycle.set(State::Ready));
        assert_eq!(status(), StatusCode::OK);
        assert!(lifecycle.set(State::Reloading));
        assert_eq!(status(), StatusCode::OK, "reloading keeps serving the old config");
        assert!(lifecycle.set(State::Draining));
        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE);
        // Liveness is independent of readiness.
        assert_eq!(respond(&Method::GET, "/healthz", &metrics, &state).status(), StatusCode::OK);
    }

    #[test]
    fn status_is_json_and_read_only() {
        let health = HealthRegistry::new();
        let r = status(&Method::GET, &health);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(content_type(&r), "application/json");
        assert_eq!(status(&Method::POST, &health).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
