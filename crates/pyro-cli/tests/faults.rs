//! Fault injection around persistent workspaces, on real sandboxes. The `pyro` process is
//! killed (-9) at seeded moments of every workspace operation; the VMM, relay or watchdog of
//! a started workspace are killed behind pyro's back; directories of creates killed before
//! they recorded anything are planted. After each kill:
//!
//! 1. `status` tells the truth: `started` only with exactly one live VMM and no `last_error`,
//!    `stopped` or `error` only with none (`error` always with a reason), never `creating`
//!    once its builder is dead; a workspace that is not started has no process left;
//! 2. data acknowledged before the kill is intact (every file of `/workspace`, by SHA-256);
//! 3. the workspace is usable, or recovered without data loss by `start` or the next call
//!    (`reset` only after a killed `create` or `reset`, as docs/workspaces.md says);
//! 4. nothing is partial: an export is complete or absent, and no `.pyro-export-*` staging
//!    directory or `*.spool` of a dead process survives the next successful export or diff;
//!    a killed `file write` leaves the old or the new content, a killed `patch apply` all of
//!    the patch or nothing, a killed `sync push` each file old or new (a push as a whole is
//!    documented as not atomic), a killed `update` all of its changes or none; no
//!    `.pyro-tmp-*` file is left in the guest and no command of a killed `exec` runs on;
//! 5. after `delete` nothing is left: no process with its working directory or an open file
//!    under the workspace's directory, no directory, no record.
//!
//! Kill moments: each operation is first run (and timed) uncut; then it is killed `n` times,
//! once in each n-th of that duration, at a seeded offset inside it; `create` and `reset` get
//! six more in their first eighth, where they hand the workspace from state to state, and
//! `start` has ten in its first two seconds and two near its end. The data operations share
//! one long-lived workspace, `stop` and `start` another. A killed call's work in the guest
//! may end a little after the CLI (the agent finishes or rolls back what it had received):
//! the checks of `file write`, `patch apply` and `sync push` wait until the guest settles.
//! The seed is fixed, `PYRO_FAULT_SEED` (decimal or 0x-hex) picks another; the seed and every
//! delay are printed (`cargo nextest run -p pyro-cli --test faults --no-capture`, which runs
//! the tests one at a time). Where a kill lands depends on the machine's speed, so the
//! outcome counts below vary a little between runs; the assertions do not.
//!
//! One run with the default seed, QEMU/TCG on 2 cores (the whole file: about 2 min 10 s, two
//! tests at a time); every kill passed all five checks:
//!
//! | operation | kills | outcomes |
//! |---|---|---|
//! | `create --seed-path DIR` | 16 | 11 `error`, rebuilt from the seed by `reset`; 2 nothing made; 3 finished first (other runs: an unrecorded directory, removed by `list` once past its grace period) |
//! | `exec` | 8 | 8 not recorded, command killed in the guest, partial logs removed by the next exec |
//! | `file write` (1 MB) | 8 | 6 new content, 2 old content; never torn |
//! | `patch apply` (32 files) | 8 | 5 applied whole, 3 not applied |
//! | `sync push` (40 files) | 8 | 7 all files new (the guest often finishes after the kill), 1 all old (other runs: some new, each whole) |
//! | `export` (directory) | 8 | 7 absent (spool and staging removed by the next export), 1 complete |
//! | `export` (file) | 8 | 7 absent (spool removed by the next export), 1 complete |
//! | `diff` | 8 | 3 left a spool, removed by the next diff; 5 left nothing |
//! | `reset` | 16 | 11 `error`, rebuilt by `reset`; 2 not begun, data kept; 3 finished first |
//! | `stop` | 12 | 7 still started, 5 stopped (reported as a VMM crash); unsynced guest writes kept |
//! | `start` | 12 | 10 left a VMM behind, ended by the next `status`, `start` or `stop`; 2 finished first |
//! | `delete` | 10 | 8 still listed (3 started, 5 stopped), 2 record gone; a second `delete` left nothing |
//! | `update` (name + label) | 8 | 3 applied, 5 not applied; never half |
//! | VMM, relay, watchdog | 1 each | crash reported and `start` recovers; relay and watchdog replaced by the next call |
//!
//! Bugs these found (fixed in `pyro-core`): a `reset` killed between its VMM kill and its
//! `creating` record read as `stopped` "with its data" over an empty or half-written disk; a
//! `delete` killed after it removed the record left the directory, which `delete` then
//! refused as unknown; an `exec` killed midway left its partial logs forever.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::io::{Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{Env, text, undeleted, users_of};

impl Env {
    fn new() -> Self {
        Self::with_prefix("pyro-fault-test-")
    }

    /// Runs an operation uncut; returns how long it took and its result.
    fn timed(&self, args: &[&str]) -> (Duration, serde_json::Value) {
        let t = Instant::now();
        let v = self.ok_json(args);
        (t.elapsed(), v)
    }

    /// Runs `pyro args` and kills it (-9) after `delay`, unless it exited by itself before.
    fn shoot(&self, args: &[&str], delay: Duration) -> Shot {
        // Files, not pipes: a full pipe nobody reads would stall it.
        let mut out = tempfile::tempfile().unwrap();
        let mut err = tempfile::tempfile().unwrap();
        let mut child = self
            .cmd()
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // One that exited meanwhile is a zombie until waited for: the signal does nothing and
        // its exit status tells.
        let _ = child.kill();
        let status = child.wait().unwrap();
        let read = |f: &mut std::fs::File| {
            let mut b = Vec::new();
            f.rewind().unwrap();
            f.read_to_end(&mut b).unwrap();
            b
        };
        let shot = Shot {
            delay,
            finished: status.signal() != Some(libc::SIGKILL),
            ok: status.success(),
            stdout: read(&mut out),
        };
        assert!(
            !shot.finished || shot.ok,
            "{args:?} failed by itself: {}\n{}",
            text(&read(&mut err)),
            text(&shot.stdout)
        );
        shot
    }

    fn ws_dir(&self, id: &str) -> PathBuf {
        self.state.path().join("workspaces").join(id)
    }

    /// Creates a workspace and writes (acknowledged, so durable) a file into it.
    fn create_with_file(&self) -> String {
        let out = self.pyro(&["workspace", "create", "debian:12", "--id-only"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id = text(&out.stdout).trim().to_string();
        self.ok_json(&[
            "workspace",
            "file",
            "write",
            &id,
            "keep.txt",
            "--text",
            "precious",
            "--json",
        ]);
        id
    }

    /// The workspace runs and its data is intact.
    fn assert_usable(&self, id: &str) {
        let r = self.ok_json(&["workspace", "file", "read", id, "keep.txt", "--json"]);
        assert_eq!(r["content"], "precious");
        let r = self.ok_json(&["workspace", "exec", id, "--json", "--", "echo", "alive"]);
        assert_eq!(r["stdout"], "alive\n");
    }

    /// Deletes the workspace, then checks that nothing of it is left.
    fn delete_and_assert_gone(&self, id: &str) {
        self.ok_json(&["workspace", "delete", id, "--json"]);
        self.assert_gone(id);
    }

    /// No record, no directory, and no process with its working directory or an open file
    /// under the workspace's directory (deleted or not).
    fn assert_gone(&self, id: &str) {
        let dir = self.ws_dir(id);
        let left = users_of(&dir);
        assert!(left.is_empty(), "processes left after delete: {left:?}");
        let in_dir: Vec<u32> = pyro_core::host::processes_with_cwd_in(self.state.path())
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/cwd"))
                    .is_ok_and(|c| undeleted(c).starts_with(&dir))
            })
            .collect();
        assert!(
            in_dir.is_empty(),
            "processes working in {dir:?}: {in_dir:?}"
        );
        assert!(!dir.exists(), "{} is left after delete", dir.display());
        let out = self.pyro(&["workspace", "status", id, "--json"]);
        assert!(
            !out.status.success(),
            "a record is left: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stdout).contains("not_found"),
            "{}",
            text(&out.stdout)
        );
    }

    /// Ids of the workspace directories that exist now.
    fn ws_dirs(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.state.path().join("workspaces"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// What became of a `pyro` call killed at a moment.
struct Shot {
    delay: Duration,
    /// It had exited by itself before the kill.
    finished: bool,
    /// It had exited by itself, successfully (it acknowledged its operation).
    ok: bool,
    stdout: Vec<u8>,
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The VMM processes (QEMU) of a workspace.
fn vmms(dir: &Path) -> Vec<u32> {
    users_of(dir)
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu"))
        .map(|(p, _)| p)
        .collect()
}

/// The pyro helper processes (`pyro __relay` / `pyro __watchdog`) of a workspace.
fn helpers(dir: &Path, which: &str) -> Vec<u32> {
    users_of(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| cmdline(*p).get(1).is_some_and(|a| a == which))
        .collect()
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a process of this test's own workspace.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Waits (a little) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small deterministic generator (xorshift64*), so the kill moments are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The seed of every kill schedule in this file.
const DEFAULT_SEED: u64 = 0x5eed_f4f4_0bad_cafe;

/// The seed: [`DEFAULT_SEED`] unless `PYRO_FAULT_SEED` names another.
fn seed() -> u64 {
    let Ok(s) = std::env::var("PYRO_FAULT_SEED") else {
        return DEFAULT_SEED;
    };
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .expect("PYRO_FAULT_SEED: a decimal or 0x-hex u64")
}

/// One test's kill schedule and tally: per operation, how many kills and what came of them.
struct Faults {
    test: &'static str,
    rng: Rng,
    rows: Vec<(&'static str, BTreeMap<String, u32>)>,
    begun: Instant,
}

impl Faults {
    /// `salt` gives each test its own stream of delays from the one seed.
    fn new(test: &'static str, salt: u64) -> Self {
        let seed = seed();
        eprintln!("[faults] {test}: seed {seed:#x} (PYRO_FAULT_SEED sets another)");
        Self {
            test,
            rng: Rng((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1),
            rows: Vec::new(),
            begun: Instant::now(),
        }
    }

    /// `n` kill delays spread over `window` (an uncut run's duration): one in each n-th of
    /// it, at a seeded offset inside that slice.
    fn delays(&mut self, n: u32, window: Duration) -> Vec<Duration> {
        let w = (window.as_micros() as u64).max(1);
        (0..u64::from(n))
            .map(|i| Duration::from_micros((i * w + self.rng.next() % w) / u64::from(n)))
            .collect()
    }

    /// [`Self::delays`], plus `early` more in the first eighth of `window`: where `create`
    /// and `reset` hand the workspace from one state to the next (record, disk swap).
    fn delays_early(&mut self, n: u32, early: u32, window: Duration) -> Vec<Duration> {
        let mut d = self.delays(early, window / 8);
        d.extend(self.delays(n, window));
        d
    }

    /// Records one kill of `op` and what came of it.
    fn note(
        &mut self,
        op: &'static str,
        trial: usize,
        shot: &Shot,
        window: Duration,
        outcome: &str,
    ) {
        let outcome = if shot.finished {
            format!("finished before the kill; {outcome}")
        } else {
            outcome.to_string()
        };
        eprintln!(
            "[faults] {op} #{trial}: kill at {} ms (an uncut run took {} ms): {outcome}",
            shot.delay.as_millis(),
            window.as_millis()
        );
        let row = match self.rows.iter().position(|(o, _)| *o == op) {
            Some(i) => &mut self.rows[i].1,
            None => {
                self.rows.push((op, BTreeMap::new()));
                &mut self.rows.last_mut().unwrap().1
            }
        };
        *row.entry(outcome).or_default() += 1;
    }

    /// Prints the tally as a table.
    fn report(&self) {
        let mut lines = vec![format!(
            "[faults] {}: {} kills in {:.0} s",
            self.test,
            self.rows
                .iter()
                .map(|(_, r)| r.values().sum::<u32>())
                .sum::<u32>(),
            self.begun.elapsed().as_secs_f64()
        )];
        for (op, row) in &self.rows {
            let outcomes: Vec<String> = row.iter().map(|(o, n)| format!("{o}: {n}")).collect();
            lines.push(format!(
                "| {op} | {} | {} |",
                row.values().sum::<u32>(),
                outcomes.join("; ")
            ));
        }
        eprintln!("{}", lines.join("\n"));
    }
}

/// The state `status` reports, checked against the processes that really run: `started`
/// only with one VMM alive and no `last_error`, `stopped` and `error` only with no VMM left
/// (`error` with a reason), never `creating` (nothing builds once its process was killed).
/// The processes are looked at before and after `status`; while they change (a VMM that
/// shuts down by itself) it looks again.
fn truthful_status(e: &Env, id: &str) -> serde_json::Value {
    let dir = e.ws_dir(id);
    for attempt in 0..90 {
        let before = vmms(&dir);
        let s = e.ok_json(&["workspace", "status", id, "--json"]);
        let running = vmms(&dir);
        if before != running {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match s["state"].as_str().unwrap() {
            "started" => {
                assert_eq!(running.len(), 1, "started with VMMs {running:?}: {s}");
                assert!(s["last_error"].is_null(), "started with an error: {s}");
            }
            "creating" => panic!("creating, though nothing builds it: {s}"),
            other => {
                // A VMM the status call just ended may take a moment to die (SIGKILL waits
                // for a process in uninterruptible I/O): look again before judging. One
                // nothing ends stays, and fails here.
                if !running.is_empty() && attempt < 40 {
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
                assert!(
                    running.is_empty(),
                    "status says {other} while VMM {running:?} runs: {s}"
                );
                if other == "error" {
                    assert!(s["last_error"].is_string(), "error without a reason: {s}");
                }
            }
        }
        return s;
    }
    panic!("the VMMs of {id} never settled");
}

/// A workspace that is not started has no process left (its watchdog ends within a second
/// of its VMM).
fn assert_quiet(e: &Env, id: &str) {
    let dir = e.ws_dir(id);
    eventually("no process of a workspace that is not started", || {
        users_of(&dir).is_empty()
    });
}

/// A started workspace has one VMM, one relay and one watchdog: nothing doubled.
fn assert_one_of_each(e: &Env, id: &str) {
    let dir = e.ws_dir(id);
    assert_eq!(vmms(&dir).len(), 1, "{:?}", users_of(&dir));
    eventually("one relay", || helpers(&dir, "__relay").len() == 1);
    eventually("one watchdog", || helpers(&dir, "__watchdog").len() == 1);
}

/// `/workspace` as the guest has it: every regular file with its SHA-256, and the names of
/// any `.pyro-tmp-*` files (staged writes) left in it.
struct Guest {
    files: BTreeMap<String, String>,
    temps: Vec<String>,
}

/// While the guest is still at work a file may go between `find` and `sha256sum`: that
/// snapshot just lacks it, and [`after_kill_settled`] polls until two agree with no staged
/// file left.
const SNAPSHOT: &str = "cd /workspace && find . -name '.pyro-tmp-*' -printf 'T %P\\n' && \
     { find . -type f ! -name '.pyro-tmp-*' -print0 | xargs -0 -r sha256sum 2>/dev/null || true; }";

fn guest(e: &Env, id: &str) -> Guest {
    let r = e.ok_json(&["workspace", "exec", id, "--json", "--shell", SNAPSHOT]);
    assert_eq!(r["exit_code"], 0, "{r}");
    let mut g = Guest {
        files: BTreeMap::new(),
        temps: Vec::new(),
    };
    for line in r["stdout"].as_str().unwrap().lines() {
        if let Some(t) = line.strip_prefix("T ") {
            g.temps.push(t.to_string());
        } else if let Some((sum, path)) = line.split_once("  ") {
            g.files
                .insert(path.trim_start_matches("./").to_string(), sum.to_string());
        }
    }
    g
}

/// The differences between two views of `/workspace`, for messages.
fn changes(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, s) in got {
        match want.get(p) {
            None => out.push(format!("+{p}")),
            Some(w) if w != s => out.push(format!("~{p}")),
            Some(_) => {}
        }
    }
    out.extend(
        want.keys()
            .filter(|p| !got.contains_key(*p))
            .map(|p| format!("-{p}")),
    );
    out
}

/// What every check after a kill of a data operation starts with: the workspace is still
/// started (with one VMM, relay and watchdog, status truthful), usable, and its guest holds
/// no staged temp file. Returns the status and the guest's view.
fn after_kill(e: &Env, id: &str) -> (serde_json::Value, Guest) {
    let s = truthful_status(e, id);
    assert_eq!(s["state"], "started", "{s}");
    let g = guest(e, id);
    assert!(
        g.temps.is_empty(),
        "staged files left in the guest: {:?}",
        g.temps
    );
    assert_one_of_each(e, id);
    (s, g)
}

/// [`after_kill`] for a call that changes files: the agent goes on with what it had received
/// when its client died (a transfer cut short is rolled back once the agent reads the
/// reset, one whose data had all arrived is finished), so this looks until no staged file
/// is left and two looks agree. Also says whether the guest was still at work at first.
fn after_kill_settled(e: &Env, id: &str) -> (serde_json::Value, Guest, bool) {
    let s = truthful_status(e, id);
    assert_eq!(s["state"], "started", "{s}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = guest(e, id);
    let busy = !first.temps.is_empty();
    let first_files = first.files.clone();
    let mut prev = first;
    loop {
        let g = guest(e, id);
        if prev.temps.is_empty() && g.temps.is_empty() && prev.files == g.files {
            assert_one_of_each(e, id);
            let busy = busy || first_files != g.files;
            return (s, g, busy);
        }
        assert!(
            Instant::now() < deadline,
            "staged files left in the guest: {:?}",
            g.temps
        );
        prev = g;
    }
}

/// An outcome, marked when the guest was still at work on it after the kill.
fn settled(outcome: &str, busy: bool) -> String {
    if busy {
        format!("{outcome} (the guest finished its part after the kill)")
    } else {
        outcome.to_string()
    }
}

/// A host tree: relative path → (kind, permission bits, hash of the content or link target).
fn host_tree(root: &Path) -> BTreeMap<PathBuf, (char, u32, u64)> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (char, u32, u64)>) {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let m = std::fs::symlink_metadata(&path).unwrap();
        let mut h = std::hash::DefaultHasher::new();
        let kind = if m.file_type().is_symlink() {
            h.write(std::fs::read_link(&path).unwrap().as_os_str().as_bytes());
            'l'
        } else if m.is_file() {
            h.write(&std::fs::read(&path).unwrap());
            'f'
        } else {
            'd'
        };
        out.insert(
            rel.to_path_buf(),
            (kind, m.permissions().mode() & 0o7777, h.finish()),
        );
        if kind == 'd' {
            for e in std::fs::read_dir(&path).unwrap().flatten() {
                walk(root, &rel.join(e.file_name()), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Names in `dir` that start with `prefix` or end with `suffix`.
fn leftovers(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (!prefix.is_empty() && n.starts_with(prefix))
                || (!suffix.is_empty() && n.ends_with(suffix))
        })
        .collect()
}

/// Export spools in a workspace's directory.
fn spools(dir: &Path) -> Vec<String> {
    leftovers(dir, "", ".spool")
}

/// Export staging directories in an output's parent.
fn stagings(dir: &Path) -> Vec<String> {
    leftovers(dir, ".pyro-export-", "")
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The seed of the data test: 30 small files a patch changes, one it deletes, a nested tree
/// with a symlink, an executable and the precious file.
fn data_seed(dir: &Path) {
    write(&dir.join("keep.txt"), "precious");
    for i in 1..=PATCHED_FILES {
        write(
            &dir.join(format!("src/f{i:02}.txt")),
            format!("first {i:02}\nline 2\nline 3\nline 4\n"),
        );
    }
    write(&dir.join("src/gone.txt"), "gone\n");
    write(&dir.join("tree/a/b/c.txt"), "deep\n");
    std::os::unix::fs::symlink("a/b/c.txt", dir.join("tree/link")).unwrap();
    write(&dir.join("run.sh"), "#!/bin/sh\necho run\n");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

const PATCHED_FILES: u32 = 30;

/// A patch that changes every `src/fNN.txt`, adds `src/new.txt` and deletes `src/gone.txt`,
/// and the patch that undoes it.
fn patches() -> (String, String) {
    let (mut fwd, mut rev) = (String::new(), String::new());
    for i in 1..=PATCHED_FILES {
        for (out, from, to) in [
            (&mut fwd, "line 2", "PATCHED 2"),
            (&mut rev, "PATCHED 2", "line 2"),
        ] {
            out.push_str(&format!(
                "diff --git a/src/f{i:02}.txt b/src/f{i:02}.txt\n--- a/src/f{i:02}.txt\n\
                 +++ b/src/f{i:02}.txt\n@@ -1,4 +1,4 @@\n first {i:02}\n-{from}\n+{to}\n line 3\n line 4\n"
            ));
        }
    }
    let add = |name: &str, line: &str| {
        format!(
            "diff --git a/src/{name} b/src/{name}\nnew file mode 100644\n--- /dev/null\n\
             +++ b/src/{name}\n@@ -0,0 +1 @@\n+{line}\n"
        )
    };
    let del = |name: &str, line: &str| {
        format!(
            "diff --git a/src/{name} b/src/{name}\ndeleted file mode 100644\n--- a/src/{name}\n\
             +++ /dev/null\n@@ -1 +0,0 @@\n-{line}\n"
        )
    };
    fwd.push_str(&add("new.txt", "new"));
    fwd.push_str(&del("gone.txt", "gone"));
    rev.push_str(&del("new.txt", "new"));
    rev.push_str(&add("gone.txt", "gone"));
    (fwd, rev)
}

/// Every data operation (update, exec, file write, patch apply, sync push, export of a
/// directory and of a file, diff) killed at seeded moments, on one long-lived workspace.
#[test]
fn killing_data_operations_at_any_moment_keeps_data_whole() {
    const N: u32 = 8;
    let mut f = Faults::new("data operations", 1);
    let e = Env::new();
    let host = tempfile::tempdir().unwrap();
    let h = |p: &str| host.path().join(p).to_str().unwrap().to_string();
    data_seed(&host.path().join("seed"));
    let created = e.ok_json(&[
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        &h("seed"),
        "--json",
    ]);
    let id = created["workspace_id"].as_str().unwrap().to_string();
    let id = id.as_str();
    let dir = e.ws_dir(id);
    // What the guest must hold: every acknowledged change, nothing else.
    let mut acked = guest(&e, id).files;
    assert_eq!(acked.len(), PATCHED_FILES as usize + 4, "{acked:?}");

    // update: name and label together, all or nothing.
    let (w, _) = e.timed(&[
        "workspace",
        "update",
        id,
        "--name",
        "n0",
        "--label",
        "fault=v0",
        "--json",
    ]);
    let mut prev = ("n0".to_string(), "v0".to_string());
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let (name, label) = (format!("n{}", k + 1), format!("v{}", k + 1));
        let shot = e.shoot(
            &[
                "workspace",
                "update",
                id,
                "--name",
                &name,
                "--label",
                &format!("fault={label}"),
                "--json",
            ],
            d,
        );
        let (s, g) = after_kill(&e, id);
        let now = (
            s["name"].as_str().unwrap_or_default().to_string(),
            s["labels"]["fault"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let outcome = if now == (name.clone(), label.clone()) {
            "applied"
        } else if now == prev {
            "not applied"
        } else {
            panic!(
                "a torn update: {now:?}, neither {prev:?} nor {:?}",
                (name, label)
            )
        };
        assert!(
            !shot.ok || outcome == "applied",
            "an acknowledged update was lost: {s}"
        );
        assert_eq!(changes(&g.files, &acked), Vec::<String>::new());
        prev = now;
        f.note("update", k, &shot, w, outcome);
    }

    // exec: recorded once or not at all, history gap-free, its command never left running.
    const EXEC: &str = "echo begin; sleep 0.3; echo end # fault-exec-marker";
    const NO_EXEC_LEFT: &str = "for i in $(seq 50); do \
         grep -qa 'fault-exec-[m]arker' /proc/[0-9]*/cmdline 2>/dev/null || exit 0; \
         sleep 0.1; done; exit 1";
    let (w, r) = e.timed(&["workspace", "exec", id, "--json", "--shell", EXEC]);
    assert_eq!(r["stdout"], "begin\nend\n", "{r}");
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let before = e.ok_json(&["workspace", "status", id, "--json"])["command_count"]
            .as_u64()
            .unwrap();
        let shot = e.shoot(&["workspace", "exec", id, "--json", "--shell", EXEC], d);
        let s = truthful_status(&e, id);
        let recorded = s["command_count"].as_u64().unwrap() - before;
        assert!(
            recorded <= 1,
            "{recorded} commands recorded for one exec: {s}"
        );
        assert!(
            !shot.ok || recorded == 1,
            "an acknowledged exec is not recorded: {s}"
        );
        // Partial logs of the killed call (`.spool`; `.*` as they were named before).
        let logs_dir = dir.join("logs");
        let partial = !leftovers(&logs_dir, ".", ".spool").is_empty();
        let (_, g) = after_kill(&e, id);
        assert_eq!(changes(&g.files, &acked), Vec::<String>::new());
        assert_eq!(
            leftovers(&logs_dir, ".", ".spool"),
            Vec::<String>::new(),
            "the partial logs of a killed exec outlive the next exec"
        );
        let r = e.ok_json(&["workspace", "exec", id, "--json", "--shell", NO_EXEC_LEFT]);
        assert_eq!(
            r["exit_code"], 0,
            "the killed exec's command still runs in the guest"
        );
        let logs = e.ok_json(&[
            "workspace",
            "logs",
            id,
            "--json",
            "--limit",
            "1000",
            "--max-bytes",
            "16",
        ]);
        let seqs: Vec<u64> = logs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["sequence"].as_u64().unwrap())
            .collect();
        let count = e.ok_json(&["workspace", "status", id, "--json"])["command_count"]
            .as_u64()
            .unwrap();
        assert!(
            seqs.iter().copied().eq(1..=count) && logs["total"] == count,
            "the history is not gap-free: {seqs:?} of {count}"
        );
        let outcome = format!(
            "{}{}",
            match recorded {
                0 => "not recorded",
                _ => "recorded",
            },
            if partial {
                "; its partial logs removed by the next"
            } else {
                ""
            }
        );
        f.note("exec", k, &shot, w, &outcome);
    }

    // file write: the old content or the new one, never a torn file or a staged temp.
    let big = |tag: &str| -> String {
        (0..60_000)
            .map(|i| format!("{tag} line {i:08}\n"))
            .collect()
    };
    write(&host.path().join("bigA.txt"), big("A"));
    write(&host.path().join("bigB.txt"), big("B"));
    e.ok_json(&[
        "workspace",
        "file",
        "write",
        id,
        "big.txt",
        "--text-file",
        &h("bigA.txt"),
        "--json",
    ]);
    let sha_a = guest(&e, id).files["big.txt"].clone();
    let (w, _) = e.timed(&[
        "workspace",
        "file",
        "write",
        id,
        "big.txt",
        "--text-file",
        &h("bigB.txt"),
        "--json",
    ]);
    let g = guest(&e, id);
    let sha_b = g.files["big.txt"].clone();
    assert_ne!(sha_a, sha_b);
    acked = g.files;
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let (file, want) = if acked["big.txt"] == sha_a {
            ("bigB.txt", &sha_b)
        } else {
            ("bigA.txt", &sha_a)
        };
        let shot = e.shoot(
            &[
                "workspace",
                "file",
                "write",
                id,
                "big.txt",
                "--text-file",
                &h(file),
                "--json",
            ],
            d,
        );
        let (_, g, busy) = after_kill_settled(&e, id);
        let got = &g.files["big.txt"];
        assert!(*got == sha_a || *got == sha_b, "a torn file: {got}");
        assert!(!shot.ok || got == want, "an acknowledged write was lost");
        let outcome = if got == want {
            "new content"
        } else {
            "old content"
        };
        acked.insert("big.txt".into(), got.clone());
        assert_eq!(changes(&g.files, &acked), Vec::<String>::new());
        f.note("file write", k, &shot, w, &settled(outcome, busy));
    }
    e.ok_json(&[
        "workspace",
        "file",
        "write",
        id,
        "big.txt",
        "--text-file",
        &h("bigA.txt"),
        "--json",
    ]);
    acked.insert("big.txt".into(), sha_a.clone());

    // patch apply: all of the patch or nothing.
    let (fwd, rev) = patches();
    write(&host.path().join("fwd.patch"), &fwd);
    write(&host.path().join("rev.patch"), &rev);
    let state_a = acked.clone();
    let (w, _) = e.timed(&[
        "workspace",
        "patch",
        "apply",
        id,
        "--patch-file",
        &h("fwd.patch"),
        "--json",
    ]);
    let state_b = guest(&e, id).files;
    assert_eq!(
        changes(&state_b, &state_a).len(),
        PATCHED_FILES as usize + 2
    );
    e.ok_json(&[
        "workspace",
        "patch",
        "apply",
        id,
        "--patch-file",
        &h("rev.patch"),
        "--json",
    ]);
    assert_eq!(
        changes(&guest(&e, id).files, &state_a),
        Vec::<String>::new()
    );
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let (patch, want) = if acked == state_a {
            ("fwd.patch", &state_b)
        } else {
            ("rev.patch", &state_a)
        };
        let shot = e.shoot(
            &[
                "workspace",
                "patch",
                "apply",
                id,
                "--patch-file",
                &h(patch),
                "--json",
            ],
            d,
        );
        let (_, g, busy) = after_kill_settled(&e, id);
        let outcome = if g.files == *want {
            "applied whole"
        } else if g.files == acked {
            "not applied"
        } else {
            panic!("a partly applied patch: {:?}", changes(&g.files, &acked))
        };
        assert!(
            !shot.ok || outcome == "applied whole",
            "an acknowledged patch was lost"
        );
        acked = g.files;
        f.note("patch apply", k, &shot, w, &settled(outcome, busy));
    }
    if acked != state_a {
        e.ok_json(&[
            "workspace",
            "patch",
            "apply",
            id,
            "--patch-file",
            &h("rev.patch"),
            "--json",
        ]);
    }
    assert_eq!(
        changes(&guest(&e, id).files, &state_a),
        Vec::<String>::new()
    );

    // sync push: each file old or new (the push is a merge, not atomic as a whole).
    for (tag, d) in [("A", "pushA"), ("B", "pushB")] {
        for i in 0..40 {
            write(
                &host.path().join(d).join(format!("p{i:02}.txt")),
                format!("{tag}{i} {}\n", "x".repeat(80)).repeat(200),
            );
        }
    }
    let pushed = |g: &Guest| -> BTreeMap<String, String> {
        g.files
            .iter()
            .filter(|(p, _)| p.starts_with("pushed/"))
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect()
    };
    e.ok_json(&[
        "workspace",
        "sync",
        "push",
        id,
        &h("pushA"),
        "--dest",
        "pushed",
        "--json",
    ]);
    let sync_a = pushed(&guest(&e, id));
    let (w, _) = e.timed(&[
        "workspace",
        "sync",
        "push",
        id,
        &h("pushB"),
        "--dest",
        "pushed",
        "--json",
    ]);
    let g = guest(&e, id);
    let sync_b = pushed(&g);
    assert_eq!(sync_a.len(), 40);
    acked = g.files;
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let (src, want, old) = if k % 2 == 0 {
            ("pushA", &sync_a, &sync_b)
        } else {
            ("pushB", &sync_b, &sync_a)
        };
        let shot = e.shoot(
            &[
                "workspace",
                "sync",
                "push",
                id,
                &h(src),
                "--dest",
                "pushed",
                "--json",
            ],
            d,
        );
        let (_, g, busy) = after_kill_settled(&e, id);
        let now = pushed(&g);
        assert_eq!(now.len(), 40, "{now:?}");
        let mut new = 0;
        for (p, s) in &now {
            assert!(*s == want[p] || *s == old[p], "a torn file: {p}");
            new += usize::from(*s == want[p]);
        }
        assert!(!shot.ok || new == 40, "an acknowledged push was lost");
        let rest = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .filter(|(p, _)| !p.starts_with("pushed/"))
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect()
        };
        assert_eq!(
            changes(&rest(&g.files), &rest(&acked)),
            Vec::<String>::new()
        );
        acked = g.files;
        let outcome = match new {
            40 => "all files new".to_string(),
            0 => "all files old".to_string(),
            _ => "some files new, each whole".to_string(),
        };
        f.note("sync push", k, &shot, w, &settled(&outcome, busy));
    }
    // The next push removes the spools of killed ones.
    e.ok_json(&[
        "workspace",
        "sync",
        "push",
        id,
        &h("pushA"),
        "--dest",
        "pushed",
        "--json",
    ]);
    assert_eq!(
        spools(&dir),
        Vec::<String>::new(),
        "spools left after a push"
    );
    acked = guest(&e, id).files;

    // export of a directory and of a file: complete or absent; the next export leaves no
    // staging directory and no spool.
    let exports = host.path().join("exports");
    let out = |name: &str| exports.join(name).to_str().unwrap().to_string();
    for (op, path, kind) in [
        ("export (directory)", "/workspace", "dir"),
        ("export (file)", "big.txt", "file"),
    ] {
        let (w, _) = e.timed(&[
            "workspace",
            "export",
            id,
            path,
            "--output",
            &out(&format!("{kind}-ref")),
            "--json",
        ]);
        let reference = host_tree(&exports.join(format!("{kind}-ref")));
        assert!(reference.len() > 1 || kind == "file");
        for (k, d) in f.delays(N, w).into_iter().enumerate() {
            let target = exports.join(format!("{kind}-{k}"));
            let shot = e.shoot(
                &[
                    "workspace",
                    "export",
                    id,
                    path,
                    "--output",
                    &out(&format!("{kind}-{k}")),
                    "--json",
                ],
                d,
            );
            let (_, g) = after_kill(&e, id);
            assert_eq!(changes(&g.files, &acked), Vec::<String>::new());
            let exists = std::fs::symlink_metadata(&target).is_ok();
            if exists {
                assert!(
                    host_tree(&target) == reference,
                    "an incomplete export at {target:?}"
                );
            }
            assert!(!shot.ok || exists, "an acknowledged export is missing");
            let (left_staging, left_spool) =
                (!stagings(&exports).is_empty(), !spools(&dir).is_empty());
            // The next export: complete, and it removes what the killed one left.
            let again = format!("{kind}-{k}-again");
            e.ok_json(&[
                "workspace",
                "export",
                id,
                path,
                "--output",
                &out(&again),
                "--json",
            ]);
            assert!(host_tree(&exports.join(&again)) == reference);
            assert_eq!(stagings(&exports), Vec::<String>::new(), "staging left");
            assert_eq!(spools(&dir), Vec::<String>::new(), "spool left");
            for p in [target, exports.join(&again)] {
                let _ = std::fs::remove_dir_all(&p);
                let _ = std::fs::remove_file(&p);
            }
            let outcome = format!(
                "{}{}",
                if exists { "complete" } else { "absent" },
                match (left_staging, left_spool) {
                    (false, false) => "",
                    (true, false) => "; its staging directory removed by the next",
                    (false, true) => "; its spool removed by the next",
                    (true, true) => "; its spool and staging directory removed by the next",
                }
            );
            f.note(op, k, &shot, w, &outcome);
        }
    }

    // diff: no spool survives the next diff, whose result is unchanged.
    let (w, reference) = e.timed(&["workspace", "diff", id, "--json"]);
    assert_eq!(reference["changed"], true);
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let shot = e.shoot(&["workspace", "diff", id, "--json"], d);
        let (_, g) = after_kill(&e, id);
        assert_eq!(changes(&g.files, &acked), Vec::<String>::new());
        let left = spools(&dir);
        let again = e.ok_json(&["workspace", "diff", id, "--json"]);
        assert!(again["patch"] == reference["patch"], "the diff changed");
        assert_eq!(
            spools(&dir),
            Vec::<String>::new(),
            "spool left after a diff"
        );
        let outcome = if left.is_empty() {
            "nothing left"
        } else {
            "its spool removed by the next"
        };
        f.note("diff", k, &shot, w, outcome);
    }

    e.delete_and_assert_gone(id);
    f.report();
}

/// `create` (with a directory seed), `reset` and `delete` killed at seeded moments.
#[test]
fn killing_create_reset_or_delete_at_any_moment() {
    const N: u32 = 10;
    const EARLY: u32 = 6;
    let mut f = Faults::new("create, reset, delete", 2);
    let e = Env::new();
    let host = tempfile::tempdir().unwrap();
    let seed_dir = host.path().join("seed");
    write(&seed_dir.join("keep.txt"), "precious");
    for i in 0..20 {
        write(
            &seed_dir.join(format!("src/m{i:02}.txt")),
            format!("{i}\n").repeat(500),
        );
    }
    std::os::unix::fs::symlink("src/m00.txt", seed_dir.join("link")).unwrap();
    let seed = seed_dir.to_str().unwrap();
    let create = [
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        seed,
        "--json",
    ];

    // reset: started (done or not begun), or error/stopped and recovered with its data or
    // its baseline, never a healthy-looking workspace with neither.
    let (w_create, r) = e.timed(&create);
    let id = r["workspace_id"].as_str().unwrap().to_string();
    let id = id.as_str();
    let baseline = guest(&e, id).files;
    assert_eq!(baseline.len(), 21, "{baseline:?}");
    let (w, _) = e.timed(&["workspace", "reset", id, "--json"]);
    for (k, d) in f.delays_early(N, EARLY, w).into_iter().enumerate() {
        let marker = format!("m{k}.txt");
        e.ok_json(&[
            "workspace",
            "file",
            "write",
            id,
            &marker,
            "--text",
            "mark",
            "--json",
        ]);
        let acked = guest(&e, id).files;
        let resets = e.ok_json(&["workspace", "status", id, "--json"])["reset_count"]
            .as_u64()
            .unwrap();
        let shot = e.shoot(&["workspace", "reset", id, "--json"], d);
        let s = truthful_status(&e, id);
        let done = s["reset_count"].as_u64().unwrap() == resets + 1;
        let state = s["state"].as_str().unwrap().to_string();
        if state != "started" {
            assert_quiet(&e, id);
        }
        let (outcome, want) = match state.as_str() {
            "started" if done => ("reset done", &baseline),
            "started" => ("not begun: data kept", &acked),
            "error" => {
                let why = s["last_error"].as_str().unwrap();
                assert!(why.contains("`reset` rebuilds it"), "{s}");
                e.ok_json(&["workspace", "reset", id, "--json"]);
                ("error; `reset` rebuilt it", &baseline)
            }
            "stopped" => {
                e.ok_json(&["workspace", "start", id, "--json"]);
                ("stopped with its data; `start` recovered it", &acked)
            }
            other => panic!("{other}: {s}"),
        };
        assert!(!shot.ok || done, "an acknowledged reset is not done: {s}");
        let s = truthful_status(&e, id);
        assert_eq!(s["state"], "started", "{s}");
        assert_one_of_each(&e, id);
        let g = guest(&e, id);
        assert!(g.temps.is_empty(), "{:?}", g.temps);
        assert_eq!(
            changes(&g.files, want),
            Vec::<String>::new(),
            "after: {outcome}"
        );
        f.note("reset", k, &shot, w, outcome);
    }
    e.delete_and_assert_gone(id);

    // delete: nothing is left once a delete has succeeded (or says the workspace is gone).
    let (_, r) = e.timed(&create);
    let first = r["workspace_id"].as_str().unwrap().to_string();
    let (w, _) = e.timed(&["workspace", "delete", &first, "--json"]);
    e.assert_gone(&first);
    for (k, d) in f.delays(N, w).into_iter().enumerate() {
        let id = e.ok_json(&create)["workspace_id"]
            .as_str()
            .unwrap()
            .to_string();
        let id = id.as_str();
        let shot = e.shoot(&["workspace", "delete", id, "--json"], d);
        let out = e.pyro(&["workspace", "status", id, "--json"]);
        let outcome = if out.status.success() {
            let s = truthful_status(&e, id);
            let state = s["state"].as_str().unwrap().to_string();
            if state == "started" {
                let g = guest(&e, id);
                assert_eq!(changes(&g.files, &baseline), Vec::<String>::new());
            } else {
                assert_quiet(&e, id);
            }
            format!("still listed, {state}")
        } else {
            assert!(
                text(&out.stdout).contains("not_found"),
                "{}",
                text(&out.stdout)
            );
            "record gone".to_string()
        };
        // Deleting again finishes it.
        let again = e.pyro(&["workspace", "delete", id, "--json"]);
        assert!(
            again.status.success() || text(&again.stdout).contains("not_found"),
            "{}",
            text(&again.stdout)
        );
        e.assert_gone(id);
        let outcome = if again.status.success() {
            format!("{outcome}; deleted again")
        } else {
            format!("{outcome}; a second delete: not found")
        };
        assert!(!shot.ok || outcome.starts_with("record gone"), "{outcome}");
        f.note("delete", k, &shot, w, &outcome);
    }

    // create with a directory seed: nothing, an unrecorded directory (removed once old), an
    // `error` workspace that `reset` rebuilds from its seed, or a created one.
    for (k, d) in f.delays_early(N, EARLY, w_create).into_iter().enumerate() {
        let before = e.ws_dirs();
        let shot = e.shoot(&create, d);
        let made: Vec<String> = e.ws_dirs().difference(&before).cloned().collect();
        assert!(made.len() <= 1, "{made:?}");
        let list = e.ok_json(&["workspace", "list", "--json"]);
        let listed: Vec<String> = list["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["workspace_id"].as_str().unwrap().to_string())
            .collect();
        let outcome = match made.first() {
            None => {
                assert!(listed.is_empty(), "{list}");
                "nothing made".to_string()
            }
            Some(id) if !listed.contains(id) => {
                // Killed before it recorded the workspace: nothing runs for it, and once
                // older than the grace period `list` removes it.
                assert!(listed.is_empty(), "{list}");
                let dir = e.ws_dir(id);
                assert_eq!(users_of(&dir), Vec::new());
                let old = std::time::SystemTime::now() - Duration::from_secs(600);
                std::fs::File::open(&dir)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
                e.ok_json(&["workspace", "list", "--json"]);
                assert!(!dir.exists(), "an unrecorded directory is never removed");
                "unrecorded directory, removed by `list`".to_string()
            }
            Some(id) => {
                let s = truthful_status(&e, id);
                let state = s["state"].as_str().unwrap().to_string();
                let outcome = match state.as_str() {
                    "started" => "created".to_string(),
                    "error" => {
                        assert_quiet(&e, id);
                        let why = s["last_error"].as_str().unwrap();
                        assert!(why.contains("interrupted"), "{s}");
                        let r = e.ok_json(&["workspace", "reset", id, "--json"]);
                        assert_eq!(r["state"], "started", "{r}");
                        "error; `reset` rebuilt it from its seed".to_string()
                    }
                    other => panic!("a killed create left {other}: {s}"),
                };
                assert_one_of_each(&e, id);
                let g = guest(&e, id);
                assert_eq!(changes(&g.files, &baseline), Vec::<String>::new());
                e.delete_and_assert_gone(id);
                outcome
            }
        };
        assert!(!shot.ok || outcome == "created", "{outcome}");
        f.note("create", k, &shot, w_create, &outcome);
    }
    f.report();
}

/// `stop` and `start` killed at seeded moments, on one workspace.
#[test]
fn killing_stop_or_start_at_any_moment_leaves_no_stray_vm_and_loses_no_data() {
    // Start: ten kills in the first two seconds (a cold start takes ~4 s under TCG, so these
    // all land between the VMM's spawn and the start's end), two later ones near its end.
    const TRIALS: u64 = 12;
    let mut f = Faults::new("stop and start", 3);
    let e = Env::new();
    let id = e.create_with_file();
    let dir = e.ws_dir(&id);
    let mut rng = Rng(seed());
    let mut survived = 0;
    let t = Instant::now();
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    let w_stop = t.elapsed();
    let (w_start, _) = e.timed(&["workspace", "start", &id, "--json"]);
    let stop_delays = f.delays(TRIALS as u32, w_stop);
    for trial in 0..TRIALS {
        // Written by a command, never synced: a stop (killed or not, then completed) must
        // flush it.
        let unsynced = format!("/root/unsynced-{trial}");
        e.ok_json(&[
            "workspace",
            "exec",
            &id,
            "--json",
            "--shell",
            &format!("echo {trial} > {unsynced}"),
        ]);
        let shot = e.shoot(
            &["workspace", "stop", &id, "--json"],
            stop_delays[trial as usize],
        );
        let s = truthful_status(&e, &id);
        let outcome = match (s["state"].as_str().unwrap(), s["last_error"].as_str()) {
            ("started", _) => "still started".to_string(),
            ("stopped", None) => "stopped".to_string(),
            ("stopped", Some(why)) if why.contains("exited unexpectedly") => {
                "stopped, reported as a VMM crash".to_string()
            }
            ("stopped", Some(why)) => format!("stopped ({why})"),
            (other, _) => panic!("a killed stop left {other}: {s}"),
        };
        assert!(!shot.ok || s["state"] == "stopped", "{s}");
        if s["state"] == "stopped" {
            assert_quiet(&e, &id);
        }
        f.note("stop", trial as usize, &shot, w_stop, &outcome);

        let s = e.ok_json(&["workspace", "stop", &id, "--json"]);
        assert_eq!(s["state"], "stopped", "{s}");
        assert!(vmms(&dir).is_empty(), "stop left a VMM");
        // One kill in each 200 ms slice of the first two seconds, at a seeded offset; then
        // one at 3.5-4 s and one at 5-5.5 s.
        let delay = Duration::from_millis(match trial {
            0..10 => trial * 200 + rng.next() % 200,
            _ => 2000 + (trial - 9) * 1500 + rng.next() % 500,
        });
        let shot = e.shoot(&["workspace", "start", &id, "--json"], delay);
        let finished = shot.finished;
        let orphan = !vmms(&dir).is_empty();
        survived += u32::from(orphan && !finished);
        // Three ways on after the kill: look first, start at once, or stop it.
        let (s, follow_up) = match trial % 3 {
            0 => {
                let s = truthful_status(&e, &id);
                let said = format!(
                    "status said {}{}",
                    s["state"].as_str().unwrap_or_default(),
                    match s["last_error"].as_str() {
                        Some(why) if why.contains("still running") => {
                            ", its leftover VM ended".to_string()
                        }
                        Some(why) => format!(" ({why})"),
                        None => String::new(),
                    }
                );
                if orphan && !finished && s["state"] == "stopped" {
                    let why = s["last_error"].as_str().unwrap_or_default();
                    assert!(why.contains("still running"), "{s}");
                }
                let s = e.ok_json(&["workspace", "start", &id, "--json"]);
                assert_eq!(s["state"], "started", "{s}");
                (truthful_status(&e, &id), format!("{said}; start"))
            }
            1 => {
                let s = e.ok_json(&["workspace", "start", &id, "--json"]);
                assert_eq!(s["state"], "started", "{s}");
                (truthful_status(&e, &id), "start at once".to_string())
            }
            _ => {
                let s = e.ok_json(&["workspace", "stop", &id, "--json"]);
                assert_eq!(s["state"], "stopped", "{s}");
                assert!(vmms(&dir).is_empty(), "stop left a VMM");
                truthful_status(&e, &id);
                assert_quiet(&e, &id);
                let s = e.ok_json(&["workspace", "start", &id, "--json"]);
                (s, "stop, status, start".to_string())
            }
        };
        assert_eq!(s["state"], "started", "{s}");
        e.assert_usable(&id);
        let r = e.ok_json(&[
            "workspace",
            "exec",
            &id,
            "--json",
            "--shell",
            "cat /root/unsynced-* | sort -n",
        ]);
        let want: String = (0..=trial).map(|t| format!("{t}\n")).collect();
        assert_eq!(
            r["stdout"],
            want.as_str(),
            "data written before a stop was lost"
        );
        // One VMM, one relay and one watchdog: nothing of the killed start is left.
        assert_one_of_each(&e, &id);
        let outcome = format!(
            "{}; then {follow_up}",
            match (finished, orphan) {
                (true, _) => "started",
                (false, true) => "its VMM outlived the CLI",
                (false, false) => "no VMM was running yet",
            },
        );
        f.note("start", trial as usize, &shot, w_start, &outcome);
    }
    eprintln!("{survived} of {TRIALS} start kills left a VMM behind the killed CLI");
    // Not vacuous: some kills must have hit the window the fix is about.
    assert!(survived > 0, "no kill hit a running boot");

    // A start killed with nothing looking afterwards: delete alone must end its VMM.
    e.ok_json(&["workspace", "stop", &id, "--json"]);
    let mut child = e
        .cmd()
        .args(["workspace", "start", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("a VMM booting", || !vmms(&dir).is_empty());
    child.kill().unwrap();
    let _ = child.wait();
    e.delete_and_assert_gone(&id);
    f.report();
}

#[test]
fn killing_the_vmm_relay_or_watchdog_of_a_started_workspace() {
    let e = Env::new();
    let id = e.create_with_file();
    let dir = e.ws_dir(&id);
    eventually("one watchdog", || helpers(&dir, "__watchdog").len() == 1);

    // The VMM: reported as a crash, its relay ended, data kept, `start` recovers.
    let vmm = vmms(&dir);
    assert_eq!(vmm.len(), 1, "{:?}", users_of(&dir));
    kill9(vmm[0]);
    eventually("the VMM gone", || vmms(&dir).is_empty());
    let s = truthful_status(&e, &id);
    assert_eq!(s["state"], "stopped", "{s}");
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("exited unexpectedly"), "{s}");
    eventually("no relay", || helpers(&dir, "__relay").is_empty());
    eventually("no watchdog", || helpers(&dir, "__watchdog").is_empty());
    let s = e.ok_json(&["workspace", "start", &id, "--json"]);
    assert_eq!(s["state"], "started", "{s}");
    e.assert_usable(&id);

    // The relay: the VM still runs (status says started), the next call restarts it.
    let relay = helpers(&dir, "__relay");
    assert_eq!(relay.len(), 1, "{:?}", users_of(&dir));
    kill9(relay[0]);
    eventually("the relay gone", || helpers(&dir, "__relay").is_empty());
    let s = truthful_status(&e, &id);
    assert_eq!(s["state"], "started", "{s}");
    e.assert_usable(&id);
    let again = helpers(&dir, "__relay");
    assert_eq!(again.len(), 1, "{:?}", users_of(&dir));
    assert_ne!(again, relay);

    // The watchdog: the next operation starts a new one.
    let dog = helpers(&dir, "__watchdog");
    assert_eq!(dog.len(), 1, "{:?}", users_of(&dir));
    kill9(dog[0]);
    eventually("the watchdog gone", || {
        helpers(&dir, "__watchdog").is_empty()
    });
    e.assert_usable(&id);
    eventually("a new watchdog", || {
        let now = helpers(&dir, "__watchdog");
        now.len() == 1 && now != dog
    });

    // Both at once, then a stop and a start: nothing doubles, nothing is lost.
    for p in vmms(&dir).into_iter().chain(helpers(&dir, "__relay")) {
        kill9(p);
    }
    let s = e.ok_json(&["workspace", "stop", &id, "--json"]);
    assert_eq!(s["state"], "stopped", "{s}");
    eventually("nothing left running", || users_of(&dir).is_empty());
    e.ok_json(&["workspace", "start", &id, "--json"]);
    e.assert_usable(&id);
    e.delete_and_assert_gone(&id);
}

#[test]
fn directories_no_record_names_are_reaped_after_a_grace_period() {
    let e = Env::new();
    // `list` creates the store; then plant what a create killed before it recorded its
    // workspace leaves: a directory with its lock, builder and baseline.
    e.ok_json(&["workspace", "list", "--json"]);
    let root = e.state.path().join("workspaces");
    let plant = |id: &str, age: Duration| {
        let d = root.join(id);
        std::fs::create_dir_all(d.join("logs")).unwrap();
        for f in ["lock", "baseline.tar"] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        std::fs::write(d.join("builder"), "999999999 1\n").unwrap();
        let t = std::time::SystemTime::now() - age;
        let f = std::fs::File::open(&d).unwrap();
        f.set_modified(t).unwrap();
        d
    };
    let old = plant("0123456789ab", Duration::from_secs(600));
    let young = plant("ba9876543210", Duration::from_secs(0));
    // Not a workspace id: never touched.
    let other = root.join("notes");
    std::fs::create_dir_all(&other).unwrap();
    let _ = std::fs::File::open(&other)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600));
    let list = e.ok_json(&["workspace", "list", "--json"]);
    assert_eq!(list["count"], 0, "{list}");
    assert!(!old.exists(), "an old unrecorded directory is left");
    assert!(
        young.exists(),
        "a young one (a create in progress) was removed"
    );
    assert!(
        other.exists(),
        "a directory that is no workspace was removed"
    );
}
