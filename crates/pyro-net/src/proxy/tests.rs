use std::net::Ipv4Addr;

use super::sni::tests::client_hello;
use super::*;

fn list(hosts: &[&str], cidrs: &[&str]) -> Allowlist {
    Allowlist::parse(hosts, cidrs).unwrap()
}

const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

fn http(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[test]
fn without_host_patterns_everything_public_is_allowed_unread() {
    let open = Allowlist::default();
    for port in [HTTP_PORT, HTTPS_PORT] {
        assert_eq!(
            inspect(SocketAddrV4::new(PUBLIC, port), b"", &open),
            Inspection::Decided(Verdict::Allow(Allowed {
                host: None,
                http: None
            }))
        );
    }
    let cidrs_only = list(&[], &["198.51.100.0/24"]);
    assert!(matches!(
        inspect(SocketAddrV4::new(PUBLIC, 80), b"", &cidrs_only),
        Inspection::Decided(Verdict::Allow(_))
    ));
}

#[test]
fn http_is_decided_by_the_host_header() {
    let allow = list(&["allowed.test", "*.cdn.test"], &[]);
    let dst = SocketAddrV4::new(PUBLIC, HTTP_PORT);
    let Inspection::Decided(Verdict::Allow(allowed)) = inspect(dst, &http("Allowed.test"), &allow)
    else {
        panic!()
    };
    assert_eq!(allowed.host.as_deref(), Some("allowed.test"));
    assert_eq!(
        allowed.http.map(|h| h.len),
        Some(http("Allowed.test").len())
    );
    assert!(matches!(
        inspect(dst, &http("a.cdn.test:80"), &allow),
        Inspection::Decided(Verdict::Allow(_))
    ));
    assert_eq!(
        inspect(dst, &http("denied.test"), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::HostNotAllowed {
            host: "denied.test".to_owned()
        }))
    );
    assert_eq!(inspect(dst, b"GET / HT", &allow), Inspection::NeedMore);
    assert_eq!(
        inspect(dst, &client_hello(Some("allowed.test")), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::Http(HostError::Malformed(
            "no method"
        ))))
    );
}

#[test]
fn tls_is_decided_by_the_server_name() {
    let allow = list(&["allowed.test"], &[]);
    let dst = SocketAddrV4::new(PUBLIC, HTTPS_PORT);
    let Inspection::Decided(Verdict::Allow(allowed)) =
        inspect(dst, &client_hello(Some("allowed.test")), &allow)
    else {
        panic!()
    };
    assert_eq!(allowed.host.as_deref(), Some("allowed.test"));
    assert_eq!(allowed.http, None);
    assert_eq!(
        inspect(dst, &client_hello(Some("denied.test")), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::HostNotAllowed {
            host: "denied.test".to_owned()
        }))
    );
    assert_eq!(
        inspect(dst, &client_hello(None), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::Tls(SniError::NoSni)))
    );
    assert_eq!(
        inspect(dst, &http("allowed.test"), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::Tls(SniError::NotTls)))
    );
    assert_eq!(inspect(dst, &[22, 3], &allow), Inspection::NeedMore);
}

#[test]
fn blocked_destinations_and_other_ports_are_refused() {
    let allow = list(&["allowed.test"], &["10.9.9.0/24"]);
    let metadata = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80);
    assert!(matches!(
        inspect(metadata, &http("allowed.test"), &allow),
        Inspection::Decided(Verdict::Deny(DenyReason::Blocked { .. }))
    ));
    // An allowed CIDR opens a private range, as in the ruleset.
    assert!(matches!(
        inspect(
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80),
            &http("allowed.test"),
            &allow
        ),
        Inspection::Decided(Verdict::Allow(_))
    ));
    assert_eq!(
        inspect(SocketAddrV4::new(PUBLIC, 8080), b"", &Allowlist::default()),
        Inspection::Decided(Verdict::Deny(DenyReason::Port { port: 8080 }))
    );
}

#[test]
fn host_names_are_normalized_or_refused() {
    assert_eq!(normalize_host(b"A.Test."), Some("a.test".to_owned()));
    for bad in [
        &b""[..],
        b".",
        b"a..b",
        b".a",
        b"a b",
        b"a\0b",
        &[b'a'; 254],
    ] {
        assert_eq!(normalize_host(bad), None, "{bad:?}");
    }
}

#[test]
fn with_credentials_names_are_read_without_host_patterns() {
    let open = Allowlist::default();
    let http_dst = SocketAddrV4::new(PUBLIC, HTTP_PORT);
    let tls_dst = SocketAddrV4::new(PUBLIC, HTTPS_PORT);
    assert_eq!(
        inspect_for(http_dst, b"", &open, true),
        Inspection::NeedMore
    );
    let Inspection::Decided(Verdict::Allow(allowed)) =
        inspect_for(http_dst, &http("Any.test"), &open, true)
    else {
        panic!("any name is allowed");
    };
    assert_eq!(allowed.host.as_deref(), Some("any.test"));
    assert!(allowed.http.is_some());
    // Port 80 must be HTTP the proxy reads; TLS without a name is spliced unread.
    assert!(matches!(
        inspect_for(http_dst, b"\x16\x03\x01", &open, true),
        Inspection::Decided(Verdict::Deny(DenyReason::Http(_)))
    ));
    assert_eq!(
        inspect_for(tls_dst, b"GET / HTTP/1.1\r\n\r\n", &open, true),
        Inspection::Decided(Verdict::Allow(Allowed {
            host: None,
            http: None
        }))
    );
    assert!(matches!(
        inspect_for(tls_dst, &client_hello(Some("api.test")), &open, true),
        Inspection::Decided(Verdict::Allow(Allowed { host: Some(h), .. })) if h == "api.test"
    ));
}
