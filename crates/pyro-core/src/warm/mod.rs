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

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_proto::Session;
use pyro_proto::api::{self, ReseedResult};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendKind, BootSpec, Machine};
use crate::error::CoreError;
use crate::lock::{self, LockMode};

pub mod pool;

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
/// How long a failed build makes later runs skip the snapshot and boot cold.
const FAILURE_BACKOFF: Duration = Duration::from_secs(600);
/// How long a run waits for another process that is building the same snapshot.
const BUILD_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Time the guest agent gets, after its host went away, to end its session and wait for
/// the next host before the machine is paused.
const DETACH_SETTLE: Duration = Duration::from_millis(300);
/// The id a template sandbox passes to the backend.
const TEMPLATE_ID: &str = "snapshot-template";

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
}

impl BootMode {
    /// `cold`, `warm` or `pooled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::Pooled => "pooled",
        }
    }
}

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
    pub durable_disk: bool,
    /// [`Backend::snapshot_identity`]: the VMM binary and the machine description.
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
    dir: PathBuf,
    meta: SnapshotMeta,
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

/// Why a snapshot could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process held the build lock too long.
    #[error("waiting for another build of snapshot {id}")]
    Lock {
        /// The snapshot.
        id: String,
        /// The lock error.
        #[source]
        source: lock::LockError,
    },
    /// Booting, preparing or saving the template VM failed.
    #[error("building snapshot {id} failed: {reason}")]
    Build {
        /// The snapshot.
        id: String,
        /// What went wrong (with the guest console's tail when there is one).
        reason: String,
    },
    /// A recent build of this snapshot failed; runs boot cold until the back-off ends.
    #[error(
        "snapshot {id} failed to build recently ({reason}); booting cold until {retry_after:.0}"
    )]
    RecentlyFailed {
        /// The snapshot.
        id: String,
        /// The recorded failure.
        reason: String,
        /// UNIX time after which a build is tried again.
        retry_after: f64,
    },
}

impl SnapshotError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<SnapshotError> for CoreError {
    fn from(e: SnapshotError) -> Self {
        CoreError::Boot {
            reason: error_chain(&e),
            console_tail: String::new(),
        }
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The record of a failed build (`<id>.failed`).
#[derive(Debug, Serialize, Deserialize)]
struct FailureRecord {
    at: f64,
    reason: String,
}

/// Everything a build needs besides the key.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// The backend to boot the template with.
    pub backend: &'a dyn Backend,
    /// The image cache (for the fresh writable disk).
    pub cache: &'a pyro_image::Cache,
    /// The environment.
    pub env: &'a pyro_image::Installed,
    /// How long the template may take to boot.
    pub boot_timeout: Duration,
}

/// The snapshots of one cache: `<cache>/snapshots/`.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// The store of the cache rooted at `cache_root`.
    pub fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("snapshots"),
        }
    }

    /// `<cache>/snapshots`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The complete snapshot for `key`, if there is one.
    pub fn lookup(&self, key: &SnapshotKey) -> Option<Snapshot> {
        let snap = self.read(&key.id())?;
        (snap.meta.key == *key).then_some(snap)
    }

    /// The snapshot in directory `id` (complete by construction once `meta.json` exists).
    fn read(&self, id: &str) -> Option<Snapshot> {
        let dir = self.root.join(id);
        let bytes = std::fs::read(dir.join(META_FILE)).ok()?;
        let meta: SnapshotMeta = serde_json::from_slice(&bytes).ok()?;
        if meta.id != id || meta.key.id() != id || !dir.join(UPPER_FILE).is_file() {
            return None;
        }
        Some(Snapshot { dir, meta })
    }

    /// Every complete snapshot.
    pub fn list(&self) -> Vec<Snapshot> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<Snapshot> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| self.read(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        out
    }

    /// The snapshot for `key`, building it first when there is none (or waiting while
    /// another process builds it).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::RecentlyFailed`] during the back-off after a failed build, or why
    /// this build failed (it then records the failure).
    pub async fn ensure(
        &self,
        key: &SnapshotKey,
        ctx: &BuildContext<'_>,
    ) -> Result<Snapshot, SnapshotError> {
        if let Some(s) = self.lookup(key) {
            return Ok(s);
        }
        let id = key.id();
        self.check_failure(&id)?;
        create_private_dir(&self.root)?;
        let _guard = lock::lock(
            self.root.join(format!("{id}.lock")),
            LockMode::Exclusive,
            BUILD_LOCK_TIMEOUT,
        )
        .await
        .map_err(|source| SnapshotError::Lock {
            id: id.clone(),
            source,
        })?;
        // Someone else may have built it (or failed to) while we waited.
        if let Some(s) = self.lookup(key) {
            return Ok(s);
        }
        self.check_failure(&id)?;
        let tmp = self.root.join(format!(".build-{id}"));
        // We hold the lock: whatever is there is left over from a build that died.
        remove_tree(&tmp)?;
        create_private_dir(&tmp)?;
        tracing::info!(
            id,
            environment = key.environment,
            "building a warm snapshot"
        );
        let built = build(&tmp, key, ctx).await;
        let meta = match built {
            Ok(meta) => meta,
            Err(e) => {
                let _ = remove_tree(&tmp);
                self.record_failure(&id, error_chain(&e));
                return Err(e);
            }
        };
        let installed = self.install(&tmp, &meta);
        if let Err(e) = installed {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_file(self.root.join(format!("{id}.failed")));
        tracing::info!(
            id,
            build_ms = meta.build_ms,
            save_ms = meta.save_ms,
            "warm snapshot ready"
        );
        Ok(Snapshot {
            dir: self.root.join(&id),
            meta,
        })
    }

    /// Writes `meta.json` into the finished build directory and renames it into place.
    fn install(&self, tmp: &Path, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        for entry in std::fs::read_dir(tmp)
            .map_err(|e| SnapshotError::io("read", tmp, e))?
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                use std::os::unix::fs::PermissionsExt;
                let path = entry.path();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| SnapshotError::io("protect", &path, e))?;
                sync_file(&path)?;
            }
        }
        let meta_path = tmp.join(META_FILE);
        let body = serde_json::to_vec_pretty(meta).map_err(|e| {
            SnapshotError::io("encode", &meta_path, io::Error::other(e.to_string()))
        })?;
        std::fs::write(&meta_path, body).map_err(|e| SnapshotError::io("write", &meta_path, e))?;
        sync_file(&meta_path)?;
        let dest = self.root.join(&meta.id);
        if dest.exists() {
            // An unreadable or mismatching leftover under the same name.
            let aside = self
                .root
                .join(format!(".old-{}-{}", meta.id, std::process::id()));
            std::fs::rename(&dest, &aside).map_err(|e| SnapshotError::io("move", &dest, e))?;
            let _ = remove_tree(&aside);
        }
        std::fs::rename(tmp, &dest).map_err(|e| SnapshotError::io("rename", tmp, e))?;
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes `snap` because restoring it failed (it is damaged, or this host cannot
    /// restore it), and records the failure: runs boot cold without retrying until the
    /// back-off ends, then build it again. Clones running from it keep their mappings.
    pub fn invalidate(&self, snap: &Snapshot, reason: &dyn std::error::Error) {
        let id = &snap.meta.id;
        let aside = self.root.join(format!(".old-{id}-{}", std::process::id()));
        if std::fs::rename(&snap.dir, &aside).is_ok() {
            tracing::warn!(id, "removed a warm snapshot that could not be restored");
            self.record_failure(id, format!("restoring failed: {}", error_chain(reason)));
            let _ = remove_tree(&aside);
        }
    }

    fn check_failure(&self, id: &str) -> Result<(), SnapshotError> {
        let path = self.root.join(format!("{id}.failed"));
        let Some(rec) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<FailureRecord>(&b).ok())
        else {
            return Ok(());
        };
        let retry_after = rec.at + FAILURE_BACKOFF.as_secs_f64();
        if crate::host::now() < retry_after {
            return Err(SnapshotError::RecentlyFailed {
                id: id.to_string(),
                reason: rec.reason,
                retry_after,
            });
        }
        Ok(())
    }

    fn record_failure(&self, id: &str, reason: String) {
        let rec = FailureRecord {
            at: crate::host::now(),
            reason,
        };
        let path = self.root.join(format!("{id}.failed"));
        let tmp = self.root.join(format!(".{id}.failed.tmp"));
        if let Ok(body) = serde_json::to_vec(&rec)
            && std::fs::write(&tmp, body).is_ok()
        {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// Removes every snapshot `keep` rejects, failure records, and leftovers of builds that
    /// died; skips snapshots whose build lock is held. Returns what was removed, relative to
    /// the cache root, and the bytes freed.
    pub fn prune(&self, keep: impl Fn(&SnapshotMeta) -> bool) -> (Vec<String>, u64) {
        let mut removed = Vec::new();
        let mut freed = 0;
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return (removed, freed);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let id = name
                .strip_prefix(".build-")
                .or_else(|| name.strip_suffix(".failed"))
                .unwrap_or(&name)
                .to_string();
            if name.ends_with(".lock") || (name.starts_with('.') && !is_dir) {
                continue;
            }
            let stale = if name.starts_with(".build-") || name.starts_with(".old-") {
                true
            } else if name.ends_with(".failed") {
                self.check_failure(&id).is_ok()
            } else if is_dir {
                self.read(&name).is_none_or(|s| !keep(&s.meta))
            } else {
                false
            };
            if !stale {
                continue;
            }
            // A build of this id in progress holds its lock: leave it alone.
            let Ok(Some(_guard)) =
                lock::try_lock(&self.root.join(format!("{id}.lock")), LockMode::Exclusive)
            else {
                continue;
            };
            let bytes = allocated_bytes(&path);
            let gone = if is_dir {
                remove_tree(&path).is_ok()
            } else {
                std::fs::remove_file(&path).is_ok()
            };
            if gone {
                freed += bytes;
                removed.push(format!("snapshots/{name}"));
            }
        }
        removed.sort();
        (removed, freed)
    }
}

/// Boots the template VM in `dir`, prepares and saves it. `dir` then holds the snapshot
/// (without `meta.json`).
async fn build(
    dir: &Path,
    key: &SnapshotKey,
    ctx: &BuildContext<'_>,
) -> Result<SnapshotMeta, SnapshotError> {
    let started = Instant::now();
    let id = key.id();
    let fail = |reason: String| SnapshotError::Build {
        id: id.clone(),
        reason,
    };
    let upper = dir.join(UPPER_FILE);
    ctx.cache
        .create_upper_disk(&upper, key.upper_disk_mib)
        .map_err(|e| fail(format!("cannot create the writable disk: {e}")))?;
    let spec = BootSpec {
        id: TEMPLATE_ID,
        workdir: dir,
        env: ctx.env,
        upper: &upper,
        vcpu_count: key.vcpu_count,
        mem_mib: key.mem_mib,
        persistent: false,
        durable_disk: key.durable_disk,
        relay_bin: None,
        boot_timeout: ctx.boot_timeout,
    };
    let mut machine = ctx
        .backend
        .boot_for_snapshot(spec)
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    let prepared = prepare_and_save(machine.as_mut(), dir, ctx.boot_timeout, started).await;
    machine.kill().await;
    let (boot_ms, save_ms) = prepared.map_err(|e| fail(error_chain(&e)))?;
    // The template's logs stay for diagnosis; its sockets are gone with it.
    Ok(SnapshotMeta {
        id: id.clone(),
        key: key.clone(),
        artifacts: vec![
            ctx.env.kernel.clone(),
            ctx.env.initramfs.clone(),
            ctx.env.rootfs.clone(),
        ],
        created_at: crate::host::now(),
        boot_ms,
        save_ms,
        build_ms: started.elapsed().as_millis() as u64,
        disk_bytes: allocated_bytes(dir),
    })
}

/// Waits for the template's agent, warms the guest up, detaches and saves it. Returns the
/// milliseconds to the agent's first answer and those the save took.
async fn prepare_and_save(
    machine: &mut dyn Machine,
    dir: &Path,
    boot_timeout: Duration,
    started: Instant,
) -> crate::Result<(u64, u64)> {
    let session = crate::connect_agent(machine, boot_timeout).await?;
    let boot_ms = started.elapsed().as_millis() as u64;
    // What every one-shot run does first, so its binaries are in the saved page cache.
    for command in [
        api::Command::Argv(vec!["true".into()]),
        api::Command::Shell("true".into()),
    ] {
        let req = api::ExecRequest {
            command,
            cwd: Some(api::WORKSPACE_ROOT.into()),
            env: Default::default(),
            timeout_ms: Some(30_000),
            max_output_bytes: Some(1024),
            stdin: false,
        };
        api::exec(&session, req, None, |_| {}).await?;
    }
    // Also the reseed every clone starts with, so the files it looks at are cached too.
    reseed(&session).await?;
    api::sync(&session).await?;
    drop(session);
    machine.detach_agent().await;
    tokio::time::sleep(DETACH_SETTLE).await;
    let t = Instant::now();
    machine.save_state(dir).await?;
    Ok((boot_ms, t.elapsed().as_millis() as u64))
}

/// Makes a restored guest its own before anything runs in it: [`RESEED_ENTROPY_BYTES`] of
/// host entropy (credited, then an immediate CRNG reseed), the host's clock, and a new
/// machine id (see [`api::Request::Reseed`]).
///
/// # Errors
///
/// When the host has no entropy to give or the agent refuses; the caller must then not use
/// the guest.
pub async fn reseed(session: &Session) -> crate::Result<ReseedResult> {
    let mut entropy = [0u8; RESEED_ENTROPY_BYTES];
    fill_random(&mut entropy)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let req = api::Request::Reseed(api::Reseed::new(&entropy, nanos));
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        api::call::<ReseedResult>(session, &req),
    )
    .await
    .map_err(|_| CoreError::AgentTimeout { seconds: 30 })??;
    Ok(res)
}

/// Fills `buf` from the kernel's `getrandom`.
fn fill_random(buf: &mut [u8]) -> crate::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the valid buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CoreError::io("read", "getrandom", e));
        }
        filled += n as usize;
    }
    Ok(())
}

/// Copies the disk image `src` to a new file `dst` (mode 0600) keeping it sparse: a reflink
/// where the filesystem has them, else only the data extents (`SEEK_DATA`/`SEEK_HOLE` with
/// `copy_file_range`, which stays in the kernel).
///
/// # Errors
///
/// I/O errors; `dst` is removed again on failure.
pub fn copy_disk(src: &Path, dst: &Path) -> io::Result<()> {
    let input = std::fs::File::open(src)?;
    let len = input.metadata()?.len();
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let copy = || -> io::Result<()> {
        let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
        // SAFETY: both descriptors stay open for the call; FICLONE takes the source
        // descriptor as its argument.
        if unsafe { libc::ioctl(ofd, libc::FICLONE, ifd) } == 0 {
            return Ok(());
        }
        let end = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut pos: i64 = 0;
        while pos < end {
            // SAFETY: lseek on a descriptor we own.
            let data = unsafe { libc::lseek(ifd, pos, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break; // only a hole remains
                }
                return Err(e);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(ifd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let (mut off_in, mut off_out) = (data, data);
            while off_in < hole {
                let want = usize::try_from(hole - off_in).unwrap_or(usize::MAX);
                // SAFETY: the offsets point at live locals; the descriptors are open.
                let n =
                    unsafe { libc::copy_file_range(ifd, &mut off_in, ofd, &mut off_out, want, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    break;
                }
            }
            pos = hole;
        }
        output.set_len(len)
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(dst);
    })
}

fn create_private_dir(path: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(SnapshotError::io("create", path, e)),
    }
}

fn remove_tree(path: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io("remove", path, e)),
    }
}

fn sync_file(path: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("flush", path, e))
}

/// Bytes allocated to a file or a directory tree (holes do not count).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| allocated_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> SnapshotKey {
        SnapshotKey {
            format: SNAPSHOT_FORMAT,
            backend: "qemu".into(),
            environment: "debian:12".into(),
            environment_version: "1.0.0".into(),
            kernel_digest: "k".into(),
            initramfs_digest: "i".into(),
            rootfs_digest: "r".into(),
            agent_digest: "a".into(),
            vcpu_count: 1,
            mem_mib: 256,
            upper_disk_mib: 4096,
            durable_disk: false,
            vmm: "qemu /usr/bin/qemu size=1".into(),
        }
    }

    fn meta(k: &SnapshotKey, artifacts: Vec<PathBuf>) -> SnapshotMeta {
        SnapshotMeta {
            id: k.id(),
            key: k.clone(),
            artifacts,
            created_at: 1.0,
            boot_ms: 1,
            save_ms: 1,
            build_ms: 2,
            disk_bytes: 0,
        }
    }

    /// Writes a complete-looking snapshot for `k` into `store`.
    fn fake_snapshot(store: &SnapshotStore, k: &SnapshotKey, artifacts: Vec<PathBuf>) {
        let dir = store.root().join(k.id());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(UPPER_FILE), b"disk").unwrap();
        std::fs::write(
            dir.join(META_FILE),
            serde_json::to_vec(&meta(k, artifacts)).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn every_key_input_changes_the_id() {
        let base = key();
        let id = base.id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(base.id(), id, "ids are stable");
        let variants: [fn(&mut SnapshotKey); 13] = [
            |k| k.format += 1,
            |k| k.backend = "firecracker".into(),
            |k| k.environment = "debian:12-base".into(),
            |k| k.environment_version = "1.0.1".into(),
            |k| k.kernel_digest = "k2".into(),
            |k| k.initramfs_digest = "i2".into(),
            |k| k.rootfs_digest = "r2".into(),
            |k| k.agent_digest = "a2".into(),
            |k| k.vcpu_count = 2,
            |k| k.mem_mib = 512,
            |k| k.upper_disk_mib = 8192,
            |k| k.durable_disk = true,
            |k| k.vmm = "qemu /usr/bin/qemu size=2".into(),
        ];
        let mut seen = std::collections::HashSet::from([id]);
        for change in variants {
            let mut k = base.clone();
            change(&mut k);
            assert!(seen.insert(k.id()), "{k:?} collides");
        }
    }

    #[test]
    fn lookup_needs_a_matching_complete_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key();
        assert!(store.lookup(&k).is_none());
        // A build in progress (no meta.json yet) is not a snapshot.
        let snap_dir = store.root().join(k.id());
        std::fs::create_dir_all(&snap_dir).unwrap();
        std::fs::write(snap_dir.join(UPPER_FILE), b"disk").unwrap();
        assert!(store.lookup(&k).is_none());
        fake_snapshot(&store, &k, vec![]);
        let found = store.lookup(&k).unwrap();
        assert_eq!(found.dir(), snap_dir);
        assert_eq!(found.upper_disk(), snap_dir.join(UPPER_FILE));
        assert_eq!(found.meta().key, k);
        // A different key never matches, even if its directory were reused.
        let mut other = k.clone();
        other.mem_mib = 512;
        assert!(store.lookup(&other).is_none());
        // A meta.json whose key does not belong to its directory is ignored.
        let meta_path = snap_dir.join(META_FILE);
        let mut m = meta(&k, vec![]);
        m.key = other;
        std::fs::write(&meta_path, serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(store.lookup(&k).is_none());
        std::fs::write(&meta_path, b"{not json").unwrap();
        assert!(store.lookup(&k).is_none());
    }

    #[test]
    fn prune_keeps_valid_snapshots_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let artifact = dir.path().join("kernel");
        std::fs::write(&artifact, b"k").unwrap();
        let live = key();
        fake_snapshot(&store, &live, vec![artifact.clone()]);
        let mut stale = key();
        stale.agent_digest = "old".into();
        fake_snapshot(&store, &stale, vec![dir.path().join("gone")]);
        std::fs::create_dir_all(store.root().join(".build-abc")).unwrap();
        std::fs::create_dir_all(store.root().join("garbage")).unwrap();
        let old_failure = FailureRecord {
            at: 0.0,
            reason: "x".into(),
        };
        std::fs::write(
            store.root().join("abc.failed"),
            serde_json::to_vec(&old_failure).unwrap(),
        )
        .unwrap();
        let (removed, _) = store.prune(|m| m.artifacts.iter().all(|p| p.exists()));
        let mut expected = vec![
            "snapshots/.build-abc".to_string(),
            "snapshots/abc.failed".into(),
            format!("snapshots/{}", stale.id()),
            "snapshots/garbage".into(),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(store.lookup(&live).is_some());
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn only_snapshots_of_the_installed_environment_are_current() {
        let dir = tempfile::tempdir().unwrap();
        let cache = pyro_image::Cache::open(dir.path().to_path_buf()).unwrap();
        let artifact = dir.path().join("vmlinux");
        std::fs::write(&artifact, b"k").unwrap();
        let k = key();
        let m = meta(&k, vec![artifact.clone()]);
        assert!(!is_current(&m, &cache), "the environment is not installed");
        let manifest = serde_json::json!({
            "schema_version": 1,
            "name": "debian:12",
            "version": "1.0.0",
            "source": "test",
            "artifacts": {
                "kernel": {"sha256": "k", "size_bytes": 1},
                "rootfs": {"sha256": "r", "size_bytes": 1}
            },
            "kernel_release": "6.1",
            "packages": [],
            "rootfs_agent_sha256": "a",
            "initramfs": {
                "key": "x", "sha256": "i", "size_bytes": 1,
                "agent_sha256": "a", "kernel_sha256": "k"
            },
            "built_at": 0.0,
            "build_seconds": 0.0,
            "pyro_image_version": "0"
        });
        let path = cache.environment_manifest_path("debian:12");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, manifest.to_string()).unwrap();
        assert!(is_current(&m, &cache));
        let mut other_agent = k.clone();
        other_agent.agent_digest = "a2".into();
        assert!(!is_current(
            &meta(&other_agent, vec![artifact.clone()]),
            &cache
        ));
        let mut old_format = k.clone();
        old_format.format -= 1;
        assert!(!is_current(&meta(&old_format, vec![artifact]), &cache));
        assert!(!is_current(
            &meta(&k, vec![dir.path().join("gone")]),
            &cache
        ));
    }

    #[test]
    fn a_recent_failure_makes_runs_boot_cold_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        std::fs::create_dir_all(store.root()).unwrap();
        let e = SnapshotError::Build {
            id: "x".into(),
            reason: "QEMU refused".into(),
        };
        store.record_failure("x", error_chain(&e));
        let err = store.check_failure("x").unwrap_err();
        assert!(err.to_string().contains("QEMU refused"), "{err}");
        let old = FailureRecord {
            at: crate::host::now() - FAILURE_BACKOFF.as_secs_f64() - 1.0,
            reason: "old".into(),
        };
        std::fs::write(
            store.root().join("x.failed"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        assert!(store.check_failure("x").is_ok());
        assert!(store.check_failure("never-built").is_ok());
    }

    #[test]
    fn disk_copies_keep_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::File::create(&src).unwrap();
            f.write_all(b"head").unwrap();
            f.seek(SeekFrom::Start(64 << 20)).unwrap();
            f.write_all(b"middle").unwrap();
            f.set_len(128 << 20).unwrap();
        }
        let dst = dir.path().join("dst.img");
        copy_disk(&src, &dst).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a.len(), b.len());
        assert!(a == b);
        assert!(allocated_bytes(&dst) < 8 << 20, "the copy stays sparse");
        // The destination must be new.
        assert!(copy_disk(&src, &dst).is_err());
        assert!(
            dst.exists(),
            "a refused copy leaves the existing file alone"
        );
    }

    #[test]
    fn snapshots_are_on_unless_switched_off() {
        assert!(enabled_by(None));
        for (v, on) in [
            ("0", false),
            ("off", false),
            (" No ", false),
            ("false", false),
            ("1", true),
            ("", true),
        ] {
            assert_eq!(enabled_by(Some(v)), on, "{v:?}");
        }
        assert_eq!(BootMode::Warm.as_str(), "warm");
        assert_eq!(BootMode::Cold.as_str(), "cold");
        assert_eq!(BootMode::Pooled.as_str(), "pooled");
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
