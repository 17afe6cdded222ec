//! Persistent workspaces end to end through the `pyro` binary, on real sandboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Env, processes_in, text};

impl Env {
    fn new() -> Self {
        Self::with_prefix("pyro-ws-test-")
    }

    /// Asserts that no process runs in the state dir and no workspace dirs are left.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = processes_in(self.state.path());
            let dirs: Vec<_> = std::fs::read_dir(self.state.path().join("workspaces"))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if procs.is_empty() && dirs.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "leftovers: {procs:?} {dirs:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A seed tree with the things the reference loses: +x, in-tree symlinks, a hard link, an
/// empty directory, a file without a final newline.
fn make_seed(root: &Path) -> PathBuf {
    let seed = root.join("seed");
    std::fs::create_dir_all(seed.join("bin")).unwrap();
    std::fs::create_dir_all(seed.join("empty")).unwrap();
    std::fs::create_dir_all(seed.join("src")).unwrap();
    std::fs::write(
        seed.join("bin/run.sh"),
        "#!/bin/sh\necho running from $(pwd)\n",
    )
    .unwrap();
    std::fs::set_permissions(
        seed.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/run.sh", seed.join("run")).unwrap();
    std::fs::hard_link(seed.join("bin/run.sh"), seed.join("bin/run-hard.sh")).unwrap();
    std::fs::write(seed.join("src/main.txt"), "line 1\nline 2\nline 3\n").unwrap();
    std::fs::write(seed.join("src/no-newline.txt"), "last line without newline").unwrap();
    std::fs::write(seed.join("src/old-name.txt"), "to be renamed\n").unwrap();
    std::fs::write(seed.join("src/delete-me.txt"), "bye\n").unwrap();
    seed
}

fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap()
}

#[test]
fn the_whole_workspace_loop() {
    let e = Env::new();
    let seed = make_seed(e.work.path());
    let seed_s = seed.to_str().unwrap();
    let w = e.ok_json(&[
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        seed_s,
        "--name",
        "loop test",
        "--label",
        "team=agents",
        "--json",
    ]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["state"], "started");
    assert_eq!(w["name"], "loop test");
    assert_eq!(w["labels"]["team"], "agents");
    assert_eq!(w["workspace_seed"]["mode"], "directory");
    assert_eq!(w["workspace_seed"]["entry_count"], 10);

    // The executable bit, symlink and cwd survive seeding.
    let r = e.ok_json(&["workspace", "exec", &id, "--json", "--", "./run"]);
    assert_eq!(r["stdout"], "running from /workspace\n");
    assert_eq!(r["sequence"], 1);
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "stat -c '%h %a' bin/run.sh; test -d empty && echo empty-dir; cat src/no-newline.txt",
    ]);
    assert_eq!(r["stdout"], "2 755\nempty-dir\nlast line without newline");

    // Files: write, read, list.
    let r = e.ok_json(&[
        "workspace",
        "file",
        "write",
        &id,
        "notes/todo.md",
        "--text",
        "- ship it\n",
        "--json",
    ]);
    assert_eq!(r["bytes_written"], 10);
    let r = e.ok_json(&[
        "workspace",
        "file",
        "read",
        &id,
        "/workspace/notes/todo.md",
        "--json",
    ]);
    assert_eq!(r["content"], "- ship it\n");
    let r = e.ok_json(&["workspace", "file", "list", &id, "src", "--json"]);
    let paths: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/workspace/src/delete-me.txt",
            "/workspace/src/main.txt",
            "/workspace/src/no-newline.txt",
            "/workspace/src/old-name.txt"
        ]
    );

    // A real `git diff`: modify, create, delete, rename, and a no-newline edit.
    let repo = e.work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let copy = Command::new("cp")
        .args(["-a", &format!("{seed_s}/."), repo.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(copy.success());
    assert!(git(&repo, &["init", "-q"]).status.success());
    assert!(git(&repo, &["add", "-A"]).status.success());
    let commit = git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-qm",
            "base",
        ],
    );
    assert!(commit.status.success(), "{}", text(&commit.stderr));
    std::fs::write(repo.join("src/main.txt"), "line 1\nline two\nline 3\n").unwrap();
    std::fs::write(repo.join("src/new.txt"), "brand new\n").unwrap();
    std::fs::remove_file(repo.join("src/delete-me.txt")).unwrap();
    std::fs::rename(repo.join("src/old-name.txt"), repo.join("src/new-name.txt")).unwrap();
    std::fs::write(
        repo.join("src/no-newline.txt"),
        "last line, now with newline\n",
    )
    .unwrap();
    assert!(git(&repo, &["add", "-A"]).status.success());
    let diff = git(&repo, &["diff", "--cached", "-M"]);
    let patch = text(&diff.stdout);
    assert!(patch.contains("rename from"), "{patch}");
    let patch_file = e.work.path().join("change.patch");
    std::fs::write(&patch_file, &patch).unwrap();
    let r = e.ok_json(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch-file",
        patch_file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["changed"], true);
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "cat src/main.txt src/new.txt src/new-name.txt src/no-newline.txt; ls src",
    ]);
    assert_eq!(
        r["stdout"],
        "line 1\nline two\nline 3\nbrand new\nto be renamed\nlast line, now with newline\nmain.txt\nnew-name.txt\nnew.txt\nno-newline.txt\n"
    );

    // A failing patch names the hunk and changes nothing.
    let bad = "--- a/src/main.txt\n+++ b/src/main.txt\n@@ -1,2 +1,2 @@\n-nope\n+yes\n line two\n";
    let err = e.err(&["workspace", "patch", "apply", &id, "--patch", bad]);
    assert!(err.contains("hunk 1"), "{err}");

    // Diff against the baseline is a patch `git apply` accepts on the seed.
    let d = e.ok_json(&["workspace", "diff", &id, "--json"]);
    assert_eq!(d["changed"], true);
    let dpatch = d["patch"].as_str().unwrap();
    let check_dir = e.work.path().join("check");
    let copy = Command::new("cp")
        .args(["-a", seed_s, check_dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::write(e.work.path().join("ws.patch"), dpatch).unwrap();
    let applied = Command::new("git")
        .args([
            "apply",
            "--whitespace=nowarn",
            e.work.path().join("ws.patch").to_str().unwrap(),
        ])
        .current_dir(&check_dir)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "git apply refused the diff: {}\n{dpatch}",
        text(&applied.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(check_dir.join("notes/todo.md")).unwrap(),
        "- ship it\n"
    );
    assert_eq!(
        std::fs::read_to_string(check_dir.join("src/main.txt")).unwrap(),
        "line 1\nline two\nline 3\n"
    );

    // Export the whole tree: modes, links and the empty dir survive.
    let out_dir = e.work.path().join("exported");
    let r = e.ok_json(&[
        "workspace",
        "export",
        &id,
        "/workspace",
        "--output",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["artifact_type"], "directory");
    let m = std::fs::metadata(out_dir.join("bin/run.sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out_dir.join("run")).unwrap(),
        Path::new("bin/run.sh")
    );
    assert!(out_dir.join("empty").is_dir());
    let err = e.err(&[
        "workspace",
        "export",
        &id,
        "/workspace",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(err.contains("already exists"), "{err}");

    // Reset: back to the baseline, history cleared.
    let r = e.ok_json(&["workspace", "reset", &id, "--json"]);
    assert_eq!(r["reset_count"], 1);
    assert_eq!(r["command_count"], 0);
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "cat src/main.txt; ls notes 2>&1 || true",
    ]);
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .starts_with("line 1\nline 2\nline 3\n"),
        "{}",
        r["stdout"]
    );
    assert_eq!(r["sequence"], 1);

    // Stop and start keep what was written.
    e.ok_json(&[
        "workspace",
        "file",
        "write",
        &id,
        "persist.txt",
        "--text",
        "still here",
        "--json",
    ]);
    let s = e.ok_json(&["workspace", "stop", &id, "--json"]);
    assert_eq!(s["state"], "stopped");
    let err = e.err(&["workspace", "exec", &id, "--", "true"]);
    assert!(err.contains("is stopped"), "{err}");
    let s = e.ok_json(&["workspace", "start", &id, "--json"]);
    assert_eq!(s["state"], "started");
    let r = e.ok_json(&["workspace", "file", "read", &id, "persist.txt", "--json"]);
    assert_eq!(r["content"], "still here");

    let logs = e.ok_json(&["workspace", "logs", &id, "--json"]);
    assert_eq!(logs["total"], 1);
    let d = e.ok_json(&["workspace", "delete", &id, "--json"]);
    assert_eq!(d["deleted"], true);
    let err = e.err(&["workspace", "status", &id]);
    assert!(err.contains("unknown workspace"), "{err}");
    e.assert_clean();
}

#[test]
fn two_processes_hammering_one_workspace() {
    let e = Env::new();
    let id = {
        let out = e.pyro(&["workspace", "create", "debian:12", "--id-only"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let children: Vec<_> = (0..2)
        .map(|p| {
            let script = format!(
                "for i in $(seq 1 8); do {exe} workspace exec {id} --json -- sh -c \"echo p{p}-$i >> /workspace/log.txt\" >/dev/null || exit 1; \
                 {exe} workspace file write {id} p{p}-$i.txt --text $i >/dev/null || exit 2; done",
                exe = env!("CARGO_BIN_EXE_pyro"),
            );
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("PYRO_STATE_DIR", e.state.path())
                .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let logs = e.ok_json(&["workspace", "logs", &id, "--json", "--limit", "100"]);
    assert_eq!(logs["total"], 16);
    let mut seqs: Vec<u64> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sequence"].as_u64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "wc -l < log.txt; ls p*.txt | wc -l",
    ]);
    assert_eq!(r["stdout"], "16\n16\n");
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

#[test]
fn refused_inputs_change_nothing() {
    let e = Env::new();
    let out = e.pyro(&["workspace", "create", "debian:12", "--id-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    for (args, needle) in [
        (
            vec!["workspace", "file", "read", &id, "../etc/passwd"],
            "contains `..`",
        ),
        (
            vec!["workspace", "file", "read", &id, "/etc/passwd"],
            "outside /workspace",
        ),
        (
            vec![
                "workspace",
                "file",
                "write",
                &id,
                "/etc/evil",
                "--text",
                "x",
            ],
            "outside /workspace",
        ),
        (
            vec!["workspace", "file", "read", &id, "missing.txt"],
            "missing.txt",
        ),
        (vec!["workspace", "update", &id], "nothing to change"),
        (
            vec!["workspace", "logs", &id, "--limit", "1001"],
            "limit must be between 1 and 1000, got 1001",
        ),
        (
            vec!["workspace", "logs", &id, "--limit", "0"],
            "limit must be between 1 and 1000, got 0",
        ),
        (
            vec!["workspace", "update", &id, "--label", "bad key=x"],
            "label",
        ),
        (
            vec!["workspace", "status", "ffffffffffff"],
            "unknown workspace",
        ),
        (vec!["workspace", "exec", &id], "a command is required"),
        (
            vec!["workspace", "sync", "push", &id, "/no/such/dir"],
            "cannot be read",
        ),
        (
            vec!["workspace", "patch", "apply", &id, "--patch", "not a patch"],
            "patch",
        ),
    ] {
        let err = e.err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A symlink pointing out of /workspace cannot be used to write or read outside.
    e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--",
        "ln",
        "-s",
        "/etc",
        "/workspace/evil",
    ]);
    let err = e.err(&[
        "workspace",
        "file",
        "write",
        &id,
        "evil/pwned",
        "--text",
        "x",
    ]);
    assert!(err.contains("evil"), "{err}");
    let err = e.err(&["workspace", "file", "read", &id, "evil/hostname"]);
    assert!(err.contains("evil"), "{err}");
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "test -e /etc/pwned && echo yes || echo no",
    ]);
    assert_eq!(r["stdout"], "no\n");
    // Creation refuses a bad seed and leaves nothing behind.
    let before = std::fs::read_dir(e.state.path().join("workspaces"))
        .unwrap()
        .count();
    let err = e.err(&[
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        "/no/such/seed",
    ]);
    assert!(err.contains("cannot be read"), "{err}");
    let err = e.err(&["workspace", "create", "debian:12", "--ttl-seconds", "5"]);
    assert!(err.contains("ttl_seconds"), "{err}");
    assert_eq!(
        std::fs::read_dir(e.state.path().join("workspaces"))
            .unwrap()
            .count(),
        before
    );
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

#[test]
fn a_crashed_vmm_is_reported_and_start_recovers_the_data() {
    let e = Env::new();
    let out = e.pyro(&["workspace", "create", "debian:12", "--id-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    e.ok_json(&[
        "workspace",
        "file",
        "write",
        &id,
        "keep.txt",
        "--text",
        "precious",
        "--json",
    ]);
    e.ok_json(&["workspace", "exec", &id, "--json", "--", "sync"]);
    // Kill every process of this workspace (the VMM and its relay) behind pyro's back.
    for pid in processes_in(e.state.path()) {
        // SAFETY: killing a process this test's pyro started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = e.ok_json(&["workspace", "status", &id, "--json"]);
    assert_eq!(s["state"], "stopped");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly"),
        "{s}"
    );
    let s = e.ok_json(&["workspace", "start", &id, "--json"]);
    assert_eq!(s["state"], "started");
    let r = e.ok_json(&["workspace", "file", "read", &id, "keep.txt", "--json"]);
    assert_eq!(r["content"], "precious");
    // TTL is visible and extendable.
    let s = e.ok_json(&[
        "workspace",
        "update",
        &id,
        "--ttl-seconds",
        "7200",
        "--json",
    ]);
    let left = s["ttl_remaining_seconds"].as_f64().unwrap();
    assert!((7190.0..=7201.0).contains(&left), "{left}");
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

#[test]
fn an_expired_ttl_stops_the_workspace_by_itself_and_keeps_its_data() {
    let e = Env::new();
    let out = e.pyro(&[
        "workspace",
        "create",
        "debian:12",
        "--ttl-seconds",
        "60",
        "--id-only",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    e.ok_json(&[
        "workspace",
        "file",
        "write",
        &id,
        "keep.txt",
        "--text",
        "kept",
        "--json",
    ]);
    // Nobody calls in: the watchdog alone must stop the VM when the TTL runs out.
    let vmm_gone = Instant::now() + Duration::from_secs(120);
    let vm_dir = e.state.path().join("workspaces").join(&id).join("vm");
    loop {
        let vmm_running = processes_in(&vm_dir).into_iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu"))
        });
        if !vmm_running {
            break;
        }
        assert!(Instant::now() < vmm_gone, "the VM still runs after its TTL");
        std::thread::sleep(Duration::from_secs(1));
    }
    let s = e.ok_json(&["workspace", "status", &id, "--json"]);
    assert_eq!(s["state"], "stopped");
    assert!(
        s["last_error"].as_str().unwrap().contains("TTL ran out"),
        "{s}"
    );
    assert_eq!(s["ttl_remaining_seconds"], 0.0);
    let err = e.err(&["workspace", "start", &id]);
    assert!(err.contains("TTL is used up"), "{err}");
    e.ok_json(&["workspace", "update", &id, "--ttl-seconds", "600", "--json"]);
    e.ok_json(&["workspace", "start", &id, "--json"]);
    let r = e.ok_json(&["workspace", "file", "read", &id, "keep.txt", "--json"]);
    assert_eq!(r["content"], "kept");
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

#[test]
fn sixteen_workspaces_run_at_once() {
    let e = Env::new();
    let children: Vec<_> = (0..16)
        .map(|_| {
            e.cmd()
                .args([
                    "workspace",
                    "create",
                    "debian:12",
                    "--mem-mib",
                    "256",
                    "--id-only",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_string()
        })
        .collect();
    let list = e.ok_json(&["workspace", "list", "--json"]);
    assert_eq!(list["count"], 16);
    assert!(
        list["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "started")
    );
    for id in &ids {
        let r = e.ok_json(&["workspace", "exec", id, "--json", "--", "echo", id]);
        assert_eq!(r["stdout"], format!("{id}\n"));
    }
    for id in &ids {
        e.ok_json(&["workspace", "delete", id, "--json"]);
    }
    e.assert_clean();
}

#[test]
fn an_interrupted_create_is_reported_and_reset_recovers_it() {
    let e = Env::new();
    let mut child = e
        .cmd()
        .args(["workspace", "create", "debian:12", "--id-only"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the CLI once the VM is booting.
    let root = e.state.path().join("workspaces");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let booting = std::fs::read_dir(&root).ok().and_then(|d| {
            d.flatten()
                .find(|w| w.path().join("vm").join("console.log").exists())
                .map(|w| w.file_name().to_string_lossy().into_owned())
        });
        if let Some(id) = booting {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the workspace never started booting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    let _ = child.wait();
    let s = e.ok_json(&["workspace", "status", &id, "--json"]);
    assert_eq!(s["state"], "error", "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("interrupted"),
        "{s}"
    );
    let err = e.err(&["workspace", "start", &id]);
    assert!(err.contains("interrupted"), "{err}");
    let s = e.ok_json(&["workspace", "reset", &id, "--json"]);
    assert_eq!(s["state"], "started");
    let r = e.ok_json(&["workspace", "exec", &id, "--json", "--", "pwd"]);
    assert_eq!(r["stdout"], "/workspace\n");
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

#[test]
fn a_tarball_seed_and_a_diff_with_symlinks_round_trip_through_patch_apply() {
    let e = Env::new();
    let seed = make_seed(e.work.path());
    // The most common way to make a tarball: `tar -C DIR -czf x.tgz .` (members start `./`).
    let tgz = e.work.path().join("seed.tgz");
    let st = Command::new("tar")
        .args([
            "-C",
            seed.to_str().unwrap(),
            "-czf",
            tgz.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let w = e.ok_json(&[
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        tgz.to_str().unwrap(),
        "--json",
    ]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["workspace_seed"]["mode"], "tar_archive");
    // Change things, including symlinks, then capture the diff.
    e.ok_json(&[
        "workspace", "exec", &id, "--json", "--shell", "--",
        "ln -s src/main.txt main-link && rm run && ln -s bin/run-hard.sh run && chmod -x bin/run-hard.sh && echo more >> src/main.txt",
    ]);
    let d = e.ok_json(&["workspace", "diff", &id, "--json"]);
    let patch = d["patch"].as_str().unwrap().to_string();
    assert!(patch.contains("new file mode 120000"), "{patch}");
    // Back to the baseline, then re-apply the diff: the same tree must come back.
    e.ok_json(&["workspace", "reset", &id, "--json"]);
    e.ok_json(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch",
        &patch,
        "--json",
    ]);
    let r = e.ok_json(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--shell",
        "--",
        "readlink main-link run; stat -c %a bin/run-hard.sh; tail -1 src/main.txt",
    ]);
    assert_eq!(r["stdout"], "src/main.txt\nbin/run-hard.sh\n644\nmore\n");
    let d = e.ok_json(&["workspace", "diff", &id, "--json"]);
    assert_eq!(d["patch"].as_str().unwrap(), patch);
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}

/// What a workspace's guest says about itself: 32 random bytes, its boot id and machine
/// id, its clock and the seed file.
fn guest_identity(e: &Env, id: &str) -> (String, String, f64, String) {
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  echo $(cat /proc/sys/kernel/random/boot_id)-$(cat /etc/machine-id); \
                  date +%s.%N; cat src/main.txt | head -1";
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let r = e.ok_json(&["workspace", "exec", id, "--json", "--", "sh", "-c", script]);
    assert_eq!(r["exit_code"], 0, "{r}");
    let out = r["stdout"].as_str().unwrap().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    let guest: f64 = lines[2].parse().unwrap();
    (
        lines[0].to_string(),
        lines[1].to_string(),
        guest - before,
        lines[3].to_string(),
    )
}

#[test]
fn warm_workspaces_are_their_own_and_keep_their_data_across_a_cold_restart() {
    let e = Env::new();
    let seed = make_seed(e.work.path());
    let seed = seed.to_str().unwrap();
    // Its own guest memory size: its own snapshot, built by the first create.
    let create = |e: &Env| {
        e.ok_json(&[
            "workspace",
            "create",
            "debian:12",
            "--mem-mib",
            "288",
            "--seed-path",
            seed,
            "--json",
        ])
    };
    let a = create(&e);
    let b = create(&e);
    for w in [&a, &b] {
        assert_eq!(w["state"], "started", "{w}");
        assert_eq!(w["metadata"]["boot_mode"], "warm", "{w}");
    }
    let (a_id, b_id) = (
        a["workspace_id"].as_str().unwrap(),
        b["workspace_id"].as_str().unwrap(),
    );
    let (ra, boot_a, skew_a, seed_a) = guest_identity(&e, a_id);
    let (rb, boot_b, skew_b, seed_b) = guest_identity(&e, b_id);
    assert_eq!(ra.len(), 64);
    assert_ne!(
        ra, rb,
        "two workspaces from one snapshot share random numbers"
    );
    assert_ne!(
        boot_a, boot_b,
        "two workspaces from one snapshot share a boot id"
    );
    let machine_id = |ids: &str| ids.rsplit_once('-').unwrap().1.to_string();
    for ids in [&boot_a, &boot_b] {
        assert_eq!(machine_id(ids).len(), 32, "{ids}");
    }
    assert_ne!(
        machine_id(&boot_a),
        machine_id(&boot_b),
        "two workspaces from one snapshot share a machine id"
    );
    for skew in [skew_a, skew_b] {
        assert!(skew.abs() < 5.0, "guest clock off by {skew} s");
    }
    assert_eq!(seed_a, "line 1");
    assert_eq!(seed_b, "line 1");

    // What a warm workspace writes is on its own disk: a stop and a cold start keep it.
    let w = e.ok_json(&[
        "workspace",
        "exec",
        a_id,
        "--json",
        "--",
        "sh",
        "-c",
        "echo kept > note.txt && head -c 3000000 /dev/urandom > blob && md5sum blob",
    ]);
    assert_eq!(w["exit_code"], 0, "{w}");
    let sum = w["stdout"].as_str().unwrap().to_string();
    e.ok_json(&["workspace", "stop", a_id, "--json"]);
    let started = e.ok_json(&["workspace", "start", a_id, "--json"]);
    assert_eq!(started["metadata"]["boot_mode"], "cold", "{started}");
    let r = e.ok_json(&[
        "workspace",
        "exec",
        a_id,
        "--json",
        "--",
        "sh",
        "-c",
        "cat note.txt && md5sum blob",
    ]);
    assert_eq!(r["stdout"], format!("kept\n{sum}"));
    // B is untouched by A's writes.
    let out = e.pyro(&["workspace", "exec", b_id, "--", "ls", "note.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A reset restores again, from the baseline.
    let reset = e.ok_json(&["workspace", "reset", a_id, "--json"]);
    assert_eq!(reset["metadata"]["boot_mode"], "warm", "{reset}");
    let r = e.ok_json(&[
        "workspace",
        "exec",
        a_id,
        "--json",
        "--",
        "sh",
        "-c",
        "ls note.txt 2>/dev/null; cat src/main.txt",
    ]);
    assert_eq!(r["stdout"], "line 1\nline 2\nline 3\n");

    // PYRO_SNAPSHOTS=0 boots cold.
    let out = e
        .cmd()
        .env("PYRO_SNAPSHOTS", "0")
        .args([
            "workspace",
            "create",
            "debian:12",
            "--mem-mib",
            "288",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["metadata"]["boot_mode"], "cold", "{c}");

    for id in [a_id, b_id, c["workspace_id"].as_str().unwrap()] {
        e.ok_json(&["workspace", "delete", id, "--json"]);
    }
    e.assert_clean();
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn disk_tools_read_a_stopped_workspace_without_changing_its_disk() {
    let e = Env::new();
    let out = e.pyro(&["workspace", "create", "debian:12", "--id-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    // Odd names, a long symlink, a FIFO, and a base file deleted (a whiteout).
    let script = "set -e; mkdir -p /workspace/d && cd /workspace/d \
        && printf spaced > 'with space.txt' \
        && printf nl > \"$(printf 'new\\nline')\" \
        && printf bad > \"$(printf 'bad\\377')\" \
        && ln -s \"$(printf 'x%.0s' $(seq 200))\" long \
        && mkfifo fifo && rm /etc/issue && sync";
    let r = e.ok_json(&["workspace", "exec", &id, "--json", "--", "sh", "-c", script]);
    assert_eq!(r["exit_code"], 0, "{r}");
    // A started workspace is refused, with the way out.
    let err = e.err(&["workspace", "disk", "list", &id]);
    assert!(err.contains("stop it first"), "{err}");
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    let upper = e
        .state
        .path()
        .join("workspaces")
        .join(&id)
        .join("upper.ext4");
    let before = sha256_file(&upper);

    let l = e.ok_json(&["workspace", "disk", "list", &id, "d", "--json"]);
    let entries = l["entries"].as_array().unwrap();
    let paths: Vec<&str> = entries
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/workspace/d/bad\\xff",
            "/workspace/d/fifo",
            "/workspace/d/long",
            "/workspace/d/new\nline",
            "/workspace/d/with space.txt",
        ]
    );
    let long = &entries[2];
    assert_eq!(long["link_target"].as_str().unwrap().len(), 200);
    assert_eq!(entries[1]["file_type"], "fifo");
    // Listed paths read back.
    for (p, want) in [(paths[0], "bad"), (paths[3], "nl"), (paths[4], "spaced")] {
        let r = e.ok_json(&["workspace", "disk", "read", &id, p, "--json"]);
        assert_eq!(r["content"], want, "{p}");
    }
    // The merged root: the deleted base file is gone, the others are there.
    let l = e.ok_json(&["workspace", "disk", "list", &id, "/etc", "--json"]);
    let etc: Vec<&str> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert!(!etc.contains(&"/etc/issue"), "{etc:?}");
    assert!(etc.contains(&"/etc/passwd"), "{etc:?}");
    let r = e.ok_json(&[
        "workspace",
        "disk",
        "read",
        &id,
        "/usr/lib/os-release",
        "--json",
    ]);
    assert!(r["content"].as_str().unwrap().contains("Debian"), "{r}");
    assert_eq!(
        sha256_file(&upper),
        before,
        "the disk tools changed the disk"
    );

    // Export: a sparse copy that e2fsck finds clean.
    let copy = e.work.path().join("out/disk.ext4");
    let x = e.ok_json(&[
        "workspace",
        "disk",
        "export",
        &id,
        "--output",
        copy.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(x["disk_format"], "ext4");
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(x["bytes_written"].as_u64().unwrap(), meta.len());
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < meta.len() / 4, "not sparse: {meta:?}");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", text(&fsck.stdout));
    // The output must not exist.
    let err = e.err(&[
        "workspace",
        "disk",
        "export",
        &id,
        "--output",
        copy.to_str().unwrap(),
    ]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(sha256_file(&upper), before);
    e.ok_json(&["workspace", "delete", &id, "--json"]);
    e.assert_clean();
}
