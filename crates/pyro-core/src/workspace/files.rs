//! Moving files in and out of a workspace: list, read, write, sync push and export, and
//! the spool that guest streams pass through.
use super::lifecycle::*;
use super::*;

/// One entry of a file listing.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct FileEntry {
    pub path: String,
    pub artifact_type: String,
    pub size_bytes: u64,
    /// Permission bits (493 = 0o755).
    pub mode: u32,
    pub link_target: Option<String>,
}

/// Result of [`Pyro::list_workspace_files`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct FileListResult {
    pub workspace_id: String,
    pub path: String,
    pub recursive: bool,
    pub entries: Vec<FileEntry>,
    pub truncated: bool,
    pub execution_mode: String,
}

/// Result of [`Pyro::read_workspace_file`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct FileReadResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub max_bytes: u64,
    /// Invalid UTF-8 is replaced (see content_base64).
    pub content: String,
    /// Only when the content is not UTF-8: its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    pub truncated: bool,
    pub mode: u32,
    pub execution_mode: String,
}

/// Result of [`Pyro::write_workspace_file`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct FileWriteResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub bytes_written: u64,
    pub execution_mode: String,
}

/// The `workspace_sync` part of a [`SyncResult`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct SyncInfo {
    pub mode: String,
    pub source_path: String,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
}

/// Result of [`Pyro::push_workspace_sync`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct SyncResult {
    pub workspace_id: String,
    pub execution_mode: String,
    pub workspace_sync: SyncInfo,
}

/// Result of [`Pyro::export_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ExportResult {
    pub workspace_id: String,
    pub workspace_path: String,
    pub output_path: String,
    pub artifact_type: String,
    pub entry_count: u64,
    pub bytes_written: u64,
    pub execution_mode: String,
}

pub(super) fn artifact_name(t: api::ArtifactType) -> &'static str {
    match t {
        api::ArtifactType::File => "file",
        api::ArtifactType::Directory => "directory",
        api::ArtifactType::Symlink => "symlink",
        api::ArtifactType::Other => "other",
    }
}

impl Pyro {
    /// Lists a path in `/workspace` (children of a directory; recursively when asked).
    pub async fn list_workspace_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        let path = normalize_workspace_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_file_list").await?;
        let session = self.ws_session(&rec).await?;
        let list = api::list_files(
            &session,
            api::ListFiles {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                recursive,
                max_entries: Some(100_000),
            },
        )
        .await?;
        Ok(FileListResult {
            workspace_id: id.into(),
            path,
            recursive,
            entries: list
                .entries
                .into_iter()
                .map(|e| FileEntry {
                    path: e.path,
                    artifact_type: artifact_name(e.artifact_type).into(),
                    size_bytes: e.size_bytes,
                    mode: e.mode,
                    link_target: e.link_target,
                })
                .collect(),
            truncated: list.truncated,
            execution_mode: rec.backend.execution_mode().into(),
        })
    }

    /// Reads up to `max_bytes` of a regular file (any size; `truncated` says if there is more).
    pub async fn read_workspace_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: i64,
    ) -> Result<FileReadResult> {
        self.read_workspace_file_at(id, path, 0, max_bytes).await
    }

    /// Reads up to `max_bytes` of a regular file from byte `offset`: `truncated` says whether
    /// more follows, and the next page starts at `offset` plus the bytes returned. The guest
    /// sends the file from its start, so `offset + max_bytes` is at most
    /// [`MAX_READ_BYTES`].
    pub async fn read_workspace_file_at(
        &self,
        id: &str,
        path: &str,
        offset: u64,
        max_bytes: i64,
    ) -> Result<FileReadResult> {
        check("max_bytes", max_bytes, (1, MAX_READ_BYTES as i64))?;
        let end = offset.saturating_add(max_bytes as u64);
        if end > MAX_READ_BYTES {
            return Err(CoreError::Invalid {
                field: "offset",
                reason: format!(
                    "offset + max_bytes is {end}, over the limit of {MAX_READ_BYTES} bytes \
                     from the file's start"
                ),
            });
        }
        let path = normalize_workspace_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_file_read").await?;
        let session = self.ws_session(&rec).await?;
        let (meta, data) = api::read_file(
            &session,
            api::ReadFile {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                max_bytes: Some(end),
            },
        )
        .await?;
        let data = data
            .get(offset as usize..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let (content, content_base64) = match String::from_utf8(data) {
            Ok(s) => (s, None),
            Err(e) => {
                let bytes = e.into_bytes();
                // A cut multi-byte character at the end is not "binary": decode what is whole.
                let valid_prefix = std::str::from_utf8(&bytes)
                    .map_err(|e| e.valid_up_to())
                    .err();
                match valid_prefix {
                    Some(n)
                        if meta.truncated
                            && bytes.len() - n < 4
                            && std::str::from_utf8(&bytes[..n]).is_ok() =>
                    {
                        (String::from_utf8_lossy(&bytes[..n]).into_owned(), None)
                    }
                    _ => (
                        String::from_utf8_lossy(&bytes).into_owned(),
                        Some(crate::base64(&bytes)),
                    ),
                }
            }
        };
        // Secret values never reach a result (a redacted text has no exact bytes to give).
        let secrets: Vec<String> = crate::secrets::values(&self.ws_dirs(id).root)?
            .into_values()
            .collect();
        let (content, content_base64) = if secrets.is_empty() {
            (content, content_base64)
        } else {
            let redacted = crate::secrets::redact_str(&content, &secrets, meta.truncated);
            if redacted == content {
                (content, content_base64)
            } else {
                (redacted, None)
            }
        };
        Ok(FileReadResult {
            workspace_id: id.into(),
            path,
            size_bytes: meta.size_bytes,
            max_bytes: max_bytes as u64,
            content,
            content_base64,
            truncated: meta.truncated,
            mode: meta.mode,
            execution_mode: rec.backend.execution_mode().into(),
        })
    }

    /// Writes a text file atomically (parents created; an existing file keeps its mode).
    pub async fn write_workspace_file(
        &self,
        id: &str,
        path: &str,
        text: &str,
    ) -> Result<FileWriteResult> {
        if text.len() > MAX_WRITE_BYTES {
            return Err(CoreError::Invalid {
                field: "text",
                reason: format!("{} bytes exceed the limit of {MAX_WRITE_BYTES}", text.len()),
            });
        }
        let path = normalize_workspace_path(path)?;
        if path == WORKSPACE_ROOT {
            return Err(CoreError::Invalid {
                field: "path",
                reason: "/workspace itself is a directory; name a file inside it".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self
            .load_started(&store, id, "workspace_file_write")
            .await?;
        let session = self.ws_session(&rec).await?;
        let data = bytes::Bytes::copy_from_slice(text.as_bytes());
        api::write_files(
            &session,
            vec![api::Change::Write {
                path: rel(&path),
                size: data.len() as u64,
                mode: None,
            }],
            vec![data.clone()],
            WORKSPACE_ROOT,
        )
        .await?;
        super::activity::record(
            &self.ws_dirs(id).root,
            "file_write",
            &format!("{path} ({} bytes)", data.len()),
        );
        Ok(FileWriteResult {
            workspace_id: id.into(),
            path,
            size_bytes: data.len() as u64,
            bytes_written: data.len() as u64,
            execution_mode: rec.backend.execution_mode().into(),
        })
    }

    /// Imports a host directory or archive into the workspace (merge: nothing is deleted).
    pub async fn push_workspace_sync(
        &self,
        id: &str,
        source: impl Into<HostPath>,
        dest: &str,
    ) -> Result<SyncResult> {
        let dest = normalize_workspace_path(dest)?;
        let seed = Seed::open(&source.into(), "source_path")?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_sync_push").await?;
        let d = self.ws_dirs(id);
        remove_stale_spools(&d.root);
        let tmp = d.root.join(spool_name("sync"));
        let built = seed.write_tar(&tmp, &self.options().limits);
        let res = match built {
            Ok(_) => {
                let session = self.ws_session(&rec).await;
                match session {
                    Ok(s) => import_tar_file(&s, &tmp, &dest, api::ImportMode::Merge).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        let res = res?;
        let now = host::now();
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        super::activity::record(
            &d.root,
            "sync",
            &format!(
                "{} -> {dest} ({} entries, {} bytes)",
                seed.path().display(),
                res.entry_count,
                res.bytes
            ),
        );
        Ok(SyncResult {
            workspace_id: id.into(),
            execution_mode: rec.backend.execution_mode().into(),
            workspace_sync: SyncInfo {
                mode: match seed.mode() {
                    SeedMode::Directory => "directory",
                    _ => "tar_archive",
                }
                .into(),
                source_path: seed.path().display().to_string(),
                destination: dest,
                entry_count: res.entry_count,
                bytes_written: res.bytes,
            },
        })
    }

    /// Copies a file, symlink or directory out of the workspace to a new host path. The
    /// output's parent is opened (missing directories created, nothing followed below what
    /// already existed, or below the allowed root for a confined path) once the workspace is
    /// locked, the guest's tar is spooled into the workspace's own directory within
    /// [`archive::TransferLimits::max_export_bytes`], and extracted through descriptors.
    pub async fn export_workspace(
        &self,
        id: &str,
        path: &str,
        output: impl Into<HostPath>,
    ) -> Result<ExportResult> {
        let output = output.into();
        let path = normalize_workspace_path(path)?;
        if output.is_empty() {
            return Err(CoreError::Invalid {
                field: "output_path",
                reason: "the output path is empty".into(),
            });
        }
        let limits = self.options().limits;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_export").await?;
        let target = archive::ExportTarget::prepare(&output)?;
        let session = self.ws_session(&rec).await?;
        let listing = api::list_files(
            &session,
            api::ListFiles {
                root: WORKSPACE_ROOT.into(),
                path: rel(&path),
                recursive: false,
                max_entries: Some(1),
            },
        )
        .await?;
        let kind = listing.artifact_type;
        if kind == api::ArtifactType::Other {
            // The guest leaves special files out of its tar: say so rather than find an
            // empty export.
            return Err(CoreError::Invalid {
                field: "path",
                reason: format!(
                    "`{}` is a FIFO, socket or device; only files, symlinks and directories \
                     can be exported",
                    listing.path
                ),
            });
        }
        let d = self.ws_dirs(id);
        let spooled = spool_export(
            &session,
            &d.root,
            &path,
            limits.max_export_bytes,
            "PYRO_MAX_EXPORT_BYTES",
        )
        .await;
        let res = spooled.and_then(|spool| {
            let f = spool.reopen()?;
            archive::extract_export(
                std::io::BufReader::new(f),
                &target,
                kind != api::ArtifactType::Directory,
                &limits,
            )
        });
        let stats = res?;
        super::activity::record(
            &d.root,
            "export",
            &format!("{path} -> {}", target.shown.display()),
        );
        Ok(ExportResult {
            workspace_id: id.into(),
            workspace_path: path,
            output_path: target.shown.display().to_string(),
            artifact_type: artifact_name(kind).into(),
            entry_count: stats.entry_count,
            bytes_written: stats.bytes_written,
            execution_mode: rec.backend.execution_mode().into(),
        })
    }
}

/// A spool file in a workspace's directory, removed when dropped. Its name carries the
/// process id, so that spools of processes killed mid-transfer are removed by the next one.
#[derive(Debug)]
pub(super) struct Spool {
    path: PathBuf,
}

impl Spool {
    pub(super) fn reopen(&self) -> Result<std::fs::File> {
        std::fs::File::open(&self.path).map_err(|e| CoreError::io("open", &self.path, e))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) const SPOOL_SUFFIX: &str = ".spool";

/// Room a spool allows beyond the content limit, for tar headers and padding.
pub(super) const SPOOL_HEADROOM: u64 = 256 << 20;

/// A new spool name: `<kind>-<pid>-<id>.spool`.
pub(super) fn spool_name(kind: &str) -> String {
    format!(
        "{kind}-{}-{}{SPOOL_SUFFIX}",
        std::process::id(),
        host::new_id()
    )
}

/// Removes spools in `dir` whose process is gone.
pub(super) fn remove_stale_spools(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SPOOL_SUFFIX)) else {
            continue;
        };
        let pid = stem.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && host::process_start_ticks(pid).is_none()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Streams the guest's tar of `path` (a normalized `/workspace` path; empty = all of it)
/// into a spool in `dir`, stopping with a clear error once the stream passes `max` bytes of
/// content plus [`SPOOL_HEADROOM`] for tar headers and padding.
pub(super) async fn spool_export(
    session: &Session,
    dir: &Path,
    path: &str,
    max: u64,
    setting: &'static str,
) -> Result<Spool> {
    remove_stale_spools(dir);
    let spool_max = max.saturating_add(SPOOL_HEADROOM);
    let spool = Spool {
        path: dir.join(spool_name("export")),
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&spool.path).map_err(|e| CoreError::io("create", &spool.path, e))?,
    );
    let mut written = 0u64;
    let mut over = false;
    // Stops at the header of the member that passes `max`, before its bytes cross over.
    let mut meter = meter::ContentMeter::default();
    let exported = api::export_tar(
        session,
        api::ExportTar {
            root: WORKSPACE_ROOT.into(),
            path: rel(path),
        },
        |chunk| {
            written = written.saturating_add(chunk.len() as u64);
            meter.feed(&chunk);
            if meter.content() > max || written > spool_max {
                over = true;
                return Err(std::io::Error::other("over the limit"));
            }
            std::io::Write::write_all(&mut file, &chunk)
        },
    )
    .await;
    if over {
        return Err(CoreError::Invalid {
            // A diff names no path: the workspace as a whole is what is too big.
            field: if path.is_empty() { "workspace" } else { "path" },
            reason: format!(
                "{} holds more than {max} bytes of file content; the transfer was stopped \
                 ({setting} sets the limit)",
                if path.is_empty() {
                    WORKSPACE_ROOT
                } else {
                    path
                }
            ),
        });
    }
    exported?;
    std::io::Write::flush(&mut file).map_err(|e| CoreError::io("write", &spool.path, e))?;
    Ok(spool)
}
