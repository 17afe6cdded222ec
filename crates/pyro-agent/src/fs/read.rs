//! Reading the start of a regular file.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use pyro_proto::api::{DATA_CHUNK, FileRead, ReadFile};

use super::sys::{self, BENEATH, BENEATH_NO_SYMLINKS, Kind};
use super::{DataSink, FsError, Root};

/// Streams the first `req.max_bytes` bytes of `req.path` (parents may be symlinks that stay
/// inside the root; a final symlink is refused, as is anything but a regular file).
pub fn read(req: &ReadFile, sink: &mut DataSink) -> Result<FileRead, FsError> {
    let root = Root::open(&req.root)?;
    let rel = root.parse(&req.path)?;
    let shown = root.show(&rel);
    if rel.is_root() {
        return Err(FsError::bad(shown, "is a directory"));
    }
    let parent = root.open_dir(&rel.parent(), BENEATH).map_err(|e| match e {
        FsError::NotFound { .. } => FsError::NotFound {
            path: shown.clone(),
        },
        e => e,
    })?;
    let st = sys::lstatat(parent.as_fd(), rel.name())
        .map_err(|e| FsError::io("stat", shown.clone(), e))?;
    not_regular(st.kind, &shown)?;
    // O_NONBLOCK: a FIFO swapped in after the check must not block the open.
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = sys::openat2(parent.as_fd(), rel.name(), flags, 0, BENEATH_NO_SYMLINKS)
        .map_err(|e| FsError::io("opening", shown.clone(), e))?;
    let st = sys::fstat(fd.as_fd()).map_err(|e| FsError::io("stat", shown.clone(), e))?;
    not_regular(st.kind, &shown)?;
    let limit = req.max_bytes.unwrap_or(u64::MAX).min(st.size);
    let mut file = sys::file(fd).take(limit);
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut sent = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::io("reading", shown, e)),
        };
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n])
            .map_err(|e| FsError::io("sending", shown.clone(), e))?;
        sent += n as u64;
    }
    Ok(FileRead {
        path: shown,
        size_bytes: st.size,
        truncated: sent < st.size,
        mode: st.perm,
    })
}

fn not_regular(kind: Kind, shown: &str) -> Result<(), FsError> {
    match kind {
        Kind::File => Ok(()),
        Kind::Dir => Err(FsError::bad(shown, "is a directory")),
        Kind::Symlink => Err(FsError::bad(
            shown,
            "is a symlink (symlinks are not followed)",
        )),
        Kind::Other => Err(FsError::bad(shown, "is not a regular file")),
    }
}
