//! Advisory file locks (`flock(2)`) shared by every pyro process on a host.
//!
//! A lock lives on a small file, by convention `<dir>/lock` ([`dir_lock_path`]), which is
//! created on first use and never removed (removing a lock file while another process holds
//! or waits for it would let two processes "hold" two different files). Locks are either
//! [`LockMode::Shared`] (many holders) or [`LockMode::Exclusive`] (one holder, no shared
//! holders). Each [`LockGuard`] opens its own file descriptor, so locks exclude each other
//! across processes *and* across threads or tasks of one process (`flock` locks belong to the
//! open file description). The lock is released when the guard is dropped, and by the kernel
//! when the holding process dies, so a crash never leaves a stale lock behind.
//!
//! Waiting polls a non-blocking `flock` with short, growing sleeps up to a deadline, so a
//! waiter can always give up with [`LockError::Timeout`] and the async variant never blocks
//! a runtime thread. Polling is not fair: a steady stream of shared holders can delay an
//! exclusive waiter until its timeout.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The conventional name of a directory's lock file.
pub const LOCK_FILE_NAME: &str = "lock";

/// First sleep between two attempts; doubled after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// Longest sleep between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Any number of shared holders at once, but no exclusive holder.
    Shared,
    /// A single holder.
    Exclusive,
}

impl LockMode {
    fn flock_op(self) -> libc::c_int {
        match self {
            Self::Shared => libc::LOCK_SH,
            Self::Exclusive => libc::LOCK_EX,
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shared => "shared",
            Self::Exclusive => "exclusive",
        })
    }
}

/// Failures of this module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held the lock for longer than the caller was willing to wait.
    #[error("timed out after {waited:?} waiting for a {mode} lock on {path}")]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// The mode asked for.
        mode: LockMode,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lock file could not be opened or created.
    #[error("cannot open lock file {path}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `flock` failed for a reason other than contention.
    #[error("cannot lock {path}")]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    mode: LockMode,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the lock is held.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first makes the release
        // explicit and independent of descriptors that might have been duplicated.
        // SAFETY: flock on a descriptor this guard owns and keeps open until after the call.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The conventional lock file of a directory: `<dir>/lock`.
pub fn dir_lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE_NAME)
}

/// Opens (creating, mode 0600) the lock file with a descriptor of its own.
fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// One non-blocking attempt: `Ok(true)` when the lock was taken, `Ok(false)` when it is held
/// elsewhere in a conflicting mode.
fn try_flock(file: &File, path: &Path, mode: LockMode) -> Result<bool, LockError> {
    loop {
        // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode.flock_op() | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => {
                return Err(LockError::Flock {
                    path: path.to_path_buf(),
                    source: err,
                });
            }
        }
    }
}

/// Takes the lock if it is free right now; `Ok(None)` when it is held in a conflicting mode.
pub fn try_lock(path: &Path, mode: LockMode) -> Result<Option<LockGuard>, LockError> {
    let file = open_lock_file(path)?;
    Ok(try_flock(&file, path, mode)?.then(|| LockGuard {
        file,
        path: path.to_path_buf(),
        mode,
    }))
}

/// Where a wait stands between two attempts.
struct Waiter {
    file: File,
    path: PathBuf,
    mode: LockMode,
    start: Instant,
    timeout: Duration,
    backoff: Duration,
}

impl Waiter {
    fn new(path: &Path, mode: LockMode, timeout: Duration) -> Result<Self, LockError> {
        Ok(Self {
            file: open_lock_file(path)?,
            path: path.to_path_buf(),
            mode,
            start: Instant::now(),
            timeout,
            backoff: FIRST_BACKOFF,
        })
    }

    /// Tries once: the guard, or how long to sleep before the next try, or a timeout.
    fn attempt(self) -> Result<Result<LockGuard, (Self, Duration)>, LockError> {
        if try_flock(&self.file, &self.path, self.mode)? {
            return Ok(Ok(LockGuard {
                file: self.file,
                path: self.path,
                mode: self.mode,
            }));
        }
        let waited = self.start.elapsed();
        if waited >= self.timeout {
            return Err(LockError::Timeout {
                path: self.path,
                mode: self.mode,
                waited,
            });
        }
        let sleep = self.backoff.min(self.timeout - waited);
        let next = Self {
            backoff: (self.backoff * 2).min(MAX_BACKOFF),
            ..self
        };
        Ok(Err((next, sleep)))
    }
}

/// Takes the lock, waiting up to `timeout` for conflicting holders to let go (a zero timeout
/// tries exactly once). Blocks the calling thread while waiting; use [`lock`] from async code.
pub fn lock_blocking(
    path: &Path,
    mode: LockMode,
    timeout: Duration,
) -> Result<LockGuard, LockError> {
    let mut waiter = Waiter::new(path, mode, timeout)?;
    loop {
        match waiter.attempt()? {
            Ok(guard) => return Ok(guard),
            Err((next, sleep)) => {
                std::thread::sleep(sleep);
                waiter = next;
            }
        }
    }
}

/// Takes the lock, waiting up to `timeout` for conflicting holders to let go (a zero timeout
/// tries exactly once). Waits with timer sleeps, never blocking a runtime thread; dropping the
/// future stops waiting.
pub async fn lock(
    path: impl AsRef<Path>,
    mode: LockMode,
    timeout: Duration,
) -> Result<LockGuard, LockError> {
    let mut waiter = Waiter::new(path.as_ref(), mode, timeout)?;
    loop {
        match waiter.attempt()? {
            Ok(guard) => return Ok(guard),
            Err((next, sleep)) => {
                tokio::time::sleep(sleep).await;
                waiter = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "PYRO_LOCK_TEST_CHILD";

    #[test]
    fn exclusive_excludes_shared_and_exclusive_across_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let ex = try_lock(&path, LockMode::Exclusive).unwrap().unwrap();
        assert_eq!(ex.mode(), LockMode::Exclusive);
        assert_eq!(ex.path(), path);
        assert!(try_lock(&path, LockMode::Shared).unwrap().is_none());
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_none());
        drop(ex);
        let sh = try_lock(&path, LockMode::Shared).unwrap().unwrap();
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_none());
        drop(sh);
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_some());
    }

    #[test]
    fn shared_holders_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let a = lock_blocking(&path, LockMode::Shared, Duration::ZERO).unwrap();
        let b = lock_blocking(&path, LockMode::Shared, Duration::ZERO).unwrap();
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_none());
        drop(a);
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_none());
        drop(b);
        assert!(try_lock(&path, LockMode::Exclusive).unwrap().is_some());
    }

    #[test]
    fn lock_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let _g = try_lock(&path, LockMode::Shared).unwrap().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn waiting_past_the_timeout_reports_the_facts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let _held = lock_blocking(&path, LockMode::Exclusive, Duration::ZERO).unwrap();
        let t = Instant::now();
        let err = lock_blocking(&path, LockMode::Shared, Duration::from_millis(120)).unwrap_err();
        let elapsed = t.elapsed();
        match &err {
            LockError::Timeout {
                path: p,
                mode,
                waited,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*mode, LockMode::Shared);
                assert!(*waited >= Duration::from_millis(120), "{waited:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(err.to_string().contains("shared lock"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join(LOCK_FILE_NAME);
        assert!(matches!(
            try_lock(&path, LockMode::Shared),
            Err(LockError::Open { .. })
        ));
    }

    #[test]
    fn a_blocked_thread_gets_the_lock_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let held = lock_blocking(&path, LockMode::Exclusive, Duration::ZERO).unwrap();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let g = lock_blocking(&p2, LockMode::Exclusive, Duration::from_secs(10)).unwrap();
            (t.elapsed(), g.mode())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let (waited, mode) = waiter.join().unwrap();
        assert_eq!(mode, LockMode::Exclusive);
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_waiters_do_not_block_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let held = lock(&path, LockMode::Exclusive, Duration::ZERO)
            .await
            .unwrap();
        // On a single-threaded runtime the releasing task only runs if the waiter yields.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        let g = lock(&path, LockMode::Shared, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(g.mode(), LockMode::Shared);
        release.await.unwrap();
        let err = lock(&path, LockMode::Exclusive, Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }));
    }

    /// Child half of [`exclusive_lock_excludes_another_process`]: holds the lock named by the
    /// environment until its stdin closes.
    #[test]
    #[ignore = "helper run by another test in a child process"]
    fn child_holds_exclusive_lock() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let _g = lock_blocking(Path::new(&path), LockMode::Exclusive, Duration::ZERO).unwrap();
        println!("LOCKED");
        use std::io::Read;
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }

    #[test]
    fn exclusive_lock_excludes_another_process_and_dies_with_it() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir_lock_path(dir.path());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lock::tests::child_holds_exclusive_lock",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("LOCKED") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
        }
        assert!(try_lock(&path, LockMode::Shared).unwrap().is_none());
        // Kill rather than release: the kernel must drop the lock of a dead process.
        child.kill().unwrap();
        child.wait().unwrap();
        let g = lock_blocking(&path, LockMode::Exclusive, Duration::from_secs(5)).unwrap();
        assert_eq!(g.mode(), LockMode::Exclusive);
    }
}
