//! A hostile guest, end to end through the `pyro` CLI (`--json`), on real sandboxes.
//!
//! As root in the guest the tests build hostile trees in `/workspace` (symlinks to `/etc`
//! and `..` chains, symlink loops, FIFOs, devices, sockets, 255-byte names, paths past
//! `PATH_MAX`, non-UTF-8 names, 20,000 files, a 20 MiB file, a 15 TiB sparse file, a full
//! disk) and run every host operation that reads guest data against them: `diff`, `export`
//! (a file, a directory, the whole of `/workspace`), `file read`, `file list --recursive`,
//! `patch apply`, `logs`, `sync push` onto them, and `reset`. They also fork bomb and
//! memory bomb the guest, and freeze its VMM.
//!
//! Every call runs under a deadline ([`CALL_TIMEOUT`]: a hang fails the test) and must end
//! with exit code 0 and a correct result, or exit code 1 and a JSON error (`ok: false`, an
//! `error_kind`, a message naming what was wrong); never a signal. Exports go to a fresh
//! path beside an empty sibling directory that must stay empty, and no staging directory or
//! spool may be left behind. The `pyro` process's peak RSS (from `wait4`) is checked where
//! the guest chooses sizes.
//!
//! Observed here (QEMU/TCG, 2 cores, the whole file in about a minute, tests in
//! parallel): see the "Hostile guest" section of docs/security.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any single call may take before it counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// Peak RSS allowed to a `pyro` process reading hostile guest data, KiB.
const MAX_RSS_KIB: i64 = 600 * 1024;

struct Env {
    state: tempfile::TempDir,
    work: tempfile::TempDir,
}

/// One finished `pyro` call.
struct Call {
    what: String,
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    /// Peak resident set of the `pyro` process, KiB.
    max_rss_kib: i64,
    elapsed: Duration,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not JSON ({e}): {}\nstderr: {}",
                self.what,
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }

    /// Asserts success; returns the result.
    fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            0,
            "{} failed: {}\n{}",
            self.what,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self.json()
    }

    /// Asserts a clean JSON failure; returns `(error_kind, error)`.
    fn err(&self) -> (String, String) {
        assert_eq!(
            self.code,
            1,
            "{} should fail: {}\n{}",
            self.what,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        let v = self.json();
        assert_eq!(v["ok"], false, "{}: {v}", self.what);
        let kind = v["error_kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error_kind: {v}", self.what))
            .to_string();
        let msg = v["error"].as_str().unwrap().to_string();
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "{}: {msg:?}",
            self.what
        );
        (kind, msg)
    }

    /// Asserts a failure of `kind` whose message contains every one of `parts`.
    fn err_with(&self, kind: &str, parts: &[&str]) -> String {
        let (k, msg) = self.err();
        assert_eq!(k, kind, "{}: {msg}", self.what);
        for p in parts {
            assert!(msg.contains(p), "{}: {msg:?} lacks {p:?}", self.what);
        }
        msg
    }
}

impl Env {
    fn new() -> Self {
        Self {
            state: tempfile::Builder::new()
                .prefix("pyro-hostile-test-")
                .tempdir()
                .unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `pyro ARGS --json` with `env`, under [`CALL_TIMEOUT`], and checks that it ended
    /// by itself with exit code 0 or 1 (exec passes its command's code through: see
    /// [`Env::exec`]).
    fn call_env(&self, args: &[&str], env: &[(&str, &str)]) -> Call {
        let call = self.spawn(args, env, true);
        assert!(
            call.code == 0 || call.code == 1,
            "{}: exit code {}: {}",
            call.what,
            call.code,
            call.stderr
        );
        call
    }

    fn call(&self, args: &[&str]) -> Call {
        self.call_env(args, &[])
    }

    /// Spawns the call and waits for it with `wait4`, for its peak RSS; kills it and fails
    /// the test past [`CALL_TIMEOUT`].
    fn spawn(&self, args: &[&str], env: &[(&str, &str)], json: bool) -> Call {
        let what = format!("pyro {}", args.join(" "));
        let what: String = what.chars().take(200).collect();
        // `--json` before a `--` that starts a guest command.
        let mut argv: Vec<&str> = args.to_vec();
        if json {
            let at = argv.iter().position(|a| *a == "--").unwrap_or(argv.len());
            argv.insert(at, "--json");
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pyro"));
        cmd.args(&argv)
            .env("PYRO_STATE_DIR", self.state.path())
            .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
            .env_remove("PYRO_BACKEND")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let err_reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        let (status, usage) = loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 on our own child with valid out-pointers; WNOHANG never blocks.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            assert!(r >= 0, "{what}: wait4: {}", std::io::Error::last_os_error());
            if r == pid {
                break (status, usage);
            }
            if started.elapsed() > CALL_TIMEOUT {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("{what}: still running after {CALL_TIMEOUT:?} (a hang)");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The child is reaped: std must not wait for it again.
        std::mem::forget(child);
        let stdout = out_reader.join().unwrap();
        let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
        assert!(
            libc::WIFEXITED(status),
            "{what}: killed by signal {} (a crash): {stderr}",
            libc::WTERMSIG(status)
        );
        Call {
            what,
            code: libc::WEXITSTATUS(status),
            stdout,
            stderr,
            max_rss_kib: usage.ru_maxrss,
            elapsed: started.elapsed(),
        }
    }

    fn create(&self) -> String {
        let w = self.call(&["workspace", "create", "debian:12-base"]).ok();
        assert_eq!(w["state"], "started");
        w["workspace_id"].as_str().unwrap().to_string()
    }

    /// Runs a shell script in the guest as root; returns the result (any exit code).
    fn exec(&self, id: &str, timeout_s: u32, script: &str) -> Value {
        let t = timeout_s.to_string();
        let args = [
            "workspace",
            "exec",
            id,
            "--timeout-seconds",
            &t,
            "--shell",
            "--",
            script,
        ];
        let call = self.spawn(&args, &[], true);
        let v = call.json();
        assert!(
            v.get("ok") != Some(&Value::Bool(false)),
            "{}: {v}",
            call.what
        );
        v
    }

    /// Like [`Env::exec`], asserting exit code 0; returns stdout.
    fn sh(&self, id: &str, script: &str) -> String {
        let v = self.exec(id, 120, script);
        assert_eq!(v["exit_code"], 0, "{script}: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    fn status(&self, id: &str) -> Value {
        self.call(&["workspace", "status", id]).ok()
    }

    /// No spool of any call is left in the workspace's directory.
    fn assert_no_spools(&self, id: &str) {
        let dir = self.state.path().join("workspaces").join(id);
        let spools: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".spool"))
            .collect();
        assert!(spools.is_empty(), "spools left: {spools:?}");
    }

    /// The VMM (QEMU) process of workspace `id`.
    fn vmm_pid(&self, id: &str) -> i32 {
        let vm = self.state.path().join("workspaces").join(id).join("vm");
        pyro_core::host::processes_with_cwd_in(&vm)
            .into_iter()
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("qemu"))
            })
            .unwrap_or_else(|| panic!("no VMM process for {id}")) as i32
    }
}

impl Drop for Env {
    /// A failed test must not leave workspaces running (their VMs run detached).
    fn drop(&mut self) {
        for pid in pyro_core::host::processes_with_cwd_in(self.state.path()) {
            // SAFETY: kill(2) on a process of this test's own state directory; SIGCONT
            // first in case the test had stopped it.
            unsafe {
                libc::kill(pid as i32, libc::SIGCONT);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A directory for one case's exports, with an empty sibling that must stay empty.
struct Outputs {
    dir: PathBuf,
}

impl Outputs {
    fn new(e: &Env, case: &str) -> Self {
        let dir = e.work.path().join(case);
        std::fs::create_dir_all(dir.join("sibling")).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// Only `sibling` (still empty) and the outputs that succeeded are there: nothing was
    /// written beside an output, and no staging directory is left.
    fn assert_only(&self, made: &[&str]) {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = made.iter().map(|s| s.to_string()).collect();
        want.push("sibling".into());
        want.sort();
        assert_eq!(names, want, "in {}", self.dir.display());
        let sib = std::fs::read_dir(self.dir.join("sibling")).unwrap().count();
        assert_eq!(sib, 0, "something was written into the sibling directory");
    }
}

/// What every reader gave on one hostile tree.
struct Probe {
    calls: BTreeMap<&'static str, Call>,
}

impl Probe {
    fn get(&self, op: &str) -> &Call {
        &self.calls[op]
    }
}

/// Replaces `/workspace` with the tree `setup` makes (`d/f` is the file, link or special
/// file of the case), then runs every reader on it: diff, the three exports, read, list,
/// two patches, logs and a sync push whose `d/f/x.txt` member would go through `d/f`.
fn probe(e: &Env, id: &str, out: &Outputs, setup: &str) -> Probe {
    e.sh(
        id,
        &format!("cd /workspace && find . -mindepth 1 -delete && {setup}"),
    );
    let sync_src = e.work.path().join("sync-src");
    if !sync_src.exists() {
        std::fs::create_dir_all(sync_src.join("d/f")).unwrap();
        std::fs::write(sync_src.join("d/f/x.txt"), "synced\n").unwrap();
    }
    let sync_s = sync_src.to_str().unwrap().to_string();
    let (whole, dir, file) = (out.path("whole"), out.path("dir"), out.path("file"));
    let ops: Vec<(&'static str, Vec<&str>)> = vec![
        ("diff", vec!["workspace", "diff", id]),
        (
            "export_whole",
            vec!["workspace", "export", id, "/workspace", "--output", &whole],
        ),
        (
            "export_dir",
            vec!["workspace", "export", id, "d", "--output", &dir],
        ),
        (
            "export_file",
            vec!["workspace", "export", id, "d/f", "--output", &file],
        ),
        ("read", vec!["workspace", "file", "read", id, "d/f"]),
        (
            "list",
            vec!["workspace", "file", "list", id, "/workspace", "--recursive"],
        ),
        (
            "patch_new",
            vec![
                "workspace",
                "patch",
                "apply",
                id,
                "--patch",
                "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n",
            ],
        ),
        (
            "patch_f",
            vec![
                "workspace",
                "patch",
                "apply",
                id,
                "--patch",
                "--- a/d/f\n+++ b/d/f\n@@ -1 +1 @@\n-y\n+z\n",
            ],
        ),
        ("logs", vec!["workspace", "logs", id]),
        ("sync", vec!["workspace", "sync", "push", id, &sync_s]),
    ];
    let mut calls = BTreeMap::new();
    for (name, args) in ops {
        let call = e.call(&args);
        assert!(
            call.max_rss_kib < MAX_RSS_KIB,
            "{}: peak RSS {} KiB",
            call.what,
            call.max_rss_kib
        );
        calls.insert(name, call);
    }
    e.assert_no_spools(id);
    Probe { calls }
}

/// Symlinks out of the tree, `..` chains and loops; FIFOs, devices and sockets; long
/// names, paths past `PATH_MAX` and non-UTF-8 names; 20,000 files. One workspace, one tree
/// after the other.
#[test]
fn every_reader_answers_hostile_trees_cleanly() {
    let e = Env::new();
    let id = e.create();

    // Symlinks to /etc: listed and diffed as links, never followed, never exported.
    let out = Outputs::new(&e, "etc-links");
    let p = probe(
        &e,
        &id,
        &out,
        "mkdir d && ln -s /etc d/f && ln -s /etc/passwd pw",
    );
    let d = p.get("diff").ok();
    assert!(
        d["patch"]
            .as_str()
            .unwrap()
            .contains("new file mode 120000"),
        "{d}"
    );
    for op in ["export_whole", "export_dir", "export_file"] {
        p.get(op).err_with(
            "invalid_input",
            &["symlink", "-> `/etc", "points outside the exported tree"],
        );
    }
    p.get("read")
        .err_with("invalid_input", &["/workspace/d/f", "is a symlink"]);
    let l = p.get("list").ok();
    assert!(l["entries"].as_array().unwrap().iter().any(|x| {
        x["path"] == "/workspace/d/f"
            && x["artifact_type"] == "symlink"
            && x["link_target"] == "/etc"
    }));
    p.get("patch_new").ok();
    // The patch names the link: it is read as git sees a link (its target), which the hunk
    // does not match; nothing is written through it.
    p.get("patch_f")
        .err_with("invalid_input", &["the patch does not apply", "d/f"]);
    p.get("logs").ok();
    p.get("sync").err_with("invalid_input", &["d/f"]);
    assert_eq!(
        e.sh(
            &id,
            "test -e /etc/x.txt && echo leaked; readlink /workspace/d/f"
        ),
        "/etc\n"
    );
    out.assert_only(&[]);

    // `s -> .` plus `up -> s/..` (each fine alone) and symlink loops.
    let out = Outputs::new(&e, "dotdot-loops");
    let p = probe(
        &e,
        &id,
        &out,
        "mkdir d && echo y > d/f && ln -s . s && ln -s s/.. up && ln -s a b && ln -s b a \
         && ln -s self d/self",
    );
    let d = p.get("diff").ok();
    assert_eq!(d["summary"]["added"], 6, "{d}");
    // The first bad link in name order is the loop `a` <-> `b`; without it, `up` is refused.
    p.get("export_whole")
        .err_with("invalid_input", &["symlink `a` -> `b`", "(a loop)"]);
    p.get("export_dir")
        .err_with("invalid_input", &["`self` -> `self`"]);
    assert_eq!(p.get("export_file").ok()["bytes_written"], 2);
    assert_eq!(p.get("read").ok()["content"], "y\n");
    assert_eq!(p.get("list").ok()["entries"].as_array().unwrap().len(), 7);
    p.get("patch_new").ok();
    p.get("patch_f").ok();
    p.get("logs").ok();
    p.get("sync").err_with("invalid_input", &["d/f"]);
    assert_eq!(std::fs::read(out.dir.join("file")).unwrap(), b"y\n");
    out.assert_only(&["file"]);

    // A FIFO, a character and a block device and a socket: never opened, never exported.
    let out = Outputs::new(&e, "specials");
    let p = probe(
        &e,
        &id,
        &out,
        "mkdir d && mkfifo d/f && mknod d/c c 1 3 && mknod d/b b 7 0 && \
         perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), \
         Local => q(d/s), Listen => 1) or die $!' && test -S d/s",
    );
    p.get("diff").ok();
    let w = p.get("export_whole").ok();
    assert_eq!(w["bytes_written"], 0, "{w}");
    p.get("export_dir").ok();
    // Regression: this used to be "the export did not contain exactly one entry".
    p.get("export_file").err_with(
        "invalid_input",
        &["`/workspace/d/f` is a FIFO, socket or device"],
    );
    p.get("read")
        .err_with("invalid_input", &["/workspace/d/f", "not a regular file"]);
    let l = p.get("list").ok();
    let others = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["artifact_type"] == "other")
        .count();
    assert_eq!(others, 4, "{l}");
    p.get("patch_new").ok();
    p.get("patch_f")
        .err_with("invalid_input", &["/workspace/d/f", "not a regular file"]);
    p.get("logs").ok();
    p.get("sync").err_with("invalid_input", &["d/f"]);
    let exported: Vec<_> = std::fs::read_dir(out.dir.join("dir")).unwrap().collect();
    assert!(exported.is_empty(), "special files were exported");
    out.assert_only(&["whole", "dir"]);

    // A 255-byte name, a path past PATH_MAX (4,096) made one directory at a time, and a
    // name that is not UTF-8.
    let out = Outputs::new(&e, "names");
    let long = "n".repeat(255);
    // 22 levels of 201 bytes: past PATH_MAX, made with relative `mkdir`/`chdir`.
    let seg = "p".repeat(200);
    let p = probe(
        &e,
        &id,
        &out,
        &format!(
            "mkdir d && echo y > d/f && echo x > d/{long} && printf z > \"$(printf 'd/x\\377')\" \
             && mkdir deep && perl -e 'for (1..22) {{ mkdir q({seg}) or die; chdir q({seg}) or die }} \
             open(my $f, q(>), q(leaf)) or die; print $f qq(deep\\n)'"
        ),
    );
    p.get("diff")
        .err_with("invalid_input", &["`d/x\\xff`", "not UTF-8"]);
    // The deep path cannot be made on the host (its names pass PATH_MAX): a clean error,
    // nothing left.
    p.get("export_whole")
        .err_with("runtime", &["File name too long"]);
    p.get("export_dir").ok();
    assert!(
        out.dir
            .join("dir")
            .join(OsStr::from_bytes(b"x\xff"))
            .is_file(),
        "the non-UTF-8 name did not survive the export"
    );
    assert_eq!(
        std::fs::read(out.dir.join("dir").join(&long)).unwrap(),
        b"x\n"
    );
    p.get("export_file").ok();
    p.get("read").ok();
    let l = p.get("list").ok();
    let paths: Vec<&str> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert!(paths.iter().any(|x| x.ends_with(&long)), "{paths:?}");
    assert!(paths.iter().any(|x| x.ends_with("/leaf") && x.len() > 4096));
    p.get("patch_new").ok();
    p.get("patch_f").ok();
    p.get("logs").ok();
    p.get("sync")
        .err_with("invalid_input", &["d/f", "regular file exists"]);
    out.assert_only(&["dir", "file"]);

    // 20,000 files.
    let out = Outputs::new(&e, "many");
    let p = probe(
        &e,
        &id,
        &out,
        "mkdir d m && echo y > d/f && cd m && seq 20000 | xargs touch",
    );
    let d = p.get("diff").ok();
    assert_eq!(d["summary"]["added"], 20001, "{}", d["summary"]);
    let w = p.get("export_whole").ok();
    assert_eq!(w["entry_count"], 20003, "{w}");
    assert_eq!(
        std::fs::read_dir(out.dir.join("whole/m")).unwrap().count(),
        20000
    );
    p.get("export_dir").ok();
    p.get("export_file").ok();
    p.get("read").ok();
    assert_eq!(
        p.get("list").ok()["entries"].as_array().unwrap().len(),
        20003
    );
    p.get("patch_new").ok();
    p.get("patch_f").ok();
    p.get("logs").ok();
    // `d/f` is a file here: a directory member over it fails the merge.
    p.get("sync").err_with("invalid_input", &["d/f"]);
    out.assert_only(&["whole", "dir", "file"]);
    for (op, c) in &p.calls {
        eprintln!(
            "20,000 files: {op}: {:?}, {} KiB peak RSS",
            c.elapsed, c.max_rss_kib
        );
    }

    // Reset from the last hostile tree gives the empty baseline back.
    let r = e.call(&["workspace", "reset", &id]).ok();
    assert_eq!(r["state"], "started");
    assert_eq!(e.sh(&id, "ls -A /workspace | wc -l"), "0\n");
    e.call(&["workspace", "delete", &id]).ok();
}

/// A 15 TiB sparse file, a 20 MiB file and a full disk: diffs and exports stop at their
/// limits at once with bounded memory, writes fail with ENOSPC named, reset recovers.
#[test]
fn huge_files_and_a_full_disk_are_bounded() {
    let e = Env::new();
    let id = e.create();
    let out = Outputs::new(&e, "sizes");

    // 15 TiB, sparse. The transfer stops at the header that declares it.
    e.sh(&id, "truncate -s 15T /workspace/huge");
    let diff = e.call_env(
        &["workspace", "diff", &id],
        &[("PYRO_MAX_DIFF_BYTES", "33554432")],
    );
    diff.err_with(
        "invalid_input",
        &["invalid workspace", "33554432", "PYRO_MAX_DIFF_BYTES"],
    );
    assert!(
        diff.max_rss_kib < MAX_RSS_KIB,
        "diff of a 15 TiB file: peak RSS {} KiB",
        diff.max_rss_kib
    );
    // It used to pull the limit plus 256 MiB of zeros first (about 8 s here).
    assert!(diff.elapsed < Duration::from_secs(5), "{:?}", diff.elapsed);
    // With the default 4 GiB export limit (this took minutes and filled a 4 GiB spool).
    let huge = out.path("huge");
    let ex = e.call(&["workspace", "export", &id, "huge", "--output", &huge]);
    ex.err_with(
        "invalid_input",
        &["/workspace/huge", "PYRO_MAX_EXPORT_BYTES"],
    );
    assert!(ex.elapsed < Duration::from_secs(5), "{:?}", ex.elapsed);
    assert!(ex.max_rss_kib < MAX_RSS_KIB);
    let r = e.call(&["workspace", "file", "read", &id, "huge"]).ok();
    assert_eq!(r["size_bytes"], 15u64 << 40);
    assert_eq!(r["truncated"], true);
    e.call(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch",
        "--- a/huge\n+++ b/huge\n@@ -1 +1 @@\n-a\n+b\n",
    ])
    .err_with("invalid_input", &["/workspace/huge", "16777216"]);
    e.assert_no_spools(&id);

    // 20 MiB of random bytes: compared by hash, exported whole.
    e.sh(
        &id,
        "rm /workspace/huge && head -c 20971520 /dev/urandom > /workspace/big",
    );
    let sum = e.sh(&id, "sha256sum < /workspace/big | cut -d' ' -f1");
    let d = e.call(&["workspace", "diff", &id]).ok();
    assert!(
        d["patch"]
            .as_str()
            .unwrap()
            .contains("Binary files /dev/null and b/big differ"),
        "{d}"
    );
    let big = out.path("big");
    let ex = e.call(&["workspace", "export", &id, "big", "--output", &big]);
    assert_eq!(ex.ok()["bytes_written"], 20971520);
    assert!(ex.max_rss_kib < 200 * 1024, "{} KiB", ex.max_rss_kib);
    let host_sum = Command::new("sha256sum").arg(&big).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host_sum.stdout)
            .split(' ')
            .next()
            .unwrap(),
        sum.trim()
    );

    // 80 MiB of output ending in invalid UTF-8: the logs keep 64 MiB, a page stays small.
    let run = e.spawn(
        &[
            "workspace",
            "exec",
            &id,
            "--shell",
            "--",
            "head -c 83886080 /dev/zero; printf '\\377'",
        ],
        &[],
        true,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["stdout_truncated"], true);
    assert!(run.max_rss_kib < 200 * 1024, "{} KiB", run.max_rss_kib);
    let logs = e.call(&["workspace", "logs", &id]);
    let l = logs.ok();
    let last = l["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["stdout_bytes"], 83886081, "{}", last["stdout_bytes"]);
    assert_eq!(last["stdout_truncated"], true);
    assert!(logs.max_rss_kib < 200 * 1024, "{} KiB", logs.max_rss_kib);

    // A full disk: `fallocate` the free space but 8 MiB (no data crosses to the host), then
    // `dd` until ENOSPC.
    let dd = e.exec(
        &id,
        120,
        "cd /workspace && rm big && mkdir d && echo y > d/f && \
         fallocate -l $(( $(df --output=avail -B1 /workspace | tail -1) - 8388608 )) pad && \
         dd if=/dev/zero of=fill bs=1M; df --output=avail -B1 /workspace | tail -1",
    );
    assert!(
        dd["stderr"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{dd}"
    );
    let avail: u64 = dd["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(avail < 1 << 20, "the disk is not full: {avail} bytes free");
    let full = Outputs::new(&e, "full");
    let d = e.call(&["workspace", "diff", &id]);
    d.err_with("invalid_input", &["PYRO_MAX_DIFF_BYTES"]);
    assert!(d.elapsed < Duration::from_secs(5), "{:?}", d.elapsed);
    let whole = full.path("whole");
    let ex = e.call(&["workspace", "export", &id, "/workspace", "--output", &whole]);
    ex.err_with("invalid_input", &["PYRO_MAX_EXPORT_BYTES"]);
    assert!(ex.elapsed < Duration::from_secs(5), "{:?}", ex.elapsed);
    let dir = full.path("dir");
    e.call(&["workspace", "export", &id, "d", "--output", &dir])
        .ok();
    e.call(&["workspace", "file", "write", &id, "x.txt", "--text", "x"])
        .err_with("runtime", &["x.txt", "No space left on device"]);
    e.call(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch",
        "--- a/d/f\n+++ b/d/f\n@@ -1 +1 @@\n-y\n+z\n",
    ])
    .err_with("runtime", &["/workspace/d/f", "No space left on device"]);
    let src = e.work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("s.txt"), "s\n".repeat(4096)).unwrap();
    e.call(&["workspace", "sync", "push", &id, src.to_str().unwrap()])
        .err_with("runtime", &["s.txt", "No space left on device"]);
    assert_eq!(e.sh(&id, "cat d/f"), "y\n");
    e.call(&["workspace", "logs", &id]).ok();
    e.assert_no_spools(&id);
    out.assert_only(&["big"]);
    full.assert_only(&["dir"]);

    // Reset gives the disk back.
    e.call(&["workspace", "reset", &id]).ok();
    let avail: u64 = e
        .sh(&id, "df --output=avail -B1 /workspace | tail -1")
        .trim()
        .parse()
        .unwrap();
    assert!(avail > 1 << 30, "{avail} bytes free after reset");
    e.call(&["workspace", "delete", &id]).ok();
}

/// A fork bomb and a memory bomb: the agent keeps answering (commands run in cgroups that
/// leave it room), later commands still run, and `kill -9 -1` ends the bomb.
#[test]
fn bombs_leave_the_agent_answering() {
    let e = Env::new();
    let id = e.create();
    let cgroup = e.sh(&id, "cat /proc/self/cgroup");
    assert!(
        cgroup.starts_with("0::/pyro-commands/cmd-"),
        "commands run in a cgroup of their own: {cgroup}"
    );

    // The classic fork bomb: its first process returns at once, its children fork on.
    let t = Instant::now();
    let v = e.exec(&id, 5, "f() { f | f & }; f");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // Give it time to reach its limit.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..3 {
        let t = Instant::now();
        let l = e.call(&["workspace", "file", "list", &id]).ok();
        assert_eq!(l["entries"], serde_json::json!([]));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let t = Instant::now();
        // A command that forks still runs: it has its own share of tasks and CPU.
        assert_eq!(e.sh(&id, "echo $(echo alive)"), "alive\n");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }
    let tasks: u64 = e
        .sh(&id, "cat /sys/fs/cgroup/pyro-commands/pids.current")
        .trim()
        .parse()
        .unwrap();
    assert!(tasks > 100, "the bomb did not run: {tasks} tasks");
    let st = e.status(&id);
    assert_eq!(st["state"], "started");
    assert_eq!(st["last_error"], Value::Null);
    // The way out short of a reset: kill every process but the agent.
    e.exec(&id, 60, "kill -9 -1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks: u64 = e
            .sh(&id, "cat /sys/fs/cgroup/pyro-commands/pids.current")
            .trim()
            .parse()
            .unwrap();
        if tasks < 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{tasks} tasks left after kill -9 -1"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A memory bomb is killed by the commands' OOM killer, not the guest.
    let v = e.exec(
        &id,
        60,
        "perl -e 'my @a; push @a, q(x) x 1048576 while 1'; echo \"perl: $?\"",
    );
    assert_eq!(v["stdout"], "perl: 137\n", "{v}");
    // And in the background, cut by the exec's timeout.
    let v = e.exec(
        &id,
        5,
        "perl -e 'my @a; push @a, q(x) x 1048576 while 1' & \
         perl -e 'my @a; push @a, q(x) x 1048576 while 1' & sleep 60",
    );
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(e.sh(&id, "echo alive"), "alive\n");
    let st = e.status(&id);
    assert_eq!(st["state"], "started");
    assert_eq!(st["last_error"], Value::Null);
    e.call(&["workspace", "delete", &id]).ok();
}

/// An agent that does not answer (its VMM frozen with SIGSTOP: nothing in the guest runs)
/// is reported within 10 s, with the way out, and shown by `status` while the workspace
/// stays `started`; an answer clears it; `stop` and `start` recover a frozen one.
#[test]
fn an_unresponsive_agent_is_reported_within_10_s() {
    let e = Env::new();
    let id = e.create();
    e.sh(&id, "echo kept > /workspace/kept && sync");
    let vmm = e.vmm_pid(&id);

    // SAFETY: kill(2) on this test's own workspace VMM.
    unsafe { libc::kill(vmm, libc::SIGSTOP) };
    let call = e.call(&["workspace", "exec", &id, "--", "true"]);
    let msg = call.err_with(
        "state",
        &[
            &id,
            "did not answer within 10 s",
            "fork or memory bomb",
            "stop and start it, or reset it",
        ],
    );
    assert!(
        call.elapsed >= Duration::from_secs(10) && call.elapsed < Duration::from_secs(20),
        "{:?}",
        call.elapsed
    );
    // Every reader says the same.
    let t = Instant::now();
    e.call(&["workspace", "file", "read", &id, "kept"])
        .err_with("state", &["did not answer within 10 s"]);
    assert!(t.elapsed() < Duration::from_secs(20));
    let st = e.status(&id);
    assert_eq!(st["state"], "started", "{st}");
    assert_eq!(st["last_error"], msg.as_str(), "{st}");

    // SAFETY: as above.
    unsafe { libc::kill(vmm, libc::SIGCONT) };
    assert_eq!(e.sh(&id, "cat kept"), "kept\n");
    let st = e.status(&id);
    assert_eq!(st["state"], "started");
    assert_eq!(st["last_error"], Value::Null, "an answer clears the note");

    // Frozen again: `stop` gives up on the agent and ends the VM; `start` brings it back.
    // SAFETY: as above.
    unsafe { libc::kill(vmm, libc::SIGSTOP) };
    let stop = e.call(&["workspace", "stop", &id]);
    assert_eq!(stop.ok()["state"], "stopped");
    assert!(stop.elapsed < Duration::from_secs(30), "{:?}", stop.elapsed);
    assert_eq!(
        e.call(&["workspace", "start", &id]).ok()["state"],
        "started"
    );
    assert_eq!(e.sh(&id, "cat kept"), "kept\n");
    e.call(&["workspace", "delete", &id]).ok();
}
