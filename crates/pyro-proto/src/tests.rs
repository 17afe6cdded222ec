//! Session-level tests over in-memory duplex pipes.

use super::*;
use proptest::prelude::*;
use tokio::io::duplex;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn pair(pipe: usize, cfg: Config) -> (Session, Session, Incoming) {
    let (a, b) = duplex(pipe);
    let server = tokio::spawn(Session::server(b, cfg.clone()));
    let client = Session::client(a, cfg).await.unwrap();
    let (server, incoming) = server.await.unwrap().unwrap();
    (client, server, incoming)
}

/// An echo server: every stream echoes each message back, then ends.
fn spawn_echo(mut incoming: Incoming) {
    tokio::spawn(async move {
        while let Some(stream) = incoming.accept().await {
            tokio::spawn(async move {
                let (mut tx, mut rx) = stream.split();
                while let Ok(Some(msg)) = rx.recv().await {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                let _ = tx.finish();
            });
        }
    });
}

#[test]
fn version_mismatch_is_reported() {
    rt().block_on(async {
        let (a, mut b) = duplex(4096);
        // A fake peer announcing version 99.
        let mut hello = bytes::BytesMut::new();
        hello.extend_from_slice(b"PYRO");
        hello.extend_from_slice(&99u16.to_be_bytes());
        hello.extend_from_slice(&0u16.to_be_bytes());
        hello.extend_from_slice(&(1u32 << 20).to_be_bytes());
        hello.extend_from_slice(&(1u32 << 18).to_be_bytes());
        let mut buf = bytes::BytesMut::new();
        frame::Frame::new(frame::FrameKind::Hello, 0, hello.freeze()).encode(&mut buf);
        use tokio::io::AsyncWriteExt;
        b.write_all(&buf).await.unwrap();
        let err = Session::client(a, Config::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::VersionMismatch {
                    ours: 1,
                    theirs: 99
                }
            ),
            "{err:?}"
        );
    });
}

#[test]
fn garbage_peer_is_rejected() {
    rt().block_on(async {
        let (a, mut b) = duplex(4096);
        use tokio::io::AsyncWriteExt;
        b.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        let err = Session::client(a, Config::default()).await.unwrap_err();
        assert!(
            matches!(err, ProtoError::Frame(_) | ProtoError::Protocol { .. }),
            "{err:?}"
        );
    });
}

#[test]
fn handshake_times_out_on_a_silent_peer() {
    rt().block_on(async {
        let (a, _b) = duplex(4096);
        let cfg = Config {
            handshake_timeout: std::time::Duration::from_millis(50),
            ..Config::default()
        };
        let err = Session::client(a, cfg).await.unwrap_err();
        assert!(
            matches!(err, ProtoError::HandshakeTimeout { .. }),
            "{err:?}"
        );
    });
}

#[test]
fn slow_stream_does_not_block_others() {
    rt().block_on(async {
        let cfg = Config {
            window: 64 * 1024,
            ..Config::default()
        };
        let (client, _server, mut incoming) = pair(8 * 1024, cfg).await;
        // The server opens nothing; it receives two streams: one it never reads, one it echoes.
        let stuck = tokio::spawn(async move {
            let first = incoming.accept().await.unwrap();
            let second = incoming.accept().await.unwrap();
            let (mut tx, mut rx) = second.split();
            while let Ok(Some(m)) = rx.recv().await {
                tx.send(m).await.unwrap();
            }
            tx.finish().unwrap();
            first
        });
        let mut blocked = client.open().unwrap();
        // Fill the blocked stream's window completely; the next send must wait.
        let chunk = Message::new(MsgKind::DATA, vec![7u8; 16 * 1024 - 1]);
        for _ in 0..4 {
            blocked.send(chunk.clone()).await.unwrap();
        }
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            blocked.send(chunk.clone()),
        )
        .await;
        assert!(
            pending.is_err(),
            "send beyond the window must wait for credit"
        );

        let mut live = client.open().unwrap();
        for i in 0..200u32 {
            let m = Message::new(MsgKind::DATA, i.to_be_bytes().to_vec());
            live.send(m.clone()).await.unwrap();
            assert_eq!(live.recv().await.unwrap(), Some(m));
        }
        live.finish().unwrap();
        assert_eq!(live.recv().await.unwrap(), None);
        drop(stuck);
    });
}

#[test]
fn dropped_stream_resets_peer() {
    rt().block_on(async {
        let (client, _server, mut incoming) = pair(64 * 1024, Config::default()).await;
        let mut s = client.open().unwrap();
        s.send(Message::new(MsgKind::DATA, &b"x"[..]))
            .await
            .unwrap();
        let mut peer = incoming.accept().await.unwrap();
        assert!(peer.recv().await.unwrap().is_some());
        drop(s);
        let err = peer.recv().await.unwrap_err();
        assert!(matches!(err, ProtoError::StreamReset { .. }), "{err:?}");
    });
}

#[test]
fn session_end_fails_pending_streams() {
    rt().block_on(async {
        let (client, server, incoming) = pair(64 * 1024, Config::default()).await;
        let mut s = client.open().unwrap();
        drop(incoming);
        drop(server);
        let err = s.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::SessionClosed { .. } | ProtoError::StreamReset { .. }
            ),
            "{err:?}"
        );
        // The stream may see the reset before the session notices the transport is gone.
        tokio::time::timeout(std::time::Duration::from_secs(5), client.closed())
            .await
            .expect("the session never noticed the peer went away");
        assert!(client.open().is_err());
    });
}

#[test]
fn ping_round_trips() {
    rt().block_on(async {
        let (client, _server, incoming) = pair(64 * 1024, Config::default()).await;
        spawn_echo(incoming);
        client
            .ping(std::time::Duration::from_secs(5))
            .await
            .unwrap();
    });
}

#[test]
fn oversized_message_is_refused_locally() {
    rt().block_on(async {
        let (client, _server, incoming) = pair(64 * 1024, Config::default()).await;
        spawn_echo(incoming);
        let mut s = client.open().unwrap();
        let big = Message::new(MsgKind::DATA, vec![0u8; Message::MAX_BODY + 1]);
        let err = s.send(big).await.unwrap_err();
        assert!(matches!(err, ProtoError::MessageTooLarge { .. }), "{err:?}");
        // The stream is still usable.
        let ok = Message::new(MsgKind::DATA, vec![1u8; Message::MAX_BODY]);
        s.send(ok.clone()).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(ok));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many concurrent streams with arbitrary message sizes each get exactly their own
    /// messages back, in order, over a small pipe with a small window.
    #[test]
    fn concurrent_streams_keep_their_own_data(
        streams in proptest::collection::vec(
            proptest::collection::vec(0usize..40_000, 1..12),
            1..12,
        ),
        pipe in 512usize..16_384,
    ) {
        rt().block_on(async move {
            let cfg = Config { window: 48 * 1024, ..Config::default() };
            let (client, _server, incoming) = pair(pipe, cfg).await;
            spawn_echo(incoming);
            let mut tasks = Vec::new();
            for (si, sizes) in streams.into_iter().enumerate() {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let stream = client.open().unwrap();
                    let (mut tx, mut rx) = stream.split();
                    let expected: Vec<Message> = sizes
                        .iter()
                        .enumerate()
                        .map(|(mi, &n)| {
                            let byte = (si * 31 + mi) as u8;
                            Message::new(MsgKind::DATA, vec![byte; n])
                        })
                        .collect();
                    let to_send = expected.clone();
                    let sender = tokio::spawn(async move {
                        for m in to_send {
                            tx.send(m).await.unwrap();
                        }
                        tx.finish().unwrap();
                        tx
                    });
                    let mut got = Vec::new();
                    while let Some(m) = rx.recv().await.unwrap() {
                        got.push(m);
                    }
                    let _tx = sender.await.unwrap();
                    assert_eq!(got, expected);
                }));
            }
            let all = async {
                for t in tasks {
                    t.await.unwrap();
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), all)
                .await
                .expect("streams deadlocked");
        });
    }
}

/// Regression: the receiver used to grant credit only in quarter-window batches, so a small
/// consumed-but-ungranted remainder could leave a large message waiting forever.
#[test]
fn small_remainder_does_not_starve_a_large_message() {
    rt().block_on(async {
        let cfg = Config {
            window: 48 * 1024,
            ..Config::default()
        };
        let (client, _server, incoming) = pair(64 * 1024, cfg).await;
        spawn_echo(incoming);
        let mut s = client.open().unwrap();
        for _ in 0..10 {
            let m = Message::new(MsgKind::DATA, vec![1u8; 999]);
            s.send(m.clone()).await.unwrap();
            assert_eq!(s.recv().await.unwrap(), Some(m));
        }
        let big = Message::new(MsgKind::DATA, vec![2u8; 45_000]);
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            s.send(big.clone()).await.unwrap();
            s.recv().await.unwrap()
        })
        .await
        .expect("large message starved of credit");
        assert_eq!(echoed, Some(big));
    });
}
