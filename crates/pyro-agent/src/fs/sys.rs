//! The `*at` system calls file operations are built from, each behind one safe function.
//!
//! Every path argument here is either resolved with `openat2(RESOLVE_BENEATH)` from a
//! directory descriptor, or is a single name (no `/`) looked up in an already-resolved
//! directory descriptor without following a final symlink. Nothing here decides policy.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// `struct open_how` of `openat2(2)` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Resolution flags for paths that may pass through symlinks that stay beneath the root.
pub const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
/// Resolution flags for paths that must not pass through any symlink.
pub const BENEATH_NO_SYMLINKS: u64 = BENEATH | libc::RESOLVE_NO_SYMLINKS;

fn cstr(path: &[u8]) -> io::Result<CString> {
    CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat2(2)`: opens `path` relative to `dir` under `resolve` rules. `O_CLOEXEC` is added.
/// Retries the `EAGAIN` the kernel returns when a concurrent rename raced the lookup.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = if path.is_empty() {
        cstr(b".")?
    } else {
        cstr(path)?
    };
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve,
    };
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid `open_how` whose size is
        // passed; both outlive the call. The returned descriptor is owned by nobody else.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel returned a fresh descriptor that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) && tries < 16 {
            tries += 1;
            continue;
        }
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks openat2 (Linux 5.6+ is required)",
            ));
        }
        return Err(err);
    }
}

/// Opens a directory given by an absolute host path (the root), following symlinks.
pub fn open_root(path: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(path.as_bytes())?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kind of a filesystem object, from `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// What `lstat` says about an object.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// The kind.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device, for hard-link detection.
    pub dev: u64,
    /// Inode, for hard-link detection.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: i64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Self {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Self {
            kind,
            perm: st.st_mode & 0o7777,
            size: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn lstatat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    let (c, flags) = if name.is_empty() {
        (cstr(b"")?, libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH)
    } else {
        (cstr(name)?, libc::AT_SYMLINK_NOFOLLOW)
    };
    // SAFETY: zeroed memory is a valid `stat` for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` is writable; both outlive the call.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) })?;
    Ok(Stat::from_raw(&st))
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    lstatat(fd, b"")
}

/// `mkdirat(dir, name, mode)` (the umask applies).
pub fn mkdirat(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `unlinkat(dir, name)`, with `AT_REMOVEDIR` for directories.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is NUL-terminated and outlives the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat(from_dir, from, to_dir, to)`: atomically replaces `to`.
pub fn renameat(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: both names are NUL-terminated and outlive the call.
    check(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
        )
    })
    .map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(from_dir, from, to_dir, to, 0)`: a hard link, never following a symlink.
pub fn linkat(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: both names are NUL-terminated and outlive the call.
    check(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `readlinkat(dir, name)`.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `c` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(OsString::from_vec(buf));
        }
        // Possibly cut: retry with more room (targets are at most PATH_MAX in practice).
        if buf.len() >= 1 << 20 {
            return Err(io::Error::other("symlink target too long"));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// Sets the modification (and access) time of `name` in `dir` without following a symlink.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &[u8], secs: i64, nsec: i64) -> io::Result<()> {
    let c = cstr(if name.is_empty() { b"." } else { name })?;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let times = [ts, ts];
    // SAFETY: `c` is NUL-terminated and `times` holds two timespecs; both outlive the call.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Changes the owner of an open file (best effort is up to the caller).
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// `fsync` of a directory (or any descriptor).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    check(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

/// `syncfs` of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    let ret = unsafe { libc::syscall(libc::SYS_syncfs, fd.as_raw_fd()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `sync(2)`: flushes every filesystem.
pub fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The names in a directory (without `.` and `..`), in no particular order.
pub fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // `fdopendir` takes ownership of its descriptor: hand it a duplicate.
    let dup = dir.try_clone_to_owned()?;
    // SAFETY: the descriptor is a directory opened for reading; on success the stream owns
    // it (closed by `closedir`), on failure it is still ours and `dup` closes it.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // The directory position is shared with `dir`; start from the beginning.
    // SAFETY: `stream` is a valid, open directory stream.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: resetting errno distinguishes the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a valid, open directory stream.
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            // SAFETY: reading errno of this thread.
            let errno = unsafe { *libc::__errno_location() };
            break if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(errno))
            };
        }
        // SAFETY: `d_name` of a live entry is a NUL-terminated string inside it.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    };
    // SAFETY: `stream` is valid and closed exactly once.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Wraps an owned descriptor as a `File` (for reads, writes, `fchmod`, `futimens`, `fsync`).
pub fn file(fd: OwnedFd) -> File {
    File::from(fd)
}

/// Random bytes from the kernel (for temp names), falling back to the clock.
pub fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: `v` is writable for 8 bytes.
    let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(v);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}
