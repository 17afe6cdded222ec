//! End-to-end tests of the `pyro` binary: real sandboxes (QEMU/TCG on hosts without
//! hardware KVM), the real static agent, real Debian images built from packages.
//!
//! Every test gets its own state directory and checks that nothing is left behind: no VM
//! directories and no VMM process whose working directory is in it. The environment cache is
//! shared (`PYRO_CACHE_DIR`, built once by whichever test runs first, under a lock).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Sandbox {
    state: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            state: tempfile::Builder::new()
                .prefix("pyro-cli-test-")
                .tempdir()
                .expect("temp state dir"),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pyro"));
        c.env("PYRO_STATE_DIR", self.state.path())
            .env_remove("PYRO_BACKEND")
            .stdin(Stdio::null());
        c
    }

    fn pyro(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn pyro")
    }

    /// Asserts no VM directory and no process working in the state dir remain.
    fn assert_clean(&self) {
        let vms = self.state.path().join("vms");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<PathBuf> = std::fs::read_dir(&vms)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            let procs = processes_in(self.state.path());
            if left.is_empty() && procs.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("leftovers: dirs {left:?}, processes {procs:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn processes_in(dir: &Path) -> Vec<u32> {
    pyro_core::host::processes_with_cwd_in(dir)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

#[test]
fn run_git_version_prints_to_stdout_and_summary_to_stderr() {
    let s = Sandbox::new();
    let out = s.pyro(&["run", "debian:12", "--", "git", "--version"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("git version 2."),
        "stdout: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains("[run] environment=debian:12"), "{err}");
    assert!(err.contains("exit_code=0"), "{err}");
    s.assert_clean();
}

#[test]
fn exit_code_and_stderr_are_the_commands_own() {
    let s = Sandbox::new();
    let out = s.pyro(&[
        "run",
        "debian:12",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    let err = text(&out.stderr);
    assert!(err.lines().any(|l| l == "err"), "{err}");
    assert!(err.contains("exit_code=7"), "{err}");
    s.assert_clean();
}

#[test]
fn json_result_has_the_contract_fields() {
    let s = Sandbox::new();
    let out = s.pyro(&[
        "run",
        "debian:12",
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi; cat; pwd",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v = json(&out);
    // `cat` reads /dev/null: the command must not wait for input.
    assert_eq!(v["stdout"], "hi\n/workspace\n");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["environment"], "debian:12");
    assert_eq!(v["execution_mode"], "guest_serial");
    assert_eq!(v["cleanup"]["deleted"], true);
    assert_eq!(v["cleanup"]["reason"], "post_exec_cleanup");
    assert_eq!(v["timed_out"], false);
    assert!(v["vm_id"].as_str().is_some_and(|id| id.len() == 12));
    assert!(v["duration_ms"].as_u64().is_some());
    s.assert_clean();
}

#[test]
fn large_output_streams_completely() {
    let s = Sandbox::new();
    let out = s.pyro(&[
        "run",
        "debian:12",
        "--",
        "head",
        "-c",
        "8000000",
        "/dev/urandom",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 8_000_000);
    s.assert_clean();
}

#[test]
fn json_output_is_capped_with_an_explicit_marker() {
    let s = Sandbox::new();
    let out = s.pyro(&[
        "run",
        "debian:12",
        "--json",
        "--max-output-bytes",
        "1000",
        "--",
        "sh",
        "-c",
        "yes abcdefghi | head -c 50000",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v = json(&out);
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout_bytes"], 50000);
    let stdout = v["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("abcdefghi\n"));
    assert!(
        stdout.ends_with("[pyro: output truncated: 1000 of 50000 bytes shown]\n"),
        "{stdout}"
    );
    s.assert_clean();
}

#[test]
fn binary_output_is_byte_exact() {
    let s = Sandbox::new();
    let script = r"printf '\377\376\000\001hello\200'";
    let out = s.pyro(&["run", "debian:12", "--", "sh", "-c", script]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout, b"\xff\xfe\x00\x01hello\x80");
    let out = s.pyro(&["run", "debian:12", "--json", "--", "sh", "-c", script]);
    let v = json(&out);
    assert_eq!(v["stdout_base64"], "//4AAWhlbGxvgA==");
    s.assert_clean();
}

#[test]
fn timeout_keeps_partial_output_and_reports_it() {
    let s = Sandbox::new();
    let started = Instant::now();
    let out = s.pyro(&[
        "run",
        "debian:12",
        "--json",
        "--timeout-seconds",
        "2",
        "--",
        "sh",
        "-c",
        "echo started; (sleep 300 &); sleep 300",
    ]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["timed_out"], true);
    assert_eq!(v["exit_code"], 124);
    assert_eq!(v["stdout"], "started\n");
    assert!(started.elapsed() < Duration::from_secs(120));
    s.assert_clean();
}

#[test]
fn missing_program_is_127_with_a_clear_message() {
    let s = Sandbox::new();
    let out = s.pyro(&["run", "debian:12", "--", "no-such-program", "x"]);
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.contains("no-such-program") && err.contains("not found"),
        "{err}"
    );
    s.assert_clean();
}

#[test]
fn concurrent_runs_all_succeed() {
    let s = Sandbox::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            s.cmd()
                .args([
                    "run",
                    "debian:12",
                    "--",
                    "sh",
                    "-c",
                    &format!("echo run-{i}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().expect("wait");
        assert!(out.status.success(), "run {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("run-{i}\n"));
    }
    s.assert_clean();
}

#[test]
fn bad_inputs_get_clear_errors_and_leave_nothing() {
    let s = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "debian:13", "--", "true"],
            "debian:12, debian:12-base, debian:12-build",
        ),
        (
            &["run", "debian:12", "--vcpu-count", "0", "--", "true"],
            "vcpu_count must be between 1 and 8",
        ),
        (
            &["run", "debian:12", "--mem-mib", "64", "--", "true"],
            "mem_mib must be between 256 and 32768",
        ),
        (
            &["run", "debian:12", "--ttl-seconds", "5", "--", "true"],
            "ttl_seconds must be between 60 and 3600",
        ),
        (
            &["run", "debian:12", "--timeout-seconds", "0", "--", "true"],
            "timeout_seconds must be between",
        ),
        (&["run", "debian:12"], "a command is required"),
        (&["run", "debian:12", "--", ""], "program name is empty"),
        (
            &[
                "run",
                "debian:12",
                "--network",
                "--allow-cidr",
                "127.0.0.0/8",
                "--",
                "true",
            ],
            "never allowed",
        ),
        (
            &[
                "run",
                "debian:12",
                "--network",
                "--allow-host",
                "x!.example",
                "--",
                "true",
            ],
            "--allow-host `x!.example`",
        ),
        (
            &["run", "debian:12", "--backend", "vmware", "--", "true"],
            "not one of auto, firecracker, qemu",
        ),
        (
            &["run", "debian:12", "--env", "NOEQUALS", "--", "true"],
            "KEY=VALUE",
        ),
        (
            &["run", "debian:12", "--cwd", "relative", "--", "true"],
            "absolute guest path",
        ),
    ];
    for (args, needle) in cases {
        let out = s.pyro(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(
            err.starts_with("[error] ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    // The JSON error shape.
    let out = s.pyro(&["run", "--json", "debian:13", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error_kind"], "invalid_input");
    assert!(v["error"].as_str().unwrap().contains("unknown environment"));
    s.assert_clean();
}

#[test]
fn nonexistent_cwd_is_refused_by_the_guest() {
    let s = Sandbox::new();
    let out = s.pyro(&["run", "debian:12", "--cwd", "/no/such/dir", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/no/such/dir"),
        "{}",
        text(&out.stderr)
    );
    s.assert_clean();
}

#[test]
fn firecracker_is_refused_with_the_reason_when_kvm_is_not_hardware_assisted() {
    let facts = pyro_core::HostFacts::probe();
    if facts.kvm_accelerates() {
        eprintln!("hardware KVM present: this refusal cannot happen here");
        return;
    }
    let s = Sandbox::new();
    let out = s.pyro(&["run", "debian:12", "--backend", "firecracker", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Firecracker needs hardware-assisted KVM"),
        "{err}"
    );
    s.assert_clean();
}

#[test]
fn a_killed_cli_leaves_nothing_after_the_next_run() {
    let s = Sandbox::new();
    let mut child = s
        .cmd()
        .args(["run", "debian:12", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until its VM directory exists and its VMM runs, then kill the CLI hard.
    let vms = s.state.path().join("vms");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let booted = std::fs::read_dir(&vms)
            .map(|d| d.flatten().any(|e| e.path().join("vsock.sock").exists()))
            .unwrap_or(false);
        if booted {
            break;
        }
        assert!(Instant::now() < deadline, "the VM never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    // The VMM dies with its parent; the directory is reaped by the next pyro process.
    let out = s.pyro(&["run", "debian:12", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.assert_clean();
}

#[test]
fn doctor_explains_the_backend_choice() {
    let s = Sandbox::new();
    let out = s.pyro(&["doctor", "--json"]);
    let v = json(&out);
    let facts = pyro_core::HostFacts::probe();
    let expected = if facts.kvm_accelerates() {
        "firecracker"
    } else {
        "qemu"
    };
    assert_eq!(v["backend"], expected);
    assert_eq!(v["kvm"]["hardware_assisted"], facts.kvm_hardware_assisted);
    assert_eq!(
        out.status.success(),
        v["runtime_ok"].as_bool().unwrap(),
        "{v}"
    );
    // Warm snapshots are reported, and follow PYRO_SNAPSHOTS.
    let snapshots = |v: &serde_json::Value| -> String {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "snapshots")
            .map(|c| c["detail"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no snapshots check: {v}"))
    };
    let expected = if pyro_core::warm::enabled_by_env() {
        "snapshots on"
    } else {
        "snapshots off"
    };
    assert!(snapshots(&v).contains(expected), "{v}");
    let off = s
        .cmd()
        .args(["doctor", "--json"])
        .env("PYRO_SNAPSHOTS", "0")
        .output()
        .expect("spawn");
    assert!(snapshots(&json(&off)).contains("snapshots off"));
    // The network check says what networking needs here, and never fails the runtime.
    let net = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "network")
        .unwrap_or_else(|| panic!("no network check: {v}"));
    assert_eq!(
        net["ok"].as_bool(),
        Some(pyro_net::setup::check_capabilities(true).is_ok()),
        "{net}"
    );
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("networked sandboxes")
    );
    // A host without the agent binary cannot run sandboxes: doctor must say so and fail.
    let out = s
        .cmd()
        .args(["doctor"])
        .env("PYRO_AGENT_BIN", "/nonexistent/pyro-agent")
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("Runtime: FAIL"));
    assert!(text(&out.stdout).contains("pyro-agent"));
}

#[test]
fn env_commands_report_the_catalog() {
    let s = Sandbox::new();
    let out = s.pyro(&["env", "list", "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    let names: Vec<&str> = v["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["debian:12", "debian:12-base", "debian:12-build"]);
    let out = s.pyro(&["env", "inspect", "debian:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown environment"));
    // Pull is idempotent: the second pull of a built environment is immediate.
    let first = s.pyro(&["env", "pull", "debian:12", "--json"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let t = Instant::now();
    let again = s.pyro(&["env", "pull", "debian:12", "--json"]);
    assert!(again.status.success());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(json(&first)["source_digest"], json(&again)["source_digest"]);
    assert_eq!(json(&again)["installed"], true);
}

#[test]
fn base_environment_has_bash_but_not_git() {
    let s = Sandbox::new();
    let out = s.pyro(&[
        "run",
        "debian:12-base",
        "--json",
        "--",
        "sh",
        "-c",
        "bash -c 'echo $BASH_VERSION' >/dev/null && command -v git || echo no-git",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v = json(&out);
    assert_eq!(v["stdout"], "no-git\n");
    assert_eq!(v["environment"], "debian:12-base");
    s.assert_clean();
}

/// F8 (review of 64dd67c): `--text-file` and `--patch-file` read the whole file before the
/// 16 MiB check (a 4 GiB file cost 4.2 GB of RSS, `/dev/zero` ran the host out of memory, a
/// FIFO blocked forever). Now the size is checked first and only regular files are read.
/// Also: an error message echoes no raw newline and no huge input whole.
#[test]
fn host_input_files_are_bounded_before_they_are_read() {
    let s = Sandbox::new();
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big.txt");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let fifo = t.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let big = big.to_str().unwrap();
    let fifo = fifo.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["workspace", "file", "write", "w", "x", "--text-file", big],
            "larger than the limit of 16777216 bytes",
        ),
        (
            &[
                "workspace",
                "file",
                "write",
                "w",
                "x",
                "--text-file",
                "/dev/zero",
            ],
            "not a regular file (a device)",
        ),
        (
            &["workspace", "file", "write", "w", "x", "--text-file", fifo],
            "not a regular file (a FIFO)",
        ),
        (
            &["workspace", "patch", "apply", "w", "--patch-file", big],
            "larger than the limit",
        ),
        (
            &[
                "workspace",
                "patch",
                "apply",
                "w",
                "--patch-file",
                "/dev/zero",
            ],
            "not a regular file (a device)",
        ),
    ];
    for (args, needle) in cases {
        let started = Instant::now();
        let out = s.pyro(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?} hung");
    }
    // One `[error]` line, however many newlines or bytes the input had.
    let long = format!("a\nb{}", "x".repeat(100_000));
    let out = s.pyro(&["run", "debian:12", "--cwd", &long, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.len() < 2_000, "{} bytes echoed", err.len());
    s.assert_clean();
}

/// Regression test: `pyro workspace list --json | head -c1` used to panic in `println!` on
/// EPIPE (exit 101, a panic message on stderr). A reader that goes away ends the CLI quietly
/// with exit code 0, whether it left before the first byte or after reading one.
#[test]
fn a_closed_stdout_ends_the_cli_quietly_with_exit_0() {
    use std::io::Read;

    let s = Sandbox::new();
    let commands: [&[&str]; 4] = [
        &["workspace", "list", "--json"],
        &["workspace", "list"],
        &["env", "list"],
        &["env", "list", "--json"],
    ];
    for args in commands {
        // Closed before the first write: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = s
            .cmd()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("spawn pyro");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(text(&out.stderr), "", "{args:?}");

        // `| head -c1`: one byte read, then the pipe closes.
        let mut child = s
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pyro");
        let mut first = [0u8; 1];
        child
            .stdout
            .take()
            .expect("stdout")
            .read_exact(&mut first)
            .expect("one byte");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
    s.assert_clean();
}
