//! The tool catalogue and its mapping onto [`pyro_core::Pyro`].
//!
//! Each tool is a [`ToolId`]. Its name, profile tier, advertised definition (description,
//! annotations, input and output schema) and its call are four exhaustive `match`es, so a
//! tool cannot be half-registered.
//!
//! **Adding a tool** (shells, services, snapshots, secrets and disk tools come this way):
//! add a variant in the place of the reference's order in [`ToolId::ALL`], an argument struct
//! in `params.rs`, a result mirror in `schema.rs`, and one arm in each of [`ToolId::name`],
//! [`ToolId::tier`], [`ToolId::definition`] and [`call`]. Tools whose arguments differ between
//! profiles (`workspace_create` gains `network_policy` and `secrets`, `workspace_exec` gains
//! `secret_env` in `workspace-full`) get a second argument struct and choose it by
//! [`Profile`] in `definition` and `call`, as the reference does.

use std::sync::Arc;

use pyro_core::workspace::{CreateWorkspace, UpdateWorkspace};
use pyro_core::{Command, CreateVm, ExecOptions, ProgressFn, Pyro};
use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ToolError;
use crate::params as p;
use crate::paths::HostRoots;
use crate::profile::{Profile, Tier};
use crate::schema as s;

/// Bytes of each stream per entry that `workspace_logs` returns.
pub const LOG_ENTRY_MAX_BYTES: u64 = 64 * 1024;

/// Every tool pyro serves, in any profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ToolId {
    /// `vm_run`
    VmRun,
    /// `vm_list_environments`
    VmListEnvironments,
    /// `vm_create`
    VmCreate,
    /// `vm_start`
    VmStart,
    /// `vm_exec`
    VmExec,
    /// `vm_stop`
    VmStop,
    /// `vm_delete`
    VmDelete,
    /// `vm_status`
    VmStatus,
    /// `vm_network_info`
    VmNetworkInfo,
    /// `vm_reap_expired`
    VmReapExpired,
    /// `workspace_create`
    WorkspaceCreate,
    /// `workspace_list`
    WorkspaceList,
    /// `workspace_update`
    WorkspaceUpdate,
    /// `workspace_exec`
    WorkspaceExec,
    /// `workspace_sync_push`
    WorkspaceSyncPush,
    /// `workspace_status`
    WorkspaceStatus,
    /// `workspace_stop`
    WorkspaceStop,
    /// `workspace_start`
    WorkspaceStart,
    /// `workspace_logs`
    WorkspaceLogs,
    /// `workspace_export`
    WorkspaceExport,
    /// `workspace_diff`
    WorkspaceDiff,
    /// `workspace_file_list`
    WorkspaceFileList,
    /// `workspace_file_read`
    WorkspaceFileRead,
    /// `workspace_file_write`
    WorkspaceFileWrite,
    /// `workspace_patch_apply`
    WorkspacePatchApply,
    /// `workspace_reset`
    WorkspaceReset,
    /// `workspace_delete`
    WorkspaceDelete,
}

/// Annotations: read-only, destructive, idempotent. Nothing here reaches outside the host's
/// sandboxes (guests have no network), so `openWorldHint` is false throughout.
fn ann(title: &str, read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations {
    let a = ToolAnnotations::with_title(title)
        .read_only(read_only)
        .open_world(false);
    if read_only {
        a
    } else {
        a.destructive(destructive).idempotent(idempotent)
    }
}

/// Removes what costs bytes in every `tools/list` and tells a model nothing: the `$schema`
/// URI and numeric `format`s (`int64`, `uint32`, `double`).
fn trim_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            if m.get("format").and_then(Value::as_str).is_some_and(|f| {
                f.starts_with("int") || f.starts_with("uint") || f == "double" || f == "float"
            }) {
                m.remove("format");
            }
            m.values_mut().for_each(trim_schema);
        }
        Value::Array(a) => a.iter_mut().for_each(trim_schema),
        _ => {}
    }
}

/// Output schemas say what each field is; `required` lists (the server always writes every
/// field but the ones marked optional) and the `minimum: 0` of unsigned counters would more
/// than double their size in every `tools/list` without telling a model anything it needs.
fn trim_output_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("required");
            if m.get("minimum").and_then(Value::as_u64) == Some(0) {
                m.remove("minimum");
            }
            for (k, child) in m.iter_mut() {
                match (k.as_str(), child) {
                    // Maps from names to schemas: trim the schemas, keep every name.
                    ("properties" | "$defs", Value::Object(named)) => {
                        named.values_mut().for_each(trim_output_schema)
                    }
                    (_, child) => trim_output_schema(child),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(trim_output_schema),
        _ => {}
    }
}

fn trimmed(schema: &JsonObject, output: bool) -> Arc<JsonObject> {
    let mut v = Value::Object(schema.clone());
    trim_schema(&mut v);
    if output {
        trim_output_schema(&mut v);
    }
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(schema.clone()),
    }
}

fn tool<I, O>(name: &'static str, description: &'static str, a: ToolAnnotations) -> Tool
where
    I: JsonSchema + 'static,
    O: JsonSchema + 'static,
{
    let input = schema_for_input::<I>().unwrap_or_else(|e| {
        // Only reachable if an argument struct stopped being an object (a unit test guards).
        tracing::error!("input schema of {name}: {e}");
        Arc::new(JsonObject::new())
    });
    let title = a.title.clone();
    let mut t = Tool::new(name, description, trimmed(&input, false))
        .with_raw_output_schema(trimmed(&schema_for_output::<O>(), true))
        .with_annotations(a);
    t.title = title;
    t
}

impl ToolId {
    /// Every tool, in the reference's order (`tools/list` keeps it).
    pub const ALL: &'static [ToolId] = &[
        Self::VmRun,
        Self::WorkspaceCreate,
        Self::WorkspaceList,
        Self::WorkspaceUpdate,
        Self::WorkspaceExec,
        Self::WorkspaceSyncPush,
        Self::WorkspaceStatus,
        Self::WorkspaceLogs,
        Self::WorkspaceExport,
        Self::WorkspaceDiff,
        Self::WorkspaceFileList,
        Self::WorkspaceFileRead,
        Self::WorkspaceFileWrite,
        Self::WorkspacePatchApply,
        Self::WorkspaceReset,
        Self::WorkspaceDelete,
        Self::VmListEnvironments,
        Self::VmCreate,
        Self::VmStart,
        Self::VmExec,
        Self::VmStop,
        Self::VmDelete,
        Self::VmStatus,
        Self::VmNetworkInfo,
        Self::VmReapExpired,
        Self::WorkspaceStop,
        Self::WorkspaceStart,
    ];

    /// The tool's wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::VmRun => "vm_run",
            Self::VmListEnvironments => "vm_list_environments",
            Self::VmCreate => "vm_create",
            Self::VmStart => "vm_start",
            Self::VmExec => "vm_exec",
            Self::VmStop => "vm_stop",
            Self::VmDelete => "vm_delete",
            Self::VmStatus => "vm_status",
            Self::VmNetworkInfo => "vm_network_info",
            Self::VmReapExpired => "vm_reap_expired",
            Self::WorkspaceCreate => "workspace_create",
            Self::WorkspaceList => "workspace_list",
            Self::WorkspaceUpdate => "workspace_update",
            Self::WorkspaceExec => "workspace_exec",
            Self::WorkspaceSyncPush => "workspace_sync_push",
            Self::WorkspaceStatus => "workspace_status",
            Self::WorkspaceStop => "workspace_stop",
            Self::WorkspaceStart => "workspace_start",
            Self::WorkspaceLogs => "workspace_logs",
            Self::WorkspaceExport => "workspace_export",
            Self::WorkspaceDiff => "workspace_diff",
            Self::WorkspaceFileList => "workspace_file_list",
            Self::WorkspaceFileRead => "workspace_file_read",
            Self::WorkspaceFileWrite => "workspace_file_write",
            Self::WorkspacePatchApply => "workspace_patch_apply",
            Self::WorkspaceReset => "workspace_reset",
            Self::WorkspaceDelete => "workspace_delete",
        }
    }

    /// The tool with this wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// The smallest profile tier that offers the tool.
    pub fn tier(self) -> Tier {
        match self {
            Self::VmRun => Tier::VmRun,
            Self::WorkspaceCreate
            | Self::WorkspaceList
            | Self::WorkspaceUpdate
            | Self::WorkspaceExec
            | Self::WorkspaceSyncPush
            | Self::WorkspaceStatus
            | Self::WorkspaceLogs
            | Self::WorkspaceExport
            | Self::WorkspaceDiff
            | Self::WorkspaceFileList
            | Self::WorkspaceFileRead
            | Self::WorkspaceFileWrite
            | Self::WorkspacePatchApply
            | Self::WorkspaceReset
            | Self::WorkspaceDelete => Tier::WorkspaceCore,
            Self::VmListEnvironments
            | Self::VmCreate
            | Self::VmStart
            | Self::VmExec
            | Self::VmStop
            | Self::VmDelete
            | Self::VmStatus
            | Self::VmNetworkInfo
            | Self::VmReapExpired
            | Self::WorkspaceStop
            | Self::WorkspaceStart => Tier::WorkspaceFull,
        }
    }

    /// Whether a call usually takes seconds or more (booting, running a command): such calls
    /// announce themselves at once on the progress channel.
    pub fn is_long(self) -> bool {
        matches!(
            self,
            Self::VmRun
                | Self::VmCreate
                | Self::VmStart
                | Self::VmExec
                | Self::WorkspaceCreate
                | Self::WorkspaceExec
                | Self::WorkspaceReset
                | Self::WorkspaceStart
        )
    }

    /// The tools a profile offers, in catalogue order.
    pub fn for_profile(profile: Profile) -> Vec<ToolId> {
        Self::ALL
            .iter()
            .copied()
            .filter(|t| profile.includes(t.tier()))
            .collect()
    }

    /// The definition `tools/list` advertises under `profile`.
    pub fn definition(self, _profile: Profile) -> Tool {
        let n = self.name();
        match self {
            Self::VmRun => tool::<p::VmRun, s::VmExecResult>(
                n,
                "Run one shell command in a fresh, disposable microVM sandbox and return its \
                 exit_code, stdout and stderr. The sandbox is created, booted (a few seconds), \
                 used for this command only and always destroyed: nothing persists between \
                 calls. Use it for one-off checks (a build, a test run, a version probe); when \
                 several commands must share files, use a persistent workspace instead. Output \
                 is capped at 1 MiB per stream; the command is killed after timeout_seconds \
                 (exit_code 124, timed_out true). The guest has no network.",
                ann("Run a command in a fresh sandbox", false, false, false),
            ),
            Self::WorkspaceCreate => tool::<p::WorkspaceCreate, s::WorkspaceInfo>(
                n,
                "Create and boot a persistent sandbox (workspace): its /workspace directory and \
                 whole filesystem persist across calls until workspace_delete. Optionally seed \
                 /workspace from a host directory or archive (seed_path); the seeded tree is the \
                 baseline that workspace_diff compares with and workspace_reset restores. Returns \
                 the workspace; pass its workspace_id to every other workspace_* tool. Booting \
                 takes seconds (building an environment on its first use, minutes). The \
                 workspace is stopped when its running-time budget (ttl_seconds) is used up; \
                 workspace_update extends it. The guest has no network.",
                ann("Create a workspace", false, false, false),
            ),
            Self::WorkspaceList => tool::<p::NoArgs, s::WorkspaceList>(
                n,
                "List every workspace (id, name, labels, state, running time left, command \
                 count), most recently active first. Use it to find a workspace again by name or \
                 label, or to see which are started.",
                ann("List workspaces", true, false, true),
            ),
            Self::WorkspaceUpdate => tool::<p::WorkspaceUpdate, s::WorkspaceInfo>(
                n,
                "Change a workspace's name or labels (add, replace, or remove keys), or grant it \
                 ttl_seconds more running time counted from now. At least one change is \
                 required; name and clear_name together are refused. Returns the updated \
                 workspace.",
                ann("Update a workspace", false, false, true),
            ),
            Self::WorkspaceExec => tool::<p::WorkspaceExec, s::WorkspaceExecResult>(
                n,
                "Run one non-interactive shell command (/bin/sh -c, cwd /workspace) in a started \
                 workspace; files, installed packages and everything it writes persist for later \
                 calls. Returns exit_code, stdout and stderr (1 MiB each at most; workspace_logs \
                 keeps up to 64 MiB) and the command's sequence number in the history. The \
                 command's process tree is killed after timeout_seconds (exit_code 124, \
                 timed_out true). No stdin, no network. Calls on one workspace may overlap.",
                ann("Run a command in a workspace", false, true, false),
            ),
            Self::WorkspaceSyncPush => tool::<p::WorkspaceSyncPush, s::SyncResult>(
                n,
                "Copy a host directory or archive (source_path) into a started workspace under \
                 dest (default /workspace). It merges: same-named files are overwritten, nothing \
                 is deleted, the baseline is unchanged. Returns the number of entries and bytes \
                 imported.",
                ann("Push host files into a workspace", false, true, true),
            ),
            Self::WorkspaceStatus => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Show one workspace: state (started or stopped), running time left, seed, \
                 labels, command count and last command, resets, and why it stopped if it \
                 stopped unexpectedly.",
                ann("Workspace status", true, false, true),
            ),
            Self::WorkspaceLogs => tool::<p::WorkspaceLogs, s::WorkspaceLogs>(
                n,
                "Return a workspace's command history, oldest first: each command with its exit \
                 code, duration, stdout and stderr (64 KiB per stream and entry at most). Pages \
                 by offset and limit; total is the history's length, so offset = total - limit \
                 shows the newest entries. Reset empties the history.",
                ann("Workspace command history", true, false, true),
            ),
            Self::WorkspaceExport => tool::<p::WorkspaceExport, s::ExportResult>(
                n,
                "Copy one file, symlink or directory from /workspace of a started workspace to a \
                 new host path (output_path must not exist yet; missing parent directories are \
                 created). Returns what was written. Use it to hand results back to the host.",
                ann("Export from a workspace to the host", false, false, false),
            ),
            Self::WorkspaceDiff => tool::<p::WorkspaceId, s::DiffResult>(
                n,
                "Compare /workspace with the workspace's create-time baseline (its seed, or an \
                 empty tree). Returns each changed path with its status (added, modified, \
                 deleted, type_changed, mode_changed) and one git-style patch of all text \
                 changes that git apply accepts on the baseline. Needs a started workspace.",
                ann("Diff a workspace against its baseline", true, false, true),
            ),
            Self::WorkspaceFileList => tool::<p::WorkspaceFileList, s::FileListResult>(
                n,
                "List a path in /workspace: the children of a directory, or its whole subtree \
                 with recursive. Each entry has its absolute path, type (file, directory, \
                 symlink, other), size, permission bits and symlink target.",
                ann("List workspace files", true, false, true),
            ),
            Self::WorkspaceFileRead => tool::<p::WorkspaceFileRead, s::FileReadResult>(
                n,
                "Read a regular file in /workspace as text, up to max_bytes (default 64 KiB, at \
                 most 16 MiB); truncated says whether the file is longer than what was returned \
                 and size_bytes gives its full size. Content that is not UTF-8 also comes \
                 exactly as content_base64.",
                ann("Read a workspace file", true, false, true),
            ),
            Self::WorkspaceFileWrite => tool::<p::WorkspaceFileWrite, s::FileWriteResult>(
                n,
                "Create or replace a file in /workspace with exactly the given text (UTF-8, up to \
                 16 MiB): parent directories are created, the write is atomic, an existing file \
                 keeps its permissions. Overwrites without asking; to change part of an existing \
                 file, workspace_patch_apply is safer.",
                ann("Write a workspace file", false, true, true),
            ),
            Self::WorkspacePatchApply => tool::<p::WorkspacePatchApply, s::PatchResult>(
                n,
                "Apply a unified diff (git diff or diff -u output) to files in /workspace: \
                 modify, create, delete or rename files. All or nothing: if any hunk does not \
                 apply, nothing changes and the error names the file and hunk. Returns the files \
                 changed.",
                ann("Apply a patch in a workspace", false, true, false),
            ),
            Self::WorkspaceReset => tool::<p::WorkspaceReset, s::WorkspaceInfo>(
                n,
                "Put a workspace back to its create-time baseline: a fresh filesystem (outside \
                 /workspace too), /workspace as seeded, an empty command history; the \
                 workspace_id stays. Discards every change since creation. Only the snapshot \
                 \"baseline\" exists in this version.",
                ann("Reset a workspace to its baseline", false, true, true),
            ),
            Self::WorkspaceDelete => tool::<p::WorkspaceId, s::WorkspaceDeleteResult>(
                n,
                "Delete a workspace in any state: stop its VM and remove its disk, baseline, \
                 history and logs. Irreversible; export anything worth keeping first.",
                ann("Delete a workspace", false, true, true),
            ),
            Self::VmListEnvironments => tool::<p::NoArgs, s::EnvironmentList>(
                n,
                "List the environments sandboxes can run (debian:12 with git, debian:12-base, \
                 debian:12-build with gcc, make and python3) and whether each is built on this \
                 host; one that is not is built on first use, which takes minutes.",
                ann("List environments", true, false, true),
            ),
            Self::VmCreate => tool::<p::VmCreate, s::VmInfo>(
                n,
                "Create an ephemeral VM without booting it (state created). Then vm_start boots \
                 it and vm_exec runs one command and deletes it; vm_run does all three in one \
                 call and is usually what you want. The VM belongs to this server process: it is \
                 lost when the server stops and vm_reap_expired deletes it after ttl_seconds.",
                ann("Create a VM", false, false, false),
            ),
            Self::VmStart => tool::<p::VmId, s::VmInfo>(
                n,
                "Boot a created or stopped VM (a few seconds). Returns the VM in state started.",
                ann("Start a VM", false, false, false),
            ),
            Self::VmExec => tool::<p::VmExec, s::VmExecResult>(
                n,
                "Run one shell command (/bin/sh -c, cwd /workspace) in a started VM and return \
                 exit_code, stdout and stderr (1 MiB each at most). The VM is deleted afterwards, \
                 whatever the outcome. The command is killed after timeout_seconds (exit_code \
                 124).",
                ann("Run a command in a VM, then delete it", false, true, false),
            ),
            Self::VmStop => tool::<p::VmId, s::VmInfo>(
                n,
                "Power off a started VM, keeping its record and disk (state stopped); vm_start \
                 boots it again.",
                ann("Stop a VM", false, true, true),
            ),
            Self::VmDelete => tool::<p::VmId, s::VmDeleteResult>(
                n,
                "Delete a VM in any state and free everything it used.",
                ann("Delete a VM", false, true, true),
            ),
            Self::VmStatus => tool::<p::VmId, s::VmInfo>(
                n,
                "Show one VM: state, environment, resources, creation and expiry times.",
                ann("VM status", true, false, true),
            ),
            Self::VmNetworkInfo => tool::<p::VmId, s::NetworkInfo>(
                n,
                "Show a VM's network configuration. Guest networking is not available in this \
                 version, so this says so and why.",
                ann("VM network info", true, false, true),
            ),
            Self::VmReapExpired => tool::<p::NoArgs, s::ReapResult>(
                n,
                "Delete every VM of this server whose ttl_seconds has run out; returns their \
                 ids.",
                ann("Delete expired VMs", false, true, true),
            ),
            Self::WorkspaceStop => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Power off a started workspace, keeping all its files; running processes end and \
                 its running-time budget pauses. Tools that work inside the workspace need it \
                 started again with workspace_start.",
                ann("Stop a workspace", false, true, true),
            ),
            Self::WorkspaceStart => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Boot a stopped workspace on its existing disk (a few seconds): everything \
                 written before it stopped is still there.",
                ann("Start a workspace", false, false, true),
            ),
        }
    }
}

/// What a tool call needs besides its arguments.
pub(crate) struct CallCtx<'a> {
    pub pyro: &'a Pyro,
    pub roots: &'a HostRoots,
    pub progress: ProgressFn,
}

fn parse<T: DeserializeOwned>(tool: ToolId, args: JsonObject) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        ToolError::invalid(format!(
            "invalid arguments for {}: {e} (see the tool's input schema)",
            tool.name()
        ))
    })
}

fn ok<T: Serialize>(v: T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError {
        kind: "runtime".into(),
        message: format!("cannot encode the result: {e}"),
    })
}

fn shell(command: String, timeout_seconds: i64) -> ExecOptions {
    let mut e = ExecOptions::new(Command::Shell(command));
    e.timeout_seconds = timeout_seconds;
    e
}

fn create_vm(environment: String, vcpu: i64, mem: i64, ttl: i64, network: bool) -> CreateVm {
    CreateVm {
        environment,
        vcpu_count: vcpu,
        mem_mib: mem,
        ttl_seconds: ttl,
        network,
        backend: None,
    }
}

/// Runs one tool; the result is the core's value as JSON.
pub(crate) async fn call(
    tool: ToolId,
    _profile: Profile,
    args: JsonObject,
    cx: CallCtx<'_>,
) -> Result<Value, ToolError> {
    let pyro = cx.pyro;
    match tool {
        ToolId::VmRun => {
            let a: p::VmRun = parse(tool, args)?;
            // allow_host_compat is accepted for compatibility and changes nothing: pyro never
            // falls back to running commands on the host.
            let _ = a.allow_host_compat;
            let create = create_vm(
                a.environment,
                a.vcpu_count,
                a.mem_mib,
                a.ttl_seconds,
                a.network,
            );
            let exec = shell(a.command, a.timeout_seconds);
            ok(pyro.run_in_vm(create, exec, cx.progress, None).await?)
        }
        ToolId::WorkspaceCreate => {
            let a: p::WorkspaceCreate = parse(tool, args)?;
            let _ = a.allow_host_compat; // accepted, no effect (see vm_run)
            let seed = match &a.seed_path {
                Some(raw) => Some(cx.roots.existing("seed_path", raw)?),
                None => None,
            };
            let mut req = CreateWorkspace::new(a.environment);
            req.vcpu_count = a.vcpu_count;
            req.mem_mib = a.mem_mib;
            req.ttl_seconds = a.ttl_seconds;
            req.seed_path = seed;
            req.name = a.name;
            req.labels = a.labels.unwrap_or_default();
            ok(pyro.create_workspace(req, cx.progress).await?)
        }
        ToolId::WorkspaceList => {
            let _: p::NoArgs = parse(tool, args)?;
            ok(pyro.list_workspaces().await?)
        }
        ToolId::WorkspaceUpdate => {
            let a: p::WorkspaceUpdate = parse(tool, args)?;
            let req = UpdateWorkspace {
                name: a.name,
                clear_name: a.clear_name,
                labels: a.labels.unwrap_or_default(),
                clear_labels: a.clear_labels.unwrap_or_default(),
                ttl_seconds: a.ttl_seconds,
            };
            ok(pyro.update_workspace(&a.workspace_id, req).await?)
        }
        ToolId::WorkspaceExec => {
            let a: p::WorkspaceExec = parse(tool, args)?;
            let exec = shell(a.command, a.timeout_seconds);
            ok(pyro.exec_workspace(&a.workspace_id, exec, None).await?)
        }
        ToolId::WorkspaceSyncPush => {
            let a: p::WorkspaceSyncPush = parse(tool, args)?;
            let source = cx.roots.existing("source_path", &a.source_path)?;
            ok(pyro
                .push_workspace_sync(&a.workspace_id, source, &a.dest)
                .await?)
        }
        ToolId::WorkspaceStatus => {
            let a: p::WorkspaceId = parse(tool, args)?;
            ok(pyro.status_workspace(&a.workspace_id).await?)
        }
        ToolId::WorkspaceLogs => {
            let a: p::WorkspaceLogs = parse(tool, args)?;
            if a.limit == 0 {
                return Err(ToolError::invalid("limit must be at least 1"));
            }
            ok(pyro
                .logs_workspace(&a.workspace_id, a.offset, a.limit, LOG_ENTRY_MAX_BYTES)
                .await?)
        }
        ToolId::WorkspaceExport => {
            let a: p::WorkspaceExport = parse(tool, args)?;
            let output = cx.roots.output("output_path", &a.output_path)?;
            ok(pyro
                .export_workspace(&a.workspace_id, &a.path, output)
                .await?)
        }
        ToolId::WorkspaceDiff => {
            let a: p::WorkspaceId = parse(tool, args)?;
            ok(pyro.diff_workspace(&a.workspace_id).await?)
        }
        ToolId::WorkspaceFileList => {
            let a: p::WorkspaceFileList = parse(tool, args)?;
            ok(pyro
                .list_workspace_files(&a.workspace_id, &a.path, a.recursive)
                .await?)
        }
        ToolId::WorkspaceFileRead => {
            let a: p::WorkspaceFileRead = parse(tool, args)?;
            ok(pyro
                .read_workspace_file(&a.workspace_id, &a.path, a.max_bytes)
                .await?)
        }
        ToolId::WorkspaceFileWrite => {
            let a: p::WorkspaceFileWrite = parse(tool, args)?;
            ok(pyro
                .write_workspace_file(&a.workspace_id, &a.path, &a.text)
                .await?)
        }
        ToolId::WorkspacePatchApply => {
            let a: p::WorkspacePatchApply = parse(tool, args)?;
            ok(pyro
                .apply_workspace_patch(&a.workspace_id, &a.patch)
                .await?)
        }
        ToolId::WorkspaceReset => {
            let a: p::WorkspaceReset = parse(tool, args)?;
            if a.snapshot != "baseline" {
                return Err(ToolError::invalid(format!(
                    "snapshot `{}` does not exist: this version of pyro has no named snapshots, \
                     only \"baseline\" (the create-time tree)",
                    a.snapshot
                )));
            }
            ok(pyro.reset_workspace(&a.workspace_id, cx.progress).await?)
        }
        ToolId::WorkspaceDelete => {
            let a: p::WorkspaceId = parse(tool, args)?;
            ok(pyro.delete_workspace(&a.workspace_id).await?)
        }
        ToolId::VmListEnvironments => {
            let _: p::NoArgs = parse(tool, args)?;
            ok(pyro.list_environments())
        }
        ToolId::VmCreate => {
            let a: p::VmCreate = parse(tool, args)?;
            let _ = a.allow_host_compat; // accepted, no effect (see vm_run)
            let create = create_vm(
                a.environment,
                a.vcpu_count,
                a.mem_mib,
                a.ttl_seconds,
                a.network,
            );
            ok(pyro.create_vm(create, cx.progress).await?)
        }
        ToolId::VmStart => {
            let a: p::VmId = parse(tool, args)?;
            ok(pyro.start_vm(&a.vm_id, cx.progress).await?)
        }
        ToolId::VmExec => {
            let a: p::VmExec = parse(tool, args)?;
            let exec = shell(a.command, a.timeout_seconds);
            ok(pyro.exec_vm(&a.vm_id, exec, None).await?)
        }
        ToolId::VmStop => {
            let a: p::VmId = parse(tool, args)?;
            ok(pyro.stop_vm(&a.vm_id).await?)
        }
        ToolId::VmDelete => {
            let a: p::VmId = parse(tool, args)?;
            ok(pyro.delete_vm(&a.vm_id).await?)
        }
        ToolId::VmStatus => {
            let a: p::VmId = parse(tool, args)?;
            ok(pyro.status_vm(&a.vm_id).await?)
        }
        ToolId::VmNetworkInfo => {
            let a: p::VmId = parse(tool, args)?;
            ok(pyro.network_info_vm(&a.vm_id).await?)
        }
        ToolId::VmReapExpired => {
            let _: p::NoArgs = parse(tool, args)?;
            ok(pyro.reap_expired().await)
        }
        ToolId::WorkspaceStop => {
            let a: p::WorkspaceId = parse(tool, args)?;
            ok(pyro.stop_workspace(&a.workspace_id).await?)
        }
        ToolId::WorkspaceStart => {
            let a: p::WorkspaceId = parse(tool, args)?;
            ok(pyro.start_workspace(&a.workspace_id, cx.progress).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &t in ToolId::ALL {
            assert!(seen.insert(t.name()), "duplicate {}", t.name());
            assert_eq!(ToolId::from_name(t.name()), Some(t));
        }
        assert_eq!(ToolId::from_name("shell_open"), None);
    }

    #[test]
    fn every_definition_has_object_schemas_and_annotations() {
        for &t in ToolId::ALL {
            let d = t.definition(Profile::WorkspaceFull);
            assert_eq!(d.name, t.name());
            assert_eq!(
                d.input_schema.get("type"),
                Some(&Value::from("object")),
                "{}",
                d.name
            );
            assert_eq!(
                d.input_schema.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{}: unknown arguments must be refused",
                d.name
            );
            let out = d.output_schema.as_ref().expect("output schema");
            assert_eq!(out.get("type"), Some(&Value::from("object")), "{}", d.name);
            assert!(!out.contains_key("$schema"));
            let a = d.annotations.as_ref().expect("annotations");
            assert!(
                a.read_only_hint.is_some() && a.title.is_some(),
                "{}",
                d.name
            );
            assert!(d.description.as_ref().is_some_and(|s| s.len() > 40));
        }
    }

    #[test]
    fn advertised_ranges_are_the_cores() {
        let range = |tool: ToolId, field: &str| {
            let d = tool.definition(Profile::WorkspaceFull);
            let f = &d.input_schema["properties"][field];
            (f["minimum"].as_i64(), f["maximum"].as_i64())
        };
        let core = |(min, max): (i64, i64)| (Some(min), Some(max));
        assert_eq!(
            range(ToolId::VmRun, "vcpu_count"),
            core(pyro_core::VCPU_RANGE)
        );
        assert_eq!(range(ToolId::VmRun, "mem_mib"), core(pyro_core::MEM_RANGE));
        assert_eq!(
            range(ToolId::VmCreate, "ttl_seconds"),
            core(pyro_core::TTL_RANGE)
        );
        assert_eq!(
            range(ToolId::VmRun, "timeout_seconds"),
            core((1, pyro_core::MAX_TIMEOUT_SECONDS))
        );
        let ws_ttl = core(pyro_core::workspace::WORKSPACE_TTL_RANGE);
        assert_eq!(range(ToolId::WorkspaceCreate, "ttl_seconds"), ws_ttl);
        assert_eq!(range(ToolId::WorkspaceUpdate, "ttl_seconds"), ws_ttl);
        assert_eq!(
            range(ToolId::WorkspaceFileRead, "max_bytes"),
            core((1, pyro_core::workspace::MAX_READ_BYTES as i64))
        );
    }

    #[test]
    fn read_only_tools_are_exactly_the_inspecting_ones() {
        let ro: Vec<&str> = ToolId::ALL
            .iter()
            .filter(|t| {
                t.definition(Profile::WorkspaceFull)
                    .annotations
                    .and_then(|a| a.read_only_hint)
                    == Some(true)
            })
            .map(|t| t.name())
            .collect();
        assert_eq!(
            ro,
            [
                "workspace_list",
                "workspace_status",
                "workspace_logs",
                "workspace_diff",
                "workspace_file_list",
                "workspace_file_read",
                "vm_list_environments",
                "vm_status",
                "vm_network_info",
            ]
        );
        for name in [
            "workspace_delete",
            "workspace_reset",
            "workspace_file_write",
            "workspace_patch_apply",
            "workspace_sync_push",
            "workspace_stop",
            "vm_stop",
            "vm_delete",
        ] {
            let a = ToolId::from_name(name)
                .unwrap()
                .definition(Profile::WorkspaceFull)
                .annotations
                .unwrap();
            assert_eq!(a.destructive_hint, Some(true), "{name}");
        }
    }
}
