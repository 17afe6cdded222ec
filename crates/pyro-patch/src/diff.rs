//! Comparing two trees and rendering the difference as `git diff` output.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha1::{Digest, Sha1};
use similar::algorithms::{Capture, diff_deadline};
use similar::{Algorithm, DiffTag};

use crate::model::mode;
use crate::quote::quote;

/// A file tree: relative paths (`src/main.rs`, no leading `/`) to what is there.
///
/// Directories need only be listed when they are empty; a directory with entries below it
/// is implied by them, and its own entry (if any) is ignored.
pub type Tree = BTreeMap<String, Node>;

/// What a [`Tree`] holds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file. Only the owner's execute bit of `mode` reaches the patch (as git's
    /// `100755`/`100644`).
    File {
        /// The bytes.
        content: Vec<u8>,
        /// Permission bits (`0o644`); file-type bits are ignored.
        mode: u32,
    },
    /// A regular file whose content is not held, for files too large to read into memory:
    /// only its size and git blob id, as [`BlobHasher`] computes them while streaming it.
    ///
    /// It always counts as binary, so its stanza is the one `git diff` writes for a binary
    /// file (`Binary files a/p and b/p differ` after an `index` line with full blob ids), and
    /// the patch stays correct for `git apply` wherever git has the blobs. It equals another
    /// `Large` node when their ids are equal, and a [`Node::File`] when that file's blob id
    /// is its id. Its mode is handled as a `File`'s. (One with the empty blob's id is known
    /// to be empty, and diffs as the empty file, as git writes it.)
    Large {
        /// The content's length in bytes. Informational: comparisons use `id`, which covers
        /// the length.
        size: u64,
        /// The git blob id of the content: 40 hex digits (either case), the SHA-1 of
        /// `blob <size>\0` followed by the content. An id that is not 40 hex digits (a
        /// caller's bug) equals no other, and its stanza then has no `index` line, so
        /// `git apply` refuses the change instead of applying something else.
        id: String,
        /// Permission bits (`0o644`); file-type bits are ignored.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A directory.
    Dir {
        /// Permission bits; not compared (git has no way to express them).
        mode: u32,
    },
}

/// What kind of thing an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A directory (only empty ones are entries).
    Directory,
}

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiffStatus {
    /// Only in the new tree.
    Added,
    /// Content (or a symlink's target) differs; the mode may differ too.
    Modified,
    /// Only in the old tree.
    Deleted,
    /// File, symlink or directory on one side, another kind on the other.
    TypeChanged,
    /// Same content, but the execute bit differs.
    ModeChanged,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// The relative path.
    pub path: String,
    /// How it changed.
    pub status: DiffStatus,
    /// What it is: the new tree's kind, or the old tree's for a deletion.
    pub artifact_type: ArtifactType,
    /// This entry's part of [`TreeDiff::patch`], when it is text. `None` for directories
    /// and for binary content (a NUL byte or invalid UTF-8 on either side, or a
    /// [`Node::Large`] file whose content differs).
    pub text_patch: Option<String>,
}

/// Counts over [`TreeDiff::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, schemars::JsonSchema)]
pub struct DiffSummary {
    /// Every entry.
    pub total: usize,
    /// [`DiffStatus::Added`] entries.
    pub added: usize,
    /// [`DiffStatus::Modified`] entries.
    pub modified: usize,
    /// [`DiffStatus::Deleted`] entries.
    pub deleted: usize,
    /// [`DiffStatus::TypeChanged`] entries.
    pub type_changed: usize,
    /// [`DiffStatus::ModeChanged`] entries.
    pub mode_changed: usize,
    /// Entries with a text patch.
    pub text_patched: usize,
    /// Entries without one (directories, binary files).
    // text_patched + non_text == total
    pub non_text: usize,
}

/// The difference between two trees.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TreeDiff {
    /// Changed paths, sorted by path.
    pub entries: Vec<DiffEntry>,
    /// Counts.
    pub summary: DiffSummary,
    /// One `git diff`-style patch of every file and symlink change, in path order, which
    /// `git apply` and [`crate::apply()`] accept. Binary files (and changed [`Node::Large`]
    /// files) appear as `Binary files a/p and b/p differ` with full blob ids on the `index`
    /// line: `git apply` takes those only where it has the new blob (or for deletions);
    /// [`crate::parse`] refuses them.
    pub patch: String,
}

impl TreeDiff {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.entries.is_empty()
    }
}

/// How long the line diff of one file may search for a minimal diff before settling for a
/// larger (still correct) one.
const FILE_DEADLINE: Duration = Duration::from_secs(2);

/// How long all the line diffs of one [`diff_trees`] call may search, together.
const TREE_DEADLINE: Duration = Duration::from_secs(10);

/// The time the line diffs of one [`diff_trees`] call may take: past their deadlines, the
/// diff settles for a larger (still correct) edit script.
struct Budget {
    until: Option<Instant>,
}

impl Budget {
    fn new() -> Self {
        Self {
            until: Instant::now().checked_add(TREE_DEADLINE),
        }
    }

    /// The deadline for the next file: [`FILE_DEADLINE`] from now, within the whole budget.
    fn next_file(&self) -> Option<Instant> {
        let file = Instant::now().checked_add(FILE_DEADLINE);
        match (file, self.until) {
            (Some(file), Some(until)) => Some(file.min(until)),
            (file, until) => file.or(until),
        }
    }
}

/// Lines of context around each change, as git's default.
const CONTEXT: usize = 3;

/// A file-like side of a change: its git mode and content.
#[derive(Clone, Copy)]
struct Blob<'a> {
    mode: u32,
    content: Content<'a>,
}

/// What a side's content is known as.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// The bytes themselves.
    Bytes(&'a [u8]),
    /// Only the git blob id (of a [`Node::Large`]), as the caller gave it.
    Id(&'a str),
}

impl<'a> Content<'a> {
    /// The content as text, when it is held and is text; `None` counts as binary.
    fn text(self) -> Option<&'a str> {
        match self {
            Content::Bytes(bytes) => as_text(bytes),
            Content::Id(_) => None,
        }
    }

    /// The full git blob id, lower case; `None` for a malformed [`Content::Id`].
    fn id(self) -> Option<String> {
        match self {
            Content::Bytes(bytes) => Some(blob_id(bytes)),
            Content::Id(id) if is_blob_id(id) => Some(id.to_ascii_lowercase()),
            Content::Id(_) => None,
        }
    }

    /// Whether two contents are the same: bytes compare as bytes, anything else by blob
    /// id. A malformed id equals nothing.
    fn same_as(self, other: Content<'_>) -> bool {
        match (self, other) {
            (Content::Bytes(a), Content::Bytes(b)) => a == b,
            (a, b) => match (a.id(), b.id()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }
}

/// Whether `id` is a full git blob id: 40 hex digits, either case.
fn is_blob_id(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The git mode of a regular file with permission bits `mode`.
fn file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        mode::EXECUTABLE
    } else {
        mode::REGULAR
    }
}

/// What a node contributes to a diff, once implied directories are set aside.
#[derive(Clone, Copy)]
enum Side<'a> {
    Blob(Blob<'a>),
    EmptyDir,
}

fn side<'a>(tree: &'a Tree, path: &str) -> Option<Side<'a>> {
    match tree.get(path)? {
        Node::File { content, mode } => Some(Side::Blob(Blob {
            mode: file_mode(*mode),
            content: Content::Bytes(content),
        })),
        Node::Large { id, mode, .. } => Some(Side::Blob(Blob {
            mode: file_mode(*mode),
            content: if id.eq_ignore_ascii_case(EMPTY_ID) {
                Content::Bytes(&[])
            } else {
                Content::Id(id)
            },
        })),
        Node::Symlink { target } => Some(Side::Blob(Blob {
            mode: mode::SYMLINK,
            content: Content::Bytes(target.as_bytes()),
        })),
        Node::Dir { .. } => {
            let prefix = format!("{path}/");
            let has_children = tree
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(key, _)| key.starts_with(&prefix));
            (!has_children).then_some(Side::EmptyDir)
        }
    }
}

fn artifact(side: Side<'_>) -> ArtifactType {
    match side {
        Side::Blob(blob) if mode::is_symlink(blob.mode) => ArtifactType::Symlink,
        Side::Blob(_) => ArtifactType::File,
        Side::EmptyDir => ArtifactType::Directory,
    }
}

/// A rendered `diff --git` section.
struct Stanza {
    text: String,
    binary: bool,
}

/// Compares two trees: entries, counts and one combined patch.
pub fn diff_trees(old: &Tree, new: &Tree) -> TreeDiff {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let budget = Budget::new();
    let mut diff = TreeDiff::default();
    for path in paths {
        let (before, after) = (side(old, path), side(new, path));
        let (status, kind, stanzas) = match (before, after) {
            (None, None) | (Some(Side::EmptyDir), Some(Side::EmptyDir)) => continue,
            (None, Some(after)) => (
                DiffStatus::Added,
                artifact(after),
                vec![stanza_for(&budget, path, None, blob(after))],
            ),
            (Some(before), None) => (
                DiffStatus::Deleted,
                artifact(before),
                vec![stanza_for(&budget, path, blob(before), None)],
            ),
            (Some(Side::Blob(a)), Some(Side::Blob(b)))
                if mode::is_symlink(a.mode) == mode::is_symlink(b.mode) =>
            {
                let status = if !a.content.same_as(b.content) {
                    DiffStatus::Modified
                } else if a.mode != b.mode {
                    DiffStatus::ModeChanged
                } else {
                    continue;
                };
                (
                    status,
                    artifact(Side::Blob(b)),
                    vec![stanza_for(&budget, path, Some(a), Some(b))],
                )
            }
            (Some(before), Some(after)) => (
                DiffStatus::TypeChanged,
                artifact(after),
                // Like git: the old one goes, then the new one comes.
                vec![
                    stanza_for(&budget, path, blob(before), None),
                    stanza_for(&budget, path, None, blob(after)),
                ],
            ),
        };
        let stanzas: Vec<Stanza> = stanzas.into_iter().flatten().collect();
        let binary = stanzas.iter().any(|s| s.binary);
        let text: String = stanzas.iter().map(|s| s.text.as_str()).collect();
        diff.patch.push_str(&text);
        let text_patch = (!binary && !text.is_empty()).then_some(text);

        let summary = &mut diff.summary;
        summary.total += 1;
        match status {
            DiffStatus::Added => summary.added += 1,
            DiffStatus::Modified => summary.modified += 1,
            DiffStatus::Deleted => summary.deleted += 1,
            DiffStatus::TypeChanged => summary.type_changed += 1,
            DiffStatus::ModeChanged => summary.mode_changed += 1,
        }
        if text_patch.is_some() {
            summary.text_patched += 1;
        } else {
            summary.non_text += 1;
        }
        diff.entries.push(DiffEntry {
            path: path.clone(),
            status,
            artifact_type: kind,
            text_patch,
        });
    }
    diff
}

fn blob(side: Side<'_>) -> Option<Blob<'_>> {
    match side {
        Side::Blob(blob) => Some(blob),
        Side::EmptyDir => None,
    }
}

/// Git's blob id of some content.
fn blob_id(content: &[u8]) -> String {
    let size = u64::try_from(content.len()).unwrap_or(u64::MAX);
    let mut hasher = BlobHasher::new(size);
    hasher.update(content);
    hasher.finish()
}

/// Git's blob id (as in `git hash-object`), computed from content streamed in pieces, so a
/// file need not be held in memory: the id a [`Node::Large`] takes.
///
/// ```
/// use pyro_patch::BlobHasher;
///
/// let mut hasher = BlobHasher::new(6);
/// hasher.update(b"hel");
/// hasher.update(b"lo\n");
/// assert_eq!(hasher.hashed(), 6);
/// assert_eq!(hasher.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
/// ```
#[derive(Debug, Clone)]
pub struct BlobHasher {
    sha1: Sha1,
    hashed: u64,
}

impl BlobHasher {
    /// Starts the id of a blob of `size` bytes. The id is only right when exactly `size`
    /// bytes are then fed to [`update`](Self::update): a file that changed size while it
    /// was read shows as [`hashed`](Self::hashed) differing from `size`.
    pub fn new(size: u64) -> Self {
        let mut sha1 = Sha1::new();
        sha1.update(format!("blob {size}\0").as_bytes());
        Self { sha1, hashed: 0 }
    }

    /// Feeds the next piece of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha1.update(bytes);
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.hashed = self.hashed.saturating_add(len);
    }

    /// How many content bytes [`update`](Self::update) has been given so far.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// The blob id: 40 lower-case hex digits.
    pub fn finish(self) -> String {
        self.sha1
            .finalize()
            .iter()
            .fold(String::with_capacity(40), |mut out, byte| {
                let _ = write!(out, "{byte:02x}");
                out
            })
    }
}

const NULL_ID: &str = "0000000000000000000000000000000000000000";

/// The blob id of empty content.
const EMPTY_ID: &str = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";

/// Whether content counts as text: no NUL byte and valid UTF-8.
fn as_text(content: &[u8]) -> Option<&str> {
    if content.contains(&0) {
        return None;
    }
    std::str::from_utf8(content).ok()
}

/// A `---`/`+++` name: quoted when needed, with git's trailing TAB after names with spaces.
fn label(prefix: &str, path: &str) -> String {
    let name = quote(&format!("{prefix}{path}"));
    if name.contains(' ') {
        format!("{name}\t")
    } else {
        name
    }
}

/// Renders one `diff --git` section; `None` when nothing differs (two dirs).
fn stanza_for(
    budget: &Budget,
    path: &str,
    old: Option<Blob<'_>>,
    new: Option<Blob<'_>>,
) -> Option<Stanza> {
    if old.is_none() && new.is_none() {
        return None;
    }
    let a = quote(&format!("a/{path}"));
    let b = quote(&format!("b/{path}"));
    let mut out = format!("diff --git {a} {b}\n");
    let absent = Content::Bytes(&[]);
    let old_content = old.map_or(absent, |blob| blob.content);
    let new_content = new.map_or(absent, |blob| blob.content);
    let texts = (old_content.text(), new_content.text());
    let binary = texts.0.is_none() || texts.1.is_none();
    // Full ids for binaries (`git apply` needs them), git's 7-digit abbreviation for text.
    let id = |blob: Option<Blob<'_>>| match blob {
        Some(blob) => blob
            .content
            .id()
            .map(|id| if binary { id } else { id[..7].to_owned() }),
        None if binary => Some(NULL_ID.to_owned()),
        None => Some(NULL_ID[..7].to_owned()),
    };
    // The `index` line, without its newline; `None` when an id is malformed.
    let index = |old: Option<Blob<'_>>, new: Option<Blob<'_>>| {
        Some(format!("index {}..{}", id(old)?, id(new)?))
    };
    let same = old_content.same_as(new_content);
    match (old, new) {
        (None, Some(new)) => {
            let _ = writeln!(out, "new file mode {:o}", new.mode);
            if let Some(index) = index(None, Some(new)) {
                let _ = writeln!(out, "{index}");
            }
        }
        (Some(old), None) => {
            let _ = writeln!(out, "deleted file mode {:o}", old.mode);
            if let Some(index) = index(Some(old), None) {
                let _ = writeln!(out, "{index}");
            }
        }
        (Some(old_blob), Some(new_blob)) => {
            if old_blob.mode != new_blob.mode {
                let _ = writeln!(
                    out,
                    "old mode {:o}\nnew mode {:o}",
                    old_blob.mode, new_blob.mode
                );
            }
            if same {
                return Some(Stanza {
                    text: out,
                    binary: false,
                });
            }
            if let Some(index) = index(old, new) {
                out.push_str(&index);
                if old_blob.mode == new_blob.mode {
                    let _ = write!(out, " {:o}", old_blob.mode);
                }
                out.push('\n');
            }
        }
        (None, None) => return None,
    }
    if same {
        // An empty file created or deleted: no hunks, as git writes it.
        return Some(Stanza {
            text: out,
            binary: false,
        });
    }
    let old_name = if old.is_some() {
        label("a/", path)
    } else {
        "/dev/null".to_owned()
    };
    let new_name = if new.is_some() {
        label("b/", path)
    } else {
        "/dev/null".to_owned()
    };
    match texts {
        (Some(old_text), Some(new_text)) => {
            let _ = writeln!(out, "--- {old_name}\n+++ {new_name}");
            unified_hunks(old_text, new_text, budget.next_file(), &mut out);
            Some(Stanza {
                text: out,
                binary: false,
            })
        }
        _ => {
            let old_name = old_name.trim_end_matches('\t');
            let new_name = new_name.trim_end_matches('\t');
            let _ = writeln!(out, "Binary files {old_name} and {new_name} differ");
            Some(Stanza {
                text: out,
                binary: true,
            })
        }
    }
}

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Old line `.0` is new line `.1`.
    Same(usize, usize),
    /// Old line `.0` goes.
    Removed(usize),
    /// New line `.0` comes.
    Added(usize),
}

/// A line-level edit script from old to new, with removals before additions in each run of
/// changes (as git prints them). Only the order and lengths of the diff's operations are
/// used, never their cross-side indices.
fn edit_script(old: &[&str], new: &[&str], deadline: Option<Instant>) -> Vec<Step> {
    let mut capture = Capture::new();
    if let Err(never) = diff_deadline(
        Algorithm::Myers,
        &mut capture,
        old,
        0..old.len(),
        new,
        0..new.len(),
        deadline,
    ) {
        match never {}
    }
    let (mut i, mut j) = (0, 0);
    let mut steps = Vec::with_capacity(old.len().max(new.len()));
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let flush = |steps: &mut Vec<Step>, removed: &mut Vec<usize>, added: &mut Vec<usize>| {
        steps.extend(removed.drain(..).map(Step::Removed));
        steps.extend(added.drain(..).map(Step::Added));
    };
    for op in capture.into_ops() {
        let (tag, old_range, new_range) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => {
                flush(&mut steps, &mut removed, &mut added);
                for _ in 0..old_range.len() {
                    steps.push(Step::Same(i, j));
                    i += 1;
                    j += 1;
                }
            }
            DiffTag::Delete | DiffTag::Insert | DiffTag::Replace => {
                for _ in 0..old_range.len() {
                    removed.push(i);
                    i += 1;
                }
                for _ in 0..new_range.len() {
                    added.push(j);
                    j += 1;
                }
            }
        }
    }
    flush(&mut steps, &mut removed, &mut added);
    // Whatever the diff left out (it never should) is replaced wholesale, so the script
    // always turns old into new.
    steps.extend((i..old.len()).map(Step::Removed));
    steps.extend((j..new.len()).map(Step::Added));
    steps.retain(|step| match *step {
        Step::Same(a, b) => a < old.len() && b < new.len(),
        Step::Removed(a) => a < old.len(),
        Step::Added(b) => b < new.len(),
    });
    steps
}

/// Renders the hunks turning `old` into `new`, with [`CONTEXT`] lines of context.
fn unified_hunks(old: &str, new: &str, deadline: Option<Instant>, out: &mut String) {
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let steps = edit_script(&old_lines, &new_lines, deadline);
    let changes: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, step)| !matches!(step, Step::Same(..)))
        .map(|(index, _)| index)
        .collect();
    // Old and new lines before each step.
    let mut before = Vec::with_capacity(steps.len() + 1);
    let (mut o, mut n) = (0, 0);
    for step in &steps {
        before.push((o, n));
        match step {
            Step::Same(..) => {
                o += 1;
                n += 1;
            }
            Step::Removed(_) => o += 1,
            Step::Added(_) => n += 1,
        }
    }
    before.push((o, n));

    let mut k = 0;
    while k < changes.len() {
        let first = changes[k];
        let mut last = first;
        while k + 1 < changes.len() && changes[k + 1] - last - 1 <= 2 * CONTEXT {
            k += 1;
            last = changes[k];
        }
        k += 1;
        let start = first.saturating_sub(CONTEXT);
        let end = (last + 1 + CONTEXT).min(steps.len());
        let (old_start, new_start) = before[start];
        let (old_end, new_end) = before[end];
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            hunk_range(old_start, old_end - old_start),
            hunk_range(new_start, new_end - new_start)
        );
        for step in &steps[start..end] {
            match *step {
                Step::Same(i, _) => push_line(out, ' ', old_lines[i]),
                Step::Removed(i) => push_line(out, '-', old_lines[i]),
                Step::Added(j) => push_line(out, '+', new_lines[j]),
            }
        }
    }
}

/// `start,len` as a hunk header writes it: 1-based, `,1` omitted, and an empty range named
/// by the line before it.
fn hunk_range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

fn push_line(out: &mut String, prefix: char, line: &str) {
    out.push(prefix);
    out.push_str(line);
    if !line.ends_with('\n') {
        out.push_str("\n\\ No newline at end of file\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> Node {
        Node::File {
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    fn tree(entries: &[(&str, Node)]) -> Tree {
        entries
            .iter()
            .map(|(p, n)| (p.to_string(), n.clone()))
            .collect()
    }

    #[test]
    fn blob_ids_match_git() {
        assert_eq!(blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    fn large(content: &[u8], mode: u32) -> Node {
        let size = content.len() as u64;
        let mut hasher = BlobHasher::new(size);
        for piece in content.chunks(3) {
            hasher.update(piece);
        }
        assert_eq!(hasher.hashed(), size);
        Node::Large {
            size,
            id: hasher.finish(),
            mode,
        }
    }

    fn bytes(content: &[u8], mode: u32) -> Node {
        Node::File {
            content: content.to_vec(),
            mode,
        }
    }

    #[test]
    fn blob_hasher_streams_the_blob_id() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [1, 7, 4096, 10_000] {
            let mut hasher = BlobHasher::new(content.len() as u64);
            for piece in content.chunks(split) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finish(), blob_id(&content));
        }
        assert_eq!(
            BlobHasher::new(0).finish(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        // Fed fewer bytes than announced: the count shows it.
        let mut short = BlobHasher::new(5);
        short.update(b"abc");
        assert_eq!(short.hashed(), 3);
    }

    #[test]
    fn large_nodes_diff_like_the_files_they_stand_for() {
        let (a, b) = (&[0u8, 1, 2, 3][..], &[0u8, 1, 9][..]);
        type FileSide<'a> = Option<(&'a [u8], u32)>;
        let cases: Vec<(FileSide<'_>, FileSide<'_>)> = vec![
            (Some((a, 0o644)), Some((b, 0o644))),
            (Some((a, 0o644)), Some((b, 0o755))),
            (Some((a, 0o755)), Some((a, 0o644))),
            (Some((a, 0o644)), Some((a, 0o644))),
            (None, Some((b, 0o755))),
            (Some((a, 0o644)), None),
            // The same text on both sides: no change, large or not.
            (Some((b"text\n", 0o644)), Some((b"text\n", 0o644))),
            // An empty large file is the empty file, created or deleted as git writes it.
            (None, Some((b"", 0o644))),
            (Some((b"", 0o755)), None),
            (Some((b"", 0o644)), Some((b"", 0o755))),
        ];
        for (before, after) in cases {
            let make = |side: FileSide<'_>, as_large: bool| -> Tree {
                side.map(|(content, mode)| {
                    let node = if as_large {
                        large(content, mode)
                    } else {
                        bytes(content, mode)
                    };
                    ("dir/x.bin".to_owned(), node)
                })
                .into_iter()
                .collect()
            };
            let reference = diff_trees(&make(before, false), &make(after, false));
            for (old_large, new_large) in [(true, false), (false, true), (true, true)] {
                let got = diff_trees(&make(before, old_large), &make(after, new_large));
                assert_eq!(
                    got, reference,
                    "{before:?} -> {after:?} large: {old_large}/{new_large}"
                );
            }
        }
    }

    #[test]
    fn large_against_text_is_a_binary_change() {
        let old = tree(&[("f", file("a\n"))]);
        let new = tree(&[("f", large(b"b\n", 0o644))]);
        let diff = diff_trees(&old, &new);
        assert_eq!(
            diff.patch,
            format!(
                "diff --git a/f b/f\nindex {}..{} 100644\nBinary files a/f and b/f differ\n",
                blob_id(b"a\n"),
                blob_id(b"b\n")
            )
        );
        assert_eq!(diff.entries[0].status, DiffStatus::Modified);
        assert_eq!(diff.entries[0].text_patch, None);
        assert_eq!((diff.summary.text_patched, diff.summary.non_text), (0, 1));
        // The same text on both sides is no change.
        let same = tree(&[("f", large(b"a\n", 0o644))]);
        assert!(!diff_trees(&old, &same).changed());
        assert!(!diff_trees(&same, &old).changed());
    }

    #[test]
    fn large_against_large_compares_ids() {
        let one = tree(&[("big", large(b"one", 0o644))]);
        let same = tree(&[(
            "big",
            Node::Large {
                // Another size and upper case: only the id counts.
                size: 99,
                id: blob_id(b"one").to_ascii_uppercase(),
                mode: 0o600,
            },
        )]);
        assert!(!diff_trees(&one, &same).changed());

        let two = tree(&[("big", large(b"two", 0o644))]);
        let diff = diff_trees(&one, &two);
        assert_eq!(
            diff.entries,
            [DiffEntry {
                path: "big".into(),
                status: DiffStatus::Modified,
                artifact_type: ArtifactType::File,
                text_patch: None,
            }]
        );
        assert_eq!(
            diff.patch,
            format!(
                "diff --git a/big b/big\nindex {}..{} 100644\nBinary files a/big and b/big differ\n",
                blob_id(b"one"),
                blob_id(b"two")
            )
        );

        let upper = tree(&[(
            "big",
            Node::Large {
                size: 3,
                id: blob_id(b"two").to_ascii_uppercase(),
                mode: 0o755,
            },
        )]);
        let diff = diff_trees(&one, &upper);
        assert!(diff.patch.contains(&format!(
            "old mode 100644\nnew mode 100755\nindex {}..{}\n",
            blob_id(b"one"),
            blob_id(b"two")
        )));

        // A large file replaced by a symlink is a type change, binary on its old side.
        let link = tree(&[("big", Node::Symlink { target: "t".into() })]);
        let diff = diff_trees(&one, &link);
        assert_eq!(diff.entries[0].status, DiffStatus::TypeChanged);
        assert_eq!(diff.entries[0].text_patch, None);
        assert!(diff.patch.contains("deleted file mode 100644\n"));
        assert!(diff.patch.contains("new file mode 120000\n"));
    }

    #[test]
    fn malformed_large_ids_are_never_equal_and_get_no_index_line() {
        let bad = |id: &str| {
            tree(&[(
                "big",
                Node::Large {
                    size: 1,
                    id: id.into(),
                    mode: 0o644,
                },
            )])
        };
        for id in ["", "1234567", "zz", "x\n+++ b/injected"] {
            let diff = diff_trees(&bad(id), &bad(id));
            assert_eq!(diff.entries.len(), 1, "{id:?}");
            assert_eq!(diff.entries[0].status, DiffStatus::Modified);
            assert_eq!(
                diff.patch,
                "diff --git a/big b/big\nBinary files a/big and b/big differ\n"
            );
            let added = diff_trees(&Tree::new(), &bad(id));
            assert_eq!(
                added.patch,
                "diff --git a/big b/big\nnew file mode 100644\nBinary files /dev/null and b/big differ\n"
            );
        }
    }

    #[test]
    fn renders_like_git() {
        let old = tree(&[
            ("f", file("a\nb\nc\n")),
            ("gone", file("x\n")),
            ("same", file("s\n")),
        ]);
        let new = tree(&[
            ("f", file("a\nB\nc")),
            ("new", file("")),
            ("same", file("s\n")),
        ]);
        let diff = diff_trees(&old, &new);
        assert_eq!(
            diff.patch,
            concat!(
                "diff --git a/f b/f\nindex de98044..36ef1ba 100644\n--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n-c\n+B\n+c\n\\ No newline at end of file\n",
                "diff --git a/gone b/gone\ndeleted file mode 100644\nindex 587be6b..0000000\n--- a/gone\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n",
                "diff --git a/new b/new\nnew file mode 100644\nindex 0000000..e69de29\n",
            )
        );
        let statuses: Vec<DiffStatus> = diff.entries.iter().map(|e| e.status).collect();
        assert_eq!(
            statuses,
            [DiffStatus::Modified, DiffStatus::Deleted, DiffStatus::Added]
        );
        assert_eq!(diff.summary.text_patched, 3);
    }

    #[test]
    fn modes_symlinks_dirs_and_binaries() {
        let old = tree(&[
            (
                "bin",
                Node::File {
                    content: vec![0, 1, 2],
                    mode: 0o644,
                },
            ),
            ("empty", Node::Dir { mode: 0o755 }),
            ("full", Node::Dir { mode: 0o755 }),
            ("full/x", file("x\n")),
            ("link", Node::Symlink { target: "a".into() }),
            ("run.sh", file("#!/bin/sh\n")),
            ("t", file("t\n")),
        ]);
        let new = tree(&[
            (
                "bin",
                Node::File {
                    content: vec![0, 1, 3],
                    mode: 0o644,
                },
            ),
            ("full", Node::Dir { mode: 0o700 }),
            ("link", Node::Symlink { target: "b".into() }),
            ("newdir", Node::Dir { mode: 0o755 }),
            (
                "run.sh",
                Node::File {
                    content: b"#!/bin/sh\n".to_vec(),
                    mode: 0o755,
                },
            ),
            ("t", Node::Symlink { target: "x".into() }),
        ]);
        let diff = diff_trees(&old, &new);
        let got: Vec<(&str, DiffStatus, ArtifactType, bool)> = diff
            .entries
            .iter()
            .map(|e| {
                (
                    e.path.as_str(),
                    e.status,
                    e.artifact_type,
                    e.text_patch.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("bin", DiffStatus::Modified, ArtifactType::File, false),
                ("empty", DiffStatus::Deleted, ArtifactType::Directory, false),
                ("full", DiffStatus::Added, ArtifactType::Directory, false),
                ("full/x", DiffStatus::Deleted, ArtifactType::File, true),
                ("link", DiffStatus::Modified, ArtifactType::Symlink, true),
                ("newdir", DiffStatus::Added, ArtifactType::Directory, false),
                ("run.sh", DiffStatus::ModeChanged, ArtifactType::File, true),
                ("t", DiffStatus::TypeChanged, ArtifactType::Symlink, true),
            ]
        );
        let s = diff.summary;
        assert_eq!(
            (
                s.total,
                s.added,
                s.modified,
                s.deleted,
                s.type_changed,
                s.mode_changed
            ),
            (8, 2, 2, 2, 1, 1)
        );
        assert_eq!((s.text_patched, s.non_text), (4, 4));
        assert!(diff.patch.contains("Binary files a/bin and b/bin differ\n"));
        assert!(diff.patch.contains(&format!(
            "index {}..{} 100644\n",
            blob_id(&[0, 1, 2]),
            blob_id(&[0, 1, 3])
        )));
        assert!(
            diff.patch
                .contains("diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\ndiff")
        );
        assert!(
            diff.patch
                .contains("-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n")
        );
        assert!(diff.patch.contains(
            "deleted file mode 100644\nindex 718f4d2..0000000\n--- a/t\n+++ /dev/null\n"
        ));
        assert!(diff.patch.contains("new file mode 120000\n"));
    }

    #[test]
    fn quotes_names() {
        let new = tree(&[("a b", file("x\n")), ("q\"t", file("y\n"))]);
        let diff = diff_trees(&Tree::new(), &new);
        assert!(diff.patch.contains("diff --git a/a b b/a b\n"));
        assert!(diff.patch.contains("+++ b/a b\t\n"));
        assert!(
            diff.patch
                .contains("diff --git \"a/q\\\"t\" \"b/q\\\"t\"\n")
        );
    }

    #[test]
    fn edit_scripts_are_consistent() {
        let replay = |old: &[&str], new: &[&str]| {
            let mut rebuilt = Vec::new();
            for step in edit_script(old, new, None) {
                match step {
                    Step::Same(i, j) => {
                        assert_eq!(old[i], new[j]);
                        rebuilt.push(new[j]);
                    }
                    Step::Removed(_) => {}
                    Step::Added(j) => rebuilt.push(new[j]),
                }
            }
            assert_eq!(rebuilt, new);
        };
        replay(&["a\n", "a\r\n"], &["a\r\n", "a\r\n"]);
        replay(&["a\n", "b\n", "a\n"], &["b\n", "a\n", "b\n"]);
        replay(&[], &["x"]);
        replay(&["x"], &[]);
        let script = edit_script(&["x\n", "y\n"], &["p\n", "q\n"], None);
        assert_eq!(
            script,
            [
                Step::Removed(0),
                Step::Removed(1),
                Step::Added(0),
                Step::Added(1)
            ]
        );
    }

    #[test]
    fn hunks_merge_when_close_and_split_when_far() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let close = old
            .replace("line 5\n", "five\n")
            .replace("line 11\n", "eleven\n");
        let mut out = String::new();
        unified_hunks(&old, &close, None, &mut out);
        assert_eq!(out.matches("@@ -").count(), 1, "{out}");
        assert!(out.starts_with("@@ -2,13 +2,13 @@\n"), "{out}");
        let far = old
            .replace("line 5\n", "five\n")
            .replace("line 13\n", "thirteen\n");
        let mut out = String::new();
        unified_hunks(&old, &far, None, &mut out);
        assert_eq!(out.matches("@@ -").count(), 2, "{out}");
    }

    #[test]
    fn hunk_ranges() {
        assert_eq!(hunk_range(0, 0), "0,0");
        assert_eq!(hunk_range(4, 0), "4,0");
        assert_eq!(hunk_range(0, 1), "1");
        assert_eq!(hunk_range(9, 3), "10,3");
    }
}
