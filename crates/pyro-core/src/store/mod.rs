//! Durable workspace state: one SQLite database, `<state_dir>/pyro.db`, shared by every pyro
//! process on the host (CLI calls, the MCP server, the Python bridge) at the same time.
//!
//! Why SQLite rather than JSON files: every change is a transaction, so nothing is ever
//! half-written after a crash or a power cut (the reference wrote `workspace.json` in place),
//! and read-modify-write sequences from different processes are serialized by the database
//! instead of silently overwriting each other (the reference had no cross-process locking).
//!
//! * [`Store`] is one connection (`Send`, not `Sync`): open one per thread or guard it with a
//!   mutex. It runs in WAL mode, so readers never wait for writers and a writer waits at most
//!   [`BUSY_TIMEOUT`] for another writer.
//! * [`Store::with_tx`] runs a closure inside `BEGIN IMMEDIATE`: the write lock is taken up
//!   front, so what the closure reads cannot change before it writes. A closure that fails or
//!   panics, and a process that dies mid-transaction, leave nothing behind.
//! * [`Tx`] offers every operation, so several can be combined into one atomic change; the
//!   `Store` methods of the same names are one-operation transactions.
//! * [`WorkspaceRecord`] is one workspace row with its labels; [`CommandRecord`] is one
//!   recorded exec. Sequences are allocated by [`Store::next_command_sequence_and_record`]
//!   inside the write transaction, so concurrent recorders get distinct, gap-free numbers.
//! * The schema carries its version in `PRAGMA user_version` and is migrated forward on open;
//!   a database written by a newer pyro is refused with [`StoreError::SchemaTooNew`].
//!
//! The store does not validate names and labels; callers do that first with
//! [`validate_name`], [`validate_label_key`], [`validate_label_value`] and [`validate_labels`].

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};

/// File name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "pyro.db";
/// How long a writer waits for another process's write transaction before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest workspace name, in characters after trimming.
pub const NAME_MAX_CHARS: usize = 120;
/// Longest label key, in characters.
pub const LABEL_KEY_MAX_CHARS: usize = 64;
/// Longest label value, in characters after trimming.
pub const LABEL_VALUE_MAX_CHARS: usize = 120;
/// The label key rule, as the contract writes it.
pub const LABEL_KEY_RULE: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// Forward migrations: entry `i` moves the schema from version `i` to `i + 1`.
/// Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: workspaces, their labels and their command history. Plain (non-STRICT) tables
    // and no RETURNING, so any SQLite >= 3.22 works.
    "CREATE TABLE workspaces (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT,
        environment TEXT NOT NULL,
        environment_version TEXT NOT NULL,
        backend TEXT NOT NULL,
        vcpu_count INTEGER NOT NULL,
        mem_mib INTEGER NOT NULL,
        ttl_seconds INTEGER NOT NULL,
        created_at REAL NOT NULL,
        last_activity_at REAL NOT NULL,
        expires_at REAL,
        ttl_consumed REAL NOT NULL DEFAULT 0,
        started_at REAL,
        state TEXT NOT NULL
            CHECK (state IN ('creating', 'started', 'stopped', 'expired', 'error')),
        vmm_pid INTEGER,
        vmm_start_ticks INTEGER,
        relay_pid INTEGER,
        relay_start_ticks INTEGER,
        last_error TEXT,
        seed_json TEXT NOT NULL DEFAULT '{}',
        command_count INTEGER NOT NULL DEFAULT 0 CHECK (command_count >= 0),
        reset_count INTEGER NOT NULL DEFAULT 0 CHECK (reset_count >= 0),
        last_reset_at REAL,
        network_policy TEXT NOT NULL
    );
    CREATE TABLE labels (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (workspace_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE commands (
        workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        sequence INTEGER NOT NULL CHECK (sequence >= 1),
        command TEXT NOT NULL,
        cwd TEXT NOT NULL,
        exit_code INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        timed_out INTEGER NOT NULL CHECK (timed_out IN (0, 1)),
        stdout_bytes INTEGER NOT NULL,
        stderr_bytes INTEGER NOT NULL,
        stdout_path TEXT NOT NULL,
        stderr_path TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (workspace_id, sequence)
    );",
    // 1 -> 2: how the running VM was started (`cold` or `warm`).
    "ALTER TABLE workspaces ADD COLUMN boot_mode TEXT;",
];

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory does not exist (the store never creates it).
    #[error("state directory {path} does not exist")]
    StateDirMissing {
        /// The directory.
        path: PathBuf,
    },
    /// The database file could not be created.
    #[error("cannot create database file {path}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// SQLite could not open or configure the database.
    #[error("cannot open database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file system refused write-ahead logging (e.g. no shared memory on a network mount).
    #[error("database {path} cannot use WAL mode (journal mode is `{mode}`)")]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer pyro.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this pyro knows"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// A statement failed; `op` says what the store was doing.
    #[error("database error while trying to {op}")]
    Sqlite {
        /// What the store was doing.
        op: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// No workspace with this id.
    #[error("unknown workspace `{id}`")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A workspace with this id already exists.
    #[error("workspace `{id}` already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// An update closure changed the record's id.
    #[error("a workspace id cannot change (`{id}` became `{new_id}`)")]
    IdChanged {
        /// The stored id.
        id: String,
        /// What the closure set.
        new_id: String,
    },
}

impl StoreError {
    /// Whether the failure was another process holding the write lock past [`BUSY_TIMEOUT`].
    pub fn is_busy(&self) -> bool {
        let source = match self {
            Self::Sqlite { source, .. } | Self::Open { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// Wraps a SQLite error with what the store was doing.
fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// A rule a name or label broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The name is empty once trimmed.
    #[error("name must not be empty or only whitespace")]
    NameEmpty,
    /// The name is too long once trimmed.
    #[error("name must be at most {max} characters, got {len}")]
    NameTooLong {
        /// Its length in characters, trimmed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label key does not match [`LABEL_KEY_RULE`].
    #[error("label key `{key}` is invalid: {reason} (keys must match {LABEL_KEY_RULE})")]
    LabelKey {
        /// The key as given.
        key: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// A label value is empty once trimmed.
    #[error("label `{key}` must have a non-empty value")]
    LabelValueEmpty {
        /// The label.
        key: String,
    },
    /// A label value is too long once trimmed.
    #[error("label `{key}` value must be at most {max} characters, got {len}")]
    LabelValueTooLong {
        /// The label.
        key: String,
        /// Its length in characters, trimmed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label value contains a line break.
    #[error("label `{key}` value must not contain line breaks (CR or LF)")]
    LabelValueLineBreak {
        /// The label.
        key: String,
    },
}

/// Checks a workspace name: trimmed, 1..=120 characters. Returns the trimmed name.
pub fn validate_name(name: &str) -> Result<String, ValidationError> {
    let t = name.trim();
    let len = t.chars().count();
    if len == 0 {
        return Err(ValidationError::NameEmpty);
    }
    if len > NAME_MAX_CHARS {
        return Err(ValidationError::NameTooLong {
            len,
            max: NAME_MAX_CHARS,
        });
    }
    Ok(t.to_owned())
}

/// Checks a label key against [`LABEL_KEY_RULE`] after trimming. Returns the trimmed key.
pub fn validate_label_key(key: &str) -> Result<String, ValidationError> {
    let t = key.trim();
    let fail = |reason| {
        Err(ValidationError::LabelKey {
            key: key.to_owned(),
            reason,
        })
    };
    let Some(first) = t.chars().next() else {
        return fail("it is empty");
    };
    if !first.is_ascii_alphanumeric() {
        return fail("it must start with an ASCII letter or digit");
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return fail("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    // Every character is ASCII here, so bytes are characters.
    if t.len() > LABEL_KEY_MAX_CHARS {
        return fail("it is longer than 64 characters");
    }
    Ok(t.to_owned())
}

/// Checks the value of label `key`: trimmed, 1..=120 characters, no CR or LF. Returns the
/// trimmed value.
pub fn validate_label_value(key: &str, value: &str) -> Result<String, ValidationError> {
    let t = value.trim();
    let len = t.chars().count();
    if len == 0 {
        return Err(ValidationError::LabelValueEmpty {
            key: key.to_owned(),
        });
    }
    if t.contains(['\r', '\n']) {
        return Err(ValidationError::LabelValueLineBreak {
            key: key.to_owned(),
        });
    }
    if len > LABEL_VALUE_MAX_CHARS {
        return Err(ValidationError::LabelValueTooLong {
            key: key.to_owned(),
            len,
            max: LABEL_VALUE_MAX_CHARS,
        });
    }
    Ok(t.to_owned())
}

/// Checks every label and returns them trimmed (sorted by key).
pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<BTreeMap<String, String>, ValidationError> {
    labels
        .into_iter()
        .map(|(k, v)| {
            let key = validate_label_key(k)?;
            let value = validate_label_value(&key, v)?;
            Ok((key, value))
        })
        .collect()
}

/// Where a workspace is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    /// Being created; not usable yet.
    Creating,
    /// Its VM runs; the TTL clock runs.
    Started,
    /// Its VM does not run; the TTL clock is paused.
    Stopped,
    /// Its TTL ran out; it awaits deletion.
    Expired,
    /// Something failed; see `last_error`.
    Error,
}

impl WorkspaceState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Started => "started",
            Self::Stopped => "stopped",
            Self::Expired => "expired",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "started" => Self::Started,
            "stopped" => Self::Stopped,
            "expired" => Self::Expired,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for WorkspaceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for WorkspaceState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for WorkspaceState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        Self::parse(s).ok_or_else(|| FromSqlError::Other(format!("unknown state `{s}`").into()))
    }
}

/// One workspace as stored, with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceRecord {
    /// Opaque id (primary key; cannot change).
    pub id: String,
    /// Optional free-text name (not unique).
    pub name: Option<String>,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Catalog name of the environment.
    pub environment: String,
    /// Its version.
    pub environment_version: String,
    /// The VMM backend (`firecracker`, `qemu`, ...).
    pub backend: String,
    /// vCPUs.
    pub vcpu_count: i64,
    /// Guest memory, MiB.
    pub mem_mib: i64,
    /// TTL budget, seconds of *running* time.
    pub ttl_seconds: i64,
    /// Unix time of creation.
    pub created_at: f64,
    /// Unix time of the last activity (orders listings).
    pub last_activity_at: f64,
    /// Informational: when the TTL runs out if the workspace keeps running; `None` while it
    /// is not started (the TTL clock is paused).
    pub expires_at: Option<f64>,
    /// Seconds of running time used before `started_at`.
    pub ttl_consumed: f64,
    /// When the current run began; `Some` only while started.
    pub started_at: Option<f64>,
    /// Lifecycle state.
    pub state: WorkspaceState,
    /// The VMM process.
    pub vmm_pid: Option<u32>,
    /// Its start time in clock ticks (tells a reused pid apart).
    pub vmm_start_ticks: Option<u64>,
    /// The vsock relay process, if the backend uses one.
    pub relay_pid: Option<u32>,
    /// Its start time in clock ticks.
    pub relay_start_ticks: Option<u64>,
    /// The last failure, for status output.
    pub last_error: Option<String>,
    /// The seed description (JSON text; the store does not interpret it).
    pub seed_json: String,
    /// Commands recorded since creation or the last reset. Maintained by
    /// [`Tx::next_command_sequence_and_record`] and [`Tx::clear_commands`] only: changes made
    /// to it in [`Store::update_workspace`] are ignored.
    pub command_count: u64,
    /// Resets so far.
    pub reset_count: u64,
    /// Unix time of the last reset.
    pub last_reset_at: Option<f64>,
    /// Network policy name.
    pub network_policy: String,
    /// How the VM was last started: `cold` (booted) or `warm` (restored from a snapshot).
    pub boot_mode: Option<String>,
}

impl WorkspaceRecord {
    /// A record in state `creating` with the reference's defaults (1 vCPU, 1024 MiB, 600 s
    /// TTL, empty seed `{}`, network policy `off`), created and active at `now`.
    pub fn new(
        id: impl Into<String>,
        environment: impl Into<String>,
        environment_version: impl Into<String>,
        backend: impl Into<String>,
        now: f64,
    ) -> Self {
        Self {
            id: id.into(),
            name: None,
            labels: BTreeMap::new(),
            environment: environment.into(),
            environment_version: environment_version.into(),
            backend: backend.into(),
            vcpu_count: 1,
            mem_mib: 1024,
            ttl_seconds: 600,
            created_at: now,
            last_activity_at: now,
            expires_at: None,
            ttl_consumed: 0.0,
            started_at: None,
            state: WorkspaceState::Creating,
            vmm_pid: None,
            vmm_start_ticks: None,
            relay_pid: None,
            relay_start_ticks: None,
            last_error: None,
            seed_json: "{}".into(),
            command_count: 0,
            reset_count: 0,
            last_reset_at: None,
            network_policy: "off".into(),
            boot_mode: None,
        }
    }

    /// Seconds of running time used so far: `ttl_consumed`, plus the current run while
    /// started (a clock that went backwards counts as zero).
    pub fn ttl_used(&self, now: f64) -> f64 {
        let running = match (self.state, self.started_at) {
            (WorkspaceState::Started, Some(s)) => (now - s).max(0.0),
            _ => 0.0,
        };
        self.ttl_consumed + running
    }

    /// Seconds of running time left (never negative). The TTL only counts while started.
    pub fn remaining_ttl(&self, now: f64) -> f64 {
        (self.ttl_seconds as f64 - self.ttl_used(now)).max(0.0)
    }

    /// Whether the workspace is marked expired or has used up its TTL.
    pub fn is_expired(&self, now: f64) -> bool {
        self.state == WorkspaceState::Expired || self.remaining_ttl(now) <= 0.0
    }

    /// Starts the TTL clock: `started_at = now`, `expires_at = now + remaining`. Call when the
    /// workspace enters `started` (the caller sets `state`); a running clock is left alone.
    pub fn resume_ttl(&mut self, now: f64) {
        if self.started_at.is_none() {
            self.started_at = Some(now);
        }
        self.expires_at = Some(now + self.remaining_ttl_at_start(now));
    }

    /// Forgets the VMM and relay of the last boot (they are gone or being ended).
    pub fn forget_processes(&mut self) {
        self.vmm_pid = None;
        self.vmm_start_ticks = None;
        self.relay_pid = None;
        self.relay_start_ticks = None;
    }

    /// Stops the TTL clock: the current run is added to `ttl_consumed`, `started_at` and
    /// `expires_at` are cleared. Call when the workspace leaves `started`, before changing
    /// `state`; harmless when the clock is not running.
    pub fn pause_ttl(&mut self, now: f64) {
        if let Some(s) = self.started_at.take() {
            self.ttl_consumed += (now - s).max(0.0);
        }
        self.expires_at = None;
    }

    /// Remaining TTL counting the current run whatever `state` says (used by
    /// [`Self::resume_ttl`], which is called before `state` becomes `started`).
    fn remaining_ttl_at_start(&self, now: f64) -> f64 {
        let running = self.started_at.map_or(0.0, |s| (now - s).max(0.0));
        (self.ttl_seconds as f64 - self.ttl_consumed - running).max(0.0)
    }
}

/// What [`Store::next_command_sequence_and_record`] needs besides the sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCommand {
    /// The command as the caller shows it (not redacted).
    pub command: String,
    /// Guest working directory.
    pub cwd: String,
    /// Exit code (negative: killed by that signal).
    pub exit_code: i64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Whether the command hit its timeout.
    pub timed_out: bool,
    /// Total stdout bytes produced.
    pub stdout_bytes: u64,
    /// Total stderr bytes produced.
    pub stderr_bytes: u64,
    /// Where the (redacted) stdout is kept.
    pub stdout_path: String,
    /// Where the (redacted) stderr is kept.
    pub stderr_path: String,
    /// Unix time of recording.
    pub recorded_at: f64,
}

/// One recorded exec.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRecord {
    /// The workspace.
    pub workspace_id: String,
    /// 1, 2, ... since creation or the last reset.
    pub sequence: u64,
    /// The command as the caller shows it (not redacted).
    pub command: String,
    /// Guest working directory.
    pub cwd: String,
    /// Exit code (negative: killed by that signal).
    pub exit_code: i64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Whether the command hit its timeout.
    pub timed_out: bool,
    /// Total stdout bytes produced.
    pub stdout_bytes: u64,
    /// Total stderr bytes produced.
    pub stderr_bytes: u64,
    /// Where the (redacted) stdout is kept.
    pub stdout_path: String,
    /// Where the (redacted) stderr is kept.
    pub stderr_path: String,
    /// Unix time of recording.
    pub recorded_at: f64,
}

const WORKSPACE_COLUMNS: &str = "id, name, environment, environment_version, backend, \
    vcpu_count, mem_mib, ttl_seconds, created_at, last_activity_at, expires_at, ttl_consumed, \
    started_at, state, vmm_pid, vmm_start_ticks, relay_pid, relay_start_ticks, last_error, \
    seed_json, command_count, reset_count, last_reset_at, network_policy, boot_mode";

const COMMAND_COLUMNS: &str = "workspace_id, sequence, command, cwd, exit_code, duration_ms, \
    timed_out, stdout_bytes, stderr_bytes, stdout_path, stderr_path, recorded_at";

/// Every column of a workspace row with its value in `rec`, in [`WORKSPACE_COLUMNS`] order:
/// the one list that inserts and updates are written from.
fn workspace_values(rec: &WorkspaceRecord) -> [(&'static str, &dyn ToSql); 25] {
    [
        ("id", &rec.id),
        ("name", &rec.name),
        ("environment", &rec.environment),
        ("environment_version", &rec.environment_version),
        ("backend", &rec.backend),
        ("vcpu_count", &rec.vcpu_count),
        ("mem_mib", &rec.mem_mib),
        ("ttl_seconds", &rec.ttl_seconds),
        ("created_at", &rec.created_at),
        ("last_activity_at", &rec.last_activity_at),
        ("expires_at", &rec.expires_at),
        ("ttl_consumed", &rec.ttl_consumed),
        ("started_at", &rec.started_at),
        ("state", &rec.state),
        ("vmm_pid", &rec.vmm_pid),
        ("vmm_start_ticks", &rec.vmm_start_ticks),
        ("relay_pid", &rec.relay_pid),
        ("relay_start_ticks", &rec.relay_start_ticks),
        ("last_error", &rec.last_error),
        ("seed_json", &rec.seed_json),
        ("command_count", &rec.command_count),
        ("reset_count", &rec.reset_count),
        ("last_reset_at", &rec.last_reset_at),
        ("network_policy", &rec.network_policy),
        ("boot_mode", &rec.boot_mode),
    ]
}

/// Reads a row selected with [`WORKSPACE_COLUMNS`] (labels are filled in separately).
fn workspace_from_row(r: &Row<'_>) -> rusqlite::Result<WorkspaceRecord> {
    Ok(WorkspaceRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        labels: BTreeMap::new(),
        environment: r.get(2)?,
        environment_version: r.get(3)?,
        backend: r.get(4)?,
        vcpu_count: r.get(5)?,
        mem_mib: r.get(6)?,
        ttl_seconds: r.get(7)?,
        created_at: r.get(8)?,
        last_activity_at: r.get(9)?,
        expires_at: r.get(10)?,
        ttl_consumed: r.get(11)?,
        started_at: r.get(12)?,
        state: r.get(13)?,
        vmm_pid: r.get(14)?,
        vmm_start_ticks: r.get(15)?,
        relay_pid: r.get(16)?,
        relay_start_ticks: r.get(17)?,
        last_error: r.get(18)?,
        seed_json: r.get(19)?,
        command_count: r.get(20)?,
        reset_count: r.get(21)?,
        last_reset_at: r.get(22)?,
        network_policy: r.get(23)?,
        boot_mode: r.get(24)?,
    })
}

/// Reads a row selected with [`COMMAND_COLUMNS`].
fn command_from_row(r: &Row<'_>) -> rusqlite::Result<CommandRecord> {
    Ok(CommandRecord {
        workspace_id: r.get(0)?,
        sequence: r.get(1)?,
        command: r.get(2)?,
        cwd: r.get(3)?,
        exit_code: r.get(4)?,
        duration_ms: r.get(5)?,
        timed_out: r.get(6)?,
        stdout_bytes: r.get(7)?,
        stderr_bytes: r.get(8)?,
        stdout_path: r.get(9)?,
        stderr_path: r.get(10)?,
        recorded_at: r.get(11)?,
    })
}

/// Clamps a count for SQLite's signed `LIMIT`/`OFFSET`.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An open transaction; see [`Store::with_tx`] and [`Store::with_read`].
pub struct Tx<'c> {
    tx: Transaction<'c>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The workspace `id`, or `None`.
    pub fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        let sql_text = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?1");
        let rec = self
            .tx
            .query_row(&sql_text, [id], workspace_from_row)
            .optional()
            .map_err(sql("read a workspace"))?;
        let Some(mut rec) = rec else {
            return Ok(None);
        };
        let mut stmt = self
            .tx
            .prepare("SELECT key, value FROM labels WHERE workspace_id = ?1")
            .map_err(sql("read labels"))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql("read labels"))?;
        for row in rows {
            let (k, v) = row.map_err(sql("read labels"))?;
            rec.labels.insert(k, v);
        }
        Ok(Some(rec))
    }

    /// The workspace `id`, or [`StoreError::NotFound`].
    pub fn require_workspace(&self, id: &str) -> Result<WorkspaceRecord, StoreError> {
        self.get_workspace(id)?
            .ok_or_else(|| StoreError::NotFound { id: id.to_owned() })
    }

    /// Every workspace, most recently active first (then newest, then by id).
    pub fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        {
            let mut stmt = self
                .tx
                .prepare("SELECT workspace_id, key, value FROM labels")
                .map_err(sql("read labels"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql("read labels"))?;
            for row in rows {
                let (id, k, v) = row.map_err(sql("read labels"))?;
                labels.entry(id).or_default().insert(k, v);
            }
        }
        let sql_text = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces \
             ORDER BY last_activity_at DESC, created_at DESC, id"
        );
        let mut stmt = self.tx.prepare(&sql_text).map_err(sql("list workspaces"))?;
        let rows = stmt
            .query_map([], workspace_from_row)
            .map_err(sql("list workspaces"))?;
        let mut out = Vec::new();
        for row in rows {
            let mut rec = row.map_err(sql("list workspaces"))?;
            rec.labels = labels.remove(&rec.id).unwrap_or_default();
            out.push(rec);
        }
        Ok(out)
    }

    /// Adds a new workspace with its labels; [`StoreError::AlreadyExists`] if the id is taken.
    pub fn insert_workspace(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        let exists = self
            .tx
            .query_row("SELECT 1 FROM workspaces WHERE id = ?1", [&rec.id], |_| {
                Ok(())
            })
            .optional()
            .map_err(sql("check a workspace id"))?
            .is_some();
        if exists {
            return Err(StoreError::AlreadyExists { id: rec.id.clone() });
        }
        let values = workspace_values(rec);
        let placeholders: Vec<String> = (1..=values.len()).map(|n| format!("?{n}")).collect();
        let sql_text = format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES ({})",
            placeholders.join(", ")
        );
        self.tx
            .execute(
                &sql_text,
                rusqlite::params_from_iter(values.iter().map(|(_, v)| *v)),
            )
            .map_err(sql("insert a workspace"))?;
        self.set_labels(&rec.id, &rec.labels)
    }

    /// Writes every column of `rec` except `id` and `command_count`, and replaces its labels.
    fn write_workspace(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        // `command_count` belongs to the command log's own transactions.
        let values: Vec<(&str, &dyn ToSql)> = workspace_values(rec)
            .into_iter()
            .filter(|(column, _)| !matches!(*column, "id" | "command_count"))
            .collect();
        let sets: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(n, (column, _))| format!("{column} = ?{}", n + 2))
            .collect();
        let sql_text = format!("UPDATE workspaces SET {} WHERE id = ?1", sets.join(", "));
        let changed = self
            .tx
            .execute(
                &sql_text,
                rusqlite::params_from_iter(
                    std::iter::once(&rec.id as &dyn ToSql).chain(values.iter().map(|(_, v)| *v)),
                ),
            )
            .map_err(sql("update a workspace"))?;
        if changed == 0 {
            return Err(StoreError::NotFound { id: rec.id.clone() });
        }
        self.tx
            .execute("DELETE FROM labels WHERE workspace_id = ?1", [&rec.id])
            .map_err(sql("replace labels"))?;
        self.set_labels(&rec.id, &rec.labels)
    }

    /// Reads workspace `id`, lets `f` change it, and writes it back (labels included).
    /// Changes to `id` are refused and changes to `command_count` ignored.
    pub fn update_workspace<E: From<StoreError>>(
        &self,
        id: &str,
        f: impl FnOnce(&mut WorkspaceRecord) -> Result<(), E>,
    ) -> Result<WorkspaceRecord, E> {
        let before = self.require_workspace(id)?;
        let mut rec = before.clone();
        f(&mut rec)?;
        if rec.id != before.id {
            return Err(StoreError::IdChanged {
                id: before.id,
                new_id: rec.id,
            }
            .into());
        }
        rec.command_count = before.command_count;
        if rec != before {
            self.write_workspace(&rec)?;
        }
        Ok(rec)
    }

    /// Adds or replaces labels of workspace `id` (others are kept).
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        if labels.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .tx
            .prepare(
                "INSERT INTO labels (workspace_id, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (workspace_id, key) DO UPDATE SET value = excluded.value",
            )
            .map_err(sql("write labels"))?;
        for (k, v) in labels {
            stmt.execute(params![id, k, v]).map_err(|source| {
                if is_foreign_key_violation(&source) {
                    StoreError::NotFound { id: id.to_owned() }
                } else {
                    StoreError::Sqlite {
                        op: "write labels",
                        source,
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Removes the labels `keys` of workspace `id` (absent keys are ignored); returns how many
    /// were removed.
    pub fn clear_labels<'k>(
        &self,
        id: &str,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<usize, StoreError> {
        let mut stmt = self
            .tx
            .prepare("DELETE FROM labels WHERE workspace_id = ?1 AND key = ?2")
            .map_err(sql("remove labels"))?;
        let mut removed = 0;
        for k in keys {
            removed += stmt.execute(params![id, k]).map_err(sql("remove labels"))?;
        }
        Ok(removed)
    }

    /// Deletes workspace `id` with its labels and command history; `false` if it did not exist.
    pub fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM workspaces WHERE id = ?1", [id])
            .map_err(sql("delete a workspace"))?;
        Ok(n > 0)
    }

    /// Allocates the next command sequence of workspace `id` (`command_count + 1`), records
    /// the command `build(sequence)` returns, bumps `command_count` and moves
    /// `last_activity_at` forward to the command's `recorded_at`. `build` runs inside the
    /// write transaction: keep it quick (compute paths, not output writes).
    pub fn next_command_sequence_and_record(
        &self,
        id: &str,
        build: impl FnOnce(u64) -> NewCommand,
    ) -> Result<CommandRecord, StoreError> {
        let count: u64 = self
            .tx
            .query_row(
                "SELECT command_count FROM workspaces WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("allocate a command sequence"))?
            .ok_or_else(|| StoreError::NotFound { id: id.to_owned() })?;
        let sequence = count + 1;
        let c = build(sequence);
        let sql_text = format!(
            "INSERT INTO commands ({COMMAND_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        );
        self.tx
            .execute(
                &sql_text,
                params![
                    id,
                    sequence,
                    c.command,
                    c.cwd,
                    c.exit_code,
                    c.duration_ms,
                    c.timed_out,
                    c.stdout_bytes,
                    c.stderr_bytes,
                    c.stdout_path,
                    c.stderr_path,
                    c.recorded_at,
                ],
            )
            .map_err(sql("record a command"))?;
        self.tx
            .execute(
                "UPDATE workspaces SET command_count = ?2, \
                 last_activity_at = MAX(last_activity_at, ?3) WHERE id = ?1",
                params![id, sequence, c.recorded_at],
            )
            .map_err(sql("count a command"))?;
        Ok(CommandRecord {
            workspace_id: id.to_owned(),
            sequence,
            command: c.command,
            cwd: c.cwd,
            exit_code: c.exit_code,
            duration_ms: c.duration_ms,
            timed_out: c.timed_out,
            stdout_bytes: c.stdout_bytes,
            stderr_bytes: c.stderr_bytes,
            stdout_path: c.stdout_path,
            stderr_path: c.stderr_path,
            recorded_at: c.recorded_at,
        })
    }

    /// Up to `limit` recorded commands of workspace `id`, oldest first, skipping `offset`.
    pub fn commands(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        self.command_count(id)?;
        let sql_text = format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE workspace_id = ?1 \
             ORDER BY sequence LIMIT ?2 OFFSET ?3"
        );
        let mut stmt = self.tx.prepare(&sql_text).map_err(sql("read commands"))?;
        let rows = stmt
            .query_map(
                params![id, sql_count(limit), sql_count(offset)],
                command_from_row,
            )
            .map_err(sql("read commands"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read commands"))
    }

    /// The most recent command of workspace `id`, if any.
    pub fn last_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let sql_text = format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE workspace_id = ?1 \
             ORDER BY sequence DESC LIMIT 1"
        );
        self.tx
            .query_row(&sql_text, [id], command_from_row)
            .optional()
            .map_err(sql("read the last command"))
    }

    /// How many commands workspace `id` has recorded since creation or its last reset.
    pub fn command_count(&self, id: &str) -> Result<u64, StoreError> {
        self.tx
            .query_row(
                "SELECT command_count FROM workspaces WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("count commands"))?
            .ok_or_else(|| StoreError::NotFound { id: id.to_owned() })
    }

    /// Forgets the command history of workspace `id` (reset): the next sequence is 1 again.
    /// Returns how many records were removed; the output files are the caller's to delete.
    pub fn clear_commands(&self, id: &str) -> Result<u64, StoreError> {
        let changed = self
            .tx
            .execute(
                "UPDATE workspaces SET command_count = 0 WHERE id = ?1",
                [id],
            )
            .map_err(sql("clear commands"))?;
        if changed == 0 {
            return Err(StoreError::NotFound { id: id.to_owned() });
        }
        let n = self
            .tx
            .execute("DELETE FROM commands WHERE workspace_id = ?1", [id])
            .map_err(sql("clear commands"))?;
        Ok(n as u64)
    }
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// One connection to `<state_dir>/pyro.db`. The connection sits behind a mutex so a
/// `Store` is `Sync` and async code may hold one across `.await` (each transaction is short).
#[derive(Debug)]
pub struct Store {
    conn: std::sync::Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0600) `<state_dir>/pyro.db` and migrates its schema forward.
    /// The directory must exist.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        if !state_dir.is_dir() {
            return Err(StoreError::StateDirMissing {
                path: state_dir.to_path_buf(),
            });
        }
        let path = state_dir.join(DB_FILE_NAME);
        // Create the file ourselves so it is private from the first byte; SQLite gives the
        // -wal and -shm files the same mode.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Create {
                path: path.clone(),
                source,
            })?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        // The busy timeout first: switching to WAL and migrating may wait for other openers.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Several processes opening a new database at once race to switch it to WAL; SQLite
        // can answer that race with SQLITE_BUSY without waiting (its deadlock avoidance), so
        // the switch is retried until the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mode: String = loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other.map_err(open_err)?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        // In WAL mode NORMAL never corrupts; a power cut can only lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        let store = Self {
            conn: std::sync::Mutex::new(conn),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the migrations this database lacks, in one write transaction.
    fn migrate(&self) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(sql("begin the schema migration"))?;
        let found: u32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("read the schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        for step in &MIGRATIONS[found as usize..] {
            tx.execute_batch(step).map_err(sql("migrate the schema"))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("write the schema version"))?;
        tx.commit().map_err(sql("commit the schema migration"))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("read the schema version"))
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`: the database's write lock is taken
    /// first, waiting up to [`BUSY_TIMEOUT`] for other writers), committing when it returns
    /// `Ok` and rolling back when it fails or panics. Transactions do not nest: do not call
    /// `Store` methods of the same `Store` from inside `f`, use `f`'s [`Tx`].
    pub fn with_tx<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run_tx(TransactionBehavior::Immediate, f)
    }

    /// Runs `f` in a read transaction: it sees one consistent snapshot and never waits for
    /// writers. Writing from it may fail with a busy error; use [`Self::with_tx`] to write.
    pub fn with_read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run_tx(TransactionBehavior::Deferred, f)
    }

    fn run_tx<T, E: From<StoreError>>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = Transaction::new_unchecked(&conn, behavior).map_err(sql("begin a transaction"))?;
        let tx = Tx { tx };
        // On error or panic `tx` is dropped, which rolls back.
        let out = f(&tx)?;
        tx.tx.commit().map_err(sql("commit a transaction"))?;
        Ok(out)
    }

    /// Adds a new workspace; see [`Tx::insert_workspace`].
    pub fn insert_workspace(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        self.with_tx(|tx| tx.insert_workspace(rec))
    }

    /// The workspace `id`, or `None`.
    pub fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.with_read(|tx| tx.get_workspace(id))
    }

    /// Every workspace, most recently active first (then newest, then by id).
    pub fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        self.with_read(|tx| tx.list_workspaces())
    }

    /// Read-modify-write of workspace `id` in one write transaction; `f` failing leaves it
    /// unchanged. Returns the record as written; see [`Tx::update_workspace`].
    pub fn update_workspace<E: From<StoreError>>(
        &self,
        id: &str,
        f: impl FnOnce(&mut WorkspaceRecord) -> Result<(), E>,
    ) -> Result<WorkspaceRecord, E> {
        self.with_tx(|tx| tx.update_workspace(id, f))
    }

    /// Adds or replaces labels of workspace `id`; see [`Tx::set_labels`].
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            tx.require_workspace(id)?;
            tx.set_labels(id, labels)
        })
    }

    /// Removes labels of workspace `id`; see [`Tx::clear_labels`].
    pub fn clear_labels<'k>(
        &self,
        id: &str,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<usize, StoreError> {
        self.with_tx(|tx| {
            tx.require_workspace(id)?;
            tx.clear_labels(id, keys)
        })
    }

    /// Deletes workspace `id` with its labels and history; `false` if it did not exist.
    pub fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        self.with_tx(|tx| tx.delete_workspace(id))
    }

    /// Records a command under the next sequence; see [`Tx::next_command_sequence_and_record`].
    pub fn next_command_sequence_and_record(
        &self,
        id: &str,
        build: impl FnOnce(u64) -> NewCommand,
    ) -> Result<CommandRecord, StoreError> {
        self.with_tx(|tx| tx.next_command_sequence_and_record(id, build))
    }

    /// A page of recorded commands, oldest first; see [`Tx::commands`].
    pub fn commands(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        self.with_read(|tx| tx.commands(id, offset, limit))
    }

    /// The most recent command of workspace `id`, if any.
    pub fn last_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.with_read(|tx| tx.last_command(id))
    }

    /// How many commands workspace `id` has recorded since creation or its last reset.
    pub fn command_count(&self, id: &str) -> Result<u64, StoreError> {
        self.with_read(|tx| tx.command_count(id))
    }

    /// Forgets the command history of workspace `id`; see [`Tx::clear_commands`].
    pub fn clear_commands(&self, id: &str) -> Result<u64, StoreError> {
        self.with_tx(|tx| tx.clear_commands(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const CHILD_DIR_ENV: &str = "PYRO_STORE_TEST_DIR";
    const CHILD_MODE_ENV: &str = "PYRO_STORE_TEST_MODE";

    fn ws(id: &str, now: f64) -> WorkspaceRecord {
        WorkspaceRecord::new(id, "debian:12", "1.0.0", "firecracker", now)
    }

    fn cmd(tag: &str, seq: u64) -> NewCommand {
        NewCommand {
            command: format!("echo {tag}"),
            cwd: "/workspace".into(),
            exit_code: 0,
            duration_ms: 3,
            timed_out: false,
            stdout_bytes: 5,
            stderr_bytes: 0,
            stdout_path: format!("commands/{seq:06}.stdout"),
            stderr_path: format!("commands/{tag}"),
            recorded_at: 1000.0 + seq as f64,
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir).unwrap()
    }

    /// Asserts the history of `id` is exactly 1..=n with matching `command_count`.
    fn assert_gap_free(store: &Store, id: &str, n: u64) -> Vec<CommandRecord> {
        let all = store.commands(id, 0, u64::MAX).unwrap();
        let seqs: Vec<u64> = all.iter().map(|c| c.sequence).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        assert_eq!(store.command_count(id).unwrap(), n);
        for c in &all {
            assert_eq!(c.stdout_path, format!("commands/{:06}.stdout", c.sequence));
        }
        all
    }

    #[test]
    fn schema_is_created_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            s.insert_workspace(&ws("a", 1.0)).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.path(), dir.path().join(DB_FILE_NAME));
        assert_eq!(s.get_workspace("a").unwrap().unwrap(), ws("a", 1.0));
    }

    #[test]
    fn database_is_private_and_in_wal_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mode: String = s
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: bool = s
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert!(fk);
        let sync: i64 = s
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        for name in [DB_FILE_NAME, "pyro.db-wal", "pyro.db-shm"] {
            let m = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o077, 0, "{name}");
        }
    }

    #[test]
    fn a_missing_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            Store::open(&missing),
            Err(StoreError::StateDirMissing { path }) if path == missing
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn the_value_list_matches_the_selected_columns() {
        let rec = ws("a", 1.0);
        let names: Vec<&str> = workspace_values(&rec).iter().map(|(c, _)| *c).collect();
        let columns: Vec<&str> = WORKSPACE_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            names, columns,
            "workspace_from_row reads by these positions"
        );
    }

    #[test]
    fn a_version_1_database_is_migrated_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        {
            let raw = Connection::open(&path).unwrap();
            raw.execute_batch(MIGRATIONS[0]).unwrap();
            raw.execute(
                "INSERT INTO workspaces (id, environment, environment_version, backend, \
                 vcpu_count, mem_mib, ttl_seconds, created_at, last_activity_at, state, \
                 network_policy) VALUES ('old', 'debian:12', '1.0.0', 'qemu', 1, 1024, 600, \
                 1.0, 1.0, 'stopped', 'off')",
                [],
            )
            .unwrap();
            raw.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let old = s.get_workspace("old").unwrap().unwrap();
        assert_eq!(old.environment, "debian:12");
        assert_eq!(old.boot_mode, None);
        s.update_workspace("old", |r| {
            r.boot_mode = Some("warm".into());
            Ok::<(), StoreError>(())
        })
        .unwrap();
        assert_eq!(
            s.get_workspace("old")
                .unwrap()
                .unwrap()
                .boot_mode
                .as_deref(),
            Some("warm")
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let raw = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .unwrap();
        drop(raw);
        match Store::open(dir.path()) {
            Err(StoreError::SchemaTooNew {
                found, supported, ..
            }) => {
                assert_eq!(found, SCHEMA_VERSION + 5);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn concurrent_first_opens_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || Store::open(&d).map(|s| s.schema_version()))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap().unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn workspace_crud_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut a = ws("a", 10.0);
        a.name = Some("alpha".into());
        a.labels.insert("team".into(), "core".into());
        a.labels.insert("env".into(), "dev".into());
        a.vmm_pid = Some(1234);
        a.vmm_start_ticks = Some(u64::from(u32::MAX) + 7);
        s.insert_workspace(&a).unwrap();
        assert!(matches!(
            s.insert_workspace(&a),
            Err(StoreError::AlreadyExists { id }) if id == "a"
        ));
        s.insert_workspace(&ws("b", 20.0)).unwrap();
        s.insert_workspace(&ws("c", 20.0)).unwrap();
        assert_eq!(s.get_workspace("a").unwrap().unwrap(), a);
        assert!(s.get_workspace("zzz").unwrap().is_none());

        // Most recently active first, then newest, then id.
        let ids: Vec<String> = s
            .list_workspaces()
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["b", "c", "a"]);
        s.update_workspace::<StoreError>("a", |w| {
            w.last_activity_at = 30.0;
            Ok(())
        })
        .unwrap();
        let list = s.list_workspaces().unwrap();
        assert_eq!(list[0].id, "a");
        assert_eq!(list[0].labels.len(), 2);

        let mut more = BTreeMap::new();
        more.insert("team".to_string(), "infra".to_string());
        more.insert("tier".to_string(), "1".to_string());
        s.set_labels("a", &more).unwrap();
        let got = s.get_workspace("a").unwrap().unwrap().labels;
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                ("env".to_string(), "dev".to_string()),
                ("team".to_string(), "infra".to_string()),
                ("tier".to_string(), "1".to_string()),
            ]
        );
        assert_eq!(s.clear_labels("a", ["env", "absent"]).unwrap(), 1);
        assert_eq!(s.get_workspace("a").unwrap().unwrap().labels.len(), 2);
        assert!(matches!(
            s.set_labels("zzz", &more),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.clear_labels("zzz", ["x"]),
            Err(StoreError::NotFound { .. })
        ));

        // Labels can also be rewritten whole through an update.
        let w = s
            .update_workspace::<StoreError>("a", |w| {
                w.labels.clear();
                w.labels.insert("only".into(), "one".into());
                Ok(())
            })
            .unwrap();
        assert_eq!(s.get_workspace("a").unwrap().unwrap(), w);

        s.next_command_sequence_and_record("a", |n| cmd("a", n))
            .unwrap();
        assert!(s.delete_workspace("a").unwrap());
        assert!(!s.delete_workspace("a").unwrap());
        assert!(s.get_workspace("a").unwrap().is_none());
        // Labels and commands went with it.
        let orphans: i64 = s
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM labels WHERE workspace_id = 'a') + \
                 (SELECT COUNT(*) FROM commands WHERE workspace_id = 'a')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
    }

    #[test]
    fn update_errors_leave_the_record_unchanged() {
        #[derive(Debug)]
        enum AppError {
            Store,
            WrongState,
        }
        impl From<StoreError> for AppError {
            fn from(_: StoreError) -> Self {
                Self::Store
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        let before = s.get_workspace("a").unwrap().unwrap();
        let r = s.update_workspace("a", |w| {
            w.name = Some("changed".into());
            Err(AppError::WrongState)
        });
        assert!(matches!(r, Err(AppError::WrongState)));
        assert!(matches!(
            s.update_workspace("zzz", |_| Ok::<(), AppError>(())),
            Err(AppError::Store)
        ));
        assert!(matches!(
            s.update_workspace::<StoreError>("a", |w| {
                w.id = "b".into();
                Ok(())
            }),
            Err(StoreError::IdChanged { .. })
        ));
        // command_count belongs to the command methods.
        let w = s
            .update_workspace::<StoreError>("a", |w| {
                w.command_count = 99;
                Ok(())
            })
            .unwrap();
        assert_eq!(w.command_count, 0);
        assert_eq!(s.get_workspace("a").unwrap().unwrap(), before);
    }

    #[test]
    fn commands_are_paged_oldest_first_and_cleared_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        assert!(s.last_command("a").unwrap().is_none());
        for _ in 0..10 {
            s.next_command_sequence_and_record("a", |n| cmd("t", n))
                .unwrap();
        }
        let page = s.commands("a", 3, 4).unwrap();
        assert_eq!(
            page.iter().map(|c| c.sequence).collect::<Vec<_>>(),
            [4, 5, 6, 7]
        );
        assert_eq!(
            page[0],
            CommandRecord {
                workspace_id: "a".into(),
                sequence: 4,
                command: "echo t".into(),
                cwd: "/workspace".into(),
                exit_code: 0,
                duration_ms: 3,
                timed_out: false,
                stdout_bytes: 5,
                stderr_bytes: 0,
                stdout_path: "commands/000004.stdout".into(),
                stderr_path: "commands/t".into(),
                recorded_at: 1004.0,
            }
        );
        assert!(s.commands("a", 10, 5).unwrap().is_empty());
        assert_eq!(s.last_command("a").unwrap().unwrap().sequence, 10);
        // Recording touched activity.
        assert_eq!(
            s.get_workspace("a").unwrap().unwrap().last_activity_at,
            1010.0
        );
        assert!(matches!(
            s.commands("zzz", 0, 1),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.next_command_sequence_and_record("zzz", |n| cmd("t", n)),
            Err(StoreError::NotFound { .. })
        ));

        assert_eq!(s.clear_commands("a").unwrap(), 10);
        assert_eq!(s.command_count("a").unwrap(), 0);
        assert!(s.commands("a", 0, 100).unwrap().is_empty());
        let c = s
            .next_command_sequence_and_record("a", |n| cmd("t", n))
            .unwrap();
        assert_eq!(c.sequence, 1);
        assert!(matches!(
            s.clear_commands("zzz"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn several_operations_in_one_transaction_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.with_tx(|tx| {
            tx.insert_workspace(&ws("a", 1.0))?;
            tx.next_command_sequence_and_record("a", |n| cmd("t", n))?;
            tx.update_workspace::<StoreError>("a", |w| {
                w.state = WorkspaceState::Started;
                Ok(())
            })
        })
        .unwrap();
        let w = s.get_workspace("a").unwrap().unwrap();
        assert_eq!(w.state, WorkspaceState::Started);
        assert_eq!(w.command_count, 1);
    }

    #[test]
    fn a_failed_or_panicking_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("keep", 1.0)).unwrap();
        let r: Result<(), StoreError> = s.with_tx(|tx| {
            tx.insert_workspace(&ws("x", 1.0))?;
            tx.next_command_sequence_and_record("keep", |n| cmd("t", n))?;
            Err(StoreError::NotFound { id: "boom".into() })
        });
        assert!(r.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = s.with_tx::<(), StoreError>(|tx| {
                tx.insert_workspace(&ws("y", 1.0))?;
                tx.delete_workspace("keep")?;
                panic!("writer crashed mid-transaction");
            });
        }));
        assert!(panicked.is_err());
        // The same connection is usable again and sees only committed state.
        let ids: Vec<String> = s
            .list_workspaces()
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["keep"]);
        assert_eq!(s.command_count("keep").unwrap(), 0);
        s.next_command_sequence_and_record("keep", |n| cmd("t", n))
            .unwrap();
        assert_gap_free(&s, "keep", 1);
    }

    #[test]
    fn concurrent_writers_on_eight_connections_get_gap_free_sequences() {
        const THREADS: u64 = 8;
        const EACH: u64 = 200;
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).insert_workspace(&ws("a", 1.0)).unwrap();
        let start = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = Store::open(&d).unwrap();
                    for _ in 0..EACH {
                        s.next_command_sequence_and_record("a", |n| cmd(&format!("t{t}"), n))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = THREADS * EACH;
        let elapsed = start.elapsed();
        eprintln!(
            "{total} commands from {THREADS} threads in {elapsed:?}: {:.3} ms per command",
            elapsed.as_secs_f64() * 1000.0 / total as f64
        );
        let s = open(dir.path());
        let all = assert_gap_free(&s, "a", total);
        for t in 0..THREADS {
            let tag = format!("commands/t{t}");
            assert_eq!(
                all.iter().filter(|c| c.stderr_path == tag).count() as u64,
                EACH
            );
        }
    }

    #[test]
    fn uncontended_recording_is_fast() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        let n: u32 = 500;
        let start = Instant::now();
        for _ in 0..n {
            s.next_command_sequence_and_record("a", |n| cmd("t", n))
                .unwrap();
        }
        let per = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
        eprintln!("uncontended: {per:.3} ms per recorded command");
        assert_gap_free(&s, "a", u64::from(n));
    }

    #[test]
    fn concurrent_updates_are_serialized() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).insert_workspace(&ws("a", 1.0)).unwrap();
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = Store::open(&d).unwrap();
                    for _ in 0..500 {
                        s.update_workspace::<StoreError>("a", |w| {
                            w.reset_count += 1;
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let w = open(dir.path()).get_workspace("a").unwrap().unwrap();
        assert_eq!(w.reset_count, 2500);
    }

    /// Child half of the multi-process tests; does nothing unless run by one of them.
    #[test]
    #[ignore = "helper run by other tests in a child process"]
    fn child_process_helper() {
        let (Some(dir), Ok(mode)) = (
            std::env::var_os(CHILD_DIR_ENV),
            std::env::var(CHILD_MODE_ENV),
        ) else {
            return;
        };
        let s = Store::open(Path::new(&dir)).unwrap();
        if let Some(tag) = mode.strip_prefix("record:") {
            for _ in 0..200 {
                s.next_command_sequence_and_record("a", |n| cmd(tag, n))
                    .unwrap();
            }
        } else if mode == "crash" {
            let _ = s.with_tx::<(), StoreError>(|tx| {
                tx.insert_workspace(&ws("ghost", 1.0))?;
                for _ in 0..50 {
                    tx.next_command_sequence_and_record("a", |n| cmd("ghost", n))?;
                }
                tx.delete_workspace("a")?;
                // Dies holding the write lock with uncommitted pages in the WAL.
                std::process::abort();
            });
        }
    }

    fn spawn_child(dir: &Path, mode: &str) -> std::process::Child {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::child_process_helper",
                "--ignored",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD_DIR_ENV, dir)
            .env(CHILD_MODE_ENV, mode)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn concurrent_writers_in_two_processes_get_gap_free_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        let start = Instant::now();
        let children = [
            spawn_child(dir.path(), "record:p1"),
            spawn_child(dir.path(), "record:p2"),
        ];
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        eprintln!("2 processes x 200 commands in {:?}", start.elapsed());
        let all = assert_gap_free(&s, "a", 400);
        for tag in ["commands/p1", "commands/p2"] {
            assert_eq!(all.iter().filter(|c| c.stderr_path == tag).count(), 200);
        }
    }

    #[test]
    fn a_writer_process_dying_mid_transaction_leaves_the_database_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        for _ in 0..3 {
            s.next_command_sequence_and_record("a", |n| cmd("t", n))
                .unwrap();
        }
        let status = spawn_child(dir.path(), "crash").wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
        let check: String = s
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert!(s.get_workspace("ghost").unwrap().is_none());
        assert_gap_free(&s, "a", 3);
        // The dead writer's lock is gone: writing works at once.
        let t = Instant::now();
        s.next_command_sequence_and_record("a", |n| cmd("t", n))
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(s);
        assert_gap_free(&open(dir.path()), "a", 4);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        let ok: &[(&str, &str)] = &[
            ("a", "a"),
            ("  my workspace  ", "my workspace"),
            ("ünïcødé ✓", "ünïcødé ✓"),
        ];
        for (input, want) in ok {
            assert_eq!(validate_name(input).unwrap(), *want);
        }
        assert_eq!(
            validate_name(&"é".repeat(120)).unwrap().chars().count(),
            120
        );
        assert_eq!(validate_name(""), Err(ValidationError::NameEmpty));
        assert_eq!(validate_name(" \t\n "), Err(ValidationError::NameEmpty));
        assert_eq!(
            validate_name(&"x".repeat(121)),
            Err(ValidationError::NameTooLong { len: 121, max: 120 })
        );
        assert_eq!(
            validate_name(&format!("  {}  ", "x".repeat(120)))
                .unwrap()
                .len(),
            120
        );
    }

    #[test]
    fn label_keys_follow_the_contract_pattern() {
        let long_ok = format!("a{}", "b".repeat(63));
        for key in [
            "a",
            "Z9",
            "0",
            "team.name",
            "a_b-c.d",
            long_ok.as_str(),
            " padded ",
        ] {
            assert_eq!(validate_label_key(key).unwrap(), key.trim(), "{key:?}");
        }
        let too_long = "a".repeat(65);
        let bad = [
            "",
            "   ",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "a:b",
            "é",
            "aé",
            too_long.as_str(),
        ];
        for key in bad {
            match validate_label_key(key) {
                Err(ValidationError::LabelKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?}: unexpected {other:?}"),
            }
        }
        let e = validate_label_key("-a").unwrap_err().to_string();
        assert!(e.contains(LABEL_KEY_RULE), "{e}");
    }

    #[test]
    fn label_values_are_trimmed_bounded_and_single_line() {
        assert_eq!(validate_label_value("k", " v ").unwrap(), "v");
        assert_eq!(validate_label_value("k", "a b=c").unwrap(), "a b=c");
        // Surrounding line breaks are trimmed away, inner ones are refused.
        assert_eq!(validate_label_value("k", "\nv\r\n").unwrap(), "v");
        assert_eq!(
            validate_label_value("k", "  "),
            Err(ValidationError::LabelValueEmpty { key: "k".into() })
        );
        for v in ["a\nb", "a\rb", "a\r\nb"] {
            assert_eq!(
                validate_label_value("k", v),
                Err(ValidationError::LabelValueLineBreak { key: "k".into() })
            );
        }
        assert!(validate_label_value("k", &"é".repeat(120)).is_ok());
        assert_eq!(
            validate_label_value("k", &"v".repeat(121)),
            Err(ValidationError::LabelValueTooLong {
                key: "k".into(),
                len: 121,
                max: 120
            })
        );
        let mut m = BTreeMap::new();
        m.insert(" b ".to_string(), " 2 ".to_string());
        m.insert("a".to_string(), "1".to_string());
        let v = validate_labels(&m).unwrap();
        assert_eq!(
            v.into_iter().collect::<Vec<_>>(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        m.insert("c".to_string(), "x\ny".to_string());
        assert!(matches!(
            validate_labels(&m),
            Err(ValidationError::LabelValueLineBreak { key }) if key == "c"
        ));
    }

    #[test]
    fn ttl_only_runs_while_started() {
        let mut w = ws("a", 1000.0);
        w.ttl_seconds = 600;
        // Created but never started: nothing used, no expiry time.
        assert_eq!(w.remaining_ttl(5000.0), 600.0);
        assert!(!w.is_expired(5000.0));
        assert_eq!(w.expires_at, None);

        w.resume_ttl(1000.0);
        w.state = WorkspaceState::Started;
        assert_eq!(w.started_at, Some(1000.0));
        assert_eq!(w.expires_at, Some(1600.0));
        assert_eq!(w.remaining_ttl(1100.0), 500.0);
        assert_eq!(w.ttl_used(1100.0), 100.0);

        // Stopped after 250 s: the clock pauses.
        w.pause_ttl(1250.0);
        w.state = WorkspaceState::Stopped;
        assert_eq!(w.ttl_consumed, 250.0);
        assert_eq!(w.started_at, None);
        assert_eq!(w.expires_at, None);
        assert_eq!(w.remaining_ttl(9000.0), 350.0);
        assert!(!w.is_expired(9000.0));

        // Started again much later: expiry is now + what is left.
        w.resume_ttl(10_000.0);
        w.state = WorkspaceState::Started;
        assert_eq!(w.expires_at, Some(10_350.0));
        // Resuming a running clock keeps its start.
        w.resume_ttl(10_100.0);
        assert_eq!(w.started_at, Some(10_000.0));
        assert_eq!(w.expires_at, Some(10_350.0));
        assert!(!w.is_expired(10_349.0));
        assert!(w.is_expired(10_350.0));
        assert_eq!(w.remaining_ttl(20_000.0), 0.0);

        // A clock that went backwards counts as no time.
        assert_eq!(w.remaining_ttl(9_000.0), 350.0);

        // A stopped workspace that used its budget is expired; so is one marked expired.
        w.pause_ttl(10_400.0);
        w.state = WorkspaceState::Stopped;
        assert_eq!(w.ttl_consumed, 650.0);
        assert!(w.is_expired(10_400.0));
        let mut fresh = ws("b", 0.0);
        fresh.state = WorkspaceState::Expired;
        assert!(fresh.is_expired(0.0));
    }

    #[test]
    fn ttl_fields_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_workspace(&ws("a", 1.0)).unwrap();
        let w = s
            .update_workspace::<StoreError>("a", |w| {
                w.resume_ttl(100.0);
                w.state = WorkspaceState::Started;
                Ok(())
            })
            .unwrap();
        let got = s.get_workspace("a").unwrap().unwrap();
        assert_eq!(got, w);
        assert_eq!(got.expires_at, Some(700.0));
        assert_eq!(got.state, WorkspaceState::Started);
    }

    #[test]
    fn states_have_stable_spellings() {
        for st in [
            WorkspaceState::Creating,
            WorkspaceState::Started,
            WorkspaceState::Stopped,
            WorkspaceState::Expired,
            WorkspaceState::Error,
        ] {
            assert_eq!(WorkspaceState::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert_eq!(WorkspaceState::parse("running"), None);
    }

    #[test]
    fn busy_errors_are_recognised() {
        let e = StoreError::Sqlite {
            op: "test",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert!(e.is_busy());
        assert!(!StoreError::NotFound { id: "a".into() }.is_busy());
    }
}
