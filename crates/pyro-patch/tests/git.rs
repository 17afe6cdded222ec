//! Checks against the real `git`: its `git diff` output must parse and apply to exactly the
//! new tree, and our `diff_trees` patch must pass `git apply --check` and `git apply` to the
//! same tree. Property tests then round-trip random edits through `diff_trees`, `parse` and
//! `apply` without git.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};

use proptest::prelude::*;
use pyro_patch::{
    ApplyError, BlobHasher, FileState, HunkFailure, Node, Outcome, PatchErrorKind, Tree,
    Unsupported, apply, diff_trees, parse, parse_bytes,
};

// ---------------------------------------------------------------------------------------
// Helpers

fn git(dir: &Path, args: &[&str]) -> Output {
    let output = git_try(dir, args);
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs git and returns its output, whether it succeeded or not.
fn git_try(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "core.autocrlf=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .output()
        .expect("git runs")
}

fn file(content: impl AsRef<[u8]>) -> Node {
    Node::File {
        content: content.as_ref().to_vec(),
        mode: 0o644,
    }
}

fn exe(content: impl AsRef<[u8]>) -> Node {
    Node::File {
        content: content.as_ref().to_vec(),
        mode: 0o755,
    }
}

fn link(target: &str) -> Node {
    Node::Symlink {
        target: target.into(),
    }
}

fn tree(entries: Vec<(&str, Node)>) -> Tree {
    entries
        .into_iter()
        .map(|(p, n)| (p.to_owned(), n))
        .collect()
}

/// Modes compared as git sees them: executable or not.
fn normalized(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(path, node)| {
            let node = match node {
                Node::File { content, mode } => Node::File {
                    content: content.clone(),
                    mode: if mode & 0o100 != 0 { 0o755 } else { 0o644 },
                },
                other => other.clone(),
            };
            (path.clone(), node)
        })
        .collect()
}

fn write_tree(root: &Path, tree: &Tree) {
    for (path, node) in tree {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        match node {
            Node::File { content, mode } => {
                fs::write(&full, content).unwrap();
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Symlink { target } => symlink(target, &full).unwrap(),
            Node::Dir { mode } => {
                fs::create_dir_all(&full).unwrap();
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Large { .. } => panic!("{path}: a Large node has no content to write"),
        }
    }
}

fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if rel == ".git" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, link(target.to_str().unwrap()));
            } else if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    Node::File {
                        content: fs::read(&path).unwrap(),
                        mode: meta.permissions().mode() & 0o777,
                    },
                );
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

fn clear_worktree(root: &Path) {
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
}

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

/// Applies `patch` to `old` through the crate and returns the resulting tree.
fn apply_to(old: &Tree, patch: impl AsRef<[u8]>) -> Result<Tree, String> {
    let patch = patch.as_ref();
    if patch.is_empty() {
        return Ok(old.clone());
    }
    let parsed = parse_bytes(patch).map_err(|e| e.to_string())?;
    let outcomes = apply(&parsed, |p| state_of(old, p)).map_err(|e| e.to_string())?;
    let mut result = old.clone();
    for outcome in outcomes {
        match outcome {
            Outcome::Delete { path } => {
                assert!(result.remove(&path).is_some(), "deleting absent {path}");
            }
            Outcome::Write {
                path,
                content,
                mode,
            } => {
                let node = if mode & 0o170000 == 0o120000 {
                    link(&String::from_utf8(content).unwrap())
                } else {
                    Node::File { content, mode }
                };
                result.insert(path, node);
            }
        }
    }
    Ok(result)
}

fn is_binary(tree: &Tree) -> bool {
    tree.values().any(|node| match node {
        Node::File { content, .. } => content.contains(&0) || std::str::from_utf8(content).is_err(),
        _ => false,
    })
}

/// The full check for one pair of trees (files and symlinks only: git has no directories).
fn check_case(name: &str, old: &Tree, new: &Tree) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    write_tree(root, old);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "--allow-empty", "-m", "old"]);
    clear_worktree(root);
    write_tree(root, new);
    git(root, &["add", "-A"]);

    // 1. git's own diffs, in several flavours, parse and apply to exactly the new tree.
    let binary = is_binary(old) || is_binary(new);
    for flavour in [
        &["diff", "--cached"][..],
        &["diff", "--cached", "-M"],
        &["diff", "--cached", "--no-prefix", "-M"],
        &["diff", "--cached", "-U1"],
        &["diff", "--cached", "-U0", "--no-renames"],
        &["diff", "--cached", "-U7", "-M"],
    ] {
        let patch = git(root, flavour).stdout;
        let result = apply_to(old, &patch);
        if binary {
            let err = parse_bytes(&patch).unwrap_err();
            assert_eq!(
                err.kind,
                PatchErrorKind::Unsupported(Unsupported::Binary),
                "{name}: {err}"
            );
            assert!(err.file.is_some(), "{name}: {err}");
            continue;
        }
        let shown = String::from_utf8_lossy(&patch);
        let result = result.unwrap_or_else(|e| panic!("{name} {flavour:?}: {e}\n{shown}"));
        assert_eq!(
            normalized(&result),
            normalized(new),
            "{name} {flavour:?}\n{shown}"
        );
    }

    // 2. Our patch: git accepts it and produces the new tree.
    git(root, &["reset", "-q", "--hard"]);
    assert_eq!(
        normalized(&read_tree(root)),
        normalized(old),
        "{name}: reset"
    );
    let diff = diff_trees(old, new);
    let patch_file = dir.path().join(".git").join("ours.patch");
    fs::write(&patch_file, &diff.patch).unwrap();
    let patch_arg = patch_file.to_str().unwrap();
    git(root, &["apply", "--check", patch_arg]);
    git(root, &["apply", patch_arg]);
    assert_eq!(
        normalized(&read_tree(root)),
        normalized(new),
        "{name}: git apply of ours\n{}",
        diff.patch
    );

    // 3. And ours round-trips through the crate itself.
    if !binary {
        let result =
            apply_to(old, &diff.patch).unwrap_or_else(|e| panic!("{name}: {e}\n{}", diff.patch));
        assert_eq!(
            normalized(&result),
            normalized(new),
            "{name}: own round trip\n{}",
            diff.patch
        );
    }
}

fn numbered(count: usize) -> String {
    (1..=count).map(|i| format!("line {i}\n")).collect()
}

// ---------------------------------------------------------------------------------------
// Cases against git

#[test]
fn git_creation_and_deletion() {
    check_case(
        "create",
        &tree(vec![]),
        &tree(vec![
            ("new.txt", file("hello\n")),
            ("d/e/deep.txt", file("x\ny\n")),
        ]),
    );
    check_case(
        "delete",
        &tree(vec![("gone.txt", file("a\nb\n")), ("keep", file("k\n"))]),
        &tree(vec![("keep", file("k\n"))]),
    );
    check_case(
        "create executable",
        &tree(vec![]),
        &tree(vec![("run.sh", exe("#!/bin/sh\necho hi\n"))]),
    );
}

#[test]
fn git_modification() {
    let old = numbered(20);
    let new = old
        .replace("line 10\n", "line ten\n")
        .replace("line 2\n", "");
    check_case(
        "modify",
        &tree(vec![("f.txt", file(&old))]),
        &tree(vec![("f.txt", file(&new))]),
    );
    check_case(
        "several files",
        &tree(vec![
            ("a", file("1\n2\n3\n")),
            ("b/c", file("x\n")),
            ("z", file("z\n")),
        ]),
        &tree(vec![
            ("a", file("1\n2\n3\n4\n")),
            ("b/c", file("y\n")),
            ("new", file("n\n")),
        ]),
    );
}

#[test]
fn git_renames() {
    let content = numbered(12);
    check_case(
        "pure rename",
        &tree(vec![("old/name.txt", file(&content))]),
        &tree(vec![("new/name.txt", file(&content))]),
    );
    let edited = content.replace("line 6\n", "line six\n");
    check_case(
        "rename with edits",
        &tree(vec![("a.txt", file(&content))]),
        &tree(vec![("b.txt", file(&edited))]),
    );
    check_case(
        "rename with mode change",
        &tree(vec![("a.sh", file(&content))]),
        &tree(vec![("b.sh", exe(&content))]),
    );
}

#[test]
fn git_mode_changes() {
    check_case(
        "chmod +x",
        &tree(vec![("run.sh", file("#!/bin/sh\n"))]),
        &tree(vec![("run.sh", exe("#!/bin/sh\n"))]),
    );
    check_case(
        "chmod -x",
        &tree(vec![("run.sh", exe("#!/bin/sh\n"))]),
        &tree(vec![("run.sh", file("#!/bin/sh\n"))]),
    );
    check_case(
        "chmod and edit",
        &tree(vec![("run.sh", file("#!/bin/sh\n"))]),
        &tree(vec![("run.sh", exe("#!/bin/sh\necho\n"))]),
    );
}

#[test]
fn git_missing_final_newlines() {
    check_case(
        "old lacks newline",
        &tree(vec![("f", file("a\nb"))]),
        &tree(vec![("f", file("a\nb\n"))]),
    );
    check_case(
        "new lacks newline",
        &tree(vec![("f", file("a\nb\n"))]),
        &tree(vec![("f", file("a\nc"))]),
    );
    check_case(
        "both lack newline",
        &tree(vec![("f", file("x\ny\nz"))]),
        &tree(vec![("f", file("x\nY\nz"))]),
    );
    check_case(
        "unchanged last line without newline",
        &tree(vec![("f", file(format!("{}end", numbered(9))))]),
        &tree(vec![(
            "f",
            file(format!("{}end", numbered(9).replace("line 2\n", "two\n"))),
        )]),
    );
    check_case(
        "single line without newline",
        &tree(vec![("f", file("x"))]),
        &tree(vec![("f", file("y"))]),
    );
    check_case(
        "added without newline",
        &tree(vec![]),
        &tree(vec![("f", file("only"))]),
    );
    check_case(
        "deleted without newline",
        &tree(vec![("f", file("only"))]),
        &tree(vec![]),
    );
}

#[test]
fn git_crlf_and_whitespace() {
    check_case(
        "crlf",
        &tree(vec![("w.txt", file("a\r\nb\r\nc\r\n"))]),
        &tree(vec![("w.txt", file("a\r\nB\r\nc\r\n"))]),
    );
    check_case(
        "lf to crlf",
        &tree(vec![("w.txt", file("a\nb\n"))]),
        &tree(vec![("w.txt", file("a\r\nb\r\n"))]),
    );
    check_case(
        "blank lines",
        &tree(vec![("b", file("a\n\n\nb\n\n"))]),
        &tree(vec![("b", file("a\n\nb\n\n\n"))]),
    );
    check_case(
        "trailing spaces",
        &tree(vec![("s", file("a \n\tb\n"))]),
        &tree(vec![("s", file("a\n\tb \n"))]),
    );
}

#[test]
fn git_empty_files() {
    check_case(
        "create empty",
        &tree(vec![]),
        &tree(vec![("empty", file(""))]),
    );
    check_case(
        "delete empty",
        &tree(vec![("empty", file(""))]),
        &tree(vec![]),
    );
    check_case(
        "fill empty",
        &tree(vec![("e", file(""))]),
        &tree(vec![("e", file("now\n"))]),
    );
    check_case(
        "empty out",
        &tree(vec![("e", file("was\nhere\n"))]),
        &tree(vec![("e", file(""))]),
    );
}

#[test]
fn git_binary_files() {
    let old = tree(vec![
        ("img.bin", file([0u8, 1, 2, 3, 255])),
        ("latin1.txt", file(b"caf\xe9\n")),
    ]);
    let new = tree(vec![
        ("img.bin", file([0u8, 1, 2, 4, 255])),
        ("new.bin", file([0u8; 16])),
    ]);
    check_case("binary", &old, &new);
    let diff = diff_trees(&old, &new);
    assert_eq!(diff.summary.non_text, 3);
    assert_eq!(diff.summary.text_patched, 0);
}

/// `tree` with every regular file replaced by the [`Node::Large`] of the same content.
fn as_large(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(path, node)| {
            let node = match node {
                Node::File { content, mode } => {
                    let mut hasher = BlobHasher::new(content.len() as u64);
                    for piece in content.chunks(2) {
                        hasher.update(piece);
                    }
                    Node::Large {
                        size: content.len() as u64,
                        id: hasher.finish(),
                        mode: *mode,
                    }
                }
                other => other.clone(),
            };
            (path.clone(), node)
        })
        .collect()
}

#[test]
fn git_applies_large_file_stanzas() {
    let old = tree(vec![
        ("img.bin", file([0u8, 1, 2, 3, 255])),
        ("notes.txt", file("a\nb\n")),
        ("gone.bin", file([0u8; 4])),
        ("run", file("#!/bin/sh\n")),
        ("same.txt", file("same\n")),
    ]);
    let new = tree(vec![
        ("img.bin", file([0u8, 1, 2, 4, 255])),
        ("notes.txt", file("a\nc\n")),
        ("new.bin", exe([0u8, 7, 7, 7, 7])),
        ("run", exe("#!/bin/sh\n")),
        ("same.txt", file("same\n")),
        ("empty", file("")),
    ]);
    // A repository holding both trees' blobs (as the host's would), checked out at the old.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    write_tree(root, &new);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "new"]);
    clear_worktree(root);
    write_tree(root, &old);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "old"]);

    let sides = [
        (as_large(&old), as_large(&new)),
        (old.clone(), as_large(&new)),
        (as_large(&old), new.clone()),
    ];
    for (a, b) in &sides {
        let diff = diff_trees(a, b);
        let statuses: Vec<(&str, bool)> = diff
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.text_patch.is_some()))
            .collect();
        // Everything with content is binary; the empty file and the mode change keep a
        // text patch.
        assert_eq!(
            statuses,
            [
                ("empty", true),
                ("gone.bin", false),
                ("img.bin", false),
                ("new.bin", false),
                ("notes.txt", false),
                ("run", true),
            ]
        );
        let patch_file = root.join(".git").join("large.patch");
        fs::write(&patch_file, &diff.patch).unwrap();
        let patch_arg = patch_file.to_str().unwrap();
        git(root, &["apply", "--check", patch_arg]);
        git(root, &["apply", patch_arg]);
        assert_eq!(
            normalized(&read_tree(root)),
            normalized(&new),
            "{}",
            diff.patch
        );
        git(root, &["reset", "-q", "--hard"]);
        git(root, &["clean", "-q", "-f", "-d"]);
        assert_eq!(normalized(&read_tree(root)), normalized(&old));
    }
    // Where both sides are binary anyway, large or held gives the same patch.
    let binaries = |t: &Tree| -> Tree {
        t.iter()
            .filter(|(p, _)| p.ends_with(".bin"))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect()
    };
    let held = diff_trees(&binaries(&old), &binaries(&new));
    for (a, b) in &sides {
        assert_eq!(diff_trees(&binaries(a), &binaries(b)), held);
    }
}

#[test]
fn git_and_we_refuse_mode_lines_that_change_the_file_type() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    let old = tree(vec![("f", file("target")), ("l", link("x"))]);
    write_tree(root, &old);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "old"]);
    for (path, patch) in [
        (
            "f",
            "diff --git a/f b/f\nold mode 100644\nnew mode 120000\n",
        ),
        (
            "l",
            "diff --git a/l b/l\nold mode 120000\nnew mode 100644\n",
        ),
        (
            "l",
            "diff --git a/l b/l\nold mode 120000\nnew mode 100755\n",
        ),
    ] {
        let patch_file = root.join(".git").join("mode.patch");
        fs::write(&patch_file, patch).unwrap();
        let output = git_try(root, &["apply", "--check", patch_file.to_str().unwrap()]);
        assert!(!output.status.success(), "git applied {patch:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("does not match old mode"), "{stderr}");

        let err = apply(&parse(patch).unwrap(), |p| state_of(&old, p)).unwrap_err();
        assert!(
            matches!(&err, ApplyError::TypeChangingMode { path: p, .. } if p == path),
            "{err}"
        );
    }
}

#[test]
fn git_large_file_with_hunks_at_both_ends() {
    let old = numbered(2000);
    let new = format!(
        "first\n{}",
        old.replace("line 1000\n", "middle\n")
            .replace("line 2000\n", "line 2000\nlast\n")
    );
    check_case(
        "2000 lines",
        &tree(vec![("big.txt", file(&old))]),
        &tree(vec![("big.txt", file(&new))]),
    );
    let diff = diff_trees(
        &tree(vec![("big.txt", file(&old))]),
        &tree(vec![("big.txt", file(&new))]),
    );
    assert_eq!(diff.patch.matches("\n@@ ").count(), 3, "{}", diff.patch);
}

#[test]
fn git_unicode_and_odd_names() {
    check_case(
        "unicode",
        &tree(vec![
            ("café/naïve.txt", file("héllo wörld\n日本語\n")),
            ("with space.txt", file("a\n")),
        ]),
        &tree(vec![
            ("café/naïve.txt", file("héllo wörld\n中文\n🦀\n")),
            ("with space.txt", file("b\n")),
        ]),
    );
    check_case(
        "quoted names",
        &tree(vec![
            ("tab\there", file("1\n")),
            ("quote\"name", file("2\n")),
            ("back\\slash", file("3\n")),
        ]),
        &tree(vec![
            ("tab\there", file("one\n")),
            ("quote\"name", file("two\n")),
            ("new\nline", file("4\n")),
        ]),
    );
    check_case(
        "rename with spaces",
        &tree(vec![("a b/c d.txt", file(numbered(8)))]),
        &tree(vec![("e f/g h.txt", file(numbered(8)))]),
    );
}

#[test]
fn git_symlinks() {
    check_case(
        "add symlink",
        &tree(vec![("t", file("x\n"))]),
        &tree(vec![("t", file("x\n")), ("l", link("t"))]),
    );
    check_case(
        "retarget symlink",
        &tree(vec![("l", link("a"))]),
        &tree(vec![("l", link("b/c"))]),
    );
    check_case(
        "file becomes symlink",
        &tree(vec![("p", file("x\n"))]),
        &tree(vec![("p", link("elsewhere"))]),
    );
    check_case(
        "symlink becomes file",
        &tree(vec![("p", link("elsewhere"))]),
        &tree(vec![("p", exe("x\n"))]),
    );
    check_case(
        "file becomes directory",
        &tree(vec![("p", file("x\n"))]),
        &tree(vec![("p/inner", file("y\n"))]),
    );
}

#[test]
fn git_diff_applies_at_an_offset() {
    // A patch made against one version still applies after lines were inserted above.
    let old = numbered(50);
    let new = old.replace("line 40\n", "line forty\n");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    write_tree(root, &tree(vec![("f", file(&old))]));
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "old"]);
    write_tree(root, &tree(vec![("f", file(&new))]));
    let patch = String::from_utf8(git(root, &["diff"]).stdout).unwrap();
    let shifted = format!("inserted 1\ninserted 2\ninserted 3\n{old}");
    let result = apply_to(&tree(vec![("f", file(&shifted))]), &patch).unwrap();
    assert_eq!(
        result,
        tree(vec![(
            "f",
            file(format!("inserted 1\ninserted 2\ninserted 3\n{new}"))
        )])
    );
}

#[test]
fn git_diff_context_mismatch_names_the_hunk() {
    let old = numbered(60);
    let new = old
        .replace("line 5\n", "five\n")
        .replace("line 50\n", "fifty\n");
    let patch = diff_trees(
        &tree(vec![("f", file(&old))]),
        &tree(vec![("f", file(&new))]),
    )
    .patch;
    let drifted = old.replace("line 49\n", "changed meanwhile\n");
    let parsed = parse(&patch).unwrap();
    let err = apply(&parsed, |_| {
        Some(FileState {
            content: drifted.clone().into_bytes(),
            mode: 0o644,
        })
    })
    .unwrap_err();
    match err {
        ApplyError::HunkFailed {
            path,
            hunk,
            expected_at_line,
            reason: HunkFailure::Mismatch { line, .. },
            ..
        } => {
            assert_eq!(
                (path.as_str(), hunk, expected_at_line, line),
                ("f", 2, 47, 49)
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn git_diff_with_stripped_blank_context_lines_applies() {
    // Editors that trim trailing whitespace turn a " " context line into an empty line.
    let old = "fn a() {\n\n    1\n\n}\n\nfn b() {}\n";
    let new = "fn a() {\n\n    2\n\n}\n\nfn b() {}\n";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    write_tree(root, &tree(vec![("f.rs", file(old))]));
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "old"]);
    write_tree(root, &tree(vec![("f.rs", file(new))]));
    let patch = String::from_utf8(git(root, &["diff"]).stdout).unwrap();
    let trimmed: String = patch
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    assert_ne!(trimmed, patch);
    let result = apply_to(&tree(vec![("f.rs", file(old))]), &trimmed).unwrap();
    assert_eq!(result, tree(vec![("f.rs", file(new))]));
}

#[test]
fn gnu_diff_output_applies() {
    let dir = tempfile::tempdir().unwrap();
    let old = tree(vec![
        ("keep.txt", file("a\nb\nc\n")),
        ("gone.txt", file("bye\n")),
        ("d/x", file("1\n2")),
    ]);
    let new = tree(vec![
        ("keep.txt", file("a\nB\nc\n")),
        ("d/x", file("1\n2\n")),
        ("d/new.txt", file("hi\n")),
    ]);
    write_tree(&dir.path().join("old"), &old);
    write_tree(&dir.path().join("new"), &new);
    let output = Command::new("diff")
        .args(["-ruN", "old", "new"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let patch = String::from_utf8(output.stdout).unwrap();
    let result = apply_to(&old, &patch).unwrap_or_else(|e| panic!("{e}\n{patch}"));
    assert_eq!(normalized(&result), normalized(&new), "{patch}");
}

// ---------------------------------------------------------------------------------------
// Properties

fn text_strategy() -> impl Strategy<Value = String> {
    // Few distinct lines, so diffs have repeated context to get confused by.
    let line = prop::sample::select(vec!["a", "b", "c", "", " ", "a b", "é", "a\r", "}"]);
    (prop::collection::vec(line, 0..24), any::<bool>()).prop_map(|(lines, final_newline)| {
        let mut text = lines.join("\n");
        if final_newline && !lines.is_empty() {
            text.push('\n');
        }
        text
    })
}

/// Random line edits of a text: deletions, insertions, replacements.
fn edited(text: &str, edits: &[(usize, u8, &str)]) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for &(at, op, with) in edits {
        let at = if lines.is_empty() {
            0
        } else {
            at % (lines.len() + 1)
        };
        match op % 3 {
            0 if at < lines.len() => {
                lines.remove(at);
            }
            1 => lines.insert(at, format!("{with}\n")),
            _ if at < lines.len() => lines[at] = format!("{with}\n"),
            _ => lines.push(with.to_owned()),
        }
    }
    lines.concat()
}

fn edits_strategy() -> impl Strategy<Value = Vec<(usize, u8, &'static str)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            any::<u8>(),
            prop::sample::select(vec!["a", "new", "", "c", "x y"]),
        ),
        0..6,
    )
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    let paths = ["f", "d/g", "with space", "d/e/h", "x"];
    prop::collection::vec(
        (
            prop::option::of(text_strategy()),
            any::<bool>(),
            any::<bool>(),
        ),
        paths.len(),
    )
    .prop_map(move |entries| {
        paths
            .iter()
            .zip(entries)
            .filter_map(|(path, (content, executable, is_link))| {
                let content = content?;
                let node = if is_link
                    && !content.is_empty()
                    && !content.contains('\n')
                    && !content.contains('\r')
                {
                    link(&content)
                } else {
                    Node::File {
                        content: content.into_bytes(),
                        mode: if executable { 0o755 } else { 0o644 },
                    }
                };
                Some((path.to_string(), node))
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_edits_round_trip(a in text_strategy(), edits in edits_strategy()) {
        let b = edited(&a, &edits);
        let old = tree(vec![("f", file(&a))]);
        let new = tree(vec![("f", file(&b))]);
        let diff = diff_trees(&old, &new);
        let result = apply_to(&old, &diff.patch).map_err(|e| TestCaseError::fail(format!("{e}\n{}", diff.patch)))?;
        prop_assert_eq!(result, new, "{}", diff.patch);
    }

    #[test]
    fn random_trees_round_trip(old in tree_strategy(), new in tree_strategy()) {
        let diff = diff_trees(&old, &new);
        let result = apply_to(&old, &diff.patch).map_err(|e| TestCaseError::fail(format!("{e}\n{}", diff.patch)))?;
        prop_assert_eq!(normalized(&result), normalized(&new), "{}", diff.patch);
        prop_assert_eq!(diff.summary.total, diff.entries.len());
        prop_assert_eq!(diff.summary.text_patched + diff.summary.non_text, diff.summary.total);
    }

    #[test]
    fn patches_apply_after_unrelated_lines_are_inserted_above(
        count in 1usize..40,
        edits in edits_strategy(),
        shift in 1usize..20,
    ) {
        // Unique lines: there is exactly one right place for every hunk.
        let a = numbered(count);
        let b = edited(&a, &edits);
        let patch = diff_trees(&tree(vec![("f", file(&a))]), &tree(vec![("f", file(&b))])).patch;
        prop_assume!(!patch.is_empty());
        let prefix: String = (0..shift).map(|i| format!("unrelated {i}\n")).collect();
        let result = apply_to(&tree(vec![("f", file(format!("{prefix}{a}")))]), &patch)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{patch}")))?;
        prop_assert_eq!(result, tree(vec![("f", file(format!("{prefix}{b}")))]), "{}", patch);
    }

    #[test]
    fn parse_never_panics(lines in prop::collection::vec(prop::sample::select(vec![
        "diff --git a/x b/x", "--- a/x", "+++ b/x", "--- /dev/null", "+++ /dev/null", "@@ -1,2 +1 @@",
        "@@ -0,0 +1 @@", " a", "-a", "+b", "", "\\ No newline at end of file", "new file mode 100644",
        "deleted file mode 100755", "rename from y", "rename to z", "old mode 100644", "index 1..2 120000",
        "diff --git \"a/q\\", "-- ", "Binary files a/x and b/x differ",
    ]), 0..16)) {
        let _ = parse(&lines.join("\n"));
        let _ = parse(&format!("{}\n", lines.join("\n")));
    }
}
