use super::*;
use crate::proxy::creds::tests::{TOKEN, TOKEN_2, rule};

fn creds() -> Credentials {
    Credentials::new(vec![
        rule("API", TOKEN, "sk-real", &["api.test"]),
        rule("GH", TOKEN_2, "ghp-real", &["*.gh.test"]),
    ])
    .unwrap()
}

fn open() -> Allowlist {
    Allowlist::default()
}

/// Feeds `input` in pieces of `step` bytes; what went upstream, and the totals.
fn run(input: &[u8], step: usize, ctx: &Context<'_>) -> Result<(Vec<u8>, Fed), FrameError> {
    let mut framer = Framer::new();
    let mut out = Vec::new();
    let mut total = Fed::default();
    for piece in input.chunks(step) {
        let fed = framer.feed(piece, ctx, &mut out)?;
        total.requests += fed.requests;
        total.injected_requests += fed.injected_requests;
    }
    Ok((out, total))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn placeholders_in_header_values_are_replaced_for_the_rules_hosts() {
    let c = creds();
    let head = format!(
        "GET /v1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {TOKEN}\r\nX-Both: {TOKEN}:{TOKEN}\r\n\r\n"
    );
    let out = rewrite_head(head.as_bytes(), "api.test", &c).unwrap();
    assert_eq!(
        text(&out.head),
        "GET /v1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer sk-real\r\nX-Both: sk-real:sk-real\r\n\r\n"
    );
    assert_eq!(out.injected, 3);
    // A wildcard rule, in a custom header.
    let head = format!("POST / HTTP/1.1\r\nHost: raw.gh.test\r\nX-Token: {TOKEN_2}\r\n\r\n");
    let out = rewrite_head(head.as_bytes(), "raw.gh.test", &c).unwrap();
    assert!(text(&out.head).contains("X-Token: ghp-real\r\n"));
    // Nothing to replace: unchanged.
    let plain = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
    let out = rewrite_head(plain, "other.test", &c).unwrap();
    assert_eq!((out.head.as_slice(), out.injected), (&plain[..], 0));
}

#[test]
fn placeholders_elsewhere_are_leaks() {
    let c = creds();
    let leak = |head: String, host: &str| match rewrite_head(head.as_bytes(), host, &c) {
        Err(FrameError::Leak { rule, place, .. }) => (rule, place),
        other => panic!("{other:?}"),
    };
    let to_other =
        format!("GET / HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    assert_eq!(
        leak(to_other, "evil.test"),
        ("API".into(), LeakPlace::OtherHost)
    );
    // The other rule's host does not count.
    let crossed = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX: {TOKEN_2}\r\n\r\n");
    assert_eq!(
        leak(crossed, "api.test"),
        ("GH".into(), LeakPlace::OtherHost)
    );
    let query = format!("GET /?key={TOKEN} HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(leak(query, "api.test"), ("API".into(), LeakPlace::Target));
    let name = format!("GET / HTTP/1.1\r\nHost: api.test\r\n{TOKEN}: 1\r\n\r\n");
    assert_eq!(
        leak(name, "api.test"),
        ("API".into(), LeakPlace::HeaderName)
    );
    let host = format!("GET / HTTP/1.1\r\nHost: {TOKEN_2}.gh.test\r\n\r\n");
    assert_eq!(
        leak(host, &format!("{TOKEN_2}.gh.test")),
        ("GH".into(), LeakPlace::Host)
    );
    // The error names the rule, never the value.
    let err = FrameError::Leak {
        rule: "API".into(),
        host: "evil.test".into(),
        place: LeakPlace::OtherHost,
    };
    assert!(!err.to_string().contains("sk-real"));
}

#[test]
fn a_keep_alive_connection_is_framed_request_by_request() {
    let c = creds();
    let allow = open();
    let ctx = Context {
        credentials: &c,
        allowlist: &allow,
        server_name: None,
    };
    let first = "POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 11\r\n\r\nhello world";
    // The body carries the placeholder: bodies pass unchanged.
    let second = format!(
        "POST /b HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nab\r\nc\r\n{:x}\r\n{TOKEN}\r\n0\r\nTrailer-X: t\r\n\r\n",
        TOKEN.len()
    );
    // Looks like a head inside a body: must not be parsed as one.
    let third = "PUT /c HTTP/1.1\r\nHost: api.test\r\nContent-Length: 35\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n";
    let input = format!("{first}{second}{third}");
    let want = input.replace(&format!("Bearer {TOKEN}"), "Bearer sk-real");
    for step in [1, 2, 7, 64, input.len()] {
        let (out, fed) =
            run(input.as_bytes(), step, &ctx).unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_eq!(text(&out), want, "step {step}");
        assert_eq!(
            fed,
            Fed {
                requests: 3,
                injected_requests: 1
            },
            "step {step}"
        );
    }
    // The same framer after a complete stream is between requests.
    let mut framer = Framer::new();
    let mut out = Vec::new();
    framer.feed(input.as_bytes(), &ctx, &mut out).unwrap();
    assert!(framer.between_requests());
}

#[test]
fn a_later_request_is_checked_too() {
    let c = creds();
    let allow = open();
    let ctx = Context {
        credentials: &c,
        allowlist: &allow,
        server_name: None,
    };
    let input = format!(
        "GET / HTTP/1.1\r\nHost: api.test\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\nAuthorization: {TOKEN}\r\n\r\n"
    );
    assert!(matches!(
        run(input.as_bytes(), 5, &ctx),
        Err(FrameError::Leak {
            place: LeakPlace::OtherHost,
            ..
        })
    ));
    // On intercepted TLS, every request is for the server name.
    let tls = Context {
        server_name: Some("api.test"),
        ..ctx
    };
    let input =
        "GET / HTTP/1.1\r\nHost: api.test\r\n\r\nGET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
    assert_eq!(
        run(input.as_bytes(), 9, &tls),
        Err(FrameError::HostMismatch {
            host: "other.test".into(),
            expected: "api.test".into()
        })
    );
    // With host patterns, every request's host is checked against them.
    let narrow = Allowlist::parse(["api.test"], [] as [&str; 0]).unwrap();
    let ctx = Context {
        allowlist: &narrow,
        ..ctx
    };
    assert_eq!(
        run(input.as_bytes(), 9, &ctx),
        Err(FrameError::HostNotAllowed {
            host: "other.test".into()
        })
    );
    // Trailers may not carry a placeholder.
    let input = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {TOKEN}\r\n\r\n"
    );
    assert!(matches!(
        run(input.as_bytes(), 3, &ctx),
        Err(FrameError::Leak {
            place: LeakPlace::Trailer,
            ..
        })
    ));
}

#[test]
fn ambiguous_or_oversized_framing_is_refused() {
    let c = creds();
    let allow = open();
    let ctx = Context {
        credentials: &c,
        allowlist: &allow,
        server_name: None,
    };
    let refused = |input: &[u8]| run(input, 4096, &ctx).unwrap_err();
    for head in [
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
    ] {
        assert!(
            matches!(refused(head.as_bytes()), FrameError::Framing(_)),
            "{head}"
        );
    }
    let mut long = b"GET / HTTP/1.1\r\nHost: a.test\r\nX: ".to_vec();
    long.resize(MAX_HEAD + 10, b'a');
    assert_eq!(
        run(&long, 1000, &ctx),
        Err(FrameError::Head(HostError::TooLong))
    );
    let mut chunk =
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    chunk.resize(chunk.len() + MAX_CHUNK_LINE + 1, b'x');
    assert!(matches!(
        run(&chunk, 100, &ctx),
        Err(FrameError::Framing(_))
    ));
    // A second head that is not HTTP at all.
    let junk = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n\x16\x03\x01";
    assert!(matches!(run(junk, 4096, &ctx), Err(FrameError::Head(_))));
}

#[test]
fn after_an_upgrade_the_rest_passes_unread() {
    let c = creds();
    let allow = open();
    let ctx = Context {
        credentials: &c,
        allowlist: &allow,
        server_name: None,
    };
    let input = format!(
        "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x01\x05{TOKEN}"
    );
    let mut framer = Framer::new();
    let mut out = Vec::new();
    framer.feed(input.as_bytes(), &ctx, &mut out).unwrap();
    assert!(framer.is_opaque());
    assert_eq!(out, input.as_bytes());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        step in 1usize..64,
    ) {
        let c = creds();
        let allow = open();
        let ctx = Context { credentials: &c, allowlist: &allow, server_name: None };
        let mut prefixed =
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = run(&bytes, step, &ctx);
        let _ = run(&prefixed, step, &ctx);
    }
}
