//! The core's error type: every failure a surface can report, with the facts it needs.

use std::path::PathBuf;

use pyro_proto::api::CallError;

/// Broad class of an error, used by surfaces to pick exit codes and error types
/// (the Python SDK maps `InvalidInput`/`NotFound` to `ValueError`, the rest to `RuntimeError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller passed something invalid; nothing was changed.
    InvalidInput,
    /// A named object does not exist.
    NotFound,
    /// The object is in the wrong state for the operation.
    State,
    /// The host cannot do this (missing tools, KVM, binaries).
    Unavailable,
    /// Something failed while doing the work.
    Runtime,
}

/// Every error of `pyro-core`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A number outside its allowed range.
    #[error("{field} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The parameter.
        field: &'static str,
        /// What was given.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// Any other invalid parameter.
    #[error("invalid {field}: {}", one_line(reason))]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No VM with this id exists in this process.
    #[error("unknown vm `{}`", one_line(id))]
    VmNotFound {
        /// The id asked for.
        id: String,
    },
    /// The VM is in the wrong state.
    #[error("vm `{id}` is {state}; {operation} needs a vm that is {needed}")]
    WrongState {
        /// The VM.
        id: String,
        /// Its state.
        state: String,
        /// What was asked.
        operation: &'static str,
        /// The state(s) that would allow it.
        needed: &'static str,
    },
    /// No workspace with this id exists.
    #[error("unknown workspace `{}`", one_line(id))]
    WorkspaceNotFound {
        /// The id asked for.
        id: String,
    },
    /// The workspace is in the wrong state for the operation.
    #[error("workspace `{id}` is {state}, so {operation} cannot run{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    WorkspaceState {
        /// The workspace.
        id: String,
        /// Its state.
        state: String,
        /// The operation asked for.
        operation: &'static str,
        /// Why it is in that state, when known.
        detail: Option<String>,
    },
    /// A path the offline disk tools looked for is not on the workspace's disk.
    #[error("`{path}` is not on the workspace's disk")]
    DiskPathNotFound {
        /// The guest path (escaped as the disk tools show paths).
        path: String,
    },
    /// A workspace disk or base image could not be read (corrupt, or not ext4).
    #[error("cannot read the disk image `{}`: {}", image.display(), one_line(reason))]
    Disk {
        /// The image file.
        image: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The state database failed.
    #[error("state store")]
    Store(#[from] crate::store::StoreError),
    /// A workspace lock could not be taken.
    #[error("workspace lock")]
    Lock(#[from] crate::lock::LockError),
    /// A name or label broke a rule.
    #[error(transparent)]
    Validation(#[from] crate::store::ValidationError),
    /// A patch could not be parsed.
    #[error("invalid patch")]
    PatchParse(#[from] pyro_patch::PatchError),
    /// A patch did not apply; nothing was changed.
    #[error("the patch does not apply (nothing was changed)")]
    PatchApply(#[from] pyro_patch::ApplyError),
    /// The VM's TTL ran out; it was deleted.
    #[error("vm `{id}` expired (ttl {ttl_seconds} s) and has been deleted")]
    Expired {
        /// The VM.
        id: String,
        /// Its TTL.
        ttl_seconds: u64,
    },
    /// Too many sandboxes at once.
    #[error("the limit of {max} running sandboxes is reached; stop or delete some first")]
    Capacity {
        /// The limit.
        max: usize,
    },
    /// A networked sandbox was asked for, and this host cannot make one (checked before
    /// anything is created).
    #[error("{reason}")]
    NetworkUnavailable {
        /// What is missing, in one line, starting "guest networking is unavailable".
        reason: String,
    },
    /// Making, changing or removing a sandbox's network failed.
    #[error("sandbox network: {}", one_line(reason))]
    Network {
        /// What failed.
        reason: String,
    },
    /// An environment (image) problem.
    #[error(transparent)]
    Image(#[from] pyro_image::ImageError),
    /// The requested backend cannot run here.
    #[error("the {backend} backend is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The static guest agent binary could not be found.
    #[error(
        "cannot find the static guest agent binary `pyro-agent` (looked in: {}); build it \
         with `scripts/build.sh` or set PYRO_AGENT_BIN",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    AgentBinaryMissing {
        /// Every place looked at.
        searched: Vec<PathBuf>,
    },
    /// The agent binary exists but is dynamically linked.
    #[error("the guest agent `{path}` is not statically linked; rebuild it with scripts/build.sh")]
    AgentNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// The VMM failed to start or the guest never answered.
    #[error("the sandbox did not boot: {reason}{}", console_suffix(console_tail))]
    Boot {
        /// What went wrong.
        reason: String,
        /// The end of the guest console, if any.
        console_tail: String,
    },
    /// Talking to the guest agent failed.
    #[error("guest agent call failed")]
    Agent(#[from] CallError),
    /// The guest agent did not answer within the host's deadline.
    #[error("the guest agent did not answer within {seconds} s")]
    AgentTimeout {
        /// The deadline.
        seconds: u64,
    },
    /// A started workspace's guest agent did not answer in time (see
    /// [`crate::workspace::AGENT_ANSWER_TIMEOUT`]); its VM still runs.
    #[error(
        "the guest agent of workspace `{id}` did not answer within {seconds} s (the guest may \
         be overloaded, e.g. by a fork or memory bomb); stop and start it, or reset it"
    )]
    AgentUnresponsive {
        /// The workspace.
        id: String,
        /// How long it was given.
        seconds: u64,
    },
    /// No shell with this id in the workspace.
    #[error("workspace `{workspace_id}` has no shell `{}`", one_line(shell_id))]
    ShellNotFound {
        /// The workspace.
        workspace_id: String,
        /// The id asked for.
        shell_id: String,
    },
    /// No service with this name in the workspace.
    #[error("workspace `{workspace_id}` has no service `{}`", one_line(name))]
    ServiceNotFound {
        /// The workspace.
        workspace_id: String,
        /// The name asked for.
        name: String,
    },
    /// The caller cancelled the call; what it had started was ended.
    #[error("the call was cancelled")]
    Cancelled,
    /// No snapshot with this name in the workspace.
    #[error("workspace `{workspace_id}` has no snapshot `{}`", one_line(name))]
    SnapshotNotFound {
        /// The workspace.
        workspace_id: String,
        /// The name asked for.
        name: String,
    },
    /// A service did not become ready (it exited first, its readiness timed out, or a port
    /// could not be published); the error's data carries its [`crate::ServiceInfo`].
    #[error("service `{}` {}{}", info.service_name, failure_text(info), log_suffix(log_tail))]
    ServiceFailed {
        /// The failed service, as `service status` shows it.
        info: Box<crate::ServiceInfo>,
        /// The end of its output (redacted).
        log_tail: String,
    },
    /// A host filesystem operation failed.
    #[error("cannot {action} `{}`", one_line(&path.display().to_string()))]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Most characters of a caller's input echoed in an error message.
pub const ECHO_MAX_CHARS: usize = 512;

/// A message made safe to print as one line: control characters (newlines included) are
/// escaped, and anything past [`ECHO_MAX_CHARS`] characters is cut with a count of the rest.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == ECHO_MAX_CHARS {
            let rest = s.chars().count() - n;
            out.push_str(&format!("… ({rest} more characters)"));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes shown as a quoted string: UTF-8 kept, other bytes as `\xNN`, cut like [`one_line`].
pub fn quote_bytes(b: &[u8]) -> String {
    let mut text = String::new();
    for chunk in b.utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    format!("`{}`", one_line(&text))
}

fn failure_text(info: &crate::ServiceInfo) -> String {
    let code = info
        .exit_code
        .map(|c| format!(" (exit code {c})"))
        .unwrap_or_default();
    match info.stop_reason.as_deref() {
        Some("process_exited_before_ready") => format!("exited before it was ready{code}"),
        Some("readiness_timeout") => format!(
            "was not ready in time and was stopped{}",
            info.last_probe_error
                .as_deref()
                .map(|e| format!(" (last probe: {})", one_line(e)))
                .unwrap_or_default()
        ),
        Some("published_port_failed") => "was stopped: a port could not be published".into(),
        Some(other) => format!("failed: {other}{code}"),
        None => format!("failed{code}"),
    }
}

fn log_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- its output (last lines) ---\n{}", tail.trim_end())
    }
}

fn console_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- guest console (last lines) ---\n{}", tail.trim_end())
    }
}

impl CoreError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::OutOfRange { .. } | Self::Invalid { .. } => ErrorKind::InvalidInput,
            Self::Image(pyro_image::ImageError::UnknownEnvironment { .. }) => {
                ErrorKind::InvalidInput
            }
            Self::Validation(_) | Self::PatchParse(_) | Self::PatchApply(_) => {
                ErrorKind::InvalidInput
            }
            Self::VmNotFound { .. }
            | Self::WorkspaceNotFound { .. }
            | Self::ShellNotFound { .. }
            | Self::ServiceNotFound { .. }
            | Self::SnapshotNotFound { .. }
            | Self::DiskPathNotFound { .. } => ErrorKind::NotFound,
            Self::WorkspaceState { .. } | Self::AgentUnresponsive { .. } => ErrorKind::State,
            Self::WrongState { .. } | Self::Expired { .. } | Self::Capacity { .. } => {
                ErrorKind::State
            }
            Self::NetworkUnavailable { .. }
            | Self::BackendUnavailable { .. }
            | Self::AgentBinaryMissing { .. }
            | Self::AgentNotStatic { .. } => ErrorKind::Unavailable,
            Self::Image(pyro_image::ImageError::MissingTool { .. }) => ErrorKind::Unavailable,
            Self::Agent(pyro_proto::api::CallError::Agent(e)) => match e.code {
                pyro_proto::api::ErrorCode::BadRequest => ErrorKind::InvalidInput,
                pyro_proto::api::ErrorCode::NotFound => ErrorKind::NotFound,
                pyro_proto::api::ErrorCode::Conflict => ErrorKind::State,
                _ => ErrorKind::Runtime,
            },
            _ => ErrorKind::Runtime,
        }
    }

    /// Structured facts a surface adds to the error (JSON-RPC `data`, MCP structured
    /// content, the Python exception's `data`): a failed service's record.
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            Self::ServiceFailed { info, .. } => serde_json::to_value(info.as_ref())
                .ok()
                .map(|v| serde_json::json!({ "service": v })),
            _ => None,
        }
    }

    /// An I/O error on `path` while doing `action`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_one_bounded_line() {
        let e = CoreError::Invalid {
            field: "cwd",
            reason: format!("`a\nb{}` is bad", "x".repeat(10_000)),
        };
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("a\\nb"), "{text}");
        assert!(text.contains("more characters"), "{text}");
        assert!(text.len() < 700, "{}", text.len());
        let io = CoreError::io(
            "create",
            format!("/tmp/{}", "d/".repeat(3000)),
            std::io::Error::other("x"),
        );
        assert!(io.to_string().len() < 700);
        assert_eq!(quote_bytes(b"x\xff"), "`x\\xff`");
    }
}
