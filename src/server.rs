//! The gateway as a whole: builds the runtime from a [`Config`], binds every
//! listener, runs until shutdown, then drains.

use std::future::Future;
use std::net::SocketAddr;

use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("not yet implemented")]
    Todo,
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    _config: Config,
    metrics: Metrics,
}

impl Gateway {
    /// Generates missing certificates where asked, loads all TLS material and
    /// binds every listener. Fails without side effects on the network.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Gateway, ServeError> {
        let _ = (&config, &metrics);
        Err(ServeError::Todo)
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, _name: &str) -> Option<SocketAddr> {
        None
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes, then stops accepting and drains live
    /// associations for the configured grace period.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        shutdown.await;
        Ok(())
    }
}
