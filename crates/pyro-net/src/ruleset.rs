//! The nftables rules of one sandbox, as a pure function of its plan, policy and allowlist.
//!
//! [`sandbox`] builds the table that lives in the sandbox's own network namespace;
//! [`host_guard`] the small table that lives in the host's namespace and guards the host
//! end of the uplink. Both are `inet` tables named `pyro-<index>`: pyro only ever creates,
//! replaces and deletes tables of that name, and never flushes the ruleset or touches a
//! table it did not make.
//!
//! # Why JSON
//!
//! A [`Ruleset`] is a typed model (tables, sets, chains, rules made of [`Match`]es and an
//! [`Action`]) rendered to nft's JSON (`libnftables-json(5)`) and applied with
//! `nft -j -f -` (argv, the document on stdin). JSON rather than nft's script text because
//! the document is built with `serde_json` from typed values: no quoting, no escaping, no way
//! for a name to turn into syntax, and tests can read the rendered document back as data and
//! assert its structure instead of grepping text. The whole document is one nft transaction
//! (`add table; delete table; add table; …`), so a table is replaced atomically and a
//! failure leaves the previous state.
//!
//! # What the sandbox table does
//!
//! - `prerouting` (raw priority, before conntrack): IPv6 from the guest is dropped (guests
//!   get IPv4 only); a packet from the TAP whose source is not the guest's address is
//!   dropped (anti-spoofing), and so is a packet from the uplink claiming a source in the
//!   guest's subnet.
//! - `input` (policy drop): the guest may reach the namespace itself only for DNS on the
//!   gateway address (UDP and TCP 53, pyro's resolver), and with host patterns for the
//!   egress proxy (TCP [`PROXY_PORT`] on the gateway); everything else from the TAP is
//!   refused, so services bound to `0.0.0.0` in the namespace are out of reach.
//! - `forward` (policy drop): replies to the guest's connections pass back; from the guest,
//!   DNS (53) and DNS over TLS (853) to anywhere else are refused; with an allowlist, the
//!   allowed CIDRs pass; every destination in [`BLOCKED`] is refused; then, with an
//!   allowlist, only addresses in the `allowed_v4` set (filled by the resolver, with
//!   timeouts) pass, else any (public) destination passes.
//! - `postrouting` (NAT): the guest's traffic leaves masqueraded as the uplink's address, so
//!   the host needs no route to guest subnets and never sees guest addresses.
//! - `redirect` (NAT at prerouting, only when the allowlist has host patterns or the
//!   sandbox has credentials to inject, see [`proxied`]): the guest's
//!   new TCP connections to ports 80 and 443 go to pyro's egress proxy on
//!   `gateway:`[`PROXY_PORT`] (`redirect to :PORT`), which lets them through only under an
//!   allowed `Host` or TLS SNI name, so a shared CDN address or a hard-coded IP is reached
//!   only under an allowed name. Destinations in an allowed CIDR and in [`BLOCKED`] are not
//!   redirected: the forward chain passes the former and refuses the latter, as without the
//!   proxy. The input chain then accepts TCP from the TAP to `gateway:PROXY_PORT`; a
//!   redirected connection never reaches the forward chain. The proxy's own upstream
//!   connections leave from the namespace (its output path, from the uplink's address) and
//!   the proxy repeats the blocked-range check ([`crate::proxy::inspect`]).
//!
//! Refusals are `reject with icmpx admin-prohibited` where the guest asked for something
//! (a connection fails at once with "no route to host" instead of hanging), plain drops
//! where the packet is forged (spoofing, invalid state).

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::plan::{Ipv4Cidr, POOLS, SandboxNet, TAP_NAME, UPLINK_NS_NAME};
use crate::policy::{Allowlist, NetworkPolicy};

/// The only table family pyro uses.
pub const FAMILY: &str = "inet";
/// The set of destinations no guest reaches (unless an allowed CIDR opens part of it).
pub const BLOCKED_SET: &str = "blocked_v4";
/// The set of addresses the resolver returned for allowed names (elements time out).
pub const ALLOWED_SET: &str = "allowed_v4";
/// The set of `--allow-cidr` networks.
pub const ALLOWED_CIDRS_SET: &str = "allowed_cidrs_v4";
/// Default lifetime of an `allowed_v4` element added without one.
pub const ALLOWED_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The port of the egress proxy on the gateway address, inside the sandbox's namespace.
/// With host patterns in the allowlist the guest's TCP to ports [`PROXIED_PORTS`] is
/// redirected there.
pub const PROXY_PORT: u16 = 3128;
/// The destination ports redirected to the egress proxy (HTTP and HTTPS).
pub const PROXIED_PORTS: [u16; 2] = [80, 443];

/// Destinations refused to every guest: everything that is not public unicast IPv4.
/// Sorted and disjoint (an nft interval set refuses overlaps). The documentation ranges
/// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are deliberately *not* here: they route
/// nowhere on the internet, and the tests use them as "public" servers.
pub const BLOCKED: [(Ipv4Cidr, &str); 11] = [
    (Ipv4Cidr::constant(0, 0, 0, 0, 8), "\"this\" network"),
    (
        Ipv4Cidr::constant(10, 0, 0, 0, 8),
        "private (includes pyro's sandbox pools)",
    ),
    (Ipv4Cidr::constant(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (Ipv4Cidr::constant(127, 0, 0, 0, 8), "loopback"),
    (
        Ipv4Cidr::constant(169, 254, 0, 0, 16),
        "link-local (cloud metadata)",
    ),
    (Ipv4Cidr::constant(172, 16, 0, 0, 12), "private"),
    (
        Ipv4Cidr::constant(192, 0, 0, 0, 24),
        "IETF protocol assignments",
    ),
    (Ipv4Cidr::constant(192, 168, 0, 0, 16), "private"),
    (Ipv4Cidr::constant(198, 18, 0, 0, 15), "benchmarking"),
    (Ipv4Cidr::constant(224, 0, 0, 0, 4), "multicast"),
    (
        Ipv4Cidr::constant(240, 0, 0, 0, 4),
        "reserved and limited broadcast",
    ),
];

/// Which netfilter hook a base chain hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing.
    Prerouting,
    /// To this namespace's own addresses.
    Input,
    /// Routed through.
    Forward,
    /// After routing, on the way out.
    Postrouting,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Postrouting => "postrouting",
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// Filtering.
    Filter,
    /// Address translation.
    Nat,
}

/// Connection-tracking states a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// A packet of a connection already seen both ways.
    Established,
    /// A packet related to one (an ICMP error, say).
    Related,
    /// A packet conntrack cannot place.
    Invalid,
}

impl CtState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Related => "related",
            Self::Invalid => "invalid",
        }
    }
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4 {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One condition of a rule; all of a rule's matches must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The packet came in on this interface.
    Iif(String),
    /// The packet goes out on this interface.
    Oif(String),
    /// The packet is IPv6.
    Ipv6,
    /// The IPv4 source is not this address.
    SaddrNot(Ipv4Addr),
    /// The IPv4 source lies in this network.
    SaddrIn(Ipv4Cidr),
    /// The IPv4 destination is this address.
    Daddr(Ipv4Addr),
    /// The IPv4 destination is in this named set of the table.
    DaddrInSet(&'static str),
    /// The connection is in one of these states.
    Ct(Vec<CtState>),
    /// The transport is this protocol and the destination port one of these.
    Dport(L4, Vec<u16>),
}

/// What a rule does when all its matches hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the packet through (this chain).
    Accept,
    /// Discard silently.
    Drop,
    /// Discard and tell the sender "administratively prohibited".
    Reject,
    /// Rewrite the source to the outgoing interface's address.
    Masquerade,
    /// Rewrite the destination to the incoming interface's address and this port
    /// (`redirect to :PORT`): the connection ends in the namespace itself.
    Redirect(u16),
}

/// One rule: matches, an action, and a comment saying why (shown by `nft list ruleset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Why the rule is there.
    pub comment: &'static str,
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// The verdict.
    pub action: Action,
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name (the hook's name).
    pub name: &'static str,
    /// Filter or NAT.
    pub kind: ChainType,
    /// Where it hangs.
    pub hook: Hook,
    /// Its priority at that hook.
    pub priority: i32,
    /// What happens to a packet no rule decided.
    pub policy: Action,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// A named set of IPv4 addresses or networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Its name.
    pub name: &'static str,
    /// Whether elements may be networks (an interval set).
    pub interval: bool,
    /// For a set with timeouts: the default lifetime of an element.
    pub timeout: Option<Duration>,
    /// Its elements when created.
    pub elements: Vec<Ipv4Cidr>,
}

/// One `inet` table: sets and base chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's name (`pyro-<index>`).
    pub table: String,
    /// Its named sets.
    pub sets: Vec<Set>,
    /// Its chains.
    pub chains: Vec<Chain>,
}

/// A filter chain named after its hook, at priority 0 unless the caller changes it.
fn filter(hook: Hook, policy: Action, rules: Vec<Rule>) -> Chain {
    Chain {
        name: hook.as_str(),
        kind: ChainType::Filter,
        hook,
        priority: 0,
        policy,
        rules,
    }
}

fn rule(comment: &'static str, matches: Vec<Match>, action: Action) -> Rule {
    Rule {
        comment,
        matches,
        action,
    }
}

/// Whether the guest's HTTP(S) goes through pyro's egress proxy: when networked and the
/// allowlist has host patterns (names are checked) or the sandbox has credentials (they
/// are injected). The daemon starts the proxy exactly then.
pub fn proxied(policy: NetworkPolicy, allowlist: &Allowlist, credentials: bool) -> bool {
    policy.is_networked() && (!allowlist.hosts().is_empty() || credentials)
}

/// The table for the sandbox's namespace (see the module docs for what each chain does),
/// for a sandbox without credentials: [`sandbox_with`]`(…, false)`.
///
/// Under [`NetworkPolicy::Off`] the core creates no namespace at all; should this table be
/// applied anyway it forwards nothing and accepts nothing from the TAP.
pub fn sandbox(plan: &SandboxNet, policy: NetworkPolicy, allowlist: &Allowlist) -> Ruleset {
    sandbox_with(plan, policy, allowlist, false)
}

/// The table for the sandbox's namespace; `credentials` says whether it has credentials to
/// inject (which makes it [`proxied`] without host patterns).
pub fn sandbox_with(
    plan: &SandboxNet,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    credentials: bool,
) -> Ruleset {
    let tap = || Match::Iif(TAP_NAME.to_owned());
    let uplink_in = || Match::Iif(UPLINK_NS_NAME.to_owned());
    let uplink_out = || Match::Oif(UPLINK_NS_NAME.to_owned());
    let narrowed = !allowlist.is_empty();
    let proxied = proxied(policy, allowlist, credentials);

    // Raw priority: before conntrack, so forged packets never create state.
    let prerouting = Chain {
        priority: -300,
        ..filter(
            Hook::Prerouting,
            Action::Accept,
            vec![
                rule(
                    "guests get IPv4 only",
                    vec![tap(), Match::Ipv6],
                    Action::Drop,
                ),
                rule(
                    "anti-spoofing: only the guest's address from the TAP",
                    vec![tap(), Match::SaddrNot(plan.guest())],
                    Action::Drop,
                ),
                rule(
                    "anti-spoofing: the guest's subnet never arrives from the uplink",
                    vec![uplink_in(), Match::SaddrIn(plan.guest_subnet())],
                    Action::Drop,
                ),
            ],
        )
    };

    let mut input_rules = vec![
        rule(
            "the namespace's own traffic",
            vec![Match::Iif("lo".to_owned())],
            Action::Accept,
        ),
        rule(
            "replies",
            vec![Match::Ct(vec![CtState::Established, CtState::Related])],
            Action::Accept,
        ),
        rule(
            "forged state",
            vec![Match::Ct(vec![CtState::Invalid])],
            Action::Drop,
        ),
    ];
    if policy.is_networked() {
        for l4 in [L4::Udp, L4::Tcp] {
            input_rules.push(rule(
                "DNS to pyro's resolver on the gateway",
                vec![
                    tap(),
                    Match::Daddr(plan.gateway()),
                    Match::Dport(l4, vec![53]),
                ],
                Action::Accept,
            ));
        }
    }
    if proxied {
        input_rules.push(rule(
            "HTTP(S) redirected to pyro's egress proxy on the gateway",
            vec![
                tap(),
                Match::Daddr(plan.gateway()),
                Match::Dport(L4::Tcp, vec![PROXY_PORT]),
            ],
            Action::Accept,
        ));
    }
    input_rules.push(rule(
        "nothing else on the gateway or the namespace (services on 0.0.0.0 included)",
        vec![tap()],
        Action::Reject,
    ));
    let input = filter(Hook::Input, Action::Drop, input_rules);

    let mut forward_rules = vec![
        rule(
            "forged state",
            vec![Match::Ct(vec![CtState::Invalid])],
            Action::Drop,
        ),
        rule(
            "replies to the guest's connections",
            vec![
                uplink_in(),
                Match::Oif(TAP_NAME.to_owned()),
                Match::Ct(vec![CtState::Established, CtState::Related]),
            ],
            Action::Accept,
        ),
    ];
    if policy.is_networked() {
        forward_rules.push(rule(
            "the guest's established connections",
            vec![
                tap(),
                uplink_out(),
                Match::Ct(vec![CtState::Established, CtState::Related]),
            ],
            Action::Accept,
        ));
        for l4 in [L4::Udp, L4::Tcp] {
            forward_rules.push(rule(
                "DNS and DNS over TLS only to pyro's resolver",
                vec![tap(), Match::Dport(l4, vec![53, 853])],
                Action::Reject,
            ));
        }
        if narrowed {
            forward_rules.push(rule(
                "--allow-cidr",
                vec![tap(), uplink_out(), Match::DaddrInSet(ALLOWED_CIDRS_SET)],
                Action::Accept,
            ));
        }
        forward_rules.push(rule(
            "not public unicast: private, loopback, link-local, multicast, broadcast, reserved",
            vec![tap(), Match::DaddrInSet(BLOCKED_SET)],
            Action::Reject,
        ));
        if narrowed {
            forward_rules.push(rule(
                "addresses pyro's resolver returned for --allow-host names",
                vec![tap(), uplink_out(), Match::DaddrInSet(ALLOWED_SET)],
                Action::Accept,
            ));
        } else {
            forward_rules.push(rule(
                "public unicast",
                vec![tap(), uplink_out()],
                Action::Accept,
            ));
        }
    }
    forward_rules.push(rule(
        "everything else from the guest",
        vec![tap()],
        Action::Reject,
    ));
    let forward = filter(Hook::Forward, Action::Drop, forward_rules);

    // Destination NAT priority: after the raw chain's anti-spoofing, before routing.
    let mut redirect_rules = Vec::new();
    if proxied {
        if narrowed {
            redirect_rules.push(rule(
                "--allow-cidr goes straight out (the forward chain decides)",
                vec![tap(), Match::DaddrInSet(ALLOWED_CIDRS_SET)],
                Action::Accept,
            ));
        }
        redirect_rules.push(rule(
            "blocked destinations are not proxied (the forward chain refuses them)",
            vec![tap(), Match::DaddrInSet(BLOCKED_SET)],
            Action::Accept,
        ));
        redirect_rules.push(rule(
            "HTTP(S) to pyro's egress proxy, which decides by Host or SNI and injects credentials",
            vec![tap(), Match::Dport(L4::Tcp, PROXIED_PORTS.to_vec())],
            Action::Redirect(PROXY_PORT),
        ));
    }
    let redirect = Chain {
        name: "redirect",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: -100,
        policy: Action::Accept,
        rules: redirect_rules,
    };

    let postrouting = Chain {
        name: "postrouting",
        kind: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: 100,
        policy: Action::Accept,
        rules: vec![rule(
            "the guest leaves as the uplink's address",
            vec![uplink_out(), Match::SaddrIn(plan.guest_subnet())],
            Action::Masquerade,
        )],
    };

    let mut sets = vec![Set {
        name: BLOCKED_SET,
        interval: true,
        timeout: None,
        elements: BLOCKED.iter().map(|(net, _)| *net).collect(),
    }];
    if narrowed {
        sets.push(Set {
            name: ALLOWED_CIDRS_SET,
            interval: true,
            timeout: None,
            elements: allowlist.cidrs().to_vec(),
        });
    }
    sets.push(Set {
        name: ALLOWED_SET,
        interval: false,
        timeout: Some(ALLOWED_DEFAULT_TIMEOUT),
        elements: Vec::new(),
    });

    Ruleset {
        table: plan.name(),
        sets,
        chains: if proxied {
            vec![prerouting, redirect, input, forward, postrouting]
        } else {
            vec![prerouting, input, forward, postrouting]
        },
    }
}

/// The table for the host's namespace, guarding the host end of the uplink
/// (`pyro-<index>`): nothing from the sandbox ends on the host (whatever address it is sent
/// to, services bound to `0.0.0.0` included) unless the host started the conversation; what
/// the host forwards for it must carry the uplink's address and may not go to another
/// sandbox; no IPv6.
pub fn host_guard(plan: &SandboxNet) -> Ruleset {
    let uplink = || Match::Iif(plan.name());
    let input = filter(
        Hook::Input,
        Action::Accept,
        vec![
            rule(
                "replies to connections the host opened",
                vec![
                    uplink(),
                    Match::Ct(vec![CtState::Established, CtState::Related]),
                ],
                Action::Accept,
            ),
            rule(
                "a sandbox never reaches the host",
                vec![uplink()],
                Action::Reject,
            ),
        ],
    );
    let forward = filter(
        Hook::Forward,
        Action::Accept,
        vec![
            rule(
                "no IPv6 from a sandbox",
                vec![uplink(), Match::Ipv6],
                Action::Drop,
            ),
            rule(
                "anti-spoofing: only the uplink's address",
                vec![uplink(), Match::SaddrNot(plan.uplink_ns())],
                Action::Drop,
            ),
            rule(
                "no sandbox reaches another",
                vec![uplink(), Match::DaddrInSet(BLOCKED_SET)],
                Action::Reject,
            ),
        ],
    );
    Ruleset {
        table: plan.name(),
        sets: vec![Set {
            name: BLOCKED_SET,
            interval: true,
            timeout: None,
            elements: vec![POOLS],
        }],
        chains: vec![input, forward],
    }
}

fn addr_json(net: &Ipv4Cidr) -> Value {
    if net.prefix_len() == 32 {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.addr().to_string(), "len": net.prefix_len()}})
    }
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn ip(field: &str) -> Value {
    json!({"payload": {"protocol": "ip", "field": field}})
}

fn cmp(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

impl Match {
    fn to_json(&self) -> Value {
        match self {
            Self::Iif(name) => cmp("==", meta("iifname"), json!(name)),
            Self::Oif(name) => cmp("==", meta("oifname"), json!(name)),
            Self::Ipv6 => cmp("==", meta("nfproto"), json!("ipv6")),
            Self::SaddrNot(addr) => cmp("!=", ip("saddr"), json!(addr.to_string())),
            Self::SaddrIn(net) => cmp("==", ip("saddr"), addr_json(net)),
            Self::Daddr(addr) => cmp("==", ip("daddr"), json!(addr.to_string())),
            Self::DaddrInSet(set) => cmp("==", ip("daddr"), json!(format!("@{set}"))),
            Self::Ct(states) => {
                let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
                cmp("in", json!({"ct": {"key": "state"}}), json!(states))
            }
            Self::Dport(l4, ports) => cmp(
                "==",
                json!({"payload": {"protocol": l4.as_str(), "field": "dport"}}),
                json!({"set": ports}),
            ),
        }
    }
}

impl Action {
    fn to_json(self) -> Value {
        match self {
            Self::Accept => json!({"accept": null}),
            Self::Drop => json!({"drop": null}),
            Self::Reject => json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
            Self::Masquerade => json!({"masquerade": null}),
            Self::Redirect(port) => json!({"redirect": {"port": port}}),
        }
    }

    fn policy_str(self) -> &'static str {
        match self {
            Self::Drop | Self::Reject => "drop",
            Self::Accept | Self::Masquerade | Self::Redirect(_) => "accept",
        }
    }
}

impl Ruleset {
    /// The chain named `name`.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The set named `name`.
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The nft JSON document creating (or atomically replacing) this table.
    pub fn to_json(&self) -> Value {
        let table = json!({"family": FAMILY, "name": self.table});
        // `add` then `delete` then `add`: one transaction that replaces the table whether
        // or not it existed, touching no other table.
        let mut commands = vec![
            json!({"add": {"table": table}}),
            json!({"delete": {"table": table}}),
            json!({"add": {"table": table}}),
        ];
        commands.extend(self.contents());
        json!({"nftables": commands})
    }

    /// The nft commands creating this table, which must not exist: `create table` fails
    /// (and with it the whole transaction they are part of) if a table of its name does.
    pub fn create_commands(&self) -> Vec<Value> {
        let table = json!({"family": FAMILY, "name": self.table});
        let mut commands = vec![json!({"create": {"table": table}})];
        commands.extend(self.contents());
        commands
    }

    /// The commands filling the (new, empty) table: sets, chains, rules.
    fn contents(&self) -> Vec<Value> {
        let mut commands = Vec::new();
        for set in &self.sets {
            let mut body = json!({
                "family": FAMILY, "table": self.table, "name": set.name, "type": "ipv4_addr",
            });
            let mut flags = Vec::new();
            if set.interval {
                flags.push("interval");
            }
            if let Some(timeout) = set.timeout {
                flags.push("timeout");
                body["timeout"] = json!(timeout.as_secs());
            }
            if !flags.is_empty() {
                body["flags"] = json!(flags);
            }
            if !set.elements.is_empty() {
                body["elem"] = Value::Array(set.elements.iter().map(addr_json).collect());
            }
            commands.push(json!({"add": {"set": body}}));
        }
        for chain in &self.chains {
            commands.push(json!({"add": {"chain": {
                "family": FAMILY, "table": self.table, "name": chain.name,
                "type": match chain.kind { ChainType::Filter => "filter", ChainType::Nat => "nat" },
                "hook": chain.hook.as_str(), "prio": chain.priority,
                "policy": chain.policy.policy_str(),
            }}}));
        }
        for chain in &self.chains {
            for rule in &chain.rules {
                let mut expr: Vec<Value> = rule.matches.iter().map(Match::to_json).collect();
                expr.push(json!({"counter": null}));
                expr.push(rule.action.to_json());
                commands.push(json!({"add": {"rule": {
                    "family": FAMILY, "table": self.table, "chain": chain.name,
                    "comment": rule.comment, "expr": expr,
                }}}));
            }
        }
        commands
    }
}

/// The nft JSON document deleting table `table` (fails in nft if it does not exist).
pub fn delete_table(table: &str) -> Value {
    json!({"nftables": [{"delete": {"table": {"family": FAMILY, "name": table}}}]})
}

/// The nft commands deleting table `table` whether or not it exists (`add` then `delete`
/// in one transaction: nft 1.0.6 has no `destroy`).
pub fn remove_table_commands(table: &str) -> [Value; 2] {
    let table = json!({"family": FAMILY, "name": table});
    [
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
    ]
}

/// The nft JSON document adding `addrs` to a sandbox's `allowed_v4` set, each for its own
/// lifetime (whole seconds, at least one): what pyro's resolver does for an allowed name.
pub fn allow_addresses(plan: &SandboxNet, addrs: &[(Ipv4Addr, Duration)]) -> Value {
    let elem: Vec<Value> = addrs
        .iter()
        .map(|(addr, ttl)| json!({"elem": {"val": addr.to_string(), "timeout": ttl.as_secs().max(1)}}))
        .collect();
    json!({"nftables": [{"add": {"element": {
        "family": FAMILY, "table": plan.name(), "name": ALLOWED_SET, "elem": elem,
    }}}]})
}

#[cfg(test)]
mod tests;
