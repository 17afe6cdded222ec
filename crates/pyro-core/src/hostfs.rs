//! Host filesystem effects through file descriptors.
//!
//! Every host-side effect of a workspace operation that a client or a guest can steer (reading
//! a seed or sync source, creating an export's directories, its staging tree and its final
//! rename) goes through a directory file descriptor opened once, and every name below it is
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, on kernels without
//! `openat2`, one `openat(O_NOFOLLOW)` per component). A path that was checked is never looked
//! up again by name, so a directory swapped for a symlink between the check and the use cannot
//! redirect anything: the lookup through the link fails with `ELOOP`.
//!
//! [`HostPath`] is how callers name a host path: [`HostPath::local`] for the user's own CLI or
//! SDK (their path is trusted as far as it already exists; anything pyro creates below it is
//! resolved without symlinks), [`HostPath::confined`] for an MCP client held to an allowed root
//! (nothing is followed at all, from the root down).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An open host directory: the anchor every relative effect starts from.
#[derive(Debug)]
pub struct HostDir {
    fd: OwnedFd,
    shown: PathBuf,
}

/// The relative components of `rel`: only plain names (and `.`, dropped) are allowed.
pub fn plain_components(rel: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` contains `..`", rel.display()),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not relative", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

const NOFOLLOW_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NOFOLLOW;

impl HostDir {
    /// Opens a directory the caller trusts by path (symlinks in it are followed once, now).
    pub fn open(path: &Path) -> io::Result<HostDir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated string; the result is checked.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(HostDir {
            // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            shown: path.to_path_buf(),
        })
    }

    /// Wraps an open directory descriptor.
    pub fn from_parts(fd: OwnedFd, shown: PathBuf) -> HostDir {
        HostDir { fd, shown }
    }

    /// How the directory is named in messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `rel` below this directory without following any symlink and without leaving
    /// it. `flags` are `open(2)` flags (`O_CLOEXEC` and `O_NOFOLLOW` are added).
    pub fn open_beneath(&self, rel: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let parts = plain_components(rel)?;
        if parts.is_empty() {
            return self.reopen(flags);
        }
        let joined: PathBuf = parts.iter().collect();
        match openat2(self.fd.as_raw_fd(), &joined, flags | NOFOLLOW_FLAGS, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
        // Fallback: one component at a time, each refusing symlinks.
        let mut cur: Option<OwnedFd> = None;
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let dir = cur.as_ref().map_or(self.fd.as_raw_fd(), |f| f.as_raw_fd());
            let fl = if last {
                flags | NOFOLLOW_FLAGS
            } else {
                libc::O_RDONLY | libc::O_DIRECTORY | NOFOLLOW_FLAGS
            };
            cur = Some(openat(dir, p, fl, mode)?);
        }
        cur.ok_or_else(|| io::Error::other("no component"))
    }

    fn reopen(&self, flags: libc::c_int) -> io::Result<OwnedFd> {
        openat(
            self.fd.as_raw_fd(),
            OsStr::new("."),
            flags | libc::O_CLOEXEC,
            0,
        )
    }

    /// Opens the directory `rel` below this one (no symlinks, no escape).
    pub fn subdir(&self, rel: &Path) -> io::Result<HostDir> {
        let fd = self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(HostDir {
            fd,
            shown: self.shown.join(rel),
        })
    }

    /// Creates the directories of `rel` that are missing (mode 0755 before umask) and opens
    /// the last one; every component is resolved without symlinks.
    pub fn create_dirs(&self, rel: &Path) -> io::Result<HostDir> {
        let parts = plain_components(rel)?;
        let mut cur = self.subdir(Path::new(""))?;
        for p in parts {
            match cur.mkdir(&p, 0o755) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            cur = cur.subdir(Path::new(&p))?;
        }
        Ok(cur)
    }

    /// `mkdirat` of one name.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = one_name(name)?;
        // SAFETY: valid fd and NUL-terminated name; result checked.
        cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode) }).map(|_| ())
    }

    /// Creates a new regular file `name` (never follows or replaces anything).
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        one_name(name)?;
        let fd = openat(
            self.fd.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | NOFOLLOW_FLAGS,
            mode,
        )?;
        Ok(File::from(fd))
    }

    /// `symlinkat`: a new link `name` -> `target`.
    pub fn symlink(&self, name: &OsStr, target: &OsStr) -> io::Result<()> {
        let c = one_name(name)?;
        let t = cstr(target)?;
        // SAFETY: valid fd and NUL-terminated strings; result checked.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), c.as_ptr()) }).map(|_| ())
    }

    /// A hard link `name` to the already open file `file` (never resolves a path again).
    pub fn hard_link(&self, file: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let c = one_name(name)?;
        let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| io::Error::other("fd path"))?;
        // SAFETY: valid fds and NUL-terminated strings; result checked. Following the
        // /proc magic link names exactly the open file.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
        .map(|_| ())
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`; `None` when it does not exist.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let c = one_name(name)?;
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name and a writable `stat`; result checked.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(st))
    }

    /// `readlinkat` of one name.
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        let c = one_name(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: valid fd, name and a buffer of the length passed; result checked.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(OsString::from_vec(buf))
    }

    /// Renames `from` in this directory to `to` in `to_dir`, refusing to replace anything.
    pub fn rename_noreplace(&self, from: &OsStr, to_dir: &HostDir, to: &OsStr) -> io::Result<()> {
        let f = one_name(from)?;
        let t = one_name(to)?;
        // SAFETY: valid fds and NUL-terminated names; result checked.
        cvt(unsafe {
            libc::renameat2(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                to_dir.fd.as_raw_fd(),
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        })
        .map(|_| ())
    }

    /// Removes `name` and, when it is a directory, everything below it; never follows a
    /// symlink out of the tree. A missing name is not an error.
    pub fn remove_tree(&self, name: &OsStr) -> io::Result<()> {
        let c = one_name(name)?;
        let Some(st) = self.stat(name)? else {
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = self.subdir(Path::new(name))?;
            for child in sub.entries()? {
                sub.remove_tree(&child)?;
            }
            // SAFETY: valid fd and name; result checked.
            cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
        } else {
            // SAFETY: valid fd and name; result checked.
            cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })?;
        }
        Ok(())
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        // SAFETY: F_DUPFD_CLOEXEC on a valid fd; result checked.
        let dup = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `dup` is a fresh fd we own; fdopendir takes ownership on success.
        let dir = unsafe { libc::fdopendir(dup) };
        if dir.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `dup` is still ours to close.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // SAFETY: `dir` is a valid DIR*; the dup shares the offset, so start from the top.
        unsafe { libc::rewinddir(dir) };
        let mut out = Vec::new();
        let res = loop {
            // SAFETY: errno is thread-local; clearing it distinguishes end from error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dir` is valid until closedir below.
            let ent = unsafe { libc::readdir(dir) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: `ent` points to a dirent whose d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(OsString::from_vec(b.to_vec()));
            }
        };
        // SAFETY: `dir` is valid and closed exactly once.
        unsafe { libc::closedir(dir) };
        res?;
        out.sort();
        Ok(out)
    }

    /// The filesystem type (`statfs.f_type`) of this directory.
    pub fn fs_type(&self) -> io::Result<i64> {
        fs_type(self.fd.as_fd())
    }
}

/// The filesystem type (`statfs.f_type`) of an open file.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a writable statfs; result checked.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s.f_type as i64)
}

/// Kernel pseudo filesystems whose files are not data (reading some blocks forever).
pub fn pseudo_fs_name(f_type: i64) -> Option<&'static str> {
    Some(match f_type {
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x7363_6673 => "securityfs",
        0x6367_7270 => "cgroup2",
        0x0027_e0eb => "cgroup",
        0x1cd1 => "devpts",
        0x6265_6570 => "configfs",
        0xcafe_4a11 => "bpf",
        0x1373 => "devfs",
        _ => return None,
    })
}

/// `fstat` of an open file.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a writable stat; result checked.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn one_name(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a plain file name", name.to_string_lossy()),
        ));
    }
    cstr(name)
}

fn openat(dir: RawFd, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated name; result checked.
    let fd = cvt(unsafe { libc::openat(dir, c.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: a successful openat returns a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat2(dir: RawFd, rel: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(rel.as_os_str())?;
    // SAFETY: an all-zero open_how is valid; the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path, and a correctly sized open_how; result checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful openat2 returns a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Explains an error from a no-symlink, beneath-the-root lookup.
pub fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "passes through a symlink (symlinks are not followed below an allowed root)".into()
        }
        Some(libc::EXDEV) => "leaves the allowed root".into(),
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::ENOTDIR) => {
            "has a component that is a symlink or not a directory (symlinks are not followed)"
                .into()
        }
        _ => e.to_string(),
    }
}

/// How a host path was given.
#[derive(Clone, Debug)]
enum Base {
    /// The user's own path (CLI, SDK).
    Local,
    /// Relative to an allowed root (MCP), nothing followed.
    Confined(Arc<HostDir>),
}

/// A host path named by a caller, resolved through descriptors when it is used.
#[derive(Clone, Debug)]
pub struct HostPath {
    base: Base,
    /// Absolute (local) or relative to the root (confined).
    path: PathBuf,
    shown: PathBuf,
}

impl<P: AsRef<Path>> From<P> for HostPath {
    fn from(p: P) -> Self {
        HostPath::local(p.as_ref())
    }
}

/// Expands `~` and makes a path absolute (against the working directory).
pub fn expand_home(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if s == "~"
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home);
    }
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl HostPath {
    /// The caller's own path (`~` expanded, made absolute). What exists of it is trusted;
    /// whatever pyro creates below it is created without following symlinks.
    pub fn local(p: &Path) -> HostPath {
        let abs = if p.as_os_str().is_empty() {
            PathBuf::new()
        } else {
            expand_home(p)
        };
        HostPath {
            base: Base::Local,
            shown: abs.clone(),
            path: abs,
        }
    }

    /// A path below an allowed root: `rel` may hold only plain names, and nothing on the
    /// way is followed.
    pub fn confined(root: Arc<HostDir>, rel: &Path) -> io::Result<HostPath> {
        let parts = plain_components(rel)?;
        let rel: PathBuf = parts.iter().collect();
        Ok(HostPath {
            shown: root.shown().join(&rel),
            base: Base::Confined(root),
            path: rel,
        })
    }

    /// How the path is shown in results and messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Whether the path is empty.
    pub fn is_empty(&self) -> bool {
        self.shown.as_os_str().is_empty()
    }

    /// Opens the path for reading: `O_NONBLOCK` so a FIFO cannot hang the caller. Confined
    /// paths follow no symlink.
    pub fn open_read(&self) -> io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK;
        match &self.base {
            Base::Confined(root) => root.open_beneath(&self.path, flags, 0),
            Base::Local => {
                let c = cstr(self.path.as_os_str())?;
                // SAFETY: NUL-terminated path; result checked.
                let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
                // SAFETY: a successful open returns a new fd nobody else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        }
    }

    /// Checks, without creating anything, that an output could be made: what exists of its
    /// parent is reached without a symlink (for a confined path; a local one is the
    /// user's), and the output itself does not exist. An early, clear refusal only: the
    /// effects check again, the same way, when they happen ([`Self::output_parent`]).
    pub fn check_output(&self) -> io::Result<()> {
        let (parent, name) = match (self.path.parent(), self.path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "names no file (it is a root or ends in `..`)",
                ));
            }
        };
        let dir = match &self.base {
            Base::Local => return Ok(()),
            Base::Confined(root) => {
                let mut prefix = PathBuf::new();
                for c in parent.components() {
                    prefix.push(c);
                    match root.subdir(&prefix) {
                        Ok(_) => {}
                        // The rest is created by the export.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                root.subdir(parent)?
            }
        };
        if dir.stat(name)?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "already exists; choose a path that does not",
            ));
        }
        Ok(())
    }

    /// Opens (creating what is missing) the parent directory of an output, and returns it
    /// with the output's own name. Only directories that already exist on a local path are
    /// looked up by name; everything created is created and opened without symlinks.
    pub fn output_parent(&self) -> io::Result<(HostDir, OsString)> {
        let (parent, name) = match (self.path.parent(), self.path.file_name()) {
            (Some(p), Some(n)) => (p, n.to_os_string()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "names no file (it is a root or ends in `..`)",
                ));
            }
        };
        one_name(&name)?;
        let dir = match &self.base {
            Base::Confined(root) => root.create_dirs(parent)?,
            Base::Local => {
                // The nearest existing ancestor, opened by path (the user's own), then
                // the rest created below it without following anything.
                let mut existing = parent;
                let mut tail: Vec<&OsStr> = Vec::new();
                loop {
                    match std::fs::symlink_metadata(existing) {
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    match (existing.file_name(), existing.parent()) {
                        (Some(n), Some(p)) => {
                            tail.push(n);
                            existing = p;
                        }
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                "no existing parent directory",
                            ));
                        }
                    }
                }
                let base = HostDir::open(existing)?;
                let rest: PathBuf = tail.iter().rev().collect();
                let mut d = base.create_dirs(&rest)?;
                d.shown = parent.to_path_buf();
                d
            }
        };
        Ok((dir, name))
    }
}

/// Why [`read_bounded`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// It could not be opened or read.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// It is not a regular file (a directory, FIFO, device or socket).
    #[error("is not a regular file ({0})")]
    NotRegular(&'static str),
    /// It holds more than the limit.
    #[error("is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

/// Reads a whole regular file of at most `limit` bytes. The size is checked before reading
/// and at most `limit + 1` bytes are ever read (a file that grows is caught too); FIFOs,
/// devices (`/dev/zero`) and directories are refused without blocking.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    read_bounded_at(&HostPath::local(path), limit)
}

/// [`read_bounded`] of a [`HostPath`] (opened through its root's descriptor when it is
/// confined).
pub fn read_bounded_at(path: &HostPath, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    let fd = path.open_read()?;
    let st = fstat(fd.as_fd())?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFCHR | libc::S_IFBLK => Some("a device"),
        libc::S_IFSOCK => Some("a socket"),
        _ => Some("not a file"),
    };
    if let Some(k) = kind {
        return Err(BoundedReadError::NotRegular(k));
    }
    if st.st_size.max(0) as u64 > limit {
        return Err(BoundedReadError::TooLarge { limit });
    }
    let mut out = Vec::new();
    File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge { limit });
    }
    Ok(out)
}

/// Writes `len` bytes from `r` to `f`, seeking over all-zero blocks so that sparse content
/// stays sparse on the host. Fails if `r` ends early.
pub fn write_sparse<R: Read>(f: &mut File, r: &mut R, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    let mut pending_hole = false;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a file",
            ));
        }
        let chunk = &buf[..n];
        if chunk.iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
            pending_hole = true;
        } else {
            f.write_all(chunk)?;
            pending_hole = false;
        }
        left -= n as u64;
    }
    if pending_hole {
        f.set_len(len)?;
    }
    Ok(())
}

/// A reader that yields exactly `len` bytes of `inner` and fails if `inner` ends sooner (a
/// file that shrank while it was read); bytes past `len` are never read.
#[derive(Debug)]
pub struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, len: u64) -> Self {
        Exact { inner, left: len }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A final symlink opened as a directory fails with ENOTDIR, one on the way with ELOOP.
    fn refused_link(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
    }

    #[test]
    fn beneath_refuses_symlinks_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root/a")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", t.path().join("root/esc")).unwrap();
        std::os::unix::fs::symlink(".", t.path().join("root/s")).unwrap();
        let root = HostDir::open(&t.path().join("root")).unwrap();
        assert!(root.subdir(Path::new("a")).is_ok());
        for bad in ["esc", "s", "s/a", "esc/x"] {
            let e = root.subdir(Path::new(bad)).unwrap_err();
            assert!(refused_link(&e), "{bad}: {e}");
        }
        assert!(root.subdir(Path::new("../outside")).is_err());
        assert!(root.create_dirs(Path::new("esc/new")).is_err());
        assert!(!t.path().join("outside/new").exists());
        let made = root.create_dirs(Path::new("a/b/c")).unwrap();
        made.create_file(OsStr::new("f"), 0o600).unwrap();
        assert!(t.path().join("root/a/b/c/f").is_file());
    }

    #[test]
    fn confined_output_parent_cannot_be_redirected_by_a_planted_link() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        let root = Arc::new(HostDir::open(&t.path().join("root")).unwrap());
        let out = HostPath::confined(root, Path::new("esc/pwned")).unwrap();
        // Planted after the path was accepted, before it is used.
        std::os::unix::fs::symlink("../outside", t.path().join("root/esc")).unwrap();
        let e = out.output_parent().unwrap_err();
        assert!(refused_link(&e), "{e}");
        assert_eq!(
            std::fs::read_dir(t.path().join("outside")).unwrap().count(),
            0
        );
    }

    #[test]
    fn bounded_reads_refuse_big_files_fifos_and_devices() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_bounded(&f, 5).unwrap(), b"hello");
        assert!(matches!(
            read_bounded(&f, 4),
            Err(BoundedReadError::TooLarge { limit: 4 })
        ));
        // A 4 GiB sparse file is refused from its size, without reading it.
        let big = t.path().join("big");
        File::create(&big).unwrap().set_len(4 << 30).unwrap();
        assert!(matches!(
            read_bounded(&big, 16 << 20),
            Err(BoundedReadError::TooLarge { .. })
        ));
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 16),
            Err(BoundedReadError::NotRegular("a device"))
        ));
        let fifo = t.path().join("p");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path; result checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_bounded(&fifo, 16),
            Err(BoundedReadError::NotRegular("a FIFO"))
        ));
        assert!(matches!(
            read_bounded(t.path(), 16),
            Err(BoundedReadError::NotRegular("a directory"))
        ));
    }

    #[test]
    fn entries_rename_and_remove_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/x/y")).unwrap();
        std::fs::write(t.path().join("d/x/y/f"), "1").unwrap();
        std::fs::create_dir_all(t.path().join("keep")).unwrap();
        std::fs::write(t.path().join("keep/k"), "1").unwrap();
        std::os::unix::fs::symlink("../../keep", t.path().join("d/x/link")).unwrap();
        let d = HostDir::open(t.path()).unwrap();
        assert_eq!(
            d.entries().unwrap(),
            vec![OsString::from("d"), "keep".into()]
        );
        d.rename_noreplace(OsStr::new("d"), &d, OsStr::new("e"))
            .unwrap();
        assert_eq!(
            d.rename_noreplace(OsStr::new("e"), &d, OsStr::new("keep"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        d.remove_tree(OsStr::new("e")).unwrap();
        assert!(!t.path().join("e").exists());
        assert!(t.path().join("keep/k").exists());
    }

    #[test]
    fn sparse_writes_keep_holes_and_exact_refuses_short_input() {
        let t = tempfile::tempdir().unwrap();
        let mut f = File::create(t.path().join("s")).unwrap();
        let len = 64u64 << 20;
        let mut zeros = io::repeat(0).take(len);
        write_sparse(&mut f, &mut zeros, len).unwrap();
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), len);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < len / 4, "{} blocks", meta.blocks());
        let mut short = Exact::new(&b"abc"[..], 5);
        let mut v = Vec::new();
        assert!(short.read_to_end(&mut v).is_err());
        let mut exact = Exact::new(&b"abcdef"[..], 4);
        let mut v = Vec::new();
        exact.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"abcd");
    }
}
