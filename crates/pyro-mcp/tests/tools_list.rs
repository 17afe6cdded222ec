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

/// The most bytes (compact JSON) `workspace-core`'s `tools/list` result may take.
const CORE_BUDGET: usize = 24_000;

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
