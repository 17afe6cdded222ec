//! [`Tx`], an open transaction, and its workspace-row operations (get, list, insert, update,
//! labels, delete). The command-log operations are in `commands.rs`.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::ToSql;
use rusqlite::{OptionalExtension, Transaction, params};

use super::records::{WORKSPACE_COLUMNS, workspace_from_row, workspace_values};
use super::{StoreError, WorkspaceRecord, is_foreign_key_violation, sql};

/// An open transaction; see [`Store::with_tx`](super::Store::with_tx) and
/// [`Store::with_read`](super::Store::with_read).
pub struct Tx<'c> {
    pub(super) tx: Transaction<'c>,
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

    /// Deletes workspace `id` with its labels, command history and ledger; `false` if it did
    /// not exist.
    pub fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        self.tx
            .execute("DELETE FROM resources WHERE owner = ?1", [id])
            .map_err(sql("delete a ledger"))?;
        let n = self
            .tx
            .execute("DELETE FROM workspaces WHERE id = ?1", [id])
            .map_err(sql("delete a workspace"))?;
        Ok(n > 0)
    }

    /// Records that `owner` holds `resource` (replacing a row with its key).
    pub fn record_resource(
        &self,
        owner: &str,
        resource: &crate::ledger::Resource,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(resource).map_err(|e| StoreError::Sqlite {
            op: "encode a resource",
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO resources (owner, key, resource) VALUES (?1, ?2, ?3)",
                rusqlite::params![owner, resource.key(), text],
            )
            .map_err(sql("record a resource"))?;
        Ok(())
    }

    /// Forgets one resource of `owner` (once released).
    pub fn forget_resource(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        self.tx
            .execute(
                "DELETE FROM resources WHERE owner = ?1 AND key = ?2",
                [owner, key],
            )
            .map_err(sql("forget a resource"))?;
        Ok(())
    }

    /// The resources `owner` holds, by key. A row this build cannot read (written by a newer
    /// pyro) is returned as an error in its place, so a teardown can say what it left.
    pub fn resources(&self, owner: &str) -> Result<Vec<crate::ledger::LedgerEntry>, StoreError> {
        let mut stmt = self
            .tx
            .prepare("SELECT key, resource FROM resources WHERE owner = ?1 ORDER BY key")
            .map_err(sql("read a ledger"))?;
        let rows = stmt
            .query_map([owner], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql("read a ledger"))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, text) = row.map_err(sql("read a ledger"))?;
            let parsed = serde_json::from_str(&text).map_err(|e| e.to_string());
            out.push((key, parsed));
        }
        Ok(out)
    }
}
