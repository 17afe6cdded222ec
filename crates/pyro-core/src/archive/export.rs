//! Exports: a guest archive extracted onto the host through descriptors into a staging
//! directory next to the target ([`ExportTarget`], [`extract_export`]), sparse and without
//! set-id bits.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::limits::Budget;
use super::seed::link_target;
use super::tree::check_links;
use super::{TarStats, TransferLimits, TreeShape, invalid, member_parts};
use crate::error::{CoreError, Result};
use crate::hostfs::{self, HostDir, HostPath};

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
