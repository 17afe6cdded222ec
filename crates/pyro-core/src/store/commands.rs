//! The command log: [`Tx`] operations that allocate gap-free sequences, record, page, count
//! and clear the commands of a workspace.

use rusqlite::{OptionalExtension, params};

use super::records::{COMMAND_COLUMNS, command_from_row};
use super::{CommandRecord, NewCommand, StoreError, Tx, sql, sql_count};

impl Tx<'_> {
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

    /// How many of workspace `id`'s recorded commands exited non-zero.
    pub fn failed_command_count(&self, id: &str) -> Result<u64, StoreError> {
        self.tx
            .query_row(
                "SELECT COUNT(*) FROM commands WHERE workspace_id = ?1 AND exit_code != 0",
                [id],
                |r| r.get(0),
            )
            .map_err(sql("count failed commands"))
    }

    /// Commands recorded for workspace `id` since its creation or last reset.
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
