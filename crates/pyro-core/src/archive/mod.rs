//! Host-side tar handling for workspaces: building the baseline from a seed (a directory or a
//! `.tar`/`.tar.gz`/`.tgz`/`.tar.zst` archive), validating archives, and materializing exports.
//!
//! Everything here treats archive contents as hostile, and every host effect goes through
//! file descriptors ([`crate::hostfs`]):
//! - member names must be relative without `..`, and UTF-8 in seeds and sync pushes (a name
//!   that is not is refused, never rewritten); exports keep names as bytes;
//! - symlinks may only point inside the tree, resolved as the filesystem would, through every
//!   other link of the tree ([`links_stay_inside`]): `s -> .` plus `up -> s/..` is refused;
//! - hard links may only point to earlier regular members; devices, FIFOs and sockets are
//!   refused; no member may lie below a symlink;
//! - sizes are bounded as the stream goes ([`TransferLimits`]); exported files are written
//!   sparse (all-zero blocks become holes);
//! - exports never carry set-user-id, set-group-id or sticky bits onto the host.
//!
//! Unlike the reference, in-tree relative symlinks (`node_modules/.bin`, venvs) and hard links
//! are kept, and file modes (the executable bit) survive.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{CoreError, Result};
use crate::hostfs::{self, Exact, HostDir, HostPath};

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

/// Bounds on what a seed, a sync push, an export or a diff may move or hold. Checked as the
/// stream goes, before the bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// Regular-file bytes (apparent size) of one seed or sync push.
    pub max_seed_bytes: u64,
    /// Regular-file bytes (apparent size) of one export.
    pub max_export_bytes: u64,
    /// Bytes of `/workspace` a diff reads from the guest.
    pub max_diff_bytes: u64,
    /// Members of one archive.
    pub max_entries: u64,
}

/// Default for [`TransferLimits::max_seed_bytes`] (`PYRO_MAX_SEED_BYTES`).
pub const DEFAULT_MAX_SEED_BYTES: u64 = 4 << 30;
/// Default for [`TransferLimits::max_export_bytes`] (`PYRO_MAX_EXPORT_BYTES`).
pub const DEFAULT_MAX_EXPORT_BYTES: u64 = 4 << 30;
/// Default for [`TransferLimits::max_diff_bytes`] (`PYRO_MAX_DIFF_BYTES`).
pub const DEFAULT_MAX_DIFF_BYTES: u64 = 512 << 20;
/// Default for [`TransferLimits::max_entries`] (`PYRO_MAX_ARCHIVE_ENTRIES`).
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            max_seed_bytes: DEFAULT_MAX_SEED_BYTES,
            max_export_bytes: DEFAULT_MAX_EXPORT_BYTES,
            max_diff_bytes: DEFAULT_MAX_DIFF_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl TransferLimits {
    /// The defaults, overridden by `PYRO_MAX_SEED_BYTES`, `PYRO_MAX_EXPORT_BYTES`,
    /// `PYRO_MAX_DIFF_BYTES` and `PYRO_MAX_ARCHIVE_ENTRIES` (positive integers).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// [`Self::from_env`] over any source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut l = Self::default();
        for (var, slot) in [
            ("PYRO_MAX_SEED_BYTES", &mut l.max_seed_bytes),
            ("PYRO_MAX_EXPORT_BYTES", &mut l.max_export_bytes),
            ("PYRO_MAX_DIFF_BYTES", &mut l.max_diff_bytes),
            ("PYRO_MAX_ARCHIVE_ENTRIES", &mut l.max_entries),
        ] {
            if let Some(v) = get(var) {
                *slot = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| CoreError::Invalid {
                        field: "environment",
                        reason: format!("{var}={v:?} is not a positive integer"),
                    })?;
            }
        }
        Ok(l)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Counts members and bytes against limits as a stream goes.
struct Budget {
    field: &'static str,
    what: &'static str,
    setting: &'static str,
    max_bytes: u64,
    max_entries: u64,
    stats: TarStats,
}

impl Budget {
    fn new(
        field: &'static str,
        what: &'static str,
        setting: &'static str,
        max_bytes: u64,
        limits: &TransferLimits,
    ) -> Self {
        Budget {
            field,
            what,
            setting,
            max_bytes,
            max_entries: limits.max_entries,
            stats: TarStats::default(),
        }
    }

    fn entry(&mut self) -> Result<()> {
        self.stats.entry_count += 1;
        if self.stats.entry_count > self.max_entries {
            return Err(invalid(
                self.field,
                format!(
                    "{} has more than {} members (PYRO_MAX_ARCHIVE_ENTRIES)",
                    self.what, self.max_entries
                ),
            ));
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<()> {
        self.stats.bytes_written = self.stats.bytes_written.saturating_add(n);
        if self.stats.bytes_written > self.max_bytes {
            return Err(invalid(
                self.field,
                format!(
                    "{} holds more than {} bytes of file content ({} sets the limit)",
                    self.what, self.max_bytes, self.setting
                ),
            ));
        }
        Ok(())
    }
}

/// Normalizes a relative member path: drops `.` parts, refuses absolute paths, `..` and empty.
pub fn normalize_member(name: &str) -> std::result::Result<String, String> {
    let parts = member_parts(Path::new(name)).map_err(|why| format!("member `{name}` {why}"))?;
    Ok(parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

/// The plain components of a member name (bytes kept as they are).
fn member_parts(name: &Path) -> std::result::Result<Vec<OsString>, &'static str> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    if parts.is_empty() {
        return Err("names no file");
    }
    Ok(parts)
}

/// A member name as a UTF-8 string, or a clear refusal (seeds and sync pushes).
fn utf8_member(field: &'static str, raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        invalid(
            field,
            format!(
                "member name {} is not UTF-8; rename it (pyro refuses rather than rewrite it)",
                crate::error::quote_bytes(raw)
            ),
        )
    })?;
    normalize_member(s).map_err(|r| invalid(field, r))
}

/// Whether a symlink at `member` with `target` stays inside a tree that holds nothing but
/// it and its parent directories. [`links_stay_inside`] is the full check.
pub fn symlink_stays_inside(member: &str, target: &str) -> bool {
    let mut tree = TreeShape::default();
    tree.add(Path::new(member), Some(Path::new(target)), false);
    tree.check().is_ok()
}

/// The shape of a tree as far as symlink resolution needs it: its links and its real
/// directories (explicit directory members and every parent of a member).
#[derive(Debug, Default)]
pub struct TreeShape {
    links: HashMap<PathBuf, PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl TreeShape {
    /// Records a member: a symlink (with its target), a directory, or anything else.
    pub fn add(&mut self, member: &Path, link: Option<&Path>, is_dir: bool) {
        for a in member.ancestors().skip(1) {
            if a.as_os_str().is_empty() || !self.dirs.insert(a.to_path_buf()) {
                break;
            }
        }
        if is_dir {
            self.dirs.insert(member.to_path_buf());
        }
        if let Some(t) = link {
            self.links.insert(member.to_path_buf(), t.to_path_buf());
        }
    }

    /// Whether `member` lies below a symlink recorded so far.
    pub fn under_link(&self, member: &Path) -> bool {
        member
            .ancestors()
            .skip(1)
            .any(|a| self.links.contains_key(a))
    }

    /// Checks every link (see [`links_stay_inside`]).
    pub fn check(&self) -> std::result::Result<(), BadLink> {
        links_stay_inside(&self.links, &self.dirs)
    }
}

/// A symlink [`links_stay_inside`] refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLink {
    /// The link.
    pub member: PathBuf,
    /// Its target.
    pub target: PathBuf,
    /// Why it is refused.
    pub why: LinkProblem,
}

/// Why a symlink is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProblem {
    /// It resolves outside the tree (absolute, above the root, or back out of a name that is
    /// not a directory of the tree).
    Outside,
    /// Resolving it follows more than 40 links: a loop.
    Loop,
}

/// Most links followed while resolving one target (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

/// Checks every symlink of a tree (member path -> target), resolving each target as the
/// kernel would: through any link of the tree met on the way (chains, `s/..` through
/// `s -> .`), up to 40 hops. A `..` may only leave a real directory of the tree (`dirs`):
/// stepping back out of a name the tree does not hold as a directory would depend on what
/// the destination holds there, so it is refused. Returns the first link that leaves the
/// tree, is absolute, loops, or steps back out of an unknown name.
pub fn links_stay_inside(
    links: &HashMap<PathBuf, PathBuf>,
    dirs: &HashSet<PathBuf>,
) -> std::result::Result<(), BadLink> {
    let mut sorted: Vec<_> = links.iter().collect();
    sorted.sort();
    for (member, target) in sorted {
        if let Err(why) = resolve_link(links, dirs, member, target) {
            return Err(BadLink {
                member: member.clone(),
                target: target.clone(),
                why,
            });
        }
    }
    Ok(())
}

fn resolve_link(
    links: &HashMap<PathBuf, PathBuf>,
    dirs: &HashSet<PathBuf>,
    member: &Path,
    target: &Path,
) -> std::result::Result<(), LinkProblem> {
    use LinkProblem::{Loop, Outside};
    if target.as_os_str().is_empty() || target.is_absolute() {
        return Err(Outside);
    }
    let mut at: Vec<OsString> = member
        .parent()
        .map(|p| p.iter().map(OsStr::to_os_string).collect())
        .unwrap_or_default();
    let mut pending: Vec<OsString> = target.iter().rev().map(OsStr::to_os_string).collect();
    let mut hops = 0usize;
    while let Some(part) = pending.pop() {
        match part.as_bytes() {
            b"" | b"." => {}
            b".." => {
                let here: PathBuf = at.iter().collect();
                if at.is_empty() || !dirs.contains(&here) {
                    return Err(Outside);
                }
                at.pop();
            }
            _ => {
                at.push(part);
                let here: PathBuf = at.iter().collect();
                if let Some(next) = links.get(&here) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Loop);
                    }
                    if next.as_os_str().is_empty() || next.is_absolute() {
                        return Err(Outside);
                    }
                    at.pop();
                    pending.extend(next.iter().rev().map(OsStr::to_os_string));
                }
            }
        }
    }
    Ok(())
}

fn check_links(field: &'static str, tree: &TreeShape, what: &str) -> Result<()> {
    tree.check().map_err(|b| {
        let (m, t) = (b.member.display(), b.target.display());
        invalid(
            field,
            match b.why {
                LinkProblem::Outside => format!(
                    "symlink `{m}` -> `{t}` points outside {what} (resolved through the tree's other links)"
                ),
                LinkProblem::Loop => format!(
                    "symlink `{m}` -> `{t}` never resolves: following it passes through more than {MAX_LINK_HOPS} links (a loop)"
                ),
            },
        )
    })
}

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

fn link_target(entry: &tar::Entry<'_, impl Read>) -> Option<PathBuf> {
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

/// Where an export lands: its parent directory, opened, and its own name there.
#[derive(Debug)]
pub struct ExportTarget {
    /// The parent directory.
    pub parent: HostDir,
    /// The output's name in it.
    pub name: OsString,
    /// The output as shown in results.
    pub shown: PathBuf,
}

impl ExportTarget {
    /// Opens the parent of `output` (creating missing directories without following
    /// symlinks) and checks that the output does not exist yet.
    pub fn prepare(output: &HostPath) -> Result<ExportTarget> {
        let shown = output.shown().to_path_buf();
        let (parent, name) = output.output_parent().map_err(|e| {
            invalid(
                "output_path",
                format!("{}: {}", shown.display(), hostfs::explain(&e)),
            )
        })?;
        let t = ExportTarget {
            parent,
            name,
            shown,
        };
        t.check_absent()?;
        Ok(t)
    }

    fn check_absent(&self) -> Result<()> {
        let exists = self
            .parent
            .stat(&self.name)
            .map_err(|e| CoreError::io("stat", &self.shown, e))?
            .is_some();
        if exists {
            return Err(invalid(
                "output_path",
                format!(
                    "{} already exists; choose a path that does not",
                    self.shown.display()
                ),
            ));
        }
        Ok(())
    }
}

/// The prefix of export staging directories; the process id follows, so that a later export
/// can remove those of processes that died mid-export.
const STAGING_PREFIX: &str = ".pyro-export-";

/// Removes staging directories in `dir` left by exports whose process is gone.
fn remove_stale_staging(dir: &HostDir) {
    let Ok(names) = dir.entries() else { return };
    for n in names {
        let Some(rest) = n.to_str().and_then(|s| s.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && crate::host::process_start_ticks(pid).is_none()
        {
            let _ = dir.remove_tree(&n);
        }
    }
}

/// Materializes an exported tar (from the guest, hence hostile) at `target`, which must not
/// exist: extracted through descriptors into a staging directory beside it, every symlink
/// checked through the whole tree, then renamed into place without replacing anything.
/// `single` is true when the export is one file or symlink rather than a directory.
pub fn extract_export<R: Read>(
    tar_bytes: R,
    target: &ExportTarget,
    single: bool,
    limits: &TransferLimits,
) -> Result<TarStats> {
    target.check_absent()?;
    remove_stale_staging(&target.parent);
    let staging = OsString::from(format!(
        "{STAGING_PREFIX}{}-{}",
        std::process::id(),
        crate::host::new_id()
    ));
    target
        .parent
        .mkdir(&staging, 0o700)
        .map_err(|e| CoreError::io("create directory", target.parent.shown().join(&staging), e))?;
    let res = target
        .parent
        .subdir(Path::new(&staging))
        .map_err(|e| CoreError::io("open", target.parent.shown().join(&staging), e))
        .and_then(|dir| {
            let stats = extract_into(tar_bytes, &dir, limits)?;
            let (from_dir, from): (&HostDir, OsString) = if single {
                let names = dir
                    .entries()
                    .map_err(|e| CoreError::io("read directory", dir.shown(), e))?;
                match <[OsString; 1]>::try_from(names) {
                    Ok([only]) => (&dir, only),
                    Err(_) => {
                        return Err(invalid(
                            "path",
                            "the export did not contain exactly one entry",
                        ));
                    }
                }
            } else {
                (&target.parent, staging.clone())
            };
            from_dir
                .rename_noreplace(&from, &target.parent, &target.name)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        invalid(
                            "output_path",
                            format!(
                                "{} already exists; choose a path that does not",
                                target.shown.display()
                            ),
                        )
                    } else {
                        CoreError::io("rename", &target.shown, e)
                    }
                })?;
            Ok(stats)
        });
    let _ = target.parent.remove_tree(&staging);
    res
}

fn extract_into<R: Read>(tar_bytes: R, dir: &HostDir, limits: &TransferLimits) -> Result<TarStats> {
    let field = "export";
    let mut budget = Budget::new(
        field,
        "the export",
        "PYRO_MAX_EXPORT_BYTES",
        limits.max_export_bytes,
        limits,
    );
    let mut archive = tar::Archive::new(tar_bytes);
    let mut tree = TreeShape::default();
    let mut regular: HashSet<PathBuf> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut root_mode = 0o755;
    let corrupt = |e: io::Error| invalid(field, format!("the guest sent a corrupt archive: {e}"));
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let shown = crate::error::quote_bytes(&raw);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory && raw.iter().all(|&c| c == b'.' || c == b'/') {
            // The exported directory itself.
            root_mode = entry.header().mode().unwrap_or(0o755) & 0o777;
            continue;
        }
        let parts = member_parts(Path::new(OsStr::from_bytes(&raw)))
            .map_err(|why| invalid(field, format!("member {shown} {why}")))?;
        let member: PathBuf = parts.iter().collect();
        if tree.under_link(&member) {
            return Err(invalid(
                field,
                format!("member {shown} lies below a symlink"),
            ));
        }
        budget.entry()?;
        let (parent_rel, name) = match parts.split_last() {
            Some((name, parent)) => (parent.iter().collect::<PathBuf>(), name.clone()),
            None => return Err(invalid(field, format!("member {shown} names no file"))),
        };
        let parent = dir
            .create_dirs(&parent_rel)
            .map_err(|e| invalid(field, format!("member {shown}: {}", hostfs::explain(&e))))?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let at = |e: io::Error| CoreError::io("extract", dir.shown().join(&member), e);
        match kind {
            tar::EntryType::Directory => {
                match parent.mkdir(&name, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let st = parent.stat(&name).map_err(at)?;
                        if st.map(|s| s.st_mode & libc::S_IFMT) != Some(libc::S_IFDIR) {
                            return Err(invalid(field, format!("member {shown} appears twice")));
                        }
                    }
                    Err(e) => return Err(at(e)),
                }
                tree.add(&member, None, true);
                dir_modes.push((member, mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let len = entry.size();
                budget.bytes(len)?;
                let mut f = parent.create_file(&name, 0o600).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        invalid(field, format!("member {shown} appears twice"))
                    } else {
                        at(e)
                    }
                })?;
                hostfs::write_sparse(&mut f, &mut entry, len).map_err(at)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(at)?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = f.set_modified(t);
                }
                tree.add(&member, None, false);
                regular.insert(member);
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry).unwrap_or_default();
                parent.symlink(&name, target.as_os_str()).map_err(at)?;
                tree.add(&member, Some(&target), false);
            }
            tar::EntryType::Link => {
                let target = link_target(&entry).unwrap_or_default();
                let tparts = member_parts(&target).map_err(|why| {
                    invalid(field, format!("hard link {shown}: its target {why}"))
                })?;
                let tpath: PathBuf = tparts.iter().collect();
                if !regular.contains(&tpath) {
                    return Err(invalid(
                        field,
                        format!(
                            "hard link {shown} -> `{}` does not point to an earlier regular file",
                            tpath.display()
                        ),
                    ));
                }
                let src = dir.open_beneath(&tpath, libc::O_PATH, 0).map_err(|e| {
                    invalid(field, format!("hard link {shown}: {}", hostfs::explain(&e)))
                })?;
                parent.hard_link(src.as_fd(), &name).map_err(at)?;
                tree.add(&member, None, false);
                regular.insert(member);
            }
            other => {
                return Err(invalid(
                    field,
                    format!("member {shown} has unsupported type {other:?}"),
                ));
            }
        }
    }
    check_links(field, &tree, "the exported tree")?;
    // Directory modes last (a read-only directory would refuse its own members), deepest
    // first; never set-id or sticky bits.
    dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
    dir_modes.push((PathBuf::new(), root_mode));
    for (d, mode) in dir_modes {
        let sub = dir
            .subdir(&d)
            .map_err(|e| CoreError::io("open", dir.shown().join(&d), e))?;
        let fd = sub.fd();
        // SAFETY: a valid fd; result checked.
        if unsafe { libc::fchmod(std::os::fd::AsRawFd::as_raw_fd(&fd), mode) } < 0 {
            return Err(CoreError::io(
                "chmod",
                dir.shown().join(&d),
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(budget.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
