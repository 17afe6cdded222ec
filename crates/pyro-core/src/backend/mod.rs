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

//!
//! A persistent machine (a workspace's) outlives the process that booted it: its
//! [`Machine::record`], a [`MachineRecord`] kept with the workspace, is all a later process
//! needs; [`Backend::attach`] (or [`attach`]) makes a [`Machine`] of it again, through which
//! that process checks it ([`Machine::is_alive`]), reaches its agent ([`Machine::connect`],
//! which for QEMU restarts a dead relay), reads its console ([`Machine::console_tail`]) and
//! ends it ([`Machine::halt`]). Nothing outside this module handles a pid, a socket path or
//! a backend's name.
//!
//! Layout: this file holds the traits, [`BackendChoice`]/[`BackendKind`], [`HostFacts`] and
//! the shared helpers; `record.rs` the [`MachineRecord`] and attached machines; `qemu.rs`
//! and `firecracker.rs` the two VMMs; `fake.rs` (feature `fake-backend`) a stand-in that
//! runs the agent on the host, for tests of everything above the backend.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{CoreError, Result};

#[cfg(feature = "fake-backend")]
mod fake;
mod firecracker;
mod qemu;
mod record;

#[cfg(feature = "fake-backend")]
pub use fake::FakeBackend;
pub use firecracker::{FC_MEMORY_FILE, FC_STATE_FILE, FirecrackerBackend};
pub use qemu::QemuBackend;
#[cfg(test)]
pub(crate) use record::ProcessRef;
pub use record::{MachineRecord, attach};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which VMM to use.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// Firecracker when KVM is hardware-assisted, else QEMU.
    Auto,
    /// Firecracker.
    Firecracker,
    /// QEMU `microvm` (KVM when hardware-assisted, else TCG).
    Qemu,
    /// The agent as a host process, no VM (tests only; feature `fake-backend`).
    #[cfg(feature = "fake-backend")]
    Fake,
}

impl std::str::FromStr for BackendChoice {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "firecracker" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            #[cfg(feature = "fake-backend")]
            "fake" => Ok(Self::Fake),
            other => Err(CoreError::Invalid {
                field: "backend",
                reason: format!("`{other}` is not one of auto, firecracker, qemu"),
            }),
        }
    }
}

/// A concrete backend.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Firecracker.
    Firecracker,
    /// QEMU.
    Qemu,
    /// The agent as a host process (tests only; feature `fake-backend`).
    #[cfg(feature = "fake-backend")]
    Fake,
}

impl BackendKind {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
            #[cfg(feature = "fake-backend")]
            Self::Fake => "fake",
        }
    }

    /// The `execution_mode` of sandboxes on this backend.
    pub fn execution_mode(self) -> &'static str {
        match self {
            Self::Firecracker => "guest_vsock",
            Self::Qemu => "guest_serial",
            #[cfg(feature = "fake-backend")]
            Self::Fake => "host_process",
        }
    }

    /// The kind spelled exactly `name` (as [`BackendKind::as_str`] writes it), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "firecracker" => Some(Self::Firecracker),
            "qemu" => Some(Self::Qemu),
            #[cfg(feature = "fake-backend")]
            "fake" => Some(Self::Fake),
            _ => None,
        }
    }

    /// The kind a stored workspace record names: Firecracker for `firecracker`, QEMU for
    /// anything else (the rule records have always been read with).
    pub fn of_record(name: &str) -> Self {
        Self::from_name(name).unwrap_or(Self::Qemu)
    }

    /// Whether an executable file name is one of the well-known VMM binaries of some
    /// backend (`qemu-system-*`, `firecracker*`, `jailer`; with `fake-backend`, the
    /// `pyro-agent` it runs on the host).
    pub fn is_vmm_process_name(name: &str) -> bool {
        name.starts_with("qemu-system")
            || name.starts_with("firecracker")
            || name == "jailer"
            || (cfg!(feature = "fake-backend") && name == "pyro-agent")
    }
}

impl From<BackendKind> for BackendChoice {
    fn from(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Firecracker => Self::Firecracker,
            BackendKind::Qemu => Self::Qemu,
            #[cfg(feature = "fake-backend")]
            BackendKind::Fake => Self::Fake,
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
        #[cfg(feature = "fake-backend")]
        BackendChoice::Fake => Ok(BackendKind::Fake),
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
    /// detached process that outlives this one (a persistent QEMU boot without one fails).
    /// One-shot sandboxes relay in-process; other backends ignore it.
    pub relay_bin: Option<&'a Path>,
    /// How long the guest may take to boot (the relay waits this long for the agent).
    pub boot_timeout: std::time::Duration,
    /// The network card of a networked sandbox; `None`: no network device at all.
    pub net: Option<&'a GuestNic>,
}

/// A networked sandbox's card, as the VMM sees it: a TAP in the sandbox's network namespace
/// (the VMM runs inside it), the guest's MAC, and what the guest's agent configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNic {
    /// The namespace (`/run/netns/pyro-N`).
    pub netns: std::path::PathBuf,
    /// The TAP's name inside it.
    pub tap: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The guest's address; `None` ("pending"): the card exists but the guest configures
    /// nothing at boot (a warm snapshot's template, whose clones are configured when they
    /// are restored).
    pub config: Option<GuestAddress>,
}

/// What the guest's agent gives `eth0` (IPv4 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// The prefix length of its subnet.
    pub prefix: u8,
    /// The gateway (pyro's end of the TAP, and its resolver).
    pub gateway: std::net::Ipv4Addr,
}

impl GuestNic {
    /// The kernel command-line parameter the agent reads: `pyro.net=ADDRESS/PREFIX,GATEWAY`,
    /// or `pyro.net=pending`.
    pub fn cmdline(&self) -> String {
        match &self.config {
            Some(c) => format!("pyro.net={}/{},{}", c.address, c.prefix, c.gateway),
            None => "pyro.net=pending".into(),
        }
    }
}

/// A VMM able to boot sandboxes.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which one it is.
    fn kind(&self) -> BackendKind;
    /// Starts the VMM; returns once the agent socket can be connected to (the guest may
    /// still be booting: connecting retries until the agent answers).
    fn boot<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>>;

    /// The machine `record` (of this backend, see [`Machine::record`]) describes, as a
    /// process that did not boot it sees it. Checks nothing: a machine that is gone
    /// answers [`Machine::is_alive`] with `false`.
    fn attach(&self, record: &MachineRecord) -> Box<dyn Machine> {
        attach(record)
    }

    /// Whether its machines boot an environment's kernel and disks (so the environment
    /// must be pulled first). The fake backend's do not.
    fn boots_environments(&self) -> bool {
        true
    }

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

    /// Boots a machine that can be snapshotted while it runs ([`Machine::save_state`] from
    /// any later process) and restored with [`Self::restore`]: no clock on its command line
    /// (the caller reseeds it once its agent answers), and `spec.net` must be the template's
    /// card ([`crate::net::template_nic`]). Only where [`Self::boots_recorded`]; the
    /// caller boots an ordinary machine elsewhere.
    fn boot_recorded<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        let _ = spec;
        Box::pin(async move { Err(self.no_snapshots()) })
    }

    /// Whether [`Self::boot_recorded`] is implemented.
    fn boots_recorded(&self) -> bool {
        false
    }

    /// The error of the snapshot operations a backend does not have.
    fn no_snapshots(&self) -> CoreError {
        CoreError::BackendUnavailable {
            backend: self.kind().as_str(),
            reason: "this backend does not take snapshots".into(),
        }
    }
}

/// One running machine: booted by this process, or attached from its [`MachineRecord`].
pub trait Machine: Send + Sync + std::fmt::Debug {
    /// The VMM's pid (one-shot VMs note it for their orphan reaping and benchmarks;
    /// persistent machines are known by [`Machine::record`]).
    fn pid(&self) -> u32;
    /// What a later process needs to find this machine again ([`Backend::attach`]). It
    /// can change: a QEMU machine whose relay [`Machine::connect`] restarted names the new
    /// relay.
    fn record(&self) -> MachineRecord;
    /// Opens one stream to the guest agent (within `timeout`), ready for the protocol's
    /// handshake; a QEMU machine restarts a dead relay first. Fails while the guest still
    /// boots: callers retry.
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>>;
    /// Whether the VMM still runs.
    fn is_alive(&mut self) -> bool;
    /// Kills the VMM (and anything serving it), waits until it is gone (so its disk is
    /// free), and removes its agent socket. No guest shutdown.
    fn halt(&mut self) -> BoxFuture<'_, ()>;
    /// The last `max` bytes of the guest console, lossily.
    fn console_tail(&self, max: usize) -> String;
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
    fn backend_kinds_round_trip_their_names() {
        for kind in [BackendKind::Firecracker, BackendKind::Qemu] {
            assert_eq!(BackendKind::from_name(kind.as_str()), Some(kind));
            assert_eq!(BackendKind::of_record(kind.as_str()), kind);
        }
        assert_eq!(BackendKind::from_name("QEMU"), None);
        assert_eq!(BackendKind::from_name("vmware"), None);
        // Records naming anything but firecracker have always been read as QEMU.
        assert_eq!(BackendKind::of_record(""), BackendKind::Qemu);
        assert_eq!(BackendKind::of_record("vmware"), BackendKind::Qemu);
        assert_eq!(
            BackendChoice::from(BackendKind::Firecracker),
            BackendChoice::Firecracker
        );
        assert_eq!(BackendChoice::from(BackendKind::Qemu), BackendChoice::Qemu);
    }

    #[test]
    fn vmm_process_names_are_recognised() {
        for name in [
            "qemu-system-x86_64",
            "firecracker",
            "firecracker-v1.7",
            "jailer",
        ] {
            assert!(BackendKind::is_vmm_process_name(name), "{name}");
        }
        for name in ["qemu-img", "jailer2", "pyro", ""] {
            assert!(!BackendKind::is_vmm_process_name(name), "{name}");
        }
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
