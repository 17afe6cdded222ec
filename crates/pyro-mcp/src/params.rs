//! Tool arguments: what each tool accepts, as typed wire models.
//!
//! Every struct derives `Deserialize + JsonSchema` with `deny_unknown_fields`, so the
//! advertised input schema (`additionalProperties: false`) and the parser agree. Ranges are
//! stated in the schema for the model's benefit; the core enforces them, so every surface
//! reports the same error. Defaults are the reference's.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

fn one() -> i64 {
    1
}
fn mem_default() -> i64 {
    1024
}
fn timeout_default() -> i64 {
    30
}
fn vm_ttl_default() -> i64 {
    600
}
fn ws_ttl_default() -> i64 {
    pyro_core::workspace::DEFAULT_WORKSPACE_TTL
}
fn workspace_root() -> String {
    pyro_core::workspace::WORKSPACE_ROOT.to_string()
}
fn read_default() -> i64 {
    65536
}
fn logs_limit_default() -> u64 {
    20
}
fn baseline() -> String {
    "baseline".to_string()
}

/// `vm_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmRun {
    /// debian:12 (git), debian:12-base or debian:12-build (gcc, make, python3).
    pub environment: String,
    /// Run by /bin/sh -c in /workspace.
    pub command: String,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "mem_default")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    #[serde(default = "timeout_default")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
    #[serde(default = "vm_ttl_default")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: i64,
    /// Not available in this version (true is refused).
    #[serde(default)]
    pub network: bool,
    /// Ignored: commands never run on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
}

/// `vm_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmCreate {
    /// debian:12, debian:12-base or debian:12-build.
    pub environment: String,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "mem_default")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    #[serde(default = "vm_ttl_default")]
    #[schemars(range(min = 60, max = 3600))]
    pub ttl_seconds: i64,
    /// Not available in this version (true is refused).
    #[serde(default)]
    pub network: bool,
    /// Ignored: commands never run on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
}

/// Tools that take only a VM id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmId {
    pub vm_id: String,
}

/// `vm_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmExec {
    pub vm_id: String,
    /// Run by /bin/sh -c in /workspace.
    pub command: String,
    #[serde(default = "timeout_default")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
}

/// Tools without arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// `workspace_create` (core profile: no network policy, no secrets).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceCreate {
    /// debian:12 (git), debian:12-base or debian:12-build (gcc, make, python3).
    pub environment: String,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 8))]
    pub vcpu_count: i64,
    #[serde(default = "mem_default")]
    #[schemars(range(min = 256, max = 32768))]
    pub mem_mib: i64,
    /// Running-time budget; it counts only while started.
    #[serde(default = "ws_ttl_default")]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: i64,
    /// Ignored: commands never run on the host.
    #[serde(default)]
    pub allow_host_compat: bool,
    /// Host directory or .tar/.tar.gz/.tgz/.tar.zst archive, under an allowed root.
    #[serde(default)]
    pub seed_path: Option<String>,
    /// Free-form, shown by workspace_list.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Tools that take only a workspace id.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceId {
    pub workspace_id: String,
}

/// `workspace_update`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceUpdate {
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
    /// Set the running time left to this.
    #[serde(default)]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: Option<i64>,
}

/// `workspace_exec` (core profile: no secret_env).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceExec {
    pub workspace_id: String,
    /// Run by /bin/sh -c in /workspace.
    pub command: String,
    #[serde(default = "timeout_default")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i64,
}

/// `workspace_sync_push`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceSyncPush {
    pub workspace_id: String,
    /// Host directory or archive, under an allowed root.
    pub source_path: String,
    /// Directory in /workspace.
    #[serde(default = "workspace_root")]
    pub dest: String,
}

/// `workspace_logs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceLogs {
    pub workspace_id: String,
    /// First entry (0 = oldest).
    #[serde(default)]
    pub offset: u64,
    #[serde(default = "logs_limit_default")]
    #[schemars(range(min = 1))]
    pub limit: u64,
}

/// `workspace_export`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceExport {
    pub workspace_id: String,
    /// File, symlink or directory in /workspace.
    pub path: String,
    /// New host path under an allowed root (must not exist; parents are created).
    pub output_path: String,
}

/// `workspace_file_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceFileList {
    pub workspace_id: String,
    /// Directory or file in /workspace.
    #[serde(default = "workspace_root")]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

/// `workspace_file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceFileRead {
    pub workspace_id: String,
    /// File in /workspace.
    pub path: String,
    #[serde(default = "read_default")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_bytes: i64,
}

/// `workspace_file_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceFileWrite {
    pub workspace_id: String,
    /// File in /workspace.
    pub path: String,
    /// The whole new content (at most 16 MiB).
    pub text: String,
}

/// `workspace_patch_apply`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspacePatchApply {
    pub workspace_id: String,
    /// Unified diff (git diff works); paths relative to /workspace, a/ b/ prefixes optional.
    pub patch: String,
}

/// `workspace_reset`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkspaceReset {
    pub workspace_id: String,
    // Only "baseline" exists in this version; the call names the error for any other.
    #[serde(default = "baseline")]
    #[schemars(extend("enum" = ["baseline"]))]
    pub snapshot: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_references() {
        let a: VmRun =
            parse(serde_json::json!({"environment": "debian:12", "command": "true"})).unwrap();
        assert_eq!(
            (a.vcpu_count, a.mem_mib, a.timeout_seconds, a.ttl_seconds),
            (1, 1024, 30, 600)
        );
        assert!(!a.network && !a.allow_host_compat);
        let l: WorkspaceFileList = parse(serde_json::json!({"workspace_id": "w"})).unwrap();
        assert_eq!((l.path.as_str(), l.recursive), ("/workspace", false));
        let r: WorkspaceReset = parse(serde_json::json!({"workspace_id": "w"})).unwrap();
        assert_eq!(r.snapshot, "baseline");
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_are_rejected() {
        let e = parse::<VmRun>(
            serde_json::json!({"environment": "debian:12", "command": "x", "cmd": 1}),
        )
        .unwrap_err();
        assert!(e.contains("unknown field `cmd`"), "{e}");
        let e = parse::<VmRun>(serde_json::json!({"environment": "debian:12"})).unwrap_err();
        assert!(e.contains("missing field `command`"), "{e}");
        let e = parse::<VmExec>(
            serde_json::json!({"vm_id": "a", "command": "x", "timeout_seconds": "5"}),
        )
        .unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        // Core profile: secrets and network policy are not parameters.
        let e = parse::<WorkspaceCreate>(
            serde_json::json!({"environment": "debian:12", "network_policy": "off"}),
        )
        .unwrap_err();
        assert!(e.contains("unknown field `network_policy`"), "{e}");
    }
}
