use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::server::{MAX_ALLOW_TTL, MIN_ALLOW_TTL, allowed_addresses};
use super::wire::*;
use super::*;

fn question(name: &str, qtype: u16) -> Question {
    Question {
        name: Name::from_dotted(name).unwrap(),
        qtype,
        qclass: CLASS_IN,
    }
}

/// A hand-made response to `a.example.org` A: a CNAME to `b.example.org` (compressed), an A
/// for it, an A for an unrelated name, and an opaque TXT.
fn chained_response() -> Vec<u8> {
    let mut m = vec![
        0x12, 0x34, 0x81, 0x80, 0, 1, 0, 4, 0, 0, 0, 0, // header: 1 question, 4 answers
        1, b'a', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'o', b'r', b'g', 0, // 12
        0, 1, 0, 1, // A IN
    ];
    // a.example.org CNAME b.example.org (b + pointer to "example.org" at 14)
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'b', 0xc0, 14]);
    let b_at = m.len() - 4;
    // b.example.org A 198.51.100.10 TTL 300
    m.extend_from_slice(&[
        0xc0, b_at as u8, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 198, 51, 100, 10,
    ]);
    // c.org A 198.51.100.11 (not in the chain)
    m.extend_from_slice(&[
        1, b'c', 3, b'o', b'r', b'g', 0, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4,
    ]);
    m.extend_from_slice(&[198, 51, 100, 11]);
    // a.example.org TXT "hi"
    m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 9, 0, 3, 2, b'h', b'i']);
    m
}

#[test]
fn a_query_round_trips() {
    let q = question("Allowed.Test", TYPE_A);
    let bytes = write_query(7, &q);
    let parsed = parse_query(&bytes).unwrap();
    assert_eq!(parsed.header.id, 7);
    assert!(parsed.header.recursion_desired() && !parsed.header.is_response());
    assert_eq!(parsed.question, q);
    assert_eq!(parsed.question.name.to_dotted(), "allowed.test");
}

#[test]
fn responses_with_compression_cnames_and_opaque_records() {
    let bytes = chained_response();
    let r = parse_response(&bytes).unwrap();
    assert_eq!(r.header.id, 0x1234);
    assert_eq!(r.answers.len(), 4);
    assert_eq!(r.answers[0].name.to_dotted(), "a.example.org");
    assert_eq!(
        r.answers[0].data,
        RData::Cname(Name::from_dotted("b.example.org").unwrap())
    );
    assert_eq!(r.answers[1].name.to_dotted(), "b.example.org");
    assert_eq!(r.answers[1].data, RData::A(Ipv4Addr::new(198, 51, 100, 10)));
    let RData::Opaque { offset, len } = r.answers[3].data else {
        panic!("{:?}", r.answers[3])
    };
    assert_eq!(&bytes[offset..offset + usize::from(len)], b"\x02hi");

    let query = parse_query(&write_query(0x1234, &question("a.example.org", TYPE_A))).unwrap();
    assert_eq!(
        allowed_addresses(&query, &r),
        vec![(Ipv4Addr::new(198, 51, 100, 10), Duration::from_secs(300))],
        "the chain's A only, not the unrelated name's"
    );
}

#[test]
fn ttls_are_clamped() {
    let q = question("a.test", TYPE_A);
    let query = parse_query(&write_query(1, &q)).unwrap();
    let addr = Ipv4Addr::new(198, 51, 100, 10);
    let bytes = write_a_response(1, &q, &[(addr, 0), (addr, u32::MAX)]);
    let r = parse_response(&bytes).unwrap();
    assert_eq!(
        allowed_addresses(&query, &r),
        vec![(addr, MIN_ALLOW_TTL), (addr, MAX_ALLOW_TTL)]
    );
}

#[test]
fn error_responses_echo_id_rd_and_question() {
    let q = question("denied.test", TYPE_A);
    let query = parse_query(&write_query(99, &q)).unwrap();
    let bytes = write_error(&query.header, Some(&q), Rcode::NxDomain);
    let r = parse_response(&bytes).unwrap();
    assert_eq!(r.header.id, 99);
    assert!(r.header.is_response() && r.header.recursion_desired());
    assert_eq!(r.header.rcode(), 3);
    assert_eq!(r.question, Some(q));
    let bare = write_error(&query.header, None, Rcode::FormErr);
    assert_eq!(parse_response(&bare).unwrap().header.rcode(), 1);
    assert_eq!(bare.len(), HEADER_LEN);
}

#[test]
fn malformed_messages_are_refused() {
    let good = write_query(1, &question("a.test", TYPE_A));
    // Every truncation of a good query.
    for n in 0..good.len() {
        assert!(parse_query(&good[..n]).is_err(), "cut at {n}");
    }
    let with = |body: &[u8]| {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(body);
        m
    };
    // A pointer to itself, and forwards.
    assert!(matches!(
        parse_query(&with(&[0xc0, 12, 0, 1, 0, 1])),
        Err(WireError::BadPointer { at: 12 })
    ));
    assert!(matches!(
        parse_query(&with(&[0xc0, 14, 1, b'a', 0, 0, 1, 0, 1])),
        Err(WireError::BadPointer { .. })
    ));
    // A loop between two pointers: the second points forward again.
    let mut looped = with(&[1, b'a', 0xc0, 16, 0xc0, 14, 0, 1, 0, 1]);
    looped[16] = 0xc0;
    assert!(parse_response(&looped).is_err());
    // Reserved label types.
    for byte in [0x40, 0x80] {
        assert!(matches!(
            parse_query(&with(&[byte, 0, 1, 0, 1])),
            Err(WireError::BadLabel { .. })
        ));
    }
    // A label running past the end.
    assert!(matches!(
        parse_query(&with(&[5, b'a', b'b'])),
        Err(WireError::Truncated { .. })
    ));
    // A name over 255 bytes: five labels of 63.
    let mut long = Vec::new();
    for _ in 0..5 {
        long.push(63);
        long.extend_from_slice(&[b'x'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&with(&long)), Err(WireError::NameTooLong));
    // Question counts other than one.
    let mut two = good.clone();
    two[5] = 2;
    assert_eq!(
        parse_query(&two),
        Err(WireError::QuestionCount { count: 2 })
    );
    let mut none = good.clone();
    none[5] = 0;
    assert!(parse_query(&none).is_err());
    // An A record with 5 bytes of rdata, and rdata running past the end.
    let q = question("a.test", TYPE_A);
    let mut bad_a = write_a_response(1, &q, &[(Ipv4Addr::LOCALHOST, 1)]);
    let len_at = bad_a.len() - 6;
    bad_a[len_at + 1] = 5;
    bad_a.push(0);
    assert_eq!(parse_response(&bad_a), Err(WireError::BadA { len: 5 }));
    bad_a.pop();
    assert!(matches!(
        parse_response(&bad_a),
        Err(WireError::Truncated { .. })
    ));
    // More answers announced than present.
    let mut short = write_a_response(1, &q, &[(Ipv4Addr::LOCALHOST, 1)]);
    short[7] = 2;
    assert!(parse_response(&short).is_err());
}

#[test]
fn pointer_chains_are_bounded() {
    // 20 names, each "x" + a pointer to the previous: 20 pointers deep at the end.
    let mut m = vec![0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut prev = 12;
    for _ in 0..20 {
        let here = m.len();
        m.extend_from_slice(&[1, b'x', 0xc0, prev as u8]);
        prev = here;
    }
    assert_eq!(read_name(&m, 12 + 1).unwrap().0.to_dotted(), "x");
    assert!(matches!(
        read_name(&m, prev),
        Err(WireError::BadPointer { .. })
    ));
}

#[test]
fn names_render_odd_bytes_escaped() {
    let mut m = vec![
        7, b'e', b'v', b'i', b'l', b'.', b'a', b'b', 4, b'T', b'E', b'S', b'T', 0,
    ];
    m.splice(0..0, [0u8; 12]);
    let (name, _) = read_name(&m, 12).unwrap();
    assert_eq!(name.to_dotted(), "evil\\046ab.test");
    assert!(Name::from_dotted(&"a".repeat(64)).is_none());
    assert!(Name::from_dotted("a..b").is_none());
    assert!(Name::from_dotted(&["abcdefghi"; 26].join(".")).is_none());
}

fn resolver(hosts: &[&str]) -> Resolver {
    Resolver::new(Allowlist::parse(hosts, [] as [&str; 0]).unwrap())
}

#[test]
fn without_host_patterns_every_name_is_forwarded() {
    let open = Resolver::default();
    let cidrs_only = Resolver::new(Allowlist::parse([] as [&str; 0], ["198.51.100.0/24"]).unwrap());
    for r in [open, cidrs_only] {
        assert_eq!(
            r.decide("anything.example", SystemTime::now()),
            Decision::Forward {
                allow_answers: false
            }
        );
        assert!(r.denials().is_empty());
    }
}

#[test]
fn the_allowlist_decides_and_denials_are_recorded() {
    let r = resolver(&["allowed.test", "*.wild.test"]);
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let forward = Decision::Forward {
        allow_answers: true,
    };
    assert_eq!(r.decide("allowed.test", t), forward);
    assert_eq!(r.decide("a.b.wild.test", t), forward);
    assert_eq!(r.decide("denied.test", t), Decision::Deny);
    assert_eq!(
        r.decide("wild.test", t),
        Decision::Deny,
        "apex not under *."
    );
    assert_eq!(r.decide("x.allowed.test", t), Decision::Deny);
    assert_eq!(r.decide("evil\\046wild.test", t), Decision::Deny);
    let names: Vec<String> = r.denials().into_iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        [
            "denied.test",
            "wild.test",
            "x.allowed.test",
            "evil\\046wild.test"
        ]
    );
    assert!(r.denials().iter().all(|d| d.at == t));
}

#[test]
fn denials_are_a_bounded_ring() {
    let r = resolver(&["allowed.test"]);
    for i in 0..MAX_DENIALS + 10 {
        r.decide(&format!("n{i}.test"), SystemTime::now());
    }
    let denials = r.denials();
    assert_eq!(denials.len(), MAX_DENIALS);
    assert_eq!(denials[0].name, "n10.test");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_query(&bytes);
        if let Ok(r) = parse_response(&bytes) {
            prop_assert!(r.answers.len() <= MAX_RECORDS);
            for record in &r.answers {
                prop_assert!(record.name.to_dotted().len() <= MAX_NAME_LEN * 4);
            }
        }
    }

    #[test]
    fn mutated_responses_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = chained_response();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = parse_response(&bytes);
        let _ = parse_query(&bytes);
    }

    #[test]
    fn written_queries_parse_back(
        labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6),
        qtype in any::<u16>(),
        id in any::<u16>(),
    ) {
        let q = question(&labels.join("."), qtype);
        let parsed = parse_query(&write_query(id, &q)).unwrap();
        prop_assert_eq!(parsed.question, q);
        prop_assert_eq!(parsed.header.id, id);
    }
}
