//! What a caller asks of a sandbox's network: a [`NetworkPolicy`] and an [`Allowlist`].
//!
//! Both are validated on construction (and on deserialisation), so everything downstream
//! (the ruleset, the resolver) may trust them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::plan::{CidrError, Ipv4Cidr, POOLS};

/// How much network a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// No network device at all (the default): nothing is created on the host.
    #[default]
    #[serde(rename = "off")]
    Off,
    /// Outbound connections to public unicast IPv4 addresses (narrowed by an allowlist).
    #[serde(rename = "egress")]
    Egress,
    /// [`NetworkPolicy::Egress`] plus ports published on the host's 127.0.0.1 (the relays
    /// are not built yet; the ruleset is that of `egress` for now).
    #[serde(rename = "egress+published-ports")]
    EgressPublishedPorts,
}

impl NetworkPolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [NetworkPolicy; 3] = [Self::Off, Self::Egress, Self::EgressPublishedPorts];

    /// The name used on the command line and in JSON.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Egress => "egress",
            Self::EgressPublishedPorts => "egress+published-ports",
        }
    }

    /// Whether the sandbox gets a network at all.
    pub const fn is_networked(&self) -> bool {
        !matches!(self, Self::Off)
    }
}

impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network policy name that is not one of [`NetworkPolicy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network policy `{input}` (expected off, egress or egress+published-ports)")]
pub struct PolicyError {
    /// The text refused (cut to 64 characters).
    pub input: String,
}

impl FromStr for NetworkPolicy {
    type Err = PolicyError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == input)
            .ok_or_else(|| PolicyError {
                input: input.chars().take(64).collect(),
            })
    }
}

/// Most host patterns one allowlist may hold.
pub const MAX_HOSTS: usize = 256;
/// Most CIDRs one allowlist may hold.
pub const MAX_CIDRS: usize = 256;
/// Longest host name (RFC 1035: 253 characters without the final dot).
pub const MAX_HOST_LEN: usize = 253;

/// Networks no `--allow-cidr` may touch: they are never a destination a guest may reach.
/// (Private ranges and the metadata address may be opened explicitly; these may not.)
pub const NEVER_ALLOWED: [(Ipv4Cidr, &str); 5] = [
    (Ipv4Cidr::constant(0, 0, 0, 0, 8), "\"this\" network"),
    (Ipv4Cidr::constant(127, 0, 0, 0, 8), "loopback"),
    (Ipv4Cidr::constant(224, 0, 0, 0, 4), "multicast"),
    (
        Ipv4Cidr::constant(240, 0, 0, 0, 4),
        "reserved and broadcast",
    ),
    (POOLS, "pyro's sandbox address pool"),
];

/// A host name the guest may connect to: `api.example.org`, or `*.example.org` for every
/// name below `example.org` (not `example.org` itself). Stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    /// The name, or for a wildcard the suffix after `*.`.
    base: String,
    wildcard: bool,
}

impl HostPattern {
    /// Whether `name` (a DNS name, any case, optionally with a final dot) is allowed.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if !self.wildcard {
            return name == self.base;
        }
        name.len() > self.base.len() + 1
            && name.ends_with(&self.base)
            && name.as_bytes()[name.len() - self.base.len() - 1] == b'.'
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.base)
    }
}

impl FromStr for HostPattern {
    type Err = AllowlistError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &'static str| AllowlistError::BadHost {
            input: input.chars().take(80).collect(),
            reason,
        };
        if input.len() > MAX_HOST_LEN + 2 {
            return Err(bad("longer than 253 characters"));
        }
        let lower = input.to_ascii_lowercase();
        let (wildcard, base) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let base = base.strip_suffix('.').unwrap_or(base);
        if base.is_empty() {
            return Err(bad("empty name"));
        }
        if base.len() > MAX_HOST_LEN {
            return Err(bad("longer than 253 characters"));
        }
        let labels: Vec<&str> = base.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 characters"));
            }
            if label.contains('*') {
                return Err(bad(
                    "`*` may only stand alone as the first label, as in *.example.org",
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "only letters, digits, `-` and `_` are allowed in a label",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label may not start or end with `-`"));
            }
        }
        if labels.len() < 2 {
            return Err(bad("needs at least two labels, as in example.org"));
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad(
                "looks like an IP address; use --allow-cidr for addresses",
            ));
        }
        Ok(Self {
            base: base.to_owned(),
            wildcard,
        })
    }
}

impl TryFrom<String> for HostPattern {
    type Error = AllowlistError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<HostPattern> for String {
    fn from(value: HostPattern) -> Self {
        value.to_string()
    }
}

/// Why an allowlist was refused; every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// A host pattern is malformed.
    #[error("--allow-host `{input}`: {reason}")]
    BadHost {
        /// The pattern refused (cut to 80 characters).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CIDR is malformed.
    #[error("--allow-cidr: {source}")]
    BadCidr {
        /// What is wrong with it (names the input).
        #[from]
        source: CidrError,
    },
    /// A CIDR overlaps a network no guest may ever reach.
    #[error("--allow-cidr `{input}` overlaps {range} ({what}), which is never allowed")]
    ForbiddenCidr {
        /// The CIDR refused.
        input: Ipv4Cidr,
        /// The network it overlaps.
        range: Ipv4Cidr,
        /// What that network is.
        what: &'static str,
    },
    /// Too many entries.
    #[error("too many {what}: {count} (at most {max})")]
    TooMany {
        /// `--allow-host` or `--allow-cidr` entries.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Where a guest may connect. Empty (the default) means no narrowing: any public address.
/// Non-empty means only addresses in `cidrs`, and addresses pyro's resolver returned for a
/// name matching one of `hosts` (the `allowed_v4` set, filled with timeouts).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawAllowlist", into = "RawAllowlist")]
pub struct Allowlist {
    hosts: Vec<HostPattern>,
    cidrs: Vec<Ipv4Cidr>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    #[serde(default)]
    hosts: Vec<HostPattern>,
    #[serde(default)]
    cidrs: Vec<Ipv4Cidr>,
}

impl TryFrom<RawAllowlist> for Allowlist {
    type Error = AllowlistError;
    fn try_from(raw: RawAllowlist) -> Result<Self, Self::Error> {
        Self::from_parts(raw.hosts, raw.cidrs)
    }
}

impl From<Allowlist> for RawAllowlist {
    fn from(value: Allowlist) -> Self {
        Self {
            hosts: value.hosts,
            cidrs: value.cidrs,
        }
    }
}

impl Allowlist {
    /// Parses and validates `--allow-host` and `--allow-cidr` values.
    pub fn parse<H, C>(hosts: H, cidrs: C) -> Result<Self, AllowlistError>
    where
        H: IntoIterator,
        H::Item: AsRef<str>,
        C: IntoIterator,
        C::Item: AsRef<str>,
    {
        let hosts = hosts
            .into_iter()
            .take(MAX_HOSTS + 1)
            .map(|h| h.as_ref().parse())
            .collect::<Result<Vec<HostPattern>, _>>()?;
        let cidrs = cidrs
            .into_iter()
            .take(MAX_CIDRS + 1)
            .map(|c| c.as_ref().parse().map_err(AllowlistError::from))
            .collect::<Result<Vec<Ipv4Cidr>, _>>()?;
        Self::from_parts(hosts, cidrs)
    }

    /// Validates already parsed parts: counts, and CIDRs clear of [`NEVER_ALLOWED`].
    /// Duplicates are dropped and both lists sorted.
    pub fn from_parts(
        mut hosts: Vec<HostPattern>,
        mut cidrs: Vec<Ipv4Cidr>,
    ) -> Result<Self, AllowlistError> {
        if hosts.len() > MAX_HOSTS {
            return Err(AllowlistError::TooMany {
                what: "--allow-host entries",
                count: hosts.len(),
                max: MAX_HOSTS,
            });
        }
        if cidrs.len() > MAX_CIDRS {
            return Err(AllowlistError::TooMany {
                what: "--allow-cidr entries",
                count: cidrs.len(),
                max: MAX_CIDRS,
            });
        }
        for cidr in &cidrs {
            if let Some((range, what)) = NEVER_ALLOWED.iter().find(|(r, _)| r.overlaps(cidr)) {
                return Err(AllowlistError::ForbiddenCidr {
                    input: *cidr,
                    range: *range,
                    what,
                });
            }
        }
        hosts.sort();
        hosts.dedup();
        // Sorted by (address, length), a network comes before every network inside it; keep
        // only the outermost, so the nft interval set never holds overlapping elements.
        cidrs.sort();
        let mut outer: Vec<Ipv4Cidr> = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            if !outer.last().is_some_and(|last| last.overlaps(&cidr)) {
                outer.push(cidr);
            }
        }
        Ok(Self {
            hosts,
            cidrs: outer,
        })
    }

    /// The host patterns.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// The CIDRs.
    pub fn cidrs(&self) -> &[Ipv4Cidr] {
        &self.cidrs
    }

    /// Whether nothing narrows egress.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.cidrs.is_empty()
    }

    /// Whether some pattern allows `name`.
    pub fn allows_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn policy_names_round_trip() {
        for p in NetworkPolicy::ALL {
            assert_eq!(p.as_str().parse::<NetworkPolicy>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<NetworkPolicy>(&json).unwrap(), p);
        }
        assert_eq!(NetworkPolicy::default(), NetworkPolicy::Off);
        assert!(!NetworkPolicy::Off.is_networked() && NetworkPolicy::Egress.is_networked());
    }

    #[test]
    fn unknown_policy_names_the_input() {
        let err = "egress+ports".parse::<NetworkPolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown network policy `egress+ports` (expected off, egress or egress+published-ports)"
        );
        assert!("Egress".parse::<NetworkPolicy>().is_err());
        assert!(serde_json::from_str::<NetworkPolicy>("\"on\"").is_err());
    }

    #[test]
    fn host_patterns() {
        let exact: HostPattern = "API.Example.org.".parse().unwrap();
        assert_eq!(exact.to_string(), "api.example.org");
        assert!(exact.matches("api.example.org") && exact.matches("API.EXAMPLE.ORG."));
        assert!(!exact.matches("x.api.example.org") && !exact.matches("example.org"));

        let wild: HostPattern = "*.example.org".parse().unwrap();
        assert!(wild.is_wildcard());
        assert!(wild.matches("a.example.org") && wild.matches("a.b.example.org"));
        assert!(!wild.matches("example.org") && !wild.matches("badexample.org"));
        assert!(!wild.matches(".example.org"));
    }

    #[test]
    fn bad_host_patterns_name_the_input() {
        for (input, reason) in [
            ("", "empty name"),
            ("*.", "empty name"),
            ("localhost", "needs at least two labels"),
            ("*.org", "needs at least two labels"),
            ("a..org", "empty label"),
            ("a.*.org", "`*` may only stand alone"),
            ("*example.org", "`*` may only stand alone"),
            ("**.example.org", "`*` may only stand alone"),
            ("exa mple.org", "only letters"),
            ("-a.org", "a label may not start or end"),
            ("10.0.0.1", "looks like an IP address"),
        ] {
            let err = input.parse::<HostPattern>().unwrap_err();
            let AllowlistError::BadHost {
                input: named,
                reason: got,
            } = &err
            else {
                panic!("{input}: {err:?}")
            };
            assert_eq!(named, input);
            assert!(got.starts_with(reason), "{input}: {got}");
            assert!(
                err.to_string()
                    .starts_with(&format!("--allow-host `{input}`"))
            );
        }
        let long = format!("{}.org", "a".repeat(64));
        assert!(long.parse::<HostPattern>().is_err());
        let too_long = format!("{}org", "abcdefghi.".repeat(26));
        assert!(too_long.parse::<HostPattern>().is_err());
    }

    #[test]
    fn allowlist_validation() {
        let list = Allowlist::parse(
            ["b.org", "*.a.org", "b.org"],
            ["198.51.100.0/24", "10.9.9.9", "198.51.100.7", "10.9.9.9/32"],
        )
        .unwrap();
        assert_eq!(list.hosts().len(), 2);
        assert_eq!(list.hosts()[0].to_string(), "*.a.org");
        assert!(list.allows_host("x.a.org") && !list.allows_host("a.org"));
        assert_eq!(list.cidrs().len(), 2);
        assert!(!list.is_empty() && Allowlist::default().is_empty());

        let err = Allowlist::parse([] as [&str; 0], ["0.0.0.0/0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--allow-cidr `0.0.0.0/0` overlaps 0.0.0.0/8 (\"this\" network), which is never allowed"
        );
        for bad in [
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "10.200.3.0/24",
            "10.0.0.0/8",
        ] {
            assert!(
                matches!(
                    Allowlist::parse([] as [&str; 0], [bad]),
                    Err(AllowlistError::ForbiddenCidr { .. })
                ),
                "{bad}"
            );
        }
        let err = Allowlist::parse([] as [&str; 0], ["10.1.2.3/8"]).unwrap_err();
        assert!(err.to_string().contains("`10.1.2.3/8`"), "{err}");

        let many: Vec<String> = (0..=MAX_HOSTS)
            .map(|i| format!("h{i}.example.org"))
            .collect();
        assert_eq!(
            Allowlist::parse(&many, [] as [&str; 0]),
            Err(AllowlistError::TooMany {
                what: "--allow-host entries",
                count: 257,
                max: 256
            })
        );
    }

    #[test]
    fn allowlist_json_is_validated() {
        let list: Allowlist =
            serde_json::from_str(r#"{"hosts":["*.example.org"],"cidrs":["203.0.113.0/24"]}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"{"hosts":["*.example.org"],"cidrs":["203.0.113.0/24"]}"#
        );
        assert!(serde_json::from_str::<Allowlist>(r#"{"cidrs":["127.0.0.0/8"]}"#).is_err());
        assert!(serde_json::from_str::<Allowlist>(r#"{"hosts":["x"]}"#).is_err());
        assert!(serde_json::from_str::<Allowlist>(r#"{"host":[]}"#).is_err());
    }

    proptest! {
        #[test]
        fn wildcards_match_exactly_their_subdomains(
            sub in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}",
            base in "[a-z]{1,10}\\.[a-z]{2,5}",
        ) {
            let wild: HostPattern = format!("*.{base}").parse().unwrap();
            let sub_name = format!("{sub}.{base}");
            prop_assert!(wild.matches(&sub_name));
            prop_assert!(!wild.matches(&base));
            let glued = format!("{sub}{base}");
            prop_assert!(!wild.matches(&glued));
        }
    }
}
