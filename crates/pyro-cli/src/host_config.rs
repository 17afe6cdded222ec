//! `pyro host`: write and check an MCP client's configuration for pyro.
//!
//! `connect CLIENT` merges one `pyro` server entry into the client's own config file, in the
//! client's own format; `print-config CLIENT` prints that entry; `doctor` checks every known
//! client's file and whether the configured `pyro mcp serve` answers `initialize` and
//! `tools/list`; `repair CLIENT` reruns `connect` where `doctor` finds the entry missing or
//! stale.
//!
//! The formats, as their documentation describes them (checked December 2026):
//!
//! | client | user scope | project scope | entry |
//! |---|---|---|---|
//! | Claude Code | `~/.claude.json` (root `mcpServers`, what `claude mcp add --scope user` writes) | `.mcp.json` | `"pyro": {"type": "stdio", "command", "args", "env": {}}` |
//! | Codex CLI | `$CODEX_HOME/config.toml`, default `~/.codex/config.toml` | `.codex/config.toml` (trusted projects) | `[mcp_servers.pyro]` with `command`, `args` |
//! | Cursor | `~/.cursor/mcp.json` | `.cursor/mcp.json` | `"mcpServers": {"pyro": {"command", "args"}}` |
//! | opencode | `$XDG_CONFIG_HOME/opencode/opencode.json` (default `~/.config/…`; `opencode.jsonc` when only that exists) | `opencode.json` (or `opencode.jsonc`) | `"mcp": {"pyro": {"type": "local", "command": [pyro, args…], "enabled": true}}` |
//!
//! Sources: code.claude.com/docs/en/mcp (scopes, `.mcp.json`), the Codex CLI's
//! `docs/config.md` (`[mcp_servers.<name>]`), cursor.com/docs/mcp, opencode.ai/docs/mcp-servers
//! and opencode.ai/docs/config (JSONC accepted).
//!
//! Edits keep everything else: a JSON file is edited in place, only the bytes of the `pyro`
//! member change ([`json_edit`]: key order, layout and, for opencode's JSONC, comments stay);
//! Codex's TOML goes through `toml_edit`, which keeps comments and the other tables. Within
//! an existing `pyro` entry only the members pyro manages (`command`, `args`, and `type` /
//! `enabled` where the format has them) are replaced; the user's own (`env`, timeouts) stay.
//! A file that does not parse is refused and left alone. A change is written atomically
//! (a temporary file in the same directory, renamed over the old one, with its mode), after
//! a copy of the old file to `<file>.pyro-backup-<unix time>`; a symlinked config is written
//! through to its target. A run that changes nothing writes nothing.

mod json_edit;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Failure, fail, input_err};

/// `pyro host …`.
#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add pyro's MCP server to a client's config (or bring its entry up to date).
    Connect(ConnectArgs),
    /// Print the config entry for a client, in its format, without writing anything.
    PrintConfig(PrintArgs),
    /// Check every known client's config and whether the configured server starts.
    Doctor(DoctorArgs),
    /// Fix a client's entry that `pyro host doctor` reports missing or stale.
    Repair(ConnectArgs),
}

/// The MCP clients pyro knows how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    /// Claude Code (`~/.claude.json`, `.mcp.json`).
    ClaudeCode,
    /// OpenAI Codex CLI (`~/.codex/config.toml`).
    Codex,
    /// Cursor (`~/.cursor/mcp.json`, `.cursor/mcp.json`).
    Cursor,
    /// opencode (`~/.config/opencode/opencode.json`, `opencode.json`).
    Opencode,
}

impl Client {
    const ALL: [Client; 4] = [
        Client::ClaudeCode,
        Client::Codex,
        Client::Cursor,
        Client::Opencode,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude-code",
            Client::Codex => "codex",
            Client::Cursor => "cursor",
            Client::Opencode => "opencode",
        }
    }

    /// The JSON keys leading to the servers' object (not used for Codex).
    fn container(self) -> &'static [&'static str] {
        match self {
            Client::Opencode => &["mcp"],
            _ => &["mcpServers"],
        }
    }
}

/// User-wide or per-project config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// The client's file in your home directory.
    #[default]
    User,
    /// The client's file in the current directory (the project root).
    Project,
}

/// Arguments of `connect` and `repair`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The client.
    client: Client,
    /// The tool profile the server offers (`repair`: the entry's own, else workspace-core).
    #[arg(long)]
    profile: Option<String>,
    /// Which of the client's files.
    #[arg(long, value_enum, default_value_t = Scope::User)]
    scope: Scope,
    /// Edit this file instead of the client's usual one.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Say what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Arguments of `print-config`.
#[derive(Args, Debug)]
pub struct PrintArgs {
    /// The client.
    client: Client,
    /// The tool profile.
    #[arg(long, default_value = "workspace-core")]
    profile: String,
}

/// Arguments of `doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Check only this client.
    #[arg(long)]
    client: Option<Client>,
    /// Check this file (with --client) instead of the client's usual ones.
    #[arg(long, value_name = "PATH", requires = "client")]
    config: Option<PathBuf>,
    /// Seconds to wait for each server's `initialize` and `tools/list`.
    #[arg(long, default_value_t = 15)]
    timeout_seconds: u64,
    /// Skip starting the configured servers.
    #[arg(long)]
    no_start: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs a `pyro host` command.
pub async fn run(cmd: HostCmd) -> Result<ExitCode, Failure> {
    match cmd {
        HostCmd::Connect(a) => {
            let json = a.json;
            connect_cmd(a, None).map_err(fail(json))
        }
        HostCmd::Repair(a) => {
            let json = a.json;
            repair_cmd(a).map_err(fail(json))
        }
        HostCmd::PrintConfig(a) => print_config(&a).map_err(fail(false)),
        HostCmd::Doctor(a) => {
            let json = a.json;
            doctor_cmd(a).await.map_err(fail(json))
        }
    }
}

// ------------------------------------------------------------------------ what to write

/// The server pyro configures: this binary, `mcp serve --profile P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Server {
    command: String,
    args: Vec<String>,
}

fn server(profile: &str) -> anyhow::Result<Server> {
    let profile: pyro_mcp::Profile = profile
        .parse()
        .map_err(|e| input_err(format!("--profile: {e}")))?;
    Ok(Server {
        command: this_binary()?.display().to_string(),
        args: ["mcp", "serve", "--profile", profile.as_str()]
            .map(String::from)
            .to_vec(),
    })
}

/// The absolute path of the running `pyro`.
fn this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the path of this pyro binary")?;
    Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
}

/// The JSON entry's members pyro manages, and those it adds only when missing.
/// JSON members, in order.
type Members = Vec<(String, Value)>;

/// A configured server's `command` and `args`, each `None` where absent or ill-typed.
type RawServer = (Option<String>, Option<Vec<String>>);

fn json_members(client: Client, s: &Server) -> (Members, Members) {
    let m = |k: &str, v: Value| (k.to_string(), v);
    match client {
        Client::ClaudeCode => (
            vec![
                m("type", json!("stdio")),
                m("command", json!(s.command)),
                m("args", json!(s.args)),
            ],
            vec![m("env", json!({}))],
        ),
        Client::Cursor => (
            vec![m("command", json!(s.command)), m("args", json!(s.args))],
            vec![],
        ),
        Client::Opencode => {
            let mut argv = vec![s.command.clone()];
            argv.extend(s.args.iter().cloned());
            (
                vec![
                    m("type", json!("local")),
                    m("command", json!(argv)),
                    m("enabled", json!(true)),
                ],
                vec![],
            )
        }
        Client::Codex => (vec![], vec![]),
    }
}

/// A whole config file holding only the entry (a new file, and `print-config`).
fn fresh_file(client: Client, s: &Server) -> String {
    if client == Client::Codex {
        let mut doc = toml_edit::DocumentMut::new();
        // Cannot fail on an empty document.
        let _ = toml_upsert(&mut doc, s);
        return doc.to_string();
    }
    let (managed, defaults) = json_members(client, s);
    let entry = json_edit::Tree::Object(
        managed
            .into_iter()
            .chain(defaults)
            .map(|(k, v)| (k, json_edit::Tree::Leaf(v)))
            .collect(),
    );
    let mut tree = json_edit::Tree::Object(vec![("pyro".into(), entry)]);
    for k in client.container().iter().rev() {
        tree = json_edit::Tree::Object(vec![(k.to_string(), tree)]);
    }
    if client == Client::Opencode
        && let json_edit::Tree::Object(members) = &mut tree
    {
        members.insert(
            0,
            (
                "$schema".into(),
                json_edit::Tree::Leaf(json!("https://opencode.ai/config.json")),
            ),
        );
    }
    format!("{}\n", tree.render("", "  "))
}

/// Adds or updates `[mcp_servers.pyro]`; false when it was already as wanted.
fn toml_upsert(doc: &mut toml_edit::DocumentMut, s: &Server) -> anyhow::Result<bool> {
    use toml_edit::{Array, Item, Table, value};
    let args: Array = s.args.iter().map(String::as_str).collect();
    let servers = doc.entry("mcp_servers").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    let inline = servers.is_inline_table();
    let Some(servers) = servers.as_table_like_mut() else {
        bail!("`mcp_servers` is not a table");
    };
    let Some(entry) = servers.get_mut("pyro") else {
        let mut t = Table::new();
        t.insert("command", value(s.command.as_str()));
        t.insert("args", value(args));
        let item = if inline {
            Item::Value(toml_edit::Value::InlineTable(t.into_inline_table()))
        } else {
            Item::Table(t)
        };
        servers.insert("pyro", item);
        return Ok(true);
    };
    let Some(entry) = entry.as_table_like_mut() else {
        bail!("`mcp_servers.pyro` is not a table");
    };
    let (command, current_args) = toml_server(entry);
    let mut changed = false;
    if command.as_deref() != Some(s.command.as_str()) {
        entry.insert("command", value(s.command.as_str()));
        changed = true;
    }
    if current_args.as_ref() != Some(&s.args) {
        entry.insert("args", value(args));
        changed = true;
    }
    Ok(changed)
}

/// `command` and `args` of a Codex server table (`None` where absent or ill-typed).
fn toml_server(t: &dyn toml_edit::TableLike) -> RawServer {
    let command = t.get("command").and_then(|c| c.as_str()).map(String::from);
    let args = t.get("args").and_then(|a| a.as_array()).and_then(|a| {
        a.iter()
            .map(|v| v.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
    });
    (command, args)
}

// ------------------------------------------------------------------------ where

/// The client's config file for `scope` (`--config` wins).
fn config_path(client: Client, scope: Scope, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let home = || -> anyhow::Result<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                anyhow!("HOME is not set: cannot find the user's config; give --config PATH")
            })
    };
    let cwd = || std::env::current_dir().context("cannot read the current directory");
    let env_dir = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let json_or_jsonc = |dir: PathBuf| {
        let json = dir.join("opencode.json");
        let jsonc = dir.join("opencode.jsonc");
        if !json.exists() && jsonc.exists() {
            jsonc
        } else {
            json
        }
    };
    Ok(match (client, scope) {
        (Client::ClaudeCode, Scope::User) => home()?.join(".claude.json"),
        (Client::ClaudeCode, Scope::Project) => cwd()?.join(".mcp.json"),
        (Client::Codex, Scope::User) => match env_dir("CODEX_HOME") {
            Some(d) => d.join("config.toml"),
            None => home()?.join(".codex").join("config.toml"),
        },
        (Client::Codex, Scope::Project) => cwd()?.join(".codex").join("config.toml"),
        (Client::Cursor, Scope::User) => home()?.join(".cursor").join("mcp.json"),
        (Client::Cursor, Scope::Project) => cwd()?.join(".cursor").join("mcp.json"),
        (Client::Opencode, Scope::User) => {
            let base = match env_dir("XDG_CONFIG_HOME") {
                Some(d) => d,
                None => home()?.join(".config"),
            };
            json_or_jsonc(base.join("opencode"))
        }
        (Client::Opencode, Scope::Project) => json_or_jsonc(cwd()?),
    })
}

/// Whether the file is read as JSONC (comments, trailing commas).
fn is_jsonc(client: Client) -> bool {
    client == Client::Opencode
}

// ------------------------------------------------------------------------ connect

/// What `connect` did.
#[derive(Debug, Serialize)]
struct ConnectReport {
    client: Client,
    scope: Scope,
    path: String,
    /// `created` (new file), `added` (entry added), `updated`, or `unchanged`.
    action: &'static str,
    changed: bool,
    dry_run: bool,
    backup: Option<String>,
    command: String,
    args: Vec<String>,
    /// `repair` only: what doctor found before.
    #[serde(skip_serializing_if = "Option::is_none")]
    finding: Option<Finding>,
}

/// Reads the file; `None` when it does not exist.
fn read_config(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| anyhow!("{} is not UTF-8 text; not touching it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("cannot read {}", path.display()))),
    }
}

/// The file's new text, or `None` when it already has the wanted entry.
fn merged(
    client: Client,
    path: &Path,
    old: Option<&str>,
    s: &Server,
) -> anyhow::Result<Option<String>> {
    let Some(old) = old.filter(|t| !t.trim().is_empty()) else {
        return Ok(Some(fresh_file(client, s)));
    };
    let refused = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{}: {e}; fix or move the file, then run this again (nothing was written)",
            path.display()
        )
    };
    if client == Client::Codex {
        let mut doc: toml_edit::DocumentMut = old.parse().map_err(|e: toml_edit::TomlError| {
            refused(&format!("not valid TOML: {}", e.to_string().trim_end()))
        })?;
        let changed = toml_upsert(&mut doc, s).map_err(|e| refused(&e))?;
        return Ok(changed.then(|| doc.to_string()));
    }
    let (managed, defaults) = json_members(client, s);
    let entry = json_edit::Entry {
        container: client.container(),
        name: "pyro",
        managed,
        defaults,
    };
    json_edit::upsert(old, is_jsonc(client), &entry).map_err(|e| refused(&e))
}

fn connect_cmd(a: ConnectArgs, finding: Option<Finding>) -> anyhow::Result<ExitCode> {
    let profile = a.profile.as_deref().unwrap_or("workspace-core");
    let s = server(profile)?;
    let path = config_path(a.client, a.scope, a.config.as_deref())?;
    // A symlinked config (dotfile managers) is edited at its target.
    let target = if path.is_symlink() {
        std::fs::canonicalize(&path)
            .with_context(|| format!("cannot resolve the symlink {}", path.display()))?
    } else {
        path.clone()
    };
    let old = read_config(&target)?;
    let new = merged(a.client, &path, old.as_deref(), &s)?;
    let action = match (&old, &new) {
        (_, None) => "unchanged",
        (None, Some(_)) => "created",
        (Some(o), Some(_)) if o.trim().is_empty() => "created",
        (Some(o), Some(_)) => {
            if has_entry(a.client, &path, o).unwrap_or(false) {
                "updated"
            } else {
                "added"
            }
        }
    };
    let mut backup = None;
    if let (Some(new), false) = (&new, a.dry_run) {
        if let Some(old) = &old {
            backup = Some(write_backup(&target, old)?);
        }
        write_atomic(&target, new)?;
    }
    let report = ConnectReport {
        client: a.client,
        scope: a.scope,
        path: path.display().to_string(),
        action,
        changed: new.is_some(),
        dry_run: a.dry_run,
        backup: backup.map(|b| b.display().to_string()),
        command: s.command,
        args: s.args,
        finding,
    };
    if a.json {
        crate::render::print_json(&report);
    } else {
        if let Some(f) = &report.finding {
            println!("found: {} ({})", f.status.as_str(), f.detail);
        }
        let would = if a.dry_run && report.changed {
            "would be "
        } else {
            ""
        };
        let what = match action {
            "unchanged" => "pyro is already configured; nothing to change",
            "created" => "created with the pyro server",
            "added" => "pyro server added",
            _ => "pyro server updated",
        };
        println!("{}: {} {would}{what}", a.client.as_str(), report.path);
        if let Some(b) = &report.backup {
            println!("backup: {b}");
        }
        if report.changed {
            println!("server: {} {}", report.command, report.args.join(" "));
            if !a.dry_run {
                println!(
                    "restart {} (or reload its MCP servers) to use it",
                    a.client.as_str()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the text has a `pyro` entry at all.
fn has_entry(client: Client, path: &Path, text: &str) -> anyhow::Result<bool> {
    Ok(read_entry(client, path, text)?.is_some())
}

/// Copies the old file next to it as `<file>.pyro-backup-<unix time>` (a new name), with
/// its mode.
fn write_backup(target: &Path, old: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mode = std::fs::metadata(target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..100 {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let backup = target.with_file_name(format!("{name}.pyro-backup-{secs}{suffix}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&backup)
        {
            Ok(mut f) => {
                f.write_all(old.as_bytes())
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("cannot write the backup {}", backup.display()))?;
                return Ok(backup);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "cannot create the backup {}; nothing was written",
                    backup.display()
                )));
            }
        }
    }
    bail!("too many backups of {} this second", target.display())
}

/// Writes `text` to `path` through a temporary file renamed over it, keeping the old
/// file's mode; creates missing parent directories.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pyro-tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

fn print_config(a: &PrintArgs) -> anyhow::Result<ExitCode> {
    let s = server(&a.profile)?;
    print!("{}", fresh_file(a.client, &s));
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------ doctor

/// What doctor found in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// The entry runs this pyro with valid arguments.
    Ok,
    /// No file, or no `pyro` entry in it.
    Missing,
    /// An entry that points elsewhere or has wrong arguments.
    Stale,
    /// The file does not parse.
    Invalid,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Stale => "stale",
            Status::Invalid => "invalid",
        }
    }
}

/// Doctor's finding for one client file.
#[derive(Debug, Clone, Serialize)]
struct Finding {
    client: Client,
    scope: Scope,
    path: String,
    status: Status,
    detail: String,
    /// The configured server, when there is an entry.
    server: Option<Server>,
    /// The profile the entry's arguments name.
    profile: Option<String>,
}

/// The `pyro` entry's command and arguments, `Ok(None)` without an entry.
fn read_entry(client: Client, path: &Path, text: &str) -> anyhow::Result<Option<RawServer>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    if client == Client::Codex {
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
            anyhow!(
                "{}: not valid TOML: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        let Some(entry) = doc
            .get("mcp_servers")
            .and_then(|s| s.as_table_like())
            .and_then(|s| s.get("pyro"))
        else {
            return Ok(None);
        };
        let Some(t) = entry.as_table_like() else {
            return Ok(Some((None, None)));
        };
        return Ok(Some(toml_server(t)));
    }
    let root = json_edit::parse(text, is_jsonc(client))
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let mut cur = &root;
    for key in client.container() {
        match cur.member(key) {
            Some(m) => cur = &m.value,
            None => return Ok(None),
        }
    }
    let Some(m) = cur.member("pyro") else {
        return Ok(None);
    };
    let v = m.value.to_value();
    let strings = |v: &Value| {
        v.as_array().and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
        })
    };
    Ok(Some(match client {
        Client::Opencode => match strings(&v["command"]) {
            Some(argv) if !argv.is_empty() => (Some(argv[0].clone()), Some(argv[1..].to_vec())),
            _ => (None, None),
        },
        _ => (v["command"].as_str().map(String::from), strings(&v["args"])),
    }))
}

/// Checks one client file.
fn check(client: Client, scope: Scope, path: &Path, me: &Path) -> Finding {
    let mut f = Finding {
        client,
        scope,
        path: path.display().to_string(),
        status: Status::Missing,
        detail: String::new(),
        server: None,
        profile: None,
    };
    let text = match read_config(path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            f.detail = "no config file".into();
            return f;
        }
        Err(e) => {
            f.status = Status::Invalid;
            f.detail = format!("{e:#}");
            return f;
        }
    };
    let (command, args) = match read_entry(client, path, &text) {
        Ok(Some(e)) => e,
        Ok(None) => {
            f.detail = "no pyro entry".into();
            return f;
        }
        Err(e) => {
            f.status = Status::Invalid;
            f.detail = format!("{e:#}");
            return f;
        }
    };
    f.status = Status::Stale;
    let (Some(command), Some(args)) = (command, args) else {
        f.detail = "the pyro entry has no command or arguments pyro can read".into();
        return f;
    };
    f.server = Some(Server {
        command: command.clone(),
        args: args.clone(),
    });
    let profile = args
        .iter()
        .position(|a| a == "--profile")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--profile=").map(String::from))
        });
    f.profile = profile.clone();
    let resolved = resolve_command(&command);
    let problems: Vec<String> = [
        match &resolved {
            None => Some(format!("command `{command}` does not exist")),
            Some(p) if p != me => Some(format!(
                "command `{command}` is {}, not this pyro ({})",
                p.display(),
                me.display()
            )),
            Some(_) => None,
        },
        (args.get(..2) != Some(&["mcp".to_string(), "serve".to_string()][..])).then(|| {
            format!(
                "arguments `{}` do not start with `mcp serve`",
                args.join(" ")
            )
        }),
        match &profile {
            Some(p) if p.parse::<pyro_mcp::Profile>().is_err() => {
                Some(format!("unknown profile `{p}`"))
            }
            _ => None,
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        f.status = Status::Ok;
        f.detail = format!("{command} {}", args.join(" "));
    } else {
        f.detail = problems.join("; ");
    }
    f
}

/// The file a configured command runs: itself when it has a `/`, else found on `PATH`;
/// canonical, `None` when there is none.
fn resolve_command(command: &str) -> Option<PathBuf> {
    let path = if command.contains('/') {
        PathBuf::from(command)
    } else {
        let dirs = std::env::var_os("PATH")?;
        std::env::split_paths(&dirs)
            .map(|d| d.join(command))
            .find(|p| p.is_file())?
    };
    path.is_file()
        .then(|| std::fs::canonicalize(&path).unwrap_or(path))
}

/// Whether a configured server starts and answers.
#[derive(Debug, Serialize)]
struct StartCheck {
    command: String,
    args: Vec<String>,
    ok: bool,
    detail: String,
    tools: Option<usize>,
    elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
struct HostReport {
    ok: bool,
    pyro: String,
    clients: Vec<Finding>,
    servers: Vec<StartCheck>,
}

async fn doctor_cmd(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let me = this_binary()?;
    let mut clients = Vec::new();
    let wanted: Vec<Client> = match a.client {
        Some(c) => vec![c],
        None => Client::ALL.to_vec(),
    };
    for client in wanted {
        if let Some(p) = &a.config {
            clients.push(check(client, Scope::User, p, &me));
            continue;
        }
        let user = config_path(client, Scope::User, None)?;
        clients.push(check(client, Scope::User, &user, &me));
        // A project file is reported when there is one (and it is not the user's file, as
        // in the home directory).
        let project = config_path(client, Scope::Project, None)?;
        if project.exists() && project != user {
            clients.push(check(client, Scope::Project, &project, &me));
        }
    }
    let mut servers = Vec::new();
    if !a.no_start {
        let mut distinct: Vec<Server> = Vec::new();
        for f in &clients {
            if let Some(s) = &f.server
                && f.status == Status::Ok
                && !distinct.contains(s)
            {
                distinct.push(s.clone());
            }
        }
        if distinct.is_empty() {
            distinct.push(server("workspace-core")?);
        }
        for s in distinct.into_iter().take(4) {
            servers.push(start_check(&s, Duration::from_secs(a.timeout_seconds)).await);
        }
    }
    let ok = clients
        .iter()
        .all(|f| matches!(f.status, Status::Ok | Status::Missing))
        && servers.iter().all(|s| s.ok);
    let report = HostReport {
        ok,
        pyro: me.display().to_string(),
        clients,
        servers,
    };
    if a.json {
        crate::render::print_json(&report);
    } else {
        println!("pyro: {}", report.pyro);
        for f in &report.clients {
            println!(
                "[{}] {} ({}): {}: {}",
                f.status.as_str(),
                f.client.as_str(),
                match f.scope {
                    Scope::User => "user",
                    Scope::Project => "project",
                },
                f.path,
                f.detail
            );
        }
        for s in &report.servers {
            println!(
                "[{}] server {} {}: {}",
                if s.ok { "ok" } else { "FAIL" },
                s.command,
                s.args.join(" "),
                s.detail
            );
        }
        let fixable: Vec<&Finding> = report
            .clients
            .iter()
            .filter(|f| f.status == Status::Stale)
            .collect();
        for f in fixable {
            println!(
                "fix: pyro host repair {}{}",
                f.client.as_str(),
                if f.scope == Scope::Project {
                    " --scope project"
                } else {
                    ""
                }
            );
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts the server, sends `initialize`, `notifications/initialized` and `tools/list` on
/// its stdin, and waits for both answers.
async fn start_check(s: &Server, timeout: Duration) -> StartCheck {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(timeout, handshake(s)).await;
    let (ok, detail, tools) = match result {
        Ok(Ok(n)) => (
            true,
            format!("initialize and tools/list answered ({n} tools)"),
            Some(n),
        ),
        Ok(Err(e)) => (false, format!("{e:#}"), None),
        Err(_) => (
            false,
            format!(
                "no answer to initialize and tools/list within {} s",
                timeout.as_secs()
            ),
            None,
        ),
    };
    StartCheck {
        command: s.command.clone(),
        args: s.args.clone(),
        ok,
        detail,
        tools,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

async fn handshake(s: &Server) -> anyhow::Result<usize> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut child = tokio::process::Command::new(&s.command)
        .args(&s.args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", s.command))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("the server's pipes are missing");
    };
    // Keep the last lines of stderr for the report.
    let err_tail = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut tail = std::collections::VecDeque::new();
        while let Ok(Some(l)) = lines.next_line().await {
            if tail.len() == 3 {
                tail.pop_front();
            }
            tail.push_back(l);
        }
        tail.into_iter().collect::<Vec<_>>().join(" | ")
    });
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let send = |v: Value| format!("{v}\n");
    let answer = async {
        stdin
            .write_all(
                send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "pyro-host-doctor", "version": env!("CARGO_PKG_VERSION")}}}))
                .as_bytes(),
            )
            .await?;
        wait_for(&mut lines, 1).await?;
        stdin
            .write_all(send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).as_bytes())
            .await?;
        stdin
            .write_all(send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).as_bytes())
            .await?;
        let list = wait_for(&mut lines, 2).await?;
        anyhow::Ok(list["tools"].as_array().map_or(0, Vec::len))
    }
    .await;
    drop(stdin);
    let _ = child.start_kill();
    let _ = child.wait().await;
    match answer {
        Ok(n) => Ok(n),
        Err(e) => {
            let tail = err_tail.await.unwrap_or_default();
            if tail.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!("server stderr: {tail}")))
            }
        }
    }
}

/// The `result` of the response with this id; errors for an error response or EOF.
async fn wait_for(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    id: u64,
) -> anyhow::Result<Value> {
    while let Some(line) = lines.next_line().await? {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            bail!("the server wrote something that is not JSON-RPC on stdout: {line:.120}");
        };
        if v["id"] != json!(id) {
            continue;
        }
        if let Some(e) = v.get("error") {
            bail!("request {id} failed: {e}");
        }
        return Ok(v["result"].clone());
    }
    bail!("the server closed stdout before answering")
}

// ------------------------------------------------------------------------ repair

fn repair_cmd(mut a: ConnectArgs) -> anyhow::Result<ExitCode> {
    let me = this_binary()?;
    let path = config_path(a.client, a.scope, a.config.as_deref())?;
    let finding = check(a.client, a.scope, &path, &me);
    match finding.status {
        Status::Invalid => bail!("{}; not repairing (nothing was written)", finding.detail),
        Status::Ok if a.profile.is_none() => {
            if a.json {
                crate::render::print_json(&json!({
                    "client": a.client, "scope": a.scope, "path": finding.path,
                    "action": "unchanged", "changed": false, "finding": finding,
                }));
            } else {
                println!(
                    "{}: {}: ok, nothing to repair ({})",
                    a.client.as_str(),
                    finding.path,
                    finding.detail
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if a.profile.is_none() {
        // Keep the entry's profile when it names a real one.
        a.profile = finding
            .profile
            .clone()
            .filter(|p| p.parse::<pyro_mcp::Profile>().is_ok());
    }
    connect_cmd(a, Some(finding))
}
