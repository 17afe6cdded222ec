//! The agent binary served over a Unix socket on the host, driven through the real protocol
//! client: many concurrent calls on one session, streaming, cancellation, typed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pyro_proto::api::{self, CallError, ErrorCode, ExecRequest, Output, Request};
use pyro_proto::{Config, Message, MsgKind, Session};

struct Agent {
    child: Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_pyro-agent"))
        .arg("--listen-unix")
        .arg(&sock)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The socket file appears at bind, before listen: wait until a connection is taken.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent {
        child,
        sock,
        _dir: dir,
    }
}

async fn session(a: &Agent) -> Session {
    // The socket file appears at bind(), a moment before listen(): until then a connect is
    // refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match tokio::net::UnixStream::connect(&a.sock).await {
            Ok(c) => break c,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("cannot connect to the agent: {e}"),
        }
    };
    Session::client(conn, Config::default()).await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        command: api::Command::Shell(script.into()),
        cwd: None,
        env: BTreeMap::new(),
        timeout_ms: Some(30_000),
        max_output_bytes: None,
        stdin: false,
    }
}

#[test]
fn ping_reports_versions() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let p: api::PingResult = api::call(&s, &Request::Ping).await.unwrap();
        assert_eq!(p.protocol_version, pyro_proto::PROTOCOL_VERSION);
        assert!(!p.pid1);
        assert_eq!(p.agent_version, env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn concurrent_execs_on_one_session_do_not_wait_for_each_other() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let slow = {
            let s = s.clone();
            tokio::spawn(async move { api::exec(&s, sh("sleep 2; echo slow"), None, |_| {}).await })
        };
        // While the slow call runs, 20 quick calls complete.
        let t = Instant::now();
        let mut quick = Vec::new();
        for i in 0..20 {
            let s = s.clone();
            quick.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let r = api::exec(&s, sh(&format!("echo {i}")), None, |o| {
                    if let Output::Stdout(b) = o {
                        out.extend_from_slice(&b)
                    }
                })
                .await
                .unwrap();
                (r.exit_code, String::from_utf8(out).unwrap())
            }));
        }
        for (i, q) in quick.into_iter().enumerate() {
            assert_eq!(q.await.unwrap(), (0, format!("{i}\n")));
        }
        assert!(
            t.elapsed() < Duration::from_millis(1900),
            "quick calls waited for the slow one"
        );
        assert_eq!(slow.await.unwrap().unwrap().exit_code, 0);
    });
}

#[test]
fn stdin_is_delivered_and_output_streams_in_order() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let input: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        let r = api::exec(&s, sh("cat"), Some(input.clone().into()), |o| {
            if let Output::Stdout(b) = o {
                got.extend_from_slice(&b)
            }
        })
        .await
        .unwrap();
        assert_eq!(r.exit_code, 0);
        assert_eq!(got, input);
    });
}

#[test]
fn bad_requests_get_typed_errors() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let mut req = sh("true");
        req.cwd = Some("/definitely/missing".into());
        match api::exec(&s, req, None, |_| {}).await {
            Err(CallError::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("/definitely/missing"), "{}", e.message);
            }
            other => panic!("expected a bad_request error, got {other:?}"),
        }
        // Malformed JSON on a raw stream.
        let mut st = s.open().unwrap();
        st.send(Message::new(
            MsgKind::REQUEST,
            &b"{\"op\": \"exec\", \"command\": 5}"[..],
        ))
        .await
        .unwrap();
        st.finish().unwrap();
        let reply = st.recv().await.unwrap().unwrap();
        assert_eq!(reply.kind, MsgKind::ERROR);
        let e: api::AgentError = reply.parse().unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        // The session survives bad requests.
        let _: api::PingResult = api::call(&s, &Request::Ping).await.unwrap();
    });
}

#[test]
fn dropping_a_call_kills_its_process_tree() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("alive");
    rt().block_on(async {
        let s = session(&a).await;
        let script = format!(
            "(while true; do date +%s%N > {m}; sleep 0.05; done) & sleep 300",
            m = marker.display()
        );
        let call = {
            let s = s.clone();
            tokio::spawn(async move { api::exec(&s, sh(&script), None, |_| {}).await })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "the command never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        call.abort();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = std::fs::read_to_string(&marker).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let after = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(
            before, after,
            "the background loop survived the cancelled call"
        );
    });
}
