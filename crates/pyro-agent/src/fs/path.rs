//! Paths relative to the root: lexical normalization of request paths, tar member names and
//! symlink targets. Nothing here touches the filesystem; confinement on disk is `openat2`'s.

use std::fmt;

use super::FsError;

/// A normalized path below the root: no empty, `.` or `..` components, no NUL bytes.
/// The empty path is the root itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath {
    comps: Vec<Vec<u8>>,
}

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    /// The components.
    pub fn components(&self) -> &[Vec<u8>] {
        &self.comps
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &[u8] {
        self.comps.last().map_or(&[][..], |c| c.as_slice())
    }

    /// The parent (the root's parent is the root).
    pub fn parent(&self) -> RelPath {
        let mut comps = self.comps.clone();
        comps.pop();
        Self { comps }
    }

    /// This path with one more component (which must be a plain name).
    pub fn child(&self, name: &[u8]) -> RelPath {
        let mut comps = self.comps.clone();
        comps.push(name.to_vec());
        Self { comps }
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &RelPath) -> RelPath {
        let mut comps = self.comps.clone();
        comps.extend(other.comps.iter().cloned());
        Self { comps }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.comps.len() >= other.comps.len() && self.comps[..other.comps.len()] == other.comps[..]
    }

    /// The path as bytes joined by `/` (empty for the root).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.comps.join(&b'/')
    }

    /// The path as `root/rel`, for results and messages.
    pub fn display_under(&self, root: &str) -> String {
        if self.is_root() {
            return root.to_string();
        }
        let rel = String::from_utf8_lossy(&self.to_bytes()).into_owned();
        if root == "/" {
            format!("/{rel}")
        } else {
            format!("{root}/{rel}")
        }
    }

    /// Splits `bytes` on `/`, dropping empty and `.` components; `..` and NUL are refused.
    fn parse_components(bytes: &[u8], what: &str, original: &str) -> Result<RelPath, FsError> {
        if bytes.contains(&0) {
            return Err(FsError::bad(
                original,
                format!("{what} contains a NUL byte"),
            ));
        }
        let mut comps = Vec::new();
        for c in bytes.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    return Err(FsError::bad(
                        original,
                        format!("{what} must not contain '..'"),
                    ));
                }
                c => comps.push(c.to_vec()),
            }
        }
        Ok(Self { comps })
    }

    /// Normalizes a path from a request: relative to the root, or absolute under the root
    /// (the request's `root`, or `/workspace`). Anything else, and `..`, is refused.
    pub fn from_request(path: &str, root: &str) -> Result<RelPath, FsError> {
        let bytes = path.as_bytes();
        let rest = if bytes.first() == Some(&b'/') {
            match strip_dir_prefix(path, root)
                .or_else(|| strip_dir_prefix(path, pyro_proto::api::WORKSPACE_ROOT))
            {
                Some(rest) => rest,
                None => {
                    return Err(FsError::bad(
                        path,
                        format!("path is outside the root {root}"),
                    ));
                }
            }
        } else {
            path
        };
        Self::parse_components(rest.as_bytes(), "path", path)
    }

    /// Normalizes a tar member name (or hard-link target): relative, no `..`.
    pub fn from_member(name: &[u8]) -> Result<RelPath, FsError> {
        let shown = String::from_utf8_lossy(name).into_owned();
        if name.first() == Some(&b'/') {
            return Err(FsError::bad(&shown, "member name is absolute"));
        }
        Self::parse_components(name, "member name", &shown)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// `path` with the directory prefix `dir` removed, if `path` is `dir` or lies below it.
fn strip_dir_prefix<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        // The root is `/`: every absolute path lies below it.
        return Some(path);
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Checks that a symlink at `link` (relative to the root) with `target` points inside the
/// root when resolved lexically: relative, non-empty, and never climbing above the root.
pub fn check_symlink_target(link: &RelPath, target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink target is empty".into());
    }
    if target.contains(&0) {
        return Err("symlink target contains a NUL byte".into());
    }
    if target.first() == Some(&b'/') {
        return Err("symlink target is absolute".into());
    }
    // Start in the link's directory.
    let mut depth = link.components().len().saturating_sub(1);
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    return Err("symlink target escapes the root".into());
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rel(p: &str) -> String {
        RelPath::from_request(p, "/workspace").unwrap().to_string()
    }

    fn rel_err(p: &str, root: &str) -> String {
        RelPath::from_request(p, root).unwrap_err().to_string()
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(rel("src/a.rs"), "src/a.rs");
        assert_eq!(rel("./src//a.rs/"), "src/a.rs");
        assert_eq!(rel(""), "");
        assert_eq!(rel("."), "");
        assert_eq!(rel("a/./b"), "a/b");
        assert_eq!(rel("name with spaces "), "name with spaces ");
    }

    #[test]
    fn absolute_paths_under_the_root_are_stripped() {
        assert_eq!(rel("/workspace"), "");
        assert_eq!(rel("/workspace/"), "");
        assert_eq!(rel("/workspace/src/a.rs"), "src/a.rs");
        let r = RelPath::from_request("/tmp/t1/x/y", "/tmp/t1").unwrap();
        assert_eq!(r.to_string(), "x/y");
        // The guest spelling works whatever the root is.
        let r = RelPath::from_request("/workspace/x", "/tmp/t1").unwrap();
        assert_eq!(r.to_string(), "x");
        let r = RelPath::from_request("/tmp/t1/", "/tmp/t1/").unwrap();
        assert!(r.is_root());
    }

    #[test]
    fn escapes_are_refused() {
        for p in ["../x", "a/../../x", "a/..", "..", "/workspace/../etc"] {
            let e = rel_err(p, "/workspace");
            assert!(e.contains(".."), "{p}: {e}");
            assert!(e.contains(p), "{p}: {e}");
        }
        for p in ["/etc/passwd", "/workspacefoo/x", "/", "/tmp/t10/x"] {
            let e = rel_err(p, "/tmp/t1");
            assert!(e.contains("outside"), "{p}: {e}");
        }
        assert!(rel_err("a\0b", "/workspace").contains("NUL"));
    }

    #[test]
    fn member_names() {
        assert_eq!(RelPath::from_member(b"./a/b/").unwrap().to_string(), "a/b");
        assert!(RelPath::from_member(b"./").unwrap().is_root());
        assert!(RelPath::from_member(b"/etc/x").is_err());
        assert!(RelPath::from_member(b"../../x").is_err());
        assert!(RelPath::from_member(b"a/../b").is_err());
        assert_eq!(
            RelPath::from_member(b"\xff\xfe").unwrap().components()[0],
            b"\xff\xfe"
        );
    }

    #[test]
    fn display_and_relations() {
        let p = RelPath::from_request("a/b/c", "/w").unwrap();
        assert_eq!(p.display_under("/workspace"), "/workspace/a/b/c");
        assert_eq!(p.display_under("/"), "/a/b/c");
        assert_eq!(RelPath::root().display_under("/w"), "/w");
        assert_eq!(p.parent().to_string(), "a/b");
        assert_eq!(p.name(), b"c");
        assert!(p.starts_with(&p.parent()));
        assert!(!p.parent().starts_with(&p));
        assert!(p.starts_with(&RelPath::root()));
        assert_eq!(p.parent().child(b"d").to_string(), "a/b/d");
    }

    #[test]
    fn symlink_targets() {
        let at = |p: &str| RelPath::from_request(p, "/w").unwrap();
        assert!(check_symlink_target(&at("a/l"), b"b").is_ok());
        assert!(check_symlink_target(&at("a/l"), b"../b").is_ok());
        assert!(check_symlink_target(&at("a/b/l"), b"../../c/./d").is_ok());
        assert!(check_symlink_target(&at("l"), b".").is_ok());
        assert!(check_symlink_target(&at("l"), b"../x").is_err());
        assert!(check_symlink_target(&at("a/l"), b"../../x").is_err());
        assert!(check_symlink_target(&at("a/l"), b"x/../../..").is_err());
        assert!(check_symlink_target(&at("s"), b"../..").is_err());
        assert!(check_symlink_target(&at("s"), b"/etc").is_err());
        assert!(check_symlink_target(&at("s"), b"").is_err());
    }
}
