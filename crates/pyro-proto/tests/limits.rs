//! Regression tests for the bounds on everything a hostile peer can make a session or a call
//! allocate or queue (see the "Limits" sections of `session` and `api`). Each test plays the
//! hostile side by hand and checks that the bound holds and that breaking it is a clean,
//! typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use pyro_proto::api::{self, CallError, ErrorCode};
use pyro_proto::frame::{FrameKind, MAX_FRAME_PAYLOAD};
use pyro_proto::session::{
    MAX_PEER_WINDOW, MAX_PENDING_REPLIES, MAX_PING_PAYLOAD, MAX_RESET_REASON, MAX_STREAMS,
};
use pyro_proto::{Config, Message, MsgKind, ProtoError, Session, Stream};
use tokio::io::duplex;

#[test]
fn a_frame_over_the_limit_ends_the_session_before_it_is_buffered() {
    rt().block_on(async {
        let (session, mut raw) = client_with_raw_peer(64 * 1024, 1 << 20, Config::default()).await;
        let mut s = session.open().unwrap();
        raw.send(&header(FrameKind::Data as u8, 1, MAX_FRAME_PAYLOAD + 1))
            .await;
        let reason = closed_reason(&session).await;
        assert!(reason.contains("exceeds the limit"), "{reason}");
        assert!(matches!(
            s.recv().await,
            Err(ProtoError::SessionClosed { .. })
        ));
    });
}

#[test]
fn ping_payloads_are_bounded() {
    rt().block_on(async {
        let (session, mut raw) = client_with_raw_peer(64 * 1024, 1 << 20, Config::default()).await;
        let ok = vec![7u8; MAX_PING_PAYLOAD];
        raw.send(&frame(FrameKind::Ping, 0, &ok)).await;
        let pong = raw.read_kind(FrameKind::Pong).await.unwrap();
        assert_eq!(&pong.payload[..], &ok[..]);
        raw.send(&frame(FrameKind::Ping, 0, &[7u8; MAX_PING_PAYLOAD + 1]))
            .await;
        let reason = closed_reason(&session).await;
        assert!(
            reason.contains(&format!("exceeds the limit of {MAX_PING_PAYLOAD}")),
            "{reason}"
        );
    });
}

/// A peer that sends pings (or opens streams the host refuses) without reading the answers
/// is cut off after `MAX_PENDING_REPLIES` queued answers instead of growing the queue forever.
#[test]
fn unread_answers_are_bounded() {
    for flood in [FrameKind::Ping, FrameKind::Open] {
        rt().block_on(async {
            let (session, raw) = client_with_raw_peer(1024, 1 << 20, Config::default()).await;
            let mut raw = raw;
            tokio::spawn(async move {
                for i in 0..(4 * MAX_PENDING_REPLIES as u32) {
                    let f = match flood {
                        FrameKind::Ping => frame(FrameKind::Ping, 0, &u64::from(i).to_be_bytes()),
                        _ => frame(FrameKind::Open, 2 * i + 2, &[]),
                    };
                    if tokio::io::AsyncWriteExt::write_all(&mut raw.io, &f)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Keep the connection open (and unread) until the test ends.
                std::future::pending::<()>().await;
            });
            let reason = closed_reason(&session).await;
            assert!(reason.contains("does not read its answers"), "{reason}");
        });
    }
}

#[test]
fn streams_beyond_the_limit_are_refused() {
    rt().block_on(async {
        let (session, _incoming, mut raw) = server_with_raw_peer(64 * 1024, 1 << 20).await;
        let mut opens = Vec::new();
        for i in 0..=MAX_STREAMS as u32 {
            opens.extend(frame(FrameKind::Open, 2 * i + 1, &[]));
        }
        raw.send(&opens).await;
        let reset = tokio::time::timeout(PATIENCE, raw.read_kind(FrameKind::Reset))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reset.stream, 2 * MAX_STREAMS as u32 + 1);
        assert!(
            String::from_utf8_lossy(&reset.payload).contains("too many streams"),
            "{reset:?}"
        );
        assert!(!session.is_closed());
    });
}

#[test]
fn a_client_may_not_open_server_ids() {
    rt().block_on(async {
        let (session, _incoming, mut raw) = server_with_raw_peer(64 * 1024, 1 << 20).await;
        raw.send(&frame(FrameKind::Open, 2, &[])).await;
        let reason = closed_reason(&session).await;
        assert!(reason.contains("an id of this side"), "{reason}");
    });
}

/// Each `End` used to queue an entry for the application, so repeated `End`s grew a queue
/// without bound; now the second one, or data after one, is a protocol error.
#[test]
fn end_is_final() {
    for (second, expect) in [
        (frame(FrameKind::End, 1, &[]), "ended stream 1 twice"),
        (data(1, MsgKind::STDOUT.0, b"late"), "after ending it"),
    ] {
        rt().block_on(async {
            let (session, mut raw) =
                client_with_raw_peer(64 * 1024, 1 << 20, Config::default()).await;
            let mut s = session.open().unwrap();
            raw.send(&frame(FrameKind::End, 1, &[])).await;
            assert_eq!(s.recv().await.unwrap(), None);
            raw.send(&second).await;
            let reason = closed_reason(&session).await;
            assert!(reason.contains(expect), "{reason}");
        });
    }
}

#[test]
fn reset_reasons_are_cut() {
    rt().block_on(async {
        let (session, mut raw) = client_with_raw_peer(512 * 1024, 1 << 20, Config::default()).await;
        let mut s = session.open().unwrap();
        // Two-byte characters, so the cut falls inside one.
        let reason = "é".repeat(60_000);
        raw.send(&frame(FrameKind::Reset, 1, reason.as_bytes()))
            .await;
        let Err(ProtoError::StreamReset { reason }) = s.recv().await else {
            panic!("no reset");
        };
        assert!(reason.len() <= MAX_RESET_REASON, "{}", reason.len());
        assert!(reason.starts_with("éé"));
        assert!(!session.is_closed());
    });
}

/// However many messages the application consumes while the peer reads nothing, the host
/// queues at most one credit grant per stream; the grants it does write add up exactly.
/// (Each message is consumed before the next is sent, so each consumption grants credit:
/// without coalescing that queued one `Window` frame per message.)
#[test]
fn credit_grants_coalesce_while_the_peer_does_not_read() {
    const N: usize = 3000;
    rt().block_on(async {
        let (session, mut raw) = client_with_raw_peer(256, 1 << 20, Config::default()).await;
        let s = session.open().unwrap();
        let (_tx, mut rx) = s.split();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let consumer = tokio::spawn(async move {
            for _ in 0..N {
                rx.recv().await.unwrap().unwrap();
                seen_tx.send(()).unwrap();
            }
            rx
        });
        for _ in 0..N {
            raw.send(&data(1, MsgKind::STDOUT.0, b"x")).await;
            tokio::time::timeout(PATIENCE, seen.recv())
                .await
                .unwrap()
                .unwrap();
        }
        let _rx = consumer.await.unwrap();
        let (mut frames, mut granted) = (0, 0u64);
        while granted < 2 * N as u64 {
            let f = tokio::time::timeout(PATIENCE, raw.read_kind(FrameKind::Window))
                .await
                .unwrap()
                .unwrap();
            frames += 1;
            granted += u64::from(u32::from_be_bytes(f.payload[..].try_into().unwrap()));
        }
        assert_eq!(granted, 2 * N as u64);
        assert!(frames < 100, "{frames} window frames for {N} messages");
    });
}

/// Sends messages as large as allowed until one waits for credit; returns the bytes sent.
async fn send_until_blocked(s: &mut Stream, body: usize) -> u64 {
    let body = Bytes::from(vec![1u8; body]);
    let mut sent = 0u64;
    loop {
        let m = Message::new(MsgKind::DATA, body.clone());
        let len = m.wire_len() as u64;
        match tokio::time::timeout(Duration::from_millis(300), s.send(m)).await {
            Ok(r) => {
                r.unwrap();
                sent += len;
            }
            Err(_) => return sent,
        }
        assert!(sent <= 64 * u64::from(MAX_PEER_WINDOW), "never blocked");
    }
}

/// A peer announcing a huge window, or granting huge credit, cannot make the host queue more
/// than `MAX_PEER_WINDOW` (respectively the announced window) per stream towards it.
#[test]
fn send_credit_is_bounded_by_the_peer_window() {
    rt().block_on(async {
        let (session, _raw) = client_with_raw_peer(1024, u32::MAX, Config::default()).await;
        let mut s = session.open().unwrap();
        let sent = send_until_blocked(&mut s, Message::MAX_BODY).await;
        assert!(sent <= u64::from(MAX_PEER_WINDOW), "{sent}");
        assert!(sent + Message::MAX_BODY as u64 > u64::from(MAX_PEER_WINDOW));
    });
    rt().block_on(async {
        let window = 64 * 1024;
        let (session, mut raw) = client_with_raw_peer(64 * 1024, window, Config::default()).await;
        let mut s = session.open().unwrap();
        for _ in 0..10 {
            raw.send(&frame(FrameKind::Window, 1, &u32::MAX.to_be_bytes()))
                .await;
        }
        // A ping answered means the grants before it were handled.
        raw.send(&frame(FrameKind::Ping, 0, b"sync")).await;
        raw.read_kind(FrameKind::Pong).await.unwrap();
        let sent = send_until_blocked(&mut s, 16 * 1024 - 1).await;
        assert_eq!(sent, u64::from(window));
    });
}

async fn fake_agent<F, Fut>(handler: F) -> Session
where
    F: Fn(Stream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (a, b) = duplex(256 * 1024);
    let server = tokio::spawn(Session::server(b, Config::default()));
    let client = Session::client(a, Config::default()).await.unwrap();
    let (server, mut incoming) = server.await.unwrap().unwrap();
    tokio::spawn(async move {
        let _server = server;
        while let Some(stream) = incoming.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    client
}

async fn respond<T: serde::Serialize>(s: &mut Stream, kind: MsgKind, value: &T) {
    s.send(Message::json(kind, value).unwrap()).await.unwrap();
}

#[test]
fn read_file_keeps_at_most_its_limit_in_memory() {
    rt().block_on(async {
        let session = fake_agent(|mut s: Stream| async move {
            let req: api::Request = s.recv().await.unwrap().unwrap().parse().unwrap();
            let api::Request::ReadFile(req) = req else {
                panic!("not a read");
            };
            // A request without a limit asks for the in-memory cap.
            let max = req.max_bytes.unwrap();
            if max == api::READ_FILE_MAX_BYTES {
                let res = api::FileRead {
                    path: "/workspace/a".into(),
                    size_bytes: 0,
                    truncated: false,
                    mode: 0o644,
                };
                respond(&mut s, MsgKind::RESPONSE, &res).await;
            } else {
                // A hostile agent sends one byte more than asked for.
                let body = vec![0u8; max as usize + 1];
                s.send(Message::new(MsgKind::DATA, body)).await.unwrap();
            }
            s.finish().unwrap();
            let _ = s.recv().await;
        })
        .await;
        let req = |max_bytes| api::ReadFile {
            root: api::WORKSPACE_ROOT.into(),
            path: "a".into(),
            max_bytes,
        };
        let (res, data) = api::read_file(&session, req(None)).await.unwrap();
        assert_eq!((res.size_bytes, data.len()), (0, 0));
        let err = api::read_file(&session, req(Some(10))).await.unwrap_err();
        assert!(matches!(err, CallError::Unexpected { .. }), "{err:?}");
        let err = api::read_file(&session, req(Some(api::READ_FILE_MAX_BYTES + 1)))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Invalid { .. }), "{err:?}");
    });
}

#[test]
fn list_files_counts_the_final_entries_against_its_limit() {
    rt().block_on(async {
        let session = fake_agent(|mut s: Stream| async move {
            let _ = s.recv().await;
            let entry = api::FileEntry {
                path: "/workspace/a".into(),
                artifact_type: api::ArtifactType::File,
                size_bytes: 1,
                mode: 0o644,
                link_target: None,
            };
            respond(&mut s, MsgKind::DATA, &vec![entry.clone()]).await;
            let res = api::FileList {
                path: "/workspace".into(),
                artifact_type: api::ArtifactType::Directory,
                entries: vec![entry.clone(), entry],
                truncated: false,
            };
            respond(&mut s, MsgKind::RESPONSE, &res).await;
            s.finish().unwrap();
            let _ = s.recv().await;
        })
        .await;
        let req = |max_entries| api::ListFiles {
            root: api::WORKSPACE_ROOT.into(),
            path: String::new(),
            recursive: false,
            max_entries: Some(max_entries),
        };
        let err = api::list_files(&session, req(2)).await.unwrap_err();
        assert!(matches!(err, CallError::Unexpected { .. }), "{err:?}");
        assert_eq!(
            api::list_files(&session, req(3))
                .await
                .unwrap()
                .entries
                .len(),
            3
        );
    });
}

fn exec_req() -> api::ExecRequest {
    api::ExecRequest {
        command: api::Command::Argv(vec!["cat".into()]),
        cwd: None,
        env: Default::default(),
        timeout_ms: None,
        max_output_bytes: None,
        stdin: false,
    }
}

#[test]
fn exec_refuses_stdin_over_the_limit_before_sending() {
    rt().block_on(async {
        let session = fake_agent(|_s: Stream| async move {
            panic!("nothing may reach the agent");
        })
        .await;
        let stdin = Bytes::from(vec![0u8; api::MAX_STDIN_BYTES + 1]);
        let err = api::exec(&session, exec_req(), Some(stdin), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Invalid { detail } if detail.contains("stdin")),
            "{err:?}"
        );
    });
}

/// The agent refusing an exec while its input is still arriving used to surface as a reset
/// stream (a runtime error); its own error is the answer.
#[test]
fn exec_reports_the_agents_refusal_of_its_input() {
    rt().block_on(async {
        let session = fake_agent(|s: Stream| async move {
            let (mut tx, mut rx) = s.split();
            let _request = rx.recv().await;
            let _first_chunk = rx.recv().await;
            let err = api::AgentError::new(ErrorCode::BadRequest, "stdin exceeds the limit");
            tx.send(Message::json(MsgKind::ERROR, &err).unwrap())
                .await
                .unwrap();
            tx.finish().unwrap();
            // Dropping both halves resets the stream while the host is still sending.
        })
        .await;
        let stdin = Bytes::from(vec![0u8; 8 << 20]);
        let err = api::exec(&session, exec_req(), Some(stdin), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Agent(e) if e.code == ErrorCode::BadRequest),
            "{err:?}"
        );
    });
}

#[test]
fn oversized_requests_fail_as_too_large_messages() {
    rt().block_on(async {
        let session = fake_agent(|_s: Stream| async move {}).await;
        let mut req = exec_req();
        req.command = api::Command::Shell("x".repeat(api::MAX_REQUEST_BYTES));
        assert!(api::Request::Exec(req.clone()).encoded_len().unwrap() > api::MAX_REQUEST_BYTES);
        let err = api::exec(&session, req, None, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                err,
                CallError::Proto(ProtoError::MessageTooLarge { max, .. })
                    if max == (api::MAX_REQUEST_BYTES + 1) as u64
            ),
            "{err:?}"
        );
    });
}
