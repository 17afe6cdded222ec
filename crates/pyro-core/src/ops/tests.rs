//! The catalogue against the core's own constants and rules.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::*;

fn input(method: &str) -> Value {
    let info = Op::catalogue()
        .into_iter()
        .find(|o| o.method == method)
        .unwrap();
    info.input_schema(SchemaSettings::draft2020_12()).to_value()
}

fn range(method: &str, field: &str) -> (Option<i64>, Option<i64>) {
    let s = input(method);
    let f = &s["properties"][field];
    (f["minimum"].as_i64(), f["maximum"].as_i64())
}

#[test]
fn names_are_unique_and_parse_back() {
    let mut methods = std::collections::HashSet::new();
    let mut tools = std::collections::HashSet::new();
    for o in Op::catalogue() {
        assert!(methods.insert(o.method), "duplicate {}", o.method);
        if let Some(t) = o.tool {
            assert!(tools.insert(t), "duplicate tool {t}");
            assert_eq!(OpInfo::by_tool(t).map(|i| i.method), Some(o.method));
        }
        let schema = o.input_schema(SchemaSettings::draft2020_12()).to_value();
        assert_eq!(schema["type"], "object", "{}", o.method);
        assert_eq!(schema["additionalProperties"], false, "{}", o.method);
    }
    assert!(matches!(
        Op::parse("nope", Value::Null),
        Err(ParseError::UnknownMethod(_))
    ));
    assert_eq!(Op::parse("ping", Value::Null).unwrap().method(), "ping");
}

#[test]
fn advertised_ranges_are_the_cores() {
    let core = |(min, max): (i64, i64)| (Some(min), Some(max));
    for m in ["run_in_vm", "create_vm", "create_workspace"] {
        assert_eq!(range(m, "vcpu_count"), core(crate::VCPU_RANGE), "{m}");
        assert_eq!(range(m, "mem_mib"), core(crate::MEM_RANGE), "{m}");
    }
    assert_eq!(range("run_in_vm", "ttl_seconds"), core(crate::TTL_RANGE));
    assert_eq!(range("create_vm", "ttl_seconds"), core(crate::TTL_RANGE));
    let ws_ttl = core(crate::workspace::WORKSPACE_TTL_RANGE);
    assert_eq!(range("create_workspace", "ttl_seconds"), ws_ttl);
    assert_eq!(range("update_workspace", "ttl_seconds"), ws_ttl);
    for m in ["run_in_vm", "exec_vm", "exec_workspace"] {
        let t = core((1, crate::MAX_TIMEOUT_SECONDS));
        assert_eq!(range(m, "timeout_seconds"), t, "{m}");
    }
    assert_eq!(
        range("read_workspace_file", "max_bytes"),
        core((1, crate::workspace::MAX_READ_BYTES as i64))
    );
    assert_eq!(
        range("logs_workspace", "limit"),
        core((1, crate::workspace::MAX_LOG_PAGE as i64))
    );
    assert_eq!(
        range("logs_workspace", "max_bytes").1,
        Some(crate::workspace::MAX_LOG_BYTES as i64)
    );
}

#[test]
fn defaults_are_the_cores_and_advertised() {
    let d = |m: &str, f: &str| input(m)["properties"][f]["default"].clone();
    assert_eq!(d("run_in_vm", "vcpu_count"), json!(defaults::VCPU_COUNT));
    assert_eq!(d("run_in_vm", "mem_mib"), json!(defaults::MEM_MIB));
    assert_eq!(
        d("run_in_vm", "ttl_seconds"),
        json!(defaults::VM_TTL_SECONDS)
    );
    assert_eq!(
        d("exec_workspace", "timeout_seconds"),
        json!(defaults::TIMEOUT_SECONDS)
    );
    assert_eq!(
        d("create_workspace", "ttl_seconds"),
        json!(crate::workspace::DEFAULT_WORKSPACE_TTL)
    );
    assert_eq!(d("logs_workspace", "limit"), json!(defaults::LOGS_LIMIT));
    assert_eq!(d("reset_workspace", "snapshot"), json!("baseline"));
    assert_eq!(d("list_workspace_files", "path"), json!("/workspace"));
    // What the schema says is what parsing does.
    let Op::RunInVm(r) = Op::parse(
        "run_in_vm",
        json!({"environment": "debian:12", "command": "true"}),
    )
    .unwrap() else {
        panic!("not run_in_vm")
    };
    assert_eq!(
        (r.vcpu_count, r.mem_mib, r.timeout_seconds, r.ttl_seconds),
        (1, 1024, 30, 600)
    );
    assert!(!r.network && !r.allow_host_compat);
}

#[test]
fn commands_are_a_string_or_an_argv_and_nothing_else() {
    let parse = |c: Value| Op::parse("exec_vm", json!({"vm_id": "a", "command": c}));
    let Op::ExecVm(e) = parse(json!("echo hi")).unwrap() else {
        panic!()
    };
    assert_eq!(e.command, crate::Command::Shell("echo hi".into()));
    let Op::ExecVm(e) = parse(json!(["echo", "hi"])).unwrap() else {
        panic!()
    };
    assert_eq!(
        e.command,
        crate::Command::Argv(vec!["echo".into(), "hi".into()])
    );
    for bad in [json!(1), json!({"a": 1}), json!([1]), Value::Null] {
        let e = parse(bad.clone()).unwrap_err().to_string();
        assert!(e.contains("invalid params for exec_vm"), "{bad}: {e}");
    }
}

#[test]
fn unknown_missing_and_mistyped_fields_are_named() {
    let e = Op::parse(
        "run_in_vm",
        json!({"environment": "debian:12", "command": "x", "cmd": 1}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `cmd`"), "{e}");
    let e = Op::parse("run_in_vm", json!({"environment": "debian:12"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `command`"), "{e}");
    let e = Op::parse(
        "exec_vm",
        json!({"vm_id": "a", "command": "x", "timeout_seconds": "5"}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn settled_disagreements_fail_the_same_way_everywhere() {
    let cx = Ctx::default();
    // allow_host_compat: true is refused, naming the field.
    let Op::RunInVm(r) = Op::parse(
        "run_in_vm",
        json!({"environment": "debian:12", "command": "x", "allow_host_compat": true}),
    )
    .unwrap() else {
        panic!()
    };
    let e = r.into_parts(&cx).unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("allow_host_compat"), "{e}");
    // A seed path given as an empty string is refused before anything happens.
    let Op::CreateWorkspace(c) = Op::parse(
        "create_workspace",
        json!({"environment": "debian:12", "seed_path": ""}),
    )
    .unwrap() else {
        panic!()
    };
    let e = c.resolve(&cx).unwrap_err();
    assert!(e.to_string().contains("seed_path"), "{e}");
}
