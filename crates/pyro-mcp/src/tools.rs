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
//! [`Profile`] in `definition` and `call`, as the reference does. Then accept the new
//! `tools/list` snapshots (`tests/tools_list.rs`): their diff is what a model will read, and
//! `workspace-core` must stay under its byte budget.

use std::sync::Arc;

use pyro_core::workspace::{CreateWorkspace, UpdateWorkspace};
use pyro_core::{Command, CreateVm, ExecOptions, ProgressFn, Pyro};
use rmcp::handler::server::tool::schema_for_input;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
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

/// The tool's title (top-level `title`, for display) and annotations. Hints are only written
/// where they differ from the spec's defaults (`readOnlyHint` is always written): read-only
/// tools get no destructive/idempotent hints, other tools say whether they are destructive
/// (the default is true) and only say `idempotentHint` when it is true. Nothing here reaches
/// outside the host's sandboxes (guests have no network), so `openWorldHint` is false
/// throughout.
struct Ann {
    title: &'static str,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
}

/// See [`Ann`]: read-only, destructive, idempotent.
fn ann(title: &'static str, read_only: bool, destructive: bool, idempotent: bool) -> Ann {
    Ann {
        title,
        read_only,
        destructive,
        idempotent,
    }
}

impl Ann {
    fn annotations(&self) -> ToolAnnotations {
        let mut a = ToolAnnotations::new()
            .read_only(self.read_only)
            .open_world(false);
        if !self.read_only {
            a = a.destructive(self.destructive);
            if self.idempotent {
                a = a.idempotent(true);
            }
        }
        a
    }
}

/// Numeric `format`s (`int64`, `uint32`, `double`): they cost bytes in every `tools/list` and
/// tell a model nothing.
fn is_numeric_format(v: &Value) -> bool {
    v.as_str().is_some_and(|f| {
        f.starts_with("int") || f.starts_with("uint") || f == "double" || f == "float"
    })
}

/// Applies `f` to every schema below `v` (and to `v`): the values of `properties`, `$defs`
/// and `patternProperties` are schemas keyed by name, so their keys are never touched.
fn each_schema(v: &mut Value, f: &mut impl FnMut(&mut JsonObject)) {
    match v {
        Value::Object(m) => {
            f(m);
            for (k, child) in m.iter_mut() {
                match (k.as_str(), child) {
                    ("properties" | "$defs" | "patternProperties", Value::Object(named)) => {
                        named.values_mut().for_each(|s| each_schema(s, f))
                    }
                    (_, child) => each_schema(child, f),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|s| each_schema(s, f)),
        _ => {}
    }
}

/// Input schemas: drops the `$schema` URI, numeric formats, and `"default": null` (an
/// optional argument that is left out is simply not set; `required` already says which are
/// optional).
fn trim_input_schema(v: &mut Value) {
    each_schema(v, &mut |m| {
        m.remove("$schema");
        if m.get("format").is_some_and(is_numeric_format) {
            m.remove("format");
        }
        if m.get("default").is_some_and(Value::is_null) {
            m.remove("default");
        }
    });
}

/// Output schemas say what each field is. Dropped: `required` lists (the server always writes
/// every field but the ones marked optional), the `minimum`/`maximum` that only restate an
/// integer's width (`u8` is at most 255), `items: true` (any item, the default), numeric
/// formats and the `$schema` URI. Subschemas are inlined where they are generated, so there are
/// no `$defs` to refer to.
fn trim_output_schema(v: &mut Value) {
    each_schema(v, &mut |m| {
        for k in ["$schema", "required", "minimum", "maximum"] {
            m.remove(k);
        }
        if m.get("format").is_some_and(is_numeric_format) {
            m.remove("format");
        }
        if m.get("items") == Some(&Value::Bool(true)) {
            m.remove("items");
        }
    });
}

/// The advertised output schema of `O`: what serializing it writes, with every subschema
/// inlined (each nested struct appears once per result type, so `$defs` and `$ref`s would
/// only add bytes), without the root's title and description.
fn output_schema<O: JsonSchema>() -> JsonObject {
    let mut settings = SchemaSettings::draft2020_12().for_serialize();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let mut v = settings
        .into_generator()
        .into_root_schema_for::<O>()
        .to_value();
    trim_output_schema(&mut v);
    match v {
        Value::Object(mut m) => {
            m.remove("title");
            m.remove("description");
            m
        }
        _ => JsonObject::new(),
    }
}

fn tool<I, O>(name: &'static str, description: &'static str, a: Ann) -> Tool
where
    I: JsonSchema + 'static,
    O: JsonSchema + 'static,
{
    let input = schema_for_input::<I>().unwrap_or_else(|e| {
        // Only reachable if an argument struct stopped being an object (a unit test guards).
        tracing::error!("input schema of {name}: {e}");
        Arc::new(JsonObject::new())
    });
    let mut input = Value::Object(input.as_ref().clone());
    trim_input_schema(&mut input);
    let input = match input {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    };
    let mut t = Tool::new(name, description, Arc::new(input))
        .with_raw_output_schema(Arc::new(output_schema::<O>()))
        .with_annotations(a.annotations());
    t.title = Some(a.title.into());
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
    ///
    /// Descriptions say what a tool is for and what the schemas cannot: each fact once, in
    /// the tool it belongs to. Defaults, ranges and field meanings live in the schemas, and
    /// what every tool shares (Debian 12 guests, no network, the workspace loop) in the
    /// profile's `instructions`.
    pub fn definition(self, _profile: Profile) -> Tool {
        let n = self.name();
        match self {
            Self::VmRun => tool::<p::VmRun, s::VmExecResult>(
                n,
                "Run one shell command in a fresh microVM sandbox that is destroyed afterwards: \
                 nothing persists, so chain steps with && or use a workspace. Returns exit_code, \
                 stdout and stderr (1 MiB each at most). No network.",
                ann("Run a command in a fresh sandbox", false, false, false),
            ),
            Self::WorkspaceCreate => tool::<p::WorkspaceCreate, s::WorkspaceInfo>(
                n,
                "Create and boot a persistent sandbox; its files persist until workspace_delete. \
                 seed_path fills /workspace from the host: the baseline for workspace_diff and \
                 workspace_reset. Pass the returned workspace_id to the other workspace_* tools. \
                 An environment's first use builds it (minutes). No network.",
                ann("Create a workspace", false, false, false),
            ),
            Self::WorkspaceList => tool::<p::NoArgs, s::WorkspaceList>(
                n,
                "List workspaces, most recently active first (to find one again by name or \
                 label).",
                ann("List workspaces", true, false, true),
            ),
            Self::WorkspaceUpdate => tool::<p::WorkspaceUpdate, s::WorkspaceInfo>(
                n,
                "Rename or relabel a workspace, or set its running time left. At least one \
                 change; name and clear_name exclude each other.",
                ann("Update a workspace", false, false, true),
            ),
            Self::WorkspaceExec => tool::<p::WorkspaceExec, s::WorkspaceExecResult>(
                n,
                "Run one non-interactive shell command (no stdin) in a started workspace; its \
                 effects persist. Returns exit_code, stdout and stderr (1 MiB each at most). \
                 Calls may overlap.",
                ann("Run a command in a workspace", false, true, false),
            ),
            Self::WorkspaceSyncPush => tool::<p::WorkspaceSyncPush, s::SyncResult>(
                n,
                "Copy a host directory or archive into a started workspace. Merges: same-named \
                 files are overwritten, nothing is deleted, the baseline is unchanged.",
                ann("Push host files into a workspace", false, true, true),
            ),
            Self::WorkspaceStatus => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Show one workspace: state, running time left, seed, labels, last command, and \
                 last_error if it stopped unexpectedly.",
                ann("Workspace status", true, false, true),
            ),
            Self::WorkspaceLogs => tool::<p::WorkspaceLogs, s::WorkspaceLogs>(
                n,
                "A workspace's command history, oldest first, with each command's output (64 KiB \
                 per stream at most). offset = total - limit pages to the newest; workspace_reset \
                 empties it.",
                ann("Workspace command history", true, false, true),
            ),
            Self::WorkspaceExport => tool::<p::WorkspaceExport, s::ExportResult>(
                n,
                "Copy a file, symlink or directory from a started workspace to the host.",
                ann("Export from a workspace to the host", false, false, false),
            ),
            Self::WorkspaceDiff => tool::<p::WorkspaceId, s::DiffResult>(
                n,
                "Compare a started workspace's /workspace with its baseline (the seed, or an \
                 empty tree): every changed path, and one patch of the text changes.",
                ann("Diff a workspace against its baseline", true, false, true),
            ),
            Self::WorkspaceFileList => tool::<p::WorkspaceFileList, s::FileListResult>(
                n,
                "List a directory's children in /workspace, or its whole subtree with \
                 recursive.",
                ann("List workspace files", true, false, true),
            ),
            Self::WorkspaceFileRead => tool::<p::WorkspaceFileRead, s::FileReadResult>(
                n,
                "Read a regular file in /workspace as text, up to max_bytes; truncated and \
                 size_bytes tell whether there is more.",
                ann("Read a workspace file", true, false, true),
            ),
            Self::WorkspaceFileWrite => tool::<p::WorkspaceFileWrite, s::FileWriteResult>(
                n,
                "Create or replace a whole file in /workspace (parents created, atomic, mode \
                 kept). To change part of a file, workspace_patch_apply is safer.",
                ann("Write a workspace file", false, true, true),
            ),
            Self::WorkspacePatchApply => tool::<p::WorkspacePatchApply, s::PatchResult>(
                n,
                "Apply a unified diff in /workspace (modify, create, delete or rename files). All \
                 or nothing: if a hunk does not apply, nothing changes and the error names it.",
                ann("Apply a patch in a workspace", false, true, false),
            ),
            Self::WorkspaceReset => tool::<p::WorkspaceReset, s::WorkspaceInfo>(
                n,
                "Restore a workspace to its baseline: a fresh filesystem, /workspace as seeded, \
                 an empty history, the same workspace_id. Discards every change.",
                ann("Reset a workspace to its baseline", false, true, true),
            ),
            Self::WorkspaceDelete => tool::<p::WorkspaceId, s::WorkspaceDeleteResult>(
                n,
                "Delete a workspace in any state with its disk and history. Irreversible: export \
                 what is worth keeping first.",
                ann("Delete a workspace", false, true, true),
            ),
            Self::VmListEnvironments => tool::<p::NoArgs, s::EnvironmentList>(
                n,
                "List the environments and whether each is built on this host (one that is not \
                 is built on first use, which takes minutes).",
                ann("List environments", true, false, true),
            ),
            Self::VmCreate => tool::<p::VmCreate, s::VmInfo>(
                n,
                "Create a single-use VM without booting it; vm_start boots it, vm_exec runs one \
                 command and deletes it (vm_run does all three). It belongs to this server: lost \
                 when the server stops, deleted by vm_reap_expired after ttl_seconds.",
                ann("Create a VM", false, false, false),
            ),
            Self::VmStart => tool::<p::VmId, s::VmInfo>(
                n,
                "Boot a created or stopped VM (a few seconds).",
                ann("Start a VM", false, false, false),
            ),
            Self::VmExec => tool::<p::VmExec, s::VmExecResult>(
                n,
                "Run one shell command in a started VM, then delete the VM whatever the outcome. \
                 Returns exit_code, stdout and stderr (1 MiB each at most).",
                ann("Run a command in a VM, then delete it", false, true, false),
            ),
            Self::VmStop => tool::<p::VmId, s::VmInfo>(
                n,
                "Power off a started VM, keeping its disk; vm_start boots it again.",
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
                "Show a VM's network configuration (guest networking is not available in this \
                 version; reason says why).",
                ann("VM network info", true, false, true),
            ),
            Self::VmReapExpired => tool::<p::NoArgs, s::ReapResult>(
                n,
                "Delete every VM of this server whose ttl_seconds has run out.",
                ann("Delete expired VMs", false, true, true),
            ),
            Self::WorkspaceStop => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Power off a started workspace, keeping its files; its processes end and its \
                 running-time budget pauses. workspace_start boots it again.",
                ann("Stop a workspace", false, true, true),
            ),
            Self::WorkspaceStart => tool::<p::WorkspaceId, s::WorkspaceInfo>(
                n,
                "Boot a stopped workspace on its existing disk (a few seconds); everything it \
                 had written is still there.",
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
            assert!(a.read_only_hint.is_some(), "{}", d.name);
            assert_eq!(a.open_world_hint, Some(false), "{}", d.name);
            assert!(
                d.title.is_some() && a.title.is_none(),
                "{}: one title",
                d.name
            );
            assert!(d.description.as_ref().is_some_and(|s| s.len() > 40));
        }
    }

    #[test]
    fn schemas_carry_no_noise() {
        for &t in ToolId::ALL {
            let d = t.definition(Profile::WorkspaceFull);
            let text = serde_json::to_string(&d).unwrap();
            for noise in [
                "\"$schema\"",
                "\"$ref\"",
                "\"$defs\"",
                "\"format\":\"int",
                "\"format\":\"uint",
                "\"format\":\"double",
                "\"default\":null",
                "\"items\":true",
                "\"idempotentHint\":false",
                "\\n",
            ] {
                assert!(!text.contains(noise), "{}: {noise} in {text}", d.name);
            }
            let out = Value::Object(d.output_schema.as_deref().cloned().unwrap_or_default());
            assert!(!out.to_string().contains("\"required\""), "{}", d.name);
        }
        // Nested results are inlined, and an optional one is a nullable object.
        let status = ToolId::WorkspaceStatus.definition(Profile::WorkspaceCore);
        let last = &status.output_schema.as_deref().unwrap()["properties"]["last_command"];
        assert_eq!(last["type"], serde_json::json!(["object", "null"]));
        assert!(last["properties"]["exit_code"].is_object());
    }

    #[test]
    fn annotations_state_only_what_differs_from_the_defaults() {
        let hints = |t: ToolId| {
            let a = t.definition(Profile::WorkspaceFull).annotations.unwrap();
            (a.read_only_hint, a.destructive_hint, a.idempotent_hint)
        };
        assert_eq!(hints(ToolId::WorkspaceList), (Some(true), None, None));
        assert_eq!(hints(ToolId::VmRun), (Some(false), Some(false), None));
        assert_eq!(
            hints(ToolId::WorkspaceDelete),
            (Some(false), Some(true), Some(true))
        );
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
