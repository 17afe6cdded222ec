//! Requests of shells and services (the `workspace-full` MCP tools, the SDK methods, the
//! CLI's `workspace shell …` and `workspace service …`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Ctx, Operation, defaults as d};
use crate::model::{
    ServiceInfo, ServiceList, ServiceLogs, ShellCloseResult, ShellInfo, ShellList, ShellReadResult,
    ShellSignalResult, ShellWriteResult,
};
use crate::workspace::{OpenShell, PortSpec, ReadShell, ReadinessSpec, StartService};
use crate::{CoreError, Pyro, Result};

/// Open a PTY shell (bash -i) in a started workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenShellRequest {
    pub workspace_id: String,
    /// Must exist.
    #[serde(default = "d::workspace_root")]
    pub cwd: String,
    #[serde(default = "d::shell_cols")]
    #[schemars(range(min = 1, max = 1000))]
    pub cols: i64,
    #[serde(default = "d::shell_rows")]
    #[schemars(range(min = 1, max = 1000))]
    pub rows: i64,
    /// {SECRET: ENV_VAR} ("" keeps the name).
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
}

impl Operation for OpenShellRequest {
    const METHOD: &'static str = "open_shell";
    const TOOL: Option<&'static str> = Some("shell_open");
    type Output = ShellInfo;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellInfo> {
        let req = OpenShell {
            cwd: self.cwd,
            cols: self.cols,
            rows: self.rows,
            secret_env: self.secret_env.unwrap_or_default(),
        };
        pyro.open_shell(&self.workspace_id, req).await
    }
}

/// Read a shell's output from cursor; continue with next_cursor.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadShellRequest {
    pub workspace_id: String,
    pub shell_id: String,
    #[serde(default)]
    pub cursor: u64,
    #[serde(default = "d::shell_max_chars")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_chars: i64,
    /// Render as plain text (escapes interpreted).
    #[serde(default)]
    pub plain: bool,
    /// Wait until output pauses this long.
    #[serde(default)]
    #[schemars(range(min = 0, max = 600000))]
    pub wait_for_idle_ms: Option<i64>,
}

impl Operation for ReadShellRequest {
    const METHOD: &'static str = "read_shell";
    const TOOL: Option<&'static str> = Some("shell_read");
    type Output = ShellReadResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellReadResult> {
        let req = ReadShell {
            cursor: self.cursor,
            max_chars: self.max_chars,
            plain: self.plain,
            wait_for_idle_ms: self.wait_for_idle_ms,
        };
        pyro.read_shell(&self.workspace_id, &self.shell_id, req)
            .await
    }
}

/// Type into a shell.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteShellRequest {
    pub workspace_id: String,
    pub shell_id: String,
    #[schemars(length(max = 131072))]
    pub input: String,
    #[serde(default = "d::yes")]
    pub append_newline: bool,
}

impl Operation for WriteShellRequest {
    const METHOD: &'static str = "write_shell";
    const TOOL: Option<&'static str> = Some("shell_write");
    type Output = ShellWriteResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellWriteResult> {
        pyro.write_shell(
            &self.workspace_id,
            &self.shell_id,
            &self.input,
            self.append_newline,
        )
        .await
    }
}

/// Signal a shell's process group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalShellRequest {
    pub workspace_id: String,
    pub shell_id: String,
    /// HUP, INT, TERM or KILL.
    #[serde(default = "d::shell_signal")]
    pub signal_name: String,
}

impl Operation for SignalShellRequest {
    const METHOD: &'static str = "signal_shell";
    const TOOL: Option<&'static str> = Some("shell_signal");
    type Output = ShellSignalResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellSignalResult> {
        pyro.signal_shell(&self.workspace_id, &self.shell_id, &self.signal_name)
            .await
    }
}

/// Resize a shell's terminal.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeShellRequest {
    pub workspace_id: String,
    pub shell_id: String,
    #[schemars(range(min = 1, max = 1000))]
    pub cols: i64,
    #[schemars(range(min = 1, max = 1000))]
    pub rows: i64,
}

impl Operation for ResizeShellRequest {
    const METHOD: &'static str = "resize_shell";
    const TOOL: Option<&'static str> = Some("shell_resize");
    type Output = ShellInfo;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellInfo> {
        pyro.resize_shell(&self.workspace_id, &self.shell_id, self.cols, self.rows)
            .await
    }
}

/// Requests that name a workspace and a shell or a service.
macro_rules! named_op {
    ($(#[$doc:meta])* $name:ident, $field:ident, $method:literal, $tool:literal, $out:ty, |$pyro:ident, $id:ident, $n:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub workspace_id: String,
            pub $field: String,
        }

        impl Operation for $name {
            const METHOD: &'static str = $method;
            const TOOL: Option<&'static str> = Some($tool);
            type Output = $out;
            async fn run(self, $pyro: &Pyro, _: &Ctx) -> Result<$out> {
                let ($id, $n) = (self.workspace_id.as_str(), self.$field.as_str());
                $body.await
            }
        }
    };
}

named_op!(
    /// End a shell (HUP, then KILL after 5 s).
    CloseShellRequest, shell_id, "close_shell", "shell_close", ShellCloseResult,
    |pyro, id, n| pyro.close_shell(id, n)
);
named_op!(
    /// A service's state.
    StatusServiceRequest, service_name, "status_service", "service_status", ServiceInfo,
    |pyro, id, n| pyro.status_service(id, n)
);
named_op!(
    /// Stop a service (TERM, then KILL after 5 s); its ports are released.
    StopServiceRequest, service_name, "stop_service", "service_stop", ServiceInfo,
    |pyro, id, n| pyro.stop_service(id, n)
);

/// A workspace's open shells.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListShellsRequest {
    pub workspace_id: String,
}

impl Operation for ListShellsRequest {
    const METHOD: &'static str = "list_shells";
    const TOOL: Option<&'static str> = Some("shell_list");
    type Output = ShellList;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ShellList> {
        pyro.list_shells(&self.workspace_id).await
    }
}

/// A workspace's services.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListServicesRequest {
    pub workspace_id: String,
}

impl Operation for ListServicesRequest {
    const METHOD: &'static str = "list_services";
    const TOOL: Option<&'static str> = Some("service_list");
    type Output = ServiceList;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ServiceList> {
        pyro.list_services(&self.workspace_id).await
    }
}

/// A readiness probe as the SDK passes it: `{type: file|tcp|http|command, path|address|url|command}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadinessParam {
    File { path: String },
    Tcp { address: String },
    Http { url: String },
    Command { command: String },
}

/// Start a named background process; waits until its readiness probe passes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartServiceRequest {
    pub workspace_id: String,
    pub service_name: String,
    /// Run by /bin/sh -c.
    #[schemars(length(max = 131072))]
    pub command: String,
    /// Must exist.
    #[serde(default = "d::workspace_root")]
    pub cwd: String,
    /// Ready when this path exists.
    #[serde(default)]
    pub ready_file: Option<String>,
    /// Ready when HOST:PORT accepts TCP.
    #[serde(default)]
    pub ready_tcp: Option<String>,
    /// Ready when this http:// URL answers 2xx/3xx.
    #[serde(default)]
    pub ready_http: Option<String>,
    /// Ready when this command exits 0.
    #[serde(default)]
    pub ready_command: Option<String>,
    /// The probe as one object (instead of ready_*).
    #[serde(default)]
    pub readiness: Option<ReadinessParam>,
    #[serde(default = "d::ready_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub ready_timeout_seconds: i64,
    #[serde(default = "d::ready_interval_ms")]
    #[schemars(range(min = 10, max = 60000))]
    pub ready_interval_ms: i64,
    /// {SECRET: ENV_VAR} ("" keeps the name).
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
    /// Needs network_policy egress+published-ports.
    #[serde(default)]
    pub published_ports: Option<Vec<PortSpec>>,
}

impl StartServiceRequest {
    /// The one probe asked for (more than one is refused).
    fn readiness(&self) -> Result<Option<ReadinessSpec>> {
        let mut given: Vec<ReadinessSpec> = [
            self.ready_file.clone().map(ReadinessSpec::File),
            self.ready_tcp.clone().map(ReadinessSpec::Tcp),
            self.ready_http.clone().map(ReadinessSpec::Http),
            self.ready_command.clone().map(ReadinessSpec::Command),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(r) = &self.readiness {
            given.push(match r.clone() {
                ReadinessParam::File { path } => ReadinessSpec::File(path),
                ReadinessParam::Tcp { address } => ReadinessSpec::Tcp(address),
                ReadinessParam::Http { url } => ReadinessSpec::Http(url),
                ReadinessParam::Command { command } => ReadinessSpec::Command(command),
            });
        }
        if given.len() > 1 {
            return Err(CoreError::Invalid {
                field: "readiness",
                reason: "give at most one of ready_file, ready_tcp, ready_http, ready_command \
                         and readiness"
                    .into(),
            });
        }
        Ok(given.pop())
    }
}

impl Operation for StartServiceRequest {
    const METHOD: &'static str = "start_service";
    const TOOL: Option<&'static str> = Some("service_start");
    type Output = ServiceInfo;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<ServiceInfo> {
        let readiness = self.readiness()?;
        let req = StartService {
            name: self.service_name,
            command: self.command,
            cwd: self.cwd,
            readiness,
            ready_timeout_seconds: self.ready_timeout_seconds,
            ready_interval_ms: self.ready_interval_ms,
            secret_env: self.secret_env.unwrap_or_default(),
            published_ports: self.published_ports.unwrap_or_default(),
        };
        pyro.start_service(&self.workspace_id, req, cx.progress.clone())
            .await
    }
}

/// A service's output: the last tail_lines lines of each stream, or all.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsServiceRequest {
    pub workspace_id: String,
    pub service_name: String,
    #[serde(default = "d::tail_lines")]
    #[schemars(range(min = 1, max = 1000000))]
    pub tail_lines: i64,
    /// Everything retained (up to 1 MiB per stream).
    #[serde(default)]
    pub all: bool,
}

impl Operation for LogsServiceRequest {
    const METHOD: &'static str = "logs_service";
    const TOOL: Option<&'static str> = Some("service_logs");
    type Output = ServiceLogs;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ServiceLogs> {
        let tail = (!self.all).then_some(self.tail_lines);
        pyro.logs_service(&self.workspace_id, &self.service_name, tail)
            .await
    }
}
