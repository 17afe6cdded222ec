//! Published ports: a started workspace's guest TCP port on the host's `127.0.0.1`.
//!
//! Each port is one detached `pyro __port-relay SPEC` process (`pyro_net::ports`), started
//! from the host's namespace (where it listens, on 127.0.0.1 only) and connecting to the
//! guest from inside the sandbox's namespace. It is a helper of the workspace's ledger (role
//! `port:GUEST:HOST`), so it lives as long as the workspace runs, outlives the call that
//! made it, and is ended by every teardown (stop, delete, reset, reaping after a crash),
//! before the network it relays into. Only policy `egress+published-ports` publishes.
//! The CLI and MCP `--publish` come with services; the core API is this.

use std::ffi::OsStr;

use pyro_net::NetworkPolicy;

use super::*;
use crate::ledger::Resource;
use crate::model::PublishedPort;
use crate::validate::check_range as check;

/// The ledger role prefix of a port relay.
const PORT_ROLE: &str = "port";
/// Most ports one workspace may publish.
pub const MAX_PUBLISHED_PORTS: usize = 64;

/// A relay's `(guest_port, host_port)`, from its ledger role `port:GUEST:HOST`.
fn parse_role(role: &str) -> Option<(u16, u16)> {
    let rest = role.strip_prefix(PORT_ROLE)?.strip_prefix(':')?;
    let (guest, host) = rest.split_once(':')?;
    Some((guest.parse().ok()?, host.parse().ok()?))
}

impl Pyro {
    /// Publishes guest TCP port `guest_port` of started workspace `id` on
    /// `127.0.0.1:host_port` (`None`: a port the OS chooses, reported in the result).
    ///
    /// # Errors
    ///
    /// Invalid ports (guest 1–65535, host 1025–65535), a pair already published, more than
    /// [`MAX_PUBLISHED_PORTS`], a workspace not started or not under
    /// `egress+published-ports`, or a host port in use (the relay's own error).
    pub async fn publish_port(
        &self,
        id: &str,
        guest_port: i64,
        host_port: Option<i64>,
    ) -> Result<PublishedPort> {
        check("guest_port", guest_port, (1, 65535))?;
        if let Some(h) = host_port {
            check("host_port", h, (1025, 65535))?;
        }
        let store = self.store()?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let rec = self.load_started(&store, id, "publish a port").await?;
        if rec.network_policy != NetworkPolicy::EgressPublishedPorts {
            return Err(CoreError::Invalid {
                field: "network_policy",
                reason: format!(
                    "ports are published only under egress+published-ports; workspace {id} has `{}`",
                    rec.network_policy
                ),
            });
        }
        let published = self.published_ports(id);
        if published.len() >= MAX_PUBLISHED_PORTS {
            return Err(CoreError::Invalid {
                field: "guest_port",
                reason: format!("at most {MAX_PUBLISHED_PORTS} ports per workspace"),
            });
        }
        if let Some(h) = host_port
            && published.iter().any(|p| i64::from(p.host_port) == h)
        {
            return Err(CoreError::Invalid {
                field: "host_port",
                reason: format!("127.0.0.1:{h} is already published for workspace {id}"),
            });
        }
        let Some(plan) = self.recorded_network(id) else {
            return Err(CoreError::Network {
                reason: format!("workspace {id} has no network recorded"),
            });
        };
        let bin = self
            .pyro_bin()
            .ok_or_else(|| CoreError::NetworkUnavailable {
                reason: "the `pyro` binary that runs port relays was not found; set PYRO_BIN"
                    .into(),
            })?;
        let guest_port = guest_port as u16;
        let spec = pyro_net::RelaySpec::new(
            &plan.name(),
            host_port.unwrap_or(0) as u16,
            plan.guest(),
            guest_port,
        );
        let dir = self.ws_dirs(id).root.join(crate::net::NET_DIR);
        host::ensure_private_dir(&dir)?;
        let n = host::new_id();
        let spec_path = dir.join(format!("port-{guest_port}-{n}.json"));
        let body = serde_json::to_vec_pretty(&spec).map_err(|e| CoreError::Network {
            reason: e.to_string(),
        })?;
        pyro_host::fs::atomic_write(&spec_path, &body, 0o600)
            .map_err(|e| CoreError::io("write", &spec_path, e))?;
        let log = dir.join(format!("port-{guest_port}-{n}.log"));
        let spawned = self
            .spawn_helper(
                id,
                PORT_ROLE,
                &bin,
                &[OsStr::new("__port-relay"), spec_path.as_os_str()],
                &dir,
                &log,
            )
            .await;
        let _ = std::fs::remove_file(&spec_path);
        let (helper, line) = spawned.map_err(|reason| CoreError::Network {
            reason: format!(
                "cannot publish guest port {guest_port}: {reason}; see {}",
                log.display()
            ),
        })?;
        let bound: std::net::SocketAddr = match line.parse() {
            Ok(addr) => addr,
            Err(_) => {
                helper.release().await;
                let _ = store.forget_resource(id, &helper.key());
                return Err(CoreError::Network {
                    reason: format!(
                        "the port relay reported `{}`, not an address",
                        line.chars().take(80).collect::<String>()
                    ),
                });
            }
        };
        // Re-recorded under a role that names both ports (what `published_ports` lists).
        if let Resource::Process { pid, ticks, .. } = helper {
            let named = Resource::Process {
                role: format!("{PORT_ROLE}:{guest_port}:{}", bound.port()),
                pid,
                ticks,
            };
            store.record_resource(id, &named)?;
            store.forget_resource(id, &helper.key())?;
        }
        Ok(PublishedPort {
            host: bound.ip().to_string(),
            host_port: bound.port(),
            guest_port,
            protocol: "tcp".into(),
        })
    }

    /// Stops publishing host port `host_port` of workspace `id` (its relay is ended and
    /// forgotten); a port not published is no error.
    pub async fn unpublish_port(&self, id: &str, host_port: u16) -> Result<()> {
        let store = self.store()?;
        for (key, r) in store.resources(id)? {
            let Ok(r @ Resource::Process { .. }) = r else {
                continue;
            };
            let Resource::Process { role, .. } = &r else {
                continue;
            };
            if parse_role(role).is_some_and(|(_, h)| h == host_port) {
                r.release().await;
                store.forget_resource(id, &key)?;
            }
        }
        Ok(())
    }

    /// The ports workspace `id` publishes now (relays that still run), by host port.
    pub fn published_ports(&self, id: &str) -> Vec<PublishedPort> {
        let Ok(store) = self.store() else {
            return Vec::new();
        };
        let mut ports: Vec<PublishedPort> = store
            .resources(id)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, r)| match r {
                Ok(r @ Resource::Process { .. }) if r.is_held() => match &r {
                    Resource::Process { role, .. } => parse_role(role),
                    _ => None,
                },
                _ => None,
            })
            .map(|(guest_port, host_port)| PublishedPort {
                host: "127.0.0.1".into(),
                host_port,
                guest_port,
                protocol: "tcp".into(),
            })
            .collect();
        ports.sort_by_key(|p| p.host_port);
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::parse_role;

    #[test]
    fn port_roles_name_both_ports_and_nothing_else_parses() {
        assert_eq!(parse_role("port:8000:41234"), Some((8000, 41234)));
        for role in [
            "port",
            "port:8000",
            "watchdog",
            "net",
            "port:x:1",
            "port:1:70000",
            "portal:1:2",
        ] {
            assert_eq!(parse_role(role), None, "{role}");
        }
    }
}
