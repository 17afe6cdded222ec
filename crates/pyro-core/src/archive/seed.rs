//! Seeds: a host directory or a tar archive opened once ([`Seed`]), read as hostile input
//! into a validated baseline tar (names, links, kinds and sizes checked as the stream goes).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::limits::Budget;
use super::tree::check_links;
use super::{SeedMode, TarStats, TransferLimits, TreeShape, invalid, utf8_member};
use crate::error::{CoreError, Result};
use crate::hostfs::{self, Exact, HostDir, HostPath};

/// What a seed is, opened: later reads never look the path up again.
#[derive(Debug)]
enum SeedSrc {
    Directory(HostDir),
    Archive(File),
}

/// A seed (or sync source), opened when it was resolved.
#[derive(Debug)]
pub struct Seed {
    src: SeedSrc,
    shown: PathBuf,
    field: &'static str,
}

/// The archive name endings a file seed may have.
const ARCHIVE_EXTENSIONS: [&str; 5] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"];

impl Seed {
    /// Opens a seed given by the user (`~` expanded). `field` names the parameter in errors.
    pub fn resolve(raw: &Path) -> Result<Seed> {
        Self::open(&HostPath::local(raw), "seed_path")
    }

    /// Opens a seed or sync source: a directory, or a regular file with an archive ending.
    /// The path is resolved once, here (confined paths without following any symlink); a
    /// FIFO, device, socket or pseudo filesystem (`/proc`, `/sys`) is refused.
    pub fn open(path: &HostPath, field: &'static str) -> Result<Seed> {
        let shown = path.shown().to_path_buf();
        if path.is_empty() || shown.to_string_lossy().trim().is_empty() {
            return Err(invalid(field, "the path is empty"));
        }
        let fd = path.open_read().map_err(|e| {
            invalid(
                field,
                format!(
                    "{} cannot be read: {}",
                    shown.display(),
                    hostfs::explain(&e)
                ),
            )
        })?;
        let st = hostfs::fstat(fd.as_fd()).map_err(|e| CoreError::io("stat", &shown, e))?;
        let fmt = st.st_mode & libc::S_IFMT;
        if let Some(fs) = hostfs::fs_type(fd.as_fd())
            .ok()
            .and_then(hostfs::pseudo_fs_name)
        {
            return Err(invalid(
                field,
                format!(
                    "{} is on the kernel's {fs} pseudo filesystem, not a tree of files",
                    shown.display()
                ),
            ));
        }
        if fmt == libc::S_IFDIR {
            return Ok(Seed {
                src: SeedSrc::Directory(dir_from_fd(fd, &shown)),
                shown,
                field,
            });
        }
        let lower = shown.to_string_lossy().to_ascii_lowercase();
        let is_archive = ARCHIVE_EXTENSIONS.iter().any(|ext| lower.ends_with(ext));
        if fmt == libc::S_IFREG && is_archive {
            return Ok(Seed {
                src: SeedSrc::Archive(File::from(fd)),
                shown,
                field,
            });
        }
        Err(invalid(
            field,
            format!(
                "{} is neither a directory nor a .tar, .tar.gz, .tgz or .tar.zst archive",
                shown.display()
            ),
        ))
    }

    /// The mode recorded in results.
    pub fn mode(&self) -> SeedMode {
        match self.src {
            SeedSrc::Directory(_) => SeedMode::Directory,
            SeedSrc::Archive(_) => SeedMode::TarArchive,
        }
    }

    /// The path as given (resolved to absolute).
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Writes the seed as a plain, validated tar to `out` (atomically), within `limits`.
    pub fn write_tar(&self, out: &Path, limits: &TransferLimits) -> Result<TarStats> {
        let tmp = out.with_extension("tar.partial");
        let file = File::create(&tmp).map_err(|e| CoreError::io("create", &tmp, e))?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        builder.follow_symlinks(false);
        let mut budget = Budget::new(
            self.field,
            "the seed",
            "PYRO_MAX_SEED_BYTES",
            limits.max_seed_bytes,
            limits,
        );
        let res = match &self.src {
            SeedSrc::Directory(dir) => tar_directory(self.field, dir, &mut builder, &mut budget),
            SeedSrc::Archive(f) => {
                copy_validated(self.field, f, &self.shown, &mut builder, &mut budget)
            }
        };
        let res = res.and_then(|()| {
            builder
                .into_inner()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .and_then(|f| f.sync_all())
                .map_err(|e| CoreError::io("write", &tmp, e))
        });
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, out).map_err(|e| CoreError::io("rename", out, e))?;
        Ok(budget.stats)
    }
}

fn dir_from_fd(fd: OwnedFd, shown: &Path) -> HostDir {
    HostDir::from_parts(fd, shown.to_path_buf())
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

/// Opens a seed archive, transparently decompressing gzip or zstd (detected by magic bytes).
fn open_archive(f: &File, shown: &Path) -> Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let n = f
        .read_at(&mut magic, 0)
        .map_err(|e| CoreError::io("read", shown, e))?;
    let mut f = f.try_clone().map_err(|e| CoreError::io("open", shown, e))?;
    f.rewind().map_err(|e| CoreError::io("read", shown, e))?;
    let r = BufReader::new(f);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| {
            invalid(
                "seed_path",
                format!("{} is not a valid zstd stream: {e}", shown.display()),
            )
        })?;
        Box::new(d)
    } else {
        Box::new(r)
    })
}

fn tar_directory<W: Write>(
    field: &'static str,
    root: &HostDir,
    b: &mut tar::Builder<W>,
    budget: &mut Budget,
) -> Result<()> {
    let mut hard: HashMap<(u64, u64), String> = HashMap::new();
    let mut tree = TreeShape::default();
    let mut stack: Vec<(HostDir, String)> = Vec::new();
    let io_err = |action: &'static str, dir: &HostDir, name: &OsStr| {
        let p = dir.shown().join(name);
        move |e: io::Error| CoreError::io(action, p, e)
    };
    let top = root
        .subdir(Path::new(""))
        .map_err(|e| CoreError::io("open", root.shown(), e))?;
    stack.push((top, String::new()));
    // Depth-first, children sorted by name, so the archive is deterministic. Every lookup is
    // relative to an open directory and follows no symlink.
    while let Some((dir, rel)) = stack.pop() {
        if let Some(fs) = dir.fs_type().ok().and_then(hostfs::pseudo_fs_name) {
            return Err(invalid(
                field,
                format!(
                    "{} is on the kernel's {fs} pseudo filesystem",
                    dir.shown().display()
                ),
            ));
        }
        let names = dir
            .entries()
            .map_err(|e| CoreError::io("read directory", dir.shown(), e))?;
        let mut subdirs = Vec::new();
        for name in names {
            let name_s = std::str::from_utf8(name.as_bytes()).map_err(|_| {
                invalid(
                    field,
                    format!(
                        "{}/{} is not a UTF-8 file name; rename it (pyro refuses rather than rewrite it)",
                        dir.shown().display(),
                        crate::error::quote_bytes(name.as_bytes())
                    ),
                )
            })?;
            let member = if rel.is_empty() {
                name_s.to_string()
            } else {
                format!("{rel}/{name_s}")
            };
            let Some(st) = dir.stat(&name).map_err(io_err("stat", &dir, &name))? else {
                continue; // removed while we listed: not part of the seed
            };
            let fmt = st.st_mode & libc::S_IFMT;
            let mut h = tar::Header::new_gnu();
            h.set_mode(st.st_mode & 0o7777);
            h.set_mtime(st.st_mtime.max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
            budget.entry()?;
            match fmt {
                libc::S_IFDIR => {
                    let sub = dir
                        .subdir(Path::new(&name))
                        .map_err(io_err("open", &dir, &name))?;
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{member}/"), io::empty())
                        .map_err(io_err("archive", &dir, &name))?;
                    tree.add(Path::new(&member), None, true);
                    subdirs.push((sub, member));
                }
                libc::S_IFLNK => {
                    let target = dir
                        .read_link(&name)
                        .map_err(io_err("read link", &dir, &name))?;
                    let t = target.to_str().ok_or_else(|| {
                        invalid(
                            field,
                            format!("symlink `{member}` has a target that is not UTF-8"),
                        )
                    })?;
                    tree.add(Path::new(&member), Some(Path::new(t)), false);
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &member, t)
                        .map_err(io_err("archive", &dir, &name))?;
                }
                libc::S_IFREG => {
                    let fd = dir
                        .open_beneath(Path::new(&name), libc::O_RDONLY | libc::O_NONBLOCK, 0)
                        .map_err(io_err("open", &dir, &name))?;
                    let st = hostfs::fstat(fd.as_fd()).map_err(io_err("stat", &dir, &name))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                        return Err(invalid(
                            field,
                            format!("`{member}` changed while it was read"),
                        ));
                    }
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = hard.get(&key) {
                            h.set_entry_type(tar::EntryType::Link);
                            h.set_size(0);
                            b.append_link(&mut h, &member, first)
                                .map_err(io_err("archive", &dir, &name))?;
                            continue;
                        }
                        hard.insert(key, member.clone());
                    }
                    let len = st.st_size.max(0) as u64;
                    budget.bytes(len)?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(len);
                    let data = Exact::new(File::from(fd), len);
                    b.append_data(&mut h, &member, data)
                        .map_err(io_err("archive", &dir, &name))?;
                }
                _ => {
                    return Err(invalid(
                        field,
                        format!(
                            "`{member}` is a device, FIFO or socket; only files, directories and symlinks can be seeded"
                        ),
                    ));
                }
            }
        }
        // Reverse so that popping visits them in name order.
        for d in subdirs.into_iter().rev() {
            stack.push(d);
        }
    }
    check_links(field, &tree, "the seed")
}

pub(super) fn link_target(entry: &tar::Entry<'_, impl Read>) -> Option<PathBuf> {
    entry
        .link_name_bytes()
        .map(|b| PathBuf::from(OsStr::from_bytes(&b)))
}

fn copy_validated<W: Write>(
    field: &'static str,
    file: &File,
    shown: &Path,
    b: &mut tar::Builder<W>,
    budget: &mut Budget,
) -> Result<()> {
    let mut archive = tar::Archive::new(open_archive(file, shown)?);
    let mut seen: HashSet<String> = HashSet::new();
    let mut regular: HashSet<String> = HashSet::new();
    let mut tree = TreeShape::default();
    let entries = archive.entries().map_err(|e| {
        invalid(
            field,
            format!("{} is not a tar archive: {e}", shown.display()),
        )
    })?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| invalid(field, format!("{} is corrupt: {e}", shown.display())))?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        // `tar -C dir -cf x.tar .` stores the root itself as `./`: nothing to import.
        if kind == tar::EntryType::Directory && raw.iter().all(|&c| c == b'.' || c == b'/') {
            continue;
        }
        let member = utf8_member(field, &raw)?;
        if tree.under_link(Path::new(&member)) {
            return Err(invalid(
                field,
                format!("member `{member}` lies below a symlink"),
            ));
        }
        if !seen.insert(member.clone()) {
            return Err(invalid(field, format!("member `{member}` appears twice")));
        }
        budget.entry()?;
        let mut h = entry.header().clone();
        match kind {
            tar::EntryType::Directory => {
                tree.add(Path::new(&member), None, true);
                b.append_data(&mut h, format!("{member}/"), io::empty())
                    .map_err(|e| CoreError::io("archive", shown, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let len = entry.size();
                budget.bytes(len)?;
                h.set_entry_type(tar::EntryType::Regular);
                let data = Exact::new(&mut entry, len);
                b.append_data(&mut h, &member, data)
                    .map_err(|e| CoreError::io("archive", shown, e))?;
                tree.add(Path::new(&member), None, false);
                regular.insert(member.clone());
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry).unwrap_or_default();
                let t = target.to_str().ok_or_else(|| {
                    invalid(
                        field,
                        format!("symlink `{member}` has a target that is not UTF-8"),
                    )
                })?;
                tree.add(Path::new(&member), Some(&target), false);
                b.append_link(&mut h, &member, t)
                    .map_err(|e| CoreError::io("archive", shown, e))?;
            }
            tar::EntryType::Link => {
                let target = link_target(&entry).unwrap_or_default();
                let target = utf8_member(field, target.as_os_str().as_bytes())?;
                if !regular.contains(&target) {
                    return Err(invalid(
                        field,
                        format!(
                            "hard link `{member}` -> `{target}` does not point to an earlier regular file"
                        ),
                    ));
                }
                b.append_link(&mut h, &member, &target)
                    .map_err(|e| CoreError::io("archive", shown, e))?;
                regular.insert(member.clone());
            }
            other => {
                return Err(invalid(
                    field,
                    format!(
                        "member `{member}` has unsupported type {other:?} (devices, FIFOs and sockets are refused)"
                    ),
                ));
            }
        }
    }
    if let Some(m) = seen.iter().find(|m| tree.under_link(Path::new(m))) {
        return Err(invalid(field, format!("member `{m}` lies below a symlink")));
    }
    check_links(field, &tree, "the workspace")
}
