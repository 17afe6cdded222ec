//! Exporting a path as a tar stream (GNU format, long names and link targets included).
//!
//! Members keep their mode, owner ids and mtime (seconds). A directory's contents are
//! exported with names relative to it, directories (empty ones included) before their
//! contents, siblings sorted by name; a file or a symlink is one member named after it.
//! Symlinks are stored as links, never followed. A file with several links is stored once;
//! its other paths become hard-link members naming the first. FIFOs, sockets and devices
//! are skipped and reported.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pyro_proto::api::{ExportTar, TarResult};

use super::path::RelPath;
use super::sys::{self, BENEATH, BENEATH_NO_SYMLINKS, Kind, Stat};
use super::{DataSink, FsError, Root};

/// Most skipped names a result lists.
pub const MAX_SKIPPED_LISTED: usize = 100;

/// Reads exactly `left` bytes: the file's, then zeros if it shrank meanwhile (the header
/// already promised the size).
struct Exact {
    file: io::Take<std::fs::File>,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Exporter<'a, 'b> {
    root: &'a Root,
    builder: tar::Builder<&'b mut DataSink>,
    /// First member of every multiply-linked file, by (device, inode).
    links: HashMap<(u64, u64), OsString>,
    result: TarResult,
}

fn member_path(member: &RelPath) -> OsString {
    OsStr::from_bytes(&member.to_bytes()).to_os_string()
}

impl Exporter<'_, '_> {
    fn skip(&mut self, shown: String) {
        self.result.skipped_count += 1;
        if self.result.skipped.len() < MAX_SKIPPED_LISTED {
            self.result.skipped.push(shown);
        }
    }

    /// Appends the object `name` in `dir` as `member`. Returns whether it was appended.
    fn member(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        member: &RelPath,
        rel: &RelPath,
        st: &Stat,
    ) -> Result<bool, FsError> {
        let shown = self.root.show(rel);
        let path = member_path(member);
        let mut h = tar::Header::new_gnu();
        h.set_mode(st.perm);
        h.set_uid(u64::from(st.uid));
        h.set_gid(u64::from(st.gid));
        h.set_mtime(u64::try_from(st.mtime).unwrap_or(0));
        h.set_size(0);
        let send = |e: io::Error| FsError::io("archiving", shown.clone(), e);
        match st.kind {
            Kind::File => {
                let key = (st.dev, st.ino);
                if st.nlink > 1
                    && let Some(first) = self.links.get(&key)
                {
                    h.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    self.builder
                        .append_link(&mut h, Path::new(&path), Path::new(&first))
                        .map_err(send)?;
                    self.result.entry_count += 1;
                    return Ok(true);
                }
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                let fd = match sys::openat2(dir.as_fd(), name, flags, 0, BENEATH_NO_SYMLINKS) {
                    Ok(fd) => fd,
                    // Gone, or replaced by a symlink, since the listing: skip quietly.
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) =>
                    {
                        return Ok(false);
                    }
                    Err(e) => return Err(FsError::io("opening", shown, e)),
                };
                let fst =
                    sys::fstat(fd.as_fd()).map_err(|e| FsError::io("stat", shown.clone(), e))?;
                if fst.kind != Kind::File {
                    return Ok(false);
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(fst.size);
                let data = Exact {
                    file: sys::file(fd).take(fst.size),
                    left: fst.size,
                };
                self.builder
                    .append_data(&mut h, Path::new(&path), data)
                    .map_err(send)?;
                if st.nlink > 1 {
                    self.links.insert(key, path);
                }
                self.result.bytes += fst.size;
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                self.builder
                    .append_data(&mut h, Path::new(&path), io::empty())
                    .map_err(send)?;
            }
            Kind::Symlink => {
                let target = match sys::readlinkat(dir.as_fd(), name) {
                    Ok(t) => t,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
                    Err(e) => return Err(FsError::io("reading link", shown, e)),
                };
                h.set_entry_type(tar::EntryType::Symlink);
                self.builder
                    .append_link(&mut h, Path::new(&path), Path::new(&target))
                    .map_err(send)?;
            }
            Kind::Other => {
                self.skip(shown);
                return Ok(false);
            }
        }
        self.result.entry_count += 1;
        Ok(true)
    }
}

struct Level {
    fd: OwnedFd,
    /// Path of this directory relative to the root, and as a member name.
    rel: RelPath,
    member: RelPath,
    names: Vec<OsString>,
}

fn level(root: &Root, fd: OwnedFd, rel: RelPath, member: RelPath) -> Result<Level, FsError> {
    let mut names = sys::read_dir_names(fd.as_fd())
        .map_err(|e| FsError::io("reading directory", root.show(&rel), e))?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Level {
        fd,
        rel,
        member,
        names,
    })
}

/// Streams a tar archive of `req.path` into `sink`.
pub fn export(req: &ExportTar, sink: &mut DataSink) -> Result<TarResult, FsError> {
    let root = Root::open(&req.root)?;
    let rel = root.parse(&req.path)?;
    let st = root.lstat(&rel, BENEATH)?;
    let mut ex = Exporter {
        root: &root,
        builder: tar::Builder::new(sink),
        links: HashMap::new(),
        result: TarResult::default(),
    };
    let res = export_into(&mut ex, &rel, &st).and_then(|()| {
        ex.builder
            .finish()
            .map_err(|e| FsError::io("archiving", root.show(&rel), e))
    });
    if let Err(e) = res {
        // Dropping the builder writes the end-of-archive blocks: keep them from the client,
        // so that a cut archive never looks complete.
        ex.builder.get_mut().discard();
        return Err(e);
    }
    Ok(ex.result)
}

fn export_into(ex: &mut Exporter<'_, '_>, rel: &RelPath, st: &Stat) -> Result<(), FsError> {
    let root = ex.root;
    if st.kind != Kind::Dir {
        let parent = root.open_dir(&rel.parent(), BENEATH)?;
        let member = RelPath::root().child(rel.name());
        ex.member(&parent, rel.name(), &member, rel, st)?;
        return Ok(());
    }
    let dir = root.open_dir(rel, BENEATH)?;
    let mut stack = vec![level(root, dir, rel.clone(), RelPath::root())?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            stack.pop();
            continue;
        };
        let name = name.as_bytes();
        let child = top.rel.child(name);
        let member = top.member.child(name);
        let cst = match sys::lstatat(top.fd.as_fd(), name) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(FsError::io("stat", root.show(&child), e)),
        };
        if !ex.member(&top.fd, name, &member, &child, &cst)? || cst.kind != Kind::Dir {
            continue;
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let sub = match sys::openat2(top.fd.as_fd(), name, flags, 0, BENEATH_NO_SYMLINKS) {
            Ok(sub) => sub,
            // Replaced or removed since it was archived.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
                ) =>
            {
                continue;
            }
            Err(e) => return Err(FsError::io("opening directory", root.show(&child), e)),
        };
        let next = level(root, sub, child, member)?;
        stack.push(next);
    }
    Ok(())
}
