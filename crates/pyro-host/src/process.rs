//! Process identity and children that die with their parent.

use std::os::unix::process::CommandExt;

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`);
/// together with the pid it identifies a process even when pids are reused. `None` for a
/// process that is gone or a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is index 19 here. Zombies count as dead.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process `pid` that started at `ticks` is still alive.
pub fn alive(pid: u32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks)
}

/// Sends SIGKILL to the process `pid` that started at `ticks` (nothing if it is gone or
/// another process now has the pid) and waits up to `timeout` until it has exited. Waits
/// on a pidfd, opened before the identity check so the signal cannot reach a process that
/// reused the pid, and returns as soon as the process is gone; polls `/proc` where pidfds
/// are unavailable. Returns whether it is gone.
pub fn kill_and_wait(pid: u32, ticks: u64, timeout: std::time::Duration) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    let deadline = std::time::Instant::now() + timeout;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw >= 0 {
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        if !alive(pid, ticks) {
            return true;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on the pidfd just opened (it names exactly the process
        // checked above), no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the timeout is bounded.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(60_000) as i32) };
            if n > 0 {
                return true;
            }
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return !alive(pid, ticks);
            }
        }
    }
    if alive(pid, ticks) {
        // SAFETY: kill(2) on the process identified by pid and start time, checked just
        // before (the window for pid reuse is this one line).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    while alive(pid, ticks) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// What the child does between fork and exec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildSetup {
    /// SIGKILL the child when the thread that spawned it exits (`PR_SET_PDEATHSIG`; the
    /// child exits at once if the parent is already gone).
    pub die_with_parent: bool,
    /// Make the child the leader of a new session (`setsid`).
    pub new_session: bool,
}

impl ChildSetup {
    /// Installs the setup as a `pre_exec` step of `cmd` (std or tokio command alike, through
    /// [`CommandExt`]). Further `pre_exec` steps of the caller run after it.
    pub fn apply(self, cmd: &mut std::process::Command) {
        // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid, setsid,
        // _exit) and allocates nothing, as required between fork and exec.
        unsafe {
            cmd.pre_exec(self.hook());
        }
    }

    /// The `pre_exec` step itself, for callers that add their own work to it (it must stay
    /// async-signal-safe there too). The parent's pid is read now, before the fork.
    pub fn hook(self) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        move || {
            if self.die_with_parent {
                // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
                let r = unsafe {
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    )
                };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                // SAFETY: getppid and _exit are async-signal-safe.
                unsafe {
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
            }
            // SAFETY: setsid is async-signal-safe.
            if self.new_session && unsafe { libc::setsid() } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kill_and_wait_ends_the_process_it_names_and_nothing_else() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let ticks = start_ticks(pid).unwrap();
        // Another start time is another process, already gone: nothing is signalled.
        assert!(kill_and_wait(
            pid,
            ticks + 1,
            std::time::Duration::from_millis(50)
        ));
        assert!(alive(pid, ticks), "a wrong identity must not be killed");
        let reaper = std::thread::spawn(move || child.wait());
        let t = std::time::Instant::now();
        assert!(kill_and_wait(pid, ticks, std::time::Duration::from_secs(5)));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        reaper.join().unwrap().unwrap();
        assert!(!alive(pid, ticks));
        // A process that is gone is gone at once.
        assert!(kill_and_wait(pid, ticks, std::time::Duration::from_secs(5)));
    }

    use super::*;

    #[test]
    fn this_process_has_an_identity_and_a_dead_one_has_none() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap();
        assert!(alive(me, ticks));
        assert!(!alive(me, ticks + 1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_ticks(pid), None);
    }

    #[test]
    fn a_child_leads_its_own_session_when_asked() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "ps -o sid= -p $$; echo $$"]);
        ChildSetup {
            die_with_parent: true,
            new_session: true,
        }
        .apply(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.split_whitespace();
        let (sid, pid) = (lines.next().unwrap(), lines.next().unwrap());
        assert_eq!(sid, pid, "the child is its session's leader");
    }
}
