//! Tool profiles: how much of pyro a client sees.

use std::str::FromStr;

/// The three tool profiles. Each includes the tools of the smaller ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// One tool: `vm_run`.
    VmRun,
    /// `vm_run` plus the persistent-workspace loop (the default for chat hosts).
    #[default]
    WorkspaceCore,
    /// Everything: low-level VM lifecycle, workspace stop/start, and (later) shells,
    /// services, snapshots, secrets and disk tools.
    WorkspaceFull,
}

/// The smallest profile that offers a tool.
pub type Tier = Profile;

impl Profile {
    /// Every profile, smallest first.
    pub const ALL: [Profile; 3] = [Self::VmRun, Self::WorkspaceCore, Self::WorkspaceFull];

    /// The profile's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmRun => "vm-run",
            Self::WorkspaceCore => "workspace-core",
            Self::WorkspaceFull => "workspace-full",
        }
    }

    /// Whether a tool of tier `tier` is offered.
    pub fn includes(self, tier: Tier) -> bool {
        tier <= self
    }

    /// The `instructions` text sent at initialization: how a model should use this profile.
    pub fn instructions(self) -> &'static str {
        match self {
            Self::VmRun => {
                "pyro runs shell commands in disposable Linux microVM sandboxes (Debian 12, no network).\n\
                 vm_run creates a sandbox, runs one /bin/sh -c command, returns exit_code/stdout/stderr, and destroys it.\n\
                 Nothing persists between calls: put every step into one command (chain with && or ;).\n\
                 Environments: debian:12 (git), debian:12-base (minimal), debian:12-build (gcc, make, python3).\n\
                 The first run of an environment may build it (minutes); later runs boot in seconds."
            }
            Self::WorkspaceCore => {
                "pyro gives you persistent Linux microVM sandboxes (Debian 12, no network); vm_run is for one-off commands.\n\
                 For multi-step work: workspace_create (optionally seed_path = a host directory), keep its workspace_id, then workspace_exec.\n\
                 Edit with workspace_file_read/write and workspace_patch_apply; review with workspace_diff against the seeded baseline.\n\
                 Copy results to the host with workspace_export; workspace_reset restores the baseline; workspace_delete when done.\n\
                 Host paths must lie under the server's allowed roots; find workspaces again with workspace_list (name, labels)."
            }
            Self::WorkspaceFull => {
                "pyro gives you persistent Linux microVM sandboxes (Debian 12, no network); vm_run is for one-off commands.\n\
                 For multi-step work: workspace_create (optionally seed_path = a host directory), keep its workspace_id, then workspace_exec.\n\
                 Edit with workspace_file_* and workspace_patch_apply; workspace_diff, workspace_export, workspace_reset, workspace_delete.\n\
                 workspace_stop/start power a workspace off and on keeping its files; vm_* tools drive single-use VMs step by step.\n\
                 Host paths must lie under the server's allowed roots; find workspaces again with workspace_list (name, labels)."
            }
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProfile(pub String);

impl std::fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown profile `{}`; expected vm-run, workspace-core or workspace-full",
            self.0
        )
    }
}

impl std::error::Error for UnknownProfile {}

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_profiles_nest() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            assert_eq!(p.instructions().lines().count(), 5, "{p}");
        }
        assert!("full".parse::<Profile>().is_err());
        assert_eq!(Profile::default(), Profile::WorkspaceCore);
        assert!(Profile::WorkspaceFull.includes(Profile::VmRun));
        assert!(Profile::WorkspaceCore.includes(Profile::WorkspaceCore));
        assert!(!Profile::WorkspaceCore.includes(Profile::WorkspaceFull));
        assert!(!Profile::VmRun.includes(Profile::WorkspaceCore));
    }
}
