//! The environment catalog: the names a user may ask for and what each one contains.
//!
//! Every environment is a Debian 12 ("bookworm") root filesystem built locally with
//! `mmdebstrap --variant=minbase`. `default_packages` is the list users see (as in the
//! reference product); `extra_packages` are installed as well but not advertised.

use crate::error::{ImageError, Result};

/// One environment a user can pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name users type, e.g. `debian:12`.
    pub name: &'static str,
    /// The environment's version; a change forces a rebuild.
    pub version: &'static str,
    /// One line describing what the environment is for.
    pub description: &'static str,
    /// The packages advertised to users.
    pub default_packages: &'static [&'static str],
    /// Packages installed in addition to `default_packages`.
    pub extra_packages: &'static [&'static str],
    /// The distribution the root filesystem is built from.
    pub distribution: &'static str,
    /// The distribution's version.
    pub distribution_version: &'static str,
    /// The platform the image runs on.
    pub platform: &'static str,
    /// The Debian suite passed to mmdebstrap.
    pub suite: &'static str,
}

impl CatalogEntry {
    /// Every package to install: `default_packages` then `extra_packages`.
    pub fn packages(&self) -> Vec<String> {
        self.default_packages
            .iter()
            .chain(self.extra_packages)
            .map(|p| (*p).to_owned())
            .collect()
    }

    /// The name as used for directories and lock files (`:` becomes `_`).
    pub fn dir_name(&self) -> String {
        dir_name(self.name)
    }
}

/// Turns an environment name into the directory name used in the cache.
pub fn dir_name(name: &str) -> String {
    name.replace(':', "_")
}

/// The version of the catalog itself (reported as `catalog_version`).
pub const CATALOG_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The range of pyro versions that can boot the images this catalog describes.
pub const COMPATIBILITY: &str = ">=0.1.0,<0.2.0";

/// Every environment, sorted by name.
pub static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "debian:12",
        version: "1.0.0",
        description: "Debian 12 (bookworm) with git, for cloning and working on repositories",
        default_packages: &["bash", "coreutils", "git"],
        // python3, as in every image of the reference (its agent needed it): the usual way
        // an agent serves or fetches something (`python3 -m http.server`, urllib) works.
        extra_packages: &["ca-certificates", "python3"],
        distribution: "debian",
        distribution_version: "12",
        platform: "linux-x86_64",
        suite: "bookworm",
    },
    CatalogEntry {
        name: "debian:12-base",
        version: "1.0.0",
        description: "Minimal Debian 12 (bookworm) shell environment",
        default_packages: &["bash", "coreutils"],
        extra_packages: &[],
        distribution: "debian",
        distribution_version: "12",
        platform: "linux-x86_64",
        suite: "bookworm",
    },
    CatalogEntry {
        name: "debian:12-build",
        version: "1.0.0",
        description: "Debian 12 (bookworm) with git, a C/C++ toolchain, make, cmake and python3",
        default_packages: &[
            "bash",
            "coreutils",
            "git",
            "gcc",
            "make",
            "cmake",
            "python3",
        ],
        extra_packages: &["ca-certificates", "g++", "libc6-dev"],
        distribution: "debian",
        distribution_version: "12",
        platform: "linux-x86_64",
        suite: "bookworm",
    },
];

/// Every catalog name, in catalog order.
pub fn names() -> Vec<String> {
    CATALOG.iter().map(|e| e.name.to_owned()).collect()
}

/// Finds an environment by its exact name.
///
/// # Errors
///
/// [`ImageError::UnknownEnvironment`] listing the valid names.
pub fn lookup(name: &str) -> Result<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ImageError::UnknownEnvironment {
            name: name.to_owned(),
            known: names(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_every_entry() {
        for name in ["debian:12", "debian:12-base", "debian:12-build"] {
            let e = lookup(name).unwrap();
            assert_eq!(e.name, name);
            assert_eq!(e.version, "1.0.0");
            assert_eq!(e.distribution, "debian");
            assert_eq!(e.distribution_version, "12");
            assert_eq!(e.platform, "linux-x86_64");
            assert_eq!(e.suite, "bookworm");
        }
        assert_eq!(
            lookup("debian:12").unwrap().packages(),
            ["bash", "coreutils", "git", "ca-certificates", "python3"]
        );
        assert_eq!(
            lookup("debian:12-base").unwrap().default_packages,
            ["bash", "coreutils"]
        );
        assert_eq!(
            lookup("debian:12-build").unwrap().default_packages,
            [
                "bash",
                "coreutils",
                "git",
                "gcc",
                "make",
                "cmake",
                "python3"
            ]
        );
    }

    #[test]
    fn lookup_rejects_unknown_names_and_lists_valid_ones() {
        for bad in ["debian", "debian:11", "DEBIAN:12", "", "debian:12 "] {
            let err = lookup(bad).unwrap_err();
            match &err {
                ImageError::UnknownEnvironment { name, known } => {
                    assert_eq!(name, bad);
                    assert_eq!(known, &names());
                }
                other => panic!("unexpected error {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains("debian:12, debian:12-base, debian:12-build"),
                "{msg}"
            );
        }
    }

    #[test]
    fn catalog_is_sorted_and_dir_names_are_safe() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(dir_name("debian:12-build"), "debian_12-build");
    }
}
