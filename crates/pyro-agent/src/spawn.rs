//! Starting a command straight into its cgroup, the way `posix_spawn` starts a process:
//! `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`.
//!
//! `std::process::Command` forks (copying the agent's page tables, then paying for
//! copy-on-write faults in the agent's running threads) and the child then moves itself
//! into its cgroup by writing `cgroup.procs`. Under emulation (QEMU/TCG) both are
//! milliseconds, on the path of every exec. Here the child shares the agent's memory
//! until it calls `execve` (the calling thread is suspended meanwhile, as with `vfork`),
//! and the kernel creates it inside its cgroup, so nothing it runs is ever outside it.
//!
//! The child runs on a stack of its own and only makes system calls: it resets signal
//! handlers to their defaults (and `SIGPIPE`, which the Rust runtime ignores), clears the
//! signal mask, starts a new session, installs its stdio, changes directory and execs.
//! When one of those fails, it leaves the error number where the parent reads it and
//! exits; the parent reaps it and returns the error.
//!
//! [`spawn`] returns `ENOSYS` where this is not available (another architecture, or a
//! kernel older than 5.7, which reports `ENOSYS`, `E2BIG` or `EINVAL`): the caller then
//! falls back to `std::process::Command`.

use std::ffi::{CStr, CString, c_char, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack: it calls a handful of system call wrappers, nothing more.
const STACK_SIZE: usize = 64 * 1024;

/// `struct clone_args` of `clone3(2)` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What to start.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The executable, an absolute path.
    pub program: &'a CStr,
    /// `argv`, `argv[0]` first.
    pub argv: &'a [CString],
    /// The whole environment, `NAME=value` each.
    pub envp: &'a [CString],
    /// The working directory.
    pub cwd: &'a CStr,
    /// Give the child a pipe as stdin (else `/dev/null`).
    pub stdin_piped: bool,
    /// A descriptor of the cgroup directory to start the child in.
    pub cgroup: Option<RawFd>,
}

/// A started child: its pid and the parent's ends of its pipes.
#[derive(Debug)]
pub struct Started {
    /// Process id.
    pub pid: i32,
    /// Write end of its stdin, when piped.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

/// What the child needs, prepared by the parent (the child may not allocate).
struct ChildArgs {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// The descriptors to install as 0, 1 and 2 (all at least 3).
    stdio: [RawFd; 3],
    /// Set by the child when it fails before or in `execve`.
    errno: i32,
}

/// Why [`spawn`] started nothing.
#[derive(Debug)]
pub enum Error {
    /// `clone3` refused: `ENOSYS` when this way of starting is unavailable (see the module
    /// documentation), else for instance `EAGAIN` when the cgroup is at its `pids.max`.
    /// Starting the command another way may still work.
    Clone(io::Error),
    /// The pipes could not be made, or the child failed before running the program (the
    /// error of `execve`, `chdir`...).
    Start(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Start(e)
    }
}

/// Starts `launch` in a new session, with the pipes [`Started`] returns. Blocks until the
/// child has called `execve` (or failed to).
///
/// # Errors
/// See [`Error`].
pub fn spawn(launch: &Launch<'_>) -> Result<Started, Error> {
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (stdin_parent, stdin_child) = if launch.stdin_piped {
        let (r, w) = pipe()?;
        (Some(w), r)
    } else {
        let null = std::fs::File::open("/dev/null")?;
        (None, OwnedFd::from(null))
    };
    // The child's ends must not be 0, 1 or 2, or installing one could overwrite another.
    let stdin_child = above_stdio(stdin_child)?;
    let stdout_w = above_stdio(stdout_w)?;
    let stderr_w = above_stdio(stderr_w)?;

    let argv: Vec<*const c_char> = launch
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const c_char> = launch
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut args = ChildArgs {
        program: launch.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: launch.cwd.as_ptr(),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ],
        errno: 0,
    };
    let pid = clone_vfork(&mut args, launch.cgroup).map_err(Error::Clone)?;
    // The child has exec'd or exited: its ends are closed here (they are close-on-exec in
    // it, and installed as its stdio).
    drop((stdin_child, stdout_w, stderr_w));
    if args.errno != 0 {
        reap(pid);
        return Err(Error::Start(io::Error::from_raw_os_error(args.errno)));
    }
    Ok(Started {
        pid,
        stdin: stdin_parent,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// Reaps a child that failed before running its program (the caller holds the reaper's
/// registry, so the reaper cannot take it first).
fn reap(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd`, or a close-on-exec duplicate of it numbered 3 or more when it is 0, 1 or 2.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor, with an integer argument.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// `clone3` with `CLONE_VM | CLONE_VFORK` (and `CLONE_INTO_CGROUP` with `cgroup`), the
/// child running [`child_main`] on a stack of its own. Returns the child's pid once it has
/// exec'd or exited, with every signal blocked in this thread meanwhile.
#[cfg(target_arch = "x86_64")]
fn clone_vfork(args: &mut ChildArgs, cgroup: Option<RawFd>) -> io::Result<i32> {
    let mut stack = vec![0u8; STACK_SIZE];
    let base = stack.as_mut_ptr() as u64;
    // The kernel starts the child with its stack pointer at `stack + stack_size`, which
    // the ABI wants 16-byte aligned.
    let top = (base + STACK_SIZE as u64) & !15;
    let mut flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    let mut cgroup_fd = 0;
    if let Some(fd) = cgroup {
        flags |= CLONE_INTO_CGROUP;
        cgroup_fd = u64::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    }
    let clone_args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        stack: base,
        stack_size: top - base,
        cgroup: cgroup_fd,
        ..CloneArgs::default()
    };
    let blocked = BlockSignals::new()?;
    let ret: i64;
    let arg: *mut ChildArgs = args;
    let entry: extern "C" fn(*mut c_void) -> ! = child_main;
    // SAFETY: clone3 with CLONE_VM | CLONE_VFORK: this thread is suspended until the child
    // has exec'd or exited, so the stack buffer, `clone_args` and everything `args` points
    // to stay alive and untouched by this thread meanwhile, and no other thread uses them.
    // In the parent the syscall clobbers only rax (the result), rcx and r11. In the child
    // (rax = 0) the stack pointer is the new, aligned stack top; it calls `child_main`,
    // which never returns, with `args` (r12), so it never runs the parent's code after the
    // syscall on a stack it does not own. The asm may read and write memory (the child
    // writes `args.errno`), which is what the compiler assumes without `nomem`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &raw const clone_args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    drop(blocked);
    drop(stack);
    if ret < 0 {
        let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
        // Kernels without clone3 (< 5.3) or without CLONE_INTO_CGROUP (< 5.7).
        let errno = match errno {
            libc::E2BIG | libc::EINVAL if cgroup.is_some() => libc::ENOSYS,
            e => e,
        };
        return Err(io::Error::from_raw_os_error(errno));
    }
    i32::try_from(ret).map_err(|_| io::Error::other("clone3 returned a bad pid"))
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_vfork(_args: &mut ChildArgs, _cgroup: Option<RawFd>) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Every signal blocked in the calling thread until dropped (then the previous mask): the
/// child starts with them blocked, so no handler of the agent runs in it before it has
/// reset them.
struct BlockSignals {
    old: libc::sigset_t,
}

impl BlockSignals {
    fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask get valid pointers
        // to sets that outlive the calls.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let ret = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if ret != 0 {
                return Err(io::Error::from_raw_os_error(ret));
            }
            Ok(Self { old })
        }
    }
}

impl Drop for BlockSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`, a valid sigset_t.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// The child, between `clone3` and `execve`. It shares the agent's memory, so it only
/// makes system calls, through async-signal-safe wrappers, on what the parent prepared;
/// it allocates nothing and never returns.
extern "C" fn child_main(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the `ChildArgs` of the suspended parent thread (see `clone_vfork`),
    // valid and used by nobody else until this child execs or exits. Each call below gets
    // pointers to valid, NUL-terminated strings and NULL-terminated arrays prepared by the
    // parent, or to local sigaction/sigset values; errno is the suspended thread's.
    unsafe {
        let args = &mut *arg.cast::<ChildArgs>();
        // Handlers are the agent's code: back to the defaults before any signal gets
        // through. SIGPIPE too, which the Rust runtime ignores and exec would keep ignored.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE
                || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
            {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let ok = libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == 0
            && libc::setsid() != -1
            && libc::dup2(args.stdio[0], 0) != -1
            && libc::dup2(args.stdio[1], 1) != -1
            && libc::dup2(args.stdio[2], 2) != -1
            && libc::chdir(args.cwd) != -1;
        if ok {
            libc::execve(args.program, args.argv, args.envp);
        }
        let errno = *libc::__errno_location();
        // Read by the parent once it resumes, after this child has exited.
        std::ptr::write_volatile(
            &raw mut args.errno,
            if errno == 0 { libc::EIO } else { errno },
        );
        libc::_exit(127)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Read;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn run(program: &str, argv: &[&str], cwd: &str) -> Result<(i32, String), Error> {
        let program = c(program);
        let argv: Vec<CString> = argv.iter().map(|a| c(a)).collect();
        let envp = vec![c("PATH=/usr/bin:/bin"), c("PYRO_TEST=1")];
        let cwd = c(cwd);
        let started = spawn(&Launch {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: &cwd,
            stdin_piped: false,
            cgroup: None,
        })?;
        let mut out = String::new();
        std::fs::File::from(started.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let mut status = 0;
        // SAFETY: test code; `status` is a valid c_int. A reaper of another test in this
        // process may have taken the status first (then no code is checked).
        if unsafe { libc::waitpid(started.pid, &mut status, 0) } != started.pid {
            status = -1 << 8;
        }
        Ok((status >> 8, out))
    }

    #[test]
    fn runs_in_a_new_session_with_the_given_environment_and_cwd() {
        let (code, out) = run(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "echo $PYRO_TEST; pwd; set -- $(cat /proc/$$/stat); echo $6; echo $$; exit 3",
            ],
            "/tmp",
        )
        .unwrap();
        assert!(code == 3 || code == -1, "{code}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "1");
        assert_eq!(lines[1], "/tmp");
        // The session id is the shell's pid.
        assert_eq!(lines[2], lines[3]);
    }

    #[test]
    fn exec_and_chdir_failures_are_errors() {
        let errno = |r: Result<(i32, String), Error>| match r {
            Err(Error::Start(e)) => e.raw_os_error(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            errno(run("/nonexistent/program", &["x"], "/")),
            Some(libc::ENOENT)
        );
        assert_eq!(errno(run("/etc/passwd", &["x"], "/")), Some(libc::EACCES));
        let r = run("/bin/true", &["true"], "/nonexistent-dir");
        assert_eq!(errno(r), Some(libc::ENOENT));
    }

    #[test]
    fn sigpipe_is_default_in_the_child() {
        let (_, out) = run(
            "/bin/sh",
            &["sh", "-c", "grep SigIgn /proc/self/status"],
            "/",
        )
        .unwrap();
        let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }
}
