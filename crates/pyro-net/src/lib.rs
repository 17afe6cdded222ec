//! `pyro-net`: guest networking for pyro sandboxes.
//!
//! Every networked sandbox gets its own network namespace. Inside it sit the guest's TAP
//! (`pyro-tap`, opened by the VMM, which runs in that namespace) and the namespace end of a
//! veth pair (`pyro-up`) whose other end (`pyro-<index>`) is the uplink in the host's
//! namespace. The namespace forwards and masquerades the guest's traffic to the uplink, and
//! an nftables table of its own decides what the guest may reach.
//!
//! - [`policy`]: what the caller asks for. [`NetworkPolicy`] (`off`, `egress`,
//!   `egress+published-ports`) and an [`Allowlist`] of host patterns (`api.example.org`,
//!   `*.example.org`) and IPv4 CIDRs, validated with bounded counts and lengths; every
//!   [`AllowlistError`] names the input it refuses.
//! - [`plan`]: the addresses of sandbox number `index` ([`SandboxNet`]): a /30 for the guest
//!   link out of `10.200.0.0/16`, a /30 for the uplink out of `10.201.0.0/16`, a locally
//!   administered guest MAC, and the names of the namespace, links and nft tables.
//! - [`ruleset`]: the nftables rules as a pure function of plan, policy and allowlist
//!   ([`ruleset::sandbox`] for the sandbox namespace, [`ruleset::host_guard`] for the host's
//!   namespace), a typed [`Ruleset`] rendered to nft's JSON (`nft -j -f -`).
//! - [`netns`], [`link`]: named network namespaces (`/run/netns/NAME`), running code inside
//!   one, veth pairs, TAPs, addresses and routes, through `ip` and `nft` invoked with argv.
//! - [`setup`]: the capability check ([`setup::check_capabilities`]), [`setup::create`],
//!   which plumbs one sandbox's network, and [`Teardown`], which removes exactly what was
//!   created and is safe to run twice, after a crash, or on half-made state.
//! - [`ports`]: published ports. A [`PortRelay`] listens on the host's `127.0.0.1` and
//!   relays each connection to a guest port, connecting from inside the sandbox's namespace,
//!   with bounded buffers, half-close and a connection limit; [`ports::run_relay`] is the
//!   body of the detached relay process.
//!
//! - [`dns`]: pyro's resolver on the gateway: a hostile-input-safe DNS parser and writer
//!   ([`dns::wire`]), the allowlist policy ([`dns::Resolver`]: forward, or NXDOMAIN and a
//!   recorded [`dns::Denial`]), and the UDP server ([`dns::server`]) that forwards to the
//!   host's resolvers and hands allowed answers' addresses to the `allowed_v4` set.
//!
//! - [`proxy`]: the HTTP(S) egress proxy: hostile-input-safe `Host` and TLS SNI parsers, the
//!   pure decision ([`proxy::inspect`]) against the allowlist's host patterns, and the TCP
//!   server that splices allowed connections and records denied ones. With credentials it
//!   also injects them ([`proxy::creds`]: the rules and the threat model; [`proxy::http1`]:
//!   HTTP/1.1 framing and header rewriting), intercepting TLS to the credentials' hosts
//!   with a per-workspace CA ([`ca`]).
//!
//! Not built yet: DNS over TCP on the gateway, the egress proxy's redirect rule and wiring, the `--publish` flag and the relay process's spawning, the host's own forwarding and NAT, and the wiring
//! into the core and the VMMs. See `docs/network.md`.

pub mod ca;
pub mod cmd;
pub mod daemon;
pub mod dns;
pub mod host;
pub mod link;
pub mod netns;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod proxy;
pub mod ruleset;
pub mod setup;

pub use plan::{Ipv4Cidr, PlanError, SandboxNet};
pub use policy::{Allowlist, AllowlistError, HostPattern, NetworkPolicy, PolicyError};
pub use ports::{PortRelay, RelayError, RelaySpec, SpecError};
pub use ruleset::Ruleset;
pub use setup::{NetError, Teardown};
