//! Listing a file or a directory tree.
//!
//! Entries stream to the client as `DATA` messages, each a JSON array of
//! [`FileEntry`]s; the final [`FileList`] carries the listed path and whether the listing
//! was cut (`pyro_proto::api::list_files` reassembles them).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use bytes::Bytes;
use pyro_proto::api::{ArtifactType, FileEntry, FileList, LIST_MAX_ENTRIES_DEFAULT, ListFiles};

use super::path::RelPath;
use super::sys::{self, BENEATH, BENEATH_NO_SYMLINKS, Kind, Stat};
use super::{DataSink, FsError, Root};

/// Most entries one listing may return, whatever the client asks.
pub const LIST_MAX_ENTRIES_LIMIT: u64 = 1_000_000;

/// Bytes of JSON per `DATA` message (one entry may exceed it).
const BATCH_BYTES: usize = 48 * 1024;

/// The artifact type of a [`Kind`].
pub fn artifact_type(kind: Kind) -> ArtifactType {
    match kind {
        Kind::File => ArtifactType::File,
        Kind::Dir => ArtifactType::Directory,
        Kind::Symlink => ArtifactType::Symlink,
        Kind::Other => ArtifactType::Other,
    }
}

fn entry(root: &Root, dir: &OwnedFd, rel: &RelPath, st: &Stat) -> Result<FileEntry, FsError> {
    let link_target = if st.kind == Kind::Symlink {
        let t = sys::readlinkat(dir.as_fd(), rel.name())
            .map_err(|e| FsError::io("reading link", root.show(rel), e))?;
        Some(String::from_utf8_lossy(t.as_bytes()).into_owned())
    } else {
        None
    };
    Ok(FileEntry {
        path: root.show(rel),
        artifact_type: artifact_type(st.kind),
        size_bytes: if st.kind == Kind::Dir { 0 } else { st.size },
        mode: st.perm,
        link_target,
    })
}

/// Sends entries in JSON-array batches.
struct Batcher<'a> {
    sink: &'a mut DataSink,
    buf: Vec<u8>,
}

impl Batcher<'_> {
    fn push(&mut self, e: &FileEntry) -> Result<(), FsError> {
        let json = serde_json::to_vec(e)
            .map_err(|e| FsError::invalid(format!("encoding an entry failed: {e}")))?;
        if !self.buf.is_empty() && self.buf.len() + json.len() + 2 > BATCH_BYTES {
            self.flush()?;
        }
        self.buf.push(if self.buf.is_empty() { b'[' } else { b',' });
        self.buf.extend_from_slice(&json);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FsError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.push(b']');
        let body = Bytes::from(std::mem::take(&mut self.buf));
        self.sink
            .send_message(body)
            .map_err(|e| FsError::io("sending", "entries", e))
    }
}

struct Level {
    fd: OwnedFd,
    rel: RelPath,
    /// Children still to visit, in reverse order (popped from the end).
    names: Vec<OsString>,
}

fn level(root: &Root, fd: OwnedFd, rel: RelPath) -> Result<Level, FsError> {
    let mut names = sys::read_dir_names(fd.as_fd())
        .map_err(|e| FsError::io("reading directory", root.show(&rel), e))?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Level { fd, rel, names })
}

/// Lists `req.path`: a directory's children (recursively when asked), or the single entry of
/// anything else. Parents may be symlinks that stay inside the root; the listed path itself
/// and everything below it are never followed.
pub fn list(req: &ListFiles, sink: &mut DataSink) -> Result<FileList, FsError> {
    let root = Root::open(&req.root)?;
    let rel = root.parse(&req.path)?;
    let max = req
        .max_entries
        .unwrap_or(LIST_MAX_ENTRIES_DEFAULT)
        .min(LIST_MAX_ENTRIES_LIMIT);
    let st = root.lstat(&rel, BENEATH)?;
    let mut out = Batcher {
        sink,
        buf: Vec::new(),
    };
    let mut truncated = false;
    if st.kind != Kind::Dir {
        let parent = root.open_dir(&rel.parent(), BENEATH)?;
        if max == 0 {
            truncated = true;
        } else {
            out.push(&entry(&root, &parent, &rel, &st)?)?;
        }
    } else {
        let dir = root.open_dir(&rel, BENEATH)?;
        let mut stack = vec![level(&root, dir, rel.clone())?];
        let mut count = 0u64;
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            let child = top.rel.child(name.as_bytes());
            let cst = match sys::lstatat(top.fd.as_fd(), name.as_bytes()) {
                Ok(s) => s,
                // Removed while we list: not an error.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(FsError::io("stat", root.show(&child), e)),
            };
            if count >= max {
                truncated = true;
                break;
            }
            count += 1;
            out.push(&entry(&root, &top.fd, &child, &cst)?)?;
            if req.recursive && cst.kind == Kind::Dir {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                match sys::openat2(
                    top.fd.as_fd(),
                    name.as_bytes(),
                    flags,
                    0,
                    BENEATH_NO_SYMLINKS,
                ) {
                    Ok(fd) => {
                        let next = level(&root, fd, child)?;
                        stack.push(next);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(FsError::io("opening directory", root.show(&child), e)),
                }
            }
        }
    }
    out.flush()?;
    Ok(FileList {
        path: root.show(&rel),
        artifact_type: artifact_type(st.kind),
        entries: Vec::new(),
        truncated,
    })
}
