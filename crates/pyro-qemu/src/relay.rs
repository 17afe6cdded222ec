//! The host-side relay between QEMU's agent serial port and any number of host clients.
//!
//! QEMU exposes the guest agent's virtio-serial port as a Unix-socket chardev that serves a
//! single client. [`run_relay`] is that client: it opens one pyro session over the port
//! (the agent speaks first, once its stage 1 has mounted the root filesystem; whatever an
//! earlier relay's session left in the port before that hello is skipped, so a relay can be
//! restarted, or reattached after a snapshot restore, without restarting the guest), then
//! listens on its own Unix socket and speaks Firecracker's hybrid-vsock handshake there:
//! a client writes `CONNECT <port>\n`; for [`pyro_proto::AGENT_PORT`] the relay answers
//! `OK 1\n`, anything else gets `ERR unknown port\n` and is closed. After `OK`, the client
//! runs a pyro session on the connection, and every stream it opens is bridged to a new
//! stream on the serial session:
//!
//! - messages are copied both ways concurrently, each copy awaiting the send, so flow
//!   control holds end to end (a slow reader stalls only its own stream);
//! - the end of one direction (`Ok(None)`) finishes the other side's sending direction;
//! - a reset, or the end of either session, resets the other side with the same reason, so
//!   the agent stops work whose client has gone away.
//!
//! The relay ends, removing its socket, when the serial session ends (QEMU exited or closed
//! the port); client connections are then closed.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pyro_proto::frame::{FrameKind, HEADER_LEN};
use pyro_proto::{Config, ProtoError, RecvHalf, SendHalf, Session, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Longest `CONNECT` line accepted, newline included.
const MAX_CONNECT_LINE: usize = 64;
/// Delay between attempts to connect to QEMU's chardev socket.
const CONNECT_POLL: Duration = Duration::from_millis(5);

/// Timeouts of the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// How long to keep retrying the connection to QEMU's chardev socket.
    pub connect_timeout: Duration,
    /// How long to wait for the agent's handshake on the serial port (under TCG the guest
    /// needs a few seconds to get through stage 1).
    pub handshake_timeout: Duration,
    /// How long a host client may take to send its `CONNECT` line, and then its handshake.
    pub client_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(120),
            client_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// QEMU's chardev socket did not accept a connection in time.
    #[error("QEMU's agent socket {} did not accept a connection within {after:?}", path.display())]
    AgentUnreachable {
        /// The chardev socket.
        path: PathBuf,
        /// How long we tried.
        after: Duration,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to QEMU's chardev socket failed in a way retrying cannot fix.
    #[error("cannot connect to QEMU's agent socket {}", path.display())]
    AgentConnect {
        /// The chardev socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not complete the session handshake.
    #[error("no session with the guest agent over {}", path.display())]
    Handshake {
        /// The chardev socket.
        path: PathBuf,
        /// The protocol error.
        #[source]
        source: ProtoError,
    },
    /// The relay's own socket could not be created.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The relay socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the relay with [`RelayOptions::default`]; see [`run_relay_with`].
///
/// # Errors
///
/// As for [`run_relay_with`].
pub async fn run_relay(
    agent_sock: &Path,
    listen: &Path,
    ready: Option<oneshot::Sender<()>>,
) -> Result<(), RelayError> {
    run_relay_with(agent_sock, listen, ready, &RelayOptions::default()).await
}

/// Connects to QEMU's agent chardev socket `agent_sock`, completes the session handshake
/// with the agent, listens on `listen` (replacing a stale socket), sends on `ready`, and
/// serves host clients until the serial session ends. Returns `Ok(())` then, after removing
/// `listen`.
///
/// Only one relay can serve a VM: QEMU's chardev accepts a single client.
///
/// # Errors
///
/// [`RelayError::AgentUnreachable`] / [`RelayError::AgentConnect`] when QEMU's socket
/// cannot be reached, [`RelayError::Handshake`] when the agent does not answer,
/// [`RelayError::Bind`] when `listen` cannot be created.
pub async fn run_relay_with(
    agent_sock: &Path,
    listen: &Path,
    ready: Option<oneshot::Sender<()>>,
    opts: &RelayOptions,
) -> Result<(), RelayError> {
    let mut conn = connect_agent(agent_sock, opts.connect_timeout).await?;
    let hello = await_agent_hello(&mut conn, opts.handshake_timeout)
        .await
        .map_err(|source| RelayError::Handshake {
            path: agent_sock.to_owned(),
            source,
        })?;
    let conn = Replay {
        prefix: hello,
        inner: conn,
    };
    let config = Config {
        handshake_timeout: opts.handshake_timeout,
        ..Config::default()
    };
    let serial = Session::client(conn, config)
        .await
        .map_err(|source| RelayError::Handshake {
            path: agent_sock.to_owned(),
            source,
        })?;
    tracing::debug!(agent = %agent_sock.display(), "guest agent session established");

    match std::fs::remove_file(listen) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RelayError::Bind {
                path: listen.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(listen).map_err(|source| RelayError::Bind {
        path: listen.to_owned(),
        source,
    })?;
    let _socket = RemoveOnDrop(listen.to_owned());
    if let Some(ready) = ready {
        let _ = ready.send(());
    }

    let mut clients = JoinSet::new();
    let reason = loop {
        tokio::select! {
            reason = serial.closed() => break reason,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    clients.spawn(serve_client(conn, serial.clone(), opts.client_timeout));
                }
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            // Reap finished client tasks so the set does not grow without bound.
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    };
    tracing::debug!(%reason, "guest agent session ended; relay stops");
    // Dropping the set aborts the client tasks, which closes their connections.
    drop(clients);
    Ok(())
}

/// Removes the relay socket when the relay ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn connect_agent(path: &Path, timeout: Duration) -> Result<UnixStream, RelayError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Ok(conn) => return Ok(conn),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(RelayError::AgentUnreachable {
                        path: path.to_owned(),
                        after: timeout,
                        source: e,
                    });
                }
                tokio::time::sleep(CONNECT_POLL).await;
            }
            Err(source) => {
                return Err(RelayError::AgentConnect {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Reads from QEMU's agent socket until the agent's `Hello` frame arrives and returns the
/// bytes from that frame on; everything before it is discarded.
///
/// Bytes before the hello are the tail of an earlier session: when a relay goes away, the
/// agent's old session still writes its `GoAway`, which the guest kernel holds until the
/// next host connects. And nothing is sent before the agent's hello, because until the
/// agent has reopened its port our own hello could land in (and die with) the old session.
/// The agent always speaks first, so waiting costs nothing.
async fn await_agent_hello(conn: &mut UnixStream, timeout: Duration) -> Result<Bytes, ProtoError> {
    let read = async {
        let mut buf = BytesMut::with_capacity(4096);
        let mut skipped = 0usize;
        loop {
            if let Some(at) = find_hello(&buf) {
                if skipped + at > 0 {
                    tracing::debug!(
                        bytes = skipped + at,
                        "discarded the tail of an earlier agent session"
                    );
                }
                return Ok(buf.split_off(at).freeze());
            }
            // Keep only what could be the start of a hello that has not fully arrived.
            if buf.len() > HELLO_SIGNATURE {
                let drop_len = buf.len() - HELLO_SIGNATURE;
                skipped += drop_len;
                let _ = buf.split_to(drop_len);
            }
            let n = conn
                .read_buf(&mut buf)
                .await
                .map_err(|source| ProtoError::Io { source })?;
            if n == 0 {
                return Err(ProtoError::SessionClosed {
                    reason: "QEMU closed the agent socket before the agent spoke".into(),
                });
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProtoError::HandshakeTimeout { after: timeout })?
}

/// Bytes of a hello frame that [`find_hello`] checks: the header and the magic.
const HELLO_SIGNATURE: usize = HEADER_LEN + MAGIC.len();
/// The session magic at the start of a hello payload.
const MAGIC: &[u8; 4] = b"PYRO";
/// Hello payload sizes accepted as plausible (the current one is 16 bytes).
const HELLO_PAYLOAD: std::ops::RangeInclusive<u32> = 16..=4096;

/// Offset of the first plausible hello frame in `buf`: kind `Hello`, stream 0, a small
/// length, then the magic.
fn find_hello(buf: &[u8]) -> Option<usize> {
    (0..buf.len().saturating_sub(HELLO_SIGNATURE - 1)).find(|&at| {
        let h = &buf[at..at + HELLO_SIGNATURE];
        let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        h[0] == FrameKind::Hello as u8
            && h[1..5] == [0, 0, 0, 0]
            && HELLO_PAYLOAD.contains(&len)
            && &h[HEADER_LEN..] == MAGIC
    })
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
struct Replay {
    prefix: Bytes,
    inner: UnixStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a client asked for in its `CONNECT` line.
#[derive(Debug, PartialEq, Eq)]
enum ConnectLine {
    Port(u32),
    Malformed,
}

fn parse_connect(line: &[u8]) -> ConnectLine {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    match text.strip_prefix("CONNECT ").map(str::parse::<u32>) {
        Some(Ok(port)) => ConnectLine::Port(port),
        _ => ConnectLine::Malformed,
    }
}

/// Reads the `CONNECT` line byte by byte (whatever follows belongs to the session).
/// `None` when the client closed, sent too much or nothing in time.
async fn read_connect_line(conn: &mut UnixStream, timeout: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut line = Vec::with_capacity(MAX_CONNECT_LINE);
        loop {
            let mut byte = [0u8; 1];
            match conn.read(&mut byte).await {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == b'\n' => return Some(line),
                Ok(_) => {
                    line.push(byte[0]);
                    if line.len() >= MAX_CONNECT_LINE {
                        return None;
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Serves one host connection: the `CONNECT` handshake, then a session whose streams are
/// bridged onto the serial session.
async fn serve_client(mut conn: UnixStream, serial: Session, timeout: Duration) {
    let Some(line) = read_connect_line(&mut conn, timeout).await else {
        tracing::debug!("relay client sent no CONNECT line");
        return;
    };
    match parse_connect(&line) {
        ConnectLine::Port(port) if port == pyro_proto::AGENT_PORT => {}
        ConnectLine::Port(port) => {
            tracing::debug!(port, "relay client asked for an unknown port");
            let _ = conn.write_all(b"ERR unknown port\n").await;
            return;
        }
        ConnectLine::Malformed => {
            let _ = conn.write_all(b"ERR malformed CONNECT line\n").await;
            return;
        }
    }
    if conn.write_all(b"OK 1\n").await.is_err() {
        return;
    }
    let config = Config {
        handshake_timeout: timeout,
        ..Config::default()
    };
    let (client, mut incoming) = match Session::server(conn, config).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "relay client handshake failed");
            return;
        }
    };
    let mut bridges = JoinSet::new();
    loop {
        tokio::select! {
            stream = incoming.accept() => {
                let Some(stream) = stream else { break };
                match serial.open() {
                    Ok(upstream) => {
                        bridges.spawn(bridge(stream, upstream));
                    }
                    Err(e) => {
                        stream.split().0.reset(&format!("relay: guest agent unavailable: {e}"));
                        break;
                    }
                }
            }
            _ = serial.closed() => break,
            Some(_) = bridges.join_next(), if !bridges.is_empty() => {}
        }
    }
    // The client's session has ended (or the guest's): every bridge now ends on its own,
    // forwarding what was already received and resetting what cannot complete.
    while bridges.join_next().await.is_some() {}
    drop(client);
}

/// Copies one stream pair both ways until both directions are done.
async fn bridge(client: Stream, agent: Stream) {
    let (client_tx, client_rx) = client.split();
    let (agent_tx, agent_rx) = agent.split();
    tokio::join!(pump(client_rx, agent_tx), pump(agent_rx, client_tx));
}

/// Copies one direction: messages in order, `End` as `finish`, failures as `reset`. A reset
/// of the destination (its peer went away) ends the copy at once, even while the source is
/// silent: dropping `from` then resets the source stream once the other direction is done
/// too (the client's request side ends early, so without this a client's reset of a call
/// whose command prints nothing would never reach the agent).
async fn pump(mut from: RecvHalf, mut to: SendHalf) {
    loop {
        let next = tokio::select! {
            next = from.recv() => next,
            reason = to.stopped() => {
                tracing::trace!(%reason, "relay: destination stopped");
                return;
            }
        };
        match next {
            Ok(Some(msg)) => {
                if let Err(e) = to.send(msg).await {
                    // The receiving side is gone. The other direction's pump sees the same
                    // reset and forwards it to our source; if that pump is already done,
                    // dropping `from` resets the source stream.
                    tracing::trace!(error = %e, "relay: send failed");
                    return;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(e) => {
                to.reset(&reset_reason(&e));
                return;
            }
        }
    }
}

fn reset_reason(e: &ProtoError) -> String {
    match e {
        ProtoError::StreamReset { reason } => reason.clone(),
        ProtoError::SessionClosed { reason } => format!("relay: peer session ended: {reason}"),
        other => format!("relay: {other}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect(b"CONNECT 5005"), ConnectLine::Port(5005));
        assert_eq!(parse_connect(b"CONNECT 5005\r"), ConnectLine::Port(5005));
        assert_eq!(parse_connect(b"CONNECT 1"), ConnectLine::Port(1));
        assert_eq!(parse_connect(b"CONNECT"), ConnectLine::Malformed);
        assert_eq!(parse_connect(b"CONNECT -1"), ConnectLine::Malformed);
        assert_eq!(
            parse_connect(b"CONNECT 99999999999"),
            ConnectLine::Malformed
        );
        assert_eq!(parse_connect(b"connect 5005"), ConnectLine::Malformed);
        assert_eq!(parse_connect(b"\xff\xfe"), ConnectLine::Malformed);
    }

    #[test]
    fn reset_reasons_pass_through() {
        let e = ProtoError::StreamReset {
            reason: "cancelled by user".into(),
        };
        assert_eq!(reset_reason(&e), "cancelled by user");
        let e = ProtoError::SessionClosed {
            reason: "the peer closed the connection".into(),
        };
        assert!(reset_reason(&e).contains("peer session ended"));
    }

    /// A hello frame as the agent sends it.
    fn hello() -> Vec<u8> {
        let mut h = vec![0u8, 0, 0, 0, 0, 0, 0, 0, 16];
        h.extend_from_slice(b"PYRO");
        h.extend_from_slice(&[0, 1, 0, 0, 0, 0x10, 0, 0, 0, 4, 0, 0]);
        h
    }

    #[test]
    fn the_hello_is_found_behind_a_stale_goaway() {
        let goaway = [8u8, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut buf = goaway.to_vec();
        buf.extend(hello());
        assert_eq!(find_hello(&buf), Some(goaway.len()));
        assert_eq!(find_hello(&hello()), Some(0));
        assert_eq!(find_hello(&hello()[..HELLO_SIGNATURE - 1]), None);
        assert_eq!(find_hello(&hello()[..HELLO_SIGNATURE]), Some(0));
        assert_eq!(find_hello(b""), None);
    }

    #[test]
    fn the_magic_inside_data_is_not_a_hello() {
        // A data frame on stream 1 whose payload happens to contain the magic.
        let mut buf = vec![2u8, 0, 0, 0, 1, 0, 0, 0, 8];
        buf.extend_from_slice(b"\x04aPYROzz");
        assert_eq!(find_hello(&buf), None);
        // A header-shaped prefix with an implausible length.
        let mut buf = vec![0u8, 0, 0, 0, 0, 0, 0, 0, 3];
        buf.extend_from_slice(b"PYRO");
        assert_eq!(find_hello(&buf), None);
    }

    #[tokio::test]
    async fn the_hello_is_awaited_across_reads_and_replayed() {
        let (mut relay_end, mut qemu_end) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            // Old-session debris, then the hello in small pieces.
            let mut bytes = vec![8u8, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3];
            bytes.extend(hello());
            for piece in bytes.chunks(3) {
                qemu_end.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            qemu_end.write_all(b"after").await.unwrap();
            qemu_end
        });
        let prefix = await_agent_hello(&mut relay_end, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            prefix.starts_with(&hello()[..HELLO_SIGNATURE]),
            "{prefix:?}"
        );
        let _qemu_end = writer.await.unwrap();
        let mut replay = Replay {
            prefix,
            inner: relay_end,
        };
        let mut got = vec![0u8; hello().len() + 5];
        replay.read_exact(&mut got).await.unwrap();
        let mut want = hello();
        want.extend_from_slice(b"after");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn waiting_for_the_hello_times_out_or_sees_eof() {
        let (mut relay_end, qemu_end) = UnixStream::pair().unwrap();
        let err = await_agent_hello(&mut relay_end, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtoError::HandshakeTimeout { .. }),
            "{err:?}"
        );
        drop(qemu_end);
        let err = await_agent_hello(&mut relay_end, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ProtoError::SessionClosed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn connect_line_is_bounded_and_timed() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[b'x'; 100]).await.unwrap();
        assert_eq!(
            read_connect_line(&mut a, Duration::from_secs(5)).await,
            None
        );

        let (mut a, _b) = UnixStream::pair().unwrap();
        let t = std::time::Instant::now();
        assert_eq!(
            read_connect_line(&mut a, Duration::from_millis(50)).await,
            None
        );
        assert!(t.elapsed() >= Duration::from_millis(50));

        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"CONNECT 5005\nPYRO").await.unwrap();
        assert_eq!(
            read_connect_line(&mut a, Duration::from_secs(5)).await,
            Some(b"CONNECT 5005".to_vec())
        );
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).await.unwrap();
        assert_eq!(
            &rest, b"PYRO",
            "bytes after the line are left for the session"
        );
    }
}
