//! Typed requests and results, and the client side of one call.
//!
//! A call is one stream: the client sends one `REQUEST` message (JSON [`Request`]), then,
//! for requests that take input, `STDIN`/`DATA` messages, then `End`. The agent answers with
//! any number of `STDOUT`/`STDERR`/`EVENT` messages, then exactly one `RESPONSE` or `ERROR`,
//! then `End`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Message, MsgKind, ProtoError, Session};

/// A request to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check; answered with [`PingResult`].
    Ping,
    /// Run a process; answered with streamed output and an [`ExecResult`].
    Exec(ExecRequest),
    /// Set the guest clock (after boot or restore); answered with [`Empty`].
    SyncClock(SyncClock),
    /// Flush filesystems and power the guest off; answered with [`Empty`] before it happens.
    Shutdown(Shutdown),
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Executed directly, no shell involved.
    Argv(Vec<String>),
    /// Run as `/bin/sh -c <string>`.
    Shell(String),
}

/// Parameters of [`Request::Exec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program.
    pub command: Command,
    /// Working directory; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the agent's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the whole process session after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Forward at most this many bytes of each output stream (the rest is counted, not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Whether `STDIN` messages follow the request (else stdin is `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
}

/// Parameters of [`Request::SyncClock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncClock {
    /// Host wall-clock time, nanoseconds since the UNIX epoch.
    pub unix_nanos: u64,
}

/// Parameters of [`Request::Shutdown`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// Power the machine off after syncing (else only sync).
    #[serde(default = "yes")]
    pub poweroff: bool,
}

fn yes() -> bool {
    true
}

/// An empty success result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Answer to [`Request::Ping`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// The agent's crate version.
    pub agent_version: String,
    /// The session protocol version.
    pub protocol_version: u16,
    /// Whether the agent runs as PID 1 (inside a guest).
    pub pid1: bool,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
}

/// Answer to [`Request::Exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status: the process's own, `128 + n` when killed by signal `n`, `124` on timeout,
    /// `127` when the program was not found, `126` when it could not be executed.
    pub exit_code: i32,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Whether the timeout fired (the session was killed; output so far was kept).
    pub timed_out: bool,
    /// Wall time inside the guest.
    pub duration_ms: u64,
    /// Bytes the process wrote to stdout (including any not forwarded).
    pub stdout_bytes: u64,
    /// Bytes the process wrote to stderr (including any not forwarded).
    pub stderr_bytes: u64,
    /// Whether stdout was cut at `max_output_bytes`.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at `max_output_bytes`.
    pub stderr_truncated: bool,
    /// Why the program could not be started, when it could not.
    pub spawn_error: Option<String>,
}

/// Machine-readable class of an [`AgentError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or named something invalid.
    BadRequest,
    /// A named object does not exist.
    NotFound,
    /// The agent does not support this request.
    Unsupported,
    /// An I/O operation in the guest failed.
    Io,
    /// A bug or unexpected state in the agent.
    Internal,
}

/// A typed error reported by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// The class.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl AgentError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Failure of one call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The transport or protocol failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The agent answered with an error.
    #[error("the guest agent refused the request: {0}")]
    Agent(AgentError),
    /// The agent's answer did not follow the call pattern.
    #[error("unexpected reply from the guest agent: {detail}")]
    Unexpected {
        /// What was wrong.
        detail: String,
    },
}

/// A chunk of process output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
}

/// Makes a call with no streamed input or output and returns the typed result.
pub async fn call<R: DeserializeOwned>(session: &Session, req: &Request) -> Result<R, CallError> {
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
            MsgKind::EVENT => continue,
            other => {
                return Err(CallError::Unexpected {
                    detail: format!("message kind {} in a plain call", other.0),
                });
            }
        }
    }
}

/// Runs a process through the agent. Output chunks are handed to `on_output` as they arrive;
/// `stdin`, when given, is sent before the agent is told the input ended.
pub async fn exec<F>(
    session: &Session,
    mut req: ExecRequest,
    stdin: Option<Bytes>,
    mut on_output: F,
) -> Result<ExecResult, CallError>
where
    F: FnMut(Output),
{
    req.stdin = stdin.is_some();
    let stream = session.open()?;
    let (mut tx, mut rx) = stream.split();
    tx.send(Message::json(MsgKind::REQUEST, &Request::Exec(req))?)
        .await?;
    // Input is sent concurrently with reading output so neither side can block the other.
    let sender = async move {
        if let Some(data) = stdin {
            for chunk in data.chunks(Message::MAX_BODY / 2) {
                tx.send(Message::new(MsgKind::STDIN, Bytes::copy_from_slice(chunk)))
                    .await?;
            }
        }
        tx.finish()?;
        Ok::<_, ProtoError>(tx)
    };
    let receiver = async {
        loop {
            let Some(msg) = rx.recv().await? else {
                return Err(CallError::Unexpected {
                    detail: "the stream ended without an exec result".into(),
                });
            };
            match msg.kind {
                MsgKind::STDOUT => on_output(Output::Stdout(msg.body)),
                MsgKind::STDERR => on_output(Output::Stderr(msg.body)),
                MsgKind::RESPONSE => return Ok(msg.parse::<ExecResult>()?),
                MsgKind::ERROR => return Err(CallError::Agent(msg.parse()?)),
                MsgKind::EVENT => {}
                other => {
                    return Err(CallError::Unexpected {
                        detail: format!("message kind {} during exec", other.0),
                    });
                }
            }
        }
    };
    let (sent, result) = tokio::join!(sender, receiver);
    // Keep the send half alive until the result is in, so the stream is not reset early.
    let _tx = sent?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_json_shape() {
        let req = Request::Exec(ExecRequest {
            command: Command::Argv(vec!["git".into(), "--version".into()]),
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: Some(1000),
            max_output_bytes: None,
            stdin: false,
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "exec", "command": {"argv": ["git", "--version"]}, "timeout_ms": 1000, "stdin": false})
        );
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_exec_field_is_rejected() {
        let v = serde_json::json!({"op": "exec", "command": {"shell": "true"}, "bogus": 1});
        let err = serde_json::from_value::<Request>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_op_is_rejected() {
        let v = serde_json::json!({"op": "format_disk"});
        assert!(serde_json::from_value::<Request>(v).is_err());
    }
}
