//! Persistent workspaces: one sandbox an agent inhabits across many calls and processes.
//!
//! Layout: `<state>/workspaces/<id>/` holds `lock` (flock: exclusive for lifecycle changes and
//! read-modify-write edits, shared for exec and reads), `baseline.tar` (the create-time tree),
//! `upper.ext4` (the writable disk: every change to the guest filesystem, `/workspace`
//! included), `vm/` (the VMM's directory: sockets, console log) and `logs/` (full output of
//! every command). Records live in SQLite ([`crate::store`]). The VMM and (for QEMU) its relay
//! run detached, so a workspace outlives the process that started it; any later process
//! reconnects through `vm/vsock.sock`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_proto::Session;
use pyro_proto::api::{self, Output};

use crate::archive::{self, Seed, SeedMode};
use crate::backend::{BackendChoice, BackendKind, BootSpec, Machine};
use crate::error::{CoreError, Result};
use crate::hostfs::HostPath;
use crate::lock::{self, LockGuard, LockMode};
use crate::model::{LastCommand, WorkspaceInfo, WorkspaceSeed};
use crate::snapshot::BootMode;
use crate::store::{NewCommand, Store, WorkspaceRecord, WorkspaceState};
use crate::{Command, ExecOptions, OutputFn, ProgressFn, Pyro, host};

mod meter;
mod procs;

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
    /// Catalog name.
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
    /// Free-form name.
    pub name: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Per-call backend; `None` = the instance default.
    pub backend: Option<BackendChoice>,
    /// Only `off` is supported in this version.
    pub network_policy: String,
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
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkspaceExecResult {
    /// The workspace.
    pub workspace_id: String,
    /// Its environment.
    pub environment: String,
    /// Environment version.
    pub environment_version: Option<String>,
    /// The command text.
    pub command: String,
    /// Standard output (capped; the full text is in the logs).
    pub stdout: String,
    /// Standard error (capped; the full text is in the logs).
    pub stderr: String,
    /// Exit status.
    pub exit_code: i32,
    /// Wall time in the guest.
    pub duration_ms: u64,
    /// How it ran.
    pub execution_mode: String,
    /// 1-based sequence number in the workspace's history.
    pub sequence: u64,
    /// Working directory.
    pub cwd: String,
    /// pyro extension: the timeout killed the command.
    pub timed_out: bool,
    /// pyro extension: bytes written to stdout.
    pub stdout_bytes: u64,
    /// pyro extension: bytes written to stderr.
    pub stderr_bytes: u64,
    /// pyro extension: stdout in this result was cut (see the logs for all of it).
    pub stdout_truncated: bool,
    /// pyro extension: stderr in this result was cut.
    pub stderr_truncated: bool,
    /// pyro extension: why the program could not be started.
    pub spawn_error: Option<String>,
    /// pyro extension: exact stdout bytes, base64, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// pyro extension: exact stderr bytes, base64, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
}

/// Summary line of [`Pyro::list_workspaces`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkspaceSummary {
    /// The workspace.
    pub workspace_id: String,
    /// Its name.
    pub name: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Catalog name.
    pub environment: String,
    /// `started` or `stopped`.
    pub state: String,
    /// Creation time.
    pub created_at: f64,
    /// Last mutating operation.
    pub last_activity_at: f64,
    /// When the TTL stops it (while started).
    pub expires_at: Option<f64>,
    /// pyro extension: running time left.
    pub ttl_remaining_seconds: f64,
    /// Commands run.
    pub command_count: u64,
    /// Services (none in this version).
    pub service_count: u64,
    /// Running services (none in this version).
    pub running_service_count: u64,
}

/// Result of [`Pyro::list_workspaces`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkspaceList {
    /// How many.
    pub count: usize,
    /// Most recently active first.
    pub workspaces: Vec<WorkspaceSummary>,
}

/// One history entry of [`Pyro::logs_workspace`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogEntry {
    /// Sequence number.
    pub sequence: u64,
    /// Command text.
    pub command: String,
    /// Working directory.
    pub cwd: String,
    /// Exit status.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// How it ran.
    pub execution_mode: String,
    /// When it finished.
    pub recorded_at: f64,
    /// The output (up to `max_bytes` per stream).
    pub stdout: String,
    /// The error output (up to `max_bytes` per stream).
    pub stderr: String,
    /// pyro extension: total stdout bytes.
    pub stdout_bytes: u64,
    /// pyro extension: total stderr bytes.
    pub stderr_bytes: u64,
    /// pyro extension: stdout shown here was cut.
    pub stdout_truncated: bool,
    /// pyro extension: stderr shown here was cut.
    pub stderr_truncated: bool,
    /// pyro extension: the timeout killed the command.
    pub timed_out: bool,
}

/// Result of [`Pyro::logs_workspace`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkspaceLogs {
    /// The workspace.
    pub workspace_id: String,
    /// Entries returned.
    pub count: usize,
    /// pyro extension: entries in the whole history.
    pub total: u64,
    /// pyro extension: where this page starts (0-based).
    pub offset: u64,
    /// Oldest first.
    pub entries: Vec<LogEntry>,
}

/// Result of [`Pyro::delete_workspace`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkspaceDeleteResult {
    /// The workspace.
    pub workspace_id: String,
    /// Always true.
    pub deleted: bool,
    /// `explicit_delete`.
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
/// The link to it in the VM's working directory (QEMU).
const UPPER_LINK: &str = "upper.ext4";

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
    /// The agent's `CONNECT` socket: recorded at boot (a jailed Firecracker keeps it inside
    /// its chroot), else the backend's default place.
    fn socket(&self, backend: &str) -> PathBuf {
        if let Ok(p) = std::fs::read_to_string(self.vm().join("agent-socket")) {
            let p = PathBuf::from(p.trim());
            if p.is_absolute() {
                return p;
            }
        }
        match backend {
            "firecracker" => self.vm().join("vsock.sock"),
            _ => self.vm().join(pyro_qemu::RELAY_SOCKET),
        }
    }
}

impl Pyro {
    fn ws_dirs(&self, id: &str) -> Dirs {
        Dirs {
            root: self.options().state_dir.join("workspaces").join(id),
        }
    }

    fn store(&self) -> Result<Store> {
        Store::open(&self.options().state_dir).map_err(CoreError::from)
    }

    async fn ws_lock(&self, id: &str, mode: LockMode) -> Result<LockGuard> {
        let d = self.ws_dirs(id);
        if !d.root.is_dir() {
            return Err(ws_not_found(id));
        }
        lock::lock(d.lock(), mode, LOCK_TIMEOUT)
            .await
            .map_err(CoreError::from)
    }

    fn relay_bin(&self) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("PYRO_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe =
            std::env::current_exe().map_err(|e| CoreError::io("find", "/proc/self/exe", e))?;
        if exe.file_name().is_some_and(|n| n == "pyro") {
            return Ok(exe);
        }
        // A test binary or an embedding program: look for `pyro` beside it or on PATH.
        let mut candidates = Vec::new();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("pyro"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("pyro"));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("pyro")));
        }
        candidates
            .into_iter()
            .find(|c| c.is_file())
            .ok_or_else(|| CoreError::BackendUnavailable {
                backend: "qemu",
                reason: "persistent QEMU workspaces need the `pyro` binary for their relay; set PYRO_BIN".into(),
            })
    }

    /// Checks a record against reality: a started workspace whose VMM died is marked stopped
    /// (with the reason); one whose TTL ran out is stopped; a started one whose TTL watchdog
    /// is gone gets a new one; processes still running for a workspace recorded as not
    /// running (a `start` killed before it recorded its VMM) are ended and reported, unless
    /// another pyro process holds the workspace. Returns the fresh record.
    async fn refresh(&self, store: &Store, rec: WorkspaceRecord) -> Result<WorkspaceRecord> {
        let now = host::now();
        // A create or reset whose process died part-way leaves `creating` behind: once it is
        // older than any boot could take, say so truthfully (reset or delete recover it).
        let stale_after = self.options().boot_timeout.as_secs_f64() + 120.0;
        let builder_gone = || {
            let owner = std::fs::read_to_string(self.ws_dirs(&rec.id).root.join("builder"))
                .ok()
                .and_then(|t| {
                    let (p, t) = t.trim().split_once(' ')?;
                    Some((p.parse::<u32>().ok()?, t.parse::<u64>().ok()?))
                });
            match owner {
                Some((pid, ticks)) => !host::process_alive(pid, ticks),
                None => now - rec.last_activity_at > stale_after,
            }
        };
        if rec.state == WorkspaceState::Creating && !builder_gone() {
            // A create or reset in progress: its processes are its own.
            return Ok(rec);
        }
        let mut rec = rec;
        if rec.state == WorkspaceState::Creating {
            let id = rec.id.clone();
            rec = store.update_workspace(&id, |r| {
                r.pause_ttl(now);
                r.state = WorkspaceState::Error;
                r.vmm_pid = None;
                r.vmm_start_ticks = None;
                r.relay_pid = None;
                r.relay_start_ticks = None;
                r.last_error = Some(
                    "its creation or reset was interrupted; `reset` rebuilds it from its baseline, or delete it".into(),
                );
                Ok::<(), CoreError>(())
            })?;
            // What it had booted is ended below.
        }
        if rec.state != WorkspaceState::Started {
            return match self.reap_unrecorded(&rec).await {
                procs::Unrecorded::Nothing => Ok(rec),
                procs::Unrecorded::EndedVmm => {
                    let id = rec.id.clone();
                    store.update_workspace(&id, |r| {
                        if r.state == WorkspaceState::Stopped {
                            r.last_error = Some(
                                "its VM was still running although it was recorded as stopped (a start was interrupted); that VM was ended, its data is kept".into(),
                            );
                        }
                        Ok::<(), CoreError>(())
                    })
                }
                procs::Unrecorded::Busy => {
                    if rec.state == WorkspaceState::Stopped {
                        rec.last_error = Some(
                            "its VM is running while another pyro process holds the workspace (a start, reset or delete is in progress)".into(),
                        );
                    }
                    Ok(rec)
                }
            };
        }
        let alive = match (rec.vmm_pid, rec.vmm_start_ticks) {
            (Some(pid), Some(t)) => host::process_alive(pid, t),
            _ => false,
        };
        if !alive {
            // Its relay has nothing left to serve.
            if let (Some(pid), Some(ticks)) = (rec.relay_pid, rec.relay_start_ticks) {
                procs::end(&[procs::WsProcess {
                    pid,
                    ticks,
                    role: procs::Role::Relay,
                }])
                .await;
            }
            let id = rec.id.clone();
            return store
                .update_workspace(&id, |r| {
                    if r.state == WorkspaceState::Started {
                        r.pause_ttl(now);
                        r.state = WorkspaceState::Stopped;
                        r.vmm_pid = None;
                        r.vmm_start_ticks = None;
                        r.relay_pid = None;
                        r.relay_start_ticks = None;
                        r.last_error = Some("the VMM process exited unexpectedly; `start` boots the workspace again with its data".into());
                    }
                    Ok::<(), CoreError>(())
                });
        }
        if rec.is_expired(now) {
            let id = rec.id.clone();
            self.graceful_halt(&rec).await;
            return store
                .update_workspace(&id, |r| {
                    r.pause_ttl(now);
                    r.state = WorkspaceState::Stopped;
                    r.vmm_pid = None;
                    r.vmm_start_ticks = None;
                    r.relay_pid = None;
                    r.relay_start_ticks = None;
                    r.last_error = Some("the TTL ran out and the workspace was stopped; its data is kept (extend it with `update --ttl-seconds`)".into());
                    Ok::<(), CoreError>(())
                });
        }
        self.ensure_watchdog(&rec);
        Ok(rec)
    }

    fn check_capacity(&self, store: &Store) -> Result<()> {
        let running = store
            .list_workspaces()?
            .iter()
            .filter(|w| matches!(w.state, WorkspaceState::Started | WorkspaceState::Creating))
            .count();
        if running >= MAX_RUNNING_WORKSPACES {
            return Err(CoreError::Capacity {
                max: MAX_RUNNING_WORKSPACES,
            });
        }
        Ok(())
    }

    /// Records which process is building (creating or resetting) the workspace, so that a
    /// build whose process died is recognized at once.
    fn mark_builder(&self, id: &str) {
        let me = std::process::id();
        let ticks = host::process_start_ticks(me).unwrap_or(0);
        let _ = std::fs::write(
            self.ws_dirs(id).root.join("builder"),
            format!("{me} {ticks}\n"),
        );
    }

    /// Asks the guest to flush and power off, waits a little, then makes sure with
    /// [`Self::halt`]. Used by `stop` and by TTL expiry, so no acknowledged write is lost.
    async fn graceful_halt(&self, rec: &WorkspaceRecord) {
        let session = tokio::time::timeout(Duration::from_secs(5), self.ws_session(rec)).await;
        if let Ok(Ok(session)) = session {
            let _ = tokio::time::timeout(Duration::from_secs(10), api::sync(&session)).await;
            let req = api::Request::Shutdown(api::Shutdown { poweroff: true });
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                api::call::<api::Empty>(&session, &req),
            )
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let (Some(pid), Some(t)) = (rec.vmm_pid, rec.vmm_start_ticks) {
            if !host::process_alive(pid, t) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.halt(rec).await;
    }

    /// Watches one boot of a workspace until its VMM is gone, stopping it (gracefully) when
    /// its TTL runs out even if nobody calls in. Run by `pyro __watchdog`, a detached
    /// process started at every boot.
    pub async fn watch_workspace(&self, id: &str, vmm_pid: u32) -> Result<()> {
        let vmm_ticks = host::process_start_ticks(vmm_pid);
        // One watchdog per workspace: it holds this lock while it lives, so a missing one is
        // noticed (and replaced) by the next operation. One of an earlier boot lets go
        // within a second of its VMM's end.
        let lock_path = self.ws_dirs(id).root.join(procs::WATCHDOG_LOCK);
        let wait_until = Instant::now() + Duration::from_secs(3);
        let _watching = loop {
            match lock::try_lock(&lock_path, LockMode::Exclusive) {
                Ok(Some(guard)) => break guard,
                Ok(None) if Instant::now() < wait_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Another watchdog watches it.
                Ok(None) => return Ok(()),
                // The workspace is gone.
                Err(_) if !self.ws_dirs(id).root.is_dir() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        let mut next_check = Instant::now();
        loop {
            let vmm_alive = vmm_ticks.is_some_and(|t| host::process_alive(vmm_pid, t));
            if !vmm_alive || Instant::now() >= next_check {
                let store = self.store()?;
                let Some(rec) = store.get_workspace(id)? else {
                    return Ok(());
                };
                if rec.state != WorkspaceState::Started || rec.vmm_pid != Some(vmm_pid) {
                    return Ok(());
                }
                // Marks a dead VMM stopped, and stops an expired workspace.
                let rec = self.refresh(&store, rec).await?;
                if rec.state != WorkspaceState::Started {
                    return Ok(());
                }
                let left = rec.remaining_ttl(host::now());
                next_check = Instant::now() + Duration::from_secs_f64(left.clamp(0.5, 30.0));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn spawn_watchdog(&self, id: &str, vmm_pid: u32) {
        let Ok(bin) = self.relay_bin() else {
            return;
        };
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("__watchdog")
            .arg(id)
            .arg(vmm_pid.to_string())
            .current_dir(self.ws_dirs(id).root)
            .env("PYRO_STATE_DIR", &self.options().state_dir)
            .env("PYRO_CACHE_DIR", &self.options().cache_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Err(e) = host::spawn_detached(&mut cmd) {
            tracing::warn!("cannot start the TTL watchdog of workspace {id}: {e}");
        }
    }

    /// Kills a workspace's VMM, relay and watchdog (no guest shutdown): those the record
    /// names, and any other process of the workspace (see [`procs`]: one of a boot that was
    /// never recorded because its starter died first, one whose directory was replaced).
    /// Returns once they are gone (so the disk is free) or after a few seconds.
    async fn halt(&self, rec: &WorkspaceRecord) {
        let d = self.ws_dirs(&rec.id);
        let mut all: Vec<procs::WsProcess> = [
            (rec.vmm_pid, rec.vmm_start_ticks, procs::Role::Vmm),
            (rec.relay_pid, rec.relay_start_ticks, procs::Role::Relay),
        ]
        .into_iter()
        .filter_map(|(pid, ticks, role)| {
            let (pid, ticks) = (pid?, ticks?);
            host::process_alive(pid, ticks).then_some(procs::WsProcess { pid, ticks, role })
        })
        .collect();
        for p in procs::find(&d.root, &rec.id) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        procs::end(&all).await;
        // Anything that appeared meanwhile; forgets the recorded pids.
        procs::end_all(&d.root, &rec.id).await;
        let _ = std::fs::remove_file(d.socket(&rec.backend));
    }

    async fn load_started(
        &self,
        store: &Store,
        id: &str,
        operation: &'static str,
    ) -> Result<WorkspaceRecord> {
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(store, rec).await?;
        if rec.state != WorkspaceState::Started {
            return Err(CoreError::WorkspaceState {
                id: id.to_string(),
                state: rec.state.as_str().to_string(),
                operation,
                detail: rec.last_error.clone(),
            });
        }
        Ok(rec)
    }

    /// Opens a protocol session to a started workspace's agent, and makes sure the agent
    /// answers: once connected (a dead QEMU relay restarted), the handshake and a ping must
    /// be done within [`AGENT_ANSWER_TIMEOUT`] (through QEMU's relay the handshake is the
    /// relay's, so only the ping reaches the agent). Past that the call fails with
    /// [`CoreError::AgentUnresponsive`], which is also recorded as the workspace's
    /// `last_error` (its state stays `started`: the VM runs) until an answer clears it.
    async fn ws_session(&self, rec: &WorkspaceRecord) -> Result<Session> {
        let stream = self.ws_connect(rec).await?;
        let answered = tokio::time::timeout(AGENT_ANSWER_TIMEOUT, async {
            // The deadline around it bounds the handshake.
            let cfg = pyro_proto::Config {
                handshake_timeout: AGENT_ANSWER_TIMEOUT * 2,
                ..pyro_proto::Config::default()
            };
            let session = Session::client(stream, cfg)
                .await
                .map_err(|e| CoreError::Agent(api::CallError::Proto(e)))?;
            api::call::<api::PingResult>(&session, &api::Request::Ping).await?;
            Ok::<Session, CoreError>(session)
        })
        .await;
        let note = CoreError::AgentUnresponsive {
            id: rec.id.clone(),
            seconds: AGENT_ANSWER_TIMEOUT.as_secs(),
        };
        let text = note.to_string();
        let session = match answered {
            Ok(answer) => answer?,
            Err(_) => {
                if let Ok(store) = self.store() {
                    let _ = store.update_workspace(&rec.id, |r| {
                        // Only on the boot that did not answer.
                        if r.state == WorkspaceState::Started && r.vmm_pid == rec.vmm_pid {
                            r.last_error = Some(text);
                        }
                        Ok::<(), CoreError>(())
                    });
                }
                return Err(note);
            }
        };
        if rec.last_error.as_deref() == Some(text.as_str())
            && let Ok(store) = self.store()
        {
            let _ = store.update_workspace(&rec.id, |r| {
                if r.last_error.as_deref() == Some(text.as_str()) {
                    r.last_error = None;
                }
                Ok::<(), CoreError>(())
            });
        }
        Ok(session)
    }

    /// Connects to a started workspace's agent socket, restarting a dead QEMU relay once;
    /// see [`Self::ws_session`].
    async fn ws_connect(&self, rec: &WorkspaceRecord) -> Result<tokio::net::UnixStream> {
        let d = self.ws_dirs(&rec.id);
        let sock = d.socket(&rec.backend);
        let mut respawned = false;
        loop {
            match pyro_firecracker::vsock::connect(
                &sock,
                pyro_proto::AGENT_PORT,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    // A QEMU relay that died (while QEMU lives) is restarted once.
                    let relay_dead = match (rec.relay_pid, rec.relay_start_ticks) {
                        (Some(p), Some(t)) => !host::process_alive(p, t),
                        _ => rec.backend == "qemu",
                    };
                    if rec.backend == "qemu" && relay_dead && !respawned {
                        respawned = true;
                        let bin = self.relay_bin()?;
                        let pid = crate::backend::spawn_relay_process(&bin, &d.vm())?;
                        let ticks = host::process_start_ticks(pid);
                        let store = self.store()?;
                        store.update_workspace(&rec.id, |r| {
                            r.relay_pid = Some(pid);
                            r.relay_start_ticks = ticks;
                            Ok::<(), CoreError>(())
                        })?;
                        continue;
                    }
                    return Err(CoreError::Boot {
                        reason: format!("cannot reach the workspace's guest agent: {e}"),
                        console_tail: crate::backend::console_tail(
                            &d.vm().join("console.log"),
                            2000,
                        ),
                    });
                }
            }
        }
    }

    /// Starts the workspace's VM; returns the pids to record, the session and how it
    /// started. With `fresh_disk` (create and reset: the disk holds nothing yet) the VM is
    /// restored from the environment's warm workspace snapshot where there is one (built
    /// on first use), its disk replaced by a copy of the snapshot's; any failure there
    /// falls back to a cold boot on a new empty disk. Otherwise it boots on its disk.
    async fn ws_boot(
        &self,
        rec: &WorkspaceRecord,
        progress: &ProgressFn,
        fresh_disk: bool,
    ) -> Result<(u32, Option<u32>, Session, BootMode)> {
        let d = self.ws_dirs(&rec.id);
        // Nothing of an earlier boot may outlive into this one: a VMM left by a killed
        // `start` holds the disk's write lock, and its directory is about to be replaced.
        procs::end_all(&d.root, &rec.id).await;
        let choice = match rec.backend.as_str() {
            "firecracker" => BackendChoice::Firecracker,
            _ => BackendChoice::Qemu,
        };
        let backend = self.backend(choice, progress).await?;
        // `create` has already pulled with progress; here the environment is normally cached.
        let env = self
            .pull_environment(&rec.environment, crate::no_progress())
            .await?;
        let vm_dir = d.vm();
        let relay_bin = if backend.kind() == BackendKind::Qemu {
            Some(self.relay_bin()?)
        } else {
            None
        };
        let upper = d.upper();
        // QEMU is given the disk through a link in its working directory, so its command
        // line names it relatively, as the warm snapshot it may be restored from does.
        let disk_name = match backend.kind() {
            BackendKind::Qemu => vm_dir.join(UPPER_LINK),
            BackendKind::Firecracker => upper.clone(),
        };
        let prepare_vm_dir = || -> Result<()> {
            // Start from a clean VM directory (stale sockets of a dead VMM would confuse
            // the connect retries).
            let _ = std::fs::remove_dir_all(&vm_dir);
            host::ensure_private_dir(&vm_dir)?;
            if backend.kind() == BackendKind::Qemu {
                let link = vm_dir.join(UPPER_LINK);
                std::os::unix::fs::symlink(Path::new("..").join(UPPER_FILE), &link)
                    .map_err(|e| CoreError::io("link", &link, e))?;
            }
            Ok(())
        };
        prepare_vm_dir()?;
        let spec = BootSpec {
            id: &rec.id,
            workdir: &vm_dir,
            env: &env,
            upper: &disk_name,
            vcpu_count: rec.vcpu_count as u8,
            mem_mib: rec.mem_mib as u32,
            persistent: true,
            durable_disk: true,
            relay_bin: relay_bin.as_deref(),
            boot_timeout: self.options().boot_timeout,
        };
        // Called as soon as the VMM runs, before anything waits on the guest: the VMM is
        // recorded (atomically) before it can outlive this process unnoticed.
        let note_socket = |m: &dyn Machine| -> Result<()> {
            procs::record_pids(&d.root, m.pid(), m.relay_pid())?;
            let _ = std::fs::write(
                vm_dir.join("agent-socket"),
                m.agent_socket().display().to_string(),
            );
            Ok(())
        };
        if fresh_disk && self.snapshots_enabled() {
            match self
                .start_warm(
                    spec,
                    &upper,
                    WORKSPACE_DISK_MIB,
                    backend.as_ref(),
                    &note_socket,
                    progress,
                )
                .await
            {
                Ok(Some((machine, session))) => {
                    return Ok((machine.pid(), machine.relay_pid(), session, BootMode::Warm));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workspace = rec.id, "warm start failed, booting cold: {e}");
                    // It may have left a copy of the snapshot's disk: start from a new one.
                    let _ = std::fs::remove_file(&upper);
                    prepare_vm_dir()?;
                }
            }
        }
        if fresh_disk && !upper.exists() {
            self.cache().create_upper_disk(&upper, WORKSPACE_DISK_MIB)?;
        }
        let mut machine = backend.boot(spec).await?;
        if let Err(e) = note_socket(machine.as_ref()) {
            machine.kill().await;
            return Err(e);
        }
        let session =
            match crate::connect_agent(machine.as_mut(), self.options().boot_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    machine.kill().await;
                    return Err(e);
                }
            };
        Ok((machine.pid(), machine.relay_pid(), session, BootMode::Cold))
    }

    fn info(&self, store: &Store, rec: &WorkspaceRecord) -> Result<WorkspaceInfo> {
        let now = host::now();
        let labels = rec.labels.clone();
        let last = store.last_command(&rec.id)?;
        let mode = match rec.backend.as_str() {
            "firecracker" => BackendKind::Firecracker,
            _ => BackendKind::Qemu,
        };
        let seed: WorkspaceSeed = serde_json::from_str(&rec.seed_json).unwrap_or(WorkspaceSeed {
            mode: "empty".into(),
            seed_path: None,
            destination: WORKSPACE_ROOT.into(),
            entry_count: 0,
            bytes_written: 0,
        });
        let remaining = rec.remaining_ttl(now);
        Ok(WorkspaceInfo {
            workspace_id: rec.id.clone(),
            name: rec.name.clone(),
            labels,
            environment: rec.environment.clone(),
            environment_version: Some(rec.environment_version.clone()),
            vcpu_count: rec.vcpu_count as u8,
            mem_mib: rec.mem_mib as u32,
            ttl_seconds: rec.ttl_seconds as u64,
            ttl_remaining_seconds: remaining,
            created_at: rec.created_at,
            last_activity_at: rec.last_activity_at,
            expires_at: (rec.state == WorkspaceState::Started).then_some(now + remaining),
            state: rec.state.as_str().to_string(),
            network_policy: rec.network_policy.clone(),
            network_enabled: false,
            allow_host_compat: false,
            guest_ip: None,
            tap_name: None,
            execution_mode: mode.execution_mode().into(),
            backend: rec.backend.clone(),
            workspace_path: WORKSPACE_ROOT.into(),
            workspace_seed: seed,
            secrets: Vec::new(),
            command_count: rec.command_count,
            last_command: last.map(|c| LastCommand {
                sequence: c.sequence,
                command: c.command,
                cwd: c.cwd,
                exit_code: c.exit_code as i32,
                duration_ms: c.duration_ms,
                execution_mode: mode.execution_mode().into(),
            }),
            reset_count: rec.reset_count,
            last_reset_at: rec.last_reset_at,
            service_count: 0,
            running_service_count: 0,
            last_error: rec.last_error.clone(),
            metadata: rec
                .boot_mode
                .iter()
                .map(|m| ("boot_mode".to_string(), m.clone()))
                .collect(),
        })
    }
}

fn check(field: &'static str, value: i64, (min, max): (i64, i64)) -> Result<()> {
    if value < min || value > max {
        return Err(CoreError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn seed_json(seed: &WorkspaceSeed) -> String {
    serde_json::to_string(seed).unwrap_or_else(|_| "{}".into())
}

impl Pyro {
    /// Creates and starts a workspace, seeding `/workspace` from a directory or archive.
    pub async fn create_workspace(
        &self,
        req: CreateWorkspace,
        progress: ProgressFn,
    ) -> Result<WorkspaceInfo> {
        // Validate everything before touching anything.
        let entry = pyro_image::lookup(&req.environment)?;
        check("vcpu_count", req.vcpu_count, crate::VCPU_RANGE)?;
        check("mem_mib", req.mem_mib, crate::MEM_RANGE)?;
        check("ttl_seconds", req.ttl_seconds, WORKSPACE_TTL_RANGE)?;
        if !req.network_policy.trim().eq_ignore_ascii_case("off") {
            return Err(CoreError::NetworkUnsupported);
        }
        let name = req
            .name
            .as_deref()
            .map(crate::store::validate_name)
            .transpose()?;
        let labels = crate::store::validate_labels(&req.labels)?;
        let seed = req
            .seed_path
            .as_ref()
            .map(|p| Seed::open(p, "seed_path"))
            .transpose()?;
        let choice = req.backend.unwrap_or(self.options().backend);
        let kind = crate::backend::resolve(choice, self.host_facts())?;
        let store = self.store()?;
        self.check_capacity(&store)?;
        // Directories of creates killed before they recorded their workspace.
        self.reap_orphan_dirs().await;
        self.pull_environment(&req.environment, progress.clone())
            .await?;

        let id = host::new_id();
        let d = self.ws_dirs(&id);
        host::ensure_private_dir(&d.root)?;
        let _guard = lock::lock(d.lock(), LockMode::Exclusive, LOCK_TIMEOUT).await?;
        self.mark_builder(&id);
        let now = host::now();
        let mut rec =
            WorkspaceRecord::new(&id, &req.environment, entry.version, kind.as_str(), now);
        rec.name = name;
        rec.labels = labels;
        rec.vcpu_count = req.vcpu_count;
        rec.mem_mib = req.mem_mib;
        rec.ttl_seconds = req.ttl_seconds;
        let built = async {
            let stats = match &seed {
                Some(s) => s.write_tar(&d.baseline(), &self.options().limits)?,
                None => {
                    archive::write_empty_tar(&d.baseline())?;
                    archive::TarStats::default()
                }
            };
            host::ensure_private_dir(&d.logs())?;
            let seed_info = WorkspaceSeed {
                mode: match &seed {
                    Some(s) => match s.mode() {
                        SeedMode::Directory => "directory",
                        _ => "tar_archive",
                    },
                    None => "empty",
                }
                .into(),
                seed_path: seed.as_ref().map(|s| s.path().display().to_string()),
                destination: WORKSPACE_ROOT.into(),
                entry_count: stats.entry_count,
                bytes_written: stats.bytes_written,
            };
            rec.seed_json = seed_json(&seed_info);
            store.insert_workspace(&rec)?;
            let (vmm, relay, session, mode) = self.ws_boot(&rec, &progress, true).await?;
            let imported = import_tar_file(
                &session,
                &d.baseline(),
                WORKSPACE_ROOT,
                api::ImportMode::Replace,
            )
            .await?;
            let _ = imported;
            let now = host::now();
            store.update_workspace(&id, |r| {
                r.state = WorkspaceState::Started;
                r.resume_ttl(now);
                r.vmm_pid = Some(vmm);
                r.vmm_start_ticks = host::process_start_ticks(vmm);
                r.relay_pid = relay;
                r.relay_start_ticks = relay.and_then(host::process_start_ticks);
                r.last_activity_at = now;
                r.boot_mode = Some(mode.as_str().into());
                Ok::<(), CoreError>(())
            })
        }
        .await;
        match built {
            Ok(rec) => {
                if let Some(pid) = rec.vmm_pid {
                    self.spawn_watchdog(&id, pid);
                }
                self.info(&store, &rec)
            }
            Err(e) => {
                if let Ok(Some(r)) = store.get_workspace(&id) {
                    self.halt(&r).await;
                }
                let _ = store.delete_workspace(&id);
                let _ = std::fs::remove_dir_all(&d.root);
                Err(e)
            }
        }
    }

    /// Every workspace, most recently active first (stale states are corrected first).
    pub async fn list_workspaces(&self) -> Result<WorkspaceList> {
        let store = self.store()?;
        // Directories of creates killed before they recorded their workspace.
        self.reap_orphan_dirs().await;
        let now = host::now();
        let mut out = Vec::new();
        for rec in store.list_workspaces()? {
            let rec = self.refresh(&store, rec).await?;
            out.push(WorkspaceSummary {
                workspace_id: rec.id.clone(),
                name: rec.name.clone(),
                labels: rec.labels.clone(),
                environment: rec.environment.clone(),
                state: rec.state.as_str().into(),
                created_at: rec.created_at,
                last_activity_at: rec.last_activity_at,
                expires_at: (rec.state == WorkspaceState::Started)
                    .then(|| now + rec.remaining_ttl(now)),
                ttl_remaining_seconds: rec.remaining_ttl(now),
                command_count: rec.command_count,
                service_count: 0,
                running_service_count: 0,
            });
        }
        out.sort_by(|a, b| b.last_activity_at.total_cmp(&a.last_activity_at));
        Ok(WorkspaceList {
            count: out.len(),
            workspaces: out,
        })
    }

    /// A workspace's state, checked against reality (a dead VMM shows as stopped, with why).
    pub async fn status_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        self.info(&store, &rec)
    }

    /// Changes name, labels or TTL. At least one effective change is required.
    pub async fn update_workspace(&self, id: &str, req: UpdateWorkspace) -> Result<WorkspaceInfo> {
        if req.name.is_some() && req.clear_name {
            return Err(CoreError::Invalid {
                field: "name",
                reason: "give either a new name or clear_name, not both".into(),
            });
        }
        let name = req
            .name
            .as_deref()
            .map(crate::store::validate_name)
            .transpose()?;
        let labels = crate::store::validate_labels(&req.labels)?;
        let mut clear = Vec::new();
        for k in &req.clear_labels {
            clear.push(crate::store::validate_label_key(k)?);
        }
        if let Some(t) = req.ttl_seconds {
            check("ttl_seconds", t, WORKSPACE_TTL_RANGE)?;
        }
        if name.is_none()
            && !req.clear_name
            && labels.is_empty()
            && clear.is_empty()
            && req.ttl_seconds.is_none()
        {
            return Err(CoreError::Invalid {
                field: "update",
                reason: "nothing to change: give a name, labels, labels to clear, or a TTL".into(),
            });
        }
        let store = self.store()?;
        let now = host::now();
        let rec = store
            .update_workspace(id, |r| {
                if let Some(n) = &name {
                    r.name = Some(n.clone());
                }
                if req.clear_name {
                    r.name = None;
                }
                for k in &clear {
                    r.labels.remove(k);
                }
                for (k, v) in &labels {
                    r.labels.insert(k.clone(), v.clone());
                }
                if let Some(t) = req.ttl_seconds {
                    // `t` more seconds of running time from now.
                    r.ttl_seconds = (r.ttl_used(now) + t as f64).ceil() as i64;
                    if r.state == WorkspaceState::Started {
                        r.expires_at = Some(now + t as f64);
                    }
                    if r.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("the TTL ran out"))
                    {
                        r.last_error = None;
                    }
                }
                r.last_activity_at = now;
                Ok::<(), CoreError>(())
            })
            .map_err(|e| match e {
                CoreError::Store(crate::store::StoreError::NotFound { .. }) => ws_not_found(id),
                other => other,
            })?;
        store.set_labels(id, &rec.labels)?;
        if !clear.is_empty() {
            store.clear_labels(id, clear.iter().map(String::as_str))?;
        }
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        self.info(&store, &rec)
    }

    /// Runs a command in `/workspace` (or `cwd`); records it in the history with its full
    /// output in the logs; the result keeps `max_output_bytes` per stream.
    pub async fn exec_workspace(
        &self,
        id: &str,
        mut opts: ExecOptions,
        mut on_output: Option<OutputFn<'_>>,
    ) -> Result<WorkspaceExecResult> {
        crate::validate_exec(&opts)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_exec").await?;
        let session = self.ws_session(&rec).await?;
        let d = self.ws_dirs(id);
        let cwd = opts
            .cwd
            .take()
            .unwrap_or_else(|| WORKSPACE_ROOT.to_string());
        let limit = opts
            .max_output_bytes
            .unwrap_or(crate::DEFAULT_MAX_OUTPUT_BYTES);
        // Named like spools (with this process's id), so that the partial logs of an exec
        // killed midway are removed by the next one (tests/faults.rs, exec kills).
        remove_stale_spools(&d.logs());
        let out_tmp = d.logs().join(spool_name("stdout"));
        let err_tmp = d.logs().join(spool_name("stderr"));
        let mut out_log = LogFile::create(&out_tmp)?;
        let mut err_log = LogFile::create(&err_tmp)?;
        let command_text = match &opts.command {
            Command::Argv(a) => host::shell_join(a),
            Command::Shell(s) => s.clone(),
        };
        let req = api::ExecRequest {
            command: match &opts.command {
                Command::Argv(a) => api::Command::Argv(a.clone()),
                Command::Shell(s) => api::Command::Shell(s.clone()),
            },
            cwd: Some(cwd.clone()),
            env: opts.env.clone(),
            timeout_ms: Some(opts.timeout_seconds as u64 * 1000),
            max_output_bytes: Some(MAX_LOG_BYTES),
            stdin: false,
        };
        let mut out_cap = Vec::new();
        let mut err_cap = Vec::new();
        let deadline = Duration::from_secs(opts.timeout_seconds as u64) + crate::HOST_GRACE;
        let call = api::exec(&session, req, opts.stdin.take(), |o| {
            match &o {
                Output::Stdout(b) => {
                    out_log.write(b);
                    crate::push_capped(&mut out_cap, b, limit);
                }
                Output::Stderr(b) => {
                    err_log.write(b);
                    crate::push_capped(&mut err_cap, b, limit);
                }
            }
            if let Some(cb) = on_output.as_mut() {
                cb(&o);
            }
        });
        let res =
            tokio::time::timeout(deadline, call)
                .await
                .map_err(|_| CoreError::AgentTimeout {
                    seconds: deadline.as_secs(),
                })??;
        out_log.finish()?;
        err_log.finish()?;
        let now = host::now();
        let logs = d.logs();
        let recorded = store.next_command_sequence_and_record(id, |seq| NewCommand {
            command: command_text.clone(),
            cwd: cwd.clone(),
            exit_code: i64::from(res.exit_code),
            duration_ms: res.duration_ms,
            timed_out: res.timed_out,
            stdout_bytes: res.stdout_bytes,
            stderr_bytes: res.stderr_bytes,
            stdout_path: format!("{seq:06}.stdout"),
            stderr_path: format!("{seq:06}.stderr"),
            recorded_at: now,
        })?;
        let _ = std::fs::rename(&out_tmp, logs.join(&recorded.stdout_path));
        let _ = std::fs::rename(&err_tmp, logs.join(&recorded.stderr_path));
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        let stdout_truncated = res.stdout_bytes > out_cap.len() as u64;
        let stderr_truncated = res.stderr_bytes > err_cap.len() as u64;
        let (stdout, stdout_base64) =
            crate::render_output(&out_cap, stdout_truncated, res.stdout_bytes);
        let (stderr, stderr_base64) =
            crate::render_output(&err_cap, stderr_truncated, res.stderr_bytes);
        Ok(WorkspaceExecResult {
            workspace_id: id.to_string(),
            environment: rec.environment.clone(),
            environment_version: Some(rec.environment_version.clone()),
            command: command_text,
            stdout,
            stderr,
            exit_code: res.exit_code,
            duration_ms: res.duration_ms,
            execution_mode: backend_mode(&rec.backend).into(),
            sequence: recorded.sequence,
            cwd,
            timed_out: res.timed_out,
            stdout_bytes: res.stdout_bytes,
            stderr_bytes: res.stderr_bytes,
            stdout_truncated,
            stderr_truncated,
            spawn_error: res.spawn_error,
            stdout_base64,
            stderr_base64,
        })
    }

    /// The command history, oldest first, paged; output per entry cut at `max_bytes`.
    pub async fn logs_workspace(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
        max_bytes: u64,
    ) -> Result<WorkspaceLogs> {
        let max_bytes = max_bytes.min(MAX_LOG_BYTES);
        if !(1..=MAX_LOG_PAGE).contains(&limit) {
            return Err(CoreError::OutOfRange {
                field: "limit",
                value: i64::try_from(limit).unwrap_or(i64::MAX),
                min: 1,
                max: MAX_LOG_PAGE as i64,
            });
        }
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let total = store.command_count(id)?;
        let d = self.ws_dirs(id);
        let mut entries = Vec::new();
        let mut page_bytes = 0u64;
        for c in store.commands(id, offset, limit)? {
            let wants = c.stdout_bytes.min(max_bytes) + c.stderr_bytes.min(max_bytes);
            if !entries.is_empty() && page_bytes + wants > MAX_LOG_PAGE_BYTES {
                break;
            }
            page_bytes += wants;
            let (stdout, so_t) = read_capped(&d.logs().join(&c.stdout_path), max_bytes);
            let (stderr, se_t) = read_capped(&d.logs().join(&c.stderr_path), max_bytes);
            entries.push(LogEntry {
                sequence: c.sequence,
                command: c.command,
                cwd: c.cwd,
                exit_code: c.exit_code as i32,
                duration_ms: c.duration_ms,
                execution_mode: backend_mode(&rec.backend).into(),
                recorded_at: c.recorded_at,
                stdout,
                stderr,
                stdout_bytes: c.stdout_bytes,
                stderr_bytes: c.stderr_bytes,
                stdout_truncated: so_t || c.stdout_bytes > max_bytes,
                stderr_truncated: se_t || c.stderr_bytes > max_bytes,
                timed_out: c.timed_out,
            });
        }
        Ok(WorkspaceLogs {
            workspace_id: id.to_string(),
            count: entries.len(),
            total,
            offset,
            entries,
        })
    }

    /// Stops a workspace: flushes the guest's filesystems, powers it off, keeps its data.
    pub async fn stop_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        // The watchdog first: it would take the VMM's exit for a crash.
        self.end_watchdogs(id).await;
        if rec.state == WorkspaceState::Started {
            self.graceful_halt(&rec).await;
        } else {
            // Whatever an interrupted start or create left running.
            self.halt(&rec).await;
        }
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            if r.state == WorkspaceState::Started {
                r.pause_ttl(now);
                r.state = WorkspaceState::Stopped;
                r.last_error = None;
            }
            r.vmm_pid = None;
            r.vmm_start_ticks = None;
            r.relay_pid = None;
            r.relay_start_ticks = None;
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        })?;
        self.info(&store, &rec)
    }

    /// Starts a stopped workspace on its existing disk (everything written survives).
    pub async fn start_workspace(&self, id: &str, progress: ProgressFn) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        if rec.state == WorkspaceState::Started {
            return self.info(&store, &rec);
        }
        if matches!(rec.state, WorkspaceState::Creating | WorkspaceState::Error) {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_start",
                detail: Some(
                    rec.last_error
                        .clone()
                        .unwrap_or_else(|| "it is being created or reset".into()),
                ),
            });
        }
        self.check_capacity(&store)?;
        let now = host::now();
        if rec.remaining_ttl(now) <= 0.0 {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: "stopped".into(),
                operation: "workspace_start",
                detail: Some("its TTL is used up; extend it with `update --ttl-seconds N`".into()),
            });
        }
        let (vmm, relay, _session, mode) = self.ws_boot(&rec, &progress, false).await?;
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            r.state = WorkspaceState::Started;
            r.resume_ttl(now);
            r.vmm_pid = Some(vmm);
            r.vmm_start_ticks = host::process_start_ticks(vmm);
            r.relay_pid = relay;
            r.relay_start_ticks = relay.and_then(host::process_start_ticks);
            r.last_error = None;
            r.last_activity_at = now;
            r.boot_mode = Some(mode.as_str().into());
            Ok::<(), CoreError>(())
        })?;
        self.spawn_watchdog(id, vmm);
        self.info(&store, &rec)
    }

    /// Deletes a workspace in any state: its VM, disk, baseline, history and logs.
    pub async fn delete_workspace(&self, id: &str) -> Result<WorkspaceDeleteResult> {
        let d = self.ws_dirs(id);
        if !d.root.is_dir() {
            // A record whose directory is gone: nothing to lock, only processes to end.
            let store = self.store()?;
            let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
            self.halt(&rec).await;
            store.delete_workspace(id)?;
            return Ok(WorkspaceDeleteResult {
                workspace_id: id.to_string(),
                deleted: true,
                reason: "explicit_delete".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let Some(rec) = store.get_workspace(id)? else {
            // A delete killed after it removed the record but before the directory was gone
            // (tests/faults.rs, delete kills): deleting again finishes it. A create holds
            // this lock from just after making its directory until it has recorded it.
            if !procs::is_id(id) {
                return Err(ws_not_found(id));
            }
            procs::end_all(&d.root, id).await;
            std::fs::remove_dir_all(&d.root).map_err(|e| CoreError::io("remove", &d.root, e))?;
            return Ok(WorkspaceDeleteResult {
                workspace_id: id.to_string(),
                deleted: true,
                reason: "explicit_delete".into(),
            });
        };
        self.halt(&rec).await;
        store.delete_workspace(id)?;
        std::fs::remove_dir_all(&d.root).map_err(|e| CoreError::io("remove", &d.root, e))?;
        // A watchdog another process started while this one worked ends with its record
        // anyway; end it now, so nothing of the workspace is left at all.
        procs::end_all(&d.root, id).await;
        Ok(WorkspaceDeleteResult {
            workspace_id: id.to_string(),
            deleted: true,
            reason: "explicit_delete".into(),
        })
    }

    /// Puts the workspace back to its create-time baseline: a fresh writable disk (so
    /// everything outside `/workspace` is pristine too), the baseline tree, an empty history.
    pub async fn reset_workspace(&self, id: &str, progress: ProgressFn) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let d = self.ws_dirs(id);
        if !d.baseline().is_file() {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_reset",
                detail: Some("its baseline archive is missing".into()),
            });
        }
        if rec.remaining_ttl(host::now()) <= 0.0 {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_reset",
                detail: Some("its TTL is used up; extend it with `update --ttl-seconds N`".into()),
            });
        }
        if rec.state != WorkspaceState::Started {
            self.check_capacity(&store)?;
        }
        // The new disk is made beside the old one first: a failure there leaves the
        // workspace untouched.
        let fresh = d.root.join("upper.ext4.new");
        self.cache().create_upper_disk(&fresh, WORKSPACE_DISK_MIB)?;
        // `creating` (its builder recorded) before anything is thrown away: the halt below
        // loses what the guest had not written back and the swap empties the disk, so a
        // reset killed from here on must read as interrupted (`reset` again rebuilds it),
        // never as a stopped workspace that `start` boots without its data
        // (tests/faults.rs, reset kills).
        self.mark_builder(id);
        let now = host::now();
        store.update_workspace(id, |r| {
            r.pause_ttl(now);
            // `creating` until the baseline is back: a reset killed half-way is reported.
            r.state = WorkspaceState::Creating;
            r.last_activity_at = now;
            r.vmm_pid = None;
            r.vmm_start_ticks = None;
            r.relay_pid = None;
            r.relay_start_ticks = None;
            Ok::<(), CoreError>(())
        })?;
        self.halt(&rec).await;
        let rebuilt = async {
            std::fs::rename(&fresh, d.upper())
                .map_err(|e| CoreError::io("replace", d.upper(), e))?;
            let (vmm, relay, session, mode) = self.ws_boot(&rec, &progress, true).await?;
            let seeded = import_tar_file(
                &session,
                &d.baseline(),
                WORKSPACE_ROOT,
                api::ImportMode::Replace,
            )
            .await;
            match seeded {
                Ok(_) => Ok((vmm, relay, mode)),
                Err(e) => {
                    let mut booted = rec.clone();
                    booted.vmm_pid = Some(vmm);
                    booted.vmm_start_ticks = host::process_start_ticks(vmm);
                    booted.relay_pid = relay;
                    booted.relay_start_ticks = relay.and_then(host::process_start_ticks);
                    self.halt(&booted).await;
                    Err(e)
                }
            }
        }
        .await;
        let (vmm, relay, mode) = match rebuilt {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("the reset failed: {e}; `reset` again, or delete it");
                let _ = store.update_workspace(id, |r| {
                    r.state = WorkspaceState::Error;
                    r.last_error = Some(msg);
                    Ok::<(), CoreError>(())
                });
                return Err(e);
            }
        };
        store.clear_commands(id)?;
        let _ = std::fs::remove_dir_all(d.logs());
        host::ensure_private_dir(&d.logs())?;
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            r.state = WorkspaceState::Started;
            r.resume_ttl(now);
            r.vmm_pid = Some(vmm);
            r.vmm_start_ticks = host::process_start_ticks(vmm);
            r.relay_pid = relay;
            r.relay_start_ticks = relay.and_then(host::process_start_ticks);
            r.reset_count += 1;
            r.last_reset_at = Some(now);
            r.last_error = None;
            r.last_activity_at = now;
            r.boot_mode = Some(mode.as_str().into());
            Ok::<(), CoreError>(())
        })?;
        self.spawn_watchdog(id, vmm);
        self.info(&store, &rec)
    }
}

fn backend_mode(backend: &str) -> &'static str {
    match backend {
        "firecracker" => BackendKind::Firecracker.execution_mode(),
        _ => BackendKind::Qemu.execution_mode(),
    }
}

fn read_capped(path: &Path, max: u64) -> (String, bool) {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return (String::new(), false);
    };
    let mut buf = Vec::new();
    let _ = f.take(max + 1).read_to_end(&mut buf);
    let truncated = buf.len() as u64 > max;
    buf.truncate(max as usize);
    (String::from_utf8_lossy(&buf).into_owned(), truncated)
}

/// A command's log file: written as output arrives, up to [`MAX_LOG_BYTES`].
struct LogFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    error: Option<std::io::Error>,
}

impl LogFile {
    fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| CoreError::io("create", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(std::io::BufWriter::new(f)),
            written: 0,
            error: None,
        })
    }

    fn write(&mut self, b: &[u8]) {
        use std::io::Write;
        let room = MAX_LOG_BYTES.saturating_sub(self.written) as usize;
        let part = &b[..b.len().min(room)];
        if let (Some(f), None) = (self.file.as_mut(), self.error.as_ref())
            && let Err(e) = f.write_all(part)
        {
            self.error = Some(e);
        }
        self.written += part.len() as u64;
    }

    fn finish(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(e) = self.error.take() {
            return Err(CoreError::io("write", &self.path, e));
        }
        if let Some(mut f) = self.file.take() {
            f.flush()
                .map_err(|e| CoreError::io("write", &self.path, e))?;
        }
        Ok(())
    }
}

/// Streams a tar file from the host into the guest.
async fn import_tar_file(
    session: &Session,
    tar: &Path,
    dest: &str,
    mode: api::ImportMode,
) -> Result<api::TarResult> {
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(|e| CoreError::io("open", tar, e))?;
    let req = api::ImportTar {
        root: WORKSPACE_ROOT.into(),
        dest: rel(dest),
        mode,
    };
    Ok(api::import_tar(session, req, file).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

/// One entry of a file listing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileEntry {
    /// Absolute guest path.
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub artifact_type: String,
    /// Size (0 for directories).
    pub size_bytes: u64,
    /// pyro extension: permission bits, e.g. 493 (0o755).
    pub mode: u32,
    /// Target of a symlink.
    pub link_target: Option<String>,
}

/// Result of [`Pyro::list_workspace_files`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileListResult {
    /// The workspace.
    pub workspace_id: String,
    /// The listed path.
    pub path: String,
    /// Whether subdirectories were descended into.
    pub recursive: bool,
    /// Entries sorted by path.
    pub entries: Vec<FileEntry>,
    /// pyro extension: the listing stopped at the entry limit.
    pub truncated: bool,
    /// How it ran.
    pub execution_mode: String,
}

/// Result of [`Pyro::read_workspace_file`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileReadResult {
    /// The workspace.
    pub workspace_id: String,
    /// The file.
    pub path: String,
    /// Size of the whole file.
    pub size_bytes: u64,
    /// The limit asked for.
    pub max_bytes: u64,
    /// The first `max_bytes` bytes, as UTF-8 (lossy; see `content_base64`).
    pub content: String,
    /// pyro extension: exact bytes, base64, only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Whether the file is longer than `max_bytes`.
    pub truncated: bool,
    /// pyro extension: permission bits.
    pub mode: u32,
    /// How it ran.
    pub execution_mode: String,
}

/// Result of [`Pyro::write_workspace_file`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileWriteResult {
    /// The workspace.
    pub workspace_id: String,
    /// The file.
    pub path: String,
    /// Its size now.
    pub size_bytes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// How it ran.
    pub execution_mode: String,
}

/// The `workspace_sync` part of a [`SyncResult`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncInfo {
    /// `directory` or `tar_archive`.
    pub mode: String,
    /// The resolved host source.
    pub source_path: String,
    /// Where it went in the guest.
    pub destination: String,
    /// Members imported.
    pub entry_count: u64,
    /// Bytes of file content imported.
    pub bytes_written: u64,
}

/// Result of [`Pyro::push_workspace_sync`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncResult {
    /// The workspace.
    pub workspace_id: String,
    /// How it ran.
    pub execution_mode: String,
    /// What was imported.
    pub workspace_sync: SyncInfo,
}

/// Result of [`Pyro::export_workspace`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportResult {
    /// The workspace.
    pub workspace_id: String,
    /// The exported guest path.
    pub workspace_path: String,
    /// The absolute host path written.
    pub output_path: String,
    /// `file`, `directory` or `symlink`.
    pub artifact_type: String,
    /// Members written.
    pub entry_count: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// How it ran.
    pub execution_mode: String,
}

fn artifact_name(t: api::ArtifactType) -> &'static str {
    match t {
        api::ArtifactType::File => "file",
        api::ArtifactType::Directory => "directory",
        api::ArtifactType::Symlink => "symlink",
        api::ArtifactType::Other => "other",
    }
}

impl Pyro {
    /// Lists a path in `/workspace` (children of a directory; recursively when asked).
    pub async fn list_workspace_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        let path = normalize_workspace_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_file_list").await?;
        let session = self.ws_session(&rec).await?;
        let list = api::list_files(
            &session,
            api::ListFiles {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                recursive,
                max_entries: Some(100_000),
            },
        )
        .await?;
        Ok(FileListResult {
            workspace_id: id.into(),
            path,
            recursive,
            entries: list
                .entries
                .into_iter()
                .map(|e| FileEntry {
                    path: e.path,
                    artifact_type: artifact_name(e.artifact_type).into(),
                    size_bytes: e.size_bytes,
                    mode: e.mode,
                    link_target: e.link_target,
                })
                .collect(),
            truncated: list.truncated,
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }

    /// Reads up to `max_bytes` of a regular file (any size; `truncated` says if there is more).
    pub async fn read_workspace_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: i64,
    ) -> Result<FileReadResult> {
        check("max_bytes", max_bytes, (1, MAX_READ_BYTES as i64))?;
        let path = normalize_workspace_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_file_read").await?;
        let session = self.ws_session(&rec).await?;
        let (meta, data) = api::read_file(
            &session,
            api::ReadFile {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                max_bytes: Some(max_bytes as u64),
            },
        )
        .await?;
        let (content, content_base64) = match String::from_utf8(data) {
            Ok(s) => (s, None),
            Err(e) => {
                let bytes = e.into_bytes();
                // A cut multi-byte character at the end is not "binary": decode what is whole.
                let valid_prefix = std::str::from_utf8(&bytes)
                    .map_err(|e| e.valid_up_to())
                    .err();
                match valid_prefix {
                    Some(n)
                        if meta.truncated
                            && bytes.len() - n < 4
                            && std::str::from_utf8(&bytes[..n]).is_ok() =>
                    {
                        (String::from_utf8_lossy(&bytes[..n]).into_owned(), None)
                    }
                    _ => (
                        String::from_utf8_lossy(&bytes).into_owned(),
                        Some(crate::base64(&bytes)),
                    ),
                }
            }
        };
        Ok(FileReadResult {
            workspace_id: id.into(),
            path,
            size_bytes: meta.size_bytes,
            max_bytes: max_bytes as u64,
            content,
            content_base64,
            truncated: meta.truncated,
            mode: meta.mode,
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }

    /// Writes a text file atomically (parents created; an existing file keeps its mode).
    pub async fn write_workspace_file(
        &self,
        id: &str,
        path: &str,
        text: &str,
    ) -> Result<FileWriteResult> {
        if text.len() > MAX_WRITE_BYTES {
            return Err(CoreError::Invalid {
                field: "text",
                reason: format!("{} bytes exceed the limit of {MAX_WRITE_BYTES}", text.len()),
            });
        }
        let path = normalize_workspace_path(path)?;
        if path == WORKSPACE_ROOT {
            return Err(CoreError::Invalid {
                field: "path",
                reason: "/workspace itself is a directory; name a file inside it".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self
            .load_started(&store, id, "workspace_file_write")
            .await?;
        let session = self.ws_session(&rec).await?;
        let data = bytes::Bytes::copy_from_slice(text.as_bytes());
        api::write_files(
            &session,
            vec![api::Change::Write {
                path: rel(&path),
                size: data.len() as u64,
                mode: None,
            }],
            vec![data.clone()],
            WORKSPACE_ROOT,
        )
        .await?;
        Ok(FileWriteResult {
            workspace_id: id.into(),
            path,
            size_bytes: data.len() as u64,
            bytes_written: data.len() as u64,
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }

    /// Imports a host directory or archive into the workspace (merge: nothing is deleted).
    pub async fn push_workspace_sync(
        &self,
        id: &str,
        source: impl Into<HostPath>,
        dest: &str,
    ) -> Result<SyncResult> {
        let dest = normalize_workspace_path(dest)?;
        let seed = Seed::open(&source.into(), "source_path")?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_sync_push").await?;
        let d = self.ws_dirs(id);
        remove_stale_spools(&d.root);
        let tmp = d.root.join(spool_name("sync"));
        let built = seed.write_tar(&tmp, &self.options().limits);
        let res = match built {
            Ok(_) => {
                let session = self.ws_session(&rec).await;
                match session {
                    Ok(s) => import_tar_file(&s, &tmp, &dest, api::ImportMode::Merge).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        let res = res?;
        let now = host::now();
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        Ok(SyncResult {
            workspace_id: id.into(),
            execution_mode: backend_mode(&rec.backend).into(),
            workspace_sync: SyncInfo {
                mode: match seed.mode() {
                    SeedMode::Directory => "directory",
                    _ => "tar_archive",
                }
                .into(),
                source_path: seed.path().display().to_string(),
                destination: dest,
                entry_count: res.entry_count,
                bytes_written: res.bytes,
            },
        })
    }

    /// Copies a file, symlink or directory out of the workspace to a new host path. The
    /// output's parent is opened (missing directories created, nothing followed below what
    /// already existed, or below the allowed root for a confined path) once the workspace is
    /// locked, the guest's tar is spooled into the workspace's own directory within
    /// [`archive::TransferLimits::max_export_bytes`], and extracted through descriptors.
    pub async fn export_workspace(
        &self,
        id: &str,
        path: &str,
        output: impl Into<HostPath>,
    ) -> Result<ExportResult> {
        let output = output.into();
        let path = normalize_workspace_path(path)?;
        if output.is_empty() {
            return Err(CoreError::Invalid {
                field: "output_path",
                reason: "the output path is empty".into(),
            });
        }
        let limits = self.options().limits;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_export").await?;
        let target = archive::ExportTarget::prepare(&output)?;
        let session = self.ws_session(&rec).await?;
        let listing = api::list_files(
            &session,
            api::ListFiles {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                recursive: false,
                max_entries: Some(1),
            },
        )
        .await?;
        let kind = listing.artifact_type;
        if kind == api::ArtifactType::Other {
            // The guest leaves special files out of its tar: say so rather than find an
            // empty export.
            return Err(CoreError::Invalid {
                field: "path",
                reason: format!(
                    "`{}` is a FIFO, socket or device; only files, symlinks and directories \
                     can be exported",
                    listing.path
                ),
            });
        }
        let d = self.ws_dirs(id);
        let spooled = spool_export(
            &session,
            &d.root,
            &path,
            limits.max_export_bytes,
            "PYRO_MAX_EXPORT_BYTES",
        )
        .await;
        let res = spooled.and_then(|spool| {
            let f = spool.reopen()?;
            archive::extract_export(
                std::io::BufReader::new(f),
                &target,
                kind != api::ArtifactType::Directory,
                &limits,
            )
        });
        let stats = res?;
        Ok(ExportResult {
            workspace_id: id.into(),
            workspace_path: path,
            output_path: target.shown.display().to_string(),
            artifact_type: artifact_name(kind).into(),
            entry_count: stats.entry_count,
            bytes_written: stats.bytes_written,
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }
}

/// A spool file in a workspace's directory, removed when dropped. Its name carries the
/// process id, so that spools of processes killed mid-transfer are removed by the next one.
#[derive(Debug)]
struct Spool {
    path: PathBuf,
}

impl Spool {
    fn reopen(&self) -> Result<std::fs::File> {
        std::fs::File::open(&self.path).map_err(|e| CoreError::io("open", &self.path, e))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const SPOOL_SUFFIX: &str = ".spool";

/// Room a spool allows beyond the content limit, for tar headers and padding.
const SPOOL_HEADROOM: u64 = 256 << 20;

/// A new spool name: `<kind>-<pid>-<id>.spool`.
fn spool_name(kind: &str) -> String {
    format!(
        "{kind}-{}-{}{SPOOL_SUFFIX}",
        std::process::id(),
        host::new_id()
    )
}

/// Removes spools in `dir` whose process is gone.
fn remove_stale_spools(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SPOOL_SUFFIX)) else {
            continue;
        };
        let pid = stem.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && host::process_start_ticks(pid).is_none()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Streams the guest's tar of `path` (a normalized `/workspace` path; empty = all of it)
/// into a spool in `dir`, stopping with a clear error once the stream passes `max` bytes of
/// content plus [`SPOOL_HEADROOM`] for tar headers and padding.
async fn spool_export(
    session: &Session,
    dir: &Path,
    path: &str,
    max: u64,
    setting: &'static str,
) -> Result<Spool> {
    remove_stale_spools(dir);
    let spool_max = max.saturating_add(SPOOL_HEADROOM);
    let spool = Spool {
        path: dir.join(spool_name("export")),
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&spool.path).map_err(|e| CoreError::io("create", &spool.path, e))?,
    );
    let mut written = 0u64;
    let mut over = false;
    // Stops at the header of the member that passes `max`, before its bytes cross over.
    let mut meter = meter::ContentMeter::default();
    let exported = api::export_tar(
        session,
        api::ExportTar {
            root: WORKSPACE_ROOT.into(),
            path: rel(path),
        },
        |chunk| {
            written = written.saturating_add(chunk.len() as u64);
            meter.feed(&chunk);
            if meter.content() > max || written > spool_max {
                over = true;
                return Err(std::io::Error::other("over the limit"));
            }
            std::io::Write::write_all(&mut file, &chunk)
        },
    )
    .await;
    if over {
        return Err(CoreError::Invalid {
            // A diff names no path: the workspace as a whole is what is too big.
            field: if path.is_empty() { "workspace" } else { "path" },
            reason: format!(
                "{} holds more than {max} bytes of file content; the transfer was stopped \
                 ({setting} sets the limit)",
                if path.is_empty() {
                    WORKSPACE_ROOT
                } else {
                    path
                }
            ),
        });
    }
    exported?;
    std::io::Write::flush(&mut file).map_err(|e| CoreError::io("write", &spool.path, e))?;
    Ok(spool)
}

/// Counts of [`PatchResult`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PatchSummary {
    /// Files touched.
    pub total: usize,
    /// Files created.
    pub added: usize,
    /// Files changed (including renames and mode changes).
    pub modified: usize,
    /// Files removed.
    pub deleted: usize,
}

/// One file of [`PatchResult`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchEntry {
    /// Absolute guest path (the new path of a rename).
    pub path: String,
    /// `added`, `modified`, `deleted`, `renamed` or `mode_changed`.
    pub status: String,
}

/// Result of [`Pyro::apply_workspace_patch`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchResult {
    /// The workspace.
    pub workspace_id: String,
    /// Whether anything changed.
    pub changed: bool,
    /// Counts.
    pub summary: PatchSummary,
    /// Files, sorted by path.
    pub entries: Vec<PatchEntry>,
    /// The patch, echoed.
    pub patch: String,
    /// How it ran.
    pub execution_mode: String,
}

/// One entry of [`DiffResult`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiffEntry {
    /// Absolute guest path (pyro uses absolute paths everywhere; the reference used relative
    /// ones here only).
    pub path: String,
    /// `added`, `modified`, `deleted`, `type_changed` or `mode_changed`.
    pub status: pyro_patch::DiffStatus,
    /// `file`, `directory` or `symlink`.
    pub artifact_type: pyro_patch::ArtifactType,
    /// This entry's part of `patch`, when it is text.
    pub text_patch: Option<String>,
}

/// Result of [`Pyro::diff_workspace`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiffResult {
    /// The workspace.
    pub workspace_id: String,
    /// Whether anything differs from the baseline.
    pub changed: bool,
    /// Counts.
    pub summary: pyro_patch::DiffSummary,
    /// Entries sorted by path.
    pub entries: Vec<DiffEntry>,
    /// A `git diff` of all changes that `git apply` accepts on the baseline tree.
    pub patch: String,
    /// How it ran.
    pub execution_mode: String,
}

/// Files larger than this are compared by size and git blob id instead of held in memory,
/// and shown as binary in a diff.
pub const DIFF_MAX_TEXT_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads a tar stream into an in-memory tree (hard links resolved to their target's content).
/// Regular files over [`DIFF_MAX_TEXT_FILE_BYTES`] are hashed as they stream and kept as
/// [`pyro_patch::Node::Large`]; more than `max_bytes` of file content in all is refused.
/// Names that are not UTF-8 are refused (a lossy rewrite could merge two files).
pub fn tree_from_tar<R: std::io::Read>(r: R, max_bytes: u64) -> Result<pyro_patch::Tree> {
    use std::io::Read;
    let mut tree = pyro_patch::Tree::new();
    let mut archive = tar::Archive::new(r);
    let bad = |e: std::io::Error| CoreError::Invalid {
        field: "archive",
        reason: format!("corrupt tar stream: {e}"),
    };
    let mut total = 0u64;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let Ok(raw) = String::from_utf8(raw.clone()) else {
            return Err(CoreError::Invalid {
                field: "workspace",
                reason: format!(
                    "{} has a name that is not UTF-8; diff cannot show it (rename it)",
                    crate::error::quote_bytes(&raw)
                ),
            });
        };
        let Ok(name) = archive::normalize_member(&raw) else {
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let link = || {
            entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default()
        };
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => pyro_patch::Node::Dir { mode },
            tar::EntryType::Symlink => pyro_patch::Node::Symlink { target: link() },
            tar::EntryType::Link => {
                match archive::normalize_member(&link())
                    .ok()
                    .and_then(|t| tree.get(&t).cloned())
                {
                    Some(n) => n,
                    None => continue,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                total = total.saturating_add(size);
                if total > max_bytes {
                    return Err(CoreError::Invalid {
                        field: "workspace",
                        reason: format!(
                            "/workspace holds more than {max_bytes} bytes of file content; diff \
                             refuses to compare it (PYRO_MAX_DIFF_BYTES sets the limit)"
                        ),
                    });
                }
                if size > DIFF_MAX_TEXT_FILE_BYTES {
                    let mut h = pyro_patch::BlobHasher::new(size);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut left = size;
                    while left > 0 {
                        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = entry.read(&mut buf[..want]).map_err(bad)?;
                        if n == 0 {
                            return Err(bad(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                        h.update(&buf[..n]);
                        left -= n as u64;
                    }
                    pyro_patch::Node::Large {
                        size,
                        id: h.finish(),
                        mode,
                    }
                } else {
                    let mut content = Vec::new();
                    (&mut entry)
                        .take(size)
                        .read_to_end(&mut content)
                        .map_err(bad)?;
                    pyro_patch::Node::File { content, mode }
                }
            }
            _ => continue,
        };
        tree.insert(name, node);
    }
    Ok(tree)
}

impl Pyro {
    /// Applies a `git diff`-style patch atomically: every hunk of every file, or nothing.
    pub async fn apply_workspace_patch(&self, id: &str, patch_text: &str) -> Result<PatchResult> {
        if patch_text.trim().is_empty() {
            return Err(CoreError::Invalid {
                field: "patch",
                reason: "the patch is empty".into(),
            });
        }
        if patch_text.len() > MAX_PATCH_BYTES {
            return Err(CoreError::Invalid {
                field: "patch",
                reason: format!(
                    "{} bytes exceed the limit of {MAX_PATCH_BYTES}",
                    patch_text.len()
                ),
            });
        }
        let patch = pyro_patch::parse(patch_text)?;
        // Every path must stay inside /workspace.
        let mut paths = std::collections::BTreeSet::new();
        for f in &patch.files {
            for p in [&f.old_path, &f.new_path].into_iter().flatten() {
                paths.insert(rel(&normalize_workspace_path(p)?));
            }
        }
        // Exclusive: read, compute and write must not interleave with another edit.
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = self
            .load_started(&store, id, "workspace_patch_apply")
            .await?;
        let session = self.ws_session(&rec).await?;
        let mut current: BTreeMap<String, pyro_patch::FileState> = BTreeMap::new();
        for p in &paths {
            let req = api::ReadFile {
                root: WORKSPACE_ROOT.into(),
                path: p.clone(),
                max_bytes: Some(MAX_READ_BYTES),
            };
            match api::read_file(&session, req).await {
                Ok((meta, content)) => {
                    if meta.truncated {
                        return Err(CoreError::Invalid {
                            field: "patch",
                            reason: format!("/workspace/{p} is larger than {MAX_READ_BYTES} bytes"),
                        });
                    }
                    current.insert(
                        p.clone(),
                        pyro_patch::FileState {
                            content,
                            mode: meta.mode,
                        },
                    );
                }
                Err(api::CallError::Agent(e)) if e.code == api::ErrorCode::NotFound => {}
                Err(api::CallError::Agent(e)) if e.code == api::ErrorCode::BadRequest => {
                    // Not a regular file: a symlink is patched like git does (mode 120000,
                    // content = target); anything else is an error.
                    let list = api::list_files(
                        &session,
                        api::ListFiles {
                            root: WORKSPACE_ROOT.into(),
                            path: p.clone(),
                            recursive: false,
                            max_entries: Some(1),
                        },
                    )
                    .await?;
                    let target = list
                        .entries
                        .first()
                        .filter(|_| list.artifact_type == api::ArtifactType::Symlink)
                        .and_then(|e| e.link_target.clone());
                    match target {
                        Some(t) => {
                            current.insert(
                                p.clone(),
                                pyro_patch::FileState {
                                    content: t.into_bytes(),
                                    mode: 0o120777,
                                },
                            );
                        }
                        None => return Err(CoreError::Agent(api::CallError::Agent(e))),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let get = |p: &str| {
            normalize_workspace_path(p)
                .ok()
                .and_then(|n| current.get(&rel(&n)).cloned())
        };
        let outcomes = pyro_patch::apply(&patch, get)?;
        let mut changes = Vec::new();
        let mut data = Vec::new();
        for o in &outcomes {
            match o {
                pyro_patch::Outcome::Write {
                    path,
                    content,
                    mode,
                } if mode & 0o170000 == 0o120000 => {
                    let target =
                        String::from_utf8(content.clone()).map_err(|_| CoreError::Invalid {
                            field: "patch",
                            reason: format!("the symlink target of {path} is not UTF-8"),
                        })?;
                    let path = rel(&normalize_workspace_path(path)?);
                    if current.contains_key(&path) {
                        changes.push(api::Change::Delete { path: path.clone() });
                    }
                    changes.push(api::Change::Symlink { path, target });
                }
                pyro_patch::Outcome::Write {
                    path,
                    content,
                    mode,
                } => {
                    changes.push(api::Change::Write {
                        path: rel(&normalize_workspace_path(path)?),
                        size: content.len() as u64,
                        mode: Some(*mode & 0o7777),
                    });
                    data.push(bytes::Bytes::copy_from_slice(content));
                }
                pyro_patch::Outcome::Delete { path } => changes.push(api::Change::Delete {
                    path: rel(&normalize_workspace_path(path)?),
                }),
            }
        }
        api::write_files(&session, changes, data, WORKSPACE_ROOT).await?;
        let now = host::now();
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        let mut summary = PatchSummary::default();
        let mut entries = Vec::new();
        for f in &patch.files {
            let status = match f.kind {
                pyro_patch::FileKind::Added => {
                    summary.added += 1;
                    "added"
                }
                pyro_patch::FileKind::Deleted => {
                    summary.deleted += 1;
                    "deleted"
                }
                pyro_patch::FileKind::Renamed => {
                    summary.modified += 1;
                    "renamed"
                }
                pyro_patch::FileKind::ModeChanged => {
                    summary.modified += 1;
                    "mode_changed"
                }
                _ => {
                    summary.modified += 1;
                    "modified"
                }
            };
            entries.push(PatchEntry {
                path: normalize_workspace_path(f.path())?,
                status: status.into(),
            });
        }
        summary.total = entries.len();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(PatchResult {
            workspace_id: id.into(),
            changed: !entries.is_empty(),
            summary,
            entries,
            patch: patch_text.to_string(),
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }

    /// Compares `/workspace` with the create-time baseline.
    pub async fn diff_workspace(&self, id: &str) -> Result<DiffResult> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_diff").await?;
        let d = self.ws_dirs(id);
        let max = self.options().limits.max_diff_bytes;
        let baseline = std::fs::File::open(d.baseline())
            .map_err(|e| CoreError::io("open", d.baseline(), e))?;
        let old = tree_from_tar(std::io::BufReader::new(baseline), max)?;
        let session = self.ws_session(&rec).await?;
        // Streamed to disk, never whole in memory: the guest chooses the sizes.
        let spool = spool_export(&session, &d.root, "", max, "PYRO_MAX_DIFF_BYTES").await?;
        let new = tree_from_tar(std::io::BufReader::new(spool.reopen()?), max)?;
        let diff = pyro_patch::diff_trees(&old, &new);
        Ok(DiffResult {
            workspace_id: id.into(),
            changed: diff.changed(),
            summary: diff.summary,
            entries: diff
                .entries
                .into_iter()
                .map(|e| DiffEntry {
                    path: format!("{WORKSPACE_ROOT}/{}", e.path),
                    status: e.status,
                    artifact_type: e.artifact_type,
                    text_patch: e.text_patch,
                })
                .collect(),
            patch: diff.patch,
            execution_mode: backend_mode(&rec.backend).into(),
        })
    }
}
