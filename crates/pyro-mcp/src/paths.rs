//! Host path confinement: the host paths a client names (`seed_path`, `source_path`,
//! `output_path`) must lie inside the roots the operator allowed.
//!
//! Inputs are canonicalized (symlinks resolved) and must then be inside a root, so a symlink
//! inside a root that points out of it is refused. Outputs do not exist yet: their nearest
//! existing ancestor is canonicalized and must be inside a root, and the rest of the path may
//! only name new components (no `..`). Relative paths are taken relative to the first root.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The directories under which clients may read and create host files.
#[derive(Clone, Debug)]
pub struct HostRoots {
    roots: Vec<PathBuf>,
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
    /// Canonicalizes each root; every root must be an existing directory. An empty list is
    /// refused: use the working directory as the default root instead.
    pub fn new<I, P>(roots: I) -> io::Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut out: Vec<PathBuf> = Vec::new();
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
            if !out.contains(&c) {
                out.push(c);
            }
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
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn absolute(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.roots[0].join(p)
        }
    }

    fn inside(&self, canonical: &Path) -> bool {
        self.roots.iter().any(|r| canonical.starts_with(r))
    }

    fn refuse(&self, field: &'static str, raw: &str, why: &str) -> PathRefused {
        PathRefused {
            field,
            message: format!(
                "host path `{raw}` {why}; this server only allows host paths under: {} \
                 (relative paths are taken from {})",
                self.roots_text(),
                self.roots[0].display()
            ),
        }
    }

    /// Resolves an existing host path that will be read (seed or sync source).
    pub fn existing(&self, field: &'static str, raw: &str) -> Result<PathBuf, PathRefused> {
        if raw.trim().is_empty() {
            return Err(self.refuse(field, raw, "is empty"));
        }
        let abs = self.absolute(raw);
        let canonical = std::fs::canonicalize(&abs).map_err(|e| {
            let why = if e.kind() == io::ErrorKind::NotFound {
                "does not exist".to_string()
            } else {
                format!("cannot be resolved ({e})")
            };
            self.refuse(field, raw, &why)
        })?;
        if !self.inside(&canonical) {
            return Err(self.refuse(
                field,
                raw,
                &format!(
                    "resolves to `{}`, outside the allowed roots",
                    canonical.display()
                ),
            ));
        }
        Ok(canonical)
    }

    /// Resolves a host path that will be created (export output): `..` is refused, and the
    /// nearest existing ancestor must be inside a root once symlinks are resolved.
    pub fn output(&self, field: &'static str, raw: &str) -> Result<PathBuf, PathRefused> {
        if raw.trim().is_empty() {
            return Err(self.refuse(field, raw, "is empty"));
        }
        let abs: PathBuf = self.absolute(raw).components().collect();
        if abs.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.refuse(field, raw, "contains `..` (name the output directly)"));
        }
        let mut tail: Vec<&std::ffi::OsStr> = Vec::new();
        let mut cur = abs.as_path();
        let base = loop {
            match std::fs::symlink_metadata(cur) {
                Ok(_) => break cur,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.refuse(field, raw, &format!("cannot be resolved ({e})")));
                }
            }
            match (cur.file_name(), cur.parent()) {
                (Some(name), Some(parent)) => {
                    tail.push(name);
                    cur = parent;
                }
                _ => return Err(self.refuse(field, raw, "has no existing parent directory")),
            }
        };
        let canonical = std::fs::canonicalize(base)
            .map_err(|e| self.refuse(field, raw, &format!("cannot be resolved ({e})")))?;
        if !self.inside(&canonical) {
            return Err(self.refuse(
                field,
                raw,
                &format!(
                    "resolves to `{}`, outside the allowed roots",
                    canonical.display()
                ),
            ));
        }
        let mut out = canonical;
        out.extend(tail.iter().rev());
        Ok(out)
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
            roots.existing("seed_path", "seed").unwrap(),
            root.join("seed")
        );
        let abs = root.join("seed").display().to_string();
        assert_eq!(
            roots.existing("seed_path", &abs).unwrap(),
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
            roots.output("output_path", "out.txt").unwrap(),
            root.join("out.txt")
        );
        assert_eq!(
            roots.output("output_path", "new/dir/out").unwrap(),
            root.join("new/dir/out")
        );
        for bad in [
            "../out",
            "escape/out",
            "/tmp/pyro-mcp-test-out",
            "new/../../out",
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
