//! HTTP/1.1 request framing and credential injection, for connections on which every
//! request must be seen (port 80 when the sandbox has credentials, and intercepted TLS).
//!
//! A [`Framer`] is fed the client's bytes as they come and writes what goes upstream: each
//! request head is parsed whole (at most [`MAX_HEAD`], with [`super::host::parse`]'s
//! refusals), checked and rewritten ([`rewrite_head`]); its body passes unchanged, framed by
//! `Content-Length` or chunked `Transfer-Encoding` (chunk-size lines and trailers bounded),
//! so the next head is found. Anything ambiguous is refused rather than guessed at (both
//! framings, several differing lengths, another transfer coding): a server that framed the
//! bytes differently would read a request the proxy never checked. After a request with
//! `Upgrade` the rest of the connection passes unread (a WebSocket, say): no value is ever
//! injected there.

use super::creds::Credentials;
use super::host::{self, HostError, MAX_HEAD};
use crate::policy::Allowlist;

/// Longest chunk-size line (with extensions).
pub const MAX_CHUNK_LINE: usize = 1024;
/// Longest head after injection.
pub const MAX_REWRITTEN_HEAD: usize = 64 * 1024;

/// Where a placeholder was found that it may not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakPlace {
    /// In a request to a host the rule does not name.
    OtherHost,
    /// In the request target (a query string, say).
    Target,
    /// In a header name.
    HeaderName,
    /// In the `Host` header.
    Host,
    /// In a chunked body's trailers.
    Trailer,
}

impl LeakPlace {
    /// The denial's reason word (`credential_to_other_host`, …).
    pub fn reason(self) -> &'static str {
        match self {
            LeakPlace::OtherHost => "credential_to_other_host",
            LeakPlace::Target => "credential_in_request_target",
            LeakPlace::HeaderName => "credential_in_header_name",
            LeakPlace::Host => "credential_in_host",
            LeakPlace::Trailer => "credential_in_trailer",
        }
    }
}

/// Why a request stream was cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A head the proxy cannot read, or will not.
    #[error(transparent)]
    Head(#[from] HostError),
    /// Body framing the proxy refuses.
    #[error("HTTP framing refused: {0}")]
    Framing(&'static str),
    /// A placeholder where it may not be.
    #[error("credential `{rule}` sent where it may not go ({place:?}, to `{host}`)")]
    Leak {
        /// The rule's name.
        rule: String,
        /// The request's host.
        host: String,
        /// Where.
        place: LeakPlace,
    },
    /// A later request's host is not allowed.
    #[error("host `{host}` is not allowed")]
    HostNotAllowed {
        /// The host.
        host: String,
    },
    /// On intercepted TLS, a request for another host than the verified server name.
    #[error("request for `{host}` on a TLS connection to `{expected}`")]
    HostMismatch {
        /// The request's host.
        host: String,
        /// The server name.
        expected: String,
    },
}

/// What a connection's requests are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The rules.
    pub credentials: &'a Credentials,
    /// The allowlist (every request's host is checked when it has host patterns).
    pub allowlist: &'a Allowlist,
    /// On intercepted TLS, the server name every request's `Host` must equal.
    pub server_name: Option<&'a str>,
}

/// A rewritten head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The bytes to send.
    pub head: Vec<u8>,
    /// Placeholders replaced.
    pub injected: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8], count: &mut usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(at) = find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
        *count += 1;
    }
    out.extend_from_slice(rest);
    out
}

/// Checks and rewrites a complete request head (as [`host::parse`] accepted it) for
/// `host`: every placeholder in a header value of a rule that names `host` is replaced by
/// the value; a placeholder anywhere else is a [`FrameError::Leak`].
pub fn rewrite_head(
    head: &[u8],
    host: &str,
    credentials: &Credentials,
) -> Result<Rewritten, FrameError> {
    let leak = |rule: &str, place| FrameError::Leak {
        rule: rule.to_owned(),
        host: host.to_owned(),
        place,
    };
    let mut rules = credentials
        .rules()
        .iter()
        .filter(|r| find(head, r.placeholder.as_bytes()).is_some())
        .peekable();
    if rules.peek().is_none() {
        return Ok(Rewritten {
            head: head.to_vec(),
            injected: 0,
        });
    }
    let rules: Vec<_> = rules.collect();
    let mut out = Vec::with_capacity(head.len() + 256);
    let mut injected = 0;
    // Lines end in "\r\n"; the last one is empty.
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    for rule in &rules {
        if find(request_line, rule.placeholder.as_bytes()).is_some() {
            return Err(leak(&rule.name, LeakPlace::Target));
        }
    }
    out.extend_from_slice(request_line);
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let (name, value) = line.split_at(colon);
        let mut value = value.to_vec();
        for rule in &rules {
            let placeholder = rule.placeholder.as_bytes();
            if find(name, placeholder).is_some() {
                return Err(leak(&rule.name, LeakPlace::HeaderName));
            }
            if find(&value, placeholder).is_none() {
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                return Err(leak(&rule.name, LeakPlace::Host));
            }
            if !rule.applies_to(host) {
                return Err(leak(&rule.name, LeakPlace::OtherHost));
            }
            value = replace_all(&value, placeholder, rule.value.as_bytes(), &mut injected);
        }
        out.extend_from_slice(name);
        out.extend_from_slice(&value);
        if out.len() > MAX_REWRITTEN_HEAD {
            return Err(FrameError::Framing("the head is too long once injected"));
        }
    }
    Ok(Rewritten {
        head: out,
        injected,
    })
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The framing of a head, and whether it asks for an upgrade.
fn framing(head: &[u8]) -> Result<(Body, bool), FrameError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(FrameError::Framing("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(FrameError::Framing("two different Content-Lengths"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FrameError::Framing(
                    "a transfer coding other than one `chunked`",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let body = match (chunked, length) {
        (true, Some(_)) => {
            return Err(FrameError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (true, None) => Body::Chunked,
        (false, Some(0) | None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    Ok((body, upgrade))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Opaque,
}

/// What one [`Framer::feed`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fed {
    /// Request heads completed.
    pub requests: usize,
    /// Requests in which a value was injected.
    pub injected_requests: usize,
}

/// The request side of one HTTP/1.1 connection (see the module docs).
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// A head, chunk-size line, chunk end or trailer section being gathered (bounded).
    pending: Vec<u8>,
    /// After the current request, pass the rest unread.
    upgrade: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new()
    }
}

impl Framer {
    /// At the start of a connection.
    pub fn new() -> Framer {
        Framer {
            state: State::Head,
            pending: Vec::new(),
            upgrade: false,
        }
    }

    /// Whether the connection was upgraded and now passes unread.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Whether the framer sits between requests (nothing gathered, no body pending).
    pub fn between_requests(&self) -> bool {
        self.state == State::Head && self.pending.is_empty()
    }

    fn end_of_message(&mut self) {
        self.state = if self.upgrade {
            State::Opaque
        } else {
            State::Head
        };
    }

    /// Takes `input` (the next bytes from the client) and appends what goes upstream to
    /// `out`. On an error the connection must be closed; what `out` got in this call
    /// should not be sent.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        ctx: &Context<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Fed, FrameError> {
        let mut fed = Fed::default();
        while !input.is_empty() {
            match self.state {
                State::Opaque => {
                    out.extend_from_slice(input);
                    input = &[];
                }
                State::Length(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    if left == 0 {
                        self.end_of_message();
                    } else {
                        self.state = State::Length(left);
                    }
                }
                State::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Head => {
                    let room = MAX_HEAD - self.pending.len();
                    let take = room.min(input.len());
                    let before = self.pending.len();
                    self.pending.extend_from_slice(&input[..take]);
                    match host::parse(&self.pending) {
                        Err(HostError::Incomplete) => {
                            input = &input[take..];
                        }
                        Err(err) => return Err(err.into()),
                        Ok(head) => {
                            input = &input[head.len - before..];
                            self.pending.truncate(head.len);
                            let head_bytes = std::mem::take(&mut self.pending);
                            let injected = self.head(&head_bytes, &head.host, ctx, out)?;
                            fed.requests += 1;
                            if injected {
                                fed.injected_requests += 1;
                            }
                        }
                    }
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    // Gather a line (or, for trailers, the section up to its blank line).
                    let limit = if self.state == State::Trailers {
                        MAX_HEAD
                    } else {
                        MAX_CHUNK_LINE
                    };
                    let end = self.line_end(input, self.state == State::Trailers);
                    let take = end.unwrap_or(input.len());
                    if self.pending.len() + take > limit {
                        return Err(FrameError::Framing("a chunk line or trailer is too long"));
                    }
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if end.is_some() {
                        let line = std::mem::take(&mut self.pending);
                        self.chunk_line(&line, ctx)?;
                        out.extend_from_slice(&line);
                    }
                }
            }
        }
        Ok(fed)
    }

    /// In `input`, the index after the end of the current chunk line (`\n`), or for
    /// trailers after the blank line ending the section, counting what is gathered.
    fn line_end(&self, input: &[u8], section: bool) -> Option<usize> {
        if !section {
            return input.iter().position(|&b| b == b'\n').map(|i| i + 1);
        }
        // The section ends at "\r\n" alone on a line: either the first line, or "\r\n\r\n".
        let mut joined = self.pending.clone();
        for (i, &b) in input.iter().enumerate() {
            joined.push(b);
            if joined == b"\r\n" || joined.ends_with(b"\r\n\r\n") {
                return Some(i + 1);
            }
        }
        None
    }

    fn chunk_line(&mut self, line: &[u8], ctx: &Context<'_>) -> Result<(), FrameError> {
        let bare = line
            .strip_suffix(b"\r\n")
            .ok_or(FrameError::Framing("a chunk line without CRLF"))?;
        match self.state {
            State::ChunkEnd => {
                if !bare.is_empty() {
                    return Err(FrameError::Framing("chunk data longer than its size"));
                }
                self.state = State::ChunkSize;
            }
            State::ChunkSize => {
                let digits = bare
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(FrameError::Framing("bad chunk size"));
                }
                let size = digits.iter().fold(0u64, |acc, &b| {
                    (acc << 4) | u64::from(char::from(b).to_digit(16).unwrap_or(0))
                });
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
            }
            State::Trailers => {
                if let Some(rule) = ctx
                    .credentials
                    .rules()
                    .iter()
                    .find(|r| find(line, r.placeholder.as_bytes()).is_some())
                {
                    return Err(FrameError::Leak {
                        rule: rule.name.clone(),
                        host: String::new(),
                        place: LeakPlace::Trailer,
                    });
                }
                self.end_of_message();
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks and rewrites one head, writes it, and sets the body's state; whether a value
    /// was injected.
    fn head(
        &mut self,
        head: &[u8],
        host: &str,
        ctx: &Context<'_>,
        out: &mut Vec<u8>,
    ) -> Result<bool, FrameError> {
        if let Some(expected) = ctx.server_name
            && host != expected
        {
            return Err(FrameError::HostMismatch {
                host: host.to_owned(),
                expected: expected.to_owned(),
            });
        }
        if !ctx.allowlist.hosts().is_empty() && !ctx.allowlist.allows_host(host) {
            return Err(FrameError::HostNotAllowed {
                host: host.to_owned(),
            });
        }
        let (body, upgrade) = framing(head)?;
        let rewritten = rewrite_head(head, host, ctx.credentials)?;
        out.extend_from_slice(&rewritten.head);
        self.upgrade = upgrade;
        match body {
            Body::None => self.end_of_message(),
            Body::Length(n) => self.state = State::Length(n),
            Body::Chunked => self.state = State::ChunkSize,
        }
        Ok(rewritten.injected > 0)
    }
}

#[cfg(test)]
mod tests;
