use super::*;

fn spec() -> DaemonSpec {
    DaemonSpec {
        netns: "pyro-5".to_owned(),
        index: 5,
        policy: NetworkPolicy::Egress,
        allowlist: Allowlist::parse(["allowed.test"], ["203.0.113.0/24"]).unwrap(),
        upstreams: vec!["192.0.2.53:53".parse().unwrap()],
        state_dir: "/run/pyro/sandboxes/x".into(),
        credentials: Vec::new(),
        ca_dir: None,
        extra_roots: None,
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pyro-net-daemon-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_valid_spec_round_trips_and_yields_its_plan() {
    let text = serde_json::to_string(&spec()).unwrap();
    let back: DaemonSpec = serde_json::from_str(&text).unwrap();
    assert_eq!(back, spec());
    assert_eq!(back.validate().unwrap(), SandboxNet::new(5).unwrap());
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value["allowlist"],
        serde_json::json!({"hosts": ["allowed.test"], "cidrs": ["203.0.113.0/24"]})
    );
    assert_eq!(value["policy"], "egress");
}

#[test]
fn invalid_specs_name_the_field() {
    let field = |s: DaemonSpec| s.validate().unwrap_err().field;
    assert_eq!(
        field(DaemonSpec {
            index: u32::MAX,
            ..spec()
        }),
        "index"
    );
    assert_eq!(
        field(DaemonSpec {
            netns: "pyro-6".into(),
            ..spec()
        }),
        "netns"
    );
    assert_eq!(
        field(DaemonSpec {
            policy: NetworkPolicy::Off,
            ..spec()
        }),
        "policy"
    );
    assert_eq!(
        field(DaemonSpec {
            upstreams: vec![],
            ..spec()
        }),
        "upstreams"
    );
    assert_eq!(
        field(DaemonSpec {
            upstreams: vec!["192.0.2.53:53".parse().unwrap(); MAX_UPSTREAMS + 1],
            ..spec()
        }),
        "upstreams"
    );
    assert_eq!(
        field(DaemonSpec {
            upstreams: vec!["0.0.0.0:53".parse().unwrap()],
            ..spec()
        }),
        "upstreams"
    );
    assert_eq!(
        field(DaemonSpec {
            state_dir: "relative/dir".into(),
            ..spec()
        }),
        "state_dir"
    );
    let err = DaemonSpec {
        netns: "pyro-6".into(),
        ..spec()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "network daemon spec: `netns` is `pyro-6`, but sandbox 5 lives in `pyro-5`"
    );
}

#[test]
fn deserialisation_refuses_unknown_fields_and_revalidates_the_allowlist() {
    let mut value = serde_json::to_value(spec()).unwrap();
    value["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<DaemonSpec>(value).is_err());
    let mut value = serde_json::to_value(spec()).unwrap();
    value["allowlist"]["cidrs"] = serde_json::json!(["127.0.0.0/8"]);
    let err = serde_json::from_value::<DaemonSpec>(value).unwrap_err();
    assert!(err.to_string().contains("never allowed"), "{err}");
    let mut value = serde_json::to_value(spec()).unwrap();
    value["allowlist"]["hosts"] = serde_json::json!(["*bad*"]);
    assert!(serde_json::from_value::<DaemonSpec>(value).is_err());
}

#[test]
fn load_reads_and_validates_a_file() {
    let dir = TempDir::new("load");
    let path = dir.0.join("spec.json");
    std::fs::write(&path, serde_json::to_vec(&spec()).unwrap()).unwrap();
    let (loaded, plan) = DaemonSpec::load(&path).unwrap();
    assert_eq!((loaded, plan.index()), (spec(), 5));
    std::fs::write(&path, b"{\"netns\": ").unwrap();
    assert!(matches!(
        DaemonSpec::load(&path),
        Err(DaemonError::SpecFile { .. })
    ));
    std::fs::write(
        &path,
        serde_json::to_vec(&DaemonSpec {
            upstreams: vec![],
            ..spec()
        })
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(DaemonSpec::load(&path), Err(DaemonError::Spec(_))));
}

#[test]
fn new_since_finds_what_was_appended_to_a_sliding_window() {
    let empty: [u32; 0] = [];
    assert_eq!(new_since(&empty, &[1, 2]), &[1, 2]);
    assert_eq!(new_since(&[1, 2], &[1, 2]), &empty);
    assert_eq!(new_since(&[1, 2], &[1, 2, 3]), &[3]);
    // The window is full and slid by two.
    assert_eq!(new_since(&[1, 2, 3], &[3, 4, 5]), &[4, 5]);
    // Slid by more than it holds: all new.
    assert_eq!(new_since(&[1, 2, 3], &[7, 8, 9]), &[7, 8, 9]);
}

fn record(i: u64) -> DenialRecord {
    DenialRecord {
        at: i,
        kind: if i.is_multiple_of(2) {
            DenialKind::Dns
        } else {
            DenialKind::Connection
        },
        name: Some(format!("n{i}.test")),
        destination: (i % 2 == 1).then(|| "198.51.100.10:443".to_owned()),
        reason: "no".to_owned(),
    }
}

#[test]
fn the_denials_file_keeps_the_last_lines_and_the_counters_every_one() {
    let dir = TempDir::new("bounded");
    let mut rec = Recorder::open(&dir.0).unwrap();
    rec.note((0..300).map(record).collect(), 3);
    rec.flush(true);
    let text = std::fs::read_to_string(dir.0.join(DENIALS_FILE)).unwrap();
    assert_eq!(text.lines().count(), MAX_DENIAL_LINES);
    let back = read_denials(&dir.0, 1000);
    assert_eq!(back.len(), MAX_DENIAL_LINES);
    assert_eq!(back.first(), Some(&record(300 - MAX_DENIAL_LINES as u64)));
    assert_eq!(back.last(), Some(&record(299)));
    assert_eq!(read_denials(&dir.0, 2), vec![record(298), record(299)]);
    assert_eq!(
        read_stats(&dir.0),
        Some(NetStats {
            dns_denied: 150,
            connections_denied: 150,
            dns_answered: 3,
            ..NetStats::default()
        })
    );
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"at": 299, "kind": "connection", "name": "n299.test",
            "destination": "198.51.100.10:443", "reason": "no"})
    );
    // A new daemon continues from there.
    let mut again = Recorder::open(&dir.0).unwrap();
    again.note(vec![record(300)], 0);
    again.flush(true);
    assert_eq!(read_stats(&dir.0).unwrap().dns_denied, 151);
    assert_eq!(read_denials(&dir.0, 1), vec![record(300)]);
    assert_eq!(read_denials(&dir.0, 1000).len(), MAX_DENIAL_LINES);
}

#[test]
fn counters_alone_are_written_at_most_once_a_second_and_always_with_new_denials() {
    let dir = TempDir::new("rate");
    let mut rec = Recorder::open(&dir.0).unwrap();
    rec.flush(false);
    assert_eq!(read_stats(&dir.0), Some(NetStats::default()));
    // Answers alone only bump a counter: held back within the second.
    rec.note(Vec::new(), 3);
    rec.flush(false);
    assert_eq!(read_stats(&dir.0), Some(NetStats::default()), "too soon");
    // A denial is written at once, with counters that agree with it.
    rec.note(vec![record(0)], 0);
    rec.flush(false);
    assert_eq!(
        read_denials(&dir.0, 10).len(),
        1,
        "denials are not held back"
    );
    let stats = read_stats(&dir.0).unwrap();
    assert_eq!((stats.dns_denied, stats.dns_answered), (1, 3));
}

#[test]
fn reading_survives_missing_truncated_and_hostile_files() {
    let dir = TempDir::new("hostile");
    assert!(read_denials(&dir.0, 10).is_empty());
    assert_eq!(read_stats(&dir.0), None);

    let good = serde_json::to_string(&record(1)).unwrap();
    let long = DenialRecord {
        name: Some("x".repeat(10_000)),
        ..record(2)
    };
    let mut text = format!(
        "garbage\n{good}\n{{\"at\": 1}}\n\u{0}\u{ff}\n{}\n{}",
        serde_json::to_string(&long).unwrap(),
        &good[..good.len() / 2]
    );
    std::fs::write(dir.0.join(DENIALS_FILE), &text).unwrap();
    let back = read_denials(&dir.0, 10);
    assert_eq!(back.len(), 2);
    assert_eq!(back[0], record(1));
    assert_eq!(
        back[1].name.as_ref().map(|n| n.len()),
        Some(MAX_FIELD_CHARS)
    );

    // A file far larger than the bound: only its end is read.
    text = "y".repeat(3 * 1024 * 1024);
    text.push('\n');
    text.push_str(&good);
    text.push('\n');
    std::fs::write(dir.0.join(DENIALS_FILE), &text).unwrap();
    assert_eq!(read_denials(&dir.0, 10), vec![record(1)]);

    std::fs::write(dir.0.join(STATS_FILE), b"{\"dns_denied\": 1").unwrap();
    assert_eq!(read_stats(&dir.0), None);
    std::fs::write(dir.0.join(STATS_FILE), vec![b' '; 100_000]).unwrap();
    assert_eq!(read_stats(&dir.0), None);
}

#[test]
fn credentials_in_a_spec_are_validated_and_never_debug_printed() {
    let rule = CredentialRule {
        name: "API_KEY".into(),
        placeholder: "pyro-cred-0123456789abcdef0123456789abcdef".into(),
        value: "sk-secret".into(),
        hosts: vec!["api.test".parse().unwrap()],
    };
    let with = DaemonSpec {
        credentials: vec![rule.clone()],
        ca_dir: Some("/run/pyro/sandboxes/x/ca".into()),
        ..spec()
    };
    with.validate().unwrap();
    let text = serde_json::to_string(&with).unwrap();
    assert_eq!(serde_json::from_str::<DaemonSpec>(&text).unwrap(), with);
    assert!(!format!("{with:?}").contains("sk-secret"));
    // Without credentials the fields are left out, and old specs still read.
    let plain = serde_json::to_value(spec()).unwrap();
    assert!(plain.get("credentials").is_none() && plain.get("ca_dir").is_none());

    let field = |s: DaemonSpec| s.validate().unwrap_err().field;
    assert_eq!(
        field(DaemonSpec {
            ca_dir: None,
            ..with.clone()
        }),
        "ca_dir"
    );
    assert_eq!(
        field(DaemonSpec {
            ca_dir: Some("ca".into()),
            ..with.clone()
        }),
        "ca_dir"
    );
    assert_eq!(
        field(DaemonSpec {
            extra_roots: Some("roots.pem".into()),
            ..with.clone()
        }),
        "extra_roots"
    );
    let header_injection = CredentialRule {
        value: "x\r\nX-Evil: 1".into(),
        ..rule
    };
    let bad = DaemonSpec {
        credentials: vec![header_injection],
        ..with
    };
    let err = bad.validate().unwrap_err();
    assert_eq!(err.field, "credentials");
    assert!(!err.to_string().contains("X-Evil"), "{err}");
}
