//! Named network namespaces (the iproute2 convention, `/run/netns/NAME`) and running code
//! inside one.
//!
//! Namespaces are made with `ip netns add NAME` (argv, no shell) rather than
//! `unshare(CLONE_NEWNET)` and a bind mount of our own: iproute2 also makes `/run/netns` a
//! shared mount point so the name stays valid from other mount namespaces (the jailer's,
//! for one), and every tool that takes a namespace by name (`ip -n`, `ip netns exec`,
//! Firecracker's jailer `--netns`) reads exactly that convention. Removing one is what `ip
//! netns del` does, done in-process ([`remove`]: detach the mount, unlink the file). What
//! pyro does *inside*
//! a namespace from Rust (sysctls now, the resolver later) runs on a thread that has
//! `setns(2)`-ed into it ([`run_in`], [`spawn_in`]): a network namespace is per thread, so
//! the rest of the process is unaffected.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `/run/netns/NAME` could not be opened.
    #[error("cannot open network namespace {path}")]
    Open {
        /// The path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `setns(2)` failed.
    #[error("cannot enter network namespace {name}")]
    Enter {
        /// The namespace.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// `/run/netns/NAME` could not be removed.
    #[error("cannot remove network namespace {path}")]
    Remove {
        /// The namespace's file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The thread running inside it panicked.
    #[error("the thread inside network namespace {name} panicked")]
    Panicked {
        /// The namespace.
        name: String,
    },
}

/// The path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Removes namespace `name` as `ip netns del NAME` does: detaches the bind mount of
/// `/run/netns/NAME` (lazily, `MNT_DETACH`; an error there is ignored, as `ip` ignores it)
/// and unlinks the file. The namespace itself goes once nothing else holds it (a process
/// inside, an open descriptor). A namespace that is not there is an error (`NotFound`).
pub fn remove(name: &str) -> Result<(), NetnsError> {
    let path = path(name);
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(NetnsError::Remove {
            path,
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    };
    // SAFETY: `c_path` is a NUL-terminated path that lives across the call, which only
    // reads it.
    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(&path).map_err(|source| NetnsError::Remove { path, source })
}

/// Moves the calling thread into namespace `name`.
pub(crate) fn enter(name: &str) -> Result<(), NetnsError> {
    let path = path(name);
    let file = File::open(&path).map_err(|source| NetnsError::Open { path, source })?;
    // SAFETY: `file` is an open descriptor of a namespace file that lives until after the
    // call; setns only changes this thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Enter {
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(name)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Panicked {
                    name: name.to_owned(),
                })
            })
    })
}

/// Starts `f` on a thread of its own inside namespace `name` (a server, say).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T, NetnsError>> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
}

/// Writes `value` to the sysctl `key` (a path under `/proc/sys`, as `net/ipv4/ip_forward`)
/// inside namespace `name`. `/proc/sys/net` shows the namespace of the thread that opens it.
pub fn write_sysctl(name: &str, key: &str, value: &str) -> Result<(), SysctlError> {
    let path = Path::new("/proc/sys").join(key);
    run_in(name, || std::fs::write(&path, value))?.map_err(|source| SysctlError::Write {
        key: key.to_owned(),
        namespace: name.to_owned(),
        source,
    })
}

/// Writes `value` to the sysctl `key` of the calling thread's namespace, reporting errors
/// as in namespace `name` (for a thread [`run_in`] `name`, setting several at once).
pub fn write_own_sysctl(name: &str, key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|source| SysctlError::Write {
        key: key.to_owned(),
        namespace: name.to_owned(),
        source,
    })
}

/// Reads the sysctl `key` (as for [`write_sysctl`]) in namespace `name` (`None`: the calling
/// thread's), trimmed.
pub fn read_sysctl(name: Option<&str>, key: &str) -> Result<String, SysctlError> {
    let path = Path::new("/proc/sys").join(key);
    let read = || std::fs::read_to_string(&path);
    let result = match name {
        Some(name) => run_in(name, read)?,
        None => read(),
    };
    result
        .map(|v| v.trim().to_owned())
        .map_err(|source| SysctlError::Read {
            key: key.to_owned(),
            namespace: name.unwrap_or("(own)").to_owned(),
            source,
        })
}

/// Writes the sysctl `key` in namespace `name`, or in the calling thread's for `None`.
pub fn write_sysctl_in(name: Option<&str>, key: &str, value: &str) -> Result<(), SysctlError> {
    match name {
        Some(name) => write_sysctl(name, key, value),
        None => std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|source| {
            SysctlError::Write {
                key: key.to_owned(),
                namespace: "(own)".to_owned(),
                source,
            }
        }),
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14): a namespace's 64-bit identity, never reused while the
/// system runs (unlike its inode number). The same value on every architecture but
/// sparc and mips, which pyro does not run on.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The identity of namespace `name` (`None`: the calling thread's): its inode number
/// (stable while it exists) and its cookie, where the kernel has one (inode numbers are
/// reused after a namespace is gone; cookies are not).
pub fn identity(name: Option<&str>) -> Result<(u64, Option<u64>), NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let path = match name {
        Some(name) => path(name),
        None => PathBuf::from("/proc/thread-self/ns/net"),
    };
    let inode = std::fs::metadata(&path)
        .map_err(|source| NetnsError::Open { path, source })?
        .ino();
    let cookie = match name {
        Some(name) => run_in(name, netns_cookie)?,
        None => netns_cookie(),
    };
    Ok((inode, cookie))
}

/// The cookie of the calling thread's namespace, from a throwaway socket.
fn netns_cookie() -> Option<u64> {
    // SAFETY: socket(2) takes no pointers; the result is checked before it is used.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are live locals of the sizes passed; the kernel writes at
    // most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// A sysctl could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The read failed.
    #[error("cannot read {key} in network namespace {namespace}")]
    Read {
        /// The sysctl.
        key: String,
        /// The namespace.
        namespace: String,
        /// Why.
        source: std::io::Error,
    },
    /// The write failed.
    #[error("cannot set {key} in network namespace {namespace}")]
    Write {
        /// The sysctl.
        key: String,
        /// The namespace.
        namespace: String,
        /// Why.
        source: std::io::Error,
    },
}
