//! `pyro`: the command-line face of pyro. It parses, calls [`pyro_core::Pyro`], and renders;
//! it holds no business logic.

// Standard output belongs to data, and a reader that stops reading is not an error: `pyro
// workspace list --json | head -c1` must end quietly with exit code 0, where std's `println!`
// panics on EPIPE. These two macros shadow std's in this file and in every module declared
// below (macro_rules scope is textual), so every `println!`/`print!` of the CLI goes through
// `write_stdout`.

/// `println!` for this binary: see [`write_stdout`].
macro_rules! println {
    () => {
        $crate::write_stdout(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `print!` for this binary: see [`write_stdout`].
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::write_stdout(::std::format_args!($($arg)*))
    };
}

mod bench;
mod bench_net;
mod bench_procs;
mod bench_snap;
mod doctor;
mod host_config;
mod mcp;
mod procs;
mod render;
mod rpc;
mod snapshots;
mod workspace;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use pyro_core::{
    BackendChoice, Command, CoreError, CreateVm, ExecOptions, ProgressEvent, ProgressFn, Pyro,
    PyroOptions,
};
use pyro_proto::api::Output;

/// Sandboxes for AI coding agents: run commands in disposable microVMs.
#[derive(Parser, Debug)]
#[command(name = "pyro", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Manage environments (guest images).
    #[command(subcommand)]
    Env(EnvCmd),
    /// Run one command in a fresh sandbox, then destroy it.
    Run(RunArgs),
    /// Persistent workspaces: one sandbox across many calls.
    #[command(subcommand)]
    Workspace(workspace::WorkspaceCmd),
    /// Check whether this host can run sandboxes, and say why not.
    Doctor(DoctorArgs),
    /// Build an environment and its warm snapshot ahead of time, so the first sandbox
    /// starts warm.
    Prepare(PrepareArgs),
    /// Run `git --version` in a debian:12 sandbox and print the result as JSON.
    Demo(DemoArgs),
    /// Serve the MCP server (tool profiles) on stdio or loopback HTTP.
    #[command(subcommand)]
    Mcp(mcp::McpCmd),
    /// Configure MCP clients (Claude Code, Codex, Cursor, opencode) to use `pyro mcp serve`.
    #[command(subcommand)]
    Host(host_config::HostCmd),
    /// Measure cold start and exec round trips (median, p95) per available backend.
    Bench(bench::BenchArgs),
    /// JSON-RPC 2.0 over stdio (one JSON object per line), used by the Python SDK.
    #[command(hide = true)]
    Rpc(rpc::RpcArgs),
    /// Print the operation catalogue (every SDK/JSON-RPC method, its MCP tool and its request
    /// schema with defaults) as JSON: what the Python SDK is checked against.
    #[command(hide = true)]
    Catalogue,
    /// Internal: stop a workspace when its TTL runs out (one process per boot).
    #[command(name = "__watchdog", hide = true)]
    Watchdog {
        /// The workspace (the boot recorded when the watchdog starts is watched).
        workspace_id: String,
    },
    /// Internal: a networked sandbox's network daemon (resolver, egress proxy), from the
    /// JSON spec at SPEC; prints one line once it serves.
    #[command(name = "__net", hide = true)]
    Net {
        /// The daemon's spec file.
        spec: std::path::PathBuf,
    },
    /// Internal: a published port's relay (host 127.0.0.1 -> guest), from the JSON spec at
    /// SPEC; prints the bound address once it listens.
    #[command(name = "__port-relay", hide = true)]
    PortRelay {
        /// The relay's spec file.
        spec: std::path::PathBuf,
    },
    /// Internal: relay a persistent QEMU sandbox's agent port to DIR/vsock.sock.
    #[command(name = "__relay", hide = true)]
    Relay {
        /// The sandbox directory (holding QEMU's agent.sock).
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EnvCmd {
    /// List the catalog and what is installed.
    List(JsonFlag),
    /// Build (or find) an environment in the local cache.
    Pull(EnvArg),
    /// Show an environment's details.
    Inspect(EnvArg),
    /// Delete stale and unreferenced cache entries.
    Prune(JsonFlag),
}

#[derive(Args, Debug)]
struct JsonFlag {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EnvArg {
    /// Environment name (debian:12, debian:12-base, debian:12-build).
    environment: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Environment name (debian:12, debian:12-base, debian:12-build).
    environment: String,
    /// Virtual CPUs (1-8).
    #[arg(long, default_value_t = pyro_core::ops::defaults::VCPU_COUNT)]
    vcpu_count: i64,
    /// Guest memory in MiB (256-32768).
    #[arg(long, default_value_t = pyro_core::ops::defaults::MEM_MIB)]
    mem_mib: i64,
    /// Seconds before the command's whole process tree is killed (exit code 124).
    #[arg(long, default_value_t = pyro_core::ops::defaults::TIMEOUT_SECONDS)]
    timeout_seconds: i64,
    /// Lifetime of the sandbox in seconds (60-3600).
    #[arg(long, default_value_t = pyro_core::ops::defaults::VM_TTL_SECONDS)]
    ttl_seconds: i64,
    /// Give the guest egress to public addresses (policy `egress`; private ranges, the host
    /// and metadata endpoints stay blocked). Needs CAP_NET_ADMIN, ip and nft.
    #[arg(long)]
    network: bool,
    /// With --network: only these host names (repeatable; `*.example.org` for names below).
    #[arg(long = "allow-host", value_name = "NAME", requires = "network")]
    allow_hosts: Vec<String>,
    /// With --network: also this IPv4 range, even a private one (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR", requires = "network")]
    allow_cidrs: Vec<String>,
    /// VMM: auto, firecracker or qemu.
    #[arg(long, env = "PYRO_BACKEND", default_value = "auto")]
    backend: String,
    /// Print the whole result as JSON on stdout (output is captured, not streamed).
    #[arg(long)]
    json: bool,
    /// Run the command words joined by spaces through `/bin/sh -c` (default: exec directly).
    #[arg(long)]
    shell: bool,
    /// Working directory in the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the command (repeatable), KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Bytes of each output stream kept in the JSON result (default 1 MiB).
    #[arg(long)]
    max_output_bytes: Option<u64>,
    /// The command and its arguments (after `--`, or directly after the environment).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Platform to report (only linux-x86_64 is supported).
    #[arg(long, default_value = "linux-x86_64")]
    platform: String,
    /// Also report whether this environment is ready (built, with a current warm
    /// snapshot), cold (no snapshot), stale (snapshot of an older build) or missing.
    #[arg(long, value_name = "ENV")]
    environment: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct PrepareArgs {
    /// Environment name (debian:12, debian:12-base, debian:12-build).
    #[arg(default_value = "debian:12")]
    environment: String,
    /// VMM: auto, firecracker or qemu.
    #[arg(long, env = "PYRO_BACKEND", default_value = "auto")]
    backend: String,
    /// Print the result as JSON on stdout (no progress on stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Run the demo with egress to public addresses (policy egress).
    #[arg(long)]
    network: bool,
}

/// An error the CLI reports and exits 1 on; `json` selects the error shape.
struct Failure {
    error: anyhow::Error,
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[error] cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(Failure { error, json }) => {
            if json {
                let mut v = serde_json::json!({"ok": false, "error": format!("{error:#}"), "error_kind": error_kind(&error)});
                // Structured facts of the error (a failed service's record).
                if let Some(data) = error.downcast_ref::<CoreError>().and_then(CoreError::data) {
                    v["data"] = data;
                }
                println!("{}", render::pretty(&v));
            } else {
                eprintln!("[error] {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout and flushes. When the reader has gone (EPIPE: `| head`, a closed pager)
/// the process ends at once with exit code 0 and says nothing, as ripgrep does: nobody is
/// left to read the rest, and the work it reports is done. Any other write error is reported
/// on stderr and ends the process with exit code 1.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        drop(out);
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("[error] cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A bad argument caught by the CLI itself (reported with `error_kind: invalid_input`).
#[derive(Debug)]
struct InputError(String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Builds an [`InputError`].
fn input_err(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.into()))
}

fn error_kind(e: &anyhow::Error) -> serde_json::Value {
    if e.downcast_ref::<InputError>().is_some() {
        return serde_json::json!("invalid_input");
    }
    e.downcast_ref::<CoreError>()
        .map(|c| serde_json::to_value(c.kind()).unwrap_or(serde_json::Value::Null))
        .unwrap_or(serde_json::Value::Null)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PYRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn fail(json: bool) -> impl Fn(anyhow::Error) -> Failure {
    move |error| Failure { error, json }
}

/// The pre-warmed pool of a long-lived server (`pyro mcp serve`, `pyro rpc`).
#[derive(clap::Args, Debug)]
pub struct PoolArgs {
    /// Keep this many one-shot sandboxes started and paused, ready for `vm_run` /
    /// `run_in_vm` calls of the pool's shape (0: no pool; at most 16).
    #[arg(long, env = "PYRO_POOL_SIZE", default_value_t = 0, value_name = "N")]
    pool_size: usize,
    /// Environment of the pooled sandboxes.
    #[arg(long, default_value = "debian:12", value_name = "ENV")]
    pool_environment: String,
    /// vCPUs of the pooled sandboxes (calls asking for another count are not pooled).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pool_vcpu_count: i64,
    /// Memory of the pooled sandboxes, MiB (calls asking for another size are not pooled).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pool_mem_mib: i64,
    /// Networked pooled sandboxes (policy egress, no allowlist), for calls with `network`
    /// and no allowlist (others are not pooled).
    #[arg(long)]
    pool_network: bool,
}

impl PoolArgs {
    /// Enables the pool on `pyro` when `--pool-size` is not 0.
    pub fn enable(&self, pyro: &std::sync::Arc<Pyro>) -> anyhow::Result<()> {
        if self.pool_size == 0 {
            return Ok(());
        }
        let mut spec =
            pyro_core::warm::pool::PoolSpec::new(self.pool_environment.clone(), self.pool_size);
        spec.vcpu_count = self.pool_vcpu_count;
        spec.mem_mib = self.pool_mem_mib;
        spec.network = self.pool_network;
        pyro.enable_pool(spec)?;
        tracing::info!(
            size = self.pool_size,
            environment = self.pool_environment,
            "pool enabled"
        );
        Ok(())
    }
}

/// Opens the core. Commands that boot sandboxes pass their `--backend` (which clap fills
/// from `PYRO_BACKEND`); the others do not depend on a backend at all.
fn open_pyro(backend: Option<&str>) -> anyhow::Result<Pyro> {
    let choice = match backend {
        Some(b) => b.parse::<BackendChoice>()?,
        None => BackendChoice::Auto,
    };
    Ok(Pyro::new(PyroOptions::from_env_with_backend(choice)?)?)
}

/// Progress lines on stderr, or none when `quiet` (`--json`, `--id-only`): machine-readable
/// output stays alone.
fn progress_unless(quiet: bool, environment: &str) -> ProgressFn {
    if quiet {
        pyro_core::no_progress()
    } else {
        stderr_progress(environment.to_string())
    }
}

/// Progress lines on stderr (human mode only). Build steps print when they start, and at
/// most every 5 s while they run (with the latest tool output line), so a terminal shows
/// steady progress without a flood.
fn stderr_progress(environment: String) -> ProgressFn {
    let last: std::sync::Mutex<(&'static str, f64)> = std::sync::Mutex::new(("", 0.0));
    Arc::new(move |ev: &ProgressEvent| {
        let line = match ev {
            ProgressEvent::Pull(p) => {
                let t = p.elapsed.as_secs_f64();
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.0 == p.phase && t - last.1 < 5.0 {
                    return;
                }
                *last = (p.phase, t);
                let mut msg: String = p.message.lines().next().unwrap_or("").to_string();
                if msg.chars().count() > 100 {
                    msg = msg.chars().take(100).collect::<String>() + "...";
                }
                format!(
                    "[pull] environment={} step={}/{} phase={} elapsed={:.1}s {}",
                    environment, p.step, p.total, p.phase, t, msg
                )
            }
            ProgressEvent::Provision(m) => format!("[firecracker] {m}"),
            ProgressEvent::Snapshot(m) => format!("[snapshot] {m}"),
            ProgressEvent::Service {
                name,
                elapsed_ms,
                probe_attempts,
                last_probe_error,
            } => {
                // A line every 5 s of waiting, not one per probe.
                let t = *elapsed_ms as f64 / 1000.0;
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.0 == "service" && t - last.1 < 5.0 {
                    return;
                }
                *last = ("service", t);
                format!(
                    "[service] {name}: waiting for readiness ({} s, {probe_attempts} probes{})",
                    elapsed_ms / 1000,
                    last_probe_error
                        .as_deref()
                        .map(|e| format!("; last: {e}"))
                        .unwrap_or_default()
                )
            }
            ProgressEvent::Phase { phase, vm_id } => match vm_id {
                Some(id) => format!("[run] phase={phase} vm_id={id}"),
                None => format!("[run] phase={phase} environment={environment}"),
            },
        };
        eprintln!("{}", line.trim_end());
    })
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Top::Env(cmd) => env_cmd(cmd).await,
        Top::Run(args) => run_cmd(args).await,
        Top::Workspace(cmd) => workspace::run(cmd).await,
        Top::Doctor(args) => doctor::run(&args.platform, args.environment.as_deref(), args.json)
            .map_err(fail(args.json)),
        Top::Prepare(args) => prepare(args).await,
        Top::Demo(args) => demo(args).await.map_err(fail(true)),
        Top::Bench(args) => bench::run(args).await.map_err(fail(false)),
        Top::Mcp(cmd) => mcp::run(cmd).await,
        Top::Host(cmd) => host_config::run(cmd).await,
        Top::Rpc(args) => rpc::run(args).await.map_err(fail(false)),
        Top::Catalogue => {
            let settings = || {
                let mut s = schemars::generate::SchemaSettings::draft2020_12();
                s.inline_subschemas = true;
                s
            };
            let ops: Vec<serde_json::Value> = pyro_core::ops::Op::catalogue()
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "method": o.method,
                        "tool": o.tool,
                        "input_schema": o.input_schema(settings()),
                    })
                })
                .collect();
            render::print_json(&ops);
            Ok(ExitCode::SUCCESS)
        }
        Top::Watchdog { workspace_id } => {
            let pyro = open_pyro(None).map_err(fail(false))?;
            pyro.watch_workspace(&workspace_id)
                .await
                .map_err(|e| fail(false)(e.into()))?;
            Ok(ExitCode::SUCCESS)
        }
        Top::Net { spec } => {
            let served = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let (spec, _) = pyro_net::daemon::DaemonSpec::load(&spec)?;
                pyro_net::daemon::run(spec, |ready| {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", serde_json::to_string(ready).unwrap_or_default());
                    let _ = out.flush();
                })?;
                Ok(())
            })
            .await
            .map_err(|e| fail(false)(e.into()))?;
            served.map_err(fail(false))?;
            Ok(ExitCode::SUCCESS)
        }
        Top::PortRelay { spec } => {
            let relayed = async {
                let bytes = pyro_core::hostfs::read_bounded(&spec, 64 * 1024)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", spec.display()))?;
                let spec: pyro_net::RelaySpec = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("invalid port relay spec {}: {e}", spec.display())
                })?;
                pyro_net::ports::run_relay(spec, |addr| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{addr}");
                    let _ = out.flush();
                })
                .await?;
                anyhow::Ok(())
            }
            .await;
            relayed.map_err(fail(false))?;
            Ok(ExitCode::SUCCESS)
        }
        Top::Relay { dir } => {
            let agent = dir.join(pyro_qemu::AGENT_SOCKET);
            let listen = dir.join(pyro_qemu::RELAY_SOCKET);
            let boot = std::env::var("PYRO_BOOT_TIMEOUT_SECS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(180);
            let opts = pyro_qemu::RelayOptions {
                handshake_timeout: std::time::Duration::from_secs(boot),
                ..pyro_qemu::RelayOptions::default()
            };
            pyro_qemu::run_relay_with(&agent, &listen, None, &opts)
                .await
                .map_err(|e| fail(false)(e.into()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn env_cmd(cmd: EnvCmd) -> Result<ExitCode, Failure> {
    match cmd {
        EnvCmd::List(f) => {
            let pyro = open_pyro(None).map_err(fail(f.json))?;
            let list = pyro.list_environments();
            if f.json {
                render::print_json(&list);
            } else {
                println!("Catalog version: {}", list.catalog_version);
                for e in &list.environments {
                    println!(
                        "{} [{}] {}",
                        e.name,
                        if e.installed {
                            "installed"
                        } else {
                            "not installed"
                        },
                        e.description
                    );
                }
            }
        }
        EnvCmd::Pull(a) => {
            let pyro = open_pyro(None).map_err(fail(a.json))?;
            let progress = progress_unless(a.json, &a.environment);
            pyro.pull_environment(&a.environment, progress)
                .await
                .map_err(|e| fail(a.json)(e.into()))?;
            let info = pyro
                .inspect_environment(&a.environment)
                .map_err(|e| fail(a.json)(e.into()))?;
            if a.json {
                render::print_json(&info);
            } else {
                render::env_block("Pulled", &info);
            }
        }
        EnvCmd::Inspect(a) => {
            let pyro = open_pyro(None).map_err(fail(a.json))?;
            let info = pyro
                .inspect_environment(&a.environment)
                .map_err(|e| fail(a.json)(e.into()))?;
            if a.json {
                render::print_json(&info);
            } else {
                render::env_block("Environment", &info);
            }
        }
        EnvCmd::Prune(f) => {
            let pyro = open_pyro(None).map_err(fail(f.json))?;
            let r = pyro
                .prune_environments()
                .map_err(|e| fail(f.json)(e.into()))?;
            if f.json {
                render::print_json(&r);
            } else {
                println!(
                    "Deleted {} cached environment {}.",
                    r.count,
                    if r.count == 1 { "entry" } else { "entries" }
                );
                for d in &r.deleted_environment_dirs {
                    println!("- {d}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_env_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| input_err(format!("--env `{p}` must have the form KEY=VALUE")))?;
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// The command of `run` and `workspace exec`: the words after the environment or workspace
/// (a leading `--` dropped), run directly, or joined by spaces for `/bin/sh -c` with
/// `--shell`. `usage` is the command line the error shows when there are none.
fn command_words(
    words: &[String],
    shell: bool,
    usage: impl FnOnce() -> String,
) -> anyhow::Result<Command> {
    let words = match words.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => words,
    };
    if words.is_empty() {
        return Err(input_err(format!("a command is required: {}", usage())));
    }
    Ok(if shell {
        Command::Shell(words.join(" "))
    } else {
        Command::Argv(words.to_vec())
    })
}

impl TryFrom<&RunArgs> for pyro_core::ops::RunInVm {
    type Error = anyhow::Error;
    fn try_from(a: &RunArgs) -> anyhow::Result<Self> {
        let usage = || format!("pyro run {} -- CMD [ARGS...]", a.environment);
        Ok(Self {
            environment: a.environment.clone(),
            command: command_words(&a.command, a.shell, usage)?,
            vcpu_count: a.vcpu_count,
            mem_mib: a.mem_mib,
            timeout_seconds: a.timeout_seconds,
            ttl_seconds: a.ttl_seconds,
            network: a.network,
            allow_hosts: Some(a.allow_hosts.clone()),
            allow_cidrs: Some(a.allow_cidrs.clone()),
            allow_host_compat: false,
            // `--backend` chose the instance's default (`open_pyro`).
            backend: None,
            cwd: a.cwd.clone(),
            env: Some(parse_env_pairs(&a.env)?),
            max_output_bytes: a.max_output_bytes,
            stdin: None,
        })
    }
}

async fn run_cmd(args: RunArgs) -> Result<ExitCode, Failure> {
    let json = args.json;
    let f = fail(json);
    let req = pyro_core::ops::RunInVm::try_from(&args).map_err(&f)?;
    let pyro = open_pyro(Some(&args.backend)).map_err(&f)?;
    let (create, mut exec) = req
        .into_parts(&pyro_core::ops::Ctx::default())
        .map_err(|e| f(e.into()))?;
    exec.stream_all = !json;
    let progress = progress_unless(json, &args.environment);
    let mut stdout_ok = true;
    let mut sink = |o: &Output| match o {
        Output::Stdout(b) => {
            if stdout_ok {
                let mut out = std::io::stdout().lock();
                if out.write_all(b).and_then(|_| out.flush()).is_err() {
                    // A closed pipe (e.g. `| head`) is not an error; stop writing.
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
    let run = pyro.run_in_vm(create, exec, progress, on_output);
    let result = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => {
            pyro.shutdown().await;
            eprintln!("[run] interrupted; the sandbox was destroyed");
            return Ok(ExitCode::from(130));
        }
    };
    let result = result.map_err(|e| f(e.into()))?;
    if json {
        render::print_json(&result);
    } else {
        if let Some(e) = &result.spawn_error {
            eprintln!("[run] {e}");
        }
        eprintln!(
            "[run] environment={} backend={} execution_mode={} exit_code={} duration_ms={}{}{}{}",
            result.environment,
            result.backend,
            result.execution_mode,
            result.exit_code,
            result.duration_ms,
            result
                .boot_ms
                .map(|b| format!(" boot_ms={b}"))
                .unwrap_or_default(),
            result
                .boot_mode
                .as_deref()
                .map(|m| format!(" boot_mode={m}"))
                .unwrap_or_default(),
            if result.timed_out {
                " timed_out=yes"
            } else {
                ""
            },
        );
    }
    Ok(ExitCode::from((result.exit_code & 0xff) as u8))
}

/// `pyro prepare`: the environment and its warm snapshot, built now.
async fn prepare(args: PrepareArgs) -> Result<ExitCode, Failure> {
    let f = fail(args.json);
    let pyro = open_pyro(Some(&args.backend)).map_err(&f)?;
    let progress = progress_unless(args.json, &args.environment);
    let started = std::time::Instant::now();
    let r = pyro
        .prepare_environment(&args.environment, progress)
        .await
        .map_err(|e| f(e.into()))?;
    if args.json {
        render::print_json(&r);
    } else {
        println!("Environment: {}", r.environment);
        println!("State: {}", r.state.as_str());
        println!("Detail: {}", r.detail);
        println!("Elapsed: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let pyro = open_pyro(None)?;
    let mut create = CreateVm::new("debian:12");
    create.network = args.network;
    let exec = ExecOptions::new(Command::Argv(vec!["git".into(), "--version".into()]));
    let r = pyro
        .run_in_vm(create, exec, stderr_progress("debian:12".into()), None)
        .await?;
    render::print_json(&r);
    Ok(ExitCode::SUCCESS)
}
