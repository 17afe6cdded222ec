//! Readiness probes of services, run inside the guest. Each returns `Ok(())` when ready or
//! the reason it is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pyro_proto::procs::{PROBE_COMMAND_MAX_MS, Readiness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::killpg;
use crate::exec::LaunchSpec;

/// Bound of a TCP connect.
const TCP_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound of a whole HTTP probe (connect, request, status line).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read while looking for the status line.
const STATUS_LINE_MAX: usize = 1024;

/// Checks a probe before the service starts.
pub fn check(readiness: &Readiness) -> Result<(), String> {
    match readiness {
        Readiness::File { path } if !path.starts_with('/') => {
            Err(format!("file probe path {path:?} is not absolute"))
        }
        Readiness::Tcp { host, .. } if host.is_empty() => Err("tcp probe host is empty".into()),
        // An https URL is accepted here and fails each probe with its reason (the probe
        // speaks plain HTTP only), so the caller sees why in `last_probe_error`.
        Readiness::Http { url } if is_https(url) => Ok(()),
        Readiness::Http { url } => parse_http_url(url).map(drop),
        Readiness::Command { timeout_ms, .. }
            if !(1..=PROBE_COMMAND_MAX_MS).contains(timeout_ms) =>
        {
            Err(format!(
                "command probe timeout_ms {timeout_ms} out of range (1..={PROBE_COMMAND_MAX_MS})"
            ))
        }
        Readiness::Command { command, .. } if command.contains('\0') => {
            Err("command probe contains a NUL byte".into())
        }
        _ => Ok(()),
    }
}

/// What a command probe runs in: the service's environment and working directory.
#[derive(Debug)]
pub struct ProbeContext<'a> {
    /// The whole environment.
    pub env: &'a BTreeMap<String, String>,
    /// The working directory, on this machine.
    pub cwd: &'a Path,
}

/// Runs one probe.
pub async fn run(readiness: &Readiness, ctx: &ProbeContext<'_>) -> Result<(), String> {
    match readiness {
        Readiness::File { path } => {
            let host = crate::fs::host_path(Path::new(path));
            match host.try_exists() {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("{path} does not exist")),
                Err(e) => Err(format!("{path}: {e}")),
            }
        }
        Readiness::Tcp { host, port } => tcp(host, *port).await.map(drop),
        Readiness::Http { url } => http(url).await,
        Readiness::Command {
            command,
            timeout_ms,
        } => {
            let bound = Duration::from_millis((*timeout_ms).min(PROBE_COMMAND_MAX_MS));
            command_probe(command, bound, ctx).await
        }
    }
}

async fn tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    match tokio::time::timeout(TCP_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connecting to {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "connecting to {host}:{port}: no answer within {TCP_TIMEOUT:?}"
        )),
    }
}

/// `(host, port, path, host header)` of a plain `http://` URL.
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

fn parse_http_url(url: &str) -> Result<(String, u16, String, String), String> {
    if is_https(url) {
        return Err(format!("{url}: https is not supported by the http probe"));
    }
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
        _ => return Err(format!("{url}: the http probe takes http:// URLs only")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!("{url}: credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((h, after)) = bracketed.split_once(']') else {
            return Err(format!("{url}: unterminated IPv6 address"));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            None if after.is_empty() => 80,
            None => return Err(format!("{url}: bad authority")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            ),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{url}: the path has spaces or control characters"));
    }
    Ok((host, port, path, authority.to_string()))
}

async fn http(url: &str) -> Result<(), String> {
    let (host, port, path, host_header) = parse_http_url(url)?;
    let attempt = async {
        let mut conn = tcp(&host, port).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{url}: sending the request: {e}"))?;
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                buf.truncate(i);
                break;
            }
            if buf.len() >= STATUS_LINE_MAX {
                return Err(format!(
                    "{url}: no status line in the first {STATUS_LINE_MAX} bytes"
                ));
            }
            let mut chunk = [0u8; 256];
            let n = conn
                .read(&mut chunk)
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let mut parts = line.split_whitespace();
        let status = match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
            _ => None,
        };
        match status {
            Some(code) if (200..=399).contains(&code) => Ok(()),
            Some(code) => Err(format!("{url}: status {code}")),
            None => Err(format!("{url}: not an HTTP answer: {:?}", line.trim_end())),
        }
    };
    match tokio::time::timeout(HTTP_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}: no answer within {HTTP_TIMEOUT:?}")),
    }
}

/// Kills a probe's whole process group when the probe is over or abandoned.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        killpg(self.0, libc::SIGKILL);
    }
}

async fn command_probe(
    command: &str,
    bound: Duration,
    ctx: &ProbeContext<'_>,
) -> Result<(), String> {
    let launch = LaunchSpec {
        path: PathBuf::from("/bin/sh"),
        argv: vec!["sh".into(), "-c".into(), command.into()],
        env: ctx.env.clone(),
        cwd: ctx.cwd.to_path_buf(),
        stdin_piped: false,
    };
    let cgroup = (
        crate::limits::commands_dir(),
        crate::limits::commands_procs(),
    );
    let child = tokio::task::spawn_blocking(move || launch.start(cgroup.0, cgroup.1))
        .await
        .map_err(|e| format!("starting the probe: {e}"))?
        .map_err(|e| format!("starting the probe: {e}"))?;
    let pid = i32::try_from(child.pid).unwrap_or(i32::MAX);
    // The probe leads a new session: its group is its pid. Whatever happens from here
    // (timeout, the service's exit dropping this future), the group is killed.
    let _kill = KillGroup(pid);
    // Its output is read and dropped, so a chatty probe never blocks on a full pipe.
    let drain = tokio::spawn(discard(child.stdout, child.stderr));
    let _abort = AbortOnDrop(drain);
    match tokio::time::timeout(bound, child.exit).await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "probe command exited with {}",
            super::exit_code(status)
        )),
        Err(_) => Err(format!(
            "probe command still running after {bound:?}: killed"
        )),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn discard(out: Option<std::process::ChildStdout>, err: Option<std::process::ChildStderr>) {
    async fn drain(fd: Option<std::os::fd::OwnedFd>) {
        let Some(fd) = fd else { return };
        let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
    tokio::join!(drain(out.map(Into::into)), drain(err.map(Into::into)));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        let p = |u: &str| parse_http_url(u).map(|(h, p, path, _)| (h, p, path));
        assert_eq!(
            p("http://localhost:8080/x?y").unwrap(),
            ("localhost".into(), 8080, "/x?y".into())
        );
        assert_eq!(
            p("http://127.0.0.1").unwrap(),
            ("127.0.0.1".into(), 80, "/".into())
        );
        assert_eq!(
            p("http://[::1]:9/h").unwrap(),
            ("::1".into(), 9, "/h".into())
        );
        assert!(p("https://x/").unwrap_err().contains("https"));
        assert!(p("ftp://x/").is_err());
        assert!(p("http://:80/").is_err());
        assert!(p("http://x:port/").is_err());
    }

    #[test]
    fn probes_are_checked() {
        let cmd = |t| Readiness::Command {
            command: "true".into(),
            timeout_ms: t,
        };
        assert!(check(&cmd(100)).is_ok());
        assert!(check(&cmd(0)).is_err());
        assert!(check(&cmd(PROBE_COMMAND_MAX_MS + 1)).is_err());
        assert!(check(&Readiness::File { path: "rel".into() }).is_err());
        assert!(
            check(&Readiness::Http {
                url: "https://x/".into()
            })
            .is_ok()
        );
        assert!(
            check(&Readiness::Http {
                url: "ftp://x/".into()
            })
            .is_err()
        );
    }
}
