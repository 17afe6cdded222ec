//! Result shapes shared by every surface (CLI `--json`, MCP `structuredContent`, Python).
//! Field names follow the public contract; fields marked "pyro extension" are additions.

use std::collections::BTreeMap;

use serde::Serialize;

/// Lifecycle state of an ephemeral VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Created, not booted.
    Created,
    /// Booted, agent answering.
    Started,
    /// Booted once, now powered off.
    Stopped,
}

impl VmState {
    /// The state's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Stopped => "stopped",
        }
    }
}

/// Description of one VM.
#[derive(Clone, Debug, Serialize)]
pub struct VmInfo {
    /// 12 lowercase hex characters.
    pub vm_id: String,
    /// Catalog name.
    pub environment: String,
    /// Environment version.
    pub environment_version: Option<String>,
    /// Virtual CPUs.
    pub vcpu_count: u8,
    /// Guest memory.
    pub mem_mib: u32,
    /// Lifetime from creation.
    pub ttl_seconds: u64,
    /// UNIX time of creation.
    pub created_at: f64,
    /// UNIX time after which the VM is reaped.
    pub expires_at: f64,
    /// Lifecycle state.
    pub state: VmState,
    /// Whether guest networking is configured (always false in this version).
    pub network_enabled: bool,
    /// Always false: pyro never falls back to running commands on the host.
    pub allow_host_compat: bool,
    /// Guest IP address, when networked.
    pub guest_ip: Option<String>,
    /// Host TAP device, when networked.
    pub tap_name: Option<String>,
    /// `pending` before start; `guest_vsock` (firecracker) or `guest_serial` (qemu) after.
    pub execution_mode: String,
    /// pyro extension: `firecracker` or `qemu`.
    pub backend: String,
    /// Descriptive extras (never host paths).
    pub metadata: BTreeMap<String, String>,
}

/// Cleanup record attached to an exec result.
#[derive(Clone, Debug, Serialize)]
pub struct Cleanup {
    /// The VM removed.
    pub vm_id: String,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Why.
    pub reason: String,
}

/// Result of running one command in a VM.
#[derive(Clone, Debug, Serialize)]
pub struct VmExecResult {
    /// The VM used.
    pub vm_id: String,
    /// Its environment.
    pub environment: String,
    /// Environment version.
    pub environment_version: Option<String>,
    /// The command, as a shell-quoted string.
    pub command: String,
    /// Standard output, decoded lossily as UTF-8 (see `stdout_base64`).
    pub stdout: String,
    /// Standard error, decoded lossily as UTF-8 (see `stderr_base64`).
    pub stderr: String,
    /// Exit status (124 on timeout, 127 command not found, 128+n killed by signal n).
    pub exit_code: i32,
    /// Wall time of the command in the guest.
    pub duration_ms: u64,
    /// How the command ran.
    pub execution_mode: String,
    /// What happened to the VM afterwards.
    pub cleanup: Cleanup,
    /// pyro extension: whether the timeout killed the command (output so far is kept).
    pub timed_out: bool,
    /// pyro extension: the signal that ended the command.
    pub signal: Option<i32>,
    /// pyro extension: bytes the command wrote to stdout.
    pub stdout_bytes: u64,
    /// pyro extension: bytes the command wrote to stderr.
    pub stderr_bytes: u64,
    /// pyro extension: stdout was cut at the output limit (a marker line says so too).
    pub stdout_truncated: bool,
    /// pyro extension: stderr was cut at the output limit (a marker line says so too).
    pub stderr_truncated: bool,
    /// pyro extension: exact stdout bytes, base64, present only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// pyro extension: exact stderr bytes, base64, present only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// pyro extension: why the program could not be started.
    pub spawn_error: Option<String>,
    /// pyro extension: `firecracker` or `qemu`.
    pub backend: String,
    /// pyro extension: time from VM creation to its agent first answering.
    pub boot_ms: Option<u64>,
    /// pyro extension: `cold` (booted) or `warm` (restored from a snapshot).
    pub boot_mode: Option<String>,
}

/// Network description of a VM.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkInfo {
    /// The VM.
    pub vm_id: String,
    /// Whether networking is on.
    pub network_enabled: bool,
    /// Whether the guest can reach out.
    pub outbound_connectivity_expected: bool,
    /// Why there is no network.
    pub reason: String,
}

/// Result of deleting a VM.
#[derive(Clone, Debug, Serialize)]
pub struct DeleteResult {
    /// The VM.
    pub vm_id: String,
    /// Always true.
    pub deleted: bool,
    /// `explicit_delete`.
    pub reason: String,
}

/// Result of reaping expired VMs.
#[derive(Clone, Debug, Serialize)]
pub struct ReapResult {
    /// The VMs deleted.
    pub deleted_vm_ids: Vec<String>,
    /// How many.
    pub count: usize,
}

/// Result of pruning the environment cache.
#[derive(Clone, Debug, Serialize)]
pub struct PruneResult {
    /// Entries removed (relative to the cache root).
    pub deleted_environment_dirs: Vec<String>,
    /// How many.
    pub count: usize,
    /// pyro extension: bytes freed.
    pub freed_bytes: u64,
}

/// The catalog with install state.
#[derive(Clone, Debug, Serialize)]
pub struct EnvironmentList {
    /// Catalog version.
    pub catalog_version: String,
    /// Every catalog entry, sorted by name.
    pub environments: Vec<pyro_image::EnvironmentInfo>,
}

/// How `/workspace` was seeded.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WorkspaceSeed {
    /// `empty`, `directory` or `tar_archive`.
    pub mode: String,
    /// The resolved host path of the seed.
    pub seed_path: Option<String>,
    /// Always `/workspace`.
    pub destination: String,
    /// Members imported.
    pub entry_count: u64,
    /// Bytes of file content imported.
    pub bytes_written: u64,
}

/// The last command run in a workspace.
#[derive(Clone, Debug, Serialize)]
pub struct LastCommand {
    /// 1-based sequence number.
    pub sequence: u64,
    /// The command text.
    pub command: String,
    /// Working directory.
    pub cwd: String,
    /// Exit status.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// How it ran.
    pub execution_mode: String,
}

/// Description of one workspace.
#[derive(Clone, Debug, Serialize)]
pub struct WorkspaceInfo {
    /// 12 lowercase hex characters.
    pub workspace_id: String,
    /// Free-form name.
    pub name: Option<String>,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Catalog name.
    pub environment: String,
    /// Environment version.
    pub environment_version: Option<String>,
    /// Virtual CPUs.
    pub vcpu_count: u8,
    /// Guest memory.
    pub mem_mib: u32,
    /// Running-time budget in seconds (it only runs while the workspace is started).
    pub ttl_seconds: u64,
    /// pyro extension: seconds of running time left before the workspace is stopped.
    pub ttl_remaining_seconds: f64,
    /// UNIX time of creation.
    pub created_at: f64,
    /// UNIX time of the last mutating operation.
    pub last_activity_at: f64,
    /// When a started workspace will be stopped by its TTL (null while stopped).
    pub expires_at: Option<f64>,
    /// `started` or `stopped`.
    pub state: String,
    /// Always `off` in this version.
    pub network_policy: String,
    /// Always false in this version.
    pub network_enabled: bool,
    /// Always false: pyro never runs commands on the host.
    pub allow_host_compat: bool,
    /// Guest IP (null: no networking).
    pub guest_ip: Option<String>,
    /// Host TAP (null: no networking).
    pub tap_name: Option<String>,
    /// `guest_vsock` (firecracker) or `guest_serial` (qemu).
    pub execution_mode: String,
    /// pyro extension: the VMM.
    pub backend: String,
    /// Always `/workspace`.
    pub workspace_path: String,
    /// How it was seeded.
    pub workspace_seed: WorkspaceSeed,
    /// Secrets (none in this version).
    pub secrets: Vec<serde_json::Value>,
    /// Commands run since creation or the last reset.
    pub command_count: u64,
    /// The most recent command.
    pub last_command: Option<LastCommand>,
    /// Resets so far.
    pub reset_count: u64,
    /// UNIX time of the last reset.
    pub last_reset_at: Option<f64>,
    /// Services (none in this version).
    pub service_count: u64,
    /// Running services (none in this version).
    pub running_service_count: u64,
    /// pyro extension: why the workspace stopped unexpectedly, if it did.
    pub last_error: Option<String>,
    /// Descriptive extras (never host paths).
    pub metadata: BTreeMap<String, String>,
}
