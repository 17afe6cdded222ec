//! Fuzzing of `parse` and `apply` on stable Rust, with proptest.
//!
//! Three properties feed the parser (and, where it accepts the input, `apply` against a
//! small random tree): arbitrary bytes, arbitrary strings made of patch-like tokens, and
//! structurally plausible patches: valid `git diff`-style patches (hand-written seeds and
//! [`diff_trees`] output for random trees) mutated by deleting, duplicating, swapping and
//! truncating lines, flipping bytes, and inserting random headers (hunk headers with huge
//! numbers, mode, index, rename and copy lines, quoted names, timestamps). Every case must
//! end in `Ok` or `Err` without a panic, and stay bounded: no result is larger than its
//! input allows (see [`check`]).
//!
//! Budget: each property runs `PROPTEST_CASES` cases, [`DEFAULT_CASES`] (4000) when that
//! is unset: about 7 s for this file in a debug build on a 2-core machine, within the ~20 s
//! it may take. A longer campaign, in release with overflow checks on (so arithmetic
//! overflows still panic), in its own target directory; 500,000 cases per property take
//! about a minute there, plus the build:
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/pyro-patch-fuzz CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
//!     PROPTEST_CASES=500000 cargo test -p pyro-patch --release --test fuzz -- --nocapture
//! ```
//!
//! Each property prints how its cases ended (`--nocapture` shows it). A failure prints
//! the shrunk input and records its seed in `tests/fuzz.proptest-regressions` (replayed
//! first on later runs). Fix the bug and keep the input as a named test in
//! `tests/fuzz_regressions.rs`. See `README-fuzz.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseResult, TestRunner};
use pyro_patch::{
    FileState, Node, Outcome, ParseOptions, Patch, Tree, apply, diff_trees, parse_with,
};

/// Cases per property when `PROPTEST_CASES` is unset.
const DEFAULT_CASES: u32 = 4000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------------------
// The checks

/// The state `apply` asks for: files and symlinks of a tree.
fn state_of(tree: &Tree, path: &str) -> Option<FileState> {
    match tree.get(path)? {
        Node::File { content, mode } => Some(FileState {
            content: content.clone(),
            mode: *mode,
        }),
        Node::Symlink { target } => Some(FileState {
            content: target.as_bytes().to_vec(),
            mode: 0o120777,
        }),
        Node::Dir { .. } | Node::Large { .. } => None,
    }
}

/// A generous bound on an error message: the offending text is quoted at most a few times,
/// each byte escaped to at most 10 characters.
fn message_bound(input: usize) -> usize {
    4096 + 40 * input
}

/// Parses `patch` and applies what parses to `tree`: no panic (the harness catches one and
/// shrinks it), and bounded results.
/// Where a case ended.
#[derive(Debug, Clone, Copy)]
enum End {
    ParseError,
    ApplyError,
    Applied,
}

fn check(patch: &[u8], strip: Option<usize>, tree: &Tree) -> Result<End, TestCaseError> {
    let lines = patch.split_inclusive(|&b| b == b'\n').count();
    let parsed = parse_with(patch, &ParseOptions { strip });
    let patch_result = match parsed {
        Err(err) => {
            prop_assert!(
                (1..=lines + 1).contains(&err.line),
                "error line {} of a {lines}-line patch: {err}",
                err.line
            );
            prop_assert!(err.hunk.is_none_or(|h| (1..=lines).contains(&h)));
            let text = err.to_string();
            prop_assert!(text.len() <= message_bound(patch.len()), "{text}");
            return Ok(End::ParseError);
        }
        Ok(parsed) => parsed,
    };
    check_parsed(&patch_result, patch.len(), lines)?;

    let outcomes = apply(&patch_result, |path| state_of(tree, path));
    match outcomes {
        Err(err) => {
            let text = err.to_string();
            prop_assert!(text.len() <= message_bound(patch.len()), "{text}");
            Ok(End::ApplyError)
        }
        Ok(outcomes) => {
            check_outcomes(&patch_result, &outcomes, patch.len(), tree)?;
            Ok(End::Applied)
        }
    }
}

/// What the parser returns is no larger than the patch and consistent with its counts.
fn check_parsed(patch: &Patch, bytes: usize, lines: usize) -> Result<(), TestCaseError> {
    prop_assert!(!patch.files.is_empty());
    prop_assert!(patch.files.len() <= lines);
    let mut body_bytes = 0;
    for file in &patch.files {
        for path in [&file.old_path, &file.new_path].into_iter().flatten() {
            prop_assert!(!path.is_empty() && !path.contains('\0'), "{path:?}");
            prop_assert!(!path.split('/').any(|c| c == ".."), "{path:?}");
        }
        prop_assert!((1..=lines).contains(&file.line));
        for hunk in &file.hunks {
            prop_assert!(hunk.lines.len() <= lines);
            prop_assert_eq!(hunk.old_lines().count(), hunk.old_count);
            prop_assert_eq!(hunk.new_lines().count(), hunk.new_count);
            prop_assert!(hunk.old_start <= usize::MAX / 2 && hunk.new_start <= usize::MAX / 2);
            prop_assert!((1..=lines).contains(&hunk.line));
            body_bytes += hunk
                .lines
                .iter()
                .map(|line| match line {
                    pyro_patch::Line::Context(t)
                    | pyro_patch::Line::Removed(t)
                    | pyro_patch::Line::Added(t) => t.len(),
                })
                .sum::<usize>();
        }
    }
    // Each body line comes from its own patch line (one byte more for a patch whose final
    // newline is missing).
    prop_assert!(
        body_bytes <= bytes + 1,
        "{body_bytes} body bytes from {bytes}"
    );
    Ok(())
}

/// `apply`'s outcomes: each path once, deletions first, only paths the patch names, and no
/// more content than the tree and the patch hold together.
fn check_outcomes(
    patch: &Patch,
    outcomes: &[Outcome],
    patch_bytes: usize,
    tree: &Tree,
) -> Result<(), TestCaseError> {
    let named: BTreeSet<&str> = patch
        .files
        .iter()
        .flat_map(|f| [f.old_path.as_deref(), f.new_path.as_deref()])
        .flatten()
        .collect();
    let mut seen = BTreeSet::new();
    let mut written = 0;
    let mut writing = false;
    for outcome in outcomes {
        prop_assert!(seen.insert(outcome.path()), "{} twice", outcome.path());
        prop_assert!(
            named.contains(outcome.path()),
            "{} not named",
            outcome.path()
        );
        match outcome {
            Outcome::Delete { .. } => prop_assert!(!writing, "a delete after a write"),
            Outcome::Write { content, .. } => {
                writing = true;
                written += content.len();
            }
        }
    }
    let held: usize = tree
        .values()
        .map(|node| match node {
            Node::File { content, .. } => content.len(),
            Node::Symlink { target } => target.len(),
            _ => 0,
        })
        .sum();
    prop_assert!(
        written <= held + patch_bytes,
        "{written} bytes written from {held} held and a {patch_bytes}-byte patch"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Trees

/// Paths as the seeds name them (after stripping `a/`/`b/`).
const PATHS: &[&str] = &["f", "g", "d/h", "with space", "café", "l", "new", "x"];

/// Lines the seeds use, so hunks sometimes match.
const WORDS: &[&str] = &["a", "b", "c", "x", "", " ", "target", "é", "a\r"];

fn text_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(WORDS), 0..8),
        any::<bool>(),
    )
        .prop_map(|(lines, final_newline)| {
            let mut text = lines.join("\n");
            if final_newline && !lines.is_empty() {
                text.push('\n');
            }
            text
        })
}

fn node_strategy() -> BoxedStrategy<Node> {
    prop_oneof![
        4 => (text_strategy(), any::<bool>()).prop_map(|(text, executable)| Node::File {
            content: text.into_bytes(),
            mode: if executable { 0o755 } else { 0o644 },
        }),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|content| Node::File {
            content,
            mode: 0o644,
        }),
        1 => prop::sample::select(&["target", "a", "d/h", "x y"][..]).prop_map(|t| Node::Symlink {
            target: t.to_owned(),
        }),
    ]
    .boxed()
}

fn tree_strategy() -> BoxedStrategy<Tree> {
    prop::collection::btree_map(prop::sample::select(PATHS), node_strategy(), 0..5)
        .prop_map(|map| {
            map.into_iter()
                .map(|(path, node)| (path.to_owned(), node))
                .collect::<BTreeMap<_, _>>()
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Seeds: valid patches in the forms `git diff`, `diff -u` and `format-patch` write

const SEEDS: &[&str] = &[
    "diff --git a/f b/f\nindex 1234567..89abcde 100644\n--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@ fn main\n a\n-b\n+B\n c\n",
    "diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n@@ -7,3 +7,4 @@\n x\n+y\n x\n x\n",
    "diff --git a/new b/new\nnew file mode 100755\nindex 0000000..e69de29\n",
    "diff --git a/new b/new\nnew file mode 100644\nindex 0000000..587be6b\n--- /dev/null\n+++ b/new\n@@ -0,0 +1,2 @@\n+x\n+y\n",
    "diff --git a/g b/g\ndeleted file mode 100644\nindex 1111111..0000000\n--- a/g\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n",
    "diff --git a/f b/x\nsimilarity index 100%\nrename from f\nrename to x\n",
    "diff --git a/f b/x\nsimilarity index 80%\nrename from f\nrename to x\nindex 1..2 100644\n--- a/f\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
    "diff --git a/g b/g\nold mode 100644\nnew mode 100755\n",
    "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n",
    "diff --git a/l b/l\nindex 1..2 120000\n--- a/l\n+++ b/l\n@@ -1 +1 @@\n-target\n\\ No newline at end of file\n+a\n\\ No newline at end of file\n",
    "diff --git a/f b/f\ndeleted file mode 100644\n--- a/f\n+++ /dev/null\n@@ -1 +0,0 @@\n-target\n\\ No newline at end of file\ndiff --git a/f b/f\nnew file mode 120000\n--- /dev/null\n+++ b/f\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n",
    "diff --git \"a/caf\\303\\251\" \"b/caf\\303\\251\"\n--- \"a/caf\\303\\251\"\n+++ \"b/caf\\303\\251\"\n@@ -1 +1 @@\n-a\n+b\n",
    "diff --git a/with space b/with space\n--- a/with space\t\n+++ b/with space\t\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n",
    "diff --git f f\n--- f\n+++ f\n@@ -1 +1 @@\n-a\n+b\n",
    "--- f.orig\t2024-01-01 10:00:00.000000000 +0100\n+++ f\t2024-01-02 10:00:00.000000000 +0100\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n",
    "diff -ruN old/new new/new\n--- old/new\t1970-01-01 00:00:00.000000000 +0000\n+++ new/new\t2024-05-01 12:00:00.000000000 +0200\n@@ -0,0 +1 @@\n+x\n",
    "--- a/d/h\t2024-01-01\n+++ /dev/null\t1969-12-31 19:00:00 -0500\n@@ -1 +0,0 @@\n-a\n",
    "From 123 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n---\n f | 2 +-\n\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n-- \n2.47.3\n",
    "diff --git a/f b/f\nindex e69de29..587be6b 100644\n--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n",
    "diff --git a/f b/f\nindex 1..2 100644\nBinary files a/f and b/f differ\n",
];

// ---------------------------------------------------------------------------------------
// Random pieces of headers

/// Numbers for hunk headers, modes and timestamps: small, huge, overflowing, malformed.
fn number_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0u64..12).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u32>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(&[
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "4294967295",
            "99999999999999999999999999999",
            "-1",
            "+1",
            "",
            "0x10",
            " 1",
        ][..])
        .prop_map(str::to_owned),
        1 => "[0-9]{1,40}",
    ]
    .boxed()
}

fn name_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(&[
            "a/f", "b/f", "a/g", "b/g", "f", "a/x", "b/x", "/dev/null", "a/with space",
            "b/with space", "\"a/caf\\303\\251\"", "\"b/caf\\303\\251\"", "\"a/bad\\q\"",
            "\"a/open", "\"a/nul\\000x\"", "a/../etc/passwd", "a//f", "a/", "b/", "\"\"", "a/d/h",
            "b/l", "old/f", "new/f", "\"a/\\377\"",
        ][..])
        .prop_map(str::to_owned),
        1 => "[a-z/ \"\\\\.\t]{0,12}",
    ]
    .boxed()
}

fn timestamp_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("\t".to_owned()),
        Just("\t1970-01-01 00:00:00.000000000 +0000".to_owned()),
        (
            number_strategy(),
            number_strategy(),
            number_strategy(),
            number_strategy(),
            number_strategy(),
            number_strategy(),
            prop::sample::select(&["+", "-", "", "+0", "x"][..]),
            number_strategy(),
        )
            .prop_map(|(y, mo, d, h, mi, s, sign, zone)| format!(
                "\t{y}-{mo}-{d} {h}:{mi}:{s}.000 {sign}{zone}"
            )),
    ]
    .boxed()
}

fn mode_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "100644", "100755", "120000", "160000", "040000", "100600", "0", "777777777777",
            "100644 ", "10064x", "",
        ][..])
        .prop_map(str::to_owned),
        1 => "[0-7]{1,12}",
    ]
    .boxed()
}

fn hunk_header_strategy() -> BoxedStrategy<String> {
    (
        number_strategy(),
        prop::option::of(number_strategy()),
        number_strategy(),
        prop::option::of(number_strategy()),
        prop::sample::select(&["", " fn main", " ", "@", " @@"][..]),
    )
        .prop_map(|(a, b, c, d, section)| {
            let range = |start: String, count: Option<String>| match count {
                Some(count) => format!("{start},{count}"),
                None => start,
            };
            format!("@@ -{} +{} @@{section}", range(a, b), range(c, d))
        })
        .boxed()
}

/// One random line (without its newline) of the kinds a patch holds.
fn header_line_strategy() -> BoxedStrategy<String> {
    prop_oneof![
        3 => hunk_header_strategy(),
        1 => (name_strategy(), name_strategy()).prop_map(|(a, b)| format!("diff --git {a} {b}")),
        1 => (name_strategy(), timestamp_strategy()).prop_map(|(n, t)| format!("--- {n}{t}")),
        1 => (name_strategy(), timestamp_strategy()).prop_map(|(n, t)| format!("+++ {n}{t}")),
        1 => (
            prop::sample::select(&["old mode ", "new mode ", "new file mode ", "deleted file mode "][..]),
            mode_strategy(),
        )
            .prop_map(|(k, m)| format!("{k}{m}")),
        1 => ("[0-9a-f]{0,40}", "[0-9a-f]{0,40}", prop::option::of(mode_strategy()))
            .prop_map(|(a, b, m)| match m {
                Some(m) => format!("index {a}..{b} {m}"),
                None => format!("index {a}..{b}"),
            }),
        1 => (
            prop::sample::select(&["rename from ", "rename to ", "rename old ", "rename new ", "copy from ", "copy to "][..]),
            name_strategy(),
        )
            .prop_map(|(k, n)| format!("{k}{n}")),
        1 => prop::sample::select(&[
            "similarity index 90%", "dissimilarity index 10%", "GIT binary patch",
            "Binary files a/f and b/f differ", "diff --cc f", "@@@ -1 +1 +1 @@@",
            "\\ No newline at end of file", "-- ", "", " a", "-a", "+b", "+", "-", " ",
            "\r", "diff -ruN old/f new/f", "Only in new: x",
        ][..])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Mutations

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize),
    /// Cut the line after this many bytes (its newline goes too).
    TruncateLine(usize, usize),
    /// Cut the patch after this line (and maybe in its middle).
    TruncatePatch(usize, usize),
    Insert(usize, String),
    Replace(usize, String),
    FlipByte(usize, usize, u8),
    /// Re-number a hunk header (the next one at or after the line) with random numbers.
    Renumber(usize, String),
    /// Replace the timestamp of a `---`/`+++` label (the next one at or after the line).
    Retime(usize, String),
}

fn mutation_strategy() -> BoxedStrategy<Mutation> {
    let at = any::<usize>();
    prop_oneof![
        2 => at.prop_map(Mutation::Delete),
        1 => at.prop_map(Mutation::Duplicate),
        1 => at.prop_map(Mutation::Swap),
        1 => (at, 0usize..40).prop_map(|(a, b)| Mutation::TruncateLine(a, b)),
        1 => (at, 0usize..40).prop_map(|(a, b)| Mutation::TruncatePatch(a, b)),
        3 => (at, header_line_strategy()).prop_map(|(a, l)| Mutation::Insert(a, l)),
        3 => (at, header_line_strategy()).prop_map(|(a, l)| Mutation::Replace(a, l)),
        1 => (at, any::<usize>(), any::<u8>()).prop_map(|(a, b, c)| Mutation::FlipByte(a, b, c)),
        2 => (at, hunk_header_strategy()).prop_map(|(a, h)| Mutation::Renumber(a, h)),
        1 => (at, timestamp_strategy()).prop_map(|(a, t)| Mutation::Retime(a, t)),
    ]
    .boxed()
}

/// Applies mutations to a patch, line by line (lines keep their newlines).
fn mutate(patch: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = patch
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    for mutation in mutations {
        let len = lines.len();
        let pick = |at: usize| if len == 0 { 0 } else { at % len };
        let line = |text: &str| format!("{text}\n").into_bytes();
        match mutation {
            Mutation::Delete(at) if len > 0 => {
                lines.remove(pick(*at));
            }
            Mutation::Duplicate(at) if len > 0 => {
                let copy = lines[pick(*at)].clone();
                lines.insert(pick(*at), copy);
            }
            Mutation::Swap(at) if len > 1 => {
                let i = pick(*at);
                lines.swap(i, (i + 1) % len);
            }
            Mutation::TruncateLine(at, keep) if len > 0 => {
                let i = pick(*at);
                lines[i].truncate(*keep);
            }
            Mutation::TruncatePatch(at, keep) if len > 0 => {
                let i = pick(*at);
                lines.truncate(i + 1);
                lines[i].truncate(*keep);
            }
            Mutation::Insert(at, text) => lines.insert(at % (len + 1), line(text)),
            Mutation::Replace(at, text) if len > 0 => lines[pick(*at)] = line(text),
            Mutation::FlipByte(at, byte, value) if len > 0 => {
                let i = pick(*at);
                if !lines[i].is_empty() {
                    let j = byte % lines[i].len();
                    lines[i][j] = *value;
                }
            }
            Mutation::Renumber(at, header) if len > 0 => {
                let start = pick(*at);
                if let Some(i) = (start..len)
                    .chain(0..start)
                    .find(|&i| lines[i].starts_with(b"@@ "))
                {
                    lines[i] = line(header);
                }
            }
            Mutation::Retime(at, timestamp) if len > 0 => {
                let start = pick(*at);
                if let Some(i) = (start..len)
                    .chain(0..start)
                    .find(|&i| lines[i].starts_with(b"--- ") || lines[i].starts_with(b"+++ "))
                {
                    let text = &lines[i];
                    let end = text
                        .iter()
                        .position(|&b| b == b'\t' || b == b'\n')
                        .unwrap_or(text.len());
                    let mut changed = text[..end].to_vec();
                    changed.extend_from_slice(timestamp.as_bytes());
                    changed.push(b'\n');
                    lines[i] = changed;
                }
            }
            _ => {}
        }
    }
    lines.concat()
}

fn strip_strategy() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![6 => Just(None), 1 => Just(Some(0)), 1 => Just(Some(1)), 1 => Just(Some(2))]
}

/// The tree most [`SEEDS`] apply to.
fn seed_tree() -> Tree {
    let file = |content: &str, mode: u32| Node::File {
        content: content.as_bytes().to_vec(),
        mode,
    };
    [
        ("f", file("a\nb\nc\n", 0o644)),
        ("g", file("x\n", 0o644)),
        ("d/h", file("a\n", 0o644)),
        ("with space", file("a\n\nb\n", 0o644)),
        ("café", file("a\n", 0o755)),
        (
            "l",
            Node::Symlink {
                target: "target".into(),
            },
        ),
    ]
    .into_iter()
    .map(|(path, node)| (path.to_owned(), node))
    .collect()
}

/// A valid patch to mutate: a seed (with the tree it applies to, or a random one), or
/// `diff_trees` of two random trees (with the old one, so unmutated cases apply).
fn base_strategy() -> BoxedStrategy<(Vec<u8>, Tree)> {
    let seed_trees = prop_oneof![Just(seed_tree()), tree_strategy()];
    prop_oneof![
        (prop::sample::select(SEEDS), seed_trees)
            .prop_map(|(seed, tree)| (seed.as_bytes().to_vec(), tree)),
        (tree_strategy(), tree_strategy())
            .prop_map(|(old, new)| (diff_trees(&old, &new).patch.into_bytes(), old)),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Properties

/// How the cases of one property ended.
#[derive(Debug, Default)]
struct Tally {
    parse_errors: Cell<u64>,
    apply_errors: Cell<u64>,
    applied: Cell<u64>,
}

impl Tally {
    fn count(&self, end: End) {
        let cell = match end {
            End::ParseError => &self.parse_errors,
            End::ApplyError => &self.apply_errors,
            End::Applied => &self.applied,
        };
        cell.set(cell.get() + 1);
    }
}

/// Runs one property for [`cases`] cases and prints how its inputs ended (shown with
/// `--nocapture`): the campaign's figures.
fn run<S>(name: &'static str, strategy: S, test: impl Fn(S::Value, &Tally) -> TestCaseResult)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        cases: cases(),
        // Relative to the crate, where `cargo test` runs.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        source_file: Some(file!()),
        test_name: Some(name),
        ..ProptestConfig::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let tally = Tally::default();
    let started = Instant::now();
    let result = runner.run(&strategy, |value| test(value, &tally));
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1?}; inputs ending in a parse error: {}, an apply \
         error: {}, applied: {}",
        started.elapsed(),
        tally.parse_errors.get(),
        tally.apply_errors.get(),
        tally.applied.get(),
    );
    if let Err(err) = result {
        panic!("fuzz {name}: {err}");
    }
}

/// The seeds are what they claim: valid patches, most of which apply to [`seed_tree`].
#[test]
fn seeds_parse_and_mostly_apply() {
    let tree = seed_tree();
    let mut applied = 0;
    for seed in SEEDS {
        match pyro_patch::parse(seed) {
            Ok(patch) => {
                applied += usize::from(apply(&patch, |path| state_of(&tree, path)).is_ok());
            }
            Err(err) => assert!(
                matches!(err.kind, pyro_patch::PatchErrorKind::Unsupported(_)),
                "{seed}: {err}"
            ),
        }
    }
    assert!(
        applied * 4 >= SEEDS.len() * 3,
        "{applied} of {} apply",
        SEEDS.len()
    );
}

/// Any bytes at all.
#[test]
fn arbitrary_bytes() {
    let inputs = (
        prop::collection::vec(any::<u8>(), 0..400),
        strip_strategy(),
        tree_strategy(),
    );
    run("arbitrary_bytes", inputs, |(patch, strip, tree), tally| {
        tally.count(check(&patch, strip, &tree)?);
        Ok(())
    });
}

/// Any text, and text made of patch-like lines in any order.
#[test]
fn arbitrary_strings() {
    let inputs = (
        any::<String>(),
        prop::collection::vec(header_line_strategy(), 0..12),
        strip_strategy(),
        tree_strategy(),
    );
    run(
        "arbitrary_strings",
        inputs,
        |(text, lines, strip, tree), tally| {
            tally.count(check(text.as_bytes(), strip, &tree)?);
            tally.count(check(lines.join("\n").as_bytes(), strip, &tree)?);
            Ok(())
        },
    );
}

/// Valid patches, mutated, applied to the tree they were made for and to another.
#[test]
fn mutated_patches() {
    let inputs = (
        base_strategy(),
        // Unmutated sometimes: `diff_trees` bases then apply, which reaches deepest.
        prop_oneof![
            1 => Just(Vec::new()),
            4 => prop::collection::vec(mutation_strategy(), 1..6),
        ],
        strip_strategy(),
        tree_strategy(),
    );
    run(
        "mutated_patches",
        inputs,
        |((base, tree), mutations, strip, other), tally| {
            let patch = mutate(&base, &mutations);
            tally.count(check(&patch, strip, &tree)?);
            tally.count(check(&patch, strip, &other)?);
            Ok(())
        },
    );
}
