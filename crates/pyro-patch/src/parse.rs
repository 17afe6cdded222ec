//! Parsing `git diff` and `diff -u` output into a [`Patch`].
//!
//! The parser reads the patch line by line. Text before, between and after file sections
//! (commit messages, `diff -r` command lines, `Only in` notes, a `format-patch` signature)
//! is skipped. A file section starts at `diff --git`, or at a `---` line directly followed
//! by `+++`; hunks are read by their declared counts, so a body line is never mistaken for
//! a header.

use std::collections::BTreeSet;
use std::fmt;

use crate::model::{FileKind, FilePatch, Hunk, Line, Patch, mode};
use crate::quote::{unquote_exact, unquote_prefix};

/// Where a [`PatchError`] happened and what it is.
///
/// Every error names the 1-based line of the patch, and, once they are known, the file
/// section's path and the 1-based hunk number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", location(.line, .file, .hunk))]
pub struct PatchError {
    /// The 1-based line of the patch the error is about.
    pub line: usize,
    /// The file section's path, when it is known.
    pub file: Option<String>,
    /// The 1-based number of the hunk within its file section, for errors inside a hunk.
    pub hunk: Option<usize>,
    /// What is wrong.
    pub kind: PatchErrorKind,
}

fn location(line: &usize, file: &Option<String>, hunk: &Option<usize>) -> String {
    let mut out = format!("patch line {line}");
    if let Some(file) = file {
        out.push_str(&format!(", file `{file}`"));
    }
    if let Some(hunk) = hunk {
        out.push_str(&format!(", hunk {hunk}"));
    }
    out.push_str(": ");
    out
}

/// A patch feature this crate does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsupported {
    /// `Binary files … differ` or `GIT binary patch`.
    Binary,
    /// `copy from`/`copy to`.
    Copy,
    /// Combined diffs of merges (`diff --cc`, `@@@`).
    CombinedDiff,
    /// Submodule (gitlink, mode 160000) changes.
    Submodule,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Binary => "binary patches are not supported; send the file's new content instead",
            Self::Copy => {
                "copies (`copy from`/`copy to`) are not supported; add the new file instead"
            }
            Self::CombinedDiff => "combined diffs of merges are not supported",
            Self::Submodule => "submodule (gitlink) changes are not supported",
        })
    }
}

/// What is wrong with a patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchErrorKind {
    /// The patch has no file sections at all.
    #[error("no file sections found (expected `diff --git` or `---`/`+++` headers)")]
    Empty,
    /// A feature this crate refuses.
    #[error("{0}")]
    Unsupported(Unsupported),
    /// A `---` header is followed by a hunk instead of `+++`.
    #[error("`---` header is not followed by a `+++` header")]
    MissingNewHeader,
    /// An `@@` line outside any file section.
    #[error("hunk header outside a file section (missing `---`/`+++` headers)")]
    HunkWithoutFile,
    /// A malformed `@@ -a,b +c,d @@` line.
    #[error("malformed hunk header {text:?}: {reason}")]
    BadHunkHeader {
        /// The header line.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A hunk header whose line counts claim more body lines than the rest of the patch
    /// holds: each body line gives at most one old and one new line, so such a hunk cannot
    /// be complete (a truncated patch, or a wrong or absurd count).
    #[error(
        "hunk header {text:?} claims {old_count} old and {new_count} new lines, more than the \
         {available} lines left in the patch (truncated patch, or wrong counts)"
    )]
    HunkTooLong {
        /// The header line.
        text: String,
        /// The old-side line count the header states.
        old_count: usize,
        /// The new-side line count the header states.
        new_count: usize,
        /// How many patch lines follow the header.
        available: usize,
    },
    /// A line inside a hunk that does not fit its declared counts.
    #[error(
        "unexpected line {text:?} in the hunk body; the header still expects {old_left} old \
         and {new_left} new lines (wrong counts, or a line without its ` `, `-` or `+` prefix)"
    )]
    UnexpectedLine {
        /// The offending line.
        text: String,
        /// Old-side lines (context and removed) the header still expected.
        old_left: usize,
        /// New-side lines (context and added) the header still expected.
        new_left: usize,
    },
    /// The patch ended inside a hunk.
    #[error(
        "the patch ends inside the hunk; its header expects {old_left} more old and {new_left} more new lines"
    )]
    TruncatedHunk {
        /// Old-side lines still expected.
        old_left: usize,
        /// New-side lines still expected.
        new_left: usize,
    },
    /// A body line after the hunk's declared counts were used up.
    #[error("line {text:?} follows a complete hunk: the hunk header's counts are too small")]
    ExtraHunkLine {
        /// The offending line.
        text: String,
    },
    /// A `\ No newline at end of file` marker that is not after its side's last line.
    #[error("`\\ No newline at end of file` marker is not after the last line of its side")]
    MisplacedNoNewline,
    /// Two sections with the same old path, or the same new path.
    #[error("`{path}` is changed by more than one file section")]
    DuplicatePath {
        /// The repeated path.
        path: String,
    },
    /// A path that is malformed or unsafe.
    #[error("bad path {text:?}: {reason}")]
    BadPath {
        /// The path text as written in the patch.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A mode that is not a git file mode.
    #[error("bad file mode {text:?} (expected 100644, 100755 or 120000)")]
    BadMode {
        /// The mode text.
        text: String,
    },
    /// A section whose headers name no file.
    #[error("the file section names no file")]
    NoPath,
    /// Headers that contradict each other.
    #[error("inconsistent file headers: {detail}")]
    Inconsistent {
        /// Which headers disagree.
        detail: &'static str,
    },
    /// A section with neither hunks nor a header-only change.
    #[error("the file section has no hunks and changes nothing")]
    NoChanges,
}

/// How to turn header names into paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Leading path components to strip from header names, like `patch -pN`. `None`
    /// (the default) guesses per section: one component when the names carry `a/`/`b/` (or
    /// other differing first components over the same rest, as in `diff -ru old new`),
    /// none otherwise (`git diff --no-prefix`, `diff -u file.orig file`). `rename from`/`to`
    /// names never carry a prefix and are never stripped.
    pub strip: Option<usize>,
}

/// Parses `git diff` or `diff -u` output (the UTF-8 form; see [`parse_bytes`] for patches of
/// files in other encodings).
pub fn parse(patch: &str) -> Result<Patch, PatchError> {
    parse_with(patch.as_bytes(), &ParseOptions::default())
}

/// Parses a patch given as bytes: body lines may be in any encoding, paths must be UTF-8.
pub fn parse_bytes(patch: &[u8]) -> Result<Patch, PatchError> {
    parse_with(patch, &ParseOptions::default())
}

/// Parses a patch with explicit [`ParseOptions`].
pub fn parse_with(patch: &[u8], options: &ParseOptions) -> Result<Patch, PatchError> {
    let owned;
    let text = if patch.is_empty() || patch.ends_with(b"\n") {
        patch
    } else {
        // A patch whose final newline was trimmed: read it as if it were there.
        owned = [patch, b"\n"].concat();
        &owned
    };
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let mut parser = Parser {
        lines,
        pos: 0,
        options: *options,
    };
    let files = parser.sections()?;
    Ok(Patch { files })
}

/// A `---`/`+++` label or a `diff --git` name, before prefix stripping.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// `/dev/null`: the file is absent on this side.
    Null,
    /// A name with `diff -N`'s epoch timestamp: absent too, but the name still tells the
    /// prefix.
    Absent(String),
    /// A path as written (prefix still on).
    Path(String),
}

/// The extended headers of a `diff --git` section.
#[derive(Debug, Default)]
struct GitHeaders {
    old_mode: Option<u32>,
    new_mode: Option<u32>,
    index_mode: Option<u32>,
    added: bool,
    deleted: bool,
    rename_from: Option<String>,
    rename_to: Option<String>,
}

struct Parser<'a> {
    lines: Vec<&'a [u8]>,
    pos: usize,
    options: ParseOptions,
}

/// A line without its `\n` (and without a `\r` before it: header lines only).
fn header_text(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn lossy(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
    if text.chars().count() > 120 {
        let cut: String = text.chars().take(120).collect();
        format!("{cut}…")
    } else {
        text.into_owned()
    }
}

impl<'a> Parser<'a> {
    fn err(
        &self,
        line: usize,
        file: Option<&str>,
        hunk: Option<usize>,
        kind: PatchErrorKind,
    ) -> PatchError {
        PatchError {
            line,
            file: file.map(str::to_owned),
            hunk,
            kind,
        }
    }

    fn line(&self, index: usize) -> Option<&'a [u8]> {
        self.lines.get(index).copied()
    }

    fn sections(&mut self) -> Result<Vec<FilePatch>, PatchError> {
        let mut files = Vec::new();
        while let Some(line) = self.line(self.pos) {
            let text = header_text(line);
            if text.starts_with(b"diff --git ") {
                files.push(self.git_section()?);
            } else if text.starts_with(b"diff --cc ") || text.starts_with(b"diff --combined ") {
                return Err(self.err(
                    self.pos + 1,
                    None,
                    None,
                    PatchErrorKind::Unsupported(Unsupported::CombinedDiff),
                ));
            } else if text.starts_with(b"--- ")
                && self
                    .line(self.pos + 1)
                    .is_some_and(|next| next.starts_with(b"+++ "))
            {
                files.push(self.plain_section()?);
            } else if text.starts_with(b"--- ")
                && self
                    .line(self.pos + 1)
                    .is_some_and(|next| next.starts_with(b"@@ "))
            {
                return Err(self.err(self.pos + 2, None, None, PatchErrorKind::MissingNewHeader));
            } else if text.starts_with(b"@@ ") || text.starts_with(b"@@@ ") {
                return Err(self.err(self.pos + 1, None, None, PatchErrorKind::HunkWithoutFile));
            } else if text.starts_with(b"Binary files ") && text.ends_with(b" differ") {
                let file = binary_files_name(text);
                return Err(self.err(
                    self.pos + 1,
                    file.as_deref(),
                    None,
                    PatchErrorKind::Unsupported(Unsupported::Binary),
                ));
            } else {
                self.pos += 1;
            }
        }
        if files.is_empty() {
            return Err(self.err(self.lines.len().max(1), None, None, PatchErrorKind::Empty));
        }
        self.check_duplicates(&files)?;
        Ok(files)
    }

    fn check_duplicates(&self, files: &[FilePatch]) -> Result<(), PatchError> {
        let mut old_paths = BTreeSet::new();
        let mut new_paths = BTreeSet::new();
        for file in files {
            let old_dup = file
                .old_path
                .as_ref()
                .filter(|p| !old_paths.insert(p.as_str()));
            let new_dup = file
                .new_path
                .as_ref()
                .filter(|p| !new_paths.insert(p.as_str()));
            if let Some(path) = old_dup.or(new_dup) {
                return Err(self.err(
                    file.line,
                    Some(path),
                    None,
                    PatchErrorKind::DuplicatePath { path: path.clone() },
                ));
            }
        }
        Ok(())
    }

    /// A `diff --git` section: extended headers, optional `---`/`+++`, hunks.
    fn git_section(&mut self) -> Result<FilePatch, PatchError> {
        let start = self.pos + 1;
        let header = header_text(self.lines[self.pos]);
        let header_names = split_git_header(&header[b"diff --git ".len()..]);
        let guess = header_names
            .as_ref()
            .map(|(a, b)| self.strip_names(&Name::Path(a.clone()), &Name::Path(b.clone())));
        let display = guess.as_ref().and_then(|(_, b)| b.clone());
        self.pos += 1;

        let mut headers = GitHeaders::default();
        let mut labels = None;
        while let Some(line) = self.line(self.pos) {
            let number = self.pos + 1;
            let text = header_text(line);
            let file = display.as_deref();
            if let Some(rest) = text.strip_prefix(b"old mode ") {
                headers.old_mode = Some(self.mode(rest, number, file)?);
            } else if let Some(rest) = text.strip_prefix(b"new mode ") {
                headers.new_mode = Some(self.mode(rest, number, file)?);
            } else if let Some(rest) = text.strip_prefix(b"deleted file mode ") {
                headers.deleted = true;
                headers.old_mode = Some(self.mode(rest, number, file)?);
            } else if let Some(rest) = text.strip_prefix(b"new file mode ") {
                headers.added = true;
                headers.new_mode = Some(self.mode(rest, number, file)?);
            } else if let Some(rest) = text
                .strip_prefix(b"rename from ")
                .or_else(|| text.strip_prefix(b"rename old "))
            {
                headers.rename_from = Some(self.path_text(rest, number, file)?);
            } else if let Some(rest) = text
                .strip_prefix(b"rename to ")
                .or_else(|| text.strip_prefix(b"rename new "))
            {
                headers.rename_to = Some(self.path_text(rest, number, file)?);
            } else if text.starts_with(b"copy from ") || text.starts_with(b"copy to ") {
                return Err(self.err(
                    number,
                    file,
                    None,
                    PatchErrorKind::Unsupported(Unsupported::Copy),
                ));
            } else if text.starts_with(b"similarity index ")
                || text.starts_with(b"dissimilarity index ")
            {
                // Informational.
            } else if let Some(rest) = text.strip_prefix(b"index ") {
                if let Some(pos) = rest.iter().position(|&b| b == b' ') {
                    headers.index_mode = Some(self.mode(&rest[pos + 1..], number, file)?);
                }
            } else if text.starts_with(b"Binary files ") || text == b"GIT binary patch" {
                return Err(self.err(
                    number,
                    file,
                    None,
                    PatchErrorKind::Unsupported(Unsupported::Binary),
                ));
            } else if let Some(rest) = text.strip_prefix(b"--- ") {
                let Some(next) = self.line(self.pos + 1).map(header_text) else {
                    return Err(self.err(number, file, None, PatchErrorKind::MissingNewHeader));
                };
                let Some(new_rest) = next.strip_prefix(b"+++ ") else {
                    return Err(self.err(number + 1, file, None, PatchErrorKind::MissingNewHeader));
                };
                let old = self.label(rest, number, file, false)?;
                let new = self.label(new_rest, number + 1, file, false)?;
                labels = Some((old, new));
                self.pos += 2;
                break;
            } else {
                break;
            }
            self.pos += 1;
        }

        // Paths: rename headers first, then the ---/+++ labels, then the diff --git names.
        let (label_old, label_new) = match &labels {
            Some((old, new)) => self.strip_names(old, new),
            None => (None, None),
        };
        let (header_old, header_new) = guess.unwrap_or((None, None));
        let old_path = if headers.added {
            None
        } else {
            headers.rename_from.clone().or(label_old).or(header_old)
        };
        let new_path = if headers.deleted {
            None
        } else {
            headers.rename_to.clone().or(label_new).or(header_new)
        };
        let label_added = matches!(&labels, Some((Name::Null | Name::Absent(_), _)));
        let label_deleted = matches!(&labels, Some((_, Name::Null | Name::Absent(_))));
        let display = new_path.clone().or(old_path.clone()).or(display);
        let file = display.as_deref();

        let hunks = self.hunks(file)?;

        let added = headers.added || label_added;
        let deleted = headers.deleted || label_deleted;
        let renamed = headers.rename_from.is_some() || headers.rename_to.is_some();
        let inconsistent =
            |detail| self.err(start, file, None, PatchErrorKind::Inconsistent { detail });
        if added && deleted {
            return Err(inconsistent("the file is both created and deleted"));
        }
        if renamed && (headers.rename_from.is_none() || headers.rename_to.is_none()) {
            return Err(inconsistent(
                "`rename from` and `rename to` must come together",
            ));
        }
        if renamed && (added || deleted) {
            return Err(inconsistent("a rename cannot create or delete its file"));
        }
        let kind = if added {
            FileKind::Added
        } else if deleted {
            FileKind::Deleted
        } else if renamed {
            FileKind::Renamed
        } else if hunks.is_empty() {
            match (headers.old_mode, headers.new_mode) {
                (Some(_), Some(_)) => FileKind::ModeChanged,
                (None, None) => return Err(self.err(start, file, None, PatchErrorKind::NoChanges)),
                _ => return Err(inconsistent("`old mode` and `new mode` must come together")),
            }
        } else {
            FileKind::Modified
        };
        let (old_path, new_path) = match kind {
            FileKind::Added => (None, new_path),
            FileKind::Deleted => (old_path, None),
            _ => (old_path, new_path),
        };
        match kind {
            FileKind::Added if new_path.is_none() => {
                return Err(self.err(start, file, None, PatchErrorKind::NoPath));
            }
            FileKind::Deleted if old_path.is_none() => {
                return Err(self.err(start, file, None, PatchErrorKind::NoPath));
            }
            FileKind::Modified | FileKind::ModeChanged | FileKind::Renamed => {
                if old_path.is_none() || new_path.is_none() {
                    return Err(self.err(start, file, None, PatchErrorKind::NoPath));
                }
                if kind != FileKind::Renamed && old_path != new_path {
                    return Err(inconsistent(
                        "old and new names differ without `rename from`/`rename to`",
                    ));
                }
            }
            _ => {}
        }
        let (old_mode, new_mode) = match kind {
            FileKind::Added => (None, headers.new_mode.or(headers.index_mode)),
            FileKind::Deleted => (headers.old_mode.or(headers.index_mode), None),
            _ => (
                headers.old_mode.or(headers.index_mode),
                headers.new_mode.or(headers.index_mode),
            ),
        };
        for path in [&old_path, &new_path].into_iter().flatten() {
            check_path(path).map_err(|reason| {
                self.err(
                    start,
                    file,
                    None,
                    PatchErrorKind::BadPath {
                        text: path.clone(),
                        reason,
                    },
                )
            })?;
        }
        Ok(FilePatch {
            old_path,
            new_path,
            old_mode,
            new_mode,
            kind,
            hunks,
            line: start,
        })
    }

    /// A traditional `---`/`+++` section (`diff -u`, `diff -ruN`).
    fn plain_section(&mut self) -> Result<FilePatch, PatchError> {
        let start = self.pos + 1;
        let old_text = &header_text(self.lines[self.pos])[4..];
        let new_text = &header_text(self.lines[self.pos + 1])[4..];
        let old = self.label(old_text, start, None, true)?;
        let new = self.label(new_text, start + 1, None, true)?;
        self.pos += 2;
        let (old_path, new_path) = self.strip_names(&old, &new);
        let (kind, old_path, new_path) = match (old_path, new_path) {
            (None, None) => return Err(self.err(start, None, None, PatchErrorKind::NoPath)),
            (None, Some(new)) => (FileKind::Added, None, Some(new)),
            (Some(old), None) => (FileKind::Deleted, Some(old), None),
            (Some(old), Some(new)) => {
                // Like git: a traditional patch names one file, the shorter name
                // (`diff -u f.orig f` patches `f`).
                let name = if old.len() < new.len() { old } else { new };
                (FileKind::Modified, Some(name.clone()), Some(name))
            }
        };
        let display = new_path.clone().or(old_path.clone());
        let file = display.as_deref();
        for path in [&old_path, &new_path].into_iter().flatten() {
            check_path(path).map_err(|reason| {
                self.err(
                    start,
                    file,
                    None,
                    PatchErrorKind::BadPath {
                        text: path.clone(),
                        reason,
                    },
                )
            })?;
        }
        let hunks = self.hunks(file)?;
        if hunks.is_empty() {
            return Err(self.err(start, file, None, PatchErrorKind::NoChanges));
        }
        Ok(FilePatch {
            old_path,
            new_path,
            old_mode: None,
            new_mode: None,
            kind,
            hunks,
            line: start,
        })
    }

    fn mode(&self, text: &[u8], line: usize, file: Option<&str>) -> Result<u32, PatchError> {
        let bad = || {
            self.err(
                line,
                file,
                None,
                PatchErrorKind::BadMode {
                    text: String::from_utf8_lossy(text).into_owned(),
                },
            )
        };
        let digits = std::str::from_utf8(text).map_err(|_| bad())?;
        let value = u32::from_str_radix(digits.trim(), 8).map_err(|_| bad())?;
        match value & mode::TYPE_MASK {
            mode::TYPE_REGULAR if value & 0o100 != 0 => Ok(mode::EXECUTABLE),
            mode::TYPE_REGULAR => Ok(mode::REGULAR),
            mode::SYMLINK => Ok(mode::SYMLINK),
            mode::GITLINK => Err(self.err(
                line,
                file,
                None,
                PatchErrorKind::Unsupported(Unsupported::Submodule),
            )),
            _ => Err(bad()),
        }
    }

    /// A `rename from`/`rename to` name: quoted or verbatim, never prefixed.
    fn path_text(
        &self,
        text: &[u8],
        line: usize,
        file: Option<&str>,
    ) -> Result<String, PatchError> {
        let bytes = if text.starts_with(b"\"") {
            unquote_exact(text).ok_or_else(|| {
                self.err(
                    line,
                    file,
                    None,
                    PatchErrorKind::BadPath {
                        text: lossy(text),
                        reason: "malformed quoting",
                    },
                )
            })?
        } else {
            text.to_vec()
        };
        String::from_utf8(bytes).map_err(|_| {
            self.err(
                line,
                file,
                None,
                PatchErrorKind::BadPath {
                    text: lossy(text),
                    reason: "not valid UTF-8",
                },
            )
        })
    }

    /// A `---`/`+++` label: a quoted name, or the text up to a TAB (the timestamp).
    fn label(
        &self,
        text: &[u8],
        line: usize,
        file: Option<&str>,
        epoch_is_null: bool,
    ) -> Result<Name, PatchError> {
        let (name, rest): (Vec<u8>, &[u8]) = if text.starts_with(b"\"") {
            let (bytes, used) = unquote_prefix(text).ok_or_else(|| {
                self.err(
                    line,
                    file,
                    None,
                    PatchErrorKind::BadPath {
                        text: lossy(text),
                        reason: "malformed quoting",
                    },
                )
            })?;
            (bytes, &text[used..])
        } else {
            match text.iter().position(|&b| b == b'\t') {
                Some(tab) => (text[..tab].to_vec(), &text[tab..]),
                None => (text.to_vec(), &[][..]),
            }
        };
        if name == b"/dev/null" {
            return Ok(Name::Null);
        }
        let name = String::from_utf8(name).map_err(|_| {
            self.err(
                line,
                file,
                None,
                PatchErrorKind::BadPath {
                    text: lossy(text),
                    reason: "not valid UTF-8",
                },
            )
        })?;
        if epoch_is_null && is_epoch_timestamp(rest) {
            // `diff -N` names an absent file with the epoch as its timestamp.
            return Ok(Name::Absent(name));
        }
        Ok(Name::Path(name))
    }

    /// Applies the strip rule of [`ParseOptions::strip`] to a pair of names.
    fn strip_names(&self, old: &Name, new: &Name) -> (Option<String>, Option<String>) {
        let count = match self.options.strip {
            Some(count) => count,
            None => guess_strip(old, new),
        };
        let strip = |name: &Name| match name {
            Name::Null | Name::Absent(_) => None,
            Name::Path(path) => Some(strip_components(path, count)),
        };
        (strip(old), strip(new))
    }

    /// Reads the hunks following a section's headers.
    fn hunks(&mut self, file: Option<&str>) -> Result<Vec<Hunk>, PatchError> {
        let mut hunks = Vec::new();
        while let Some(line) = self.line(self.pos) {
            if line.starts_with(b"@@@") {
                return Err(self.err(
                    self.pos + 1,
                    file,
                    Some(hunks.len() + 1),
                    PatchErrorKind::Unsupported(Unsupported::CombinedDiff),
                ));
            }
            if !line.starts_with(b"@@ ") {
                break;
            }
            let hunk = self.hunk(file, hunks.len() + 1)?;
            hunks.push(hunk);
        }
        Ok(hunks)
    }

    fn hunk(&mut self, file: Option<&str>, number: usize) -> Result<Hunk, PatchError> {
        let header_line = self.pos + 1;
        let text = header_text(self.lines[self.pos]);
        let (old_start, old_count, new_start, new_count, section) = parse_hunk_header(text)
            .map_err(|reason| {
                self.err(
                    header_line,
                    file,
                    Some(number),
                    PatchErrorKind::BadHunkHeader {
                        text: lossy(text),
                        reason,
                    },
                )
            })?;
        self.pos += 1;
        // Every body line gives at most one old and one new line: a count beyond the lines
        // left cannot be met. Checked up front, so an absurd count is named as such.
        let available = self.lines.len().saturating_sub(self.pos);
        if old_count > available || new_count > available {
            return Err(self.err(
                header_line,
                file,
                Some(number),
                PatchErrorKind::HunkTooLong {
                    text: lossy(text),
                    old_count,
                    new_count,
                    available,
                },
            ));
        }
        let err = |line: usize, kind| PatchError {
            line,
            file: file.map(str::to_owned),
            hunk: Some(number),
            kind,
        };

        let (mut old_left, mut new_left) = (old_count, new_count);
        let mut lines: Vec<Line> = Vec::new();
        while old_left > 0 || new_left > 0 {
            let Some(raw) = self.line(self.pos) else {
                return Err(err(
                    self.lines.len(),
                    PatchErrorKind::TruncatedHunk { old_left, new_left },
                ));
            };
            let unexpected = || {
                err(
                    self.pos + 1,
                    PatchErrorKind::UnexpectedLine {
                        text: lossy(raw),
                        old_left,
                        new_left,
                    },
                )
            };
            match raw.first() {
                Some(b' ') if old_left > 0 && new_left > 0 => {
                    lines.push(Line::Context(raw[1..].to_vec()));
                    old_left -= 1;
                    new_left -= 1;
                }
                // An empty context line whose leading space an editor stripped; only
                // taken as such where the counts still expect context.
                Some(b'\n') if old_left > 0 && new_left > 0 => {
                    lines.push(Line::Context(b"\n".to_vec()));
                    old_left -= 1;
                    new_left -= 1;
                }
                Some(b'-') if old_left > 0 => {
                    lines.push(Line::Removed(raw[1..].to_vec()));
                    old_left -= 1;
                }
                Some(b'+') if new_left > 0 => {
                    lines.push(Line::Added(raw[1..].to_vec()));
                    new_left -= 1;
                }
                Some(b'\\') => {
                    if !strip_newline(&mut lines) {
                        return Err(err(self.pos + 1, PatchErrorKind::MisplacedNoNewline));
                    }
                }
                _ => return Err(unexpected()),
            }
            self.pos += 1;
        }
        if let Some(raw) = self.line(self.pos)
            && raw.starts_with(b"\\")
        {
            if !strip_newline(&mut lines) {
                return Err(err(self.pos + 1, PatchErrorKind::MisplacedNoNewline));
            }
            self.pos += 1;
        }
        if !no_newline_is_last(&lines) {
            return Err(err(header_line, PatchErrorKind::MisplacedNoNewline));
        }
        if let Some(raw) = self.line(self.pos) {
            let is_body = matches!(raw.first(), Some(b' ' | b'+' | b'-'));
            let next_plain = raw.starts_with(b"--- ")
                && self
                    .line(self.pos + 1)
                    .is_some_and(|n| n.starts_with(b"+++ "));
            let signature = header_text(raw) == b"-- " || header_text(raw) == b"--";
            if is_body && !next_plain && !signature {
                return Err(err(
                    self.pos + 1,
                    PatchErrorKind::ExtraHunkLine { text: lossy(raw) },
                ));
            }
        }
        Ok(Hunk {
            old_start,
            old_count,
            new_start,
            new_count,
            section,
            lines,
            line: header_line,
        })
    }
}

/// Applies a `\ No newline at end of file` marker to the last line read.
fn strip_newline(lines: &mut [Line]) -> bool {
    let Some(last) = lines.last_mut() else {
        return false;
    };
    let (Line::Context(text) | Line::Removed(text) | Line::Added(text)) = last;
    if text.last() == Some(&b'\n') {
        text.pop();
        true
    } else {
        false
    }
}

/// Whether a line without newline is the last line of its side (old: context and removed;
/// new: context and added).
fn no_newline_is_last(lines: &[Line]) -> bool {
    let side_ok = |side: Vec<&Vec<u8>>| {
        side.iter()
            .rev()
            .skip(1)
            .all(|text| text.last() == Some(&b'\n'))
    };
    let old = lines
        .iter()
        .filter_map(|l| match l {
            Line::Context(t) | Line::Removed(t) => Some(t),
            Line::Added(_) => None,
        })
        .collect();
    let new = lines
        .iter()
        .filter_map(|l| match l {
            Line::Context(t) | Line::Added(t) => Some(t),
            Line::Removed(_) => None,
        })
        .collect();
    side_ok(old) && side_ok(new)
}

/// The largest line number a hunk header may state: no file held in memory has more lines
/// than bytes, and no allocation exceeds `isize::MAX` bytes. With counts bounded by the
/// patch's own line count, `start + count` never overflows.
const MAX_LINE_NUMBER: usize = usize::MAX >> 1;

/// A hunk header number: ASCII digits only (no sign, no spaces), fitting in a `usize`.
fn number(
    text: &str,
    malformed: &'static str,
    too_large: &'static str,
) -> Result<usize, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    text.parse().map_err(|_| too_large)
}

/// Parses `@@ -a[,b] +c[,d] @@[ section]`.
fn parse_hunk_header(text: &[u8]) -> Result<(usize, usize, usize, usize, String), &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "not valid UTF-8")?;
    let rest = text.strip_prefix("@@ -").ok_or("expected `@@ -`")?;
    let (old, rest) = rest
        .split_once(" +")
        .ok_or("expected ` +` after the old range")?;
    let (new, rest) = rest
        .split_once(" @@")
        .ok_or("expected ` @@` after the new range")?;
    let range = |range: &str| -> Result<(usize, usize), &'static str> {
        let (start, count) = match range.split_once(',') {
            Some((start, count)) => (
                start,
                number(count, "bad line count", "line count is too large")?,
            ),
            None => (range, 1),
        };
        let start = number(start, "bad line number", "line number is too large")?;
        if start > MAX_LINE_NUMBER {
            return Err("line number is larger than any file's line count can be");
        }
        Ok((start, count))
    };
    let (old_start, old_count) = range(old)?;
    let (new_start, new_count) = range(new)?;
    if old_count == 0 && new_count == 0 {
        return Err("the hunk has no lines");
    }
    if (old_start == 0 && old_count != 0) || (new_start == 0 && new_count != 0) {
        return Err("line 0 only starts an empty range");
    }
    let section = rest.strip_prefix(' ').unwrap_or(rest).to_owned();
    Ok((old_start, old_count, new_start, new_count, section))
}

/// Splits the names of a `diff --git` line; `None` when they cannot be told apart (an
/// unquoted rename with spaces: the `rename` headers then give the names).
fn split_git_header(rest: &[u8]) -> Option<(String, String)> {
    let to_string = |bytes: Vec<u8>| String::from_utf8(bytes).ok();
    if rest.starts_with(b"\"") {
        let (old, used) = unquote_prefix(rest)?;
        let second = rest[used..].strip_prefix(b" ")?;
        let new = if second.starts_with(b"\"") {
            unquote_exact(second)?
        } else {
            second.to_vec()
        };
        return Some((to_string(old)?, to_string(new)?));
    }
    if rest.ends_with(b"\"") {
        for (i, window) in rest.windows(2).enumerate() {
            if window == b" \""
                && let Some(new) = unquote_exact(&rest[i + 1..])
            {
                return Some((to_string(rest[..i].to_vec())?, to_string(new)?));
            }
        }
        return None;
    }
    let text = std::str::from_utf8(rest).ok()?;
    let bytes = text.as_bytes();
    // Each space with the first `/` after it (the end of the new name's first component),
    // found in one pass from the end, so a line of many spaces stays linear.
    let mut spaces: Vec<(usize, Option<usize>)> = Vec::new();
    let mut next_slash = None;
    for (i, &byte) in bytes.iter().enumerate().rev() {
        match byte {
            b'/' => next_slash = Some(i),
            b' ' => spaces.push((i, next_slash)),
            _ => {}
        }
    }
    spaces.reverse();
    let first_slash = bytes.iter().position(|&b| b == b'/');
    for &(space, new_slash) in &spaces {
        let (old, new) = (&text[..space], &text[space + 1..]);
        // The names minus their first components. String equality compares lengths
        // first, and only one space can give equal lengths (the rest of the new name
        // shrinks as the space moves right, while that of the old one grows).
        let same_rest = match (first_slash.filter(|&f| f < space), new_slash) {
            (Some(old_slash), Some(new_slash)) => {
                text[old_slash + 1..space] == text[new_slash + 1..]
            }
            _ => false,
        };
        if old == new || same_rest {
            return Some((old.to_owned(), new.to_owned()));
        }
    }
    match spaces.as_slice() {
        [(space, _)] => Some((text[..*space].to_owned(), text[space + 1..].to_owned())),
        _ => None,
    }
}

/// Guesses how many leading components a pair of names carries as a prefix (0 or 1).
fn guess_strip(old: &Name, new: &Name) -> usize {
    let named = |name: &Name| match name {
        Name::Absent(path) => Name::Path(path.clone()),
        other => other.clone(),
    };
    match (&named(old), &named(new)) {
        (Name::Path(old), Name::Path(new)) => {
            let prefixed = old.starts_with("a/") && new.starts_with("b/");
            let differing_roots = match (old.split_once('/'), new.split_once('/')) {
                (Some((old_root, old_rest)), Some((new_root, new_rest))) => {
                    old_root != new_root && old_rest == new_rest && !old_rest.is_empty()
                }
                _ => false,
            };
            usize::from(prefixed || differing_roots)
        }
        (Name::Null, Name::Path(new)) => usize::from(new.starts_with("b/")),
        (Name::Path(old), Name::Null) => usize::from(old.starts_with("a/")),
        _ => 0,
    }
}

fn strip_components(path: &str, count: usize) -> String {
    let mut rest = path;
    for _ in 0..count {
        match rest.split_once('/') {
            Some((_, tail)) => rest = tail.trim_start_matches('/'),
            None => break,
        }
    }
    rest.to_owned()
}

/// Refuses empty paths, NUL bytes, `..` components and trailing slashes.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.ends_with('/') {
        return Err("names a directory");
    }
    if path.split('/').any(|component| component == "..") {
        return Err("contains a `..` component");
    }
    Ok(())
}

/// The new-side name of a `Binary files X and Y differ` line (or the old one when the new
/// is `/dev/null`), for error messages.
fn binary_files_name(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let inner = text
        .strip_prefix("Binary files ")?
        .strip_suffix(" differ")?;
    let (old, new) = inner.split_once(" and ")?;
    let name = if new == "/dev/null" { old } else { new };
    Some(name.to_owned())
}

/// Whether a label's timestamp part (starting at its TAB) is the Unix epoch, which
/// `diff -N` uses for absent files: `1970-01-01 00:00:00.000000000 +0000`, in any zone.
fn is_epoch_timestamp(rest: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(rest) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(date), Some(time)) = (parts.next(), parts.next()) else {
        return false;
    };
    let zone = parts.next().unwrap_or("+0000");
    // At most four digits a field: the arithmetic below never sees a number large enough
    // to overflow, whatever the patch says.
    let number = |s: &str| {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<i64>().ok()
    };
    let date: Vec<Option<i64>> = date.split('-').map(number).collect();
    let Some(time) = time.split('.').next() else {
        return false;
    };
    let time: Vec<Option<i64>> = time.split(':').map(number).collect();
    let ([Some(y), Some(m), Some(d)], [Some(hh), Some(mm), Some(ss)]) =
        (date.as_slice(), time.as_slice())
    else {
        return false;
    };
    let (sign, digits) = match zone.as_bytes().first() {
        Some(b'+') => (1, &zone[1..]),
        Some(b'-') => (-1, &zone[1..]),
        _ => return false,
    };
    let (Some(zh), Some(zm)) = (
        digits.get(..2).and_then(number),
        digits.get(2..4).and_then(number),
    ) else {
        return false;
    };
    let local = days_from_civil(*y, *m, *d) * 86_400 + hh * 3600 + mm * 60 + ss;
    local - sign * (zh * 3600 + zm * 60) == 0
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(patch: &str) -> PatchErrorKind {
        parse(patch).unwrap_err().kind
    }

    #[test]
    fn parses_a_plain_modification() {
        let patch = parse(
            "diff --git a/src/x.rs b/src/x.rs\nindex 1234567..89abcde 100644\n--- a/src/x.rs\n+++ b/src/x.rs\n@@ -1,3 +1,3 @@ fn main\n a\n-b\n+B\n c\n",
        )
        .unwrap();
        let file = &patch.files[0];
        assert_eq!(file.kind, FileKind::Modified);
        assert_eq!(file.old_path.as_deref(), Some("src/x.rs"));
        assert_eq!(file.new_path.as_deref(), Some("src/x.rs"));
        assert_eq!(
            (file.old_mode, file.new_mode),
            (Some(0o100644), Some(0o100644))
        );
        let hunk = &file.hunks[0];
        assert_eq!(
            (
                hunk.old_start,
                hunk.old_count,
                hunk.new_start,
                hunk.new_count
            ),
            (1, 3, 1, 3)
        );
        assert_eq!(hunk.section, "fn main");
        assert_eq!(
            hunk.lines,
            vec![
                Line::Context(b"a\n".to_vec()),
                Line::Removed(b"b\n".to_vec()),
                Line::Added(b"B\n".to_vec()),
                Line::Context(b"c\n".to_vec()),
            ]
        );
    }

    #[test]
    fn parses_added_deleted_renamed_and_mode_sections() {
        let patch = parse(concat!(
            "diff --git a/new.txt b/new.txt\nnew file mode 100755\nindex 0000000..e69de29\n",
            "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\nindex 1111111..0000000\n--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n",
            "diff --git a/old name b/new name\nsimilarity index 100%\nrename from old name\nrename to new name\n",
            "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n",
        ))
        .unwrap();
        let kinds: Vec<FileKind> = patch.files.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FileKind::Added,
                FileKind::Deleted,
                FileKind::Renamed,
                FileKind::ModeChanged
            ]
        );
        assert_eq!(patch.files[0].new_mode, Some(0o100755));
        assert!(patch.files[0].hunks.is_empty());
        assert_eq!(patch.files[1].old_path.as_deref(), Some("gone.txt"));
        assert_eq!(patch.files[1].new_path, None);
        assert_eq!(patch.files[2].old_path.as_deref(), Some("old name"));
        assert_eq!(patch.files[2].new_path.as_deref(), Some("new name"));
        assert_eq!(
            (patch.files[3].old_mode, patch.files[3].new_mode),
            (Some(0o100644), Some(0o100755))
        );
    }

    #[test]
    fn no_newline_markers_apply_to_the_line_before() {
        let patch =
            parse("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+x\n").unwrap();
        assert_eq!(
            patch.files[0].hunks[0].lines,
            vec![Line::Removed(b"x".to_vec()), Line::Added(b"x\n".to_vec())]
        );
        let patch =
            parse("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n+y\n\\ No newline at end of file\n").unwrap();
        assert_eq!(patch.files[0].hunks[0].lines[1], Line::Added(b"y".to_vec()));
    }

    #[test]
    fn quoted_and_tab_suffixed_names() {
        let patch = parse(concat!(
            "diff --git \"a/caf\\303\\251 x\" \"b/caf\\303\\251 x\"\n--- \"a/caf\\303\\251 x\"\n+++ \"b/caf\\303\\251 x\"\n@@ -1 +1 @@\n-a\n+b\n",
            "--- a/with space\t2024-01-01 10:00:00.000000000 +0100\n+++ b/with space\t2024-01-02 10:00:00.000000000 +0100\n@@ -1 +1 @@\n-a\n+b\n",
        ))
        .unwrap();
        assert_eq!(patch.files[0].path(), "café x");
        assert_eq!(patch.files[1].path(), "with space");
    }

    #[test]
    fn prefix_guessing() {
        let no_prefix =
            parse("diff --git dir/f dir/f\n--- dir/f\n+++ dir/f\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        assert_eq!(no_prefix.files[0].path(), "dir/f");
        let diff_r = parse("diff -ru old/d/f new/d/f\n--- old/d/f\t2024-01-01\n+++ new/d/f\t2024-01-01\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        assert_eq!(diff_r.files[0].path(), "d/f");
        let orig = parse("--- f.orig\n+++ f\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        assert_eq!(orig.files[0].path(), "f");
        let forced = parse_with(
            b"--- x/y/f\n+++ x/y/f\n@@ -1 +1 @@\n-a\n+b\n",
            &ParseOptions { strip: Some(2) },
        )
        .unwrap();
        assert_eq!(forced.files[0].path(), "f");
    }

    #[test]
    fn diff_n_epoch_means_absent() {
        let patch = parse(
            "--- old/f\t1970-01-01 00:00:00.000000000 +0000\n+++ new/f\t2024-05-01 12:00:00.000000000 +0200\n@@ -0,0 +1 @@\n+x\n",
        )
        .unwrap();
        assert_eq!(patch.files[0].kind, FileKind::Added);
        assert_eq!(patch.files[0].path(), "f");
        assert!(is_epoch_timestamp(b"\t1969-12-31 19:00:00.000000000 -0500"));
        assert!(!is_epoch_timestamp(b"\t2024-01-01 00:00:00 +0000"));
    }

    #[test]
    fn blank_line_is_context_only_when_counts_need_it() {
        let patch = parse("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n\ndiff --git a/g b/g\nold mode 100644\nnew mode 100755\n").unwrap();
        assert_eq!(
            patch.files[0].hunks[0].lines[1],
            Line::Context(b"\n".to_vec())
        );
        assert_eq!(patch.files.len(), 2);
    }

    #[test]
    fn rejects_wrong_counts_with_location() {
        let err = parse("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n@@ -9 +9 @@\n-x\n+y\n")
            .unwrap_err();
        assert_eq!(
            (err.line, err.file.as_deref(), err.hunk),
            (7, Some("f"), Some(1))
        );
        assert!(matches!(
            err.kind,
            PatchErrorKind::UnexpectedLine {
                old_left: 1,
                new_left: 1,
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("patch line 7, file `f`, hunk 1: unexpected line")
        );

        let err = parse("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n+c\n").unwrap_err();
        assert_eq!((err.line, err.hunk), (6, Some(1)));
        assert!(matches!(err.kind, PatchErrorKind::ExtraHunkLine { .. }));

        let err = parse("--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n").unwrap_err();
        assert_eq!((err.line, err.hunk), (5, Some(1)));
        assert!(matches!(
            err.kind,
            PatchErrorKind::TruncatedHunk {
                old_left: 0,
                new_left: 1
            }
        ));
    }

    #[test]
    fn hunk_counts_are_bounded_by_the_patch() {
        // Regression: a count of 2^64-1 was accepted by the header parser and only failed,
        // as a truncated hunk, after reading the rest of the patch.
        let err =
            parse("--- a/f\n+++ b/f\n@@ -1,18446744073709551615 +1 @@\n-a\n+b\n").unwrap_err();
        assert_eq!(
            (err.line, err.file.as_deref(), err.hunk),
            (3, Some("f"), Some(1))
        );
        assert_eq!(
            err.kind,
            PatchErrorKind::HunkTooLong {
                text: "@@ -1,18446744073709551615 +1 @@".into(),
                old_count: usize::MAX,
                new_count: 1,
                available: 2,
            }
        );
        assert_eq!(
            err.to_string(),
            "patch line 3, file `f`, hunk 1: hunk header \"@@ -1,18446744073709551615 +1 @@\" \
             claims 18446744073709551615 old and 1 new lines, more than the 2 lines left in the \
             patch (truncated patch, or wrong counts)"
        );
        // The new side too, and a patch cut short after a hunk header.
        assert!(matches!(
            kind_of("--- a/f\n+++ b/f\n@@ -1 +1,18446744073709551615 @@\n-a\n+b\n"),
            PatchErrorKind::HunkTooLong {
                new_count: usize::MAX,
                available: 2,
                ..
            }
        ));
        assert!(matches!(
            kind_of("--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n"),
            PatchErrorKind::HunkTooLong {
                old_count: 2,
                new_count: 2,
                available: 1,
                ..
            }
        ));
        // Exactly as many lines as the counts need is fine.
        let patch = parse("--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n b\n").unwrap();
        assert_eq!(patch.files[0].hunks[0].lines.len(), 2);

        let reason = |patch: &str| match kind_of(patch) {
            PatchErrorKind::BadHunkHeader { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        // Numbers past 64 bits, and line numbers past any file's length.
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -1,99999999999999999999999 +1 @@\n-a\n+b\n"),
            "line count is too large"
        );
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -99999999999999999999999 +1 @@\n-a\n+b\n"),
            "line number is too large"
        );
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -1 +18446744073709551615 @@\n-a\n+b\n"),
            "line number is larger than any file's line count can be"
        );
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -9223372036854775808 +1 @@\n-a\n+b\n"),
            "line number is larger than any file's line count can be"
        );
        assert!(parse("--- a/f\n+++ b/f\n@@ -9223372036854775807 +1 @@\n-a\n+b\n").is_ok());
        // Signs and spaces are not digits.
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -+1 +1 @@\n-a\n+b\n"),
            "bad line number"
        );
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -1,+1 +1 @@\n-a\n+b\n"),
            "bad line count"
        );
        assert_eq!(
            reason("--- a/f\n+++ b/f\n@@ -1, +1 @@\n-a\n+b\n"),
            "bad line count"
        );
    }

    #[test]
    fn rejects_unsupported_and_malformed_input() {
        assert_eq!(kind_of("just some text\n"), PatchErrorKind::Empty);
        assert_eq!(kind_of(""), PatchErrorKind::Empty);
        let err = parse("diff --git a/img.png b/img.png\nindex 1..2 100644\nBinary files a/img.png and b/img.png differ\n").unwrap_err();
        assert_eq!(err.kind, PatchErrorKind::Unsupported(Unsupported::Binary));
        assert_eq!((err.file.as_deref(), err.line), (Some("img.png"), 3));
        let err = parse("Binary files old/x.bin and new/x.bin differ\n").unwrap_err();
        assert_eq!(err.file.as_deref(), Some("new/x.bin"));
        assert_eq!(
            kind_of("diff --git a/a b/b\nsimilarity index 90%\ncopy from a\ncopy to b\n"),
            PatchErrorKind::Unsupported(Unsupported::Copy)
        );
        assert_eq!(
            kind_of("diff --cc f\n"),
            PatchErrorKind::Unsupported(Unsupported::CombinedDiff)
        );
        assert_eq!(
            kind_of("--- a/f\n@@ -1 +1 @@\n-a\n+b\n"),
            PatchErrorKind::MissingNewHeader
        );
        assert_eq!(
            kind_of("@@ -1 +1 @@\n-a\n+b\n"),
            PatchErrorKind::HunkWithoutFile
        );
        assert!(matches!(
            kind_of("--- a/f\n+++ b/f\n@@ -x +1 @@\n"),
            PatchErrorKind::BadHunkHeader { .. }
        ));
        assert!(matches!(
            kind_of("--- a/../f\n+++ b/../f\n@@ -1 +1 @@\n-a\n+b\n"),
            PatchErrorKind::BadPath { .. }
        ));
        assert!(matches!(
            kind_of("diff --git a/f b/f\nold mode 100999\nnew mode 100644\n"),
            PatchErrorKind::BadMode { .. }
        ));
        assert_eq!(
            kind_of("diff --git a/s b/s\nindex 1..2 160000\n--- a/s\n+++ b/s\n"),
            PatchErrorKind::Unsupported(Unsupported::Submodule)
        );
        assert_eq!(
            kind_of("--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+a\n"),
            PatchErrorKind::NoPath
        );
        assert_eq!(kind_of("--- a/f\n+++ b/f\n"), PatchErrorKind::NoChanges);
        assert_eq!(
            kind_of(
                "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n-a\n\\ No newline at end of file\n-b\n+c\n+d\n"
            ),
            PatchErrorKind::MisplacedNoNewline
        );
    }

    #[test]
    fn rejects_duplicate_paths() {
        let err =
            parse("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n--- a/f\n+++ b/f\n@@ -3 +3 @@\n-a\n+b\n")
                .unwrap_err();
        assert_eq!(err.kind, PatchErrorKind::DuplicatePath { path: "f".into() });
        assert_eq!(err.line, 6);
    }

    #[test]
    fn type_change_pairs_are_not_duplicates() {
        let patch = parse(concat!(
            "diff --git a/p b/p\ndeleted file mode 100644\n--- a/p\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n",
            "diff --git a/p b/p\nnew file mode 120000\n--- /dev/null\n+++ b/p\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n",
        ))
        .unwrap();
        assert_eq!(patch.files.len(), 2);
    }

    #[test]
    fn tolerates_garbage_and_signatures() {
        let patch = parse(concat!(
            "From 123 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n---\n f | 2 +-\n\n",
            "diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n-- \n2.47.3\n",
        ))
        .unwrap();
        assert_eq!(patch.files.len(), 1);
    }

    #[test]
    fn header_names_with_spaces() {
        assert_eq!(
            split_git_header(b"a/x y b/x y"),
            Some(("a/x y".into(), "b/x y".into()))
        );
        assert_eq!(
            split_git_header(b"a/x b/y"),
            Some(("a/x".into(), "b/y".into()))
        );
        assert_eq!(split_git_header(b"a/x y b/z w"), None);
        assert_eq!(
            split_git_header(b"a/x \"b/t\\tq\""),
            Some(("a/x".into(), "b/t\tq".into()))
        );
    }
}
