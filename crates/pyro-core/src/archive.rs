//! Host-side tar handling for workspaces: building the baseline from a seed (a directory or a
//! `.tar`/`.tar.gz`/`.tgz`/`.tar.zst` archive), validating archives, and materializing exports.
//!
//! Everything here treats archive contents as hostile: member names must be relative without
//! `..`; symlinks may only point inside the tree (checked lexically against the member's own
//! directory); hard links may only point to earlier members; devices, FIFOs and sockets are
//! refused. Unlike the reference, in-tree relative symlinks (`node_modules/.bin`, venvs) and
//! hard links are kept, and file modes (the executable bit) survive.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{CoreError, Result};

/// How a seed was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedMode {
    /// No seed: `/workspace` starts empty.
    Empty,
    /// A host directory.
    Directory,
    /// A tar archive (optionally gzip or zstd compressed).
    TarArchive,
}

/// Counts of an archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TarStats {
    /// Members.
    pub entry_count: u64,
    /// Bytes of regular-file content.
    pub bytes_written: u64,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Normalizes a relative member path: drops `.` parts, refuses absolute paths, `..` and empty.
pub fn normalize_member(name: &str) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("member `{name}` contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("member `{name}` is an absolute path"));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("member `{name}` names no file"));
    }
    Ok(parts.join("/"))
}

/// Whether a symlink at `member` with `target` stays inside the tree (lexically).
pub fn symlink_stays_inside(member: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = member.split('/').collect();
    depth.pop(); // the link's own name
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            p => depth.push(p),
        }
    }
    true
}

/// Opens a seed archive, transparently decompressing gzip or zstd (detected by magic bytes).
fn open_archive(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(path).map_err(|e| CoreError::io("open", path, e))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| CoreError::io("read", path, e))?;
    let f = File::open(path).map_err(|e| CoreError::io("open", path, e))?;
    let r = BufReader::new(f);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| {
            invalid(
                "seed_path",
                format!("{} is not a valid zstd stream: {e}", path.display()),
            )
        })?;
        Box::new(d)
    } else {
        Box::new(r)
    })
}

/// What a seed path is.
#[derive(Clone, Debug)]
pub enum Seed {
    /// A directory.
    Directory(PathBuf),
    /// An archive file.
    Archive(PathBuf),
}

impl Seed {
    /// Resolves a user-given seed path (`~` expanded) and checks what it is.
    pub fn resolve(raw: &Path) -> Result<Seed> {
        let text = raw.to_string_lossy();
        if text.trim().is_empty() {
            return Err(invalid("seed_path", "the path is empty"));
        }
        let path = expand_home(raw);
        let meta = std::fs::metadata(&path).map_err(|e| {
            invalid(
                "seed_path",
                format!("{} cannot be read: {e}", path.display()),
            )
        })?;
        if meta.is_dir() {
            return Ok(Seed::Directory(path));
        }
        let lower = path.to_string_lossy().to_ascii_lowercase();
        let is_archive = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"]
            .iter()
            .any(|ext| lower.ends_with(ext));
        if meta.is_file() && is_archive {
            return Ok(Seed::Archive(path));
        }
        Err(invalid(
            "seed_path",
            format!(
                "{} is neither a directory nor a .tar, .tar.gz, .tgz or .tar.zst archive",
                path.display()
            ),
        ))
    }

    /// The mode recorded in results.
    pub fn mode(&self) -> SeedMode {
        match self {
            Seed::Directory(_) => SeedMode::Directory,
            Seed::Archive(_) => SeedMode::TarArchive,
        }
    }

    /// The resolved path.
    pub fn path(&self) -> &Path {
        match self {
            Seed::Directory(p) | Seed::Archive(p) => p,
        }
    }

    /// Writes the seed as a plain, validated tar to `out` (atomically).
    pub fn write_tar(&self, out: &Path) -> Result<TarStats> {
        let tmp = out.with_extension("tar.partial");
        let file = File::create(&tmp).map_err(|e| CoreError::io("create", &tmp, e))?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        builder.follow_symlinks(false);
        let stats = match self {
            Seed::Directory(dir) => tar_directory(dir, &mut builder),
            Seed::Archive(path) => copy_validated(path, &mut builder),
        };
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let finish = builder
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all());
        if let Err(e) = finish {
            let _ = std::fs::remove_file(&tmp);
            return Err(CoreError::io("write", &tmp, e));
        }
        std::fs::rename(&tmp, out).map_err(|e| CoreError::io("rename", out, e))?;
        Ok(stats)
    }
}

/// Writes an empty tar archive (the baseline of an unseeded workspace).
pub fn write_empty_tar(out: &Path) -> Result<()> {
    let file = File::create(out).map_err(|e| CoreError::io("create", out, e))?;
    let builder = tar::Builder::new(file);
    builder
        .into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|e| CoreError::io("write", out, e))
}

fn expand_home(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if s == "~"
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home);
    }
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn tar_directory<W: Write>(root: &Path, b: &mut tar::Builder<W>) -> Result<TarStats> {
    let mut stats = TarStats::default();
    let mut links: std::collections::HashMap<(u64, u64), String> = Default::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    // Depth-first, children sorted by name, so the archive is deterministic.
    while let Some((dir, rel)) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| CoreError::io("read directory", &dir, e))?
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| CoreError::io("read directory", &dir, e))?;
        children.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in children {
            let name = entry.file_name().to_string_lossy().into_owned();
            let member = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let path = entry.path();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| CoreError::io("stat", &path, e))?;
            let ft = meta.file_type();
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.permissions().mode() & 0o7777);
            h.set_mtime(meta.mtime().max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
            stats.entry_count += 1;
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{member}/"), io::empty())
                    .map_err(|e| CoreError::io("archive", &path, e))?;
                subdirs.push((path, member));
            } else if ft.is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|e| CoreError::io("read link", &path, e))?;
                let t = target.to_string_lossy().into_owned();
                if !symlink_stays_inside(&member, &t) {
                    return Err(invalid(
                        "seed_path",
                        format!("symlink `{member}` -> `{t}` points outside the seed"),
                    ));
                }
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &member, &target)
                    .map_err(|e| CoreError::io("archive", &path, e))?;
            } else if ft.is_file() {
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &member, first)
                            .map_err(|e| CoreError::io("archive", &path, e))?;
                        continue;
                    }
                    links.insert(key, member.clone());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                let f = File::open(&path).map_err(|e| CoreError::io("open", &path, e))?;
                b.append_data(&mut h, &member, f)
                    .map_err(|e| CoreError::io("archive", &path, e))?;
                stats.bytes_written += meta.len();
            } else {
                return Err(invalid(
                    "seed_path",
                    format!(
                        "`{member}` is a device, FIFO or socket; only files, directories and symlinks can be seeded"
                    ),
                ));
            }
        }
        // Reverse so that popping visits them in name order.
        for d in subdirs.into_iter().rev() {
            stack.push(d);
        }
    }
    Ok(stats)
}

fn copy_validated<W: Write>(path: &Path, b: &mut tar::Builder<W>) -> Result<TarStats> {
    let mut archive = tar::Archive::new(open_archive(path)?);
    let mut stats = TarStats::default();
    let mut seen: HashSet<String> = HashSet::new();
    let entries = archive.entries().map_err(|e| {
        invalid(
            "seed_path",
            format!("{} is not a tar archive: {e}", path.display()),
        )
    })?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| invalid("seed_path", format!("{} is corrupt: {e}", path.display())))?;
        let raw = entry.path_bytes();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        // `tar -C dir -cf x.tar .` stores the root itself as `./`: nothing to import.
        if kind == tar::EntryType::Directory
            && raw
                .trim_matches('/')
                .trim_start_matches("./")
                .trim_matches('.')
                .is_empty()
        {
            continue;
        }
        let member = normalize_member(&raw).map_err(|r| invalid("seed_path", r))?;
        let mut h = entry.header().clone();
        match kind {
            tar::EntryType::Directory => {
                b.append_data(&mut h, format!("{member}/"), io::empty())
                    .map_err(|e| CoreError::io("archive", path, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                stats.bytes_written += entry.size();
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, &member, &mut entry)
                    .map_err(|e| CoreError::io("archive", path, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !symlink_stays_inside(&member, &target) {
                    return Err(invalid(
                        "seed_path",
                        format!("symlink `{member}` -> `{target}` points outside the workspace"),
                    ));
                }
                b.append_link(&mut h, &member, &target)
                    .map_err(|e| CoreError::io("archive", path, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = normalize_member(&target).map_err(|r| invalid("seed_path", r))?;
                if !seen.contains(&target) {
                    return Err(invalid(
                        "seed_path",
                        format!(
                            "hard link `{member}` -> `{target}` does not point to an earlier member"
                        ),
                    ));
                }
                b.append_link(&mut h, &member, &target)
                    .map_err(|e| CoreError::io("archive", path, e))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(invalid(
                    "seed_path",
                    format!(
                        "member `{member}` has unsupported type {other:?} (devices, FIFOs and sockets are refused)"
                    ),
                ));
            }
        }
        stats.entry_count += 1;
        seen.insert(member);
    }
    Ok(stats)
}

/// Materializes an exported tar (from the guest, hence hostile) at `output`, which must not
/// exist. `single` is true when the export is one file or symlink rather than a directory.
pub fn extract_export<R: Read>(tar_bytes: R, output: &Path, single: bool) -> Result<TarStats> {
    if std::fs::symlink_metadata(output).is_ok() {
        return Err(invalid(
            "output_path",
            format!(
                "{} already exists; choose a path that does not",
                output.display()
            ),
        ));
    }
    let parent = output.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| CoreError::io("create directory", parent, e))?;
    // Extract into a temp dir beside the output, then rename into place: atomic, and a
    // failed export leaves nothing at `output`.
    let staging = parent.join(format!(
        ".pyro-export-{}-{}",
        std::process::id(),
        crate::host::new_id()
    ));
    std::fs::create_dir(&staging).map_err(|e| CoreError::io("create directory", &staging, e))?;
    let res = extract_into(tar_bytes, &staging);
    let res = res.and_then(|stats| {
        let src = if single {
            let mut it = std::fs::read_dir(&staging)
                .map_err(|e| CoreError::io("read directory", &staging, e))?;
            match (it.next(), it.next()) {
                (Some(Ok(only)), None) => only.path(),
                _ => {
                    return Err(invalid(
                        "path",
                        "the export did not contain exactly one entry",
                    ));
                }
            }
        } else {
            staging.clone()
        };
        std::fs::rename(&src, output).map_err(|e| CoreError::io("rename", output, e))?;
        Ok(stats)
    });
    let _ = std::fs::remove_dir_all(&staging);
    res
}

fn extract_into<R: Read>(tar_bytes: R, dir: &Path) -> Result<TarStats> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let mut stats = TarStats::default();
    let mut symlinks: Vec<String> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| invalid("export", format!("the guest sent a corrupt archive: {e}")))?
    {
        let mut entry = entry
            .map_err(|e| invalid("export", format!("the guest sent a corrupt archive: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let member = normalize_member(&raw).map_err(|r| invalid("export", r))?;
        if symlinks
            .iter()
            .any(|s| member.starts_with(&format!("{s}/")))
        {
            return Err(invalid(
                "export",
                format!("member `{member}` lies under a symlink"),
            ));
        }
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !symlink_stays_inside(&member, &target) {
                    return Err(invalid(
                        "export",
                        format!(
                            "symlink `{member}` -> `{target}` points outside the exported tree"
                        ),
                    ));
                }
                symlinks.push(member.clone());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                stats.bytes_written += entry.size();
            }
            tar::EntryType::Directory | tar::EntryType::Link => {}
            other => {
                return Err(invalid(
                    "export",
                    format!("member `{member}` has unsupported type {other:?}"),
                ));
            }
        }
        let ok = entry
            .unpack_in(dir)
            .map_err(|e| CoreError::io("extract", dir.join(&member), e))?;
        if !ok {
            return Err(invalid(
                "export",
                format!("member `{member}` escapes the output"),
            ));
        }
        stats.entry_count += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalized_or_refused() {
        assert_eq!(normalize_member("./a//b/").unwrap(), "a/b");
        assert!(normalize_member("../a").is_err());
        assert!(normalize_member("a/../../b").is_err());
        assert!(normalize_member("/etc/passwd").is_err());
        assert!(normalize_member(".").is_err());
    }

    #[test]
    fn symlink_containment_is_lexical() {
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
        let stats = Seed::resolve(root).unwrap().write_tar(&tar_path).unwrap();
        assert_eq!(stats.entry_count, 5);
        assert_eq!(stats.bytes_written, 17);
        let exported = out.path().join("copy");
        let data = std::fs::read(&tar_path).unwrap();
        extract_export(&data[..], &exported, false).unwrap();
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
        // The output must not exist.
        assert!(extract_export(&data[..], &exported, false).is_err());
    }

    #[test]
    fn escaping_symlinks_in_a_seed_are_refused() {
        let src = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", src.path().join("etc")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = Seed::resolve(src.path())
            .unwrap()
            .write_tar(&out.path().join("x.tar"))
            .unwrap_err();
        assert!(err.to_string().contains("points outside"), "{err}");
        assert!(!out.path().join("x.tar").exists());
        assert!(!out.path().join("x.tar.partial").exists());
    }

    #[test]
    fn bad_seed_paths_are_explained() {
        let err = Seed::resolve(Path::new("/no/such/seed")).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = Seed::resolve(f.path()).unwrap_err();
        assert!(err.to_string().contains("neither a directory nor"), "{err}");
    }
}
