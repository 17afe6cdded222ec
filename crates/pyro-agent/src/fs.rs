//! File operations inside the sandbox, confined to a root directory (`/workspace`).
//!
//! Every request names a `root` (an absolute, existing directory) and paths relative to it.
//! Paths are first normalized lexically ([`path::RelPath`]: `..` refused, absolute paths only
//! under the root), then resolved on disk with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the root, so neither `..`, absolute symlinks
//! nor symlinked parents can lead outside it, whatever a concurrent process does. Operations
//! that change the tree also refuse to pass through any symlink (`RESOLVE_NO_SYMLINKS`) and
//! act on the final name with `*at` calls that never follow it: symlinks inside the tree are
//! stored, listed, exported and imported as links, never followed.
//!
//! - [`list`]: `lstat`-based listings, sorted, depth-first pre-order, never into symlinks.
//! - [`read`]: the first `max_bytes` of a regular file, streamed.
//! - [`write`]: a batch of writes, deletes, mkdirs and symlinks, validated as a whole, file
//!   contents staged in temp files (fsynced) next to their destination, then applied.
//! - [`export`] and [`import`]: tar streams with modes, mtimes, empty directories, symlinks
//!   and hard links; import extracts while the archive arrives.
//!
//! The blocking work runs on tokio's blocking pool; bytes cross to the protocol stream over
//! small bounded channels, so a slow peer stalls the operation instead of filling memory.

pub mod export;
pub mod import;
pub mod list;
pub mod path;
pub mod read;
pub mod sys;
pub mod write;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use pyro_proto::api::{
    AgentError, DATA_CHUNK, Empty, ErrorCode, ExportTar, ImportTar, ListFiles, ReadFile, WriteFiles,
};
use pyro_proto::{Message, MsgKind, RecvHalf, SendHalf};
use tokio::sync::mpsc;

use path::RelPath;
use sys::{BENEATH_NO_SYMLINKS, Stat};

/// Why a file operation failed. Each variant maps onto one [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A path or argument is invalid: escapes the root, has the wrong type, and so on.
    #[error("{path}: {reason}")]
    Bad {
        /// The offending path, as the client would name it.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request itself is invalid, independent of any one path.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// A path does not exist.
    #[error("no such file or directory: {path}")]
    NotFound {
        /// The missing path.
        path: String,
    },
    /// A system call failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A bug or unexpected state in the agent.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
    /// An error in a context: a tar member, a change of a batch.
    #[error("{context}")]
    Context {
        /// Where it happened.
        context: String,
        /// What happened; decides the error class.
        #[source]
        source: Box<FsError>,
    },
}

impl FsError {
    /// A [`FsError::Bad`].
    pub fn bad(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Bad {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A [`FsError::Invalid`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid {
            reason: reason.into(),
        }
    }

    /// Classifies an I/O error about `path`: a missing path, an escape or a symlink in the
    /// way, a wrong type, or a plain I/O failure.
    pub fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        let path = path.into();
        let reason = match source.raw_os_error() {
            Some(libc::ENOENT) => return Self::NotFound { path },
            Some(libc::EXDEV) => "leads outside the root",
            Some(libc::ELOOP) => "goes through a symlink (symlinks are not followed)",
            Some(libc::ENOTDIR) => "a parent is not a directory",
            Some(libc::EISDIR) => "is a directory",
            Some(libc::ENOTEMPTY) => "directory is not empty",
            Some(libc::EEXIST) => "already exists",
            Some(libc::ENAMETOOLONG) => "name too long",
            _ => return Self::Io { op, path, source },
        };
        Self::bad(path, reason)
    }

    /// Puts the error in a context.
    pub fn context(self, context: impl Into<String>) -> Self {
        Self::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// Names the tar member this error is about.
    pub fn in_member(self, member: &[u8]) -> Self {
        self.context(format!("tar member {}", String::from_utf8_lossy(member)))
    }

    /// The protocol error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            FsError::Bad { .. } | FsError::Invalid { .. } => ErrorCode::BadRequest,
            FsError::NotFound { .. } => ErrorCode::NotFound,
            FsError::Io { .. } => ErrorCode::Io,
            FsError::Internal { .. } => ErrorCode::Internal,
            FsError::Context { source, .. } => source.code(),
        }
    }

    /// The error as the agent reports it: its class and the whole chain of causes.
    pub fn to_agent_error(&self) -> AgentError {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        AgentError::new(self.code(), msg)
    }
}

/// Where the guest's `/workspace` lives when the agent runs on a host as a stand-in guest
/// (`--listen-unix` with `PYRO_AGENT_WORKSPACE`); unset in a real guest.
static WORKSPACE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Test mode only (never as PID 1): makes the guest path `/workspace` (and everything below
/// it) name `dir` on this host, for request roots and exec working directories. Can be set
/// once; a second call returns the directory it was not set to.
pub fn map_workspace_to(dir: PathBuf) -> Result<(), PathBuf> {
    WORKSPACE_DIR.set(dir)
}

/// The path on this machine that the guest path `path` names: under
/// [`map_workspace_to`], `/workspace` and below map into its directory; any other path (and
/// every path in a real guest) names itself.
pub fn host_path(path: &Path) -> PathBuf {
    map_guest_path(path, WORKSPACE_DIR.get().map(PathBuf::as_path))
}

fn map_guest_path(path: &Path, workspace: Option<&Path>) -> PathBuf {
    let Some(dir) = workspace else {
        return path.to_path_buf();
    };
    match path.strip_prefix(pyro_proto::api::WORKSPACE_ROOT) {
        Ok(rest) if rest.as_os_str().is_empty() => dir.to_path_buf(),
        Ok(rest) => dir.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// The root directory of one request, held open.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    display: String,
}

impl Root {
    /// Opens `root`, which must be an absolute path to an existing directory.
    pub fn open(root: &str) -> Result<Root, FsError> {
        if !root.starts_with('/') {
            return Err(FsError::bad(root, "the root must be an absolute path"));
        }
        let on_host = host_path(Path::new(root));
        let fd = sys::open_root(on_host.as_os_str()).map_err(|e| {
            FsError::bad(
                root,
                format!("the root must be an existing directory ({e})"),
            )
        })?;
        let trimmed = root.trim_end_matches('/');
        let display = if trimmed.is_empty() { "/" } else { trimmed }.to_string();
        Ok(Root { fd, display })
    }

    /// The root's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Normalizes a request path.
    pub fn parse(&self, path: &str) -> Result<RelPath, FsError> {
        RelPath::from_request(path, &self.display)
    }

    /// `rel` as an absolute path (`/workspace/src/a.rs`).
    pub fn show(&self, rel: &RelPath) -> String {
        rel.display_under(&self.display)
    }

    /// Opens the directory `rel` under `resolve` rules (with [`sys::BENEATH`], symlinks
    /// that stay beneath the root are followed, the last component's included).
    pub fn open_dir(&self, rel: &RelPath, resolve: u64) -> Result<OwnedFd, FsError> {
        sys::openat2(
            self.fd(),
            &rel.to_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
            resolve,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => self.not_a_dir(rel),
            _ => FsError::io("opening", self.show(rel), e),
        })
    }

    /// `lstat` of `rel`; its parents are resolved under `resolve` rules.
    pub fn lstat(&self, rel: &RelPath, resolve: u64) -> Result<Stat, FsError> {
        if rel.is_root() {
            return sys::fstat(self.fd()).map_err(|e| FsError::io("stat", self.show(rel), e));
        }
        let parent = self.open_dir(&rel.parent(), resolve).map_err(|e| match e {
            FsError::NotFound { .. } => FsError::NotFound {
                path: self.show(rel),
            },
            e => e,
        })?;
        sys::lstatat(parent.as_fd(), rel.name()).map_err(|e| FsError::io("stat", self.show(rel), e))
    }

    /// Like [`Root::lstat`], but a missing path is `None`.
    pub fn lstat_opt(&self, rel: &RelPath, resolve: u64) -> Result<Option<Stat>, FsError> {
        match self.lstat(rel, resolve) {
            Ok(st) => Ok(Some(st)),
            Err(FsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the directory `rel`, creating it and any missing parent (mode 0755 before the
    /// umask). No component may be a symlink. Directories it created are appended to
    /// `created`, outermost first.
    pub fn make_dirs(&self, rel: &RelPath, created: &mut Vec<RelPath>) -> Result<OwnedFd, FsError> {
        let mut cur = self
            .fd
            .try_clone()
            .map_err(|e| FsError::io("opening", self.show(&RelPath::root()), e))?;
        let mut at = RelPath::root();
        for comp in rel.components() {
            at = at.child(comp);
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let next = match sys::openat2(cur.as_fd(), comp, flags, 0, BENEATH_NO_SYMLINKS) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match sys::mkdirat(cur.as_fd(), comp, 0o755) {
                        Ok(()) => created.push(at.clone()),
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(FsError::io("creating directory", self.show(&at), e)),
                    }
                    sys::openat2(cur.as_fd(), comp, flags, 0, BENEATH_NO_SYMLINKS)
                        .map_err(|e| self.dir_error(&at, e))?
                }
                Err(e) => return Err(self.dir_error(&at, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn dir_error(&self, at: &RelPath, e: io::Error) -> FsError {
        match e.raw_os_error() {
            Some(libc::ELOOP) => {
                FsError::bad(self.show(at), "is a symlink (symlinks are not followed)")
            }
            Some(libc::ENOTDIR) => self.not_a_dir(at),
            _ => FsError::io("opening directory", self.show(at), e),
        }
    }

    fn not_a_dir(&self, rel: &RelPath) -> FsError {
        // Say precisely what is in the way when we can.
        let what = match self.lstat(rel, sys::BENEATH) {
            Ok(st) if st.kind == sys::Kind::Symlink => "is a symlink (symlinks are not followed)",
            Ok(st) if st.kind != sys::Kind::Dir => "is not a directory",
            _ => "a component is not a directory or is a symlink",
        };
        FsError::bad(self.show(rel), what)
    }
}

/// A temp-file name for a sibling of a destination.
pub(crate) fn temp_name() -> Vec<u8> {
    format!(".pyro-tmp-{:016x}", sys::random_u64()).into_bytes()
}

/// Where a blocking job sends its output bytes: `DATA` messages of at most
/// [`DATA_CHUNK`] bytes, with backpressure from the stream.
#[derive(Debug)]
pub struct DataSink {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    discarding: bool,
}

impl DataSink {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Self {
            tx,
            buf: BytesMut::new(),
            discarding: false,
        }
    }

    /// Drops what is buffered and everything written from now on (after a failure, so that
    /// no trailer makes a cut archive look complete).
    pub fn discard(&mut self) {
        self.discarding = true;
        self.buf.clear();
    }

    fn push(&self, chunk: Bytes) -> io::Result<()> {
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends `body` as one message of its own (after anything buffered).
    pub fn send_message(&mut self, body: Bytes) -> io::Result<()> {
        io::Write::flush(self)?;
        self.push(body)
    }
}

impl io::Write for DataSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.discarding {
            return Ok(data.len());
        }
        self.buf.extend_from_slice(data);
        while self.buf.len() >= DATA_CHUNK {
            let chunk = self.buf.split_to(DATA_CHUNK).freeze();
            self.push(chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.push(chunk)?;
        }
        Ok(())
    }
}

/// Where a blocking job reads its input bytes from: the `DATA` messages of the stream, in
/// order, ending at the client's `End`. An aborted stream reads as an error, never as EOF.
#[derive(Debug)]
pub struct DataSource {
    rx: mpsc::Receiver<Option<Bytes>>,
    cur: Bytes,
}

impl DataSource {
    fn new(rx: mpsc::Receiver<Option<Bytes>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl io::Read for DataSource {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Some(b)) => self.cur = b,
                Some(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client aborted the call",
                    ));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

async fn reply<R: serde::Serialize>(tx: &mut SendHalf, res: Result<R, FsError>) {
    let msg = match res {
        Ok(v) => Message::json(MsgKind::RESPONSE, &v),
        Err(e) => Message::json(MsgKind::ERROR, &e.to_agent_error()),
    };
    let msg = match msg {
        Ok(m) => m,
        Err(e) => {
            let err = AgentError::new(
                ErrorCode::Internal,
                format!("encoding the result failed: {e}"),
            );
            match Message::json(MsgKind::ERROR, &err) {
                Ok(m) => m,
                Err(_) => return,
            }
        }
    };
    if tx.send(msg).await.is_ok() {
        let _ = tx.finish();
    }
}

fn joined<R>(res: Result<Result<R, FsError>, tokio::task::JoinError>) -> Result<R, FsError> {
    res.unwrap_or_else(|e| {
        Err(FsError::Internal {
            reason: format!("the file operation crashed: {e}"),
        })
    })
}

/// Runs a job that produces bytes; they are sent as `DATA` messages, then its result.
async fn run_output<R, F>(mut tx: SendHalf, job: F)
where
    R: serde::Serialize + Send + 'static,
    F: FnOnce(&mut DataSink) -> Result<R, FsError> + Send + 'static,
{
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Bytes>(4);
    let handle = tokio::task::spawn_blocking(move || {
        let mut sink = DataSink::new(chunk_tx);
        let res = job(&mut sink)?;
        io::Write::flush(&mut sink).map_err(|e| FsError::io("sending", "output", e))?;
        Ok(res)
    });
    while let Some(chunk) = chunk_rx.recv().await {
        if tx.send(Message::new(MsgKind::DATA, chunk)).await.is_err() {
            // The client went away: the job fails on its next send and ends.
            return;
        }
    }
    reply(&mut tx, joined(handle.await)).await;
}

/// Runs a job that consumes the stream's `DATA` messages, then replies with its result.
async fn run_input<R, F>(mut tx: SendHalf, mut rx: RecvHalf, job: F)
where
    R: serde::Serialize + Send + 'static,
    F: FnOnce(&mut DataSource) -> Result<R, FsError> + Send + 'static,
{
    let (data_tx, data_rx) = mpsc::channel::<Option<Bytes>>(4);
    let mut handle = tokio::task::spawn_blocking(move || job(&mut DataSource::new(data_rx)));
    let mut data_tx = Some(data_tx);
    let mut ended = false;
    let res = loop {
        tokio::select! {
            res = &mut handle => break joined(res),
            msg = rx.recv(), if !ended => match msg {
                Ok(Some(m)) if m.kind == MsgKind::DATA => {
                    if let Some(ch) = &data_tx
                        && ch.send(Some(m.body)).await.is_err()
                    {
                        // The job is done with its input; its result is on the way.
                        data_tx = None;
                    }
                }
                Ok(Some(m)) if m.kind == MsgKind::CANCEL => {
                    if let Some(ch) = data_tx.take() {
                        let _ = ch.send(None).await;
                    }
                    ended = true;
                }
                Ok(Some(_)) => {}
                // The client's End: the job reads EOF.
                Ok(None) => {
                    data_tx = None;
                    ended = true;
                }
                // Reset or dead session: the job must not take partial input as complete.
                Err(_) => {
                    if let Some(ch) = data_tx.take() {
                        let _ = ch.send(None).await;
                    }
                    ended = true;
                }
            }
        }
    };
    if res.is_ok() {
        // Input after what the job needed (tar padding): read up to the client's End.
        while !ended {
            match rx.recv().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => ended = true,
            }
        }
    }
    reply(&mut tx, res).await;
}

/// Serves [`pyro_proto::api::Request::ListFiles`].
pub async fn serve_list(tx: SendHalf, req: ListFiles) {
    run_output(tx, move |sink| list::list(&req, sink)).await;
}

/// Serves [`pyro_proto::api::Request::ReadFile`].
pub async fn serve_read(tx: SendHalf, req: ReadFile) {
    run_output(tx, move |sink| read::read(&req, sink)).await;
}

/// Serves [`pyro_proto::api::Request::WriteFiles`].
pub async fn serve_write(tx: SendHalf, rx: RecvHalf, req: WriteFiles) {
    run_input(tx, rx, move |input| write::write(&req, input)).await;
}

/// Serves [`pyro_proto::api::Request::ExportTar`].
pub async fn serve_export(tx: SendHalf, req: ExportTar) {
    run_output(tx, move |sink| export::export(&req, sink)).await;
}

/// Serves [`pyro_proto::api::Request::ImportTar`].
pub async fn serve_import(tx: SendHalf, rx: RecvHalf, req: ImportTar) {
    run_input(tx, rx, move |input| import::import(&req, input)).await;
}

/// Serves [`pyro_proto::api::Request::Sync`].
pub async fn serve_sync(mut tx: SendHalf) {
    let res = tokio::task::spawn_blocking(|| {
        sys::sync_all();
        Ok(Empty {})
    })
    .await;
    reply(&mut tx, joined(res)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn workspace_paths_map_into_the_stand_in_directory_only_in_test_mode() {
        let dir = Path::new("/tmp/ws-1");
        let map = |p: &str| map_guest_path(Path::new(p), Some(dir));
        assert_eq!(map("/workspace"), PathBuf::from("/tmp/ws-1"));
        assert_eq!(map("/workspace/"), PathBuf::from("/tmp/ws-1"));
        assert_eq!(
            map("/workspace/src/a.rs"),
            PathBuf::from("/tmp/ws-1/src/a.rs")
        );
        // Only whole components: a sibling with the same prefix is not the workspace.
        assert_eq!(map("/workspacefoo"), PathBuf::from("/workspacefoo"));
        assert_eq!(map("/tmp"), PathBuf::from("/tmp"));
        assert_eq!(map("/"), PathBuf::from("/"));
        // A real guest maps nothing.
        let guest = map_guest_path(Path::new("/workspace/x"), None);
        assert_eq!(guest, PathBuf::from("/workspace/x"));
    }

    #[test]
    fn a_request_root_of_workspace_opens_the_mapped_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), b"here").unwrap();
        // The only test in this binary that sets the mapping.
        map_workspace_to(dir.path().to_path_buf()).unwrap();
        let root = Root::open("/workspace").unwrap();
        // Paths keep their guest spelling.
        let rel = root.parse("/workspace/marker").unwrap();
        assert_eq!(root.show(&rel), "/workspace/marker");
        let st = root.lstat(&rel, sys::BENEATH).unwrap();
        assert_eq!(st.kind, sys::Kind::File);
        // Other roots are untouched.
        assert!(Root::open("/").is_ok());
    }
}
