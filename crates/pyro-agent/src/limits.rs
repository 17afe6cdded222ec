//! Keeping the agent answering while commands overload the guest.
//!
//! Commands run as root and may do anything, a fork bomb or a memory bomb included. The
//! agent must still answer the host, so that the host can tell what happened and the
//! guest can be stopped or reset. As PID 1 the agent therefore mounts the cgroup v2
//! hierarchy at [`CGROUP_MOUNT`] and runs every command it starts in one cgroup,
//! [`COMMANDS_CGROUP`], whose limits leave room for itself (see [`Limits::for_machine`]):
//!
//! - `pids.max`: half the kernel's `threads-max`, so a fork bomb stops at that many tasks
//!   while the agent can still create threads and processes (`RLIMIT_NPROC` does not bind
//!   root);
//! - `memory.max`: the machine's memory less a reserve, so a memory bomb is killed by the
//!   cgroup's OOM killer before the whole guest thrashes (the agent's pages stay resident);
//! - `cpu.weight`: the commands together get a third of a busy CPU against the agent,
//!   however many processes they run.
//!
//! Each command gets a cgroup of its own below that one ([`CommandCgroup`]): commands
//! share the CPU as cgroups, not per process, so a command started while a fork bomb of an
//! earlier one still churns gets as much CPU as the whole bomb; each may have half of the
//! tasks, so such a command can still fork; and a timed-out command is killed all at once
//! with `cgroup.kill`, whatever it forked meanwhile. Cgroups are made ahead of time and
//! removed once nothing runs in them, by a housekeeping thread woken after each command's
//! reply ([`tidy`]), so that neither is on the path of an exec (processes a command leaves
//! behind keep its cgroup until they end).
//!
//! A command is started inside its cgroup by the kernel (`clone3(CLONE_INTO_CGROUP)` with
//! a descriptor of the cgroup's directory, see [`crate::spawn`]); where that is refused, it
//! joins its cgroup between `fork` and `exec` ([`join`]), through a descriptor of its
//! `cgroup.procs` opened beforehand. Either way nothing it runs escapes by being quick.
//! Everything here is best effort: a kernel without cgroup v2 or one of the controllers
//! runs commands without that limit, and says so on the console.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};

use crate::sys;

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup every command runs in.
pub const COMMANDS_CGROUP: &str = "/sys/fs/cgroup/pyro-commands";

/// `cpu.weight` of [`COMMANDS_CGROUP`]: against the agent (a task of the root cgroup,
/// which weighs as much as a cgroup of weight 100) the commands get a third of a CPU
/// that both want.
pub const COMMANDS_CPU_WEIGHT: u64 = 50;

/// Memory kept out of the commands' reach at least, bytes.
const MIN_RESERVE: u64 = 64 << 20;
/// Memory kept out of the commands' reach at most, bytes.
const MAX_RESERVE: u64 = 256 << 20;
/// Fewest tasks the commands may have, whatever the machine.
const MIN_PIDS: u64 = 256;

/// The cgroup below [`COMMANDS_CGROUP`] of commands whose own cgroup could not be made (a
/// cgroup with controllers enabled for its children may hold no process itself).
const SHARED: &str = "shared";

/// Prefix of the name of a command's cgroup below [`COMMANDS_CGROUP`].
const COMMAND_PREFIX: &str = "cmd-";

/// The commands' shared cgroup (`COMMANDS_CGROUP/shared`), opened by [`setup`], with the
/// limits set on [`COMMANDS_CGROUP`].
static PROCS: OnceLock<(Opened, Limits)> = OnceLock::new();

/// A cgroup opened for starting processes in it: its `cgroup.procs` for writing (for
/// [`join`]) and its directory (for `clone3(CLONE_INTO_CGROUP)`).
#[derive(Debug)]
struct Opened {
    procs: OwnedFd,
    dir: OwnedFd,
}

impl Opened {
    fn open(dir: &Path) -> io::Result<Self> {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)?;
        Ok(Self {
            procs: OwnedFd::from(procs),
            dir: OwnedFd::from(dir),
        })
    }
}

/// Number of the next command's cgroup.
static NEXT_COMMAND: AtomicU64 = AtomicU64::new(1);

/// Numbers of the command cgroups that a [`CommandCgroup`] still holds (never swept).
static LIVE: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// A command cgroup made ahead of time, off the path of an exec: making one (and removing
/// the last one's) costs milliseconds under emulation, which every command would otherwise
/// wait for.
static SPARE: Mutex<Option<CommandCgroup>> = Mutex::new(None);

/// Nice value of the housekeeping thread (see [`tidy`]).
const HOUSEKEEPING_NICE: i32 = 19;

/// Wakes the thread that runs [`housekeep`] (see [`tidy`]).
static WORKER: OnceLock<mpsc::SyncSender<()>> = OnceLock::new();

/// The limits of [`COMMANDS_CGROUP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `pids.max`: tasks (processes and threads) of all commands together.
    pub pids_max: u64,
    /// `memory.max`, bytes.
    pub memory_max: u64,
    /// `cpu.weight`.
    pub cpu_weight: u64,
}

impl Limits {
    /// The limits for a machine with `mem_total` bytes of memory whose kernel allows
    /// `threads_max` tasks: half the tasks, and the memory less 1/16 of it (at least
    /// 64 MiB, at most 256 MiB).
    pub fn for_machine(mem_total: u64, threads_max: u64) -> Self {
        let reserve = (mem_total / 16).clamp(MIN_RESERVE, MAX_RESERVE);
        Self {
            pids_max: (threads_max / 2).max(MIN_PIDS),
            memory_max: mem_total.saturating_sub(reserve).max(MIN_RESERVE),
            cpu_weight: COMMANDS_CPU_WEIGHT,
        }
    }
}

/// Reads `MemTotal` (bytes) from the text of `/proc/meminfo`.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_ascii_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Mounts the cgroup v2 hierarchy (unless it already is), enables the `cpu`, `memory` and
/// `pids` controllers below its root, creates [`COMMANDS_CGROUP`] with [`Limits`] for this
/// machine, and keeps its `cgroup.procs` open for [`join`]. Returns the limits it set and
/// the problems it met (each a line for the console); commands run limited by whatever
/// could be set.
///
/// # Errors
/// When the hierarchy cannot be mounted or the cgroup cannot be created or opened: then
/// commands run in the root cgroup, without limits.
pub fn setup() -> io::Result<(Limits, Vec<String>)> {
    let mount = Path::new(CGROUP_MOUNT);
    if !mount.join("cgroup.controllers").exists() {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount(Some("cgroup2"), mount, Some("cgroup2"), flags, None).map_err(|e| {
            io::Error::new(e.kind(), format!("mounting cgroup2 on {CGROUP_MOUNT}: {e}"))
        })?;
    }
    let mut problems = Vec::new();
    enable_controllers(mount, &mut problems);
    let dir = Path::new(COMMANDS_CGROUP);
    create_cgroup(dir)?;
    // Below it, commands get cgroups of their own, limited in turn.
    enable_controllers(dir, &mut problems);
    let shared = dir.join(SHARED);
    create_cgroup(&shared)?;
    let mem_total = fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(parse_mem_total)
        .unwrap_or(0);
    let threads_max = fs::read_to_string("/proc/sys/kernel/threads-max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let limits = Limits::for_machine(mem_total, threads_max);
    let settings = [
        ("pids.max", limits.pids_max, threads_max > 0),
        ("memory.max", limits.memory_max, mem_total > 0),
        ("cpu.weight", limits.cpu_weight, true),
    ];
    for (file, value, known) in settings {
        if !known {
            problems.push(format!(
                "{file} left unlimited: the machine's size is unknown"
            ));
            continue;
        }
        if let Err(e) = fs::write(dir.join(file), value.to_string()) {
            problems.push(format!("cannot set {file} to {value}: {e}"));
        }
    }
    let opened = Opened::open(&shared).map_err(|e| {
        io::Error::new(e.kind(), format!("opening {COMMANDS_CGROUP}/{SHARED}: {e}"))
    })?;
    // A second call keeps the first descriptors; both name the same cgroup.
    let _ = PROCS.set((opened, limits));
    // The first command's cgroup, made while the agent starts.
    tidy();
    Ok((limits, problems))
}

/// The descriptor of the commands' shared cgroup (`COMMANDS_CGROUP/shared`, for a command
/// whose own cgroup could not be made) for [`join`], once [`setup`] has succeeded.
pub fn commands_procs() -> Option<RawFd> {
    PROCS.get().map(|(opened, _)| opened.procs.as_raw_fd())
}

/// The directory descriptor of the same shared cgroup, for `clone3(CLONE_INTO_CGROUP)`.
pub fn commands_dir() -> Option<RawFd> {
    PROCS.get().map(|(opened, _)| opened.dir.as_raw_fd())
}

/// The cgroup of one command, `COMMANDS_CGROUP/cmd-N`: its own `pids.max` (half of the
/// commands' together), the CPU shared with other commands as one cgroup, and
/// `cgroup.kill`. Dropping it removes the cgroup if nothing runs in it any more; one that
/// is still populated is removed by a later [`CommandCgroup::create`] once it is empty.
#[derive(Debug)]
pub struct CommandCgroup {
    number: u64,
    dir: PathBuf,
    opened: Opened,
}

impl CommandCgroup {
    /// The cgroup of a new command: the spare made ahead of time when there is one, else
    /// one made now. `None` when [`setup`] did not succeed or the cgroup cannot be made: the
    /// command then runs in the commands' shared cgroup. The next spare is made by
    /// [`tidy`], once the command's reply is out.
    pub fn create() -> Option<Self> {
        PROCS.get()?;
        let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).take();
        spare.or_else(Self::make)
    }

    /// Makes a command cgroup now (after removing the empty ones of earlier commands).
    fn make() -> Option<Self> {
        let (_, limits) = PROCS.get()?;
        sweep();
        let number = NEXT_COMMAND.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(COMMANDS_CGROUP).join(format!("{COMMAND_PREFIX}{number}"));
        fs::create_dir(&dir).ok()?;
        live().get_or_insert_with(HashSet::new).insert(number);
        let cgroup = Opened::open(&dir).ok().map(|opened| Self {
            number,
            dir: dir.clone(),
            opened,
        });
        match cgroup {
            Some(cgroup) => {
                // Without its own limit the command is still bound by the commands' one.
                let _ = fs::write(
                    cgroup.dir.join("pids.max"),
                    (limits.pids_max / 2).to_string(),
                );
                Some(cgroup)
            }
            None => {
                forget(number);
                let _ = fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The descriptor for [`join`].
    pub fn procs(&self) -> RawFd {
        self.opened.procs.as_raw_fd()
    }

    /// The directory's descriptor, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn dir_fd(&self) -> RawFd {
        self.opened.dir.as_raw_fd()
    }

    /// Kills every process in the cgroup at once (`cgroup.kill`); forks racing with it
    /// are killed too. Returns whether the kernel took the request.
    pub fn kill(&self) -> bool {
        fs::write(self.dir.join("cgroup.kill"), "1").is_ok()
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        // The directory itself is removed by the next sweep ([`tidy`]), off the path of the
        // exec's reply, once nothing runs in it any more.
        forget(self.number);
    }
}

/// Housekeeping after a command, meant to be called once its reply has been sent: on a
/// thread of its own, removes the cgroups of finished commands and makes the next
/// command's cgroup ahead of time. Both cost milliseconds under emulation (the guest has
/// one vCPU), so doing them while a command starts or while its reply is on its way made
/// every exec wait for them. Does nothing before [`setup`] has succeeded.
pub fn tidy() {
    if PROCS.get().is_none() {
        return;
    }
    let worker = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let started = std::thread::Builder::new()
            .name("pyro-cgroups".into())
            .spawn(move || {
                // Below the agent's other threads: a woken worker does not preempt the
                // thread that is still writing the reply out, and runs when it is idle.
                let _ = sys::set_thread_nice(HOUSEKEEPING_NICE);
                while rx.recv().is_ok() {
                    housekeep();
                }
            });
        // Without the thread the receiver is gone and requests are served inline below.
        drop(started);
        tx
    });
    match worker.try_send(()) {
        // Full: a request is already waiting, which this one joins.
        Ok(()) | Err(mpsc::TrySendError::Full(())) => {}
        Err(mpsc::TrySendError::Disconnected(())) => housekeep(),
    }
}

/// Sweeps, and makes a spare command cgroup unless there is one.
fn housekeep() {
    let has_spare = SPARE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some();
    if has_spare {
        sweep();
        return;
    }
    // `make` sweeps first.
    let next = CommandCgroup::make();
    let mut slot = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = next;
    }
    // Else a command took the slot's spare and another was made meanwhile: the extra one
    // is dropped and swept later.
}

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<u64>>> {
    // Single inserts and removes cannot leave the set inconsistent.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn forget(number: u64) {
    if let Some(set) = live().as_mut() {
        set.remove(&number);
    }
}

/// Removes the cgroups of finished commands that nothing runs in any more.
fn sweep() {
    let Ok(entries) = fs::read_dir(COMMANDS_CGROUP) else {
        return;
    };
    let held: HashSet<u64> = live().clone().unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(COMMAND_PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number
            && !held.contains(&number)
        {
            // EBUSY while populated: left for a later sweep.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Enables the `cpu`, `memory` and `pids` controllers for the children of `dir`, noting
/// those that cannot be.
fn enable_controllers(dir: &Path, problems: &mut Vec<String>) {
    for controller in ["+cpu", "+memory", "+pids"] {
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), controller) {
            problems.push(format!(
                "cannot enable the {controller} controller in {}: {e}",
                dir.display()
            ));
        }
    }
}

/// Creates the cgroup `dir` unless it exists.
fn create_cgroup(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", dir.display()),
        )),
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`
/// (writing `0` there names the writer). Async-signal-safe: meant for the child between
/// `fork` and `exec`.
///
/// # Errors
/// The write's error (the cgroup was removed, or the kernel refused).
pub fn join(procs: RawFd) -> io::Result<()> {
    sys::write_raw(procs, b"0").map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_room_for_the_agent() {
        // The default workspace: 1 GiB guest (MemTotal about 961 MiB), threads-max 7573.
        let l = Limits::for_machine(983_876 * 1024, 7573);
        assert_eq!(l.pids_max, 3786);
        assert_eq!(l.memory_max, 983_876 * 1024 - (64 << 20));
        assert_eq!(l.cpu_weight, COMMANDS_CPU_WEIGHT);
        // Big machines keep at most 256 MiB back.
        let l = Limits::for_machine(32 << 30, 250_000);
        assert_eq!(l.memory_max, (32 << 30) - (256 << 20));
        assert_eq!(l.pids_max, 125_000);
        // Tiny or unknown ones still get usable values.
        let l = Limits::for_machine(0, 0);
        assert_eq!(l.pids_max, MIN_PIDS);
        assert_eq!(l.memory_max, MIN_RESERVE);
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:         983876 kB\nMemFree:          800000 kB\n";
        assert_eq!(parse_mem_total(text), Some(983_876 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
    }
}
