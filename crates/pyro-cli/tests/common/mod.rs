//! Helpers shared by the CLI's workspace test binaries (`workspace.rs`, `faults.rs`): a
//! private state directory per test, running the real `pyro` binary in it, and finding the
//! processes that use it. Each binary adds its own methods to [`Env`] where it needs more.

#![allow(dead_code)] // each test binary uses its own part

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A private state directory (and a scratch directory) for one test.
pub struct Env {
    /// `PYRO_STATE_DIR`.
    pub state: tempfile::TempDir,
    /// Scratch space for seeds and outputs.
    pub work: tempfile::TempDir,
}

impl Env {
    /// A new environment; `prefix` names the state directory (seen in leftovers).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            state: tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// `pyro` with this environment's state directory, no stdin, and the backend left to
    /// the host.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pyro"));
        c.env("PYRO_STATE_DIR", self.state.path())
            .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
            .env_remove("PYRO_BACKEND")
            .stdin(Stdio::null());
        c
    }

    /// Runs `pyro args` to completion.
    pub fn pyro(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `pyro args` (with `--json`), which must succeed, and parses its stdout.
    pub fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pyro(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    }

    /// Runs `pyro args`, which must fail with exit 1 and one `[error]` line; returns stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.pyro(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should fail: {}",
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert!(err.starts_with("[error] "), "{args:?}: {err}");
        err
    }
}

impl Drop for Env {
    /// A failed test must not leave workspaces running (their VMs run detached).
    fn drop(&mut self) {
        for (pid, _) in users_of(self.state.path()) {
            // SAFETY: kill(2) on a process that uses this test's own state directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Lossy text of some output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Processes whose working directory is in `dir`.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    pyro_core::host::processes_with_cwd_in(dir)
}

/// `path` without the ` (deleted)` the kernel appends to removed files and directories.
pub fn undeleted(path: PathBuf) -> PathBuf {
    match path.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsString::from_vec(b.to_vec())),
        None => path,
    }
}

/// A process's command name.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every live process (other than this one) whose working directory or one of whose open
/// files is `dir` or inside it, deleted or not, with its command name.
pub fn users_of(dir: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Zombies hold nothing.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
        {
            continue;
        }
        let under = |l: std::io::Result<PathBuf>| l.is_ok_and(|p| undeleted(p).starts_with(dir));
        let mut uses = under(std::fs::read_link(format!("/proc/{pid}/cwd")));
        if !uses && let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            uses = fds.flatten().any(|fd| under(std::fs::read_link(fd.path())));
        }
        if uses {
            out.push((pid, comm(pid)));
        }
    }
    out
}
