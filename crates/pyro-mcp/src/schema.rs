//! Output schemas: the shapes of the core's results, as advertised in each tool's
//! `outputSchema`.
//!
//! The core's result types are `Serialize` only, so these mirrors exist purely to generate
//! JSON Schema; results themselves are the core's values serialized as they are. The
//! end-to-end tests check every `structuredContent` they receive against the advertised
//! schema (every field documented, every required field present), which catches drift when
//! the core adds or renames a field. Schemas do not forbid extra properties, so a client that
//! validates results keeps working while a new field waits for its mirror here.
//!
//! Descriptions are kept to fields whose meaning is not obvious from the name: every byte
//! here is sent to the model with `tools/list`.

// Fields exist only to be described by the derive.
#![allow(dead_code)]

use std::collections::BTreeMap;

use schemars::JsonSchema;

type Map = BTreeMap<String, String>;

#[derive(JsonSchema)]
pub(crate) struct Cleanup {
    vm_id: String,
    deleted: bool,
    reason: String,
}

/// Result of one command in a one-shot VM.
#[derive(JsonSchema)]
pub(crate) struct VmExecResult {
    vm_id: String,
    environment: String,
    environment_version: Option<String>,
    command: String,
    /// A marker line ends it when it was cut.
    stdout: String,
    stderr: String,
    /// 124 on timeout, 127 command not found, 128+n killed by signal n.
    exit_code: i32,
    duration_ms: u64,
    execution_mode: String,
    cleanup: Cleanup,
    timed_out: bool,
    signal: Option<i32>,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    /// Only when stdout is not UTF-8: its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr_base64: Option<String>,
    spawn_error: Option<String>,
    backend: String,
    boot_ms: Option<u64>,
    /// cold, warm (from a snapshot) or pooled.
    boot_mode: Option<String>,
}

/// An ephemeral VM.
#[derive(JsonSchema)]
pub(crate) struct VmInfo {
    vm_id: String,
    environment: String,
    environment_version: Option<String>,
    vcpu_count: u8,
    mem_mib: u32,
    ttl_seconds: u64,
    created_at: f64,
    expires_at: f64,
    /// created, started or stopped.
    state: String,
    network_enabled: bool,
    allow_host_compat: bool,
    guest_ip: Option<String>,
    tap_name: Option<String>,
    execution_mode: String,
    backend: String,
    metadata: Map,
}

#[derive(JsonSchema)]
pub(crate) struct NetworkInfo {
    vm_id: String,
    network_enabled: bool,
    outbound_connectivity_expected: bool,
    reason: String,
}

#[derive(JsonSchema)]
pub(crate) struct VmDeleteResult {
    vm_id: String,
    deleted: bool,
    reason: String,
}

#[derive(JsonSchema)]
pub(crate) struct ReapResult {
    deleted_vm_ids: Vec<String>,
    count: u64,
}

#[derive(JsonSchema)]
pub(crate) struct EnvironmentInfo {
    name: String,
    version: String,
    description: String,
    default_packages: Vec<String>,
    distribution: String,
    distribution_version: String,
    platform: String,
    oci_registry: Option<String>,
    oci_repository: Option<String>,
    oci_reference: Option<String>,
    source_digest: Option<String>,
    compatibility: String,
    catalog_version: String,
    /// Built and cached; otherwise the first use builds it (minutes).
    installed: bool,
    cache_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    install_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    install_manifest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rootfs_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initramfs_image: Option<String>,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    built_at: Option<f64>,
}

#[derive(JsonSchema)]
pub(crate) struct EnvironmentList {
    catalog_version: String,
    environments: Vec<EnvironmentInfo>,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceSeed {
    /// empty, directory or tar_archive.
    mode: String,
    seed_path: Option<String>,
    destination: String,
    entry_count: u64,
    bytes_written: u64,
}

#[derive(JsonSchema)]
pub(crate) struct LastCommand {
    sequence: u64,
    command: String,
    cwd: String,
    exit_code: i32,
    duration_ms: u64,
    execution_mode: String,
}

/// A persistent workspace.
#[derive(JsonSchema)]
pub(crate) struct WorkspaceInfo {
    workspace_id: String,
    name: Option<String>,
    labels: Map,
    environment: String,
    environment_version: Option<String>,
    vcpu_count: u8,
    mem_mib: u32,
    ttl_seconds: u64,
    ttl_remaining_seconds: f64,
    created_at: f64,
    last_activity_at: f64,
    expires_at: Option<f64>,
    /// started or stopped.
    state: String,
    network_policy: String,
    network_enabled: bool,
    allow_host_compat: bool,
    guest_ip: Option<String>,
    tap_name: Option<String>,
    execution_mode: String,
    backend: String,
    workspace_path: String,
    workspace_seed: WorkspaceSeed,
    secrets: Vec<serde_json::Value>,
    command_count: u64,
    last_command: Option<LastCommand>,
    reset_count: u64,
    last_reset_at: Option<f64>,
    service_count: u64,
    running_service_count: u64,
    last_error: Option<String>,
    metadata: Map,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceSummary {
    workspace_id: String,
    name: Option<String>,
    labels: Map,
    environment: String,
    state: String,
    created_at: f64,
    last_activity_at: f64,
    expires_at: Option<f64>,
    ttl_remaining_seconds: f64,
    command_count: u64,
    service_count: u64,
    running_service_count: u64,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceList {
    count: u64,
    workspaces: Vec<WorkspaceSummary>,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceExecResult {
    workspace_id: String,
    environment: String,
    environment_version: Option<String>,
    command: String,
    /// A marker line ends it when it was cut (workspace_logs keeps more).
    stdout: String,
    stderr: String,
    /// 124 on timeout, 127 command not found, 128+n killed by signal n.
    exit_code: i32,
    duration_ms: u64,
    execution_mode: String,
    /// Position in workspace_logs.
    sequence: u64,
    cwd: String,
    timed_out: bool,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    spawn_error: Option<String>,
}

#[derive(JsonSchema)]
pub(crate) struct LogEntry {
    sequence: u64,
    command: String,
    cwd: String,
    exit_code: i32,
    duration_ms: u64,
    execution_mode: String,
    recorded_at: f64,
    stdout: String,
    stderr: String,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_truncated: bool,
    stderr_truncated: bool,
    timed_out: bool,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceLogs {
    workspace_id: String,
    /// Entries in this page.
    count: u64,
    /// Entries in the whole history.
    total: u64,
    offset: u64,
    /// Oldest first.
    entries: Vec<LogEntry>,
}

#[derive(JsonSchema)]
pub(crate) struct SyncInfo {
    mode: String,
    source_path: String,
    destination: String,
    entry_count: u64,
    bytes_written: u64,
}

#[derive(JsonSchema)]
pub(crate) struct SyncResult {
    workspace_id: String,
    execution_mode: String,
    workspace_sync: SyncInfo,
}

#[derive(JsonSchema)]
pub(crate) struct ExportResult {
    workspace_id: String,
    workspace_path: String,
    output_path: String,
    /// file, directory or symlink.
    artifact_type: String,
    entry_count: u64,
    bytes_written: u64,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct DiffSummary {
    total: u64,
    added: u64,
    modified: u64,
    deleted: u64,
    type_changed: u64,
    mode_changed: u64,
    text_patched: u64,
    non_text: u64,
}

#[derive(JsonSchema)]
pub(crate) struct DiffEntry {
    path: String,
    /// added, modified, deleted, type_changed or mode_changed.
    status: String,
    /// file, directory or symlink.
    artifact_type: String,
    text_patch: Option<String>,
}

#[derive(JsonSchema)]
pub(crate) struct DiffResult {
    workspace_id: String,
    changed: bool,
    summary: DiffSummary,
    entries: Vec<DiffEntry>,
    /// git diff of the text changes; git apply takes it on the baseline.
    patch: String,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct FileEntry {
    path: String,
    /// file, directory, symlink or other.
    artifact_type: String,
    size_bytes: u64,
    /// Permission bits (493 = 0o755).
    mode: u32,
    link_target: Option<String>,
}

#[derive(JsonSchema)]
pub(crate) struct FileListResult {
    workspace_id: String,
    path: String,
    recursive: bool,
    entries: Vec<FileEntry>,
    truncated: bool,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct FileReadResult {
    workspace_id: String,
    path: String,
    size_bytes: u64,
    max_bytes: u64,
    /// Invalid UTF-8 is replaced (see content_base64).
    content: String,
    /// Only when the content is not UTF-8: its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_base64: Option<String>,
    truncated: bool,
    mode: u32,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct FileWriteResult {
    workspace_id: String,
    path: String,
    size_bytes: u64,
    bytes_written: u64,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct PatchSummary {
    total: u64,
    added: u64,
    modified: u64,
    deleted: u64,
}

#[derive(JsonSchema)]
pub(crate) struct PatchEntry {
    path: String,
    /// added, modified, deleted, renamed or mode_changed.
    status: String,
}

#[derive(JsonSchema)]
pub(crate) struct PatchResult {
    workspace_id: String,
    changed: bool,
    summary: PatchSummary,
    entries: Vec<PatchEntry>,
    patch: String,
    execution_mode: String,
}

#[derive(JsonSchema)]
pub(crate) struct WorkspaceDeleteResult {
    workspace_id: String,
    deleted: bool,
    reason: String,
}
