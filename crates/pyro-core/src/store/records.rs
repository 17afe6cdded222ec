//! The rows: [`WorkspaceRecord`] (one workspace with its labels), [`CommandRecord`] (one
//! recorded exec), [`WorkspaceState`], and the one column list each is read and written with.

use std::collections::BTreeMap;

use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use pyro_net::{Allowlist, NetworkPolicy};

use crate::backend::{BackendKind, MachineRecord};
use crate::warm::BootMode;

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

    pub(super) fn parse(s: &str) -> Option<Self> {
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

impl ToSql for BackendKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

/// Stored as the JSON of [`MachineRecord::to_json`].
impl ToSql for MachineRecord {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_json()))
    }
}

/// Stored as [`BootMode::as_str`]; read leniently in [`workspace_from_row`].
impl ToSql for BootMode {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

/// The stored name of `p` ([`NetworkPolicy::as_str`]) as a column value that outlives the
/// record (the policy is another crate's type, so it cannot implement [`ToSql`] itself).
/// A workspace's [`Allowlist`] as its column stores it: JSON, NULL when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredAllowlist(pub Allowlist);

impl std::ops::Deref for StoredAllowlist {
    type Target = Allowlist;
    fn deref(&self) -> &Allowlist {
        &self.0
    }
}

impl ToSql for StoredAllowlist {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        if self.0.is_empty() {
            return Ok(ToSqlOutput::from(rusqlite::types::Null));
        }
        serde_json::to_string(&self.0)
            .map(ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

fn policy_sql(p: NetworkPolicy) -> &'static dyn ToSql {
    match p {
        NetworkPolicy::Off => &const { NetworkPolicy::Off.as_str() },
        NetworkPolicy::Egress => &const { NetworkPolicy::Egress.as_str() },
        NetworkPolicy::EgressPublishedPorts => {
            &const { NetworkPolicy::EgressPublishedPorts.as_str() }
        }
    }
}

/// Read as [`BackendKind::of_record`] does: a name other than `firecracker` is QEMU, as
/// records have always been read, so a row is never unreadable for its backend.
impl FromSql for BackendKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str().map(BackendKind::of_record)
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
    /// The VMM backend, stored as its name (`firecracker`, `qemu`).
    pub backend: BackendKind,
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
    /// The running machine, as its backend describes it (stored as JSON in the `machine`
    /// column; the store does not interpret it). `None` while nothing runs, and for a
    /// record this build cannot read.
    pub machine: Option<MachineRecord>,
    /// The last failure, for status output.
    pub last_error: Option<String>,
    /// The seed description (JSON text; the store does not interpret it).
    pub seed_json: String,
    /// Commands recorded since creation or the last reset. Maintained by
    /// [`Tx::next_command_sequence_and_record`] and [`Tx::clear_commands`] only: changes made
    /// to it in [`Store::update_workspace`] are ignored.
    ///
    /// [`Tx::next_command_sequence_and_record`]: super::Tx::next_command_sequence_and_record
    /// [`Tx::clear_commands`]: super::Tx::clear_commands
    /// [`Store::update_workspace`]: super::Store::update_workspace
    pub command_count: u64,
    /// Resets so far.
    pub reset_count: u64,
    /// Unix time of the last reset.
    pub last_reset_at: Option<f64>,
    /// The network policy, stored as its name (`off`, `egress`, `egress+published-ports`).
    /// A name this build does not know reads as [`NetworkPolicy::Off`]: the row stays
    /// readable, and the workspace gets no network rather than one nobody asked for.
    pub network_policy: NetworkPolicy,
    /// Where a networked workspace may connect (empty: any public address). Stored as JSON,
    /// NULL when empty. One this build cannot read makes the whole network read as `off`
    /// (failing closed: an unreadable allowlist never widens into "anywhere").
    pub allowlist: StoredAllowlist,
    /// How the VM was last started, stored as its name: `cold` (booted) or `warm` (restored
    /// from a snapshot). A name this build does not know reads as `None` (not known).
    pub boot_mode: Option<BootMode>,
}

impl WorkspaceRecord {
    /// A record in state `creating` with the reference's defaults (1 vCPU, 1024 MiB, 600 s
    /// TTL, empty seed `{}`, network policy `off`), created and active at `now`.
    pub fn new(
        id: impl Into<String>,
        environment: impl Into<String>,
        environment_version: impl Into<String>,
        backend: BackendKind,
        now: f64,
    ) -> Self {
        Self {
            id: id.into(),
            name: None,
            labels: BTreeMap::new(),
            environment: environment.into(),
            environment_version: environment_version.into(),
            backend,
            vcpu_count: 1,
            mem_mib: 1024,
            ttl_seconds: 600,
            created_at: now,
            last_activity_at: now,
            expires_at: None,
            ttl_consumed: 0.0,
            started_at: None,
            state: WorkspaceState::Creating,
            machine: None,
            last_error: None,
            seed_json: "{}".into(),
            command_count: 0,
            reset_count: 0,
            last_reset_at: None,
            network_policy: NetworkPolicy::Off,
            allowlist: StoredAllowlist::default(),
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

    /// Forgets the machine of the last boot (it is gone or being ended).
    pub fn forget_processes(&mut self) {
        self.machine = None;
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
///
/// [`Store::next_command_sequence_and_record`]: super::Store::next_command_sequence_and_record
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

pub(super) const WORKSPACE_COLUMNS: &str = "id, name, environment, environment_version, backend, \
    vcpu_count, mem_mib, ttl_seconds, created_at, last_activity_at, expires_at, ttl_consumed, \
    started_at, state, last_error, seed_json, command_count, reset_count, last_reset_at, \
    network_policy, boot_mode, machine, allowlist";

pub(super) const COMMAND_COLUMNS: &str = "workspace_id, sequence, command, cwd, exit_code, duration_ms, \
    timed_out, stdout_bytes, stderr_bytes, stdout_path, stderr_path, recorded_at";

/// Every column of a workspace row with its value in `rec`, in [`WORKSPACE_COLUMNS`] order:
/// the one list that inserts and updates are written from.
pub(super) fn workspace_values(rec: &WorkspaceRecord) -> [(&'static str, &dyn ToSql); 23] {
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
        ("last_error", &rec.last_error),
        ("seed_json", &rec.seed_json),
        ("command_count", &rec.command_count),
        ("reset_count", &rec.reset_count),
        ("last_reset_at", &rec.last_reset_at),
        ("network_policy", policy_sql(rec.network_policy)),
        ("boot_mode", &rec.boot_mode),
        ("machine", &rec.machine),
        ("allowlist", &rec.allowlist),
    ]
}

/// Reads a row selected with [`WORKSPACE_COLUMNS`] (labels are filled in separately).
pub(super) fn workspace_from_row(r: &Row<'_>) -> rusqlite::Result<WorkspaceRecord> {
    let allowlist = match r.get::<_, Option<String>>(22)? {
        None => Some(Allowlist::default()),
        Some(text) => serde_json::from_str::<Allowlist>(&text).ok(),
    };
    let mut rec = WorkspaceRecord {
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
        last_error: r.get(14)?,
        seed_json: r.get(15)?,
        command_count: r.get(16)?,
        reset_count: r.get(17)?,
        last_reset_at: r.get(18)?,
        // Names this build does not know read as documented on the fields, so a row written
        // by a newer pyro stays readable (an update writes back what was read).
        network_policy: r
            .get::<_, String>(19)?
            .parse()
            .unwrap_or(NetworkPolicy::Off),
        boot_mode: r.get::<_, Option<String>>(20)?.and_then(|m| m.parse().ok()),
        // A record this build cannot read is no record: the workspace reads as not running,
        // and whatever still runs of it is found by the workspace's process scan.
        machine: r
            .get::<_, Option<String>>(21)?
            .as_deref()
            .and_then(MachineRecord::from_json),
        allowlist: StoredAllowlist(allowlist.clone().unwrap_or_default()),
    };
    if allowlist.is_none() {
        rec.network_policy = NetworkPolicy::Off;
    }
    Ok(rec)
}

/// Reads a row selected with [`COMMAND_COLUMNS`].
pub(super) fn command_from_row(r: &Row<'_>) -> rusqlite::Result<CommandRecord> {
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
