//! Applying a [`Patch`] to file contents, all or nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{FileKind, FilePatch, Hunk, Patch, mode};

/// A file as the caller read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// The file's bytes; for a symlink, its target.
    pub content: Vec<u8>,
    /// The file's mode as `stat` gives it. The permission bits (`0o644`) are what matters;
    /// file-type bits may be absent (taken as a regular file), `0o100000` (a regular file) or
    /// `0o120000` (a symlink, whose `content` is its target).
    pub mode: u32,
}

/// The new state of one path, computed by [`apply()`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Write the file (create it, or replace its content) and set its mode.
    Write {
        /// The path, as the patch names it.
        path: String,
        /// The complete new content (a symlink's target when `mode` says symlink).
        content: Vec<u8>,
        /// The mode to set: the caller's own value where the patch keeps the mode, the old
        /// permission bits with the execute bits set (where read is) or cleared where the
        /// patch changes it, `0o644`/`0o755` for new files, and `0o120777` for symlinks.
        mode: u32,
    },
    /// Remove the file (a deletion, or the old path of a rename).
    Delete {
        /// The path to remove.
        path: String,
    },
}

impl Outcome {
    /// The path this outcome is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Write { path, .. } | Self::Delete { path } => path,
        }
    }
}

/// Why a hunk did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HunkFailure {
    /// The hunk's context and removed lines match neither at the stated line nor at any
    /// offset; at the stated line (1-based), the first difference is shown.
    Mismatch {
        /// The first line of the file that differs from the hunk, 1-based.
        line: usize,
        /// What the hunk expects there (lossy UTF-8, shortened).
        expected: String,
        /// What the file has there (lossy UTF-8, shortened).
        found: String,
    },
    /// The hunk reaches past the end of the file and matches nowhere else.
    PastEnd {
        /// How many lines the file has.
        file_lines: usize,
    },
    /// The hunk would start inside the previous hunk's lines and matches nowhere later.
    Overlap {
        /// The last old line (1-based) the previous hunk used.
        previous_end: usize,
    },
    /// The hunk leaves a line without a final newline in front of other lines.
    NewlineNotAtEnd,
}

impl std::fmt::Display for HunkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mismatch {
                line,
                expected,
                found,
            } => write!(
                f,
                "its context and removed lines do not match the file at or near that line \
                 (no offset found); at line {line} the hunk expects {expected:?} but the file has {found:?}"
            ),
            Self::PastEnd { file_lines } => {
                write!(
                    f,
                    "it reaches past the end of the file, which has {file_lines} lines"
                )
            }
            Self::Overlap { previous_end } => write!(
                f,
                "it overlaps the previous hunk, which used the file up to line {previous_end}"
            ),
            Self::NewlineNotAtEnd => {
                f.write_str("it leaves a line without a final newline before other lines")
            }
        }
    }
}

/// Why a patch did not apply. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A hunk did not apply.
    #[error(
        "`{path}`: hunk {hunk} (patch line {patch_line}, expected at line {expected_at_line}) \
         does not apply: {reason}"
    )]
    HunkFailed {
        /// The file (the new path of a rename).
        path: String,
        /// The 1-based hunk number within the file's section.
        hunk: usize,
        /// The 1-based patch line of the hunk's `@@` header (0 for a hand-built hunk).
        patch_line: usize,
        /// The old-side line the hunk header states.
        expected_at_line: usize,
        /// What went wrong.
        reason: HunkFailure,
    },
    /// The patch creates a file (or renames onto a path) that already exists.
    #[error("`{path}` already exists, but the patch creates it")]
    AlreadyExists {
        /// The existing path.
        path: String,
    },
    /// The patch changes, renames or deletes a file that does not exist.
    #[error("`{path}` does not exist, but the patch changes it")]
    Missing {
        /// The absent path.
        path: String,
    },
    /// A deletion whose hunks do not remove all of the file's content.
    #[error(
        "`{path}` is not deleted: the patch removes its content, but {remaining} bytes differ from what the patch expects"
    )]
    DeleteNotEmpty {
        /// The file.
        path: String,
        /// How many bytes would remain after removing the patch's lines.
        remaining: usize,
    },
    /// Two sections change the same old path, or produce the same new path.
    #[error("`{path}` is changed by more than one file section")]
    DuplicatePath {
        /// The repeated path.
        path: String,
    },
    /// The patch says the file is a symlink and it is not, or the reverse.
    #[error("`{path}` is {}, but the patch treats it as {}", kind_name(*.is_symlink), kind_name(!*.is_symlink))]
    TypeMismatch {
        /// The file.
        path: String,
        /// Whether the file is a symlink.
        is_symlink: bool,
    },
    /// A section that keeps its file (a modification, mode change or rename) states old and
    /// new modes of different file types: a regular file turning into a symlink, or the
    /// reverse. Like `git apply`, this is refused; a type change is a deletion of the old
    /// file followed by a creation of the new one, as `git diff` writes it.
    #[error(
        "`{path}`: new mode {new_mode:o} does not match old mode {old_mode:o} (a {} cannot \
         become a {} in place; delete it and create the new one)",
        mode_kind(*.old_mode),
        mode_kind(*.new_mode)
    )]
    TypeChangingMode {
        /// The file (the new path of a rename).
        path: String,
        /// The git mode the patch states before the change.
        old_mode: u32,
        /// The git mode the patch states after the change.
        new_mode: u32,
    },
    /// A hand-built section lacks a path its kind needs.
    #[error("file section {section} ({kind:?}) lacks its {side} path")]
    IncompleteSection {
        /// The 1-based section number.
        section: usize,
        /// The section's kind.
        kind: FileKind,
        /// `"old"` or `"new"`.
        side: &'static str,
    },
}

/// `"symlink"` or `"regular file"`, for a git mode.
fn mode_kind(git_mode: u32) -> &'static str {
    if mode::is_symlink(git_mode) {
        "symlink"
    } else {
        "regular file"
    }
}

fn kind_name(is_symlink: bool) -> &'static str {
    if is_symlink {
        "a symlink"
    } else {
        "a regular file"
    }
}

/// Computes the new state of every path the patch touches.
///
/// `get` returns a file's current state, or `None` when it does not exist; it is asked about
/// every old path, and about every new path that must not exist yet. Sections see the
/// files as they were before the patch, like `git apply`: a path may be deleted (or renamed
/// away) by one section and created by another, so type changes and swapped renames work.
///
/// Returns one [`Outcome`] per path: first the deletions, then the writes, each in path
/// order. On any error nothing is returned, so the caller writes nothing.
pub fn apply(
    patch: &Patch,
    get: impl Fn(&str) -> Option<FileState>,
) -> Result<Vec<Outcome>, ApplyError> {
    let mut old_paths = BTreeSet::new();
    let mut new_paths = BTreeSet::new();
    for (index, file) in patch.files.iter().enumerate() {
        let section = index + 1;
        let needs_old = file.kind != FileKind::Added;
        let needs_new = file.kind != FileKind::Deleted;
        if needs_old && file.old_path.is_none() {
            return Err(ApplyError::IncompleteSection {
                section,
                kind: file.kind,
                side: "old",
            });
        }
        if needs_new && file.new_path.is_none() {
            return Err(ApplyError::IncompleteSection {
                section,
                kind: file.kind,
                side: "new",
            });
        }
        let old = file.old_path.as_deref().filter(|_| needs_old);
        let new = file.new_path.as_deref().filter(|_| needs_new);
        // Like git, from the patch alone: a kept file cannot change its type.
        if needs_old
            && needs_new
            && let (Some(old_mode), Some(new_mode)) = (file.old_mode, file.new_mode)
            && mode::is_symlink(old_mode) != mode::is_symlink(new_mode)
        {
            return Err(ApplyError::TypeChangingMode {
                path: file.path().to_owned(),
                old_mode,
                new_mode,
            });
        }
        if let Some(path) = old.filter(|p| !old_paths.insert(*p)) {
            return Err(ApplyError::DuplicatePath {
                path: path.to_owned(),
            });
        }
        if let Some(path) = new.filter(|p| !new_paths.insert(*p)) {
            return Err(ApplyError::DuplicatePath {
                path: path.to_owned(),
            });
        }
    }
    // Paths that some section removes (deletions and rename sources): another section may
    // create them.
    let vacated: BTreeSet<&str> = patch
        .files
        .iter()
        .filter(|f| matches!(f.kind, FileKind::Deleted | FileKind::Renamed))
        .filter_map(|f| f.old_path.as_deref())
        .collect();

    let mut writes: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let mut deletes: BTreeSet<String> = BTreeSet::new();
    for file in &patch.files {
        let old_path = file
            .old_path
            .as_deref()
            .filter(|_| file.kind != FileKind::Added);
        let new_path = file
            .new_path
            .as_deref()
            .filter(|_| file.kind != FileKind::Deleted);
        let current = match old_path {
            Some(path) => {
                let state = get(path).ok_or_else(|| ApplyError::Missing {
                    path: path.to_owned(),
                })?;
                check_type(path, &state, file.old_mode)?;
                Some(state)
            }
            None => None,
        };
        if let Some(path) = new_path
            && Some(path) != old_path
            && !vacated.contains(path)
            && get(path).is_some()
        {
            return Err(ApplyError::AlreadyExists {
                path: path.to_owned(),
            });
        }
        let display = new_path.or(old_path).unwrap_or_default();
        let content = apply_hunks(
            display,
            current.as_ref().map_or(&[][..], |s| &s.content),
            &file.hunks,
        )?;
        match new_path {
            None => {
                if !content.is_empty() {
                    return Err(ApplyError::DeleteNotEmpty {
                        path: display.to_owned(),
                        remaining: content.len(),
                    });
                }
            }
            Some(path) => {
                let mode = new_mode(current.as_ref().map(|s| s.mode), file);
                writes.insert(path.to_owned(), (content, mode));
            }
        }
        if let Some(path) = old_path
            && Some(path) != new_path
        {
            deletes.insert(path.to_owned());
        }
    }

    let mut outcomes: Vec<Outcome> = deletes
        .into_iter()
        .filter(|path| !writes.contains_key(path))
        .map(|path| Outcome::Delete { path })
        .collect();
    outcomes.extend(
        writes
            .into_iter()
            .map(|(path, (content, mode))| Outcome::Write {
                path,
                content,
                mode,
            }),
    );
    Ok(outcomes)
}

/// Refuses to treat a symlink as a regular file or the reverse, where the patch says which.
fn check_type(path: &str, state: &FileState, old_mode: Option<u32>) -> Result<(), ApplyError> {
    let is_symlink = mode::is_symlink(state.mode);
    match old_mode {
        Some(old) if mode::is_symlink(old) != is_symlink => Err(ApplyError::TypeMismatch {
            path: path.to_owned(),
            is_symlink,
        }),
        _ => Ok(()),
    }
}

/// The mode a section leaves its file with (see the `mode` of [`Outcome::Write`]).
fn new_mode(current: Option<u32>, file: &FilePatch) -> u32 {
    let fresh = |git: u32| match git {
        m if mode::is_symlink(m) => 0o120777,
        m if m & 0o100 != 0 => 0o755,
        _ => 0o644,
    };
    match (current, file.new_mode) {
        (None, Some(git)) => fresh(git),
        (None, None) => 0o644,
        (Some(current), Some(git))
            if file.old_mode != file.new_mode
                || mode::is_symlink(current) != mode::is_symlink(git) =>
        {
            if mode::is_symlink(git) || mode::is_symlink(current) {
                return fresh(git);
            }
            let perms = current & 0o7777;
            let perms = if git & 0o100 != 0 {
                perms | ((perms & 0o444) >> 2) | 0o100
            } else {
                perms & !0o111
            };
            (current & mode::TYPE_MASK) | perms
        }
        (Some(current), _) => current,
    }
}

/// Splits content into lines, each keeping its `\n` (the last may lack it).
pub(crate) fn split_lines(content: &[u8]) -> Vec<&[u8]> {
    content.split_inclusive(|&b| b == b'\n').collect()
}

fn shorten(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(80).collect();
        format!("{cut}…")
    } else {
        text.into_owned()
    }
}

/// Applies a file's hunks in order: at the stated line, else at the nearest offset where
/// every context and removed line matches; never before the previous hunk's end.
fn apply_hunks(path: &str, content: &[u8], hunks: &[Hunk]) -> Result<Vec<u8>, ApplyError> {
    if hunks.is_empty() {
        return Ok(content.to_vec());
    }
    let lines = split_lines(content);
    let mut out = Vec::with_capacity(content.len());
    let mut cursor = 0;
    for (index, hunk) in hunks.iter().enumerate() {
        let failed = |reason| ApplyError::HunkFailed {
            path: path.to_owned(),
            hunk: index + 1,
            patch_line: hunk.line,
            expected_at_line: hunk.old_start,
            reason,
        };
        let pre: Vec<&[u8]> = hunk.old_lines().collect();
        let post: Vec<&[u8]> = hunk.new_lines().collect();
        let at = find_position(&lines, &pre, hunk, cursor).map_err(failed)?;
        for line in &lines[cursor..at] {
            out.extend_from_slice(line);
        }
        if !post.is_empty() && !out.is_empty() && out.last() != Some(&b'\n') {
            return Err(failed(HunkFailure::NewlineNotAtEnd));
        }
        for line in &post {
            out.extend_from_slice(line);
        }
        cursor = at + pre.len();
        let ends_without_newline = post.last().is_some_and(|l| l.last() != Some(&b'\n'));
        if ends_without_newline && cursor < lines.len() {
            return Err(failed(HunkFailure::NewlineNotAtEnd));
        }
    }
    if cursor < lines.len() && !out.is_empty() && out.last() != Some(&b'\n') {
        return Err(ApplyError::HunkFailed {
            path: path.to_owned(),
            hunk: hunks.len(),
            patch_line: hunks.last().map_or(0, |h| h.line),
            expected_at_line: hunks.last().map_or(0, |h| h.old_start),
            reason: HunkFailure::NewlineNotAtEnd,
        });
    }
    for line in &lines[cursor..] {
        out.extend_from_slice(line);
    }
    Ok(out)
}

/// Where a hunk's old lines (`pre`) start in `lines`, searching outward from the stated
/// position, never before `lowest`.
///
/// A hunk without leading context that starts at line 0 or 1 is tried at the start of the
/// file first, and one with leading but no trailing context (it reached the end of the file
/// when it was made) at the end first. Unlike `git apply`, these are preferences, not
/// requirements, so hand-written hunks with one-sided context still apply.
fn find_position(
    lines: &[&[u8]],
    pre: &[&[u8]],
    hunk: &Hunk,
    lowest: usize,
) -> Result<usize, HunkFailure> {
    let leading = hunk
        .lines
        .iter()
        .take_while(|l| matches!(l, crate::Line::Context(_)))
        .count();
    let trailing = hunk
        .lines
        .iter()
        .rev()
        .take_while(|l| matches!(l, crate::Line::Context(_)))
        .count();
    let stated = if hunk.old_count == 0 {
        hunk.old_start
    } else {
        hunk.old_start.saturating_sub(1)
    };
    let anchor_start = leading == 0 && stated == 0;
    let anchor_end = trailing == 0 && leading > 0;
    let matches_at = |at: usize| lines[at..at + pre.len()] == *pre;

    let highest = lines.len().checked_sub(pre.len());
    if let Some(highest) = highest.filter(|&h| h >= lowest) {
        let preferred = if anchor_start {
            Some(0)
        } else if anchor_end {
            Some(highest)
        } else {
            None
        };
        if let Some(at) = preferred.filter(|&at| at >= lowest && matches_at(at)) {
            return Ok(at);
        }
        let start = stated.clamp(lowest, highest);
        for distance in 0..=highest - lowest {
            let below = start.checked_sub(distance).filter(|&at| at >= lowest);
            let above = start.checked_add(distance).filter(|&at| at <= highest);
            if below.is_none() && above.is_none() {
                break;
            }
            if let Some(at) = below.filter(|&at| matches_at(at)) {
                return Ok(at);
            }
            if let Some(at) = above.filter(|&at| distance > 0 && matches_at(at)) {
                return Ok(at);
            }
        }
    }

    // No match: describe the failure at the stated position.
    if stated < lowest {
        return Err(HunkFailure::Overlap {
            previous_end: lowest,
        });
    }
    for (offset, expected) in pre.iter().enumerate() {
        // Checked: a hand-built hunk may state any line.
        let found = stated
            .checked_add(offset)
            .and_then(|at| Some((at, lines.get(at)?)));
        match found {
            None => {
                return Err(HunkFailure::PastEnd {
                    file_lines: lines.len(),
                });
            }
            Some((at, found)) if found != expected => {
                return Err(HunkFailure::Mismatch {
                    line: at + 1,
                    expected: shorten(expected),
                    found: shorten(found),
                });
            }
            Some(_) => {}
        }
    }
    // Unreachable in practice: the lines match at the stated position, which was tried.
    Err(HunkFailure::PastEnd {
        file_lines: lines.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn run(patch: &str, files: &[(&str, &str)]) -> Result<Vec<Outcome>, ApplyError> {
        let patch = parse(patch).unwrap();
        let files: BTreeMap<String, FileState> = files
            .iter()
            .map(|(p, c)| {
                (
                    p.to_string(),
                    FileState {
                        content: c.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect();
        apply(&patch, |p| files.get(p).cloned())
    }

    fn write(path: &str, content: &str) -> Outcome {
        Outcome::Write {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    #[test]
    fn applies_at_the_stated_line() {
        let out = run(
            "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n b\n-c\n+C\n d\n",
            &[("f", "a\nb\nc\nd\ne\n")],
        )
        .unwrap();
        assert_eq!(out, vec![write("f", "a\nb\nC\nd\ne\n")]);
    }

    #[test]
    fn applies_at_an_offset_after_lines_were_inserted_above() {
        let patch = "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n b\n-c\n+C\n d\n";
        let out = run(patch, &[("f", "x\ny\nz\na\nb\nc\nd\ne\n")]).unwrap();
        assert_eq!(out, vec![write("f", "x\ny\nz\na\nb\nC\nd\ne\n")]);
        // Lines removed above: the hunk moves up.
        let out = run(
            "--- a/f\n+++ b/f\n@@ -5,3 +5,3 @@\n b\n-c\n+C\n d\n",
            &[("f", "b\nc\nd\n")],
        )
        .unwrap();
        assert_eq!(out, vec![write("f", "b\nC\nd\n")]);
    }

    #[test]
    fn nearest_offset_wins() {
        let text = "b\nc\nd\nx\nx\nx\nb\nc\nd\n";
        let out = run(
            "--- a/f\n+++ b/f\n@@ -6,3 +6,3 @@\n b\n-c\n+C\n d\n",
            &[("f", text)],
        )
        .unwrap();
        assert_eq!(out, vec![write("f", "b\nc\nd\nx\nx\nx\nb\nC\nd\n")]);
    }

    #[test]
    fn context_mismatch_names_the_hunk() {
        let patch =
            "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n@@ -5,3 +5,3 @@\n e\n-f\n+F\n g\n";
        let err = run(patch, &[("f", "a\nb\nc\nd\ne\nX\ng\n")]).unwrap_err();
        let ApplyError::HunkFailed {
            path,
            hunk,
            patch_line,
            expected_at_line,
            reason,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((path.as_str(), *hunk, *expected_at_line), ("f", 2, 5));
        assert_eq!(
            reason,
            &HunkFailure::Mismatch {
                line: 6,
                expected: "f\n".into(),
                found: "X\n".into()
            }
        );
        assert_eq!(*patch_line, 8);
        assert!(
            err.to_string()
                .contains("hunk 2 (patch line 8, expected at line 5)"),
            "{err}"
        );
    }

    #[test]
    fn hunks_do_not_overlap() {
        let patch =
            "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n";
        let err = run(patch, &[("f", "a\nb\nc\n")]).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::HunkFailed {
                    hunk: 2,
                    reason: HunkFailure::Overlap { previous_end: 3 },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn past_end() {
        let err = run(
            "--- a/f\n+++ b/f\n@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\n",
            &[("f", "a\n")],
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::HunkFailed {
                    reason: HunkFailure::PastEnd { file_lines: 1 },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn hunk_without_trailing_context_prefers_the_end() {
        // No trailing context: the hunk appended at the end of the file.
        let patch = "--- a/f\n+++ b/f\n@@ -1,2 +1,3 @@\n a\n b\n+c\n";
        let out = run(patch, &[("f", "a\nb\nx\na\nb\n")]).unwrap();
        assert_eq!(out, vec![write("f", "a\nb\nx\na\nb\nc\n")]);
        // Only a preference: elsewhere is fine when the end does not match.
        let out = run(patch, &[("f", "a\nb\nz\n")]).unwrap();
        assert_eq!(out, vec![write("f", "a\nb\nc\nz\n")]);
    }

    #[test]
    fn newline_at_end_can_be_added_and_removed() {
        let add = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n";
        assert_eq!(
            run(add, &[("f", "a\nb")]).unwrap(),
            vec![write("f", "a\nb\n")]
        );
        assert!(run(add, &[("f", "a\nb\n")]).is_err());
        let remove =
            "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+b\n\\ No newline at end of file\n";
        assert_eq!(
            run(remove, &[("f", "a\nb\n")]).unwrap(),
            vec![write("f", "a\nb")]
        );
    }

    #[test]
    fn add_delete_and_existence_errors() {
        let add = "--- /dev/null\n+++ b/n\n@@ -0,0 +1 @@\n+x\n";
        assert_eq!(run(add, &[]).unwrap(), vec![write("n", "x\n")]);
        assert_eq!(
            run(add, &[("n", "")]).unwrap_err(),
            ApplyError::AlreadyExists { path: "n".into() }
        );
        let modify = "--- a/m\n+++ b/m\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(
            run(modify, &[]).unwrap_err(),
            ApplyError::Missing { path: "m".into() }
        );
        let delete = "--- a/d\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n";
        assert_eq!(
            run(delete, &[("d", "a\n")]).unwrap(),
            vec![Outcome::Delete { path: "d".into() }]
        );
        assert_eq!(
            run(delete, &[("d", "a\nmore\n")]).unwrap_err(),
            ApplyError::DeleteNotEmpty {
                path: "d".into(),
                remaining: 5
            }
        );
        let delete_empty = "diff --git a/e b/e\ndeleted file mode 100644\nindex e69de29..0000000\n";
        assert_eq!(
            run(delete_empty, &[("e", "")]).unwrap(),
            vec![Outcome::Delete { path: "e".into() }]
        );
        assert!(matches!(
            run(delete_empty, &[("e", "x")]).unwrap_err(),
            ApplyError::DeleteNotEmpty { .. }
        ));
    }

    #[test]
    fn all_or_nothing() {
        let patch =
            "--- a/ok\n+++ b/ok\n@@ -1 +1 @@\n-a\n+b\n--- a/bad\n+++ b/bad\n@@ -1 +1 @@\n-a\n+b\n";
        assert!(run(patch, &[("ok", "a\n"), ("bad", "zzz\n")]).is_err());
    }

    #[test]
    fn renames_modes_and_swaps() {
        let rename = "diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to y\n";
        assert_eq!(
            run(rename, &[("x", "1\n")]).unwrap(),
            vec![Outcome::Delete { path: "x".into() }, write("y", "1\n")]
        );
        assert_eq!(
            run(rename, &[("x", "1\n"), ("y", "")]).unwrap_err(),
            ApplyError::AlreadyExists { path: "y".into() }
        );
        let swap = "diff --git a/x b/y\nrename from x\nrename to y\ndiff --git a/y b/x\nrename from y\nrename to x\n";
        assert_eq!(
            run(swap, &[("x", "1\n"), ("y", "2\n")]).unwrap(),
            vec![write("x", "2\n"), write("y", "1\n")]
        );

        let chmod = parse("diff --git a/s b/s\nold mode 100644\nnew mode 100755\n").unwrap();
        let out = apply(&chmod, |_| {
            Some(FileState {
                content: b"#!/bin/sh\n".to_vec(),
                mode: 0o100640,
            })
        })
        .unwrap();
        assert_eq!(
            out,
            vec![Outcome::Write {
                path: "s".into(),
                content: b"#!/bin/sh\n".to_vec(),
                mode: 0o100750
            }]
        );
        let back = parse("diff --git a/s b/s\nold mode 100755\nnew mode 100644\n").unwrap();
        let out = apply(&back, |_| {
            Some(FileState {
                content: vec![],
                mode: 0o755,
            })
        })
        .unwrap();
        assert!(matches!(&out[0], Outcome::Write { mode: 0o644, .. }));
    }

    #[test]
    fn symlinks() {
        let add = parse("diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n").unwrap();
        let out = apply(&add, |_| None).unwrap();
        assert_eq!(
            out,
            vec![Outcome::Write {
                path: "l".into(),
                content: b"target".to_vec(),
                mode: 0o120777
            }]
        );
        let modify = parse("diff --git a/l b/l\nindex 1..2 120000\n--- a/l\n+++ b/l\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n").unwrap();
        let err = apply(&modify, |_| {
            Some(FileState {
                content: b"a".to_vec(),
                mode: 0o644,
            })
        })
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::TypeMismatch {
                path: "l".into(),
                is_symlink: false
            }
        );
    }

    #[test]
    fn mode_lines_cannot_change_the_file_type() {
        let regular = || {
            Some(FileState {
                content: b"target".to_vec(),
                mode: 0o100644,
            })
        };
        let symlink = || {
            Some(FileState {
                content: b"target".to_vec(),
                mode: 0o120777,
            })
        };
        // Regression: a mode-only change from a regular file to a symlink was applied,
        // turning the file's content into a link target; `git apply` refuses it.
        let to_link = parse("diff --git a/f b/f\nold mode 100644\nnew mode 120000\n").unwrap();
        let err = apply(&to_link, |_| regular()).unwrap_err();
        assert_eq!(
            err,
            ApplyError::TypeChangingMode {
                path: "f".into(),
                old_mode: 0o100644,
                new_mode: 0o120000
            }
        );
        assert_eq!(
            err.to_string(),
            "`f`: new mode 120000 does not match old mode 100644 (a regular file cannot become \
             a symlink in place; delete it and create the new one)"
        );
        // Refused from the patch alone, whatever the file is.
        assert!(matches!(
            apply(&to_link, |_| symlink()),
            Err(ApplyError::TypeChangingMode { .. })
        ));

        let to_file = parse("diff --git a/l b/l\nold mode 120000\nnew mode 100755\n").unwrap();
        assert_eq!(
            apply(&to_file, |_| symlink()).unwrap_err(),
            ApplyError::TypeChangingMode {
                path: "l".into(),
                old_mode: 0o120000,
                new_mode: 0o100755
            }
        );

        // With hunks, and on a rename, just the same.
        let with_hunk = parse(
            "diff --git a/f b/f\nold mode 100644\nnew mode 120000\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-target\n\\ No newline at end of file\n+other\n\\ No newline at end of file\n",
        )
        .unwrap();
        assert!(matches!(
            apply(&with_hunk, |_| regular()),
            Err(ApplyError::TypeChangingMode { .. })
        ));
        let rename = parse(
            "diff --git a/f b/g\nold mode 100644\nnew mode 120000\nrename from f\nrename to g\n",
        )
        .unwrap();
        assert_eq!(
            apply(&rename, |p| (p == "f").then(regular).flatten()).unwrap_err(),
            ApplyError::TypeChangingMode {
                path: "g".into(),
                old_mode: 0o100644,
                new_mode: 0o120000
            }
        );

        // A deletion and a creation of the same path remain the way to change the type.
        let type_change = parse(concat!(
            "diff --git a/f b/f\ndeleted file mode 100644\n--- a/f\n+++ /dev/null\n@@ -1 +0,0 @@\n-target\n\\ No newline at end of file\n",
            "diff --git a/f b/f\nnew file mode 120000\n--- /dev/null\n+++ b/f\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n",
        ))
        .unwrap();
        assert_eq!(
            apply(&type_change, |_| regular()).unwrap(),
            vec![Outcome::Write {
                path: "f".into(),
                content: b"target".to_vec(),
                mode: 0o120777
            }]
        );
        // And a plain permission change still applies.
        let chmod = parse("diff --git a/f b/f\nold mode 100644\nnew mode 100755\n").unwrap();
        assert!(apply(&chmod, |_| regular()).is_ok());
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        let patch =
            crate::parse_bytes(b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-caf\xe9\n+caf\xc3\xa9\n").unwrap();
        let out = apply(&patch, |_| {
            Some(FileState {
                content: b"caf\xe9\n".to_vec(),
                mode: 0o644,
            })
        })
        .unwrap();
        assert!(
            matches!(&out[0], Outcome::Write { content, .. } if content == "café\n".as_bytes())
        );
    }

    #[test]
    fn hand_built_duplicates_are_refused() {
        let mut patch = parse("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        patch.files.push(patch.files[0].clone());
        let err = apply(&patch, |_| {
            Some(FileState {
                content: b"a\n".to_vec(),
                mode: 0o644,
            })
        })
        .unwrap_err();
        assert_eq!(err, ApplyError::DuplicatePath { path: "f".into() });
    }
}
