//! `pyro-core`: the one core behind every face of pyro (CLI, MCP, Python via JSON-RPC).
//!
//! [`Pyro`] owns the environment cache, the state directory and the ephemeral VMs of this
//! process. Each VM gets a private directory `<state>/vms/<id>/` holding its writable disk,
//! sockets, console log and an `owner.json` naming the process that owns it, so that VMs
//! orphaned by a crash are found and removed by the next `pyro` process ([`Pyro::reap_orphans`]).
//!
//! The lifecycle methods keep the reference's names and result fields: [`Pyro::create_vm`],
//! [`Pyro::start_vm`], [`Pyro::exec_vm`], [`Pyro::stop_vm`], [`Pyro::delete_vm`],
//! [`Pyro::status_vm`], [`Pyro::network_info_vm`], [`Pyro::reap_expired`] and
//! [`Pyro::run_in_vm`]. Validation lives here so every surface gets it.

pub mod archive;
pub mod backend;
pub mod error;
mod fault;
pub mod host;
pub mod hostfs;
pub mod ledger;
pub mod lock;
pub mod model;
pub mod net;
pub mod ops;
mod output;
pub mod project;
mod sandbox;
pub mod secrets;
pub mod store;
pub mod validate;
mod vm;
pub mod warm;
pub mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyro_proto::Session;
use pyro_proto::api::{self, Output};
use tokio::sync::Mutex;

pub use backend::{BackendChoice, BackendKind, HostFacts};
pub use error::{CoreError, ErrorKind, Result};
pub use model::*;
pub use output::{base64, base64_decode};
pub use validate::validate_exec;

use backend::{Backend, BootSpec, Machine};
use warm::pool;

/// Allowed vCPU counts.
pub const VCPU_RANGE: (i64, i64) = (1, 8);
/// Allowed guest memory, MiB.
pub const MEM_RANGE: (i64, i64) = (256, 32768);
/// Allowed TTL, seconds.
pub const TTL_RANGE: (i64, i64) = (60, 3600);
/// Largest exec timeout, seconds (one day; the reference had none).
pub const MAX_TIMEOUT_SECONDS: i64 = 86_400;
/// Size of each sandbox's writable disk (sparse; only written blocks use space).
pub const UPPER_DISK_MIB: u64 = 4096;
/// Output kept per stream in a captured result, unless the caller asks otherwise.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Extra time the host waits beyond a command's own timeout before giving up on the agent.
pub const HOST_GRACE: Duration = Duration::from_secs(30);
/// Largest command of an exec: the argv strings, each counted with its terminating NUL, or
/// the `--shell` script plus its NUL (Linux takes at most 128 KiB per argument too).
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// Largest exec request as sent to the guest: command, cwd and environment, JSON-encoded,
/// must fit one protocol message.
pub const MAX_EXEC_REQUEST_BYTES: usize = api::MAX_REQUEST_BYTES;
/// Largest stdin of an exec (64 MiB; the guest buffers it before the command starts).
pub const MAX_STDIN_BYTES: usize = api::MAX_STDIN_BYTES;

/// Where things live and which VMM to use.
#[derive(Clone, Debug)]
pub struct PyroOptions {
    /// State directory (VM directories); created 0700.
    pub state_dir: PathBuf,
    /// Environment and binary cache.
    pub cache_dir: PathBuf,
    /// VMM choice.
    pub backend: BackendChoice,
    /// The static guest agent; found automatically when `None`.
    pub agent_bin: Option<PathBuf>,
    /// Most VMs alive at once in this process.
    pub max_active_vms: usize,
    /// How long to wait for a booting guest's agent.
    pub boot_timeout: Duration,
    /// Bounds on seeds, sync pushes, exports and diffs.
    pub limits: archive::TransferLimits,
}

impl PyroOptions {
    /// Defaults from the environment: `PYRO_STATE_DIR`, `PYRO_CACHE_DIR`, `PYRO_BACKEND`,
    /// `PYRO_AGENT_BIN`, `PYRO_BOOT_TIMEOUT_SECS`.
    pub fn from_env() -> Result<Self> {
        let mut opts = Self::from_env_with_backend(BackendChoice::Auto)?;
        if let Ok(v) = std::env::var("PYRO_BACKEND")
            && !v.is_empty()
        {
            opts.backend = v.parse()?;
        }
        Ok(opts)
    }

    /// Like [`Self::from_env`], but with the backend given (ignoring `PYRO_BACKEND`).
    pub fn from_env_with_backend(backend: BackendChoice) -> Result<Self> {
        let boot_timeout = std::env::var("PYRO_BOOT_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(180));
        Ok(Self {
            state_dir: host::default_state_dir()?,
            cache_dir: pyro_image::default_cache_dir()?,
            backend,
            agent_bin: std::env::var_os("PYRO_AGENT_BIN").map(PathBuf::from),
            max_active_vms: 64,
            boot_timeout,
            limits: archive::TransferLimits::from_env()?,
        })
    }
}

/// A progress report from a long operation.
#[derive(Clone, Debug)]
pub enum ProgressEvent {
    /// A step of building an environment.
    Pull(pyro_image::Progress),
    /// Provisioning the Firecracker binary.
    Provision(String),
    /// Building a warm snapshot (done once per environment and machine shape).
    Snapshot(String),
    /// A service waiting for readiness (sent at least once a second while it waits).
    Service {
        /// The service.
        name: String,
        /// Since it started.
        elapsed_ms: u64,
        /// Probes tried so far.
        probe_attempts: u64,
        /// Why the last probe failed.
        last_probe_error: Option<String>,
    },
    /// A lifecycle phase of a one-shot run (`create`, `start`, `execute`).
    Phase {
        /// The phase.
        phase: &'static str,
        /// The VM, once it has an id.
        vm_id: Option<String>,
    },
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// A progress sink that drops everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Parameters of [`Pyro::create_vm`].
#[derive(Clone, Debug)]
pub struct CreateVm {
    /// Catalog name.
    pub environment: String,
    /// 1..=8.
    pub vcpu_count: i64,
    /// 256..=32768.
    pub mem_mib: i64,
    /// 60..=3600.
    pub ttl_seconds: i64,
    /// Guest networking: policy `egress` (public addresses only, see `docs/network.md`).
    pub network: bool,
    /// Host names the guest may reach (`api.example.org`, `*.example.org`): with any, egress
    /// is narrowed to these and `allow_cidrs`. Needs `network`.
    pub allow_hosts: Vec<String>,
    /// IPv4 ranges the guest may reach, also private ones otherwise blocked. Needs
    /// `network`.
    pub allow_cidrs: Vec<String>,
    /// Per-call backend choice; `None` uses the instance default.
    pub backend: Option<BackendChoice>,
}

impl CreateVm {
    /// The reference's defaults for `environment`.
    pub fn new(environment: impl Into<String>) -> Self {
        Self {
            environment: environment.into(),
            vcpu_count: 1,
            mem_mib: 1024,
            ttl_seconds: 600,
            network: false,
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            backend: None,
        }
    }
}

/// What to run: a string is run by `/bin/sh -c`, an array of strings is an argv run
/// directly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(
    untagged,
    expecting = "a string (run by /bin/sh -c) or an array of strings (argv, run directly)"
)]
pub enum Command {
    /// argv, run directly.
    Argv(Vec<String>),
    /// Run by /bin/sh -c.
    Shell(#[schemars(length(max = 131072))] String),
}

impl Command {
    fn display(&self) -> String {
        match self {
            Self::Argv(a) => host::shell_join(a),
            Self::Shell(s) => s.clone(),
        }
    }
}

/// Parameters of one exec.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The command.
    pub command: Command,
    /// Seconds before the command's whole process tree is killed (1..=86400).
    pub timeout_seconds: i64,
    /// Working directory in the guest (default `/workspace`).
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Bytes for the command's stdin (else `/dev/null`).
    pub stdin: Option<Bytes>,
    /// Output kept per stream in the result (default [`DEFAULT_MAX_OUTPUT_BYTES`]).
    pub max_output_bytes: Option<u64>,
    /// Whether the guest should send all output (for a live stream to a terminal) even
    /// beyond `max_output_bytes`; the result still keeps only the limit.
    pub stream_all: bool,
    /// Workspace secrets given to this command's environment: secret name -> variable name
    /// (empty: the secret's own name). Only workspaces have secrets.
    pub secret_env: BTreeMap<String, String>,
}

impl ExecOptions {
    /// Defaults: 30 s timeout, cwd `/workspace`, 1 MiB kept per stream.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            timeout_seconds: 30,
            cwd: None,
            env: BTreeMap::new(),
            stdin: None,
            max_output_bytes: None,
            stream_all: false,
            secret_env: BTreeMap::new(),
        }
    }
}

/// Round-trip samples from [`Pyro::round_trips`], in milliseconds.
#[derive(Clone, Debug)]
pub struct RoundTrips {
    /// `exec true` round trips.
    pub exec_ms: Vec<f64>,
    /// Protocol ping round trips.
    pub ping_ms: Vec<f64>,
}

/// A callback receiving output chunks as they arrive.
pub type OutputFn<'a> = &'a mut (dyn FnMut(&Output) + Send);

use vm::Vm;

/// The pyro core: environments, ephemeral VMs, and (later) workspaces.
pub struct Pyro {
    opts: PyroOptions,
    cache: pyro_image::Cache,
    facts: HostFacts,
    vms: StdMutex<HashMap<String, Arc<Mutex<Vm>>>>,
    backends: Mutex<HashMap<BackendKind, Arc<dyn Backend>>>,
    snapshots: AtomicBool,
    pool: pool::Pool,
    /// The one connection to the state database, opened on first use (see [`Pyro::store`]).
    store: StdMutex<Option<Arc<store::Store>>>,
}

impl std::fmt::Debug for Pyro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pyro")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Pyro {
    /// Opens the cache and state directories (creating them) and probes the host.
    pub fn new(opts: PyroOptions) -> Result<Self> {
        host::ensure_private_dir(&opts.state_dir)?;
        host::ensure_private_dir(&opts.state_dir.join("vms"))?;
        let cache = pyro_image::Cache::open(opts.cache_dir.clone())?;
        Ok(Self {
            opts,
            cache,
            facts: HostFacts::probe(),
            vms: StdMutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            snapshots: AtomicBool::new(warm::enabled_by_env()),
            pool: pool::Pool::default(),
            store: StdMutex::new(None),
        })
    }

    /// This instance's connection to `<state_dir>/pyro.db`, opened on first use and shared by
    /// every later call (a failed open is not kept: the next call tries again). Never call it,
    /// or anything that uses the store, from inside a [`store::Store::with_tx`] or
    /// [`store::Store::update_workspace`] closure: the connection is locked there.
    pub(crate) fn store(&self) -> Result<Arc<store::Store>> {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = slot.as_ref() {
            return Ok(Arc::clone(store));
        }
        let store = Arc::new(store::Store::open(&self.opts.state_dir)?);
        *slot = Some(Arc::clone(&store));
        Ok(store)
    }

    /// Whether first starts of one-shot VMs restore a warm snapshot (see [`warm`]). On
    /// unless `PYRO_SNAPSHOTS=0` was set when this instance was made.
    pub fn snapshots_enabled(&self) -> bool {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Turns warm snapshots on or off for later starts.
    pub fn set_snapshots_enabled(&self, on: bool) {
        self.snapshots.store(on, Ordering::Relaxed);
    }

    /// The options in force.
    pub fn options(&self) -> &PyroOptions {
        &self.opts
    }

    /// The host facts probed at construction.
    pub fn host_facts(&self) -> &HostFacts {
        &self.facts
    }

    /// The environment cache.
    pub fn cache(&self) -> &pyro_image::Cache {
        &self.cache
    }

    fn vm_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Vm>>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---------------------------------------------------------------- environments

    /// The catalog with install state.
    pub fn list_environments(&self) -> EnvironmentList {
        EnvironmentList {
            catalog_version: pyro_image::catalog::CATALOG_VERSION.to_string(),
            environments: pyro_image::list(&self.cache),
        }
    }

    /// Details of one environment (no building).
    pub fn inspect_environment(&self, name: &str) -> Result<pyro_image::EnvironmentInfo> {
        Ok(pyro_image::inspect(&self.cache, name)?)
    }

    /// Builds (or finds) an environment; idempotent, safe under concurrent pulls.
    pub async fn pull_environment(
        &self,
        name: &str,
        progress: ProgressFn,
    ) -> Result<pyro_image::Installed> {
        pyro_image::lookup(name)?;
        let agent = host::locate_agent(self.opts.agent_bin.as_deref())?;
        let cache = self.cache.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            pyro_image::ensure_environment(&cache, &name, &agent, &mut |p| {
                progress(&ProgressEvent::Pull(p))
            })
        })
        .await
        .map_err(|e| CoreError::Boot {
            reason: format!("environment build task failed: {e}"),
            console_tail: String::new(),
        })?
        .map_err(CoreError::from)
    }

    /// Removes stale cache entries, and warm snapshots that no longer fit their environment
    /// ([`warm::is_current`]).
    pub fn prune_environments(&self) -> Result<PruneResult> {
        let mut r = pyro_image::prune(&self.cache)?;
        let (snapshots, freed) = warm::SnapshotStore::new(self.cache.root())
            .prune(|meta| warm::is_current(meta, &self.cache));
        r.deleted.extend(snapshots);
        r.freed_bytes += freed;
        Ok(PruneResult {
            count: r.deleted.len(),
            deleted_environment_dirs: r.deleted,
            freed_bytes: r.freed_bytes,
        })
    }

    // ---------------------------------------------------------------- backends

    /// The backend `choice` resolves to on this host, created on first use.
    pub async fn backend(
        &self,
        choice: BackendChoice,
        progress: &ProgressFn,
    ) -> Result<Arc<dyn Backend>> {
        let kind = backend::resolve(choice, &self.facts)?;
        let mut map = self.backends.lock().await;
        if let Some(b) = map.get(&kind) {
            return Ok(b.clone());
        }
        let b: Arc<dyn Backend> = match kind {
            BackendKind::Qemu => Arc::new(backend::QemuBackend::new(&self.facts)?),
            BackendKind::Firecracker => {
                let cache_dir = self.opts.cache_dir.clone();
                let progress = progress.clone();
                let fc = tokio::task::spawn_blocking(move || {
                    backend::FirecrackerBackend::new(&cache_dir, &mut |m| {
                        progress(&ProgressEvent::Provision(m.to_string()))
                    })
                })
                .await
                .map_err(|e| CoreError::BackendUnavailable {
                    backend: BackendKind::Firecracker.as_str(),
                    reason: format!("provisioning task failed: {e}"),
                })??;
                Arc::new(fc)
            }
            #[cfg(feature = "fake-backend")]
            BackendKind::Fake => {
                let agent = host::locate_agent(self.opts.agent_bin.as_deref()).or_else(|e| {
                    // Any build of the agent serves on the host, a dynamic one included.
                    match e {
                        CoreError::AgentNotStatic { path } => Ok(path),
                        other => Err(other),
                    }
                })?;
                Arc::new(backend::FakeBackend::new(agent))
            }
        };
        map.insert(kind, b.clone());
        Ok(b)
    }
}

/// Removes a file, ignoring a missing one.
fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("remove", path, e)),
    }
}

/// Connects to the agent through the machine's `CONNECT` socket, retrying until it answers,
/// the VMM dies, or the deadline passes; then sets the guest's clock.
pub(crate) async fn connect_agent(machine: &mut dyn Machine, timeout: Duration) -> Result<Session> {
    let session = connect_agent_session(machine, timeout).await?;
    sync_clock(&session).await;
    Ok(session)
}

/// [`connect_agent`] without setting the clock (a restored guest gets it with
/// [`warm::reseed`]).
pub(crate) async fn connect_agent_session(
    machine: &mut dyn Machine,
    timeout: Duration,
) -> Result<Session> {
    let deadline = Instant::now() + timeout;
    loop {
        if !machine.is_alive() {
            return Err(CoreError::Boot {
                reason: "the VMM exited before the guest agent answered".into(),
                console_tail: machine.console_tail(4000),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CoreError::Boot {
                reason: format!(
                    "the guest agent did not answer within {} s",
                    timeout.as_secs()
                ),
                console_tail: machine.console_tail(4000),
            });
        }
        // Short attempts, so a dead VMM is noticed quickly.
        let attempt = left.min(Duration::from_millis(500));
        if let Ok(stream) = machine.connect(attempt).await {
            let cfg = pyro_proto::Config {
                handshake_timeout: left,
                ..pyro_proto::Config::default()
            };
            // The agent (or the relay) answers the handshake once it is ready.
            let handshake = Session::client(stream, cfg);
            tokio::pin!(handshake);
            let session = loop {
                tokio::select! {
                    r = &mut handshake => break r,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if !machine.is_alive() {
                            return Err(CoreError::Boot {
                                reason: "the VMM exited before the guest agent answered".into(),
                                console_tail: machine.console_tail(4000),
                            });
                        }
                    }
                }
            };
            match session {
                Ok(s) => return Ok(s),
                Err(e) => {
                    tracing::debug!("agent handshake failed, retrying: {e}");
                }
            }
        }
    }
}

pub(crate) async fn sync_clock(session: &Session) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let req = api::Request::SyncClock(api::SyncClock { unix_nanos: nanos });
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        api::call::<api::Empty>(session, &req),
    )
    .await;
}

async fn run_exec(
    session: &Session,
    info: &VmInfo,
    opts: ExecOptions,
    on_output: Option<OutputFn<'_>>,
) -> Result<VmExecResult> {
    let limit = output::result_limit(&opts);
    // The guest sends only what the result keeps, unless a live stream wants all of it.
    let forward = if opts.stream_all { None } else { Some(limit) };
    let cwd = opts.cwd.as_deref().unwrap_or("/workspace");
    let mut pipe = output::OutputPipeline::new(limit, on_output);
    let res = output::exec(session, &opts, cwd, forward, &mut pipe).await?;
    let out = pipe.finish(&res)?;
    Ok(VmExecResult {
        vm_id: info.vm_id.clone(),
        environment: info.environment.clone(),
        environment_version: info.environment_version.clone(),
        command: opts.command.display(),
        stdout: out.stdout.text,
        stderr: out.stderr.text,
        exit_code: res.exit_code,
        duration_ms: res.duration_ms,
        execution_mode: info.execution_mode.clone(),
        cleanup: Cleanup {
            vm_id: info.vm_id.clone(),
            deleted: false,
            reason: String::new(),
        },
        timed_out: res.timed_out,
        signal: res.signal,
        stdout_bytes: res.stdout_bytes,
        stderr_bytes: res.stderr_bytes,
        stdout_truncated: out.stdout.truncated,
        stderr_truncated: out.stderr.truncated,
        stdout_base64: out.stdout.base64,
        stderr_base64: out.stderr.base64,
        spawn_error: res.spawn_error,
        backend: info.backend.clone(),
        boot_ms: None,
        boot_mode: None,
    })
}
