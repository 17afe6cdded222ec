//! Unified diffs for pyro workspaces, in memory: parse `git diff` output, apply it all or
//! nothing, and render the difference between two trees as a patch `git apply` accepts.
//!
//! Nothing here touches the filesystem; the caller reads and writes the files.
//!
//! - [`parse`] reads `git diff` (and `diff -u`, `diff -ruN`) output into a [`Patch`]: one
//!   [`FilePatch`] per file, with its [`FileKind`] (added, deleted, modified, renamed or
//!   mode-only), git modes, and [`Hunk`]s of [`Line`]s kept as bytes with their newlines, so
//!   `\ No newline at end of file` is exact on both sides. Quoted paths, timestamped labels,
//!   `-p0` patches, pure renames, empty files and blank context lines whose space an editor
//!   stripped are understood; binary patches and copies are refused with [`Unsupported`].
//!   Every [`PatchError`] names the patch line, the file and the hunk.
//! - [`apply()`] computes the new state of every touched path from the old one (asked of
//!   the caller through a closure) and returns [`Outcome`]s (writes, then deletes), or an
//!   [`ApplyError`] and nothing at all. Hunks apply at their stated line or at the nearest
//!   offset where every context and removed line matches, in order and never overlapping,
//!   like `git apply` without fuzz.
//! - [`diff_trees`] compares two [`Tree`]s of files, symlinks and empty directories, and
//!   returns a [`TreeDiff`]: sorted [`DiffEntry`]s, a [`DiffSummary`], and one combined
//!   patch in `git diff` form (modes, `/dev/null`, three lines of context, newline markers,
//!   symlinks as mode 120000, binaries as `Binary files … differ`). Files too large to hold
//!   are [`Node::Large`]: a size and a git blob id, which [`BlobHasher`] computes from the
//!   content streamed in pieces; they diff as binaries.
//!
//! `apply(&parse(&diff_trees(&a, &b).patch)?, a)` gives `b` for any trees of text files and
//! symlinks; the tests check this against the real `git` as well.
//!
//! ```
//! use pyro_patch::{FileState, Node, Outcome, Tree, apply, diff_trees, parse};
//!
//! let old = Tree::from([("src/lib.rs".to_owned(), Node::File { content: b"a\nb\n".to_vec(), mode: 0o644 })]);
//! let new = Tree::from([("src/lib.rs".to_owned(), Node::File { content: b"a\nc\n".to_vec(), mode: 0o644 })]);
//! let diff = diff_trees(&old, &new);
//! assert_eq!(diff.summary.modified, 1);
//!
//! let patch = parse(&diff.patch)?;
//! let outcomes = apply(&patch, |path| match old.get(path) {
//!     Some(Node::File { content, mode }) => Some(FileState { content: content.clone(), mode: *mode }),
//!     _ => None,
//! })?;
//! assert_eq!(
//!     outcomes,
//!     [Outcome::Write { path: "src/lib.rs".into(), content: b"a\nc\n".to_vec(), mode: 0o644 }]
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod apply;
mod diff;
mod model;
mod parse;
mod quote;

pub use apply::{ApplyError, FileState, HunkFailure, Outcome, apply};
pub use diff::{
    ArtifactType, BlobHasher, DiffEntry, DiffStatus, DiffSummary, Node, Tree, TreeDiff, diff_trees,
};
pub use model::{FileKind, FilePatch, Hunk, Line, Patch};
pub use parse::{
    ParseOptions, PatchError, PatchErrorKind, Unsupported, parse, parse_bytes, parse_with,
};
