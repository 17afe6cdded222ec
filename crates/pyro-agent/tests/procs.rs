//! The process table through the real protocol: PTY shells and services run by the agent
//! binary (`--listen-unix`), real processes, typed errors, no zombies left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pyro_proto::api::{self, CallError, ErrorCode, Request};
use pyro_proto::procs::{
    self, Readiness, ServiceList, ServiceListRequest, ServiceLogs, ServiceStart, ServiceState,
    ServiceStatus, ServiceStop, ShellClose, ShellList, ShellOpen, ShellRead, ShellResize,
    ShellSignal, ShellState, ShellWrite,
};
use pyro_proto::{Config, Session};

struct Agent {
    child: Child,
    sock: PathBuf,
    run: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn services_dir(&self) -> PathBuf {
        self.run.join("services")
    }

    /// The scratch directory (a cwd for shells and services).
    fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pyro-agent"))
        .arg("--listen-unix")
        .arg(&sock)
        .env("PYRO_AGENT_RUN_DIR", &run)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent {
        child,
        sock,
        run,
        dir,
    }
}

async fn session(a: &Agent) -> Session {
    let conn = tokio::net::UnixStream::connect(&a.sock).await.unwrap();
    Session::client(conn, Config::default()).await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn code(e: CallError) -> ErrorCode {
    match e {
        CallError::Agent(a) => a.code,
        other => panic!("not an agent error: {other:?}"),
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`.
async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Children of `pid` that are zombies.
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1).and_then(|s| s.parse().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Descendants of `pid` (by parent links), any state.
fn children_of(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|s| s.parse().ok()) == Some(pid) {
            let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
            out.push((p, comm));
        }
    }
    out
}

async fn assert_no_zombies(a: &Agent) {
    let pid = a.pid();
    wait_until(
        Duration::from_secs(5),
        "zombies to be reaped",
        || async move { zombies_of(pid).is_empty().then_some(()) },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Shells

fn open_req(id: &str, cwd: &Path) -> ShellOpen {
    ShellOpen {
        id: id.into(),
        cwd: cwd.to_string_lossy().into_owned(),
        cols: 80,
        rows: 24,
        env: BTreeMap::new(),
        term: None,
        transcript_bytes: None,
    }
}

async fn open(s: &Session, req: ShellOpen) -> ShellState {
    api::call(s, &Request::ShellOpen(req)).await.unwrap()
}

async fn write(s: &Session, id: &str, input: &str) -> ShellState {
    let req = ShellWrite {
        id: id.into(),
        input: input.into(),
    };
    api::call(s, &Request::ShellWrite(req)).await.unwrap()
}

/// Reads from `cursor` until the transcript since then contains `needle`; returns the text
/// and the new cursor.
async fn read_until(s: &Session, id: &str, cursor: &mut u64, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    loop {
        let req = ShellRead {
            id: id.into(),
            cursor: *cursor,
            max_bytes: procs::SHELL_READ_MAX,
            wait_for_idle_ms: Some(100),
            max_wait_ms: Some(2_000),
        };
        let (res, bytes) = procs::shell_read(s, req).await.unwrap();
        *cursor = res.end;
        text.push_str(&String::from_utf8_lossy(&bytes));
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} not seen in {text:?}");
        if !res.shell.running {
            panic!("shell ended before {needle:?}: {text:?}");
        }
    }
}

async fn shell_state(s: &Session, id: &str) -> Option<ShellState> {
    let l: ShellList = api::call(s, &Request::ShellList).await.unwrap();
    l.shells.into_iter().find(|sh| sh.id == id)
}

#[test]
fn shell_runs_commands_and_reports_its_exit_code() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let st = open(&s, open_req("sh1", a.scratch())).await;
        assert!(st.running);
        assert_eq!((st.cols, st.rows), (80, 24));
        let mut cur = 0;
        read_until(&s, "sh1", &mut cur, "pyro$ ").await;
        write(&s, "sh1", "echo hi\n").await;
        // The echo of the input, the output line, the next prompt (bash may wrap the
        // output in bracketed-paste switches).
        let out = read_until(&s, "sh1", &mut cur, "pyro$ ").await;
        let output_line = out
            .split('\n')
            .any(|l| l.trim_end_matches('\r').ends_with("hi") && !l.contains("echo"));
        assert!(output_line, "{out:?}");
        write(&s, "sh1", "exit 3\n").await;
        let st = wait_until(Duration::from_secs(5), "the shell's exit", || {
            let s = s.clone();
            async move { shell_state(&s, "sh1").await.filter(|st| !st.running) }
        })
        .await;
        assert_eq!(st.exit_code, Some(3));
        assert!(st.ended_at_ms.is_some());
        // Writing to an ended shell is refused; closing it returns the final state.
        let err = api::call::<ShellState>(
            &s,
            &Request::ShellWrite(ShellWrite {
                id: "sh1".into(),
                input: "x".into(),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(code(err), ErrorCode::BadRequest);
        let closed: ShellState = api::call(
            &s,
            &Request::ShellClose(ShellClose {
                id: "sh1".into(),
                grace_ms: 100,
            }),
        )
        .await
        .unwrap();
        assert_eq!(closed.exit_code, Some(3));
        assert!(shell_state(&s, "sh1").await.is_none());
        assert_no_zombies(&a).await;
    });
}

#[test]
fn shell_resize_env_and_term_reach_the_terminal() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let mut req = open_req("sh2", a.scratch());
        req.env.insert("PYRO_GREETING".into(), "bonjour".into());
        open(&s, req).await;
        let mut cur = 0;
        read_until(&s, "sh2", &mut cur, "pyro$ ").await;
        write(&s, "sh2", "echo \"[$PYRO_GREETING:$TERM]\"\n").await;
        read_until(&s, "sh2", &mut cur, "[bonjour:xterm-256color]").await;
        let st: ShellState = api::call(
            &s,
            &Request::ShellResize(ShellResize {
                id: "sh2".into(),
                cols: 123,
                rows: 45,
            }),
        )
        .await
        .unwrap();
        assert_eq!((st.cols, st.rows), (123, 45));
        write(&s, "sh2", "stty size\n").await;
        read_until(&s, "sh2", &mut cur, "45 123").await;
        write(&s, "sh2", "pwd\n").await;
        let here = a.scratch().canonicalize().unwrap();
        read_until(&s, "sh2", &mut cur, &here.to_string_lossy()).await;
    });
}

#[test]
fn shell_read_from_an_overwritten_cursor_starts_at_the_oldest_byte() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let mut req = open_req("ring", a.scratch());
        req.transcript_bytes = Some(1024);
        open(&s, req).await;
        let mut cur = 0;
        read_until(&s, "ring", &mut cur, "pyro$ ").await;
        write(
            &s,
            "ring",
            "for i in $(seq 1 500); do echo line$i; done; echo done\n",
        )
        .await;
        read_until(&s, "ring", &mut cur, "line500").await;
        let st = shell_state(&s, "ring").await.unwrap();
        assert!(st.transcript_start > 0, "{st:?}");
        assert!(st.transcript_end - st.transcript_start <= 1024, "{st:?}");
        let (res, bytes) = procs::shell_read(
            &s,
            ShellRead {
                id: "ring".into(),
                cursor: 0,
                max_bytes: 4096,
                wait_for_idle_ms: None,
                max_wait_ms: None,
            },
        )
        .await
        .unwrap();
        assert!(res.start > 0);
        assert_eq!(res.start, res.shell.transcript_start);
        assert_eq!(res.end - res.start, bytes.len() as u64);
        // A cursor beyond the end is a bad request.
        let err = procs::shell_read(
            &s,
            ShellRead {
                id: "ring".into(),
                cursor: res.shell.transcript_end + 1000,
                max_bytes: 10,
                wait_for_idle_ms: None,
                max_wait_ms: None,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(code(err), ErrorCode::BadRequest);
    });
}

#[test]
fn shell_signal_interrupts_the_foreground_command() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        open(&s, open_req("int", a.scratch())).await;
        let mut cur = 0;
        read_until(&s, "int", &mut cur, "pyro$ ").await;
        write(&s, "int", "sleep 100\n").await;
        // Let the sleep start.
        wait_until(Duration::from_secs(5), "sleep to start", || async {
            let kids = children_of(shell_state(&s, "int").await.unwrap().pid);
            kids.iter().any(|(_, c)| c == "sleep").then_some(())
        })
        .await;
        let t = Instant::now();
        let _: ShellState = api::call(
            &s,
            &Request::ShellSignal(ShellSignal {
                id: "int".into(),
                signal: libc::SIGINT,
            }),
        )
        .await
        .unwrap();
        read_until(&s, "int", &mut cur, "pyro$ ").await;
        assert!(t.elapsed() < Duration::from_secs(5));
        write(&s, "int", "echo after=$?\n").await;
        read_until(&s, "int", &mut cur, "after=130").await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(shell_state(&s, "int").await.unwrap().running);
    });
}

#[test]
fn shell_close_kills_a_shell_that_ignores_hangup() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        open(&s, open_req("hup", a.scratch())).await;
        let mut cur = 0;
        read_until(&s, "hup", &mut cur, "pyro$ ").await;
        write(&s, "hup", "trap '' HUP; echo trapped\n").await;
        read_until(&s, "hup", &mut cur, "trapped\r\n").await;
        let t = Instant::now();
        let st: ShellState = api::call(
            &s,
            &Request::ShellClose(ShellClose {
                id: "hup".into(),
                grace_ms: 300,
            }),
        )
        .await
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(!st.running);
        assert_eq!(st.exit_code, Some(-libc::SIGKILL));
        assert!(shell_state(&s, "hup").await.is_none());
        assert!(
            !Path::new(&format!("/proc/{}", st.pid)).exists() || zombies_of(a.pid()).is_empty()
        );
        assert_no_zombies(&a).await;
    });
}

#[test]
fn shell_requests_are_validated() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let call = |req: Request| {
            let s = s.clone();
            async move { code(api::call::<ShellState>(&s, &req).await.unwrap_err()) }
        };
        let missing = a.scratch().join("missing");
        assert_eq!(
            call(Request::ShellOpen(open_req("x", &missing))).await,
            ErrorCode::NotFound
        );
        assert!(!missing.exists(), "a missing cwd is never created");
        assert_eq!(
            call(Request::ShellOpen(open_req("Bad-Id", a.scratch()))).await,
            ErrorCode::BadRequest
        );
        let mut big = open_req("big", a.scratch());
        big.cols = 1001;
        assert_eq!(call(Request::ShellOpen(big)).await, ErrorCode::BadRequest);
        let mut ring = open_req("ring", a.scratch());
        ring.transcript_bytes = Some(procs::SHELL_TRANSCRIPT_MAX + 1);
        assert_eq!(call(Request::ShellOpen(ring)).await, ErrorCode::BadRequest);
        let unknown = Request::ShellSignal(ShellSignal {
            id: "nope".into(),
            signal: 2,
        });
        assert_eq!(call(unknown).await, ErrorCode::NotFound);
        open(&s, open_req("dup", a.scratch())).await;
        assert_eq!(
            call(Request::ShellOpen(open_req("dup", a.scratch()))).await,
            ErrorCode::Conflict
        );
        // (An input over SHELL_WRITE_MAX does not fit in one protocol message at all: the
        // agent's own check is unit-tested.)
        let sig = Request::ShellSignal(ShellSignal {
            id: "dup".into(),
            signal: 0,
        });
        assert_eq!(call(sig).await, ErrorCode::BadRequest);
    });
}

// ---------------------------------------------------------------------------------------
// Services

fn svc(name: &str, command: &str, cwd: &Path) -> ServiceStart {
    ServiceStart {
        name: name.into(),
        command: command.into(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: BTreeMap::new(),
        readiness: None,
        ready_timeout_ms: 10_000,
        ready_interval_ms: 50,
        log_bytes: None,
    }
}

async fn start(s: &Session, req: ServiceStart) -> ServiceState {
    procs::service_start(s, req, |_| {}).await.unwrap()
}

async fn service(s: &Session, name: &str) -> ServiceState {
    let l: ServiceList = api::call(
        s,
        &Request::ServiceList(ServiceListRequest {
            name: Some(name.into()),
        }),
    )
    .await
    .unwrap();
    l.services.into_iter().next().unwrap()
}

async fn stop(s: &Session, name: &str, grace_ms: u64) -> ServiceState {
    api::call(
        s,
        &Request::ServiceStop(ServiceStop {
            name: name.into(),
            grace_ms,
        }),
    )
    .await
    .unwrap()
}

fn python() -> Option<&'static str> {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "python3")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn service_ready_by_file_and_command() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let flag = a.scratch().join("ready-flag");
        let mut req = svc(
            "filesvc",
            &format!("sleep 0.3; touch {}; exec sleep 100", flag.display()),
            a.scratch(),
        );
        req.readiness = Some(Readiness::File {
            path: flag.to_string_lossy().into_owned(),
        });
        let mut events = 0;
        let st = procs::service_start(&s, req, |_| events += 1)
            .await
            .unwrap();
        assert_eq!(st.status, ServiceStatus::Running, "{st:?}");
        assert!(st.ready_at_ms.is_some());
        assert!(st.probe_attempts >= 2, "{st:?}");
        assert!(events >= 1);
        assert!(st.last_probe_error.unwrap().contains("does not exist"));

        let mut req = svc("cmdsvc", "exec sleep 100", a.scratch());
        req.env.insert("PROBE_WANT".into(), "yes".into());
        req.readiness = Some(Readiness::Command {
            command: "test \"$PROBE_WANT\" = yes && test -e marker".into(),
            timeout_ms: 1000,
        });
        std::fs::write(a.scratch().join("marker"), "").unwrap();
        let st = start(&s, req).await;
        assert_eq!(st.status, ServiceStatus::Running, "{st:?}");

        let l: ServiceList = api::call(&s, &Request::ServiceList(ServiceListRequest::default()))
            .await
            .unwrap();
        assert_eq!(l.services.len(), 2);
        for name in ["filesvc", "cmdsvc"] {
            let st = stop(&s, name, 2_000).await;
            assert_eq!(st.status, ServiceStatus::Stopped);
            assert_eq!(st.stop_reason.as_deref(), Some("sigterm"));
        }
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_ready_by_tcp_and_http() {
    let Some(py) = python() else {
        eprintln!("python3 not found: skipped");
        return;
    };
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let port = free_port();
        let mut req = svc(
            "web",
            &format!("exec {py} -m http.server {port} --bind 127.0.0.1"),
            a.scratch(),
        );
        req.readiness = Some(Readiness::Tcp {
            host: "localhost".into(),
            port,
        });
        let st = start(&s, req).await;
        assert_eq!(st.status, ServiceStatus::Running, "{st:?}");
        stop(&s, "web", 2_000).await;

        let port = free_port();
        let mut req = svc(
            "web2",
            &format!("exec {py} -m http.server {port} --bind 127.0.0.1"),
            a.scratch(),
        );
        req.readiness = Some(Readiness::Http {
            url: format!("http://127.0.0.1:{port}/"),
        });
        let st = start(&s, req).await;
        assert_eq!(st.status, ServiceStatus::Running, "{st:?}");
        // The name of an ended service is reused.
        stop(&s, "web2", 2_000).await;
        let mut req = svc("web2", "exec sleep 100", a.scratch());
        req.readiness = Some(Readiness::Http {
            url: format!("https://127.0.0.1:{port}/"),
        });
        req.ready_timeout_ms = 300;
        let st = start(&s, req).await;
        assert_eq!(st.status, ServiceStatus::Failed);
        assert!(st.last_probe_error.unwrap().contains("https"));
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_command_probe_timeout_leaves_nothing_behind() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let mut req = svc("slowprobe", "exec sleep 100", a.scratch());
        req.readiness = Some(Readiness::Command {
            command: "sleep 30".into(),
            timeout_ms: 200,
        });
        req.ready_timeout_ms = 1_500;
        let t = Instant::now();
        let st = start(&s, req).await;
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        assert_eq!(st.status, ServiceStatus::Failed, "{st:?}");
        assert_eq!(st.stop_reason.as_deref(), Some("readiness_timeout"));
        assert!(st.probe_attempts >= 2, "{st:?}");
        assert!(st.last_probe_error.unwrap().contains("killed"));
        let agent_pid = a.pid();
        wait_until(Duration::from_secs(5), "no process left", || async move {
            let kids = children_of(agent_pid);
            kids.iter()
                .all(|(_, c)| c != "sleep" && c != "sh")
                .then_some(())
        })
        .await;
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_exiting_before_ready_fails_at_once() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let mut req = svc("dies", "sleep 0.2; exit 7", a.scratch());
        req.readiness = Some(Readiness::File {
            path: "/nonexistent/ready".into(),
        });
        req.ready_timeout_ms = 30_000;
        let t = Instant::now();
        let st = start(&s, req).await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(st.status, ServiceStatus::Failed);
        assert_eq!(
            st.stop_reason.as_deref(),
            Some("process_exited_before_ready")
        );
        assert_eq!(st.exit_code, Some(7));

        let st = start(
            &s,
            svc("oneshot", "echo out; echo err >&2; exit 4", a.scratch()),
        )
        .await;
        assert!(matches!(
            st.status,
            ServiceStatus::Running | ServiceStatus::Exited
        ));
        let st = wait_until(Duration::from_secs(5), "the exit", || {
            let s = s.clone();
            async move { Some(service(&s, "oneshot").await).filter(|st| st.ended_at_ms.is_some()) }
        })
        .await;
        assert_eq!(st.status, ServiceStatus::Exited);
        assert_eq!(st.stop_reason, None);
        assert_eq!(st.exit_code, Some(4));
        // Stopping an ended service changes nothing.
        assert_eq!(stop(&s, "oneshot", 100).await, st);
        let (res, out, err) = procs::service_logs(
            &s,
            ServiceLogs {
                name: "oneshot".into(),
                tail_lines: None,
                max_bytes: 1024,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert!(!res.stdout_truncated && !res.stderr_truncated);
        let err = api::call::<ServiceList>(
            &s,
            &Request::ServiceList(ServiceListRequest {
                name: Some("unknown".into()),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(code(err), ErrorCode::NotFound);
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_stop_escalates_to_kill() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        start(&s, svc("stubborn", "trap '' TERM; sleep 100", a.scratch())).await;
        start(&s, svc("polite", "sleep 100", a.scratch())).await;
        // Give the shell time to set its trap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let st = stop(&s, "stubborn", 300).await;
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(st.status, ServiceStatus::Stopped);
        assert_eq!(st.stop_reason.as_deref(), Some("sigkill"));
        assert_eq!(st.exit_code, Some(-libc::SIGKILL));
        let st = stop(&s, "polite", 2_000).await;
        assert_eq!(st.stop_reason.as_deref(), Some("sigterm"));
        assert_eq!(st.exit_code, Some(-libc::SIGTERM));
        // Running names are refused; bad requests are typed.
        start(&s, svc("busy", "sleep 100", a.scratch())).await;
        let refuse = |req: ServiceStart| {
            let s = s.clone();
            async move { code(procs::service_start(&s, req, |_| {}).await.unwrap_err()) }
        };
        assert_eq!(
            refuse(svc("busy", "true", a.scratch())).await,
            ErrorCode::Conflict
        );
        assert_eq!(
            refuse(svc("-bad", "true", a.scratch())).await,
            ErrorCode::BadRequest
        );
        let mut r = svc("x", "true", a.scratch());
        r.ready_interval_ms = 5;
        assert_eq!(refuse(r).await, ErrorCode::BadRequest);
        let mut r = svc("x", "true", a.scratch());
        r.ready_timeout_ms = 0;
        assert_eq!(refuse(r).await, ErrorCode::BadRequest);
        assert_eq!(
            refuse(svc("x", "true", &a.scratch().join("missing"))).await,
            ErrorCode::NotFound
        );
        stop(&s, "busy", 1_000).await;
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_logs_tail_and_rotation_are_bounded() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let st = start(&s, svc("lines", "seq 1 100", a.scratch())).await;
        assert_eq!(st.readiness, None);
        wait_until(Duration::from_secs(5), "the exit", || {
            let s = s.clone();
            async move {
                let st = service(&s, "lines").await;
                (st.ended_at_ms.is_some() && st.stdout_bytes == 292).then_some(())
            }
        })
        .await;
        let (res, out, _) = procs::service_logs(
            &s,
            ServiceLogs {
                name: "lines".into(),
                tail_lines: Some(3),
                max_bytes: 1024,
            },
        )
        .await
        .unwrap();
        assert_eq!(out, b"98\n99\n100\n");
        assert!(res.stdout_truncated);

        let mut req = svc(
            "big",
            "head -c 3000000 /dev/zero | tr '\\0' 'x' | fold -w 99; echo end",
            a.scratch(),
        );
        req.log_bytes = Some(1024 * 1024);
        start(&s, req).await;
        let st = wait_until(Duration::from_secs(20), "the big write", || {
            let s = s.clone();
            async move { Some(service(&s, "big").await).filter(|st| st.ended_at_ms.is_some()) }
        })
        .await;
        assert!(st.stdout_bytes > 3_000_000, "{st:?}");
        let dir = a.services_dir();
        let on_disk: u64 = ["big.stdout", "big.stdout.1"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum();
        assert!(on_disk <= 1024 * 1024, "{on_disk}");
        assert!(on_disk >= 512 * 1024, "{on_disk}");
        let (res, out, _) = procs::service_logs(
            &s,
            ServiceLogs {
                name: "big".into(),
                tail_lines: None,
                max_bytes: procs::SERVICE_LOGS_READ_MAX,
            },
        )
        .await
        .unwrap();
        assert!(res.stdout_truncated);
        assert_eq!(out.len() as u64, on_disk);
        assert!(out.ends_with(b"end\n"));
        assert_no_zombies(&a).await;
    });
}

#[test]
fn service_readiness_completes_after_the_caller_goes_away() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        let flag = a.scratch().join("late-flag");
        let mut req = svc(
            "orphaned",
            &format!("sleep 0.6; touch {}; exec sleep 100", flag.display()),
            a.scratch(),
        );
        req.readiness = Some(Readiness::File {
            path: flag.to_string_lossy().into_owned(),
        });
        let started = tokio::time::timeout(
            Duration::from_millis(200),
            procs::service_start(&s, req, |_| {}),
        )
        .await;
        assert!(started.is_err(), "the start should still be waiting");
        let st = service(&s, "orphaned").await;
        assert_eq!(st.status, ServiceStatus::Starting);
        let st = wait_until(Duration::from_secs(5), "readiness", || {
            let s = s.clone();
            async move {
                Some(service(&s, "orphaned").await)
                    .filter(|st| st.status != ServiceStatus::Starting)
            }
        })
        .await;
        assert_eq!(st.status, ServiceStatus::Running, "{st:?}");
        assert!(st.ready_at_ms.is_some());
        stop(&s, "orphaned", 1_000).await;
        assert_no_zombies(&a).await;
    });
}
