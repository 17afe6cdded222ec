//! PTY shells: `bash --noprofile --norc -i` (else `/bin/sh -i`) on the slave side of a
//! pseudo-terminal, as the leader of a new session with the slave as its controlling
//! terminal. A reader task drains the master into a bounded ring (the transcript, with
//! absolute offsets); an exit task records how the shell ended.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use pyro_proto::api::{AgentError, DATA_CHUNK};
use pyro_proto::procs::{
    SHELL_READ_MAX, SHELL_TRANSCRIPT_DEFAULT, SHELL_TRANSCRIPT_MAX, SHELL_WRITE_MAX, SHELLS_MAX,
    ShellClose, ShellList, ShellOpen, ShellRead, ShellReadResult, ShellResize, ShellSignal,
    ShellState, ShellWrite,
};
use pyro_proto::{Message, MsgKind, SendHalf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{bad, exit_code, io_err, killpg, not_found, now_ms};
use crate::exec::BASE_PATH;
use crate::reaper;

/// Longest wait a read may ask for (ms).
const READ_WAIT_MAX_MS: u64 = 600_000;
/// After the shell exits, how long the exit task waits for the reader to drain the last
/// output before it records the exit.
const DRAIN_GRACE: Duration = Duration::from_millis(250);
/// After `SIGKILL`, how long a close waits for the exit before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Size of one read from the master.
const READ_CHUNK: usize = 64 * 1024;

/// Every shell, by id.
static SHELLS: Mutex<BTreeMap<String, Arc<Shell>>> = Mutex::new(BTreeMap::new());

fn table() -> MutexGuard<'static, BTreeMap<String, Arc<Shell>>> {
    SHELLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shell of the table.
struct Shell {
    id: String,
    cwd: String,
    pid: i32,
    started_at_ms: u64,
    master: Arc<AsyncFd<OwnedFd>>,
    state: Mutex<Inner>,
    /// Bumped on every change (output, exit, resize).
    changed: watch::Sender<u64>,
    /// Set once the shell is closed: the reader stops.
    closed: watch::Sender<bool>,
    /// Serializes writers, so two inputs never interleave.
    writing: tokio::sync::Mutex<()>,
}

/// What changes.
struct Inner {
    cols: u16,
    rows: u16,
    ring: VecDeque<u8>,
    cap: usize,
    /// Offset of `ring[0]`.
    start: u64,
    exit_code: Option<i32>,
    ended_at_ms: Option<u64>,
}

impl Inner {
    fn end(&self) -> u64 {
        self.start + self.ring.len() as u64
    }

    fn append(&mut self, bytes: &[u8]) {
        self.ring.extend(bytes);
        let excess = self.ring.len().saturating_sub(self.cap);
        if excess > 0 {
            self.ring.drain(..excess);
            self.start += excess as u64;
        }
    }

    /// Bytes from `from` (at least `start`), at most `max`.
    fn slice(&self, from: u64, max: u64) -> Vec<u8> {
        let skip = usize::try_from(from.saturating_sub(self.start)).unwrap_or(usize::MAX);
        let take = usize::try_from(max).unwrap_or(usize::MAX);
        self.ring.iter().skip(skip).take(take).copied().collect()
    }
}

impl Shell {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn snapshot(&self) -> ShellState {
        let s = self.lock();
        self.state_of(&s)
    }

    fn state_of(&self, s: &Inner) -> ShellState {
        ShellState {
            id: self.id.clone(),
            pid: self.pid,
            running: s.exit_code.is_none(),
            exit_code: s.exit_code,
            cwd: self.cwd.clone(),
            cols: s.cols,
            rows: s.rows,
            started_at_ms: self.started_at_ms,
            ended_at_ms: s.ended_at_ms,
            transcript_end: s.end(),
            transcript_start: s.start,
        }
    }

    fn ended(&self) -> bool {
        self.lock().exit_code.is_some()
    }

    /// Signals the shell's process group and, when another one holds the terminal's
    /// foreground (a job the shell started), that group too: as a keypress would.
    fn signal(&self, signal: i32) {
        if self.ended() {
            return;
        }
        // SAFETY: tcgetpgrp on a descriptor this shell owns; it reads no memory of ours.
        let fg = unsafe { libc::tcgetpgrp(self.master.get_ref().as_raw_fd()) };
        killpg(self.pid, signal);
        if fg > 1 && fg != self.pid {
            killpg(fg, signal);
        }
    }
}

fn lookup(id: &str) -> Result<Arc<Shell>, AgentError> {
    table()
        .get(id)
        .cloned()
        .ok_or_else(|| not_found(format!("no shell {id:?}")))
}

fn check_id(id: &str) -> Result<(), AgentError> {
    let ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(bad(format!("shell id {id:?} must match [0-9a-z]{{1,32}}")))
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), AgentError> {
    if (1..=1000).contains(&cols) && (1..=1000).contains(&rows) {
        Ok(())
    } else {
        Err(bad(format!(
            "terminal size {cols}x{rows} out of range (1..=1000 each)"
        )))
    }
}

/// The shell to run: bash when there is one, else `/bin/sh`.
fn shell_program() -> (PathBuf, Vec<&'static str>) {
    let bash = std::iter::once(Path::new("/bin/bash").to_path_buf())
        .chain(BASE_PATH.split(':').map(|d| Path::new(d).join("bash")))
        .find(|p| p.is_file());
    match bash {
        Some(p) => (p, vec!["--noprofile", "--norc", "-i"]),
        None => (PathBuf::from("/bin/sh"), vec!["-i"]),
    }
}

fn set_winsize(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` that lives for the duration of the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pseudo-terminal: `(master, slave)`, both close-on-exec, the master non-blocking.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt takes flags only; it returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: posix_openpt just returned this descriptor, owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let m = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt act on the master descriptor; ptsname_r writes at most
    // `name.len()` bytes (NUL included) into `name`.
    unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
        let ret = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: `path` is a valid C string; open returns a new descriptor or -1.
    let sfd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if sfd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor, owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
    // SAFETY: F_GETFL/F_SETFL on an open descriptor with integer arguments.
    unsafe {
        let flags = libc::fcntl(m, libc::F_GETFL);
        if flags == -1 || libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((master, slave))
}

/// Starts the shell on `slave`: a new session whose controlling terminal is the slave, on
/// stdin, stdout and stderr. Blocks until the program is exec'd.
fn start_shell(
    slave: &OwnedFd,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> io::Result<reaper::SpawnedChild> {
    let (program, args) = shell_program();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    let join = crate::limits::commands_procs();
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, write) on descriptors opened before
    // the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            crate::sys::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(procs) = join {
                // Best effort: a shell outside the cgroup still runs, only unlimited.
                let _ = crate::limits::join(procs);
            }
            Ok(())
        });
    }
    reaper::spawn(cmd)
}

/// [`pyro_proto::api::Request::ShellOpen`].
pub async fn open(req: ShellOpen) -> Result<ShellState, AgentError> {
    check_id(&req.id)?;
    check_size(req.cols, req.rows)?;
    let cap = req.transcript_bytes.unwrap_or(SHELL_TRANSCRIPT_DEFAULT);
    if !(1..=SHELL_TRANSCRIPT_MAX).contains(&cap) {
        return Err(bad(format!(
            "transcript_bytes {cap} out of range (1..={SHELL_TRANSCRIPT_MAX})"
        )));
    }
    let cap = usize::try_from(cap).map_err(|_| bad("transcript_bytes too large"))?;
    super::check_env(&req.env)?;
    if let Some(term) = &req.term
        && (term.is_empty() || term.contains('\0'))
    {
        return Err(bad("term must be non-empty and without NUL bytes"));
    }
    let cwd = super::resolve_cwd(&req.cwd)?;
    {
        let t = table();
        if t.contains_key(&req.id) {
            return Err(super::conflict(format!(
                "shell {:?} already exists",
                req.id
            )));
        }
        if t.len() >= SHELLS_MAX {
            return Err(bad(format!("at most {SHELLS_MAX} shells")));
        }
    }
    let mut env = crate::exec::build_env(&BTreeMap::new());
    env.insert(
        "TERM".into(),
        req.term.clone().unwrap_or_else(|| "xterm-256color".into()),
    );
    env.insert("PS1".into(), "pyro$ ".into());
    env.insert("PROMPT_COMMAND".into(), String::new());
    env.extend(req.env.clone());

    let (master, slave) = open_pty().map_err(|e| io_err("opening a pseudo-terminal", &e))?;
    set_winsize(master.as_raw_fd(), req.cols, req.rows)
        .map_err(|e| io_err("setting the terminal size", &e))?;
    let spawned = tokio::task::spawn_blocking(move || {
        let child = start_shell(&slave, &env, &cwd);
        drop(slave);
        child
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
    .map_err(|e| io_err("starting the shell", &e))?;
    let pid = i32::try_from(spawned.pid).unwrap_or(i32::MAX);
    // SAFETY: an `OwnedFd` holds one open descriptor for as long as it lives, and it lives
    // (unreplaced) inside the `AsyncFd` until that is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) };
    let master = match registered {
        Ok(m) => Arc::new(m),
        Err(e) => {
            let e = io::Error::from(e);
            killpg(pid, libc::SIGKILL);
            return Err(io_err("registering the terminal", &e));
        }
    };
    let shell = Arc::new(Shell {
        id: req.id.clone(),
        cwd: req.cwd.clone(),
        pid,
        started_at_ms: now_ms(),
        master,
        state: Mutex::new(Inner {
            cols: req.cols,
            rows: req.rows,
            ring: VecDeque::new(),
            cap,
            start: 0,
            exit_code: None,
            ended_at_ms: None,
        }),
        changed: watch::channel(0).0,
        closed: watch::channel(false).0,
        writing: tokio::sync::Mutex::new(()),
    });
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(read_master(shell.clone(), drained_tx));
    tokio::spawn(await_exit(shell.clone(), spawned.exit, drained_rx));
    {
        let mut t = table();
        // Checked above; another open of the same id may have raced in meanwhile.
        if t.contains_key(&req.id) {
            drop(t);
            killpg(pid, libc::SIGKILL);
            shell.closed.send_replace(true);
            return Err(super::conflict(format!(
                "shell {:?} already exists",
                req.id
            )));
        }
        t.insert(req.id.clone(), shell.clone());
    }
    Ok(shell.snapshot())
}

/// Drains the master into the transcript until the slave side is closed by everyone
/// (`EIO`) or the shell is closed.
async fn read_master(shell: Arc<Shell>, drained: tokio::sync::oneshot::Sender<()>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut closed = shell.closed.subscribe();
    loop {
        let ready = tokio::select! {
            r = shell.master.readable() => r,
            _ = closed.wait_for(|c| *c) => break,
        };
        let Ok(mut guard) = ready else { break };
        let res = guard.try_io(|fd| {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match res {
            Err(_would_block) => continue,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                shell.lock().append(&buf[..n]);
                shell.bump();
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every slave descriptor is closed. Anything else: nothing more to read.
            Ok(Err(_)) => break,
        }
    }
    let _ = drained.send(());
}

async fn await_exit(
    shell: Arc<Shell>,
    exit: reaper::Exit,
    drained: tokio::sync::oneshot::Receiver<()>,
) {
    let status = exit.await;
    // The last output may still be in the terminal; a background job holding the slave
    // keeps it open, so this is bounded.
    let _ = tokio::time::timeout(DRAIN_GRACE, drained).await;
    {
        let mut s = shell.lock();
        s.exit_code = Some(exit_code(status));
        s.ended_at_ms = Some(now_ms());
    }
    shell.bump();
}

/// [`pyro_proto::api::Request::ShellRead`]: sends the bytes as `DATA`, returns the result.
pub async fn read(tx: &mut SendHalf, req: ShellRead) -> Result<ShellReadResult, AgentError> {
    if req.max_bytes > SHELL_READ_MAX {
        return Err(bad(format!(
            "max_bytes {} exceeds the limit of {SHELL_READ_MAX}",
            req.max_bytes
        )));
    }
    let shell = lookup(&req.id)?;
    {
        let s = shell.lock();
        if req.cursor > s.end() {
            return Err(bad(format!(
                "cursor {} is beyond the transcript's end {}",
                req.cursor,
                s.end()
            )));
        }
    }
    if let Some(idle_ms) = req.wait_for_idle_ms {
        let max_wait = req
            .max_wait_ms
            .unwrap_or(READ_WAIT_MAX_MS)
            .min(READ_WAIT_MAX_MS);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(max_wait);
        let idle = Duration::from_millis(idle_ms.min(READ_WAIT_MAX_MS));
        let mut rx = shell.changed.subscribe();
        loop {
            {
                let s = shell.lock();
                let from = req.cursor.max(s.start);
                if s.exit_code.is_some() || s.end() - from >= req.max_bytes {
                    break;
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep(idle) => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let (bytes, res) = {
        let s = shell.lock();
        let start = req.cursor.max(s.start);
        let bytes = s.slice(start, req.max_bytes);
        let end = start + bytes.len() as u64;
        let res = ShellReadResult {
            shell: shell.state_of(&s),
            start,
            end,
        };
        (bytes, res)
    };
    let bytes = Bytes::from(bytes);
    let mut off = 0;
    while off < bytes.len() {
        let end = (off + DATA_CHUNK).min(bytes.len());
        if tx
            .send(Message::new(MsgKind::DATA, bytes.slice(off..end)))
            .await
            .is_err()
        {
            break;
        }
        off = end;
    }
    Ok(res)
}

/// [`pyro_proto::api::Request::ShellWrite`].
pub async fn write(req: ShellWrite) -> Result<ShellState, AgentError> {
    if req.input.len() > SHELL_WRITE_MAX {
        return Err(bad(format!(
            "input of {} bytes exceeds the limit of {SHELL_WRITE_MAX}",
            req.input.len()
        )));
    }
    let shell = lookup(&req.id)?;
    if shell.ended() {
        return Err(bad(format!("shell {:?} has ended", req.id)));
    }
    let _writing = shell.writing.lock().await;
    let mut rest = req.input.as_bytes();
    let mut exited = shell.changed.subscribe();
    while !rest.is_empty() {
        let ready = tokio::select! {
            r = shell.master.writable() => r,
            // A shell that ends while its input waits for room: give up.
            _ = exited.wait_for(|_| shell.ended()) => {
                return Err(bad(format!("shell {:?} has ended", req.id)));
            }
        };
        let mut guard = ready.map_err(|e| io_err("waiting for the terminal", &e))?;
        let res = guard.try_io(|fd| {
            // SAFETY: `rest` is valid for reads of `rest.len()` bytes during the call.
            let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match res {
            Err(_would_block) => {}
            Ok(Ok(n)) => rest = &rest[n.min(rest.len())..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(io_err("writing to the terminal", &e)),
        }
    }
    Ok(shell.snapshot())
}

/// [`pyro_proto::api::Request::ShellSignal`].
pub fn signal(req: &ShellSignal) -> Result<ShellState, AgentError> {
    if !(1..=64).contains(&req.signal) {
        return Err(bad(format!("signal {} out of range", req.signal)));
    }
    let shell = lookup(&req.id)?;
    shell.signal(req.signal);
    Ok(shell.snapshot())
}

/// [`pyro_proto::api::Request::ShellResize`].
pub fn resize(req: &ShellResize) -> Result<ShellState, AgentError> {
    check_size(req.cols, req.rows)?;
    let shell = lookup(&req.id)?;
    set_winsize(shell.master.get_ref().as_raw_fd(), req.cols, req.rows)
        .map_err(|e| io_err("resizing the terminal", &e))?;
    {
        let mut s = shell.lock();
        s.cols = req.cols;
        s.rows = req.rows;
    }
    shell.bump();
    Ok(shell.snapshot())
}

/// [`pyro_proto::api::Request::ShellClose`]: `SIGHUP`, `grace_ms`, `SIGKILL`; the shell
/// leaves the table.
pub async fn close(req: &ShellClose) -> Result<ShellState, AgentError> {
    let shell = lookup(&req.id)?;
    let mut rx = shell.changed.subscribe();
    if !shell.ended() {
        shell.signal(libc::SIGHUP);
        // A shell with a job in the foreground only hangs up once the job is done: help.
        shell.signal(libc::SIGCONT);
        let grace = Duration::from_millis(req.grace_ms.min(READ_WAIT_MAX_MS));
        if !super::wait_until(&mut rx, grace, || shell.ended()).await {
            shell.signal(libc::SIGKILL);
            super::wait_until(&mut rx, KILL_WAIT, || shell.ended()).await;
        }
    }
    shell.closed.send_replace(true);
    {
        let mut t = table();
        if t.get(&req.id).is_some_and(|s| Arc::ptr_eq(s, &shell)) {
            t.remove(&req.id);
        }
    }
    Ok(shell.snapshot())
}

/// [`pyro_proto::api::Request::ShellList`].
pub fn list() -> ShellList {
    let shells: Vec<Arc<Shell>> = table().values().cloned().collect();
    ShellList {
        shells: shells.iter().map(|s| s.snapshot()).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("abc123").is_ok());
        assert!(check_id(&"a".repeat(32)).is_ok());
        for id in ["", "A", "a-b", &"a".repeat(33), "é"] {
            assert!(check_id(id).is_err(), "{id}");
        }
    }

    #[tokio::test]
    async fn oversized_input_is_refused_before_anything_else() {
        let req = ShellWrite {
            id: "none".into(),
            input: "x".repeat(SHELL_WRITE_MAX + 1),
        };
        let err = write(req).await.unwrap_err();
        assert_eq!(err.code, pyro_proto::api::ErrorCode::BadRequest);
        let req = ShellWrite {
            id: "none".into(),
            input: "x".into(),
        };
        let err = write(req).await.unwrap_err();
        assert_eq!(err.code, pyro_proto::api::ErrorCode::NotFound);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(80, 24).is_ok());
        assert!(check_size(0, 24).is_err());
        assert!(check_size(80, 1001).is_err());
    }

    #[test]
    fn ring_keeps_the_last_bytes_with_absolute_offsets() {
        let mut s = Inner {
            cols: 80,
            rows: 24,
            ring: VecDeque::new(),
            cap: 4,
            start: 0,
            exit_code: None,
            ended_at_ms: None,
        };
        s.append(b"abc");
        s.append(b"def");
        assert_eq!((s.start, s.end()), (2, 6));
        assert_eq!(s.slice(2, 10), b"cdef");
        assert_eq!(s.slice(4, 1), b"e");
        assert_eq!(s.slice(6, 10), b"");
    }
}
