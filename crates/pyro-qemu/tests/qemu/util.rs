//! Shared helpers: a fake QEMU agent chardev served by an in-process pyro session, and
//! waiting helpers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pyro_proto::api::{PingResult, Request};
use pyro_proto::{Config, Message, MsgKind, Session, Stream};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Body of a message that makes the fake agent reset its stream.
pub const RESET_ME: &[u8] = b"reset-me";
/// The reason the fake agent gives when it resets a stream.
pub const AGENT_RESET_REASON: &str = "fake agent reset";

/// Stands in for QEMU's agent socket: accepts exactly one connection (like QEMU's socket
/// chardev) and serves it with a pyro session like the agent's. Streams answer a `Ping`
/// request, echo every other message, reset on [`RESET_ME`], and report the error that
/// ended them on `failures`.
pub struct FakeQemu {
    /// Errors that ended agent-side streams (resets the agent saw), as text.
    pub failures: mpsc::UnboundedReceiver<String>,
    /// Streams the agent accepted, over its single session.
    pub streams: Arc<AtomicUsize>,
    /// Connections accepted on the socket.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeQemu {
    /// Binds `path` and starts serving.
    pub fn start(path: &Path) -> FakeQemu {
        Self::start_after(path, &[])
    }

    /// Like [`FakeQemu::start`], but the connection first delivers `debris`: what an
    /// earlier session of the agent left in the serial port.
    pub fn start_after(path: &Path, debris: &'static [u8]) -> FakeQemu {
        let listener = UnixListener::bind(path).unwrap();
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let streams = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (streams.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            conn.write_all(debris).await.unwrap();
            // QEMU serves one client: later connections are never accepted.
            let _listener = listener;
            // The agent runs behind an in-memory pipe so that `kill` can cut the socket
            // abruptly, the way a dying QEMU does, without a polite end of session.
            let (agent_io, mut host_io) = tokio::io::duplex(256 * 1024);
            let agent = tokio::spawn(async move {
                let (_session, mut incoming) =
                    Session::server(agent_io, Config::default()).await.unwrap();
                let mut handlers = tokio::task::JoinSet::new();
                while let Some(stream) = incoming.accept().await {
                    s.fetch_add(1, Ordering::SeqCst);
                    handlers.spawn(serve_stream(stream, fail_tx.clone()));
                }
            });
            let _abort_agent = AbortOnDrop(agent);
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut host_io).await;
        });
        FakeQemu {
            failures,
            streams,
            connections,
            task,
        }
    }

    /// Simulates QEMU exiting: the connection and the session end abruptly.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Waits for a failure report containing `needle`.
    pub async fn expect_failure(&mut self, needle: &str) -> String {
        let wait = async {
            loop {
                let report = self.failures.recv().await.unwrap();
                if report.contains(needle) {
                    return report;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("the agent saw no failure containing {needle:?}"))
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_stream(stream: Stream, failures: mpsc::UnboundedSender<String>) {
    let (mut tx, mut rx) = stream.split();
    loop {
        match rx.recv().await {
            Ok(Some(msg)) if msg.kind == MsgKind::REQUEST => {
                assert_eq!(msg.parse::<Request>().unwrap(), Request::Ping);
                let pong = PingResult {
                    agent_version: "fake".into(),
                    protocol_version: pyro_proto::PROTOCOL_VERSION,
                    pid1: false,
                    uptime_ms: 0,
                };
                let reply = Message::json(MsgKind::RESPONSE, &pong).unwrap();
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
            Ok(Some(msg)) if msg.body.as_ref() == RESET_ME => {
                tx.reset(AGENT_RESET_REASON);
                return;
            }
            Ok(Some(msg)) => {
                if let Err(e) = tx.send(msg).await {
                    let _ = failures.send(e.to_string());
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.finish();
                return;
            }
            Err(e) => {
                let _ = failures.send(e.to_string());
                return;
            }
        }
    }
}

/// Polls `cond` every 5 ms until it holds, panicking with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
