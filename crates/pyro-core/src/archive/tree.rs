//! Tree shape and link checks: every symlink of a tree must resolve inside it, through every
//! other link of the tree, as the filesystem would ([`links_stay_inside`]).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::Result;

use super::invalid;

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

pub(super) fn check_links(field: &'static str, tree: &TreeShape, what: &str) -> Result<()> {
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
