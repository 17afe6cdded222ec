//! The `Host` header of an HTTP/1.x request head, read from the first bytes a client sends.
//!
//! Safe on hostile input: at most [`MAX_HEAD`] bytes are looked at, and anything a server
//! might read differently from us is refused rather than guessed at: a request target that
//! is not origin-form (`GET http://other/` would let a server ignore `Host`), `CONNECT`,
//! folded header lines, whitespace before a colon, bare CR or LF, a second `Host`.

use super::normalize_host;

/// The largest request head read (request line and headers, with the blank line).
pub const MAX_HEAD: usize = 16 * 1024;

/// Why no host could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The head has not ended yet: read more and ask again.
    #[error("the request head is incomplete")]
    Incomplete,
    /// No blank line within [`MAX_HEAD`] bytes.
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    TooLong,
    /// The bytes are not an HTTP/1.x request (or one we refuse to interpret).
    #[error("not an HTTP/1.x request: {0}")]
    Malformed(&'static str),
    /// The request has no `Host` header.
    #[error("the request has no Host header")]
    NoHost,
    /// The `Host` header is not a valid host name (with an optional port).
    #[error("the Host header is not a valid host name")]
    BadHost,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The host of the `Host` header: lower case, port and final dot removed.
    pub host: String,
    /// The length of the head in bytes, blank line included: the body (or the next
    /// request) starts there.
    pub len: usize,
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The end of the head (index after `\r\n\r\n`) in the first [`MAX_HEAD`] bytes of `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Parses the request head at the start of `buf`. [`HostError::Incomplete`] asks for more
/// bytes; every other error is final.
pub fn parse(buf: &[u8]) -> Result<RequestHead, HostError> {
    // Refuse early what cannot become a request line, without waiting for the rest.
    if let Some(bad) = buf.iter().take(32).position(|&b| !is_token(b)) {
        if bad == 0 {
            return Err(HostError::Malformed("no method"));
        }
        if buf[bad] != b' ' {
            return Err(HostError::Malformed("bad method"));
        }
    }
    let Some(len) = head_end(buf) else {
        return Err(if buf.len() >= MAX_HEAD {
            HostError::TooLong
        } else {
            HostError::Incomplete
        });
    };
    // Up to and with the last header line's CR: every line then ends in `\r`.
    let head = &buf[..len - 3];
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    check_request_line(strip_cr(request_line)?)?;
    let mut host = None;
    for line in lines {
        let line = strip_cr(line)?;
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(HostError::Malformed("folded header line"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HostError::Malformed("header line without a colon"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(HostError::Malformed("bad header name"));
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HostError::Malformed("two Host headers"));
            }
            host = Some(host_of(value.trim_ascii())?);
        }
    }
    let host = host.ok_or(HostError::NoHost)?;
    Ok(RequestHead { host, len })
}

/// A line without its `\r`; any other CR is refused.
fn strip_cr(line: &[u8]) -> Result<&[u8], HostError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(HostError::Malformed("bare LF"))?;
    if line.contains(&b'\r') {
        return Err(HostError::Malformed("bare CR"));
    }
    Ok(line)
}

fn check_request_line(line: &[u8]) -> Result<(), HostError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HostError::Malformed("request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(HostError::Malformed("bad method"));
    }
    if method == b"CONNECT" {
        return Err(HostError::Malformed("CONNECT"));
    }
    let origin_form = target.first() == Some(&b'/');
    let asterisk = method == b"OPTIONS" && target == b"*";
    if !origin_form && !asterisk {
        return Err(HostError::Malformed("request target is not origin-form"));
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(HostError::Malformed("bad request target"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(HostError::Malformed("not HTTP/1.0 or HTTP/1.1"));
    }
    Ok(())
}

/// The host of a `Host` value, `name` or `name:port`.
fn host_of(value: &[u8]) -> Result<String, HostError> {
    let name = match value.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            let port = &value[colon + 1..];
            if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
                return Err(HostError::BadHost);
            }
            &value[..colon]
        }
        None => value,
    };
    normalize_host(name).ok_or(HostError::BadHost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CURL: &[u8] = b"GET /v1/models?x=1 HTTP/1.1\r\nHost: Allowed.Test:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

    #[test]
    fn reads_the_host_and_strips_the_port() {
        let head = parse(CURL).unwrap();
        assert_eq!(head.host, "allowed.test");
        assert_eq!(head.len, CURL.len());
        let mut with_body = CURL.to_vec();
        with_body.extend_from_slice(b"body bytes");
        assert_eq!(parse(&with_body).unwrap().len, CURL.len());
        let lower = b"POST /x HTTP/1.0\r\ncontent-length: 0\r\nhOsT:\tallowed.test.  \r\n\r\n";
        assert_eq!(parse(lower).unwrap().host, "allowed.test");
        let options = b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n";
        assert_eq!(parse(options).unwrap().host, "a.test");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for cut in 0..CURL.len() {
            assert_eq!(parse(&CURL[..cut]), Err(HostError::Incomplete), "cut {cut}");
        }
    }

    #[test]
    fn a_head_without_an_end_is_too_long() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&long), Err(HostError::TooLong));
        long.truncate(MAX_HEAD - 1);
        assert_eq!(parse(&long), Err(HostError::Incomplete));
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let cases: &[(&[u8], HostError)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", HostError::NoHost),
            (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", HostError::NoHost),
            (
                b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                HostError::Malformed("two Host headers"),
            ),
            (
                b"GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                HostError::Malformed("request target is not origin-form"),
            ),
            (
                b"CONNECT evil.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n",
                HostError::Malformed("CONNECT"),
            ),
            (
                b"GET / HTTP/1.1\r\nX: y\r\n Host: a.test\r\n\r\n",
                HostError::Malformed("folded header line"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
                HostError::Malformed("bad header name"),
            ),
            (
                b"GET / HTTP/1.1\nHost: a.test\r\n\r\n",
                HostError::Malformed("bare LF"),
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a.test\r\n\r\n",
                HostError::Malformed("not HTTP/1.0 or HTTP/1.1"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a.test:\r\n\r\n",
                HostError::BadHost,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a.test:http\r\n\r\n",
                HostError::BadHost,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
                HostError::BadHost,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a b.test\r\n\r\n",
                HostError::BadHost,
            ),
            (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", HostError::BadHost),
            (
                b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
                HostError::BadHost,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn non_http_is_refused_at_once() {
        assert_eq!(parse(&[22, 3, 1]), Err(HostError::Malformed("no method")));
        assert_eq!(parse(b"GET\x00"), Err(HostError::Malformed("bad method")));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_host_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut req = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            req.extend_from_slice(&value);
            req.extend_from_slice(b"\r\n\r\n");
            if let Ok(head) = parse(&req) {
                prop_assert!(head.host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
            }
        }
    }
}
