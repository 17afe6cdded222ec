//! Thin, safe wrappers around the Linux system calls the agent needs as PID 1.
//!
//! Every function here converts a C-style return value into an [`io::Result`] and
//! owns exactly one `unsafe` block, justified by a `// SAFETY:` comment. Nothing here
//! decides policy: callers (`init`, `reaper`, `exec`) do.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// `_IOW('R', 0x03, int[2])`: add bytes to the kernel entropy pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Flag for `finit_module`: the kernel decompresses the module file itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Converts a path or string to a `CString`, rejecting interior NUL bytes.
pub fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "string contains an interior NUL byte",
        )
    })
}

/// `mount(2)`. `source`, `fstype` and `data` may be absent.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or points to a NUL-terminated string that
    // outlives the call; `data` is a string as the kernel expects for these filesystems.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret).map(drop)
}

/// Moves the mount at `from` to `to` (`mount --move`).
pub fn move_mount(from: &Path, to: &Path) -> io::Result<()> {
    let from = from.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "mount path is not valid UTF-8")
    })?;
    mount(Some(from), to, None, libc::MS_MOVE, None)
}

/// Loads a kernel module from an open file with `finit_module(2)`.
///
/// `compressed` asks the kernel to decompress the file (`.ko.xz`, `.ko.zst`, ...).
pub fn finit_module(module: &File, params: &CStr, compressed: bool) -> io::Result<()> {
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: the fd is open for the duration of the call (borrowed from `module`) and
    // `params` is a NUL-terminated string; the syscall does not retain either.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `chroot(2)`.
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `kill(2)`; a negative `pid` addresses a process group.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `setsid(2)`. Async-signal-safe: usable between `fork` and `exec`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions and is async-signal-safe.
    check(unsafe { libc::setsid() }).map(drop)
}

/// `write(2)` of `buf` to `fd`, once; returns the bytes written. Async-signal-safe: usable
/// between `fork` and `exec`.
pub fn write_raw(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call; write(2)
    // only reads from it, and a bad descriptor is reported as EBADF.
    let ret = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// `getpid(2)`.
pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail and has no preconditions.
    unsafe { libc::getpid() }
}

/// Reaps one exited child, any pid, without blocking.
///
/// `Ok(None)` means no child has exited yet; `ECHILD` (no children at all) is returned
/// as an error for the caller to interpret.
pub fn waitpid_any_nohang() -> io::Result<Option<(i32, i32)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the call.
    let pid = check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) })?;
    Ok((pid > 0).then_some((pid, status)))
}

/// Makes this process a child subreaper: orphaned descendants are reparented to it.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) }).map(drop)
}

/// Sets the nice value of the calling thread (not of the whole process: Linux applies
/// `setpriority(PRIO_PROCESS, 0, ...)` to the caller only).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and has no memory-safety preconditions.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) }).map(drop)
}

/// Sets `CLOCK_REALTIME` to `since_epoch` after the Unix epoch.
pub fn set_realtime_clock(since_epoch: Duration) -> io::Result<()> {
    let secs = libc::time_t::try_from(since_epoch.as_secs())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: libc::c_long::from(since_epoch.subsec_nanos()),
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// `reboot(2)` with one of the `RB_*` commands. Returns only on failure.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot takes a plain integer command.
    let ret = unsafe { libc::reboot(cmd) };
    if ret == -1 {
        io::Error::last_os_error()
    } else {
        io::Error::other("reboot(2) returned")
    }
}

/// An `AF_INET` datagram socket for interface ioctls, closed on drop.
fn inet_socket() -> io::Result<File> {
    // SAFETY: plain socket creation; the fd is wrapped in a File right away so it is closed.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// An all-zero `ifreq` naming `name` (validated: 1 to `IFNAMSIZ - 1` bytes, no NUL).
fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// A `sockaddr` holding the `sockaddr_in` for `addr` (port 0).
fn sockaddr_v4(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data structs (the
    // kernel's own aliasing of the two); every bit pattern is valid for sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets `IFF_UP` on a network interface (like `ip link set NAME up`).
pub fn interface_up(name: &str) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    let sock = inet_socket()?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFFLAGS fills flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just wrote `ifru_flags`, so reading that union field is valid.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `req` is a valid ifreq; SIOCSIFFLAGS only reads it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// Whether `IFF_UP` is set on a network interface.
pub fn interface_is_up(name: &str) -> io::Result<bool> {
    let mut req = ifreq_for(name)?;
    let sock = inet_socket()?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFFLAGS fills flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just wrote `ifru_flags`, so reading that union field is valid.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

/// Whether a network interface has an IPv4 address (`SIOCGIFADDR`; none is
/// `EADDRNOTAVAIL`).
pub fn interface_has_ipv4(name: &str) -> io::Result<bool> {
    let mut req = ifreq_for(name)?;
    let sock = inet_socket()?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFADDR fills the
    // address or fails.
    match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFADDR, &mut req) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Clears `IFF_UP` on a network interface (like `ip link set NAME down`). The kernel then
/// drops the interface's IPv4 routes and flushes its neighbour (ARP) entries.
pub fn interface_down(name: &str) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    let sock = inet_socket()?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFFLAGS fills flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just wrote `ifru_flags`, so reading that union field is valid.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    // SAFETY: `req` is a valid ifreq; SIOCSIFFLAGS only reads it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// Sets the Ethernet address of a network interface (`SIOCSIFHWADDR`, like `ip link set
/// NAME address MAC`).
pub fn set_interface_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    // SAFETY: `req` is a valid ifreq (name, ARPHRD_ETHER address); SIOCSIFHWADDR only
    // reads it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) }).map(drop)
}

/// Sets the IPv4 address and netmask of a network interface (`SIOCSIFADDR`, then
/// `SIOCSIFNETMASK`, which also fixes the prefix route and the broadcast address).
pub fn set_interface_ipv4(
    name: &str,
    addr: std::net::Ipv4Addr,
    netmask: std::net::Ipv4Addr,
) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: `req` is a valid ifreq (name, AF_INET address); SIOCSIFADDR only reads it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) })?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(netmask);
    // SAFETY: `req` is a valid ifreq (name, AF_INET mask); SIOCSIFNETMASK only reads it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) }).map(drop)
}

/// The kernel's `struct rtentry` (`<linux/route.h>`), which the `libc` crate only
/// declares for musl and uclibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// A default-route `rtentry`: via `gateway` when given, else any.
fn default_route(gateway: Option<std::net::Ipv4Addr>) -> RtEntry {
    let any = sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED);
    RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: gateway.map_or(any, sockaddr_v4),
        rt_genmask: any,
        rt_flags: libc::RTF_UP
            | if gateway.is_some() {
                libc::RTF_GATEWAY
            } else {
                0
            },
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    }
}

/// Adds the IPv4 default route via `gateway` (`SIOCADDRT`, like `ip route add default via
/// GATEWAY`); the kernel picks the interface whose subnet holds the gateway. An existing
/// identical route is success.
pub fn add_default_route(gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let rt = default_route(Some(gateway));
    // SAFETY: `rt` is a fully initialised rtentry with the kernel's layout and a null
    // device name (no pointer the kernel follows); SIOCADDRT only reads it.
    match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// Deletes every IPv4 default route of the main table (`SIOCDELRT` until the kernel finds
/// none, like repeating `ip route del default`). Returns how many were deleted.
pub fn delete_default_routes() -> io::Result<usize> {
    let sock = inet_socket()?;
    let rt = default_route(None);
    // Bounded: a kernel that kept answering success would otherwise loop forever.
    for deleted in 0..1024 {
        // SAFETY: as in add_default_route; SIOCDELRT only reads `rt`.
        match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCDELRT, &rt) }) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(deleted),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("more than 1024 default routes"))
}

/// Credits `bytes` to the kernel entropy pool through `RNDADDENTROPY` on `random`
/// (an open `/dev/urandom` or `/dev/random`). Needs `CAP_SYS_ADMIN`.
pub fn credit_entropy(random: &File, bytes: &[u8]) -> io::Result<()> {
    let len = libc::c_int::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many entropy bytes"))?;
    let bits = len
        .checked_mul(8)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many entropy bytes"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` holds a complete rand_pool_info (header plus `len` bytes) that
    // outlives the call; the kernel only copies from it.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) }).map(drop)
}

/// Whether `fd` is an open file descriptor in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// `dup2(2)`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors has no memory-safety preconditions; `to` is replaced
    // deliberately (used to install the console as stdio).
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cstring_rejects_nul() {
        assert!(cstring("a\0b").is_err());
        assert_eq!(cstring("/proc").unwrap().as_bytes(), b"/proc");
    }

    #[test]
    fn interface_name_validated() {
        assert!(interface_up("").is_err());
        assert!(interface_up("a-name-that-is-far-too-long").is_err());
    }

    #[test]
    fn kill_nonexistent_is_esrch() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = kill(0x7fff_fff0, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn fd_open_probe() {
        let f = File::open("/dev/null").unwrap();
        assert!(fd_is_open(f.as_raw_fd()));
        assert!(!fd_is_open(-1));
    }
}
