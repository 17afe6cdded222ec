//! The QEMU backend: [`QemuBackend`] boots `microvm` machines (KVM when hardware-assisted,
//! else TCG) with a host-side relay that offers the agent's virtio-serial port as a
//! Firecracker-style `CONNECT` socket, and saves/restores warm snapshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{CoreError, Result};

use super::record::{AttachedMachine, ProcessRef, connect_vsock};
use super::{
    Backend, BackendKind, BootSpec, BoxFuture, HostFacts, Machine, MachineRecord, console_tail,
    file_fingerprint,
};

/// The name of the writable disk in the machine's working directory: the command line
/// names it there (relatively, as a warm snapshot records it), a link when the disk lives
/// elsewhere.
const UPPER_IN_WORKDIR: &str = "upper.ext4";

/// Starts `bin __relay DIR` detached (own session, stdio to `DIR/relay.log`), for a
/// persistent QEMU sandbox whose relay must outlive the calling process.
fn spawn_relay_process(bin: &Path, dir: &Path) -> Result<u32> {
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
    /// The binary of a [`Relay::Process`], for the record.
    relay_bin: Option<PathBuf>,
    workdir: PathBuf,
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

/// What a machine that can be snapshotted while it runs notes in its working directory
/// ([`RECORDED_FILE`]), for [`Machine::save_state`] from a later process.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RecordedMachine {
    /// As [`QemuVmmRecord::argv`].
    argv: Vec<String>,
    /// As [`QemuVmmRecord::tsc_khz`].
    tsc_khz: Option<u64>,
    /// The guest memory size: the placeholder memory file a snapshot carries has it.
    mem_mib: u32,
}

/// The file in a machine's working directory that says how to snapshot it (present only
/// for a machine whose memory is private: a workspace's).
const RECORDED_FILE: &str = "recorded.json";

/// How [`QemuBackend::start`] starts the machine.
enum QemuStart<'a> {
    /// A fresh boot with the host's clock on the kernel command line.
    Boot,
    /// A fresh boot whose command line a restore can reproduce (a warm template: its
    /// memory is written through to a file).
    BootForSnapshot,
    /// A fresh boot whose command line a restore can reproduce, with private memory (a
    /// workspace, snapshotted while it runs with the memory in the state stream).
    BootRecorded,
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
            upper: spec.workdir.join(UPPER_IN_WORKDIR),
            vcpu_count: spec.vcpu_count,
            mem_mib: spec.mem_mib,
            accel: self.accel,
            extra_cmdline: spec.net.map(super::GuestNic::cmdline).unwrap_or_default(),
            upper_cache_unsafe: !spec.durable_disk,
            memory_file,
            nic: spec.net.map(|n| pyro_qemu::Nic {
                tap: n.tap.clone(),
                mac: n.mac,
            }),
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
        let relay_bin = match (spec.persistent, spec.relay_bin) {
            (true, Some(bin)) => Some(bin),
            (true, None) => {
                return Err(CoreError::BackendUnavailable {
                    backend: BackendKind::Qemu.as_str(),
                    reason: "persistent QEMU workspaces need the `pyro` binary for their relay; set PYRO_BIN".into(),
                });
            }
            (false, _) => None,
        };
        link_disk(&spec)?;
        let memory_file = match how {
            QemuStart::Boot => None,
            QemuStart::BootForSnapshot => Some(pyro_qemu::MemoryFile {
                path: spec.workdir.join(QEMU_MEMORY_FILE),
                shared: true,
            }),
            QemuStart::BootRecorded => {
                let path = spec.workdir.join(QEMU_MEMORY_FILE);
                sparse_memory_file(&path, spec.mem_mib)?;
                Some(pyro_qemu::MemoryFile {
                    path,
                    shared: false,
                })
            }
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
            QemuStart::BootForSnapshot | QemuStart::BootRecorded => {
                (Some(pyro_qemu::BootParams::without_clock()), None)
            }
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
            netns: spec.net.map(|n| n.netns.clone()),
        };
        let private_memory = matches!(how, QemuStart::BootRecorded | QemuStart::Restore(_));
        let vm = pyro_qemu::launch(&qspec, &opts).await.map_err(boot_err)?;
        if private_memory && !recorded_argv.is_empty() {
            let note = RecordedMachine {
                argv: recorded_argv.clone(),
                tsc_khz: vm.boot_params().tsc_khz,
                mem_mib: spec.mem_mib,
            };
            let path = spec.workdir.join(RECORDED_FILE);
            let written = serde_json::to_vec(&note)
                .map_err(std::io::Error::other)
                .and_then(|body| std::fs::write(&path, body));
            if let Err(e) = written {
                let mut vm = vm;
                let _ = vm.kill().await;
                return Err(CoreError::io("write", &path, e));
            }
        }
        let agent_sock = vm.agent_socket_path();
        let socket = spec.workdir.join(pyro_qemu::RELAY_SOCKET);
        let listen = socket.clone();
        let relay = match relay_bin {
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
            relay_bin: relay_bin.map(Path::to_path_buf),
            workdir: spec.workdir.to_path_buf(),
            socket,
            console,
            recorded_argv,
        }) as Box<dyn Machine>)
    }
}

/// Makes `path` a sparse file of `mem_mib` MiB (no blocks): the memory file a machine with
/// private memory maps, which is never written.
fn sparse_memory_file(path: &Path, mem_mib: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CoreError::io("create", path, e))?;
    f.set_len(u64::from(mem_mib) << 20)
        .map_err(|e| CoreError::io("size", path, e))
}

/// Names the writable disk `workdir/upper.ext4` (see [`UPPER_IN_WORKDIR`]), by a link when
/// `spec.upper` is another file.
fn link_disk(spec: &BootSpec<'_>) -> Result<()> {
    let link = spec.workdir.join(UPPER_IN_WORKDIR);
    if link == spec.upper {
        return Ok(());
    }
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CoreError::io("remove", &link, e)),
    }
    std::os::unix::fs::symlink(spec.upper, &link).map_err(|e| CoreError::io("link", &link, e))
}

/// The error of a failed QEMU pause or resume.
fn qemu_run_state(step: &'static str) -> impl Fn(pyro_qemu::QemuError) -> CoreError {
    move |e| CoreError::Boot {
        reason: format!("cannot {step} the machine: {e}"),
        console_tail: String::new(),
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn attach(&self, record: &MachineRecord) -> Box<dyn Machine> {
        attach(record)
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

    fn boot_recorded<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, QemuStart::BootRecorded))
    }

    fn boots_recorded(&self) -> bool {
        true
    }
}

impl Machine for QemuMachine {
    fn pid(&self) -> u32 {
        self.vm.pid()
    }
    fn record(&self) -> MachineRecord {
        let relay = match self.relay {
            Relay::Process(pid) => ProcessRef::of(pid),
            Relay::Task(_) | Relay::Detached => None,
        };
        MachineRecord {
            backend: BackendKind::Qemu,
            vmm: ProcessRef::of(self.vm.pid()),
            relay,
            relay_bin: self.relay_bin.clone(),
            socket: self.socket.clone(),
            workdir: self.workdir.clone(),
        }
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        Box::pin(connect_vsock(&self.socket, timeout))
    }
    fn is_alive(&mut self) -> bool {
        matches!(self.vm.try_wait(), Ok(None))
    }
    fn console_tail(&self, max: usize) -> String {
        console_tail(&self.console, max)
    }
    fn halt(&mut self) -> BoxFuture<'_, ()> {
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

/// A persistent QEMU machine found again from its record: its relay runs detached, and one
/// that died while QEMU lives is restarted by [`Machine::connect`].
#[derive(Debug)]
struct AttachedQemu {
    base: AttachedMachine,
}

/// The machine a QEMU record describes; see [`super::attach`].
pub(super) fn attach(record: &MachineRecord) -> Box<dyn Machine> {
    Box::new(AttachedQemu {
        base: AttachedMachine::new(record.clone()),
    })
}

impl AttachedQemu {
    /// Restarts the relay if it is gone while QEMU runs; whether it did.
    fn restart_dead_relay(&mut self) -> Result<bool> {
        let rec = &mut self.base.rec;
        let relay_alive = rec.relay.is_some_and(|p| p.alive());
        if relay_alive || !rec.vmm_alive() {
            return Ok(false);
        }
        let Some(bin) = rec.relay_bin.clone() else {
            return Ok(false);
        };
        let pid = spawn_relay_process(&bin, &rec.workdir)?;
        rec.relay = ProcessRef::of(pid);
        Ok(true)
    }
}

impl Machine for AttachedQemu {
    fn pid(&self) -> u32 {
        self.base.pid()
    }
    fn record(&self) -> MachineRecord {
        self.base.record()
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        Box::pin(async move {
            // A record without a relay (a snapshot's save ended it on purpose) gets one at
            // once, rather than after the connect timeout.
            if self.base.rec.relay.is_none() {
                self.restart_dead_relay()?;
            }
            match connect_vsock(&self.base.rec.socket, timeout).await {
                Ok(stream) => Ok(stream),
                // A relay that died (while QEMU lives) is restarted once.
                Err(e) => match self.restart_dead_relay()? {
                    true => connect_vsock(&self.base.rec.socket, timeout).await,
                    false => Err(e),
                },
            }
        })
    }
    fn is_alive(&mut self) -> bool {
        self.base.is_alive()
    }
    fn halt(&mut self) -> BoxFuture<'_, ()> {
        self.base.halt()
    }
    fn console_tail(&self, max: usize) -> String {
        self.base.console_tail(max)
    }
    fn detach_agent(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The relay's end closes the port: the agent ends its session and waits for the
            // next relay's with its hello pending (the next connect starts one).
            if let Some(relay) = self.base.rec.relay.take() {
                ProcessRef::kill_and_wait(&[relay]).await;
            }
            let _ = std::fs::remove_file(&self.base.rec.socket);
        })
    }
    fn pause(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let qmp_path = self.base.rec.workdir.join(pyro_qemu::QMP_SOCKET);
            let mut qmp = pyro_qemu::Qmp::connect(&qmp_path)
                .await
                .map_err(qemu_run_state("pause"))?;
            qmp.stop().await.map_err(qemu_run_state("pause"))
        })
    }
    fn resume(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let qmp_path = self.base.rec.workdir.join(pyro_qemu::QMP_SOCKET);
            let mut qmp = pyro_qemu::Qmp::connect(&qmp_path)
                .await
                .map_err(qemu_run_state("resume"))?;
            qmp.cont().await.map_err(qemu_run_state("resume"))
        })
    }
    fn save_state<'a>(&'a mut self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let workdir = self.base.rec.workdir.clone();
            let note_path = workdir.join(RECORDED_FILE);
            let note: RecordedMachine = match std::fs::read(&note_path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoreError::Boot {
                    reason: format!("unreadable machine note {}: {e}", note_path.display()),
                    console_tail: String::new(),
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CoreError::BackendUnavailable {
                        backend: BackendKind::Qemu.as_str(),
                        reason: "this machine was booted by an older pyro, which cannot save its memory; `stop` and `start` the workspace once".into(),
                    });
                }
                Err(e) => return Err(CoreError::io("read", &note_path, e)),
            };
            let state = dir.join(QEMU_STATE_FILE);
            pyro_qemu::save_state_at(&workdir.join(pyro_qemu::QMP_SOCKET), &state)
                .await
                .map_err(|e| CoreError::Boot {
                    reason: format!("saving the machine state failed: {e}"),
                    console_tail: self.base.console_tail(2000),
                })?;
            let rec = QemuVmmRecord {
                argv: note.argv,
                tsc_khz: note.tsc_khz,
                version: String::new(),
            };
            let path = dir.join(QEMU_VMM_FILE);
            let body = serde_json::to_vec_pretty(&rec).map_err(|e| CoreError::Invalid {
                field: "snapshot record",
                reason: e.to_string(),
            })?;
            std::fs::write(&path, body).map_err(|e| CoreError::io("write", &path, e))?;
            // Restores map a memory file privately and load every page from the stream.
            sparse_memory_file(&dir.join(QEMU_MEMORY_FILE), note.mem_mib)
        })
    }
}
