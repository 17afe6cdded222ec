//! Running `ip` and `nft`: argv only (never a shell), the document on stdin, failures as
//! one-line errors that name the command.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Directories searched after `PATH`: root's tools live in `sbin`, which an ordinary
/// user's `PATH` often lacks.
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Most bytes of a failed command's stderr kept in an error.
const STDERR_KEPT: usize = 400;

/// Processes started by [`run`] in this process so far.
static SPAWNED: AtomicU64 = AtomicU64::new(0);

/// How many processes this module has started in this process so far (for measuring what
/// a creation or teardown costs).
pub fn spawned() -> u64 {
    SPAWNED.load(Ordering::Relaxed)
}

/// A command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (or fed, or waited for).
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line, for people (it was run as argv).
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, for people (it was run as argv).
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stderr, on one line, cut to a few hundred bytes.
        stderr: String,
    },
}

/// Where `name` is: the first executable file of that name on `PATH` or in the `sbin`
/// directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args…`, writing `stdin` to it if given; returns its stdout.
pub fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String, CmdError> {
    run_in(None, program, args, stdin)
}

/// [`run`] inside network namespace `netns` (`None`: this thread's): the child enters it
/// itself (`setns(2)` between fork and exec) on a descriptor of `/run/netns/NAME` opened
/// before the fork. Unlike `ip netns exec`, no second process and no mount namespace.
pub fn run_in(
    netns: Option<&str>,
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, CmdError> {
    let mut command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(ns) = netns {
        command.push_str(&format!(" (in network namespace {ns})"));
    }
    let spawn = |source| CmdError::Spawn {
        command: command.clone(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Kept open (close-on-exec) until the child has exec'd: `spawn` returns only then.
    let ns_file = match netns {
        Some(ns) => Some(File::open(crate::netns::path(ns)).map_err(spawn)?),
        None => None,
    };
    if let Some(file) = &ns_file {
        let fd = file.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it calls setns(2) on a descriptor opened
        // before the fork (and still open: `ns_file` outlives `spawn`) and reads errno on
        // failure (`last_os_error` neither allocates nor locks). It touches no memory
        // shared with other threads.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().map_err(spawn)?;
    drop(ns_file);
    SPAWNED.fetch_add(1, Ordering::Relaxed);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft and `ip -batch` read the whole input before answering, so writing first
        // cannot deadlock on a full stdout pipe.
        pipe.write_all(input).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(CmdError::Failed {
        command,
        status: output.status,
        stderr: one_line(&output.stderr),
    })
}

/// Runs many `ip` commands as one process, `ip -batch -` inside namespace `netns`, one
/// command per line on stdin (each `lines` entry the argv after `ip`). `ip` stops at the first that fails; the
/// error names it (`… -batch -, line 3: addr add …`). Arguments must be plain words (no
/// whitespace, quotes, `#` or `\\`), as `ip` splits lines on whitespace.
pub fn ip_batch(ip: &Path, netns: Option<&str>, lines: &[Vec<String>]) -> Result<(), CmdError> {
    // Entered by the child itself (`run_in`): `ip -n NS` would also make a mount namespace
    // and remount `/sys` there, which these commands do not need.
    let argv = ["-batch", "-"];
    let mut input = String::new();
    for line in lines {
        if let Some(bad) = line.iter().find(|a| {
            a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'#\\".contains(c))
        }) {
            return Err(CmdError::Spawn {
                command: format!("{} {} ({})", ip.display(), argv.join(" "), line.join(" ")),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("argument {bad:?} cannot be passed in a batch"),
                ),
            });
        }
        input.push_str(&line.join(" "));
        input.push('\n');
    }
    run_in(netns, ip, &argv, Some(input.as_bytes()))
        .map(drop)
        .map_err(|err| match err {
            CmdError::Failed {
                command,
                status,
                stderr,
            } => {
                // `Command failed -:N` names the line (from 1).
                let failed = stderr
                    .rsplit_once("Command failed -:")
                    .and_then(|(_, n)| n.trim().parse::<usize>().ok())
                    .and_then(|n| lines.get(n.checked_sub(1)?));
                let command = match failed {
                    Some(line) => format!("{command}, line `{}`", line.join(" ")),
                    None => command,
                };
                CmdError::Failed {
                    command,
                    status,
                    stderr,
                }
            }
            other => other,
        })
}

/// `bytes` as one line of at most [`STDERR_KEPT`] bytes (lines joined with ` / `).
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    if line.len() > STDERR_KEPT {
        let mut cut = STDERR_KEPT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_on_one_line() {
        let sh = find_program("sh").unwrap();
        let err = run(&sh, &["-c", "echo one >&2; echo two >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("`{} -c echo one", sh.display())),
            "{text}"
        );
        assert!(text.ends_with(": one / two"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        let cat = find_program("cat").unwrap();
        assert_eq!(run(&cat, &[], Some(b"doc")).unwrap(), "doc");
        assert!(matches!(
            run(Path::new("/nonexistent/prog"), &[], None),
            Err(CmdError::Spawn { .. })
        ));
    }

    #[test]
    fn long_stderr_is_cut() {
        let line = one_line("é".repeat(500).as_bytes());
        assert!(line.len() <= STDERR_KEPT + '…'.len_utf8());
    }
}
