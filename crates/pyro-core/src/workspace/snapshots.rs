//! Named snapshots of a workspace (`snapshot create|list|delete`), `reset --snapshot`, and
//! `fork`.
//!
//! A snapshot of a running workspace holds its whole machine: the writable disk (a sparse or
//! reflinked copy), and the backend's saved state (QEMU: the migration stream with every
//! guest page, zero pages elided, plus the command line it must be restored with). A
//! snapshot of a stopped workspace holds the disk only. Each lives in
//! `<ws>/snapshots/<name>/`, built in a `.tmp-…` directory beside it and renamed into place
//! once complete (`snapshot.json` written last), so a crash leaves the old state or the new
//! one; a delete renames it to `.del-…` before removing it. What a dead process left there is
//! swept by the next snapshot operation ([`sweep`]). A guest paused for a save whose process
//! died is resumed by the next call ([`Pyro::resume_abandoned_pause`]).
use std::io;

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::PublishedPort;

/// The directory of a workspace's named snapshots.
pub(super) const SNAPSHOTS_DIR: &str = "snapshots";
/// A snapshot's description, written last.
const META_FILE: &str = "snapshot.json";
/// The copies of the host's shell and service records in a snapshot.
const RECORDS_DIR: &str = "records";
/// The marker of a guest paused for a save, in the VM directory: `<pid> <start ticks>` of
/// the process that paused it.
const PAUSE_MARK: &str = "paused-by";
/// How long the agent gets to notice its relay is gone before the save.
const DETACH_SETTLE: Duration = Duration::from_millis(300);
/// The name of the implicit create-time snapshot.
pub const BASELINE: &str = "baseline";
/// Most named snapshots per workspace.
pub const MAX_SNAPSHOTS: usize = 16;
/// Most bytes the named snapshots of one workspace may take on disk, unless
/// `PYRO_MAX_SNAPSHOT_BYTES` says otherwise.
pub const MAX_SNAPSHOT_BYTES: u64 = 32 << 30;
/// Most workspaces one fork makes.
pub const MAX_FORKS: u32 = 16;
/// Layout of `snapshot.json`.
const LAYOUT_VERSION: u32 = 1;

/// One snapshot, as `snapshot list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct SnapshotInfo {
    pub workspace_id: String,
    pub snapshot_name: String,
    /// `baseline` (the create-time state, not deletable) or `named`.
    pub kind: String,
    pub created_at: f64,
    /// Entries under `/workspace` it holds.
    pub entry_count: u64,
    /// Bytes of the regular files under `/workspace` it holds.
    pub bytes_written: u64,
    pub deletable: bool,
    /// Whether it holds the machine's memory and device state (taken while the workspace
    /// ran): a reset to it brings back running processes, shells and services.
    pub has_memory: bool,
    /// Bytes it takes on the host's disk (allocated blocks: holes and shared extents of a
    /// reflinked disk copy are not counted twice).
    pub size_bytes: u64,
    /// How long the guest was paused while it was taken (only with memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
}

/// The result of `snapshot create`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SnapshotCreateResult {
    pub workspace_id: String,
    pub snapshot: SnapshotInfo,
    pub execution_mode: String,
    /// How long the whole create took.
    pub duration_ms: u64,
}

/// The result of `snapshot list`: the baseline first, then named ones, newest first.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SnapshotList {
    pub workspace_id: String,
    pub count: usize,
    pub snapshots: Vec<SnapshotInfo>,
    /// Bytes all of them take on the host's disk.
    pub total_bytes: u64,
}

/// The result of `snapshot delete`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SnapshotDeleteResult {
    pub workspace_id: String,
    pub snapshot_name: String,
    pub deleted: bool,
}

/// What `fork` makes.
#[derive(Clone, Debug, Default)]
pub struct ForkWorkspace {
    /// The snapshot to fork from; `None`: the workspace as it is now (an implicit snapshot,
    /// removed afterwards).
    pub snapshot: Option<String>,
    /// The forks' name (numbered `-1`, `-2`, … when there are several); default: none.
    pub name: Option<String>,
    /// How many (1 to [`MAX_FORKS`]).
    pub count: u32,
    /// Give the forks the source's secrets (and credentials).
    pub with_secrets: bool,
}

/// The result of `fork`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ForkResult {
    pub source_workspace_id: String,
    /// The snapshot forked from (`null`: the running workspace, through an implicit one).
    pub snapshot_name: Option<String>,
    pub has_memory: bool,
    pub count: usize,
    pub workspaces: Vec<WorkspaceInfo>,
    pub duration_ms: u64,
}

/// `snapshot.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotMeta {
    layout_version: u32,
    #[serde(flatten)]
    info: SnapshotInfo,
    /// The machine shape it was taken with (a restore must have the same).
    vcpu_count: i64,
    mem_mib: i64,
    backend: String,
    environment: String,
}

/// Checks a snapshot name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (as a service name).
pub fn check_snapshot_name(name: &str) -> Result<()> {
    super::services::check_object_name("snapshot_name", name)
}

/// The snapshot size limit: `PYRO_MAX_SNAPSHOT_BYTES`, else [`MAX_SNAPSHOT_BYTES`].
fn size_limit() -> u64 {
    std::env::var("PYRO_MAX_SNAPSHOT_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(MAX_SNAPSHOT_BYTES)
}

/// `<pid> <start ticks>` of this process, naming its temporary directories and marks.
fn owner_tag() -> String {
    let me = std::process::id();
    format!("{me}-{}", host::process_start_ticks(me).unwrap_or(0))
}

/// Whether the process a tag names is gone.
fn owner_gone(tag: &str) -> bool {
    let mut parts = tag.splitn(3, '-');
    let (Some(pid), Some(ticks)) = (parts.next(), parts.next()) else {
        return true;
    };
    match (pid.parse::<u32>(), ticks.parse::<u64>()) {
        (Ok(pid), Ok(ticks)) => !host::process_alive(pid, ticks),
        _ => true,
    }
}

/// Removes what dead processes left in `dir` (a snapshots directory): `.tmp-<tag>-<name>` of
/// a create, `.del-<tag>-<name>` of a delete, `.fork-<tag>` of a fork's implicit snapshot.
pub(super) fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let tag = [".tmp-", ".del-", ".fork-"]
            .iter()
            .find_map(|p| name.strip_prefix(p));
        if let Some(tag) = tag
            && owner_gone(tag)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Bytes allocated to a file or tree (holes do not count).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| allocated(&e.path())).sum())
        .unwrap_or(0)
}

/// Copies the regular files of `src` into `dst` (one level of subdirectories, as the
/// records and secrets directories have), mode 0600.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CoreError::io("read", src, e)),
    };
    host::ensure_private_dir(dst)?;
    for e in entries {
        let e = e.map_err(|e| CoreError::io("read", src, e))?;
        let ty = e
            .file_type()
            .map_err(|err| CoreError::io("read", e.path(), err))?;
        let to = dst.join(e.file_name());
        if ty.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else if ty.is_file() {
            let bytes =
                std::fs::read(e.path()).map_err(|err| CoreError::io("read", e.path(), err))?;
            pyro_host::fs::atomic_write(&to, &bytes, 0o600)
                .map_err(|err| CoreError::io("write", &to, err))?;
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("remove", path, e)),
    }
}

fn read_meta(dir: &Path) -> Option<SnapshotMeta> {
    let bytes = crate::hostfs::read_bounded(&dir.join(META_FILE), 64 * 1024).ok()?;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes).ok()?;
    (meta.layout_version == LAYOUT_VERSION).then_some(meta)
}

/// A snapshot found for a restore: its directory and description.
struct Found {
    dir: PathBuf,
    meta: SnapshotMeta,
}

impl Pyro {
    fn snapshots_dir(&self, id: &str) -> PathBuf {
        self.ws_dirs(id).root.join(SNAPSHOTS_DIR)
    }

    /// The named snapshots of workspace `id` (complete ones only), newest first.
    fn named_snapshots(&self, id: &str) -> Vec<SnapshotInfo> {
        let dir = self.snapshots_dir(id);
        let mut out: Vec<SnapshotInfo> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter_map(|e| {
                        let mut meta = read_meta(&e.path())?;
                        meta.info.size_bytes = allocated(&e.path());
                        Some(meta.info)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| {
            b.created_at
                .total_cmp(&a.created_at)
                .then_with(|| a.snapshot_name.cmp(&b.snapshot_name))
        });
        out
    }

    fn baseline_info(&self, rec: &WorkspaceRecord) -> SnapshotInfo {
        let seed: Option<WorkspaceSeed> = serde_json::from_str(&rec.seed_json).ok();
        SnapshotInfo {
            workspace_id: rec.id.clone(),
            snapshot_name: BASELINE.into(),
            kind: "baseline".into(),
            created_at: rec.created_at,
            entry_count: seed.as_ref().map_or(0, |s| s.entry_count),
            bytes_written: seed.as_ref().map_or(0, |s| s.bytes_written),
            deletable: false,
            has_memory: false,
            size_bytes: allocated(&self.ws_dirs(&rec.id).baseline()),
            pause_ms: None,
        }
    }

    /// How many named snapshots workspace `id` has and the bytes they take (for `status`).
    pub(super) fn snapshot_totals(&self, id: &str) -> (u64, u64) {
        let named = self.named_snapshots(id);
        (named.len() as u64, named.iter().map(|s| s.size_bytes).sum())
    }

    /// Lists a workspace's snapshots: the baseline, then named ones, newest first.
    pub async fn list_snapshots(&self, id: &str) -> Result<SnapshotList> {
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        sweep(&self.snapshots_dir(id));
        let mut snapshots = vec![self.baseline_info(&rec)];
        snapshots.extend(self.named_snapshots(id));
        let total_bytes = snapshots.iter().map(|s| s.size_bytes).sum();
        Ok(SnapshotList {
            workspace_id: id.to_string(),
            count: snapshots.len(),
            snapshots,
            total_bytes,
        })
    }

    /// Deletes a named snapshot (the baseline cannot be).
    pub async fn delete_snapshot(&self, id: &str, name: &str) -> Result<SnapshotDeleteResult> {
        check_snapshot_name(name)?;
        if name == BASELINE {
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: "the baseline snapshot cannot be deleted".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let dir = self.snapshots_dir(id);
        sweep(&dir);
        let path = dir.join(name);
        if read_meta(&path).is_none() {
            return Err(CoreError::SnapshotNotFound {
                workspace_id: id.into(),
                name: name.into(),
            });
        }
        // Gone from the listing at once; removed after (a crash leaves a `.del-` the next
        // snapshot operation sweeps).
        let doomed = dir.join(format!(".del-{}-{name}", owner_tag()));
        std::fs::rename(&path, &doomed).map_err(|e| CoreError::io("remove", &path, e))?;
        crate::fault::point("snapshot-delete-renamed");
        remove_if_exists(&doomed)?;
        super::activity::record(&self.ws_dirs(id).root, "snapshot_delete", name);
        if let Ok(store) = self.store() {
            self.touch(&store, id);
        }
        Ok(SnapshotDeleteResult {
            workspace_id: id.into(),
            snapshot_name: name.into(),
            deleted: true,
        })
    }

    /// Takes a named snapshot: of the whole machine when the workspace runs (the guest is
    /// paused while its state and disk are saved), of its disk when it is stopped.
    pub async fn create_snapshot(&self, id: &str, name: &str) -> Result<SnapshotCreateResult> {
        check_snapshot_name(name)?;
        if name == BASELINE {
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: "`baseline` is the create-time snapshot's name; choose another".into(),
            });
        }
        let started = Instant::now();
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        let dir = self.snapshots_dir(id);
        sweep(&dir);
        if !matches!(rec.state, WorkspaceState::Started | WorkspaceState::Stopped) {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_snapshot_create",
                detail: Some(rec.last_error.clone().unwrap_or_else(|| {
                    "it is being created, reset or deleted; snapshot it once that is done".into()
                })),
            });
        }
        if read_meta(&dir.join(name)).is_some() {
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: format!("workspace `{id}` already has a snapshot `{name}`"),
            });
        }
        let existing = self.named_snapshots(id);
        if existing.len() >= MAX_SNAPSHOTS {
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: format!(
                    "workspace `{id}` has {} snapshots, the most it may keep; delete one first",
                    existing.len()
                ),
            });
        }
        let used: u64 = existing.iter().map(|s| s.size_bytes).sum();
        let limit = size_limit();
        if used >= limit {
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: format!(
                    "workspace `{id}`'s snapshots take {used} bytes, the limit is {limit} (PYRO_MAX_SNAPSHOT_BYTES); delete one first"
                ),
            });
        }
        host::ensure_private_dir(&dir)?;
        let tmp = dir.join(format!(".tmp-{}-{name}", owner_tag()));
        remove_if_exists(&tmp)?;
        host::ensure_private_dir(&tmp)?;
        let built = self.build_snapshot(&rec, name, &tmp).await;
        let info = match built {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let size = allocated(&tmp);
        if used + size > limit {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(CoreError::Invalid {
                field: "snapshot_name",
                reason: format!(
                    "the snapshot would take {size} bytes, and workspace `{id}`'s snapshots may take {limit} in all ({used} used; PYRO_MAX_SNAPSHOT_BYTES); delete one first"
                ),
            });
        }
        crate::fault::point("snapshot-create-built");
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            CoreError::io("store the snapshot in", &path, e)
        })?;
        super::activity::record(&self.ws_dirs(id).root, "snapshot_create", name);
        if let Ok(store) = self.store() {
            self.touch(&store, id);
        }
        Ok(SnapshotCreateResult {
            workspace_id: id.into(),
            snapshot: SnapshotInfo {
                size_bytes: size,
                ..info
            },
            execution_mode: rec.backend.execution_mode().into(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Writes snapshot `name` of `rec` into the empty directory `tmp`; its description last.
    async fn build_snapshot(
        &self,
        rec: &WorkspaceRecord,
        name: &str,
        tmp: &Path,
    ) -> Result<SnapshotInfo> {
        let d = self.ws_dirs(&rec.id);
        let disk = tmp.join(UPPER_FILE);
        let mut pause_ms = None;
        if rec.state == WorkspaceState::Started {
            let session = self.ws_session(rec).await?;
            // What the guest wrote reaches the disk file before the pause (shorter pause;
            // the saved memory would hold it anyway).
            let _ = tokio::time::timeout(Duration::from_secs(30), api::sync(&session)).await;
            drop(session);
            let Some(recorded) = rec.machine.as_ref() else {
                return Err(CoreError::Boot {
                    reason: "the workspace has no running machine".into(),
                    console_tail: String::new(),
                });
            };
            let mut machine = crate::backend::attach(recorded);
            // The saved agent must wait for a new host, as a warm template's does: its
            // session with this relay would mean nothing to a restored machine's.
            machine.detach_agent().await;
            // Recorded without its relay, so the next connection starts one at once.
            let detached = machine.record();
            self.store()?.update_workspace(&rec.id, |r| {
                if r.machine == rec.machine {
                    r.machine = Some(detached.clone());
                }
                Ok::<(), CoreError>(())
            })?;
            tokio::time::sleep(DETACH_SETTLE).await;
            let mark = d.vm().join(PAUSE_MARK);
            pyro_host::fs::atomic_write(&mark, owner_tag().as_bytes(), 0o600)
                .map_err(|e| CoreError::io("write", &mark, e))?;
            let paused = Instant::now();
            let saved = async {
                machine.save_state(tmp).await?;
                crate::fault::point("snapshot-create-paused");
                let upper = d.upper();
                crate::warm::copy_disk(&upper, &disk)
                    .map_err(|e| CoreError::io("copy the disk of", &upper, e))
            }
            .await;
            // Resumed whatever happened.
            let resumed = machine.resume().await;
            pause_ms = Some(paused.elapsed().as_millis() as u64);
            let _ = std::fs::remove_file(&mark);
            saved?;
            resumed?;
            // A new relay (recorded), and the clock that stood still while it was paused.
            let mut now = rec.clone();
            now.machine = Some(machine.record());
            let session = self.ws_session(&now).await?;
            crate::sync_clock(&session).await;
            copy_tree(
                &d.root.join(super::shells::SHELLS_DIR),
                &tmp.join(RECORDS_DIR).join(super::shells::SHELLS_DIR),
            )?;
            copy_tree(
                &d.root.join(super::services::SERVICES_DIR),
                &tmp.join(RECORDS_DIR).join(super::services::SERVICES_DIR),
            )?;
        } else {
            let upper = d.upper();
            crate::warm::copy_disk(&upper, &disk)
                .map_err(|e| CoreError::io("copy the disk of", &upper, e))?;
        }
        let (entry_count, bytes_written) = self.count_workspace_tree(rec, &disk).await;
        let info = SnapshotInfo {
            workspace_id: rec.id.clone(),
            snapshot_name: name.into(),
            kind: "named".into(),
            created_at: host::now(),
            entry_count,
            bytes_written,
            deletable: true,
            has_memory: pause_ms.is_some(),
            size_bytes: 0,
            pause_ms,
        };
        let meta = SnapshotMeta {
            layout_version: LAYOUT_VERSION,
            info: info.clone(),
            vcpu_count: rec.vcpu_count,
            mem_mib: rec.mem_mib,
            backend: rec.backend.as_str().into(),
            environment: rec.environment.clone(),
        };
        let body = serde_json::to_vec_pretty(&meta).map_err(|e| CoreError::Invalid {
            field: "snapshot",
            reason: e.to_string(),
        })?;
        let path = tmp.join(META_FILE);
        pyro_host::fs::atomic_write(&path, &body, 0o600)
            .map_err(|e| CoreError::io("write", &path, e))?;
        Ok(info)
    }

    /// Entries and file bytes under `/workspace` on `disk` (merged with the environment's
    /// base); zeros when the disk cannot be read.
    async fn count_workspace_tree(&self, rec: &WorkspaceRecord, disk: &Path) -> (u64, u64) {
        let Ok(base) = self.base_image(rec) else {
            return (0, 0);
        };
        let disk = disk.to_path_buf();
        tokio::task::spawn_blocking(move || super::disk::count_tree(&disk, &base, WORKSPACE_ROOT))
            .await
            .unwrap_or((0, 0))
    }

    /// Finds snapshot `name` of workspace `id` for a restore.
    fn find_snapshot(&self, id: &str, name: &str) -> Result<Found> {
        check_snapshot_name(name)?;
        let dir = self.snapshots_dir(id).join(name);
        match read_meta(&dir) {
            Some(meta) => Ok(Found { dir, meta }),
            None => Err(CoreError::SnapshotNotFound {
                workspace_id: id.into(),
                name: name.into(),
            }),
        }
    }

    /// Resumes the guest of a started workspace that a snapshot's save paused, when the
    /// process that paused it died before resuming it.
    pub(super) async fn resume_abandoned_pause(&self, rec: &WorkspaceRecord) {
        let mark = self.ws_dirs(&rec.id).vm().join(PAUSE_MARK);
        let Ok(tag) = std::fs::read_to_string(&mark) else {
            return;
        };
        if !owner_gone(tag.trim()) {
            return;
        }
        if let Some(m) = rec.machine.as_ref() {
            let mut machine = crate::backend::attach(m);
            if let Err(e) = machine.resume().await {
                tracing::warn!(workspace = rec.id, "cannot resume a guest left paused: {e}");
                return;
            }
        }
        let _ = std::fs::remove_file(&mark);
    }

    /// Puts workspace `id` back to named snapshot `name`: its disk, and when the snapshot
    /// holds memory the whole running machine (processes, shells, services), reseeded.
    pub(super) async fn reset_to_snapshot(
        &self,
        id: &str,
        name: &str,
        progress: ProgressFn,
    ) -> Result<WorkspaceInfo> {
        let (info, ports) = self.reset_to_snapshot_locked(id, name, progress).await?;
        if ports.is_empty() {
            return Ok(info);
        }
        // Its services' ports, published again now that the workspace is unlocked.
        self.republish_service_ports(id, ports).await;
        self.status_workspace(id).await
    }

    async fn reset_to_snapshot_locked(
        &self,
        id: &str,
        name: &str,
        progress: ProgressFn,
    ) -> Result<(WorkspaceInfo, Vec<(String, PublishedPort)>)> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let found = self.find_snapshot(id, name)?;
        check_shape(&rec, &found.meta)?;
        self.check_resettable(&store, &rec)?;
        let d = self.ws_dirs(id);
        // The copy is made beside the disk first: a failure there changes nothing.
        let fresh = d.root.join("upper.ext4.new");
        let _ = std::fs::remove_file(&fresh);
        crate::warm::copy_disk(&found.dir.join(UPPER_FILE), &fresh)
            .map_err(|e| CoreError::io("copy the snapshot's disk to", &fresh, e))?;
        self.begin_reset(&store, &rec).await?;
        let restore_from = found.meta.info.has_memory.then_some(found.dir.as_path());
        let rebuilt = async {
            std::fs::rename(&fresh, d.upper())
                .map_err(|e| CoreError::io("replace", d.upper(), e))?;
            let (machine, _session, mode) =
                self.ws_boot(&rec, &progress, false, restore_from).await?;
            Ok::<_, CoreError>((machine, mode))
        }
        .await;
        let failed = format!("the reset to snapshot `{name}` failed");
        let mut ports = Vec::new();
        let info = self
            .finish_reset(&store, id, rebuilt, &failed, |root| {
                ports = self.restore_records(&found, id)?;
                super::activity::record(root, "snapshot_restore", name);
                Ok(())
            })
            .await?;
        Ok((info, ports))
    }

    /// Replaces the host's shell and service records of workspace `id` with the snapshot's
    /// (none for a snapshot without memory: nothing runs), made its own; returns the ports
    /// its live services had published, to publish again once the workspace is unlocked.
    fn restore_records(&self, found: &Found, id: &str) -> Result<Vec<(String, PublishedPort)>> {
        let root = self.ws_dirs(id).root;
        for sub in [super::shells::SHELLS_DIR, super::services::SERVICES_DIR] {
            remove_if_exists(&root.join(sub))?;
            if found.meta.info.has_memory {
                copy_tree(&found.dir.join(RECORDS_DIR).join(sub), &root.join(sub))?;
            }
        }
        self.adopt_restored_shells(id);
        Ok(self.adopt_restored_services(id))
    }

    /// Makes `req.count` new workspaces from a snapshot of workspace `id` (named, or one
    /// taken now and removed afterwards). Each has its own disk copy, machine (restored from
    /// the snapshot's memory when it has it, then reseeded: entropy, clock, machine id, its
    /// own network) and records; all or none are made.
    pub async fn fork_workspace(
        &self,
        id: &str,
        req: ForkWorkspace,
        progress: ProgressFn,
    ) -> Result<ForkResult> {
        let started = Instant::now();
        if req.count == 0 || req.count > MAX_FORKS {
            return Err(CoreError::OutOfRange {
                field: "count",
                value: i64::from(req.count),
                min: 1,
                max: i64::from(MAX_FORKS),
            });
        }
        let name = req
            .name
            .as_deref()
            .map(crate::store::validate_name)
            .transpose()?;
        let store = self.store()?;
        let src = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        // The source's snapshot: named, or an implicit one (removed at the end).
        let (found, implicit) = match &req.snapshot {
            Some(s) if s == BASELINE => {
                return Err(CoreError::Invalid {
                    field: "snapshot",
                    reason: "fork from a named snapshot or from the running workspace; the baseline is rebuilt by `reset`, not forked".into(),
                });
            }
            Some(s) => (self.find_snapshot(id, s)?, None),
            None => {
                let tag = format!(".fork-{}", owner_tag());
                let made = self
                    .create_snapshot(id, &format!("fork-{}", host::new_id()))
                    .await?;
                let from = self.snapshots_dir(id).join(&made.snapshot.snapshot_name);
                let hidden = self.snapshots_dir(id).join(&tag);
                std::fs::rename(&from, &hidden).map_err(|e| CoreError::io("rename", &from, e))?;
                let meta = read_meta(&hidden).ok_or_else(|| CoreError::SnapshotNotFound {
                    workspace_id: id.into(),
                    name: made.snapshot.snapshot_name.clone(),
                })?;
                (
                    Found {
                        dir: hidden.clone(),
                        meta,
                    },
                    Some(hidden),
                )
            }
        };
        // A snapshot being copied is not deleted meanwhile (delete takes the lock
        // exclusively).
        let result = match self.ws_lock(id, LockMode::Shared).await {
            Ok(_guard) => {
                self.fork_from(&src, &found, &req, name.as_deref(), &progress)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Some(hidden) = implicit {
            let _ = std::fs::remove_dir_all(hidden);
        }
        let workspaces = result?;
        Ok(ForkResult {
            source_workspace_id: id.into(),
            snapshot_name: req.snapshot.clone(),
            has_memory: found.meta.info.has_memory,
            count: workspaces.len(),
            workspaces,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn fork_from(
        &self,
        src: &WorkspaceRecord,
        found: &Found,
        req: &ForkWorkspace,
        name: Option<&str>,
        progress: &ProgressFn,
    ) -> Result<Vec<WorkspaceInfo>> {
        let src_dirs = self.ws_dirs(&src.id);
        let has_secrets = !crate::secrets::list(&src_dirs.root).is_empty();
        if has_secrets && found.meta.info.has_memory && !req.with_secrets {
            return Err(CoreError::Invalid {
                field: "with_secrets",
                reason: format!(
                    "workspace `{}` has secrets, and the snapshot's memory may hold their values (in the environment of its processes); pass --with-secrets, or fork from a snapshot taken while it was stopped",
                    src.id
                ),
            });
        }
        let mut made: Vec<String> = Vec::new();
        let mut infos = Vec::new();
        for n in 1..=req.count {
            let fork_name = match (name, req.count) {
                (Some(base), 1) => Some(base.to_string()),
                (Some(base), _) => Some(format!("{base}-{n}")),
                (None, _) => None,
            };
            progress(&crate::ProgressEvent::Snapshot(format!(
                "fork {n} of {} from workspace {}",
                req.count, src.id
            )));
            let one = match self
                .fork_one(src, found, req.with_secrets, fork_name, progress, &mut made)
                .await
            {
                Ok((info, ports)) if ports.is_empty() => Ok(info),
                Ok((info, ports)) => {
                    // The fork is unlocked now: its services' ports are published again
                    // (new host ports where the source's are taken).
                    self.republish_service_ports(&info.workspace_id, ports)
                        .await;
                    self.status_workspace(&info.workspace_id).await
                }
                Err(e) => Err(e),
            };
            match one {
                Ok(info) => infos.push(info),
                Err(e) => {
                    for fid in &made {
                        if let Err(t) = self.teardown(fid, None, Teardown::Remove).await {
                            tracing::warn!(workspace = fid, "cleaning up a failed fork: {t}");
                        }
                        if let Ok(store) = self.store() {
                            let _ = store.delete_workspace(fid);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(infos)
    }

    async fn fork_one(
        &self,
        src: &WorkspaceRecord,
        found: &Found,
        with_secrets: bool,
        name: Option<String>,
        progress: &ProgressFn,
        made: &mut Vec<String>,
    ) -> Result<(WorkspaceInfo, Vec<(String, PublishedPort)>)> {
        let store = self.store()?;
        self.check_capacity(&store)?;
        let src_dirs = self.ws_dirs(&src.id);
        let fid = host::new_id();
        let d = self.ws_dirs(&fid);
        host::ensure_private_dir(&d.root)?;
        made.push(fid.clone());
        let _guard = lock::lock(d.lock(), LockMode::Exclusive, LOCK_TIMEOUT).await?;
        self.mark_builder(&fid);
        let now = host::now();
        let mut rec = WorkspaceRecord::new(
            &fid,
            &src.environment,
            &src.environment_version,
            src.backend,
            now,
        );
        rec.name = name;
        rec.labels = src.labels.clone();
        rec.vcpu_count = src.vcpu_count;
        rec.mem_mib = src.mem_mib;
        rec.ttl_seconds = src.ttl_seconds;
        rec.network_policy = src.network_policy;
        rec.allowlist = src.allowlist.clone();
        rec.seed_json = src.seed_json.clone();
        if with_secrets {
            copy_tree(&src_dirs.root.join("secrets"), &d.root.join("secrets"))?;
        }
        crate::warm::copy_disk(&src_dirs.baseline(), &d.baseline())
            .map_err(|e| CoreError::io("copy the baseline of", src_dirs.baseline(), e))?;
        host::ensure_private_dir(&d.logs())?;
        crate::warm::copy_disk(&found.dir.join(UPPER_FILE), &d.upper())
            .map_err(|e| CoreError::io("copy the snapshot's disk to", d.upper(), e))?;
        store.insert_workspace(&rec)?;
        let restore_from = found.meta.info.has_memory.then_some(found.dir.as_path());
        let (machine, _session, mode) = self.ws_boot(&rec, progress, false, restore_from).await?;
        let ports = self.restore_records(found, &fid)?;
        super::activity::record(
            &d.root,
            "fork",
            &format!("from {} ({})", src.id, found.meta.info.snapshot_name),
        );
        let now = host::now();
        let rec = store.update_workspace(&fid, |r| {
            r.state = WorkspaceState::Started;
            r.resume_ttl(now);
            r.machine = Some(machine);
            r.last_activity_at = now;
            r.boot_mode = Some(mode);
            Ok::<(), CoreError>(())
        })?;
        self.spawn_watchdog(&fid);
        Ok((self.info(&store, &rec)?, ports))
    }
}

/// A snapshot restores only into a machine of the shape it was taken with.
fn check_shape(rec: &WorkspaceRecord, meta: &SnapshotMeta) -> Result<()> {
    if meta.vcpu_count != rec.vcpu_count
        || meta.mem_mib != rec.mem_mib
        || meta.backend != rec.backend.as_str()
        || meta.environment != rec.environment
    {
        return Err(CoreError::Invalid {
            field: "snapshot",
            reason: format!(
                "snapshot `{}` was taken with {} vCPU, {} MiB, {} on {}; the workspace has {} vCPU, {} MiB, {} on {}",
                meta.info.snapshot_name,
                meta.vcpu_count,
                meta.mem_mib,
                meta.environment,
                meta.backend,
                rec.vcpu_count,
                rec.mem_mib,
                rec.environment,
                rec.backend.as_str()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_follow_the_contract_regex() {
        for ok in ["a", "A.b_c-9", &"x".repeat(64), "0start"] {
            assert!(check_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "a/b",
            &"x".repeat(65),
            "é",
            ".tmp-1-2-x",
        ] {
            let e = check_snapshot_name(bad).unwrap_err();
            assert!(e.to_string().contains("snapshot_name"), "{e}");
        }
    }

    #[test]
    fn sweep_removes_only_what_dead_processes_left() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(format!(".tmp-{}-a", owner_tag()));
        let dead = dir.path().join(".tmp-999999999-1-b");
        let dead_del = dir.path().join(".del-999999999-1-c");
        let garbled = dir.path().join(".fork-x");
        let kept = dir.path().join("named");
        for p in [&mine, &dead, &dead_del, &garbled, &kept] {
            std::fs::create_dir(p).unwrap();
        }
        sweep(dir.path());
        assert!(mine.exists() && kept.exists());
        assert!(!dead.exists() && !dead_del.exists() && !garbled.exists());
    }
}
