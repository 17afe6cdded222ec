//! `pyro workspace …`: persistent workspaces. Parses, calls `Pyro`, renders.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro_core::WorkspaceInfo;
use pyro_core::workspace::UpdateWorkspace;
use pyro_proto::api::Output;

use crate::{Failure, fail, input_err, open_pyro, parse_env_pairs, progress_unless, render};

#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Create and start a workspace (seeded from a directory or archive).
    Create(CreateArgs),
    /// List workspaces, most recently active first.
    List(Json),
    /// Show a workspace.
    Status(WsJson),
    /// Change a workspace's name, labels or TTL.
    Update(UpdateArgs),
    /// Run a command in the workspace (cwd /workspace).
    Exec(ExecArgs),
    /// Show the command history.
    Logs(LogsArgs),
    /// Import host files into the workspace.
    #[command(subcommand)]
    Sync(SyncCmd),
    /// List, read and write files.
    #[command(subcommand)]
    File(FileCmd),
    /// List, read and export a stopped workspace's disk without booting it.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Apply a patch.
    #[command(subcommand)]
    Patch(PatchCmd),
    /// Show changes against the create-time baseline (a git-applicable patch).
    Diff(WsJson),
    /// What happened since the last reset: commands, edits, shells, services, changes.
    Summary(WsJson),
    /// Copy a path out of the workspace to the host.
    Export(ExportArgs),
    /// Go back to the create-time baseline (fresh disk, baseline tree, empty history), or
    /// to a named snapshot (with --snapshot: its disk, and its running machine when taken
    /// while started).
    Reset(ResetArgs),
    /// Named snapshots: the whole machine of a started workspace, the disk of a stopped one.
    #[command(subcommand)]
    Snapshot(crate::snapshots::SnapshotCmd),
    /// Make new workspaces from a snapshot of this one (named, or taken now).
    Fork(crate::snapshots::ForkArgs),
    /// Stop the workspace's VM (data is kept; the TTL pauses).
    Stop(WsJson),
    /// Start a stopped workspace.
    Start(WsJson),
    /// Delete the workspace and all its data.
    Delete(WsJson),
    /// Interactive PTY shells that live between calls.
    #[command(subcommand)]
    Shell(crate::procs::ShellCmd),
    /// Named background processes with readiness probes, logs and published ports.
    #[command(subcommand)]
    Service(crate::procs::ServiceCmd),
    /// Publish a guest TCP port on the host's 127.0.0.1 (policy egress+published-ports);
    /// services publish theirs with `service start --publish`.
    #[command(hide = true)]
    Publish(PublishArgs),
}

#[derive(Args, Debug)]
pub struct Json {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Workspace id.
    workspace_id: String,
    /// The snapshot to go back to.
    #[arg(long, default_value = pyro_core::workspace::BASELINE)]
    snapshot: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct WsJson {
    /// Workspace id.
    workspace_id: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Workspace id.
    workspace_id: String,
    /// The guest's TCP port.
    guest_port: i64,
    /// The host port on 127.0.0.1 (default: one the OS chooses).
    #[arg(long)]
    host_port: Option<i64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Environment name (debian:12, debian:12-base, debian:12-build).
    environment: String,
    /// Virtual CPUs (1-8).
    #[arg(long, default_value_t = pyro_core::ops::defaults::VCPU_COUNT)]
    vcpu_count: i64,
    /// Guest memory in MiB (256-32768).
    #[arg(long, default_value_t = pyro_core::ops::defaults::MEM_MIB)]
    mem_mib: i64,
    /// Running-time budget in seconds (60 s to 30 days); it only runs while started.
    #[arg(long, default_value_t = pyro_core::workspace::DEFAULT_WORKSPACE_TTL)]
    ttl_seconds: i64,
    /// off (no network device), egress (public addresses only; private ranges, the host and
    /// metadata endpoints stay blocked) or egress+published-ports. Networked policies need
    /// CAP_NET_ADMIN, ip and nft.
    #[arg(long, default_value = pyro_core::ops::defaults::NETWORK_POLICY)]
    network_policy: String,
    /// With a networked policy: only these host names (repeatable; `*.example.org` for
    /// names below).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// With a networked policy: also this IPv4 range, even a private one (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    allow_cidrs: Vec<String>,
    /// A secret (repeatable), kept on the host; commands get it with --secret-env.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secrets: Vec<String>,
    /// A secret read from a host file (repeatable).
    #[arg(long = "secret-file", value_name = "NAME=PATH")]
    secret_files: Vec<PathBuf>,
    /// Make secret NAME a credential for these hosts (repeatable; `*.example.org` for names
    /// below): the guest sees a placeholder, the egress proxy sends the value to those
    /// hosts only. Needs a network policy.
    #[arg(long = "secret-host", value_name = "NAME=HOST[,HOST...]")]
    secret_hosts: Vec<String>,
    /// A directory or .tar/.tar.gz/.tgz/.tar.zst archive that becomes /workspace.
    #[arg(long)]
    seed_path: Option<PathBuf>,
    /// A free-form name.
    #[arg(long)]
    name: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// VMM: auto, firecracker or qemu.
    #[arg(long, env = "PYRO_BACKEND", default_value = "auto")]
    backend: String,
    /// Print the result as JSON on stdout.
    #[arg(long, conflicts_with = "id_only")]
    json: bool,
    /// Print only the new workspace id.
    #[arg(long)]
    id_only: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Workspace id.
    workspace_id: String,
    /// New name.
    #[arg(long, conflicts_with = "clear_name")]
    name: Option<String>,
    /// Remove the name.
    #[arg(long)]
    clear_name: bool,
    /// Add or replace a label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long = "clear-label", value_name = "KEY")]
    clear_labels: Vec<String>,
    /// Give the workspace this many more seconds of running time from now.
    #[arg(long)]
    ttl_seconds: Option<i64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Workspace id.
    workspace_id: String,
    /// Seconds before the command's whole process tree is killed (exit code 124).
    #[arg(long, default_value_t = pyro_core::ops::defaults::TIMEOUT_SECONDS)]
    timeout_seconds: i64,
    /// Working directory in the guest (default /workspace).
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Give the command a workspace secret as an environment variable (repeatable;
    /// SECRET alone keeps its name). Its value is redacted from the output.
    #[arg(long = "secret-env", value_name = "SECRET[=ENV_VAR]")]
    secret_env: Vec<String>,
    /// Run the command words joined by spaces through `/bin/sh -c`.
    #[arg(long)]
    shell: bool,
    /// Bytes of each stream kept in the JSON result (the logs keep everything).
    #[arg(long)]
    max_output_bytes: Option<u64>,
    /// Print the result as JSON on stdout (output captured, not streamed).
    #[arg(long)]
    json: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

impl TryFrom<&CreateArgs> for pyro_core::ops::CreateWorkspaceRequest {
    type Error = anyhow::Error;
    fn try_from(a: &CreateArgs) -> anyhow::Result<Self> {
        Ok(Self {
            environment: a.environment.clone(),
            vcpu_count: a.vcpu_count,
            mem_mib: a.mem_mib,
            ttl_seconds: a.ttl_seconds,
            network_policy: a.network_policy.clone(),
            allow_hosts: Some(a.allow_hosts.clone()),
            allow_cidrs: Some(a.allow_cidrs.clone()),
            secrets: Some(secret_params(&a.secrets, &a.secret_files, &a.secret_hosts)?),
            allow_host_compat: false,
            seed_path: a.seed_path.as_ref().map(Into::into),
            name: a.name.clone(),
            labels: Some(parse_labels(&a.labels)?),
            // `--backend` chose the instance's default (`open_pyro`).
            backend: None,
        })
    }
}

impl TryFrom<&ExecArgs> for pyro_core::ops::ExecWorkspace {
    type Error = anyhow::Error;
    fn try_from(a: &ExecArgs) -> anyhow::Result<Self> {
        let usage = || format!("pyro workspace exec {} -- CMD [ARGS...]", a.workspace_id);
        Ok(Self {
            workspace_id: a.workspace_id.clone(),
            command: crate::command_words(&a.command, a.shell, usage)?,
            timeout_seconds: a.timeout_seconds,
            cwd: a.cwd.clone(),
            env: Some(parse_env_pairs(&a.env)?),
            max_output_bytes: a.max_output_bytes,
            stdin: None,
            secret_env: Some(crate::procs::secret_env_map(&a.secret_env)),
        })
    }
}

impl From<&LogsArgs> for pyro_core::ops::LogsWorkspace {
    fn from(a: &LogsArgs) -> Self {
        Self {
            workspace_id: a.workspace_id.clone(),
            offset: a.offset,
            limit: a.limit,
            max_bytes: a.max_bytes,
            output_offset: a.output_offset,
        }
    }
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Workspace id.
    workspace_id: String,
    /// First entry to show (0-based).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Entries to show (1-1000).
    #[arg(long, default_value_t = pyro_core::ops::defaults::LOGS_LIMIT)]
    limit: u64,
    /// Bytes of each stream shown per entry.
    #[arg(long, default_value_t = pyro_core::ops::defaults::LOG_ENTRY_BYTES)]
    max_bytes: u64,
    /// Byte of each stream to start at (to page through one entry's output).
    #[arg(long, default_value_t = 0)]
    output_offset: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SyncCmd {
    /// Import a host directory or archive (merge; nothing is deleted).
    Push {
        /// Workspace id.
        workspace_id: String,
        /// Host directory or archive.
        source_path: PathBuf,
        /// Destination inside /workspace.
        #[arg(long, default_value = "/workspace")]
        dest: String,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum FileCmd {
    /// List a path.
    List {
        /// Workspace id.
        workspace_id: String,
        /// Path inside /workspace.
        #[arg(default_value = "/workspace")]
        path: String,
        /// Descend into subdirectories.
        #[arg(long)]
        recursive: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Read a file.
    Read {
        /// Workspace id.
        workspace_id: String,
        /// Path inside /workspace.
        path: String,
        /// Byte to start at (the next page: offset + bytes returned).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read at most.
        #[arg(long, default_value_t = pyro_core::ops::defaults::READ_BYTES)]
        max_bytes: i64,
        /// Print only the content.
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a text file (atomically; an existing file keeps its mode).
    Write {
        /// Workspace id.
        workspace_id: String,
        /// Path inside /workspace.
        path: String,
        /// The text.
        #[arg(
            long,
            allow_hyphen_values = true,
            conflicts_with = "text_file",
            required_unless_present = "text_file"
        )]
        text: Option<String>,
        /// A host file (UTF-8) holding the text.
        #[arg(long)]
        text_file: Option<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// List a path on the disk as the guest sees it (base image and upper layer merged).
    List {
        /// Workspace id.
        workspace_id: String,
        /// Relative: inside /workspace; absolute: any guest path. `\\` and `\xNN` as
        /// listed.
        #[arg(default_value = "/workspace")]
        path: String,
        /// Descend into subdirectories.
        #[arg(long)]
        recursive: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Read a regular file on the disk.
    Read {
        /// Workspace id.
        workspace_id: String,
        /// Relative: inside /workspace; absolute: any guest path.
        path: String,
        /// Bytes to read at most.
        #[arg(long, default_value_t = pyro_core::ops::defaults::READ_BYTES)]
        max_bytes: i64,
        /// Print only the content.
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Copy the disk (raw ext4, sparse; the overlay's upper layer) to a new host path.
    Export {
        /// Workspace id.
        workspace_id: String,
        /// Host path to create (must not exist).
        #[arg(long)]
        output: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PatchCmd {
    /// Apply a unified diff (`git diff` output) atomically.
    Apply {
        /// Workspace id.
        workspace_id: String,
        /// The patch text.
        #[arg(
            long,
            allow_hyphen_values = true,
            conflicts_with = "patch_file",
            required_unless_present = "patch_file"
        )]
        patch: Option<String>,
        /// A host file (UTF-8) holding the patch.
        #[arg(long)]
        patch_file: Option<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Workspace id.
    workspace_id: String,
    /// Path inside /workspace.
    path: String,
    /// Host path to create (must not exist).
    #[arg(long)]
    output: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| input_err(format!("--label `{p}` must have the form KEY=VALUE")))?;
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(map)
}

/// Reads `--text-file`/`--patch-file`: a regular file of at most `limit` bytes, checked
/// before it is read (never more than `limit + 1` bytes are read; FIFOs and devices are
/// refused without blocking).
fn read_text_file(p: &std::path::Path, flag: &str, limit: usize) -> anyhow::Result<String> {
    let bytes = pyro_core::hostfs::read_bounded(p, limit as u64)
        .map_err(|e| input_err(format!("{flag} {}: {e}", p.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| input_err(format!("{flag} {} is not valid UTF-8", p.display())))
}

/// `--secret NAME=VALUE` and `--secret-file NAME=PATH` as the request's secrets.
fn secret_params(
    literals: &[String],
    files: &[PathBuf],
    hosts: &[String],
) -> anyhow::Result<Vec<pyro_core::ops::SecretParam>> {
    let mut out: Vec<pyro_core::ops::SecretParam> = Vec::new();
    for s in literals {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| input_err("--secret takes NAME=VALUE".to_string()))?;
        out.push(pyro_core::ops::SecretParam {
            name: name.into(),
            value: Some(value.into()),
            file_path: None,
            hosts: None,
        });
    }
    for f in files {
        let text = f.to_string_lossy();
        let (name, path) = text
            .split_once('=')
            .ok_or_else(|| input_err("--secret-file takes NAME=PATH".to_string()))?;
        out.push(pyro_core::ops::SecretParam {
            name: name.into(),
            value: None,
            file_path: Some(std::path::Path::new(path).into()),
            hosts: None,
        });
    }
    for h in hosts {
        let (name, list) = h
            .split_once('=')
            .ok_or_else(|| input_err("--secret-host takes NAME=HOST[,HOST...]".to_string()))?;
        let Some(p) = out.iter_mut().find(|p| p.name == name) else {
            return Err(input_err(format!(
                "--secret-host {name}: no --secret or --secret-file named {name}"
            )));
        };
        p.hosts.get_or_insert_with(Vec::new).extend(
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    Ok(out)
}

fn summary(action: &str, w: &WorkspaceInfo) {
    println!("{action} ID: {}", w.workspace_id);
    if let Some(n) = &w.name {
        println!("Name: {n}");
    }
    if !w.labels.is_empty() {
        let l: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("Labels: {}", l.join(", "));
    }
    println!("Environment: {}", w.environment);
    println!("State: {}", w.state);
    println!("Workspace: {}", w.workspace_path);
    println!("Last activity at: {}", w.last_activity_at);
    println!("Network policy: {}", w.network_policy);
    if !w.secrets.is_empty() {
        let s: Vec<String> = w
            .secrets
            .iter()
            .map(|s| {
                if s.hosts.is_empty() {
                    format!("{} ({})", s.name, s.source_kind)
                } else {
                    format!("{} ({}, for {})", s.name, s.source_kind, s.hosts.join(" "))
                }
            })
            .collect();
        println!("Secrets: {}", s.join(", "));
    }
    if let Some(n) = &w.network {
        println!(
            "Network: guest {} via {} (namespace {}, MAC {})",
            n.guest_ip, n.gateway_ip, n.namespace, n.mac_address
        );
        if !n.allow_hosts.is_empty() || !n.allow_cidrs.is_empty() {
            println!(
                "Allowed: {}",
                n.allow_hosts
                    .iter()
                    .chain(&n.allow_cidrs)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "Denied: {} names, {} connections",
            n.dns_denied, n.connections_denied
        );
        for d in &n.recent_denials {
            println!(
                "  {} {} {} ({})",
                d.kind,
                d.name.as_deref().unwrap_or("-"),
                d.destination.as_deref().unwrap_or("-"),
                d.reason
            );
        }
    }
    match &w.workspace_seed.seed_path {
        Some(p) => println!("Workspace seed: {} from {p}", w.workspace_seed.mode),
        None => println!("Workspace seed: {}", w.workspace_seed.mode),
    }
    println!("Execution mode: {}", w.execution_mode);
    println!("Backend: {}", w.backend);
    println!("Resources: {} vCPU / {} MiB", w.vcpu_count, w.mem_mib);
    println!(
        "TTL: {} s ({:.0} s of running time left)",
        w.ttl_seconds, w.ttl_remaining_seconds
    );
    println!("Command count: {}", w.command_count);
    println!("Reset count: {}", w.reset_count);
    println!(
        "Snapshots: {} ({} bytes on disk)",
        w.snapshot_count, w.snapshot_bytes
    );
    if let Some(t) = w.last_reset_at {
        println!("Last reset at: {t}");
    }
    println!(
        "Services: {}/{} running",
        w.running_service_count, w.service_count
    );
    if let Some(c) = &w.last_command {
        println!("Last command: {} (exit_code={})", c.command, c.exit_code);
    }
    if let Some(e) = &w.last_error {
        println!("Last error: {e}");
    }
}

fn print_summary(s: &pyro_core::WorkspaceSummaryResult) {
    println!(
        "Workspace {} ({}), since {}",
        s.workspace_id, s.state, s.since
    );
    println!(
        "Commands: {} ({} failed)",
        s.command_count, s.failed_command_count
    );
    for c in &s.commands {
        println!(
            "  #{} exit_code={} duration_ms={}{} {}",
            c.sequence,
            c.exit_code,
            c.duration_ms,
            if c.timed_out { " timed_out" } else { "" },
            c.command
        );
    }
    println!("Events: {}", s.events_total);
    for e in &s.events {
        println!("  {} {}", e.kind, e.detail);
    }
    if !s.services.is_empty() {
        println!("Services: {}", s.services.join(", "));
    }
    match &s.changes {
        Some(c) => {
            println!(
                "Changes: {} ({} added, {} modified, {} deleted)",
                c.total, c.added, c.modified, c.deleted
            );
            for p in &s.changed_paths {
                println!("  {p}");
            }
        }
        None => println!(
            "Changes: {}",
            s.changes_note.as_deref().unwrap_or("unknown")
        ),
    }
}

fn show(json: bool, action: &str, w: &WorkspaceInfo) {
    if json {
        render::print_json(w);
    } else {
        summary(action, w);
    }
}

pub async fn run(cmd: WorkspaceCmd) -> Result<ExitCode, Failure> {
    match cmd {
        WorkspaceCmd::Create(a) => {
            let json = a.json;
            let f = fail(json);
            let req = pyro_core::ops::CreateWorkspaceRequest::try_from(&a)
                .map_err(&f)?
                .resolve(&pyro_core::ops::Ctx::default())
                .map_err(|e| f(e.into()))?;
            let pyro = open_pyro(Some(&a.backend)).map_err(&f)?;
            let progress = progress_unless(json || a.id_only, &a.environment);
            let w = pyro
                .create_workspace(req, progress)
                .await
                .map_err(|e| f(e.into()))?;
            if a.id_only {
                println!("{}", w.workspace_id);
            } else {
                show(json, "Workspace", &w);
            }
        }
        WorkspaceCmd::List(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let list = pyro.list_workspaces().await.map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&list);
            } else if list.workspaces.is_empty() {
                println!("No workspaces.");
            } else {
                for w in &list.workspaces {
                    let name = w
                        .name
                        .as_ref()
                        .map(|n| format!(" name={n:?}"))
                        .unwrap_or_default();
                    let labels = if w.labels.is_empty() {
                        String::new()
                    } else {
                        let l: Vec<String> =
                            w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!(" labels={}", l.join(","))
                    };
                    println!(
                        "[workspace] workspace_id={}{name} state={} environment={}{labels} last_activity_at={} ttl_remaining_seconds={:.0} commands={} services={}/{}",
                        w.workspace_id,
                        w.state,
                        w.environment,
                        w.last_activity_at,
                        w.ttl_remaining_seconds,
                        w.command_count,
                        w.running_service_count,
                        w.service_count
                    );
                }
            }
        }
        WorkspaceCmd::Publish(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let p = pyro
                .publish_port(&a.workspace_id, a.guest_port, a.host_port)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&p);
            } else {
                println!("{}:{} -> guest port {}", p.host, p.host_port, p.guest_port);
            }
        }
        WorkspaceCmd::Status(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let w = pyro
                .status_workspace(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            show(a.json, "Workspace", &w);
        }
        WorkspaceCmd::Update(a) => {
            let f = fail(a.json);
            let labels = parse_labels(&a.labels).map_err(&f)?;
            let pyro = open_pyro(None).map_err(&f)?;
            let req = UpdateWorkspace {
                name: a.name,
                clear_name: a.clear_name,
                labels,
                clear_labels: a.clear_labels,
                ttl_seconds: a.ttl_seconds,
            };
            let w = pyro
                .update_workspace(&a.workspace_id, req)
                .await
                .map_err(|e| f(e.into()))?;
            show(a.json, "Workspace", &w);
        }
        WorkspaceCmd::Exec(a) => return exec(a).await,
        WorkspaceCmd::Summary(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let s = pyro
                .summarize_workspace(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&s);
            } else {
                print_summary(&s);
            }
        }
        WorkspaceCmd::Shell(cmd) => return crate::procs::shell(cmd).await,
        WorkspaceCmd::Service(cmd) => return crate::procs::service(cmd).await,
        WorkspaceCmd::Logs(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let req = pyro_core::ops::LogsWorkspace::from(&a);
            let logs = pyro
                .logs_workspace_from(
                    &req.workspace_id,
                    req.offset,
                    req.limit,
                    req.max_bytes,
                    req.output_offset,
                )
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&logs);
            } else if logs.entries.is_empty() {
                println!("No workspace logs found.");
            } else {
                for e in &logs.entries {
                    println!(
                        "#{} exit_code={} duration_ms={} cwd={}",
                        e.sequence, e.exit_code, e.duration_ms, e.cwd
                    );
                    println!("$ {}", e.command);
                    print!("{}", e.stdout);
                    eprint!("{}", e.stderr);
                }
            }
        }
        WorkspaceCmd::Sync(SyncCmd::Push {
            workspace_id,
            source_path,
            dest,
            json,
        }) => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .push_workspace_sync(&workspace_id, &source_path, &dest)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                let s = &r.workspace_sync;
                println!(
                    "[workspace-sync] workspace_id={} mode={} source={} destination={} entry_count={} bytes_written={} execution_mode={}",
                    r.workspace_id,
                    s.mode,
                    s.source_path,
                    s.destination,
                    s.entry_count,
                    s.bytes_written,
                    r.execution_mode
                );
            }
        }
        WorkspaceCmd::File(cmd) => return file(cmd).await,
        WorkspaceCmd::Disk(cmd) => return disk(cmd).await,
        WorkspaceCmd::Snapshot(cmd) => return crate::snapshots::snapshot(cmd).await,
        WorkspaceCmd::Fork(a) => return crate::snapshots::fork(a).await,
        WorkspaceCmd::Patch(PatchCmd::Apply {
            workspace_id,
            patch,
            patch_file,
            json,
        }) => {
            let f = fail(json);
            let text = match (patch, patch_file) {
                (Some(t), _) => t,
                (None, Some(p)) => {
                    read_text_file(&p, "--patch-file", pyro_core::workspace::MAX_PATCH_BYTES)
                        .map_err(&f)?
                }
                (None, None) => return Err(f(input_err("give --patch or --patch-file"))),
            };
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .apply_workspace_patch(&workspace_id, &text)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                println!(
                    "[workspace-patch] workspace_id={} total={} added={} modified={} deleted={} execution_mode={}",
                    r.workspace_id,
                    r.summary.total,
                    r.summary.added,
                    r.summary.modified,
                    r.summary.deleted,
                    r.execution_mode
                );
            }
        }
        WorkspaceCmd::Diff(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let d = pyro
                .diff_workspace(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&d);
            } else if !d.changed {
                println!("No workspace changes.");
            } else {
                let s = &d.summary;
                println!(
                    "[workspace-diff] workspace_id={} total={} added={} modified={} deleted={} type_changed={} text_patched={} non_text={}",
                    d.workspace_id,
                    s.total,
                    s.added,
                    s.modified,
                    s.deleted,
                    s.type_changed,
                    s.text_patched,
                    s.non_text
                );
                print!("{}", d.patch);
            }
        }
        WorkspaceCmd::Export(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .export_workspace(&a.workspace_id, &a.path, &a.output)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                println!(
                    "[workspace-export] workspace_id={} workspace_path={} output_path={} artifact_type={} entry_count={} bytes_written={} execution_mode={}",
                    r.workspace_id,
                    r.workspace_path,
                    r.output_path,
                    r.artifact_type,
                    r.entry_count,
                    r.bytes_written,
                    r.execution_mode
                );
            }
        }
        WorkspaceCmd::Reset(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let progress = progress_unless(a.json, "");
            let w = pyro
                .reset_workspace_to(&a.workspace_id, &a.snapshot, progress)
                .await
                .map_err(|e| f(e.into()))?;
            show(a.json, "Reset workspace", &w);
        }
        WorkspaceCmd::Stop(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let w = pyro
                .stop_workspace(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            show(a.json, "Stopped workspace", &w);
        }
        WorkspaceCmd::Start(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let progress = progress_unless(a.json, "");
            let w = pyro
                .start_workspace(&a.workspace_id, progress)
                .await
                .map_err(|e| f(e.into()))?;
            show(a.json, "Started workspace", &w);
        }
        WorkspaceCmd::Delete(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .delete_workspace(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                println!("Deleted workspace: {}", r.workspace_id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(a: ExecArgs) -> Result<ExitCode, Failure> {
    let json = a.json;
    let f = fail(json);
    let req = pyro_core::ops::ExecWorkspace::try_from(&a).map_err(&f)?;
    let (workspace_id, opts) = req.into_parts(&pyro_core::ops::Ctx::default());
    let pyro = open_pyro(None).map_err(&f)?;
    let mut stdout_ok = true;
    let mut sink = |o: &Output| match o {
        Output::Stdout(b) => {
            if stdout_ok {
                let mut out = std::io::stdout().lock();
                if out.write_all(b).and_then(|_| out.flush()).is_err() {
                    stdout_ok = false;
                }
            }
        }
        Output::Stderr(b) => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b).and_then(|_| err.flush());
        }
    };
    let on_output: Option<pyro_core::OutputFn<'_>> = if json { None } else { Some(&mut sink) };
    let r = pyro
        .exec_workspace(&workspace_id, opts, on_output)
        .await
        .map_err(|e| f(e.into()))?;
    if json {
        render::print_json(&r);
    } else {
        if let Some(e) = &r.spawn_error {
            eprintln!("[workspace-exec] {e}");
        }
        eprintln!(
            "[workspace-exec] workspace_id={} sequence={} cwd={} execution_mode={} exit_code={} duration_ms={}{}",
            r.workspace_id,
            r.sequence,
            r.cwd,
            r.execution_mode,
            r.exit_code,
            r.duration_ms,
            if r.timed_out { " timed_out=yes" } else { "" }
        );
    }
    Ok(ExitCode::from((r.exit_code & 0xff) as u8))
}

async fn disk(cmd: DiskCmd) -> Result<ExitCode, Failure> {
    match cmd {
        DiskCmd::List {
            workspace_id,
            path,
            recursive,
            json,
        } => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .disk_list(&workspace_id, &path, recursive)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                println!(
                    "Workspace disk path: {} (recursive={})",
                    r.path,
                    if r.recursive { "yes" } else { "no" }
                );
                if r.entries.is_empty() {
                    println!("No workspace disk entries found.");
                }
                for e in &r.entries {
                    let link = e
                        .link_target
                        .as_ref()
                        .map(|t| format!(" -> {t}"))
                        .unwrap_or_default();
                    let kind = match &e.file_type {
                        Some(t) => format!("{}:{t}", e.artifact_type),
                        None => e.artifact_type.clone(),
                    };
                    println!("{} [{kind}] size={}{link}", e.path, e.size_bytes);
                }
                if r.truncated {
                    println!(
                        "(stopped at {} entries)",
                        pyro_core::workspace::MAX_DISK_LIST_ENTRIES
                    );
                }
            }
        }
        DiskCmd::Read {
            workspace_id,
            path,
            max_bytes,
            content_only,
            json,
        } => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .disk_read(&workspace_id, &path, max_bytes)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(r.content.as_bytes());
                if !content_only {
                    if !r.content.is_empty() && !r.content.ends_with('\n') {
                        let _ = out.write_all(b"\n");
                    }
                    eprintln!(
                        "[workspace-disk-read] workspace_id={} path={} size_bytes={} truncated={}",
                        r.workspace_id,
                        r.path,
                        r.size_bytes,
                        if r.truncated { "yes" } else { "no" }
                    );
                }
            }
        }
        DiskCmd::Export {
            workspace_id,
            output,
            json,
        } => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .disk_export(&workspace_id, &output)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                println!(
                    "[workspace-disk-export] workspace_id={} output_path={} disk_format={} bytes_written={}",
                    r.workspace_id, r.output_path, r.disk_format, r.bytes_written
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn file(cmd: FileCmd) -> Result<ExitCode, Failure> {
    match cmd {
        FileCmd::List {
            workspace_id,
            path,
            recursive,
            json,
        } => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .list_workspace_files(&workspace_id, &path, recursive)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                println!(
                    "Workspace path: {} (recursive={})",
                    r.path,
                    if r.recursive { "yes" } else { "no" }
                );
                if r.entries.is_empty() {
                    println!("No workspace entries found.");
                }
                for e in &r.entries {
                    let link = e
                        .link_target
                        .as_ref()
                        .map(|t| format!(" -> {t}"))
                        .unwrap_or_default();
                    println!(
                        "{} [{}] size={}{link}",
                        e.path, e.artifact_type, e.size_bytes
                    );
                }
            }
        }
        FileCmd::Read {
            workspace_id,
            path,
            offset,
            max_bytes,
            content_only,
            json,
        } => {
            let f = fail(json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .read_workspace_file_at(&workspace_id, &path, offset, max_bytes)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(r.content.as_bytes());
                if !content_only {
                    if !r.content.is_empty() && !r.content.ends_with('\n') {
                        let _ = out.write_all(b"\n");
                    }
                    eprintln!(
                        "[workspace-file-read] workspace_id={} path={} size_bytes={} truncated={}",
                        r.workspace_id,
                        r.path,
                        r.size_bytes,
                        if r.truncated { "yes" } else { "no" }
                    );
                }
            }
        }
        FileCmd::Write {
            workspace_id,
            path,
            text,
            text_file,
            json,
        } => {
            let f = fail(json);
            let text = match (text, text_file) {
                (Some(t), _) => t,
                (None, Some(p)) => {
                    read_text_file(&p, "--text-file", pyro_core::workspace::MAX_WRITE_BYTES)
                        .map_err(&f)?
                }
                (None, None) => return Err(f(input_err("give --text or --text-file"))),
            };
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .write_workspace_file(&workspace_id, &path, &text)
                .await
                .map_err(|e| f(e.into()))?;
            if json {
                render::print_json(&r);
            } else {
                println!(
                    "[workspace-file-write] workspace_id={} path={} bytes_written={} execution_mode={}",
                    r.workspace_id, r.path, r.bytes_written, r.execution_mode
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
