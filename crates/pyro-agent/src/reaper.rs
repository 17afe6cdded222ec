//! Child reaping for an agent that runs as PID 1.
//!
//! As PID 1 the agent inherits every orphan in the guest and must reap them all, yet the
//! processes it spawned itself still need their exit statuses delivered. A single task,
//! driven by `SIGCHLD`, loops `waitpid(-1, WNOHANG)`: a status whose pid is registered
//! goes to that pid's [`Exit`] future, any other pid is simply reaped.
//!
//! Every child must therefore be started through [`spawn`] or [`spawn_launch`], and
//! nothing else in the process may call `wait`/`waitpid` (no `std::process::Child::wait`,
//! `Command::status`, `Command::output`, nor `tokio::process`): the reaper would race them
//! (only [`spawn_launch`] itself reaps a child that failed to exec, under the registry
//! lock, as the standard library does inside [`spawn`]).
//!
//! The registry lock is held both across `Command::spawn` (fork, exec, registration) and
//! across each `waitpid` call of the reaper. So a child can never be reaped before its
//! waiter is registered, and the standard library's own internal `waitpid` on a failed
//! `exec` never finds its child already reaped.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::sys;

/// How often the reaper sweeps even without a `SIGCHLD` (a safety net; signals coalesce
/// but are not lost, so this should never be what finds an exit).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long the reaper waits before retrying when a spawn holds the registry.
const BUSY_RETRY: Duration = Duration::from_millis(2);

/// Pids whose exit status someone is waiting for.
static WAITERS: Mutex<Registry> = Mutex::new(None);

/// Number of reaper tasks alive (one per runtime that called [`start`]).
static LIVE_REAPERS: AtomicUsize = AtomicUsize::new(0);

type Registry = Option<HashMap<i32, oneshot::Sender<ExitStatus>>>;

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock cannot leave the map inconsistent (single inserts
    // and removes), so a poisoned lock is still usable.
    WAITERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry if it is free right now: the reaper never blocks a runtime thread
/// while a (blocking) spawn is in progress.
fn try_registry() -> Option<MutexGuard<'static, Registry>> {
    match WAITERS.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A child started by [`spawn`]: its pid, the pipes requested with `Stdio::piped()`,
/// and a future for its exit status.
#[derive(Debug)]
pub struct SpawnedChild {
    /// Process id of the child.
    pub pid: u32,
    /// Write end of the child's stdin, when it was piped.
    pub stdin: Option<ChildStdin>,
    /// Read end of the child's stdout, when it was piped.
    pub stdout: Option<ChildStdout>,
    /// Read end of the child's stderr, when it was piped.
    pub stderr: Option<ChildStderr>,
    /// Resolves once the reaper has collected the child.
    pub exit: Exit,
}

/// Future resolving to the exit status of a child started by [`spawn`].
#[derive(Debug)]
pub struct Exit {
    rx: oneshot::Receiver<ExitStatus>,
}

impl Future for Exit {
    type Output = ExitStatus;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        Pin::new(&mut self.rx).poll(cx).map(|res| {
            // The sender lives in a static map and is only removed to send the status, so
            // it cannot be dropped unsent; should that ever change, report a SIGKILL
            // rather than hang the caller.
            res.unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL))
        })
    }
}

/// Starts a reaper task on the current tokio runtime.
///
/// Call it once, early, from inside the runtime (the agent's `main`). Each call starts
/// one more task; several reapers (for instance one per test runtime) share the same
/// registry safely. When the process is not PID 1 it becomes a child subreaper, so
/// orphans of its descendants still come to it.
///
/// # Errors
/// Fails when `SIGCHLD` cannot be subscribed to or the subreaper flag cannot be set.
///
/// # Panics
/// Panics when called outside a tokio runtime.
pub fn start() -> io::Result<()> {
    if sys::getpid() != 1 {
        sys::set_child_subreaper()?;
    }
    let mut sigchld = signal(SignalKind::child())?;
    LIVE_REAPERS.fetch_add(1, Ordering::SeqCst);
    let live = LiveGuard;
    tokio::spawn(async move {
        let _live = live;
        loop {
            if !reap_all() {
                tokio::time::sleep(BUSY_RETRY).await;
                continue;
            }
            tokio::select! {
                received = sigchld.recv() => {
                    if received.is_none() {
                        break;
                    }
                }
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    });
    Ok(())
}

/// Decrements the live-reaper count when a reaper task ends (including when its
/// runtime shuts down and drops it).
struct LiveGuard;

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE_REAPERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reaps every child that has exited, delivering registered statuses. Returns `false`
/// when it had to stop because a spawn holds the registry (try again shortly).
fn reap_all() -> bool {
    loop {
        let Some(mut guard) = try_registry() else {
            return false;
        };
        match sys::waitpid_any_nohang() {
            Ok(Some((pid, status))) => {
                if let Some(tx) = guard.as_mut().and_then(|map| map.remove(&pid)) {
                    // The receiver may be gone (caller lost interest): nothing to do.
                    let _ = tx.send(ExitStatus::from_raw(status));
                }
            }
            Ok(None) => return true,
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            // ECHILD: no children at all. Anything else cannot happen with these
            // arguments; either way there is nothing more to reap now.
            Err(_) => return true,
        }
    }
}

/// Spawns `cmd` and registers the child with the reaper.
///
/// The `Command` is used as given (stdio, environment, `pre_exec` hooks); only
/// `Command::spawn` is called on it, never a waiting method.
///
/// This blocks until the child has called `exec` (as `Command::spawn` does); from async
/// code, call it through `tokio::task::spawn_blocking`.
///
/// # Errors
/// Fails when no reaper is running (see [`start`]) or when spawning fails (the error of
/// `Command::spawn`, e.g. `NotFound` for a missing program).
pub fn spawn(mut cmd: Command) -> io::Result<SpawnedChild> {
    if LIVE_REAPERS.load(Ordering::SeqCst) == 0 {
        return Err(io::Error::other(
            "reaper not started: call reaper::start() inside the runtime first",
        ));
    }
    let mut guard = registry();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = oneshot::channel();
    let key = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    guard.get_or_insert_with(HashMap::new).insert(key, tx);
    drop(guard);
    Ok(SpawnedChild {
        pid,
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        exit: Exit { rx },
    })
    // Dropping `child` neither kills nor waits for the process.
}

/// Starts a child with [`crate::spawn::spawn`] and registers it with the reaper, like
/// [`spawn`] (the registry is held across the start, so a failed child is reaped by the
/// starter, never by the reaper).
///
/// # Errors
/// Fails when no reaper is running or when the start fails (see [`crate::spawn::spawn`]).
pub fn spawn_launch(
    launch: &crate::spawn::Launch<'_>,
) -> Result<SpawnedChild, crate::spawn::Error> {
    if LIVE_REAPERS.load(Ordering::SeqCst) == 0 {
        return Err(crate::spawn::Error::Start(io::Error::other(
            "reaper not started: call reaper::start() inside the runtime first",
        )));
    }
    let mut guard = registry();
    let started = crate::spawn::spawn(launch)?;
    let (tx, rx) = oneshot::channel();
    guard
        .get_or_insert_with(HashMap::new)
        .insert(started.pid, tx);
    drop(guard);
    Ok(SpawnedChild {
        pid: started.pid.unsigned_abs(),
        stdin: started.stdin.map(ChildStdin::from),
        stdout: Some(ChildStdout::from(started.stdout)),
        stderr: Some(ChildStderr::from(started.stderr)),
        exit: Exit { rx },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        start().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 7"]);
        let child = spawn(cmd).unwrap();
        assert_eq!(child.exit.await.code(), Some(7));

        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "kill -TERM $$"]);
        let child = spawn(cmd).unwrap();
        assert_eq!(child.exit.await.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn immediate_exit_is_not_lost() {
        start().unwrap();
        // `true` exits at once: often before spawn() returns.
        let mut waits = Vec::new();
        for _ in 0..50 {
            let cmd = Command::new("true");
            waits.push(spawn(cmd).unwrap().exit);
        }
        for exit in waits {
            assert!(exit.await.success());
        }
    }

    #[tokio::test]
    async fn failed_exec_is_an_error_not_a_panic() {
        start().unwrap();
        for _ in 0..20 {
            let err = spawn(Command::new("/nonexistent/program")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    #[tokio::test]
    async fn orphans_are_reaped() {
        start().unwrap();
        // The shell backgrounds a child and exits: the child is reparented to us
        // (subreaper) and must not stay a zombie.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 0.1 & echo $!"])
            .stdout(Stdio::piped());
        let mut child = spawn(cmd).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let orphan: i32 = out.trim().parse().unwrap();
        assert!(child.exit.await.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "orphan {orphan} not reaped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
