//! `pyro mcp serve`: the MCP server ([`pyro_mcp::PyroMcp`]) on stdio, or on Streamable HTTP
//! bound to a loopback address.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use pyro_mcp::{HostRoots, Profile, PyroMcp, ServerOptions};

use crate::{Failure, fail, open_pyro};

#[derive(Subcommand, Debug)]
pub enum McpCmd {
    /// Serve MCP on stdio until stdin closes (or on HTTP with --http). Logs go to stderr.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Tools offered to the client.
    #[arg(
        long,
        default_value = "workspace-core",
        value_parser = clap::builder::PossibleValuesParser::new(["vm-run", "workspace-core", "workspace-full"])
    )]
    profile: String,
    /// A host directory clients may read seeds from and export into (repeatable; default: the
    /// working directory). Host paths outside every such directory are refused.
    #[arg(long = "allow-host-path", value_name = "DIR")]
    allow_host_path: Vec<PathBuf>,
    /// Serve Streamable HTTP at http://ADDR/mcp instead of stdio; ADDR must be a loopback
    /// address such as 127.0.0.1:8765 (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Seed workspaces created without seed_path from this Git checkout's tracked files
    /// (default: the checkout the server starts in, if any).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["repo_url", "no_project"])]
    project_path: Option<PathBuf>,
    /// Seed them from a clean clone of this repository instead (with --repo-ref).
    #[arg(
        long,
        value_name = "URL",
        requires = "repo_ref",
        conflicts_with = "no_project"
    )]
    repo_url: Option<String>,
    /// The branch, tag or commit of --repo-url.
    #[arg(long, value_name = "REF", requires = "repo_url")]
    repo_ref: Option<String>,
    /// No project: workspaces without seed_path start empty.
    #[arg(long)]
    no_project: bool,
    /// VMM: auto, firecracker or qemu.
    #[arg(long, env = "PYRO_BACKEND", default_value = "auto")]
    backend: String,
    #[command(flatten)]
    pool: crate::PoolArgs,
}

/// The server's project: `--repo-url`, `--project-path`, or the Git checkout it starts in.
fn project_source(args: &ServeArgs) -> anyhow::Result<Option<pyro_core::project::ProjectSource>> {
    use pyro_core::project::{ProjectSource, checkout_root};
    if args.no_project {
        return Ok(None);
    }
    let source = match (&args.repo_url, &args.repo_ref, &args.project_path) {
        (Some(url), Some(reference), _) => ProjectSource::Repo {
            url: url.clone(),
            reference: reference.clone(),
        },
        (_, _, Some(dir)) => ProjectSource::Path(dir.clone()),
        _ => {
            let cwd = std::env::current_dir().context("cannot determine the working directory")?;
            match checkout_root(&cwd) {
                Some(root) => ProjectSource::Path(root),
                None => return Ok(None),
            }
        }
    };
    source.check()?;
    Ok(Some(source))
}

pub async fn run(cmd: McpCmd) -> Result<ExitCode, Failure> {
    match cmd {
        McpCmd::Serve(args) => serve(args).await.map_err(fail(false)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let profile: Profile = args.profile.parse()?;
    let roots = if args.allow_host_path.is_empty() {
        vec![std::env::current_dir().context("cannot determine the working directory")?]
    } else {
        args.allow_host_path.clone()
    };
    let roots = HostRoots::new(&roots)?;
    // Claude Code's own result limit, when its environment sets one (`budget.rs`).
    let budget = pyro_mcp::ResultBudget::from_env()?;
    let project = project_source(&args)?;
    if let Some(p) = &project {
        tracing::info!(
            ?p,
            "workspaces without seed_path are seeded from the project"
        );
    }
    let pyro = Arc::new(open_pyro(Some(&args.backend))?);
    args.pool.enable(&pyro)?;
    let server = PyroMcp::new(
        pyro.clone(),
        ServerOptions {
            profile,
            roots: Arc::new(roots),
            project: project.map(Arc::new),
            budget,
        },
    );
    tracing::info!(%profile, "MCP server starting");
    let served = match args.http {
        Some(addr) => pyro_mcp::serve_http(
            server,
            addr,
            |a| {
                eprintln!(
                    "[mcp] profile={profile} listening on http://{a}{}",
                    pyro_mcp::HTTP_PATH
                )
            },
            interrupted(),
        )
        .await
        .map_err(anyhow::Error::from),
        None => {
            let (stdin, stdout) = protocol_stdio()?;
            tokio::select! {
                r = server.serve(stdin, stdout) => r.map_err(anyhow::Error::from),
                _ = interrupted() => {
                    pyro.shutdown().await;
                    // A blocking stdin read (stdin not a pipe) would hold the runtime's
                    // shutdown until the client writes again: leave now, everything is done.
                    std::process::exit(0);
                }
            }
        }
    };
    // Ephemeral VMs belong to this process; workspaces outlive it.
    pyro.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM (never, if the handlers cannot be installed).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// The protocol's byte streams: stdin, and stdout reopened as a private open file. File
/// descriptor 1 is then pointed at stderr, so nothing but protocol messages can reach the
/// client's stdout: not a stray print, not a child process that inherits it.
///
/// MCP clients connect through pipes; a pipe is reopened through `/proc/self/fd` as a
/// non-blocking file of its own (as rmcp's `stdio_pipes` does) and driven by the reactor, so no
/// thread is left blocked in `read` when a signal ends the server. Anything else (a socket, a
/// file, a terminal) falls back to tokio's blocking stdin and a duplicate of stdout.
fn protocol_stdio() -> anyhow::Result<(ProtoReader, ProtoWriter)> {
    let reader = match reopen_fifo(0, false) {
        Some(f) => ProtoReader::Pipe(
            tokio::net::unix::pipe::Receiver::from_file(f).context("cannot watch stdin")?,
        ),
        None => ProtoReader::Std(tokio::io::stdin()),
    };
    let writer = match reopen_fifo(1, true) {
        Some(f) => ProtoWriter::Pipe(
            tokio::net::unix::pipe::Sender::from_file(f).context("cannot watch stdout")?,
        ),
        None => {
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot duplicate stdout")?;
            ProtoWriter::File(tokio::fs::File::from_std(std::fs::File::from(fd)))
        }
    };
    // SAFETY: dup2(2) on descriptors 2 and 1, which this process holds open for its whole
    // life; it atomically makes 1 another name for stderr and touches no Rust-owned memory.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot redirect stdout to stderr");
    }
    Ok((reader, writer))
}

/// Opens a new, non-blocking file description of descriptor `fd` when it is a FIFO.
fn reopen_fifo(fd: i32, write: bool) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let path = format!("/proc/self/fd/{fd}");
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.file_type().is_fifo() {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .ok()
}

/// The protocol's input.
enum ProtoReader {
    Pipe(tokio::net::unix::pipe::Receiver),
    Std(tokio::io::Stdin),
}

/// The protocol's output.
enum ProtoWriter {
    Pipe(tokio::net::unix::pipe::Sender),
    File(tokio::fs::File),
}

impl tokio::io::AsyncRead for ProtoReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Pipe(r) => Pin::new(r).poll_read(cx, buf),
            Self::Std(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ProtoWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Pipe(w) => Pin::new(w).poll_write(cx, buf),
            Self::File(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Pipe(w) => Pin::new(w).poll_flush(cx),
            Self::File(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Pipe(w) => Pin::new(w).poll_shutdown(cx),
            Self::File(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
