//! Extracting a tar stream while it arrives.
//!
//! Member names must be relative without `..`; every member is created through descriptors
//! resolved beneath the root without passing through any symlink, so a member below a
//! symlink is refused (`RESOLVE_NO_SYMLINKS`). Files are written to a temp file and renamed
//! into place (a reader never sees a half-written file) with their mode and mtime. Symlink
//! targets must be relative and stay inside the root; hard links must name a file this
//! archive extracted earlier. Directory modes and mtimes are set once everything is in.
//! Devices, FIFOs and sockets are skipped and reported.
//!
//! An import is not atomic: a failing member leaves the members before it extracted.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use pyro_proto::api::{DATA_CHUNK, ImportMode, ImportTar, TarResult};

use super::export::MAX_SKIPPED_LISTED;
use super::path::{RelPath, check_symlink_target};
use super::sys::{self, BENEATH_NO_SYMLINKS, Kind, Stat};
use super::write::create_temp;
use super::{DataSource, FsError, Root, temp_name};

/// Deepest directory tree `replace` empties.
const MAX_DEPTH: usize = 4096;

fn archive_error(e: io::Error) -> FsError {
    if e.kind() == io::ErrorKind::ConnectionAborted {
        FsError::invalid("the client aborted the import")
    } else {
        FsError::invalid(format!("invalid tar archive: {e}"))
    }
}

/// Removes everything inside `dir`, never following a symlink.
fn empty_dir(root: &Root, rel: &RelPath, dir: BorrowedFd<'_>, depth: usize) -> Result<(), FsError> {
    if depth > MAX_DEPTH {
        return Err(FsError::bad(
            root.show(rel),
            "directory tree too deep to remove",
        ));
    }
    let names = sys::read_dir_names(dir)
        .map_err(|e| FsError::io("reading directory", root.show(rel), e))?;
    for name in names {
        let name = name.as_bytes();
        let child = rel.child(name);
        let st = match sys::lstatat(dir, name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(FsError::io("stat", root.show(&child), e)),
        };
        if st.kind == Kind::Dir {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let sub = sys::openat2(dir, name, flags, 0, BENEATH_NO_SYMLINKS)
                .map_err(|e| FsError::io("opening directory", root.show(&child), e))?;
            empty_dir(root, &child, sub.as_fd(), depth + 1)?;
        }
        sys::unlinkat(dir, name, st.kind == Kind::Dir)
            .map_err(|e| FsError::io("removing", root.show(&child), e))?;
    }
    Ok(())
}

fn lstat_opt(dir: &OwnedFd, name: &[u8], shown: &str) -> Result<Option<Stat>, FsError> {
    match sys::lstatat(dir.as_fd(), name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(FsError::io("stat", shown, e)),
    }
}

fn in_the_way(shown: &str, st: &Stat, member_kind: &str) -> FsError {
    let is = match st.kind {
        Kind::File => "a regular file",
        Kind::Dir => "a directory",
        Kind::Symlink => "a symlink",
        Kind::Other => "a special file",
    };
    FsError::bad(
        shown,
        format!("{is} exists where the archive has {member_kind}"),
    )
}

/// Removes a temp file unless disarmed.
struct TempGuard<'a> {
    dir: &'a OwnedFd,
    name: Vec<u8>,
    armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::unlinkat(self.dir.as_fd(), &self.name, false);
        }
    }
}

struct Importer {
    root: Root,
    dest: RelPath,
    /// Members extracted as regular files: the only valid hard-link targets.
    files: HashSet<RelPath>,
    /// Directories whose mode and mtime are set at the end.
    dir_fixups: Vec<(RelPath, u32, u64)>,
    result: TarResult,
}

fn mtime_of(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Importer {
    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
        cache: &mut Option<(RelPath, OwnedFd)>,
    ) -> Result<(), FsError> {
        use tar::EntryType as T;
        let et = entry.header().entry_type();
        if matches!(
            et,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let member = RelPath::from_member(name)?;
        let rel = self.dest.join(&member);
        let shown = self.root.show(&rel);
        if member.is_root() {
            return if et.is_dir() {
                Ok(())
            } else {
                Err(FsError::bad(shown, "member name is empty"))
            };
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|e| FsError::bad(&shown, format!("bad mode field: {e}")))?
            & 0o7777;
        let mtime = entry.header().mtime().unwrap_or(0);
        if matches!(et, T::Char | T::Block | T::Fifo) {
            self.result.skipped_count += 1;
            if self.result.skipped.len() < MAX_SKIPPED_LISTED {
                self.result.skipped.push(shown);
            }
            return Ok(());
        }
        // Refuse a bad link before creating any parent for it.
        match et {
            T::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                check_symlink_target(&rel, &target)
                    .map_err(|reason| FsError::bad(&shown, reason))?;
            }
            T::Link => {
                self.hard_link_source(entry, &shown)?;
            }
            _ => {}
        }
        let parent = rel.parent();
        if !matches!(cache, Some((p, _)) if *p == parent) {
            let fd = self.root.make_dirs(&parent, &mut Vec::new())?;
            *cache = Some((parent, fd));
        }
        let Some((_, dir)) = cache.as_ref() else {
            return Err(FsError::Internal {
                reason: "no parent directory".into(),
            });
        };
        match et {
            T::Regular | T::Continuous => self.file(entry, dir, &member, &rel, &shown, mode, mtime),
            T::Directory => self.dir(dir, &rel, &shown, mode, mtime),
            T::Symlink => self.symlink(entry, dir, &rel, &shown, mtime),
            T::Link => self.hard_link(entry, dir, &member, &rel, &shown),
            other => Err(FsError::bad(
                shown,
                format!("unsupported member type {other:?}"),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        member: &RelPath,
        rel: &RelPath,
        shown: &str,
        mode: u32,
        mtime: u64,
    ) -> Result<(), FsError> {
        if let Some(st) = lstat_opt(dir, rel.name(), shown)?
            && st.kind != Kind::File
        {
            return Err(in_the_way(shown, &st, "a file"));
        }
        let (mut file, tmp) =
            create_temp(dir).map_err(|e| FsError::io("creating a temp file for", shown, e))?;
        let mut guard = TempGuard {
            dir,
            name: tmp,
            armed: true,
        };
        let mut buf = vec![0u8; DATA_CHUNK];
        let mut size = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(archive_error(e)),
            };
            file.write_all(&buf[..n])
                .map_err(|e| FsError::io("writing", shown, e))?;
            size += n as u64;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::io("setting the mode of", shown, e))?;
        file.set_modified(mtime_of(mtime))
            .map_err(|e| FsError::io("setting the mtime of", shown, e))?;
        drop(file);
        sys::renameat(dir.as_fd(), &guard.name, dir.as_fd(), rel.name())
            .map_err(|e| FsError::io("renaming into", shown, e))?;
        guard.armed = false;
        self.files.insert(member.clone());
        self.result.bytes += size;
        self.result.entry_count += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        dir: &OwnedFd,
        rel: &RelPath,
        shown: &str,
        mode: u32,
        mtime: u64,
    ) -> Result<(), FsError> {
        match lstat_opt(dir, rel.name(), shown)? {
            None => match sys::mkdirat(dir.as_fd(), rel.name(), 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(FsError::io("creating directory", shown, e)),
            },
            Some(st) if st.kind == Kind::Dir => {}
            Some(st) => return Err(in_the_way(shown, &st, "a directory")),
        }
        self.dir_fixups.push((rel.clone(), mode, mtime));
        self.result.entry_count += 1;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        rel: &RelPath,
        shown: &str,
        mtime: u64,
    ) -> Result<(), FsError> {
        let Some(target) = entry.link_name_bytes() else {
            return Err(FsError::bad(shown, "symlink member without a target"));
        };
        check_symlink_target(rel, &target).map_err(|reason| FsError::bad(shown, reason))?;
        match lstat_opt(dir, rel.name(), shown)? {
            None => sys::symlinkat(&target, dir.as_fd(), rel.name())
                .map_err(|e| FsError::io("creating symlink", shown, e))?,
            Some(st) if st.kind == Kind::Symlink => {
                let tmp = temp_name();
                sys::symlinkat(&target, dir.as_fd(), &tmp)
                    .map_err(|e| FsError::io("creating symlink", shown, e))?;
                if let Err(e) = sys::renameat(dir.as_fd(), &tmp, dir.as_fd(), rel.name()) {
                    let _ = sys::unlinkat(dir.as_fd(), &tmp, false);
                    return Err(FsError::io("replacing symlink", shown, e));
                }
            }
            Some(st) => return Err(in_the_way(shown, &st, "a symlink")),
        }
        let secs = i64::try_from(mtime).unwrap_or(0);
        let _ = sys::set_mtime_at(dir.as_fd(), rel.name(), secs, 0);
        self.result.entry_count += 1;
        Ok(())
    }

    /// The member a hard link names, which must be a file this archive extracted earlier.
    fn hard_link_source<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<RelPath, FsError> {
        let Some(target) = entry.link_name_bytes() else {
            return Err(FsError::bad(shown, "hard link member without a target"));
        };
        let target_member = RelPath::from_member(&target)
            .map_err(|e| FsError::bad(shown, format!("bad hard link target: {e}")))?;
        if !self.files.contains(&target_member) {
            return Err(FsError::bad(
                shown,
                format!(
                    "hard link target {target_member} is not a file extracted earlier from this archive"
                ),
            ));
        }
        Ok(target_member)
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        member: &RelPath,
        rel: &RelPath,
        shown: &str,
    ) -> Result<(), FsError> {
        let target_member = self.hard_link_source(entry, shown)?;
        let src = self.dest.join(&target_member);
        let src_shown = self.root.show(&src);
        let src_dir = self.root.open_dir(&src.parent(), BENEATH_NO_SYMLINKS)?;
        let src_st = match lstat_opt(&src_dir, src.name(), &src_shown)? {
            Some(st) if st.kind == Kind::File => st,
            _ => {
                return Err(FsError::bad(
                    shown,
                    format!("hard link target {src_shown} is no longer a regular file"),
                ));
            }
        };
        match lstat_opt(dir, rel.name(), shown)? {
            None => sys::linkat(src_dir.as_fd(), src.name(), dir.as_fd(), rel.name())
                .map_err(|e| FsError::io("linking", shown, e))?,
            Some(st) if st.kind == Kind::File => {
                if (st.dev, st.ino) != (src_st.dev, src_st.ino) {
                    let tmp = temp_name();
                    sys::linkat(src_dir.as_fd(), src.name(), dir.as_fd(), &tmp)
                        .map_err(|e| FsError::io("linking", shown, e))?;
                    if let Err(e) = sys::renameat(dir.as_fd(), &tmp, dir.as_fd(), rel.name()) {
                        let _ = sys::unlinkat(dir.as_fd(), &tmp, false);
                        return Err(FsError::io("replacing", shown, e));
                    }
                }
            }
            Some(st) => return Err(in_the_way(shown, &st, "a hard link")),
        }
        self.files.insert(member.clone());
        self.result.entry_count += 1;
        Ok(())
    }

    fn fixups(&self) -> Result<(), FsError> {
        for (rel, mode, mtime) in self.dir_fixups.iter().rev() {
            let shown = self.root.show(rel);
            let fd = match self.root.open_dir(rel, BENEATH_NO_SYMLINKS) {
                Ok(fd) => fd,
                Err(FsError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let f = sys::file(fd);
            f.set_permissions(std::fs::Permissions::from_mode(*mode))
                .map_err(|e| FsError::io("setting the mode of", shown.clone(), e))?;
            f.set_modified(mtime_of(*mtime))
                .map_err(|e| FsError::io("setting the mtime of", shown, e))?;
        }
        Ok(())
    }
}

/// Extracts the tar stream in `input` into `req.dest`.
pub fn import(req: &ImportTar, input: &mut DataSource) -> Result<TarResult, FsError> {
    let root = Root::open(&req.root)?;
    let dest = root.parse(&req.dest)?;
    let dest_fd = root.make_dirs(&dest, &mut Vec::new())?;
    if req.mode == ImportMode::Replace {
        empty_dir(&root, &dest, dest_fd.as_fd(), 0)?;
    }
    drop(dest_fd);
    let mut im = Importer {
        root,
        dest,
        files: HashSet::new(),
        dir_fixups: Vec::new(),
        result: TarResult::default(),
    };
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(archive_error)?;
    let mut cache = None;
    for entry in entries {
        let mut entry = entry.map_err(archive_error)?;
        let name = entry.path_bytes().into_owned();
        im.member(&mut entry, &name, &mut cache)
            .map_err(|e| e.in_member(&name))?;
    }
    im.fixups()?;
    Ok(im.result)
}
