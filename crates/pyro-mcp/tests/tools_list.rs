//! What each profile's `tools/list` returns, snapshotted (`tests/snapshots/`).
//!
//! Every byte of it is read by the model on every conversation, so a change to a description
//! or a schema shows up in review twice: as a diff of the tool definitions and of the compact
//! size on the snapshot's first line. `workspace-core`, the default profile, must stay under
//! [`CORE_BUDGET`] bytes. Update the snapshots with `INSTA_UPDATE=always cargo test -p
//! pyro-mcp --test tools_list` (or `cargo insta review`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use pyro_mcp::{Profile, ToolId};
use rmcp::model::ListToolsResult;
use serde_json::Value;

/// The most bytes (compact JSON) `workspace-core`'s `tools/list` result may take (24,000
/// until `workspace_summary` joined the profile: one call instead of several `workspace_logs`
/// and `workspace_diff` pages is worth its 1.6 KB).
const CORE_BUDGET: usize = 26_000;

/// The `tools/list` result a client of `profile` receives.
fn tools_list(profile: Profile) -> Value {
    let tools = ToolId::for_profile(profile)
        .into_iter()
        .map(|t| t.definition(profile))
        .collect();
    serde_json::to_value(ListToolsResult::with_all_items(tools)).unwrap()
}

/// `v` with every object's keys in order, whatever map serde_json was built with.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The compact size (what goes over the wire) and the pretty, key-sorted JSON.
fn rendered(profile: Profile) -> (usize, String) {
    let v = tools_list(profile);
    let compact = serde_json::to_string(&v).unwrap().len();
    let pretty = serde_json::to_string_pretty(&sorted(v)).unwrap();
    (compact, pretty)
}

fn snapshot(profile: Profile) -> usize {
    let (compact, pretty) = rendered(profile);
    println!(
        "{profile}: tools/list is {compact} bytes compact (~{} tokens)",
        compact / 4
    );
    let name = profile.as_str().replace('-', "_");
    insta::assert_snapshot!(name, format!("compact JSON: {compact} bytes\n{pretty}"));
    compact
}

#[test]
fn vm_run_tools_list() {
    snapshot(Profile::VmRun);
}

#[test]
fn workspace_core_tools_list_fits_its_budget() {
    let bytes = snapshot(Profile::WorkspaceCore);
    assert!(
        bytes < CORE_BUDGET,
        "workspace-core tools/list is {bytes} bytes, over its budget of {CORE_BUDGET}: \
         tighten descriptions or schemas before adding more"
    );
}

#[test]
fn workspace_full_tools_list() {
    snapshot(Profile::WorkspaceFull);
}

#[test]
fn the_rendering_is_stable() {
    for p in Profile::ALL {
        assert_eq!(rendered(p), rendered(p), "{p}");
    }
}

/// What a strict schema checker (the MCP Inspector's `--strict`, OpenAI's and Gemini's
/// function schemas) refuses, found in `schema` at `at`: a bare boolean subschema (only
/// `additionalProperties: false` is allowed), `items` that is not one object schema, an
/// array without `items`, a `required` name without a property, `$ref`s.
fn strictness_problems(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Value::Object(m) = schema else {
        problems.push(format!("{at}: a subschema must be an object, not {schema}"));
        return;
    };
    for key in ["$ref", "$defs", "prefixItems", "definitions"] {
        if m.contains_key(key) {
            problems.push(format!("{at}: `{key}`"));
        }
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    match m.get("items") {
        Some(items @ Value::Object(_)) => {
            strictness_problems(items, &format!("{at}.items"), problems)
        }
        Some(other) => problems.push(format!("{at}.items: must be an object, not {other}")),
        None if types.contains(&"array") => problems.push(format!("{at}: array without items")),
        None => {}
    }
    match m.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(s @ Value::Object(_)) => {
            strictness_problems(s, &format!("{at}.additionalProperties"), problems)
        }
        Some(other) => problems.push(format!("{at}.additionalProperties: {other}")),
    }
    let props = match m.get("properties") {
        Some(Value::Object(p)) => {
            for (k, s) in p {
                strictness_problems(s, &format!("{at}.{k}"), problems);
            }
            Some(p)
        }
        Some(other) => {
            problems.push(format!("{at}.properties: {other}"));
            None
        }
        None => None,
    };
    if let Some(Value::Array(req)) = m.get("required") {
        for r in req {
            let known = r
                .as_str()
                .is_some_and(|r| props.is_some_and(|p| p.contains_key(r)));
            if !known {
                problems.push(format!("{at}: required {r} has no property"));
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        match m.get(key) {
            Some(Value::Array(members)) => {
                for (i, s) in members.iter().enumerate() {
                    strictness_problems(s, &format!("{at}.{key}[{i}]"), problems);
                }
            }
            Some(other) => problems.push(format!("{at}.{key}: {other}")),
            None => {}
        }
    }
    if let Some(s) = m.get("not") {
        strictness_problems(s, &format!("{at}.not"), problems);
    }
}

/// Regression test: `secrets.items` was a bare `true` in an output schema, which the
/// Inspector's `--strict` check refuses. Every schema of every tool of every profile must be
/// portable to strict checkers.
#[test]
fn every_schema_is_strict_portable() {
    let mut problems = Vec::new();
    for p in Profile::ALL {
        for t in ToolId::for_profile(p) {
            let d = t.definition(p);
            let input = Value::Object((*d.input_schema).clone());
            strictness_problems(&input, &format!("{p} {} input", d.name), &mut problems);
            let output = Value::Object(d.output_schema.as_deref().cloned().unwrap_or_default());
            strictness_problems(&output, &format!("{p} {} output", d.name), &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_walker_finds_what_strict_checkers_refuse() {
    let mut problems = Vec::new();
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": true},
            "b": {"type": "array"},
            "c": {"type": "object", "additionalProperties": true},
            "d": true,
            "e": {"anyOf": [{"type": "string"}, true]}
        },
        "required": ["a", "z"]
    });
    strictness_problems(&bad, "t", &mut problems);
    assert_eq!(problems.len(), 6, "{problems:#?}");
}
