//! File operations of the agent binary, served over a Unix socket with a temp dir as root
//! and driven through the host client helpers of `pyro_proto::api`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pyro_proto::api::{
    self, ArtifactType, CallError, Change, ChangeOp, ErrorCode, ExportTar, ImportMode, ImportTar,
    ListFiles, ReadFile,
};
use pyro_proto::{Config, Session};

struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_pyro-agent"))
        .arg("--listen-unix")
        .arg(&sock)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The socket file appears at bind, before listen: wait until a connection is taken.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent {
        child,
        sock,
        _dir: dir,
    }
}

async fn session(a: &Agent) -> Session {
    let conn = tokio::net::UnixStream::connect(&a.sock).await.unwrap();
    Session::client(conn, Config::default()).await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A temp dir with a `root/` inside, so that an escape to `..` would land in the temp dir.
struct Tree {
    outer: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("root")).unwrap();
        Self { outer }
    }
    fn root(&self) -> PathBuf {
        self.outer.path().join("root")
    }
    fn root_str(&self) -> String {
        self.root().to_str().unwrap().to_string()
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }
    fn write(&self, rel: &str, data: &[u8], mode: u32) {
        let p = self.p(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// One object of a tree, everything a round trip must keep.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        mode: u32,
        data: Vec<u8>,
        mtime: i64,
    },
    Dir {
        mode: u32,
    },
    Link {
        target: PathBuf,
    },
    Other,
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let ft = md.file_type();
            let node = if ft.is_symlink() {
                Node::Link {
                    target: std::fs::read_link(&p).unwrap(),
                }
            } else if ft.is_dir() {
                walk(base, &p, out);
                Node::Dir {
                    mode: md.mode() & 0o7777,
                }
            } else if ft.is_file() {
                Node::File {
                    mode: md.mode() & 0o7777,
                    data: std::fs::read(&p).unwrap(),
                    mtime: md.mtime(),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn agent_err<T: std::fmt::Debug>(res: Result<T, CallError>) -> api::AgentError {
    match res {
        Err(CallError::Agent(e)) => e,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

fn bad_request<T: std::fmt::Debug>(res: Result<T, CallError>, needle: &str) -> String {
    let e = agent_err(res);
    assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
    assert!(
        e.message.contains(needle),
        "{:?} lacks {needle:?}",
        e.message
    );
    e.message
}

async fn export(s: &Session, root: &str, path: &str) -> (api::TarResult, Vec<u8>) {
    let mut buf = Vec::new();
    let req = ExportTar {
        root: root.into(),
        path: path.into(),
    };
    let res = api::export_tar(s, req, |chunk| {
        buf.extend_from_slice(&chunk);
        Ok(())
    })
    .await
    .unwrap();
    (res, buf)
}

async fn import(
    s: &Session,
    root: &str,
    dest: &str,
    mode: ImportMode,
    archive: &[u8],
) -> Result<api::TarResult, CallError> {
    let req = ImportTar {
        root: root.into(),
        dest: dest.into(),
        mode,
    };
    api::import_tar(s, req, std::io::Cursor::new(archive.to_vec())).await
}

fn list_req(root: &str, path: &str, recursive: bool) -> ListFiles {
    ListFiles {
        root: root.into(),
        path: path.into(),
        recursive,
        max_entries: None,
    }
}

/// A member of [`raw_tar`]: name, type, link name, contents.
type RawMember<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A tar with raw member names and link names, as a hostile archive would carry them.
fn raw_tar(members: &[RawMember<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, link, data) in members {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn write_change(path: &str, data: &[u8], mode: Option<u32>) -> (Change, Bytes) {
    (
        Change::Write {
            path: path.into(),
            size: data.len() as u64,
            mode,
        },
        Bytes::copy_from_slice(data),
    )
}

#[test]
fn export_then_import_round_trips_a_tree() {
    let a = agent();
    let src = Tree::new();
    src.write("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    src.write("noeol.txt", b"no final newline", 0o644);
    src.write("secret.key", b"k", 0o600);
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    src.write("data/a.bin", &binary, 0o640);
    std::fs::hard_link(src.p("data/a.bin"), src.p("data/b.bin")).unwrap();
    std::fs::hard_link(src.p("data/a.bin"), src.p("zz-hard")).unwrap();
    std::fs::create_dir_all(src.p("empty/nested")).unwrap();
    std::fs::set_permissions(
        src.p("empty/nested"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    symlink("run.sh", src.p("bin/link")).unwrap();
    symlink("../noeol.txt", src.p("bin/up")).unwrap();
    symlink("bin", src.p("dirlink")).unwrap();
    symlink("missing-target", src.p("dangling")).unwrap();
    let long = format!("{}/{}.txt", "d".repeat(120), "f".repeat(150));
    src.write(&long, b"long name", 0o644);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(src.p("noeol.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let dst = Tree::new();
    rt().block_on(async {
        let s = session(&a).await;
        let (exported, archive) = export(&s, &src.root_str(), "").await;
        // Directories: bin data empty empty/nested dddd; files: 5 + 2 hard links; 4 symlinks.
        assert_eq!(exported.entry_count, 5 + 5 + 2 + 4, "{exported:?}");
        assert_eq!(
            exported.bytes,
            18 + 16 + 1 + binary.len() as u64 + 9,
            "hard links carry no bytes"
        );
        assert!(exported.skipped.is_empty());
        let imported = import(&s, &dst.root_str(), "", ImportMode::Merge, &archive)
            .await
            .unwrap();
        assert_eq!(imported.entry_count, exported.entry_count);
        assert_eq!(imported.bytes, exported.bytes);
    });
    let (before, after) = (snapshot(&src.root()), snapshot(&dst.root()));
    assert_eq!(before, after);
    assert_eq!(ino(&dst.p("data/a.bin")), ino(&dst.p("data/b.bin")));
    assert_eq!(ino(&dst.p("data/a.bin")), ino(&dst.p("zz-hard")));
    assert_ne!(ino(&dst.p("data/a.bin")), ino(&dst.p("noeol.txt")));
    assert!(
        std::fs::symlink_metadata(dst.p("dirlink"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn exporting_a_single_file_or_symlink_gives_one_member() {
    let a = agent();
    let t = Tree::new();
    t.write("sub/tool", b"x", 0o755);
    symlink("tool", t.p("sub/ln")).unwrap();
    rt().block_on(async {
        let s = session(&a).await;
        for (path, name, ty) in [
            ("sub/tool", "tool", tar::EntryType::Regular),
            ("/workspace/sub/ln", "ln", tar::EntryType::Symlink),
        ] {
            let (res, archive) = export(&s, &t.root_str(), path).await;
            assert_eq!(res.entry_count, 1);
            let mut ar = tar::Archive::new(&archive[..]);
            let members: Vec<_> = ar
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.path().unwrap().to_str().unwrap().to_string(),
                        e.header().entry_type(),
                        e.header().mode().unwrap(),
                    )
                })
                .collect();
            assert_eq!(members.len(), 1);
            assert_eq!(members[0].0, name);
            assert_eq!(members[0].1, ty);
            if ty == tar::EntryType::Regular {
                assert_eq!(members[0].2, 0o755);
            }
        }
    });
}

#[test]
fn export_skips_fifos_and_reports_them() {
    let a = agent();
    let t = Tree::new();
    t.write("a", b"a", 0o644);
    let st = Command::new("mkfifo").arg(t.p("pipe")).status().unwrap();
    assert!(st.success());
    rt().block_on(async {
        let s = session(&a).await;
        let (res, _) = export(&s, &t.root_str(), "").await;
        assert_eq!(res.entry_count, 1);
        assert_eq!(res.skipped_count, 1);
        assert_eq!(res.skipped, vec![t.p("pipe").to_str().unwrap().to_string()]);
        // Reading it is refused without blocking.
        let req = ReadFile {
            root: t.root_str(),
            path: "pipe".into(),
            max_bytes: None,
        };
        bad_request(api::read_file(&s, req).await, "not a regular file");
    });
}

#[test]
fn escapes_are_refused_and_change_nothing() {
    let a = agent();
    let t = Tree::new();
    t.write("keep.txt", b"keep", 0o644);
    symlink("/etc", t.p("evil")).unwrap();
    symlink("..", t.p("up")).unwrap();
    let root = t.root_str();
    let before = snapshot(t.outer.path());
    rt().block_on(async {
        let s = session(&a).await;
        let write = |path: &str| {
            let (c, d) = write_change(path, b"pwned", None);
            api::write_files(&s, vec![c], vec![d], root.clone())
        };
        bad_request(write("../x").await, "..");
        bad_request(write("a/../../x").await, "..");
        bad_request(write("/etc/passwd").await, "outside the root");
        bad_request(write("evil/x").await, "symlink");
        bad_request(write("up/x").await, "symlink");
        bad_request(write("evil").await, "symlink");
        let sym = |target: &str| {
            let c = Change::Symlink {
                path: "s".into(),
                target: target.into(),
            };
            api::write_files(&s, vec![c], vec![], root.clone())
        };
        bad_request(sym("/etc").await, "absolute");
        bad_request(sym("../..").await, "escapes");
        bad_request(sym("a/../../x").await, "escapes");

        let read = |path: &str| {
            let req = ReadFile {
                root: root.clone(),
                path: path.into(),
                max_bytes: None,
            };
            api::read_file(&s, req)
        };
        bad_request(read("evil/passwd").await, "outside the root");
        bad_request(read("up/root/keep.txt").await, "outside the root");
        bad_request(read("../root/keep.txt").await, "..");
        bad_request(read("/etc/passwd").await, "outside the root");
        bad_request(read("evil").await, "symlink");
        let e = agent_err(read("nope/missing.txt").await);
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message.contains(&format!("{root}/nope/missing.txt")),
            "{}",
            e.message
        );

        // Listing a symlinked directory shows the link, never its target's contents.
        let l = api::list_files(&s, list_req(&root, "evil", true))
            .await
            .unwrap();
        assert_eq!(l.artifact_type, ArtifactType::Symlink);
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.entries[0].link_target.as_deref(), Some("/etc"));
        bad_request(
            api::list_files(&s, list_req(&root, "evil/ssl", true)).await,
            "outside",
        );
        let ex = api::export_tar(
            &s,
            ExportTar {
                root: root.clone(),
                path: "up/root".into(),
            },
            |_| Ok(()),
        )
        .await;
        bad_request(ex, "outside the root");

        use tar::EntryType as T;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw_tar(&[(b"../../x", T::Regular, b"", b"pwned")]),
                "../../x",
            ),
            (
                raw_tar(&[(b"/tmp/x", T::Regular, b"", b"pwned")]),
                "absolute",
            ),
            (raw_tar(&[(b"s", T::Symlink, b"/etc", b"")]), "absolute"),
            (raw_tar(&[(b"s", T::Symlink, b"../..", b"")]), "escapes"),
            (raw_tar(&[(b"d/s", T::Symlink, b"../../x", b"")]), "escapes"),
            (raw_tar(&[(b"evil/x", T::Regular, b"", b"pwned")]), "evil"),
            (raw_tar(&[(b"up/x", T::Regular, b"", b"pwned")]), "symlink"),
            (
                raw_tar(&[(b"h", T::Link, b"keep.txt", b"")]),
                "not a file extracted",
            ),
            (raw_tar(&[(b"h", T::Link, b"../x", b"")]), ".."),
            (
                raw_tar(&[(b"keep.txt/x", T::Regular, b"", b"x")]),
                "not a directory",
            ),
        ];
        for (archive, needle) in cases {
            let msg = bad_request(
                import(&s, &root, "", ImportMode::Merge, &archive).await,
                needle,
            );
            assert!(msg.contains("tar member"), "{msg}");
        }
        bad_request(
            import(&s, &root, "evil", ImportMode::Replace, &raw_tar(&[])).await,
            "symlink",
        );
        bad_request(
            import(&s, &root, "../x", ImportMode::Replace, &raw_tar(&[])).await,
            "..",
        );
    });
    assert_eq!(before, snapshot(t.outer.path()), "something changed");
}

#[test]
fn bad_roots_are_refused() {
    let a = agent();
    rt().block_on(async {
        let s = session(&a).await;
        for root in ["relative/dir", "/definitely/missing/root", "/etc/passwd"] {
            bad_request(api::list_files(&s, list_req(root, "", false)).await, root);
        }
    });
}

#[test]
fn a_failing_batch_changes_nothing() {
    let a = agent();
    let t = Tree::new();
    t.write("f1", b"old1", 0o644);
    t.write("f2", b"old2", 0o644);
    t.write("plain", b"file", 0o644);
    std::fs::create_dir(t.p("full")).unwrap();
    t.write("full/x", b"x", 0o644);
    let root = t.root_str();
    let before = snapshot(t.outer.path());
    rt().block_on(async {
        let s = session(&a).await;
        let batch = |third: Change| {
            let (c1, d1) = write_change("f1", b"new1", None);
            let (c2, d2) = write_change("newdir/sub/f2", b"new2", None);
            let mut data = vec![d1, d2];
            if let Change::Write { size, .. } = &third {
                data.push(Bytes::from(vec![b'z'; *size as usize]));
            }
            api::write_files(&s, vec![c1, c2, third], data, root.clone())
        };
        let w = |p: &str| Change::Write {
            path: p.into(),
            size: 3,
            mode: None,
        };
        bad_request(batch(w("plain/f3")).await, "not a directory");
        bad_request(batch(w("full")).await, "directory");
        bad_request(batch(w("../f3")).await, "..");
        bad_request(
            batch(Change::Delete {
                path: "full".into(),
            })
            .await,
            "not empty",
        );
        bad_request(
            batch(Change::Mkdir {
                path: "f1".into(),
                mode: None,
            })
            .await,
            "not a directory",
        );
        bad_request(
            batch(Change::Write {
                path: "f3".into(),
                size: 1,
                mode: Some(0o10000),
            })
            .await,
            "mode",
        );
        let e = agent_err(
            batch(Change::Delete {
                path: "missing".into(),
            })
            .await,
        );
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("missing"), "{}", e.message);

        // Data that stops short of a declared size fails in staging: nothing is left either.
        let req = api::Request::WriteFiles(api::WriteFiles {
            root: root.clone(),
            changes: vec![
                write_change("f1", b"new1", None).0,
                write_change("newdir/x", b"123456", None).0,
            ],
        });
        let mut st = s.open().unwrap();
        st.send(pyro_proto::Message::json(pyro_proto::MsgKind::REQUEST, &req).unwrap())
            .await
            .unwrap();
        st.send(pyro_proto::Message::new(
            pyro_proto::MsgKind::DATA,
            &b"new1123"[..],
        ))
        .await
        .unwrap();
        st.finish().unwrap();
        let reply = st.recv().await.unwrap().unwrap();
        assert_eq!(reply.kind, pyro_proto::MsgKind::ERROR);
        let e: api::AgentError = reply.parse().unwrap();
        assert!(
            e.message.contains("ended after 3 of the 6 bytes"),
            "{}",
            e.message
        );
    });
    assert_eq!(before, snapshot(t.outer.path()), "something changed");
}

#[test]
fn a_batch_applies_in_order() {
    let a = agent();
    let t = Tree::new();
    t.write("tool.sh", b"#!/bin/sh\n", 0o755);
    t.write("gone.txt", b"bye", 0o644);
    std::fs::create_dir(t.p("olddir")).unwrap();
    symlink("tool.sh", t.p("ln")).unwrap();
    let root = t.root_str();
    rt().block_on(async {
        let s = session(&a).await;
        let (w1, d1) = write_change("tool.sh", b"#!/bin/sh\necho new\n", None);
        let (w2, d2) = write_change("/workspace/new/deep/file.txt", b"fresh", None);
        let (w3, d3) = write_change("exact.bin", &[0, 1, 2, 255], Some(0o600));
        let changes = vec![
            w1,
            w2,
            w3,
            Change::Mkdir {
                path: "made".into(),
                mode: Some(0o700),
            },
            Change::Symlink {
                path: "ln".into(),
                target: "new/deep/file.txt".into(),
            },
            Change::Symlink {
                path: "new/up".into(),
                target: "../tool.sh".into(),
            },
            Change::Delete {
                path: "gone.txt".into(),
            },
            Change::Delete {
                path: "olddir".into(),
            },
        ];
        let res = api::write_files(&s, changes, vec![d1, d2, d3], root.clone())
            .await
            .unwrap();
        let ops: Vec<_> = res
            .entries
            .iter()
            .map(|e| (e.path.clone(), e.op, e.bytes_written))
            .collect();
        assert_eq!(
            ops,
            vec![
                (format!("{root}/tool.sh"), ChangeOp::Write, 19),
                (format!("{root}/new/deep/file.txt"), ChangeOp::Write, 5),
                (format!("{root}/exact.bin"), ChangeOp::Write, 4),
                (format!("{root}/made"), ChangeOp::Mkdir, 0),
                (format!("{root}/ln"), ChangeOp::Symlink, 0),
                (format!("{root}/new/up"), ChangeOp::Symlink, 0),
                (format!("{root}/gone.txt"), ChangeOp::Delete, 0),
                (format!("{root}/olddir"), ChangeOp::Delete, 0),
            ]
        );
        let mode = |p: &str| std::fs::symlink_metadata(t.p(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tool.sh"), 0o755, "an overwrite keeps the mode");
        assert_eq!(
            std::fs::read(t.p("tool.sh")).unwrap(),
            b"#!/bin/sh\necho new\n"
        );
        assert_eq!(mode("new/deep/file.txt"), 0o644);
        assert_eq!(mode("exact.bin"), 0o600);
        assert_eq!(mode("made"), 0o700);
        assert_eq!(
            std::fs::read_link(t.p("ln")).unwrap(),
            Path::new("new/deep/file.txt")
        );
        assert_eq!(
            std::fs::read(t.p("new/up")).unwrap(),
            b"#!/bin/sh\necho new\n"
        );
        assert!(!t.p("gone.txt").exists());
        assert!(!t.p("olddir").exists());

        // An explicit mode replaces the old one; later writes keep it.
        let (w, d) = write_change("tool.sh", b"x", Some(0o640));
        api::write_files(&s, vec![w], vec![d], root.clone())
            .await
            .unwrap();
        assert_eq!(mode("tool.sh"), 0o640);
        let (w, d) = write_change("tool.sh", b"y", None);
        api::write_files(&s, vec![w], vec![d], root.clone())
            .await
            .unwrap();
        assert_eq!(mode("tool.sh"), 0o640);
        // A directory emptied earlier in the batch can be deleted in it.
        let changes = vec![
            Change::Delete {
                path: "new/deep/file.txt".into(),
            },
            Change::Delete {
                path: "new/deep".into(),
            },
        ];
        api::write_files(&s, changes, vec![], root.clone())
            .await
            .unwrap();
        assert!(!t.p("new/deep").exists());
        api::sync(&s).await.unwrap();
    });
    let leftovers: Vec<_> = snapshot(&t.root())
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".pyro-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn read_truncates_a_large_file_and_reads_whole_ones() {
    let a = agent();
    let t = Tree::new();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    t.write("big.bin", &big, 0o640);
    std::fs::create_dir(t.p("dir")).unwrap();
    symlink("big.bin", t.p("ln")).unwrap();
    symlink(".", t.p("self")).unwrap();
    let root = t.root_str();
    rt().block_on(async {
        let s = session(&a).await;
        let req = |path: &str, max: Option<u64>| ReadFile {
            root: root.clone(),
            path: path.into(),
            max_bytes: max,
        };
        let (r, data) = api::read_file(&s, req("big.bin", Some(1_000_000)))
            .await
            .unwrap();
        assert_eq!(r.size_bytes, 5_000_000);
        assert!(r.truncated);
        assert_eq!(r.mode, 0o640);
        assert_eq!(r.path, format!("{root}/big.bin"));
        assert_eq!(data, &big[..1_000_000]);
        let (r, data) = api::read_file(&s, req("big.bin", None)).await.unwrap();
        assert!(!r.truncated);
        assert_eq!(data, big);
        let (r, data) = api::read_file(&s, req("big.bin", Some(0))).await.unwrap();
        assert!(r.truncated && data.is_empty());
        // A symlinked parent that stays inside the root is fine for reading.
        let (_, data) = api::read_file(&s, req("self/big.bin", Some(10)))
            .await
            .unwrap();
        assert_eq!(data, &big[..10]);
        bad_request(api::read_file(&s, req("ln", None)).await, "symlink");
        bad_request(api::read_file(&s, req("dir", None)).await, "directory");
        bad_request(api::read_file(&s, req("", None)).await, "directory");
    });
}

#[test]
fn list_is_sorted_pre_order_and_never_follows_symlinks() {
    let a = agent();
    let t = Tree::new();
    t.write("a/x", b"12345", 0o600);
    t.write("a.txt", b"", 0o644);
    std::fs::create_dir_all(t.p("b/c/d")).unwrap();
    symlink("a", t.p("link")).unwrap();
    let root = t.root_str();
    rt().block_on(async {
        let s = session(&a).await;
        let paths = |l: &api::FileList| -> Vec<String> {
            l.entries
                .iter()
                .map(|e| e.path.strip_prefix(&root).unwrap().to_string())
                .collect()
        };
        let l = api::list_files(&s, list_req(&root, "", true))
            .await
            .unwrap();
        assert_eq!(l.path, root);
        assert_eq!(l.artifact_type, ArtifactType::Directory);
        assert!(!l.truncated);
        assert_eq!(
            paths(&l),
            ["/a", "/a/x", "/a.txt", "/b", "/b/c", "/b/c/d", "/link"]
        );
        let x = &l.entries[1];
        assert_eq!(
            (x.artifact_type, x.size_bytes, x.mode),
            (ArtifactType::File, 5, 0o600)
        );
        let link = &l.entries[6];
        assert_eq!(link.artifact_type, ArtifactType::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("a"));

        let l = api::list_files(&s, list_req(&root, "/workspace", false))
            .await
            .unwrap();
        assert_eq!(paths(&l), ["/a", "/a.txt", "/b", "/link"]);
        let mut req = list_req(&root, "", true);
        req.max_entries = Some(2);
        let l = api::list_files(&s, req).await.unwrap();
        assert!(l.truncated);
        assert_eq!(paths(&l), ["/a", "/a/x"]);
        let l = api::list_files(&s, list_req(&root, "a/x", true))
            .await
            .unwrap();
        assert_eq!(l.artifact_type, ArtifactType::File);
        assert_eq!(paths(&l), ["/a/x"]);
        let e = agent_err(api::list_files(&s, list_req(&root, "nope", false)).await);
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains(&format!("{root}/nope")), "{}", e.message);

        // Many entries stream in several messages.
        for i in 0..3000 {
            std::fs::write(t.p(&format!("b/c/file-{i:05}-{}", "n".repeat(40))), b"").unwrap();
        }
        let mut req = list_req(&root, "b", true);
        req.max_entries = Some(100_000);
        let l = api::list_files(&s, req).await.unwrap();
        assert_eq!(l.entries.len(), 3002);
        assert!(l.entries.windows(2).all(|w| w[0].path < w[1].path));
    });
}

#[test]
fn import_merge_and_replace() {
    let a = agent();
    let t = Tree::new();
    t.write("proj/old.txt", b"old", 0o644);
    t.write("proj/keep/k", b"k", 0o644);
    t.write("proj/over", b"before", 0o755);
    let root = t.root_str();
    let archive = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(5);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, "over", &b"after"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o711);
        h.set_size(0);
        b.append_data(&mut h, "newdir", &b""[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, "newdir/inner/f", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    };
    rt().block_on(async {
        let s = session(&a).await;
        let r = import(&s, &root, "proj", ImportMode::Merge, &archive)
            .await
            .unwrap();
        assert_eq!((r.entry_count, r.bytes), (3, 7));
        assert_eq!(std::fs::read(t.p("proj/over")).unwrap(), b"after");
        let md = std::fs::metadata(t.p("proj/over")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o600, 1_600_000_000));
        assert_eq!(
            std::fs::metadata(t.p("proj/newdir")).unwrap().mode() & 0o7777,
            0o711
        );
        assert!(t.p("proj/old.txt").exists() && t.p("proj/keep/k").exists());

        let r = import(&s, &root, "proj", ImportMode::Replace, &archive)
            .await
            .unwrap();
        assert_eq!(r.entry_count, 3);
        let names: Vec<_> = snapshot(&t.p("proj")).into_keys().collect();
        let want: Vec<PathBuf> = ["newdir", "newdir/inner", "newdir/inner/f", "over"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(names, want);
        // A new destination is created.
        import(&s, &root, "fresh/dest", ImportMode::Replace, &archive)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(t.p("fresh/dest/newdir/inner/f")).unwrap(),
            b"hi"
        );
        // A truncated archive is an error, not a silent partial success.
        let cut = &archive[..archive.len() - 1024 - 512 - 100];
        let e = agent_err(import(&s, &root, "cut", ImportMode::Merge, cut).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
        assert!(
            !snapshot(&t.root())
                .keys()
                .any(|p| p.to_string_lossy().contains(".pyro-tmp"))
        );
    });
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_import_streams_without_buffering() {
    let a = agent();
    let t = Tree::new();
    let root = t.root_str();
    const FILE: usize = 10 * 1024 * 1024;
    let archive = {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..5u8 {
            let data: Vec<u8> = (0..FILE)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(FILE as u64);
            b.append_data(&mut h, format!("big/{i}.bin"), &data[..])
                .unwrap();
        }
        b.into_inner().unwrap()
    };
    assert!(archive.len() > 50 * 1024 * 1024);
    rt().block_on(async {
        let s = session(&a).await;
        // Warm up: the first calls map the runtime's and the allocator's working set.
        let small = raw_tar(&[(b"w", tar::EntryType::Regular, b"", b"warm")]);
        import(&s, &root, "", ImportMode::Merge, &small)
            .await
            .unwrap();
        let before = vm_hwm_kib(a.child.id());
        let r = import(&s, &root, "", ImportMode::Merge, &archive)
            .await
            .unwrap();
        assert_eq!(r.bytes, 5 * FILE as u64);
        let grown = vm_hwm_kib(a.child.id()).saturating_sub(before);
        eprintln!("agent VmHWM before {before} KiB, grown by {grown} KiB");
        assert!(
            grown < 16 * 1024,
            "the agent's peak RSS grew by {grown} KiB"
        );
    });
    let got = std::fs::read(t.p("big/3.bin")).unwrap();
    assert_eq!(got.len(), FILE);
    assert!(
        got.iter()
            .enumerate()
            .all(|(j, b)| *b == (j as u8).wrapping_mul(31).wrapping_add(3))
    );
}
