//! Writable per-sandbox disks: an empty ext4 filesystem labelled `pyro-upper` that holds the
//! overlay's upper layer (`/workspace` and every write).
//!
//! Two ways to make one. [`create_upper_disk`] runs `mkfs.ext4` on a sparse file (about
//! 6–13 ms here, mostly process start-up). [`Cache::create_upper_disk`] makes that file once
//! per size as a template in the cache and then copies it sparsely in-process (reflink where
//! the filesystem has them, else data extents only), which is cheaper; every copy shares the
//! template's filesystem UUID, which is harmless because the guest finds disks by label.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::cache::Cache;
use crate::error::{ImageError, Result};
use crate::fsutil::{self, LockMode};
use crate::tools::{self, MKFS_EXT4};

/// The upper disk's filesystem label.
pub const UPPER_LABEL: &str = "pyro-upper";

/// Smallest accepted upper disk.
pub const MIN_UPPER_MIB: u64 = 16;

/// Largest accepted upper disk (1 TiB).
pub const MAX_UPPER_MIB: u64 = 1 << 20;

fn check_size(size_mib: u64) -> Result<()> {
    if (MIN_UPPER_MIB..=MAX_UPPER_MIB).contains(&size_mib) {
        Ok(())
    } else {
        Err(ImageError::InvalidSize {
            size_mib,
            min_mib: MIN_UPPER_MIB,
            max_mib: MAX_UPPER_MIB,
        })
    }
}

fn temp_beside(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        fsutil::random_hex(4)
    ))
}

/// Formats a new sparse file at `tmp` (which must not exist).
fn mkfs_upper(tmp: &Path, size_mib: u64) -> Result<()> {
    let mkfs = tools::require(MKFS_EXT4, "create the writable disk")?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
        .map_err(|e| ImageError::io("create", tmp, e))?;
    f.set_len(size_mib << 20)
        .map_err(|e| ImageError::io("size", tmp, e))?;
    drop(f);
    let r = tools::run(
        Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-L",
                UPPER_LABEL,
                "-m",
                "0",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(tmp),
        "mkfs.ext4",
        None,
    );
    if r.is_err() {
        let _ = fs::remove_file(tmp);
    }
    r.map(drop)
}

/// Creates (or replaces) `path` as an empty ext4 disk of `size_mib` MiB, labelled
/// [`UPPER_LABEL`], by running `mkfs.ext4` on a sparse file.
///
/// # Errors
///
/// [`ImageError::InvalidSize`], [`ImageError::MissingTool`], or the mkfs/I/O failure.
pub fn create_upper_disk(path: &Path, size_mib: u64) -> Result<()> {
    check_size(size_mib)?;
    let tmp = temp_beside(path);
    mkfs_upper(&tmp, size_mib)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ImageError::io("rename", path, e)
    })
}

impl Cache {
    /// Like [`create_upper_disk`] but faster: copies a per-size template kept in the
    /// cache (made on first use) instead of running mkfs. The copy is sparse.
    ///
    /// # Errors
    ///
    /// [`ImageError::InvalidSize`], or failures creating the template or the copy.
    pub fn create_upper_disk(&self, path: &Path, size_mib: u64) -> Result<()> {
        check_size(size_mib)?;
        let template = self.template_path(size_mib);
        if !fsutil::file_has_size(&template, size_mib << 20) {
            let _gc = self.lock("gc", LockMode::Shared)?;
            self.once(
                &format!("template-{size_mib}"),
                &mut || {},
                &mut || Ok(fsutil::file_has_size(&template, size_mib << 20).then_some(())),
                &mut || {
                    let tmp = temp_beside(&template);
                    mkfs_upper(&tmp, size_mib)?;
                    fsutil::set_mode(&tmp, 0o444)?;
                    fs::rename(&tmp, &template).map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        ImageError::io("rename", &template, e)
                    })
                },
            )?;
        }
        let tmp = temp_beside(path);
        fsutil::sparse_copy(&template, &tmp, 0o644)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ImageError::io("rename", path, e)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    fn label_of(path: &Path) -> String {
        let out = Command::new(tools::which("e2label").unwrap())
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn upper_disks_are_sparse_labelled_ext4_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let direct = dir.path().join("direct.ext4");
        let t = Instant::now();
        create_upper_disk(&direct, 1024).unwrap();
        let direct_ms = t.elapsed().as_secs_f64() * 1e3;

        let first = dir.path().join("first.ext4");
        cache.create_upper_disk(&first, 1024).unwrap();
        let copied = dir.path().join("copied.ext4");
        let t = Instant::now();
        cache.create_upper_disk(&copied, 1024).unwrap();
        let copy_ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("upper disk 1 GiB: mkfs {direct_ms:.1} ms, template copy {copy_ms:.1} ms");

        for p in [&direct, &first, &copied] {
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.len(), 1 << 30);
            assert!(m.blocks() * 512 < 64 << 20, "{p:?} is not sparse");
            assert_eq!(label_of(p), UPPER_LABEL);
        }
        assert_eq!(fs::read(&first).unwrap(), fs::read(&copied).unwrap());
        // Replacing an existing disk works and leaves no temporary files.
        create_upper_disk(&direct, 64).unwrap();
        assert_eq!(fs::metadata(&direct).unwrap().len(), 64 << 20);
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn upper_disk_size_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [0, MIN_UPPER_MIB - 1, MAX_UPPER_MIB + 1] {
            assert!(matches!(
                create_upper_disk(&dir.path().join("x"), bad),
                Err(ImageError::InvalidSize { .. })
            ));
        }
    }
}
