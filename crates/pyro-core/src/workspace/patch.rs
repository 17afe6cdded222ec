//! Changing and comparing trees: `patch apply` and `diff`.
use super::files::*;
use super::*;

/// Counts of [`PatchResult`].
#[derive(Clone, Debug, Default, serde::Serialize, schemars::JsonSchema)]
pub struct PatchSummary {
    pub total: usize,
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
}

/// One file of [`PatchResult`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct PatchEntry {
    pub path: String,
    /// added, modified, deleted, renamed or mode_changed.
    pub status: String,
}

/// Result of [`Pyro::apply_workspace_patch`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct PatchResult {
    pub workspace_id: String,
    pub changed: bool,
    pub summary: PatchSummary,
    pub entries: Vec<PatchEntry>,
    pub patch: String,
    pub execution_mode: String,
}

/// One entry of [`DiffResult`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiffEntry {
    pub path: String,
    pub status: pyro_patch::DiffStatus,
    pub artifact_type: pyro_patch::ArtifactType,
    pub text_patch: Option<String>,
}

/// Result of [`Pyro::diff_workspace`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiffResult {
    pub workspace_id: String,
    pub changed: bool,
    pub summary: pyro_patch::DiffSummary,
    pub entries: Vec<DiffEntry>,
    /// git diff of the text changes; git apply takes it on the baseline.
    pub patch: String,
    pub execution_mode: String,
}

/// Files larger than this are compared by size and git blob id instead of held in memory,
/// and shown as binary in a diff.
pub const DIFF_MAX_TEXT_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads a tar stream into an in-memory tree (hard links resolved to their target's content).
/// Regular files over [`DIFF_MAX_TEXT_FILE_BYTES`] are hashed as they stream and kept as
/// [`pyro_patch::Node::Large`]; more than `max_bytes` of file content in all, or more than
/// `max_entries` members, is refused (the guest chooses both).
/// Names that are not UTF-8 are refused (a lossy rewrite could merge two files).
pub fn tree_from_tar<R: std::io::Read>(
    r: R,
    max_bytes: u64,
    max_entries: u64,
) -> Result<pyro_patch::Tree> {
    use std::io::Read;
    let mut tree = pyro_patch::Tree::new();
    let mut archive = tar::Archive::new(r);
    let bad = |e: std::io::Error| CoreError::Invalid {
        field: "archive",
        reason: format!("corrupt tar stream: {e}"),
    };
    let mut total = 0u64;
    let mut count = 0u64;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        count += 1;
        if count > max_entries {
            return Err(CoreError::Invalid {
                field: "workspace",
                reason: format!(
                    "/workspace holds more than {max_entries} entries; diff refuses to compare \
                     it (PYRO_MAX_ARCHIVE_ENTRIES sets the limit)"
                ),
            });
        }
        let raw = entry.path_bytes().into_owned();
        let Ok(raw) = String::from_utf8(raw.clone()) else {
            return Err(CoreError::Invalid {
                field: "workspace",
                reason: format!(
                    "{} has a name that is not UTF-8; diff cannot show it (rename it)",
                    crate::error::quote_bytes(&raw)
                ),
            });
        };
        let Ok(name) = archive::normalize_member(&raw) else {
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let link = || {
            entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default()
        };
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => pyro_patch::Node::Dir { mode },
            tar::EntryType::Symlink => pyro_patch::Node::Symlink { target: link() },
            tar::EntryType::Link => {
                match archive::normalize_member(&link())
                    .ok()
                    .and_then(|t| tree.get(&t).cloned())
                {
                    Some(n) => n,
                    None => continue,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                total = total.saturating_add(size);
                if total > max_bytes {
                    return Err(CoreError::Invalid {
                        field: "workspace",
                        reason: format!(
                            "/workspace holds more than {max_bytes} bytes of file content; diff \
                             refuses to compare it (PYRO_MAX_DIFF_BYTES sets the limit)"
                        ),
                    });
                }
                if size > DIFF_MAX_TEXT_FILE_BYTES {
                    let mut h = pyro_patch::BlobHasher::new(size);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut left = size;
                    while left > 0 {
                        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = entry.read(&mut buf[..want]).map_err(bad)?;
                        if n == 0 {
                            return Err(bad(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                        h.update(&buf[..n]);
                        left -= n as u64;
                    }
                    pyro_patch::Node::Large {
                        size,
                        id: h.finish(),
                        mode,
                    }
                } else {
                    let mut content = Vec::new();
                    (&mut entry)
                        .take(size)
                        .read_to_end(&mut content)
                        .map_err(bad)?;
                    pyro_patch::Node::File { content, mode }
                }
            }
            _ => continue,
        };
        tree.insert(name, node);
    }
    Ok(tree)
}

impl Pyro {
    /// Applies a `git diff`-style patch atomically: every hunk of every file, or nothing.
    pub async fn apply_workspace_patch(&self, id: &str, patch_text: &str) -> Result<PatchResult> {
        if patch_text.trim().is_empty() {
            return Err(CoreError::Invalid {
                field: "patch",
                reason: "the patch is empty".into(),
            });
        }
        if patch_text.len() > MAX_PATCH_BYTES {
            return Err(CoreError::Invalid {
                field: "patch",
                reason: format!(
                    "{} bytes exceed the limit of {MAX_PATCH_BYTES}",
                    patch_text.len()
                ),
            });
        }
        let patch = pyro_patch::parse(patch_text)?;
        // Every path must stay inside /workspace.
        let mut paths = std::collections::BTreeSet::new();
        for f in &patch.files {
            for p in [&f.old_path, &f.new_path].into_iter().flatten() {
                paths.insert(rel(&normalize_workspace_path(p)?));
            }
        }
        // Exclusive: read, compute and write must not interleave with another edit.
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = self
            .load_started(&store, id, "workspace_patch_apply")
            .await?;
        let session = self.ws_session(&rec).await?;
        let mut current: BTreeMap<String, pyro_patch::FileState> = BTreeMap::new();
        for p in &paths {
            let req = api::ReadFile {
                root: WORKSPACE_ROOT.into(),
                path: p.clone(),
                max_bytes: Some(MAX_READ_BYTES),
            };
            match api::read_file(&session, req).await {
                Ok((meta, content)) => {
                    if meta.truncated {
                        return Err(CoreError::Invalid {
                            field: "patch",
                            reason: format!("/workspace/{p} is larger than {MAX_READ_BYTES} bytes"),
                        });
                    }
                    current.insert(
                        p.clone(),
                        pyro_patch::FileState {
                            content,
                            mode: meta.mode,
                        },
                    );
                }
                Err(api::CallError::Agent(e)) if e.code == api::ErrorCode::NotFound => {}
                Err(api::CallError::Agent(e)) if e.code == api::ErrorCode::BadRequest => {
                    // Not a regular file: a symlink is patched like git does (mode 120000,
                    // content = target); anything else is an error.
                    let list = api::list_files(
                        &session,
                        api::ListFiles {
                            root: WORKSPACE_ROOT.into(),
                            path: p.clone(),
                            recursive: false,
                            max_entries: Some(1),
                        },
                    )
                    .await?;
                    let target = list
                        .entries
                        .first()
                        .filter(|_| list.artifact_type == api::ArtifactType::Symlink)
                        .and_then(|e| e.link_target.clone());
                    match target {
                        Some(t) => {
                            current.insert(
                                p.clone(),
                                pyro_patch::FileState {
                                    content: t.into_bytes(),
                                    mode: 0o120777,
                                },
                            );
                        }
                        None => return Err(CoreError::Agent(api::CallError::Agent(e))),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let get = |p: &str| {
            normalize_workspace_path(p)
                .ok()
                .and_then(|n| current.get(&rel(&n)).cloned())
        };
        let outcomes = pyro_patch::apply(&patch, get)?;
        let mut changes = Vec::new();
        let mut data = Vec::new();
        for o in &outcomes {
            match o {
                pyro_patch::Outcome::Write {
                    path,
                    content,
                    mode,
                } if mode & 0o170000 == 0o120000 => {
                    let target =
                        String::from_utf8(content.clone()).map_err(|_| CoreError::Invalid {
                            field: "patch",
                            reason: format!("the symlink target of {path} is not UTF-8"),
                        })?;
                    let path = rel(&normalize_workspace_path(path)?);
                    if current.contains_key(&path) {
                        changes.push(api::Change::Delete { path: path.clone() });
                    }
                    changes.push(api::Change::Symlink { path, target });
                }
                pyro_patch::Outcome::Write {
                    path,
                    content,
                    mode,
                } => {
                    changes.push(api::Change::Write {
                        path: rel(&normalize_workspace_path(path)?),
                        size: content.len() as u64,
                        mode: Some(*mode & 0o7777),
                    });
                    data.push(bytes::Bytes::copy_from_slice(content));
                }
                pyro_patch::Outcome::Delete { path } => changes.push(api::Change::Delete {
                    path: rel(&normalize_workspace_path(path)?),
                }),
            }
        }
        api::write_files(&session, changes, data, WORKSPACE_ROOT).await?;
        let now = host::now();
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        let mut summary = PatchSummary::default();
        let mut entries = Vec::new();
        for f in &patch.files {
            let status = match f.kind {
                pyro_patch::FileKind::Added => {
                    summary.added += 1;
                    "added"
                }
                pyro_patch::FileKind::Deleted => {
                    summary.deleted += 1;
                    "deleted"
                }
                pyro_patch::FileKind::Renamed => {
                    summary.modified += 1;
                    "renamed"
                }
                pyro_patch::FileKind::ModeChanged => {
                    summary.modified += 1;
                    "mode_changed"
                }
                _ => {
                    summary.modified += 1;
                    "modified"
                }
            };
            entries.push(PatchEntry {
                path: normalize_workspace_path(f.path())?,
                status: status.into(),
            });
        }
        summary.total = entries.len();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        super::activity::record(
            &self.ws_dirs(id).root,
            "patch",
            &format!(
                "{} files: {} added, {} modified, {} deleted ({})",
                summary.total,
                summary.added,
                summary.modified,
                summary.deleted,
                entries
                    .iter()
                    .map(|e| e.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok(PatchResult {
            workspace_id: id.into(),
            changed: !entries.is_empty(),
            summary,
            entries,
            patch: patch_text.to_string(),
            execution_mode: rec.backend.execution_mode().into(),
        })
    }

    /// Compares `/workspace` with the create-time baseline.
    pub async fn diff_workspace(&self, id: &str) -> Result<DiffResult> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_diff").await?;
        let d = self.ws_dirs(id);
        let max = self.options().limits.max_diff_bytes;
        let baseline = std::fs::File::open(d.baseline())
            .map_err(|e| CoreError::io("open", d.baseline(), e))?;
        let entries = self.options().limits.max_entries;
        let old = tree_from_tar(std::io::BufReader::new(baseline), max, entries)?;
        let session = self.ws_session(&rec).await?;
        // Streamed to disk, never whole in memory: the guest chooses the sizes.
        let spool = spool_export(&session, &d.root, "", max, "PYRO_MAX_DIFF_BYTES").await?;
        let new = tree_from_tar(std::io::BufReader::new(spool.reopen()?), max, entries)?;
        let diff = pyro_patch::diff_trees(&old, &new);
        // Secret values never reach a result.
        let secrets: Vec<String> = crate::secrets::values(&d.root)?.into_values().collect();
        let redact = |text: String| {
            if secrets.is_empty() {
                text
            } else {
                crate::secrets::redact_str(&text, &secrets, false)
            }
        };
        Ok(DiffResult {
            workspace_id: id.into(),
            changed: diff.changed(),
            summary: diff.summary,
            entries: diff
                .entries
                .into_iter()
                .map(|e| DiffEntry {
                    path: format!("{WORKSPACE_ROOT}/{}", e.path),
                    status: e.status,
                    artifact_type: e.artifact_type,
                    text_patch: e.text_patch.map(&redact),
                })
                .collect(),
            patch: redact(diff.patch),
            execution_mode: rec.backend.execution_mode().into(),
        })
    }
}
