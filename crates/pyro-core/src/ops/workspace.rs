//! Requests of workspaces.
//!
//! Field docs are what a model reads in a tool's input schema: short, and only what the name,
//! the type, the range and the default do not already say.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::vm::{ExecFields, backend, refuse_host_compat};
use super::{Ctx, HostPathParam, Operation, defaults as d, output_callback};
use crate::workspace::{
    CreateWorkspace, DiffResult, DiskExportResult, DiskListResult, DiskReadResult, ExportResult,
    FileListResult, FileReadResult, FileWriteResult, ForkResult, PatchResult, SnapshotCreateResult,
    SnapshotDeleteResult, SnapshotList, SyncResult, UpdateWorkspace, WorkspaceDeleteResult,
    WorkspaceExecResult, WorkspaceList, WorkspaceLogs,
};
use crate::{Command, CoreError, OutputFn, Pyro, Result, WorkspaceInfo};

/// One secret of `create_workspace`: a name and exactly one of a value or a host file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretParam {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// A host file holding the value.
    #[serde(default)]
    pub file_path: Option<HostPathParam>,
    /// Send the value only to these hosts, via the proxy; the guest sees a placeholder.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

impl SecretParam {
    /// The core's secret, a file resolved through the call's path policy.
    pub fn resolve(self, cx: &Ctx) -> Result<crate::secrets::SecretInput> {
        let source = match (self.value, self.file_path) {
            (Some(v), None) => crate::secrets::SecretSource::Value(v),
            (None, Some(p)) => {
                crate::secrets::SecretSource::File(cx.paths.existing("secrets", &p)?)
            }
            _ => {
                return Err(CoreError::Invalid {
                    field: "secrets",
                    reason: format!(
                        "`{}`: give exactly one of value and file_path",
                        self.name.chars().take(64).collect::<String>()
                    ),
                });
            }
        };
        Ok(crate::secrets::SecretInput {
            name: self.name,
            source,
            hosts: self.hosts.unwrap_or_default(),
        })
    }
}

/// Create and boot a persistent sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// debian:12 (git), debian:12-base or debian:12-build (gcc, make, python3).
    pub environment: String,
    #[serde(default = "d::vcpu_count")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "d::mem_mib")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    /// Running-time budget; it counts only while started.
    #[serde(default = "d::workspace_ttl_seconds")]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: i64,
    /// off (no network device), egress (public addresses only) or egress+published-ports.
    #[serde(default = "d::network_policy")]
    pub network_policy: String,
    /// Narrow egress to these names (api.example.org, *.example.org).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_hosts: Option<Vec<String>>,
    /// IPv4 CIDRs to allow, private ones included.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_cidrs: Option<Vec<String>>,
    /// Kept on the host; a command gets one only through secret_env, and values are redacted.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub secrets: Option<Vec<SecretParam>>,
    /// Must be false (no host mode).
    #[serde(default)]
    pub allow_host_compat: bool,
    /// Host directory or .tar/.tar.gz/.tgz/.tar.zst archive that fills /workspace (default:
    /// the server's project, if any).
    #[serde(default)]
    pub seed_path: Option<HostPathParam>,
    /// Free-form, shown by the list.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// VMM: auto, firecracker or qemu (default: the server's).
    #[serde(default)]
    pub backend: Option<String>,
}

impl CreateWorkspaceRequest {
    /// The core's parameters, the seed resolved through the call's path policy.
    pub fn resolve(self, cx: &Ctx) -> Result<CreateWorkspace> {
        refuse_host_compat(self.allow_host_compat)?;
        let mut req = CreateWorkspace::new(self.environment);
        req.vcpu_count = self.vcpu_count;
        req.mem_mib = self.mem_mib;
        req.ttl_seconds = self.ttl_seconds;
        req.network_policy = self.network_policy;
        req.allow_hosts = self.allow_hosts.unwrap_or_default();
        req.allow_cidrs = self.allow_cidrs.unwrap_or_default();
        req.secrets = self
            .secrets
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.resolve(cx))
            .collect::<Result<_>>()?;
        req.seed_path = match &self.seed_path {
            Some(p) => Some(cx.paths.existing("seed_path", p)?),
            None => None,
        };
        if req.seed_path.is_none() {
            req.project = cx.project.clone();
        }
        req.name = self.name;
        req.labels = self.labels.unwrap_or_default();
        req.backend = backend(self.backend.as_deref())?;
        Ok(req)
    }
}

impl Operation for CreateWorkspaceRequest {
    const METHOD: &'static str = "create_workspace";
    const TOOL: Option<&'static str> = Some("workspace_create");
    type Output = WorkspaceInfo;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<WorkspaceInfo> {
        let req = self.resolve(cx)?;
        pyro.create_workspace(req, cx.progress.clone()).await
    }
}

/// List workspaces, most recently active first.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkspaces {}

impl Operation for ListWorkspaces {
    const METHOD: &'static str = "list_workspaces";
    const TOOL: Option<&'static str> = Some("workspace_list");
    type Output = WorkspaceList;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<WorkspaceList> {
        pyro.list_workspaces().await
    }
}

/// Rename or relabel a workspace, or set its running time left.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspaceRequest {
    pub workspace_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub clear_name: bool,
    /// Labels to add or replace.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Label keys to remove.
    #[serde(default)]
    pub clear_labels: Option<Vec<String>>,
    /// New running time left.
    #[serde(default)]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: Option<i64>,
}

impl Operation for UpdateWorkspaceRequest {
    const METHOD: &'static str = "update_workspace";
    const TOOL: Option<&'static str> = Some("workspace_update");
    type Output = WorkspaceInfo;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<WorkspaceInfo> {
        let req = UpdateWorkspace {
            name: self.name,
            clear_name: self.clear_name,
            labels: self.labels.unwrap_or_default(),
            clear_labels: self.clear_labels.unwrap_or_default(),
            ttl_seconds: self.ttl_seconds,
        };
        pyro.update_workspace(&self.workspace_id, req).await
    }
}

/// Run one command in a started workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecWorkspace {
    pub workspace_id: String,
    /// A string is run by /bin/sh -c in /workspace; an array is an argv.
    pub command: Command,
    #[serde(default = "d::timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
    /// Working directory (default /workspace).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Output kept per stream (default 1 MiB).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_output_bytes: Option<u64>,
    /// Text for the command's stdin (default: none).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Secrets for this command's environment: {SECRET: ENV_VAR} ("" keeps the name).
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
}

impl ExecWorkspace {
    /// The workspace and the core's exec parameters.
    pub fn into_parts(self, cx: &Ctx) -> (String, crate::ExecOptions) {
        let exec = ExecFields {
            command: self.command,
            timeout_seconds: self.timeout_seconds,
            cwd: self.cwd,
            env: self.env,
            max_output_bytes: self.max_output_bytes,
            stdin: self.stdin,
        }
        .options(cx);
        let mut exec = exec;
        exec.secret_env = self.secret_env.unwrap_or_default();
        (self.workspace_id, exec)
    }
}

impl Operation for ExecWorkspace {
    const METHOD: &'static str = "exec_workspace";
    const TOOL: Option<&'static str> = Some("workspace_exec");
    type Output = WorkspaceExecResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<WorkspaceExecResult> {
        let (id, exec) = self.into_parts(cx);
        let mut cb = output_callback(cx);
        let on = cb.as_mut().map(|f| f as OutputFn<'_>);
        pyro.exec_workspace(&id, exec, on).await
    }
}

/// Copy a host directory or archive into a started workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushWorkspaceSync {
    pub workspace_id: String,
    /// Host directory or archive.
    pub source_path: HostPathParam,
    /// Directory in /workspace.
    #[serde(default = "d::workspace_root")]
    pub dest: String,
}

impl Operation for PushWorkspaceSync {
    const METHOD: &'static str = "push_workspace_sync";
    const TOOL: Option<&'static str> = Some("workspace_sync_push");
    type Output = SyncResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<SyncResult> {
        let source = cx.paths.existing("source_path", &self.source_path)?;
        pyro.push_workspace_sync(&self.workspace_id, source, &self.dest)
            .await
    }
}

/// A page of a workspace's command history.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsWorkspace {
    pub workspace_id: String,
    /// First entry (0 = oldest).
    #[serde(default)]
    pub offset: u64,
    #[serde(default = "d::logs_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: u64,
    /// Bytes of each stream kept per entry.
    #[serde(default = "d::log_entry_bytes")]
    #[schemars(range(max = 67108864))]
    pub max_bytes: u64,
    /// Byte of each stream to start at.
    #[serde(default)]
    pub output_offset: u64,
}

impl Operation for LogsWorkspace {
    const METHOD: &'static str = "logs_workspace";
    const TOOL: Option<&'static str> = Some("workspace_logs");
    type Output = WorkspaceLogs;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<WorkspaceLogs> {
        pyro.logs_workspace_from(
            &self.workspace_id,
            self.offset,
            self.limit,
            self.max_bytes,
            self.output_offset,
        )
        .await
    }
}

/// Copy a file, symlink or directory from a started workspace to the host.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportWorkspace {
    pub workspace_id: String,
    /// File, symlink or directory in /workspace.
    pub path: String,
    /// New host path (must not exist; parents are created).
    pub output_path: HostPathParam,
}

impl Operation for ExportWorkspace {
    const METHOD: &'static str = "export_workspace";
    const TOOL: Option<&'static str> = Some("workspace_export");
    type Output = ExportResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<ExportResult> {
        let output = cx.paths.output("output_path", &self.output_path)?;
        pyro.export_workspace(&self.workspace_id, &self.path, output)
            .await
    }
}

/// List /workspace entries.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkspaceFiles {
    pub workspace_id: String,
    /// Directory or file in /workspace.
    #[serde(default = "d::workspace_root")]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

impl Operation for ListWorkspaceFiles {
    const METHOD: &'static str = "list_workspace_files";
    const TOOL: Option<&'static str> = Some("workspace_file_list");
    type Output = FileListResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<FileListResult> {
        pyro.list_workspace_files(&self.workspace_id, &self.path, self.recursive)
            .await
    }
}

/// Read a file in /workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadWorkspaceFile {
    pub workspace_id: String,
    /// File in /workspace.
    pub path: String,
    /// Byte to start at.
    #[serde(default)]
    pub offset: u64,
    #[serde(default = "d::read_bytes")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_bytes: i64,
}

impl Operation for ReadWorkspaceFile {
    const METHOD: &'static str = "read_workspace_file";
    const TOOL: Option<&'static str> = Some("workspace_file_read");
    type Output = FileReadResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<FileReadResult> {
        pyro.read_workspace_file_at(&self.workspace_id, &self.path, self.offset, self.max_bytes)
            .await
    }
}

/// List a stopped workspace's disk as the guest sees it (no boot).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWorkspaceDisk {
    pub workspace_id: String,
    /// Relative: in /workspace; absolute: any guest path. `\\` and `\xNN` escapes as listed.
    #[serde(default = "d::workspace_root")]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

impl Operation for ListWorkspaceDisk {
    const METHOD: &'static str = "list_workspace_disk";
    const TOOL: Option<&'static str> = Some("workspace_disk_list");
    type Output = DiskListResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<DiskListResult> {
        pyro.disk_list(&self.workspace_id, &self.path, self.recursive)
            .await
    }
}

/// Read a regular file on a stopped workspace's disk (no boot).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadWorkspaceDisk {
    pub workspace_id: String,
    /// Relative: in /workspace; absolute: any guest path.
    pub path: String,
    #[serde(default = "d::read_bytes")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_bytes: i64,
}

impl Operation for ReadWorkspaceDisk {
    const METHOD: &'static str = "read_workspace_disk";
    const TOOL: Option<&'static str> = Some("workspace_disk_read");
    type Output = DiskReadResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<DiskReadResult> {
        pyro.disk_read(&self.workspace_id, &self.path, self.max_bytes)
            .await
    }
}

/// Copy a stopped workspace's disk (the raw ext4 upper layer, sparse) to the host.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportWorkspaceDisk {
    pub workspace_id: String,
    /// New host path (must not exist; parents are created).
    pub output_path: HostPathParam,
}

impl Operation for ExportWorkspaceDisk {
    const METHOD: &'static str = "export_workspace_disk";
    const TOOL: Option<&'static str> = Some("workspace_disk_export");
    type Output = DiskExportResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<DiskExportResult> {
        let output = cx.paths.output("output_path", &self.output_path)?;
        pyro.disk_export(&self.workspace_id, output).await
    }
}

/// Create or replace a whole file in /workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteWorkspaceFile {
    pub workspace_id: String,
    /// File in /workspace.
    pub path: String,
    /// The whole new content.
    #[schemars(length(max = 16777216))]
    pub text: String,
}

impl Operation for WriteWorkspaceFile {
    const METHOD: &'static str = "write_workspace_file";
    const TOOL: Option<&'static str> = Some("workspace_file_write");
    type Output = FileWriteResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<FileWriteResult> {
        pyro.write_workspace_file(&self.workspace_id, &self.path, &self.text)
            .await
    }
}

/// Apply a unified diff in /workspace, all or nothing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyWorkspacePatch {
    pub workspace_id: String,
    /// Unified diff (git diff works); paths relative to /workspace, a/ b/ prefixes optional.
    #[schemars(length(max = 16777216))]
    pub patch: String,
}

impl Operation for ApplyWorkspacePatch {
    const METHOD: &'static str = "apply_workspace_patch";
    const TOOL: Option<&'static str> = Some("workspace_patch_apply");
    type Output = PatchResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<PatchResult> {
        pyro.apply_workspace_patch(&self.workspace_id, &self.patch)
            .await
    }
}

/// Restore a workspace to a snapshot: `baseline` (the create-time tree on a fresh disk) or
/// a named one (its disk, and its running machine when taken while started).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetWorkspace {
    pub workspace_id: String,
    /// baseline, or a named snapshot.
    #[serde(default = "d::reset_snapshot")]
    #[schemars(length(max = 64))]
    pub snapshot: String,
}

impl Operation for ResetWorkspace {
    const METHOD: &'static str = "reset_workspace";
    const TOOL: Option<&'static str> = Some("workspace_reset");
    type Output = WorkspaceInfo;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<WorkspaceInfo> {
        pyro.reset_workspace_to(&self.workspace_id, &self.snapshot, cx.progress.clone())
            .await
    }
}

/// Snapshot a workspace: started, its whole machine (disk, memory, processes); stopped,
/// its disk.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub workspace_id: String,
    /// ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, not baseline.
    #[schemars(length(max = 64))]
    pub snapshot_name: String,
}

impl Operation for CreateSnapshot {
    const METHOD: &'static str = "create_snapshot";
    const TOOL: Option<&'static str> = Some("snapshot_create");
    type Output = SnapshotCreateResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<SnapshotCreateResult> {
        pyro.create_snapshot(&self.workspace_id, &self.snapshot_name)
            .await
    }
}

/// List a workspace's snapshots: baseline first, then named ones, newest first.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshots {
    pub workspace_id: String,
}

impl Operation for ListSnapshots {
    const METHOD: &'static str = "list_snapshots";
    const TOOL: Option<&'static str> = Some("snapshot_list");
    type Output = SnapshotList;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<SnapshotList> {
        pyro.list_snapshots(&self.workspace_id).await
    }
}

/// Delete a named snapshot.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteSnapshot {
    pub workspace_id: String,
    #[schemars(length(max = 64))]
    pub snapshot_name: String,
}

impl Operation for DeleteSnapshot {
    const METHOD: &'static str = "delete_snapshot";
    const TOOL: Option<&'static str> = Some("snapshot_delete");
    type Output = SnapshotDeleteResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<SnapshotDeleteResult> {
        pyro.delete_snapshot(&self.workspace_id, &self.snapshot_name)
            .await
    }
}

/// Make new workspaces from a snapshot of one (named, or taken now).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkWorkspaceRequest {
    pub workspace_id: String,
    /// A named snapshot; omitted: the workspace as it is now.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub snapshot: Option<String>,
    /// The forks' name (numbered -1, -2, ... when count > 1).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub name: Option<String>,
    #[serde(default = "d::fork_count")]
    #[schemars(range(min = 1, max = 16))]
    pub count: i64,
    /// Copy the source's secrets and credentials into the forks.
    #[serde(default)]
    pub with_secrets: bool,
}

impl Operation for ForkWorkspaceRequest {
    const METHOD: &'static str = "fork_workspace";
    const TOOL: Option<&'static str> = Some("workspace_fork");
    type Output = ForkResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<ForkResult> {
        let count = u32::try_from(self.count)
            .ok()
            .filter(|c| (1..=crate::workspace::MAX_FORKS).contains(c))
            .ok_or(CoreError::OutOfRange {
                field: "count",
                value: self.count,
                min: 1,
                max: i64::from(crate::workspace::MAX_FORKS),
            })?;
        let req = crate::workspace::ForkWorkspace {
            snapshot: self.snapshot,
            name: self.name,
            count,
            with_secrets: self.with_secrets,
        };
        pyro.fork_workspace(&self.workspace_id, req, cx.progress.clone())
            .await
    }
}

/// Requests that name only a workspace.
macro_rules! workspace_id_op {
    ($(#[$doc:meta])* $name:ident, $method:literal, $tool:literal, $out:ty, |$pyro:ident, $id:ident, $cx:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub workspace_id: String,
        }

        impl Operation for $name {
            const METHOD: &'static str = $method;
            const TOOL: Option<&'static str> = Some($tool);
            type Output = $out;
            async fn run(self, $pyro: &Pyro, $cx: &Ctx) -> Result<$out> {
                let $id = self.workspace_id.as_str();
                let _ = &$cx;
                $body.await
            }
        }
    };
}

workspace_id_op!(
    /// Describe one workspace.
    StatusWorkspace, "status_workspace", "workspace_status", WorkspaceInfo,
    |pyro, id, cx| pyro.status_workspace(id)
);
workspace_id_op!(
    /// Power off a started workspace, keeping its files.
    StopWorkspace, "stop_workspace", "workspace_stop", WorkspaceInfo,
    |pyro, id, cx| pyro.stop_workspace(id)
);
workspace_id_op!(
    /// Boot a stopped workspace on its existing disk.
    StartWorkspace, "start_workspace", "workspace_start", WorkspaceInfo,
    |pyro, id, cx| pyro.start_workspace(id, cx.progress.clone())
);
workspace_id_op!(
    /// What happened since the last reset: commands, edits, services, current changes.
    SummarizeWorkspace, "summarize_workspace", "workspace_summary", crate::model::WorkspaceSummaryResult,
    |pyro, id, cx| pyro.summarize_workspace(id)
);
workspace_id_op!(
    /// Compare /workspace with its baseline.
    DiffWorkspace, "diff_workspace", "workspace_diff", DiffResult,
    |pyro, id, cx| pyro.diff_workspace(id)
);
workspace_id_op!(
    /// Delete a workspace in any state.
    DeleteWorkspace, "delete_workspace", "workspace_delete", WorkspaceDeleteResult,
    |pyro, id, cx| pyro.delete_workspace(id)
);
