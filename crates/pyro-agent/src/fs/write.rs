//! Applying a batch of changes as one unit.
//!
//! Three phases:
//! 1. **Validate** every change against the tree as the earlier changes of the batch will
//!    leave it (an overlay over what is on disk). Nothing is touched.
//! 2. **Stage** the contents of every write in a temp file in its destination directory
//!    (missing parents are created), with its final mode, fsynced.
//! 3. **Apply** in order: renames over the destinations, deletes, mkdirs, symlinks; then the
//!    touched directories are fsynced.
//!
//! A failure before phase 3 removes the temp files and the directories phase 2 created: the
//! tree is as it was. Phase 3 only fails on I/O errors of the filesystem itself, which no
//! sequence of renames can undo; its error says how far it got.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use pyro_proto::api::{Change, ChangeOp, WriteEntry, WriteFiles, WriteResult};

use super::path::{RelPath, check_symlink_target};
use super::sys::{self, BENEATH_NO_SYMLINKS, Kind};
use super::{DataSource, FsError, Root, temp_name};

/// Most changes one batch may carry.
pub const MAX_CHANGES: usize = 10_000;

/// Mode of a new file written without one.
const NEW_FILE_MODE: u32 = 0o644;
/// Mode of a new directory created without one.
const NEW_DIR_MODE: u32 = 0o755;

/// What the tree holds at a path once the earlier changes of the batch are applied.
#[derive(Clone, Copy, Debug)]
struct Cur {
    kind: Kind,
    perm: u32,
    owner: Option<(u32, u32)>,
    /// A directory the batch creates (nothing of it is on disk yet).
    planned_dir: bool,
}

enum Step {
    Write {
        rel: RelPath,
        size: u64,
        perm: u32,
        owner: Option<(u32, u32)>,
    },
    Delete {
        rel: RelPath,
        is_dir: bool,
    },
    Mkdir {
        rel: RelPath,
        perm: Option<u32>,
    },
    Symlink {
        rel: RelPath,
        target: Vec<u8>,
        replace: bool,
    },
}

struct Plan<'a> {
    root: &'a Root,
    /// `None`: the batch removes the path.
    overlay: HashMap<RelPath, Option<Cur>>,
}

impl Plan<'_> {
    fn state(&self, rel: &RelPath) -> Result<Option<Cur>, FsError> {
        if let Some(cur) = self.overlay.get(rel) {
            return Ok(*cur);
        }
        // Below a directory the batch creates, nothing exists yet.
        let mut at = rel.parent();
        while !at.is_root() {
            if let Some(Some(c)) = self.overlay.get(&at)
                && c.planned_dir
            {
                return Ok(None);
            }
            at = at.parent();
        }
        let st = self.root.lstat_opt(rel, BENEATH_NO_SYMLINKS)?;
        Ok(st.map(|st| Cur {
            kind: st.kind,
            perm: st.perm,
            owner: Some((st.uid, st.gid)),
            planned_dir: false,
        }))
    }

    /// Every parent must be a directory, or absent (then created).
    fn check_parents(&mut self, rel: &RelPath) -> Result<(), FsError> {
        let mut at = RelPath::root();
        let comps = rel.components();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            at = at.child(comp);
            if let Some(None) = self.overlay.get(&at) {
                return Err(FsError::bad(
                    self.root.show(&at),
                    "is deleted earlier in this batch",
                ));
            }
            match self.state(&at)? {
                Some(c) if c.kind == Kind::Dir => {}
                Some(c) if c.kind == Kind::Symlink => {
                    return Err(FsError::bad(
                        self.root.show(&at),
                        "is a symlink (symlinks are not followed)",
                    ));
                }
                Some(_) => return Err(FsError::bad(self.root.show(&at), "is not a directory")),
                None => {
                    self.overlay
                        .insert(at.clone(), Some(planned_dir(NEW_DIR_MODE)));
                }
            }
        }
        Ok(())
    }

    fn dir_is_empty(&self, rel: &RelPath, cur: &Cur) -> Result<bool, FsError> {
        let depth = rel.components().len() + 1;
        let overlay_child = self
            .overlay
            .iter()
            .any(|(k, v)| v.is_some() && k.components().len() == depth && k.starts_with(rel));
        if overlay_child {
            return Ok(false);
        }
        if cur.planned_dir {
            return Ok(true);
        }
        let dir = match self.root.open_dir(rel, BENEATH_NO_SYMLINKS) {
            Ok(d) => d,
            Err(FsError::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        let names = sys::read_dir_names(dir.as_fd())
            .map_err(|e| FsError::io("reading directory", self.root.show(rel), e))?;
        Ok(names.iter().all(|n| {
            let child = rel.child(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
            matches!(self.overlay.get(&child), Some(None))
        }))
    }
}

fn planned_dir(perm: u32) -> Cur {
    Cur {
        kind: Kind::Dir,
        perm,
        owner: None,
        planned_dir: true,
    }
}

fn check_mode(root: &Root, rel: &RelPath, mode: Option<u32>) -> Result<(), FsError> {
    match mode {
        Some(m) if m > 0o7777 => Err(FsError::bad(
            root.show(rel),
            format!("mode {m:#o} has bits beyond 0o7777"),
        )),
        _ => Ok(()),
    }
}

fn validate(root: &Root, changes: &[Change]) -> Result<Vec<Step>, FsError> {
    if changes.len() > MAX_CHANGES {
        return Err(FsError::invalid(format!(
            "a batch holds at most {MAX_CHANGES} changes, not {}",
            changes.len()
        )));
    }
    let mut plan = Plan {
        root,
        overlay: HashMap::new(),
    };
    let mut steps = Vec::with_capacity(changes.len());
    for change in changes {
        let rel = root.parse(change.path())?;
        if rel.is_root() {
            return Err(FsError::bad(
                root.show(&rel),
                "the root itself cannot be changed",
            ));
        }
        plan.check_parents(&rel)?;
        let cur = plan.state(&rel)?;
        let shown = root.show(&rel);
        let step = match change {
            Change::Write { size, mode, .. } => {
                check_mode(root, &rel, *mode)?;
                let (perm, owner) = match cur {
                    None => (mode.unwrap_or(NEW_FILE_MODE), None),
                    Some(c) if c.kind == Kind::File => (mode.unwrap_or(c.perm), c.owner),
                    Some(c) => return Err(wrong_type(&shown, c.kind, "a regular file")),
                };
                plan.overlay.insert(
                    rel.clone(),
                    Some(Cur {
                        kind: Kind::File,
                        perm,
                        owner,
                        planned_dir: false,
                    }),
                );
                Step::Write {
                    rel,
                    size: *size,
                    perm,
                    owner,
                }
            }
            Change::Delete { .. } => {
                let Some(c) = cur else {
                    return Err(FsError::NotFound { path: shown });
                };
                if c.kind == Kind::Dir && !plan.dir_is_empty(&rel, &c)? {
                    return Err(FsError::bad(shown, "directory is not empty"));
                }
                plan.overlay.insert(rel.clone(), None);
                Step::Delete {
                    rel,
                    is_dir: c.kind == Kind::Dir,
                }
            }
            Change::Mkdir { mode, .. } => {
                check_mode(root, &rel, *mode)?;
                match cur {
                    None => {
                        plan.overlay
                            .insert(rel.clone(), Some(planned_dir(mode.unwrap_or(NEW_DIR_MODE))));
                        Step::Mkdir {
                            rel,
                            perm: Some(mode.unwrap_or(NEW_DIR_MODE)),
                        }
                    }
                    Some(c) if c.kind == Kind::Dir => Step::Mkdir { rel, perm: *mode },
                    Some(c) => return Err(wrong_type(&shown, c.kind, "a directory")),
                }
            }
            Change::Symlink { target, .. } => {
                check_symlink_target(&rel, target.as_bytes())
                    .map_err(|reason| FsError::bad(shown.clone(), reason))?;
                let replace = match cur {
                    None => false,
                    Some(c) if c.kind == Kind::Symlink => true,
                    Some(c) => return Err(wrong_type(&shown, c.kind, "a symlink")),
                };
                plan.overlay.insert(
                    rel.clone(),
                    Some(Cur {
                        kind: Kind::Symlink,
                        perm: 0o777,
                        owner: None,
                        planned_dir: false,
                    }),
                );
                Step::Symlink {
                    rel,
                    target: target.as_bytes().to_vec(),
                    replace,
                }
            }
        };
        steps.push(step);
    }
    Ok(steps)
}

fn wrong_type(shown: &str, kind: Kind, wanted: &str) -> FsError {
    let is = match kind {
        Kind::File => "a regular file",
        Kind::Dir => "a directory",
        Kind::Symlink => "a symlink",
        Kind::Other => "a special file",
    };
    FsError::bad(shown, format!("is {is}, not {wanted}"))
}

/// Undoes phase 2 when dropped: temp files always, created directories unless kept.
struct Rollback<'a> {
    root: &'a Root,
    temps: Vec<Option<(OwnedFd, Vec<u8>)>>,
    created: Vec<RelPath>,
    keep_dirs: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        for (dir, name) in self.temps.iter_mut().filter_map(Option::take) {
            let _ = sys::unlinkat(dir.as_fd(), &name, false);
        }
        if !self.keep_dirs {
            for d in self.created.iter().rev() {
                if let Ok(p) = self.root.open_dir(&d.parent(), BENEATH_NO_SYMLINKS) {
                    let _ = sys::unlinkat(p.as_fd(), d.name(), true);
                }
            }
        }
    }
}

/// Creates a fresh temp file in `dir`; returns it and its name.
pub(crate) fn create_temp(dir: &OwnedFd) -> io::Result<(std::fs::File, Vec<u8>)> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    loop {
        let name = temp_name();
        match sys::openat2(dir.as_fd(), &name, flags, 0o600, BENEATH_NO_SYMLINKS) {
            Ok(fd) => return Ok((sys::file(fd), name)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn stage(
    root: &Root,
    steps: &[Step],
    input: &mut DataSource,
    rb: &mut Rollback<'_>,
) -> Result<Vec<OwnedFd>, FsError> {
    let mut dirs = Vec::new();
    for step in steps {
        let Step::Write {
            rel,
            size,
            perm,
            owner,
        } = step
        else {
            continue;
        };
        let shown = root.show(rel);
        let dir = root.make_dirs(&rel.parent(), &mut rb.created)?;
        let (mut file, name) = create_temp(&dir)
            .map_err(|e| FsError::io("creating a temp file for", shown.clone(), e))?;
        let keep = dir
            .try_clone()
            .map_err(|e| FsError::io("staging", shown.clone(), e))?;
        rb.temps.push(Some((keep, name)));
        let copied = io::copy(&mut input.take(*size), &mut file).map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                FsError::invalid(format!("the data for {shown} did not arrive: {e}"))
            }
            _ => FsError::io("writing", shown.clone(), e),
        })?;
        if copied != *size {
            return Err(FsError::invalid(format!(
                "the data ended after {copied} of the {size} bytes for {shown}"
            )));
        }
        file.set_permissions(std::fs::Permissions::from_mode(*perm))
            .map_err(|e| FsError::io("setting the mode of", shown.clone(), e))?;
        if let Some((uid, gid)) = owner {
            // Keeping the owner of a replaced file needs privilege; without it the writer owns it.
            let _ = sys::fchown(file.as_fd(), *uid, *gid);
            // chown clears set-id bits: restore them.
            if perm & 0o6000 != 0 {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(*perm));
            }
        }
        file.sync_all()
            .map_err(|e| FsError::io("syncing", shown.clone(), e))?;
        dirs.push(dir);
    }
    let mut extra = [0u8; 1];
    loop {
        match input.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => {
                return Err(FsError::invalid(
                    "more data arrived than the writes declare",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::invalid(format!("the data did not arrive: {e}"))),
        }
    }
    Ok(dirs)
}

fn apply(
    root: &Root,
    steps: &[Step],
    staged: &[OwnedFd],
    rb: &mut Rollback<'_>,
) -> Result<Vec<WriteEntry>, FsError> {
    let mut entries = Vec::with_capacity(steps.len());
    let mut touched: Vec<OwnedFd> = Vec::new();
    let mut write_ix = 0;
    for (i, step) in steps.iter().enumerate() {
        let res = apply_one(root, step, staged, &mut write_ix, rb, &mut touched);
        match res {
            Ok(e) => entries.push(e),
            Err(e) => {
                let n = i + 1;
                let path = root.show(step_path(step));
                return Err(e.context(format!(
                    "change #{n} ({path}) failed after {i} changes were applied"
                )));
            }
        }
    }
    for dir in staged.iter().chain(&touched) {
        match sys::fsync(dir.as_fd()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(FsError::io("syncing a directory of", "the batch", e)),
        }
    }
    Ok(entries)
}

fn step_path(step: &Step) -> &RelPath {
    match step {
        Step::Write { rel, .. }
        | Step::Delete { rel, .. }
        | Step::Mkdir { rel, .. }
        | Step::Symlink { rel, .. } => rel,
    }
}

fn apply_one(
    root: &Root,
    step: &Step,
    staged: &[OwnedFd],
    write_ix: &mut usize,
    rb: &mut Rollback<'_>,
    touched: &mut Vec<OwnedFd>,
) -> Result<WriteEntry, FsError> {
    let rel = step_path(step);
    let shown = root.show(rel);
    let entry = |op, bytes_written| WriteEntry {
        path: shown.clone(),
        op,
        bytes_written,
    };
    match step {
        Step::Write { size, .. } => {
            let ix = *write_ix;
            *write_ix += 1;
            let (Some(dir), Some(Some((_, tmp)))) = (staged.get(ix), rb.temps.get(ix)) else {
                return Err(FsError::Internal {
                    reason: "a staged write is missing".into(),
                });
            };
            sys::renameat(dir.as_fd(), tmp, dir.as_fd(), rel.name())
                .map_err(|e| FsError::io("renaming into", shown.clone(), e))?;
            rb.temps[ix] = None;
            Ok(entry(ChangeOp::Write, *size))
        }
        Step::Delete { is_dir, .. } => {
            let dir = root.open_dir(&rel.parent(), BENEATH_NO_SYMLINKS)?;
            sys::unlinkat(dir.as_fd(), rel.name(), *is_dir)
                .map_err(|e| FsError::io("deleting", shown.clone(), e))?;
            touched.push(dir);
            Ok(entry(ChangeOp::Delete, 0))
        }
        Step::Mkdir { perm, .. } => {
            let parent = root.make_dirs(&rel.parent(), &mut rb.created)?;
            match sys::mkdirat(parent.as_fd(), rel.name(), 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(FsError::io("creating directory", shown, e)),
            }
            if let Some(perm) = perm {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                let fd = sys::openat2(parent.as_fd(), rel.name(), flags, 0, BENEATH_NO_SYMLINKS)
                    .map_err(|e| FsError::io("opening directory", shown.clone(), e))?;
                sys::file(fd)
                    .set_permissions(std::fs::Permissions::from_mode(*perm))
                    .map_err(|e| FsError::io("setting the mode of", shown.clone(), e))?;
            }
            touched.push(parent);
            Ok(entry(ChangeOp::Mkdir, 0))
        }
        Step::Symlink {
            target, replace, ..
        } => {
            let parent = root.make_dirs(&rel.parent(), &mut rb.created)?;
            if *replace {
                let tmp = temp_name();
                sys::symlinkat(target, parent.as_fd(), &tmp)
                    .map_err(|e| FsError::io("creating symlink", shown.clone(), e))?;
                if let Err(e) = sys::renameat(parent.as_fd(), &tmp, parent.as_fd(), rel.name()) {
                    let _ = sys::unlinkat(parent.as_fd(), &tmp, false);
                    return Err(FsError::io("replacing symlink", shown, e));
                }
            } else {
                sys::symlinkat(target, parent.as_fd(), rel.name())
                    .map_err(|e| FsError::io("creating symlink", shown.clone(), e))?;
            }
            touched.push(parent);
            Ok(entry(ChangeOp::Symlink, 0))
        }
    }
}

/// Validates, stages and applies `req.changes`, reading the writes' bytes from `input`.
pub fn write(req: &WriteFiles, input: &mut DataSource) -> Result<WriteResult, FsError> {
    let root = Root::open(&req.root)?;
    let steps = validate(&root, &req.changes)?;
    let mut rb = Rollback {
        root: &root,
        temps: Vec::new(),
        created: Vec::new(),
        keep_dirs: false,
    };
    let staged = stage(&root, &steps, input, &mut rb)?;
    // From here on, created directories may hold applied changes.
    rb.keep_dirs = true;
    let entries = apply(&root, &steps, &staged, &mut rb)?;
    Ok(WriteResult { entries })
}
