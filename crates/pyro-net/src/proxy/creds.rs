//! Credentials the egress proxy injects: which placeholder stands for which secret, and
//! for which hosts.
//!
//! # The flow
//!
//! A workspace secret declared for hosts (`--secret NAME=VALUE --secret-host
//! NAME=api.example.org`) becomes a [`CredentialRule`]: the guest's environment holds only
//! its [`placeholder`](CredentialRule::placeholder) (`pyro-cred-` and 32 random hex digits,
//! [`new_placeholder`]), never the value. The guest sends the placeholder where the secret
//! belongs (`Authorization: Bearer pyro-cred-…`); the proxy, which sees every request on
//! port 80 and intercepts TLS on port 443 to a rule's hosts (with a leaf from the
//! workspace's CA, [`crate::ca`]), replaces the placeholder by the value in the request's
//! header values when the request's `Host` is one of the rule's hosts
//! ([`super::http1`]). A placeholder anywhere else in a request head (the request target,
//! a header name, the `Host` header, trailers), or in a request to another host, blocks
//! the connection and records a denial naming the rule (never the value).
//!
//! # Threat model
//!
//! - The guest never sees a value: not in its environment, not in a response (the proxy
//!   rewrites requests only; a server echoing the header back is the server's doing).
//! - A value only leaves in a request to one of its rule's hosts, over TLS verified against
//!   the host's trust roots for that very name (or plain HTTP when the guest itself chose
//!   port 80 to that host), with `Host` equal to the verified name.
//! - A placeholder sent elsewhere is worthless: it is not the secret. Over plain HTTP and
//!   over intercepted TLS the proxy sees it and blocks (that is detection, not protection);
//!   over TLS to a host no rule names the proxy does not intercept and cannot see it, and
//!   nothing is lost. Request bodies are not scanned, for the same reason.
//! - The CA's key stays on the host; the guest trusts the CA, so the proxy could read any
//!   TLS it intercepted, but it intercepts only the rules' hosts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::HostPattern;

/// What every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "pyro-cred-";
/// The hex digits after the prefix.
pub const PLACEHOLDER_HEX: usize = 32;
/// Most rules a sandbox may have.
pub const MAX_RULES: usize = 32;
/// Most hosts one rule may name.
pub const MAX_RULE_HOSTS: usize = 16;
/// Longest value (bytes).
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// Longest rule name.
pub const MAX_NAME_LEN: usize = 64;

/// One secret: the placeholder the guest sees, the value the proxy puts in its place, and
/// the hosts it may go to. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRule {
    /// The secret's name (`NAME` of `--secret NAME=VALUE`): 1 to [`MAX_NAME_LEN`] letters,
    /// digits and `_`. Shown in denials.
    pub name: String,
    /// What the guest sees: [`PLACEHOLDER_PREFIX`] and [`PLACEHOLDER_HEX`] lower-case hex
    /// digits ([`new_placeholder`]).
    pub placeholder: String,
    /// The secret: 1 to [`MAX_VALUE_LEN`] bytes, no control characters but tab (so it
    /// cannot end a header line or start another).
    pub value: String,
    /// Where it may go: exact names or `*.suffix` patterns, 1 to [`MAX_RULE_HOSTS`].
    pub hosts: Vec<HostPattern>,
}

impl fmt::Debug for CredentialRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRule")
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("value", &"[redacted]")
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Why credential rules are refused. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// More than [`MAX_RULES`] rules.
    #[error("{count} credential rules (at most {MAX_RULES})")]
    TooMany {
        /// How many.
        count: usize,
    },
    /// A rule's name is not 1 to [`MAX_NAME_LEN`] letters, digits and `_`.
    #[error("credential name `{name}` is not 1 to {MAX_NAME_LEN} letters, digits and `_`")]
    BadName {
        /// The name (cut to 80 characters).
        name: String,
    },
    /// Two rules share a name or a placeholder.
    #[error("credential `{name}` is declared twice (name or placeholder)")]
    Duplicate {
        /// The second rule's name.
        name: String,
    },
    /// A placeholder is not `pyro-cred-` and 32 lower-case hex digits.
    #[error("credential `{name}`: the placeholder is not {PLACEHOLDER_PREFIX}<32 hex digits>")]
    BadPlaceholder {
        /// The rule.
        name: String,
    },
    /// A value is empty, too long, or holds a control character (CR, LF, NUL…).
    #[error("credential `{name}`: the value {reason}")]
    BadValue {
        /// The rule.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A rule names no host, or more than [`MAX_RULE_HOSTS`].
    #[error("credential `{name}` names {count} hosts (expected 1 to {MAX_RULE_HOSTS})")]
    Hosts {
        /// The rule.
        name: String,
        /// How many.
        count: usize,
    },
}

impl CredentialRule {
    /// Checks the rule alone (see the fields' docs).
    pub fn validate(&self) -> Result<(), CredentialError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(CredentialError::BadName {
                name: self.name.chars().take(80).collect(),
            });
        }
        let name = || self.name.clone();
        if !is_placeholder(&self.placeholder) {
            return Err(CredentialError::BadPlaceholder { name: name() });
        }
        let bad_value = |reason| CredentialError::BadValue {
            name: name(),
            reason,
        };
        if self.value.is_empty() {
            return Err(bad_value("is empty"));
        }
        if self.value.len() > MAX_VALUE_LEN {
            return Err(bad_value("is longer than 8 KiB"));
        }
        if self
            .value
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(bad_value(
                "holds a control character (CR, LF, NUL…), which could split a header",
            ));
        }
        if self.value.contains(PLACEHOLDER_PREFIX) {
            return Err(bad_value("holds a placeholder"));
        }
        if self.hosts.is_empty() || self.hosts.len() > MAX_RULE_HOSTS {
            return Err(CredentialError::Hosts {
                name: name(),
                count: self.hosts.len(),
            });
        }
        Ok(())
    }

    /// Whether the value may go to `host`.
    pub fn applies_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }
}

/// Whether `s` has a placeholder's form.
pub fn is_placeholder(s: &str) -> bool {
    s.strip_prefix(PLACEHOLDER_PREFIX).is_some_and(|hex| {
        hex.len() == PLACEHOLDER_HEX
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A fresh placeholder: [`PLACEHOLDER_PREFIX`] and 128 random bits in hex, from the
/// system's secure random source (through ring).
pub fn new_placeholder() -> Result<String, rustls::Error> {
    let mut bytes = [0u8; PLACEHOLDER_HEX / 2];
    crate::ca::tls_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
    let mut out = String::with_capacity(PLACEHOLDER_PREFIX.len() + PLACEHOLDER_HEX);
    out.push_str(PLACEHOLDER_PREFIX);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// A validated set of rules (at most [`MAX_RULES`], names and placeholders unique).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    rules: Vec<CredentialRule>,
}

impl Credentials {
    /// Validates `rules`.
    pub fn new(rules: Vec<CredentialRule>) -> Result<Credentials, CredentialError> {
        if rules.len() > MAX_RULES {
            return Err(CredentialError::TooMany { count: rules.len() });
        }
        for (i, rule) in rules.iter().enumerate() {
            rule.validate()?;
            if rules[..i]
                .iter()
                .any(|r| r.name == rule.name || r.placeholder == rule.placeholder)
            {
                return Err(CredentialError::Duplicate {
                    name: rule.name.clone(),
                });
            }
        }
        Ok(Credentials { rules })
    }

    /// The rules.
    pub fn rules(&self) -> &[CredentialRule] {
        &self.rules
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether TLS to `host` is intercepted: some rule may send its value there.
    pub fn intercepts(&self, host: &str) -> bool {
        self.rules.iter().any(|r| r.applies_to(host))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TOKEN: &str = "pyro-cred-0123456789abcdef0123456789abcdef";
    pub(crate) const TOKEN_2: &str = "pyro-cred-fedcba9876543210fedcba9876543210";

    pub(crate) fn rule(
        name: &str,
        placeholder: &str,
        value: &str,
        hosts: &[&str],
    ) -> CredentialRule {
        CredentialRule {
            name: name.to_owned(),
            placeholder: placeholder.to_owned(),
            value: value.to_owned(),
            hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn valid_rules_pass_and_match_their_hosts() {
        let creds = Credentials::new(vec![
            rule("API_KEY", TOKEN, "sk-live-1", &["api.example.org"]),
            rule(
                "GH",
                TOKEN_2,
                "ghp_x y\tz",
                &["*.github.test", "github.test"],
            ),
        ])
        .unwrap();
        assert!(creds.intercepts("API.example.org."));
        assert!(creds.intercepts("raw.github.test"));
        assert!(creds.intercepts("github.test"));
        assert!(!creds.intercepts("example.org"));
        assert!(!creds.intercepts("evil.test"));
        assert!(Credentials::new(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn invalid_rules_are_refused_without_showing_the_value() {
        let ok = || rule("K", TOKEN, "secret-value", &["a.test"]);
        let cases: Vec<(CredentialRule, &str)> = vec![
            (
                CredentialRule {
                    value: "a\r\nX-Evil: 1".into(),
                    ..ok()
                },
                "control",
            ),
            (
                CredentialRule {
                    value: "a\nb".into(),
                    ..ok()
                },
                "control",
            ),
            (
                CredentialRule {
                    value: "a\0b".into(),
                    ..ok()
                },
                "control",
            ),
            (
                CredentialRule {
                    value: String::new(),
                    ..ok()
                },
                "empty",
            ),
            (
                CredentialRule {
                    value: "x".repeat(MAX_VALUE_LEN + 1),
                    ..ok()
                },
                "longer",
            ),
            (
                CredentialRule {
                    value: TOKEN_2.into(),
                    ..ok()
                },
                "placeholder",
            ),
            (
                CredentialRule {
                    name: "a-b".into(),
                    ..ok()
                },
                "letters",
            ),
            (
                CredentialRule {
                    name: String::new(),
                    ..ok()
                },
                "letters",
            ),
            (
                CredentialRule {
                    placeholder: "pyro-cred-XYZ".into(),
                    ..ok()
                },
                "placeholder is not",
            ),
            (
                CredentialRule {
                    placeholder: TOKEN.to_uppercase(),
                    ..ok()
                },
                "placeholder is not",
            ),
            (
                CredentialRule {
                    hosts: Vec::new(),
                    ..ok()
                },
                "0 hosts",
            ),
        ];
        for (bad, want) in cases {
            let err = Credentials::new(vec![bad]).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(
                !err.contains("secret-value") && !err.contains("X-Evil"),
                "{err}"
            );
        }
        let dup = Credentials::new(vec![
            ok(),
            CredentialRule {
                placeholder: TOKEN_2.into(),
                ..ok()
            },
        ]);
        assert_eq!(dup, Err(CredentialError::Duplicate { name: "K".into() }));
        let many = (0..=MAX_RULES).map(|_| ok()).collect();
        assert!(matches!(
            Credentials::new(many),
            Err(CredentialError::TooMany { .. })
        ));
        assert!(!format!("{:?}", ok()).contains("secret-value"));
    }

    #[test]
    fn placeholders_are_fresh_and_well_formed() {
        let (a, b) = (new_placeholder().unwrap(), new_placeholder().unwrap());
        assert!(is_placeholder(&a) && is_placeholder(&b), "{a} {b}");
        assert_ne!(a, b);
    }
}
