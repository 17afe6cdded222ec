//! Archive tests: seeds, link and tree checks, limits, and export extraction.

use super::*;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::hostfs::{HostDir, HostPath};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

fn limits() -> TransferLimits {
    TransferLimits::default()
}

fn target(dir: &Path, name: &str) -> ExportTarget {
    ExportTarget::prepare(&HostPath::local(&dir.join(name))).unwrap()
}

fn seed_tar(root: &Path, out: &Path) -> Result<TarStats> {
    Seed::resolve(root)?.write_tar(out, &limits())
}

/// A tar with the given members: (name, kind, data or link target).
fn make_tar(members: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
        }
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_size(0);
            h.as_gnu_mut().unwrap().linkname[..data.len()].copy_from_slice(data);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn limits_come_from_the_environment_or_are_refused_by_name() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        TransferLimits::from_lookup(env(&[])).unwrap(),
        TransferLimits::default()
    );
    let l = TransferLimits::from_lookup(env(&[("PYRO_MAX_DIFF_BYTES", " 1024 ")])).unwrap();
    assert_eq!(l.max_diff_bytes, 1024);
    for bad in ["0", "-1", "lots", ""] {
        let pairs: &'static [(&str, &str)] =
            Box::leak(vec![("PYRO_MAX_EXPORT_BYTES", bad)].into_boxed_slice());
        let e = TransferLimits::from_lookup(env(pairs)).unwrap_err();
        assert!(e.to_string().contains("PYRO_MAX_EXPORT_BYTES"), "{e}");
    }
}

#[test]
fn member_names_are_normalized_or_refused() {
    assert_eq!(normalize_member("./a//b/").unwrap(), "a/b");
    assert!(normalize_member("../a").is_err());
    assert!(normalize_member("a/../../b").is_err());
    assert!(normalize_member("/etc/passwd").is_err());
    assert!(normalize_member(".").is_err());
}

#[test]
fn symlink_containment_single_links() {
    assert!(symlink_stays_inside(
        "node_modules/.bin/tsc",
        "../typescript/bin/tsc"
    ));
    assert!(symlink_stays_inside("a", "b"));
    assert!(!symlink_stays_inside("a", "../b"));
    assert!(!symlink_stays_inside("x/y", "../../z"));
    assert!(!symlink_stays_inside("venv/bin/python", "/usr/bin/python3"));
    assert!(!symlink_stays_inside("a", ""));
}

fn links_ok(links: &HashMap<PathBuf, PathBuf>, dirs: &[&str]) -> bool {
    let dirs: HashSet<PathBuf> = dirs.iter().map(PathBuf::from).collect();
    links_stay_inside(links, &dirs).is_ok()
}

/// F3: lexically each link stays inside, but through `s -> .` the chain leaves the tree.
#[test]
fn symlink_chains_are_resolved_through_the_tree() {
    let mut links = HashMap::new();
    links.insert(PathBuf::from("s"), PathBuf::from("."));
    links.insert(PathBuf::from("up"), PathBuf::from("s/.."));
    let bad = links_stay_inside(&links, &HashSet::new()).unwrap_err();
    assert_eq!(bad.member, PathBuf::from("up"));
    assert_eq!(bad.why, LinkProblem::Outside);
    // The review's exact chain: `esc -> s/../outside`.
    let mut links = HashMap::new();
    links.insert(PathBuf::from("s"), PathBuf::from("."));
    links.insert(PathBuf::from("esc"), PathBuf::from("s/../outside"));
    assert!(!links_ok(&links, &[]));
    // Deeper: d/l -> ../d2/x where d2 -> d/.. ; fine chains stay accepted.
    let mut links = HashMap::new();
    links.insert(PathBuf::from("d/a"), PathBuf::from("../e"));
    links.insert(PathBuf::from("e"), PathBuf::from("d/b"));
    links.insert(PathBuf::from("d/b"), PathBuf::from("../f/g"));
    assert!(links_ok(&links, &["d", "f"]));
    // Stepping back out of a name the tree does not hold as a directory is refused
    // (in the review's attack, `s` arrived in a later export).
    let mut links = HashMap::new();
    links.insert(PathBuf::from("esc"), PathBuf::from("s/../outside"));
    assert!(!links_ok(&links, &[]));
    assert!(links_ok(&links, &["s"]));
    // A loop is refused.
    let mut links = HashMap::new();
    links.insert(PathBuf::from("a"), PathBuf::from("b"));
    links.insert(PathBuf::from("b"), PathBuf::from("a/x"));
    assert!(!links_ok(&links, &[]));
    let bad = links_stay_inside(&links, &HashSet::new()).unwrap_err();
    assert_eq!(bad.why, LinkProblem::Loop);
    // Through a chain ending in an absolute link.
    let mut links = HashMap::new();
    links.insert(PathBuf::from("a"), PathBuf::from("b/c"));
    links.insert(PathBuf::from("b"), PathBuf::from("/etc"));
    assert!(!links_ok(&links, &["b"]));
}

#[test]
fn directory_seed_keeps_modes_links_and_empty_dirs() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("bin/run.sh"), "#!/bin/sh\necho hi").unwrap();
    std::fs::set_permissions(
        root.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/run.sh", root.join("link")).unwrap();
    std::fs::hard_link(root.join("bin/run.sh"), root.join("hard")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let tar_path = out.path().join("base.tar");
    let stats = seed_tar(root, &tar_path).unwrap();
    assert_eq!(stats.entry_count, 5);
    assert_eq!(stats.bytes_written, 17);
    let data = std::fs::read(&tar_path).unwrap();
    let t = target(out.path(), "copy");
    extract_export(&data[..], &t, false, &limits()).unwrap();
    let exported = out.path().join("copy");
    let m = std::fs::metadata(exported.join("bin/run.sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(exported.join("link")).unwrap(),
        Path::new("bin/run.sh")
    );
    assert!(exported.join("empty").is_dir());
    assert_eq!(
        std::fs::metadata(exported.join("hard")).unwrap().ino(),
        m.ino()
    );
    // The output must not exist, and no staging directory is left behind.
    assert!(ExportTarget::prepare(&HostPath::local(&exported)).is_err());
    assert!(extract_export(&data[..], &t, false, &limits()).is_err());
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn escaping_symlinks_in_a_seed_are_refused() {
    let src = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", src.path().join("etc")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = seed_tar(src.path(), &out.path().join("x.tar")).unwrap_err();
    assert!(err.to_string().contains("points outside"), "{err}");
    assert!(!out.path().join("x.tar").exists());
    assert!(!out.path().join("x.tar.partial").exists());
}

/// F3 for seeds: a directory seed with the chain `s -> .`, `esc -> s/../outside`.
#[test]
fn chained_escapes_in_directory_and_archive_seeds_are_refused() {
    let src = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(".", src.path().join("s")).unwrap();
    std::os::unix::fs::symlink("s/../outside", src.path().join("esc")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = seed_tar(src.path(), &out.path().join("x.tar")).unwrap_err();
    assert!(err.to_string().contains("`esc`"), "{err}");
    let tar = make_tar(&[
        (b"s", tar::EntryType::Symlink, b"."),
        (b"up", tar::EntryType::Symlink, b"s/.."),
    ]);
    std::fs::write(out.path().join("chain.tar"), tar).unwrap();
    let err = seed_tar(&out.path().join("chain.tar"), &out.path().join("y.tar")).unwrap_err();
    assert!(err.to_string().contains("`up`"), "{err}");
}

/// F3 for exports: the chain is refused and nothing appears at the output.
#[test]
fn chained_escapes_in_exports_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let tar = make_tar(&[
        (b"s", tar::EntryType::Symlink, b"."),
        (b"up", tar::EntryType::Symlink, b"s/.."),
    ]);
    let t = target(out.path(), "chain");
    let err = extract_export(&tar[..], &t, false, &limits()).unwrap_err();
    assert!(err.to_string().contains("points outside"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    // A member below a symlink, and a hard link through one, are refused.
    for tar in [
        make_tar(&[
            (b"l", tar::EntryType::Symlink, b"d"),
            (b"d/", tar::EntryType::Directory, b""),
            (b"l/x", tar::EntryType::Regular, b"x"),
        ]),
        make_tar(&[
            (b"d/", tar::EntryType::Directory, b""),
            (b"d/f", tar::EntryType::Regular, b"x"),
            (b"l", tar::EntryType::Symlink, b"d"),
            (b"h", tar::EntryType::Link, b"l/f"),
        ]),
        make_tar(&[(b"dev", tar::EntryType::Char, b"")]),
        make_tar(&[
            (b"f", tar::EntryType::Regular, b"1"),
            (b"f", tar::EntryType::Regular, b"2"),
        ]),
    ] {
        let t = target(out.path(), "bad");
        assert!(extract_export(&tar[..], &t, false, &limits()).is_err());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}

/// F5: names that are not UTF-8 are refused in seeds, never rewritten into a collision.
#[test]
fn non_utf8_seed_names_are_refused() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join(OsStr::from_bytes(b"x\xff")), "1").unwrap();
    std::fs::write(src.path().join(OsStr::from_bytes(b"x\xfe")), "2").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = seed_tar(src.path(), &out.path().join("x.tar")).unwrap_err();
    assert!(err.to_string().contains("not a UTF-8"), "{err}");
    assert!(err.to_string().contains("\\xfe"), "{err}");
    let tar = make_tar(&[
        (b"x\xff", tar::EntryType::Regular, b"1"),
        (b"x\xfe", tar::EntryType::Regular, b"2"),
    ]);
    std::fs::write(out.path().join("n.tar"), tar).unwrap();
    let err = seed_tar(&out.path().join("n.tar"), &out.path().join("y.tar")).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

/// Exports keep non-UTF-8 names as bytes: both files arrive.
#[test]
fn exports_keep_names_as_bytes() {
    let out = tempfile::tempdir().unwrap();
    let tar = make_tar(&[
        (b"x\xff", tar::EntryType::Regular, b"1"),
        (b"x\xfe", tar::EntryType::Regular, b"2"),
    ]);
    let t = target(out.path(), "o");
    let stats = extract_export(&tar[..], &t, false, &limits()).unwrap();
    assert_eq!(stats.entry_count, 2);
    let o = out.path().join("o");
    assert_eq!(
        std::fs::read(o.join(OsStr::from_bytes(b"x\xff"))).unwrap(),
        b"1"
    );
    assert_eq!(
        std::fs::read(o.join(OsStr::from_bytes(b"x\xfe"))).unwrap(),
        b"2"
    );
}

/// F6: a seed over the limit is refused before its bytes are copied; sparse exports stay
/// sparse; an export over its limit leaves nothing.
#[test]
fn sizes_are_bounded_and_exports_stay_sparse() {
    let src = tempfile::tempdir().unwrap();
    let f = File::create(src.path().join("sparse")).unwrap();
    f.set_len(10 << 30).unwrap();
    let out = tempfile::tempdir().unwrap();
    let small = TransferLimits {
        max_seed_bytes: 1 << 30,
        max_export_bytes: 1 << 20,
        ..limits()
    };
    let err = Seed::resolve(src.path())
        .unwrap()
        .write_tar(&out.path().join("x.tar"), &small)
        .unwrap_err();
    assert!(err.to_string().contains("PYRO_MAX_SEED_BYTES"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // 64 MiB of zeros and a marker at the end: exported sparse.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let len = 64u64 << 20;
    h.set_size(len);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let data = io::repeat(0).take(len - 1).chain(&b"!"[..]);
    b.append_data(&mut h, "big", data).unwrap();
    let tar = b.into_inner().unwrap();
    let t = target(out.path(), "big");
    extract_export(&tar[..], &t, true, &limits()).unwrap();
    let m = std::fs::metadata(out.path().join("big")).unwrap();
    assert_eq!(m.len(), len);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
    let t = target(out.path(), "big2");
    let err = extract_export(&tar[..], &t, true, &small).unwrap_err();
    assert!(err.to_string().contains("PYRO_MAX_EXPORT_BYTES"), "{err}");
    assert!(!out.path().join("big2").exists());
}

/// Exports never carry set-id bits onto the host.
#[test]
fn exports_drop_setid_bits() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o4755);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "suid", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let out = tempfile::tempdir().unwrap();
    extract_export(&tar[..], &target(out.path(), "s"), true, &limits()).unwrap();
    let m = std::fs::metadata(out.path().join("s")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
}

/// F1 at this layer: a confined export whose parent becomes a symlink after the path was
/// accepted fails, and nothing is written outside the root.
#[test]
fn confined_exports_follow_no_planted_link() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("root")).unwrap();
    std::fs::create_dir_all(t.path().join("outside")).unwrap();
    let root = Arc::new(HostDir::open(&t.path().join("root")).unwrap());
    let out = HostPath::confined(root, Path::new("esc/pwned")).unwrap();
    std::os::unix::fs::symlink("../outside", t.path().join("root/esc")).unwrap();
    let err = ExportTarget::prepare(&out).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(t.path().join("outside")).unwrap().count(),
        0
    );
}

#[test]
fn bad_seed_paths_are_explained() {
    let err = Seed::resolve(Path::new("/no/such/seed")).unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
    let f = tempfile::NamedTempFile::new().unwrap();
    let err = Seed::resolve(f.path()).unwrap_err();
    assert!(err.to_string().contains("neither a directory nor"), "{err}");
    let err = Seed::resolve(Path::new("/proc")).unwrap_err();
    assert!(err.to_string().contains("pseudo filesystem"), "{err}");
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("p.tar");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; result checked.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = Seed::resolve(&fifo).unwrap_err();
    assert!(err.to_string().contains("neither"), "{err}");
}
