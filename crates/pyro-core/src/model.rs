//! Result shapes shared by every surface (CLI `--json`, MCP `structuredContent`, Python).
//! Field names follow the public contract; fields marked "pyro extension" are additions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Lifecycle state of an ephemeral VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct VmInfo {
    pub vm_id: String,
    pub environment: String,
    pub environment_version: Option<String>,
    pub vcpu_count: u8,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub created_at: f64,
    pub expires_at: f64,
    pub state: VmState,
    pub network_enabled: bool,
    pub allow_host_compat: bool,
    pub guest_ip: Option<String>,
    pub tap_name: Option<String>,
    pub execution_mode: String,
    pub backend: String,
    pub metadata: BTreeMap<String, String>,
}

/// Cleanup record attached to an exec result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Cleanup {
    pub vm_id: String,
    pub deleted: bool,
    pub reason: String,
}

/// Result of running one command in a VM.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct VmExecResult {
    pub vm_id: String,
    pub environment: String,
    pub environment_version: Option<String>,
    pub command: String,
    /// A marker line ends it when it was cut.
    pub stdout: String,
    pub stderr: String,
    /// 124 on timeout, 127 command not found, 128+n killed by signal n.
    pub exit_code: i32,
    pub duration_ms: u64,
    pub execution_mode: String,
    pub cleanup: Cleanup,
    pub timed_out: bool,
    pub signal: Option<i32>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Only when stdout is not UTF-8: its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    pub spawn_error: Option<String>,
    pub backend: String,
    pub boot_ms: Option<u64>,
    /// cold, warm (snapshot) or pooled.
    pub boot_mode: Option<String>,
}

/// Network description of a VM.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct NetworkInfo {
    pub vm_id: String,
    pub network_enabled: bool,
    pub outbound_connectivity_expected: bool,
    /// Why there is no network (absent when there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    // The network, while the VM runs with one: the contract's tap_name, guest_ip,
    // gateway_ip, subnet_cidr, mac_address, dns_servers, and pyro's extension
    // ([`SandboxNetworkInfo`]). Open in the output schema, like WorkspaceInfo's `network`.
    #[serde(flatten)]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub network: Option<SandboxNetworkInfo>,
}

/// A running sandbox's network (pyro extension beyond the contract's `tap_name`,
/// `guest_ip`, `gateway_ip`, `subnet_cidr`, `mac_address`, `dns_servers`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SandboxNetworkInfo {
    /// egress or egress+published-ports.
    pub policy: String,
    /// The host network namespace it lives in.
    pub namespace: String,
    /// The TAP, inside that namespace.
    pub tap_name: String,
    pub guest_ip: String,
    pub gateway_ip: String,
    pub subnet_cidr: String,
    pub mac_address: String,
    /// pyro's resolver on the gateway, the only one the guest can reach.
    pub dns_servers: Vec<String>,
    /// Host patterns the guest may reach (empty: any public address).
    pub allow_hosts: Vec<String>,
    /// Ranges the guest may reach besides public addresses and allowed names.
    pub allow_cidrs: Vec<String>,
    /// Names the resolver refused so far.
    pub dns_denied: u64,
    /// Connections the egress proxy refused so far.
    pub connections_denied: u64,
    /// The latest refusals, newest last (at most 20).
    pub recent_denials: Vec<DenialInfo>,
    /// Guest ports published on the host's 127.0.0.1 (policy egress+published-ports).
    pub published_ports: Vec<PublishedPort>,
}

/// A guest TCP port published on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PublishedPort {
    /// Always 127.0.0.1.
    pub host: String,
    pub host_port: u16,
    pub guest_port: u16,
    /// Always tcp.
    pub protocol: String,
}

/// One refused name or connection.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DenialInfo {
    /// Unix time.
    pub at: f64,
    /// dns or connection.
    pub kind: String,
    /// The name asked for or sent (Host, SNI).
    pub name: Option<String>,
    /// ADDRESS:PORT of a refused connection.
    pub destination: Option<String>,
    pub reason: String,
}

/// Result of deleting a VM.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeleteResult {
    pub vm_id: String,
    pub deleted: bool,
    pub reason: String,
}

/// Result of reaping expired VMs.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ReapResult {
    pub deleted_vm_ids: Vec<String>,
    pub count: usize,
}

/// Result of pruning the environment cache.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct PruneResult {
    pub deleted_environment_dirs: Vec<String>,
    pub count: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// The catalog with install state.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct EnvironmentList {
    pub catalog_version: String,
    pub environments: Vec<pyro_image::EnvironmentInfo>,
}

/// How `/workspace` was seeded.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct WorkspaceSeed {
    pub mode: String,
    pub seed_path: Option<String>,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
    /// project_path or repo_url when the server's project seeded it.
    pub origin_kind: Option<String>,
    /// The commit it came from.
    pub origin_ref: Option<String>,
}

/// The last command run in a workspace.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LastCommand {
    pub sequence: u64,
    pub command: String,
    pub cwd: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub execution_mode: String,
}

/// Description of one workspace.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct WorkspaceInfo {
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    pub environment_version: Option<String>,
    pub vcpu_count: u8,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub ttl_remaining_seconds: f64,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// Null while stopped.
    pub expires_at: Option<f64>,
    pub state: String,
    pub network_policy: String,
    pub network_enabled: bool,
    pub allow_host_compat: bool,
    pub guest_ip: Option<String>,
    pub tap_name: Option<String>,
    // While started with a network: namespace, addresses, MAC, allowlist, refusal counters
    // and recent refusals, published ports (pyro extension; [`SandboxNetworkInfo`], shape in
    // docs/network.md). Open in the output schema: every workspace tool returns this record.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub network: Option<SandboxNetworkInfo>,
    pub execution_mode: String,
    pub backend: String,
    pub workspace_path: String,
    // {mode, seed_path, destination, entry_count, bytes_written, origin_kind, origin_ref}
    // (docs/contract.md); open in the output schema, which every workspace tool repeats.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub workspace_seed: WorkspaceSeed,
    // Declared secrets: names and source kinds, never values (objects in the schema, to keep
    // tools/list small).
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub secrets: Vec<crate::secrets::SecretInfo>,
    pub command_count: u64,
    pub last_command: Option<LastCommand>,
    pub reset_count: u64,
    pub last_reset_at: Option<f64>,
    pub service_count: u64,
    pub running_service_count: u64,
    // Named snapshots (the baseline not counted), and the bytes they take on the host's
    // disk (no schema descriptions: every workspace result carries them).
    pub snapshot_count: u64,
    pub snapshot_bytes: u64,
    pub last_error: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A PTY shell in a workspace (`shell_open`, `shell_write`, `shell_signal`, `shell_close`,
/// `shell_list`, `shell_resize`).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShellInfo {
    pub workspace_id: String,
    pub shell_id: String,
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    /// running or stopped.
    pub state: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    /// Negative: killed by that signal.
    pub exit_code: Option<i32>,
    pub execution_mode: String,
    /// Secrets in its environment (names only).
    #[serde(default)]
    pub secret_env: Vec<String>,
}

/// A shell read: output from `cursor` to `next_cursor` (`shell_read`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ShellReadResult {
    #[serde(flatten)]
    pub shell: ShellInfo,
    /// Byte offset in the shell's transcript where this read was asked to start.
    pub cursor: u64,
    /// Where the next read continues: nothing between is skipped.
    pub next_cursor: u64,
    pub output: String,
    /// More output is available after next_cursor.
    pub truncated: bool,
    pub plain: bool,
    pub wait_for_idle_ms: Option<u64>,
    /// Bytes before the retained transcript that this read could not return (its cursor
    /// was older than what the shell keeps): the output starts at cursor + missed_bytes.
    pub missed_bytes: u64,
}

/// `shell_write`'s result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ShellWriteResult {
    #[serde(flatten)]
    pub shell: ShellInfo,
    /// Characters of input written (the newline excluded).
    pub input_length: u64,
    pub append_newline: bool,
}

/// `shell_signal`'s result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ShellSignalResult {
    #[serde(flatten)]
    pub shell: ShellInfo,
    pub signal: String,
}

/// `shell_close`'s result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ShellCloseResult {
    #[serde(flatten)]
    pub shell: ShellInfo,
    pub closed: bool,
}

/// `shell_list`'s result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ShellList {
    pub workspace_id: String,
    pub count: usize,
    pub shells: Vec<ShellInfo>,
}

/// A named background process in a workspace.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceInfo {
    pub workspace_id: String,
    pub service_name: String,
    /// starting, running, exited, stopped or failed.
    pub state: String,
    pub command: String,
    pub cwd: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    /// Negative: killed by that signal.
    pub exit_code: Option<i32>,
    /// Guest pid.
    pub pid: Option<i32>,
    pub execution_mode: String,
    /// The probe: {type: file|tcp|http|command, ...}.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub readiness: Option<serde_json::Value>,
    pub ready_at: Option<f64>,
    /// sigterm, sigkill, process_exited_before_ready, readiness_timeout,
    /// published_port_failed or workspace_stopped.
    pub stop_reason: Option<String>,
    pub published_ports: Vec<PublishedPort>,
    pub probe_attempts: u64,
    pub last_probe_error: Option<String>,
    /// Secrets in its environment (names only).
    #[serde(default)]
    pub secret_env: Vec<String>,
}

impl ServiceInfo {
    /// Whether it is starting or running.
    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "starting" | "running")
    }
}

/// `service_list`'s result.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ServiceList {
    pub workspace_id: String,
    pub count: usize,
    pub running_count: usize,
    pub services: Vec<ServiceInfo>,
}

/// `service_logs`'s result: the service and its retained output.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ServiceLogs {
    #[serde(flatten)]
    pub service: ServiceInfo,
    pub stdout: String,
    pub stderr: String,
    /// Null with all=true.
    pub tail_lines: Option<u64>,
    /// Either stream was cut (by lines, bytes, or the log's own bound).
    pub truncated: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// One command in a workspace summary.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SummaryCommand {
    pub sequence: u64,
    pub command: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub timed_out: bool,
}

/// What happened in a workspace since its creation or last reset (`workspace_summary`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct WorkspaceSummaryResult {
    pub workspace_id: String,
    pub state: String,
    /// Creation or last reset (unix time).
    pub since: f64,
    pub command_count: u64,
    /// Commands that exited non-zero.
    pub failed_command_count: u64,
    /// The newest 20, oldest first.
    pub commands: Vec<SummaryCommand>,
    /// {at, kind, detail}: file writes, patches, syncs, exports, shells, services (the
    /// newest 50).
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub events: Vec<crate::workspace::ActivityEvent>,
    pub events_total: usize,
    /// name [state].
    pub services: Vec<String>,
    /// Counts of changes against the baseline, as workspace_diff's summary (while started).
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub changes: Option<pyro_patch::DiffSummary>,
    /// "status path", the first 50.
    pub changed_paths: Vec<String>,
    /// Why there are no changes shown.
    pub changes_note: Option<String>,
}
