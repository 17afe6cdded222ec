//! The processes a workspace leaves running (its VMM, QEMU's relay, the TTL watchdog), found
//! whether or not any record names them.
//!
//! A boot notes its machine's [`MachineRecord`] in [`MACHINE_FILE`] in the workspace's
//! directory, atomically, as soon as the VMM runs and before anything waits on the guest;
//! the workspace's halt ends that machine through its backend even when the store never
//! recorded it. A process that outlived the pyro process that started it before even that
//! (killed between the VMM's spawn and the write) is found by a scan of `/proc`, the safety
//! net for processes nobody recorded: a process belongs to the workspace only when it is
//! one of the programs pyro starts for workspaces *and* it is tied to this workspace's
//! directory:
//!
//! - a VMM (`qemu-system-*`, `firecracker`, `jailer`, the configured QEMU binary, or with
//!   the `fake-backend` feature `pyro-agent`) whose working directory, or one of whose open
//!   files, is inside the workspace's directory;
//! - a relay, `pyro __relay DIR` with `DIR` inside the workspace's directory;
//! - a watchdog, `pyro __watchdog ID` with this workspace's id, working in its directory.
//!
//! A deleted directory still counts (the kernel shows it as `PATH (deleted)`), so a VMM whose
//! `vm/` directory was removed under it is found too. Nothing else (a shell whose working
//! directory happens to be there, another pyro command waiting for the workspace's lock) is
//! ever a match, and every kill re-checks the process's start time first.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::WorkspaceRecord;
use crate::backend::MachineRecord;
use crate::error::{CoreError, Result};
use crate::lock::{self, LockMode};
use crate::{Pyro, host};

/// The file in a workspace's directory holding the [`MachineRecord`] of its current (or
/// last) boot, as JSON.
pub(super) const MACHINE_FILE: &str = "machine.json";
/// The lock a workspace's TTL watchdog holds for its whole life: free means none runs.
pub(super) const WATCHDOG_LOCK: &str = "watchdog.lock";
/// How long a workspace directory without a store record is left alone (a `create` makes
/// the directory, then takes its lock, then records it).
pub(super) const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// How long [`end_all`] waits for killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What a process of a workspace is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The VMM (QEMU, Firecracker or its jailer).
    Vmm,
    /// QEMU's `pyro __relay` process.
    Relay,
    /// The `pyro __watchdog` process.
    Watchdog,
}

/// One live process of a workspace; pid and start time identify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WsProcess {
    /// The pid.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub ticks: u64,
    /// What it is.
    pub role: Role,
}

/// Notes the machine of a boot in `root`'s [`MACHINE_FILE`], atomically.
pub(super) fn note_machine(root: &Path, machine: &MachineRecord) -> Result<()> {
    let path = root.join(MACHINE_FILE);
    let tmp = root.join(format!("{MACHINE_FILE}.tmp"));
    std::fs::write(&tmp, machine.to_json()).map_err(|e| CoreError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| CoreError::io("rename", &path, e))
}

/// The machine [`MACHINE_FILE`] notes, if any (and readable).
pub(super) fn noted_machine(root: &Path) -> Option<MachineRecord> {
    let text = std::fs::read_to_string(root.join(MACHINE_FILE)).ok()?;
    MachineRecord::from_json(&text)
}

/// `path` without the ` (deleted)` the kernel appends to removed files and directories.
fn undeleted(path: PathBuf) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsString::from_vec(b.to_vec())),
        None => path,
    }
}

/// Whether `path` is one of `roots` or inside one.
fn inside(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

fn cwd_inside(pid: u32, roots: &[PathBuf]) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| inside(&undeleted(c), roots))
}

fn fd_inside(pid: u32, roots: &[PathBuf]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| t.is_absolute() && inside(&undeleted(t), roots))
    })
}

/// Whether `pid` runs a VMM binary.
fn is_vmm(pid: u32, vmm_bins: &[PathBuf]) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = undeleted(exe);
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::backend::BackendKind::is_vmm_process_name(&name) || vmm_bins.contains(&exe)
}

/// The configured VMM binaries (resolved), beyond the well-known names.
fn vmm_bins() -> Vec<PathBuf> {
    pyro_qemu::locate_qemu()
        .ok()
        .and_then(|q| q.canonicalize().ok())
        .into_iter()
        .collect()
}

/// Every live process that belongs to the workspace `id` whose directory is `root`, except
/// this process.
pub(super) fn find(root: &Path, id: &str) -> Vec<WsProcess> {
    let mut roots = vec![root.to_path_buf()];
    if let Ok(c) = root.canonicalize()
        && c != root
    {
        roots.push(c);
    }
    let me = std::process::id();
    let mut out: Vec<WsProcess> = Vec::new();
    let bins = vmm_bins();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || out.iter().any(|p| p.pid == pid) {
            continue;
        }
        // Gone, a zombie, or not ours to inspect.
        let Some(ticks) = host::process_start_ticks(pid) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let arg = |i: usize| argv.get(i).copied().unwrap_or_default();
        let role = if arg(1) == b"__relay"
            && inside(&PathBuf::from(OsString::from_vec(arg(2).to_vec())), &roots)
        {
            Role::Relay
        } else if arg(1) == b"__watchdog" && arg(2) == id.as_bytes() && cwd_inside(pid, &roots) {
            Role::Watchdog
        } else if is_vmm(pid, &bins) && (cwd_inside(pid, &roots) || fd_inside(pid, &roots)) {
            Role::Vmm
        } else {
            continue;
        };
        // The pid must not have been reused while it was looked at.
        if host::process_alive(pid, ticks) {
            out.push(WsProcess { pid, ticks, role });
        }
    }
    out
}

/// Kills `procs` (watchdogs first, so none reacts to its VMM's death) and waits, up to a few
/// seconds, until they are gone (a killed VMM's disk is released only then).
pub(super) async fn end(procs: &[WsProcess]) {
    let mut ordered = procs.to_vec();
    ordered.sort_by_key(|p| match p.role {
        Role::Watchdog => 0,
        Role::Relay => 1,
        Role::Vmm => 2,
    });
    for p in &ordered {
        if host::process_alive(p.pid, p.ticks) {
            // SAFETY: kill(2) on a process identified as this workspace's by pid and start
            // time, checked just before.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while ordered.iter().any(|p| host::process_alive(p.pid, p.ticks)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends every process of the workspace `id` (see [`find`]), scanning again until none is
/// left (a process may be spawned while it is looked for); forgets [`MACHINE_FILE`].
/// Returns what was ended.
pub(super) async fn end_all(root: &Path, id: &str) -> Vec<WsProcess> {
    let mut ended = Vec::new();
    for _ in 0..3 {
        let found = find(root, id);
        if found.is_empty() {
            break;
        }
        end(&found).await;
        ended.extend(found);
    }
    let _ = std::fs::remove_file(root.join(MACHINE_FILE));
    ended
}

/// Whether `name` is a workspace id (as [`host::new_id`] makes them).
pub(super) fn is_id(name: &str) -> bool {
    name.len() == 12
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Pyro {
    /// Ends the TTL watchdog(s) of workspace `id`, if any runs.
    pub(super) async fn end_watchdogs(&self, id: &str) {
        let d = self.ws_dirs(id);
        let dogs: Vec<WsProcess> = find(&d.root, id)
            .into_iter()
            .filter(|p| p.role == Role::Watchdog)
            .collect();
        end(&dogs).await;
    }

    /// Starts the TTL watchdog of a started workspace unless one runs (one killed is
    /// replaced by the next operation on the workspace).
    pub(super) fn ensure_watchdog(&self, rec: &WorkspaceRecord) {
        if rec.machine.is_none() {
            return;
        }
        let path = self.ws_dirs(&rec.id).root.join(WATCHDOG_LOCK);
        if let Ok(Some(free)) = lock::try_lock(&path, LockMode::Exclusive) {
            drop(free);
            self.spawn_watchdog(&rec.id);
        }
    }

    /// For a workspace recorded as not running: ends any process of it that still runs,
    /// unless another pyro process holds the workspace (a start, reset or delete in
    /// progress: it deals with them). Returns what to tell about it, if anything: a
    /// note to show now (busy), or whether a VMM was found and ended.
    pub(super) async fn reap_unrecorded(&self, rec: &WorkspaceRecord) -> Unrecorded {
        let d = self.ws_dirs(&rec.id);
        let noted_runs = noted_machine(&d.root)
            .as_ref()
            .map(crate::backend::attach)
            .is_some_and(|mut m| m.is_alive());
        if !noted_runs && find(&d.root, &rec.id).is_empty() {
            return Unrecorded::Nothing;
        }
        match lock::try_lock(&d.lock(), LockMode::Exclusive) {
            // Under the lock nobody boots it: everything found is left over.
            Ok(Some(_guard)) => match self.halt(rec).await {
                true => Unrecorded::EndedVmm,
                false => Unrecorded::Nothing,
            },
            _ => Unrecorded::Busy,
        }
    }

    /// Removes workspace directories that no record names (a `create` killed before it
    /// recorded the workspace), once older than [`ORPHAN_GRACE`] and not locked by a live
    /// process, ending any process still tied to them first. Returns the ids removed.
    pub(super) async fn reap_orphan_dirs(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(store) = self.store() else {
            return removed;
        };
        let base = self.options().state_dir.join("workspaces");
        let Ok(entries) = std::fs::read_dir(&base) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !is_id(&name) || !matches!(store.get_workspace(&name), Ok(None)) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ORPHAN_GRACE);
            if !old {
                continue;
            }
            let d = self.ws_dirs(&name);
            // A create in progress holds the lock from before it records the workspace
            // until it is done.
            let Ok(Some(_guard)) = lock::try_lock(&d.lock(), LockMode::Exclusive) else {
                continue;
            };
            if !matches!(store.get_workspace(&name), Ok(None)) {
                continue;
            }
            if self
                .teardown(&name, None, super::Teardown::Remove)
                .await
                .is_ok()
            {
                tracing::info!(
                    workspace = name,
                    "removed the directory of an unrecorded workspace"
                );
                removed.push(name);
            }
        }
        removed
    }
}

/// What [`Pyro::reap_unrecorded`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unrecorded {
    /// Nothing ran (or only a relay or watchdog, now ended).
    Nothing,
    /// A VMM ran without a record (an interrupted start); it was ended.
    EndedVmm,
    /// Processes run, but another pyro process holds the workspace.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_paths_are_recognized() {
        assert_eq!(
            undeleted(PathBuf::from("/s/workspaces/abc/vm (deleted)")),
            PathBuf::from("/s/workspaces/abc/vm")
        );
        assert_eq!(undeleted(PathBuf::from("/a/b")), PathBuf::from("/a/b"));
        let roots = [PathBuf::from("/s/workspaces/abc")];
        assert!(inside(Path::new("/s/workspaces/abc/vm"), &roots));
        assert!(!inside(Path::new("/s/workspaces/abcd/vm"), &roots));
    }

    #[test]
    fn ids_only() {
        assert!(is_id("0123456789ab"));
        assert!(!is_id("0123456789AB"));
        assert!(!is_id("notes"));
    }

    #[test]
    fn this_process_is_never_found_and_unrelated_ones_are_not_either() {
        let dir = tempfile::tempdir().unwrap();
        // A shell working in the directory is not one of the workspace's processes.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let found = find(dir.path(), "0123456789ab");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.is_empty(), "{found:?}");
    }
}
