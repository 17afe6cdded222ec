//! Host side of Firecracker's hybrid vsock.
//!
//! Firecracker exposes a guest's vsock device to the host as one Unix socket. A host client
//! connects to it, writes `CONNECT <port>\n`, and the VMM answers with a line starting with
//! `OK ` once the guest has accepted the connection on that port; from then on the stream
//! carries the application protocol. pyro's QEMU relay offers the same interface, so
//! [`connect`] serves both backends.
//!
//! The guest may not be listening yet (the socket may not even exist yet), so [`connect`]
//! retries with a short, growing backoff until its deadline.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Longest reply line accepted, newline included.
const MAX_REPLY: usize = 64;
/// First retry delay.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Largest retry delay.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Errors of [`connect`].
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// No connection was established before the deadline.
    #[error(
        "vsock port {port} via {} not reachable within {timeout:?} ({attempts} attempts): {last_cause}",
        socket.display()
    )]
    Timeout {
        /// The hybrid-vsock Unix socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
        /// The deadline that expired.
        timeout: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// What went wrong on the last attempt.
        last_cause: String,
    },
    /// The VMM (or relay) answered something other than `OK `.
    #[error("vsock port {port} via {}: connection refused with reply {reply:?}", socket.display())]
    Rejected {
        /// The hybrid-vsock Unix socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
        /// The reply line (lossily decoded, without the newline).
        reply: String,
    },
    /// The reply line was longer than the protocol allows.
    #[error("vsock port {port} via {}: reply longer than {MAX_REPLY} bytes", socket.display())]
    ReplyTooLong {
        /// The hybrid-vsock Unix socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
    },
    /// An I/O error that retrying cannot fix (permission denied, not a socket, …).
    #[error("vsock port {port} via {}", socket.display())]
    Io {
        /// The hybrid-vsock Unix socket.
        socket: PathBuf,
        /// Guest port.
        port: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one attempt failed.
enum Attempt {
    /// Worth trying again (socket missing, refused, EOF before the reply).
    Retry(String),
    /// Final.
    Fatal(VsockError),
}

/// Connects to guest `port` through the hybrid-vsock Unix socket `uds`, retrying until
/// `timeout` has passed, and returns the stream positioned right after the `OK` line.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = BACKOFF_START;
    let mut attempts = 0u32;
    let mut last_cause = String::from("no attempt made");
    loop {
        let now = Instant::now();
        if now >= deadline && attempts > 0 {
            return Err(VsockError::Timeout {
                socket: uds.to_owned(),
                port,
                timeout,
                attempts,
                last_cause,
            });
        }
        attempts += 1;
        let remaining = deadline.saturating_duration_since(now);
        match tokio::time::timeout(remaining, attempt(uds, port)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(cause))) => last_cause = cause,
            Err(_) => last_cause = String::from("no reply to CONNECT before the deadline"),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            continue;
        }
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn attempt(uds: &Path, port: u32) -> Result<UnixStream, Attempt> {
    let fatal = |source: std::io::Error| {
        Attempt::Fatal(VsockError::Io {
            socket: uds.to_owned(),
            port,
            source,
        })
    };
    let mut stream = match UnixStream::connect(uds).await {
        Ok(s) => s,
        Err(e) if retryable(&e) => return Err(Attempt::Retry(format!("connect: {e}"))),
        Err(e) => return Err(fatal(e)),
    };
    if let Err(e) = stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
    {
        return Err(if retryable(&e) {
            Attempt::Retry(format!("write CONNECT: {e}"))
        } else {
            fatal(e)
        });
    }
    // Read byte by byte: anything after the newline belongs to the application protocol.
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) if line.is_empty() => {
                return Err(Attempt::Retry("closed before replying to CONNECT".into()));
            }
            Ok(0) => {
                return Err(Attempt::Retry(format!(
                    "closed in the middle of the reply {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() >= MAX_REPLY {
                    return Err(Attempt::Fatal(VsockError::ReplyTooLong {
                        socket: uds.to_owned(),
                        port,
                    }));
                }
            }
            Err(e) if retryable(&e) => return Err(Attempt::Retry(format!("read reply: {e}"))),
            Err(e) => return Err(fatal(e)),
        }
    }
    if line.starts_with(b"OK ") {
        Ok(stream)
    } else {
        Err(Attempt::Fatal(VsockError::Rejected {
            socket: uds.to_owned(),
            port,
            reply: String::from_utf8_lossy(&line).into_owned(),
        }))
    }
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::WouldBlock
    )
}
