//! Guest init: the agent's PID 1 duties before it serves requests.
//!
//! [`run_stage1`] runs when the agent is `/init` of the initramfs. It mounts the kernel
//! filesystems, loads the kernel modules named in [`MODULES_ORDER`] (and, for a networked
//! guest, those of [`NET_MODULES_ORDER`]), finds the two disks
//! by ext4 label (never by `vdX` order), mounts the read-only base and the writable upper
//! disk under an overlay, switches root into it in the same process, and prepares the
//! new root ([`setup_root`]): `/proc`, `/sys`, `/dev` (with `pts`, `shm` and the usual
//! symlinks), tmpfs `/run` and `/tmp`, `/workspace`, hostname, loopback, clock.
//!
//! The helpers [`kernel_cmdline_param`], [`set_clock`], [`add_entropy`] and
//! [`poweroff`] are also used after a snapshot restore and at shutdown.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

/// ext4 label of the read-only environment disk.
pub const ROOTFS_LABEL: &str = "pyro-rootfs";
/// ext4 label of the per-sandbox writable disk (overlay upper layer).
pub const UPPER_LABEL: &str = "pyro-upper";
/// Kernel modules to load, one file name (relative to [`MODULES_DIR`]) per line, in order.
pub const MODULES_ORDER: &str = "/etc/pyro/modules.order";
/// The NIC's driver modules, listed like [`MODULES_ORDER`]; loaded only when the kernel
/// command line carries [`crate::net::NET_PARAM`].
pub const NET_MODULES_ORDER: &str = "/etc/pyro/modules.net.order";
/// Where the initramfs keeps the module files.
pub const MODULES_DIR: &str = "/lib/modules";
/// How long to wait for the labelled disks to appear.
pub const DISK_WAIT: Duration = Duration::from_secs(15);
/// Kernel command-line parameter carrying the host's clock (`<unix seconds>[.<fraction>]`).
pub const CLOCK_PARAM: &str = "pyro.clock";
/// The guest's hostname.
pub const HOSTNAME: &str = "pyro";

const BASE_MNT: &str = "/mnt/base";
const UPPER_MNT: &str = "/mnt/upper";
const NEW_ROOT: &str = "/newroot";

/// Byte offset of the ext4 superblock on the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const MAGIC_AT: usize = 0x38;
const LABEL_AT: usize = 0x78;
const LABEL_LEN: usize = 16;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A failed step of guest initialisation, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Stage 1 must run as PID 1 (it mounts over `/` and deletes the initramfs).
    #[error("stage 1 must run as PID 1 (this is pid {pid})")]
    NotPid1 {
        /// Our pid.
        pid: i32,
    },
    /// A directory could not be created.
    #[error("cannot create directory {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A mount failed.
    #[error("cannot mount {device} ({fstype}) on {target}")]
    Mount {
        /// What was mounted (device or pseudo-filesystem name).
        device: String,
        /// The filesystem type.
        fstype: String,
        /// The mount point.
        target: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Moving a mount failed.
    #[error("cannot move mount {from} to {to}")]
    MoveMount {
        /// The current mount point.
        from: PathBuf,
        /// The new mount point.
        to: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The module list exists but cannot be read.
    #[error("cannot read the module list {path}")]
    ModuleList {
        /// The list's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A kernel module could not be opened or loaded.
    #[error("cannot load kernel module {name}")]
    Module {
        /// The module's file name as listed.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A labelled disk did not show up in time.
    #[error("no disk labelled {label:?} after {waited_ms} ms (disks seen: {seen})")]
    DiskNotFound {
        /// The label looked for.
        label: String,
        /// How long we waited.
        waited_ms: u64,
        /// The block devices seen and their labels, for diagnosis.
        seen: String,
    },
    /// One step of switching into the new root failed.
    #[error("switch root to {new_root}: {step} failed")]
    SwitchRoot {
        /// The new root.
        new_root: PathBuf,
        /// The step (`chdir`, `move mount`, `chroot`).
        step: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A symlink under `/dev` could not be created.
    #[error("cannot create symlink {path}")]
    Symlink {
        /// The link's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Milliseconds since `start`, for log lines.
fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

fn log(start: Instant, msg: &str) {
    eprintln!("pyro-init: {:>5} ms {msg}", ms(start));
}

/// Runs stage 1 in the initramfs and switches root; see the module documentation.
///
/// On success the process runs in the new root with the guest prepared.
///
/// # Errors
/// Any failed mount, module or missing disk, with its name; see [`InitError`].
pub fn run_stage1() -> Result<(), InitError> {
    let start = Instant::now();
    let pid = sys::getpid();
    if pid != 1 {
        return Err(InitError::NotPid1 { pid });
    }
    const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)?;
    mount_fs("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    // Without a console there is nowhere to report that it is missing.
    let _ = ensure_console();
    log(start, "kernel filesystems mounted");

    let loaded = load_modules(Path::new(MODULES_ORDER), Path::new(MODULES_DIR))?;
    log(start, &format!("{loaded} kernel modules loaded"));
    // Only a networked guest (`pyro.net=` present, `pending` included) has a NIC to drive.
    // Without its driver the guest still serves over vsock: a failure is a warning.
    if kernel_cmdline_param(crate::net::NET_PARAM).is_some() {
        match load_modules(Path::new(NET_MODULES_ORDER), Path::new(MODULES_DIR)) {
            Ok(n) => log(start, &format!("{n} network modules loaded")),
            Err(err) => {
                let cause = std::error::Error::source(&err)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                eprintln!("pyro-init: warning: network modules: {err}{cause}");
            }
        }
    }

    let disks = find_disks(&[ROOTFS_LABEL, UPPER_LABEL], DISK_WAIT)?;
    let (Some(base_dev), Some(upper_dev)) = (disks.get(ROOTFS_LABEL), disks.get(UPPER_LABEL))
    else {
        // find_disks returns every label or an error; this is unreachable in practice.
        return Err(InitError::DiskNotFound {
            label: ROOTFS_LABEL.to_owned(),
            waited_ms: 0,
            seen: format!("{disks:?}"),
        });
    };
    log(
        start,
        &format!(
            "disks found: {ROOTFS_LABEL}={} {UPPER_LABEL}={}",
            base_dev.display(),
            upper_dev.display()
        ),
    );

    mount_root(base_dev, upper_dev)?;
    log(start, "overlay root mounted");

    let new_root = Path::new(NEW_ROOT);
    for dir in ["/proc", "/sys", "/dev"] {
        let to = new_root.join(dir.trim_start_matches('/'));
        mkdir_p(&to)?;
        sys::move_mount(Path::new(dir), &to).map_err(|source| InitError::MoveMount {
            from: PathBuf::from(dir),
            to: to.clone(),
            source,
        })?;
    }
    free_initramfs();
    switch_root(new_root)?;
    log(start, "switched root");

    setup_root()?;
    log(start, "guest ready");
    Ok(())
}

fn mkdir_p(path: &Path) -> Result<(), InitError> {
    fs::create_dir_all(path).map_err(|source| InitError::Mkdir {
        path: path.to_owned(),
        source,
    })
}

/// Creates `target` and mounts on it.
fn mount_fs(
    device: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    let target = Path::new(target);
    mkdir_p(target)?;
    sys::mount(Some(device), target, Some(fstype), flags, data).map_err(|source| InitError::Mount {
        device: device.to_owned(),
        fstype: fstype.to_owned(),
        target: target.to_owned(),
        source,
    })
}

/// Like [`mount_fs`], but does nothing when `target` is already a mount point.
fn mount_fs_once(
    device: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    if is_mount_point(Path::new(target)) {
        return Ok(());
    }
    mount_fs(device, target, fstype, flags, data)
}

/// Whether `path` is the root of a mounted filesystem (its device differs from its
/// parent's, or it is `/`).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Ok(parent)) = (fs::metadata(path), fs::metadata(path.join(".."))) else {
        return false;
    };
    meta.dev() != parent.dev() || meta.ino() == parent.ino()
}

/// Opens `/dev/console` on any of stdin, stdout and stderr that is closed (the kernel
/// leaves them closed when the initramfs has no console node).
fn ensure_console() -> io::Result<()> {
    let missing: Vec<i32> = (0..3).filter(|&fd| !sys::fd_is_open(fd)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")?;
    let fd = console.as_raw_fd();
    for &target in &missing {
        if target != fd {
            sys::dup2(fd, target)?;
        }
    }
    if fd <= 2 {
        // It became one of the standard descriptors: keep it open.
        let _ = console.into_raw_fd();
    }
    Ok(())
}

/// Loads the modules listed in `order_file` from `dir`, in order. A missing list means
/// a kernel with everything built in. Returns how many modules were newly loaded.
fn load_modules(order_file: &Path, dir: &Path) -> Result<usize, InitError> {
    let list = match fs::read_to_string(order_file) {
        Ok(list) => list,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(InitError::ModuleList {
                path: order_file.to_owned(),
                source,
            });
        }
    };
    let mut loaded = 0;
    for name in module_names(&list) {
        let module_err = |source| InitError::Module {
            name: name.to_owned(),
            source,
        };
        let file = File::open(dir.join(name)).map_err(module_err)?;
        let compressed = [".xz", ".gz", ".zst"].iter().any(|ext| name.ends_with(ext));
        match sys::finit_module(&file, c"", compressed) {
            Ok(()) => loaded += 1,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => return Err(module_err(source)),
        }
    }
    Ok(loaded)
}

/// The module file names of a `modules.order` list: blank lines and `#` comments are
/// skipped, as are names that would escape the module directory.
fn module_names(list: &str) -> impl Iterator<Item = &str> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with('/') && !l.split('/').any(|part| part == ".."))
}

/// The volume label of an ext2/3/4 filesystem, from the bytes of its superblock (the
/// device's bytes starting at offset 1024). `None` when it is not ext* or has no label.
pub fn ext4_label(superblock: &[u8]) -> Option<String> {
    let magic = superblock.get(MAGIC_AT..MAGIC_AT + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT4_MAGIC {
        return None;
    }
    let raw = superblock.get(LABEL_AT..LABEL_AT + LABEL_LEN)?;
    let len = raw.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
    (len > 0).then(|| String::from_utf8_lossy(&raw[..len]).into_owned())
}

/// Reads the ext4 label of a block device or image file.
///
/// # Errors
/// When the device cannot be opened or is shorter than a superblock.
pub fn read_ext4_label(device: &Path) -> io::Result<Option<String>> {
    let file = File::open(device)?;
    let mut superblock = [0u8; LABEL_AT + LABEL_LEN];
    file.read_exact_at(&mut superblock, SUPERBLOCK_OFFSET)?;
    Ok(ext4_label(&superblock))
}

/// Reads the labels of the virtio disks listed in `sys_block` (`vd*` entries), whose
/// nodes are in `dev_dir`. Devices that cannot be read yet are skipped.
fn scan_disks(sys_block: &Path, dev_dir: &Path) -> BTreeMap<String, Option<String>> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("vd"))
        .filter_map(|name| {
            let label = read_ext4_label(&dev_dir.join(&name)).ok()?;
            Some((name, label))
        })
        .collect()
}

/// Waits up to `timeout` until a disk carries each of `labels`; returns label → device.
///
/// # Errors
/// [`InitError::DiskNotFound`] for the first label still missing at the deadline.
pub fn find_disks(
    labels: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, PathBuf>, InitError> {
    find_disks_in(Path::new("/sys/block"), Path::new("/dev"), labels, timeout)
}

fn find_disks_in(
    sys_block: &Path,
    dev_dir: &Path,
    labels: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, PathBuf>, InitError> {
    let start = Instant::now();
    loop {
        let seen = scan_disks(sys_block, dev_dir);
        let found: BTreeMap<String, PathBuf> = seen
            .iter()
            .filter_map(|(dev, label)| {
                let label = label.as_deref()?;
                labels
                    .contains(&label)
                    .then(|| (label.to_owned(), dev_dir.join(dev)))
            })
            .collect();
        let missing = labels.iter().find(|l| !found.contains_key(**l));
        let Some(missing) = missing else {
            return Ok(found);
        };
        if start.elapsed() >= timeout {
            let seen = seen
                .iter()
                .map(|(dev, label)| format!("{dev}={}", label.as_deref().unwrap_or("(none)")))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(InitError::DiskNotFound {
                label: (*missing).to_owned(),
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                seen: if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen
                },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts the base read-only, the upper disk, and the overlay of both on [`NEW_ROOT`].
fn mount_root(base_dev: &Path, upper_dev: &Path) -> Result<(), InitError> {
    let base = base_dev.to_string_lossy();
    let upper = upper_dev.to_string_lossy();
    // `noload`: never replay (write) the journal of the read-only, shared base image.
    mount_fs(&base, BASE_MNT, "ext4", libc::MS_RDONLY, Some("noload"))?;
    mount_fs(&upper, UPPER_MNT, "ext4", 0, None)?;
    let upperdir = format!("{UPPER_MNT}/upper");
    let workdir = format!("{UPPER_MNT}/work");
    mkdir_p(Path::new(&upperdir))?;
    mkdir_p(Path::new(&workdir))?;
    let options = format!("lowerdir={BASE_MNT},upperdir={upperdir},workdir={workdir}");
    mount_fs("overlay", NEW_ROOT, "overlay", 0, Some(&options))
}

/// Deletes the initramfs' files to give their memory back, as `switch_root(8)` does:
/// only files on the root filesystem itself (other mounts are skipped by device), and
/// only if that root is a ramfs/tmpfs. Best effort.
fn free_initramfs() {
    let Ok(root) = fs::symlink_metadata("/") else {
        return;
    };
    if !root_is_ram_fs() {
        return;
    }
    remove_tree_on_device(Path::new("/"), root.dev());
}

fn root_is_ram_fs() -> bool {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated literal and `st` is writable for the call.
    let ret = unsafe { libc::statfs(c"/".as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let fs_type = st.f_type as i64;
    ret == 0 && (fs_type == RAMFS_MAGIC || fs_type == TMPFS_MAGIC)
}

fn remove_tree_on_device(dir: &Path, dev: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_device(&path, dev);
            // Fails (and stays) when it holds a mount point: fine.
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// `chdir new_root; mount --move . /; chroot .; chdir /` in this process.
fn switch_root(new_root: &Path) -> Result<(), InitError> {
    let fail = |step: &'static str| {
        move |source| InitError::SwitchRoot {
            new_root: new_root.to_owned(),
            step,
            source,
        }
    };
    std::env::set_current_dir(new_root).map_err(fail("chdir"))?;
    sys::move_mount(Path::new("."), Path::new("/")).map_err(fail("move mount"))?;
    sys::chroot(Path::new(".")).map_err(fail("chroot"))?;
    std::env::set_current_dir("/").map_err(fail("chdir /"))
}

/// Prepares a root filesystem for commands: kernel filesystems (each mounted only if
/// not already), `/dev` extras, tmpfs `/run` and `/tmp`, `/workspace`, hostname,
/// loopback up, the network from [`crate::net::NET_PARAM`] (only when present) and the
/// clock from [`CLOCK_PARAM`].
///
/// Hostname, loopback, network and clock failures are logged, not fatal.
///
/// # Errors
/// A failed mount, directory or `/dev` symlink.
pub fn setup_root() -> Result<(), InitError> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | libc::MS_NOEXEC;
    mount_fs_once("proc", "/proc", "proc", nosuid_nodev_noexec, None)?;
    mount_fs_once("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None)?;
    mount_fs_once(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    let _ = ensure_console();
    mount_fs_once(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    )?;
    mount_fs_once("shm", "/dev/shm", "tmpfs", nosuid_nodev, Some("mode=1777"))?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        symlink_once(target, link)?;
    }
    mount_fs_once("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755"))?;
    mount_fs_once("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777"))?;
    mkdir_p(Path::new("/workspace"))?;
    // Like systemd: an image without a machine id (or with an empty one, "uninitialized")
    // gets one on its first boot; a kept disk keeps its id across boots.
    if let Err(err) = write_machine_id(Path::new(MACHINE_ID), MachineId::IfMissing) {
        eprintln!("pyro-init: warning: cannot write {MACHINE_ID}: {err}");
    }

    if let Err(err) = sys::sethostname(HOSTNAME) {
        eprintln!("pyro-init: warning: cannot set hostname: {err}");
    }
    if let Err(err) = sys::interface_up("lo") {
        eprintln!("pyro-init: warning: cannot bring up lo: {err}");
    }
    // Only with `pyro.net=` on the command line: a guest without it has only `lo`. A
    // template booted with `pyro.net=pending` brings eth0 up without an address (IPv6 off):
    // each restored clone gets its own MAC and address with its reseed.
    match crate::net::from_cmdline() {
        Ok(None) => {}
        Ok(Some(crate::net::NetParam::Pending)) => {
            if let Err(err) = crate::net::ready_pending(crate::net::GUEST_IFACE) {
                let cause = std::error::Error::source(&err)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                eprintln!("pyro-init: warning: network: {err}{cause}");
            }
        }
        Ok(Some(crate::net::NetParam::Static(cfg))) => {
            if let Err(err) = crate::net::configure(crate::net::GUEST_IFACE, &cfg) {
                // Every NetError wraps one io::Error: print it after the step.
                let cause = std::error::Error::source(&err)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                eprintln!("pyro-init: warning: network: {err}{cause}");
            }
        }
        Err(err) => eprintln!(
            "pyro-init: warning: network not configured from {}: {err}",
            crate::net::NET_PARAM
        ),
    }
    if let Some(value) = kernel_cmdline_param(CLOCK_PARAM) {
        match parse_unix_time(&value) {
            Some(nanos) => {
                if let Err(err) = set_clock(nanos) {
                    eprintln!("pyro-init: warning: cannot set the clock: {err}");
                }
            }
            None => eprintln!("pyro-init: warning: ignoring malformed {CLOCK_PARAM}={value}"),
        }
    }
    Ok(())
}

/// Where the machine's identity lives (systemd's convention, read by D-Bus, journald and
/// others).
pub const MACHINE_ID: &str = "/etc/machine-id";

/// When [`write_machine_id`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineId {
    /// Only when there is none or it is empty (a boot).
    IfMissing,
    /// Always (a clone restored from a snapshot must not keep its template's).
    Replace,
}

/// Writes a new random machine id (32 lowercase hex digits of a version 4 UUID and a
/// newline, mode 0444, as systemd does) to `path`, atomically, per `when`. Something other
/// than a regular file at `path` (a symlink, a directory) is left alone. Returns whether it
/// wrote.
///
/// # Errors
/// Reading `/dev/urandom` or writing the file.
pub fn write_machine_id(path: &Path, when: MachineId) -> io::Result<bool> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let len = match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Ok(false),
        Ok(m) if when == MachineId::IfMissing && m.len() > 0 => return Ok(false),
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let mut line: String = id.iter().map(|b| format!("{b:02x}")).collect();
    line.push('\n');
    if len > 0 {
        // A clone's id (made at its template's first boot) is rewritten in place: no new
        // directory entry, the cheapest write on a freshly restored guest, and nothing
        // reads it while the host is reseeding. Ids are all the same length, so the bytes
        // are overwritten without truncating the file first: after a truncation ext4
        // frees the file's block and allocates a new one (and, with `auto_da_alloc`,
        // starts writing it back on close), which made the reseed ~30 ms under emulation
        // against ~13 ms for an overwrite, which only dirties the cached page. An id of
        // another length is truncated and rewritten.
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let same_length = len == line.len() as u64;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(!same_length)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        if same_length {
            f.write_all_at(line.as_bytes(), 0)?;
        } else {
            f.write_all(line.as_bytes())?;
        }
        return Ok(true);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".pyro-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, line)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Creates the symlink `link` → `target` unless something already exists at `link`
/// (`/dev/ptmx` is a device node in devtmpfs: kept as is).
fn symlink_once(target: &str, link: &str) -> Result<(), InitError> {
    match std::os::unix::fs::symlink(target, link) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(InitError::Symlink {
            path: PathBuf::from(link),
            source,
        }),
    }
}

/// The value of `name` on the kernel command line (`/proc/cmdline`): `Some("")` for a
/// bare flag, the last occurrence when repeated, quotes removed.
pub fn kernel_cmdline_param(name: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline_param(&cmdline, name)
}

/// Looks `name` up in a kernel command line, with the kernel's quoting rules: arguments
/// are separated by whitespace outside double quotes, and the quotes are dropped.
pub fn cmdline_param(cmdline: &str, name: &str) -> Option<String> {
    let mut found = None;
    for arg in split_cmdline(cmdline) {
        match arg.split_once('=') {
            Some((key, value)) if key == name => found = Some(value.to_owned()),
            None if arg == name => found = Some(String::new()),
            _ => {}
        }
    }
    found
}

fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    args
}

/// Parses `<unix seconds>[.<fraction>]` (as in `pyro.clock=1712345678.25`) into
/// nanoseconds since the epoch; digits past nanoseconds are ignored.
pub fn parse_unix_time(value: &str) -> Option<u128> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !all_digits(secs) || !all_digits(frac) {
        return None;
    }
    let secs: u128 = secs.parse().ok()?;
    let mut nanos: u128 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| b - b'0');
        nanos = nanos * 10 + u128::from(digit);
    }
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Sets the realtime clock to `unix_nanos` nanoseconds after the epoch.
///
/// # Errors
/// Out of range, or not permitted (`CAP_SYS_TIME`).
pub fn set_clock(unix_nanos: u128) -> io::Result<()> {
    let secs = u64::try_from(unix_nanos / 1_000_000_000)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
    // The remainder is below 10^9 and fits.
    let nanos = (unix_nanos % 1_000_000_000) as u32;
    sys::set_realtime_clock(Duration::new(secs, nanos))
}

/// Mixes `bytes` into the kernel's entropy pool and credits them (`RNDADDENTROPY`), so
/// that `getrandom` does not block and clones restored from one snapshot diverge.
///
/// # Errors
/// When `/dev/urandom` cannot be written or the credit is refused (`CAP_SYS_ADMIN`).
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    let mut random = OpenOptions::new().write(true).open("/dev/urandom")?;
    random.write_all(bytes)?;
    sys::credit_entropy(&random, bytes)
}

/// Syncs and powers the guest off. Outside PID 1 (tests, development) it just exits.
pub fn poweroff() -> ! {
    shutdown(libc::RB_POWER_OFF)
}

/// Syncs and reboots the guest (under Firecracker with `reboot=k`, the VM ends).
/// Outside PID 1 it just exits.
pub fn reboot() -> ! {
    shutdown(libc::RB_AUTOBOOT)
}

fn shutdown(cmd: libc::c_int) -> ! {
    sys::sync();
    if sys::getpid() == 1 {
        let err = sys::reboot(cmd);
        eprintln!("pyro-init: reboot({cmd:#x}) failed: {err}");
        if cmd != libc::RB_AUTOBOOT {
            let err = sys::reboot(libc::RB_AUTOBOOT);
            eprintln!("pyro-init: reboot(RB_AUTOBOOT) failed: {err}");
        }
        // Exiting PID 1 panics the kernel, which with `panic=-1` ends the VM.
    }
    std::process::exit(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn read_id(path: &Path) -> String {
        let id = std::fs::read_to_string(path).unwrap();
        assert_eq!(id.len(), 33, "{id:?}");
        assert!(id.ends_with('\n'));
        let hex = id.trim_end();
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{hex}"
        );
        assert_eq!(&hex[12..13], "4", "a version 4 UUID: {hex}");
        id
    }

    #[test]
    fn a_machine_id_is_created_when_missing_or_empty_and_replaced_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        assert!(write_machine_id(&path, MachineId::IfMissing).unwrap());
        let first = read_id(&path);
        // A boot keeps an existing id.
        assert!(!write_machine_id(&path, MachineId::IfMissing).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        // An empty ("uninitialized") one is filled in.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(write_machine_id(&path, MachineId::IfMissing).unwrap());
        let second = read_id(&path);
        assert_ne!(second, first);
        // A clone always gets a new one, overwritten in place or, from an id of another
        // length, truncated first.
        assert!(write_machine_id(&path, MachineId::Replace).unwrap());
        assert_ne!(read_id(&path), second);
        for odd in ["0123456789abcdef0123456789abcdef0123456789\n", "x\n"] {
            std::fs::write(&path, odd).unwrap();
            assert!(write_machine_id(&path, MachineId::Replace).unwrap());
            read_id(&path);
        }
        // Neither follows a symlink nor touches a directory.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(!write_machine_id(&link, MachineId::Replace).unwrap());
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(!write_machine_id(&sub, MachineId::IfMissing).unwrap());
        assert!(sub.is_dir());
    }

    #[test]
    fn cmdline_lookup() {
        let line = "console=ttyS0 panic=-1 quiet pyro.clock=1712345678.5 \
                    pyro.msg=\"hello world\" \"pyro.q=a b\" pyro.flag x=1 x=2\n";
        assert_eq!(
            cmdline_param(line, "pyro.clock").as_deref(),
            Some("1712345678.5")
        );
        assert_eq!(
            cmdline_param(line, "pyro.msg").as_deref(),
            Some("hello world")
        );
        assert_eq!(cmdline_param(line, "pyro.q").as_deref(), Some("a b"));
        assert_eq!(cmdline_param(line, "pyro.flag").as_deref(), Some(""));
        assert_eq!(cmdline_param(line, "quiet").as_deref(), Some(""));
        assert_eq!(cmdline_param(line, "x").as_deref(), Some("2"));
        assert_eq!(cmdline_param(line, "panic").as_deref(), Some("-1"));
        assert_eq!(cmdline_param(line, "pyro"), None);
        assert_eq!(cmdline_param(line, "console=ttyS0"), None);
        assert_eq!(cmdline_param("", "x"), None);
    }

    #[test]
    fn unix_time_parsing() {
        assert_eq!(parse_unix_time("0"), Some(0));
        assert_eq!(parse_unix_time("12"), Some(12_000_000_000));
        assert_eq!(parse_unix_time("12.5"), Some(12_500_000_000));
        assert_eq!(parse_unix_time("12."), Some(12_000_000_000));
        assert_eq!(parse_unix_time("1.000000001"), Some(1_000_000_001));
        assert_eq!(parse_unix_time("1.0000000019"), Some(1_000_000_001));
        for bad in ["", ".5", "-1", "1.5.2", "1e9", "abc", " 1", "1,5"] {
            assert_eq!(parse_unix_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn module_list_parsing() {
        let list = "# comment\nvirtio_ring.ko\n\n  virtio.ko  \nkernel/fs/ext4.ko.xz\n../evil.ko\n/abs.ko\n";
        let names: Vec<&str> = module_names(list).collect();
        assert_eq!(
            names,
            ["virtio_ring.ko", "virtio.ko", "kernel/fs/ext4.ko.xz"]
        );
    }

    #[test]
    fn missing_module_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_modules(&dir.path().join("none"), dir.path()).unwrap(),
            0
        );
    }

    #[test]
    fn missing_module_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let order = dir.path().join("modules.order");
        fs::write(&order, "absent_module.ko\n").unwrap();
        let err = load_modules(&order, dir.path()).unwrap_err();
        assert!(
            matches!(&err, InitError::Module { name, .. } if name == "absent_module.ko"),
            "{err:?}"
        );
        assert!(err.to_string().contains("absent_module.ko"));
    }

    #[test]
    fn label_parsing() {
        let mut sb = vec![0u8; 0x100];
        assert_eq!(ext4_label(&sb), None);
        sb[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        assert_eq!(ext4_label(&sb), None);
        sb[LABEL_AT..LABEL_AT + 6].copy_from_slice(b"pyro-x");
        assert_eq!(ext4_label(&sb).as_deref(), Some("pyro-x"));
        sb[LABEL_AT..LABEL_AT + 16].copy_from_slice(b"0123456789abcdef");
        assert_eq!(ext4_label(&sb).as_deref(), Some("0123456789abcdef"));
        assert_eq!(ext4_label(&sb[..0x40]), None);
    }

    /// Makes an ext4 image with `mkfs.ext4 -L label` (through the reaper, as this test
    /// binary has reapers running).
    async fn make_ext4(path: &Path, label: &str) {
        crate::reaper::start().unwrap();
        let mut cmd = std::process::Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-L", label])
            .arg(path)
            .arg("8M")
            .env("PATH", crate::exec::BASE_PATH)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let child = crate::reaper::spawn(cmd).expect("mkfs.ext4 is needed for this test");
        assert!(child.exit.await.success());
    }

    #[tokio::test]
    async fn label_of_real_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        make_ext4(&image, "pyro-test").await;
        assert_eq!(
            read_ext4_label(&image).unwrap().as_deref(),
            Some("pyro-test")
        );

        let not_ext4 = dir.path().join("zeros");
        fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
        assert_eq!(read_ext4_label(&not_ext4).unwrap(), None);
        fs::write(&not_ext4, b"short").unwrap();
        assert!(read_ext4_label(&not_ext4).is_err());
    }

    #[tokio::test]
    async fn disks_found_by_label_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys_block = dir.path().join("sys-block");
        let dev = dir.path().join("dev");
        fs::create_dir_all(&sys_block).unwrap();
        fs::create_dir_all(&dev).unwrap();
        // vda carries the upper label, vdb the rootfs one: order must not matter.
        make_ext4(&dev.join("vda"), UPPER_LABEL).await;
        make_ext4(&dev.join("vdb"), ROOTFS_LABEL).await;
        fs::write(dev.join("vdc"), vec![0u8; 4096]).unwrap();
        for name in ["vda", "vdb", "vdc", "loop0"] {
            fs::create_dir(sys_block.join(name)).unwrap();
        }
        let found = find_disks_in(
            &sys_block,
            &dev,
            &[ROOTFS_LABEL, UPPER_LABEL],
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(found[ROOTFS_LABEL], dev.join("vdb"));
        assert_eq!(found[UPPER_LABEL], dev.join("vda"));

        let err = find_disks_in(&sys_block, &dev, &["pyro-other"], Duration::from_millis(50))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pyro-other"), "{msg}");
        assert!(msg.contains("vdb=pyro-rootfs"), "{msg}");
        assert!(msg.contains("vdc=(none)"), "{msg}");
    }

    #[test]
    fn stage1_refuses_outside_pid1() {
        assert!(matches!(run_stage1(), Err(InitError::NotPid1 { .. })));
    }

    #[test]
    fn mount_point_detection() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self")));
    }
}
