//! Sparse copies and atomic writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Copies `src` to a new file `dst` (created with `mode`; it must not exist) keeping it
/// sparse: a reflink where the filesystem has them, else only the data extents
/// (`SEEK_DATA`/`SEEK_HOLE` with `copy_file_range`, which stays in the kernel). `dst` is
/// removed again on failure.
pub fn sparse_copy(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    let input = File::open(src)?;
    let len = input.metadata()?.len();
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)?;
    copy_extents(&input, &output, len).inspect_err(|_| {
        let _ = std::fs::remove_file(dst);
    })
}

/// Copies the first `len` bytes of `input` into `output` (an empty file) keeping holes: a
/// reflink where the filesystem has them, else only the data extents; `output` is then set
/// to `len` bytes.
pub fn copy_sparse(input: &File, output: &File, len: u64) -> io::Result<()> {
    copy_extents(input, output, len)
}

fn copy_extents(input: &File, output: &File, len: u64) -> io::Result<()> {
    let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
    // SAFETY: both descriptors stay open for the call; FICLONE takes the source descriptor
    // as its argument.
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
            let n = unsafe { libc::copy_file_range(ifd, &mut off_in, ofd, &mut off_out, want, 0) };
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
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (with exactly `mode`),
/// fsync, rename over `path`, fsync of the directory. Readers see the old content or the
/// new, never a mix; the temporary file is removed on failure.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // Exactly `mode`, whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// A number unique within this process (for temporary names).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;

    #[test]
    fn a_sparse_copy_keeps_content_and_holes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let dst = t.path().join("dst");
        sparse_copy(&src, &dst, 0o600).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(m.blocks() * 512 < 8 << 20, "the holes stay holes");
        // The destination must be new.
        assert!(sparse_copy(&src, &dst, 0o600).is_err());
        assert!(dst.exists(), "an existing file is not removed");
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f.json");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        assert!(atomic_write(&t.path().join("missing/f"), b"x", 0o600).is_err());
    }
}
