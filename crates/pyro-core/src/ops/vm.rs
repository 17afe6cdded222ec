//! Requests of environments and one-shot VMs.
//!
//! Field docs are what a model reads in a tool's input schema: short, and only what the name,
//! the type, the range and the default do not already say.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Ctx, Operation, defaults as d, output_callback};
use crate::{
    BackendChoice, Command, CoreError, CreateVm, DeleteResult, EnvironmentList, ExecOptions,
    NetworkInfo, OutputFn, PruneResult, Pyro, ReapResult, Result, VmExecResult, VmInfo,
};

/// `allow_host_compat: true` is refused on every face (see the module docs of `ops`).
pub(crate) fn refuse_host_compat(allow_host_compat: bool) -> Result<()> {
    if allow_host_compat {
        return Err(CoreError::Invalid {
            field: "allow_host_compat",
            reason: "pyro never runs commands on the host (there is no host compatibility \
                     mode); leave it false"
                .into(),
        });
    }
    Ok(())
}

pub(crate) fn backend(b: Option<&str>) -> Result<Option<BackendChoice>> {
    b.map(str::parse).transpose()
}

/// The exec fields every exec request shares, as the core's [`ExecOptions`].
pub(crate) struct ExecFields {
    pub command: Command,
    pub timeout_seconds: i64,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub max_output_bytes: Option<u64>,
    pub stdin: Option<String>,
}

impl ExecFields {
    pub(crate) fn options(self, cx: &Ctx) -> ExecOptions {
        let mut o = ExecOptions::new(self.command);
        o.timeout_seconds = self.timeout_seconds;
        o.cwd = self.cwd;
        o.env = self.env.unwrap_or_default();
        o.max_output_bytes = self.max_output_bytes;
        o.stdin = self.stdin.map(|s| s.into_bytes().into());
        o.stream_all = cx.output.as_ref().is_some_and(|l| l.all);
        o
    }
}

/// `ping`: is the server alive, which version, which methods.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// The answer to [`Ping`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Pong {
    /// Always true.
    pub pong: bool,
    /// pyro's version.
    pub version: String,
    /// Every method served, in catalogue order.
    pub methods: Vec<String>,
}

impl Operation for Ping {
    const METHOD: &'static str = "ping";
    const TOOL: Option<&'static str> = None;
    type Output = Pong;
    async fn run(self, _: &Pyro, _: &Ctx) -> Result<Pong> {
        Ok(Pong {
            pong: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            methods: super::Op::catalogue()
                .iter()
                .map(|o| o.method.to_string())
                .collect(),
        })
    }
}

/// Run one command in a fresh sandbox that is deleted afterwards.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInVm {
    /// debian:12 (git), debian:12-base or debian:12-build (gcc, make, python3).
    pub environment: String,
    /// A string is run by /bin/sh -c in /workspace; an array is an argv.
    pub command: Command,
    #[serde(default = "d::vcpu_count")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "d::mem_mib")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    #[serde(default = "d::timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
    #[serde(default = "d::vm_ttl_seconds")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: i64,
    /// Egress to public addresses only.
    #[serde(default)]
    pub network: bool,
    /// Narrow egress to these names (api.example.org, *.example.org).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_hosts: Option<Vec<String>>,
    /// IPv4 CIDRs to allow, private ones included.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_cidrs: Option<Vec<String>>,
    /// Must be false (no host mode).
    #[serde(default)]
    pub allow_host_compat: bool,
    /// VMM: auto, firecracker or qemu (default: the server's).
    #[serde(default)]
    pub backend: Option<String>,
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
}

impl RunInVm {
    /// Splits the request into the core's create and exec parameters.
    pub fn into_parts(self, cx: &Ctx) -> Result<(CreateVm, ExecOptions)> {
        refuse_host_compat(self.allow_host_compat)?;
        let create = CreateVm {
            environment: self.environment,
            vcpu_count: self.vcpu_count,
            mem_mib: self.mem_mib,
            ttl_seconds: self.ttl_seconds,
            network: self.network,
            allow_hosts: self.allow_hosts.unwrap_or_default(),
            allow_cidrs: self.allow_cidrs.unwrap_or_default(),
            backend: backend(self.backend.as_deref())?,
        };
        let exec = ExecFields {
            command: self.command,
            timeout_seconds: self.timeout_seconds,
            cwd: self.cwd,
            env: self.env,
            max_output_bytes: self.max_output_bytes,
            stdin: self.stdin,
        }
        .options(cx);
        Ok((create, exec))
    }
}

impl Operation for RunInVm {
    const METHOD: &'static str = "run_in_vm";
    const TOOL: Option<&'static str> = Some("vm_run");
    type Output = VmExecResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<VmExecResult> {
        let (create, exec) = self.into_parts(cx)?;
        let mut cb = output_callback(cx);
        let on = cb.as_mut().map(|f| f as OutputFn<'_>);
        pyro.run_in_vm_until(create, exec, cx.progress.clone(), on, cx.cancelled.clone())
            .await
    }
}

/// List the environments and whether each is built here.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEnvironments {}

impl Operation for ListEnvironments {
    const METHOD: &'static str = "list_environments";
    const TOOL: Option<&'static str> = Some("vm_list_environments");
    type Output = EnvironmentList;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<EnvironmentList> {
        Ok(pyro.list_environments())
    }
}

/// Build an environment (or find it built).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PullEnvironment {
    /// Catalog name.
    pub environment: String,
}

impl Operation for PullEnvironment {
    const METHOD: &'static str = "pull_environment";
    const TOOL: Option<&'static str> = None;
    type Output = pyro_image::EnvironmentInfo;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<pyro_image::EnvironmentInfo> {
        pyro.pull_environment(&self.environment, cx.progress.clone())
            .await?;
        pyro.inspect_environment(&self.environment)
    }
}

/// Describe one environment.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectEnvironment {
    /// Catalog name.
    pub environment: String,
}

impl Operation for InspectEnvironment {
    const METHOD: &'static str = "inspect_environment";
    const TOOL: Option<&'static str> = None;
    type Output = pyro_image::EnvironmentInfo;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<pyro_image::EnvironmentInfo> {
        pyro.inspect_environment(&self.environment)
    }
}

/// Delete stale cache entries.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneEnvironments {}

impl Operation for PruneEnvironments {
    const METHOD: &'static str = "prune_environments";
    const TOOL: Option<&'static str> = None;
    type Output = PruneResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<PruneResult> {
        pyro.prune_environments()
    }
}

/// Create a one-shot VM without booting it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// debian:12, debian:12-base or debian:12-build.
    pub environment: String,
    #[serde(default = "d::vcpu_count")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "d::mem_mib")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    #[serde(default = "d::vm_ttl_seconds")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: i64,
    /// Egress to public addresses only.
    #[serde(default)]
    pub network: bool,
    /// Narrow egress to these names (api.example.org, *.example.org).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_hosts: Option<Vec<String>>,
    /// IPv4 CIDRs to allow, private ones included.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allow_cidrs: Option<Vec<String>>,
    /// Must be false (no host mode).
    #[serde(default)]
    pub allow_host_compat: bool,
    /// VMM: auto, firecracker or qemu (default: the server's).
    #[serde(default)]
    pub backend: Option<String>,
}

impl TryFrom<CreateVmRequest> for CreateVm {
    type Error = CoreError;
    fn try_from(r: CreateVmRequest) -> Result<CreateVm> {
        refuse_host_compat(r.allow_host_compat)?;
        Ok(CreateVm {
            environment: r.environment,
            vcpu_count: r.vcpu_count,
            mem_mib: r.mem_mib,
            ttl_seconds: r.ttl_seconds,
            network: r.network,
            allow_hosts: r.allow_hosts.unwrap_or_default(),
            allow_cidrs: r.allow_cidrs.unwrap_or_default(),
            backend: backend(r.backend.as_deref())?,
        })
    }
}

impl Operation for CreateVmRequest {
    const METHOD: &'static str = "create_vm";
    const TOOL: Option<&'static str> = Some("vm_create");
    type Output = VmInfo;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<VmInfo> {
        pyro.create_vm(self.try_into()?, cx.progress.clone()).await
    }
}

/// Run one command in a started VM, then delete the VM.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecVm {
    pub vm_id: String,
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
}

impl Operation for ExecVm {
    const METHOD: &'static str = "exec_vm";
    const TOOL: Option<&'static str> = Some("vm_exec");
    type Output = VmExecResult;
    async fn run(self, pyro: &Pyro, cx: &Ctx) -> Result<VmExecResult> {
        let exec = ExecFields {
            command: self.command,
            timeout_seconds: self.timeout_seconds,
            cwd: self.cwd,
            env: self.env,
            max_output_bytes: self.max_output_bytes,
            stdin: self.stdin,
        }
        .options(cx);
        let mut cb = output_callback(cx);
        let on = cb.as_mut().map(|f| f as OutputFn<'_>);
        pyro.exec_vm(&self.vm_id, exec, on).await
    }
}

/// Requests that name only a VM.
macro_rules! vm_id_op {
    ($(#[$doc:meta])* $name:ident, $method:literal, $tool:literal, $out:ty, |$pyro:ident, $id:ident, $cx:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub vm_id: String,
        }

        impl Operation for $name {
            const METHOD: &'static str = $method;
            const TOOL: Option<&'static str> = Some($tool);
            type Output = $out;
            async fn run(self, $pyro: &Pyro, $cx: &Ctx) -> Result<$out> {
                let $id = self.vm_id.as_str();
                let _ = &$cx;
                $body.await
            }
        }
    };
}

vm_id_op!(
    /// Boot a created or stopped VM.
    StartVm, "start_vm", "vm_start", VmInfo,
    |pyro, id, cx| pyro.start_vm(id, cx.progress.clone())
);
vm_id_op!(
    /// Power off a started VM, keeping its disk.
    StopVm, "stop_vm", "vm_stop", VmInfo, |pyro, id, cx| pyro.stop_vm(id)
);
vm_id_op!(
    /// Delete a VM in any state.
    DeleteVm, "delete_vm", "vm_delete", DeleteResult, |pyro, id, cx| pyro.delete_vm(id)
);
vm_id_op!(
    /// Describe one VM.
    StatusVm, "status_vm", "vm_status", VmInfo, |pyro, id, cx| pyro.status_vm(id)
);
vm_id_op!(
    /// A VM's network configuration.
    NetworkInfoVm, "network_info_vm", "vm_network_info", NetworkInfo,
    |pyro, id, cx| pyro.network_info_vm(id)
);

/// Delete every VM of this process whose TTL has run out.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReapExpired {}

impl Operation for ReapExpired {
    const METHOD: &'static str = "reap_expired";
    const TOOL: Option<&'static str> = Some("vm_reap_expired");
    type Output = ReapResult;
    async fn run(self, pyro: &Pyro, _: &Ctx) -> Result<ReapResult> {
        Ok(pyro.reap_expired().await)
    }
}
