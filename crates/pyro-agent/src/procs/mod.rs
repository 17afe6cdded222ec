//! The agent's process table: PTY shells ([`shell`]) and services ([`service`]) that
//! belong to the agent, not to the call that started them (see [`pyro_proto::procs`]).
//!
//! Each entry lives in a process-wide map (shells by id, services by name) until it is
//! closed or replaced. Every process is started through [`crate::reaper`]; one task per
//! process awaits its [`crate::reaper::Exit`] and records the exit code (`-N` for signal
//! `N`) and the time, so a state is never a guess. Waiters learn about changes through a
//! `tokio::sync::watch` counter bumped on every change (output, probe, exit).
//!
//! - [`shell`]: a PTY master drained into a bounded ring transcript with absolute offsets.
//! - [`service`]: `/bin/sh -c` with its stdout and stderr drained into rotated log files,
//!   and a readiness wait that runs in a detached task.
//! - [`probe`]: the readiness probes (file, TCP, HTTP, command).

pub mod probe;
pub mod service;
pub mod shell;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyro_proto::api::{AgentError, ErrorCode};
use tokio::sync::watch;

use crate::sys;

/// The guest's wall clock in milliseconds since the UNIX epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The table's form of an exit status: the code, or `-N` when killed by signal `N`.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => -sig,
        (None, None) => -1,
    }
}

/// A [`ErrorCode::BadRequest`] error.
pub(crate) fn bad(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorCode::BadRequest, message)
}

/// A [`ErrorCode::NotFound`] error.
pub(crate) fn not_found(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorCode::NotFound, message)
}

/// A [`ErrorCode::Conflict`] error.
pub(crate) fn conflict(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorCode::Conflict, message)
}

/// An [`ErrorCode::Io`] error.
pub(crate) fn io_err(what: &str, e: &std::io::Error) -> AgentError {
    AgentError::new(ErrorCode::Io, format!("{what}: {e}"))
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is no error.
pub(crate) fn killpg(pgid: i32, signal: i32) {
    if pgid > 1 {
        // ESRCH (nobody left) is the expected failure; nothing else can be done about others.
        let _ = sys::kill(-pgid, signal);
    }
}

/// Checks a working directory given in guest terms and returns it on this machine (see
/// [`crate::fs::host_path`]): absolute, existing, a directory.
pub(crate) fn resolve_cwd(cwd: &str) -> Result<std::path::PathBuf, AgentError> {
    let guest = std::path::Path::new(cwd);
    if !guest.is_absolute() {
        return Err(bad(format!("cwd {cwd:?} is not an absolute path")));
    }
    let host = crate::fs::host_path(guest);
    match std::fs::metadata(&host) {
        Ok(m) if m.is_dir() => Ok(host),
        Ok(_) => Err(bad(format!("cwd {cwd} is not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(not_found(format!("cwd {cwd} does not exist")))
        }
        Err(e) => Err(bad(format!("cwd {cwd} is not accessible: {e}"))),
    }
}

/// Validates request-supplied environment variables (names, NUL bytes).
pub(crate) fn check_env(
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), AgentError> {
    crate::exec::validate_env(env).map_err(|e| match e {
        crate::exec::ExecError::BadRequest { reason } => bad(reason),
        other => bad(other.to_string()),
    })
}

/// Waits until `done` holds for the value behind `rx`, for at most `limit`; returns
/// whether it held.
pub(crate) async fn wait_until<T>(
    rx: &mut watch::Receiver<T>,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return done();
                }
            }
            () = tokio::time::sleep_until(deadline) => return done(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), -9);
    }

    #[test]
    fn cwd_must_exist_and_be_absolute() {
        assert!(resolve_cwd("/").is_ok());
        assert_eq!(resolve_cwd("tmp").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            resolve_cwd("/nonexistent-pyro-dir").unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            resolve_cwd("/etc/passwd").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}
