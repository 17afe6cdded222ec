//! `pyro host connect|print-config|doctor|repair` against realistic client configs in a
//! temporary `HOME`: each client's real format round-trips, everything else in the file is
//! kept, a second run changes nothing, a broken file is refused and left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PYRO: &str = env!("CARGO_BIN_EXE_pyro");

/// A temporary home (also the working directory, for project scope).
struct Home {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pyro(&self, args: &[&str]) -> Output {
        Command::new(PYRO)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("CODEX_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env("PYRO_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pyro(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Backups of `file`.
    fn backups(&self, file: &Path) -> Vec<PathBuf> {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut v: Vec<PathBuf> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.pyro-backup-"))
            })
            .collect();
        v.sort();
        v
    }
}

fn this_pyro() -> String {
    std::fs::canonicalize(PYRO).unwrap().display().to_string()
}

fn args() -> serde_json::Value {
    serde_json::json!(["mcp", "serve", "--profile", "workspace-core"])
}

/// connect → entry there, rest kept, one backup; connect again → unchanged, no new backup.
fn round_trip(home: &Home, client: &str, file: &Path, extra: &[&str]) -> String {
    let before = std::fs::read_to_string(file).unwrap();
    let mut a = vec!["host", "connect", client, "--json"];
    a.extend_from_slice(extra);
    let r = home.ok_json(&a);
    assert_eq!(r["action"], "added", "{r}");
    assert_eq!(r["changed"], true);
    let backups = home.backups(file);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), before);
    let after = std::fs::read_to_string(file).unwrap();
    let again = home.ok_json(&a);
    assert_eq!(again["action"], "unchanged", "{again}");
    assert_eq!(again["changed"], false);
    assert_eq!(std::fs::read_to_string(file).unwrap(), after);
    assert_eq!(home.backups(file).len(), 1);
    after
}

const CLAUDE_JSON: &str = r#"{
  "numStartups": 42,
  "theme": "dark",
  "projects": {
    "/home/me/src/app": {
      "mcpServers": {},
      "allowedTools": []
    }
  },
  "mcpServers": {
    "github": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-github"],
      "env": {"GITHUB_TOKEN": "x"}
    }
  },
  "userID": "abc"
}
"#;

#[test]
fn claude_code_user_scope_round_trips_and_keeps_other_servers_and_keys() {
    let home = Home::new();
    let file = home.write(".claude.json", CLAUDE_JSON);
    let after = round_trip(&home, "claude-code", &file, &[]);
    let v: serde_json::Value = serde_json::from_str(&after).unwrap();
    let pyro = &v["mcpServers"]["pyro"];
    assert_eq!(pyro["type"], "stdio");
    assert_eq!(pyro["command"], this_pyro());
    assert_eq!(pyro["args"], args());
    assert_eq!(pyro["env"], serde_json::json!({}));
    assert_eq!(v["mcpServers"]["github"]["env"]["GITHUB_TOKEN"], "x");
    // Byte-identical apart from the added member: removing it gives the original back.
    let start = after.find(",\n    \"pyro\"").unwrap();
    let end = after[start..].find("\n    }").unwrap() + start + "\n    }".len();
    assert_eq!(format!("{}{}", &after[..start], &after[end..]), CLAUDE_JSON);
}

#[test]
fn claude_code_project_scope_writes_mcp_json() {
    let home = Home::new();
    let r = home.ok_json(&[
        "host",
        "connect",
        "claude-code",
        "--scope",
        "project",
        "--json",
    ]);
    assert_eq!(r["action"], "created");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.path(".mcp.json")).unwrap()).unwrap();
    assert_eq!(v["mcpServers"]["pyro"]["command"], this_pyro());
    assert!(home.backups(&home.path(".mcp.json")).is_empty());
}

const CODEX_TOML: &str = r#"# Codex settings
model = "o3"  # the good one
approval_policy = "on-request"

[mcp_servers.context7]
command = "npx"
args = ["-y", "@upstash/context7-mcp"]
startup_timeout_sec = 20

# profiles below
[profiles.fast]
model = "gpt-5-mini"
"#;

#[test]
fn codex_toml_round_trips_keeping_comments_and_tables() {
    let home = Home::new();
    let file = home.write(".codex/config.toml", CODEX_TOML);
    let after = round_trip(&home, "codex", &file, &[]);
    for line in CODEX_TOML.lines() {
        assert!(after.contains(line), "lost {line:?}:\n{after}");
    }
    assert!(after.starts_with("# Codex settings\nmodel = \"o3\"  # the good one\n"));
    assert!(
        after.contains(&format!(
            "[mcp_servers.pyro]\ncommand = \"{}\"\nargs = [\"mcp\", \"serve\", \"--profile\", \"workspace-core\"]\n",
            this_pyro()
        )),
        "{after}"
    );
}

#[test]
fn codex_honours_codex_home() {
    let home = Home::new();
    let codex_home = home.path("elsewhere");
    let out = Command::new(PYRO)
        .args(["host", "connect", "codex", "--json"])
        .env("HOME", home.dir.path())
        .env("CODEX_HOME", &codex_home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(codex_home.join("config.toml").is_file());
    assert!(!home.path(".codex/config.toml").exists());
}

const CURSOR_JSON: &str = "{\n\t\"mcpServers\": {\n\t\t\"playwright\": {\n\t\t\t\"command\": \"npx\",\n\t\t\t\"args\": [\"-y\", \"@playwright/mcp@latest\"]\n\t\t}\n\t},\n\t\"unknownKey\": true\n}\n";

#[test]
fn cursor_round_trips_with_the_files_own_indentation() {
    let home = Home::new();
    let file = home.write(".cursor/mcp.json", CURSOR_JSON);
    let after = round_trip(&home, "cursor", &file, &[]);
    assert!(after.starts_with(
        "{\n\t\"mcpServers\": {\n\t\t\"playwright\": {\n\t\t\t\"command\": \"npx\",\n\t\t\t\"args\": [\"-y\", \"@playwright/mcp@latest\"]\n\t\t},\n\t\t\"pyro\": {\n\t\t\t\"command\""
    ), "{after}");
    assert!(
        after.ends_with("\t},\n\t\"unknownKey\": true\n}\n"),
        "{after}"
    );
    let v: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(v["mcpServers"]["pyro"]["args"], args());
    assert!(v["mcpServers"]["pyro"].get("type").is_none());
}

const OPENCODE_JSONC: &str = r#"{
  "$schema": "https://opencode.ai/config.json",
  // my models
  "model": "anthropic/claude-sonnet-4-5",
  "mcp": {
    "everything": {
      "type": "local",
      "command": ["npx", "-y", "@modelcontextprotocol/server-everything"], // test server
    },
  },
}
"#;

#[test]
fn opencode_jsonc_keeps_comments_and_trailing_commas() {
    let home = Home::new();
    let file = home.write(".config/opencode/opencode.jsonc", OPENCODE_JSONC);
    let after = round_trip(&home, "opencode", &file, &[]);
    assert!(after.contains("// my models") && after.contains("// test server"));
    assert!(
        after.contains(&format!(
            "\"pyro\": {{\n      \"type\": \"local\",\n      \"command\": [\"{}\", \"mcp\", \"serve\", \"--profile\", \"workspace-core\"],\n      \"enabled\": true\n    }},",
            this_pyro()
        )),
        "{after}"
    );
    assert!(!home.path(".config/opencode/opencode.json").exists());
}

#[test]
fn a_broken_file_is_refused_and_left_alone() {
    let home = Home::new();
    for (client, rel, text) in [
        ("claude-code", ".claude.json", "{\"mcpServers\": {\n"),
        ("codex", ".codex/config.toml", "[mcp_servers\ncommand = 1\n"),
        ("cursor", ".cursor/mcp.json", "{\"mcpServers\": [] }"),
        (
            "opencode",
            ".config/opencode/opencode.json",
            "{ \"mcp\": { , } }",
        ),
    ] {
        let file = home.write(rel, text);
        let out = home.pyro(&["host", "connect", client]);
        assert_eq!(out.status.code(), Some(1), "{client}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&file.display().to_string()) && err.contains("nothing was written"),
            "{client}: {err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "{client}");
        assert!(home.backups(&file).is_empty(), "{client}");
        // repair refuses too.
        assert_eq!(
            home.pyro(&["host", "repair", client]).status.code(),
            Some(1)
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "{client}");
    }
}

#[test]
fn a_changed_entry_is_updated_keeping_the_users_own_members() {
    let home = Home::new();
    let file = home.write(
        ".claude.json",
        r#"{"mcpServers": {"pyro": {"command": "/old/pyro", "args": ["mcp", "serve"], "env": {"PYRO_CACHE_DIR": "/c"}}}}"#,
    );
    let r = home.ok_json(&[
        "host",
        "connect",
        "claude-code",
        "--profile",
        "vm-run",
        "--json",
    ]);
    assert_eq!(r["action"], "updated");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let pyro = &v["mcpServers"]["pyro"];
    assert_eq!(pyro["command"], this_pyro());
    assert_eq!(
        pyro["args"],
        serde_json::json!(["mcp", "serve", "--profile", "vm-run"])
    );
    assert_eq!(pyro["env"]["PYRO_CACHE_DIR"], "/c");
    assert_eq!(pyro["type"], "stdio");
}

#[test]
fn dry_run_writes_nothing() {
    let home = Home::new();
    let file = home.write(".cursor/mcp.json", CURSOR_JSON);
    let r = home.ok_json(&["host", "connect", "cursor", "--dry-run", "--json"]);
    assert_eq!(
        (r["action"].as_str(), r["changed"].as_bool()),
        (Some("added"), Some(true))
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CURSOR_JSON);
    assert!(home.backups(&file).is_empty());
}

#[test]
fn config_option_overrides_the_location_and_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = Home::new();
    let file = home.write("custom/my.json", "{}\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = home.ok_json(&[
        "host",
        "connect",
        "cursor",
        "--config",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["path"], file.display().to_string());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!home.path(".cursor/mcp.json").exists());
}

#[test]
fn print_config_parses_in_each_format() {
    let home = Home::new();
    for client in ["claude-code", "cursor", "opencode", "codex"] {
        let out = home.pyro(&[
            "host",
            "print-config",
            client,
            "--profile",
            "workspace-full",
        ]);
        assert!(out.status.success(), "{client}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (command, args): (String, Vec<String>) = match client {
            "codex" => {
                let doc: toml_edit::DocumentMut = text.parse().unwrap();
                let t = &doc["mcp_servers"]["pyro"];
                (
                    t["command"].as_str().unwrap().into(),
                    t["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                )
            }
            "opencode" => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["$schema"], "https://opencode.ai/config.json");
                let argv: Vec<String> =
                    serde_json::from_value(v["mcp"]["pyro"]["command"].clone()).unwrap();
                (argv[0].clone(), argv[1..].to_vec())
            }
            _ => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let p = &v["mcpServers"]["pyro"];
                (
                    p["command"].as_str().unwrap().into(),
                    serde_json::from_value(p["args"].clone()).unwrap(),
                )
            }
        };
        assert_eq!(command, this_pyro(), "{client}");
        assert_eq!(
            args,
            ["mcp", "serve", "--profile", "workspace-full"],
            "{client}"
        );
    }
    let bad = home.pyro(&["host", "print-config", "cursor", "--profile", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
}

fn finding<'a>(report: &'a serde_json::Value, client: &str) -> &'a serde_json::Value {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["client"] == client && f["scope"] == "user")
        .unwrap()
}

#[test]
fn doctor_reports_missing_ok_and_stale_and_repair_fixes_stale() {
    let home = Home::new();
    home.ok_json(&["host", "connect", "claude-code", "--json"]);
    home.write(
        ".cursor/mcp.json",
        r#"{"mcpServers": {"pyro": {"command": "/nonexistent/pyro", "args": ["mcp", "serve", "--profile", "vm-run"]}}}"#,
    );
    home.write(
        ".codex/config.toml",
        &format!(
            "[mcp_servers.pyro]\ncommand = \"{}\"\nargs = [\"serve\"]\n",
            this_pyro()
        ),
    );
    let out = home.pyro(&["host", "doctor", "--json", "--timeout-seconds", "60"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(finding(&r, "claude-code")["status"], "ok");
    assert_eq!(finding(&r, "opencode")["status"], "missing");
    let cursor = finding(&r, "cursor");
    assert_eq!(cursor["status"], "stale");
    assert!(
        cursor["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{cursor}"
    );
    let codex = finding(&r, "codex");
    assert_eq!(codex["status"], "stale");
    assert!(
        codex["detail"].as_str().unwrap().contains("mcp serve"),
        "{codex}"
    );
    // The configured server (claude-code's) starts and lists its tools.
    let servers = r["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{r}");
    assert_eq!(servers[0]["ok"], true, "{r}");
    assert_eq!(servers[0]["tools"], 17, "workspace-core's tools");

    // repair keeps the entry's profile.
    let fixed = home.ok_json(&["host", "repair", "cursor", "--json"]);
    assert_eq!(fixed["finding"]["status"], "stale");
    assert_eq!(fixed["action"], "updated");
    assert_eq!(
        fixed["args"],
        serde_json::json!(["mcp", "serve", "--profile", "vm-run"])
    );
    home.ok_json(&["host", "repair", "codex", "--json"]);
    let again = home.ok_json(&["host", "repair", "cursor", "--json"]);
    assert_eq!(again["action"], "unchanged");
    let out = home.pyro(&["host", "doctor", "--json", "--no-start"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{r}");
    for c in ["claude-code", "codex", "cursor"] {
        assert_eq!(finding(&r, c)["status"], "ok", "{c}: {r}");
    }
}

#[test]
fn doctor_calls_an_entry_running_another_binary_stale() {
    let home = Home::new();
    // An existing binary that is not pyro: stale, and no server check of it.
    home.write(
        ".cursor/mcp.json",
        r#"{"mcpServers": {"pyro": {"command": "/bin/true", "args": ["mcp", "serve"]}}}"#,
    );
    let out = home.pyro(&["host", "doctor", "--client", "cursor", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(finding(&r, "cursor")["status"], "stale");
    assert!(
        finding(&r, "cursor")["detail"]
            .as_str()
            .unwrap()
            .contains("not this pyro")
    );
}

#[test]
fn a_symlinked_config_is_written_through() {
    let home = Home::new();
    let real = home.write("dotfiles/cursor-mcp.json", CURSOR_JSON);
    std::fs::create_dir_all(home.path(".cursor")).unwrap();
    std::os::unix::fs::symlink(&real, home.path(".cursor/mcp.json")).unwrap();
    home.ok_json(&["host", "connect", "cursor", "--json"]);
    assert!(home.path(".cursor/mcp.json").is_symlink());
    assert!(std::fs::read_to_string(&real).unwrap().contains("\"pyro\""));
    assert_eq!(home.backups(&real).len(), 1);
}

/// `pyro prepare` and `pyro doctor --environment` against the shared cache, when it has
/// `debian:12` built and an agent is given (`PYRO_AGENT_BIN`); skipped otherwise, since
/// building an environment takes minutes.
#[test]
fn prepare_makes_an_environment_ready_and_doctor_says_so() {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return;
    };
    let cache = home.join(".cache/pyro");
    let agent = std::env::var_os("PYRO_AGENT_BIN");
    if !cache.join("environments/debian_12/manifest.json").is_file() || agent.is_none() {
        eprintln!("skipped: needs debian:12 in ~/.cache/pyro and PYRO_AGENT_BIN");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let empty_cache = tempfile::tempdir().unwrap();
    let pyro = |cache: &Path, snapshots: &str, args: &[&str]| {
        let out = Command::new(PYRO)
            .args(args)
            .env("PYRO_CACHE_DIR", cache)
            .env("PYRO_STATE_DIR", state.path())
            .env("PYRO_SNAPSHOTS", snapshots)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let prepared = pyro(&cache, "1", &["prepare", "debian:12", "--json"]);
    assert_eq!(prepared["state"], "ready", "{prepared}");
    let id = prepared["snapshot_id"].clone();
    let doctor = pyro(
        &cache,
        "1",
        &["doctor", "--environment", "debian:12", "--json"],
    );
    assert_eq!(doctor["environment"]["state"], "ready", "{doctor}");
    assert_eq!(doctor["environment"]["snapshot_id"], id);
    let off = pyro(
        &cache,
        "0",
        &["doctor", "--environment", "debian:12", "--json"],
    );
    assert_eq!(off["environment"]["state"], "cold", "{off}");
    let missing = pyro(
        empty_cache.path(),
        "1",
        &["doctor", "--environment", "debian:12", "--json"],
    );
    assert_eq!(missing["environment"]["state"], "missing", "{missing}");
    // Without --environment the report has no such field.
    let plain = pyro(&cache, "1", &["doctor", "--json"]);
    assert!(plain.get("environment").is_none());
}
