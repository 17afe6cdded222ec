//! The Firecracker backend: [`FirecrackerBackend`] boots machines through the Firecracker
//! API (optionally jailed) and saves/restores warm snapshots with its snapshot API.

use std::path::Path;
use std::time::Duration;

use crate::error::{CoreError, Result};

use super::record::{AttachedMachine, ProcessRef, connect_vsock};
use super::{
    Backend, BackendKind, BootSpec, BoxFuture, Machine, MachineRecord, clock_param, console_tail,
    file_fingerprint,
};

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
            boot_args: {
                let mut args = if clock {
                    Self::boot_args()
                } else {
                    FC_BOOT_ARGS.to_string()
                };
                if let Some(nic) = spec.net {
                    args.push(' ');
                    args.push_str(&nic.cmdline());
                }
                args
            },
            drives: Self::drives(spec),
            vcpu_count: spec.vcpu_count,
            mem_mib: spec.mem_mib,
            vsock_cid: Some(FC_GUEST_CID),
            nic: spec.net.map(|n| pyro_firecracker::NicSpec {
                tap: n.tap.clone(),
                mac: n.mac,
            }),
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
            netns: spec.net.map(|n| n.netns.clone()),
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
             drives {} vsock {:?} durable_disk {} nic {:?}",
            file_fingerprint(&self.binaries.firecracker)?,
            vm.boot_args,
            vm.vcpu_count,
            vm.mem_mib,
            drives.join(","),
            vm.vsock_cid,
            spec.durable_disk,
            vm.nic.as_ref().map(|n| (&n.tap, n.mac_string())),
        ))
    }

    fn boot_for_snapshot<'a>(
        &'a self,
        spec: BootSpec<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(self.start(spec, false))
    }

    fn boot_recorded<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        // Any running Firecracker machine can be saved through its API socket; one booted
        // without a clock restores like a warm clone (its caller reseeds it).
        Box::pin(self.start(spec, false))
    }

    fn boots_recorded(&self) -> bool {
        true
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
    fn record(&self) -> MachineRecord {
        MachineRecord {
            backend: BackendKind::Firecracker,
            vmm: ProcessRef::of(self.vm.pid()),
            relay: None,
            relay_bin: None,
            // A jailed Firecracker keeps its socket inside its chroot.
            socket: self.vm.vsock_path(),
            workdir: self.vm.workdir().to_path_buf(),
        }
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        let socket = self.vm.vsock_path();
        Box::pin(async move { connect_vsock(&socket, timeout).await })
    }
    fn is_alive(&mut self) -> bool {
        matches!(self.vm.try_wait(), Ok(None))
    }
    fn console_tail(&self, max: usize) -> String {
        console_tail(&self.vm.console_path(), max)
    }
    fn halt(&mut self) -> BoxFuture<'_, ()> {
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

/// A Firecracker machine found again from its record (a workspace's, in a later process):
/// its API socket lies beside the agent's socket, in the directory where the VMM resolves
/// relative paths (its chroot when jailed).
#[derive(Debug)]
struct AttachedFc {
    base: AttachedMachine,
}

/// The machine a Firecracker record describes; see [`super::attach`].
pub(super) fn attach(record: &MachineRecord) -> Box<dyn Machine> {
    Box::new(AttachedFc {
        base: AttachedMachine::new(record.clone()),
    })
}

impl AttachedFc {
    /// The VMM's root directory (where its sockets are).
    fn root(&self) -> std::path::PathBuf {
        self.base
            .rec
            .socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.base.rec.workdir.clone())
    }

    fn api(&self) -> pyro_firecracker::ApiClient {
        pyro_firecracker::ApiClient::new(self.root().join(pyro_firecracker::vmm::API_SOCKET))
    }

    async fn set_state(&self, state: &str, step: &str) -> Result<()> {
        self.api()
            .patch("/vm", &serde_json::json!({ "state": state }))
            .await
            .map_err(|e| CoreError::Boot {
                reason: format!("cannot {step} the machine: {e}"),
                console_tail: String::new(),
            })
    }
}

impl Machine for AttachedFc {
    fn pid(&self) -> u32 {
        self.base.pid()
    }
    fn record(&self) -> MachineRecord {
        self.base.record()
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        self.base.connect(timeout)
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
    fn pause(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.set_state("Paused", "pause").await })
    }
    fn resume(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.set_state("Resumed", "resume").await })
    }
    /// Pauses the machine and writes a full snapshot into `dir` (`fc-state.bin`,
    /// `fc-mem.img`); the machine stays paused ([`Machine::resume`] resumes it).
    fn save_state<'a>(&'a mut self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_state("Paused", "pause").await?;
            let params = serde_json::json!({
                "snapshot_type": "Full",
                "snapshot_path": FC_STATE_FILE,
                "mem_file_path": FC_MEMORY_FILE,
            });
            self.api()
                .with_timeout(Duration::from_secs(300))
                .put("/snapshot/create", &params)
                .await
                .map_err(|e| CoreError::Boot {
                    reason: format!("saving the machine state failed (snapshot): {e}"),
                    console_tail: self.base.console_tail(2000),
                })?;
            let root = self.root();
            for name in [FC_STATE_FILE, FC_MEMORY_FILE] {
                let (from, to) = (root.join(name), dir.join(name));
                move_file(&from, &to).map_err(|e| CoreError::io("move", &from, e))?;
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
