//! The MCP tool table and its mapping onto the core's operation catalogue
//! ([`pyro_core::ops`]).
//!
//! A tool is one [`Row`]: its name (which names an operation of the catalogue), profile tier,
//! title, annotations and description. Everything else comes from the catalogue: the input
//! schema is the operation's request type, the output schema its result type, and a call
//! parses its arguments into the request and runs it with [`Pyro::call`]. There is no
//! per-tool argument or result type here.
//!
//! **Adding a tool**: add the operation to the catalogue (`pyro_core::ops`), then a row in
//! [`TOOLS`] at the place of the reference's order. Accept the new `tools/list` snapshots
//! (`tests/tools_list.rs`): their diff is what a model will read, and `workspace-core` must
//! stay under its byte budget.

use std::sync::Arc;

use pyro_core::Pyro;
use pyro_core::ops::{Ctx, Op, OpInfo};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::error::ToolError;
use crate::profile::{Profile, Tier};

/// Request fields that the server decides, not the client: the VMM is the operator's choice
/// (`pyro mcp serve --backend`).
pub const SERVER_FIELDS: &[&str] = &["backend"];

/// Exec fields a model expresses in the command itself (`cd dir && …`, `VAR=value cmd`, a
/// heredoc) or that the result budget bounds (`budget.rs`): left out so that every
/// `tools/list` stays small. The SDK and the CLI offer them.
pub const SHELL_FIELDS: &[&str] = &["cwd", "env", "stdin", "max_output_bytes"];

/// Fields only `workspace-full` offers, as in the reference (its core profile has no network
/// policy), and the allowlists that narrow a network (which keep the smaller profiles'
/// `tools/list` small: there, `vm_run`'s `network` means plain `egress`).
pub const FULL_ONLY_FIELDS: &[&str] = &[
    "network_policy",
    "allow_hosts",
    "allow_cidrs",
    "secrets",
    "secret_env",
];

/// Fields the SDK and JSON-RPC offer beside the contract's flat ones, left out of MCP
/// schemas (`service_start`'s `readiness` object: MCP clients use `ready_*`).
pub const SDK_ONLY_FIELDS: &[&str] = &["readiness"];

/// The request fields a client of `profile` neither sees in an input schema of `tool` nor
/// may send. Shells and services keep their `cwd` (a PTY or a daemon has no command line to
/// put a `cd` in).
pub fn hidden_fields(profile: Profile, tool: &str) -> impl Iterator<Item = &'static str> {
    let full_only: &[&str] = if profile.includes(Tier::WorkspaceFull) {
        &[]
    } else {
        FULL_ONLY_FIELDS
    };
    let shell: &[&str] = if tool.starts_with("shell_") || tool.starts_with("service_") {
        &[]
    } else {
        SHELL_FIELDS
    };
    SERVER_FIELDS
        .iter()
        .chain(SDK_ONLY_FIELDS)
        .chain(shell)
        .chain(full_only)
        .copied()
}

/// One tool: what the table says about it besides its operation.
#[derive(Debug)]
pub struct Row {
    /// Wire name; the catalogue operation with this tool name runs it.
    pub name: &'static str,
    /// The smallest profile that offers it.
    pub tier: Tier,
    /// Whether a call usually takes seconds or more (booting, running a command): such calls
    /// announce themselves at once on the progress channel.
    pub long: bool,
    /// Display title.
    pub title: &'static str,
    /// `readOnlyHint`.
    pub read_only: bool,
    /// `destructiveHint` (written only for tools that are not read-only).
    pub destructive: bool,
    /// `idempotentHint` (written only when true).
    pub idempotent: bool,
    /// What the tool is for and what the schemas cannot say: each fact once, in the tool it
    /// belongs to. Defaults, ranges and field meanings live in the schemas, and what every
    /// tool shares (Debian 12 guests, no network, the workspace loop) in the profile's
    /// `instructions`.
    pub description: &'static str,
}

/// Every tool pyro serves, in the reference's order (`tools/list` keeps it).
pub const TOOLS: &[Row] = &[
    Row {
        name: "vm_run",
        tier: Tier::VmRun,
        long: true,
        title: "Run a command in a fresh sandbox",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Run one shell command in a fresh microVM that is destroyed afterwards: nothing persists, so chain steps with && or use a workspace. Returns exit_code, stdout and stderr (long output is cut to fit; hint says so).",
    },
    Row {
        name: "workspace_create",
        tier: Tier::WorkspaceCore,
        long: true,
        title: "Create a workspace",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Create and boot a persistent sandbox (files persist until workspace_delete). seed_path fills /workspace from the host and is the baseline for workspace_diff and workspace_reset. First use of an environment builds it (minutes).",
    },
    Row {
        name: "workspace_list",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "List workspaces",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List workspaces, most recently active first (to find one again by name or label).",
    },
    Row {
        name: "workspace_update",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Update a workspace",
        read_only: false,
        destructive: false,
        idempotent: true,
        description: "Rename or relabel a workspace, or set its running time left.",
    },
    Row {
        name: "workspace_exec",
        tier: Tier::WorkspaceCore,
        long: true,
        title: "Run a command in a workspace",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "Run one shell command (no stdin) in a started workspace; its effects persist. Returns exit_code, stdout and stderr (cut to fit: next continues); calls may overlap.",
    },
    Row {
        name: "workspace_sync_push",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Push host files into a workspace",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Copy a host directory or archive into a started workspace: same-named files are overwritten, nothing is deleted, the baseline is unchanged.",
    },
    Row {
        name: "workspace_status",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Workspace status",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Show one workspace: state, running time left, seed, labels, last command, last_error.",
    },
    Row {
        name: "workspace_logs",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Workspace command history",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Command history, oldest first, with each command's output (64 KiB per stream at most); offset = total - limit pages to the newest.",
    },
    Row {
        name: "workspace_export",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Export from a workspace to the host",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Copy a file, symlink or directory from a started workspace to the host.",
    },
    Row {
        name: "workspace_diff",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Diff a workspace against its baseline",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Compare /workspace with its baseline (the seed, or an empty tree): every changed path, and one patch of the text changes.",
    },
    Row {
        name: "workspace_file_list",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "List workspace files",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List a directory's children in /workspace, or its whole subtree with recursive.",
    },
    Row {
        name: "workspace_file_read",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Read a workspace file",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Read a regular file in /workspace as text, from offset up to max_bytes; next continues a truncated read.",
    },
    Row {
        name: "workspace_file_write",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Write a workspace file",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Create or replace a whole file in /workspace (parents created, atomic, mode kept); for part of a file, workspace_patch_apply is safer.",
    },
    Row {
        name: "workspace_patch_apply",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Apply a patch in a workspace",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "Apply a unified diff in /workspace (modify, create, delete, rename). All or nothing: a hunk that does not apply changes nothing and the error names it.",
    },
    Row {
        name: "workspace_summary",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Summarize a workspace",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "What happened since the last reset, in one bounded result: recent commands with exit codes, file writes, patches, syncs, exports, shells, services, and the current changes.",
    },
    Row {
        name: "workspace_reset",
        tier: Tier::WorkspaceCore,
        long: true,
        title: "Reset a workspace to its baseline or a snapshot",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Restore a workspace to its baseline (fresh filesystem, /workspace as seeded) or a named snapshot (with its processes if taken while started). Empty history, same workspace_id.",
    },
    Row {
        name: "workspace_delete",
        tier: Tier::WorkspaceCore,
        long: false,
        title: "Delete a workspace",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Delete a workspace in any state with its disk and history; irreversible.",
    },
    Row {
        name: "vm_list_environments",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "List environments",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List the environments and whether each is built on this host (one that is not is built on first use, which takes minutes).",
    },
    Row {
        name: "vm_create",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Create a VM",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Create a single-use VM without booting it; vm_start boots it, vm_exec runs one command and deletes it (vm_run does all three). It belongs to this server: lost when the server stops, deleted by vm_reap_expired after ttl_seconds.",
    },
    Row {
        name: "vm_start",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Start a VM",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Boot a created or stopped VM (a few seconds).",
    },
    Row {
        name: "vm_exec",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Run a command in a VM, then delete it",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "Run one shell command in a started VM, then delete the VM whatever the outcome. Returns exit_code, stdout and stderr.",
    },
    Row {
        name: "vm_stop",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Stop a VM",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Power off a started VM, keeping its disk; vm_start boots it again.",
    },
    Row {
        name: "vm_delete",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Delete a VM",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Delete a VM in any state and free everything it used.",
    },
    Row {
        name: "vm_status",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "VM status",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Show one VM: state, environment, resources, creation and expiry times.",
    },
    Row {
        name: "vm_network_info",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "VM network info",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Show a VM's network: addresses, MAC, allowlist and refusals, or why it has none.",
    },
    Row {
        name: "vm_reap_expired",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Delete expired VMs",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Delete every VM of this server whose ttl_seconds has run out.",
    },
    Row {
        name: "workspace_stop",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Stop a workspace",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Power off a started workspace, keeping its files; its processes end and its running-time budget pauses. workspace_start boots it again.",
    },
    Row {
        name: "workspace_start",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Start a workspace",
        read_only: false,
        destructive: false,
        idempotent: true,
        description: "Boot a stopped workspace on its existing disk (a few seconds); everything it had written is still there.",
    },
    Row {
        name: "workspace_disk_export",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Export a stopped workspace's disk",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Copy a stopped workspace's writable disk (raw ext4, sparse: the overlay's upper layer, what the workspace wrote, under /upper) to a new host path.",
    },
    Row {
        name: "workspace_disk_list",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "List a stopped workspace's disk",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List a stopped workspace's files without booting it, as the guest sees them: relative paths in /workspace, absolute ones anywhere. Special files are listed with file_type.",
    },
    Row {
        name: "workspace_disk_read",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Read a file on a stopped workspace's disk",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Read a regular file of a stopped workspace without booting it, up to max_bytes, as text (secrets redacted).",
    },
    Row {
        name: "snapshot_create",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Snapshot a workspace",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Save a named snapshot. Started: the whole machine (disk, memory, processes, shells, services; the guest pauses briefly, pause_ms). Stopped: the disk. workspace_reset with snapshot=NAME goes back to it; workspace_fork copies it.",
    },
    Row {
        name: "snapshot_list",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "List a workspace's snapshots",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List the baseline and the named snapshots, with has_memory and size_bytes on disk.",
    },
    Row {
        name: "snapshot_delete",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Delete a snapshot",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "Delete a named snapshot (not the baseline).",
    },
    Row {
        name: "shell_open",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Open a shell",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Open an interactive PTY shell (bash) in a started workspace; it keeps running between calls until shell_close or the workspace stops. Returns shell_id.",
    },
    Row {
        name: "shell_read",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Read a shell",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Read a shell's output from cursor; pass next_cursor to the next read (nothing is skipped). plain=true renders the terminal as text. truncated: more is waiting.",
    },
    Row {
        name: "shell_write",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Type into a shell",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Send input to a shell (a newline is appended unless append_newline=false); read the effect with shell_read.",
    },
    Row {
        name: "shell_signal",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Signal a shell",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "Send a signal to the shell's foreground processes (INT is Ctrl-C).",
    },
    Row {
        name: "shell_close",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Close a shell",
        read_only: false,
        destructive: true,
        idempotent: false,
        description: "End a shell and everything it runs (HUP, then KILL after 5 s).",
    },
    Row {
        name: "service_start",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Start a service",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Start a named background process (a server, a watcher) and wait until its readiness probe passes. A service that exits or is not ready in time is an error with its exit code and last output.",
    },
    Row {
        name: "service_list",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "List services",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List a workspace's services with their states and published ports.",
    },
    Row {
        name: "service_status",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Service status",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Show one service: state, exit code, why it stopped, published ports.",
    },
    Row {
        name: "service_logs",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Service logs",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "Show a service's stdout and stderr (the last tail_lines lines of each, or all).",
    },
    Row {
        name: "service_stop",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Stop a service",
        read_only: false,
        destructive: true,
        idempotent: true,
        description: "Stop a service (TERM, then KILL after 5 s) and release its ports.",
    },
    Row {
        name: "shell_list",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "List shells",
        read_only: true,
        destructive: false,
        idempotent: true,
        description: "List a workspace's open shells with their states and sizes.",
    },
    Row {
        name: "shell_resize",
        tier: Tier::WorkspaceFull,
        long: false,
        title: "Resize a shell",
        read_only: false,
        destructive: false,
        idempotent: true,
        description: "Change a shell's terminal size (full-screen programs redraw).",
    },
    Row {
        name: "workspace_fork",
        tier: Tier::WorkspaceFull,
        long: true,
        title: "Fork a workspace",
        read_only: false,
        destructive: false,
        idempotent: false,
        description: "Make count new workspaces from a named snapshot, or from the workspace as it is now. Each gets its own disk, memory, machine id, entropy and network; processes, shells and services come along when the snapshot has memory. Secrets only with with_secrets.",
    },
];

/// A tool of [`TOOLS`].
#[derive(Clone, Copy, Debug)]
pub struct ToolId(&'static Row);

impl PartialEq for ToolId {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ToolId {}

impl ToolId {
    /// Every tool, in table order.
    pub fn all() -> impl Iterator<Item = ToolId> {
        TOOLS.iter().map(ToolId)
    }

    /// The tool's wire name.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The tool with this wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|t| t.name() == name)
    }

    /// The smallest profile tier that offers the tool.
    pub fn tier(self) -> Tier {
        self.0.tier
    }

    /// See [`Row::long`].
    pub fn is_long(self) -> bool {
        self.0.long
    }

    /// Whether a cancelled call may be abandoned at its next await: tools that only look,
    /// and those that run a command in an existing sandbox (dropping the call's agent
    /// stream kills the command's process tree; nothing else is half done). `vm_run` stops
    /// its command itself and deletes its VM (it watches the call's `Ctx::cancelled`).
    /// Every other tool changes lifecycle state (a workspace being created, reset,
    /// snapshotted or forked, a guest paused for a save, a file being replaced) and runs to
    /// its end when cancelled: its answer is dropped, its work is whole.
    pub fn is_cancellable(self) -> bool {
        self.0.read_only || matches!(self.name(), "workspace_exec" | "vm_exec")
    }

    /// The tools a profile offers, in table order.
    pub fn for_profile(profile: Profile) -> Vec<ToolId> {
        Self::all().filter(|t| profile.includes(t.tier())).collect()
    }

    /// The catalogue operation behind the tool.
    pub fn op(self) -> Option<OpInfo> {
        OpInfo::by_tool(self.0.name)
    }

    fn annotations(self) -> ToolAnnotations {
        let r = self.0;
        let mut a = ToolAnnotations::new()
            .read_only(r.read_only)
            .open_world(false);
        if !r.read_only {
            a = a.destructive(r.destructive);
            if r.idempotent {
                a = a.idempotent(true);
            }
        }
        a
    }

    /// The definition `tools/list` advertises under `profile`.
    pub fn definition(self, profile: Profile) -> Tool {
        let (input, output) = match self.op() {
            Some(op) => (
                input_schema(&op, profile, self.0.name),
                output_schema(&op, self.0.name),
            ),
            None => {
                // Only reachable if a row names no operation (a unit test guards).
                tracing::error!("tool {} has no operation in the catalogue", self.name());
                (JsonObject::new(), JsonObject::new())
            }
        };
        let mut t = Tool::new(self.0.name, self.0.description, Arc::new(input))
            .with_raw_output_schema(Arc::new(output))
            .with_annotations(self.annotations());
        t.title = Some(self.0.title.into());
        t
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

/// What both directions drop: the `$schema` URI, numeric formats (`int64`, `uint32`:
/// noise to a model), descriptions written for Rust readers (with intra-doc links), and the
/// descriptions of `anyOf`/`oneOf` members (the field's own description covers them). A
/// `oneOf` of documented constants (a Rust enum) becomes a plain `enum`. Newlines in
/// descriptions become spaces.
fn trim_common(m: &mut JsonObject) {
    m.remove("$schema");
    if m.get("format").is_some_and(is_numeric_format) {
        m.remove("format");
    }
    if let Some(Value::String(d)) = m.get_mut("description") {
        if d.contains("[`") {
            m.remove("description");
        } else if d.contains('\n') {
            *d = d.replace('\n', " ");
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(members)) = m.get_mut(key) {
            for member in members.iter_mut() {
                if let Value::Object(mm) = member {
                    mm.remove("description");
                }
            }
        }
    }
    let consts: Option<Vec<Value>> = match m.get("oneOf") {
        Some(Value::Array(members)) => members
            .iter()
            .map(|x| x.get("const").cloned())
            .collect::<Option<Vec<Value>>>(),
        _ => None,
    };
    if let Some(values) = consts {
        m.remove("oneOf");
        m.insert("type".into(), Value::from("string"));
        m.insert("enum".into(), Value::Array(values));
    }
}

/// Input schemas: [`trim_common`], `"default": null` and the `null` of an optional
/// argument's type (an optional argument is left out to leave it unset; `required` already
/// says which are optional, and the core still takes an explicit `null`).
fn trim_input_schema(v: &mut Value) {
    each_schema(v, &mut |m| {
        trim_common(m);
        if m.get("default").is_some_and(Value::is_null) {
            m.remove("default");
        }
        if let Some(Value::Array(types)) = m.get("type")
            && types.len() == 2
            && types.contains(&Value::from("null"))
            && let Some(t) = types.iter().find(|t| *t != &Value::from("null")).cloned()
        {
            m.insert("type".into(), t);
        }
    });
}

/// Output schemas say what each field is: [`trim_common`], and no `required` lists (the
/// server always writes every field but the ones marked optional), no `minimum`/`maximum`
/// that only restate an integer's width (`u8` is at most 255), and no description on a
/// nested object (the type's Rust doc; the field that holds it says what it is). Boolean
/// subschemas, which strict checkers (the MCP Inspector's `--strict`) refuse, go: `items:
/// true` (any item) becomes `items: {}`, and `additionalProperties: true` (the default) is
/// dropped.
fn trim_output_schema(v: &mut Value) {
    each_schema(v, &mut |m| {
        trim_common(m);
        for k in ["required", "minimum", "maximum"] {
            m.remove(k);
        }
        if m.get("items") == Some(&Value::Bool(true)) {
            m.insert("items".into(), Value::Object(JsonObject::new()));
        }
        if m.get("additionalProperties") == Some(&Value::Bool(true)) {
            m.remove("additionalProperties");
        }
        if m.contains_key("properties") {
            m.remove("description");
        }
    });
}

/// Schemas with every subschema inlined (each nested type appears once per tool, so `$defs`
/// and `$ref`s would only add bytes) and no `$schema` URI.
fn settings() -> SchemaSettings {
    let mut s = SchemaSettings::draft2020_12();
    s.inline_subschemas = true;
    s.meta_schema = None;
    s
}

/// The advertised input schema of `op`: what its request accepts, less the fields an MCP
/// client of `profile` does not set ([`hidden_fields`]), without the root's title and
/// description.
fn input_schema(op: &OpInfo, profile: Profile, tool: &str) -> JsonObject {
    let mut v = op.input_schema(settings()).to_value();
    trim_input_schema(&mut v);
    match v {
        Value::Object(mut m) => {
            m.remove("title");
            m.remove("description");
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for f in hidden_fields(profile, tool) {
                    props.remove(f);
                }
                // Byte counts a result must hold stop at the hard maximum (`budget.rs`).
                for (name, p) in props.iter_mut() {
                    if crate::budget::capped_arg(tool, name)
                        && let Value::Object(p) = p
                    {
                        let max = p.get("maximum").and_then(Value::as_u64).unwrap_or(u64::MAX);
                        let hard = crate::budget::HARD_MAX_BYTES as u64;
                        p.insert("maximum".into(), Value::from(max.min(hard)));
                    }
                }
            }
            m
        }
        _ => JsonObject::new(),
    }
}

/// The advertised output schema of `op` as `tool`'s: what serializing it writes (and what
/// the result budget adds), with every subschema
/// inlined (each nested struct appears once per result type, so `$defs` and `$ref`s would
/// only add bytes), without the root's title and description.
fn output_schema(op: &OpInfo, tool: &str) -> JsonObject {
    let mut v = op.output_schema(settings()).to_value();
    trim_output_schema(&mut v);
    match v {
        Value::Object(mut m) => {
            m.remove("title");
            m.remove("description");
            // What a result cut to fit its size gains (`budget.rs`).
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for (name, ty) in crate::budget::added_fields(tool) {
                    props.insert((*name).into(), serde_json::json!({ "type": ty }));
                }
            }
            m
        }
        _ => JsonObject::new(),
    }
}

/// Refuses an argument over a `maxLength` (characters) or `maxItems` its tool's input
/// `schema` advertises, or a byte count over the hard maximum of a result
/// ([`crate::budget::HARD_MAX_BYTES`], its `maximum`), before anything is parsed or echoed: the limits a client reads are
/// the ones enforced, and an oversized value is `invalid_input` naming its field. The core
/// checks the same limits for every face; this answers first, without copying the value.
pub(crate) fn check_limits(
    tool: ToolId,
    schema: &JsonObject,
    args: &JsonObject,
) -> Result<(), ToolError> {
    let Some(Value::Object(props)) = schema.get("properties") else {
        return Ok(());
    };
    for (field, value) in args {
        let Some(Value::Object(s)) = props.get(field) else {
            continue;
        };
        // The field's own schema, or the member of its `anyOf` of the value's type.
        let members: Vec<&JsonObject> = match s.get("anyOf") {
            Some(Value::Array(any)) => any.iter().filter_map(Value::as_object).collect(),
            _ => vec![s],
        };
        if crate::budget::capped_arg(tool.name(), field)
            && let (Some(n), Some(max)) = (value.as_u64(), s.get("maximum").and_then(Value::as_u64))
            && n > max
        {
            return Err(ToolError::invalid(format!(
                "invalid {field}: {n}, over the maximum of {max} bytes a result can hold \
                 (see {}'s input schema; page with offset instead)",
                tool.name()
            )));
        }
        for m in members {
            let limit = |key: &str| m.get(key).and_then(Value::as_u64);
            let (n, max, unit) = match value {
                Value::String(text) => match limit("maxLength") {
                    Some(max) => (text.chars().count() as u64, max, "characters"),
                    None => continue,
                },
                Value::Array(items) => match limit("maxItems") {
                    Some(max) => (items.len() as u64, max, "items"),
                    None => continue,
                },
                _ => continue,
            };
            if n > max {
                return Err(ToolError::invalid(format!(
                    "invalid {field}: {n} {unit}, over the limit of {max} \
                     (see {}'s input schema)",
                    tool.name()
                )));
            }
        }
    }
    Ok(())
}

/// Runs one tool: its arguments parsed as its operation's request, run by the core, the
/// result the core's value as JSON.
pub(crate) async fn call(
    tool: ToolId,
    profile: Profile,
    args: JsonObject,
    pyro: &Pyro,
    cx: &Ctx,
) -> Result<Value, ToolError> {
    let invalid = |why: String| {
        ToolError::invalid(format!(
            "invalid arguments for {}: {why} (see the tool's input schema)",
            tool.name()
        ))
    };
    if let Some(f) = hidden_fields(profile, tool.name()).find(|f| args.contains_key(*f)) {
        return Err(invalid(format!("unknown field `{f}`")));
    }
    let op = tool
        .op()
        .ok_or_else(|| invalid("the tool has no operation".into()))?;
    let op = Op::parse(op.method, Value::Object(args)).map_err(|e| match e {
        pyro_core::ops::ParseError::Params { message, .. } => invalid(message),
        other => invalid(other.to_string()),
    })?;
    Ok(pyro.call(op, cx).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolId {
        ToolId::from_name(name).unwrap()
    }

    #[test]
    fn every_row_names_an_operation_and_every_tool_operation_has_a_row() {
        for t in ToolId::all() {
            assert!(t.op().is_some(), "{} has no operation", t.name());
        }
        for op in Op::catalogue() {
            if let Some(name) = op.tool {
                assert!(ToolId::from_name(name).is_some(), "no row for {name}");
            }
        }
    }

    #[test]
    fn server_fields_are_neither_advertised_nor_accepted() {
        let d = tool("vm_run").definition(Profile::WorkspaceFull);
        assert!(d.input_schema["properties"].get("backend").is_none());
        let args: JsonObject = serde_json::from_value(serde_json::json!(
            {"environment": "debian:12", "command": "true", "backend": "qemu"}
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut o = pyro_core::PyroOptions::from_env().unwrap();
        o.state_dir = dir.path().join("state");
        o.cache_dir = dir.path().join("cache");
        let pyro = Pyro::new(o).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(call(
                tool("vm_run"),
                Profile::WorkspaceFull,
                args,
                &pyro,
                &Ctx::default(),
            ))
            .unwrap_err();
        assert_eq!(e.kind, "invalid_input");
        assert!(
            e.message.contains("unknown field `backend`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn byte_counts_over_the_hard_maximum_are_refused_naming_it() {
        let hard = crate::budget::HARD_MAX_BYTES as u64;
        for name in [
            "workspace_file_read",
            "workspace_logs",
            "workspace_disk_read",
        ] {
            let t = tool(name);
            let d = t.definition(Profile::WorkspaceFull);
            assert_eq!(
                d.input_schema["properties"]["max_bytes"]["maximum"], hard,
                "{name}"
            );
            let args = |n: u64| -> JsonObject {
                serde_json::from_value(serde_json::json!({"workspace_id": "w", "max_bytes": n}))
                    .unwrap()
            };
            check_limits(t, &d.input_schema, &args(hard)).unwrap();
            let e = check_limits(t, &d.input_schema, &args(hard + 1)).unwrap_err();
            assert_eq!(e.kind, "invalid_input");
            assert!(
                e.message.contains("max_bytes") && e.message.contains(&hard.to_string()),
                "{}",
                e.message
            );
        }
        // Other maxima stay the core's to check, with its own message.
        let d = tool("vm_run").definition(Profile::WorkspaceFull);
        let args: JsonObject =
            serde_json::from_value(serde_json::json!({"vcpu_count": 99})).unwrap();
        check_limits(tool("vm_run"), &d.input_schema, &args).unwrap();
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for t in ToolId::all() {
            assert!(seen.insert(t.name()), "duplicate {}", t.name());
            assert_eq!(ToolId::from_name(t.name()), Some(t));
        }
        assert_eq!(ToolId::from_name("shell_spawn"), None);
    }

    #[test]
    fn every_definition_has_object_schemas_and_annotations() {
        for t in ToolId::all() {
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
        for t in ToolId::all() {
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
        let status = tool("workspace_status").definition(Profile::WorkspaceCore);
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
        assert_eq!(hints(tool("workspace_list")), (Some(true), None, None));
        assert_eq!(hints(tool("vm_run")), (Some(false), Some(false), None));
        assert_eq!(
            hints(tool("workspace_delete")),
            (Some(false), Some(true), Some(true))
        );
    }

    #[test]
    fn read_only_tools_are_exactly_the_inspecting_ones() {
        let ro: Vec<&str> = ToolId::all()
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
                "workspace_summary",
                "vm_list_environments",
                "vm_status",
                "vm_network_info",
                "workspace_disk_list",
                "workspace_disk_read",
                "snapshot_list",
                "shell_read",
                "service_list",
                "service_status",
                "service_logs",
                "shell_list",
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
            "snapshot_delete",
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
