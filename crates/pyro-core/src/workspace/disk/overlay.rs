//! The guest's root filesystem as overlayfs shows it, computed from its two layers without
//! mounting anything: the workspace disk's `/upper` tree over the environment's read-only
//! base image.
//!
//! The rules are the kernel's (Documentation/filesystems/overlayfs.rst):
//! - an upper entry hides the lower entry of the same name, except that an upper directory
//!   over a lower directory merges the two (upper entries win);
//! - a whiteout (a character device 0:0 in the upper layer) hides the lower entry and is
//!   itself not shown;
//! - an opaque upper directory (`trusted.overlay.opaque` = `y`) hides the whole lower
//!   directory;
//! - an upper directory with `trusted.overlay.redirect` (a directory renamed with
//!   `redirect_dir=on`) merges with the lower directory the redirect names, not the one of
//!   its own name.
//!
//! `metacopy` (upper inodes whose data stays in the lower layer) is off in pyro's guest
//! (init mounts without it), so a regular upper file always holds its own data.
//!
//! Paths here are bytes (`/a/b`), always absolute and normalized (no `.`, `..` or empty
//! components) once they reach a [`Layer`]. Everything is bounded: directory reads by
//! [`Layer::children`]'s `max`, symlink hops by [`MAX_SYMLINK_HOPS`].

use std::collections::{BTreeMap, HashSet};

/// Most symlinks followed while resolving one path (Linux's limit).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// The type of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What a layer says about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Bytes of a regular file or symlink target.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// A whiteout: a character device 0:0 (upper layer only).
    pub whiteout: bool,
    /// An opaque directory (upper layer only).
    pub opaque: bool,
    /// `trusted.overlay.redirect` of a directory (upper layer only).
    pub redirect: Option<Vec<u8>>,
}

impl Node {
    /// A plain node (for layers and tests).
    pub fn new(kind: NodeKind, size: u64, mode: u32) -> Node {
        Node {
            kind,
            size,
            mode,
            whiteout: false,
            opaque: false,
            redirect: None,
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == NodeKind::Directory
    }
}

/// Why a merged lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no such file or directory")]
    NotFound,
    #[error("a path component is not a directory")]
    NotADirectory,
    #[error("more than {MAX_SYMLINK_HOPS} symbolic links on the way")]
    Loop,
    /// A layer could not be read (a corrupt image, an I/O error).
    #[error("{0}")]
    Layer(String),
}

/// One filesystem tree (an ext4 image, or a synthetic one in tests).
pub trait Layer {
    /// The node at `path`, whose parent components are all directories of this layer;
    /// `None` when there is none.
    fn node(&self, path: &[u8]) -> Result<Option<Node>, MergeError>;
    /// The children of directory `path`, at most `max` of them (a directory with more
    /// gives `max + 1`, so that the caller sees it was cut), in any order.
    fn children(&self, path: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Node)>, MergeError>;
    /// The target of symlink `path`.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, MergeError>;
}

/// Which layer a visible entry comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Upper,
    Lower,
}

/// A visible entry of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its merged path (symlinks on the way resolved).
    pub path: Vec<u8>,
    pub node: Node,
    pub origin: Origin,
    /// The path in its origin layer (differs from `path` below a redirected directory).
    pub layer_path: Vec<u8>,
    /// For a directory: the upper directory path that merges into it, if any.
    upper_dir: Option<Vec<u8>>,
    /// For a directory: the lower directory path that shows through, if any.
    lower_dir: Option<Vec<u8>>,
}

/// The merged view of an upper layer over an optional lower one.
pub struct Merged<'a> {
    pub upper: &'a dyn Layer,
    pub lower: Option<&'a dyn Layer>,
}

impl std::fmt::Debug for Merged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merged")
            .field("lower", &self.lower.is_some())
            .finish()
    }
}

/// Normalizes an absolute byte path lexically: `.` and empty components dropped, `..` takes
/// one away (never above `/`). The result is `/` or `/a/b` with no trailing slash.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    join_parts(&parts)
}

fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

/// `dir` + `/` + `name`.
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

impl Merged<'_> {
    fn root(&self) -> Entry {
        Entry {
            path: b"/".to_vec(),
            node: Node::new(NodeKind::Directory, 0, 0o755),
            origin: Origin::Upper,
            layer_path: b"/".to_vec(),
            upper_dir: Some(b"/".to_vec()),
            lower_dir: self.lower.map(|_| b"/".to_vec()),
        }
    }

    /// The merged entry `name` inside directory entry `dir`; `None` when hidden or absent.
    fn step(&self, dir: &Entry, name: &[u8]) -> Result<Option<Entry>, MergeError> {
        let path = child_path(&dir.path, name);
        let upper = match &dir.upper_dir {
            Some(u) => {
                let p = child_path(u, name);
                self.upper.node(&p)?.map(|n| (p, n))
            }
            None => None,
        };
        // The lower entry, where it can show: under no upper entry, or under a merging
        // upper directory (then at the redirect's path when it has one).
        let lower_at = |p: Vec<u8>| -> Result<Option<(Vec<u8>, Node)>, MergeError> {
            match self.lower {
                Some(l) => Ok(l.node(&p)?.map(|n| (p, n))),
                None => Ok(None),
            }
        };
        match upper {
            Some((_, n)) if n.whiteout => Ok(None),
            Some((up, n)) if n.is_dir() => {
                let lower = match (&dir.lower_dir, n.opaque) {
                    (Some(ld), false) => {
                        let lp = match &n.redirect {
                            Some(r) if r.first() == Some(&b'/') => normalize(r),
                            Some(r) => normalize(&child_path(ld, r)),
                            None => child_path(ld, name),
                        };
                        lower_at(lp)?.filter(|(_, ln)| ln.is_dir()).map(|(p, _)| p)
                    }
                    _ => None,
                };
                Ok(Some(Entry {
                    path,
                    node: n,
                    origin: Origin::Upper,
                    layer_path: up.clone(),
                    upper_dir: Some(up),
                    lower_dir: lower,
                }))
            }
            Some((up, n)) => Ok(Some(Entry {
                path,
                node: n,
                origin: Origin::Upper,
                layer_path: up,
                upper_dir: None,
                lower_dir: None,
            })),
            None => {
                let Some(ld) = &dir.lower_dir else {
                    return Ok(None);
                };
                Ok(lower_at(child_path(ld, name))?.map(|(lp, n)| Entry {
                    path,
                    lower_dir: n.is_dir().then(|| lp.clone()),
                    node: n,
                    origin: Origin::Lower,
                    layer_path: lp,
                    upper_dir: None,
                }))
            }
        }
    }

    /// Resolves `path` (absolute), following symlinks in every component but the last.
    pub fn lookup(&self, path: &[u8]) -> Result<Entry, MergeError> {
        let mut pending = normalize(path);
        let mut hops = 0;
        'restart: loop {
            let mut cur = self.root();
            let parts: Vec<Vec<u8>> = pending
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            for (i, name) in parts.iter().enumerate() {
                if !cur.node.is_dir() {
                    return Err(MergeError::NotADirectory);
                }
                let next = self.step(&cur, name)?.ok_or(MergeError::NotFound)?;
                let last = i + 1 == parts.len();
                if next.node.kind == NodeKind::Symlink && !last {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(MergeError::Loop);
                    }
                    let target = self.read_link(&next)?;
                    let base = if target.first() == Some(&b'/') {
                        target
                    } else {
                        child_path(parent_of(&next.path), &target)
                    };
                    let mut rest = base;
                    for p in &parts[i + 1..] {
                        rest = child_path(&rest, p);
                    }
                    pending = normalize(&rest);
                    continue 'restart;
                }
                cur = next;
            }
            return Ok(cur);
        }
    }

    /// The target of a symlink entry.
    pub fn read_link(&self, e: &Entry) -> Result<Vec<u8>, MergeError> {
        match e.origin {
            Origin::Upper => self.upper.read_link(&e.layer_path),
            Origin::Lower => match self.lower {
                Some(l) => l.read_link(&e.layer_path),
                None => Err(MergeError::NotFound),
            },
        }
    }

    /// The visible children of directory entry `dir`, sorted by name; at most `max` (the
    /// bool says whether some were left out).
    pub fn children(&self, dir: &Entry, max: usize) -> Result<(Vec<Entry>, bool), MergeError> {
        let mut cut = false;
        let mut upper: BTreeMap<Vec<u8>, (Vec<u8>, Node)> = BTreeMap::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        if let Some(u) = &dir.upper_dir {
            let list = self.upper.children(u, max)?;
            cut |= list.len() > max;
            for (name, n) in list.into_iter().take(max) {
                if n.whiteout {
                    hidden.insert(name);
                } else {
                    upper.insert(name.clone(), (child_path(u, &name), n));
                }
            }
        }
        let mut lower: BTreeMap<Vec<u8>, (Vec<u8>, Node)> = BTreeMap::new();
        if let (Some(ld), Some(l)) = (&dir.lower_dir, self.lower) {
            let list = l.children(ld, max)?;
            cut |= list.len() > max;
            for (name, n) in list.into_iter().take(max) {
                if !hidden.contains(&name) {
                    lower.insert(name.clone(), (child_path(ld, &name), n));
                }
            }
        }
        let mut out: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        for (name, (up, n)) in upper {
            let path = child_path(&dir.path, &name);
            let entry = if n.is_dir() {
                let lower_dir = if n.opaque || dir.lower_dir.is_none() {
                    None
                } else if n.redirect.is_some() {
                    // Rare: let the lookup find the redirect's target.
                    self.step(dir, &name)?.and_then(|e| e.lower_dir)
                } else {
                    lower
                        .get(&name)
                        .filter(|(_, ln)| ln.is_dir())
                        .map(|(p, _)| p.clone())
                };
                Entry {
                    path,
                    node: n,
                    origin: Origin::Upper,
                    layer_path: up.clone(),
                    upper_dir: Some(up),
                    lower_dir,
                }
            } else {
                Entry {
                    path,
                    node: n,
                    origin: Origin::Upper,
                    layer_path: up,
                    upper_dir: None,
                    lower_dir: None,
                }
            };
            out.insert(name, entry);
        }
        for (name, (lp, n)) in lower {
            if out.contains_key(&name) {
                continue;
            }
            out.insert(
                name.clone(),
                Entry {
                    path: child_path(&dir.path, &name),
                    lower_dir: n.is_dir().then(|| lp.clone()),
                    node: n,
                    origin: Origin::Lower,
                    layer_path: lp,
                    upper_dir: None,
                },
            );
        }
        cut |= out.len() > max;
        Ok((out.into_values().take(max).collect(), cut))
    }

    /// `dir`'s visible descendants, depth-first pre-order, sorted by name within each
    /// directory, directories (not symlinks to them) descended into; at most `max` (the
    /// bool says whether some were left out).
    pub fn walk(&self, dir: &Entry, max: usize) -> Result<(Vec<Entry>, bool), MergeError> {
        let mut out = Vec::new();
        // A stack of sibling lists, each reversed so that `pop` yields the next by name.
        let (first, mut cut) = self.children(dir, max)?;
        let mut stack: Vec<Vec<Entry>> = vec![first.into_iter().rev().collect()];
        while let Some(top) = stack.last_mut() {
            let Some(e) = top.pop() else {
                stack.pop();
                continue;
            };
            if out.len() >= max {
                cut = true;
                break;
            }
            let is_dir = e.node.is_dir();
            out.push(e);
            if is_dir && let Some(d) = out.last() {
                let (kids, c) = self.children(d, max - out.len())?;
                cut |= c;
                stack.push(kids.into_iter().rev().collect());
            }
        }
        Ok((out, cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic layer: path → node, plus symlink targets.
    #[derive(Default)]
    struct Tree {
        nodes: BTreeMap<Vec<u8>, Node>,
        links: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    impl Tree {
        fn dir(mut self, p: &str) -> Self {
            self.nodes
                .insert(p.into(), Node::new(NodeKind::Directory, 0, 0o755));
            self
        }
        fn file(mut self, p: &str, size: u64) -> Self {
            self.nodes
                .insert(p.into(), Node::new(NodeKind::File, size, 0o644));
            self
        }
        fn link(mut self, p: &str, to: &str) -> Self {
            self.nodes.insert(
                p.into(),
                Node::new(NodeKind::Symlink, to.len() as u64, 0o777),
            );
            self.links.insert(p.into(), to.into());
            self
        }
        fn whiteout(mut self, p: &str) -> Self {
            let mut n = Node::new(NodeKind::CharDevice, 0, 0);
            n.whiteout = true;
            self.nodes.insert(p.into(), n);
            self
        }
        fn opaque(mut self, p: &str) -> Self {
            let mut n = Node::new(NodeKind::Directory, 0, 0o755);
            n.opaque = true;
            self.nodes.insert(p.into(), n);
            self
        }
        fn redirect(mut self, p: &str, to: &str) -> Self {
            let mut n = Node::new(NodeKind::Directory, 0, 0o755);
            n.redirect = Some(to.into());
            self.nodes.insert(p.into(), n);
            self
        }
    }

    impl Layer for Tree {
        fn node(&self, path: &[u8]) -> Result<Option<Node>, MergeError> {
            if path == b"/" {
                return Ok(Some(Node::new(NodeKind::Directory, 0, 0o755)));
            }
            Ok(self.nodes.get(path).cloned())
        }
        fn children(&self, path: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Node)>, MergeError> {
            let prefix = if path == b"/" {
                b"/".to_vec()
            } else {
                child_path(path, b"")
            };
            Ok(self
                .nodes
                .iter()
                .filter_map(|(p, n)| {
                    let rest = p.strip_prefix(prefix.as_slice())?;
                    (!rest.is_empty() && !rest.contains(&b'/')).then(|| (rest.to_vec(), n.clone()))
                })
                .take(max + 1)
                .collect())
        }
        fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, MergeError> {
            self.links.get(path).cloned().ok_or(MergeError::NotFound)
        }
    }

    fn base() -> Tree {
        Tree::default()
            .dir("/etc")
            .file("/etc/issue", 10)
            .file("/etc/hosts", 20)
            .dir("/etc/apt")
            .file("/etc/apt/sources.list", 5)
            .dir("/usr")
            .dir("/usr/bin")
            .file("/usr/bin/ls", 100)
            .link("/bin", "usr/bin")
            .dir("/opt")
            .dir("/opt/old")
            .file("/opt/old/a", 1)
    }

    fn names(m: &Merged<'_>, p: &str) -> Vec<String> {
        let d = m.lookup(p.as_bytes()).unwrap();
        let (kids, _) = m.children(&d, 1000).unwrap();
        kids.iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    }

    #[test]
    fn upper_entries_win_and_directories_merge() {
        let lower = base();
        let upper = Tree::default()
            .dir("/etc")
            .file("/etc/hosts", 99)
            .file("/etc/new", 1)
            .dir("/workspace")
            .file("/workspace/a.txt", 3);
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        assert_eq!(
            names(&m, "/etc"),
            ["/etc/apt", "/etc/hosts", "/etc/issue", "/etc/new"]
        );
        let hosts = m.lookup(b"/etc/hosts").unwrap();
        assert_eq!((hosts.origin, hosts.node.size), (Origin::Upper, 99));
        let issue = m.lookup(b"/etc/issue").unwrap();
        assert_eq!(issue.origin, Origin::Lower);
        assert_eq!(
            names(&m, "/"),
            ["/bin", "/etc", "/opt", "/usr", "/workspace"]
        );
    }

    #[test]
    fn whiteouts_hide_lower_entries_and_are_not_shown() {
        let lower = base();
        let upper = Tree::default()
            .dir("/etc")
            .whiteout("/etc/issue")
            .whiteout("/usr");
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        assert_eq!(names(&m, "/etc"), ["/etc/apt", "/etc/hosts"]);
        assert!(matches!(m.lookup(b"/etc/issue"), Err(MergeError::NotFound)));
        assert!(matches!(
            m.lookup(b"/usr/bin/ls"),
            Err(MergeError::NotFound)
        ));
        // The symlink /bin now dangles.
        assert!(matches!(m.lookup(b"/bin/ls"), Err(MergeError::NotFound)));
    }

    #[test]
    fn opaque_directories_hide_the_whole_lower_directory() {
        let lower = base();
        let upper = Tree::default()
            .dir("/opt")
            .opaque("/opt/old")
            .file("/opt/old/b", 2);
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        assert_eq!(names(&m, "/opt/old"), ["/opt/old/b"]);
        let d = m.lookup(b"/").unwrap();
        let (all, cut) = m.walk(&d, 1000).unwrap();
        assert!(!cut);
        let paths: Vec<_> = all
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert!(paths.contains(&"/opt/old/b".to_string()));
        assert!(!paths.contains(&"/opt/old/a".to_string()));
    }

    #[test]
    fn a_redirected_directory_merges_with_its_source() {
        let lower = base();
        let upper = Tree::default()
            .dir("/etc")
            .whiteout("/etc/apt")
            .redirect("/etc/apt2", "apt")
            .file("/etc/apt2/extra", 1);
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        assert_eq!(
            names(&m, "/etc/apt2"),
            ["/etc/apt2/extra", "/etc/apt2/sources.list"]
        );
    }

    #[test]
    fn intermediate_symlinks_are_followed_across_layers_and_the_last_is_not() {
        let lower = base();
        let upper = Tree::default()
            .dir("/usr")
            .dir("/usr/bin")
            .file("/usr/bin/tool", 7)
            .dir("/workspace")
            .link("/workspace/up", "../usr/bin")
            .link("/workspace/loop", "/workspace/loop/x");
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        let ls = m.lookup(b"/bin/ls").unwrap();
        assert_eq!(ls.path, b"/usr/bin/ls");
        assert_eq!(ls.origin, Origin::Lower);
        let tool = m.lookup(b"/workspace/up/tool").unwrap();
        assert_eq!(
            (tool.path.as_slice(), tool.origin),
            (&b"/usr/bin/tool"[..], Origin::Upper)
        );
        let bin = m.lookup(b"/bin").unwrap();
        assert_eq!(bin.node.kind, NodeKind::Symlink);
        assert_eq!(m.read_link(&bin).unwrap(), b"usr/bin");
        assert!(matches!(
            m.lookup(b"/workspace/loop/x"),
            Err(MergeError::Loop)
        ));
        assert!(matches!(
            m.lookup(b"/etc/hosts/x"),
            Err(MergeError::NotADirectory)
        ));
    }

    #[test]
    fn walks_are_pre_order_sorted_and_bounded() {
        let lower = base();
        let upper = Tree::default();
        let m = Merged {
            upper: &upper,
            lower: Some(&lower),
        };
        let root = m.lookup(b"/etc").unwrap();
        let (all, cut) = m.walk(&root, 100).unwrap();
        let paths: Vec<_> = all
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/apt",
                "/etc/apt/sources.list",
                "/etc/hosts",
                "/etc/issue"
            ]
        );
        assert!(!cut);
        let (some, cut) = m.walk(&root, 2).unwrap();
        assert_eq!(some.len(), 2);
        assert!(cut);
    }

    #[test]
    fn no_lower_layer_shows_the_upper_alone() {
        let upper = Tree::default().dir("/workspace").file("/workspace/x", 1);
        let m = Merged {
            upper: &upper,
            lower: None,
        };
        assert_eq!(names(&m, "/"), ["/workspace"]);
    }

    #[test]
    fn normalize_never_goes_above_the_root() {
        assert_eq!(normalize(b"/../../etc/./x//"), b"/etc/x");
        assert_eq!(normalize(b"/"), b"/");
        assert_eq!(normalize(b"/a/b/.."), b"/a");
    }
}
