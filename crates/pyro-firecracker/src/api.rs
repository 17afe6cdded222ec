//! A minimal HTTP/1.1 client for Firecracker's API socket.
//!
//! Firecracker serves a small REST API on a Unix socket. This client writes one request per
//! connection, reads the status line, headers and a `Content-Length`-framed body, and turns
//! any non-2xx answer into [`ApiError::Status`] carrying Firecracker's `fault_message`.
//! Chunked transfer encoding is not supported (Firecracker never uses it). Every call is
//! bounded by the client's timeout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Default time limit for one API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest header section accepted from the server.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted from the server.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Longest `fault_message` (or raw body) kept in an error.
const MAX_FAULT: usize = 2048;

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request path is not an absolute path without whitespace.
    #[error("invalid API path {path:?}")]
    InvalidPath {
        /// The rejected path.
        path: String,
    },
    /// The request body could not be serialized.
    #[error("cannot encode the body of {method} {path}")]
    Encode {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// Serializer error.
        #[source]
        source: serde_json::Error,
    },
    /// Connecting to the API socket failed.
    #[error("cannot connect to the API socket {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("I/O error on {method} {path} via {}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The call did not complete in time.
    #[error("{method} {path} timed out after {timeout:?}")]
    Timeout {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// The limit that expired.
        timeout: Duration,
    },
    /// The server's answer is not valid HTTP/1.x.
    #[error("malformed response to {method} {path}: {reason}")]
    Malformed {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The server used chunked transfer encoding, which this client does not support.
    #[error("response to {method} {path} uses chunked transfer encoding (unsupported)")]
    ChunkedUnsupported {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
    },
    /// The server answered with a non-2xx status.
    #[error("{method} {path} failed with HTTP {status}: {fault_message}")]
    Status {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Firecracker's `fault_message`, else the raw body (possibly empty).
        fault_message: String,
    },
    /// A 2xx body that should be JSON is not.
    #[error("response body of {method} {path} is not JSON")]
    Json {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
}

/// The HTTP methods Firecracker's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (empty when there is none).
    pub body: Vec<u8>,
}

/// Client for one Firecracker API socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `sock`, with [`DEFAULT_TIMEOUT`].
    pub fn new(sock: PathBuf) -> Self {
        Self {
            socket: sock,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-call time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-call time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `PUT path` with a JSON body; succeeds on any 2xx.
    pub async fn put<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        self.send_json(Method::Put, path, body).await
    }

    /// `PATCH path` with a JSON body; succeeds on any 2xx.
    pub async fn patch<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        self.send_json(Method::Patch, path, body).await
    }

    /// `GET path`, returning the JSON body (`Null` when the body is empty).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        let resp = self.request(Method::Get, path, None).await?;
        if resp.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&resp.body).map_err(|source| ApiError::Json {
            method: Method::Get,
            path: path.to_owned(),
            source,
        })
    }

    async fn send_json<T: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            method,
            path: path.to_owned(),
            source,
        })?;
        self.request(method, path, Some(&bytes)).await.map(drop)
    }

    /// Sends one request with an optional JSON body and returns the 2xx response; any other
    /// status becomes [`ApiError::Status`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(ApiError::InvalidPath {
                path: path.to_owned(),
            });
        }
        let resp = tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ApiError::Timeout {
                method,
                path: path.to_owned(),
                timeout: self.timeout,
            })??;
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(ApiError::Status {
                method,
                path: path.to_owned(),
                status: resp.status,
                fault_message: fault_message(&resp.body),
            })
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let io_err = |source| ApiError::Io {
            socket: self.socket.clone(),
            method,
            path: path.to_owned(),
            source,
        };
        let request = encode_request(method, path, body);
        stream.write_all(&request).await.map_err(io_err)?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head = loop {
            if let Some(head) = parse_head(&buf).map_err(|e| e.into_api(method, path))? {
                break head;
            }
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                return Err(HeadError::Malformed(format!(
                    "connection closed after {} bytes, before the end of the headers",
                    buf.len()
                ))
                .into_api(method, path));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut body = buf.split_off(head.header_len);
        match head.framing {
            Framing::Empty => body.clear(),
            Framing::Length(len) => {
                while body.len() < len {
                    let n = stream.read(&mut chunk).await.map_err(io_err)?;
                    if n == 0 {
                        return Err(HeadError::Malformed(format!(
                            "body truncated: {} of {len} bytes",
                            body.len()
                        ))
                        .into_api(method, path));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
            }
            Framing::UntilEof => loop {
                let n = stream.read(&mut chunk).await.map_err(io_err)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
                if body.len() > MAX_BODY {
                    return Err(
                        HeadError::Malformed(format!("body larger than {MAX_BODY} bytes"))
                            .into_api(method, path),
                    );
                }
            },
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

/// Serializes one request. `Connection: close` asks the server to end the exchange.
fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// Extracts `fault_message` from an error body, falling back to the body's text.
fn fault_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        && let Some(serde_json::Value::String(msg)) = map.get("fault_message")
    {
        return truncate(msg.clone());
    }
    truncate(String::from_utf8_lossy(body).trim().to_owned())
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_FAULT {
        let mut cut = MAX_FAULT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(usize),
    /// Until the server closes the connection.
    UntilEof,
}

/// The parsed status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    header_len: usize,
    framing: Framing,
}

/// Why a response head was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeadError {
    Malformed(String),
    Chunked,
}

impl HeadError {
    fn into_api(self, method: Method, path: &str) -> ApiError {
        match self {
            HeadError::Malformed(reason) => ApiError::Malformed {
                method,
                path: path.to_owned(),
                reason,
            },
            HeadError::Chunked => ApiError::ChunkedUnsupported {
                method,
                path: path.to_owned(),
            },
        }
    }
}

/// Parses the status line and headers once `buf` holds all of them; `Ok(None)` means more
/// bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(HeadError::Malformed(format!(
                "headers longer than {MAX_HEAD} bytes"
            )));
        }
        return Ok(None);
    };
    let header_len = end + 4;
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| HeadError::Malformed("headers are not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HeadError::Malformed(format!("header without colon: {line:?}")))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(HeadError::Malformed(format!("bad header name: {name:?}")));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| HeadError::Malformed(format!("bad Content-Length: {value:?}")))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            if len > MAX_BODY {
                return Err(HeadError::Malformed(format!(
                    "Content-Length {len} exceeds {MAX_BODY}"
                )));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            chunked = true;
        }
    }
    if chunked {
        return Err(HeadError::Chunked);
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(len) = content_length {
        Framing::Length(len)
    } else {
        Framing::UntilEof
    };
    Ok(Some(Head {
        status,
        header_len,
        framing,
    }))
}

/// Parses `HTTP/1.x NNN [reason]`.
fn parse_status_line(line: &str) -> Result<u16, HeadError> {
    let bad = || HeadError::Malformed(format!("bad status line: {line:?}"));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().ok_or_else(bad)?;
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad());
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<Head>, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn parses_no_content() {
        let h = head("HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(
            h,
            Ok(Some(Head {
                status: 204,
                header_len: 66,
                framing: Framing::Empty
            }))
        );
    }

    #[test]
    fn parses_content_length_case_insensitively() {
        let raw =
            "HTTP/1.1 400 Bad Request\r\ncOnTeNt-LeNgTh:  27\r\n\r\n{\"fault_message\":\"boom\"}xx";
        let h = head(raw).ok().flatten();
        let Some(h) = h else {
            panic!("head not parsed: {:?}", head(raw));
        };
        assert_eq!(h.status, 400);
        assert_eq!(h.framing, Framing::Length(27));
        assert_eq!(&raw[h.header_len..h.header_len + 2], "{\"");
    }

    #[test]
    fn status_without_reason_and_http10() {
        assert_eq!(
            head("HTTP/1.0 200\r\n\r\n"),
            Ok(Some(Head {
                status: 200,
                header_len: 16,
                framing: Framing::UntilEof
            }))
        );
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"), Ok(None));
        assert_eq!(head(""), Ok(None));
    }

    #[test]
    fn chunked_is_rejected() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Chunked)
        );
        let err = HeadError::Chunked.into_api(Method::Get, "/");
        assert!(matches!(err, ApiError::ChunkedUnsupported { .. }), "{err}");
    }

    #[test]
    fn bad_status_lines() {
        for line in [
            "HTTP/2 200 OK",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc OK",
            "HTTP/1.1 099 Low",
            "ICY 200 OK",
            "HTTP/1.1",
            "",
        ] {
            let raw = format!("{line}\r\n\r\n");
            assert!(
                matches!(head(&raw), Err(HeadError::Malformed(_))),
                "accepted {line:?}"
            );
        }
    }

    #[test]
    fn bad_headers() {
        for raw in [
            "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw), Err(HeadError::Malformed(_))),
                "accepted {raw:?}"
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(head(&huge), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn fault_message_is_lenient() {
        assert_eq!(
            fault_message(br#"{"fault_message":"bad drive"}"#),
            "bad drive"
        );
        assert_eq!(fault_message(b"  plain text \n"), "plain text");
        assert_eq!(fault_message(br#"{"other":1}"#), r#"{"other":1}"#);
        assert_eq!(fault_message(b""), "");
        assert!(fault_message(&[b'x'; 5000]).len() <= MAX_FAULT + 3);
    }

    #[test]
    fn encodes_request() {
        let r = encode_request(Method::Put, "/actions", Some(b"{}"));
        assert_eq!(
            String::from_utf8_lossy(&r),
            "PUT /actions HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        let r = encode_request(Method::Get, "/", None);
        assert_eq!(
            String::from_utf8_lossy(&r),
            "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn rejects_bad_paths_before_connecting() {
        let c = ApiClient::new(PathBuf::from("/nonexistent/sock"));
        for p in ["actions", "/a b", "/a\r\nX: y"] {
            let r = c.get(p).await;
            assert!(
                matches!(r, Err(ApiError::InvalidPath { .. })),
                "{p:?}: {r:?}"
            );
        }
        let r = c.get("/").await;
        assert!(matches!(r, Err(ApiError::Connect { .. })), "{r:?}");
    }
}
