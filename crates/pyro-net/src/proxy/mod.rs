//! The egress proxy: guest HTTP (port 80) and HTTPS (port 443) connections are checked
//! against the allowlist's host patterns by the `Host` header or the TLS server name (SNI),
//! so an allowed address does not open every site behind it (a shared CDN address), and a
//! hard-coded address is only reached under an allowed name.
//!
//! - [`sni`], [`host`]: the parsers, pure and safe on hostile input.
//! - [`inspect`]: the decision, pure: from the first bytes of a connection and its
//!   original destination, [`Inspection::NeedMore`] or a [`Verdict`].
//! - [`server`]: the TCP server. It reads the first bytes (bounded, with a timeout), decides,
//!   and either connects to the original destination and splices, or closes and records a
//!   [`Denial`].
//!
//! **Credential injection** ([`creds`] for the rules and the threat model, [`http1`] for
//! the framing and the rewriting, [`crate::ca`] for the workspace's CA). With an
//! [`server::Injection`] in the [`ProxyConfig`], the proxy also reads names when the
//! allowlist has none, and for each allowed connection:
//!
//! - port 80: every request head on the connection is parsed (HTTP/1.1 framing:
//!   `Content-Length` and chunked bodies), placeholders in header values are replaced by
//!   their values when the request's host is one of their rule's hosts, and a placeholder
//!   anywhere else blocks the connection (a `403` when it is the first request, else a
//!   close) and records a [`DenyReason::Credential`];
//! - port 443 to a server name some rule names: TLS is terminated with a leaf of the
//!   workspace's CA (ALPN `http/1.1` only), the upstream is reached over TLS verified for
//!   the same name (the host's roots and an optional extra file), every request's `Host`
//!   must be that name, and the requests are rewritten as on port 80;
//! - port 443 to any other name: spliced unread, as without credentials.
//!
//! The allowlist's checks (names, blocked ranges) come first, as without credentials.
//! The [`server::FirstBytes`] stage sees the first bytes of spliced connections only.

pub mod creds;
pub mod host;
pub mod http1;
pub mod server;
pub mod sni;

use std::fmt;
use std::net::SocketAddrV4;
use std::time::SystemTime;

use crate::policy::{Allowlist, MAX_HOST_LEN};
use crate::ruleset::BLOCKED;

pub use host::HostError;
pub use http1::LeakPlace;
pub use server::{FirstBytes, Injection, Passthrough, Proxy, ProxyConfig, ProxyError, ProxyStats};
pub use sni::SniError;

/// The port of plain HTTP.
pub const HTTP_PORT: u16 = 80;
/// The port of HTTPS.
pub const HTTPS_PORT: u16 = 443;
/// The most bytes read before a decision: the larger of a request head and a TLS record.
pub const MAX_PEEK: usize = 16 * 1024 + 5;

/// A host name from the wire, checked and in canonical form: 1 to 253 bytes of letters,
/// digits, `-`, `_` and `.`, no empty label, lower case, no final dot. `None` otherwise.
pub(crate) fn normalize_host(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    let ok = !raw.is_empty()
        && raw.len() <= MAX_HOST_LEN
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && raw.split(|&b| b == b'.').all(|label| !label.is_empty());
    ok.then(|| String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// What the proxy expects on a destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x (port 80): the `Host` header.
    Http,
    /// TLS (port 443): the ClientHello's server name.
    Tls,
}

impl Protocol {
    /// The protocol on `port`, if the proxy handles it.
    pub fn for_port(port: u16) -> Option<Protocol> {
        match port {
            HTTP_PORT => Some(Protocol::Http),
            HTTPS_PORT => Some(Protocol::Tls),
            _ => None,
        }
    }
}

/// An allowed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The host name read (`None` when the allowlist has no host patterns and nothing was
    /// read).
    pub host: Option<String>,
    /// For HTTP, the first request's head (host and length).
    pub http: Option<host::RequestHead>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// The host name is not on the allowlist.
    #[error("host `{host}` is not allowed")]
    HostNotAllowed {
        /// The name read.
        host: String,
    },
    /// Port 80 did not carry a request the proxy can read a host from.
    #[error(transparent)]
    Http(#[from] HostError),
    /// Port 443 did not carry a ClientHello the proxy can read a name from.
    #[error(transparent)]
    Tls(#[from] SniError),
    /// The destination port is not one the proxy handles.
    #[error("port {port} is not proxied")]
    Port {
        /// The port.
        port: u16,
    },
    /// The destination is in a range no guest may reach (and no allowed CIDR opens).
    #[error("destination {ip} is blocked ({what})")]
    Blocked {
        /// The address.
        ip: std::net::Ipv4Addr,
        /// The range's description.
        what: &'static str,
    },
    /// The client sent too little before the timeout (or closed).
    #[error("no complete request head or ClientHello in time")]
    Timeout,
    /// The original destination could not be found.
    #[error("the original destination is unknown")]
    NoDestination,
    /// A credential's placeholder where it may not go (the rule's name, never its value).
    #[error("{}: credential `{rule}` in a request to `{host}`", place.reason())]
    Credential {
        /// The rule's name.
        rule: String,
        /// The request's host.
        host: String,
        /// Where the placeholder was.
        place: LeakPlace,
    },
    /// A request on intercepted TLS for another host than the server name.
    #[error("request for `{host}` on a TLS connection to `{server_name}`")]
    HostMismatch {
        /// The request's host.
        host: String,
        /// The TLS server name.
        server_name: String,
    },
    /// Request framing the proxy refuses on a connection it must read whole.
    #[error("HTTP framing refused: {0}")]
    Framing(&'static str),
    /// Intercepted TLS failed: the guest's handshake with the proxy, or the proxy's with
    /// the server (an upstream certificate not valid for the name, say).
    #[error("intercepted TLS to `{host}` failed ({side}): {error}")]
    Intercept {
        /// The server name.
        host: String,
        /// `guest` or `upstream`.
        side: &'static str,
        /// The TLS library's words.
        error: String,
    },
}

impl DenyReason {
    /// The host name the reason is about, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            DenyReason::HostNotAllowed { host }
            | DenyReason::Credential { host, .. }
            | DenyReason::HostMismatch { host, .. }
            | DenyReason::Intercept { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl From<http1::FrameError> for DenyReason {
    fn from(err: http1::FrameError) -> Self {
        use http1::FrameError;
        match err {
            FrameError::Head(err) => DenyReason::Http(err),
            FrameError::Framing(what) => DenyReason::Framing(what),
            FrameError::Leak { rule, host, place } => DenyReason::Credential { rule, host, place },
            FrameError::HostNotAllowed { host } => DenyReason::HostNotAllowed { host },
            FrameError::HostMismatch { host, expected } => DenyReason::HostMismatch {
                host,
                server_name: expected,
            },
        }
    }
}

/// The outcome of looking at a connection's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Connect to the original destination and splice.
    Allow(Allowed),
    /// Close the connection.
    Deny(DenyReason),
}

/// What [`inspect`] says about the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Read more (the buffer is shorter than [`MAX_PEEK`]) and ask again.
    NeedMore,
    /// Decided.
    Decided(Verdict),
}

/// Decides on a guest connection to `dst` whose first bytes are `buf`. Without host
/// patterns every connection to an address the ruleset lets through is allowed at once,
/// unread. The address check repeats the ruleset's: a redirected connection no longer
/// passes the forward chain, so the proxy must not open what the ruleset refuses.
pub fn inspect(dst: SocketAddrV4, buf: &[u8], allowlist: &Allowlist) -> Inspection {
    inspect_for(dst, buf, allowlist, false)
}

/// [`inspect`], reading the name even without host patterns when `read_names` (credential
/// injection needs it). Without host patterns no name is refused, and a ClientHello
/// without a readable name is allowed with none; port 80 must carry HTTP the proxy reads.
pub fn inspect_for(
    dst: SocketAddrV4,
    buf: &[u8],
    allowlist: &Allowlist,
    read_names: bool,
) -> Inspection {
    let ip = *dst.ip();
    if !allowlist.cidrs().iter().any(|c| c.contains(ip))
        && let Some((_, what)) = BLOCKED.iter().find(|(net, _)| net.contains(ip))
    {
        return Inspection::Decided(Verdict::Deny(DenyReason::Blocked { ip, what }));
    }
    let Some(protocol) = Protocol::for_port(dst.port()) else {
        return Inspection::Decided(Verdict::Deny(DenyReason::Port { port: dst.port() }));
    };
    let any_name = allowlist.hosts().is_empty();
    if any_name && !read_names {
        return Inspection::Decided(Verdict::Allow(Allowed {
            host: None,
            http: None,
        }));
    }
    let parsed = match protocol {
        Protocol::Http => match host::parse(buf) {
            Ok(head) => Ok((head.host.clone(), Some(head))),
            Err(HostError::Incomplete) => return Inspection::NeedMore,
            Err(err) => Err(DenyReason::from(err)),
        },
        Protocol::Tls => match sni::parse(buf) {
            Ok(name) => Ok((name, None)),
            Err(SniError::Incomplete) => return Inspection::NeedMore,
            Err(err) => Err(DenyReason::from(err)),
        },
    };
    Inspection::Decided(match parsed {
        Ok((host, http)) if any_name => Verdict::Allow(Allowed {
            host: Some(host),
            http,
        }),
        // TLS without a readable name cannot be intercepted: spliced, as without
        // credentials. Port 80 must be read whole, so unreadable HTTP is refused.
        Err(_) if any_name && protocol == Protocol::Tls => Verdict::Allow(Allowed {
            host: None,
            http: None,
        }),
        Ok((host, _)) if !allowlist.allows_host(&host) => {
            Verdict::Deny(DenyReason::HostNotAllowed { host })
        }
        Ok((host, http)) => Verdict::Allow(Allowed {
            host: Some(host),
            http,
        }),
        Err(reason) => Verdict::Deny(reason),
    })
}

/// Most denials remembered; older ones are forgotten first.
pub const MAX_DENIALS: usize = 256;

/// A connection the proxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The host name read, if one was.
    pub host: Option<String>,
    /// The original destination.
    pub destination: Option<SocketAddrV4>,
    /// Why.
    pub reason: DenyReason,
    /// When.
    pub at: SystemTime,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.destination {
            Some(dst) => write!(f, "{dst}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

#[cfg(test)]
mod tests;
