//! The offline disk tools on real ext4 images made with `mkfs.ext4 -d` (no mounts): an
//! upper disk with overlayfs whiteouts, an opaque directory, odd names, a long symlink, a
//! FIFO and a large sparse file, over a base image; and hostile (truncated, garbled) images.
//!
//! Needs `mkfs.ext4` (e2fsprogs); the whiteout and the opaque directory need root (mknod,
//! `trusted.*` xattrs): without them the test says so and checks the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use pyro_core::workspace::{DiskEntry, disk_offline, parse_shown};

fn mkfs(dir: &Path, image: &Path, mib: u64) -> bool {
    let f = std::fs::File::create(image).unwrap();
    f.set_len(mib << 20).unwrap();
    match Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(image)
        .status()
    {
        Ok(s) => s.success(),
        Err(_) => false,
    }
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A whiteout (char device 0:0); false without the privilege.
fn whiteout(p: &Path) -> bool {
    // SAFETY: a valid NUL-terminated path; mknod does not keep it.
    unsafe { libc::mknod(cpath(p).as_ptr(), libc::S_IFCHR | 0o600, 0) == 0 }
}

/// Marks a directory opaque; false without the privilege.
fn opaque(p: &Path) -> bool {
    let name = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: valid NUL-terminated strings and a one-byte value that outlive the call.
    unsafe { libc::setxattr(cpath(p).as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) == 0 }
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Images {
    _dir: tempfile::TempDir,
    upper: PathBuf,
    base: PathBuf,
    privileged: bool,
}

const LONG_TARGET_LEN: usize = 200;

/// The images; the sparse file has `big_mib` MiB, the upper image `upper_mib`.
fn images(big_mib: u64, upper_mib: u64) -> Option<Images> {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("base");
    write(&b.join("etc/issue"), "Debian GNU/Linux\n");
    write(&b.join("etc/hosts"), "127.0.0.1 localhost\n");
    write(&b.join("etc/apt/sources.list"), "deb x\n");
    write(&b.join("usr/bin/ls"), "ELF-ish ls\n");
    symlink("usr/bin", b.join("bin")).unwrap();
    write(&b.join("opt/old/a"), "old\n");
    std::fs::create_dir_all(b.join("workspace")).unwrap();

    let u = dir.path().join("upper-src");
    let w = u.join("upper/workspace");
    std::fs::create_dir_all(u.join("work")).unwrap();
    write(&w.join("with space.txt"), "spaced\n");
    write(&w.join("new\nline"), "newline name\n");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(
        w.join(std::ffi::OsStr::from_bytes(b"bad\xffname")),
        "not utf-8 name\n",
    )
    .unwrap();
    write(&w.join("back\\slash"), "backslash\n");
    let long: String = std::iter::repeat_n("d/", LONG_TARGET_LEN / 2).collect();
    symlink(&long, w.join("long-link")).unwrap();
    let fifo = cpath(&w.join("fifo"));
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let big = std::fs::File::create(w.join("big.sparse")).unwrap();
    big.set_len(big_mib << 20).unwrap();
    write(&u.join("upper/etc/hosts"), "10.0.0.1 changed\n");
    std::fs::create_dir_all(u.join("upper/opt/old")).unwrap();
    write(&u.join("upper/opt/old/b"), "new\n");
    let privileged = whiteout(&u.join("upper/etc/issue")) && opaque(&u.join("upper/opt/old"));
    if !privileged {
        eprintln!("not root: no whiteout or opaque directory in the upper image");
    }

    let upper = dir.path().join("upper.ext4");
    let base = dir.path().join("rootfs.ext4");
    if !mkfs(&b, &base, 32) || !mkfs(&u, &upper, upper_mib) {
        eprintln!("skipped: mkfs.ext4 -d is unavailable");
        return None;
    }
    Some(Images {
        _dir: dir,
        upper,
        base,
        privileged,
    })
}

fn list(i: &Images, path: &str, recursive: bool) -> Vec<DiskEntry> {
    let (entries, truncated) = disk_offline::list(&i.upper, &i.base, path, recursive).unwrap();
    assert!(!truncated);
    entries
}

fn paths(entries: &[DiskEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn disk_tools_merge_the_upper_disk_over_the_base_image() {
    let Some(i) = images(100, 256) else { return };
    let before = (sha256(&i.upper), sha256(&i.base));

    // /workspace: odd names, escaped and listed with their types.
    let ws = list(&i, "/workspace", false);
    assert_eq!(
        paths(&ws),
        [
            "/workspace/back\\\\slash",
            "/workspace/bad\\xffname",
            "/workspace/big.sparse",
            "/workspace/fifo",
            "/workspace/long-link",
            "/workspace/new\nline",
            "/workspace/with space.txt",
        ]
    );
    let by = |name: &str| ws.iter().find(|e| e.path.ends_with(name)).unwrap();
    let link = by("long-link");
    assert_eq!(link.artifact_type, "symlink");
    assert_eq!(link.size_bytes, LONG_TARGET_LEN as u64);
    assert_eq!(
        link.link_target.as_deref().map(str::len),
        Some(LONG_TARGET_LEN)
    );
    let fifo = by("fifo");
    assert_eq!(
        (fifo.artifact_type.as_str(), fifo.file_type.as_deref()),
        ("other", Some("fifo"))
    );
    assert_eq!(by("big.sparse").size_bytes, 100 << 20);
    assert!(ws.iter().all(|e| e.layer == "upper"));

    // Every listed path reads back (names round-trip), relative ones too.
    for e in ws.iter().filter(|e| e.artifact_type == "file") {
        let (size, data) = disk_offline::read(&i.upper, &i.base, &e.path, 64).unwrap();
        assert_eq!(size, e.size_bytes, "{}", e.path);
        assert!(!data.is_empty() || size == 0 || e.path.ends_with("big.sparse"));
    }
    let (_, data) = disk_offline::read(&i.upper, &i.base, "new\nline", 100).unwrap();
    assert_eq!(data, b"newline name\n");
    let (_, data) = disk_offline::read(&i.upper, &i.base, "bad\\xffname", 100).unwrap();
    assert_eq!(data, b"not utf-8 name\n");
    assert_eq!(
        parse_shown("/workspace/bad\\xffname"),
        b"/workspace/bad\xffname"
    );

    // A large sparse file: bounded read, truncated.
    let (size, data) = disk_offline::read(&i.upper, &i.base, "big.sparse", 10).unwrap();
    assert_eq!((size, data), (100 << 20, vec![0u8; 10]));

    // The merged root: base entries and upper ones.
    assert_eq!(
        paths(&list(&i, "/", false)),
        ["/bin", "/etc", "/lost+found", "/opt", "/usr", "/workspace"]
    );
    // An upper file hides the base's; a whiteout hides a base file.
    let etc = list(&i, "/etc", false);
    let hosts = etc.iter().find(|e| e.path == "/etc/hosts").unwrap();
    assert_eq!(hosts.layer, "upper");
    let (_, data) = disk_offline::read(&i.upper, &i.base, "/etc/hosts", 100).unwrap();
    assert_eq!(data, b"10.0.0.1 changed\n");
    if i.privileged {
        assert_eq!(paths(&etc), ["/etc/apt", "/etc/hosts"]);
        let gone = disk_offline::read(&i.upper, &i.base, "/etc/issue", 100).unwrap_err();
        assert_eq!(gone.kind(), pyro_core::ErrorKind::NotFound);
        // The opaque directory shows only its own entries.
        assert_eq!(paths(&list(&i, "/opt/old", false)), ["/opt/old/b"]);
    } else {
        assert_eq!(paths(&etc), ["/etc/apt", "/etc/hosts", "/etc/issue"]);
    }
    // Symlinks in the middle of a path are followed through the merged tree.
    let (_, data) = disk_offline::read(&i.upper, &i.base, "/bin/ls", 100).unwrap();
    assert_eq!(data, b"ELF-ish ls\n");
    // A file listed alone; a recursive listing is pre-order.
    assert_eq!(paths(&list(&i, "/etc/hosts", false)), ["/etc/hosts"]);
    let all = list(&i, "/etc", true);
    assert_eq!(all[0].path, "/etc/apt");
    assert_eq!(all[1].path, "/etc/apt/sources.list");
    // Reading a directory or a FIFO is refused; a missing path is not found.
    let dir = disk_offline::read(&i.upper, &i.base, "/etc", 10).unwrap_err();
    assert_eq!(dir.kind(), pyro_core::ErrorKind::InvalidInput);
    let fifo = disk_offline::read(&i.upper, &i.base, "fifo", 10).unwrap_err();
    assert_eq!(fifo.kind(), pyro_core::ErrorKind::InvalidInput);
    let missing = disk_offline::list(&i.upper, &i.base, "/nope", false).unwrap_err();
    assert_eq!(missing.kind(), pyro_core::ErrorKind::NotFound);

    // Nothing was written to either image.
    assert_eq!((sha256(&i.upper), sha256(&i.base)), before);
}

#[test]
fn hostile_images_give_errors_not_panics() {
    let Some(i) = images(1, 16) else { return };
    let good = std::fs::read(&i.upper).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ext4");
    let try_all = |p: &Path| {
        for path in ["/", "/workspace", "/etc", "/opt/old"] {
            let _ = disk_offline::list(p, &i.base, path, true);
        }
        let _ = disk_offline::read(p, &i.base, "with space.txt", 1 << 20);
        let _ = disk_offline::read(p, &i.base, "/etc/hosts", 1 << 20);
    };
    // Truncated images.
    for len in [0usize, 1000, 2048, 4096, 65536, 1 << 20] {
        std::fs::write(&bad, &good[..len.min(good.len())]).unwrap();
        let e = disk_offline::list(&bad, &i.base, "/", false).unwrap_err();
        assert_eq!(e.kind(), pyro_core::ErrorKind::Runtime, "{e}");
        try_all(&bad);
    }
    // Not ext4 at all.
    std::fs::write(&bad, vec![0xa5u8; 1 << 20]).unwrap();
    assert!(disk_offline::list(&bad, &i.base, "/", false).is_err());
    // A superblock that claims a huge filesystem.
    let mut forged = good.clone();
    forged[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&bad, &forged).unwrap();
    assert!(disk_offline::list(&bad, &i.base, "/", false).is_err());
    // Garbled metadata: stretches of the first megabytes (group descriptors, bitmaps,
    // inode tables, directory blocks) overwritten with pseudo-random bytes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let meta_end = (4usize << 20).min(good.len());
    for _ in 0..40 {
        let mut img = good.clone();
        for _ in 0..8 {
            let at = 2048 + (next() as usize) % (meta_end - 2048 - 512);
            let n = 1 + (next() as usize) % 512;
            for b in &mut img[at..at + n] {
                *b = next() as u8;
            }
        }
        std::fs::write(&bad, &img).unwrap();
        try_all(&bad);
    }
}
