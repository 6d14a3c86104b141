//! The monitor tasks: one per server, probing every `interval` under
//! `timeout` and feeding the verdicts in [`super::ServerHealth`]. A probe's
//! failure is a typed [`ProbeError`] (which phase, what the SCP did); it is
//! put into words only for the log and the `/status` view.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpStream;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ProbeResult, ServerState};
use crate::backend::BackendRuntime;
use crate::backend::UncheckableHost;
use crate::config::{HealthCheckMode, ServerAddress};
use crate::echo::{c_echo, Accepted, EchoError, EchoRequest, EchoTls};
use crate::metrics::Metrics;

/// The running monitors of one configuration; dropping it stops them (a
/// probe in flight is abandoned, which closes its connection).
#[derive(Debug)]
pub struct Monitors {
    stop: CancellationToken,
}

impl Monitors {
    /// One task per server of every backend whose mode is not `off`.
    pub fn start<'a>(backends: impl IntoIterator<Item = &'a Arc<BackendRuntime>>, metrics: &Metrics) -> Monitors {
        let stop = CancellationToken::new();
        for backend in backends {
            if backend.config.health_check.mode == HealthCheckMode::Off {
                continue;
            }
            for index in 0..backend.health.servers.len() {
                tokio::spawn(monitor(backend.clone(), index, metrics.clone(), stop.clone()));
            }
        }
        Monitors { stop }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn monitor(backend: Arc<BackendRuntime>, index: usize, metrics: Metrics, stop: CancellationToken) {
    let Some(health) = backend.health.servers.get(index).cloned() else { return };
    let hc = &backend.config.health_check;
    let mut ticks = tokio::time::interval(hc.interval);
    // A late probe (a slow SCP, a busy box) moves the schedule instead of
    // firing a burst of catch-up probes.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe(&backend, &health.server) => r,
        };
        tracing::debug!(backend = %health.backend, server = %health.server, ok = result.ok, result = %result.text, "health probe");
        let text = result.text.clone();
        let latency_ms = u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX);
        let Some(state) = health.record(result, hc.rise, hc.fall) else { continue };
        let (b, s, mode) = (&health.backend, &health.server, hc.mode.as_str());
        match state {
            ServerState::Up => {
                metrics.set_backend_up(b, &s.to_string(), true);
                tracing::info!(backend = %b, server = %s, mode, latency_ms, "backend server is up: {text}");
            }
            ServerState::Down => {
                metrics.set_backend_up(b, &s.to_string(), false);
                tracing::warn!(backend = %b, server = %s, mode, "backend server marked down: {text}");
            }
            ServerState::Unchecked => {}
        }
    }
}

/// One probe under the configured timeout.
async fn probe(backend: &BackendRuntime, server: &ServerAddress) -> ProbeResult {
    let hc = &backend.config.health_check;
    let at = SystemTime::now();
    let started = Instant::now();
    let outcome: Result<String, ProbeError> = match hc.mode {
        HealthCheckMode::Echo => echo(backend, server).await,
        HealthCheckMode::Tcp => {
            match timeout(hc.timeout, TcpStream::connect((server.host.as_str(), server.port))).await {
                Ok(Ok(_)) => Ok("TCP connect succeeded".to_owned()),
                Ok(Err(e)) => Err(ProbeError::Tcp(e)),
                Err(_) => Err(ProbeError::TcpTimeout(hc.timeout)),
            }
        }
        HealthCheckMode::Off => Ok("not monitored".to_owned()),
    };
    let latency = started.elapsed();
    // The edge: `/status` and the log show the result in words.
    match outcome {
        Ok(text) => ProbeResult { ok: true, text, latency, at },
        Err(e) => ProbeResult { ok: false, text: e.to_string(), latency, at },
    }
}

/// Why a probe counts as a failure (side: the SCP; phase: the probe's).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("TCP connect failed: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("no TCP connection within the probe timeout ({0:?})")]
    TcpTimeout(std::time::Duration),
    #[error(transparent)]
    ServerName(#[from] UncheckableHost),
    #[error("no answer within the probe timeout ({timeout:?}) during the {phase}")]
    EchoTimeout { phase: crate::echo::Phase, timeout: std::time::Duration },
    /// The SCP (or the network) answered the echo with a failure.
    #[error(transparent)]
    Echo(EchoError),
}

async fn echo(backend: &BackendRuntime, server: &ServerAddress) -> Result<String, ProbeError> {
    let accepted = echo_probe(backend, server, backend.config.health_check.timeout).await?;
    Ok(match accepted.tls {
        Some(tls) => format!("C-ECHO accepted ({tls})"),
        None => "C-ECHO accepted".to_owned(),
    })
}

/// Associate, C-ECHO, release, as the cloud's Echo button would; the SCP
/// judges our AE titles (`health_check.calling_ae_title`, the backend's
/// `ae_title`) exactly as it judges the cloud's. The health monitor's probe
/// and `check --echo`.
pub async fn echo_probe(
    backend: &BackendRuntime,
    server: &ServerAddress,
    deadline: std::time::Duration,
) -> Result<Accepted, ProbeError> {
    let hc = &backend.config.health_check;
    let tls = match &backend.tls {
        Some(t) => Some(EchoTls { config: t.config.clone(), server_name: crate::backend::server_name(t, server)? }),
        None => None,
    };
    let request = EchoRequest {
        host: server.host.clone(),
        port: server.port,
        calling_ae: hc.calling_ae_title.clone(),
        called_ae: backend.config.ae_title.clone(),
        tls,
        timeout: deadline,
    };
    match c_echo(&request).await {
        Ok(accepted) => Ok(accepted),
        Err(EchoError::Timeout { phase }) => Err(ProbeError::EchoTimeout { phase, timeout: deadline }),
        Err(e) => Err(ProbeError::Echo(e)),
    }
}
