//! What happened in a workspace since its creation or last reset, besides commands (which
//! the store records): file writes, patches, syncs, exports, shells and services. One JSON
//! line per event in `activity.jsonl` in the workspace's directory, appended under the
//! workspace's lock, cleared by a reset, bounded: past [`MAX_BYTES`] the older half is
//! dropped (the summary then says events were dropped). Read by `workspace summary`.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{SummaryCommand, WorkspaceSummaryResult};

/// The file, in the workspace's directory.
const FILE: &str = "activity.jsonl";
/// Largest the file grows before its older half is dropped.
const MAX_BYTES: u64 = 1024 * 1024;
/// Longest `detail` kept per event.
const DETAIL_CHARS: usize = 300;
/// Events a summary shows (the newest).
pub const SUMMARY_EVENTS: usize = 50;
/// Commands a summary shows (the newest).
pub const SUMMARY_COMMANDS: u64 = 20;
/// Changed paths a summary shows.
pub const SUMMARY_PATHS: usize = 50;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActivityEvent {
    /// Unix time.
    pub at: f64,
    /// file_write, patch, sync, export, shell_open, shell_close, service_start,
    /// service_stop, exec_cancelled (a command whose call was cancelled: detail is the
    /// command), snapshot_create, snapshot_delete, snapshot_restore, fork.
    pub kind: String,
    /// What it was about (a path, a name; at most 300 characters).
    pub detail: String,
}

/// Appends an event (best effort: a summary is not worth failing an operation for).
pub(super) fn record(root: &Path, kind: &str, detail: &str) {
    let path = root.join(FILE);
    let detail: String = crate::error::one_line(detail)
        .chars()
        .take(DETAIL_CHARS)
        .collect();
    let ev = ActivityEvent {
        at: host::now(),
        kind: kind.to_string(),
        detail,
    };
    let Ok(mut line) = serde_json::to_vec(&ev) else {
        return;
    };
    line.push(b'\n');
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_BYTES) {
        shrink(&path);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    if let Ok(mut f) = file {
        let _ = f.write_all(&line);
    }
}

/// Keeps the newer half of the file (whole lines), with a marker line first.
fn shrink(path: &Path) {
    let Ok(body) = crate::hostfs::read_bounded(path, MAX_BYTES * 2) else {
        let _ = std::fs::remove_file(path);
        return;
    };
    let half = body.len() / 2;
    let start = body[half..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(body.len(), |i| half + i + 1);
    let marker = ActivityEvent {
        at: host::now(),
        kind: "dropped".into(),
        detail: "older events were dropped (the log is bounded)".into(),
    };
    let mut out = serde_json::to_vec(&marker).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&body[start..]);
    let _ = pyro_host::fs::atomic_write(path, &out, 0o600);
}

/// Every event kept, oldest first.
pub(super) fn read(root: &Path) -> Vec<ActivityEvent> {
    let Ok(body) = crate::hostfs::read_bounded(&root.join(FILE), MAX_BYTES * 2) else {
        return Vec::new();
    };
    body.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Forgets everything (a reset).
pub(super) fn clear(root: &Path) {
    let _ = std::fs::remove_file(root.join(FILE));
}

impl Pyro {
    /// What happened since the workspace's creation or last reset: its commands (the
    /// newest, with exit codes), file writes, patches, syncs, exports, shells and services,
    /// and, while it runs, the current changes against the baseline. Bounded in size.
    pub async fn summarize_workspace(&self, id: &str) -> Result<WorkspaceSummaryResult> {
        let info = self.status_workspace(id).await?;
        let store = self.store()?;
        let root = self.ws_dirs(id).root;
        let total = store.command_count(id)?;
        let first = total.saturating_sub(SUMMARY_COMMANDS);
        let commands: Vec<SummaryCommand> = store
            .commands(id, first, SUMMARY_COMMANDS)?
            .into_iter()
            .map(|c| SummaryCommand {
                sequence: c.sequence,
                command: c.command.chars().take(DETAIL_CHARS).collect(),
                exit_code: c.exit_code as i32,
                duration_ms: c.duration_ms,
                timed_out: c.timed_out,
            })
            .collect();
        let failed = store.failed_command_count(id)?;
        let events = read(&root);
        let events_total = events.len();
        let events: Vec<ActivityEvent> = events
            .into_iter()
            .rev()
            .take(SUMMARY_EVENTS)
            .rev()
            .collect();
        let services = self.services_of(id);
        let (changes, changed_paths, changes_note) = if info.state == "started" {
            match self.diff_workspace(id).await {
                Ok(d) => (
                    Some(d.summary),
                    d.entries
                        .iter()
                        .take(SUMMARY_PATHS)
                        .map(|e| format!("{} {}", status_word(&e.status), e.path))
                        .collect(),
                    None,
                ),
                Err(e) => (None, Vec::new(), Some(format!("no diff: {e}"))),
            }
        } else {
            (
                None,
                Vec::new(),
                Some("the workspace is not started: start it to see its changes".into()),
            )
        };
        Ok(WorkspaceSummaryResult {
            workspace_id: id.to_string(),
            state: info.state,
            since: info.last_reset_at.unwrap_or(info.created_at),
            command_count: total,
            failed_command_count: failed,
            commands,
            events_total,
            events,
            services: services
                .into_iter()
                .map(|s| format!("{} [{}]", s.service_name, s.state))
                .collect(),
            changes,
            changed_paths,
            changes_note,
        })
    }
}

fn status_word(s: &pyro_patch::DiffStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "changed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_bounded_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), "file_write", "/workspace/a.txt (3 bytes)");
        record(dir.path(), "patch", &"x\n".repeat(1000));
        let got = read(dir.path());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, "file_write");
        assert!(got[1].detail.chars().count() <= DETAIL_CHARS && !got[1].detail.contains('\n'));
        // Past the bound the older half goes, with a marker.
        let big = "y".repeat(DETAIL_CHARS);
        for _ in 0..5000 {
            record(dir.path(), "sync", &big);
        }
        let len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(len <= MAX_BYTES + 1024, "{len}");
        let got = read(dir.path());
        assert!(got.iter().any(|e| e.kind == "dropped"));
        clear(dir.path());
        assert!(read(dir.path()).is_empty());
    }
}
