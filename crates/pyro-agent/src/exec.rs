//! Running one command in the guest: [`run`] takes an [`ExecSpec`], streams the
//! command's output as raw byte chunks ([`Output`]) and returns an [`ExecOutcome`].
//!
//! What it guarantees, beyond "spawn and wait":
//! - **Bytes, never text.** Output is forwarded exactly as produced.
//! - **Bounded forwarding, full draining.** Each stream is forwarded up to
//!   `max_output_bytes`; past that the pipe is still read (the command never blocks on a
//!   full pipe) and counted, and the outcome says it was truncated.
//! - **Backpressure.** Chunks go through a bounded channel; a slow receiver slows the
//!   command down instead of growing buffers.
//! - **A whole tree is killed on timeout.** The command runs as the leader of a new
//!   session, in a cgroup of its own inside a guest ([`crate::limits`]). On timeout, the
//!   cgroup is killed (`cgroup.kill`), and every process of that session or process
//!   group, every descendant of those, and every process still holding the command's
//!   output pipes (which catches children that called `setsid` themselves) gets
//!   `SIGKILL`; output produced until then is kept.
//! - **Background daemons do not hang the call.** Once the leader exits, the pipes are
//!   drained until end of file but for at most [`DRAIN_GRACE`] of waiting for data; a
//!   process that keeps them open is left running, its further output dropped.
//! - **Cancellation kills.** If the receiver of the output channel is dropped, or the
//!   [`run`] future itself is dropped, the command's tree is killed.
//! - **Shell-like failure codes.** A program that is not found yields exit code 127, one
//!   that cannot be executed 126, each with a one-line message on stderr, as a shell does.
//!
//! Children are started through [`crate::reaper::spawn_launch`] (straight into their
//! cgroup, see [`crate::spawn`]) or, where the kernel refuses that, [`crate::reaper::spawn`];
//! the reaper must be running.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::pending;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::CommandCgroup;
use crate::{reaper, spawn, sys};

/// `PATH` of the base environment every command starts from.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Working directory of a command whose spec names none.
pub const DEFAULT_CWD: &str = "/";

/// After the leader exits, how long to keep waiting for more output from processes that
/// still hold the pipes (time spent waiting on a slow receiver does not count).
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Exit code reported when the command timed out.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code reported when the program exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code reported when the program is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Size of one read from a pipe, hence the largest chunk sent.
const CHUNK: usize = 64 * 1024;

/// After the drain grace, output already waiting in a pipe is still taken, up to this
/// much per stream (the largest pipe buffer Linux allows by default).
const SWEEP_LIMIT: u64 = 1024 * 1024;

/// How long a kill keeps re-scanning until the tree is confirmed dead.
const KILL_CONFIRM: Duration = Duration::from_secs(2);

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A program and its arguments, executed directly; the program is looked up in the
    /// command's `PATH` unless it contains a `/`.
    Argv(Vec<String>),
    /// A shell script, run as `/bin/sh -c SCRIPT`.
    Shell(String),
}

/// A validated-on-use request to run one command.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command.
    pub command: Command,
    /// Absolute working directory; [`DEFAULT_CWD`] when absent.
    pub cwd: Option<PathBuf>,
    /// Variables added to (or overriding) the base environment: `PATH` = [`BASE_PATH`],
    /// `HOME=/root`, `LANG=C.UTF-8`, and `TERM=dumb` unless given here.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit; the command's whole tree is killed when it runs out.
    pub timeout: Option<Duration>,
    /// Bytes forwarded per stream at most; the rest is read and counted, not sent.
    pub max_output_bytes: Option<u64>,
    /// Bytes written to the command's stdin, then closed; `None` gives `/dev/null`.
    pub stdin: Option<Bytes>,
}

impl ExecSpec {
    /// A spec with no cwd, no extra environment, no limits and no stdin.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            max_output_bytes: None,
            stdin: None,
        }
    }
}

/// A chunk of output, in the order read from each pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes from the command's stdout.
    Stdout(Bytes),
    /// Bytes from the command's stderr.
    Stderr(Bytes),
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit code; `128 + n` when killed by signal `n`, [`EXIT_TIMEOUT`] on timeout,
    /// [`EXIT_NOT_FOUND`] / [`EXIT_NOT_EXECUTABLE`] when it could not be started.
    pub exit_code: i32,
    /// The signal that terminated the command's leader, if any (`SIGKILL` on timeout).
    pub signal: Option<i32>,
    /// The timeout ran out and the command's tree was killed.
    pub timed_out: bool,
    /// Time from the request to the end of output, in milliseconds.
    pub duration_ms: u64,
    /// Bytes the command wrote to stdout (forwarded or not).
    pub stdout_bytes: u64,
    /// Bytes the command wrote to stderr (forwarded or not).
    pub stderr_bytes: u64,
    /// Not all of stdout was forwarded (over `max_output_bytes`).
    pub stdout_truncated: bool,
    /// Not all of stderr was forwarded (over `max_output_bytes`).
    pub stderr_truncated: bool,
    /// Why the program could not be started (exit codes 126 and 127).
    pub spawn_error: Option<String>,
}

/// Why [`run`] produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request itself is invalid (empty argv, missing cwd, bad environment name...).
    #[error("bad exec request: {reason}")]
    BadRequest {
        /// What is wrong, for the client.
        reason: String,
    },
    /// The agent could not start the process for a reason of its own (out of memory,
    /// out of file descriptors, reaper not running...).
    #[error("cannot start {program}")]
    Spawn {
        /// The program that was being started.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The receiver of the output channel went away; the command's tree was killed.
    #[error("output receiver dropped; command killed")]
    Cancelled,
}

fn bad_request(reason: impl Into<String>) -> ExecError {
    ExecError::BadRequest {
        reason: reason.into(),
    }
}

/// The program resolved for execution, or why it cannot run.
enum Prepared {
    Ready { launch: LaunchSpec, program: String },
    Unrunnable { exit_code: i32, message: String },
}

/// A command ready to start: the resolved executable, `argv` (with `argv[0]`), the whole
/// environment and the working directory.
pub(crate) struct LaunchSpec {
    pub(crate) path: PathBuf,
    pub(crate) argv: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: PathBuf,
    pub(crate) stdin_piped: bool,
}

impl LaunchSpec {
    /// The same as a `std::process::Command` (stdout and stderr piped).
    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.path);
        if let Some((arg0, args)) = self.argv.split_first() {
            cmd.arg0(arg0).args(args);
        }
        cmd.env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin_piped {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        cmd
    }

    /// Starts it in a new session in the cgroup given by its directory (`cgroup_dir`) and
    /// `cgroup.procs` (`join`): straight into the cgroup with `clone3` where the kernel
    /// can ([`crate::spawn`]), else (or when `clone3` refuses, for instance because the
    /// cgroup is at its `pids.max`) with a fork that then joins the cgroup, as before.
    /// Blocks until the program is exec'd.
    pub(crate) fn start(
        &self,
        cgroup_dir: Option<RawFd>,
        join: Option<RawFd>,
    ) -> io::Result<reaper::SpawnedChild> {
        let program = sys::cstring(&self.path)?;
        let argv = self
            .argv
            .iter()
            .map(sys::cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let envp = self
            .env
            .iter()
            .map(|(k, v)| sys::cstring(format!("{k}={v}")))
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = sys::cstring(&self.cwd)?;
        let launch = spawn::Launch {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: &cwd,
            stdin_piped: self.stdin_piped,
            cgroup: cgroup_dir,
        };
        match reaper::spawn_launch(&launch) {
            Ok(child) => return Ok(child),
            Err(spawn::Error::Start(e)) => return Err(e),
            Err(spawn::Error::Clone(_)) => {}
        }
        let mut cmd = self.command();
        start_in_session(&mut cmd, join);
        reaper::spawn(cmd)
    }
}

/// Result of checking one candidate path for a program.
enum Candidate {
    Runnable,
    Missing,
    Denied(&'static str),
}

fn check_candidate(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Candidate::Denied("Is a directory"),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Candidate::Denied("Permission denied")
        }
        Ok(_) => Candidate::Runnable,
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            Candidate::Denied("Permission denied")
        }
        Err(_) => Candidate::Missing,
    }
}

/// Finds `program` like `execvp` would: directly when it contains a `/` (relative to
/// `cwd`), else in each directory of `path_var`. A non-executable match is remembered
/// but a later executable one wins, as in shells.
fn resolve_program(program: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, Candidate> {
    if program.contains('/') {
        let path = cwd.join(program);
        return match check_candidate(&path) {
            Candidate::Runnable => Ok(path),
            other => Err(other),
        };
    }
    let mut denied = None;
    // Empty entries would mean "the current directory": not honoured, on purpose.
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let path = Path::new(dir).join(program);
        match check_candidate(&path) {
            Candidate::Runnable => return Ok(path),
            Candidate::Missing => {}
            denied_here @ Candidate::Denied(_) => {
                denied.get_or_insert(denied_here);
            }
        }
    }
    Err(denied.unwrap_or(Candidate::Missing))
}

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ExecError> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(bad_request(format!(
                "invalid environment variable name {key:?}"
            )));
        }
        if value.contains('\0') {
            return Err(bad_request(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// The environment a command starts with: the base, then the spec's variables.
pub(crate) fn build_env(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), BASE_PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.entry("TERM".to_owned())
        .or_insert_with(|| "dumb".to_owned());
    env
}

fn prepare(spec: &ExecSpec) -> Result<Prepared, ExecError> {
    let cwd = spec.cwd.as_deref().unwrap_or(Path::new(DEFAULT_CWD));
    if !cwd.is_absolute() {
        return Err(bad_request(format!(
            "working directory {} is not an absolute path",
            cwd.display()
        )));
    }
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(bad_request(format!(
                "working directory {} is not a directory",
                cwd.display()
            )));
        }
        Err(err) => {
            return Err(bad_request(format!(
                "working directory {} is not accessible: {err}",
                cwd.display()
            )));
        }
    }
    validate_env(&spec.env)?;
    let env = build_env(&spec.env);

    let (program, args): (&str, &[String]) = match &spec.command {
        Command::Argv(argv) => match argv.split_first() {
            Some((program, _)) if program.is_empty() => {
                return Err(bad_request("the program name (argv[0]) is empty"));
            }
            Some((program, args)) => (program, args),
            None => return Err(bad_request("empty argv: no program to run")),
        },
        Command::Shell(_) => ("/bin/sh", &[]),
    };
    let has_nul = |s: &str| s.contains('\0');
    let script_nul = matches!(&spec.command, Command::Shell(s) if has_nul(s));
    if has_nul(program) || args.iter().any(|a| has_nul(a)) || script_nul {
        return Err(bad_request("the command contains a NUL byte"));
    }

    let path_var = env.get("PATH").map_or(BASE_PATH, String::as_str);
    let resolved = match resolve_program(program, path_var, cwd) {
        Ok(path) => path,
        Err(Candidate::Denied(why)) => {
            return Ok(Prepared::Unrunnable {
                exit_code: EXIT_NOT_EXECUTABLE,
                message: format!("{program}: {why}"),
            });
        }
        Err(_) => {
            return Ok(Prepared::Unrunnable {
                exit_code: EXIT_NOT_FOUND,
                message: format!("{program}: command not found"),
            });
        }
    };

    let argv = match &spec.command {
        Command::Argv(argv) => argv.clone(),
        Command::Shell(script) => vec!["sh".to_owned(), "-c".to_owned(), script.clone()],
    };
    Ok(Prepared::Ready {
        launch: LaunchSpec {
            path: resolved,
            argv,
            env,
            cwd: cwd.to_path_buf(),
            stdin_piped: spec.stdin.is_some(),
        },
        program: program.to_owned(),
    })
}

/// Makes the child the leader of a new session and moves it into the cgroup whose
/// `cgroup.procs` is open as `cgroup` (see [`crate::limits`]), between fork and exec.
fn start_in_session(cmd: &mut std::process::Command, cgroup: Option<RawFd>) {
    // SAFETY: the hook runs in the forked child before exec and only calls setsid(2) and
    // write(2) on a descriptor opened before the fork (and kept open until the spawn has
    // returned), both async-signal-safe, and reads errno on failure; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sys::setsid()?;
            if let Some(procs) = cgroup {
                // Best effort: a command outside the cgroup still runs, only unlimited.
                let _ = crate::limits::join(procs);
            }
            Ok(())
        });
    }
}

/// Errors of `execve` that mean "this program cannot be executed" (exit 126) rather
/// than a failure of the agent.
fn is_exec_failure(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::ENOEXEC
                | libc::EISDIR
                | libc::ENOTDIR
                | libc::ETXTBSY
                | libc::ELOOP
                | libc::EPERM
                | libc::E2BIG
                | libc::ENAMETOOLONG
                | libc::ELIBBAD
        )
    )
}

/// Outcome for a command that never started: reports `message` on stderr like a shell.
async fn unrunnable(
    exit_code: i32,
    message: String,
    cap: Option<u64>,
    out: &mpsc::Sender<Output>,
    started: Instant,
) -> Result<ExecOutcome, ExecError> {
    let line = Bytes::from(format!("pyro-agent: {message}\n"));
    let total = line.len() as u64;
    let allowed = usize::try_from(cap.unwrap_or(u64::MAX).min(total)).unwrap_or(line.len());
    if allowed > 0 {
        out.send(Output::Stderr(line.slice(..allowed)))
            .await
            .map_err(|_| ExecError::Cancelled)?;
    }
    Ok(ExecOutcome {
        exit_code,
        signal: None,
        timed_out: false,
        duration_ms: millis(started.elapsed()),
        stdout_bytes: 0,
        stderr_bytes: total,
        stdout_truncated: false,
        stderr_truncated: (allowed as u64) < total,
        spawn_error: Some(message),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `spec` to completion, sending its output to `out` as it arrives.
///
/// Returns once the command's leader has exited and its output is drained (or the
/// drain grace ran out). See the module documentation for the guarantees.
///
/// # Errors
/// [`ExecError::BadRequest`] for an invalid spec (nothing was started),
/// [`ExecError::Spawn`] when the agent cannot start a process,
/// [`ExecError::Cancelled`] when `out`'s receiver is dropped (the command is killed).
pub async fn run(spec: ExecSpec, out: mpsc::Sender<Output>) -> Result<ExecOutcome, ExecError> {
    let started = Instant::now();
    let cap = spec.max_output_bytes;
    let (launch, program) = match prepare(&spec)? {
        Prepared::Ready { launch, program } => (launch, program),
        Prepared::Unrunnable { exit_code, message } => {
            return unrunnable(exit_code, message, cap, &out, started).await;
        }
    };
    // The command's own cgroup, else the commands' shared one, else none (outside a guest).
    let cgroup = CommandCgroup::create();
    let (cgroup_dir, join) = match &cgroup {
        Some(c) => (Some(c.dir_fd()), Some(c.procs())),
        None => (
            crate::limits::commands_dir(),
            crate::limits::commands_procs(),
        ),
    };
    // Starting blocks until the exec is done (slow for a big binary on a cold disk). The
    // cgroup's descriptors stay open until then: `cgroup` outlives the call.
    let spawned = tokio::task::spawn_blocking(move || launch.start(cgroup_dir, join))
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
    let child = match spawned {
        Ok(child) => child,
        Err(err) if is_exec_failure(&err) => {
            let message = format!("{program}: cannot execute: {err}");
            return unrunnable(EXIT_NOT_EXECUTABLE, message, cap, &out, started).await;
        }
        Err(source) => return Err(ExecError::Spawn { program, source }),
    };
    let spawn_err = |source: io::Error| ExecError::Spawn {
        program: program.clone(),
        source,
    };
    let leader = i32::try_from(child.pid).map_err(|_| spawn_err(io::Error::other("bad pid")))?;
    // From here on, leaving early (error, cancellation, or this future being dropped)
    // kills the command's tree.
    let mut guard = KillOnDrop {
        leader,
        pipe_inodes: Vec::new(),
        cgroup,
        armed: true,
    };
    let (stdout, stdout_ino) = pipe_reader(child.stdout).map_err(spawn_err)?;
    guard.pipe_inodes.push(stdout_ino);
    let (stderr, stderr_ino) = pipe_reader(child.stderr).map_err(spawn_err)?;
    guard.pipe_inodes.push(stderr_ino);
    let stdin = match (child.stdin, spec.stdin) {
        (Some(fd), Some(data)) if !data.is_empty() => Some((
            pipe::Sender::from_owned_fd(OwnedFd::from(fd)).map_err(spawn_err)?,
            data,
        )),
        // Empty input: dropping the pipe closes it at once.
        _ => None,
    };

    let mut session = Session {
        out: &out,
        stdout: Stream::new(stdout, cap),
        stderr: Stream::new(stderr, cap),
        stdin,
        pending: None,
        status: None,
        timed_out: false,
        drain_deadline: None,
    };
    let deadline = spec.timeout.map(|t| started + t);
    match session.drive(child.exit, deadline, &guard).await {
        Ok(()) => {}
        Err(Gone) => {
            kill_tree(&guard).await;
            guard.armed = false;
            return Err(ExecError::Cancelled);
        }
    }
    guard.armed = false;

    let status = session
        .status
        .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL));
    let signal = status.signal();
    let exit_code = if session.timed_out {
        EXIT_TIMEOUT
    } else if let Some(sig) = signal {
        128 + sig
    } else {
        status.code().unwrap_or(-1)
    };
    Ok(ExecOutcome {
        exit_code,
        signal,
        timed_out: session.timed_out,
        duration_ms: millis(started.elapsed()),
        stdout_bytes: session.stdout.total,
        stderr_bytes: session.stderr.total,
        stdout_truncated: session.stdout.truncated,
        stderr_truncated: session.stderr.truncated,
        spawn_error: None,
    })
}

/// Turns a piped child stream into an async reader, with the pipe's inode (used to find
/// processes still holding the write end).
fn pipe_reader<F: Into<OwnedFd>>(fd: Option<F>) -> io::Result<(pipe::Receiver, u64)> {
    let fd: OwnedFd = fd
        .ok_or_else(|| io::Error::other("stream was not piped"))?
        .into();
    let file = std::fs::File::from(fd);
    let ino = file.metadata()?.ino();
    Ok((pipe::Receiver::from_owned_fd(OwnedFd::from(file))?, ino))
}

/// The receiver of the output channel is gone.
struct Gone;

/// One output pipe being read.
struct Stream {
    rx: Option<pipe::Receiver>,
    buf: BytesMut,
    cap: u64,
    forwarded: u64,
    total: u64,
    truncated: bool,
    /// Bytes taken by [`Stream::sweep`] after the drain grace.
    swept: u64,
}

impl Stream {
    fn new(rx: pipe::Receiver, cap: Option<u64>) -> Self {
        Self {
            rx: Some(rx),
            buf: BytesMut::new(),
            cap: cap.unwrap_or(u64::MAX),
            forwarded: 0,
            total: 0,
            truncated: false,
            swept: 0,
        }
    }

    fn is_open(&self) -> bool {
        self.rx.is_some()
    }

    /// Reads the next chunk; never completes once the stream is closed.
    async fn read(&mut self) -> io::Result<usize> {
        match self.rx.as_mut() {
            Some(rx) => {
                if self.buf.capacity() - self.buf.len() < CHUNK {
                    self.buf.reserve(CHUNK);
                }
                rx.read_buf(&mut self.buf).await
            }
            None => pending().await,
        }
    }

    /// After the drain grace: takes what is already in the pipe without waiting (at most
    /// [`SWEEP_LIMIT`] in all), and closes the stream once nothing is. Returns the
    /// number of bytes read into the buffer, `None` once closed.
    fn sweep(&mut self) -> Option<usize> {
        let rx = self.rx.as_ref()?;
        if self.swept < SWEEP_LIMIT {
            if self.buf.capacity() - self.buf.len() < CHUNK {
                self.buf.reserve(CHUNK);
            }
            if let Ok(n) = rx.try_read_buf(&mut self.buf)
                && n > 0
            {
                self.swept += n as u64;
                return Some(n);
            }
        }
        // Whoever still holds the pipe is left alone; we just stop listening.
        self.rx = None;
        None
    }

    /// Accounts for `n` bytes just read into the buffer; returns what may be forwarded.
    fn take(&mut self, n: usize) -> Option<Bytes> {
        self.total += n as u64;
        let room = self.cap - self.forwarded;
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(n);
        if keep < n {
            self.truncated = true;
        }
        let chunk = (keep > 0).then(|| self.buf.split_to(keep).freeze());
        self.buf.clear();
        self.forwarded += keep as u64;
        chunk
    }
}

/// The state of one running command.
struct Session<'a> {
    out: &'a mpsc::Sender<Output>,
    stdout: Stream,
    stderr: Stream,
    stdin: Option<(pipe::Sender, Bytes)>,
    /// A chunk waiting for room in the channel; nothing is read meanwhile.
    pending: Option<(Output, Instant)>,
    status: Option<ExitStatus>,
    timed_out: bool,
    /// Set when the leader exits: stop waiting for output after this.
    drain_deadline: Option<Instant>,
}

impl Session<'_> {
    fn finished(&self) -> bool {
        self.status.is_some()
            && self.pending.is_none()
            && !self.stdout.is_open()
            && !self.stderr.is_open()
    }

    async fn drive(
        &mut self,
        mut exit: reaper::Exit,
        deadline: Option<Instant>,
        tree: &KillOnDrop,
    ) -> Result<(), Gone> {
        let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let timeout_sleep = tokio::time::sleep_until(deadline.unwrap_or(never));
        tokio::pin!(timeout_sleep);
        let drain_sleep = tokio::time::sleep_until(never);
        tokio::pin!(drain_sleep);

        while !self.finished() {
            // Deadlines are checked here, not only in the select below, so that a
            // stream that is always ready cannot starve them.
            let now = Instant::now();
            if self.status.is_none() && !self.timed_out && deadline.is_some_and(|d| now >= d) {
                self.timed_out = true;
                self.stdin = None;
                kill_tree(tree).await;
                continue;
            }
            if self.pending.is_none() && self.drain_deadline.is_some_and(|d| now >= d) {
                // Even past the deadline, output already in the pipes is kept: the agent
                // may simply not have been scheduled for a while.
                if let Some(n) = self.stdout.sweep() {
                    self.pending = self.stdout.take(n).map(|b| (Output::Stdout(b), now));
                } else if let Some(n) = self.stderr.sweep() {
                    self.pending = self.stderr.take(n).map(|b| (Output::Stderr(b), now));
                }
                continue;
            }
            if self.out.is_closed() {
                return Err(Gone);
            }
            let reading = self.pending.is_none();
            let watch_timeout = self.status.is_none() && !self.timed_out && deadline.is_some();
            let watch_drain = reading && self.drain_deadline.is_some();
            tokio::select! {
                status = &mut exit, if self.status.is_none() => {
                    self.status = Some(status);
                    self.stdin = None;
                    let drain_deadline = Instant::now() + DRAIN_GRACE;
                    self.drain_deadline = Some(drain_deadline);
                    drain_sleep.as_mut().reset(drain_deadline);
                }
                () = &mut timeout_sleep, if watch_timeout => {}
                () = &mut drain_sleep, if watch_drain => {}
                () = self.out.closed() => return Err(Gone),
                permit = reserve(self.out, self.pending.is_some()) => {
                    let permit = permit.map_err(|_| Gone)?;
                    if let Some((chunk, since)) = self.pending.take() {
                        permit.send(chunk);
                        // Waiting on the receiver does not use up the drain grace.
                        if let Some(old) = self.drain_deadline {
                            let drain_start = old - DRAIN_GRACE;
                            let waited = Instant::now() - since.max(drain_start);
                            let extended = old + waited;
                            self.drain_deadline = Some(extended);
                            drain_sleep.as_mut().reset(extended);
                        }
                    }
                }
                written = write_stdin(&mut self.stdin) => match written {
                    Ok(n) if n > 0 => {
                        if let Some((_, data)) = self.stdin.as_mut() {
                            let _ = data.split_to(n);
                            if data.is_empty() {
                                self.stdin = None;
                            }
                        }
                    }
                    // Zero bytes or an error (EPIPE: the command closed its stdin).
                    _ => self.stdin = None,
                },
                n = self.stdout.read(), if reading => {
                    match n {
                        Ok(n) if n > 0 => {
                            self.pending = self.stdout.take(n).map(|b| (Output::Stdout(b), Instant::now()));
                        }
                        _ => self.stdout.rx = None,
                    }
                }
                n = self.stderr.read(), if reading => {
                    match n {
                        Ok(n) if n > 0 => {
                            self.pending = self.stderr.take(n).map(|b| (Output::Stderr(b), Instant::now()));
                        }
                        _ => self.stderr.rx = None,
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reserves a slot in the channel when `wanted`; never completes otherwise.
async fn reserve(
    out: &mpsc::Sender<Output>,
    wanted: bool,
) -> Result<mpsc::Permit<'_, Output>, mpsc::error::SendError<()>> {
    if wanted {
        out.reserve().await
    } else {
        pending().await
    }
}

/// Writes some of the pending stdin bytes; never completes when there are none.
async fn write_stdin(stdin: &mut Option<(pipe::Sender, Bytes)>) -> io::Result<usize> {
    match stdin {
        Some((tx, data)) => tx.write(data).await,
        None => pending().await,
    }
}

/// The command's tree: its leader, its output pipes and its cgroup. Killed when a [`run`]
/// future is dropped before finishing (while `armed`).
struct KillOnDrop {
    leader: i32,
    pipe_inodes: Vec<u64>,
    cgroup: Option<CommandCgroup>,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill();
            }
            signal_tree(self.leader, &self.pipe_inodes);
        }
    }
}

/// Kills the command's tree and waits (bounded) until no process of it is alive: its
/// cgroup at once, then, as before cgroups, what [`find_tree`] finds (a process that moved
/// itself out of the cgroup). The `/proc` scans run on a blocking thread: with thousands of
/// processes (a fork bomb) they take long, and the agent must go on answering meanwhile.
async fn kill_tree(tree: &KillOnDrop) {
    if let Some(cgroup) = &tree.cgroup {
        cgroup.kill();
    }
    let give_up = Instant::now() + KILL_CONFIRM;
    loop {
        let (leader, inodes) = (tree.leader, tree.pipe_inodes.clone());
        let found = tokio::task::spawn_blocking(move || signal_tree(leader, &inodes))
            .await
            .unwrap_or(0);
        if found == 0 || Instant::now() >= give_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `SIGKILL` to the tree once; returns how many live processes were found.
fn signal_tree(leader: i32, pipe_inodes: &[u64]) -> usize {
    let victims = find_tree(leader, pipe_inodes);
    // The group kill is atomic with respect to fork in the group.
    let _ = sys::kill(-leader, libc::SIGKILL);
    for &pid in &victims {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    victims.len()
}

/// One line of `/proc/PID/stat`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    pub(crate) session: i32,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcStat> {
    let (head, tail) = line.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = tail.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

fn list_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat(&text)
    })
    .collect()
}

/// Whether `pid` has one of `inodes` (pipes) open for writing.
fn holds_pipe_for_writing(pid: i32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            return false;
        };
        let target = target.to_string_lossy();
        let Some(ino) = target
            .strip_prefix("pipe:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return false;
        };
        inodes.contains(&ino) && fd_is_writable(pid, &fd.file_name().to_string_lossy())
    })
}

fn fd_is_writable(pid: i32, fd: &str) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| {
            let mode = flags & i64::from(libc::O_ACCMODE);
            mode == i64::from(libc::O_WRONLY) || mode == i64::from(libc::O_RDWR)
        })
}

/// The live processes that belong to the command led by `leader`: its session and
/// process group (pid = sid = pgid), the processes holding its output pipes for
/// writing (children that started their own session but kept the pipes), and every
/// descendant of those. Never this process nor PID 1.
fn find_tree(leader: i32, pipe_inodes: &[u64]) -> Vec<i32> {
    let me = sys::getpid();
    let procs: Vec<ProcStat> = list_processes()
        .into_iter()
        .filter(|p| p.pid != me && p.pid != 1 && !matches!(p.state, 'Z' | 'X' | 'x'))
        .collect();
    let mut members: HashSet<i32> = procs
        .iter()
        .filter(|p| p.pid == leader || p.session == leader || p.pgrp == leader)
        .map(|p| p.pid)
        .collect();
    if !pipe_inodes.is_empty() {
        for p in &procs {
            if !members.contains(&p.pid) && holds_pipe_for_writing(p.pid, pipe_inodes) {
                members.insert(p.pid);
            }
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut queue: Vec<i32> = members.iter().copied().collect();
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if members.insert(child) {
                queue.push(child);
            }
        }
    }
    members.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("12 (x) R").is_none());
    }

    #[test]
    fn own_stat_parses() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = parse_stat(&text).unwrap();
        assert_eq!(stat.pid, sys::getpid());
    }

    #[test]
    fn env_is_base_plus_overrides() {
        let extra = BTreeMap::from([
            ("FOO".to_owned(), "bar".to_owned()),
            ("HOME".to_owned(), "/workspace".to_owned()),
        ]);
        let env = build_env(&extra);
        assert_eq!(env["PATH"], BASE_PATH);
        assert_eq!(env["HOME"], "/workspace");
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["TERM"], "dumb");
        assert_eq!(env["FOO"], "bar");
        let env = build_env(&BTreeMap::from([("TERM".to_owned(), "xterm".to_owned())]));
        assert_eq!(env["TERM"], "xterm");
    }

    #[test]
    fn env_names_validated() {
        for bad in ["", "A=B", "A\0"] {
            let env = BTreeMap::from([(bad.to_owned(), "x".to_owned())]);
            assert!(matches!(
                validate_env(&env),
                Err(ExecError::BadRequest { .. })
            ));
        }
        let env = BTreeMap::from([("A".to_owned(), "x\0".to_owned())]);
        assert!(validate_env(&env).is_err());
        let env = BTreeMap::from([("A_1".to_owned(), "x=y z".to_owned())]);
        assert!(validate_env(&env).is_ok());
    }

    #[test]
    fn program_resolution() {
        let root = Path::new("/");
        let sh = resolve_program("sh", BASE_PATH, root).ok().unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert!(matches!(
            resolve_program("no-such-program-xyz", BASE_PATH, root),
            Err(Candidate::Missing)
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", BASE_PATH, root),
            Err(Candidate::Denied(_))
        ));
        assert!(matches!(
            resolve_program("/etc", BASE_PATH, root),
            Err(Candidate::Denied(_))
        ));
        assert!(matches!(
            resolve_program("bin/sh", BASE_PATH, root),
            Ok(p) if p == Path::new("/bin/sh")
        ));
        // Relative PATH entries are ignored.
        assert!(matches!(
            resolve_program("sh", "bin:.", root),
            Err(Candidate::Missing)
        ));
    }

    #[test]
    fn truncation_accounting() {
        let (rx, _tx) = std::io::pipe().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let rx = pipe::Receiver::from_owned_fd(OwnedFd::from(rx)).unwrap();
            let mut s = Stream::new(rx, Some(5));
            s.buf.extend_from_slice(b"abc");
            assert_eq!(s.take(3).as_deref(), Some(&b"abc"[..]));
            s.buf.extend_from_slice(b"defg");
            assert_eq!(s.take(4).as_deref(), Some(&b"de"[..]));
            s.buf.extend_from_slice(b"hij");
            assert_eq!(s.take(3), None);
            assert_eq!((s.total, s.forwarded, s.truncated), (10, 5, true));
        });
    }
}
