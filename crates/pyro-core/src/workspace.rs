//! Persistent workspaces: one sandbox an agent inhabits across many calls and processes.
//!
//! Layout: `<state>/workspaces/<id>/` holds `lock` (flock: exclusive for lifecycle changes and
//! read-modify-write edits, shared for exec and reads), `baseline.tar` (the create-time tree),
//! `upper.ext4` (the writable disk: every change to the guest filesystem, `/workspace`
//! included), `vm/` (the VMM's directory: sockets, console log) and `logs/` (full output of
//! every command). Records live in SQLite ([`crate::store`]), the running machine as its
//! backend's [`MachineRecord`]. The VMM and (for QEMU) its relay run detached, so a workspace
//! outlives the process that started it; any later process attaches to the recorded
//! machine ([`crate::backend::attach`]) to check, reach or halt it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_proto::Session;
use pyro_proto::api;

use crate::archive::{self, Seed, SeedMode};
use crate::backend::{BackendChoice, BootSpec, Machine, MachineRecord};
use crate::error::{CoreError, Result};
use crate::hostfs::HostPath;
use crate::lock::{self, LockGuard, LockMode};
use crate::model::{LastCommand, WorkspaceInfo, WorkspaceSeed};
use crate::store::{NewCommand, Store, WorkspaceRecord, WorkspaceState};
use crate::warm::BootMode;
use crate::{ExecOptions, OutputFn, ProgressFn, Pyro, host};

mod activity;
mod disk;
mod files;
mod lifecycle;
mod machine;
mod meter;
mod patch;
mod ports;
mod procs;
mod services;
mod shells;
mod snapshots;
mod teardown;

pub use activity::ActivityEvent;
pub use disk::{
    DiskEntry, DiskExportResult, DiskListResult, DiskReadResult, MAX_DISK_LIST_ENTRIES, disk_path,
    offline as disk_offline, parse_shown, show_bytes,
};
pub use files::*;
pub use patch::*;
pub use ports::MAX_PUBLISHED_PORTS;
pub use services::{
    PortSpec, READY_TIMEOUT_MAX_SECONDS, ReadinessSpec, SERVICE_LOG_READ_BYTES, SERVICE_PORTS_MAX,
    StartService, check_service_name,
};
pub use shells::{OpenShell, ReadShell, SHELL_IDLE_MAX_MS, SHELL_READ_MAX_CHARS, SHELL_SIGNALS};
pub use snapshots::{
    BASELINE, ForkResult, ForkWorkspace, MAX_FORKS, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOTS,
    SnapshotCreateResult, SnapshotDeleteResult, SnapshotInfo, SnapshotList, check_snapshot_name,
};
use teardown::Teardown;

/// How long a started workspace's guest agent has to answer a call (the handshake and a
/// ping, once connected) before the call fails with [`CoreError::AgentUnresponsive`]. An agent
/// that is merely busy answers a ping within milliseconds; one that does not answer for
/// this long is wedged (or its guest frozen) and needs `stop`/`start` or `reset`.
pub const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The guest path of the workspace tree.
pub const WORKSPACE_ROOT: &str = "/workspace";
/// Size of a workspace's writable disk (sparse).
pub const WORKSPACE_DISK_MIB: u64 = 8192;
/// Allowed TTL for workspaces: from one minute to 30 days of running time.
pub const WORKSPACE_TTL_RANGE: (i64, i64) = (60, 30 * 86_400);
/// Default TTL of a workspace (running time).
pub const DEFAULT_WORKSPACE_TTL: i64 = 3600;
/// Most workspaces running at once on this host.
pub const MAX_RUNNING_WORKSPACES: usize = 64;
/// How long a call waits for another process's conflicting operation on the same workspace.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Output of one command kept in its log files, per stream.
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries one `logs` page asks for.
pub const MAX_LOG_PAGE: u64 = 1000;
/// Most output bytes (stdout and stderr of all its entries) one `logs` page carries: past
/// it the page ends early (at least one entry is always given); `offset` + `count` <
/// `total` says there is more.
pub const MAX_LOG_PAGE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest file `file read` returns in one call.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;
/// Largest text `file write` accepts.
pub const MAX_WRITE_BYTES: usize = 16 * 1024 * 1024;
/// Largest patch accepted.
pub const MAX_PATCH_BYTES: usize = 16 * 1024 * 1024;

/// Parameters of [`Pyro::create_workspace`].
#[derive(Clone, Debug)]
pub struct CreateWorkspace {
    pub environment: String,
    /// 1..=8.
    pub vcpu_count: i64,
    /// 256..=32768.
    pub mem_mib: i64,
    /// Running-time budget, seconds.
    pub ttl_seconds: i64,
    /// A directory or archive that becomes `/workspace` and the baseline (a plain path
    /// converts with `.into()`; MCP passes one confined to its allowed roots).
    pub seed_path: Option<HostPath>,
    pub name: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Per-call backend; `None` = the instance default.
    pub backend: Option<BackendChoice>,
    /// `off` (no network device), `egress` or `egress+published-ports`.
    pub network_policy: String,
    /// Host names the guest may reach (`api.example.org`, `*.example.org`); with any,
    /// egress is narrowed to these and `allow_cidrs`. Needs a networked policy.
    pub allow_hosts: Vec<String>,
    /// IPv4 ranges the guest may reach, also private ones otherwise blocked.
    pub allow_cidrs: Vec<String>,
    /// Secrets, kept on the host and given to commands that name them (`secret_env`).
    pub secrets: Vec<crate::secrets::SecretInput>,
    /// Without `seed_path`: seed from this project (its tracked files, or a clone).
    pub project: Option<std::sync::Arc<crate::project::ProjectSource>>,
}

impl CreateWorkspace {
    /// Defaults for `environment`.
    pub fn new(environment: impl Into<String>) -> Self {
        Self {
            environment: environment.into(),
            vcpu_count: 1,
            mem_mib: 1024,
            ttl_seconds: DEFAULT_WORKSPACE_TTL,
            seed_path: None,
            name: None,
            labels: BTreeMap::new(),
            backend: None,
            network_policy: "off".into(),
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            secrets: Vec::new(),
            project: None,
        }
    }
}

/// Parameters of [`Pyro::update_workspace`].
#[derive(Clone, Debug, Default)]
pub struct UpdateWorkspace {
    /// New name.
    pub name: Option<String>,
    /// Remove the name.
    pub clear_name: bool,
    /// Labels to add or replace.
    pub labels: BTreeMap<String, String>,
    /// Label keys to remove.
    pub clear_labels: Vec<String>,
    /// Give the workspace this many more seconds of running time from now.
    pub ttl_seconds: Option<i64>,
}

/// Result of [`Pyro::exec_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct WorkspaceExecResult {
    pub workspace_id: String,
    pub environment: String,
    pub environment_version: Option<String>,
    pub command: String,
    /// A marker line ends it when it was cut.
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub execution_mode: String,
    /// Its place in the logs.
    pub sequence: u64,
    pub cwd: String,
    pub timed_out: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub spawn_error: Option<String>,
    /// Only when stdout is not UTF-8: its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
}

/// Summary line of [`Pyro::list_workspaces`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct WorkspaceSummary {
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    pub state: String,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// Null while stopped.
    pub expires_at: Option<f64>,
    pub ttl_remaining_seconds: f64,
    pub command_count: u64,
    pub service_count: u64,
    pub running_service_count: u64,
}

/// Result of [`Pyro::list_workspaces`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct WorkspaceList {
    pub count: usize,
    pub workspaces: Vec<WorkspaceSummary>,
}

/// One history entry of [`Pyro::logs_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct LogEntry {
    pub sequence: u64,
    pub command: String,
    pub cwd: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub execution_mode: String,
    pub recorded_at: f64,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
}

/// Result of [`Pyro::logs_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct WorkspaceLogs {
    pub workspace_id: String,
    pub count: usize,
    /// Entries in the whole history.
    pub total: u64,
    pub offset: u64,
    pub entries: Vec<LogEntry>,
}

/// Result of [`Pyro::delete_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct WorkspaceDeleteResult {
    pub workspace_id: String,
    pub deleted: bool,
    pub reason: String,
}

/// Validates a guest path and returns it absolute under `/workspace`.
pub fn normalize_workspace_path(raw: &str) -> Result<String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(CoreError::Invalid {
            field: "path",
            reason: "the path is empty; give a path inside /workspace".into(),
        });
    }
    let rel = if let Some(rest) = t.strip_prefix(WORKSPACE_ROOT) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(outside(raw));
        }
        rest.trim_start_matches('/')
    } else if t.starts_with('/') {
        return Err(outside(raw));
    } else {
        t
    };
    let mut parts = Vec::new();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                return Err(CoreError::Invalid {
                    field: "path",
                    reason: format!("`{raw}` contains `..`; paths must stay inside /workspace"),
                });
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(WORKSPACE_ROOT.to_string())
    } else {
        Ok(format!("{WORKSPACE_ROOT}/{}", parts.join("/")))
    }
}

fn outside(raw: &str) -> CoreError {
    CoreError::Invalid {
        field: "path",
        reason: format!("`{raw}` is outside /workspace"),
    }
}

/// The path relative to `/workspace` (empty for the root itself).
fn rel(path: &str) -> String {
    path.strip_prefix(WORKSPACE_ROOT)
        .unwrap_or(path)
        .trim_start_matches('/')
        .to_string()
}

fn ws_not_found(id: &str) -> CoreError {
    CoreError::WorkspaceNotFound { id: id.to_string() }
}

struct Dirs {
    root: PathBuf,
}

/// The workspace's writable disk, in its directory.
const UPPER_FILE: &str = "upper.ext4";

impl Dirs {
    fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    fn baseline(&self) -> PathBuf {
        self.root.join("baseline.tar")
    }
    fn upper(&self) -> PathBuf {
        self.root.join(UPPER_FILE)
    }
    fn vm(&self) -> PathBuf {
        self.root.join("vm")
    }
    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn assert_send<T: Send>(_: &T) {}

    /// The async API must be usable from multi-threaded servers (MCP, JSON-RPC): every
    /// future must be `Send`. This fails to compile otherwise.
    #[allow(dead_code)]
    fn futures_are_send(p: &Pyro) {
        assert_send(&p.create_workspace(CreateWorkspace::new("debian:12"), crate::no_progress()));
        assert_send(&p.exec_workspace("x", ExecOptions::new(Command::Shell("true".into())), None));
        assert_send(&p.list_workspaces());
        assert_send(&p.status_workspace("x"));
        assert_send(&p.apply_workspace_patch("x", ""));
        assert_send(&p.diff_workspace("x"));
        assert_send(&p.export_workspace("x", "a", Path::new("/tmp/x")));
        assert_send(&p.reset_workspace("x", crate::no_progress()));
        assert_send(&p.stop_workspace("x"));
        assert_send(&p.delete_workspace("x"));
        assert_send(&p.run_in_vm(
            crate::CreateVm::new("debian:12"),
            ExecOptions::new(Command::Shell("true".into())),
            crate::no_progress(),
            None,
        ));
    }

    #[test]
    fn one_store_connection_is_opened_lazily_and_a_failed_open_is_retried() {
        let state = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut opts = crate::PyroOptions::from_env_with_backend(BackendChoice::Auto).unwrap();
        opts.state_dir = state.path().to_path_buf();
        opts.cache_dir = cache.path().to_path_buf();
        let p = Pyro::new(opts).unwrap();
        let db = state.path().join(crate::store::DB_FILE_NAME);
        assert!(!db.exists(), "nothing is opened before the first use");
        // A directory where the database belongs: the open fails, and is not remembered.
        std::fs::create_dir(&db).unwrap();
        assert!(matches!(p.store(), Err(CoreError::Store(_))));
        assert!(matches!(p.store(), Err(CoreError::Store(_))));
        std::fs::remove_dir(&db).unwrap();
        let first = p.store().unwrap();
        let second = p.store().unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        // Another connection (as another process has) sees what this one commits.
        first
            .insert_workspace(&WorkspaceRecord::new(
                "a",
                "debian:12",
                "1.0.0",
                crate::BackendKind::Qemu,
                1.0,
            ))
            .unwrap();
        let other = Store::open(state.path()).unwrap();
        assert!(other.get_workspace("a").unwrap().is_some());
        assert!(other.delete_workspace("a").unwrap());
        assert!(second.get_workspace("a").unwrap().is_none());
    }

    #[test]
    fn workspace_paths_are_normalized_or_refused() {
        assert_eq!(
            normalize_workspace_path("src/a.rs").unwrap(),
            "/workspace/src/a.rs"
        );
        assert_eq!(
            normalize_workspace_path("/workspace/./src//a").unwrap(),
            "/workspace/src/a"
        );
        assert_eq!(
            normalize_workspace_path("/workspace").unwrap(),
            "/workspace"
        );
        assert_eq!(normalize_workspace_path(" . ").unwrap(), "/workspace");
        for bad in [
            "",
            "  ",
            "../etc",
            "/etc/passwd",
            "/workspacex/a",
            "a/../../b",
            "/",
        ] {
            assert!(normalize_workspace_path(bad).is_err(), "{bad}");
        }
    }
}
