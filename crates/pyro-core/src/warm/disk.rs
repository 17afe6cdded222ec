//! Host file helpers of the cache: [`copy_disk`] (sparse, reflink where possible), private
//! directories, tree removal, fsync and allocated-size accounting.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::SnapshotError;

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

pub(super) fn create_private_dir(path: &Path) -> Result<(), SnapshotError> {
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

pub(super) fn remove_tree(path: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io("remove", path, e)),
    }
}

pub(super) fn sync_file(path: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("flush", path, e))
}

/// Bytes allocated to a file or a directory tree (holes do not count).
pub(super) fn allocated_bytes(path: &Path) -> u64 {
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
