//! Workspace orchestration on the fake backend (feature `fake-backend`, on for this crate's
//! tests): the real store, locks, TTLs, crash recovery and agent protocol, with the real
//! `pyro-agent` running on the host against a temporary directory instead of a guest. No
//! VM boots, so the whole file runs in seconds.
//!
//! The agent is `PYRO_AGENT_BIN` when set, else this workspace's `target/debug/pyro-agent`,
//! built (or found up to date) with `cargo build -p pyro-agent` on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyro_core::store::{Store, WorkspaceState};
use pyro_core::workspace::CreateWorkspace;
use pyro_core::{BackendChoice, Command, CoreError, ExecOptions, Pyro, PyroOptions};

/// The agent binary, built once per test process unless `PYRO_AGENT_BIN` names one.
fn agent_bin() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("PYRO_AGENT_BIN") {
                return PathBuf::from(p);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "pyro-agent",
                    "--bin",
                    "pyro-agent",
                ])
                .current_dir(&root)
                .status()
                .expect("run cargo build -p pyro-agent");
            assert!(status.success(), "cargo build -p pyro-agent failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let bin = target.join("debug/pyro-agent");
            assert!(bin.is_file(), "no agent at {}", bin.display());
            bin
        })
        .clone()
}

/// A runtime for one test, after the process-wide setup.
fn run<F: std::future::Future>(f: F) -> F::Output {
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        // No `pyro` binary for watchdogs: one built from other sources (a stale
        // target/debug/pyro) must not act on these workspaces. Expiry is checked on access.
        // SAFETY: set once, before this test starts any thread of its own; every test of
        // this file passes here first.
        unsafe { std::env::set_var("PYRO_BIN", "/nonexistent/pyro") };
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A state directory with a Pyro instance on the fake backend.
struct Env {
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
    pyro: Pyro,
}

impl Env {
    fn new() -> Self {
        let state = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let pyro = Self::instance(state.path(), cache.path());
        Self { state, cache, pyro }
    }

    /// Another Pyro instance (as another process would have) on the same directories.
    fn instance(state: &Path, cache: &Path) -> Pyro {
        let mut opts = PyroOptions::from_env_with_backend(BackendChoice::Fake).unwrap();
        opts.state_dir = state.to_path_buf();
        opts.cache_dir = cache.to_path_buf();
        opts.agent_bin = Some(agent_bin());
        opts.boot_timeout = Duration::from_secs(20);
        Pyro::new(opts).unwrap()
    }

    fn other(&self) -> Pyro {
        Self::instance(self.state.path(), self.cache.path())
    }

    async fn create(&self, seed: Option<&Path>) -> String {
        let mut req = CreateWorkspace::new("debian:12");
        req.seed_path = seed.map(|p| p.to_path_buf().into());
        let info = self
            .pyro
            .create_workspace(req, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, "started");
        assert_eq!(info.backend, "fake");
        info.workspace_id
    }

    fn store(&self) -> Store {
        Store::open(self.state.path()).unwrap()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.path().join("workspaces").join(id)
    }

    /// The pid of the workspace's agent process, from its opaque machine record.
    fn agent_pid(&self, id: &str) -> i32 {
        let rec = self.store().get_workspace(id).unwrap().unwrap();
        let machine = serde_json::to_value(rec.machine.expect("a recorded machine")).unwrap();
        assert_eq!(machine["backend"], "fake");
        machine["vmm"]["pid"].as_i64().unwrap() as i32
    }

    async fn sh(&self, id: &str, script: &str) -> pyro_core::workspace::WorkspaceExecResult {
        let opts = ExecOptions::new(Command::Shell(script.into()));
        self.pyro.exec_workspace(id, opts, None).await.unwrap()
    }

    async fn read(&self, id: &str, path: &str) -> pyro_core::Result<String> {
        let r = self.pyro.read_workspace_file(id, path, 1 << 20).await?;
        Ok(r.content)
    }
}

impl Drop for Env {
    /// Agents run detached: a failed test must not leave them behind.
    fn drop(&mut self) {
        for pid in pyro_core::host::processes_with_cwd_in(self.state.path()) {
            // SAFETY: kill(2) on a process working in this test's own state directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn alive(pid: i32) -> bool {
    pyro_core::host::process_start_ticks(pid as u32).is_some()
}

/// Waits until `pid` is gone (its parent, this process, may not have reaped it yet).
fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

fn seed_dir() -> tempfile::TempDir {
    let seed = tempfile::tempdir().unwrap();
    std::fs::write(seed.path().join("a.txt"), "from the seed\n").unwrap();
    std::fs::create_dir(seed.path().join("src")).unwrap();
    std::fs::write(seed.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    seed
}

#[test]
fn the_workspace_loop_runs_on_the_fake_backend() {
    run(async {
        let t = Instant::now();
        let env = Env::new();
        let seed = seed_dir();
        let id = env.create(Some(seed.path())).await;
        let first_agent = env.agent_pid(&id);

        // exec runs in /workspace, which holds the seed.
        let r = env.sh(&id, "pwd; cat a.txt; echo oops >&2; exit 3").await;
        assert_eq!(r.exit_code, 3);
        assert!(r.stdout.ends_with("from the seed\n"), "{:?}", r.stdout);
        assert_eq!(r.stderr, "oops\n");
        assert_eq!(r.sequence, 1);

        // Files written by the host and by commands are the same tree.
        env.pyro
            .write_workspace_file(&id, "notes/todo.md", "- fake it\n")
            .await
            .unwrap();
        assert_eq!(
            env.read(&id, "/workspace/notes/todo.md").await.unwrap(),
            "- fake it\n"
        );
        let r = env
            .sh(&id, "cat notes/todo.md && echo changed > a.txt")
            .await;
        assert_eq!(r.stdout, "- fake it\n");

        // The diff against the baseline sees both changes.
        let diff = env.pyro.diff_workspace(&id).await.unwrap();
        assert!(diff.changed);
        let paths: Vec<&str> = diff.entries.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.iter().any(|p| p.ends_with("a.txt")), "{paths:?}");
        assert!(
            paths.iter().any(|p| p.ends_with("notes/todo.md")),
            "{paths:?}"
        );
        assert!(diff.patch.contains("+changed"), "{}", diff.patch);

        // The logs keep both commands with their output.
        let logs = env.pyro.logs_workspace(&id, 0, 20, 1 << 16).await.unwrap();
        assert_eq!(logs.total, 2);
        assert_eq!(logs.entries[0].exit_code, 3);
        assert_eq!(logs.entries[0].stderr, "oops\n");
        assert_eq!(logs.entries[1].stdout, "- fake it\n");

        // stop powers the agent off; the data stays.
        let info = env.pyro.stop_workspace(&id).await.unwrap();
        assert_eq!(info.state, "stopped");
        assert_eq!(info.last_error, None);
        assert!(wait_gone(first_agent), "the agent outlived stop");
        assert!(
            env.store()
                .get_workspace(&id)
                .unwrap()
                .unwrap()
                .machine
                .is_none()
        );
        let err = env.read(&id, "a.txt").await.unwrap_err();
        assert!(matches!(err, CoreError::WorkspaceState { .. }), "{err}");

        // start boots a new agent on the same disk.
        let info = env
            .pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, "started");
        assert_ne!(env.agent_pid(&id), first_agent);
        assert_eq!(env.read(&id, "a.txt").await.unwrap(), "changed\n");
        assert_eq!(env.read(&id, "notes/todo.md").await.unwrap(), "- fake it\n");

        // reset: a new disk with the baseline, an empty history.
        let info = env
            .pyro
            .reset_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(
            (info.state.as_str(), info.reset_count, info.command_count),
            ("started", 1, 0)
        );
        assert_eq!(env.read(&id, "a.txt").await.unwrap(), "from the seed\n");
        assert!(env.read(&id, "notes/todo.md").await.is_err());
        assert!(!env.pyro.diff_workspace(&id).await.unwrap().changed);
        let logs = env.pyro.logs_workspace(&id, 0, 20, 1 << 16).await.unwrap();
        assert_eq!(logs.total, 0);

        // delete ends the agent and removes everything.
        let agent = env.agent_pid(&id);
        env.pyro.delete_workspace(&id).await.unwrap();
        assert!(wait_gone(agent), "the agent outlived delete");
        assert!(!env.dir(&id).exists());
        assert!(env.store().get_workspace(&id).unwrap().is_none());
        let err = env.pyro.status_workspace(&id).await.unwrap_err();
        assert!(matches!(err, CoreError::WorkspaceNotFound { .. }), "{err}");
        eprintln!("workspace loop: {:?}", t.elapsed());
    });
}

#[test]
fn an_expired_ttl_stops_the_workspace_on_the_next_call_and_keeps_its_data() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        env.pyro
            .write_workspace_file(&id, "kept.txt", "kept\n")
            .await
            .unwrap();
        let agent = env.agent_pid(&id);
        // Spend all but a moment of the TTL (the smallest TTL one can ask for is a minute).
        env.store()
            .update_workspace::<pyro_core::store::StoreError>(&id, |r| {
                r.ttl_consumed = r.ttl_seconds as f64 - 0.2;
                Ok(())
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;

        let info = env.pyro.status_workspace(&id).await.unwrap();
        assert_eq!(info.state, "stopped");
        assert_eq!(info.ttl_remaining_seconds, 0.0);
        let why = info.last_error.unwrap_or_default();
        assert!(why.starts_with("the TTL ran out"), "{why}");
        assert!(wait_gone(agent), "the agent outlived the TTL");

        // No more running time: start is refused until the TTL is extended.
        let err = env
            .pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("TTL is used up"), "{err}");
        let update = pyro_core::workspace::UpdateWorkspace {
            ttl_seconds: Some(600),
            ..Default::default()
        };
        let info = env.pyro.update_workspace(&id, update).await.unwrap();
        assert_eq!(info.last_error, None);
        env.pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(env.read(&id, "kept.txt").await.unwrap(), "kept\n");
    });
}

/// Regression: the watchdog stops an expired workspace by powering its machine off, then
/// records the stop. A call that looked in between saw a started record with a dead machine
/// and reported a crash ("the VMM process exited unexpectedly") instead of the TTL's stop.
#[test]
fn a_machine_gone_after_the_ttl_ran_out_reads_as_the_ttls_stop_not_a_crash() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        let agent = env.agent_pid(&id);
        env.store()
            .update_workspace::<pyro_core::store::StoreError>(&id, |r| {
                r.ttl_consumed = r.ttl_seconds as f64 - 0.2;
                Ok(())
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The machine is gone before any call looks (the watchdog's power-off, unrecorded).
        // SAFETY: kill(2) on the agent process this test's workspace runs.
        unsafe { libc::kill(agent, libc::SIGKILL) };
        assert!(wait_gone(agent));
        let info = env.pyro.status_workspace(&id).await.unwrap();
        assert_eq!(info.state, "stopped");
        let why = info.last_error.unwrap_or_default();
        assert!(why.starts_with("the TTL ran out"), "{why}");
    });
}

#[test]
fn two_instances_on_one_state_dir_serialize_on_the_workspace_lock() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        let other = Arc::new(env.other());
        // An exec (shared lock) from one instance holds off a stop (exclusive) from the
        // other until it is done: the command finishes with all of its output.
        let exec = env.sh(&id, "sleep 1; echo finished");
        let stop = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let asked = Instant::now();
            let info = other.stop_workspace(&id).await.unwrap();
            (info, asked.elapsed())
        };
        let (r, (info, waited)) = tokio::join!(exec, stop);
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout, "finished\n");
        assert_eq!(info.state, "stopped");
        assert!(
            waited >= Duration::from_millis(500),
            "stop waited only {waited:?}"
        );

        // And the other way round: a start from the second instance is seen by the first.
        other
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        let r = env.sh(&id, "echo again").await;
        assert_eq!(r.stdout, "again\n");
        assert_eq!(r.sequence, 2);
    });
}

#[test]
fn a_killed_agent_reads_as_stopped_and_start_recovers_the_workspace() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        env.sh(&id, "echo survived > data.txt").await;
        let agent = env.agent_pid(&id);
        // SAFETY: kill(2) on the agent process this test's workspace runs.
        unsafe { libc::kill(agent, libc::SIGKILL) };
        assert!(wait_gone(agent));

        // The next call notices, and says why.
        let err = env
            .pyro
            .exec_workspace(&id, ExecOptions::new(Command::Shell("true".into())), None)
            .await
            .unwrap_err();
        match &err {
            CoreError::WorkspaceState { state, detail, .. } => {
                assert_eq!(state, "stopped");
                let detail = detail.as_deref().unwrap_or_default();
                assert!(detail.contains("exited unexpectedly"), "{detail}");
            }
            other => panic!("unexpected error: {other}"),
        }
        let rec = env.store().get_workspace(&id).unwrap().unwrap();
        assert_eq!(rec.state, WorkspaceState::Stopped);
        assert!(rec.machine.is_none());

        // start boots it again with its data.
        let info = env
            .pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, "started");
        assert_eq!(info.last_error, None);
        assert_eq!(env.read(&id, "data.txt").await.unwrap(), "survived\n");
    });
}

#[test]
fn a_failed_reset_leaves_an_error_state_nothing_running_and_a_retry_works() {
    run(async {
        let env = Env::new();
        let seed = seed_dir();
        let id = env.create(Some(seed.path())).await;
        let agent = env.agent_pid(&id);
        // A baseline the agent cannot import.
        let baseline = env.dir(&id).join("baseline.tar");
        let good = std::fs::read(&baseline).unwrap();
        let mut bad = good.clone();
        bad[..512].fill(0xff);
        std::fs::write(&baseline, &bad).unwrap();

        let err = env
            .pyro
            .reset_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap_err();
        let rec = env.store().get_workspace(&id).unwrap().unwrap();
        assert_eq!(rec.state, WorkspaceState::Error, "{err}");
        let why = rec.last_error.clone().unwrap_or_default();
        assert!(why.starts_with("the reset failed"), "{why}");
        assert!(rec.machine.is_none());
        assert!(wait_gone(agent), "the old agent outlived the reset");
        // The agent booted for the reset was ended too: nothing runs in the directory.
        let left = pyro_core::host::processes_with_cwd_in(&env.dir(&id));
        assert!(left.is_empty(), "left running: {left:?}");
        let err = env
            .pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::WorkspaceState { .. }), "{err}");

        // With its baseline back, reset rebuilds it.
        std::fs::write(&baseline, &good).unwrap();
        let info = env
            .pyro
            .reset_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, "started");
        assert_eq!(info.last_error, None);
        assert_eq!(env.read(&id, "a.txt").await.unwrap(), "from the seed\n");
    });
}

#[test]
fn concurrent_calls_on_one_workspace_all_run_and_get_distinct_sequences() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        let pyro = &env.pyro;
        let id = id.as_str();
        let execs = (0..8).map(|i| async move {
            let opts = ExecOptions::new(Command::Shell(format!("echo {i} > f{i}; echo {i}")));
            pyro.exec_workspace(id, opts, None).await
        });
        let reads = (0..4).map(|_| async move { pyro.status_workspace(id).await });
        let (execs, statuses) = tokio::join!(futures_join_all(execs), futures_join_all(reads));
        let mut seqs = Vec::new();
        for (i, r) in execs.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r.stdout, format!("{i}\n"));
            seqs.push(r.sequence);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
        for s in statuses {
            assert_eq!(s.unwrap().state, "started");
        }
        let listed = pyro
            .list_workspace_files(id, "/workspace", true)
            .await
            .unwrap();
        let files = listed
            .entries
            .iter()
            .filter(|e| e.path.contains("/f"))
            .count();
        assert_eq!(files, 8);
        assert_eq!(pyro.status_workspace(id).await.unwrap().command_count, 8);
    });
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[test]
fn secrets_reach_only_the_commands_that_name_them_and_are_redacted_everywhere_shown() {
    use pyro_core::secrets::{SecretInput, SecretSource};
    run(async {
        let env = Env::new();
        let secret = "tok-3f9a2c71e0b4";
        let file = env.state.path().join("token-file");
        std::fs::write(&file, "file-secret-77d1").unwrap();
        let mut req = CreateWorkspace::new("debian:12");
        req.secrets = vec![
            SecretInput {
                name: "API_TOKEN".into(),
                source: SecretSource::Value(secret.into()),
                hosts: Vec::new(),
            },
            SecretInput {
                name: "FROM_FILE".into(),
                source: SecretSource::File(file.as_path().into()),
                hosts: Vec::new(),
            },
        ];
        let info = env
            .pyro
            .create_workspace(req, pyro_core::no_progress())
            .await
            .unwrap();
        let id = info.workspace_id.clone();
        let names: Vec<(&str, &str)> = info
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.source_kind.as_str()))
            .collect();
        assert_eq!(names, [("API_TOKEN", "literal"), ("FROM_FILE", "file")]);
        assert!(!serde_json::to_string(&info).unwrap().contains(secret));

        // A command that does not name it does not have it.
        let r = env.sh(&id, "echo \"[${API_TOKEN:-unset}]\"").await;
        assert_eq!(r.stdout, "[unset]\n");

        // One that does gets it, and every byte of it printed is redacted, also when the
        // value is written in two pieces (two writes, two chunks).
        let mut opts = ExecOptions::new(Command::Shell(
            "echo \"a=$TOKEN\"; printf '%s' \"${TOKEN%????????}\"; sleep 0.2; \
             printf '%s\\n' \"${TOKEN#????????}\"; echo \"$TOKEN\" >&2; \
             echo \"$TOKEN\" > leaked.txt; echo \"$FROM_FILE\""
                .into(),
        ));
        opts.secret_env = [
            ("API_TOKEN".to_string(), "TOKEN".to_string()),
            ("FROM_FILE".to_string(), String::new()),
        ]
        .into();
        let mut live = Vec::new();
        let mut on = |o: &pyro_proto::api::Output| match o {
            pyro_proto::api::Output::Stdout(b) | pyro_proto::api::Output::Stderr(b) => {
                live.extend_from_slice(b)
            }
        };
        let r = env
            .pyro
            .exec_workspace(&id, opts, Some(&mut on))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        assert_eq!(r.stdout, "a=[REDACTED]\n[REDACTED]\n[REDACTED]\n", "result");
        assert_eq!(r.stderr, "[REDACTED]\n");
        assert!(!r.stdout_truncated, "redaction is not truncation");
        let live = String::from_utf8(live).unwrap();
        assert!(
            !live.contains(secret) && live.contains("[REDACTED]"),
            "live: {live}"
        );

        // The stored logs were written after the redaction.
        let logs = env.pyro.logs_workspace(&id, 0, 20, 1 << 16).await.unwrap();
        let last = logs.entries.last().unwrap();
        assert!(!last.stdout.contains(secret) && last.stdout.contains("[REDACTED]"));
        for entry in std::fs::read_dir(env.dir(&id).join("logs")).unwrap() {
            let text = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&text).contains(secret),
                "a log file"
            );
        }

        // A file the command wrote: its read and the diff show no value.
        let read = env.read(&id, "/workspace/leaked.txt").await.unwrap();
        assert_eq!(read, "[REDACTED]\n");
        let diff = env.pyro.diff_workspace(&id).await.unwrap();
        assert!(!diff.patch.contains(secret) && diff.patch.contains("[REDACTED]"));

        // An unknown secret, or one clashing with env, is refused and runs nothing.
        let mut opts = ExecOptions::new(Command::Shell("touch ran".into()));
        opts.secret_env = [("NOPE".to_string(), String::new())].into();
        let err = env.pyro.exec_workspace(&id, opts, None).await.unwrap_err();
        assert!(err.to_string().contains("no secret `NOPE`"), "{err}");
        assert!(
            env.read(&id, "/workspace/ran").await.is_err(),
            "nothing ran"
        );

        // On the host: 0600 files under a 0700 directory; nowhere in the database.
        use std::os::unix::fs::PermissionsExt;
        let dir = env.dir(&id).join("secrets");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let db = std::fs::read(env.state.path().join("pyro.db")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&db).contains(secret),
            "not in the database"
        );
        env.pyro.delete_workspace(&id).await.unwrap();
    });
}

/// Reads a shell until `want` shows up (or a deadline), from `cursor`; returns the text read
/// and the next cursor.
async fn read_until(env: &Env, id: &str, shell: &str, cursor: u64, want: &str) -> (String, u64) {
    use pyro_core::workspace::ReadShell;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut text, mut cursor) = (String::new(), cursor);
    while !text.contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} in {text:?}");
        let r = env
            .pyro
            .read_shell(
                id,
                shell,
                ReadShell {
                    cursor,
                    max_chars: 65536,
                    plain: true,
                    wait_for_idle_ms: Some(100),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.missed_bytes, 0);
        text.push_str(&r.output);
        cursor = r.next_cursor;
    }
    (text, cursor)
}

fn service(name: &str, command: &str) -> pyro_core::workspace::StartService {
    pyro_core::workspace::StartService {
        name: name.into(),
        command: command.into(),
        cwd: "/workspace".into(),
        readiness: None,
        ready_timeout_seconds: 30,
        ready_interval_ms: 50,
        secret_env: Default::default(),
        published_ports: Vec::new(),
    }
}

#[test]
fn shells_and_services_outlive_their_calls_and_read_truthfully_after_a_crash() {
    use pyro_core::secrets::{SecretInput, SecretSource};
    use pyro_core::workspace::{OpenShell, ReadinessSpec};
    run(async {
        let env = Env::new();
        let secret = "tok-5be1d09a77c3";
        let mut req = CreateWorkspace::new("debian:12");
        req.secrets = vec![SecretInput {
            name: "API_TOKEN".into(),
            source: SecretSource::Value(secret.into()),
            hosts: Vec::new(),
        }];
        let id = env
            .pyro
            .create_workspace(req, pyro_core::no_progress())
            .await
            .unwrap()
            .workspace_id;

        // A shell with the secret: what it prints is redacted, also a value written in two
        // pieces with a read in between (the first piece is held back, not shown).
        let shell = env
            .pyro
            .open_shell(
                &id,
                OpenShell {
                    cwd: "/workspace".into(),
                    cols: 80,
                    rows: 24,
                    secret_env: [("API_TOKEN".to_string(), "T".to_string())].into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(shell.state, "running");
        assert_eq!(shell.secret_env, ["API_TOKEN"]);
        let sid = shell.shell_id.clone();
        let (_, cursor) = read_until(&env, &id, &sid, 0, "pyro$").await;
        env.pyro
            .write_shell(
                &id,
                &sid,
                "printf 'A=%s' \"${T%????????}\"; sleep 1; printf '%s=Z\\n' \"${T#????????}\"",
                true,
            )
            .await
            .unwrap();
        let (text, _) = read_until(&env, &id, &sid, cursor, "]=Z").await;
        assert!(text.contains("A=[REDACTED]=Z"), "{text:?}");
        assert!(!text.contains("tok-"), "{text:?}");

        // A service that is ready once its file exists, and one that runs without a probe.
        let mut web = service(
            "web",
            "echo starting; sleep 0.3; touch ready; exec sleep 300",
        );
        web.readiness = Some(ReadinessSpec::File("ready".into()));
        let info = env
            .pyro
            .start_service(&id, web, pyro_core::no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, "running");
        assert!(info.ready_at.is_some() && info.pid.is_some());
        assert_eq!(info.readiness.as_ref().unwrap()["path"], "/workspace/ready");
        let logs = env.pyro.logs_service(&id, "web", Some(10)).await.unwrap();
        assert_eq!(logs.stdout, "starting\n");
        // A service given the secret: its logs and a failed start's error show no value.
        let mut leaky = service("leaky", "echo \"key=$T\"; exec sleep 300");
        leaky.secret_env = [("API_TOKEN".to_string(), "T".to_string())].into();
        env.pyro
            .start_service(&id, leaky, pyro_core::no_progress())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let logs = loop {
            let logs = env.pyro.logs_service(&id, "leaky", None).await.unwrap();
            if !logs.stdout.is_empty() || Instant::now() > deadline {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(logs.stdout, "key=[REDACTED]\n");
        assert_eq!(logs.service.secret_env, ["API_TOKEN"]);
        let mut failing = service("failing", "echo \"$T\" >&2; exit 1");
        failing.secret_env = [("API_TOKEN".to_string(), "T".to_string())].into();
        failing.readiness = Some(ReadinessSpec::File("never".into()));
        let err = env
            .pyro
            .start_service(&id, failing, pyro_core::no_progress())
            .await
            .unwrap_err();
        let shown = format!("{err} {}", err.data().unwrap());
        assert!(
            shown.contains("[REDACTED]") && !shown.contains(secret),
            "{shown}"
        );
        env.pyro.stop_service(&id, "leaky").await.unwrap();
        let ws = env.pyro.status_workspace(&id).await.unwrap();
        assert_eq!((ws.service_count, ws.running_service_count), (3, 1));

        // The VMM dies: no shell survives, the service is stopped with its workspace.
        let agent = env.agent_pid(&id);
        // SAFETY: kill(2) on the agent process this test's workspace runs.
        unsafe { libc::kill(agent, libc::SIGKILL) };
        assert!(wait_gone(agent));
        let list = env.pyro.list_services(&id).await.unwrap();
        assert_eq!(list.running_count, 0);
        let web = list
            .services
            .iter()
            .find(|s| s.service_name == "web")
            .unwrap();
        assert_eq!(web.state, "stopped");
        assert_eq!(web.stop_reason.as_deref(), Some("workspace_stopped"));
        assert_eq!(env.pyro.list_shells(&id).await.unwrap().count, 0);
        let ws = env.pyro.status_workspace(&id).await.unwrap();
        assert_eq!((ws.service_count, ws.running_service_count), (3, 0));
        let err = env
            .pyro
            .read_shell(
                &id,
                &sid,
                pyro_core::workspace::ReadShell {
                    cursor: 0,
                    max_chars: 10,
                    plain: false,
                    wait_for_idle_ms: None,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::WorkspaceState { .. }), "{err}");

        // Booted again: the old shell is unknown, the service can start again by name.
        env.pyro
            .start_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        let err = env.pyro.signal_shell(&id, &sid, "INT").await.unwrap_err();
        assert!(matches!(err, CoreError::ShellNotFound { .. }), "{err}");
        let again = env
            .pyro
            .start_service(
                &id,
                service("web", "exec sleep 300"),
                pyro_core::no_progress(),
            )
            .await
            .unwrap();
        assert_eq!(again.state, "running");
    });
}

#[test]
fn a_service_that_is_not_ready_is_an_error_and_stop_reports_how_it_ended() {
    use pyro_core::workspace::ReadinessSpec;
    run(async {
        let env = Env::new();
        let id = env.create(None).await;

        // Exits before its probe passes: an error at once (not after the 30 s timeout),
        // with its exit code, its output and its record.
        let mut crash = service("crash", "echo boom >&2; exit 7");
        crash.readiness = Some(ReadinessSpec::Tcp("127.0.0.1:9".into()));
        let started = Instant::now();
        let err = env
            .pyro
            .start_service(&id, crash, pyro_core::no_progress())
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited the timeout"
        );
        let CoreError::ServiceFailed { info, log_tail } = &err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(info.state, "failed");
        assert_eq!(
            info.stop_reason.as_deref(),
            Some("process_exited_before_ready")
        );
        assert_eq!(info.exit_code, Some(7));
        assert!(log_tail.contains("boom"), "{log_tail}");
        assert!(
            err.to_string()
                .contains("exited before it was ready (exit code 7)"),
            "{err}"
        );
        assert_eq!(err.data().unwrap()["service"]["exit_code"], 7);

        // Never ready: stopped and failed with readiness_timeout, and progress was sent.
        let mut slow = service("slow", "exec sleep 300");
        slow.readiness = Some(ReadinessSpec::Command("sleep 5".into()));
        slow.ready_timeout_seconds = 1;
        let events = Arc::new(std::sync::Mutex::new(0usize));
        let seen = events.clone();
        let progress: pyro_core::ProgressFn = Arc::new(move |e: &pyro_core::ProgressEvent| {
            if matches!(e, pyro_core::ProgressEvent::Service { .. }) {
                *seen.lock().unwrap() += 1;
            }
        });
        let err = env
            .pyro
            .start_service(&id, slow, progress)
            .await
            .unwrap_err();
        let CoreError::ServiceFailed { info, .. } = &err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(info.stop_reason.as_deref(), Some("readiness_timeout"));
        assert!(*events.lock().unwrap() >= 1, "no progress");

        // Stop: TERM when it is heeded, KILL when it is not.
        env.pyro
            .start_service(
                &id,
                service("polite", "exec sleep 300"),
                pyro_core::no_progress(),
            )
            .await
            .unwrap();
        env.pyro
            .start_service(
                &id,
                service("stubborn", "trap '' TERM; while :; do sleep 0.1; done"),
                pyro_core::no_progress(),
            )
            .await
            .unwrap();
        // A running name is refused (the agent says Conflict, not a guess from its message).
        match env
            .pyro
            .start_service(&id, service("polite", "true"), pyro_core::no_progress())
            .await
        {
            Err(CoreError::Invalid { field, reason }) => {
                assert_eq!(field, "service_name");
                assert!(reason.contains("already running"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let polite = env.pyro.stop_service(&id, "polite").await.unwrap();
        assert_eq!(
            (polite.state.as_str(), polite.stop_reason.as_deref()),
            ("stopped", Some("sigterm"))
        );
        let stubborn = env.pyro.stop_service(&id, "stubborn").await.unwrap();
        assert_eq!(stubborn.stop_reason.as_deref(), Some("sigkill"));

        // A service that ends by itself reads as exited with its code.
        env.pyro
            .start_service(&id, service("brief", "exit 3"), pyro_core::no_progress())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = env.pyro.status_service(&id, "brief").await.unwrap();
            if s.state == "exited" {
                assert_eq!(s.exit_code, Some(3));
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Bad input is refused before anything runs.
        for (name, cwd, ready, field) in [
            ("bad name", "/workspace", None, "service_name"),
            ("ok", "/workspace/missing", None, "cwd"),
            (
                "ok",
                "/workspace",
                Some(ReadinessSpec::Tcp("nope".into())),
                "readiness",
            ),
            (
                "ok",
                "/workspace",
                Some(ReadinessSpec::Http("https://x/".into())),
                "readiness",
            ),
        ] {
            let mut s = service(name, "true");
            s.cwd = cwd.into();
            s.readiness = ready;
            match env
                .pyro
                .start_service(&id, s, pyro_core::no_progress())
                .await
            {
                Err(CoreError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{name} {cwd}: {other:?}"),
            }
        }
        let mut s = service("ports", "true");
        s.published_ports = vec![pyro_core::workspace::PortSpec {
            guest_port: 8000,
            host_port: None,
        }];
        let err = env
            .pyro
            .start_service(&id, s, pyro_core::no_progress())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("egress+published-ports"), "{err}");
        let names: Vec<String> = env
            .pyro
            .list_services(&id)
            .await
            .unwrap()
            .services
            .into_iter()
            .map(|s| s.service_name)
            .collect();
        assert_eq!(names, ["brief", "crash", "polite", "slow", "stubborn"]);
    });
}

#[test]
fn a_summary_tells_what_happened_since_the_last_reset() {
    run(async {
        let env = Env::new();
        let seed = seed_dir();
        let id = env.create(Some(seed.path())).await;
        env.sh(&id, "echo built > out.txt").await;
        env.sh(&id, "exit 3").await;
        env.pyro
            .write_workspace_file(&id, "notes.md", "hello\n")
            .await
            .unwrap();
        env.pyro
            .start_service(
                &id,
                service("web", "exec sleep 300"),
                pyro_core::no_progress(),
            )
            .await
            .unwrap();
        let s = env.pyro.summarize_workspace(&id).await.unwrap();
        assert_eq!((s.command_count, s.failed_command_count), (2, 1));
        assert_eq!(s.commands.len(), 2);
        assert_eq!(s.commands[1].exit_code, 3);
        let kinds: Vec<&str> = s.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["file_write", "service_start"], "{:?}", s.events);
        assert!(s.events[0].detail.contains("/workspace/notes.md"));
        assert_eq!(s.services, ["web [running]"]);
        let changes = s.changes.expect("a started workspace shows its changes");
        assert_eq!(changes.added, 2, "{:?}", s.changed_paths);
        assert!(
            s.changed_paths
                .iter()
                .any(|p| p.ends_with("/workspace/notes.md"))
        );
        // A reset starts the story again.
        env.pyro
            .reset_workspace(&id, pyro_core::no_progress())
            .await
            .unwrap();
        let s = env.pyro.summarize_workspace(&id).await.unwrap();
        assert_eq!(s.command_count, 0);
        assert!(s.events.is_empty(), "{:?}", s.events);
        assert!(s.services.is_empty(), "{:?}", s.services);
        assert_eq!(s.changes.map(|c| c.total), Some(0));
        // Stopped: no diff, and it says why.
        env.pyro.stop_workspace(&id).await.unwrap();
        let s = env.pyro.summarize_workspace(&id).await.unwrap();
        assert!(s.changes.is_none() && s.changes_note.is_some());
    });
}

#[test]
fn a_cancelled_exec_call_kills_its_command() {
    run(async {
        let env = Env::new();
        let id = env.create(None).await;
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let pyro = env.other();
        let id2 = id.clone();
        let call = tokio::spawn(pyro_core::ops::on_own_thread(
            Some(cancelled),
            move || async move {
                let opts = ExecOptions::new(Command::Shell("sleep 31.5; echo done".into()));
                pyro.exec_workspace(&id2, opts, None).await
            },
        ));
        let sleeping = || {
            std::process::Command::new("pgrep")
                .args(["-f", "^sleep 31.5"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sleeping() {
            assert!(Instant::now() < deadline, "never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.send(true).unwrap();
        assert!(call.await.unwrap().unwrap().is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while sleeping() {
            assert!(
                Instant::now() < deadline,
                "the command outlived its cancelled call"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
