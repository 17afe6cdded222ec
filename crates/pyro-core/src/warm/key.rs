//! What a snapshot is: its [`SnapshotKey`] (everything it depends on, digested into its id),
//! its [`SnapshotMeta`] (`meta.json`), a complete [`Snapshot`] on disk, and [`is_current`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;

use super::{SNAPSHOT_FORMAT, UPPER_FILE};

/// Everything a snapshot depends on. Two equal keys describe interchangeable snapshots;
/// [`SnapshotKey::id`] names its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotKey {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The backend (`qemu`).
    pub backend: String,
    /// Catalog name of the environment.
    pub environment: String,
    /// Its catalog version.
    pub environment_version: String,
    /// sha256 of the kernel.
    pub kernel_digest: String,
    /// sha256 of the initramfs (which carries the agent as `/init`).
    pub initramfs_digest: String,
    /// sha256 of the root filesystem image.
    pub rootfs_digest: String,
    /// sha256 of the agent binary.
    pub agent_digest: String,
    /// Virtual CPUs.
    pub vcpu_count: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Size of the writable disk, MiB.
    pub upper_disk_mib: u64,
    /// Whether the clones' disk flushes reach the host file ([`BootSpec::durable_disk`]:
    /// workspaces) or are skipped (one-shot runs).
    ///
    /// [`BootSpec::durable_disk`]: crate::backend::BootSpec::durable_disk
    pub durable_disk: bool,
    /// The backend's identity ([`Backend::snapshot_identity`]): the VMM binary and the machine
    /// description.
    ///
    /// [`Backend::snapshot_identity`]: crate::backend::Backend::snapshot_identity
    pub vmm: String,
}

impl SnapshotKey {
    /// The key of a snapshot of `env` on `backend` with this machine shape.
    pub fn new(
        env: &pyro_image::Installed,
        backend: BackendKind,
        vcpu_count: u8,
        mem_mib: u32,
        upper_disk_mib: u64,
        durable_disk: bool,
        vmm: String,
    ) -> Self {
        Self {
            format: SNAPSHOT_FORMAT,
            backend: backend.as_str().to_string(),
            environment: env.name.clone(),
            environment_version: env.version.clone(),
            kernel_digest: env.digests.kernel.clone(),
            initramfs_digest: env.digests.initramfs.clone(),
            rootfs_digest: env.digests.rootfs.clone(),
            agent_digest: env.digests.agent.clone(),
            vcpu_count,
            mem_mib,
            upper_disk_mib,
            durable_disk,
            vmm,
        }
    }

    /// 32 hex digits: FNV-1a (128 bit) of the key's JSON. Not a security boundary: the
    /// whole key is stored with the snapshot and compared before every restore.
    pub fn id(&self) -> String {
        const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
        let json = serde_json::to_vec(self).unwrap_or_default();
        let hash = json
            .iter()
            .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME));
        format!("{hash:032x}")
    }
}

/// Whether a snapshot still fits what the cache holds: the current layout
/// ([`SNAPSHOT_FORMAT`]), every artifact it was booted from present, and its environment
/// installed with the same kernel, initramfs (and so agent) and rootfs. `pyro env prune`
/// keeps exactly these.
pub fn is_current(meta: &SnapshotMeta, cache: &pyro_image::Cache) -> bool {
    let k = &meta.key;
    let Ok(Some(manifest)) = cache.read_environment_manifest(&k.environment) else {
        return false;
    };
    let initramfs_matches = manifest
        .initramfs
        .as_ref()
        .is_some_and(|r| r.sha256 == k.initramfs_digest && r.agent_sha256 == k.agent_digest);
    k.format == SNAPSHOT_FORMAT
        && meta.artifacts.iter().all(|p| p.is_file())
        && manifest.version == k.environment_version
        && manifest.artifacts.kernel.sha256 == k.kernel_digest
        && manifest.artifacts.rootfs.sha256 == k.rootfs_digest
        && initramfs_matches
}

/// What `meta.json` records about a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The directory name ([`SnapshotKey::id`]).
    pub id: String,
    /// What the snapshot depends on.
    pub key: SnapshotKey,
    /// The artifacts it was booted from; the snapshot is stale once one is gone.
    pub artifacts: Vec<PathBuf>,
    /// UNIX time it was taken.
    pub created_at: f64,
    /// Milliseconds from starting the template VM to its agent answering.
    pub boot_ms: u64,
    /// Milliseconds pausing the machine and writing its state took.
    pub save_ms: u64,
    /// Milliseconds the whole build took.
    pub build_ms: u64,
    /// Bytes in the snapshot directory (allocated, so holes do not count).
    pub disk_bytes: u64,
}

/// A complete snapshot on disk.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(super) dir: PathBuf,
    pub(super) meta: SnapshotMeta,
}

impl Snapshot {
    /// Its directory (the backend's state files are in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it records.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The writable-disk template to copy into a restored sandbox.
    pub fn upper_disk(&self) -> PathBuf {
        self.dir.join(UPPER_FILE)
    }
}
