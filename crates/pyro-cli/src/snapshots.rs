//! `pyro workspace snapshot …` and `pyro workspace fork`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro_core::workspace::{ForkWorkspace, SnapshotInfo};

use crate::{Failure, fail, open_pyro, progress_unless, render};

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot a workspace: started, its whole machine (disk, memory, processes, shells,
    /// services); stopped, its disk.
    Create(SnapshotArgs),
    /// List the baseline and the named snapshots with their size on disk.
    List(SnapshotListArgs),
    /// Delete a named snapshot.
    Delete(SnapshotArgs),
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Workspace id.
    workspace_id: String,
    /// Snapshot name (^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$).
    #[arg(allow_hyphen_values = true)]
    snapshot_name: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotListArgs {
    /// Workspace id.
    workspace_id: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ForkArgs {
    /// The workspace to fork.
    workspace_id: String,
    /// Fork this named snapshot (default: the workspace as it is now).
    #[arg(long)]
    snapshot: Option<String>,
    /// Name of the new workspaces (numbered -1, -2, ... with --count).
    #[arg(long)]
    name: Option<String>,
    /// How many workspaces to make.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Give the forks the source's secrets and credentials.
    #[arg(long)]
    with_secrets: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn snapshot_line(s: &SnapshotInfo) -> String {
    format!(
        "{} [{}] entry_count={} bytes_written={} deletable={} memory={} size_bytes={}{}",
        s.snapshot_name,
        s.kind,
        s.entry_count,
        s.bytes_written,
        if s.deletable { "yes" } else { "no" },
        if s.has_memory { "yes" } else { "no" },
        s.size_bytes,
        s.pause_ms
            .map(|p| format!(" pause_ms={p}"))
            .unwrap_or_default()
    )
}

pub async fn snapshot(cmd: SnapshotCmd) -> Result<ExitCode, Failure> {
    match cmd {
        SnapshotCmd::Create(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .create_snapshot(&a.workspace_id, &a.snapshot_name)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                let s = &r.snapshot;
                println!(
                    "[workspace-snapshot-create] workspace_id={} snapshot_name={} kind={} entry_count={} bytes_written={} has_memory={} size_bytes={} pause_ms={} duration_ms={}",
                    r.workspace_id,
                    s.snapshot_name,
                    s.kind,
                    s.entry_count,
                    s.bytes_written,
                    if s.has_memory { "yes" } else { "no" },
                    s.size_bytes,
                    s.pause_ms.map_or("-".into(), |p| p.to_string()),
                    r.duration_ms
                );
            }
        }
        SnapshotCmd::List(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .list_snapshots(&a.workspace_id)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                for s in &r.snapshots {
                    println!("{}", snapshot_line(s));
                }
                eprintln!(
                    "[workspace-snapshot-list] count={} total_bytes={}",
                    r.count, r.total_bytes
                );
            }
        }
        SnapshotCmd::Delete(a) => {
            let f = fail(a.json);
            let pyro = open_pyro(None).map_err(&f)?;
            let r = pyro
                .delete_snapshot(&a.workspace_id, &a.snapshot_name)
                .await
                .map_err(|e| f(e.into()))?;
            if a.json {
                render::print_json(&r);
            } else {
                println!("Deleted workspace snapshot: {}", r.snapshot_name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fork(a: ForkArgs) -> Result<ExitCode, Failure> {
    let f = fail(a.json);
    let pyro = open_pyro(None).map_err(&f)?;
    let progress = progress_unless(a.json, "");
    let req = ForkWorkspace {
        snapshot: a.snapshot,
        name: a.name,
        count: a.count,
        with_secrets: a.with_secrets,
    };
    let r = pyro
        .fork_workspace(&a.workspace_id, req, progress)
        .await
        .map_err(|e| f(e.into()))?;
    if a.json {
        render::print_json(&r);
    } else {
        for w in &r.workspaces {
            println!("{}", w.workspace_id);
        }
        eprintln!(
            "[workspace-fork] source={} snapshot={} has_memory={} count={} duration_ms={}",
            r.source_workspace_id,
            r.snapshot_name.as_deref().unwrap_or("(now)"),
            if r.has_memory { "yes" } else { "no" },
            r.count,
            r.duration_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
