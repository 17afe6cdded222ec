//! Offline disk tools: list, read and export a **stopped** workspace's disk without booting
//! it (contract §7.14, done without `debugfs` and without writing to the image).
//!
//! The guest's `/` is an overlayfs of the environment's read-only base image (lower) and
//! the workspace disk's `/upper` tree (upper); [`overlay`] computes that merged view from
//! the two images, each read by [`image`] with the pure-Rust `ext4-view` (opened
//! `O_RDONLY`; a dirty journal is applied in memory, never replayed onto the disk).
//!
//! Paths: a relative path is under `/workspace` (`..` refused), an absolute one names any
//! guest path (`..` collapsed, never above `/`). Symlinks are followed in every component
//! but the last, through the merged tree. Names are bytes: a path string shows a backslash
//! as `\\` and each byte that is not UTF-8 as `\xNN` ([`show_bytes`]), and paths given to
//! the tools are read the same way ([`parse_shown`]), so a listed path can be passed back.
//!
//! Locking: the workspace lock is taken shared; `start`, `reset` and `delete` take it
//! exclusively, so the disk does not change while a tool reads it.

mod image;
mod overlay;

use std::io;
use std::path::PathBuf;

use super::lifecycle::*;
use super::*;
use image::Image;
use overlay::{Entry, MergeError, Merged, NodeKind, Origin};

/// Most entries one `disk list` returns (as `file list`).
pub const MAX_DISK_LIST_ENTRIES: usize = 100_000;

/// One entry of a disk listing: a [`FileEntry`]'s fields plus the special file type and the
/// layer it comes from.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiskEntry {
    /// Absolute guest path (`\\` and `\xNN` escapes, see the module docs).
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub artifact_type: String,
    /// Bytes of a file or of a symlink's target; 0 otherwise.
    pub size_bytes: u64,
    /// Permission bits (493 = 0o755).
    pub mode: u32,
    /// A symlink's target, however long (same escapes as `path`).
    pub link_target: Option<String>,
    /// For `other`: `fifo`, `socket`, `char_device` or `block_device`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    /// `upper` (written by the workspace) or `base` (the environment's image).
    pub layer: String,
}

/// Result of [`Pyro::disk_list`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiskListResult {
    pub workspace_id: String,
    pub path: String,
    pub recursive: bool,
    pub entries: Vec<DiskEntry>,
    /// True when the listing stopped at [`MAX_DISK_LIST_ENTRIES`].
    pub truncated: bool,
}

/// Result of [`Pyro::disk_read`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiskReadResult {
    pub workspace_id: String,
    pub path: String,
    /// The whole file's size.
    pub size_bytes: u64,
    pub max_bytes: u64,
    /// The first `max_bytes` bytes, UTF-8 with invalid bytes replaced, secrets redacted.
    pub content: String,
    pub truncated: bool,
}

/// Result of [`Pyro::disk_export`].
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DiskExportResult {
    pub workspace_id: String,
    pub output_path: String,
    /// Always `ext4`.
    pub disk_format: String,
    /// The image's size (apparent; the copy is sparse).
    pub bytes_written: u64,
}

/// Shows a byte path as a string: a backslash as `\\`, bytes that are not UTF-8 as `\xNN`.
pub fn show_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The bytes a shown path stands for ([`show_bytes`] reversed): `\\` is a backslash,
/// `\xNN` a byte; any other backslash stands for itself.
pub fn parse_shown(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x')
                && let Some(hex) = s.get(i + 2..i + 4)
                && let Ok(v) = u8::from_str_radix(hex, 16)
                && hex.bytes().all(|c| c.is_ascii_hexdigit())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Resolves a disk tool path to an absolute, lexically normalized guest path (bytes).
pub fn disk_path(raw: &str) -> Result<Vec<u8>> {
    let t = raw.trim_matches(|c| c == ' ' || c == '\t');
    if t.is_empty() {
        return Err(CoreError::Invalid {
            field: "path",
            reason: "the path is empty; give a path in /workspace or an absolute guest path".into(),
        });
    }
    let bytes = parse_shown(t);
    if bytes.contains(&0) {
        return Err(CoreError::Invalid {
            field: "path",
            reason: "the path contains a NUL byte".into(),
        });
    }
    if bytes.first() == Some(&b'/') {
        return Ok(overlay::normalize(&bytes));
    }
    if bytes.split(|&c| c == b'/').any(|c| c == b"..") {
        return Err(CoreError::Invalid {
            field: "path",
            reason: format!(
                "`{raw}` contains `..`; a relative path stays inside /workspace (give an absolute path to reach the rest of the disk)"
            ),
        });
    }
    Ok(overlay::normalize(&overlay::child_path(
        WORKSPACE_ROOT.as_bytes(),
        &bytes,
    )))
}

/// The two layers of a stopped workspace's root filesystem.
struct Layers {
    upper: Image,
    lower: Image,
}

impl Layers {
    fn open(upper: &Path, base: &Path) -> Result<Layers> {
        let open = |p: &Path, prefix: &[u8], is_upper: bool| {
            Image::open(p, prefix, is_upper).map_err(|reason| CoreError::Disk {
                image: p.to_path_buf(),
                reason,
            })
        };
        Ok(Layers {
            upper: open(upper, b"/upper", true)?,
            lower: open(base, b"", false)?,
        })
    }

    fn merged(&self) -> Merged<'_> {
        Merged {
            upper: &self.upper,
            lower: Some(&self.lower),
        }
    }
}

fn merge_err(path: &[u8], image: &Path, e: MergeError) -> CoreError {
    match e {
        MergeError::NotFound => CoreError::DiskPathNotFound {
            path: show_bytes(path),
        },
        MergeError::NotADirectory | MergeError::Loop => CoreError::Invalid {
            field: "path",
            reason: format!("`{}`: {e}", show_bytes(path)),
        },
        MergeError::Layer(reason) => CoreError::Disk {
            image: image.to_path_buf(),
            reason,
        },
    }
}

fn entry_of(m: &Merged<'_>, e: &Entry) -> std::result::Result<DiskEntry, MergeError> {
    let (artifact, file_type) = match e.node.kind {
        NodeKind::File => ("file", None),
        NodeKind::Directory => ("directory", None),
        NodeKind::Symlink => ("symlink", None),
        NodeKind::Fifo => ("other", Some("fifo")),
        NodeKind::Socket => ("other", Some("socket")),
        NodeKind::CharDevice => ("other", Some("char_device")),
        NodeKind::BlockDevice => ("other", Some("block_device")),
    };
    let link_target = if e.node.kind == NodeKind::Symlink {
        Some(show_bytes(&m.read_link(e)?))
    } else {
        None
    };
    Ok(DiskEntry {
        path: show_bytes(&e.path),
        artifact_type: artifact.into(),
        size_bytes: e.node.size,
        mode: e.node.mode,
        link_target,
        file_type: file_type.map(Into::into),
        layer: match e.origin {
            Origin::Upper => "upper",
            Origin::Lower => "base",
        }
        .into(),
    })
}

/// Entries under directory `path` in the merged tree of `upper` over `base`, and the bytes of
/// its regular files (at most [`MAX_DISK_LIST_ENTRIES`] entries counted); zeros when the
/// images cannot be read. Blocking.
pub(super) fn count_tree(upper: &Path, base: &Path, path: &str) -> (u64, u64) {
    match list_blocking(upper, base, path.as_bytes(), true, MAX_DISK_LIST_ENTRIES) {
        Ok((entries, _)) => {
            let files = entries.iter().filter(|e| e.artifact_type == "file");
            (entries.len() as u64, files.map(|e| e.size_bytes).sum())
        }
        Err(_) => (0, 0),
    }
}

/// Lists `path` in the merged tree (blocking; the images are read here).
fn list_blocking(
    upper: &Path,
    base: &Path,
    path: &[u8],
    recursive: bool,
    max: usize,
) -> Result<(Vec<DiskEntry>, bool)> {
    let layers = Layers::open(upper, base)?;
    let m = layers.merged();
    let err = |e| merge_err(path, upper, e);
    let target = m.lookup(path).map_err(err)?;
    if target.node.kind != NodeKind::Directory {
        return Ok((vec![entry_of(&m, &target).map_err(err)?], false));
    }
    let (entries, cut) = if recursive {
        m.walk(&target, max)
    } else {
        m.children(&target, max)
    }
    .map_err(err)?;
    let shown = entries
        .iter()
        .map(|e| entry_of(&m, e))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok((shown, cut))
}

/// Reads up to `max` bytes of regular file `path` in the merged tree: (size, bytes).
fn read_blocking(upper: &Path, base: &Path, path: &[u8], max: u64) -> Result<(u64, Vec<u8>)> {
    let layers = Layers::open(upper, base)?;
    let m = layers.merged();
    let target = m.lookup(path).map_err(|e| merge_err(path, upper, e))?;
    if target.node.kind != NodeKind::File {
        let what = match target.node.kind {
            NodeKind::Directory => "a directory",
            NodeKind::Symlink => "a symlink",
            _ => "a special file",
        };
        return Err(CoreError::Invalid {
            field: "path",
            reason: format!(
                "`{}` is {what}; disk read reads regular files",
                show_bytes(path)
            ),
        });
    }
    let (layer, image_path) = match target.origin {
        Origin::Upper => (&layers.upper, upper),
        Origin::Lower => (&layers.lower, base),
    };
    let bad = |e: ext4_view::Ext4Error| CoreError::Disk {
        image: image_path.to_path_buf(),
        reason: format!("reading `{}`: {}", show_bytes(path), image::describe(&e)),
    };
    let full = layer.full(&target.layer_path);
    let p = ext4_view::Path::try_from(full.as_slice()).map_err(|e| CoreError::Disk {
        image: image_path.to_path_buf(),
        reason: format!("bad path: {e}"),
    })?;
    let mut file = layer.fs().open(p).map_err(bad)?;
    let size = file.metadata().len();
    let want = usize::try_from(size.min(max)).unwrap_or(0);
    let mut data = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        let n = file.read_bytes(&mut data[filled..]).map_err(bad)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    data.truncate(filled);
    Ok((size, data))
}

impl Pyro {
    /// The record of a workspace the disk tools may read: stopped (after the liveness
    /// refresh), of a VM backend. The caller holds its lock.
    async fn load_stopped(
        &self,
        store: &Store,
        id: &str,
        operation: &'static str,
    ) -> Result<WorkspaceRecord> {
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(store, rec).await?;
        if rec.state != WorkspaceState::Stopped {
            let detail = if rec.state == WorkspaceState::Started {
                "the disk tools read a stopped workspace's disk; stop it first (`workspace stop`), or use `workspace file list/read` on the running one".to_string()
            } else {
                rec.last_error
                    .clone()
                    .unwrap_or_else(|| "it is being created or reset".into())
            };
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation,
                detail: Some(detail),
            });
        }
        #[cfg(feature = "fake-backend")]
        if rec.backend == crate::BackendKind::Fake {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation,
                detail: Some(format!(
                    "its {} backend keeps no ext4 disk",
                    rec.backend.execution_mode()
                )),
            });
        }
        Ok(rec)
    }

    /// The environment's read-only base image (the overlay's lower layer), from the cache.
    pub(super) fn base_image(&self, rec: &WorkspaceRecord) -> Result<PathBuf> {
        let cache = self.cache();
        match cache.read_environment_manifest(&rec.environment)? {
            Some(m) if cache.has_blob(&m.artifacts.rootfs) => {
                Ok(cache.blob_path(&m.artifacts.rootfs.sha256))
            }
            _ => Err(CoreError::Disk {
                image: cache.environment_dir(&rec.environment),
                reason: format!(
                    "the base image of environment {} is not in the cache; `pyro env pull {}` brings it back",
                    rec.environment, rec.environment
                ),
            }),
        }
    }

    /// Lists `path` on a stopped workspace's disk as the guest sees it (the upper layer
    /// merged with the environment's base); children of a directory, all its descendants
    /// when `recursive` (at most [`MAX_DISK_LIST_ENTRIES`]).
    pub async fn disk_list(&self, id: &str, path: &str, recursive: bool) -> Result<DiskListResult> {
        let want = disk_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_stopped(&store, id, "workspace_disk_list").await?;
        let base = self.base_image(&rec)?;
        let upper = self.ws_dirs(id).upper();
        let p = want.clone();
        let (entries, truncated) =
            blocking(move || list_blocking(&upper, &base, &p, recursive, MAX_DISK_LIST_ENTRIES))
                .await?;
        Ok(DiskListResult {
            workspace_id: id.into(),
            path: show_bytes(&want),
            recursive,
            entries,
            truncated,
        })
    }

    /// Reads up to `max_bytes` of a regular file on a stopped workspace's disk; the text is
    /// UTF-8 (invalid bytes replaced) with the workspace's secret values redacted.
    pub async fn disk_read(&self, id: &str, path: &str, max_bytes: i64) -> Result<DiskReadResult> {
        check("max_bytes", max_bytes, (1, MAX_READ_BYTES as i64))?;
        let want = disk_path(path)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_stopped(&store, id, "workspace_disk_read").await?;
        let base = self.base_image(&rec)?;
        let upper = self.ws_dirs(id).upper();
        let p = want.clone();
        let max = max_bytes as u64;
        let (size, data) = blocking(move || read_blocking(&upper, &base, &p, max)).await?;
        let truncated = size > max;
        let content = String::from_utf8_lossy(&data).into_owned();
        let secrets: Vec<String> = crate::secrets::values(&self.ws_dirs(id).root)?
            .into_values()
            .collect();
        let content = crate::secrets::redact_str(&content, &secrets, truncated);
        Ok(DiskReadResult {
            workspace_id: id.into(),
            path: show_bytes(&want),
            size_bytes: size,
            max_bytes: max,
            content,
            truncated,
        })
    }

    /// Copies a stopped workspace's disk (the overlay's upper layer: everything the guest
    /// wrote, below `/upper`) as a raw, sparse ext4 image to a new host path, atomically
    /// (a temporary file beside it, renamed into place without replacing anything).
    pub async fn disk_export(
        &self,
        id: &str,
        output: impl Into<HostPath>,
    ) -> Result<DiskExportResult> {
        let output = output.into();
        if output.is_empty() {
            return Err(CoreError::Invalid {
                field: "output_path",
                reason: "the output path is empty".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        self.load_stopped(&store, id, "workspace_disk_export")
            .await?;
        let target = archive::ExportTarget::prepare(&output)?;
        let upper = self.ws_dirs(id).upper();
        let shown = target.shown.clone();
        let bytes = blocking(move || export_blocking(&upper, &target)).await?;
        Ok(DiskExportResult {
            workspace_id: id.into(),
            output_path: shown.display().to_string(),
            disk_format: "ext4".into(),
            bytes_written: bytes,
        })
    }
}

/// Copies `upper` sparsely into a temporary file in the target's directory, then renames it
/// into place (never replacing an existing file). Returns the size.
fn export_blocking(upper: &Path, target: &archive::ExportTarget) -> Result<u64> {
    let input = std::fs::File::open(upper).map_err(|e| CoreError::io("open", upper, e))?;
    let len = input
        .metadata()
        .map_err(|e| CoreError::io("stat", upper, e))?
        .len();
    let tmp = std::ffi::OsString::from(format!(
        ".pyro-disk-export-{}-{}",
        std::process::id(),
        host::new_id()
    ));
    let shown_tmp = target.parent.shown().join(&tmp);
    let output = target
        .parent
        .create_file(&tmp, 0o600)
        .map_err(|e| CoreError::io("create", &shown_tmp, e))?;
    let res = pyro_host::fs::copy_sparse(&input, &output, len)
        .and_then(|()| output.sync_all())
        .map_err(|e| CoreError::io("write", &shown_tmp, e))
        .and_then(|()| {
            target
                .parent
                .rename_noreplace(&tmp, &target.parent, &target.name)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        CoreError::Invalid {
                            field: "output_path",
                            reason: format!(
                                "{} already exists; choose a path that does not",
                                target.shown.display()
                            ),
                        }
                    } else {
                        CoreError::io("rename", &target.shown, e)
                    }
                })
        });
    if res.is_err() {
        let _ = target.parent.remove_tree(&tmp);
    }
    res.map(|()| len)
}

/// Runs disk work on a blocking thread; a panic there (a reader bug on a hostile image)
/// becomes an error, not a crash.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Disk {
            image: PathBuf::new(),
            reason: format!("the disk reader failed: {e}"),
        })?
}

/// The blocking parts, for tests and benchmarks on images made outside a workspace.
pub mod offline {
    use super::*;

    /// [`Pyro::disk_list`] on two images: `upper` (its `/upper` tree) over `base`.
    pub fn list(
        upper: &Path,
        base: &Path,
        path: &str,
        recursive: bool,
    ) -> Result<(Vec<DiskEntry>, bool)> {
        list_blocking(
            upper,
            base,
            &disk_path(path)?,
            recursive,
            MAX_DISK_LIST_ENTRIES,
        )
    }

    /// [`Pyro::disk_read`] on two images, without redaction: (size, bytes).
    pub fn read(upper: &Path, base: &Path, path: &str, max: u64) -> Result<(u64, Vec<u8>)> {
        read_blocking(upper, base, &disk_path(path)?, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_paths_round_trip_any_bytes() {
        let names: [&[u8]; 5] = [
            b"plain",
            b"with space\nand newline",
            b"bad\xff\xfe-utf8",
            b"back\\slash\\x41",
            "ünïcode".as_bytes(),
        ];
        for n in names {
            assert_eq!(parse_shown(&show_bytes(n)), n, "{}", show_bytes(n));
        }
        assert_eq!(show_bytes(b"a\xffb"), "a\\xffb");
        // A lone backslash stands for itself.
        assert_eq!(parse_shown("a\\b"), b"a\\b");
    }

    #[test]
    fn disk_paths_are_workspace_relative_or_absolute() {
        assert_eq!(disk_path("src/a.rs").unwrap(), b"/workspace/src/a.rs");
        assert_eq!(disk_path("/etc/../etc/./issue").unwrap(), b"/etc/issue");
        assert_eq!(disk_path("/../..").unwrap(), b"/");
        assert_eq!(disk_path(".").unwrap(), b"/workspace");
        assert!(disk_path("../etc").is_err());
        assert!(disk_path("").is_err());
        assert!(disk_path("/a\\x00b").is_err());
        assert_eq!(disk_path("/tmp/x\\xff").unwrap(), b"/tmp/x\xff");
    }
}
