//! Integration tests of `pyro_agent::exec` on the host (the test process is a child
//! subreaper rather than PID 1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyro_agent::exec::{self, Command, ExecError, ExecOutcome, ExecSpec, Output};
use pyro_agent::reaper;
use tokio::sync::mpsc;

/// What one exec produced.
#[derive(Debug)]
struct Ran {
    outcome: ExecOutcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ran {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn shell(script: &str) -> ExecSpec {
    ExecSpec::new(Command::Shell(script.to_owned()))
}

fn argv(args: &[&str]) -> ExecSpec {
    ExecSpec::new(Command::Argv(
        args.iter().map(|s| (*s).to_owned()).collect(),
    ))
}

async fn try_exec(spec: ExecSpec) -> Result<Ran, ExecError> {
    reaper::start().unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let collect = async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Output::Stdout(b) => stdout.extend_from_slice(&b),
                Output::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        (stdout, stderr)
    };
    let (outcome, (stdout, stderr)) = tokio::join!(exec::run(spec, tx), collect);
    Ok(Ran {
        outcome: outcome?,
        stdout,
        stderr,
    })
}

async fn exec(spec: ExecSpec) -> Ran {
    try_exec(spec).await.unwrap()
}

/// Live (not zombie) processes whose `/proc/PID/stat` satisfies `pred(pid, session)`.
fn live_processes(pred: impl Fn(i32, i32) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let state = fields[0];
        let session: i32 = fields[3].parse().unwrap();
        if state != "Z" && state != "X" && pred(pid, session) {
            found.push(pid);
        }
    }
    found
}

fn is_alive(pid: i32) -> bool {
    !live_processes(|p, _| p == pid).is_empty()
}

#[tokio::test]
async fn exit_codes() {
    let ran = exec(shell("exit 0")).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert_eq!(ran.outcome.signal, None);
    assert!(!ran.outcome.timed_out);
    assert_eq!(ran.outcome.spawn_error, None);

    let ran = exec(argv(&["sh", "-c", "exit 3"])).await;
    assert_eq!(ran.outcome.exit_code, 3);

    let ran = exec(shell("kill -TERM $$")).await;
    assert_eq!(ran.outcome.exit_code, 128 + libc::SIGTERM);
    assert_eq!(ran.outcome.signal, Some(libc::SIGTERM));

    let ran = exec(shell("kill -KILL $$")).await;
    assert_eq!(ran.outcome.exit_code, 137);
    assert_eq!(ran.outcome.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let ran = exec(shell("echo out; echo err >&2; printf more")).await;
    assert_eq!(ran.stdout(), "out\nmore");
    assert_eq!(ran.stderr(), "err\n");
    assert_eq!(ran.outcome.stdout_bytes, 8);
    assert_eq!(ran.outcome.stderr_bytes, 4);
    assert!(!ran.outcome.stdout_truncated && !ran.outcome.stderr_truncated);
}

#[tokio::test]
async fn large_output_streams_through() {
    let size = 20 * 1024 * 1024;
    let ran = exec(shell(&format!("head -c {size} /dev/zero"))).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert_eq!(ran.stdout.len(), size);
    assert_eq!(ran.outcome.stdout_bytes, size as u64);
    assert!(ran.stdout.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn binary_output_round_trips() {
    let all: Vec<u8> = (0..=255u8).collect();
    // Every byte value through stdin, back out on stdout and stderr.
    let mut spec = shell("cat; cat /dev/stdin >&2");
    spec.stdin = Some(Bytes::from(all.clone()));
    let ran = exec(spec).await;
    assert_eq!(ran.stdout, all);
    assert!(ran.stderr.is_empty());

    let script = "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done";
    let ran = exec(shell(script)).await;
    assert_eq!(ran.outcome.exit_code, 0, "{}", ran.stderr());
    assert_eq!(ran.stdout, all);
}

#[tokio::test]
async fn output_cap_truncates_but_counts() {
    let mut spec = shell("head -c 100000 /dev/zero; head -c 50 /dev/zero >&2");
    spec.max_output_bytes = Some(1000);
    let ran = exec(spec).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert_eq!(ran.stdout.len(), 1000);
    assert_eq!(ran.outcome.stdout_bytes, 100_000);
    assert!(ran.outcome.stdout_truncated);
    assert_eq!(ran.stderr.len(), 50);
    assert_eq!(ran.outcome.stderr_bytes, 50);
    assert!(!ran.outcome.stderr_truncated);

    let mut spec = shell("echo hidden");
    spec.max_output_bytes = Some(0);
    let ran = exec(spec).await;
    assert!(ran.stdout.is_empty());
    assert_eq!(ran.outcome.stdout_bytes, 7);
    assert!(ran.outcome.stdout_truncated);
}

#[tokio::test]
async fn timeout_keeps_output_and_kills_the_session() {
    let mut spec = shell("echo $$; echo start; sleep 100 & sleep 100");
    spec.timeout = Some(Duration::from_millis(500));
    let begun = Instant::now();
    let ran = exec(spec).await;
    assert!(begun.elapsed() < Duration::from_secs(5));
    assert!(ran.outcome.timed_out);
    assert_eq!(ran.outcome.exit_code, 124);
    assert_eq!(ran.outcome.signal, Some(libc::SIGKILL));
    assert!(ran.outcome.duration_ms >= 500);
    let lines: Vec<&str> = ran
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines[1], "start");
    let sid: i32 = lines[0].parse().unwrap();
    let left = live_processes(|_, session| session == sid);
    assert!(
        left.is_empty(),
        "processes of session {sid} still alive: {left:?}"
    );
}

#[tokio::test]
async fn timeout_kills_grandchild_in_its_own_session() {
    // The grandchild starts a session of its own (escaping the session scan) but keeps
    // the output pipe; a great-grandchild of it, too.
    let mut spec = shell(
        "setsid sh -c 'echo $$; sleep 100 & echo $!; exec sleep 100' & \
         sleep 100",
    );
    spec.timeout = Some(Duration::from_millis(700));
    let ran = exec(spec).await;
    assert!(ran.outcome.timed_out);
    let pids: Vec<i32> = ran.stdout().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{}", ran.stdout());
    for pid in pids {
        assert!(!is_alive(pid), "escaped process {pid} still alive");
    }
}

#[tokio::test]
async fn orphan_in_its_own_session_holding_the_pipe_is_killed() {
    // The intermediate shell exits at once: the sleep is an orphan (reparented to the
    // agent), in a session of its own, found only because it holds the output pipe.
    let mut spec = shell("setsid sh -c 'sleep 100 & echo $!'; sleep 100");
    spec.timeout = Some(Duration::from_millis(500));
    let ran = exec(spec).await;
    assert!(ran.outcome.timed_out);
    let pid: i32 = ran.stdout().trim().parse().unwrap();
    assert!(!is_alive(pid), "orphan {pid} still alive");
}

#[tokio::test]
async fn grandchild_with_redirected_pipes_but_same_session_is_killed() {
    let mut spec = shell("sleep 100 >/dev/null 2>&1 </dev/null & echo $!; sleep 100");
    spec.timeout = Some(Duration::from_millis(300));
    let ran = exec(spec).await;
    assert!(ran.outcome.timed_out);
    let pid: i32 = ran.stdout().trim().parse().unwrap();
    assert!(!is_alive(pid));
}

#[tokio::test]
async fn background_daemon_does_not_hold_the_call() {
    let begun = Instant::now();
    let ran = exec(shell("sleep 30 & echo $!; echo done")).await;
    let took = begun.elapsed();
    assert_eq!(ran.outcome.exit_code, 0);
    assert!(!ran.outcome.timed_out);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let mut lines = ran.stdout.split(|&b| b == b'\n');
    let pid: i32 = std::str::from_utf8(lines.next().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines.next(), Some(&b"done"[..]));
    // Left running, as documented; clean up.
    assert!(is_alive(pid));
    pyro_agent::sys::kill(pid, libc::SIGKILL).unwrap();
}

#[tokio::test]
async fn endless_background_writer_does_not_hold_the_call() {
    let begun = Instant::now();
    let mut spec = shell("yes & echo $! >&2");
    spec.max_output_bytes = Some(4096);
    let ran = exec(spec).await;
    let took = begun.elapsed();
    assert_eq!(ran.outcome.exit_code, 0);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(ran.stdout.len(), 4096);
    assert!(ran.outcome.stdout_truncated);
    // `yes` dies of SIGPIPE once nobody reads; make sure of it.
    let pid: i32 = ran.stderr().trim().parse().unwrap();
    let _ = pyro_agent::sys::kill(pid, libc::SIGKILL);
}

#[tokio::test]
async fn output_after_leader_exit_is_drained() {
    // The leader exits while a child still writes briefly: its output is kept.
    let ran = exec(shell("(sleep 0.05; echo late) & echo early")).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert_eq!(ran.stdout(), "early\nlate\n");
}

#[tokio::test]
async fn command_not_found_is_127() {
    let ran = exec(argv(&["definitely-not-a-command-xyz", "arg"])).await;
    assert_eq!(ran.outcome.exit_code, 127);
    assert_eq!(
        ran.stderr(),
        "pyro-agent: definitely-not-a-command-xyz: command not found\n"
    );
    assert!(
        ran.outcome
            .spawn_error
            .as_deref()
            .unwrap()
            .contains("not found")
    );
    assert_eq!(ran.outcome.stderr_bytes, ran.stderr.len() as u64);

    let ran = exec(argv(&["/nonexistent/prog"])).await;
    assert_eq!(ran.outcome.exit_code, 127);

    // Through the shell, the shell's own 127.
    let ran = exec(shell("definitely-not-a-command-xyz")).await;
    assert_eq!(ran.outcome.exit_code, 127);
    assert_eq!(ran.outcome.spawn_error, None);
}

#[tokio::test]
async fn not_executable_is_126() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let ran = exec(argv(&[script.to_str().unwrap()])).await;
    assert_eq!(ran.outcome.exit_code, 126);
    assert!(ran.outcome.spawn_error.is_some());
    assert!(ran.stderr().starts_with("pyro-agent: "));

    let ran = exec(argv(&[dir.path().to_str().unwrap()])).await;
    assert_eq!(ran.outcome.exit_code, 126);

    // Executable but with a missing interpreter: exec fails, still 126.
    let bad = dir.path().join("bad.sh");
    std::fs::write(&bad, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ran = exec(argv(&[bad.to_str().unwrap()])).await;
    assert_eq!(ran.outcome.exit_code, 126, "{}", ran.stderr());

    // Relative program names resolve against the command's cwd.
    let good = dir.path().join("good.sh");
    std::fs::write(&good, "#!/bin/sh\necho \"$0\"\n").unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = argv(&["./good.sh"]);
    spec.cwd = Some(dir.path().to_owned());
    let ran = exec(spec).await;
    assert_eq!(ran.outcome.exit_code, 0);
}

#[tokio::test]
async fn bad_requests_are_typed() {
    let mut spec = shell("true");
    spec.cwd = Some(PathBuf::from("/nonexistent/dir"));
    let err = try_exec(spec).await.unwrap_err();
    assert!(matches!(err, ExecError::BadRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/dir"), "{err}");

    let mut spec = shell("true");
    spec.cwd = Some(PathBuf::from("relative"));
    assert!(matches!(
        try_exec(spec).await,
        Err(ExecError::BadRequest { .. })
    ));

    let mut spec = shell("true");
    spec.cwd = Some(PathBuf::from("/etc/passwd"));
    assert!(matches!(
        try_exec(spec).await,
        Err(ExecError::BadRequest { .. })
    ));

    let err = try_exec(argv(&[])).await.unwrap_err();
    assert!(matches!(err, ExecError::BadRequest { .. }));
    assert!(err.to_string().contains("argv"), "{err}");

    assert!(matches!(
        try_exec(argv(&[""])).await,
        Err(ExecError::BadRequest { .. })
    ));
    assert!(matches!(
        try_exec(argv(&["echo", "a\0b"])).await,
        Err(ExecError::BadRequest { .. })
    ));

    let mut spec = shell("true");
    spec.env.insert("BAD=NAME".to_owned(), "x".to_owned());
    assert!(matches!(
        try_exec(spec).await,
        Err(ExecError::BadRequest { .. })
    ));
}

#[tokio::test]
async fn many_concurrent_execs() {
    let runs = (0..20).map(|i| {
        let mut spec = shell(&format!(
            "sleep 0.2; echo {i}; echo e{i} >&2; exit {}",
            i % 5
        ));
        spec.timeout = Some(Duration::from_secs(20));
        exec(spec)
    });
    let begun = Instant::now();
    let handles: Vec<_> = runs.map(tokio::spawn).collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    // Run in parallel, not one after the other (20 x 0.2 s).
    assert!(
        begun.elapsed() < Duration::from_secs(3),
        "{:?}",
        begun.elapsed()
    );
    for (i, ran) in results.into_iter().enumerate() {
        assert_eq!(ran.stdout(), format!("{i}\n"));
        assert_eq!(ran.stderr(), format!("e{i}\n"));
        assert_eq!(ran.outcome.exit_code, (i % 5) as i32);
    }
}

#[tokio::test]
async fn environment_is_clean_plus_requested() {
    let mut spec = argv(&["env"]);
    spec.env = BTreeMap::from([
        ("GREETING".to_owned(), "hello world=1".to_owned()),
        ("HOME".to_owned(), "/workspace".to_owned()),
    ]);
    let ran = exec(spec).await;
    let mut lines: Vec<String> = ran.stdout().lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "GREETING=hello world=1",
            "HOME=/workspace",
            "LANG=C.UTF-8",
            &format!("PATH={}", exec::BASE_PATH),
            "TERM=dumb",
        ]
    );
}

#[tokio::test]
async fn cwd_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = argv(&["pwd"]);
    spec.cwd = Some(dir.path().to_owned());
    let ran = exec(spec).await;
    assert_eq!(ran.stdout().trim_end(), dir.path().to_str().unwrap());

    let ran = exec(argv(&["pwd"])).await;
    assert_eq!(ran.stdout(), "/\n");
}

#[tokio::test]
async fn stdin_is_fed_then_closed() {
    let mut spec = argv(&["wc", "-c"]);
    spec.stdin = Some(Bytes::from(vec![b'x'; 1_000_000]));
    let ran = exec(spec).await;
    assert_eq!(ran.stdout().trim(), "1000000");

    // Without stdin: /dev/null, so reading ends at once.
    let ran = exec(argv(&["cat"])).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert!(ran.stdout.is_empty());

    // A command that ignores a large stdin still completes.
    let mut spec = shell("echo ignored");
    spec.stdin = Some(Bytes::from(vec![0u8; 4_000_000]));
    let ran = exec(spec).await;
    assert_eq!(ran.stdout(), "ignored\n");
}

#[tokio::test]
async fn the_session_is_new() {
    let ran = exec(shell("ps -o pid=,pgid=,sid= -p $$ || cat /proc/$$/stat")).await;
    let text = ran.stdout();
    let nums: Vec<&str> = if text.contains('(') {
        let tail = text.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = tail.split_whitespace().collect();
        vec![text.split_whitespace().next().unwrap(), f[2], f[3]]
    } else {
        text.split_whitespace().collect()
    };
    assert_eq!(nums[0], nums[1], "pgid = pid: {text}");
    assert_eq!(nums[0], nums[2], "sid = pid: {text}");
}

#[tokio::test]
async fn dropped_receiver_kills_the_command() {
    reaper::start().unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let run = tokio::spawn(exec::run(shell("echo $$; exec sleep 100"), tx));
    let first = rx.recv().await.unwrap();
    let Output::Stdout(pid) = first else {
        panic!("unexpected {first:?}")
    };
    let pid: i32 = std::str::from_utf8(&pid).unwrap().trim().parse().unwrap();
    drop(rx);
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(ExecError::Cancelled)), "{result:?}");
    assert!(!is_alive(pid));
}

#[tokio::test]
async fn dropped_future_kills_the_command() {
    reaper::start().unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let run = tokio::spawn(exec::run(shell("echo $$; exec sleep 100"), tx));
    let Some(Output::Stdout(pid)) = rx.recv().await else {
        panic!("no pid")
    };
    let pid: i32 = std::str::from_utf8(&pid).unwrap().trim().parse().unwrap();
    run.abort();
    let _ = run.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(pid) {
        assert!(Instant::now() < deadline, "{pid} survived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn slow_receiver_loses_nothing() {
    reaper::start().unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let size = 2 * 1024 * 1024;
    let run = tokio::spawn(exec::run(
        shell(&format!("head -c {size} /dev/urandom")),
        tx,
    ));
    let mut got = 0;
    while let Some(Output::Stdout(b)) = rx.recv().await {
        got += b.len();
        // Slower than the producer: backpressure, and the leader exits long before the
        // last chunk is taken, yet no data is dropped.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(got, size);
    assert_eq!(outcome.stdout_bytes, size as u64);
    assert!(!outcome.stdout_truncated);
}
