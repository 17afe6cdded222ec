//! [`SnapshotStore`], the content-addressed cache under `<cache>/snapshots/`: lookup, build
//! under a per-id lock in a temporary directory renamed into place, the failure markers that
//! make later runs boot cold for a while, and pruning.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyro_proto::api;
use serde::{Deserialize, Serialize};

use super::disk::{allocated_bytes, create_private_dir, remove_tree, sync_file};
use super::error::error_chain;
use super::{META_FILE, Snapshot, SnapshotError, SnapshotKey, SnapshotMeta, UPPER_FILE, reseed};
use crate::backend::{Backend, BootSpec, Machine};
use crate::lock::{self, LockMode};

/// How long a failed build makes later runs skip the snapshot and boot cold.
pub(super) const FAILURE_BACKOFF: Duration = Duration::from_secs(600);
/// How long a run waits for another process that is building the same snapshot.
const BUILD_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// Time the guest agent gets, after its host went away, to end its session and wait for
/// the next host before the machine is paused.
const DETACH_SETTLE: Duration = Duration::from_millis(300);
/// The id a template sandbox passes to the backend.
const TEMPLATE_ID: &str = "snapshot-template";

/// The record of a failed build (`<id>.failed`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct FailureRecord {
    pub(super) at: f64,
    pub(super) reason: String,
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
    /// A networked template's card (in the namespace of the sandbox whose start builds the
    /// snapshot; its address pending): the template must have the card its clones have.
    pub net: Option<&'a crate::backend::GuestNic>,
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

    pub(super) fn check_failure(&self, id: &str) -> Result<(), SnapshotError> {
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

    pub(super) fn record_failure(&self, id: &str, reason: String) {
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
        net: ctx.net,
    };
    let mut machine = ctx
        .backend
        .boot_for_snapshot(spec)
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    let prepared = prepare_and_save(machine.as_mut(), dir, ctx.boot_timeout, started).await;
    machine.halt().await;
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
