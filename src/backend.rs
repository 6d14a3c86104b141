//! Backends: connect to a backend's servers in configured order, failing over
//! to the next on refusal or timeout, each attempt under the connect deadline;
//! plain TCP or DICOM-TLS towards the SCP.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{BackendConfig, ServerAddress};
use crate::tls::{BackendTls, Stream};

/// A backend with its loaded TLS client configuration.
#[derive(Debug)]
pub struct BackendRuntime {
    pub config: Arc<BackendConfig>,
    pub tls: Option<BackendTls>,
}

/// A connected backend server.
pub struct Connected {
    pub stream: Stream,
    pub server: ServerAddress,
}

/// Every server failed; one entry per attempt, in order.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub attempts: Vec<(ServerAddress, String)>,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.attempts.iter().map(|(s, e)| format!("{s}: {e}")).collect();
        write!(f, "no backend server reachable ({})", parts.join("; "))
    }
}

impl BackendRuntime {
    /// Tries each server in order; the first that connects (and completes the
    /// TLS handshake, when configured) wins.
    pub async fn connect(&self, connect_timeout: Duration) -> Result<Connected, ConnectFailure> {
        let mut attempts = Vec::new();
        for server in &self.config.servers {
            match timeout(connect_timeout, self.connect_one(server)).await {
                Ok(Ok(stream)) => {
                    if !attempts.is_empty() {
                        tracing::warn!(backend = %self.config.name, %server, failed = attempts.len(), "failed over to a later backend server");
                    }
                    return Ok(Connected { stream, server: server.clone() });
                }
                Ok(Err(e)) => attempts.push((server.clone(), e)),
                Err(_) => attempts.push((server.clone(), format!("no connection within {connect_timeout:?}"))),
            }
        }
        Err(ConnectFailure { attempts })
    }

    async fn connect_one(&self, server: &ServerAddress) -> Result<Stream, String> {
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await.map_err(|e| e.to_string())?;
        // DCMTK writes each PDU header and body separately; with Nagle on,
        // every exchange would stall on a delayed ACK (~40 ms).
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(server.host.clone()).map_err(|_| {
                format!("{:?} cannot be checked against a certificate; set tls.server_name", server.host)
            })?,
        };
        let stream = tls.connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(Stream::Client(Box::new(stream)))
    }
}
