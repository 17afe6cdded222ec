//! pyro's DNS resolver on the gateway.
//!
//! The guest may send DNS only to its gateway (the ruleset refuses port 53 and 853
//! anywhere else); there pyro's resolver answers. [`Resolver`] is the policy, pure and
//! unit-tested: without host patterns every name is forwarded; with them (`--allow-host`)
//! only matching names are, everything else gets NXDOMAIN and is recorded as a [`Denial`]
//! (the last [`MAX_DENIALS`] are kept). [`server`] is the UDP and TCP server: it forwards
//! allowed queries to the host's resolvers ([`host_upstreams`], read from `resolv.conf` by
//! [`upstreams`]), relays their answers, and for names an allowlist
//! matched hands every A record's address and TTL to a callback first (the caller adds them
//! to the `allowed_v4` set with that TTL as timeout, [`crate::setup::Network::allow`]), so
//! the guest can connect to the address by the time it reads the answer. [`wire`] is the
//! message parser and writer, safe on hostile input.

pub mod server;
pub mod upstreams;
pub mod wire;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::policy::Allowlist;

pub use server::{OnAnswer, ResolverError, Running, ServerConfig};
pub use upstreams::{host_upstreams, upstreams_from_resolv_conf};

/// Most denials remembered; older ones are forgotten first.
pub const MAX_DENIALS: usize = 256;

/// What the resolver does with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it upstream. `allow_answers`: the name matched a host pattern, so the
    /// answer's addresses are to be allowed (added to `allowed_v4`).
    Forward {
        /// Whether the answer's A records are handed to the callback.
        allow_answers: bool,
    },
    /// Answer NXDOMAIN locally; the attempt was recorded.
    Deny,
}

/// A query the allowlist refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The name asked for (lower case, as [`wire::Name::to_dotted`] writes it).
    pub name: String,
    /// When.
    pub at: SystemTime,
}

/// The resolver's policy: which names are forwarded, and the record of those refused.
#[derive(Debug, Default)]
pub struct Resolver {
    allowlist: Allowlist,
    denials: Mutex<VecDeque<Denial>>,
}

impl Resolver {
    /// The policy for a sandbox with `allowlist`.
    pub fn new(allowlist: Allowlist) -> Resolver {
        Resolver {
            allowlist,
            denials: Mutex::new(VecDeque::new()),
        }
    }

    /// Decides on a query for `name` (dotted; see [`wire::Name::to_dotted`]) at time `at`;
    /// a denial is recorded.
    pub fn decide(&self, name: &str, at: SystemTime) -> Decision {
        if self.allowlist.hosts().is_empty() {
            return Decision::Forward {
                allow_answers: false,
            };
        }
        if self.allowlist.allows_host(name) {
            return Decision::Forward {
                allow_answers: true,
            };
        }
        let mut denials = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if denials.len() >= MAX_DENIALS {
            denials.pop_front();
        }
        denials.push_back(Denial {
            name: name.chars().take(wire::MAX_NAME_LEN * 4).collect(),
            at,
        });
        Decision::Deny
    }

    /// The recent denials, oldest first.
    pub fn denials(&self) -> Vec<Denial> {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
