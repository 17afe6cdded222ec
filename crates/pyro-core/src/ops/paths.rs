//! Host paths named in requests, and their confinement.
//!
//! A request never carries a [`HostPath`]: it carries a [`HostPathParam`] (the string the
//! caller wrote), and the operation turns it into a [`HostPath`] only through the call's
//! [`PathPolicy`]. So every path parameter, including ones added later (secret files, disk
//! exports), is confined to the allowed roots whenever the caller is an MCP client, by
//! construction rather than by remembering to check.
//!
//! [`PathPolicy::Local`] (CLI, Python SDK, Rust callers) takes a path as the user's own: what
//! exists is trusted, and what pyro creates is created without following symlinks.
//! [`PathPolicy::Confined`] (the MCP server) holds [`HostRoots`]: the host paths a client
//! names (`seed_path`, `source_path`, `output_path`) must lie inside the roots the operator
//! allowed.
//!
//! Each root is opened once, when the server starts, as a directory descriptor. A client's
//! path is mapped lexically to one root and a relative path below it (`..` refused; relative
//! paths are taken from the first root), and handed to the core as a confined
//! [`HostPath`]: every later effect (reading a seed, creating an export's directories, its
//! staging tree and its rename) resolves that relative path from the root's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. Nothing is checked by name and used
//! later, so a component swapped for a symlink while a call waits for its workspace lock
//! cannot redirect it: below a root, symlinks are never followed.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::hostfs::{self, HostDir, HostPath};

/// A host path as a request names it (a JSON string), resolved only through the call's
/// [`PathPolicy`] (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct HostPathParam(pub PathBuf);

impl<P: AsRef<Path>> From<P> for HostPathParam {
    fn from(p: P) -> Self {
        Self(p.as_ref().to_path_buf())
    }
}

impl HostPathParam {
    /// The path as text, for a confined lookup (a client's JSON string always is).
    fn text(&self, field: &'static str) -> Result<&str> {
        self.0.to_str().ok_or_else(|| CoreError::Invalid {
            field,
            reason: "the host path is not UTF-8".into(),
        })
    }
}

/// How the host paths of a call's requests resolve.
#[derive(Clone, Debug, Default)]
pub enum PathPolicy {
    /// The caller's own paths (CLI, SDK, library): taken as given.
    #[default]
    Local,
    /// Only under these roots, through their descriptors (MCP clients).
    Confined(Arc<HostRoots>),
}

impl PathPolicy {
    /// An existing host path that will be read (a seed or a sync source).
    pub fn existing(&self, field: &'static str, p: &HostPathParam) -> Result<HostPath> {
        match self {
            Self::Local => local(field, &p.0),
            Self::Confined(roots) => roots.existing(field, p.text(field)?).map_err(Into::into),
        }
    }

    /// A host path that will be created (an export's output).
    pub fn output(&self, field: &'static str, p: &HostPathParam) -> Result<HostPath> {
        match self {
            Self::Local => local(field, &p.0),
            Self::Confined(roots) => roots.output(field, p.text(field)?).map_err(Into::into),
        }
    }
}

fn local(field: &'static str, raw: &Path) -> Result<HostPath> {
    if raw.as_os_str().is_empty() {
        return Err(CoreError::Invalid {
            field,
            reason: "the host path is empty".into(),
        });
    }
    Ok(HostPath::local(raw))
}

impl From<PathRefused> for CoreError {
    fn from(e: PathRefused) -> Self {
        CoreError::Invalid {
            field: e.field,
            reason: e.message,
        }
    }
}

/// The directories under which clients may read and create host files.
#[derive(Clone, Debug)]
pub struct HostRoots {
    roots: Vec<Root>,
}

#[derive(Clone, Debug)]
struct Root {
    /// As given (made absolute), for matching clients' absolute paths.
    given: PathBuf,
    /// Canonical.
    canonical: PathBuf,
    dir: Arc<HostDir>,
}

/// A host path refused by [`HostRoots`].
#[derive(Debug)]
pub struct PathRefused {
    /// The parameter that named it.
    pub field: &'static str,
    /// What is wrong, including the allowed roots.
    pub message: String,
}

impl std::fmt::Display for PathRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PathRefused {}

impl HostRoots {
    /// Canonicalizes and opens each root; every root must be an existing directory. An empty
    /// list is refused: use the working directory as the default root instead.
    pub fn new<I, P>(roots: I) -> io::Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut out: Vec<Root> = Vec::new();
        for r in roots {
            let r = r.as_ref();
            let c = std::fs::canonicalize(r).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("allowed host path `{}`: {e}", r.display()),
                )
            })?;
            if !c.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("allowed host path `{}` is not a directory", r.display()),
                ));
            }
            if out.iter().any(|o| o.canonical == c) {
                continue;
            }
            let dir = HostDir::open(&c).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("allowed host path `{}`: {e}", r.display()),
                )
            })?;
            out.push(Root {
                given: std::path::absolute(r).unwrap_or_else(|_| c.clone()),
                canonical: c,
                dir: Arc::new(dir),
            });
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one allowed host path is required",
            ));
        }
        Ok(Self { roots: out })
    }

    /// The canonical roots, in the order given.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots.iter().map(|r| r.canonical.clone()).collect()
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.canonical.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn refuse(&self, field: &'static str, raw: &str, why: &str) -> PathRefused {
        PathRefused {
            field,
            message: format!(
                "host path `{}` {why}; this server only allows host paths under: {} \
                 (relative paths are taken from {}; symlinks below a root are not followed)",
                crate::error::one_line(raw),
                self.roots_text(),
                self.roots[0].canonical.display()
            ),
        }
    }

    /// Maps a client's path to a root and a plain relative path below it.
    fn confine(&self, field: &'static str, raw: &str) -> Result<(HostPath, bool), PathRefused> {
        if raw.trim().is_empty() {
            return Err(self.refuse(field, raw, "is empty"));
        }
        let p = Path::new(raw);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.refuse(field, raw, "contains `..` (name the path directly)"));
        }
        let (root, rel) = if p.is_absolute() {
            let found = self.roots.iter().find_map(|r| {
                p.strip_prefix(&r.canonical)
                    .or_else(|_| p.strip_prefix(&r.given))
                    .ok()
                    .map(|rel| (r, rel.to_path_buf()))
            });
            match found {
                Some(f) => f,
                None => return Err(self.refuse(field, raw, "is outside the allowed roots")),
            }
        } else {
            (&self.roots[0], p.to_path_buf())
        };
        let is_root = rel.components().all(|c| matches!(c, Component::CurDir));
        HostPath::confined(root.dir.clone(), &rel)
            .map(|hp| (hp, is_root))
            .map_err(|e| self.refuse(field, raw, &e.to_string()))
    }

    /// An existing host path that will be read (seed or sync source). Checked now for a
    /// clear early error; the core opens it again, the same way, when it reads it.
    pub fn existing(&self, field: &'static str, raw: &str) -> Result<HostPath, PathRefused> {
        let (hp, _) = self.confine(field, raw)?;
        if let Err(e) = hp.open_read() {
            return Err(self.refuse(field, raw, &hostfs::explain(&e)));
        }
        Ok(hp)
    }

    /// A host path that will be created (export output). The output must name a file below
    /// a root (not the root itself); its directories are created when the export runs.
    pub fn output(&self, field: &'static str, raw: &str) -> Result<HostPath, PathRefused> {
        let (hp, is_root) = self.confine(field, raw)?;
        if is_root {
            return Err(self.refuse(
                field,
                raw,
                "names an allowed root itself, not a new path below it",
            ));
        }
        // An early, clear refusal; the export checks again, the same way, when it runs.
        hp.check_output().map_err(|e| {
            let why = if e.kind() == io::ErrorKind::AlreadyExists {
                e.to_string()
            } else {
                hostfs::explain(&e)
            };
            self.refuse(field, raw, &why)
        })?;
        Ok(hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, HostRoots) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root/seed")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret"), "x").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/escape")).unwrap();
        let roots = HostRoots::new([t.path().join("root")]).unwrap();
        (t, roots)
    }

    #[test]
    fn inputs_inside_a_root_resolve_and_others_are_refused() {
        let (t, roots) = setup();
        let root = roots.roots()[0].clone();
        assert_eq!(
            roots.existing("seed_path", "seed").unwrap().shown(),
            root.join("seed")
        );
        let abs = root.join("seed").display().to_string();
        assert_eq!(
            roots.existing("seed_path", &abs).unwrap().shown(),
            root.join("seed")
        );
        // Outside, through `..`, through a symlink, missing, empty.
        let outside = t.path().join("outside").display().to_string();
        for bad in [
            outside.as_str(),
            "../outside",
            "escape/secret",
            "missing",
            "",
            "/",
        ] {
            let e = roots.existing("seed_path", bad).unwrap_err();
            assert_eq!(e.field, "seed_path");
            assert!(e.message.contains(&root.display().to_string()), "{e}");
        }
    }

    #[test]
    fn outputs_need_an_allowed_existing_ancestor_and_plain_new_names() {
        let (_t, roots) = setup();
        let root = roots.roots()[0].clone();
        assert_eq!(
            roots.output("output_path", "out.txt").unwrap().shown(),
            root.join("out.txt")
        );
        assert_eq!(
            roots.output("output_path", "new/dir/out").unwrap().shown(),
            root.join("new/dir/out")
        );
        for bad in [
            "../out",
            "escape/out",
            "/tmp/pyro-mcp-test-out",
            "new/../../out",
            "escape",
            "",
            "/",
        ] {
            assert!(roots.output("output_path", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roots_must_exist_and_be_directories() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "").unwrap();
        assert!(HostRoots::new([t.path().join("missing")]).is_err());
        assert!(HostRoots::new([t.path().join("f")]).is_err());
        assert!(HostRoots::new(Vec::<PathBuf>::new()).is_err());
        let r = HostRoots::new([t.path(), t.path()]).unwrap();
        assert_eq!(r.roots().len(), 1);
    }
}
