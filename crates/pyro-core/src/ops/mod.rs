//! The operation catalogue: every operation a face offers, once, as a typed request.
//!
//! Each operation is a request type implementing [`Operation`]: its SDK/JSON-RPC method
//! name, its MCP tool name (if it is a tool), its result type, and how it runs on [`Pyro`].
//! Requests derive `Deserialize` with `deny_unknown_fields` and `JsonSchema`; their defaults
//! are the core's constants ([`defaults`]) and their `///` docs are the schema
//! descriptions. [`Op`] is the closed set of them, and [`Pyro::call`] runs one.
//!
//! The faces only translate:
//! - JSON-RPC (`pyro rpc`, the Python SDK's transport) parses `method` + `params` straight
//!   into an [`Op`] with [`Op::parse`];
//! - the MCP server keeps a table of tool names, descriptions, annotations and profiles,
//!   builds each tool's input and output schema from [`OpInfo`], and parses arguments the
//!   same way;
//! - the CLI converts its clap structs into these requests with `From`;
//! - the Python client's methods and keyword defaults are checked against
//!   `pyro catalogue --json` (the [`Op::catalogue`] with schemas).
//!
//! **Adding an operation**: a request type with its `Operation` impl (here), the core
//! method it calls, one line in the [`catalogue!`] invocation below, a CLI subcommand and
//! a Python method; for an MCP tool, a row in the MCP table.
//!
//! Decisions taken here once for every face (they used to differ between faces):
//! - `allow_host_compat: true` is refused everywhere with `invalid_input`: pyro never runs
//!   a command on the host, and saying yes to a request for it would be a lie.
//! - `logs` pages default to [`defaults::LOGS_LIMIT`] entries and refuse `limit = 0`.
//! - `reset` takes `baseline` or a named snapshot; an unknown name is `not_found`.
//! - A command is a string (run by `/bin/sh -c`) or an array (argv, run directly) on every
//!   face, MCP included.
//! - Host paths resolve through the call's [`PathPolicy`] ([`paths`]).

pub mod paths;
mod procs;
mod thread;
mod vm;
mod workspace;

use std::future::Future;
use std::sync::Arc;

use pyro_proto::api::Output;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use paths::{HostPathParam, HostRoots, PathPolicy, PathRefused};
pub use procs::*;
pub use thread::on_own_thread;
pub use vm::*;
pub use workspace::*;

use crate::{CoreError, ProgressFn, Pyro, Result};

/// Defaults of request fields, shared by every face (the schemas advertise them).
pub mod defaults {
    /// vCPUs of a new sandbox.
    pub const VCPU_COUNT: i64 = 1;
    /// Guest memory of a new sandbox, MiB.
    pub const MEM_MIB: i64 = 1024;
    /// Lifetime of a one-shot VM, seconds.
    pub const VM_TTL_SECONDS: i64 = 600;
    /// Seconds before a command's process tree is killed.
    pub const TIMEOUT_SECONDS: i64 = 30;
    /// Entries in one `logs` page.
    pub const LOGS_LIMIT: u64 = 20;
    /// Bytes of each stream per `logs` entry.
    pub const LOG_ENTRY_BYTES: u64 = 64 * 1024;
    /// Bytes one `file read` returns.
    pub const READ_BYTES: i64 = 64 * 1024;
    /// The snapshot `reset` restores.
    pub const RESET_SNAPSHOT: &str = "baseline";
    /// A workspace's network policy.
    pub const NETWORK_POLICY: &str = "off";

    pub(crate) fn vcpu_count() -> i64 {
        VCPU_COUNT
    }
    pub(crate) fn mem_mib() -> i64 {
        MEM_MIB
    }
    pub(crate) fn vm_ttl_seconds() -> i64 {
        VM_TTL_SECONDS
    }
    pub(crate) fn workspace_ttl_seconds() -> i64 {
        crate::workspace::DEFAULT_WORKSPACE_TTL
    }
    pub(crate) fn timeout_seconds() -> i64 {
        TIMEOUT_SECONDS
    }
    pub(crate) fn logs_limit() -> u64 {
        LOGS_LIMIT
    }
    pub(crate) fn log_entry_bytes() -> u64 {
        LOG_ENTRY_BYTES
    }
    pub(crate) fn read_bytes() -> i64 {
        READ_BYTES
    }
    pub(crate) fn workspace_root() -> String {
        crate::workspace::WORKSPACE_ROOT.to_string()
    }
    pub(crate) fn network_policy() -> String {
        NETWORK_POLICY.to_string()
    }
    pub(crate) fn reset_snapshot() -> String {
        RESET_SNAPSHOT.to_string()
    }
    /// Workspaces one fork makes.
    pub const FORK_COUNT: i64 = 1;
    pub(crate) fn fork_count() -> i64 {
        FORK_COUNT
    }
    /// Terminal columns of a new shell.
    pub const SHELL_COLS: i64 = 120;
    /// Terminal rows of a new shell.
    pub const SHELL_ROWS: i64 = 30;
    /// Characters one shell read returns.
    pub const SHELL_MAX_CHARS: i64 = 65_536;
    /// Seconds a service has to become ready.
    pub const READY_TIMEOUT_SECONDS: i64 = 30;
    /// Pause between readiness probes, ms.
    pub const READY_INTERVAL_MS: i64 = 500;
    /// Lines of each stream `service logs` shows.
    pub const TAIL_LINES: i64 = 200;
    pub(crate) fn shell_cols() -> i64 {
        SHELL_COLS
    }
    pub(crate) fn shell_rows() -> i64 {
        SHELL_ROWS
    }
    pub(crate) fn shell_max_chars() -> i64 {
        SHELL_MAX_CHARS
    }
    pub(crate) fn shell_signal() -> String {
        "INT".to_string()
    }
    pub(crate) fn yes() -> bool {
        true
    }
    pub(crate) fn ready_timeout_seconds() -> i64 {
        READY_TIMEOUT_SECONDS
    }
    pub(crate) fn ready_interval_ms() -> i64 {
        READY_INTERVAL_MS
    }
    pub(crate) fn tail_lines() -> i64 {
        TAIL_LINES
    }
}

/// One operation of the catalogue.
pub trait Operation: DeserializeOwned + JsonSchema + Send + Sized + 'static {
    /// The SDK and JSON-RPC method name (`create_workspace`).
    const METHOD: &'static str;
    /// The MCP tool name (`workspace_create`), for operations served as tools.
    const TOOL: Option<&'static str>;
    /// What it returns.
    type Output: Serialize + JsonSchema + Send;
    /// Runs it.
    fn run(self, pyro: &Pyro, cx: &Ctx) -> impl Future<Output = Result<Self::Output>> + Send;
}

/// Where a command's output goes while it runs.
#[derive(Clone)]
pub struct LiveOutput {
    /// Receives every chunk as it arrives.
    pub sink: Arc<dyn Fn(&Output) + Send + Sync>,
    /// Whether the guest should send all output, even beyond the result's limit (a
    /// terminal shows everything; the result still keeps only the limit).
    pub all: bool,
}

impl std::fmt::Debug for LiveOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOutput")
            .field("all", &self.all)
            .finish_non_exhaustive()
    }
}

/// What a call needs besides its request.
#[derive(Clone)]
pub struct Ctx {
    /// Progress of long steps (environment builds, boots).
    pub progress: ProgressFn,
    /// How host paths in the request resolve.
    pub paths: PathPolicy,
    /// The live output of a command, if the caller streams it.
    pub output: Option<LiveOutput>,
    /// The server's project: what a `create_workspace` without `seed_path` is seeded from
    /// (`pyro mcp serve --project-path`, `--repo-url`).
    pub project: Option<Arc<crate::project::ProjectSource>>,
    /// Turns true when the caller cancels the call; an operation that can stop cleanly in
    /// the middle watches it (`run_in_vm`: its command is killed and its VM deleted).
    pub cancelled: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for Ctx {
    fn default() -> Self {
        Self {
            progress: crate::no_progress(),
            paths: PathPolicy::Local,
            output: None,
            project: None,
            cancelled: None,
        }
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("paths", &self.paths)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Local paths, this progress sink, no live output.
    pub fn with_progress(progress: ProgressFn) -> Self {
        Self {
            progress,
            ..Self::default()
        }
    }
}

/// A request that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// No operation has this method name.
    #[error("unknown method `{}`", crate::error::one_line(.0))]
    UnknownMethod(String),
    /// The parameters do not fit the request type.
    #[error("invalid params for {method}: {message}")]
    Params {
        /// The method.
        method: &'static str,
        /// serde's complaint (names the field).
        message: String,
    },
}

/// The name and schemas of one operation.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// SDK / JSON-RPC method.
    pub method: &'static str,
    /// MCP tool, if served as one.
    pub tool: Option<&'static str>,
    input: fn(SchemaSettings) -> Schema,
    output: fn(SchemaSettings) -> Schema,
}

impl OpInfo {
    fn of<O: Operation>() -> Self {
        Self {
            method: O::METHOD,
            tool: O::TOOL,
            input: |s| {
                s.for_deserialize()
                    .into_generator()
                    .into_root_schema_for::<O>()
            },
            output: |s| {
                s.for_serialize()
                    .into_generator()
                    .into_root_schema_for::<O::Output>()
            },
        }
    }

    /// The request's schema (what deserializing accepts, defaults included).
    pub fn input_schema(&self, settings: SchemaSettings) -> Schema {
        (self.input)(settings)
    }

    /// The result's schema (what serializing writes).
    pub fn output_schema(&self, settings: SchemaSettings) -> Schema {
        (self.output)(settings)
    }

    /// The operation with this MCP tool name.
    pub fn by_tool(tool: &str) -> Option<Self> {
        Op::catalogue().into_iter().find(|o| o.tool == Some(tool))
    }
}

fn from_params<O: Operation>(params: Value) -> std::result::Result<O, ParseError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    serde_json::from_value(params).map_err(|e| ParseError::Params {
        method: O::METHOD,
        message: crate::error::one_line(&e.to_string()).to_string(),
    })
}

fn encode<T: Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| CoreError::Invalid {
        field: "result",
        reason: format!("cannot encode the result: {e}"),
    })
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty), )*) => {
        /// Every operation, with its request.
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum Op {
            $( $(#[$doc])* $variant($ty), )*
        }

        impl Op {
            /// Every operation's names and schemas, in catalogue order.
            pub fn catalogue() -> Vec<OpInfo> {
                vec![$( OpInfo::of::<$ty>(), )*]
            }

            /// Parses `params` (an object; `null` means `{}`) as the request of `method`.
            pub fn parse(method: &str, params: Value) -> std::result::Result<Op, ParseError> {
                $(
                    if method == <$ty as Operation>::METHOD {
                        return from_params::<$ty>(params).map(Op::$variant);
                    }
                )*
                Err(ParseError::UnknownMethod(method.to_string()))
            }

            /// The operation's method name.
            pub fn method(&self) -> &'static str {
                match self {
                    $( Op::$variant(_) => <$ty as Operation>::METHOD, )*
                }
            }

            async fn dispatch(self, pyro: &Pyro, cx: &Ctx) -> Result<Value> {
                match self {
                    $( Op::$variant(r) => encode(r.run(pyro, cx).await?), )*
                }
            }
        }
    };
}

catalogue! {
    /// `ping`
    Ping(Ping),
    /// `run_in_vm` / `vm_run`
    RunInVm(RunInVm),
    /// `list_environments` / `vm_list_environments`
    ListEnvironments(ListEnvironments),
    /// `pull_environment`
    PullEnvironment(PullEnvironment),
    /// `inspect_environment`
    InspectEnvironment(InspectEnvironment),
    /// `prune_environments`
    PruneEnvironments(PruneEnvironments),
    /// `create_vm` / `vm_create`
    CreateVm(CreateVmRequest),
    /// `start_vm` / `vm_start`
    StartVm(StartVm),
    /// `exec_vm` / `vm_exec`
    ExecVm(ExecVm),
    /// `stop_vm` / `vm_stop`
    StopVm(StopVm),
    /// `delete_vm` / `vm_delete`
    DeleteVm(DeleteVm),
    /// `status_vm` / `vm_status`
    StatusVm(StatusVm),
    /// `network_info_vm` / `vm_network_info`
    NetworkInfoVm(NetworkInfoVm),
    /// `reap_expired` / `vm_reap_expired`
    ReapExpired(ReapExpired),
    /// `create_workspace` / `workspace_create`
    CreateWorkspace(CreateWorkspaceRequest),
    /// `list_workspaces` / `workspace_list`
    ListWorkspaces(ListWorkspaces),
    /// `update_workspace` / `workspace_update`
    UpdateWorkspace(UpdateWorkspaceRequest),
    /// `status_workspace` / `workspace_status`
    StatusWorkspace(StatusWorkspace),
    /// `stop_workspace` / `workspace_stop`
    StopWorkspace(StopWorkspace),
    /// `start_workspace` / `workspace_start`
    StartWorkspace(StartWorkspace),
    /// `exec_workspace` / `workspace_exec`
    ExecWorkspace(ExecWorkspace),
    /// `push_workspace_sync` / `workspace_sync_push`
    PushWorkspaceSync(PushWorkspaceSync),
    /// `logs_workspace` / `workspace_logs`
    LogsWorkspace(LogsWorkspace),
    /// `export_workspace` / `workspace_export`
    ExportWorkspace(ExportWorkspace),
    /// `diff_workspace` / `workspace_diff`
    DiffWorkspace(DiffWorkspace),
    /// `summarize_workspace` / `workspace_summary`
    SummarizeWorkspace(SummarizeWorkspace),
    /// `list_workspace_files` / `workspace_file_list`
    ListWorkspaceFiles(ListWorkspaceFiles),
    /// `read_workspace_file` / `workspace_file_read`
    ReadWorkspaceFile(ReadWorkspaceFile),
    /// `write_workspace_file` / `workspace_file_write`
    WriteWorkspaceFile(WriteWorkspaceFile),
    /// `list_workspace_disk` / `workspace_disk_list`
    ListWorkspaceDisk(ListWorkspaceDisk),
    /// `read_workspace_disk` / `workspace_disk_read`
    ReadWorkspaceDisk(ReadWorkspaceDisk),
    /// `export_workspace_disk` / `workspace_disk_export`
    ExportWorkspaceDisk(ExportWorkspaceDisk),
    /// `apply_workspace_patch` / `workspace_patch_apply`
    ApplyWorkspacePatch(ApplyWorkspacePatch),
    /// `reset_workspace` / `workspace_reset`
    ResetWorkspace(ResetWorkspace),
    /// `delete_workspace` / `workspace_delete`
    DeleteWorkspace(DeleteWorkspace),
    /// `create_snapshot` / `snapshot_create`
    CreateSnapshot(CreateSnapshot),
    /// `list_snapshots` / `snapshot_list`
    ListSnapshots(ListSnapshots),
    /// `delete_snapshot` / `snapshot_delete`
    DeleteSnapshot(DeleteSnapshot),
    /// `fork_workspace` / `workspace_fork`
    ForkWorkspace(ForkWorkspaceRequest),
    /// `open_shell` / `shell_open`
    OpenShell(OpenShellRequest),
    /// `read_shell` / `shell_read`
    ReadShell(ReadShellRequest),
    /// `write_shell` / `shell_write`
    WriteShell(WriteShellRequest),
    /// `signal_shell` / `shell_signal`
    SignalShell(SignalShellRequest),
    /// `close_shell` / `shell_close`
    CloseShell(CloseShellRequest),
    /// `list_shells` / `shell_list`
    ListShells(ListShellsRequest),
    /// `resize_shell` / `shell_resize`
    ResizeShell(ResizeShellRequest),
    /// `start_service` / `service_start`
    StartService(StartServiceRequest),
    /// `list_services` / `service_list`
    ListServices(ListServicesRequest),
    /// `status_service` / `service_status`
    StatusService(StatusServiceRequest),
    /// `logs_service` / `service_logs`
    LogsService(LogsServiceRequest),
    /// `stop_service` / `service_stop`
    StopService(StopServiceRequest),
}

impl Pyro {
    /// Runs one operation of the catalogue; the result is its output as JSON.
    pub async fn call(&self, op: Op, cx: &Ctx) -> Result<Value> {
        op.dispatch(self, cx).await
    }
}

/// The call's live-output sink as the core's output callback (`None` when not streaming).
pub(crate) fn output_callback(cx: &Ctx) -> Option<impl FnMut(&Output) + Send + 'static> {
    cx.output.as_ref().map(|live| {
        let sink = live.sink.clone();
        move |o: &Output| sink(o)
    })
}

#[cfg(test)]
mod tests;
