//! PTY shells in a workspace: opened, read, written, signalled, resized and closed through
//! the guest agent's process table ([`pyro_proto::procs`]).
//!
//! The agent owns each shell (it outlives the call that opened it) and keeps a bounded
//! transcript of its output. The host keeps a record per shell in `shells/<id>.json` (what
//! `shell list` shows while the workspace is down, and what a stop, reset or crash clears:
//! a shell does not survive its machine).
//!
//! A read goes through the same rules as every other output a model sees:
//! - secret values are redacted, also one that begins before the cursor (the read looks back
//!   by the longest value's length) or that is still being written (a tail that may begin a
//!   value is held back until the rest arrives or the shell ends);
//! - the cursor is a byte offset in the raw transcript, and `next_cursor` is exactly where
//!   the returned text ends: a cut at `max_chars` (plain or not) never skips anything, and an
//!   escape sequence or a UTF-8 character split by the end of the available output is left
//!   for the next read whole;
//! - a cursor older than the retained transcript says so (`missed_bytes`) instead of
//!   silently skipping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pyro_proto::procs::{self, ShellState};

use super::*;
use crate::model::{
    ShellCloseResult, ShellInfo, ShellList, ShellReadResult, ShellSignalResult, ShellWriteResult,
};
use crate::validate::check_range as check;

/// The directory of a workspace's shell records.
pub(super) const SHELLS_DIR: &str = "shells";
/// Largest `max_chars` of one read.
pub const SHELL_READ_MAX_CHARS: i64 = 1_000_000;
/// Longest `wait_for_idle_ms`.
pub const SHELL_IDLE_MAX_MS: i64 = 600_000;
/// How long a close waits after `SIGHUP` before `SIGKILL`.
const CLOSE_GRACE_MS: u64 = 5_000;

/// What `shell open` asks for.
#[derive(Debug, Clone)]
pub struct OpenShell {
    /// Working directory (must exist).
    pub cwd: String,
    /// Terminal size.
    pub cols: i64,
    /// Terminal size.
    pub rows: i64,
    /// `{SECRET: ENV_VAR}` (`""` keeps the name).
    pub secret_env: BTreeMap<String, String>,
}

/// What `shell read` asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReadShell {
    /// Transcript byte offset to start at.
    pub cursor: u64,
    /// Most characters returned.
    pub max_chars: i64,
    /// Render as plain text (escape sequences interpreted).
    pub plain: bool,
    /// Wait until the shell has been quiet this long.
    pub wait_for_idle_ms: Option<i64>,
}

/// Signal names a shell accepts, and their numbers.
pub const SHELL_SIGNALS: [(&str, i32); 4] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("TERM", libc::SIGTERM),
    ("KILL", libc::SIGKILL),
];

pub(super) fn records_dir(root: &Path, kind: &str) -> PathBuf {
    root.join(kind)
}

/// Writes one record (`<dir>/<name>.json`, 0600, atomically).
pub(super) fn save_record<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    host::ensure_private_dir(dir)?;
    let path = dir.join(format!("{name}.json"));
    let body = serde_json::to_vec_pretty(value).map_err(|e| CoreError::Invalid {
        field: "record",
        reason: e.to_string(),
    })?;
    pyro_host::fs::atomic_write(&path, &body, 0o600).map_err(|e| CoreError::io("write", &path, e))
}

/// Every readable record in `dir`, by file name.
pub(super) fn load_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

pub(super) fn load_record<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Option<T> {
    let body = std::fs::read(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_slice(&body).ok()
}

pub(super) fn remove_record(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(format!("{name}.json")));
}

/// Guest milliseconds since the epoch as the float seconds every record uses.
pub(super) fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn check_shell_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CoreError::Invalid {
            field: "shell_id",
            reason: format!(
                "`{}` is not a shell id (12 hexadecimal digits, as shell open returns)",
                crate::error::one_line(id)
            ),
        });
    }
    Ok(())
}

impl Pyro {
    fn shell_info(
        &self,
        id: &str,
        rec: &WorkspaceRecord,
        s: &ShellState,
        secret_env: Vec<String>,
    ) -> ShellInfo {
        ShellInfo {
            workspace_id: id.to_string(),
            shell_id: s.id.clone(),
            cwd: s.cwd.clone(),
            cols: s.cols,
            rows: s.rows,
            state: if s.running { "running" } else { "stopped" }.into(),
            started_at: secs(s.started_at_ms),
            ended_at: s.ended_at_ms.map(secs),
            exit_code: s.exit_code,
            execution_mode: rec.backend.execution_mode().into(),
            secret_env,
        }
    }

    /// After a restore into workspace `id`, its shell records (the snapshot's) name `id`.
    pub(super) fn adopt_restored_shells(&self, id: &str) {
        let dir = records_dir(&self.ws_dirs(id).root, SHELLS_DIR);
        for mut s in load_records::<ShellInfo>(&dir) {
            s.workspace_id = id.to_string();
            let name = s.shell_id.clone();
            if let Err(e) = save_record(&dir, &name, &s) {
                tracing::warn!(workspace = id, "cannot update a restored shell record: {e}");
            }
        }
    }

    /// The shell's host record, or `ShellNotFound`.
    fn shell_record(&self, id: &str, shell_id: &str) -> Result<ShellInfo> {
        check_shell_id(shell_id)?;
        let dir = records_dir(&self.ws_dirs(id).root, SHELLS_DIR);
        load_record(&dir, shell_id).ok_or_else(|| CoreError::ShellNotFound {
            workspace_id: id.to_string(),
            shell_id: shell_id.to_string(),
        })
    }

    /// Saves what the agent said about a shell, keeping the record's secret names.
    fn note_shell(&self, id: &str, rec: &WorkspaceRecord, s: &ShellState) -> Result<ShellInfo> {
        let dir = records_dir(&self.ws_dirs(id).root, SHELLS_DIR);
        let names = load_record::<ShellInfo>(&dir, &s.id)
            .map(|r| r.secret_env)
            .unwrap_or_default();
        let info = self.shell_info(id, rec, s, names);
        save_record(&dir, &s.id, &info)?;
        Ok(info)
    }

    /// An agent error about a shell, as the core's: an unknown id is `ShellNotFound` (the
    /// record is dropped: the machine no longer has it).
    fn shell_error(&self, id: &str, shell_id: &str, e: api::CallError) -> CoreError {
        if let api::CallError::Agent(a) = &e
            && a.code == api::ErrorCode::NotFound
        {
            remove_record(&records_dir(&self.ws_dirs(id).root, SHELLS_DIR), shell_id);
            return CoreError::ShellNotFound {
                workspace_id: id.to_string(),
                shell_id: shell_id.to_string(),
            };
        }
        CoreError::Agent(e)
    }

    /// Opens a PTY shell (`bash -i`, or `sh -i`) in a started workspace.
    pub async fn open_shell(&self, id: &str, req: OpenShell) -> Result<ShellInfo> {
        check("cols", req.cols, (1, 1000))?;
        check("rows", req.rows, (1, 1000))?;
        let cwd = normalize_workspace_path(&req.cwd)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "shell open").await?;
        let d = self.ws_dirs(id);
        let env = crate::secrets::process_env(&d.root, &req.secret_env)?;
        let shell_id = host::new_id();
        let open = procs::ShellOpen {
            id: shell_id.clone(),
            cwd: cwd.clone(),
            cols: req.cols as u16,
            rows: req.rows as u16,
            env,
            term: None,
            transcript_bytes: None,
        };
        let session = self.ws_session(&rec).await?;
        let state: ShellState = api::call(&session, &api::Request::ShellOpen(open))
            .await
            .map_err(|e| cwd_error(e, &cwd))?;
        let names: Vec<String> = req.secret_env.keys().cloned().collect();
        let info = self.shell_info(id, &rec, &state, names);
        save_record(&records_dir(&d.root, SHELLS_DIR), &shell_id, &info)?;
        super::activity::record(&d.root, "shell_open", &format!("{shell_id} in {cwd}"));
        self.touch(&store, id);
        Ok(info)
    }

    /// Reads a shell's output from `cursor`.
    pub async fn read_shell(
        &self,
        id: &str,
        shell_id: &str,
        req: ReadShell,
    ) -> Result<ShellReadResult> {
        check("max_chars", req.max_chars, (1, SHELL_READ_MAX_CHARS))?;
        if let Some(w) = req.wait_for_idle_ms {
            check("wait_for_idle_ms", w, (0, SHELL_IDLE_MAX_MS))?;
        }
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "shell read").await?;
        self.shell_record(id, shell_id)?;
        let d = self.ws_dirs(id);
        let values: Vec<String> = crate::secrets::values(&d.root)?.into_values().collect();
        // Look back far enough to see a value that begins before the cursor.
        let back = crate::secrets::longest(&values).saturating_sub(1) as u64;
        let from = req.cursor.saturating_sub(back);
        let max_chars = req.max_chars as u64;
        let budget = if req.plain {
            max_chars.saturating_mul(8).saturating_add(4096)
        } else {
            max_chars.saturating_mul(4)
        };
        let max_bytes = (req.cursor - from)
            .saturating_add(budget)
            .min(procs::SHELL_READ_MAX);
        let session = self.ws_session(&rec).await?;
        let ask = procs::ShellRead {
            id: shell_id.to_string(),
            cursor: from,
            max_bytes,
            wait_for_idle_ms: req.wait_for_idle_ms.map(|w| w as u64),
            max_wait_ms: None,
        };
        let (res, data) = procs::shell_read(&session, ask)
            .await
            .map_err(|e| match e {
                api::CallError::Agent(a) if a.code == api::ErrorCode::BadRequest => {
                    CoreError::Invalid {
                        field: "cursor",
                        reason: a.message,
                    }
                }
                e => self.shell_error(id, shell_id, e),
            })?;
        if req.cursor > res.shell.transcript_end {
            return Err(CoreError::Invalid {
                field: "cursor",
                reason: format!(
                    "{} is past the end of the shell's output ({} bytes so far)",
                    req.cursor, res.shell.transcript_end
                ),
            });
        }
        let at_end = !res.shell.running && res.end == res.shell.transcript_end;
        let piece = render_read(
            &data,
            res.start,
            req,
            &values,
            at_end,
            (res.shell.cols, res.shell.rows),
        );
        let info = self.note_shell(id, &rec, &res.shell)?;
        self.touch(&store, id);
        Ok(ShellReadResult {
            shell: info,
            cursor: req.cursor,
            next_cursor: piece.next_cursor,
            truncated: piece.next_cursor < res.shell.transcript_end,
            output: piece.text,
            plain: req.plain,
            wait_for_idle_ms: req.wait_for_idle_ms.map(|w| w as u64),
            missed_bytes: res.start.saturating_sub(req.cursor),
        })
    }

    /// Writes input to a shell's terminal (a newline appended unless told otherwise).
    pub async fn write_shell(
        &self,
        id: &str,
        shell_id: &str,
        input: &str,
        append_newline: bool,
    ) -> Result<ShellWriteResult> {
        let mut data = input.to_string();
        if append_newline {
            data.push('\n');
        }
        if data.len() > procs::SHELL_WRITE_MAX {
            return Err(CoreError::Invalid {
                field: "input",
                reason: format!(
                    "{} bytes is over the limit of {} bytes per write",
                    data.len(),
                    procs::SHELL_WRITE_MAX
                ),
            });
        }
        let (rec, state) = self
            .shell_call(
                id,
                shell_id,
                "shell write",
                api::Request::ShellWrite(procs::ShellWrite {
                    id: shell_id.to_string(),
                    input: data,
                }),
            )
            .await?;
        let info = self.note_shell(id, &rec, &state)?;
        Ok(ShellWriteResult {
            shell: info,
            input_length: input.chars().count() as u64,
            append_newline,
        })
    }

    /// Sends a signal (HUP, INT, TERM or KILL) to a shell's process group.
    pub async fn signal_shell(
        &self,
        id: &str,
        shell_id: &str,
        signal: &str,
    ) -> Result<ShellSignalResult> {
        let upper = signal.trim().to_ascii_uppercase();
        let upper = upper.strip_prefix("SIG").unwrap_or(&upper).to_string();
        let Some(&(name, number)) = SHELL_SIGNALS.iter().find(|(n, _)| *n == upper) else {
            return Err(CoreError::Invalid {
                field: "signal_name",
                reason: format!(
                    "`{}` is not one of HUP, INT, TERM, KILL",
                    crate::error::one_line(signal)
                ),
            });
        };
        let (rec, state) = self
            .shell_call(
                id,
                shell_id,
                "shell signal",
                api::Request::ShellSignal(procs::ShellSignal {
                    id: shell_id.to_string(),
                    signal: number,
                }),
            )
            .await?;
        let info = self.note_shell(id, &rec, &state)?;
        Ok(ShellSignalResult {
            shell: info,
            signal: name.to_string(),
        })
    }

    /// Changes a shell's terminal size.
    pub async fn resize_shell(
        &self,
        id: &str,
        shell_id: &str,
        cols: i64,
        rows: i64,
    ) -> Result<ShellInfo> {
        check("cols", cols, (1, 1000))?;
        check("rows", rows, (1, 1000))?;
        let (rec, state) = self
            .shell_call(
                id,
                shell_id,
                "shell resize",
                api::Request::ShellResize(procs::ShellResize {
                    id: shell_id.to_string(),
                    cols: cols as u16,
                    rows: rows as u16,
                }),
            )
            .await?;
        self.note_shell(id, &rec, &state)
    }

    /// Ends a shell (HUP, then KILL after 5 s) and forgets it.
    pub async fn close_shell(&self, id: &str, shell_id: &str) -> Result<ShellCloseResult> {
        let (rec, state) = self
            .shell_call(
                id,
                shell_id,
                "shell close",
                api::Request::ShellClose(procs::ShellClose {
                    id: shell_id.to_string(),
                    grace_ms: CLOSE_GRACE_MS,
                }),
            )
            .await?;
        let dir = records_dir(&self.ws_dirs(id).root, SHELLS_DIR);
        let names = load_record::<ShellInfo>(&dir, shell_id)
            .map(|r| r.secret_env)
            .unwrap_or_default();
        remove_record(&dir, shell_id);
        super::activity::record(
            &self.ws_dirs(id).root,
            "shell_close",
            &format!("{shell_id} (exit code {:?})", state.exit_code),
        );
        Ok(ShellCloseResult {
            shell: self.shell_info(id, &rec, &state, names),
            closed: true,
        })
    }

    /// The workspace's shells (from the guest while it runs, else none: shells end with
    /// their machine).
    pub async fn list_shells(&self, id: &str) -> Result<ShellList> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        let dir = records_dir(&self.ws_dirs(id).root, SHELLS_DIR);
        if rec.state != WorkspaceState::Started {
            return Ok(ShellList {
                workspace_id: id.to_string(),
                count: 0,
                shells: Vec::new(),
            });
        }
        let session = self.ws_session(&rec).await?;
        let list: procs::ShellList = api::call(&session, &api::Request::ShellList).await?;
        let mut shells = Vec::new();
        let live: Vec<&str> = list.shells.iter().map(|s| s.id.as_str()).collect();
        for old in load_records::<ShellInfo>(&dir) {
            if !live.contains(&old.shell_id.as_str()) {
                remove_record(&dir, &old.shell_id);
            }
        }
        for s in &list.shells {
            // Shells this host never recorded (another host's? none exist) are shown too.
            shells.push(self.note_shell(id, &rec, s)?);
        }
        Ok(ShellList {
            workspace_id: id.to_string(),
            count: shells.len(),
            shells,
        })
    }

    /// One request about one shell: lock, started workspace, record, call.
    async fn shell_call(
        &self,
        id: &str,
        shell_id: &str,
        operation: &'static str,
        req: api::Request,
    ) -> Result<(WorkspaceRecord, ShellState)> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, operation).await?;
        self.shell_record(id, shell_id)?;
        let session = self.ws_session(&rec).await?;
        let state: ShellState = api::call(&session, &req).await.map_err(|e| match e {
            api::CallError::Agent(a) if a.code == api::ErrorCode::BadRequest => {
                CoreError::WorkspaceState {
                    id: id.to_string(),
                    state: "started".into(),
                    operation,
                    detail: Some(format!("shell {shell_id}: {}", a.message)),
                }
            }
            e => self.shell_error(id, shell_id, e),
        })?;
        self.touch(&store, id);
        Ok((rec, state))
    }

    /// Marks activity on a workspace (best effort).
    pub(super) fn touch(&self, store: &Store, id: &str) {
        let now = host::now();
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
    }
}

/// An agent refusal of a working directory, as `invalid cwd`.
pub(super) fn cwd_error(e: api::CallError, cwd: &str) -> CoreError {
    match e {
        api::CallError::Agent(a)
            if matches!(
                a.code,
                api::ErrorCode::BadRequest | api::ErrorCode::NotFound
            ) =>
        {
            CoreError::Invalid {
                field: "cwd",
                reason: format!("{cwd}: {}", a.message),
            }
        }
        e => CoreError::Agent(e),
    }
}

/// The text of one read and where the next continues.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    text: String,
    next_cursor: u64,
}

/// Redacts and renders `data` (transcript bytes from offset `start`) for a read asked at
/// `req.cursor`: see the module docs.
fn render_read(
    data: &[u8],
    start: u64,
    req: ReadShell,
    values: &[String],
    at_end: bool,
    (cols, rows): (u16, u16),
) -> Piece {
    let context = usize::try_from(req.cursor.saturating_sub(start))
        .unwrap_or(usize::MAX)
        .min(data.len());
    let red = crate::secrets::redact_mapped(data, values, !at_end);
    let begin = red.out_at_raw(context).min(red.bytes.len());
    let body = &red.bytes[begin..];
    let complete = at_end && red.covered == data.len();
    let max = req.max_chars.max(1) as usize;
    let rendered = if req.plain {
        pyro_term::render_plain(body, cols, rows, max, complete)
    } else {
        pyro_term::decode_text(body, max, complete)
    };
    // Never past what was covered (a held tail is read again next time).
    let raw_end = red.raw_at_out(begin + rendered.consumed).min(red.covered);
    let floor = req.cursor.max(start);
    let next_cursor = (start + raw_end as u64).max(floor);
    Piece {
        text: rendered.text,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cursor: u64, max_chars: i64, plain: bool) -> ReadShell {
        ReadShell {
            cursor,
            max_chars,
            plain,
            wait_for_idle_ms: None,
        }
    }

    #[test]
    fn successive_reads_lose_nothing_and_show_no_secret() {
        let values = vec!["hunter2-value".to_string()];
        let raw = b"one\r\ntwo hunter2-value three\r\n\x1b[31mfour\x1b[0m\r\n";
        for plain in [false, true] {
            for max in [1i64, 3, 7, 64] {
                let mut cursor = 0u64;
                let mut text = String::new();
                for _ in 0..200 {
                    if cursor as usize >= raw.len() {
                        break;
                    }
                    let p = render_read(
                        &raw[cursor as usize..],
                        cursor,
                        read(cursor, max, plain),
                        &values,
                        true,
                        (120, 30),
                    );
                    assert!(p.text.chars().count() <= max as usize, "{p:?}");
                    assert!(!p.text.contains("hunter"), "{p:?}");
                    assert!(p.next_cursor > cursor, "no progress at {cursor}: {p:?}");
                    text.push_str(&p.text);
                    cursor = p.next_cursor;
                }
                assert_eq!(cursor as usize, raw.len());
                for word in ["one", "two", "three", "four"] {
                    assert!(text.contains(word), "{plain} {max}: {text:?}");
                }
            }
        }
    }

    #[test]
    fn a_cursor_inside_a_value_and_a_value_still_arriving_stay_hidden() {
        let values = vec!["hunter2-value".to_string()];
        let raw = b"pre hunter2-value post";
        // The caller asks from the middle of the value: the read looked back 12 bytes.
        let p = render_read(raw, 0, read(8, 100, false), &values, true, (80, 24));
        assert_eq!(p.text, "[REDACTED] post");
        // The value's beginning at the end of what the shell printed so far is held back.
        let p = render_read(
            b"pre hunt",
            0,
            read(0, 100, false),
            &values,
            false,
            (80, 24),
        );
        assert_eq!(p.text, "pre ");
        assert_eq!(p.next_cursor, 4);
    }
}
