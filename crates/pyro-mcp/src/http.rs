//! Streamable HTTP transport, on loopback only.
//!
//! rmcp's `StreamableHttpService` (a tower service) is served by hyper's HTTP/1.1 server at
//! `http://ADDR/mcp`. The address must be a loopback one: the server has no authentication,
//! so it is reachable only from this host. rmcp checks the `Host` header against loopback
//! names (against DNS rebinding), and requests that carry an `Origin` header (browsers) are
//! refused.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::PyroMcp;

/// The path clients should use (the endpoint answers on every path).
pub const HTTP_PATH: &str = "/mcp";

/// Why the HTTP server could not run.
#[derive(Debug)]
pub enum HttpError {
    /// The address is not a loopback address.
    NotLoopback(SocketAddr),
    /// Binding the listener failed.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLoopback(a) => write!(
                f,
                "refusing to serve MCP over HTTP on {a}: the server has no authentication, so \
                 only loopback addresses (127.0.0.1, ::1) are allowed"
            ),
            Self::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
            Self::NotLoopback(_) => None,
        }
    }
}

/// Serves `server` over Streamable HTTP at `http://addr/mcp` until `shutdown` resolves.
/// `on_listening` receives the bound address (useful with port 0).
pub async fn serve_http(
    server: PyroMcp,
    addr: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HttpError> {
    if !addr.ip().is_loopback() {
        return Err(HttpError::NotLoopback(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    on_listening(local);
    let ct = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(ct.child_token())
        .enforce_origin_validation();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let svc = TowerToHyperService::new(service.clone());
        let conn_ct = ct.child_token();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "HTTP connection ended: {e}");
                    }
                }
                _ = conn_ct.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    ct.cancel();
    Ok(())
}
