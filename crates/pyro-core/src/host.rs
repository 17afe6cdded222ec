//! Small host helpers: ids, process identity, the agent binary, directories.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// A random number (the kernel's `getrandom`; time and pid if that fails). Not for
/// secrets: for spreading choices such as where a search for a free index starts.
pub fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return u32::from_ne_bytes(buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    t ^ std::process::id().rotate_left(16)
}

/// A new opaque id: 12 lowercase hex characters (48 random bits).
pub fn new_id() -> String {
    let mut buf = [0u8; 6];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Fall back to time and pid; ids only need to be unique on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let v = t ^ (u64::from(std::process::id()) << 32);
        buf.copy_from_slice(&v.to_le_bytes()[..6]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The start time of a process in clock ticks since boot; with the pid it identifies a
/// process even when pids are reused ([`pyro_host::process::start_ticks`]).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    pyro_host::process::start_ticks(pid)
}

/// Whether the process `pid` that started at `ticks` is still alive.
pub fn process_alive(pid: u32, ticks: u64) -> bool {
    pyro_host::process::alive(pid, ticks)
}

/// Starts `cmd` in a new session (`setsid`), so it outlives this process and its terminal.
/// Used for the per-workspace relay and TTL watchdog processes.
pub fn spawn_detached(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    pyro_host::process::ChildSetup {
        die_with_parent: false,
        new_session: true,
    }
    .apply(cmd);
    cmd.spawn()
}

/// Pids of the processes whose working directory is `dir` or below it.
pub fn processes_with_cwd_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd"))
            && cwd.starts_with(&dir)
        {
            out.push(pid);
        }
    }
    out
}

/// Finds the static guest agent binary.
pub fn locate_agent(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else {
        if let Some(p) = std::env::var_os("PYRO_AGENT_BIN") {
            candidates.push(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            candidates.push(dir.join("pyro-agent"));
            // A cargo target dir: target/{debug,release}/pyro next to
            // target/x86_64-unknown-linux-gnu/release/pyro-agent.
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/pyro-agent"));
                candidates.push(target.join("x86_64-unknown-linux-gnu/debug/pyro-agent"));
            }
            if let Some(target) = dir.parent().and_then(Path::parent) {
                // target/debug/deps/<test binary>
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/pyro-agent"));
            }
        }
        candidates.push(PathBuf::from("/usr/local/lib/pyro/pyro-agent"));
        candidates.push(PathBuf::from("/usr/lib/pyro/pyro-agent"));
    }
    // The first static candidate wins; a dynamic one (e.g. a plain `cargo build` leaves
    // target/debug/pyro-agent) is skipped, and only reported when nothing better exists.
    let mut dynamic = None;
    for c in &candidates {
        if c.is_file() {
            if is_static_elf(c) {
                return Ok(c.clone());
            }
            dynamic.get_or_insert_with(|| c.clone());
        }
    }
    match dynamic {
        Some(path) => Err(CoreError::AgentNotStatic { path }),
        None => Err(CoreError::AgentBinaryMissing {
            searched: candidates,
        }),
    }
}

/// Whether `path` is an ELF64 executable without a program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let rd16 = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let rd64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let phoff = rd64(0x20);
    let phentsize = rd16(0x36);
    let phnum = rd16(0x38);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > data.len() {
            return false;
        }
        let p_type = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        if p_type == 3 {
            return false; // PT_INTERP
        }
    }
    true
}

/// Creates a directory (and parents) with mode 0700.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| CoreError::io("create directory", path, e))?;
    let meta = std::fs::metadata(path).map_err(|e| CoreError::io("stat", path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CoreError::io("restrict permissions of", path, e))?;
    }
    Ok(())
}

/// The default state directory: `$PYRO_STATE_DIR`, else `$XDG_DATA_HOME/pyro`, else
/// `~/.local/share/pyro`.
pub fn default_state_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PYRO_STATE_DIR").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(CoreError::Invalid {
                field: "PYRO_STATE_DIR",
                reason: format!("`{}` is not an absolute path", p.display()),
            });
        }
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| Path::new(p).is_absolute()) {
        return Ok(PathBuf::from(p).join("pyro"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|p| Path::new(p).is_absolute()) {
        return Ok(PathBuf::from(h).join(".local/share/pyro"));
    }
    Err(CoreError::Invalid {
        field: "state directory",
        reason: "none of PYRO_STATE_DIR, XDG_DATA_HOME or HOME is set to an absolute path".into(),
    })
}

/// Seconds since the UNIX epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// POSIX-shell quoting of an argv, for display and for the `command` result field.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_12_hex_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 12);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let t = process_start_ticks(me).unwrap();
        assert!(process_alive(me, t));
        assert!(!process_alive(me, t + 1));
    }

    #[test]
    fn shell_join_quotes_what_needs_it() {
        let argv: Vec<String> = ["echo", "a b", "it's", "", "x=1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_join(&argv), r"echo 'a b' 'it'\''s' '' x=1");
    }

    #[test]
    fn dynamic_binaries_are_not_static() {
        // /bin/sh on Debian is dynamically linked.
        assert!(!is_static_elf(Path::new("/bin/sh")));
        assert!(!is_static_elf(Path::new("/etc/hostname")));
    }
}
