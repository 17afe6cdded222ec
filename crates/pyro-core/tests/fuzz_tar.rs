//! Fuzzing the host's tar readers on stable Rust (proptest): everything a guest exports and
//! every seed archive a client names goes through them.
//!
//! Targets: [`extract_export`] (guest tar -> host directory, through descriptors), the seed
//! archive validator ([`Seed::write_tar`] on a `.tar`), and [`tree_from_tar`] (diff).
//! Inputs: arbitrary bytes, and well-formed archives of random members (hostile names with
//! `..`, absolute paths, non-UTF-8 bytes; symlinks with random targets and chains; hard links;
//! devices; huge declared sizes) then mutated (flipped bytes, truncation).
//! Properties: no panic; every call returns `Ok` or a typed `Err`; nothing is ever created
//! outside the export's output (the sandbox directory holds only the output or nothing, and
//! a sibling "outside" directory stays empty); a successful export holds no symlink whose
//! resolution on the host leaves the output.
//!
//! Budget: `PROPTEST_CASES` cases per property (default 256, about 10 s in a debug build on
//! a 2-core machine). A campaign: `PROPTEST_CASES=20000 cargo test -p pyro-core --release
//! --test fuzz_tar`. Crashers are kept as named regression inputs in `fuzz_corpus/` and
//! replayed by `corpus_inputs_are_handled`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use pyro_core::archive::{ExportTarget, Seed, TransferLimits, extract_export};
use pyro_core::hostfs::HostPath;
use pyro_core::workspace::tree_from_tar;

fn limits() -> TransferLimits {
    TransferLimits {
        max_seed_bytes: 1 << 20,
        max_export_bytes: 1 << 20,
        max_diff_bytes: 1 << 20,
        max_entries: 1000,
    }
}

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hard(Vec<u8>),
    Char,
    Fifo,
    /// A regular file header claiming a huge size with little data behind it.
    HugeClaim(u64),
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        Just(b"a".to_vec()),
        Just(b"b".to_vec()),
        Just(b"s".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"".to_vec()),
        Just(b"x\xff".to_vec()),
        Just(b"outside".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..4),
    ];
    (any::<bool>(), proptest::collection::vec(part, 1..4)).prop_map(|(abs, parts)| {
        let mut v = if abs { b"/".to_vec() } else { Vec::new() };
        v.extend(parts.join(&b'/'));
        v.truncate(99);
        v
    })
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
        Just(Kind::Dir),
        name_strategy().prop_map(Kind::Symlink),
        name_strategy().prop_map(Kind::Hard),
        Just(Kind::Char),
        Just(Kind::Fifo),
        any::<u64>().prop_map(Kind::HugeClaim),
    ]
}

fn build(members: &[(Vec<u8>, Kind)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind) in members {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        {
            let gnu = h.as_gnu_mut().unwrap();
            let n = name.len().min(99);
            gnu.name[..n].copy_from_slice(&name[..n]);
        }
        let mut data: Vec<u8> = Vec::new();
        match kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                data = d.clone();
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            }
            Kind::Symlink(t) | Kind::Hard(t) => {
                h.set_entry_type(if matches!(kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_size(0);
                let n = t.len().min(99);
                h.as_gnu_mut().unwrap().linkname[..n].copy_from_slice(&t[..n]);
            }
            Kind::Char => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_size(0);
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
            }
            Kind::HugeClaim(n) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*n);
                data = vec![7u8; 100];
            }
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn archive_strategy() -> impl Strategy<Value = Vec<u8>> {
    let members = proptest::collection::vec((name_strategy(), kind_strategy()), 0..8);
    (
        members,
        any::<u16>(),
        any::<u8>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(m, flip_at, flip, truncate, cut)| {
            let mut t = build(&m);
            if flip != 0 && !t.is_empty() {
                let i = flip_at as usize % t.len();
                t[i] ^= flip;
            }
            if truncate && !t.is_empty() {
                t.truncate(cut as usize % t.len());
            }
            t
        })
}

/// Every path below `dir` (symlinks not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, out);
        }
    }
}

/// Removes whatever is at `p` (file, link or tree).
fn clear(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Runs every reader on `bytes` and checks the properties.
fn check(bytes: &[u8]) {
    let t = tempfile::tempdir().unwrap();
    let sandbox = t.path().join("sandbox");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let out = sandbox.join("out");
    for single in [false, true] {
        clear(&out);
        let target = ExportTarget::prepare(&HostPath::local(&out)).unwrap();
        let res = extract_export(bytes, &target, single, &limits());
        let names: Vec<_> = std::fs::read_dir(&sandbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        match res {
            Ok(_) => assert_eq!(names, ["out"], "single={single}"),
            Err(_) => assert!(names.is_empty(), "left after a failure: {names:?}"),
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Every symlink of a successful export resolves inside the output (or dangles).
        let mut all = Vec::new();
        walk(&sandbox, &mut all);
        let root = sandbox.canonicalize().unwrap();
        for p in all {
            if let Ok(c) = std::fs::canonicalize(&p) {
                assert!(
                    c.starts_with(&root),
                    "{} resolves to {}",
                    p.display(),
                    c.display()
                );
            }
        }
    }
    // The seed validator.
    let seed = t.path().join("seed.tar");
    std::fs::File::create(&seed)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    if let Ok(s) = Seed::resolve(&seed) {
        let res = s.write_tar(&t.path().join("base.tar"), &limits());
        if res.is_ok() {
            // What the validator accepts, the export reader accepts too.
            let data = std::fs::read(t.path().join("base.tar")).unwrap();
            clear(&out);
            let target = ExportTarget::prepare(&HostPath::local(&out)).unwrap();
            let _ = extract_export(&data[..], &target, false, &limits());
        }
    }
    // The diff reader.
    let _ = tree_from_tar(bytes, 1 << 20, 1000);
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_are_refused_or_handled(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }

    #[test]
    fn hostile_archives_are_refused_or_handled(bytes in archive_strategy()) {
        check(&bytes);
    }
}

/// The diff reader refuses more members than its limit (the guest chooses how many).
#[test]
fn the_diff_reader_bounds_its_member_count() {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..11 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("f{i}"), std::io::empty())
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    assert_eq!(tree_from_tar(&tar[..], 1 << 20, 11).unwrap().len(), 11);
    let e = tree_from_tar(&tar[..], 1 << 20, 10).unwrap_err();
    assert!(e.to_string().contains("PYRO_MAX_ARCHIVE_ENTRIES"), "{e}");
}

/// Named inputs (crashers and hand-made attacks) kept as regression tests.
#[test]
fn corpus_inputs_are_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tar") {
            check(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

/// The review's F3 chain, as a file in the corpus, is refused.
#[test]
fn the_reviews_chain_is_in_the_corpus_and_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let bytes = std::fs::read(dir.join("chain-s-dot-up.tar")).unwrap();
    let t = tempfile::tempdir().unwrap();
    let target = ExportTarget::prepare(&HostPath::local(&t.path().join("o"))).unwrap();
    assert!(extract_export(&bytes[..], &target, false, &limits()).is_err());
}
