//! `pyro workspace shell …` and `pyro workspace service …`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro_core::ops::defaults as d;
use pyro_core::workspace::{OpenShell, PortSpec, ReadShell, ReadinessSpec, StartService};
use pyro_core::{ServiceInfo, ShellInfo};

use crate::{Failure, fail, input_err, open_pyro, progress_unless, render};

#[derive(Subcommand, Debug)]
pub enum ShellCmd {
    /// Open an interactive PTY shell (bash) that lives until closed or the workspace stops.
    Open(ShellOpenArgs),
    /// Read a shell's output from a cursor (print the next cursor with --json or on stderr).
    Read(ShellReadArgs),
    /// Type into a shell.
    Write(ShellWriteArgs),
    /// Send a signal (HUP, INT, TERM, KILL) to a shell's process group.
    Signal(ShellSignalArgs),
    /// Change a shell's terminal size.
    Resize(ShellResizeArgs),
    /// End a shell (HUP, then KILL after 5 s).
    Close(ShellIdArgs),
    /// List a workspace's shells.
    List(WsOnly),
}

#[derive(Args, Debug)]
pub struct WsOnly {
    /// Workspace id.
    workspace_id: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShellOpenArgs {
    /// Workspace id.
    workspace_id: String,
    /// Working directory (must exist).
    #[arg(long, default_value = "/workspace")]
    cwd: String,
    /// Terminal columns.
    #[arg(long, default_value_t = d::SHELL_COLS)]
    cols: i64,
    /// Terminal rows.
    #[arg(long, default_value_t = d::SHELL_ROWS)]
    rows: i64,
    /// Give the shell a workspace secret as an environment variable (repeatable).
    #[arg(long = "secret-env", value_name = "SECRET[=ENV_VAR]")]
    secret_env: Vec<String>,
    /// Print the result as JSON on stdout.
    #[arg(long, conflicts_with = "id_only")]
    json: bool,
    /// Print only the new shell id.
    #[arg(long)]
    id_only: bool,
}

#[derive(Args, Debug)]
pub struct ShellReadArgs {
    /// Workspace id.
    workspace_id: String,
    /// Shell id.
    shell_id: String,
    /// Transcript offset to read from (a previous read's next_cursor).
    #[arg(long, default_value_t = 0)]
    cursor: u64,
    /// Most characters to return.
    #[arg(long, default_value_t = d::SHELL_MAX_CHARS)]
    max_chars: i64,
    /// Render the terminal as plain text (escape sequences interpreted).
    #[arg(long)]
    plain: bool,
    /// Wait until the shell has been quiet this many milliseconds.
    #[arg(long)]
    wait_for_idle_ms: Option<i64>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShellWriteArgs {
    /// Workspace id.
    workspace_id: String,
    /// Shell id.
    shell_id: String,
    /// The text to type.
    #[arg(long, allow_hyphen_values = true)]
    input: String,
    /// Do not press Enter after the input.
    #[arg(long)]
    no_newline: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShellSignalArgs {
    /// Workspace id.
    workspace_id: String,
    /// Shell id.
    shell_id: String,
    /// HUP, INT, TERM or KILL.
    #[arg(long, default_value = "INT")]
    signal: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShellResizeArgs {
    /// Workspace id.
    workspace_id: String,
    /// Shell id.
    shell_id: String,
    /// Terminal columns.
    #[arg(long)]
    cols: i64,
    /// Terminal rows.
    #[arg(long)]
    rows: i64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ShellIdArgs {
    /// Workspace id.
    workspace_id: String,
    /// Shell id.
    shell_id: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Start a named background process and wait until it is ready (exit 1 if it is not).
    Start(ServiceStartArgs),
    /// List a workspace's services.
    List(WsOnly),
    /// Show one service.
    Status(ServiceNameArgs),
    /// Show a service's output (stdout to stdout, stderr to stderr).
    Logs(ServiceLogsArgs),
    /// Stop a service (TERM, then KILL after 5 s) and release its ports.
    Stop(ServiceNameArgs),
}

#[derive(Args, Debug)]
pub struct ServiceNameArgs {
    /// Workspace id.
    workspace_id: String,
    /// Service name.
    service_name: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ServiceLogsArgs {
    /// Workspace id.
    workspace_id: String,
    /// Service name.
    service_name: String,
    /// Lines of each stream to show (the last ones).
    #[arg(long, default_value_t = d::TAIL_LINES)]
    tail_lines: i64,
    /// Everything retained (up to 1 MiB per stream).
    #[arg(long)]
    all: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ServiceStartArgs {
    /// Workspace id.
    workspace_id: String,
    /// Service name (letters, digits, '.', '_', '-').
    service_name: String,
    /// Working directory (must exist).
    #[arg(long, default_value = "/workspace")]
    cwd: String,
    /// Ready when this path exists.
    #[arg(long)]
    ready_file: Option<String>,
    /// Ready when HOST:PORT accepts a TCP connection (from inside the guest).
    #[arg(long, value_name = "HOST:PORT")]
    ready_tcp: Option<String>,
    /// Ready when this http:// URL answers 2xx or 3xx (from inside the guest).
    #[arg(long, value_name = "URL")]
    ready_http: Option<String>,
    /// Ready when this shell command exits 0 (each try bounded by 10 s).
    #[arg(long)]
    ready_command: Option<String>,
    /// Seconds to wait for readiness before the service is stopped and the start fails.
    #[arg(long, default_value_t = d::READY_TIMEOUT_SECONDS)]
    ready_timeout_seconds: i64,
    /// Pause between probes, ms.
    #[arg(long, default_value_t = d::READY_INTERVAL_MS)]
    ready_interval_ms: i64,
    /// Give the service a workspace secret as an environment variable (repeatable).
    #[arg(long = "secret-env", value_name = "SECRET[=ENV_VAR]")]
    secret_env: Vec<String>,
    /// Publish a guest port on the host's 127.0.0.1 (repeatable; policy
    /// egress+published-ports).
    #[arg(long = "publish", value_name = "[HOST_PORT:]GUEST_PORT")]
    publish: Vec<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The command: one word is a shell command line; several are quoted and joined.
    #[arg(trailing_var_arg = true, value_name = "CMD", required = true)]
    command: Vec<String>,
}

/// `SECRET[=ENV_VAR]` words as the core's map.
pub fn secret_env_map(words: &[String]) -> std::collections::BTreeMap<String, String> {
    words
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, var)) => (name.to_string(), var.to_string()),
            None => (s.clone(), String::new()),
        })
        .collect()
}

/// A word quoted for `/bin/sh` (unchanged when it needs nothing).
fn sh_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'.' | b'/' | b':' | b'=' | b'@' | b'%' | b'+' | b',' | b'-'
                )
        });
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The service's command line: one word is taken as a shell command line (so `-- 'python3
/// -m http.server 8000 > log'` works); several words are each quoted and joined.
fn service_command(words: &[String]) -> anyhow::Result<String> {
    let words = match words.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => words,
    };
    match words {
        [] => Err(input_err(
            "a command is required: pyro workspace service start WS NAME -- CMD [ARGS...]",
        )),
        [one] => Ok(one.clone()),
        many => Ok(many
            .iter()
            .map(|w| sh_quote(w))
            .collect::<Vec<_>>()
            .join(" ")),
    }
}

/// `--publish [HOST_PORT:]GUEST_PORT`.
fn parse_publish(spec: &str) -> anyhow::Result<PortSpec> {
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| input_err(format!("--publish `{spec}`: `{s}` is not a port number")))
    };
    Ok(match spec.split_once(':') {
        Some((h, g)) => PortSpec {
            guest_port: num(g)?,
            host_port: Some(num(h)?),
        },
        None => PortSpec {
            guest_port: num(spec)?,
            host_port: None,
        },
    })
}

fn shell_line(action: &str, s: &ShellInfo) {
    eprintln!(
        "[workspace-shell-{action}] workspace_id={} shell_id={} state={} cwd={} cols={} rows={}{} execution_mode={}",
        s.workspace_id,
        s.shell_id,
        s.state,
        s.cwd,
        s.cols,
        s.rows,
        s.exit_code
            .map(|c| format!(" exit_code={c}"))
            .unwrap_or_default(),
        s.execution_mode
    );
}

fn ports_text(s: &ServiceInfo) -> String {
    s.published_ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host, p.host_port, p.guest_port, p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_line(action: &str, s: &ServiceInfo) {
    let ports = ports_text(s);
    eprintln!(
        "[workspace-service-{action}] workspace_id={} service_name={} state={} cwd={}{}{}{} execution_mode={}{}",
        s.workspace_id,
        s.service_name,
        s.state,
        s.cwd,
        s.exit_code
            .map(|c| format!(" exit_code={c}"))
            .unwrap_or_default(),
        s.stop_reason
            .as_ref()
            .map(|r| format!(" stop_reason={r}"))
            .unwrap_or_default(),
        s.pid.map(|p| format!(" pid={p}")).unwrap_or_default(),
        s.execution_mode,
        if ports.is_empty() {
            String::new()
        } else {
            format!(" published_ports={ports}")
        }
    );
}

pub async fn shell(cmd: ShellCmd) -> Result<ExitCode, Failure> {
    match cmd {
        ShellCmd::Open(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let req = OpenShell {
                cwd: a.cwd,
                cols: a.cols,
                rows: a.rows,
                secret_env: secret_env_map(&a.secret_env),
            };
            let s = pyro
                .open_shell(&a.workspace_id, req)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&s);
            } else if a.id_only {
                println!("{}", s.shell_id);
            } else {
                shell_line("open", &s);
            }
        }
        ShellCmd::Read(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let req = ReadShell {
                cursor: a.cursor,
                max_chars: a.max_chars,
                plain: a.plain,
                wait_for_idle_ms: a.wait_for_idle_ms,
            };
            let r = pyro
                .read_shell(&a.workspace_id, &a.shell_id, req)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(r.output.as_bytes());
                let _ = out.flush();
                eprintln!(
                    "[workspace-shell-read] workspace_id={} shell_id={} state={} cursor={} next_cursor={} truncated={}{} plain={} wait_for_idle_ms={} execution_mode={}",
                    r.shell.workspace_id,
                    r.shell.shell_id,
                    r.shell.state,
                    r.cursor,
                    r.next_cursor,
                    r.truncated,
                    if r.missed_bytes > 0 {
                        format!(" missed_bytes={}", r.missed_bytes)
                    } else {
                        String::new()
                    },
                    r.plain,
                    r.wait_for_idle_ms
                        .map(|w| w.to_string())
                        .unwrap_or_else(|| "none".into()),
                    r.shell.execution_mode
                );
            }
        }
        ShellCmd::Write(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .write_shell(&a.workspace_id, &a.shell_id, &a.input, !a.no_newline)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                shell_line("write", &r.shell);
            }
        }
        ShellCmd::Signal(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .signal_shell(&a.workspace_id, &a.shell_id, &a.signal)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                shell_line("signal", &r.shell);
            }
        }
        ShellCmd::Resize(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .resize_shell(&a.workspace_id, &a.shell_id, a.cols, a.rows)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                shell_line("resize", &r);
            }
        }
        ShellCmd::Close(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .close_shell(&a.workspace_id, &a.shell_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                shell_line("close", &r.shell);
            }
        }
        ShellCmd::List(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .list_shells(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else if r.shells.is_empty() {
                println!("No workspace shells found.");
            } else {
                for s in &r.shells {
                    println!(
                        "{} [{}] cwd={} size={}x{}",
                        s.shell_id, s.state, s.cwd, s.cols, s.rows
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn service(cmd: ServiceCmd) -> Result<ExitCode, Failure> {
    match cmd {
        ServiceCmd::Start(a) => {
            let f = fail(a.json);
            let command = service_command(&a.command).map_err(&f)?;
            let readiness: Vec<ReadinessSpec> = [
                a.ready_file.clone().map(ReadinessSpec::File),
                a.ready_tcp.clone().map(ReadinessSpec::Tcp),
                a.ready_http.clone().map(ReadinessSpec::Http),
                a.ready_command.clone().map(ReadinessSpec::Command),
            ]
            .into_iter()
            .flatten()
            .collect();
            if readiness.len() > 1 {
                return Err(f(input_err(
                    "give at most one of --ready-file, --ready-tcp, --ready-http, --ready-command",
                )));
            }
            let published_ports = a
                .publish
                .iter()
                .map(|p| parse_publish(p))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(&f)?;
            let pyro = open_pyro(None).map_err(&f)?;
            let req = StartService {
                name: a.service_name.clone(),
                command,
                cwd: a.cwd,
                readiness: readiness.into_iter().next(),
                ready_timeout_seconds: a.ready_timeout_seconds,
                ready_interval_ms: a.ready_interval_ms,
                secret_env: secret_env_map(&a.secret_env),
                published_ports,
            };
            let progress = progress_unless(a.json, &a.service_name);
            let s = pyro
                .start_service(&a.workspace_id, req, progress)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&s);
            } else {
                service_line("start", &s);
            }
        }
        ServiceCmd::List(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .list_services(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else if r.services.is_empty() {
                println!("No workspace services found.");
            } else {
                for s in &r.services {
                    let ports = ports_text(s);
                    println!(
                        "{} [{}] cwd={}{}{}",
                        s.service_name,
                        s.state,
                        s.cwd,
                        s.stop_reason
                            .as_ref()
                            .map(|r| format!(" stop_reason={r}"))
                            .unwrap_or_default(),
                        if ports.is_empty() {
                            String::new()
                        } else {
                            format!(" published={ports}")
                        }
                    );
                }
            }
        }
        ServiceCmd::Status(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let s = pyro
                .status_service(&a.workspace_id, &a.service_name)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&s);
            } else {
                service_line("status", &s);
            }
        }
        ServiceCmd::Logs(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let tail = (!a.all).then_some(a.tail_lines);
            let r = pyro
                .logs_service(&a.workspace_id, &a.service_name, tail)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(r.stdout.as_bytes());
                let _ = out.flush();
                eprint!("{}", r.stderr);
                service_line("logs", &r.service);
            }
        }
        ServiceCmd::Stop(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let s = pyro
                .stop_service(&a.workspace_id, &a.service_name)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&s);
            } else {
                service_line("stop", &s);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_words_and_keep_one_word_lines() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            service_command(&w(&["--", "python3 -m http.server > log"])).unwrap(),
            "python3 -m http.server > log"
        );
        assert_eq!(
            service_command(&w(&["echo", "a b", "it's"])).unwrap(),
            "echo 'a b' 'it'\\''s'"
        );
        assert!(service_command(&w(&["--"])).is_err());
        assert_eq!(
            parse_publish("8000").unwrap(),
            PortSpec {
                guest_port: 8000,
                host_port: None
            }
        );
        assert_eq!(
            parse_publish("18000:8000").unwrap(),
            PortSpec {
                guest_port: 8000,
                host_port: Some(18000)
            }
        );
        assert!(parse_publish("x").is_err());
    }
}
