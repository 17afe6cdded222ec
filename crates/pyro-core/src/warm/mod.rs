//! Warm snapshots: boot an environment once, save the running machine, restore copies of it;
//! and the pre-warmed pool of paused one-shot sandboxes ([`pool`]).
//!
//! A cold boot under QEMU/TCG takes seconds; restoring a saved machine takes a fraction of
//! that. A snapshot is taken per environment *and* machine shape:
//!
//! 1. A template sandbox boots cold with a fresh writable disk and a machine description a
//!    restore can reproduce exactly ([`Backend::boot_for_snapshot`]: no boot-time clock on
//!    the kernel command line, the disk named relative to the sandbox directory).
//! 2. Once its agent answers, the host runs `true` and a reseed (so the first requests of
//!    a restored clone find what they read in the page cache), flushes the guest's
//!    filesystems, and
//!    closes the agent channel ([`Machine::detach_agent`]): the agent ends its session and
//!    waits for the next host with its hello pending.
//! 3. The machine is paused and its device state is written next to its writable disk
//!    ([`Machine::save_state`]); the disk is consistent at that moment and is kept as the
//!    snapshot's disk template. Under QEMU the template's memory lives in a file
//!    (`mem.img`) it writes through to; restored clones map that file copy-on-write, so a
//!    restore copies no memory and clones share every page they have not written.
//!
//! Snapshots live in `<cache>/snapshots/<id>/` (`meta.json`, `upper.ext4`, and the
//! backend's own files: `state.bin`, `mem.img`, `vmm.json` for QEMU, `fc-state.bin` and
//! `fc-mem.img` for Firecracker), outside everything
//! `pyro env prune` walks; [`SnapshotStore::prune`]
//! removes the stale ones. The id is a digest of a [`SnapshotKey`]: the environment's
//! kernel, initramfs, rootfs and agent digests, the backend's identity (the VMM binary and
//! the exact machine description), the vCPU count, memory and disk size. Any change to one
//! of them selects another id, so a snapshot is rebuilt automatically and an old one is
//! never restored into a machine it does not fit. Building happens under an exclusive lock
//! per id in a temporary directory that is renamed into place only when complete; a failed
//! build leaves a marker that makes later runs boot cold for a while instead of retrying on
//! every run.
//!
//! A restore ([`Backend::restore`]) copies the snapshot's disk into the new sandbox's
//! directory and starts the VMM from the saved state. Every clone then starts with the
//! same kernel random state, clock and identity, so before anything else runs the host
//! sends [`reseed`]: fresh host entropy, credited and followed by an immediate CRNG reseed,
//! the current time, and a new `/etc/machine-id`. No TLS or other
//! secret-bearing state exists in the template: nothing but the agent has run in it.
//!
//! Warm starts are used by one-shot VMs ([`crate::Pyro::start_vm`]) on their first start,
//! and by workspaces when they are created or reset (their disk is new then; a stopped
//! workspace's `start` boots cold on the disk it has). Workspace snapshots are their own
//! (the key's `durable_disk`: the clones' disk flushes must reach the host file), and a
//! restored workspace's VMM and relay are detached like a booted one's. Set
//! `PYRO_SNAPSHOTS=0` to always boot cold.
//!
//! Under Firecracker the same steps use its snapshot API: the template boots without a
//! clock on its command line, is paused and saved with a full snapshot (`fc-state.bin`,
//! `fc-mem.img`) next to its disk template; a clone stages its own disk copy and the root
//! filesystem under the relative drive names the snapshot records, binds the vsock socket
//! at the same relative path in its own directory, and loads the snapshot resumed, with the
//! memory file mapped private and copy-on-write.
//!
//! Layout: this file holds the switches, constants and [`BootMode`]; `key.rs` the key,
//! metadata and [`is_current`]; `cache.rs` the [`SnapshotStore`] and the build; `reseed.rs`
//! the clone reseed; `prepare.rs` [`crate::Pyro::prepare_environment`] and
//! [`crate::Pyro::environment_readiness`] (`pyro prepare`, `pyro doctor --environment`); `disk.rs` [`copy_disk`] and file helpers; `error.rs` [`SnapshotError`];
//! [`pool`] the pre-warmed pool.
//!
//! [`Backend::boot_for_snapshot`]: crate::backend::Backend::boot_for_snapshot
//! [`Backend::restore`]: crate::backend::Backend::restore
//! [`Machine::detach_agent`]: crate::backend::Machine::detach_agent
//! [`Machine::save_state`]: crate::backend::Machine::save_state

use serde::Serialize;

mod cache;
mod disk;
mod error;
mod key;
pub mod pool;
mod prepare;
mod reseed;

pub use cache::{BuildContext, SnapshotStore};
pub use disk::copy_disk;
pub use error::SnapshotError;
pub use key::{Snapshot, SnapshotKey, SnapshotMeta, is_current};
pub use prepare::{EnvironmentReadiness, Readiness};
pub use reseed::{reseed, reseed_with};

/// Environment variable that turns warm snapshots off when set to `0`, `false`, `no` or
/// `off`.
pub const SNAPSHOTS_ENV: &str = "PYRO_SNAPSHOTS";
/// Version of the snapshot layout and build procedure; part of every [`SnapshotKey`]
/// (3: keys carry `durable_disk`).
pub const SNAPSHOT_FORMAT: u32 = 3;
/// Bytes of host entropy sent to a restored guest.
pub const RESEED_ENTROPY_BYTES: usize = 256;
/// The snapshot's writable-disk template, inside its directory.
pub const UPPER_FILE: &str = "upper.ext4";
/// The snapshot's description, inside its directory; written last.
pub const META_FILE: &str = "meta.json";

/// Whether `PYRO_SNAPSHOTS` leaves warm snapshots on (the default).
pub fn enabled_by_env() -> bool {
    enabled_by(std::env::var(SNAPSHOTS_ENV).ok().as_deref())
}

fn enabled_by(value: Option<&str>) -> bool {
    value.is_none_or(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// How a sandbox's machine was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// Booted from scratch.
    Cold,
    /// Restored from a warm snapshot.
    Warm,
    /// Taken from the pre-warmed pool: started ahead of time, kept paused, resumed and
    /// reseeded when taken (see [`pool`]).
    Pooled,
    /// Restored from a workspace's named snapshot (its memory and disk), then reseeded.
    Snapshot,
}

impl BootMode {
    /// Every mode.
    pub const ALL: [BootMode; 4] = [Self::Cold, Self::Warm, Self::Pooled, Self::Snapshot];

    /// `cold`, `warm`, `pooled` or `snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Pooled => "pooled",
            Self::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for BootMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A boot mode name that is not one of [`BootMode::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown boot mode `{input}` (expected cold, warm, pooled or snapshot)")]
pub struct UnknownBootMode {
    /// The text refused (cut to 64 characters).
    pub input: String,
}

impl std::str::FromStr for BootMode {
    type Err = UnknownBootMode;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == input)
            .ok_or_else(|| UnknownBootMode {
                input: input.chars().take(64).collect(),
            })
    }
}

#[cfg(test)]
mod tests;
