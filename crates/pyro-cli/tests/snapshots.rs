//! Named snapshots, `reset --snapshot` and `fork` end to end through the `pyro` binary, on
//! real sandboxes (QEMU/TCG here) with the real agent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

mod common;
use common::{Env, text};

impl Env {
    fn new() -> Self {
        Self::with_prefix("pyro-snap-test-")
    }

    fn create(&self) -> String {
        let out = self.pyro(&["workspace", "create", "debian:12", "--id-only"]);
        assert!(out.status.success(), "create: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// `sh -c script` in workspace `id`; its stdout (the command must succeed).
    fn sh(&self, id: &str, script: &str) -> String {
        let r = self.ok_json(&["workspace", "exec", id, "--json", "--", "sh", "-c", script]);
        assert_eq!(r["exit_code"], 0, "{script}: {r}");
        r["stdout"].as_str().unwrap().to_string()
    }

    fn shell_read(&self, id: &str, shell: &str, cursor: u64) -> serde_json::Value {
        let c = cursor.to_string();
        self.ok_json(&[
            "workspace",
            "shell",
            "read",
            id,
            shell,
            "--cursor",
            &c,
            "--wait-for-idle-ms",
            "300",
            "--json",
        ])
    }

    fn shell_type(&self, id: &str, shell: &str, input: &str) {
        self.ok_json(&[
            "workspace",
            "shell",
            "write",
            id,
            shell,
            "--input",
            input,
            "--json",
        ]);
    }

    /// Reads the shell until its transcript contains `want`; the whole transcript.
    fn shell_until(&self, id: &str, shell: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.shell_read(id, shell, 0);
            let out = r["output"].as_str().unwrap().to_string();
            if out.contains(want) {
                return out;
            }
            assert!(Instant::now() < deadline, "no {want:?} in {out:?}");
        }
    }

    fn snapshots(&self, id: &str) -> serde_json::Value {
        self.ok_json(&["workspace", "snapshot", "list", id, "--json"])
    }

    fn delete_all(&self) {
        let list = self.ok_json(&["workspace", "list", "--json"]);
        for w in list["workspaces"].as_array().unwrap() {
            let id = w["workspace_id"].as_str().unwrap();
            self.ok_json(&["workspace", "delete", id, "--json"]);
        }
    }
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_name"].as_str().unwrap().to_string())
        .collect()
}

const SERVE: &str = "python3 -m http.server 8000";
const FETCH: &str = "python3 -c 'import urllib.request;print(urllib.request.urlopen(\"http://127.0.0.1:8000/a.txt\").read().decode())'";

#[test]
fn a_snapshot_of_a_running_workspace_brings_back_the_whole_machine() {
    let e = Env::new();
    let id = e.create();
    // Files in and outside /workspace, a running service, an open shell with state.
    e.sh(
        &id,
        "echo one > a.txt; mkdir -p /opt/tool && echo v1 > /opt/tool/version",
    );
    let before_id = e.sh(&id, "cat /etc/machine-id");
    let out = e.pyro(&[
        "workspace",
        "service",
        "start",
        &id,
        "web",
        "--ready-tcp",
        "127.0.0.1:8000",
        "--",
        "sh",
        "-c",
        SERVE,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = e.pyro(&["workspace", "shell", "open", &id, "--id-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shell = text(&out.stdout).trim().to_string();
    e.shell_type(&id, &shell, "MARK=kept-in-memory; echo typed-before");
    let transcript = e.shell_until(&id, &shell, "typed-before\r\n");
    let cursor = e.shell_read(&id, &shell, 0)["next_cursor"]
        .as_u64()
        .unwrap();

    let r = e.ok_json(&["workspace", "snapshot", "create", &id, "s1", "--json"]);
    let s = &r["snapshot"];
    assert_eq!(s["kind"], "named");
    assert_eq!(s["has_memory"], true, "{r}");
    assert!(s["pause_ms"].as_u64().is_some(), "{r}");
    assert!(s["size_bytes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(s["entry_count"], 1, "{r}");
    assert_eq!(s["bytes_written"], 4, "{r}");
    // The source runs on, unchanged, after the pause.
    assert_eq!(e.sh(&id, FETCH).trim(), "one");

    // Everything changes after the snapshot.
    e.sh(
        &id,
        "echo two > a.txt; echo new > b.txt; echo v2 > /opt/tool/version",
    );
    e.ok_json(&["workspace", "service", "stop", &id, "web", "--json"]);
    e.shell_type(&id, &shell, "MARK=changed; echo typed-after");
    e.shell_until(&id, &shell, "typed-after");

    let w = e.ok_json(&["workspace", "reset", &id, "--snapshot", "s1", "--json"]);
    assert_eq!(w["state"], "started");
    assert_eq!(w["metadata"]["boot_mode"], "snapshot");
    assert_eq!(w["reset_count"], 1);
    assert_eq!(w["command_count"], 0);
    // Files inside and outside /workspace are as they were.
    assert_eq!(
        e.sh(&id, "cat a.txt; ls; cat /opt/tool/version"),
        "one\na.txt\nv1\n"
    );
    // The service runs again (the same process, from memory) and answers.
    let svc = e.ok_json(&["workspace", "service", "status", &id, "web", "--json"]);
    assert_eq!(svc["state"], "running", "{svc}");
    assert_eq!(e.sh(&id, FETCH).trim(), "one");
    // The shell is back with its transcript, cursor and variables.
    let r = e.shell_read(&id, &shell, 0);
    assert!(
        r["output"].as_str().unwrap().starts_with(&transcript),
        "{r}"
    );
    assert!(
        !r["output"].as_str().unwrap().contains("typed-after"),
        "{r}"
    );
    assert_eq!(r["next_cursor"].as_u64().unwrap(), cursor, "{r}");
    e.shell_type(&id, &shell, "echo mark=$MARK");
    e.shell_until(&id, &shell, "mark=kept-in-memory");
    // A new identity and the host's clock.
    let after_id = e.sh(&id, "cat /etc/machine-id");
    assert_ne!(before_id, after_id);
    let guest_now: f64 = e.sh(&id, "date +%s").trim().parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (guest_now - host_now).abs() < 10.0,
        "{guest_now} vs {host_now}"
    );

    // Listing, status, and delete.
    let list = e.snapshots(&id);
    assert_eq!(names(&list), ["baseline", "s1"]);
    assert_eq!(list["snapshots"][0]["deletable"], false);
    let status = e.ok_json(&["workspace", "status", &id, "--json"]);
    assert_eq!(status["snapshot_count"], 1);
    assert_eq!(
        status["snapshot_bytes"].as_u64(),
        list["snapshots"][1]["size_bytes"].as_u64()
    );
    let err = e.err(&["workspace", "snapshot", "create", &id, "s1"]);
    assert!(err.contains("already has a snapshot `s1`"), "{err}");
    let d = e.ok_json(&["workspace", "snapshot", "delete", &id, "s1", "--json"]);
    assert_eq!(d["deleted"], true);
    assert_eq!(names(&e.snapshots(&id)), ["baseline"]);
    let err = e.err(&["workspace", "reset", &id, "--snapshot", "s1"]);
    assert!(err.contains("has no snapshot `s1`"), "{err}");
    // Nothing changed by the refused reset: the workspace still runs.
    assert_eq!(e.sh(&id, "cat a.txt"), "one\n");
    e.delete_all();
}

#[test]
fn forks_diverge_independently() {
    let e = Env::new();
    let id = e.create();
    e.sh(&id, "echo shared > f.txt");
    let r = e.ok_json(&[
        "workspace",
        "fork",
        &id,
        "--count",
        "2",
        "--name",
        "kid",
        "--json",
    ]);
    assert_eq!(r["count"], 2, "{r}");
    assert_eq!(r["has_memory"], true, "{r}");
    let forks: Vec<String> = r["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workspace_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(r["workspaces"][0]["name"], "kid-1");
    assert_eq!(r["workspaces"][1]["name"], "kid-2");
    // The implicit snapshot is gone again.
    assert_eq!(names(&e.snapshots(&id)), ["baseline"]);
    // Each starts as the source was, then goes its own way.
    for (n, f) in forks.iter().enumerate() {
        assert_eq!(e.sh(f, "cat f.txt"), "shared\n");
        e.sh(f, &format!("echo fork{n} > f.txt; echo mine > only{n}.txt"));
    }
    assert_eq!(
        e.sh(&forks[0], "cat f.txt; ls"),
        "fork0\nf.txt\nonly0.txt\n"
    );
    assert_eq!(
        e.sh(&forks[1], "cat f.txt; ls"),
        "fork1\nf.txt\nonly1.txt\n"
    );
    assert_eq!(e.sh(&id, "cat f.txt; ls"), "shared\nf.txt\n");
    // Their kernels' random state and identities differ.
    let ident = |w: &str| {
        e.sh(
            w,
            "cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1",
        )
    };
    let (a, b, c) = (ident(&id), ident(&forks[0]), ident(&forks[1]));
    assert!(a != b && b != c && a != c, "{a}\n{b}\n{c}");
    let ids: Vec<&str> = [&a, &b, &c]
        .iter()
        .map(|s| s.lines().next().unwrap())
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    // A fork is a workspace like any other: its own snapshots and reset.
    assert_eq!(names(&e.snapshots(&forks[0])), ["baseline"]);
    e.ok_json(&["workspace", "reset", &forks[1], "--json"]);
    assert_eq!(e.sh(&forks[1], "ls"), "");
    e.delete_all();
}

#[test]
fn a_fork_carries_secrets_only_when_asked() {
    let e = Env::new();
    let out = e.pyro(&[
        "workspace",
        "create",
        "debian:12",
        "--secret",
        "TOKEN=s3cr3t-value",
        "--id-only",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    // Its memory may hold the value: refused without --with-secrets, nothing made.
    let err = e.err(&["workspace", "fork", &id]);
    assert!(err.contains("with_secrets"), "{err}");
    assert_eq!(
        e.ok_json(&["workspace", "list", "--json"])["count"],
        1,
        "a refused fork made a workspace"
    );
    let r = e.ok_json(&["workspace", "fork", &id, "--with-secrets", "--json"]);
    let fork = r["workspaces"][0]["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r["workspaces"][0]["secrets"][0]["name"], "TOKEN", "{r}");
    let out = e.ok_json(&[
        "workspace",
        "exec",
        &fork,
        "--secret-env",
        "TOKEN",
        "--json",
        "--",
        "sh",
        "-c",
        "echo $TOKEN",
    ]);
    assert_eq!(out["stdout"], "[REDACTED]\n", "{out}");
    // A disk-only snapshot of the stopped source forks without them.
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    e.ok_json(&["workspace", "snapshot", "create", &id, "cold", "--json"]);
    let r = e.ok_json(&["workspace", "fork", &id, "--snapshot", "cold", "--json"]);
    assert_eq!(r["has_memory"], false, "{r}");
    assert_eq!(r["workspaces"][0]["secrets"], serde_json::json!([]), "{r}");
    e.delete_all();
}

#[test]
fn a_snapshot_of_a_stopped_workspace_holds_its_disk() {
    let e = Env::new();
    let id = e.create();
    e.sh(&id, "echo kept > a.txt; echo v1 > /etc/pyro-test");
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    let r = e.ok_json(&["workspace", "snapshot", "create", &id, "disk", "--json"]);
    assert_eq!(r["snapshot"]["has_memory"], false, "{r}");
    assert!(r["snapshot"].get("pause_ms").is_none(), "{r}");
    // Snapshots of a stopped workspace are listed and restored without it running.
    e.ok_json(&["workspace", "start", &id, "--json"]);
    e.sh(&id, "echo changed > a.txt; echo v2 > /etc/pyro-test");
    let w = e.ok_json(&["workspace", "reset", &id, "--snapshot", "disk", "--json"]);
    assert_eq!(w["metadata"]["boot_mode"], "cold");
    assert_eq!(e.sh(&id, "cat a.txt /etc/pyro-test"), "kept\nv1\n");
    // A workspace started from its own disk can be snapshotted with memory too.
    let r = e.ok_json(&["workspace", "snapshot", "create", &id, "warm", "--json"]);
    assert_eq!(r["snapshot"]["has_memory"], true, "{r}");
    e.delete_all();
}

#[test]
fn snapshot_inputs_and_limits_are_checked() {
    let e = Env::new();
    let id = e.create();
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    for bad in ["-x", "a b", ".hidden", &"x".repeat(65), "a/b"] {
        let err = e.err(&["workspace", "snapshot", "create", &id, bad]);
        assert!(err.contains("snapshot_name"), "{bad}: {err}");
    }
    let err = e.err(&["workspace", "snapshot", "create", &id, "baseline"]);
    assert!(err.contains("baseline"), "{err}");
    let err = e.err(&["workspace", "snapshot", "delete", &id, "baseline"]);
    assert!(err.contains("cannot be deleted"), "{err}");
    let err = e.err(&["workspace", "snapshot", "delete", &id, "nope"]);
    assert!(err.contains("has no snapshot `nope`"), "{err}");
    let err = e.err(&["workspace", "snapshot", "list", "nope-ws"]);
    assert!(err.contains("nope-ws"), "{err}");
    let err = e.err(&["workspace", "fork", &id, "--count", "17"]);
    assert!(err.contains("count") && err.contains("16"), "{err}");
    // The count limit (disk-only snapshots of a stopped workspace are quick).
    for n in 0..pyro_core::workspace::MAX_SNAPSHOTS {
        e.ok_json(&[
            "workspace",
            "snapshot",
            "create",
            &id,
            &format!("s{n}"),
            "--json",
        ]);
    }
    let err = e.err(&["workspace", "snapshot", "create", &id, "one-more"]);
    assert!(err.contains("the most it may keep"), "{err}");
    assert_eq!(
        names(&e.snapshots(&id)).len(),
        pyro_core::workspace::MAX_SNAPSHOTS + 1
    );
    // The size limit.
    e.ok_json(&["workspace", "snapshot", "delete", &id, "s0", "--json"]);
    let out = e
        .cmd()
        .env("PYRO_MAX_SNAPSHOT_BYTES", "1")
        .args(["workspace", "snapshot", "create", &id, "big"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("PYRO_MAX_SNAPSHOT_BYTES"),
        "{}",
        text(&out.stderr)
    );
    assert!(!names(&e.snapshots(&id)).contains(&"big".to_string()));
    e.delete_all();
}

/// Runs `pyro args` with fault point `point` armed: the process kills itself there.
fn killed_at(e: &Env, point: &str, args: &[&str]) {
    let out = e
        .cmd()
        .env("PYRO_FAULT", point)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "{point}: {}",
        text(&out.stderr)
    );
}

/// Leftovers of dead snapshot operations in the workspace's snapshots directory.
fn leftovers(e: &Env, id: &str) -> Vec<String> {
    std::fs::read_dir(e.state.path().join("workspaces").join(id).join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|x| x.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_snapshot_operation_leaves_the_old_state_or_the_new() {
    let e = Env::new();
    let id = e.create();
    e.sh(&id, "echo data > a.txt");
    // Killed while the guest is paused: the next call resumes it; no snapshot.
    killed_at(
        &e,
        "snapshot-create-paused",
        &["workspace", "snapshot", "create", &id, "p"],
    );
    assert_eq!(e.sh(&id, "cat a.txt"), "data\n");
    assert_eq!(names(&e.snapshots(&id)), ["baseline"]);
    assert_eq!(leftovers(&e, &id), Vec::<String>::new());
    // Killed once built, before it is put in place: not listed, swept.
    killed_at(
        &e,
        "snapshot-create-built",
        &["workspace", "snapshot", "create", &id, "b"],
    );
    assert_eq!(names(&e.snapshots(&id)), ["baseline"]);
    assert_eq!(leftovers(&e, &id), Vec::<String>::new());
    // The same name works afterwards, and the workspace is intact.
    e.ok_json(&["workspace", "snapshot", "create", &id, "b", "--json"]);
    assert_eq!(e.sh(&id, "cat a.txt"), "data\n");
    // Killed in the middle of a delete: gone, swept.
    killed_at(
        &e,
        "snapshot-delete-renamed",
        &["workspace", "snapshot", "delete", &id, "b"],
    );
    assert_eq!(names(&e.snapshots(&id)), ["baseline"]);
    assert_eq!(leftovers(&e, &id), Vec::<String>::new());
    e.delete_all();
}
