//! The error type of [`launch`](crate::launch) and [`qmp`](crate::qmp).

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong starting, controlling or stopping QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// No QEMU binary was found.
    #[error(
        "qemu-system-x86_64 not found on PATH (install the Debian package qemu-system-x86, \
         or set $PYRO_QEMU to the binary)"
    )]
    NotFound,
    /// `$PYRO_QEMU` names something that is not an executable file.
    #[error("$PYRO_QEMU={} is not an executable file", path.display())]
    EnvNotExecutable {
        /// The value of `$PYRO_QEMU`.
        path: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {}", qemu.display())]
    Spawn {
        /// The binary.
        qemu: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before its sockets appeared.
    #[error(
        "QEMU exited during startup ({status}); stderr: {stderr:?}; end of the guest console: \
         {console_tail:?}"
    )]
    Exited {
        /// The exit status, as printed by the OS.
        status: String,
        /// What QEMU wrote to stderr (the end of it, when long).
        stderr: String,
        /// The end of the guest's console log.
        console_tail: String,
    },
    /// QEMU kept running but its sockets did not appear in time.
    #[error("QEMU did not create its sockets in {} within {after:?}", workdir.display())]
    StartTimeout {
        /// The working directory.
        workdir: PathBuf,
        /// How long we waited.
        after: Duration,
    },
    /// Signalling or reaping the QEMU process failed.
    #[error("cannot {op} QEMU (pid {pid})")]
    Process {
        /// What was being done (`kill`, `wait`).
        op: &'static str,
        /// The process id.
        pid: u32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The QMP socket could not be reached.
    #[error("cannot connect to the QMP socket {}", path.display())]
    QmpConnect {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the QMP connection failed.
    #[error("QMP I/O failed during {command}")]
    QmpIo {
        /// The command in flight (`greeting` while connecting).
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the QMP connection.
    #[error("QEMU closed the QMP connection during {command}")]
    QmpClosed {
        /// The command in flight.
        command: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("unexpected QMP message during {command}: {detail}")]
    QmpProtocol {
        /// The command in flight.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// No answer arrived in time.
    #[error("no QMP answer to {command} within {after:?}")]
    QmpTimeout {
        /// The command in flight.
        command: String,
        /// How long we waited.
        after: Duration,
    },
    /// Saving or restoring the machine's state failed.
    #[error("migration {status}: {desc}")]
    Migration {
        /// QEMU's migration or run state when it failed.
        status: String,
        /// QEMU's description, or ours.
        desc: String,
    },
    /// QEMU answered a command with an error.
    #[error("QMP {command} failed: {class}: {desc}")]
    Qmp {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}
