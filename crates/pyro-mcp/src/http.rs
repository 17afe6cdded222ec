//! Streamable HTTP transport, on loopback only.
//!
//! rmcp's `StreamableHttpService` (a tower service) is served by hyper's HTTP/1.1 server at
//! `http://ADDR/mcp`. The address must be a loopback one: the server has no authentication,
//! so it is reachable only from this host. rmcp checks the `Host` header against loopback
//! names (against DNS rebinding), and requests that carry an `Origin` header (browsers) are
//! refused.
//!
//! Every POST body is read and checked by our framing ([`crate::framing`]) before rmcp's
//! handler sees it: up to [`MAX_MESSAGE_BYTES`] are accepted (rmcp's default is 4 MiB), a
//! larger body gets HTTP 413 with a JSON-RPC error, a body that is not JSON or not a
//! JSON-RPC request gets HTTP 400 with a JSON-RPC error (-32700, -32600; rmcp answers 415
//! in plain text), and a request with ill-typed params gets HTTP 200 with a -32602 error
//! carrying its id. Requests with an `Origin` header or a non-loopback `Host` go to rmcp
//! unread, which refuses them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::PyroMcp;
use crate::framing::{self, INVALID_PARAMS, INVALID_REQUEST, MAX_MESSAGE_BYTES, Verdict};

type Service = StreamableHttpService<PyroMcp, LocalSessionManager>;
type Reply = Response<BoxBody<Bytes, Infallible>>;

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
        .enforce_origin_validation()
        // Bodies are bounded (and answered) by `guarded` first.
        .with_max_request_body_bytes(MAX_MESSAGE_BYTES);
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
        let service = service.clone();
        let svc = hyper::service::service_fn(move |req| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(guarded(&service, req).await) }
        });
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

/// A POST body checked by [`framing::check`] before rmcp's handler; anything else straight
/// to it.
async fn guarded(service: &Service, req: Request<Incoming>) -> Reply {
    if req.method() != hyper::Method::POST || !plain_local(req.headers()) {
        return service.handle(req).await;
    }
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(prefix)) => {
            tracing::warn!("refused an MCP body over {MAX_MESSAGE_BYTES} bytes");
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &framing::too_large(&prefix, declared),
            );
        }
        Err(BodyError::Read(e)) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &framing::error_reply(
                    INVALID_REQUEST,
                    serde_json::Value::Null,
                    format!("Invalid Request: cannot read the body ({e})"),
                ),
            );
        }
    };
    match framing::check(&bytes) {
        Verdict::Pass(_) => {
            service
                .handle(Request::from_parts(parts, Full::new(bytes)))
                .await
        }
        Verdict::Skip => json_reply(
            StatusCode::BAD_REQUEST,
            &framing::error_reply(
                INVALID_REQUEST,
                serde_json::Value::Null,
                "Invalid Request: the body is empty",
            ),
        ),
        Verdict::Refuse(r) => {
            tracing::info!("refused a malformed message: {}", r.reply["error"]);
            // A request with an id gets its answer as any other (HTTP 200); what cannot be
            // matched to a request is a bad HTTP request.
            let status = if r.code() == INVALID_PARAMS && !r.notification {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            json_reply(status, &r.reply)
        }
    }
}

/// Whether rmcp would accept the request's `Host` and `Origin`: no `Origin` (not a browser)
/// and a loopback `Host`. Others go to rmcp unread, to be refused there.
fn plain_local(headers: &hyper::HeaderMap) -> bool {
    if headers.contains_key(hyper::header::ORIGIN) {
        return false;
    }
    let Some(host) = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

enum BodyError {
    /// Over [`MAX_MESSAGE_BYTES`]: its first 64 KiB.
    TooLarge(Vec<u8>),
    Read(hyper::Error),
}

/// The body, up to [`MAX_MESSAGE_BYTES`]; a larger one is not read past its first frames.
async fn read_body(mut body: Incoming) -> Result<Bytes, BodyError> {
    let mut collected: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > MAX_MESSAGE_BYTES {
            collected.extend_from_slice(&data[..data.len().min(64 * 1024)]);
            collected.truncate(64 * 1024);
            return Err(BodyError::TooLarge(collected));
        }
        collected.extend_from_slice(&data);
    }
    Ok(Bytes::from(collected))
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
