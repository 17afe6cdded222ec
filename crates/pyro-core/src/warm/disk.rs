//! Host file helpers of the cache: [`copy_disk`] (sparse, reflink where possible), private
//! directories, tree removal, fsync and allocated-size accounting.

use std::io;
use std::path::Path;

use super::SnapshotError;

/// Copies the disk image `src` to a new file `dst` (mode 0600) keeping it sparse
/// ([`pyro_host::fs::sparse_copy`]: a reflink where possible, else only the data extents).
///
/// # Errors
///
/// I/O errors; `dst` is removed again on failure.
pub fn copy_disk(src: &Path, dst: &Path) -> io::Result<()> {
    pyro_host::fs::sparse_copy(src, dst, 0o600)
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
