//! Typed requests and results, and the client side of one call.
//!
//! A call is one stream: the client sends one `REQUEST` message (JSON [`Request`]), then,
//! for requests that take input, `STDIN`/`DATA` messages, then `End`. The agent answers with
//! any number of `STDOUT`/`STDERR`/`EVENT` messages, then exactly one `RESPONSE` or `ERROR`,
//! then `End`.
//!
//! File operations ([`ListFiles`], [`ReadFile`], [`WriteFiles`], [`ExportTar`], [`ImportTar`])
//! name paths relative to a root directory (`/workspace` in a guest), either relative
//! (`src/a.rs`) or absolute under the root (`/workspace/src/a.rs`); `..` is refused. Bulk
//! bytes travel as `DATA` messages of at most [`DATA_CHUNK`] bytes, so files and archives of
//! any size stream under flow control instead of being buffered.
//!
//! # Limits
//!
//! The host does not trust the agent's replies: whatever a reply declares, what the client
//! side keeps in memory is bounded by the caller's request or by a limit here. A reply beyond
//! it is a [`CallError::Unexpected`]; a request beyond one of the input limits is refused
//! before anything is sent, as [`CallError::Invalid`].
//!
//! - one request: [`MAX_REQUEST_BYTES`] of JSON (it travels as one message);
//! - exec stdin: [`MAX_STDIN_BYTES`] (the agent buffers it before the process starts);
//! - [`read_file`]: `max_bytes`, at most [`READ_FILE_MAX_BYTES`] (also when none is given);
//! - [`list_files`]: `max_entries` ([`LIST_MAX_ENTRIES_DEFAULT`] when none is given);
//! - every JSON reply: one message ([`Message::MAX_BODY`] bytes).

use std::collections::BTreeMap;
use std::io;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Message, MsgKind, ProtoError, RecvHalf, SendHalf, Session};

/// A request to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check; answered with [`PingResult`].
    Ping,
    /// Run a process; answered with streamed output and an [`ExecResult`].
    Exec(ExecRequest),
    /// Set the guest clock (after boot or restore); answered with [`Empty`].
    SyncClock(SyncClock),
    /// Flush filesystems and power the guest off; answered with [`Empty`] before it happens.
    Shutdown(Shutdown),
    /// List a file or a directory: the entries as `DATA` messages (each a JSON array of
    /// [`FileEntry`]), then a [`FileList`] (see [`list_files`]).
    ListFiles(ListFiles),
    /// Read the start of a regular file: `DATA` messages, then a [`FileRead`].
    ReadFile(ReadFile),
    /// Apply a batch of [`Change`]s; the bytes of every [`Change::Write`] follow as `DATA`
    /// messages. Answered with a [`WriteResult`].
    WriteFiles(WriteFiles),
    /// Stream a tar archive of a path: `DATA` messages, then a [`TarResult`].
    ExportTar(ExportTar),
    /// Extract a tar archive that follows as `DATA` messages; answered with a [`TarResult`].
    ImportTar(ImportTar),
    /// Flush every filesystem (`sync(2)`); answered with [`Empty`].
    Sync,
    /// Make a guest restored from a snapshot its own: credit fresh host entropy to the
    /// kernel and force its random generator to reseed, set the clock, and give the machine a
    /// new `/etc/machine-id`. The host sends it before anything
    /// else after a restore; answered with a [`ReseedResult`].
    Reseed(Reseed),
    /// Start a PTY shell; answered with a [`ShellState`](crate::procs::ShellState).
    ShellOpen(crate::procs::ShellOpen),
    /// Read a shell's transcript: `DATA`, then a [`ShellReadResult`](crate::procs::ShellReadResult).
    ShellRead(crate::procs::ShellRead),
    /// Write to a shell's terminal; answered with its `ShellState`.
    ShellWrite(crate::procs::ShellWrite),
    /// Signal a shell's process group; answered with its `ShellState`.
    ShellSignal(crate::procs::ShellSignal),
    /// Resize a shell's terminal; answered with its `ShellState`.
    ShellResize(crate::procs::ShellResize),
    /// End a shell (HUP, grace, KILL) and drop it from the table; answered with its final
    /// `ShellState`.
    ShellClose(crate::procs::ShellClose),
    /// Every shell; answered with a [`ShellList`](crate::procs::ShellList).
    ShellList,
    /// Start a service: `EVENT`s while it waits for readiness, then a
    /// [`ServiceState`](crate::procs::ServiceState).
    ServiceStart(crate::procs::ServiceStart),
    /// Stop a service (TERM, grace, KILL); answered with its `ServiceState`.
    ServiceStop(crate::procs::ServiceStop),
    /// Services; answered with a [`ServiceList`](crate::procs::ServiceList).
    ServiceList(crate::procs::ServiceListRequest),
    /// A service's logs: `STDOUT`/`STDERR`, then a
    /// [`ServiceLogsResult`](crate::procs::ServiceLogsResult).
    ServiceLogs(crate::procs::ServiceLogs),
}

impl Request {
    /// Bytes of the request's JSON encoding (what [`MAX_REQUEST_BYTES`] limits), computed
    /// without building it.
    pub fn encoded_len(&self) -> Result<usize, ProtoError> {
        struct Count(usize);
        impl io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0 = self.0.saturating_add(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut n = Count(0);
        serde_json::to_writer(&mut n, self).map_err(|source| ProtoError::Json { source })?;
        Ok(n.0)
    }
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Executed directly, no shell involved.
    Argv(Vec<String>),
    /// Run as `/bin/sh -c <string>`.
    Shell(String),
}

/// Parameters of [`Request::Exec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program.
    pub command: Command,
    /// Working directory; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the agent's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the whole process session after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Forward at most this many bytes of each output stream (the rest is counted, not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Whether `STDIN` messages follow the request (else stdin is `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
}

/// Parameters of [`Request::SyncClock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncClock {
    /// Host wall-clock time, nanoseconds since the UNIX epoch.
    pub unix_nanos: u64,
}

/// Fewest entropy bytes a [`Reseed`] may carry.
pub const RESEED_MIN_ENTROPY: usize = 32;
/// Most entropy bytes a [`Reseed`] may carry.
pub const RESEED_MAX_ENTROPY: usize = 4096;

/// Parameters of [`Request::Reseed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reseed {
    /// Random bytes from the host's `getrandom`, lowercase hex
    /// ([`RESEED_MIN_ENTROPY`]..=[`RESEED_MAX_ENTROPY`] bytes).
    pub entropy_hex: String,
    /// Host wall-clock time, nanoseconds since the UNIX epoch.
    pub unix_nanos: u64,
    /// The restored clone's own network (a networked template boots with
    /// `pyro.net=pending` and no address). Absent: the network is left as it is. Never
    /// serialized when absent, so an agent that predates it accepts requests without it
    /// (and refuses, as an unknown field, one that carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNetwork>,
}

/// The network a restored clone takes over (see [`Reseed::network`]); the agent applies it
/// to `eth0` with the same rules as the kernel command line's `pyro.net=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// The NIC's MAC address (must be unicast and not all zeros).
    pub mac: MacAddr,
    /// The guest's IPv4 address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of the guest's subnet (1 to 30).
    pub prefix: u8,
    /// The default gateway, another host of the subnet.
    pub gateway: std::net::Ipv4Addr,
    /// The resolver; absent means the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<std::net::Ipv4Addr>,
}

/// An Ethernet MAC address; on the wire the string `02:70:79:00:00:01` (six pairs of hex
/// digits separated by colons, either case; written lowercase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is a unicast address (the group bit, the lowest bit of the first
    /// byte, is clear) other than all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 02:70:79:00:00:01");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl Reseed {
    /// A request carrying `entropy` and the time `unix_nanos`.
    pub fn new(entropy: &[u8], unix_nanos: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut entropy_hex = String::with_capacity(entropy.len() * 2);
        for b in entropy {
            entropy_hex.push(HEX[usize::from(b >> 4)] as char);
            entropy_hex.push(HEX[usize::from(b & 15)] as char);
        }
        Self {
            entropy_hex,
            unix_nanos,
            network: None,
        }
    }

    /// The same request, also handing the clone its own network.
    pub fn with_network(mut self, network: GuestNetwork) -> Self {
        self.network = Some(network);
        self
    }

    /// The entropy bytes, or why they are unacceptable (not hex, too few, too many).
    pub fn entropy(&self) -> Result<Vec<u8>, String> {
        let hex = self.entropy_hex.as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err("entropy_hex has an odd number of digits".into());
        }
        let n = hex.len() / 2;
        if !(RESEED_MIN_ENTROPY..=RESEED_MAX_ENTROPY).contains(&n) {
            return Err(format!(
                "{n} entropy bytes; between {RESEED_MIN_ENTROPY} and {RESEED_MAX_ENTROPY} \
                 are accepted"
            ));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!(
                "entropy_hex has a non-hex character {:?}",
                c as char
            )),
        };
        hex.chunks(2)
            .map(|p| Ok((digit(p[0])? << 4) | digit(p[1])?))
            .collect()
    }
}

/// What [`Request::Reseed`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReseedResult {
    /// Entropy bytes mixed in and credited.
    pub entropy_bytes: u64,
    /// Whether the kernel's random generator was reseeded at once (`RNDRESEEDCRNG`).
    pub crng_reseeded: bool,
    /// Whether `/etc/machine-id` was rewritten (false only when something other than a
    /// regular file is there).
    pub machine_id_regenerated: bool,
    /// Whether [`Reseed::network`] was applied to `eth0` (false when the request had none;
    /// a failure to apply it is the request's error instead). Absent from an older agent's
    /// reply, which reads as false.
    #[serde(default)]
    pub network_configured: bool,
}

/// Parameters of [`Request::Shutdown`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// Power the machine off after syncing (else only sync).
    #[serde(default = "yes")]
    pub poweroff: bool,
}

fn yes() -> bool {
    true
}

/// Largest body of one `DATA` message that file operations send (either direction).
pub const DATA_CHUNK: usize = 64 * 1024;

/// Largest encoded (JSON) request: a request travels as one `REQUEST` message, so it must fit
/// one frame with the default limits.
pub const MAX_REQUEST_BYTES: usize = Message::MAX_BODY;

/// Largest stdin an exec may carry (the agent buffers it in guest memory before the process
/// starts, and refuses more).
pub const MAX_STDIN_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes [`read_file`] takes into memory: its `max_bytes` may not be larger, and a
/// request without one asks for this many.
pub const READ_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Entries a [`ListFiles`] returns when it names no `max_entries`.
pub const LIST_MAX_ENTRIES_DEFAULT: u64 = 10_000;

/// The root directory of file operations inside a guest.
pub const WORKSPACE_ROOT: &str = "/workspace";

fn workspace_root() -> String {
    WORKSPACE_ROOT.to_string()
}

fn is_workspace_root(root: &str) -> bool {
    root == WORKSPACE_ROOT
}

/// Parameters of [`Request::ListFiles`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// The root directory every path is confined to (absolute; `/workspace` by default).
    #[serde(default = "workspace_root", skip_serializing_if = "is_workspace_root")]
    pub root: String,
    /// What to list, relative to `root` or absolute under it; empty means `root` itself.
    #[serde(default)]
    pub path: String,
    /// Descend into subdirectories (never into symlinked ones).
    #[serde(default)]
    pub recursive: bool,
    /// Stop after this many entries (`truncated` is then set); the agent's cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
}

/// Parameters of [`Request::ReadFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// The root directory every path is confined to.
    #[serde(default = "workspace_root", skip_serializing_if = "is_workspace_root")]
    pub root: String,
    /// The regular file to read (a final symlink is not followed).
    pub path: String,
    /// Send at most this many bytes from the start (the whole file when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// Parameters of [`Request::WriteFiles`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFiles {
    /// The root directory every path is confined to.
    #[serde(default = "workspace_root", skip_serializing_if = "is_workspace_root")]
    pub root: String,
    /// The changes, applied in order, all or none as far as the filesystem allows.
    pub changes: Vec<Change>,
}

/// One change of a [`WriteFiles`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Create or replace a regular file with `size` bytes taken from the `DATA` messages.
    Write {
        /// The file.
        path: String,
        /// How many bytes of the data stream belong to this file.
        size: u64,
        /// Permission bits; the existing file's mode when absent (0644 for a new file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Remove a file, a symlink or an empty directory.
    Delete {
        /// What to remove.
        path: String,
    },
    /// Create a directory (an existing one is kept; its mode is set when `mode` is given).
    Mkdir {
        /// The directory.
        path: String,
        /// Permission bits (0755 for a new directory when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Create a symlink, or replace an existing symlink.
    Symlink {
        /// The link.
        path: String,
        /// Its relative target, which must stay inside the root.
        target: String,
    },
}

impl Change {
    /// The path the change applies to.
    pub fn path(&self) -> &str {
        match self {
            Change::Write { path, .. }
            | Change::Delete { path }
            | Change::Mkdir { path, .. }
            | Change::Symlink { path, .. } => path,
        }
    }
}

/// Parameters of [`Request::ExportTar`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTar {
    /// The root directory every path is confined to.
    #[serde(default = "workspace_root", skip_serializing_if = "is_workspace_root")]
    pub root: String,
    /// A directory (its contents become the members) or a file or symlink (one member);
    /// empty means `root`.
    #[serde(default)]
    pub path: String,
}

/// How [`Request::ImportTar`] treats what already exists at the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    /// Overwrite files and symlinks, merge directories, keep everything else.
    #[default]
    Merge,
    /// Empty the destination first (reset, seeding).
    Replace,
}

/// Parameters of [`Request::ImportTar`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportTar {
    /// The root directory every path is confined to.
    #[serde(default = "workspace_root", skip_serializing_if = "is_workspace_root")]
    pub root: String,
    /// The directory to extract into (created when missing); empty means `root`.
    #[serde(default)]
    pub dest: String,
    /// Merge into or replace the destination's contents.
    #[serde(default)]
    pub mode: ImportMode,
}

/// Kind of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

/// One object in a [`FileList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Absolute path: the root joined with the relative path (`/workspace/src/a.rs`).
    pub path: String,
    /// What it is.
    pub artifact_type: ArtifactType,
    /// Size from `lstat` (0 for directories).
    pub size_bytes: u64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// The target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// Answer to [`Request::ListFiles`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// The listed path, absolute.
    pub path: String,
    /// What the listed path is.
    pub artifact_type: ArtifactType,
    /// A directory's children (sorted by name, depth-first pre-order when recursive), or the
    /// single entry of anything else.
    pub entries: Vec<FileEntry>,
    /// Whether `max_entries` cut the listing.
    pub truncated: bool,
}

/// Answer to [`Request::ReadFile`], after the file's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    /// The file, absolute.
    pub path: String,
    /// Size of the whole file.
    pub size_bytes: u64,
    /// Whether fewer bytes than the whole file were sent.
    pub truncated: bool,
    /// Permission bits.
    pub mode: u32,
}

/// Kind of an applied [`Change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// [`Change::Write`].
    Write,
    /// [`Change::Delete`].
    Delete,
    /// [`Change::Mkdir`].
    Mkdir,
    /// [`Change::Symlink`].
    Symlink,
}

/// One applied change of a [`WriteResult`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteEntry {
    /// The path, absolute.
    pub path: String,
    /// What was done.
    pub op: ChangeOp,
    /// Bytes written (writes only).
    pub bytes_written: u64,
}

/// Answer to [`Request::WriteFiles`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The changes, in request order.
    pub entries: Vec<WriteEntry>,
}

/// Answer to [`Request::ExportTar`] and [`Request::ImportTar`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarResult {
    /// Members written or extracted (directories, files, symlinks, hard links).
    pub entry_count: u64,
    /// Bytes of regular-file contents.
    pub bytes: u64,
    /// FIFOs, sockets and devices that were skipped: the first 100 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// How many objects were skipped in all.
    #[serde(default)]
    pub skipped_count: u64,
}

/// An empty success result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Answer to [`Request::Ping`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// The agent's crate version.
    pub agent_version: String,
    /// The session protocol version.
    pub protocol_version: u16,
    /// Whether the agent runs as PID 1 (inside a guest).
    pub pid1: bool,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
}

/// Answer to [`Request::Exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status: the process's own, `128 + n` when killed by signal `n`, `124` on timeout,
    /// `127` when the program was not found, `126` when it could not be executed.
    pub exit_code: i32,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Whether the timeout fired (the session was killed; output so far was kept).
    pub timed_out: bool,
    /// Wall time inside the guest.
    pub duration_ms: u64,
    /// Bytes the process wrote to stdout (including any not forwarded).
    pub stdout_bytes: u64,
    /// Bytes the process wrote to stderr (including any not forwarded).
    pub stderr_bytes: u64,
    /// Whether stdout was cut at `max_output_bytes`.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at `max_output_bytes`.
    pub stderr_truncated: bool,
    /// Why the program could not be started, when it could not.
    pub spawn_error: Option<String>,
}

/// Machine-readable class of an [`AgentError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or named something invalid.
    BadRequest,
    /// A named object does not exist.
    NotFound,
    /// The name is taken by something that still runs (a service of that name, a shell id).
    Conflict,
    /// The agent does not support this request.
    Unsupported,
    /// An I/O operation in the guest failed.
    Io,
    /// A bug or unexpected state in the agent.
    Internal,
}

/// A typed error reported by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// The class.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl AgentError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Failure of one call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The transport or protocol failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The agent answered with an error.
    #[error("the guest agent refused the request: {0}")]
    Agent(AgentError),
    /// The agent's answer did not follow the call pattern.
    #[error("unexpected reply from the guest agent: {detail}")]
    Unexpected {
        /// What was wrong.
        detail: String,
    },
    /// The caller's own input did not fit the request (e.g. data for a write of another size).
    #[error("invalid call: {detail}")]
    Invalid {
        /// What was wrong.
        detail: String,
    },
    /// Reading the caller's source or writing to its sink failed.
    #[error("{what} failed")]
    Local {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A chunk of process output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
}

/// Makes a call with no streamed input or output and returns the typed result.
pub async fn call<R: DeserializeOwned>(session: &Session, req: &Request) -> Result<R, CallError> {
    let mut stream = session.open()?;
    stream.send(Message::json(MsgKind::REQUEST, req)?).await?;
    stream.finish()?;
    loop {
        let Some(msg) = stream.recv().await? else {
            return Err(CallError::Unexpected {
                detail: "the stream ended without a result".into(),
            });
        };
        match msg.kind {
            MsgKind::RESPONSE => return Ok(msg.parse()?),
            MsgKind::ERROR => return Err(CallError::Agent(msg.parse()?)),
            MsgKind::EVENT => continue,
            other => {
                return Err(CallError::Unexpected {
                    detail: format!("message kind {} in a plain call", other.0),
                });
            }
        }
    }
}

/// Runs a process through the agent. Output chunks are handed to `on_output` as they arrive;
/// `stdin`, when given, is sent before the agent is told the input ended. A `stdin` larger
/// than [`MAX_STDIN_BYTES`] is refused before anything is sent; when the agent refuses the
/// call while input is still being sent, its error is returned (not the broken stream).
pub async fn exec<F>(
    session: &Session,
    mut req: ExecRequest,
    stdin: Option<Bytes>,
    mut on_output: F,
) -> Result<ExecResult, CallError>
where
    F: FnMut(Output),
{
    if let Some(data) = &stdin
        && data.len() > MAX_STDIN_BYTES
    {
        return Err(CallError::Invalid {
            detail: format!(
                "stdin of {} bytes exceeds the limit of {MAX_STDIN_BYTES} bytes",
                data.len()
            ),
        });
    }
    req.stdin = stdin.is_some();
    let stream = session.open()?;
    let (mut tx, mut rx) = stream.split();
    tx.send(Message::json(MsgKind::REQUEST, &Request::Exec(req))?)
        .await?;
    // Input is sent concurrently with reading output so neither side can block the other.
    let sender = async move {
        if let Some(data) = stdin {
            let mut off = 0;
            while off < data.len() {
                let end = (off + Message::MAX_BODY / 2).min(data.len());
                tx.send(Message::new(MsgKind::STDIN, data.slice(off..end)))
                    .await?;
                off = end;
            }
        }
        tx.finish()?;
        Ok::<_, ProtoError>(tx)
    };
    let receiver = async {
        loop {
            let Some(msg) = rx.recv().await? else {
                return Err(CallError::Unexpected {
                    detail: "the stream ended without an exec result".into(),
                });
            };
            match msg.kind {
                MsgKind::STDOUT => on_output(Output::Stdout(msg.body)),
                MsgKind::STDERR => on_output(Output::Stderr(msg.body)),
                MsgKind::RESPONSE => return Ok(msg.parse::<ExecResult>()?),
                MsgKind::ERROR => return Err(CallError::Agent(msg.parse()?)),
                MsgKind::EVENT => {}
                other => {
                    return Err(CallError::Unexpected {
                        detail: format!("message kind {} during exec", other.0),
                    });
                }
            }
        }
    };
    let (sent, result) = tokio::join!(sender, receiver);
    match (sent, result) {
        // The agent refused the call (too much input, say) and dropped the stream, which
        // broke the sending: its error is the explanation.
        (_, Err(CallError::Agent(e))) => Err(CallError::Agent(e)),
        (Err(e), _) => Err(e.into()),
        // The send half was kept alive until the result was in, so the stream was not reset
        // early.
        (Ok(_tx), result) => result,
    }
}

/// Receives a call's reply: `DATA` bodies go to `on_data`, `EVENT`s are skipped, and the
/// final `RESPONSE` or `ERROR` ends it.
async fn recv_reply<R, F>(rx: &mut RecvHalf, what: &str, mut on_data: F) -> Result<R, CallError>
where
    R: DeserializeOwned,
    F: FnMut(Bytes) -> Result<(), CallError>,
{
    loop {
        let Some(msg) = rx.recv().await? else {
            return Err(CallError::Unexpected {
                detail: format!("the stream ended without a {what} result"),
            });
        };
        match msg.kind {
            MsgKind::DATA => on_data(msg.body)?,
            MsgKind::RESPONSE => return Ok(msg.parse()?),
            MsgKind::ERROR => return Err(CallError::Agent(msg.parse()?)),
            MsgKind::EVENT => {}
            other => {
                return Err(CallError::Unexpected {
                    detail: format!("message kind {} during {what}", other.0),
                });
            }
        }
    }
}

fn no_data(what: &'static str) -> impl FnMut(Bytes) -> Result<(), CallError> {
    move |_| {
        Err(CallError::Unexpected {
            detail: format!("data message during {what}"),
        })
    }
}

/// Drives a call whose input streams from `sender` while the reply is awaited. The reply
/// decides the outcome: a send that failed because the agent gave up on the stream is
/// explained by the agent's error. A local failure of the input (`CallError::Local` or
/// `CallError::Invalid`) resets the stream, so the agent never mistakes partial input for
/// complete input.
async fn call_with_input<R, S>(
    session: &Session,
    req: &Request,
    what: &str,
    sender: S,
) -> Result<R, CallError>
where
    R: DeserializeOwned,
    S: AsyncFnOnce(&mut SendHalf) -> Result<(), CallError>,
{
    let stream = session.open()?;
    let (mut tx, mut rx) = stream.split();
    tx.send(Message::json(MsgKind::REQUEST, req)?).await?;
    let sending = async {
        let res = sender(&mut tx).await;
        match res {
            Ok(()) => tx.finish().map_err(CallError::from),
            Err(e) => Err(e),
        }
    };
    let receiving = recv_reply::<R, _>(&mut rx, what, no_data("a call with input"));
    tokio::pin!(sending, receiving);
    let mut sent = false;
    loop {
        tokio::select! {
            res = &mut receiving => return res,
            res = &mut sending, if !sent => {
                sent = true;
                match res {
                    Ok(()) => {}
                    Err(e @ (CallError::Local { .. } | CallError::Invalid { .. })) => return Err(e),
                    // The stream or session died: the reply (or its absence) tells why.
                    Err(_) => {}
                }
            }
        }
    }
}

/// Lists a file or a directory inside the guest. The agent streams the entries as `DATA`
/// messages (each a JSON array of [`FileEntry`]) before the [`FileList`]; they are collected
/// here, at most `max_entries` of them (those of the final [`FileList`] included), whatever
/// the agent sends.
pub async fn list_files(session: &Session, req: ListFiles) -> Result<FileList, CallError> {
    let limit = req.max_entries.unwrap_or(LIST_MAX_ENTRIES_DEFAULT);
    let mut stream = session.open()?;
    stream
        .send(Message::json(MsgKind::REQUEST, &Request::ListFiles(req))?)
        .await?;
    stream.finish()?;
    let (_tx, mut rx) = stream.split();
    let mut entries: Vec<FileEntry> = Vec::new();
    let mut res: FileList = recv_reply(&mut rx, "list_files", |chunk: Bytes| {
        let batch: Vec<FileEntry> = serde_json::from_slice(&chunk)
            .map_err(|source| CallError::Proto(ProtoError::Json { source }))?;
        if (entries.len() + batch.len()) as u64 > limit {
            return Err(CallError::Unexpected {
                detail: format!("the agent listed more than the {limit} entries asked for"),
            });
        }
        entries.extend(batch);
        Ok(())
    })
    .await?;
    if (entries.len() + res.entries.len()) as u64 > limit {
        return Err(CallError::Unexpected {
            detail: format!("the agent listed more than the {limit} entries asked for"),
        });
    }
    entries.append(&mut res.entries);
    res.entries = entries;
    Ok(res)
}

/// Reads (the start of) a regular file inside the guest. At most `req.max_bytes` bytes are
/// accepted from the agent, whatever it sends; without `max_bytes` the request asks for
/// [`READ_FILE_MAX_BYTES`] (`truncated` then says whether the file is longer), and a larger
/// `max_bytes` is refused as [`CallError::Invalid`].
pub async fn read_file(
    session: &Session,
    mut req: ReadFile,
) -> Result<(FileRead, Vec<u8>), CallError> {
    let limit = match req.max_bytes {
        None => READ_FILE_MAX_BYTES,
        Some(max) if max > READ_FILE_MAX_BYTES => {
            return Err(CallError::Invalid {
                detail: format!(
                    "max_bytes {max} exceeds the limit of {READ_FILE_MAX_BYTES} bytes read \
                     into memory"
                ),
            });
        }
        Some(max) => max,
    };
    req.max_bytes = Some(limit);
    let mut stream = session.open()?;
    stream
        .send(Message::json(MsgKind::REQUEST, &Request::ReadFile(req))?)
        .await?;
    stream.finish()?;
    let (_tx, mut rx) = stream.split();
    let mut data = Vec::new();
    let res: FileRead = recv_reply(&mut rx, "read_file", |chunk: Bytes| {
        let len = (data.len() + chunk.len()) as u64;
        if len > limit {
            return Err(CallError::Unexpected {
                detail: format!("the agent sent more than the {limit} bytes asked for"),
            });
        }
        data.extend_from_slice(&chunk);
        Ok(())
    })
    .await?;
    let expected = res.size_bytes.min(limit);
    if data.len() as u64 != expected && !res.truncated {
        return Err(CallError::Unexpected {
            detail: format!(
                "the agent sent {} bytes of a {}-byte file without marking it truncated",
                data.len(),
                res.size_bytes
            ),
        });
    }
    Ok((res, data))
}

/// Applies a batch of changes inside the guest. `data` holds the contents of each
/// [`Change::Write`], in order; every `size` must equal its data's length.
pub async fn write_files(
    session: &Session,
    changes: Vec<Change>,
    data: Vec<Bytes>,
    root: impl Into<String>,
) -> Result<WriteResult, CallError> {
    let writes: Vec<u64> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Write { size, .. } => Some(*size),
            _ => None,
        })
        .collect();
    if writes.len() != data.len() {
        return Err(CallError::Invalid {
            detail: format!("{} writes but {} data buffers", writes.len(), data.len()),
        });
    }
    for (i, (size, buf)) in writes.iter().zip(&data).enumerate() {
        if *size != buf.len() as u64 {
            return Err(CallError::Invalid {
                detail: format!("write #{i} declares {size} bytes but carries {}", buf.len()),
            });
        }
    }
    let req = Request::WriteFiles(WriteFiles {
        root: root.into(),
        changes,
    });
    call_with_input(
        session,
        &req,
        "write_files",
        async move |tx: &mut SendHalf| {
            for buf in data {
                let mut off = 0;
                while off < buf.len() {
                    let end = (off + DATA_CHUNK).min(buf.len());
                    tx.send(Message::new(MsgKind::DATA, buf.slice(off..end)))
                        .await?;
                    off = end;
                }
            }
            Ok(())
        },
    )
    .await
}

/// Streams a tar archive of a guest path into `sink`, chunk by chunk. The agent produces no
/// faster than `sink` consumes; an error from `sink` aborts the export.
pub async fn export_tar<F>(
    session: &Session,
    req: ExportTar,
    mut sink: F,
) -> Result<TarResult, CallError>
where
    F: FnMut(Bytes) -> io::Result<()>,
{
    let mut stream = session.open()?;
    stream
        .send(Message::json(MsgKind::REQUEST, &Request::ExportTar(req))?)
        .await?;
    stream.finish()?;
    let (_tx, mut rx) = stream.split();
    recv_reply(&mut rx, "export_tar", |chunk| {
        sink(chunk).map_err(|source| CallError::Local {
            what: "writing the exported archive",
            source,
        })
    })
    .await
}

/// Extracts a tar archive read from `source` inside the guest, streaming it in
/// [`DATA_CHUNK`]-sized messages. A read error from `source` aborts the import.
pub async fn import_tar<S>(
    session: &Session,
    req: ImportTar,
    mut source: S,
) -> Result<TarResult, CallError>
where
    S: AsyncRead + Unpin,
{
    call_with_input(
        session,
        &Request::ImportTar(req),
        "import_tar",
        async move |tx: &mut SendHalf| {
            let mut buf = BytesMut::with_capacity(DATA_CHUNK);
            loop {
                buf.reserve(DATA_CHUNK);
                let n = (&mut source)
                    .take(DATA_CHUNK as u64)
                    .read_buf(&mut buf)
                    .await
                    .map_err(|source| CallError::Local {
                        what: "reading the archive to import",
                        source,
                    })?;
                if n == 0 {
                    return Ok(());
                }
                tx.send(Message::new(MsgKind::DATA, buf.split().freeze()))
                    .await?;
            }
        },
    )
    .await
}

/// Flushes every filesystem in the guest (before the VM is stopped or snapshotted).
pub async fn sync(session: &Session) -> Result<Empty, CallError> {
    call(session, &Request::Sync).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_json_shape() {
        let req = Request::Exec(ExecRequest {
            command: Command::Argv(vec!["git".into(), "--version".into()]),
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: Some(1000),
            max_output_bytes: None,
            stdin: false,
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "exec", "command": {"argv": ["git", "--version"]}, "timeout_ms": 1000, "stdin": false})
        );
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_exec_field_is_rejected() {
        let v = serde_json::json!({"op": "exec", "command": {"shell": "true"}, "bogus": 1});
        let err = serde_json::from_value::<Request>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn file_request_json_shapes() {
        let req = Request::WriteFiles(WriteFiles {
            root: WORKSPACE_ROOT.into(),
            changes: vec![
                Change::Write {
                    path: "a".into(),
                    size: 3,
                    mode: None,
                },
                Change::Symlink {
                    path: "l".into(),
                    target: "a".into(),
                },
            ],
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "write_files", "changes": [
                {"op": "write", "path": "a", "size": 3},
                {"op": "symlink", "path": "l", "target": "a"}]})
        );
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), req);
        let v = serde_json::json!({"op": "import_tar", "root": "/tmp/r", "mode": "replace"});
        let Request::ImportTar(imp) = serde_json::from_value::<Request>(v).unwrap() else {
            panic!("not an import");
        };
        assert_eq!(
            (imp.root.as_str(), imp.dest.as_str(), imp.mode),
            ("/tmp/r", "", ImportMode::Replace)
        );
        let v = serde_json::json!({"op": "sync"});
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), Request::Sync);
    }

    #[test]
    fn unknown_file_fields_are_rejected() {
        for v in [
            serde_json::json!({"op": "list_files", "path": "a", "follow": true}),
            serde_json::json!({"op": "read_file", "path": "a", "offset": 1}),
            serde_json::json!({"op": "write_files", "changes": [{"op": "delete", "path": "a", "force": true}]}),
            serde_json::json!({"op": "write_files", "changes": [{"op": "chmod", "path": "a"}]}),
            serde_json::json!({"op": "import_tar", "mode": "mirror"}),
        ] {
            assert!(serde_json::from_value::<Request>(v.clone()).is_err(), "{v}");
        }
    }

    #[test]
    fn reseed_carries_entropy_as_hex_and_checks_it() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let req = Request::Reseed(Reseed::new(&bytes, 7));
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["op"], "reseed");
        assert_eq!(v["unix_nanos"], 7);
        assert!(v["entropy_hex"].as_str().unwrap().starts_with("000102"));
        let Request::Reseed(back) = serde_json::from_value::<Request>(v).unwrap() else {
            panic!("not a reseed");
        };
        assert_eq!(back.entropy().unwrap(), bytes);
        assert_eq!(
            Reseed::new(&[0xab; 32], 0).entropy().unwrap(),
            vec![0xab; 32]
        );
        let upper = Reseed {
            entropy_hex: "AB".repeat(32),
            unix_nanos: 0,
            network: None,
        };
        assert_eq!(upper.entropy().unwrap(), vec![0xab; 32]);
        for bad in [
            Reseed::new(&[1; 31], 0),
            Reseed::new(&[1; RESEED_MAX_ENTROPY + 1], 0),
            Reseed {
                entropy_hex: "0".repeat(65),
                unix_nanos: 0,
                network: None,
            },
            Reseed {
                entropy_hex: "zz".repeat(32),
                unix_nanos: 0,
                network: None,
            },
        ] {
            assert!(bad.entropy().is_err(), "{bad:?}");
        }
        let v = serde_json::json!({"op": "reseed", "entropy_hex": "00", "unix_nanos": 1, "x": 1});
        assert!(serde_json::from_value::<Request>(v).is_err());
    }

    #[test]
    fn reseed_network_round_trips_and_old_formats_still_parse() {
        let net = GuestNetwork {
            mac: MacAddr([0x02, 0x70, 0x79, 0x00, 0x01, 0xab]),
            address: "10.200.1.2".parse().unwrap(),
            prefix: 30,
            gateway: "10.200.1.1".parse().unwrap(),
            dns: None,
        };
        let req = Request::Reseed(Reseed::new(&[7; 32], 9).with_network(net.clone()));
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["network"],
            serde_json::json!({
                "mac": "02:70:79:00:01:ab",
                "address": "10.200.1.2",
                "prefix": 30,
                "gateway": "10.200.1.1",
            })
        );
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), req);
        let with_dns = GuestNetwork {
            dns: Some("192.0.2.53".parse().unwrap()),
            ..net
        };
        let v = serde_json::to_value(&with_dns).unwrap();
        assert_eq!(v["dns"], "192.0.2.53");
        assert_eq!(serde_json::from_value::<GuestNetwork>(v).unwrap(), with_dns);

        // A request without a network (what an older host sends) parses, and one made
        // without it serializes without the field (what an older agent accepts).
        let old =
            serde_json::json!({"op": "reseed", "entropy_hex": "00".repeat(32), "unix_nanos": 1});
        let Request::Reseed(back) = serde_json::from_value::<Request>(old).unwrap() else {
            panic!("not a reseed");
        };
        assert_eq!(back.network, None);
        let v = serde_json::to_value(Request::Reseed(Reseed::new(&[0; 32], 1))).unwrap();
        assert!(v.get("network").is_none(), "{v}");

        // An older agent's reply has no network_configured.
        let r: ReseedResult = serde_json::from_value(serde_json::json!({
            "entropy_bytes": 32, "crng_reseeded": true, "machine_id_regenerated": true
        }))
        .unwrap();
        assert!(!r.network_configured);

        for bad in [
            serde_json::json!({"mac": "02:70:79:00:01", "address": "10.0.0.2", "prefix": 30, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02:70:79:00:01:ab:cd", "address": "10.0.0.2", "prefix": 30, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02-70-79-00-01-ab", "address": "10.0.0.2", "prefix": 30, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02:70:79:00:01:+a", "address": "10.0.0.2", "prefix": 30, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02:70:79:00:01:ab", "address": "10.0.0", "prefix": 30, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02:70:79:00:01:ab", "address": "10.0.0.2", "prefix": 300, "gateway": "10.0.0.1"}),
            serde_json::json!({"mac": "02:70:79:00:01:ab", "address": "10.0.0.2", "prefix": 30}),
            serde_json::json!({"mac": "02:70:79:00:01:ab", "address": "10.0.0.2", "prefix": 30, "gateway": "10.0.0.1", "mtu": 1500}),
        ] {
            assert!(
                serde_json::from_value::<GuestNetwork>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            "02:70:79:00:01:AB".parse::<MacAddr>().unwrap().to_string(),
            "02:70:79:00:01:ab"
        );
        assert!("02:70:79:00:01:ab".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"03:70:79:00:01:ab".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"00:00:00:00:00:00".parse::<MacAddr>().unwrap().is_unicast());
    }

    #[test]
    fn encoded_len_is_the_json_length() {
        let mut env = BTreeMap::new();
        env.insert("K".to_string(), "v\u{1}\"é".to_string());
        let req = Request::Exec(ExecRequest {
            command: Command::Argv(vec!["a b".into(), "\n\t".into()]),
            cwd: Some("/w".into()),
            env,
            timeout_ms: Some(u64::MAX),
            max_output_bytes: None,
            stdin: true,
        });
        let json = serde_json::to_vec(&req).unwrap();
        assert_eq!(req.encoded_len().unwrap(), json.len());
        assert_eq!(
            Message::json(MsgKind::REQUEST, &req).unwrap().body.len(),
            json.len()
        );
    }

    #[test]
    fn unknown_op_is_rejected() {
        let v = serde_json::json!({"op": "format_disk"});
        assert!(serde_json::from_value::<Request>(v).is_err());
    }
}
