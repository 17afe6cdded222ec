//! Finding and running the external programs image building relies on.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use crate::error::{ImageError, Result};

/// How many trailing stderr lines an error keeps.
const TAIL_LINES: usize = 25;

/// An external program: its name and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub(crate) const MMDEBSTRAP: Tool = Tool {
    name: "mmdebstrap",
    package: "mmdebstrap",
};
pub(crate) const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
};
pub(crate) const XZ: Tool = Tool {
    name: "xz",
    package: "xz-utils",
};
pub(crate) const GZIP: Tool = Tool {
    name: "gzip",
    package: "gzip",
};
pub(crate) const ZSTD: Tool = Tool {
    name: "zstd",
    package: "zstd",
};
pub(crate) const UNSHARE: Tool = Tool {
    name: "unshare",
    package: "util-linux",
};
pub(crate) const TAR: Tool = Tool {
    name: "tar",
    package: "tar",
};
pub(crate) const NEWUIDMAP: Tool = Tool {
    name: "newuidmap",
    package: "uidmap",
};

/// Looks a program up in `PATH` (plus the sbin directories, which non-root `PATH`s often
/// lack although `mkfs.ext4` lives there).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The full path of `tool`, or [`ImageError::MissingTool`] saying what to install.
pub(crate) fn require(tool: Tool, purpose: &'static str) -> Result<PathBuf> {
    which(tool.name).ok_or(ImageError::MissingTool {
        tool: tool.name,
        package: tool.package,
        purpose,
    })
}

/// Renders how a process ended.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// The last [`TAIL_LINES`] lines of some output.
pub(crate) fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs a command to completion, stdin closed, and fails with its stderr tail unless it
/// exits 0. Returns stdout.
pub(crate) fn run(cmd: &mut Command, label: &str, hint: Option<&str>) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Spawn {
            program: label.to_owned(),
            source: e,
        })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(ImageError::CommandFailed {
        program: label.to_owned(),
        status: describe_status(out.status),
        stderr_tail: tail_of(&String::from_utf8_lossy(&out.stderr)),
        hint: hint.map(str::to_owned),
    })
}

/// Runs a command, handing each stderr line to `on_line` as it arrives (stdout is
/// discarded). Fails with the stderr tail unless it exits 0.
pub(crate) fn run_streaming(
    cmd: &mut Command,
    label: &str,
    hint: Option<&str>,
    on_line: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Spawn {
            program: label.to_owned(),
            source: e,
        })?;
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end();
            on_line(line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
        }
    }
    let status = child.wait().map_err(|e| ImageError::Spawn {
        program: label.to_owned(),
        source: e,
    })?;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::CommandFailed {
        program: label.to_owned(),
        status: describe_status(status),
        stderr_tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        hint: hint.map(str::to_owned),
    })
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes a string for a POSIX shell (and for Perl's `shellwords`, which mmdebstrap uses to
/// split its special hooks).
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-program-pyro").is_none());
        let err = require(
            Tool {
                name: "definitely-not-a-program-pyro",
                package: "pyro-nothing",
            },
            "test",
        )
        .unwrap_err();
        assert!(err.to_string().contains("apt-get install pyro-nothing"));
    }

    #[test]
    fn failures_carry_status_and_stderr_tail() {
        let err = run(
            Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"]),
            "sh",
            Some("do something"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("one\ntwo"), "{msg}");
        assert!(msg.contains("hint: do something"), "{msg}");

        let mut lines = Vec::new();
        run_streaming(
            Command::new("sh").args(["-c", "echo a >&2; echo b >&2"]),
            "sh",
            None,
            &mut |l| lines.push(l.to_owned()),
        )
        .unwrap();
        assert_eq!(lines, ["a", "b"]);
    }

    #[test]
    fn shell_quote_survives_quotes() {
        let out = run(
            Command::new("sh").args(["-c", &format!("printf %s {}", shell_quote("a 'b' $c"))]),
            "sh",
            None,
        )
        .unwrap();
        assert_eq!(out, b"a 'b' $c");
    }
}
