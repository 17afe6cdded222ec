//! The content-addressed environment cache and its manifests.
//!
//! ```text
//! <root>/
//!   CACHEDIR.TAG
//!   blobs/sha256/<hex>                 immutable artifacts (0444): vmlinux, modules, rootfs images
//!   kernel/manifest.json               the guest kernel shared by every environment
//!   environments/<name>/manifest.json  one per built environment (`:` → `_` in <name>)
//!   initramfs/<key>.cpio, <key>.json   first-stage images, keyed by agent + kernel digests
//!   templates/upper-<n>mib.ext4        empty writable-disk templates (see `create_upper_disk`)
//!   tmp/<pid>-<rand>/, <pid>-<rand>.lock   in-progress builds, each owned through its lock
//!   locks/*.lock                       flock(2) locks: gc, kernel, env-<name>, initramfs
//! ```
//!
//! Every manifest is written atomically (temporary file, fsync, rename, fsync of the
//! directory), and every build works inside its own `tmp/` directory and renames finished
//! artifacts into place, so an interrupted build leaves nothing half-written in view. Builds
//! hold the `gc` lock shared and `prune` holds it exclusive, so pruning never deletes a blob
//! that a build has just stored but not yet recorded.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::error::{ImageError, Result};
use crate::fsutil::{self, FileLock, LockMode};

/// The manifest format this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// This crate's version, recorded in manifests.
pub const PYRO_IMAGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Chooses the cache directory from the environment: `$PYRO_CACHE_DIR`, else
/// `$PYRO_ENVIRONMENT_CACHE_DIR`, else `$XDG_CACHE_HOME/pyro`, else `~/.cache/pyro`.
/// Empty or relative values are skipped.
///
/// # Errors
///
/// [`ImageError::NoCacheDir`] when none of them is usable.
pub fn default_cache_dir() -> Result<PathBuf> {
    cache_dir_from(&|k| std::env::var_os(k))
}

fn cache_dir_from(get: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    let abs = |k: &str| get(k).map(PathBuf::from).filter(|p| p.is_absolute());
    abs("PYRO_CACHE_DIR")
        .or_else(|| abs("PYRO_ENVIRONMENT_CACHE_DIR"))
        .or_else(|| abs("XDG_CACHE_HOME").map(|p| p.join("pyro")))
        .or_else(|| abs("HOME").map(|p| p.join(".cache/pyro")))
        .ok_or(ImageError::NoCacheDir)
}

/// The digest and size of one stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// sha256 of the content, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

impl ArtifactRef {
    /// Whether `sha256` is 64 lower-case hex digits (so it is safe to use as a file name).
    pub fn is_well_formed(&self) -> bool {
        is_sha256_hex(&self.sha256)
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The artifacts an environment boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentArtifacts {
    /// The ELF `vmlinux`.
    pub kernel: ArtifactRef,
    /// The ext4 root filesystem image.
    pub rootfs: ArtifactRef,
}

/// `environments/<name>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentManifest {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Catalog name.
    pub name: String,
    /// Catalog version the image was built for.
    pub version: String,
    /// Where the image came from (`local:mmdebstrap debian bookworm`).
    pub source: String,
    /// Kernel and rootfs.
    pub artifacts: EnvironmentArtifacts,
    /// The kernel's release string (`6.1.0-…-amd64`).
    pub kernel_release: String,
    /// Packages requested from Debian.
    pub packages: Vec<String>,
    /// sha256 of the agent binary installed at `/opt/pyro/bin/pyro-agent` in the rootfs.
    pub rootfs_agent_sha256: String,
    /// The initramfs most recently prepared for this environment, if any.
    #[serde(default)]
    pub initramfs: Option<InitramfsRecord>,
    /// When the build finished (Unix seconds).
    pub built_at: f64,
    /// How long the rootfs build took, in seconds.
    pub build_seconds: f64,
    /// Version of the crate that built it.
    pub pyro_image_version: String,
}

/// One guest kernel module, stored uncompressed as a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Module name (`virtio_blk`).
    pub name: String,
    /// Its digest and size.
    #[serde(flatten)]
    pub artifact: ArtifactRef,
}

/// `kernel/manifest.json`: the guest kernel shared by all environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelManifest {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The Debian package it came from.
    pub package: String,
    /// The kernel's release string.
    pub kernel_release: String,
    /// The ELF `vmlinux`.
    pub vmlinux: ArtifactRef,
    /// The guest's modules, in load order.
    pub modules: Vec<ModuleRef>,
    /// When the build finished (Unix seconds).
    pub built_at: f64,
    /// How long it took, in seconds.
    pub build_seconds: f64,
    /// Version of the crate that built it.
    pub pyro_image_version: String,
}

/// `initramfs/<key>.json`: what a cached initramfs holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsRecord {
    /// The cache key (also the file's stem).
    pub key: String,
    /// Digest and size of the `.cpio`.
    pub sha256: String,
    /// Size of the `.cpio` in bytes.
    pub size_bytes: u64,
    /// sha256 of the agent installed as `/init`.
    pub agent_sha256: String,
    /// sha256 of the vmlinux whose modules it carries.
    pub kernel_sha256: String,
}

/// A cache rooted at one directory. Cheap to clone; every method is safe to call from
/// several threads and processes at once.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by pyro.\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    ///
    /// # Errors
    ///
    /// I/O errors creating the directory layout.
    pub fn open(root: PathBuf) -> Result<Cache> {
        let cache = Cache { root };
        for d in [
            cache.root.join("blobs/sha256"),
            cache.root.join("environments"),
            cache.root.join("kernel"),
            cache.root.join("initramfs"),
            cache.root.join("templates"),
            cache.tmp_root(),
            cache.root.join("locks"),
        ] {
            fsutil::create_dir_all(&d)?;
        }
        let tag = cache.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fsutil::atomic_write(&tag, CACHEDIR_TAG.as_bytes(), 0o644)?;
        }
        Ok(cache)
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this sha256 lives (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// The directory holding an environment's manifest.
    pub fn environment_dir(&self, name: &str) -> PathBuf {
        self.root.join("environments").join(catalog::dir_name(name))
    }

    /// An environment's manifest path.
    pub fn environment_manifest_path(&self, name: &str) -> PathBuf {
        self.environment_dir(name).join("manifest.json")
    }

    /// The shared kernel's manifest path.
    pub fn kernel_manifest_path(&self) -> PathBuf {
        self.root.join("kernel/manifest.json")
    }

    /// The initramfs image for a cache key.
    pub fn initramfs_path(&self, key: &str) -> PathBuf {
        self.root.join("initramfs").join(format!("{key}.cpio"))
    }

    fn initramfs_record_path(&self, key: &str) -> PathBuf {
        self.root.join("initramfs").join(format!("{key}.json"))
    }

    pub(crate) fn template_path(&self, size_mib: u64) -> PathBuf {
        self.root
            .join("templates")
            .join(format!("upper-{size_mib}mib.ext4"))
    }

    pub(crate) fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// Reads a JSON file; `Ok(None)` when it does not exist.
    fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        #[derive(Deserialize)]
        struct Versioned {
            schema_version: Option<u32>,
        }
        if let Ok(Versioned {
            schema_version: Some(found),
        }) = serde_json::from_slice::<Versioned>(&bytes)
            && found != SCHEMA_VERSION
        {
            return Err(ImageError::ManifestSchema {
                path: path.to_owned(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ImageError::ManifestParse {
                path: path.to_owned(),
                source: e,
            })
    }

    /// An environment's manifest, `None` if it was never built.
    ///
    /// # Errors
    ///
    /// I/O errors, or a manifest that does not parse.
    pub fn read_environment_manifest(&self, name: &str) -> Result<Option<EnvironmentManifest>> {
        Self::read_json(&self.environment_manifest_path(name))
    }

    /// The shared kernel's manifest, `None` if it was never built.
    ///
    /// # Errors
    ///
    /// I/O errors, or a manifest that does not parse.
    pub fn read_kernel_manifest(&self) -> Result<Option<KernelManifest>> {
        Self::read_json(&self.kernel_manifest_path())
    }

    pub(crate) fn read_initramfs_record(&self, key: &str) -> Result<Option<InitramfsRecord>> {
        Self::read_json(&self.initramfs_record_path(key))
    }

    pub(crate) fn write_environment_manifest(&self, m: &EnvironmentManifest) -> Result<()> {
        fsutil::create_dir_all(&self.environment_dir(&m.name))?;
        fsutil::atomic_write_json(&self.environment_manifest_path(&m.name), m)
    }

    pub(crate) fn write_kernel_manifest(&self, m: &KernelManifest) -> Result<()> {
        fsutil::atomic_write_json(&self.kernel_manifest_path(), m)
    }

    pub(crate) fn write_initramfs_record(&self, r: &InitramfsRecord) -> Result<()> {
        fsutil::atomic_write_json(&self.initramfs_record_path(&r.key), r)
    }

    /// Whether the blob exists with the recorded size (a cheap check; [`crate::verify`]
    /// re-hashes).
    pub fn has_blob(&self, a: &ArtifactRef) -> bool {
        a.is_well_formed() && fsutil::file_has_size(&self.blob_path(&a.sha256), a.size_bytes)
    }

    /// Moves a finished file (inside this cache's `tmp/`) into the blob store under its
    /// digest, read-only. A blob already present is kept and `src` removed.
    pub(crate) fn insert_blob(&self, src: &Path, a: &ArtifactRef) -> Result<PathBuf> {
        let dest = self.blob_path(&a.sha256);
        if !a.is_well_formed() {
            return Err(ImageError::io(
                "store blob",
                src,
                io::Error::new(io::ErrorKind::InvalidInput, "malformed sha256"),
            ));
        }
        if self.has_blob(a) {
            let _ = fs::remove_file(src);
            return Ok(dest);
        }
        fsutil::set_mode(src, 0o444)?;
        let f = OpenOptions::new()
            .read(true)
            .open(src)
            .map_err(|e| ImageError::io("open", src, e))?;
        f.sync_all().map_err(|e| ImageError::io("sync", src, e))?;
        fs::rename(src, &dest).map_err(|e| ImageError::io("rename into blob store", src, e))?;
        fsutil::fsync_dir(&self.root.join("blobs/sha256"))?;
        Ok(dest)
    }

    /// Takes one of the cache's named locks.
    pub(crate) fn lock(&self, name: &str, mode: LockMode) -> Result<FileLock> {
        FileLock::acquire(&self.lock_path(name), mode)
    }

    /// Runs `build` under the exclusive lock `lock` unless `check` finds the result
    /// already there — before the lock (fast path) or after waiting for it (another
    /// process built it meanwhile). `on_wait` is told when the lock is busy.
    pub(crate) fn once<T>(
        &self,
        lock: &str,
        on_wait: &mut dyn FnMut(),
        check: &mut dyn FnMut() -> Result<Option<T>>,
        build: &mut dyn FnMut() -> Result<T>,
    ) -> Result<T> {
        if let Some(v) = check()? {
            return Ok(v);
        }
        let path = self.lock_path(lock);
        let _guard = match FileLock::try_acquire(&path, LockMode::Exclusive)? {
            Some(g) => g,
            None => {
                on_wait();
                FileLock::acquire(&path, LockMode::Exclusive)?
            }
        };
        if let Some(v) = check()? {
            return Ok(v);
        }
        build()
    }

    /// Creates a private working directory under `tmp/`, removed when dropped; if this
    /// process dies first, the next sweep removes it.
    pub(crate) fn tmp_dir(&self) -> Result<TmpDir> {
        let tmp = self.tmp_root();
        let id = format!("{}-{}", std::process::id(), fsutil::random_hex(6));
        // The lock file is locked before it gets the name sweepers look for, so a sweeper
        // never sees an unlocked lock of a live build.
        let staging = tmp.join(format!(".{id}.lock.new"));
        let lock_path = tmp.join(format!("{id}.lock"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staging)
            .map_err(|e| ImageError::io("create", &staging, e))?;
        drop(f);
        let lock = FileLock::acquire(&staging, LockMode::Exclusive)?;
        fs::rename(&staging, &lock_path).map_err(|e| ImageError::io("rename", &staging, e))?;
        let path = tmp.join(&id);
        fs::create_dir(&path).map_err(|e| ImageError::io("create directory", &path, e))?;
        Ok(TmpDir {
            path,
            lock_path,
            _lock: lock,
        })
    }

    /// Removes the working directories of builds whose process is gone (their lock is free),
    /// plus orphans without a lock. Returns the names removed, relative to the cache root.
    pub(crate) fn sweep_tmp(&self) -> Result<Vec<String>> {
        let tmp = self.tmp_root();
        let mut removed = Vec::new();
        let entries = match fs::read_dir(&tmp) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(ImageError::io("read directory", &tmp, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let path = tmp.join(name);
            if let Some(id) = name.strip_suffix(".lock") {
                if name.starts_with('.') {
                    continue; // handled below with the staging names
                }
                let Some(lock) = try_lock_existing(&path)? else {
                    continue; // a live build
                };
                fsutil::remove_tree(&tmp.join(id))?;
                let _ = fs::remove_file(&path);
                drop(lock);
                removed.push(format!("tmp/{id}"));
            } else if name.ends_with(".lock.new") {
                // A build that died between creating and publishing its lock.
                if let Some(lock) = try_lock_existing(&path)? {
                    let _ = fs::remove_file(&path);
                    drop(lock);
                }
            } else if !names.contains(&format!("{name}.lock")) && is_older_than(&path, 60) {
                // No lock at all: its build is gone (locks outlive their directories).
                fsutil::remove_tree(&path)?;
                removed.push(format!("tmp/{name}"));
            }
        }
        Ok(removed)
    }
}

fn try_lock_existing(path: &Path) -> Result<Option<FileLock>> {
    if !path.exists() {
        return Ok(None);
    }
    FileLock::try_acquire(path, LockMode::Exclusive)
}

fn is_older_than(path: &Path, secs: u64) -> bool {
    fs::symlink_metadata(path)
        .ok()
        .and_then(|m| {
            let mtime =
                SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(m.mtime()).unwrap_or(0));
            SystemTime::now().duration_since(mtime).ok()
        })
        .is_some_and(|age| age.as_secs() >= secs)
}

/// A build's private directory under `tmp/`, deleted on drop.
#[derive(Debug)]
pub(crate) struct TmpDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: FileLock,
}

impl TmpDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = fsutil::remove_tree(&self.path) {
            tracing::warn!(error = %e, "leaving build directory for the next sweep");
            return;
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};

    fn artifact(n: u8) -> ArtifactRef {
        ArtifactRef {
            sha256: format!("{n:02x}").repeat(32),
            size_bytes: 7,
        }
    }

    pub(crate) fn sample_manifest(name: &str) -> EnvironmentManifest {
        EnvironmentManifest {
            schema_version: SCHEMA_VERSION,
            name: name.into(),
            version: "1.0.0".into(),
            source: "local:mmdebstrap debian bookworm".into(),
            artifacts: EnvironmentArtifacts {
                kernel: artifact(1),
                rootfs: artifact(2),
            },
            kernel_release: "6.1.0-test-amd64".into(),
            packages: vec!["bash".into(), "coreutils".into()],
            rootfs_agent_sha256: "ab".repeat(32),
            initramfs: None,
            built_at: 1_700_000_000.25,
            build_seconds: 19.5,
            pyro_image_version: PYRO_IMAGE_VERSION.into(),
        }
    }

    #[test]
    fn default_cache_dir_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = env(&[
            ("PYRO_CACHE_DIR", "/a"),
            ("PYRO_ENVIRONMENT_CACHE_DIR", "/b"),
            ("XDG_CACHE_HOME", "/c"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(&all).unwrap(), PathBuf::from("/a"));
        let e = env(&[("PYRO_CACHE_DIR", ""), ("PYRO_ENVIRONMENT_CACHE_DIR", "/b")]);
        assert_eq!(cache_dir_from(&e).unwrap(), PathBuf::from("/b"));
        let e = env(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(&e).unwrap(), PathBuf::from("/h/.cache/pyro"));
        let e = env(&[("XDG_CACHE_HOME", "/x")]);
        assert_eq!(cache_dir_from(&e).unwrap(), PathBuf::from("/x/pyro"));
        assert!(matches!(
            cache_dir_from(&env(&[])),
            Err(ImageError::NoCacheDir)
        ));
    }

    #[test]
    fn manifests_round_trip_and_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        assert!(dir.path().join("CACHEDIR.TAG").is_file());
        assert_eq!(cache.read_environment_manifest("debian:12").unwrap(), None);

        let m = sample_manifest("debian:12");
        cache.write_environment_manifest(&m).unwrap();
        assert_eq!(
            cache.read_environment_manifest("debian:12").unwrap(),
            Some(m.clone())
        );
        let path = cache.environment_manifest_path("debian:12");
        assert!(path.ends_with("environments/debian_12/manifest.json"));
        // Only the manifest itself is left in the directory: no temporary files.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("manifest.json")]);

        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        for key in [
            "schema_version",
            "name",
            "version",
            "artifacts",
            "kernel_release",
            "packages",
            "built_at",
            "build_seconds",
            "pyro_image_version",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["artifacts"]["rootfs"]["size_bytes"], 7);

        let k = KernelManifest {
            schema_version: SCHEMA_VERSION,
            package: "linux-image-amd64".into(),
            kernel_release: "6.1.0-test-amd64".into(),
            vmlinux: artifact(1),
            modules: vec![ModuleRef {
                name: "ext4".into(),
                artifact: artifact(3),
            }],
            built_at: 1.0,
            build_seconds: 6.0,
            pyro_image_version: PYRO_IMAGE_VERSION.into(),
        };
        cache.write_kernel_manifest(&k).unwrap();
        assert_eq!(cache.read_kernel_manifest().unwrap(), Some(k));
    }

    #[test]
    fn unreadable_manifests_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        let path = cache.environment_manifest_path("debian:12");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"{ not json").unwrap();
        let err = cache.read_environment_manifest("debian:12").unwrap_err();
        assert!(matches!(err, ImageError::ManifestParse { .. }), "{err}");
        fs::write(&path, br#"{"schema_version": 99}"#).unwrap();
        let err = cache.read_environment_manifest("debian:12").unwrap_err();
        assert!(
            matches!(err, ImageError::ManifestSchema { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn blobs_are_stored_read_only_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        let t = cache.tmp_dir().unwrap();
        let src = t.path().join("f");
        fs::write(&src, b"content").unwrap();
        let (sha256, size_bytes) = fsutil::hash_file(&src).unwrap();
        let a = ArtifactRef { sha256, size_bytes };
        let dest = cache.insert_blob(&src, &a).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"content");
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o444);
        assert!(cache.has_blob(&a));
        // Storing the same content again keeps the existing blob.
        fs::write(&src, b"content").unwrap();
        assert_eq!(cache.insert_blob(&src, &a).unwrap(), dest);
        assert!(!src.exists());
        let bad = ArtifactRef {
            sha256: "../../etc".into(),
            size_bytes: 1,
        };
        assert!(!cache.has_blob(&bad));
    }

    #[test]
    fn tmp_dirs_are_removed_on_drop_and_swept_when_their_owner_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        let t = cache.tmp_dir().unwrap();
        let p = t.path().to_owned();
        fs::write(p.join("x"), b"x").unwrap();
        // A live build is never swept.
        assert!(cache.sweep_tmp().unwrap().is_empty());
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
        assert_eq!(fs::read_dir(cache.tmp_root()).unwrap().count(), 0);

        // A dead build: its lock file exists but nobody holds it.
        let dead = cache.tmp_root().join("4242-dead");
        fs::create_dir_all(dead.join("root/etc")).unwrap();
        fs::write(cache.tmp_root().join("4242-dead.lock"), b"").unwrap();
        // An orphan directory without any lock, old enough.
        let orphan = cache.tmp_root().join("99-orphan");
        fs::create_dir(&orphan).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::open(&orphan).unwrap().set_modified(old).unwrap();
        let swept = cache.sweep_tmp().unwrap();
        assert_eq!(swept, ["tmp/4242-dead", "tmp/99-orphan"]);
        assert_eq!(fs::read_dir(cache.tmp_root()).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_builders_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        let builds = Arc::new(AtomicU32::new(0));
        let waits = Arc::new(AtomicU32::new(0));
        let barrier = Arc::new(Barrier::new(4));
        let artifact = dir.path().join("artifact");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cache, builds, waits, barrier, artifact) = (
                    cache.clone(),
                    builds.clone(),
                    waits.clone(),
                    barrier.clone(),
                    artifact.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    cache
                        .once(
                            "test",
                            &mut || {
                                waits.fetch_add(1, Ordering::SeqCst);
                            },
                            &mut || Ok(fs::read_to_string(&artifact).ok()),
                            &mut || {
                                builds.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(300));
                                fsutil::atomic_write(&artifact, b"built", 0o644)?;
                                Ok("built".to_owned())
                            },
                        )
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), "built");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(waits.load(Ordering::SeqCst) >= 1);
    }
}
