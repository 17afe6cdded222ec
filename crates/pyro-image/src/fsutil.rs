//! Filesystem helpers: atomic writes, streaming digests, advisory locks, careful deletion
//! and sparse copies.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// Lower-case hex of a byte slice.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `n` random bytes from the kernel, as hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which lives
        // for the whole call.
        let r = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr().cast::<libc::c_void>(),
                n - filled,
                0,
            )
        };
        if r <= 0 {
            // getrandom cannot fail for small reads after boot; fall back to time and pid
            // rather than fail a build over a temporary file's name.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let seed = nanos ^ (u128::from(std::process::id()) << 64);
            return hex(&Sha256::digest(seed.to_le_bytes())[..n.min(32)]);
        }
        filled += r as usize; // r > 0 here
    }
    hex(&buf)
}

/// A writer that hashes everything written through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the sha256 hex and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a file through sha256: returns the hex digest and the size in bytes.
pub(crate) fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex(&hasher.finalize()), len))
}

/// Creates a directory and its parents.
pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| ImageError::io("create directory", path, e))
}

/// Flushes a directory's entries to disk (after a rename into it).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| ImageError::io("open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| ImageError::io("sync directory", dir, e))
}

/// Writes `bytes` to `path` atomically ([`pyro_host::fs::atomic_write`]): readers see the
/// old content or the new, never a mix.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    pyro_host::fs::atomic_write(path, bytes, mode).map_err(|e| ImageError::io("write", path, e))
}

/// Serializes `value` as pretty JSON (with a final newline) and writes it atomically.
pub(crate) fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        ImageError::io(
            "serialize",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    bytes.push(b'\n');
    atomic_write(path, &bytes, 0o644)
}

/// True for the temporary files [`atomic_write`] leaves behind when a process dies mid-write.
pub(crate) fn is_atomic_write_leftover(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.starts_with(b".") && n.windows(5).any(|w| w == b".tmp-")
}

/// Sets a file's permission bits.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io("set permissions of", path, e))
}

/// Whether `path` exists as a regular file of exactly `size` bytes (following symlinks).
pub(crate) fn file_has_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// An advisory lock (`flock(2)`) on a file; released when dropped or when the process dies.
#[derive(Debug)]
pub struct FileLock {
    /// Held only to keep the lock: closing the descriptor releases it.
    _file: File,
    path: PathBuf,
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| ImageError::io("open lock file", path, e))
    }

    fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
        loop {
            // SAFETY: the descriptor belongs to `file`, which outlives the call.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn op(mode: LockMode) -> libc::c_int {
        match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub(crate) fn acquire(path: &Path, mode: LockMode) -> Result<FileLock> {
        let file = Self::open(path)?;
        Self::flock(&file, Self::op(mode)).map_err(|e| ImageError::io("lock", path, e))?;
        Ok(FileLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Takes the lock if nobody holds it in a conflicting mode; `None` if somebody does.
    pub(crate) fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let file = Self::open(path)?;
        match Self::flock(&file, Self::op(mode) | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock {
                _file: file,
                path: path.to_owned(),
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(ImageError::io("lock", path, e)),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Decodes the octal escapes (`\040`) of `/proc/self/mountinfo` paths.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Mount points at or below `root`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Deletes a directory tree without ever crossing into another filesystem.
///
/// A build killed at the wrong moment can leave `/dev`, `/proc` or `/sys` of the host
/// bind-mounted inside a chroot; a plain recursive delete would then delete host files.
/// Mounts found below `root` are detached first (root only); any directory on a different
/// device than `root` aborts the deletion with [`ImageError::MountedInside`].
pub(crate) fn remove_tree(root: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("inspect", root, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(root).map_err(|e| ImageError::io("remove", root, e));
    }
    let canonical = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    for m in mounts_under(&canonical) {
        let c = std::ffi::CString::new(m.as_os_str().as_bytes());
        if let Ok(c) = c {
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            let _ = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Some(m) = mounts_under(&canonical).into_iter().next() {
        return Err(ImageError::MountedInside {
            path: root.to_owned(),
            mount_point: m,
        });
    }
    remove_tree_on_dev(root, meta.dev(), root)
}

fn remove_tree_on_dev(dir: &Path, dev: u64, top: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Directories like a chroot's `/proc` are 0555; let the owner in.
            set_mode(dir, 0o700)?;
            fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("read directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("read directory", dir, e))?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io("inspect", &path, e)),
        };
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(ImageError::MountedInside {
                    path: top.to_owned(),
                    mount_point: path,
                });
            }
            remove_tree_on_dev(&path, dev, top)?;
        } else {
            remove_entry_file(&path, dir)?;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("remove directory", dir, e)),
    }
}

fn remove_entry_file(path: &Path, parent: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            set_mode(parent, 0o700)?;
            fs::remove_file(path).map_err(|e| ImageError::io("remove", path, e))
        }
        Err(e) => Err(ImageError::io("remove", path, e)),
    }
}

/// Sum of allocated bytes below `root` (like `du -s --block-size=1`), counting each hard
/// link once.
pub(crate) fn disk_usage(root: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read directory", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| ImageError::io("read directory", &dir, e))?;
            let path = entry.path();
            let m = fs::symlink_metadata(&path).map_err(|e| ImageError::io("inspect", &path, e))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(total)
}

/// Copies `src` to a new file `dst` preserving holes ([`pyro_host::fs::sparse_copy`]).
pub(crate) fn sparse_copy(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    pyro_host::fs::sparse_copy(src, dst, mode).map_err(|e| ImageError::io("copy to", dst, e))
}

/// Seconds since the Unix epoch, as a float.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.json")]);
        assert!(is_atomic_write_leftover(OsStr::new(".m.json.tmp-12-abcd")));
        assert!(!is_atomic_write_leftover(OsStr::new("m.json")));
    }

    #[test]
    fn hash_file_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let (h, n) = hash_file(&p).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn remove_tree_handles_read_only_entries() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), b"x").unwrap();
        set_mode(&t.join("a/b/f"), 0o444).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("a/link")).unwrap();
        set_mode(&t.join("a/b"), 0o555).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(Path::new("/etc/passwd").exists());
        remove_tree(&t).unwrap(); // absent: fine
    }

    #[test]
    fn sparse_copy_preserves_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 20 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        sparse_copy(&src, &dst, 0o600).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let m = fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(m.blocks() * 512 < 4 << 20, "copy is not sparse");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
