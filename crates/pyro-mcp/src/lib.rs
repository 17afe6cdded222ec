//! `pyro-mcp`: the MCP face of pyro, on the official Rust SDK (`rmcp`).
//!
//! [`PyroMcp`] is an MCP server handler that maps tools onto one shared
//! [`pyro_core::Pyro`]. It holds no logic of its own: each tool is a row of a table (name,
//! profile, title, annotations, description) naming an operation of the core's catalogue
//! ([`pyro_core::ops`]), whose request and result types give the tool's schemas; a call
//! parses the arguments into that request, runs it with [`pyro_core::Pyro::call`] and renders
//! the result as `structuredContent` (plus the same JSON as a text item while it is small),
//! its output bounded to what clients accept ([`budget`]).
//!
//! - [`Profile`] picks the tools a client sees (`vm-run`, `workspace-core`, `workspace-full`);
//!   [`ToolId`] is a row of the table (adding a tool is described in `tools.rs`).
//! - [`HostRoots`] confines the host paths a client may name (`seed_path`, `source_path`,
//!   `output_path`) to the directories the operator allowed: every call runs under
//!   [`pyro_core::ops::PathPolicy::Confined`].
//! - Every failure, argument errors included, is a tool result with `isError: true` whose text
//!   names the error kind and the full cause chain; protocol errors are never used for them.
//! - Requests are served concurrently (rmcp runs each in its own task and every core call is
//!   async), so a long `workspace_exec` never delays a `tools/list` or a ping. Long calls send
//!   `notifications/progress` when the client supplied a `progressToken`.
//!
//! Transports: any `AsyncRead + AsyncWrite` pair through [`PyroMcp::serve`] (the CLI passes
//! stdin and a private duplicate of stdout), and, with the `http` feature, Streamable HTTP on
//! a loopback address through [`serve_http`]. Both check every incoming message with our own
//! framing ([`framing`]) before rmcp sees it, so a malformed one is answered with the right
//! JSON-RPC code and its `id`, and messages up to [`framing::MAX_MESSAGE_BYTES`] are taken.

pub mod budget;
mod error;
pub mod framing;
#[cfg(feature = "http")]
mod http;
mod profile;
mod progress;
mod tools;

use std::sync::Arc;

use pyro_core::Pyro;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};

pub use budget::ResultBudget;
#[cfg(feature = "http")]
pub use http::{HTTP_PATH, HttpError, serve_http};
pub use profile::{Profile, UnknownProfile};
pub use pyro_core::ops::{HostRoots, PathRefused};
pub use tools::ToolId;

/// The server's name in `initialize`.
pub const SERVER_NAME: &str = "pyro";

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The tools offered.
    pub profile: Profile,
    /// Where client-named host paths may point.
    pub roots: Arc<HostRoots>,
    /// What `workspace_create` without `seed_path` seeds from.
    pub project: Option<Arc<pyro_core::project::ProjectSource>>,
    /// How large a result may be ([`budget`]).
    pub budget: ResultBudget,
}

struct Inner {
    pyro: Arc<Pyro>,
    profile: Profile,
    roots: Arc<HostRoots>,
    project: Option<Arc<pyro_core::project::ProjectSource>>,
    budget: ResultBudget,
    tools: Vec<(ToolId, Tool)>,
}

/// The MCP server handler (cheap to clone: one per HTTP session shares the same core).
#[derive(Clone)]
pub struct PyroMcp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PyroMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyroMcp")
            .field("profile", &self.inner.profile)
            .field("roots", &self.inner.roots)
            .finish_non_exhaustive()
    }
}

/// Why serving stopped with an error.
#[derive(Debug)]
pub struct ServeError(String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServeError {}

impl PyroMcp {
    /// A server over `pyro` with the given profile and host roots.
    pub fn new(pyro: Arc<Pyro>, opts: ServerOptions) -> Self {
        let tools = ToolId::for_profile(opts.profile)
            .into_iter()
            .map(|t| (t, t.definition(opts.profile)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                pyro,
                profile: opts.profile,
                roots: opts.roots,
                project: opts.project,
                budget: opts.budget,
                tools,
            }),
        }
    }

    /// The profile served.
    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// The tool definitions `tools/list` returns.
    pub fn tools(&self) -> Vec<Tool> {
        self.inner.tools.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Serves one client over a byte stream (for stdio: stdin and stdout) until it closes.
    pub async fn serve<R, W>(self, reader: R, writer: W) -> Result<(), ServeError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // Our framing, not rmcp's: malformed lines get answers with their id (`framing.rs`).
        let transport = framing::LineTransport::new(reader, writer);
        let running = ServiceExt::serve(self, transport)
            .await
            .map_err(|e| ServeError(format!("MCP initialization failed: {e}")))?;
        running
            .waiting()
            .await
            .map_err(|e| ServeError(format!("MCP server task failed: {e}")))?;
        Ok(())
    }

    async fn run_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let name = request.name.as_ref();
        let Some((tool, definition)) = self.inner.tools.iter().find(|(t, _)| t.name() == name)
        else {
            // The name once (in the prefix), cut to a bounded length.
            let offered: Vec<&str> = self.inner.tools.iter().map(|(t, _)| t.name()).collect();
            let why = match ToolId::from_name(name) {
                Some(t) => format!(
                    "not offered by profile {}; the operator can start the server with \
                     --profile {}",
                    self.inner.profile,
                    t.tier()
                ),
                None => "no such tool".into(),
            };
            return error::ToolError::invalid(format!(
                "{why}. Tools offered: {}",
                offered.join(", ")
            ))
            .into_result(&pyro_core::error::one_line(name));
        };
        let tool = *tool;
        let args: JsonObject = request.arguments.unwrap_or_default();
        if let Err(e) = tools::check_limits(tool, &definition.input_schema, &args) {
            return e.into_result(name);
        }
        // The size and paging arguments, which bound and continue the result.
        let paging: JsonObject = args
            .iter()
            .filter(|(k, _)| budget::PAGING_ARGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let progress = progress::Progress::start(
            name,
            context.meta.get_progress_token(),
            context.peer.clone(),
        );
        if tool.is_long() {
            progress.note(format!("{name}: started"));
        }
        let started = std::time::Instant::now();
        tracing::info!(tool = name, "tool call");
        // On a thread of its own (`on_own_thread`): the core's synchronous sections (SQLite,
        // hashing, file copies) never hold up the runtime's workers or another call, and a
        // panic becomes an error result instead of a request that never gets an answer.
        // rmcp cancels the request's token on `notifications/cancelled` (and when the
        // session ends): the future of a cancellable call (`ToolId::is_cancellable`) is then
        // dropped at its next await, which drops its agent stream, and the agent kills the
        // command's process tree; any other call runs to its end, its answer unsent.
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let ct = context.ct.clone();
        let watcher = tokio::spawn(async move {
            ct.cancelled().await;
            let _ = cancel.send(true);
        });
        let inner = self.inner.clone();
        let sink = progress.sink();
        let watch = cancelled.clone();
        let cancelled = tool.is_cancellable().then_some(cancelled);
        let task = pyro_core::ops::on_own_thread(cancelled, move || async move {
            let cx = pyro_core::ops::Ctx {
                progress: sink,
                paths: pyro_core::ops::PathPolicy::Confined(inner.roots.clone()),
                output: None,
                project: inner.project.clone(),
                cancelled: Some(watch),
            };
            tools::call(tool, inner.profile, args, &inner.pyro, &cx).await
        });
        let outcome = task.await;
        watcher.abort();
        let outcome = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => {
                // Nobody reads this answer (rmcp drops a cancelled request's response).
                progress.finish().await;
                tracing::info!(
                    tool = name,
                    ms = started.elapsed().as_millis(),
                    "tool call cancelled by the client"
                );
                return error::ToolError {
                    kind: "cancelled".into(),
                    message: "the client cancelled the call".into(),
                    data: None,
                }
                .into_result(name);
            }
            Err(e) => Err(error::ToolError {
                kind: "runtime".into(),
                message: format!("internal error in pyro ({e}); the server is still running"),
                data: None,
            }),
        };
        progress.finish().await;
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok(mut value) => {
                tracing::info!(tool = name, ms, "tool call done");
                let hint = budget::fit(name, &paging, &mut value, self.inner.budget);
                budget::render(name, value, hint.as_deref())
            }
            Err(e) => {
                tracing::info!(tool = name, ms, kind = %e.kind, "tool call failed: {}", e.message);
                e.into_result(name)
            }
        }
    }
}

impl ServerHandler for PyroMcp {
    fn get_info(&self) -> ServerConfig {
        let mut implementation = Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION"));
        implementation.title = Some("pyro sandboxes".into());
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(implementation)
            .with_instructions(self.inner.profile.instructions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner
            .tools
            .iter()
            .find(|(t, _)| t.name() == name)
            .map(|(_, d)| d.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(self.run_tool(request, context).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: Profile) -> Vec<&'static str> {
        ToolId::for_profile(p)
            .into_iter()
            .map(|t| t.name())
            .collect()
    }

    #[test]
    fn profiles_offer_exactly_the_working_tools() {
        assert_eq!(names(Profile::VmRun), ["vm_run"]);
        let core = [
            "vm_run",
            "workspace_create",
            "workspace_list",
            "workspace_update",
            "workspace_exec",
            "workspace_sync_push",
            "workspace_status",
            "workspace_logs",
            "workspace_export",
            "workspace_diff",
            "workspace_file_list",
            "workspace_file_read",
            "workspace_file_write",
            "workspace_patch_apply",
            "workspace_summary",
            "workspace_reset",
            "workspace_delete",
        ];
        assert_eq!(names(Profile::WorkspaceCore), core);
        let full = names(Profile::WorkspaceFull);
        assert_eq!(&full[..core.len()], core);
        assert_eq!(
            &full[core.len()..],
            [
                "vm_list_environments",
                "vm_create",
                "vm_start",
                "vm_exec",
                "vm_stop",
                "vm_delete",
                "vm_status",
                "vm_network_info",
                "vm_reap_expired",
                "workspace_stop",
                "workspace_start",
                "workspace_disk_export",
                "workspace_disk_list",
                "workspace_disk_read",
                "snapshot_create",
                "snapshot_list",
                "snapshot_delete",
                "shell_open",
                "shell_read",
                "shell_write",
                "shell_signal",
                "shell_close",
                "service_start",
                "service_list",
                "service_status",
                "service_logs",
                "service_stop",
                "shell_list",
                "shell_resize",
                "workspace_fork",
            ]
        );
    }
}
