//! The VMM backends behind one trait, and how `auto` picks one.
//!
//! Everything above [`Backend`] is shared: a booted [`Machine`] exposes one Unix socket that
//! speaks Firecracker's hybrid-vsock `CONNECT <port>` handshake. Firecracker provides that
//! socket itself; for QEMU a relay (in this process) offers it on top of the virtio-serial
//! port, so the host-side client code is the same for both.
//!
//! Warm snapshots (see [`crate::warm`]) use four optional operations, implemented by the
//! QEMU backend: [`Backend::snapshot_identity`], [`Backend::boot_for_snapshot`],
//! [`Machine::detach_agent`] + [`Machine::save_state`], and [`Backend::restore`]. A backend
//! that keeps the defaults simply always boots cold.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{CoreError, Result};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which VMM to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// Firecracker when KVM is hardware-assisted, else QEMU.
    Auto,
    /// Firecracker.
    Firecracker,
    /// QEMU `microvm` (KVM when hardware-assisted, else TCG).
    Qemu,
}

impl std::str::FromStr for BackendChoice {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "firecracker" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            other => Err(CoreError::Invalid {
                field: "backend",
                reason: format!("`{other}` is not one of auto, firecracker, qemu"),
            }),
        }
    }
}

/// A concrete backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Firecracker.
    Firecracker,
    /// QEMU.
    Qemu,
}

impl BackendKind {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }

    /// The `execution_mode` of sandboxes on this backend.
    pub fn execution_mode(self) -> &'static str {
        match self {
            Self::Firecracker => "guest_vsock",
            Self::Qemu => "guest_serial",
        }
    }
}

/// The host facts that decide the backend.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub kvm_exists: bool,
    /// `/dev/kvm` can be opened read-write.
    pub kvm_usable: bool,
    /// KVM is hardware-assisted (vmx/svm and kvm_intel/kvm_amd).
    pub kvm_hardware_assisted: bool,
    /// KVM is the paravirtual kvm_pvm, which cannot run ordinary guest kernels.
    pub kvm_paravirtual: bool,
    /// Human summary.
    pub kvm_reason: String,
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn probe() -> Self {
        let k = pyro_firecracker::kvm_status();
        Self {
            kvm_exists: k.exists,
            kvm_usable: k.readable && k.writable,
            kvm_hardware_assisted: k.hardware_assisted,
            kvm_paravirtual: k.paravirtual_pvm,
            kvm_reason: k.reason.clone(),
        }
    }

    /// Whether guests can use KVM acceleration here.
    pub fn kvm_accelerates(&self) -> bool {
        self.kvm_usable && self.kvm_hardware_assisted
    }
}

/// Resolves `auto` and checks an explicit choice against the host.
pub fn resolve(choice: BackendChoice, facts: &HostFacts) -> Result<BackendKind> {
    match choice {
        BackendChoice::Auto => Ok(if facts.kvm_accelerates() {
            BackendKind::Firecracker
        } else {
            BackendKind::Qemu
        }),
        BackendChoice::Qemu => Ok(BackendKind::Qemu),
        BackendChoice::Firecracker => {
            if facts.kvm_accelerates() {
                Ok(BackendKind::Firecracker)
            } else {
                Err(CoreError::BackendUnavailable {
                    backend: "firecracker",
                    reason: format!(
                        "Firecracker needs hardware-assisted KVM ({}); use --backend qemu or auto",
                        facts.kvm_reason
                    ),
                })
            }
        }
    }
}

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootSpec<'a> {
    /// The sandbox id.
    pub id: &'a str,
    /// Its private directory (all sockets and logs live here, by relative path).
    pub workdir: &'a Path,
    /// The environment's artifacts.
    pub env: &'a pyro_image::Installed,
    /// The per-sandbox writable disk.
    pub upper: &'a Path,
    /// Virtual CPUs.
    pub vcpu_count: u8,
    /// Guest memory.
    pub mem_mib: u32,
    /// Whether the VMM must outlive this process (workspaces) or die with it (one-shot runs).
    pub persistent: bool,
    /// Whether the guest's flushes of the writable disk must reach the host file
    /// (workspaces, and the snapshots they restore from); one-shot disks skip them.
    pub durable_disk: bool,
    /// For persistent QEMU sandboxes: the `pyro` binary to run as `pyro __relay DIR`, a
    /// detached process that outlives this one. One-shot sandboxes relay in-process.
    pub relay_bin: Option<&'a Path>,
    /// How long the guest may take to boot (the relay waits this long for the agent).
    pub boot_timeout: std::time::Duration,
}

/// A VMM able to boot sandboxes.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which one it is.
    fn kind(&self) -> BackendKind;
    /// Starts the VMM; returns once the agent socket can be connected to (the guest may
    /// still be booting: connecting retries until the agent answers).
    fn boot<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>>;

    /// Everything about this backend that a snapshot of `spec`'s machine depends on (the
    /// VMM binary, the exact machine description), as one string; a snapshot is only
    /// restored where this is unchanged. `None`: this backend takes no snapshots.
    fn snapshot_identity(&self, spec: &BootSpec<'_>) -> Option<String> {
        let _ = spec;
        None
    }

    /// Like [`Backend::boot`], but describing the machine exactly as [`Backend::restore`]
    /// will, so that it can be saved with [`Machine::save_state`].
    fn boot_for_snapshot<'a>(
        &'a self,
        spec: BootSpec<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        let _ = spec;
        Box::pin(async move { Err(self.no_snapshots()) })
    }

    /// Starts a machine from the state [`Machine::save_state`] wrote into `state_dir`, with
    /// `spec`'s working directory and writable disk (a copy of the one saved with the
    /// state). Returns once the guest runs again; connect to its agent as after a boot.
    fn restore<'a>(
        &'a self,
        spec: BootSpec<'a>,
        state_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        let _ = (spec, state_dir);
        Box::pin(async move { Err(self.no_snapshots()) })
    }

    /// The error of the snapshot operations a backend does not have.
    fn no_snapshots(&self) -> CoreError {
        CoreError::BackendUnavailable {
            backend: self.kind().as_str(),
            reason: "this backend does not take snapshots".into(),
        }
    }
}

/// One running VMM process.
pub trait Machine: Send + Sync + std::fmt::Debug {
    /// The VMM's pid.
    fn pid(&self) -> u32;
    /// The Unix socket speaking the `CONNECT <port>` handshake.
    fn agent_socket(&self) -> PathBuf;
    /// The guest console log.
    fn console_log(&self) -> PathBuf;
    /// Whether the VMM has exited.
    fn exited(&mut self) -> bool;
    /// Kills the VMM (and anything serving it) and waits for it.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// The pid of a separate relay process, if the backend runs one.
    fn relay_pid(&self) -> Option<u32> {
        None
    }
    /// Closes the host's end of the agent channel, so the agent ends its session and waits
    /// for the next host (whose first bytes will be the agent's hello). Before
    /// [`Machine::save_state`]: a restored clone then greets its new host.
    fn detach_agent(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Stops the guest's vCPUs (the machine keeps its memory and devices) until
    /// [`Machine::resume`].
    fn pause(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            Err(CoreError::BackendUnavailable {
                backend: "unknown",
                reason: "this machine cannot be paused".into(),
            })
        })
    }
    /// Runs a [`Machine::pause`]d guest again.
    fn resume(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            Err(CoreError::BackendUnavailable {
                backend: "unknown",
                reason: "this machine cannot be resumed".into(),
            })
        })
    }
    /// Pauses the machine for good and writes its memory and device state into `dir`, for
    /// [`Backend::restore`]. The writable disk is consistent once this returns.
    fn save_state<'a>(&'a mut self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        let _ = dir;
        Box::pin(async {
            Err(CoreError::BackendUnavailable {
                backend: "unknown",
                reason: "this machine cannot save its state".into(),
            })
        })
    }
}

/// Starts `bin __relay DIR` detached (own session, stdio to `DIR/relay.log`), for a
/// persistent QEMU sandbox whose relay must outlive the calling process.
pub fn spawn_relay_process(bin: &Path, dir: &Path) -> Result<u32> {
    let log_path = dir.join("relay.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| CoreError::io("create", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CoreError::io("duplicate", &log_path, e))?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("__relay")
        .arg(dir)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    let child = crate::host::spawn_detached(&mut cmd)
        .map_err(|e| CoreError::io("start the relay", bin, e))?;
    Ok(child.id())
}

/// Kernel command-line fragment shared by both backends: the host's clock, so the guest
/// starts with the right time even before the agent is asked to sync it.
pub(crate) fn clock_param() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("pyro.clock={}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// Reads the last `max` bytes of a console log, lossily.
pub(crate) fn console_tail(path: &Path, max: usize) -> String {
    let Ok(data) = std::fs::read(path) else {
        return String::new();
    };
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------
// QEMU

/// The QEMU backend.
#[derive(Debug)]
pub struct QemuBackend {
    qemu: PathBuf,
    accel: pyro_qemu::Accel,
}

impl QemuBackend {
    /// Finds the QEMU binary and picks the accelerator.
    pub fn new(facts: &HostFacts) -> Result<Self> {
        let qemu = pyro_qemu::locate_qemu().map_err(|e| CoreError::BackendUnavailable {
            backend: "qemu",
            reason: e.to_string(),
        })?;
        let accel = if facts.kvm_accelerates() {
            pyro_qemu::Accel::Kvm
        } else {
            pyro_qemu::Accel::Tcg
        };
        Ok(Self { qemu, accel })
    }
}

#[derive(Debug)]
enum Relay {
    Task(tokio::task::JoinHandle<()>),
    Process(u32),
    Detached,
}

#[derive(Debug)]
struct QemuMachine {
    vm: pyro_qemu::Qemu,
    qemu: PathBuf,
    relay: Relay,
    socket: PathBuf,
    console: PathBuf,
    /// What a snapshot of this machine records as its command line (empty for a machine
    /// booted with the clock on its command line, which cannot be snapshotted).
    recorded_argv: Vec<String>,
}

/// The file in a QEMU snapshot's state directory that holds the migration stream.
const QEMU_STATE_FILE: &str = "state.bin";
/// The file in a QEMU snapshot's state directory that records how QEMU was started.
const QEMU_VMM_FILE: &str = "vmm.json";
/// The file in a QEMU snapshot's state directory that holds guest memory.
const QEMU_MEMORY_FILE: &str = "mem.img";
/// Where the memory file is said to be in recorded command lines (each clone maps the one
/// in its snapshot's directory).
const RECORDED_MEMORY_FILE: &str = "/snapshot/mem.img";

/// How QEMU was started for a snapshot: what a restore must reproduce.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct QemuVmmRecord {
    /// The arguments (without `-incoming`), with the memory file at
    /// [`RECORDED_MEMORY_FILE`] and mapped privately, as for a clone.
    argv: Vec<String>,
    /// `tsc_early_khz` on the kernel command line.
    tsc_khz: Option<u64>,
    /// `qemu-system-x86_64 --version`, first line.
    version: String,
}

/// How [`QemuBackend::start`] starts the machine.
enum QemuStart<'a> {
    /// A fresh boot with the host's clock on the kernel command line.
    Boot,
    /// A fresh boot whose command line a restore can reproduce.
    BootForSnapshot,
    /// A restore of the state saved in this directory.
    Restore(&'a Path),
}

impl QemuBackend {
    fn qemu_spec(
        &self,
        spec: &BootSpec<'_>,
        memory_file: Option<pyro_qemu::MemoryFile>,
    ) -> pyro_qemu::QemuSpec {
        pyro_qemu::QemuSpec {
            kernel: spec.env.kernel.clone(),
            initrd: spec.env.initramfs.clone(),
            rootfs: spec.env.rootfs.clone(),
            upper: spec.upper.to_path_buf(),
            vcpu_count: spec.vcpu_count,
            mem_mib: spec.mem_mib,
            accel: self.accel,
            extra_cmdline: String::new(),
            upper_cache_unsafe: !spec.durable_disk,
            memory_file,
        }
    }

    /// The command line a snapshot of `spec`'s machine is recorded with (and compared to).
    fn recorded_argv(
        &self,
        spec: &BootSpec<'_>,
        boot: &pyro_qemu::BootParams,
    ) -> std::result::Result<Vec<String>, pyro_qemu::QemuError> {
        let memory = pyro_qemu::MemoryFile {
            path: RECORDED_MEMORY_FILE.into(),
            shared: false,
        };
        pyro_qemu::launch_argv(&self.qemu_spec(spec, Some(memory)), spec.workdir, boot)
    }

    async fn start(&self, spec: BootSpec<'_>, how: QemuStart<'_>) -> Result<Box<dyn Machine>> {
        let memory_file = match how {
            QemuStart::Boot => None,
            QemuStart::BootForSnapshot => Some(pyro_qemu::MemoryFile {
                path: spec.workdir.join(QEMU_MEMORY_FILE),
                shared: true,
            }),
            QemuStart::Restore(dir) => Some(pyro_qemu::MemoryFile {
                path: dir.join(QEMU_MEMORY_FILE),
                shared: false,
            }),
        };
        let qspec = self.qemu_spec(&spec, memory_file);
        let boot_err = |e: pyro_qemu::QemuError| CoreError::Boot {
            reason: e.to_string(),
            console_tail: String::new(),
        };
        let restoring = matches!(how, QemuStart::Restore(_));
        let (boot, incoming) = match how {
            QemuStart::Boot => (None, None),
            QemuStart::BootForSnapshot => (Some(pyro_qemu::BootParams::without_clock()), None),
            QemuStart::Restore(dir) => {
                let path = dir.join(QEMU_VMM_FILE);
                let bytes = std::fs::read(&path).map_err(|e| CoreError::io("read", &path, e))?;
                let rec: QemuVmmRecord =
                    serde_json::from_slice(&bytes).map_err(|e| CoreError::Boot {
                        reason: format!("unreadable snapshot record {}: {e}", path.display()),
                        console_tail: String::new(),
                    })?;
                let boot = pyro_qemu::BootParams {
                    tsc_khz: rec.tsc_khz,
                    unix_time: None,
                };
                let argv = self.recorded_argv(&spec, &boot).map_err(boot_err)?;
                if argv != rec.argv {
                    return Err(CoreError::Boot {
                        reason: format!(
                            "the snapshot in {} was taken with another QEMU command line",
                            dir.display()
                        ),
                        console_tail: String::new(),
                    });
                }
                (Some(boot), Some(dir.join(QEMU_STATE_FILE)))
            }
        };
        // What a snapshot of this machine would record (nothing for a clocked boot).
        let recorded_argv = match &boot {
            Some(boot) => self.recorded_argv(&spec, boot).map_err(boot_err)?,
            None => Vec::new(),
        };
        let opts = pyro_qemu::LaunchOptions {
            qemu: self.qemu.clone(),
            workdir: spec.workdir.to_path_buf(),
            die_with_parent: !spec.persistent,
            new_session: true,
            boot,
            incoming,
        };
        let vm = pyro_qemu::launch(&qspec, &opts).await.map_err(boot_err)?;
        let agent_sock = vm.agent_socket_path();
        let socket = spec.workdir.join(pyro_qemu::RELAY_SOCKET);
        let listen = socket.clone();
        let relay = match spec.relay_bin {
            Some(bin) => match spawn_relay_process(bin, spec.workdir) {
                Ok(pid) => Relay::Process(pid),
                Err(e) => {
                    let mut vm = vm;
                    let _ = vm.kill().await;
                    return Err(e);
                }
            },
            None => {
                let opts = pyro_qemu::RelayOptions {
                    handshake_timeout: spec.boot_timeout,
                    ..pyro_qemu::RelayOptions::default()
                };
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(async move {
                    if let Err(e) =
                        pyro_qemu::run_relay_with(&agent_sock, &listen, Some(ready_tx), &opts).await
                    {
                        tracing::warn!("relay ended: {e}");
                    }
                });
                // A restored guest answers within moments: wait for the relay here, so the
                // caller's first connection succeeds instead of backing off.
                if restoring {
                    let ready = tokio::time::timeout(spec.boot_timeout, ready_rx).await;
                    if !matches!(ready, Ok(Ok(()))) {
                        task.abort();
                        let console = vm.console_log_path();
                        let mut vm = vm;
                        let _ = vm.kill().await;
                        return Err(CoreError::Boot {
                            reason: "the restored guest's agent did not greet the relay".into(),
                            console_tail: console_tail(&console, 4000),
                        });
                    }
                }
                Relay::Task(task)
            }
        };
        let console = vm.console_log_path();
        Ok(Box::new(QemuMachine {
            vm,
            qemu: self.qemu.clone(),
            relay,
            socket,
            console,
            recorded_argv,
        }) as Box<dyn Machine>)
    }
}

/// The error of a failed QEMU pause or resume.
fn qemu_run_state(step: &'static str) -> impl Fn(pyro_qemu::QemuError) -> CoreError {
    move |e| CoreError::Boot {
        reason: format!("cannot {step} the machine: {e}"),
        console_tail: String::new(),
    }
}

/// Identifies a file by where it is, its size, inode and modification time: a changed
/// binary (a QEMU upgrade) gets a new fingerprint without being read.
fn file_fingerprint(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{} size={} ino={} mtime={}.{:09}",
        path.display(),
        m.len(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn boot<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, QemuStart::Boot))
    }

    fn snapshot_identity(&self, spec: &BootSpec<'_>) -> Option<String> {
        // The command line without host-dependent values: any change to how pyro-qemu
        // describes the machine invalidates older snapshots by itself.
        let boot = pyro_qemu::BootParams {
            tsc_khz: None,
            unix_time: None,
        };
        let argv = self.recorded_argv(spec, &boot).ok()?;
        let mut identity = format!("qemu {}\n", file_fingerprint(&self.qemu)?);
        if self.accel == pyro_qemu::Accel::Kvm {
            // `-cpu host` exposes this CPU's features to the guest.
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
            identity.push_str(&format!("host cpu {flags}\n"));
        }
        identity.push_str(&argv.join("\u{1f}"));
        Some(identity)
    }

    fn boot_for_snapshot<'a>(
        &'a self,
        spec: BootSpec<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, QemuStart::BootForSnapshot))
    }

    fn restore<'a>(
        &'a self,
        spec: BootSpec<'a>,
        state_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, QemuStart::Restore(state_dir)))
    }
}

impl Machine for QemuMachine {
    fn pid(&self) -> u32 {
        self.vm.pid()
    }
    fn agent_socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }
    fn exited(&mut self) -> bool {
        !matches!(self.vm.try_wait(), Ok(None))
    }
    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match &self.relay {
                Relay::Task(t) => t.abort(),
                Relay::Process(pid) => {
                    // SAFETY: kill(2) on the relay process this handle started.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                }
                Relay::Detached => {}
            }
            let _ = self.vm.kill().await;
            let _ = std::fs::remove_file(&self.socket);
        })
    }
    fn relay_pid(&self) -> Option<u32> {
        match self.relay {
            Relay::Process(pid) => Some(pid),
            Relay::Task(_) | Relay::Detached => None,
        }
    }
    fn detach_agent(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match std::mem::replace(&mut self.relay, Relay::Detached) {
                Relay::Task(t) => {
                    t.abort();
                    // Dropping the task's future closes its connection to QEMU's socket.
                    let _ = t.await;
                }
                Relay::Process(pid) => {
                    // SAFETY: kill(2) on the relay process this handle started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                Relay::Detached => {}
            }
            let _ = std::fs::remove_file(&self.socket);
        })
    }
    fn pause(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut qmp = self.vm.qmp().await.map_err(qemu_run_state("pause"))?;
            qmp.stop().await.map_err(qemu_run_state("pause"))
        })
    }
    fn resume(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut qmp = self.vm.qmp().await.map_err(qemu_run_state("resume"))?;
            qmp.cont().await.map_err(qemu_run_state("resume"))
        })
    }
    fn save_state<'a>(&'a mut self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.recorded_argv.is_empty() {
                return Err(CoreError::Boot {
                    reason: "this machine was not booted to be snapshotted".into(),
                    console_tail: String::new(),
                });
            }
            let state = dir.join(QEMU_STATE_FILE);
            self.vm
                .save_state(&state)
                .await
                .map_err(|e| CoreError::Boot {
                    reason: format!("saving the machine state failed: {e}"),
                    console_tail: console_tail(&self.console, 2000),
                })?;
            let version = tokio::process::Command::new(&self.qemu)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            let rec = QemuVmmRecord {
                argv: self.recorded_argv.clone(),
                tsc_khz: self.vm.boot_params().tsc_khz,
                version,
            };
            let path = dir.join(QEMU_VMM_FILE);
            let body = serde_json::to_vec_pretty(&rec).map_err(|e| CoreError::Invalid {
                field: "snapshot record",
                reason: e.to_string(),
            })?;
            std::fs::write(&path, body).map_err(|e| CoreError::io("write", &path, e))
        })
    }
}

// ---------------------------------------------------------------------------------------
// Firecracker

/// The Firecracker backend.
#[derive(Debug)]
pub struct FirecrackerBackend {
    binaries: pyro_firecracker::Binaries,
}

impl FirecrackerBackend {
    /// Locates (or provisions, sha256-verified, into the cache) the Firecracker binaries.
    pub fn new(cache_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        let binaries = match pyro_firecracker::locate(cache_dir) {
            Ok(b) => b,
            Err(_) => pyro_firecracker::provision(cache_dir, progress).map_err(|e| {
                CoreError::BackendUnavailable {
                    backend: "firecracker",
                    reason: e.to_string(),
                }
            })?,
        };
        Ok(Self { binaries })
    }

    /// A backend running exactly these binaries (tests use a stand-in VMM).
    pub fn with_binaries(binaries: pyro_firecracker::Binaries) -> Self {
        Self { binaries }
    }

    /// The boot arguments given to the guest kernel.
    pub fn boot_args() -> String {
        format!("{FC_BOOT_ARGS} {}", clock_param())
    }

    /// The machine for `spec`; `clock`: pass the host's time on the kernel command line
    /// (a snapshot template gets none: its clones are given the time when restored).
    fn vm_spec(spec: &BootSpec<'_>, clock: bool) -> pyro_firecracker::VmSpec {
        pyro_firecracker::VmSpec {
            kernel: spec.env.kernel.clone(),
            initrd: Some(spec.env.initramfs.clone()),
            boot_args: if clock {
                Self::boot_args()
            } else {
                FC_BOOT_ARGS.to_string()
            },
            drives: Self::drives(spec),
            vcpu_count: spec.vcpu_count,
            mem_mib: spec.mem_mib,
            vsock_cid: Some(FC_GUEST_CID),
        }
    }

    /// The read-only root filesystem and the sandbox's writable disk, in that order.
    fn drives(spec: &BootSpec<'_>) -> Vec<pyro_firecracker::DriveSpec> {
        vec![
            pyro_firecracker::DriveSpec {
                id: "rootfs".into(),
                path: spec.env.rootfs.clone(),
                read_only: true,
            },
            pyro_firecracker::DriveSpec {
                id: "upper".into(),
                path: spec.upper.to_path_buf(),
                read_only: false,
            },
        ]
    }

    fn launch_options(&self, spec: &BootSpec<'_>) -> pyro_firecracker::LaunchOptions {
        pyro_firecracker::LaunchOptions {
            binaries: self.binaries.clone(),
            workdir: spec.workdir.to_path_buf(),
            jailer: pyro_firecracker::JailerMode::Auto,
            die_with_parent: !spec.persistent,
            new_session: true,
        }
    }

    async fn start(&self, spec: BootSpec<'_>, clock: bool) -> Result<Box<dyn Machine>> {
        let vm =
            pyro_firecracker::launch(&Self::vm_spec(&spec, clock), &self.launch_options(&spec))
                .await
                .map_err(fc_boot_error)?;
        Ok(Box::new(FcMachine {
            vm,
            snapshottable: !clock,
        }) as Box<dyn Machine>)
    }
}

/// Kernel arguments of every Firecracker guest (the clock is added per boot).
const FC_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 quiet 8250.nr_uarts=1";
/// The guest's vsock context id.
const FC_GUEST_CID: u32 = 3;
/// A Firecracker snapshot's device state, in the snapshot directory.
pub const FC_STATE_FILE: &str = "fc-state.bin";
/// A Firecracker snapshot's guest memory, in the snapshot directory; restores map it
/// private and copy-on-write, so every clone shares the pages it has not written.
pub const FC_MEMORY_FILE: &str = "fc-mem.img";

fn fc_boot_error(e: pyro_firecracker::VmmError) -> CoreError {
    CoreError::Boot {
        reason: e.to_string(),
        console_tail: String::new(),
    }
}

#[derive(Debug)]
struct FcMachine {
    vm: pyro_firecracker::Firecracker,
    /// Booted by [`Backend::boot_for_snapshot`]: no clock on its command line.
    snapshottable: bool,
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn boot<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, true))
    }

    fn snapshot_identity(&self, spec: &BootSpec<'_>) -> Option<String> {
        // Firecracker restores only into the same version on the same CPU model; the
        // machine description is what `boot_for_snapshot` configures (file names inside
        // the sandbox are fixed, so no path of this host is part of it).
        let vm = Self::vm_spec(spec, false);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let model = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
        let drives: Vec<String> = vm
            .drives
            .iter()
            .map(|d| format!("{}:{}", d.id, if d.read_only { "ro" } else { "rw" }))
            .collect();
        Some(format!(
            "firecracker {}\nhost cpu {model}\nhost {flags}\nboot_args {}\nvcpu {} mem {} \
             drives {} vsock {:?} durable_disk {}",
            file_fingerprint(&self.binaries.firecracker)?,
            vm.boot_args,
            vm.vcpu_count,
            vm.mem_mib,
            drives.join(","),
            vm.vsock_cid,
            spec.durable_disk,
        ))
    }

    fn boot_for_snapshot<'a>(
        &'a self,
        spec: BootSpec<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, false))
    }

    fn restore<'a>(
        &'a self,
        spec: BootSpec<'a>,
        state_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(async move {
            let opts = self.launch_options(&spec);
            // The snapshot names its drives relative to the sandbox root: this sandbox's
            // disk (a copy of the snapshot's) and the environment's root filesystem.
            pyro_firecracker::stage_drives(&opts, &Self::drives(&spec)).map_err(fc_boot_error)?;
            let vm = pyro_firecracker::restore(
                &state_dir.join(FC_STATE_FILE),
                &state_dir.join(FC_MEMORY_FILE),
                &opts,
            )
            .await
            .map_err(fc_boot_error)?;
            Ok(Box::new(FcMachine {
                vm,
                snapshottable: false,
            }) as Box<dyn Machine>)
        })
    }
}

impl Machine for FcMachine {
    fn pid(&self) -> u32 {
        self.vm.pid()
    }
    fn agent_socket(&self) -> PathBuf {
        self.vm.vsock_path()
    }
    fn console_log(&self) -> PathBuf {
        self.vm.console_path()
    }
    fn exited(&mut self) -> bool {
        !matches!(self.vm.try_wait(), Ok(None))
    }
    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.vm.kill().await;
            if self.snapshottable && self.vm.jailed() {
                // A snapshot template's chroot (device nodes, sockets, logs) is not part of
                // the snapshot kept in its directory.
                let _ = std::fs::remove_dir_all(self.vm.workdir().join("jail"));
            }
        })
    }
    fn pause(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.vm.pause().await.map_err(fc_boot_error) })
    }
    fn resume(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.vm.resume().await.map_err(fc_boot_error) })
    }
    // The host's end of the vsock connection closes with its session: the agent then
    // waits for the next host, and a restore resets the device's connections anyway.
    fn save_state<'a>(&'a mut self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !self.snapshottable {
                return Err(CoreError::Boot {
                    reason: "this machine was not booted to be snapshotted".into(),
                    console_tail: String::new(),
                });
            }
            let failed = |step: &str, e: &dyn std::fmt::Display| CoreError::Boot {
                reason: format!("saving the machine state failed ({step}): {e}"),
                console_tail: console_tail(&self.vm.console_path(), 2000),
            };
            self.vm.pause().await.map_err(|e| failed("pause", &e))?;
            // Written where the VMM resolves relative paths (its chroot when jailed), then
            // moved next to the disk template.
            self.vm
                .snapshot_create(Path::new(FC_STATE_FILE), Path::new(FC_MEMORY_FILE))
                .await
                .map_err(|e| failed("snapshot", &e))?;
            let root = self.vm.root_dir().to_path_buf();
            for name in [FC_STATE_FILE, FC_MEMORY_FILE] {
                let (from, to) = (root.join(name), dir.join(name));
                if from != to {
                    move_file(&from, &to).map_err(|e| CoreError::io("move", &from, e))?;
                }
            }
            // The staged kernel, initrd and drive links are not part of the snapshot (a
            // restore stages its own): drop them so the snapshot pins no cache blob.
            for name in [
                pyro_firecracker::vmm::KERNEL_FILE.to_string(),
                pyro_firecracker::vmm::INITRD_FILE.to_string(),
                pyro_firecracker::vmm::drive_file_name("rootfs"),
                pyro_firecracker::vmm::drive_file_name("upper"),
            ] {
                let _ = std::fs::remove_file(root.join(name));
            }
            Ok(())
        })
    }
}

/// Renames `from` to `to`, copying across filesystems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(hw: bool, pvm: bool) -> HostFacts {
        HostFacts {
            kvm_exists: true,
            kvm_usable: true,
            kvm_hardware_assisted: hw,
            kvm_paravirtual: pvm,
            kvm_reason: if pvm {
                "paravirtual kvm_pvm".into()
            } else {
                "ok".into()
            },
        }
    }

    #[test]
    fn auto_picks_qemu_on_paravirtual_kvm() {
        assert_eq!(
            resolve(BackendChoice::Auto, &facts(false, true)).unwrap(),
            BackendKind::Qemu
        );
    }

    #[test]
    fn auto_picks_firecracker_on_hardware_kvm() {
        assert_eq!(
            resolve(BackendChoice::Auto, &facts(true, false)).unwrap(),
            BackendKind::Firecracker
        );
    }

    #[test]
    fn explicit_firecracker_without_hardware_kvm_is_refused_with_the_reason() {
        let err = resolve(BackendChoice::Firecracker, &facts(false, true)).unwrap_err();
        assert!(err.to_string().contains("kvm_pvm"), "{err}");
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!(
            "QEMU".parse::<BackendChoice>().unwrap(),
            BackendChoice::Qemu
        );
        assert!("vmware".parse::<BackendChoice>().is_err());
    }
}
