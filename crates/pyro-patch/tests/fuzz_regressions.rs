//! Inputs that once made `parse` or `apply` misbehave (found by `tests/fuzz.rs`, or
//! reported), each kept as a named test with the outcome it must have now.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use pyro_patch::{ApplyError, FileKind, FileState, PatchErrorKind, apply, parse, parse_bytes};

/// Parses and applies `patch` to a tree holding one regular file `f` (`a\n`).
fn parse_and_apply(patch: &[u8]) -> Result<(), String> {
    let parsed = parse_bytes(patch).map_err(|e| e.to_string())?;
    apply(&parsed, |path| {
        (path == "f").then(|| FileState {
            content: b"a\n".to_vec(),
            mode: 0o644,
        })
    })
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Found by the fuzzer: a `diff -u` timestamp with a day number of 15 digits overflowed the
/// epoch check's arithmetic (a panic in debug builds, a wrapped value in release).
#[test]
fn timestamp_with_a_huge_day_number() {
    let patch = parse("--- a/f\n+++ a/f\t0-0-106751991886861 0:0:0.000 +1000\n").unwrap_err();
    assert_eq!(patch.kind, PatchErrorKind::NoChanges);
    // Every field at its extreme, with hunks, on both labels.
    for stamp in [
        "\t9223372036854775807-12-31 00:00:00 +0000",
        "\t-9223372036854775808-01-01 00:00:00 +0000",
        "\t1970-01-01 9223372036854775807:00:00 +0000",
        "\t1970-01-01 00:00:00 +9999999999999999999",
        "\t1970-01-01 00:00:00 -99",
        "\t1970-99999999999999-01 00:00:00 +0000",
    ] {
        let patch = format!("--- a/f{stamp}\n+++ b/f{stamp}\n@@ -1 +1 @@\n-a\n+b\n");
        let parsed = parse(&patch).unwrap();
        assert_eq!(parsed.files[0].kind, FileKind::Modified, "{stamp}");
        assert!(parse_and_apply(patch.as_bytes()).is_ok(), "{stamp}");
    }
    // The epoch itself still means "absent", in any zone.
    let added = parse(
        "--- old/f\t1969-12-31 19:00:00.000000000 -0500\n+++ new/f\t2024-01-01 00:00:00 +0000\n@@ -0,0 +1 @@\n+x\n",
    )
    .unwrap();
    assert_eq!(added.files[0].kind, FileKind::Added);
}

/// Reported: a hunk header with a count of 2^64-1 was accepted by the header parser.
#[test]
fn hunk_count_of_two_to_the_64_minus_one() {
    for header in [
        "@@ -1,18446744073709551615 +1 @@",
        "@@ -1 +1,18446744073709551615 @@",
        "@@ -1,18446744073709551615 +1,18446744073709551615 @@",
    ] {
        let err = parse(&format!("--- a/f\n+++ b/f\n{header}\n-a\n+b\n")).unwrap_err();
        assert!(
            matches!(err.kind, PatchErrorKind::HunkTooLong { available: 2, .. }),
            "{header}: {err}"
        );
        assert_eq!((err.line, err.hunk), (3, Some(1)));
    }
    for header in [
        "@@ -18446744073709551615 +1 @@",
        "@@ -18446744073709551616,1 +1 @@",
        "@@ -1,18446744073709551616 +1 @@",
        "@@ -1 +9223372036854775808,0 @@",
    ] {
        let err = parse(&format!("--- a/f\n+++ b/f\n{header}\n-a\n+b\n")).unwrap_err();
        assert!(
            matches!(err.kind, PatchErrorKind::BadHunkHeader { .. }),
            "{header}: {err}"
        );
    }
    // The largest line number accepted, on both sides, applies at an offset like any.
    let patch = "--- a/f\n+++ b/f\n@@ -9223372036854775807 +9223372036854775807 @@\n-a\n+b\n";
    assert_eq!(parse_and_apply(patch.as_bytes()), Ok(()));
}

/// Reported: a mode-only change from a regular file to a symlink (or back) was applied;
/// `git apply` refuses it.
#[test]
fn mode_only_change_between_file_and_symlink() {
    for (old, new) in [
        ("100644", "120000"),
        ("120000", "100644"),
        ("100755", "120000"),
    ] {
        let patch = parse(&format!(
            "diff --git a/f b/f\nold mode {old}\nnew mode {new}\n"
        ))
        .unwrap();
        assert_eq!(patch.files[0].kind, FileKind::ModeChanged);
        let err = apply(&patch, |_| {
            Some(FileState {
                content: b"a\n".to_vec(),
                mode: if old == "120000" { 0o120777 } else { 0o100644 },
            })
        })
        .unwrap_err();
        assert!(
            matches!(err, ApplyError::TypeChangingMode { .. }),
            "{old} -> {new}: {err}"
        );
    }
}

/// Found by auditing for unbounded work: a `diff --git` line of many spaces took time
/// quadratic in its length (about 40 s for a 1 MB line in a release build) while its names
/// were split. Now linear: well under a second even in a debug build.
#[test]
fn git_header_of_many_spaces() {
    for names in [
        "a ".repeat(100_000),
        "a/ ".repeat(70_000),
        "a/b ".repeat(50_000),
    ] {
        let patch = format!("diff --git {names}\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n");
        let started = std::time::Instant::now();
        let parsed = parse(&patch);
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "{} bytes took {elapsed:?}",
            patch.len()
        );
        assert_eq!(parsed.unwrap().files[0].path(), "f");
    }
}
