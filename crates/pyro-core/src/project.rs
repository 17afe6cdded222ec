//! Project-aware seeding: a server started in (or pointed at) a Git checkout seeds new
//! workspaces from the project's Git-tracked files when a create names no `seed_path`
//! (`pyro mcp serve --project-path DIR`), or from a clean clone of a repository at a ref
//! (`--repo-url URL --repo-ref REF`).
//!
//! Either way the project becomes a plain tar archive in the state directory's scratch
//! space, which the create then validates and imports like any other seed; the workspace's
//! `workspace_seed` says where it came from (`origin_kind`: `project_path` or `repo_url`,
//! `origin_ref`: the commit). Only `git` is run, with arguments that cannot be read as
//! options (`--` before every path and URL), never a shell.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{CoreError, Result};

/// Where a server's projects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectSource {
    /// A Git checkout: its tracked files as they are in the working tree.
    Path(PathBuf),
    /// A repository cloned afresh at `reference` (a branch, tag or commit).
    Repo {
        /// Anything `git clone` takes (a URL, `file://…`, a local path).
        url: String,
        /// What to check out.
        reference: String,
    },
}

/// A project materialized as a seed archive.
#[derive(Debug)]
pub struct ProjectSeed {
    /// The archive (removed when this is dropped).
    pub tar: PathBuf,
    /// `project_path` or `repo_url`.
    pub origin_kind: &'static str,
    /// The commit it was taken from (for a checkout: its `HEAD`; uncommitted changes to
    /// tracked files are included).
    pub origin_ref: String,
    scratch: PathBuf,
}

impl Drop for ProjectSeed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn invalid(reason: String) -> CoreError {
    CoreError::Invalid {
        field: "project",
        reason,
    }
}

/// Runs `git args…` (in `cwd` when given); its stdout, or an error with its stderr.
fn git(cwd: Option<&Path>, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    if let Some(dir) = cwd {
        cmd.arg("-C").arg(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| invalid(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(invalid(format!(
            "git {} failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            crate::error::one_line(err.trim())
        )));
    }
    Ok(out.stdout)
}

/// The top of the Git checkout `dir` is in, if any.
pub fn checkout_root(dir: &Path) -> Option<PathBuf> {
    let out = git(
        Some(dir),
        &["rev-parse".as_ref(), "--show-toplevel".as_ref()],
    )
    .ok()?;
    let text = String::from_utf8(out).ok()?;
    let root = PathBuf::from(text.trim_end_matches('\n'));
    root.is_dir().then_some(root)
}

impl ProjectSource {
    /// Checks the source now (a server refuses to start on a bad one): a checkout must be
    /// a Git work tree; a repository URL and ref must not look like options.
    pub fn check(&self) -> Result<()> {
        match self {
            ProjectSource::Path(dir) => {
                checkout_root(dir).ok_or_else(|| {
                    invalid(format!("{} is not inside a Git checkout", dir.display()))
                })?;
            }
            ProjectSource::Repo { url, reference } => {
                for (what, v) in [("repo_url", url), ("repo_ref", reference)] {
                    if v.is_empty() || v.starts_with('-') || v.chars().any(char::is_control) {
                        return Err(invalid(format!(
                            "{what} `{}` is empty, starts with '-' or holds control characters",
                            crate::error::one_line(v)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the project as a tar archive under `scratch_parent` (a new private directory
    /// there, removed with the returned seed).
    pub fn materialize(&self, scratch_parent: &Path) -> Result<ProjectSeed> {
        self.check()?;
        crate::host::ensure_private_dir(scratch_parent)?;
        remove_stale_scratch(scratch_parent);
        let scratch = scratch_parent.join(format!(
            "project-{}-{}",
            std::process::id(),
            crate::host::new_id()
        ));
        crate::host::ensure_private_dir(&scratch)?;
        let tar = scratch.join("project.tar");
        let mut seed = ProjectSeed {
            tar: tar.clone(),
            origin_kind: "project_path",
            origin_ref: String::new(),
            scratch: scratch.clone(),
        };
        match self {
            ProjectSource::Path(dir) => {
                let root = checkout_root(dir).ok_or_else(|| {
                    invalid(format!("{} is not inside a Git checkout", dir.display()))
                })?;
                seed.origin_ref = git(Some(&root), &["rev-parse".as_ref(), "HEAD".as_ref()])
                    .map(|o| String::from_utf8_lossy(&o).trim().to_string())
                    .unwrap_or_else(|_| "no commits".into());
                let listed = git(
                    Some(&root),
                    &["ls-files".as_ref(), "-z".as_ref(), "--cached".as_ref()],
                )?;
                write_tracked_tar(&root, &listed, &tar)?;
            }
            ProjectSource::Repo { url, reference } => {
                seed.origin_kind = "repo_url";
                let clone = scratch.join("clone");
                git(
                    None,
                    &[
                        "clone".as_ref(),
                        "--quiet".as_ref(),
                        "--no-checkout".as_ref(),
                        "--".as_ref(),
                        url.as_ref(),
                        clone.as_os_str(),
                    ],
                )?;
                let commit = format!("{reference}^{{commit}}");
                let sha = git(
                    Some(&clone),
                    &[
                        "rev-parse".as_ref(),
                        "--verify".as_ref(),
                        "--end-of-options".as_ref(),
                        commit.as_ref(),
                    ],
                )?;
                seed.origin_ref = String::from_utf8_lossy(&sha).trim().to_string();
                git(
                    Some(&clone),
                    &[
                        "archive".as_ref(),
                        "--format=tar".as_ref(),
                        "-o".as_ref(),
                        tar.as_os_str(),
                        seed.origin_ref.as_ref(),
                    ],
                )?;
            }
        }
        Ok(seed)
    }
}

/// Removes the scratch directories of processes that are gone (a create killed while it
/// archived a project leaves its `project-<pid>-<hex>`).
fn remove_stale_scratch(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("project-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && crate::host::process_start_ticks(pid).is_none()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Whether a component above `rel` in `root` is a symlink (a tracked directory replaced by a
/// link in the work tree must not pull files from wherever it points).
fn through_a_link(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.file_type().is_symlink() => {}
            _ => return true,
        }
    }
    false
}

/// A tar of the tracked paths (`ls-files -z` output) as they are in the work tree: regular
/// files and symlinks; deleted files and submodules (directories) are skipped.
fn write_tracked_tar(root: &Path, listed: &[u8], out: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let file = std::fs::File::create(out).map_err(|e| CoreError::io("create", out, e))?;
    let mut b = tar::Builder::new(file);
    b.follow_symlinks(false);
    for name in listed.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        if through_a_link(root, rel) {
            continue;
        }
        let path = root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !(meta.is_file() || meta.file_type().is_symlink()) {
            continue;
        }
        b.append_path_with_name(&path, rel)
            .map_err(|e| CoreError::io("archive", &path, e))?;
    }
    b.finish().map_err(|e| CoreError::io("write", out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn names(tar: &Path) -> Vec<(String, String)> {
        let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
        let mut out: Vec<(String, String)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                (p, s)
            })
            .filter(|(p, _)| !p.ends_with('/') && !p.starts_with("pax_global_header"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_checkout_gives_its_tracked_files_and_a_repo_its_ref() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(
            &repo,
            "git init -q -b main && mkdir src && echo one > src/a.txt && echo t > b.txt && \
             git add . && git commit -q -m first && git tag v1 && echo two > src/a.txt && \
             echo untracked > junk.txt && git rm -q --cached b.txt && \
             mkdir lib && echo tracked > lib/x.txt && git add lib && git commit -q -m lib && \
             mkdir ../outside && echo secret > ../outside/x.txt && rm -r lib && \
             ln -s ../outside lib",
        );
        // A stale scratch directory of a dead process is swept.
        let stale = dir.path().join("scratch/project-999999999-abc");
        std::fs::create_dir_all(&stale).unwrap();
        let seed = ProjectSource::Path(repo.join("src"))
            .materialize(&dir.path().join("scratch"))
            .unwrap();
        assert_eq!(seed.origin_kind, "project_path");
        assert_eq!(seed.origin_ref.len(), 40, "{}", seed.origin_ref);
        // The work tree's content of tracked files; untracked and untracked-now files out,
        // and nothing through a tracked directory now replaced by a symlink.
        assert_eq!(names(&seed.tar), [("src/a.txt".into(), "two\n".into())]);
        assert!(!stale.exists(), "a dead process's scratch is removed");
        let scratch = seed.tar.parent().unwrap().to_path_buf();
        drop(seed);
        assert!(
            !scratch.exists(),
            "the scratch directory goes with the seed"
        );

        let url = format!("file://{}", repo.display());
        let seed = ProjectSource::Repo {
            url,
            reference: "v1".into(),
        }
        .materialize(&dir.path().join("scratch"))
        .unwrap();
        assert_eq!(seed.origin_kind, "repo_url");
        assert_eq!(
            names(&seed.tar),
            [
                ("b.txt".into(), "t\n".into()),
                ("src/a.txt".into(), "one\n".into())
            ]
        );

        for bad in [
            ProjectSource::Path(dir.path().join("scratch")),
            ProjectSource::Repo {
                url: "--upload-pack=touch /tmp/x".into(),
                reference: "main".into(),
            },
            ProjectSource::Repo {
                url: format!("file://{}", repo.display()),
                reference: "-x".into(),
            },
            ProjectSource::Repo {
                url: format!("file://{}", repo.display()),
                reference: "no-such-ref".into(),
            },
        ] {
            let err = bad.materialize(&dir.path().join("scratch")).unwrap_err();
            assert!(
                matches!(
                    err,
                    CoreError::Invalid {
                        field: "project",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
