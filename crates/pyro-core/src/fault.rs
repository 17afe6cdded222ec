//! Fault points for crash tests: `PYRO_FAULT=<name>` makes the process kill itself (SIGKILL,
//! as `kill -9` would) when it reaches the point of that name. Nothing happens otherwise.

/// Kills this process when `PYRO_FAULT` names `name`.
pub(crate) fn point(name: &str) {
    if std::env::var_os("PYRO_FAULT").is_some_and(|v| v == name) {
        tracing::warn!("fault point {name}: killing this process");
        // SAFETY: kill(2) on this very process; it does not return.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
