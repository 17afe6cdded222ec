//! Durable workspace state: one SQLite database, `<state_dir>/pyro.db`, shared by every pyro
//! process on the host (CLI calls, the MCP server, the Python bridge) at the same time.
//!
//! Why SQLite rather than JSON files: every change is a transaction, so nothing is ever
//! half-written after a crash or a power cut (the reference wrote `workspace.json` in place),
//! and read-modify-write sequences from different processes are serialized by the database
//! instead of silently overwriting each other (the reference had no cross-process locking).
//!
//! * [`Store`] is one connection behind a mutex (`Send + Sync`). It runs in WAL mode, so
//!   readers never wait for another connection's writer and a writer waits at most
//!   [`BUSY_TIMEOUT`] for another connection's writer.
//! * A [`Pyro`](crate::Pyro) opens one `Store` on first use and shares it (an
//!   `Arc<Store>`) between all of its calls; a failed open is not kept, the next call opens
//!   again. Its calls therefore take turns on that connection: each transaction is short,
//!   but one waiting for another process's write lock holds up this instance's other store
//!   calls for as long (at most [`BUSY_TIMEOUT`]). Other processes (and other `Pyro`
//!   instances) have connections of their own and see every committed change.
//! * The store is synchronous. The async core calls it between awaits; the servers (`pyro
//!   rpc`, `pyro mcp serve`) run each call on a thread of its own
//!   ([`on_own_thread`](crate::ops::on_own_thread)), so SQLite work, waits for the
//!   connection and busy waits included, never blocks the runtime's async workers.
//! * **No re-entry.** The connection stays locked for the whole of a [`Store::with_tx`],
//!   [`Store::with_read`], [`Store::update_workspace`] or
//!   [`Store::next_command_sequence_and_record`] closure: such a closure must not call the
//!   same `Store` (nor `Pyro::store`, which hands out the same one), or it deadlocks. Use
//!   the closure's [`Tx`], or finish the transaction first.
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
//! Layout: this file holds the connection, the migrations and [`StoreError`]; `records.rs`
//! the row types and their column lists; `tx.rs` the workspace-row operations of [`Tx`];
//! `commands.rs` the command log; `validate.rs` the name and label rules; `tests.rs` the
//! tests, crash-safety ones included.
//!
//! The store does not validate names and labels; callers do that first with
//! [`validate_name`], [`validate_label_key`], [`validate_label_value`] and [`validate_labels`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

mod commands;
mod records;
mod tx;

pub use crate::validate::names::{
    ValidationError, validate_label_key, validate_label_value, validate_labels, validate_name,
};
pub use records::{CommandRecord, NewCommand, StoredAllowlist, WorkspaceRecord, WorkspaceState};
pub use tx::Tx;

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
    // 2 -> 3: the running machine as its backend records it (JSON, opaque to the store). It
    // replaces vmm_pid, vmm_start_ticks, relay_pid and relay_start_ticks, which are no longer
    // read or written (left in place: SQLite before 3.35 cannot drop columns).
    "ALTER TABLE workspaces ADD COLUMN machine TEXT;",
    // 3 -> 4: the resource ledger (`crate::ledger`): what else a workspace owns on the host,
    // one JSON `Resource` per row, deleted with the workspace.
    "CREATE TABLE resources (
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        resource TEXT NOT NULL,
        PRIMARY KEY (owner, key)
    );",
    // 4 -> 5: a networked workspace's allowlist (`pyro_net::Allowlist` as JSON; NULL: none).
    "ALTER TABLE workspaces ADD COLUMN allowlist TEXT;",
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

/// Clamps a count for SQLite's signed `LIMIT`/`OFFSET`.
fn sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// One connection to `<state_dir>/pyro.db`. The connection sits behind a mutex so a
/// `Store` is `Sync`, may be shared (a [`Pyro`](crate::Pyro) shares one `Arc<Store>` between
/// all of its calls) and async code may hold one across `.await` (each transaction is
/// short; the lock is only held inside a method).
///
/// The rule that comes with the mutex: a closure passed to [`Self::with_tx`],
/// [`Self::with_read`], [`Self::update_workspace`] or
/// [`Self::next_command_sequence_and_record`] runs with the connection locked, so it must not
/// call this `Store` again (it would deadlock); it uses its [`Tx`] or plain values only.
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
        // -wal and -shm files the same mode. Only a new file is opened here: closing any
        // descriptor of the database drops every POSIX lock this process holds on it, so
        // opening and closing an existing database behind the back of another connection of
        // this process would silently unlock that connection, and another process could then
        // checkpoint and remove a WAL still in use ("database disk image is malformed").
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Create {
                    path: path.clone(),
                    source,
                });
            }
        }
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
    /// `Store` methods of the same `Store` from inside `f` (the connection is locked: that
    /// deadlocks), use `f`'s [`Tx`].
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

    /// See [`Tx::record_resource`].
    pub fn record_resource(
        &self,
        owner: &str,
        resource: &crate::ledger::Resource,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| tx.record_resource(owner, resource))
    }

    /// See [`Tx::forget_resource`].
    pub fn forget_resource(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        self.with_tx(|tx| tx.forget_resource(owner, key))
    }

    /// See [`Tx::resources`].
    pub fn resources(&self, owner: &str) -> Result<Vec<crate::ledger::LedgerEntry>, StoreError> {
        self.with_read(|tx| tx.resources(owner))
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

    /// Commands of workspace `id` that exited non-zero.
    pub fn failed_command_count(&self, id: &str) -> Result<u64, StoreError> {
        self.with_read(|tx| tx.failed_command_count(id))
    }

    /// Forgets the command history of workspace `id`; see [`Tx::clear_commands`].
    pub fn clear_commands(&self, id: &str) -> Result<u64, StoreError> {
        self.with_tx(|tx| tx.clear_commands(id))
    }
}

#[cfg(test)]
mod tests;
