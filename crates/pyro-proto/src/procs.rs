//! Long-lived guest processes the agent owns: PTY shells and services.
//!
//! The agent keeps a process table. A shell or a service belongs to the agent, not to the
//! call that started it: it outlives that call (and its stream, and the host process that
//! made it), and any later call reaches it by its id or name. The agent's reaper collects
//! every child with its exit status, so a state here is never a guess.
//!
//! Times are the guest's wall clock (the host sets it at boot and after every restore), in
//! milliseconds since the UNIX epoch.
//!
//! # Shells
//! A shell's output is a byte *transcript*: offset 0 is its first byte. The agent keeps the
//! last [`ShellOpen::transcript_bytes`] of it (a ring); a [`ShellRead`] names a byte offset
//! and gets the bytes from there, or from the oldest retained byte when the offset was
//! already overwritten ([`ShellReadResult::start`] then says where the bytes begin).
//!
//! # Services
//! A service is `/bin/sh -c COMMAND` in its own session (process group), with stdout and
//! stderr drained by the agent into bounded log files under [`SERVICE_DIR`]. A
//! [`ServiceStart`] answers once the service is ready, failed or timed out, sending
//! [`ServiceEvent`]s while it waits. If the caller goes away meanwhile, the agent finishes
//! the wait anyway and the outcome is in the table.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::api::{CallError, Request};
use crate::{Message, MsgKind, Session};

/// Where the agent keeps service logs in the guest (`<name>.stdout`, `<name>.stderr`, and
/// the previous halves `<name>.stdout.1`, `<name>.stderr.1`). Not under `/workspace`, so
/// logs never show in diffs, exports or snapshots of the workspace tree.
pub const SERVICE_DIR: &str = "/run/pyro/services";

/// Default bytes of transcript a shell keeps.
pub const SHELL_TRANSCRIPT_DEFAULT: u64 = 4 * 1024 * 1024;
/// Largest transcript a shell may ask for.
pub const SHELL_TRANSCRIPT_MAX: u64 = 64 * 1024 * 1024;
/// Most bytes one [`ShellRead`] returns.
pub const SHELL_READ_MAX: u64 = 1024 * 1024;
/// Largest input one [`ShellWrite`] carries.
pub const SHELL_WRITE_MAX: usize = 128 * 1024;
/// Most shells one agent keeps (running or ended but not closed).
pub const SHELLS_MAX: usize = 64;
/// Most services one agent keeps.
pub const SERVICES_MAX: usize = 64;
/// Default bound of one service stream's log (both halves together).
pub const SERVICE_LOG_DEFAULT: u64 = 16 * 1024 * 1024;
/// Largest service log bound.
pub const SERVICE_LOG_MAX: u64 = 256 * 1024 * 1024;
/// Most bytes of each stream one [`ServiceLogs`] returns.
pub const SERVICE_LOGS_READ_MAX: u64 = 4 * 1024 * 1024;
/// Longest a command probe may run before it is killed (and counted as not ready).
pub const PROBE_COMMAND_MAX_MS: u64 = 10_000;

/// Parameters of [`Request::ShellOpen`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellOpen {
    /// The id the host chose (`[0-9a-z]{1,32}`); unique among this agent's shells.
    pub id: String,
    /// Working directory; must exist (it is not created).
    pub cwd: String,
    /// Terminal columns (1..=1000).
    pub cols: u16,
    /// Terminal rows (1..=1000).
    pub rows: u16,
    /// Variables added to the agent's base environment (secrets included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `TERM` (default `xterm-256color`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// Bytes of transcript kept (default [`SHELL_TRANSCRIPT_DEFAULT`], at most
    /// [`SHELL_TRANSCRIPT_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_bytes: Option<u64>,
}

/// A shell as the agent knows it (answer to open, write, signal, resize, close, list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellState {
    /// Its id.
    pub id: String,
    /// The shell's pid (the leader of its session and process group).
    pub pid: i32,
    /// Whether it still runs.
    pub running: bool,
    /// Its exit code once ended; `-N` when killed by signal `N`.
    pub exit_code: Option<i32>,
    /// Working directory it started in.
    pub cwd: String,
    /// Terminal size now.
    pub cols: u16,
    /// Terminal size now.
    pub rows: u16,
    /// When it started (guest ms since the epoch).
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// Bytes of output so far (the transcript's end offset).
    pub transcript_end: u64,
    /// Oldest byte still retained.
    pub transcript_start: u64,
}

/// Parameters of [`Request::ShellRead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellRead {
    /// The shell.
    pub id: String,
    /// Transcript offset to read from.
    pub cursor: u64,
    /// Most bytes to return (at most [`SHELL_READ_MAX`]).
    pub max_bytes: u64,
    /// Wait for output: return once this many ms pass with no new output, once the shell
    /// has ended, or once `max_bytes` are available. Absent: return what is there now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_idle_ms: Option<u64>,
    /// Bound on the whole wait, ms (default and maximum 600 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
}

/// Answer to [`Request::ShellRead`]; the bytes came before it as `DATA` messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellReadResult {
    /// The shell after the read.
    pub shell: ShellState,
    /// Offset of the first byte returned: the cursor, or the oldest retained byte when the
    /// cursor was older (the bytes between were overwritten).
    pub start: u64,
    /// Offset after the last byte returned.
    pub end: u64,
}

/// Parameters of [`Request::ShellWrite`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellWrite {
    /// The shell.
    pub id: String,
    /// Bytes for the terminal (at most [`SHELL_WRITE_MAX`]).
    pub input: String,
}

/// Parameters of [`Request::ShellSignal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSignal {
    /// The shell.
    pub id: String,
    /// Signal number sent to the shell's process group (HUP, INT, TERM, KILL, ...).
    pub signal: i32,
}

/// Parameters of [`Request::ShellResize`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellResize {
    /// The shell.
    pub id: String,
    /// New columns (1..=1000).
    pub cols: u16,
    /// New rows (1..=1000).
    pub rows: u16,
}

/// Parameters of [`Request::ShellClose`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellClose {
    /// The shell.
    pub id: String,
    /// After `SIGHUP` to its group, how long to wait before `SIGKILL` (ms).
    pub grace_ms: u64,
}

/// Answer to [`Request::ShellList`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellList {
    /// Every shell in the table, by id.
    pub shells: Vec<ShellState>,
}

/// How a service proves it is ready. Probes run inside the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Readiness {
    /// The path exists.
    File {
        /// Absolute guest path.
        path: String,
    },
    /// A TCP connection to `host:port` succeeds within a second.
    Tcp {
        /// Host name or address (IPv6 unbracketed).
        host: String,
        /// Port.
        port: u16,
    },
    /// `GET url` (plain `http://` only) answers with a status in 200..=399 within two
    /// seconds.
    Http {
        /// The URL.
        url: String,
    },
    /// `/bin/sh -c command` in the service's cwd and environment exits 0 within
    /// `timeout_ms` (at most [`PROBE_COMMAND_MAX_MS`]); a probe over time is killed with
    /// its process group and counts as not ready.
    Command {
        /// The probe.
        command: String,
        /// Its bound, ms.
        timeout_ms: u64,
    },
}

/// Parameters of [`Request::ServiceStart`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStart {
    /// Its name (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`). A name whose service has ended is
    /// reused (its logs are removed); a running one is refused.
    pub name: String,
    /// Run as `/bin/sh -c <command>`.
    pub command: String,
    /// Working directory; must exist.
    pub cwd: String,
    /// Variables added to the agent's base environment (secrets included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The probe; none means ready as soon as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// Give up on readiness after this long (ms); the service is then stopped and `failed`
    /// with `readiness_timeout`.
    pub ready_timeout_ms: u64,
    /// Pause between probes (ms, at least 10).
    pub ready_interval_ms: u64,
    /// Bound of each stream's log (default [`SERVICE_LOG_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
}

/// A service's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Started, not ready yet.
    Starting,
    /// Ready and running.
    Running,
    /// Ended by itself after it was ready.
    Exited,
    /// Ended by a stop.
    Stopped,
    /// Never became ready (see the stop reason).
    Failed,
}

/// A service as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Its name.
    pub name: String,
    /// The command.
    pub command: String,
    /// Its cwd.
    pub cwd: String,
    /// The leader's pid.
    pub pid: i32,
    /// Where it stands.
    pub status: ServiceStatus,
    /// Why it ended: `sigterm`, `sigkill` (a stop), `process_exited_before_ready`,
    /// `readiness_timeout`; absent while running or when it exited by itself.
    pub stop_reason: Option<String>,
    /// Exit code once ended; `-N` when killed by signal `N`.
    pub exit_code: Option<i32>,
    /// The probe.
    pub readiness: Option<Readiness>,
    /// When it started (guest ms since the epoch).
    pub started_at_ms: u64,
    /// When the probe first succeeded.
    pub ready_at_ms: Option<u64>,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// Probes tried so far.
    pub probe_attempts: u64,
    /// The last failed probe's reason, if any.
    pub last_probe_error: Option<String>,
    /// Bytes written to stdout so far (including bytes rotated out of the log).
    pub stdout_bytes: u64,
    /// Bytes written to stderr so far.
    pub stderr_bytes: u64,
}

/// Progress of a [`ServiceStart`] while it waits for readiness (an `EVENT` message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEvent {
    /// Milliseconds since the service started.
    pub elapsed_ms: u64,
    /// Probes tried so far.
    pub probe_attempts: u64,
    /// Why the last probe failed.
    pub last_probe_error: Option<String>,
}

/// Parameters of [`Request::ServiceStop`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStop {
    /// The service.
    pub name: String,
    /// After `SIGTERM` to its group, how long to wait before `SIGKILL` (ms).
    pub grace_ms: u64,
}

/// Parameters of [`Request::ServiceList`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceListRequest {
    /// Only this service (`not_found` if unknown); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Answer to [`Request::ServiceList`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    /// The services, by name.
    pub services: Vec<ServiceState>,
}

/// Parameters of [`Request::ServiceLogs`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogs {
    /// The service.
    pub name: String,
    /// Only the last this many lines of each stream; absent: everything retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u64>,
    /// Most bytes of each stream (the last ones; at most [`SERVICE_LOGS_READ_MAX`]).
    pub max_bytes: u64,
}

/// Answer to [`Request::ServiceLogs`]; the bytes came before it as `STDOUT`/`STDERR`
/// messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLogsResult {
    /// The service.
    pub service: ServiceState,
    /// Whether stdout was cut (by `tail_lines`, `max_bytes`, or rotation of the log).
    pub stdout_truncated: bool,
    /// Whether stderr was cut.
    pub stderr_truncated: bool,
}

/// Reads a shell's transcript: `(result, bytes)`. At most `req.max_bytes` (itself at most
/// [`SHELL_READ_MAX`]) are accepted, whatever the agent sends.
pub async fn shell_read(
    session: &Session,
    req: ShellRead,
) -> Result<(ShellReadResult, Vec<u8>), CallError> {
    if req.max_bytes > SHELL_READ_MAX {
        return Err(CallError::Invalid {
            detail: format!(
                "max_bytes {} exceeds the limit of {SHELL_READ_MAX}",
                req.max_bytes
            ),
        });
    }
    let limit = req.max_bytes;
    let mut data = Vec::new();
    let res: ShellReadResult = collect(session, &Request::ShellRead(req), |kind, body| {
        if kind != MsgKind::DATA {
            return Err(unexpected(kind, "shell_read"));
        }
        if (data.len() + body.len()) as u64 > limit {
            return Err(CallError::Unexpected {
                detail: format!("the agent sent more than the {limit} bytes asked for"),
            });
        }
        data.extend_from_slice(&body);
        Ok(())
    })
    .await?;
    if res.end.checked_sub(res.start) != Some(data.len() as u64) {
        return Err(CallError::Unexpected {
            detail: format!(
                "the agent sent {} bytes for the range {}..{}",
                data.len(),
                res.start,
                res.end
            ),
        });
    }
    Ok((res, data))
}

/// Starts a service; `on_event` sees each progress event while readiness is awaited.
pub async fn service_start<F>(
    session: &Session,
    req: ServiceStart,
    mut on_event: F,
) -> Result<ServiceState, CallError>
where
    F: FnMut(ServiceEvent),
{
    collect(session, &Request::ServiceStart(req), |kind, body| {
        if kind != MsgKind::EVENT {
            return Err(unexpected(kind, "service_start"));
        }
        // A malformed event is not worth failing a start for: progress only.
        if let Ok(ev) = serde_json::from_slice::<ServiceEvent>(&body) {
            on_event(ev);
        }
        Ok(())
    })
    .await
}

/// Reads a service's logs: `(result, stdout, stderr)`, each at most `req.max_bytes`.
pub async fn service_logs(
    session: &Session,
    req: ServiceLogs,
) -> Result<(ServiceLogsResult, Vec<u8>, Vec<u8>), CallError> {
    if req.max_bytes > SERVICE_LOGS_READ_MAX {
        return Err(CallError::Invalid {
            detail: format!(
                "max_bytes {} exceeds the limit of {SERVICE_LOGS_READ_MAX}",
                req.max_bytes
            ),
        });
    }
    let limit = req.max_bytes;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let res = collect(session, &Request::ServiceLogs(req), |kind, body| {
        let buf = match kind {
            MsgKind::STDOUT => &mut out,
            MsgKind::STDERR => &mut err,
            other => return Err(unexpected(other, "service_logs")),
        };
        if (buf.len() + body.len()) as u64 > limit {
            return Err(CallError::Unexpected {
                detail: format!("the agent sent more than the {limit} log bytes asked for"),
            });
        }
        buf.extend_from_slice(&body);
        Ok(())
    })
    .await?;
    Ok((res, out, err))
}

fn unexpected(kind: MsgKind, what: &str) -> CallError {
    CallError::Unexpected {
        detail: format!("message kind {} during {what}", kind.0),
    }
}

/// Sends `req` (no input follows), hands every message before the result to `each`, and
/// returns the typed result.
async fn collect<R, F>(session: &Session, req: &Request, mut each: F) -> Result<R, CallError>
where
    R: serde::de::DeserializeOwned,
    F: FnMut(MsgKind, Bytes) -> Result<(), CallError>,
{
    let mut stream = session.open()?;
    stream.send(Message::json(MsgKind::REQUEST, req)?).await?;
    stream.finish()?;
    loop {
        let Some(msg) = stream.recv().await? else {
            return Err(CallError::Unexpected {
                detail: "the stream ended without a result".into(),
            });
        };
        match msg.kind {
            MsgKind::RESPONSE => return Ok(msg.parse()?),
            MsgKind::ERROR => return Err(CallError::Agent(msg.parse()?)),
            kind => each(kind, msg.body)?,
        }
    }
}
