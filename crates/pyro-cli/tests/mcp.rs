//! `pyro mcp serve` end to end: rmcp's client drives the real binary over stdio, and the tools
//! boot real sandboxes. Every successful result is checked against the tool's advertised
//! output schema, so a field the core adds without its schema mirror fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, NumberOrString,
    ProgressNotificationParam, ProgressToken, RequestMetaObject, Tool,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// Records progress notifications.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// One `pyro mcp serve` with its own state directory.
struct Server {
    client: RunningService<RoleClient, Recorder>,
    recorder: Recorder,
    tools: HashMap<String, Tool>,
    order: Vec<String>,
    _state: tempfile::TempDir,
}

async fn start(profile: &str, roots: &[&Path], cwd: &Path) -> Server {
    start_with(profile, roots, cwd, &[]).await
}

/// [`start`] with more `pyro mcp serve` options.
async fn start_with(profile: &str, roots: &[&Path], cwd: &Path, extra: &[&str]) -> Server {
    start_env(profile, roots, cwd, extra, &[]).await
}

/// [`start_with`] with environment variables for the server.
async fn start_env(
    profile: &str,
    roots: &[&Path],
    cwd: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let state = tempfile::Builder::new()
        .prefix("pyro-mcp-test-")
        .tempdir()
        .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyro"));
    cmd.args(["mcp", "serve", "--profile", profile])
        .current_dir(cwd)
        .env("PYRO_STATE_DIR", state.path())
        .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
        .env("PYRO_LOG", "info")
        .env_remove("PYRO_BACKEND");
    for r in roots {
        cmd.arg("--allow-host-path").arg(r);
    }
    cmd.args(extra);
    cmd.envs(env.iter().copied());
    let log = std::fs::File::create(state.path().join("server.log")).unwrap();
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let recorder = Recorder::default();
    let client = recorder.clone().serve(transport).await.unwrap();
    let listed = client.list_all_tools().await.unwrap();
    let order = listed.iter().map(|t| t.name.to_string()).collect();
    let tools = listed
        .into_iter()
        .map(|t| (t.name.to_string(), t))
        .collect();
    Server {
        client,
        recorder,
        tools,
        order,
        _state: state,
    }
}

fn params(name: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(name.to_string()).with_arguments(args)
}

impl Server {
    async fn call(&self, name: &str, args: Value) -> CallToolResult {
        let r = self.client.call_tool(params(name, args)).await.unwrap();
        self.check(name, &r);
        r
    }

    /// A successful call's structured result (checked against the output schema).
    async fn ok(&self, name: &str, args: Value) -> Value {
        let r = self.call(name, args.clone()).await;
        assert_ne!(r.is_error, Some(true), "{name} {args} failed: {}", text(&r));
        r.structured_content.unwrap()
    }

    /// A failed call's message.
    async fn err(&self, name: &str, args: Value) -> String {
        let r = self.call(name, args.clone()).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{name} {args} should fail: {}",
            text(&r)
        );
        assert!(r.structured_content.is_none());
        text(&r)
    }

    fn check(&self, name: &str, r: &CallToolResult) {
        if r.is_error == Some(true) {
            return;
        }
        let value = r.structured_content.as_ref().expect("structuredContent");
        // The text item carries the same JSON while it is small, a sentence otherwise.
        if value.to_string().len() <= pyro_mcp::budget::DUPLICATE_MAX_BYTES {
            let t: Value = serde_json::from_str(&text(r)).unwrap();
            assert_eq!(&t, value);
        } else {
            let t = text(r);
            assert!(t.len() < 1024 && t.contains("structuredContent"), "{t}");
        }
        let schema = Value::Object(
            self.tools[name]
                .output_schema
                .as_ref()
                .expect("output schema")
                .as_ref()
                .clone(),
        );
        let mut problems = Vec::new();
        conforms(&schema, &schema, value, name, &mut problems);
        assert!(
            problems.is_empty(),
            "{name}: result does not match its output schema:\n{}",
            problems.join("\n")
        );
    }

    fn progress(&self) -> Vec<ProgressNotificationParam> {
        self.recorder.progress.lock().unwrap().clone()
    }

    /// Asserts that no sandbox process of this server's state directory is left.
    async fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = pyro_core::host::processes_with_cwd_in(self._state.path());
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "processes left: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    /// A failed test must not leave sandboxes running (workspace VMs run detached).
    fn drop(&mut self) {
        for pid in pyro_core::host::processes_with_cwd_in(self._state.path()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A small JSON Schema check for what schemars emits: `$ref` into `$defs`, `type` (one or a
/// list), `properties` (every key of the value must be documented), `additionalProperties`,
/// `items`, `anyOf`/`oneOf`.
fn conforms(root: &Value, schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    let Value::Object(s) = schema else {
        return; // `true`
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return conforms(root, &root["$defs"][name], v, at, problems);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = s.get(key) {
            let ok = alts.iter().any(|a| {
                let mut p = Vec::new();
                conforms(root, a, v, at, &mut p);
                p.is_empty()
            });
            if !ok {
                problems.push(format!("{at}: {v} matches none of {key}"));
            }
            return;
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            problems.push(format!("{at}: {actual} where the schema says {types:?}"));
            return;
        }
    }
    match v {
        Value::Object(o) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in o {
                let at = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(cs), _) => conforms(root, cs, child, &at, problems),
                    (None, Some(extra @ Value::Object(_))) => {
                        conforms(root, extra, child, &at, problems)
                    }
                    (None, _) if props.is_some() => {
                        problems.push(format!("{at}: not in the output schema"))
                    }
                    (None, _) => {}
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, child) in a.iter().enumerate() {
                    conforms(root, items, child, &format!("{at}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

const CORE: [&str; 17] = [
    "vm_run",
    "workspace_create",
    "workspace_list",
    "workspace_update",
    "workspace_exec",
    "workspace_sync_push",
    "workspace_status",
    "workspace_logs",
    "workspace_export",
    "workspace_diff",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_patch_apply",
    "workspace_summary",
    "workspace_reset",
    "workspace_delete",
];

const FULL_EXTRA: [&str; 30] = [
    "vm_list_environments",
    "vm_create",
    "vm_start",
    "vm_exec",
    "vm_stop",
    "vm_delete",
    "vm_status",
    "vm_network_info",
    "vm_reap_expired",
    "workspace_stop",
    "workspace_start",
    "workspace_disk_export",
    "workspace_disk_list",
    "workspace_disk_read",
    "snapshot_create",
    "snapshot_list",
    "snapshot_delete",
    "shell_open",
    "shell_read",
    "shell_write",
    "shell_signal",
    "shell_close",
    "service_start",
    "service_list",
    "service_status",
    "service_logs",
    "service_stop",
    "shell_list",
    "shell_resize",
    "workspace_fork",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profile_lists_exactly_its_tools() {
    let work = tempfile::tempdir().unwrap();
    let vm_run = start("vm-run", &[], work.path()).await;
    assert_eq!(vm_run.order, ["vm_run"]);
    let info = vm_run.client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "pyro");
    assert_eq!(info.instructions.as_deref().unwrap().lines().count(), 5);

    let core = start("workspace-core", &[], work.path()).await;
    assert_eq!(core.order, CORE);
    let create = &core.tools["workspace_create"];
    let props = create.input_schema["properties"].as_object().unwrap();
    assert!(props.contains_key("seed_path") && !props.contains_key("network_policy"));
    assert!(!props.contains_key("secrets"));
    assert!(
        !core.tools["workspace_exec"].input_schema["properties"]
            .as_object()
            .unwrap()
            .contains_key("secret_env")
    );

    let full = start("workspace-full", &[], work.path()).await;
    let expected: Vec<&str> = CORE.iter().chain(FULL_EXTRA.iter()).copied().collect();
    assert_eq!(full.order, expected);
    for (name, t) in &full.tools {
        assert!(t.output_schema.is_some(), "{name}");
        assert_eq!(t.input_schema["additionalProperties"], false, "{name}");
        let a = t.annotations.as_ref().unwrap();
        assert!(a.read_only_hint.is_some(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_run_runs_git_in_debian_12_with_progress() {
    let work = tempfile::tempdir().unwrap();
    let s = start("vm-run", &[], work.path()).await;
    let mut p = params(
        "vm_run",
        json!({"environment": "debian:12", "command": "git --version && echo to-stderr >&2"}),
    );
    p.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
        NumberOrString::String("run-1".into()),
    )));
    let r = match s.client.call_tool_once(p).await.unwrap() {
        CallToolResponse::Complete(r) => r,
        other => panic!("unexpected response {other:?}"),
    };
    s.check("vm_run", &r);
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let v = r.structured_content.unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(
        v["stdout"].as_str().unwrap().starts_with("git version 2."),
        "{v}"
    );
    assert_eq!(v["stderr"], "to-stderr\n");
    assert_eq!(v["cleanup"]["deleted"], true);
    let progress = s.progress();
    let messages: Vec<String> = progress.iter().filter_map(|p| p.message.clone()).collect();
    assert!(
        messages.iter().any(|m| m.contains("phase execute")),
        "{messages:?}"
    );
    // Progress values increase (the client may deliver notifications out of order).
    let mut values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    values.sort_by(f64::total_cmp);
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_core_session_through_tools_only() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().canonicalize().unwrap();
    let seed = root.join("project");
    std::fs::create_dir_all(seed.join("src")).unwrap();
    std::fs::write(seed.join("src/main.txt"), "line 1\nline 2\nline 3\n").unwrap();
    std::fs::write(seed.join("README"), "hello\n").unwrap();
    let s = start("workspace-core", &[&root], Path::new("/")).await;

    let w = s
        .ok(
            "workspace_create",
            json!({"environment": "debian:12", "seed_path": "project", "name": "mcp session", "labels": {"suite": "mcp"}}),
        )
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["state"], "started");
    assert_eq!(w["workspace_seed"]["mode"], "directory");
    assert_eq!(w["workspace_seed"]["seed_path"], seed.to_str().unwrap());

    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": "cat README; pwd; echo oops >&2; exit 3"}),
        )
        .await;
    assert_eq!(r["stdout"], "hello\n/workspace\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["sequence"], 1);

    let r = s
        .ok(
            "workspace_file_write",
            json!({"workspace_id": id, "path": "notes/todo.md", "text": "- ship it\n"}),
        )
        .await;
    assert_eq!(r["bytes_written"], 10);
    let r = s
        .ok(
            "workspace_file_read",
            json!({"workspace_id": id, "path": "/workspace/notes/todo.md"}),
        )
        .await;
    assert_eq!(r["content"], "- ship it\n");
    assert_eq!(r["truncated"], false);
    let r = s
        .ok(
            "workspace_file_list",
            json!({"workspace_id": id, "recursive": true}),
        )
        .await;
    let paths: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/workspace/notes/todo.md"), "{paths:?}");

    let patch = "--- a/src/main.txt\n+++ b/src/main.txt\n@@ -1,3 +1,3 @@\n line 1\n-line 2\n+line two\n line 3\n";
    let r = s
        .ok(
            "workspace_patch_apply",
            json!({"workspace_id": id, "patch": patch}),
        )
        .await;
    assert_eq!(r["changed"], true);
    assert_eq!(r["entries"][0]["path"], "/workspace/src/main.txt");

    let d = s.ok("workspace_diff", json!({"workspace_id": id})).await;
    assert_eq!(d["changed"], true);
    let changed: Vec<&str> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"/workspace/src/main.txt"), "{changed:?}");
    assert!(changed.contains(&"/workspace/notes/todo.md"), "{changed:?}");
    assert!(d["patch"].as_str().unwrap().contains("+line two"));

    let r = s
        .ok(
            "workspace_export",
            json!({"workspace_id": id, "path": "src", "output_path": "out/src"}),
        )
        .await;
    assert_eq!(r["artifact_type"], "directory");
    assert_eq!(
        std::fs::read_to_string(root.join("out/src/main.txt")).unwrap(),
        "line 1\nline two\nline 3\n"
    );

    // Sync push from inside the root, then status, update, list, logs.
    std::fs::create_dir_all(root.join("more")).unwrap();
    std::fs::write(root.join("more/extra.txt"), "extra\n").unwrap();
    let r = s
        .ok(
            "workspace_sync_push",
            json!({"workspace_id": id, "source_path": root.join("more").to_str().unwrap(), "dest": "/workspace/more"}),
        )
        .await;
    assert_eq!(r["workspace_sync"]["mode"], "directory");
    let w = s
        .ok(
            "workspace_update",
            json!({"workspace_id": id, "labels": {"stage": "two"}, "ttl_seconds": 1800}),
        )
        .await;
    assert_eq!(w["labels"]["stage"], "two");
    let l = s.ok("workspace_list", json!({})).await;
    assert_eq!(l["count"], 1);
    assert_eq!(l["workspaces"][0]["name"], "mcp session");
    let logs = s
        .ok("workspace_logs", json!({"workspace_id": id, "limit": 5}))
        .await;
    assert_eq!(logs["total"], 1);
    assert_eq!(logs["entries"][0]["stdout"], "hello\n/workspace\n");
    let st = s.ok("workspace_status", json!({"workspace_id": id})).await;
    assert_eq!(st["command_count"], 1);

    // Reset: back to the seed, history emptied.
    let w = s.ok("workspace_reset", json!({"workspace_id": id})).await;
    assert_eq!(w["state"], "started");
    assert_eq!(w["command_count"], 0);
    assert_eq!(w["reset_count"], 1);
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": "cat src/main.txt; test -e notes || echo no-notes"}),
        )
        .await;
    assert_eq!(r["stdout"], "line 1\nline 2\nline 3\nno-notes\n");

    let r = s.ok("workspace_delete", json!({"workspace_id": id})).await;
    assert_eq!(r["deleted"], true);
    let e = s.err("workspace_status", json!({"workspace_id": id})).await;
    assert!(e.contains("[not_found]"), "{e}");
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_host_paths_and_bad_arguments_are_tool_errors() {
    let work = tempfile::tempdir().unwrap();
    let root: PathBuf = work.path().join("allowed");
    std::fs::create_dir_all(root.join("seed")).unwrap();
    std::fs::create_dir_all(work.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(work.path().join("outside"), root.join("link")).unwrap();
    let s = start("workspace-full", &[&root], work.path()).await;
    let root_c = root.canonicalize().unwrap().display().to_string();

    for (tool, args) in [
        (
            "workspace_create",
            json!({"environment": "debian:12", "seed_path": "/etc"}),
        ),
        (
            "workspace_create",
            json!({"environment": "debian:12", "seed_path": "../outside"}),
        ),
        (
            "workspace_create",
            json!({"environment": "debian:12", "seed_path": "link"}),
        ),
        (
            "workspace_sync_push",
            json!({"workspace_id": "0123456789ab", "source_path": "/root"}),
        ),
        (
            "workspace_export",
            json!({"workspace_id": "0123456789ab", "path": "a", "output_path": "/tmp/x"}),
        ),
        (
            "workspace_export",
            json!({"workspace_id": "0123456789ab", "path": "a", "output_path": "link/x"}),
        ),
        (
            "workspace_export",
            json!({"workspace_id": "0123456789ab", "path": "a", "output_path": "seed/../../x"}),
        ),
    ] {
        let e = s.err(tool, args.clone()).await;
        assert!(e.contains("[invalid_input]"), "{args}: {e}");
        assert!(
            e.contains(&root_c),
            "{args}: the allowed roots are named: {e}"
        );
    }
    assert!(!work.path().join("x").exists());

    let e = s
        .err(
            "vm_run",
            json!({"environment": "debian:12", "command": "true", "cmd": "x"}),
        )
        .await;
    assert!(e.contains("unknown field `cmd`"), "{e}");
    let e = s.err("vm_run", json!({"environment": "debian:12"})).await;
    assert!(e.contains("missing field `command`"), "{e}");
    let e = s
        .err(
            "vm_run",
            json!({"environment": "debian:12", "command": "true", "vcpu_count": "two"}),
        )
        .await;
    assert!(e.contains("invalid type"), "{e}");
    let e = s
        .err(
            "vm_run",
            json!({"environment": "debian:12", "command": "true", "vcpu_count": 99}),
        )
        .await;
    assert!(
        e.contains("[invalid_input]") && e.contains("vcpu_count"),
        "{e}"
    );
    let e = s
        .err(
            "vm_run",
            json!({"environment": "debian:99", "command": "true"}),
        )
        .await;
    assert!(
        e.contains("[invalid_input]") && e.contains("debian:12"),
        "{e}"
    );
    let e = s
        .err(
            "workspace_reset",
            json!({"workspace_id": "0123456789ab", "snapshot": "before"}),
        )
        .await;
    assert!(
        e.contains("[not_found]") && e.contains("0123456789ab"),
        "{e}"
    );
    let e = s
        .err("workspace_status", json!({"workspace_id": "0123456789ab"}))
        .await;
    assert!(e.contains("[not_found]"), "{e}");
    let e = s.err("vm_status", json!({"vm_id": "nope"})).await;
    assert!(e.contains("[not_found]"), "{e}");
    let e = s.err("shell_spawn", json!({})).await;
    assert!(
        e.starts_with("shell_spawn failed [invalid_input]: no such tool."),
        "{e}"
    );
    let core = start("workspace-core", &[&root], work.path()).await;
    let e = core
        .err("vm_create", json!({"environment": "debian:12"}))
        .await;
    assert!(e.contains("--profile workspace-full"), "{e}");

    // Read-only tools that need no sandbox.
    let envs = s.ok("vm_list_environments", json!({})).await;
    assert!(envs["environments"].as_array().unwrap().len() >= 3);
    let reaped = s.ok("vm_reap_expired", json!({})).await;
    assert_eq!(reaped["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_exec_does_not_hold_up_other_calls() {
    let work = tempfile::tempdir().unwrap();
    let s = start("workspace-core", &[], work.path()).await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();

    let peer = s.client.peer().clone();
    let long = {
        let id = id.clone();
        tokio::spawn(async move {
            let mut p = params(
                "workspace_exec",
                json!({"workspace_id": id, "command": "sleep 5; echo slept"}),
            );
            p.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
                NumberOrString::Number(7),
            )));
            let r = peer.call_tool_once(p).await.unwrap();
            let CallToolResponse::Complete(r) = r else {
                panic!("unexpected response {r:?}")
            };
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let st = s.ok("workspace_status", json!({"workspace_id": id})).await;
    assert_eq!(st["state"], "started");
    let l = s.ok("workspace_list", json!({})).await;
    assert_eq!(l["count"], 1);
    let answered = Instant::now();
    assert!(!long.is_finished(), "the exec should still be running");
    let (r, exec_done) = long.await.unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert_eq!(r.structured_content.as_ref().unwrap()["stdout"], "slept\n");
    assert!(answered < exec_done);
    let progress = s.progress();
    assert!(
        progress
            .iter()
            .any(|p| p.message.as_deref() == Some("workspace_exec: started")),
        "{progress:?}"
    );
    assert!(
        answered - asked < Duration::from_secs(3),
        "status and list took {:?} while an exec ran",
        answered - asked
    );
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_run_is_served_from_the_pool_when_the_server_keeps_one() {
    let work = tempfile::tempdir().unwrap();
    let pool = ["--pool-size", "1", "--pool-mem-mib", "352"];
    let s = start_with("vm-run", &[], work.path(), &pool).await;
    // The pool fills in the background; once it has, calls of its shape are served from it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        let v = s
            .ok(
                "vm_run",
                json!({"environment": "debian:12", "mem_mib": 352, "command": "cat /etc/machine-id"}),
            )
            .await;
        assert_eq!(v["exit_code"], 0, "{v}");
        seen.push(v["stdout"].as_str().unwrap().to_string());
        if v["boot_mode"] == "pooled" {
            break;
        }
        assert!(Instant::now() < deadline, "never served from the pool: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "machine ids repeat: {seen:?}");
    // Another shape is not served from the pool.
    let v = s
        .ok(
            "vm_run",
            json!({"environment": "debian:12", "mem_mib": 368, "command": "true"}),
        )
        .await;
    assert_ne!(v["boot_mode"], "pooled", "{v}");
}

/// F1 (review of 64dd67c): an export accepted while its workspace was locked, whose output's
/// parent then became a symlink out of the allowed root, must not follow it. Before the fix
/// the export landed in `outside/pwned`. Also F3: the review's planted chain
/// (`s -> .`, `esc -> s/../outside`) cannot be exported into the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_write_outside_its_root() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().canonicalize().unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("project")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("project/a.txt"), "secret-free\n").unwrap();
    let s = start("workspace-core", &[&root], Path::new("/")).await;
    let w = s
        .ok(
            "workspace_create",
            json!({"environment": "debian:12-base", "seed_path": "project"}),
        )
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();

    // F3: the chain is made in the guest; `s` alone is harmless, `esc` is refused.
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "ln -s . s && ln -s s/../outside esc && mkdir d && ln -s . d/s && ln -s s/.. d/up"}),
    )
    .await;
    s.ok(
        "workspace_export",
        json!({"workspace_id": id, "path": "s", "output_path": "s"}),
    )
    .await;
    let e = s
        .err(
            "workspace_export",
            json!({"workspace_id": id, "path": "esc", "output_path": "esc"}),
        )
        .await;
    assert!(e.contains("points outside"), "{e}");
    let e = s
        .err(
            "workspace_export",
            json!({"workspace_id": id, "path": "d", "output_path": "d"}),
        )
        .await;
    assert!(e.contains("points outside"), "{e}");
    assert!(!root.join("esc").exists() && !root.join("d").exists());

    // F1: hold the workspace's lock as a long reset would, let the export arrive and pass
    // its checks, then swap its output's parent for a symlink out of the root.
    let lock_path = s._state.path().join("workspaces").join(&id).join("lock");
    let guard = pyro_core::lock::lock(
        &lock_path,
        pyro_core::lock::LockMode::Exclusive,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let peer = s.client.peer().clone();
    let export = {
        let id = id.clone();
        tokio::spawn(async move {
            peer.call_tool(params(
                "workspace_export",
                json!({"workspace_id": id, "path": "a.txt", "output_path": "esc2/pwned"}),
            ))
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!export.is_finished(), "the export should wait for the lock");
    std::os::unix::fs::symlink("../outside", root.join("esc2")).unwrap();
    drop(guard);
    let r = export.await.unwrap();
    assert_eq!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("symlink"), "{}", text(&r));
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the root"
    );
    // Nothing of the export (spool, staging) is left in the root either.
    let mut left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["esc2", "project", "s"]);
    // The same export to a plain path works.
    let r = s
        .ok(
            "workspace_export",
            json!({"workspace_id": id, "path": "a.txt", "output_path": "out/a.txt"}),
        )
        .await;
    assert_eq!(r["output_path"], root.join("out/a.txt").to_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("out/a.txt")).unwrap(),
        "secret-free\n"
    );
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// F2 (review of 64dd67c): a 15 TiB sparse file in the guest made `workspace_diff` grow
/// without bound and abort the server. Now the transfer stops at the limit with a clear
/// error, the server lives on, big files are compared by hash (binary), and exports of big
/// sparse files stay sparse and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_cannot_exhaust_the_servers_memory() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().canonicalize().unwrap();
    let s = start_env(
        "workspace-core",
        &[&root],
        Path::new("/"),
        &[],
        &[
            ("PYRO_MAX_DIFF_BYTES", "33554432"),
            ("PYRO_MAX_EXPORT_BYTES", "33554432"),
        ],
    )
    .await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    // Over the per-file threshold: compared by size and hash, shown as binary.
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "head -c 9437184 /dev/urandom > big.bin && printf 'x\\n' > small.txt"}),
    )
    .await;
    let d = s.ok("workspace_diff", json!({"workspace_id": id})).await;
    assert_eq!(d["summary"]["added"], 2, "{d}");
    let patch = d["patch"].as_str().unwrap();
    assert!(
        patch.contains("Binary files /dev/null and b/big.bin differ"),
        "{patch}"
    );
    assert!(patch.contains("+x"), "{patch}");

    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "truncate -s 15T huge"}),
    )
    .await;
    let e = s.err("workspace_diff", json!({"workspace_id": id})).await;
    assert!(e.contains("PYRO_MAX_DIFF_BYTES"), "{e}");
    let e = s
        .err(
            "workspace_export",
            json!({"workspace_id": id, "path": "huge", "output_path": "huge"}),
        )
        .await;
    assert!(e.contains("PYRO_MAX_EXPORT_BYTES"), "{e}");
    assert!(!root.join("huge").exists());
    // A sparse file under the limit arrives sparse.
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "rm huge && truncate -s 16M sparse && printf z >> sparse"}),
    )
    .await;
    s.ok(
        "workspace_export",
        json!({"workspace_id": id, "path": "sparse", "output_path": "sparse"}),
    )
    .await;
    let m = std::fs::metadata(root.join("sparse")).unwrap();
    assert_eq!(m.len(), (16 << 20) + 1);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 1 << 20,
        "the export was not kept sparse"
    );
    // The server is alive and answers.
    let st = s.ok("workspace_status", json!({"workspace_id": id})).await;
    assert_eq!(st["state"], "started");
    // No spool is left in the workspace's directory.
    let dir = s._state.path().join("workspaces").join(&id);
    let spools: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(spools.is_empty(), "{spools:?}");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// Swaps two names atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths; the result is checked.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// F1, as another local user would race it: while exports into `race/…` run back to back, a
/// thread swaps `race` between a real directory and a symlink out of the root thousands of
/// times. Every export either lands inside the root or fails; nothing ever appears outside,
/// and no spool or staging directory is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_racing_a_directory_symlink_swap_stay_inside_the_root() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().canonicalize().unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("race")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("alt")).unwrap();
    let s = start("workspace-core", &[&root], Path::new("/")).await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "mkdir -p d/e && echo one > d/e/f && echo two > g"}),
    )
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = {
        let stop = stop.clone();
        let (a, b) = (root.join("race"), root.join("alt"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                exchange(&a, &b);
                n += 1;
                if n.is_multiple_of(64) {
                    std::thread::yield_now();
                }
            }
            n
        })
    };
    let (mut landed, mut refused) = (0, 0);
    for i in 0..24 {
        let (path, out) = if i % 2 == 0 {
            ("d", format!("race/dir{i}"))
        } else {
            ("g", format!("race/sub{i}/file"))
        };
        let r = s
            .call(
                "workspace_export",
                json!({"workspace_id": id, "path": path, "output_path": out}),
            )
            .await;
        if r.is_error == Some(true) {
            refused += 1;
        } else {
            landed += 1;
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "export {i} wrote outside the root"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = swaps.join().unwrap();
    assert!(n > 100, "only {n} swaps");
    assert_eq!(landed + refused, 24);
    // Whatever landed is inside the root; nothing of the exports is left behind.
    let real = if std::fs::symlink_metadata(root.join("race"))
        .unwrap()
        .is_dir()
    {
        root.join("race")
    } else {
        root.join("alt")
    };
    let mut names: Vec<String> = std::fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), landed, "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with(".pyro-export-")),
        "{names:?}"
    );
    let ws_dir = s._state.path().join("workspaces").join(&id);
    let spools = std::fs::read_dir(&ws_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".spool")
        })
        .count();
    assert_eq!(spools, 0);
    eprintln!("{n} swaps; {landed} exports landed inside the root, {refused} refused");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// The issue's case: a service whose readiness takes five minutes, started through MCP by a
/// client that asked for progress. The call is answered (nothing in pyro or the transport
/// gives up at 60 s, as the reference did), progress arrives all along, and a service that
/// fails is a tool error carrying its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_minute_readiness_wait_is_answered_with_progress_all_along() {
    let work = tempfile::tempdir().unwrap();
    let s = start("workspace-full", &[], work.path()).await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();

    let failed = s
        .err(
            "service_start",
            json!({"workspace_id": id, "service_name": "crash",
                   "command": "echo boom >&2; exit 7", "ready_file": "never"}),
        )
        .await;
    assert!(
        failed.contains("exited before it was ready (exit code 7)"),
        "{failed}"
    );
    assert!(failed.contains("boom"), "{failed}");
    assert!(
        failed.contains("\"stop_reason\":\"process_exited_before_ready\""),
        "{failed}"
    );

    let mut p = params(
        "service_start",
        json!({"workspace_id": id, "service_name": "slow",
               "command": "sleep 300; touch ready; exec sleep 600",
               "ready_file": "ready", "ready_timeout_seconds": 420,
               "ready_interval_ms": 1000}),
    );
    p.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
        NumberOrString::Number(11),
    )));
    let started = Instant::now();
    let r = s.client.peer().call_tool_once(p).await.unwrap();
    let CallToolResponse::Complete(r) = r else {
        panic!("unexpected response {r:?}")
    };
    s.check("service_start", &r);
    let waited = started.elapsed();
    let info = r.structured_content.unwrap();
    assert_eq!(info["state"], "running", "{info}");
    let ready_after = info["ready_at"].as_f64().unwrap() - info["started_at"].as_f64().unwrap();
    assert!(ready_after >= 300.0, "ready after {ready_after} s");
    assert!(waited >= Duration::from_secs(300), "{waited:?}");
    let waiting: Vec<String> = s
        .progress()
        .into_iter()
        .filter_map(|p| p.message)
        .filter(|m| m.contains("slow: waiting for readiness"))
        .collect();
    // At most every 2 s while it waited (the server's pace): well over 100 in 300 s.
    assert!(
        waiting.len() >= 100,
        "{} progress messages: {waiting:?}",
        waiting.len()
    );
    let stopped = s
        .ok(
            "service_stop",
            json!({"workspace_id": id, "service_name": "slow"}),
        )
        .await;
    assert_eq!(stopped["stop_reason"], "sigterm");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// `pyro mcp serve` on stdio driven by hand: raw lines in, JSON lines out, for what no SDK
/// client would send.
struct RawServer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Answers read while waiting for another id.
    early: Vec<Value>,
    _state: tempfile::TempDir,
}

impl RawServer {
    /// Started and initialized.
    async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        let state = tempfile::Builder::new()
            .prefix("pyro-mcp-raw-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(state.path().join("server.log")).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyro"))
            .args(["mcp", "serve", "--profile", "workspace-full"])
            .current_dir(state.path())
            .env("PYRO_STATE_DIR", state.path())
            .env("PYRO_LOG", "info")
            .env_remove("PYRO_BACKEND")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Self {
            child,
            stdin,
            lines,
            early: Vec::new(),
            _state: state,
        };
        s.send_json(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        )
        .await;
        let init = s.answer(json!(0)).await;
        assert!(init["result"]["serverInfo"].is_object(), "{init}");
        s.send_json(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        s
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn send_json(&mut self, v: Value) {
        self.send(v.to_string().as_bytes()).await;
    }

    /// The answer with this `id` (responses come in completion order).
    async fn answer(&mut self, id: Value) -> Value {
        if let Some(i) = self.early.iter().position(|v| v["id"] == id) {
            return self.early.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no answer with id {id} in 30 s"))
                .unwrap()
                .expect("the server closed its output");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("method").is_some() {
                continue; // a notification
            }
            if v["id"] == id {
                return v;
            }
            self.early.push(v);
        }
    }

    /// The error of the answer with this id: code and message.
    async fn error(&mut self, id: Value) -> (i64, String) {
        let v = self.answer(id).await;
        let e = &v["error"];
        assert!(e.is_object(), "not an error: {v}");
        (
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap().to_string(),
        )
    }
}

/// Regression test: rmcp's stdio transport answered nothing to a line that is not JSON or
/// one over 16 MiB, answered a message of the wrong shape without its id, and took bad
/// `tools/call` params for an unknown method (-32601).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_on_stdio_are_answered_with_their_code_and_id() {
    let mut s = RawServer::start().await;
    s.send(b"this is not json").await;
    let (code, _) = s.error(Value::Null).await;
    assert_eq!(code, -32700);

    let bad = [
        (
            1,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}),
            -32602,
        ),
        (
            2,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "vm_run", "arguments": "x"}}),
            -32602,
        ),
        (
            3,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": [1]}),
            -32602,
        ),
        (
            4,
            json!({"jsonrpc": "1.0", "id": 4, "method": "ping"}),
            -32600,
        ),
        (5, json!({"jsonrpc": "2.0", "id": 5, "method": 17}), -32600),
        (
            6,
            json!({"jsonrpc": "2.0", "id": 6, "method": "no/such/method"}),
            -32601,
        ),
    ];
    for (id, msg, _) in &bad {
        let _ = id;
        s.send_json(msg.clone()).await;
    }
    for (id, msg, code) in bad {
        let (got, message) = s.error(json!(id)).await;
        assert_eq!(got, code, "{msg}: {message}");
    }

    // Over the 24 MiB limit: refused with the id found in its first bytes.
    let mut huge = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"workspace_file_write","arguments":{"workspace_id":"0123456789ab","path":"a","text":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 25 << 20));
    huge.extend_from_slice(b"\"}}}");
    s.send(&huge).await;
    let (code, message) = s.error(json!(7)).await;
    assert_eq!(code, -32600, "{message}");
    assert!(message.contains("limit"), "{message}");

    // 16 MiB of content (the file write limit) is taken: the call reaches the core.
    let mut big = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"workspace_file_write","arguments":{"workspace_id":"0123456789ab","path":"a","text":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 16 << 20));
    big.extend_from_slice(b"\"}}}");
    s.send(&big).await;
    let r = s.answer(json!(8)).await;
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("[not_found]"), "{r}");

    // Still serving.
    s.send_json(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}))
        .await;
    assert!(s.answer(json!(9)).await["result"].is_object());
    drop(s.stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Regression tests: an unknown tool's name was echoed twice; a 1 MiB command was a
/// `[runtime]` frame-limit error; errors echoed unbounded input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_arguments_are_invalid_input_and_errors_stay_small() {
    let mut s = RawServer::start().await;
    let call = |id: i64, name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}})
    };
    let huge = "y".repeat(1 << 20);
    let cases = [
        (call(1, "no_such_tool", json!({})), "no such tool"),
        (call(2, &huge, json!({})), "no such tool"),
        (
            call(
                3,
                "workspace_exec",
                json!({"workspace_id": "0123456789ab", "command": huge}),
            ),
            "[invalid_input]: invalid command",
        ),
        (
            call(
                4,
                "vm_run",
                json!({"environment": "debian:12", "command": huge}),
            ),
            "[invalid_input]: invalid command",
        ),
        (
            call(
                5,
                "shell_write",
                json!({"workspace_id": "w", "shell_id": "s", "input": huge}),
            ),
            "[invalid_input]: invalid input",
        ),
        (
            call(6, "workspace_status", json!({"workspace_id": huge})),
            "[not_found]",
        ),
        (
            call(
                7,
                "workspace_file_read",
                json!({"workspace_id": "0123456789ab", "path": huge}),
            ),
            "[not_found]",
        ),
        (
            call(
                8,
                "vm_run",
                json!({"environment": "debian:12", "command": "true", "vcpu_count": huge}),
            ),
            "[invalid_input]",
        ),
        (
            call(
                9,
                "workspace_exec",
                json!({"workspace_id": "0123456789ab", "command": [huge]}),
            ),
            "[invalid_input]",
        ),
    ];
    for (msg, _) in &cases {
        s.send_json(msg.clone()).await;
    }
    for (msg, want) in cases {
        let id = msg["id"].clone();
        let r = s.answer(id.clone()).await;
        assert_eq!(r["result"]["isError"], json!(true), "{id}: {r:.300}");
        let text = r["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(want), "{id}: {text:.600}");
        assert!(
            text.len() < 2_000,
            "{id}: {} bytes: {text:.600}",
            text.len()
        );
        if id == json!(1) {
            assert_eq!(text.matches("no_such_tool").count(), 1, "{text}");
        }
    }
}

/// One HTTP/1.1 POST to `addr` over a fresh connection: the status and the body.
async fn http_post(addr: &str, body: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    // Written beside the read: the server may answer a body it refuses before reading it.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        let _ = wr.flush().await;
        wr
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut raw))
        .await
        .expect("no HTTP answer in 60 s")
        .ok();
    writer.abort();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:.300}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Regression test: over HTTP rmcp answered a non-JSON body with 415 and a body over 4 MiB
/// with 413, both in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_bodies_get_json_rpc_errors() {
    use tokio::io::AsyncBufReadExt;
    let state = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pyro"))
        .args(["mcp", "serve", "--http", "127.0.0.1:0"])
        .current_dir(state.path())
        .env("PYRO_STATE_DIR", state.path())
        .env_remove("PYRO_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), err.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the server exited");
        if let Some(url) = line.split("listening on http://").nth(1) {
            break url.trim_end_matches("/mcp").to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });

    let (status, body) = http_post(&addr, b"this is not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32700), Value::Null)
    );

    let bad = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 5}});
    let (status, body) = http_post(&addr, bad.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32602), json!(3))
    );

    let (status, body) = http_post(&addr, br#"{"jsonrpc":"2.0","id":4}"#.to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32600), json!(4))
    );

    // 5 MiB (over rmcp's 4 MiB) is taken: an initialize with a large `_meta`.
    let pad = "p".repeat(5 << 20);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}, "_meta": {"pad": pad}}});
    let (status, body) = http_post(&addr, init.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body:.300}");
    assert!(body.contains("serverInfo"), "{body:.300}");

    // Over 24 MiB: 413 with a JSON-RPC error carrying the id.
    let mut huge = br#"{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 25 << 20));
    huge.extend_from_slice(b"\"}}");
    let (status, body) = http_post(&addr, huge).await;
    assert_eq!(status, 413, "{body:.300}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32600), json!(5))
    );
}

/// Regression test: `notifications/cancelled` for a running `workspace_exec` did not stop it;
/// the command ran to its end in the guest.
// Through QEMU's relay: the relay watches for the client's reset while the command is
// silent (it used to notice only when the guest next printed something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_exec_is_killed_in_the_guest() {
    let work = tempfile::tempdir().unwrap();
    let s = start("workspace-core", &[], work.path()).await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let call =
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params(
            "workspace_exec",
            json!({"workspace_id": id, "command": "sleep 35; touch /workspace/done"}),
        )));
    let handle = s
        .client
        .peer()
        .send_cancellable_request(call, rmcp::service::PeerRequestOptions::no_options())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeping(&s, &id).await == 0 {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    handle.cancel(Some("test".into())).await.unwrap();
    let cancelled = Instant::now();
    loop {
        if sleeping(&s, &id).await == 0 {
            break;
        }
        assert!(
            cancelled.elapsed() < Duration::from_secs(20),
            "`sleep 35` still runs in the guest 20 s after the call was cancelled; server log:\n{}",
            std::fs::read_to_string(s._state.path().join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": "test -e /workspace/done && echo yes || echo no"}),
        )
        .await;
    assert_eq!(r["stdout"], "no\n");
    // The activity says the call was cancelled.
    let sum = s.ok("workspace_summary", json!({"workspace_id": id})).await;
    let events = sum["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "exec_cancelled"
                && e["detail"].as_str().unwrap().contains("sleep 35")),
        "{sum}"
    );
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// How many processes of workspace `id` have a command line starting with `sleep 35`.
async fn sleeping(s: &Server, id: &str) -> u32 {
    // One process (a loop forking `tr` per process took seconds under a loaded TCG guest).
    let count = "grep -las '^sleep' /proc/[0-9]*/cmdline | wc -l";
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": count}),
        )
        .await;
    r["stdout"].as_str().unwrap().trim().parse().unwrap()
}

/// `--project-path` and `--repo-url/--repo-ref`: a `workspace_create` without `seed_path`
/// is seeded from the project (tracked files of the work tree, or a clean clone at a ref)
/// and says where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_seeds_workspaces_created_without_a_seed_path() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "committed\n").unwrap();
    git(&["add", "README.md"]);
    git(&["commit", "-q", "-m", "first"]);
    git(&["tag", "v1"]);
    let head = git(&["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(repo.join("README.md"), "edited, not committed\n").unwrap();
    std::fs::write(repo.join("scratch.txt"), "untracked\n").unwrap();

    let repo_arg = repo.to_str().unwrap().to_string();
    let s = start_with(
        "workspace-core",
        &[],
        work.path(),
        &["--project-path", &repo_arg],
    )
    .await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["workspace_seed"]["origin_kind"], "project_path", "{w}");
    assert_eq!(w["workspace_seed"]["origin_ref"], head.as_str());
    let r = s
        .ok(
            "workspace_file_read",
            json!({"workspace_id": id, "path": "README.md"}),
        )
        .await;
    assert_eq!(r["content"], "edited, not committed\n");
    let listed = s
        .ok("workspace_file_list", json!({"workspace_id": id}))
        .await;
    assert!(!listed.to_string().contains("scratch.txt"), "{listed}");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
    drop(s);

    let url = format!("file://{}", repo.display());
    let s = start_with(
        "workspace-core",
        &[],
        work.path(),
        &["--repo-url", &url, "--repo-ref", "v1"],
    )
    .await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["workspace_seed"]["origin_kind"], "repo_url", "{w}");
    assert_eq!(w["workspace_seed"]["origin_ref"], head.as_str());
    let r = s
        .ok(
            "workspace_file_read",
            json!({"workspace_id": id, "path": "README.md"}),
        )
        .await;
    assert_eq!(r["content"], "committed\n");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_reset_and_fork_through_tools() {
    let work = tempfile::tempdir().unwrap();
    let s = start("workspace-full", &[], work.path()).await;
    let w = s
        .ok("workspace_create", json!({"environment": "debian:12"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "echo one > a.txt"}),
    )
    .await;
    let r = s
        .ok(
            "snapshot_create",
            json!({"workspace_id": id, "snapshot_name": "s1"}),
        )
        .await;
    assert_eq!(r["snapshot"]["has_memory"], true, "{r}");
    s.ok(
        "workspace_exec",
        json!({"workspace_id": id, "command": "echo two > a.txt"}),
    )
    .await;
    let w = s
        .ok(
            "workspace_reset",
            json!({"workspace_id": id, "snapshot": "s1"}),
        )
        .await;
    assert_eq!(w["metadata"]["boot_mode"], "snapshot", "{w}");
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": "cat a.txt"}),
        )
        .await;
    assert_eq!(r["stdout"], "one\n");
    let f = s
        .ok(
            "workspace_fork",
            json!({"workspace_id": id, "snapshot": "s1"}),
        )
        .await;
    let fork = f["workspaces"][0]["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": fork, "command": "cat a.txt"}),
        )
        .await;
    assert_eq!(r["stdout"], "one\n");
    let l = s.ok("snapshot_list", json!({"workspace_id": id})).await;
    assert_eq!(l["count"], 2, "{l}");
    let err = s
        .err(
            "snapshot_delete",
            json!({"workspace_id": id, "snapshot_name": "baseline"}),
        )
        .await;
    assert!(err.contains("[invalid_input]"), "{err}");
    let err = s
        .err("workspace_fork", json!({"workspace_id": id, "count": 99}))
        .await;
    assert!(err.contains("count"), "{err}");
    s.ok(
        "snapshot_delete",
        json!({"workspace_id": id, "snapshot_name": "s1"}),
    )
    .await;
    for w in [&id, &fork] {
        s.ok("workspace_delete", json!({"workspace_id": w})).await;
    }
    s.assert_clean().await;
}

/// The bytes of the JSON-RPC message that carries `r` (what a stdio client reads as one line).
fn message_bytes(r: &CallToolResult) -> usize {
    json!({"jsonrpc": "2.0", "id": 1_000_000, "result": r})
        .to_string()
        .len()
        + 1
}

/// Regression test (issue 14): 1 MiB of binary on each stream of a `vm_run`, or a 6 MiB file
/// read, made results over the 10 MiB a TypeScript client accepts, which closed its session.
/// Results now fit the budget (or, with an explicit size, the hard maximum), say they were
/// cut, and the call they name returns exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_fit_and_page_to_the_exact_bytes() {
    const TEN_MIB: usize = 10 * 1024 * 1024;
    let budget = pyro_mcp::budget::DEFAULT_BUDGET_BYTES;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().canonicalize().unwrap();
    let s = start("workspace-core", &[&root], &root).await;

    let r = s
        .call(
            "vm_run",
            json!({"environment": "debian:12-base",
                "command": "head -c 1048576 /dev/urandom; head -c 1048576 /dev/urandom >&2"}),
        )
        .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert!(message_bytes(&r) <= budget + 4096, "{}", message_bytes(&r));
    let v = r.structured_content.unwrap();
    assert_eq!(v["stdout_bytes"], 1_048_576);
    assert_eq!(v["stdout_truncated"], true);
    assert!(
        v["hint"]
            .as_str()
            .unwrap()
            .contains("run the command again"),
        "{v}"
    );
    let kept = pyro_core::base64_decode(v["stdout_base64"].as_str().unwrap()).unwrap();
    assert!(kept.len() > 20_000, "{}", kept.len());

    let w = s
        .ok("workspace_create", json!({"environment": "debian:12-base"}))
        .await;
    let id = w["workspace_id"].as_str().unwrap().to_string();
    // Text on stdout, binary on stderr, 1 MiB and more each.
    let r = s
        .call(
            "workspace_exec",
            json!({"workspace_id": id,
                "command": "seq 1 200000; head -c 1048576 /dev/urandom >&2; head -c 6291456 /dev/urandom > big.bin"}),
        )
        .await;
    assert!(message_bytes(&r) <= budget + 4096, "{}", message_bytes(&r));
    let v = r.structured_content.unwrap();
    assert_eq!(v["stdout_truncated"], true);
    let seq: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let next = &v["next"];
    assert_eq!(next["tool"], "workspace_logs", "{v}");
    let from = next["arguments"]["output_offset"].as_u64().unwrap() as usize;
    let shown = v["stdout"].as_str().unwrap();
    assert!(shown.starts_with(&seq[..from]));
    let r = s.call("workspace_logs", next["arguments"].clone()).await;
    assert!(message_bytes(&r) <= budget + 4096, "{}", message_bytes(&r));
    let logs = r.structured_content.unwrap();
    let rest = logs["entries"][0]["stdout"].as_str().unwrap();
    assert!(
        rest.len() > 10_000 && seq[from..].starts_with(rest),
        "{}",
        &rest[..100]
    );

    // The 6 MiB file: pages (default, then the hard maximum) hold exactly its bytes.
    s.ok(
        "workspace_export",
        json!({"workspace_id": id, "path": "big.bin", "output_path": "big.bin"}),
    )
    .await;
    let want = std::fs::read(root.join("big.bin")).unwrap();
    let mut got = Vec::new();
    let mut args = json!({"workspace_id": id, "path": "big.bin"});
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 5, "too many pages");
        let r = s.call("workspace_file_read", args.clone()).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        let bytes = message_bytes(&r);
        assert!(bytes < TEN_MIB, "{bytes}");
        let v = r.structured_content.unwrap();
        let page = match v["content_base64"].as_str() {
            Some(b) => pyro_core::base64_decode(b).unwrap(),
            None => v["content"].as_str().unwrap().as_bytes().to_vec(),
        };
        got.extend(page);
        let Some(next) = v.get("next") else {
            assert_eq!(v["truncated"], false);
            break;
        };
        assert_eq!(v["truncated"], true);
        assert!(
            v["hint"].as_str().unwrap().contains("offset="),
            "{}",
            v["hint"]
        );
        args = next["arguments"].clone();
        if calls == 1 {
            // The largest page a client may ask for.
            args["max_bytes"] = json!(pyro_mcp::budget::HARD_MAX_BYTES);
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the pages differ from the file");
    // Over the hard maximum: refused, naming the argument and the maximum.
    let e = s
        .err(
            "workspace_file_read",
            json!({"workspace_id": id, "path": "big.bin", "max_bytes": 16_777_216}),
        )
        .await;
    assert!(e.contains("max_bytes") && e.contains("8388608"), "{e}");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}

/// Regression test (issue 14): cancellation stops a `vm_run`'s command and deletes its VM,
/// and never leaves a lifecycle operation half done: a cancelled `workspace_create` runs to
/// its end (the workspace is `started`, usable, deletable), its answer unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_stop_commands_and_never_leave_half_a_workspace() {
    let work = tempfile::tempdir().unwrap();
    // Cold boots, so that a create is still under way when it is cancelled.
    let s = start_env(
        "workspace-core",
        &[],
        work.path(),
        &[],
        &[("PYRO_SNAPSHOTS", "0")],
    )
    .await;
    let send = |name: &str, args: Value| {
        let call = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(
            params(name, args),
        ));
        let peer = s.client.peer().clone();
        async move {
            peer.send_cancellable_request(call, rmcp::service::PeerRequestOptions::no_options())
                .await
                .unwrap()
        }
    };
    let running = || pyro_core::host::processes_with_cwd_in(s._state.path());
    let vm_dirs = || {
        std::fs::read_dir(s._state.path().join("vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // vm_run: wait until its VM runs the command, cancel, and the VM is gone long before
    // the command would have ended.
    let handle = send(
        "vm_run",
        json!({"environment": "debian:12-base", "command": "sleep 60"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running().is_empty() {
        assert!(Instant::now() < deadline, "the VM never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    handle.cancel(Some("test".into())).await.unwrap();
    let cancelled = Instant::now();
    while !running().is_empty() || vm_dirs() > 0 {
        assert!(
            cancelled.elapsed() < Duration::from_secs(8),
            "the VM of a cancelled vm_run is still there: processes {:?}, {} VM directories",
            running(),
            vm_dirs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // workspace_create, cancelled while it builds: it finishes whole.
    let handle = send("workspace_create", json!({"environment": "debian:12-base"})).await;
    // Cancelled once its machine runs (a boot takes seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    while running().is_empty() {
        assert!(Instant::now() < deadline, "the workspace's VM never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.cancel(Some("test".into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let id = loop {
        let l = s.ok("workspace_list", json!({})).await;
        if let Some(w) = l["workspaces"].as_array().unwrap().first() {
            assert_ne!(w["state"], "error", "{l}");
            if w["state"] == "started" {
                break w["workspace_id"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "no started workspace: {l}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let r = s
        .ok(
            "workspace_exec",
            json!({"workspace_id": id, "command": "echo whole"}),
        )
        .await;
    assert_eq!(r["stdout"], "whole\n");
    s.ok("workspace_delete", json!({"workspace_id": id})).await;
    s.assert_clean().await;
}
