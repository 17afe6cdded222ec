//! The relay against a fake QEMU chardev whose one connection is served by a pyro session.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use pyro_firecracker::vsock::{self, VsockError};
use pyro_proto::api::{self, PingResult, Request};
use pyro_proto::{Config, Message, MsgKind, ProtoError, Session};
use pyro_qemu::{RelayError, RelayOptions, run_relay, run_relay_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::util::{AGENT_RESET_REASON, FakeQemu, RESET_ME, wait_until};

const SECOND: Duration = Duration::from_secs(1);

struct Setup {
    _dir: tempfile::TempDir,
    listen: PathBuf,
    fake: FakeQemu,
    relay: JoinHandle<Result<(), RelayError>>,
}

/// Starts the relay first and the fake QEMU a little later, so the relay has to retry.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let listen = dir.path().join("vsock.sock");
    // A stale socket file from an earlier run must not stop the relay.
    drop(std::os::unix::net::UnixListener::bind(&listen).unwrap());
    assert!(listen.exists());
    let (ready_tx, ready_rx) = oneshot::channel();
    let relay = {
        let (a, l) = (agent_sock.clone(), listen.clone());
        tokio::spawn(async move { run_relay(&a, &l, Some(ready_tx)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fake = FakeQemu::start(&agent_sock);
    tokio::time::timeout(5 * SECOND, ready_rx)
        .await
        .expect("relay not ready in time")
        .expect("relay dropped its ready signal");
    Setup {
        _dir: dir,
        listen,
        fake,
        relay,
    }
}

async fn client(listen: &Path) -> Session {
    let conn = vsock::connect(listen, pyro_proto::AGENT_PORT, 5 * SECOND)
        .await
        .unwrap();
    Session::client(conn, Config::default()).await.unwrap()
}

/// Sends `len` bytes on a new stream in chunks of `chunk` and returns what comes back.
async fn echo(session: &Session, len: usize, chunk: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let (mut tx, mut rx) = session.open().unwrap().split();
    let sent = data.clone();
    let sender = async move {
        for piece in sent.chunks(chunk) {
            tx.send(Message::new(MsgKind::DATA, Bytes::copy_from_slice(piece)))
                .await
                .unwrap();
        }
        tx.finish().unwrap();
        tx
    };
    let receiver = async move {
        let mut got = Vec::with_capacity(len);
        while let Some(msg) = rx.recv().await.unwrap() {
            assert_eq!(msg.kind, MsgKind::DATA);
            got.extend_from_slice(&msg.body);
        }
        got
    };
    let (_tx, got) = tokio::join!(sender, receiver);
    (data, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_the_one_serial_session_concurrently() {
    let s = setup().await;
    let (a, b) = tokio::join!(client(&s.listen), client(&s.listen));
    let work = |session: Session, seed: u8| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let session = session.clone();
            tasks.spawn(async move {
                let pong: PingResult = api::call(&session, &Request::Ping).await.unwrap();
                assert_eq!(pong.agent_version, "fake");
            });
        }
        // 3 MiB each way per stream: three times the flow-control window, so the relay
        // must pass credit back end to end or this stalls.
        for i in 0..2 {
            let session = session.clone();
            tasks.spawn(async move {
                let (sent, got) = echo(&session, 3 << 20, 200 * 1024, seed + i).await;
                assert_eq!(sent.len(), got.len());
                assert!(sent == got, "echoed bytes differ");
            });
        }
        while let Some(res) = tasks.join_next().await {
            res.unwrap();
        }
    };
    tokio::time::timeout(60 * SECOND, async { tokio::join!(work(a, 1), work(b, 7)) })
        .await
        .expect("concurrent calls through the relay did not finish");
    assert_eq!(s.fake.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.fake.streams.load(Ordering::SeqCst),
        2 * 12,
        "every client stream became one stream on the serial session"
    );
    assert!(!s.relay.is_finished());
}

#[tokio::test]
async fn unknown_ports_and_garbage_get_err_and_are_closed() {
    let s = setup().await;
    let mut raw = UnixStream::connect(&s.listen).await.unwrap();
    raw.write_all(b"CONNECT 1234\n").await.unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "ERR unknown port\n");

    let err = vsock::connect(&s.listen, 52, 2 * SECOND).await.unwrap_err();
    assert!(
        matches!(&err, VsockError::Rejected { reply, .. } if reply == "ERR unknown port"),
        "{err:?}"
    );

    let mut raw = UnixStream::connect(&s.listen).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\n").await.unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("ERR "), "{reply:?}");

    // The relay keeps serving good clients afterwards.
    let session = client(&s.listen).await;
    api::call::<PingResult>(&session, &Request::Ping)
        .await
        .unwrap();
}

#[tokio::test]
async fn resets_propagate_in_both_directions() {
    let mut s = setup().await;
    let session = client(&s.listen).await;

    // Client → agent: the agent sees the client's reason.
    let mut stream = session.open().unwrap();
    stream
        .send(Message::new(MsgKind::DATA, &b"hello"[..]))
        .await
        .unwrap();
    let echoed = stream.recv().await.unwrap().unwrap();
    assert_eq!(echoed.body.as_ref(), b"hello");
    stream.split().0.reset("client gave up");
    s.fake.expect_failure("client gave up").await;

    // Agent → client: the client sees the agent's reason.
    let mut stream = session.open().unwrap();
    stream
        .send(Message::new(MsgKind::DATA, RESET_ME))
        .await
        .unwrap();
    let err = tokio::time::timeout(5 * SECOND, stream.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, ProtoError::StreamReset { reason } if reason == AGENT_RESET_REASON),
        "{err:?}"
    );

    // A client whose connection breaks with a stream open: the agent's stream is reset.
    let conn = vsock::connect(&s.listen, pyro_proto::AGENT_PORT, 5 * SECOND)
        .await
        .unwrap();
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let wire = tokio::spawn(async move {
        let mut conn = conn;
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut far).await;
    });
    let doomed = Session::client(near, Config::default()).await.unwrap();
    let mut stream = doomed.open().unwrap();
    stream
        .send(Message::new(MsgKind::DATA, &b"still working"[..]))
        .await
        .unwrap();
    stream.recv().await.unwrap().unwrap();
    wire.abort();
    let seen = s.fake.expect_failure("peer session ended").await;
    assert!(seen.contains("closed the connection"), "{seen}");
    drop(stream);

    // Other clients are unaffected.
    let session = client(&s.listen).await;
    let (sent, got) = echo(&session, 1000, 100, 3).await;
    assert_eq!(sent, got);
}

#[tokio::test]
async fn the_relay_ends_when_qemu_goes_away() {
    let s = setup().await;
    let session = client(&s.listen).await;
    let mut stream = session.open().unwrap();
    stream
        .send(Message::new(MsgKind::DATA, &b"ping"[..]))
        .await
        .unwrap();
    stream.recv().await.unwrap().unwrap();

    s.fake.kill();
    let res = tokio::time::timeout(5 * SECOND, s.relay)
        .await
        .expect("the relay did not end after QEMU's socket closed")
        .unwrap();
    res.unwrap();
    wait_until("the relay removed its socket", SECOND, || {
        !s.listen.exists()
    })
    .await;

    // The client's open stream fails and its session ends.
    let err = tokio::time::timeout(5 * SECOND, stream.recv())
        .await
        .expect("the client's stream was left hanging")
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::StreamReset { .. } | ProtoError::SessionClosed { .. }
        ),
        "{err:?}"
    );
    tokio::time::timeout(5 * SECOND, session.closed())
        .await
        .expect("the client's session stayed open");
    assert!(UnixStream::connect(&s.listen).await.is_err());
}

#[tokio::test]
async fn an_agent_that_never_answers_is_a_handshake_error() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let listen = dir.path().join("vsock.sock");
    // Accepts, then says nothing: a guest that never gets through stage 1.
    let listener = tokio::net::UnixListener::bind(&agent_sock).unwrap();
    let silent = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(conn);
    });
    let opts = RelayOptions {
        handshake_timeout: Duration::from_millis(200),
        ..RelayOptions::default()
    };
    let err = run_relay_with(&agent_sock, &listen, None, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RelayError::Handshake {
                source: ProtoError::HandshakeTimeout { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!listen.exists(), "nothing is served without an agent");
    silent.abort();
}

#[tokio::test]
async fn a_missing_agent_socket_is_reported_after_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RelayOptions {
        connect_timeout: Duration::from_millis(100),
        ..RelayOptions::default()
    };
    let started = std::time::Instant::now();
    let err = run_relay_with(
        &dir.path().join("agent.sock"),
        &dir.path().join("vsock.sock"),
        None,
        &opts,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RelayError::AgentUnreachable { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn debris_of_an_earlier_session_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let listen = dir.path().join("vsock.sock");
    // A GoAway and a stray window grant from the agent's previous session.
    const DEBRIS: &[u8] = &[
        8, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 1, 0,
    ];
    let fake = FakeQemu::start_after(&agent_sock, DEBRIS);
    let relay = {
        let (a, l) = (agent_sock.clone(), listen.clone());
        tokio::spawn(async move { run_relay(&a, &l, None).await })
    };
    let session = client(&listen).await;
    let pong: PingResult = api::call(&session, &Request::Ping).await.unwrap();
    assert_eq!(pong.agent_version, "fake");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
    fake.kill();
    tokio::time::timeout(5 * SECOND, relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
