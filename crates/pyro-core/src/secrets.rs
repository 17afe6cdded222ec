//! Workspace secrets: declared at create, stored on the host only, given to one process at a
//! time as environment variables (`secret_env`), and redacted from what a model or a log
//! can see.
//!
//! - **Declaring** ([`SecretInput`]): a name (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`, unique) and
//!   either a literal value or a host file (confined to the allowed roots for MCP clients,
//!   a regular file), 1 byte to [`MAX_SECRET_BYTES`], UTF-8; at most [`MAX_SECRETS`].
//! - **On the host**: `<workspace>/secrets/` (0700) holds one file per secret,
//!   `<NAME>.secret` (0600), and `index.json` (0600) listing each name with its source kind
//!   (`literal` or `file`); nothing else of a secret is kept anywhere (not in the database).
//! - **In the guest**: never on its disk or filesystem. An exec that names a secret in
//!   `secret_env` gets its value in that process's environment, and only there.
//! - **Redaction** ([`Redactor`]): every value is replaced by [`REDACTED`] in the exec result,
//!   the live stream and the stored logs (one transform of the output pipeline, holding back
//!   the tail of a chunk that may begin a value, so a value split across two writes is
//!   caught), in file reads and diffs shown as results. Exports to a host path are the user's
//!   data and are not altered. Trivial encodings (base64, reversing) are not caught.
//! - **Credentials that never enter the guest** ([`SecretInput::hosts`], `--secret-host`):
//!   the guest's environment gets a placeholder (`pyro-cred-<32 hex>`, kept in
//!   `<NAME>.placeholder`), and the sandbox's egress proxy puts the value in its place in
//!   request headers to those hosts only, intercepting TLS with the workspace's own CA
//!   (`secrets/ca/`, its key 0600 on the host; its certificate is added to the guest's trust
//!   store at every boot). See `docs/secrets.md` for the threat model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::hostfs::HostPath;
use crate::output::Transform;

/// What replaces a secret's value.
pub const REDACTED: &str = "[REDACTED]";
/// Longest value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Most secrets per workspace.
pub const MAX_SECRETS: usize = 32;
/// The directory of a workspace's secrets, below its own.
const DIR: &str = "secrets";
/// The list of a workspace's secrets.
const INDEX: &str = "index.json";
/// The workspace CA's directory, below [`DIR`].
const CA_DIR: &str = "ca";

/// One secret to declare.
#[derive(Clone, Debug)]
pub struct SecretInput {
    /// Its name.
    pub name: String,
    /// Where its value comes from.
    pub source: SecretSource,
    /// Hosts it is a credential for (names or `*.suffix`): the guest sees a placeholder and
    /// the egress proxy sends the value to these hosts only. Empty: an ordinary secret.
    pub hosts: Vec<String>,
}

/// Where a secret's value comes from.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// Given literally.
    Value(String),
    /// Read from a host file.
    File(HostPath),
}

/// A secret as a workspace's record shows it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretInfo {
    pub name: String,
    /// literal or file.
    pub source_kind: String,
    /// Hosts the value goes to (the guest sees only a placeholder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

fn invalid(field: &'static str, reason: String) -> CoreError {
    CoreError::Invalid { field, reason }
}

/// Checks a secret or environment variable name.
pub fn check_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "`{}` is not a name: letters, digits and _, not starting with a digit, at most 64",
                name.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// Validates `inputs` and reads their values: names unique, values 1 byte to
/// [`MAX_SECRET_BYTES`] of UTF-8, files regular (read with a bound). Nothing is written.
pub fn resolve(inputs: &[SecretInput]) -> Result<Vec<(SecretInfo, String)>> {
    if inputs.len() > MAX_SECRETS {
        return Err(invalid(
            "secrets",
            format!("{} secrets; at most {MAX_SECRETS}", inputs.len()),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        check_name("secrets", &input.name)?;
        if !seen.insert(input.name.clone()) {
            return Err(invalid(
                "secrets",
                format!("`{}` is declared twice", input.name),
            ));
        }
        let (value, kind) = match &input.source {
            SecretSource::Value(v) => (v.clone(), "literal"),
            SecretSource::File(path) => {
                let bytes =
                    crate::hostfs::read_bounded_at(path, MAX_SECRET_BYTES as u64).map_err(|e| {
                        invalid(
                            "secrets",
                            format!(
                                "`{}`: file_path {}: {e}",
                                input.name,
                                path.shown().display()
                            ),
                        )
                    })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    invalid(
                        "secrets",
                        format!("`{}`: the file is not UTF-8", input.name),
                    )
                })?;
                (text, "file")
            }
        };
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(invalid(
                "secrets",
                format!(
                    "`{}`: a value is 1 byte to {MAX_SECRET_BYTES} bytes, got {}",
                    input.name,
                    value.len()
                ),
            ));
        }
        let mut hosts = Vec::with_capacity(input.hosts.len());
        for h in &input.hosts {
            let p: pyro_net::policy::HostPattern = h
                .parse()
                .map_err(|e| invalid("secret_hosts", format!("`{}`: {e}", input.name)))?;
            hosts.push(p.to_string());
        }
        if !hosts.is_empty() {
            // The proxy's own rules (value without control characters, size, host count).
            let rule = pyro_net::proxy::creds::CredentialRule {
                name: input.name.clone(),
                placeholder: format!(
                    "{}{}",
                    pyro_net::proxy::creds::PLACEHOLDER_PREFIX,
                    "0".repeat(pyro_net::proxy::creds::PLACEHOLDER_HEX)
                ),
                value: value.clone(),
                hosts: hosts.iter().filter_map(|h| h.parse().ok()).collect(),
            };
            rule.validate()
                .map_err(|e| invalid("secret_hosts", e.to_string()))?;
        }
        out.push((
            SecretInfo {
                name: input.name.clone(),
                source_kind: kind.into(),
                hosts,
            },
            value,
        ));
    }
    Ok(out)
}

/// Writes resolved secrets into `workspace_dir/secrets` (0700; files 0600, written
/// atomically; the index last).
pub fn store(workspace_dir: &Path, secrets: &[(SecretInfo, String)]) -> Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    let dir = workspace_dir.join(DIR);
    crate::host::ensure_private_dir(&dir)?;
    for (info, value) in secrets {
        let path = dir.join(format!("{}.secret", info.name));
        pyro_host::fs::atomic_write(&path, value.as_bytes(), 0o600)
            .map_err(|e| CoreError::io("write", &path, e))?;
        if !info.hosts.is_empty() {
            let placeholder = pyro_net::proxy::creds::new_placeholder()
                .map_err(|e| invalid("secrets", format!("cannot make a placeholder: {e}")))?;
            let path = dir.join(format!("{}.placeholder", info.name));
            pyro_host::fs::atomic_write(&path, placeholder.as_bytes(), 0o600)
                .map_err(|e| CoreError::io("write", &path, e))?;
        }
    }
    if secrets.iter().any(|(i, _)| !i.hosts.is_empty()) {
        let ca = dir.join(CA_DIR);
        let id = workspace_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        pyro_net::ca::WorkspaceCa::create(&ca, &id)
            .map_err(|e| invalid("secrets", format!("cannot make the workspace CA: {e}")))?;
    }
    let infos: Vec<&SecretInfo> = secrets.iter().map(|(i, _)| i).collect();
    let index = dir.join(INDEX);
    let body = serde_json::to_vec(&infos).map_err(|e| invalid("secrets", e.to_string()))?;
    pyro_host::fs::atomic_write(&index, &body, 0o600).map_err(|e| CoreError::io("write", &index, e))
}

/// The secrets of the workspace in `workspace_dir` (names and kinds; none when it has none).
pub fn list(workspace_dir: &Path) -> Vec<SecretInfo> {
    let path = workspace_dir.join(DIR).join(INDEX);
    crate::hostfs::read_bounded(&path, 64 * 1024)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Every secret value of the workspace in `workspace_dir`, by name.
pub fn values(workspace_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for info in list(workspace_dir) {
        let path: PathBuf = workspace_dir
            .join(DIR)
            .join(format!("{}.secret", info.name));
        let bytes = crate::hostfs::read_bounded(&path, MAX_SECRET_BYTES as u64)
            .map_err(|e| CoreError::io("read", &path, std::io::Error::other(e.to_string())))?;
        out.insert(info.name, String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(out)
}

/// What the guest may see of each secret, by name: the value of an ordinary secret, the
/// placeholder of a credential (one with hosts).
pub fn guest_values(workspace_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = values(workspace_dir)?;
    for info in list(workspace_dir) {
        if info.hosts.is_empty() {
            continue;
        }
        let path = workspace_dir
            .join(DIR)
            .join(format!("{}.placeholder", info.name));
        let bytes = crate::hostfs::read_bounded(&path, 256)
            .map_err(|e| CoreError::io("read", &path, std::io::Error::other(e.to_string())))?;
        out.insert(info.name, String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(out)
}

/// The egress proxy's rules for the workspace's credentials (none for a sandbox without).
pub fn credential_rules(
    workspace_dir: &Path,
) -> Result<Vec<pyro_net::proxy::creds::CredentialRule>> {
    let infos: Vec<SecretInfo> = list(workspace_dir)
        .into_iter()
        .filter(|i| !i.hosts.is_empty())
        .collect();
    if infos.is_empty() {
        return Ok(Vec::new());
    }
    let values = values(workspace_dir)?;
    let guest = guest_values(workspace_dir)?;
    Ok(infos
        .into_iter()
        .map(|i| pyro_net::proxy::creds::CredentialRule {
            value: values.get(&i.name).cloned().unwrap_or_default(),
            placeholder: guest.get(&i.name).cloned().unwrap_or_default(),
            hosts: i.hosts.iter().filter_map(|h| h.parse().ok()).collect(),
            name: i.name,
        })
        .collect())
}

/// The workspace CA's directory (`secrets/ca`), when the workspace has credentials.
pub fn ca_dir(workspace_dir: &Path) -> Option<PathBuf> {
    let dir = workspace_dir.join(DIR).join(CA_DIR);
    dir.join(pyro_net::ca::CA_CERT_FILE)
        .is_file()
        .then_some(dir)
}

/// Where the guest keeps the workspace CA's certificate (also appended to the system
/// bundle, `/etc/ssl/certs/ca-certificates.crt`).
pub const GUEST_CA_PATH: &str = "/usr/local/share/ca-certificates/pyro-workspace-ca.crt";

/// The variables a process given a credential also gets, so that runtimes with their own
/// trust stores (Node, Python requests, curl builds) trust the workspace CA.
pub fn ca_environment() -> [(&'static str, &'static str); 4] {
    [
        ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        ("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"),
        ("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"),
        ("NODE_EXTRA_CA_CERTS", GUEST_CA_PATH),
    ]
}

/// The environment an exec gets from `secret_env` (`SECRET -> ENV_VAR`; an empty variable
/// name means the secret's own name), with values from `values`.
pub fn environment(
    secret_env: &BTreeMap<String, String>,
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (secret, var) in secret_env {
        let Some(value) = values.get(secret) else {
            return Err(invalid(
                "secret_env",
                format!(
                    "no secret `{}` in this workspace",
                    secret.chars().take(80).collect::<String>()
                ),
            ));
        };
        let var = if var.is_empty() { secret } else { var };
        check_name("secret_env", var)?;
        env.insert(var.clone(), value.clone());
    }
    Ok(env)
}

/// The environment a process of the workspace in `workspace_dir` gets from `secret_env`:
/// values of ordinary secrets, placeholders of credentials (and, with a credential, the
/// variables of [`ca_environment`] unless `secret_env` sets them itself).
pub fn process_env(
    workspace_dir: &Path,
    secret_env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    if secret_env.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut env = environment(secret_env, &guest_values(workspace_dir)?)?;
    let credential = list(workspace_dir)
        .iter()
        .any(|i| !i.hosts.is_empty() && secret_env.contains_key(&i.name));
    if credential {
        for (k, v) in ca_environment() {
            env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    Ok(env)
}

/// Replaces every value in `text` by [`REDACTED`] (longest first). `cut`: `text` is the
/// beginning of something longer (a truncated read), so a tail that begins a value is
/// redacted too.
pub fn redact_str(text: &str, values: &[String], cut: bool) -> String {
    if values.is_empty() {
        return text.to_string();
    }
    let mut r = Redactor::new(values.to_vec());
    let mut out = r.feed(Bytes::copy_from_slice(text.as_bytes())).to_vec();
    out.extend_from_slice(&r.flush(cut));
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes with every secret value replaced by [`REDACTED`], and where each replacement came
/// from, so that offsets in the result map back to offsets in the input (a shell read's
/// cursor is an input offset; what is rendered is the redacted text).
#[derive(Debug, Default)]
pub(crate) struct Redacted {
    /// The redacted bytes (of the input up to [`Self::covered`]).
    pub bytes: Vec<u8>,
    /// Replacements: `(out_start, raw_start, raw_end)`; each is [`REDACTED`] long in `bytes`.
    spans: Vec<(usize, usize, usize)>,
    /// Input bytes the result accounts for: all of them, less a tail held back because it
    /// may begin a value (only with `hold_end`).
    pub covered: usize,
}

impl Redacted {
    /// The result offset of input offset `raw`; inside a replacement, its start.
    pub fn out_at_raw(&self, raw: usize) -> usize {
        let (mut out, mut at) = (0usize, 0usize);
        for &(o, rs, re) in &self.spans {
            if raw < rs {
                break;
            }
            if raw < re {
                return o;
            }
            out = o + REDACTED.len();
            at = re;
        }
        out + (raw - at)
    }

    /// The input offset of result offset `out`; inside a replacement, its end (so a cut in
    /// the middle of `[REDACTED]` never reads the value again).
    pub fn raw_at_out(&self, out: usize) -> usize {
        let (mut o_end, mut at) = (0usize, 0usize);
        for &(o, _, re) in &self.spans {
            if out <= o {
                break;
            }
            if out < o + REDACTED.len() {
                return re;
            }
            o_end = o + REDACTED.len();
            at = re;
        }
        at + (out - o_end)
    }
}

/// Replaces every value in `raw` (longest first). With `hold_end`, a tail that could still
/// begin a value is left out ([`Redacted::covered`] says where it starts).
pub(crate) fn redact_mapped(raw: &[u8], values: &[String], hold_end: bool) -> Redacted {
    let mut vals: Vec<&[u8]> = values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v.as_bytes())
        .collect();
    vals.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut r = Redacted {
        bytes: Vec::with_capacity(raw.len()),
        spans: Vec::new(),
        covered: raw.len(),
    };
    let mut i = 0;
    'scan: while i < raw.len() {
        let rest = &raw[i..];
        for v in &vals {
            if rest.starts_with(v) {
                r.spans.push((r.bytes.len(), i, i + v.len()));
                r.bytes.extend_from_slice(REDACTED.as_bytes());
                i += v.len();
                continue 'scan;
            }
        }
        if hold_end
            && vals
                .iter()
                .any(|v| v.len() > rest.len() && v.starts_with(rest))
        {
            r.covered = i;
            return r;
        }
        r.bytes.push(raw[i]);
        i += 1;
    }
    r
}

/// The longest value's length: how far back a read must look to catch a value that begins
/// before its cursor.
pub(crate) fn longest(values: &[String]) -> usize {
    values.iter().map(String::len).max().unwrap_or(0)
}

/// A streaming replacement of secret values by [`REDACTED`] (see the module docs): it keeps
/// back the tail of each chunk that is still the beginning of some value, so a value split
/// across chunks is caught.
pub(crate) struct Redactor {
    /// Values, longest first (a longer value containing a shorter one wins).
    values: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    /// A redactor of `values` (empty ones are ignored).
    pub(crate) fn new(values: Vec<String>) -> Self {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::into_bytes)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self {
            values,
            held: Vec::new(),
        }
    }

    /// Redacts `buf`; with `end` false, stops at the first position where a value could
    /// still begin (it is held for the next chunk).
    fn run(&mut self, buf: Vec<u8>, end: bool) -> Bytes {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            for v in &self.values {
                if rest.starts_with(v) {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += v.len();
                    continue 'scan;
                }
            }
            if !end
                && self
                    .values
                    .iter()
                    .any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                self.held = rest.to_vec();
                return Bytes::from(out);
            }
            out.push(buf[i]);
            i += 1;
        }
        self.held.clear();
        Bytes::from(out)
    }
}

impl Transform for Redactor {
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.values.is_empty() {
            return chunk;
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(&chunk);
        self.run(buf, false)
    }

    fn flush(&mut self, cut: bool) -> Bytes {
        let buf = std::mem::take(&mut self.held);
        if cut && !buf.is_empty() {
            // Held only because it begins a value, and the stream went on unseen: it may be
            // part of that value.
            self.held.clear();
            return Bytes::from_static(REDACTED.as_bytes());
        }
        self.run(buf, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_chunks(values: &[&str], chunks: &[&str]) -> String {
        let mut r = Redactor::new(values.iter().map(|v| v.to_string()).collect());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.feed(Bytes::copy_from_slice(c.as_bytes())));
        }
        out.extend_from_slice(&r.flush(false));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_redacted_however_the_stream_is_cut() {
        let text = "token=s3cr3t-value; again s3cr3t-value. s3cr3t";
        let want = "token=[REDACTED]; again [REDACTED]. s3cr3t";
        // Every way of cutting the text into two and three chunks.
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let got = redact_chunks(&["s3cr3t-value"], &[&text[..a], &text[a..b], &text[b..]]);
                assert_eq!(got, want, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn the_longest_value_wins_and_a_held_prefix_that_ends_the_stream_is_emitted() {
        assert_eq!(
            redact_chunks(&["abc", "abcdef"], &["xxabcdefyyabcz"]),
            "xx[REDACTED]yy[REDACTED]z"
        );
        assert_eq!(redact_chunks(&["abcdef"], &["xxabc"]), "xxabc");
        assert_eq!(redact_chunks(&[], &["abc"]), "abc");
        assert_eq!(
            redact_str("a-pass-b", &["pass".into()], false),
            "a-[REDACTED]-b"
        );
    }

    #[test]
    fn a_stream_cut_inside_a_value_does_not_show_its_beginning() {
        // The output (or a file read) stopped after "tok-3f": a stream that ended there
        // really printed only that; one that was cut may have gone on with the value.
        let values = vec!["tok-3f9a2c".to_string()];
        assert_eq!(redact_str("id=tok-3f", &values, false), "id=tok-3f");
        assert_eq!(redact_str("id=tok-3f", &values, true), "id=[REDACTED]");
        assert_eq!(redact_str("id=tok-xy", &values, true), "id=tok-xy");
    }

    #[test]
    fn names_inputs_and_environments_are_checked() {
        for bad in ["", "1ABC", "A-B", "a b", &"x".repeat(65)] {
            assert!(check_name("secrets", bad).is_err(), "{bad}");
        }
        check_name("secrets", "API_TOKEN_2").unwrap();
        let lit = |n: &str, v: &str| SecretInput {
            name: n.into(),
            source: SecretSource::Value(v.into()),
            hosts: Vec::new(),
        };
        assert!(
            resolve(&[lit("A", "x"), lit("A", "y")]).is_err(),
            "duplicate"
        );
        assert!(resolve(&[lit("A", "")]).is_err(), "empty");
        assert!(resolve(&[lit("A", &"x".repeat(MAX_SECRET_BYTES + 1))]).is_err());
        let many: Vec<SecretInput> = (0..=MAX_SECRETS)
            .map(|i| lit(&format!("S{i}"), "v"))
            .collect();
        assert!(resolve(&many).is_err());
        let ok = resolve(&[lit("A", "x")]).unwrap();
        assert_eq!(ok[0].0.source_kind, "literal");

        let values: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        let env = environment(&[("A".to_string(), String::new())].into(), &values).unwrap();
        assert_eq!(env["A"], "x");
        let env = environment(&[("A".to_string(), "TOKEN".to_string())].into(), &values).unwrap();
        assert_eq!(env["TOKEN"], "x");
        let err = environment(&[("B".to_string(), String::new())].into(), &values).unwrap_err();
        assert!(err.to_string().contains("no secret `B`"), "{err}");
        assert!(environment(&[("A".to_string(), "1X".to_string())].into(), &values).is_err());
    }

    #[test]
    fn stored_secrets_are_private_and_listed_without_values() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token.txt");
        std::fs::write(&file, "from-a-file").unwrap();
        let inputs = [
            SecretInput {
                name: "A".into(),
                source: SecretSource::Value("literal-value".into()),
                hosts: Vec::new(),
            },
            SecretInput {
                name: "B".into(),
                source: SecretSource::File(HostPath::from(file.as_path())),
                hosts: Vec::new(),
            },
        ];
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        store(&ws, &resolve(&inputs).unwrap()).unwrap();
        let listed = list(&ws);
        assert_eq!(
            listed,
            [
                SecretInfo {
                    name: "A".into(),
                    source_kind: "literal".into(),
                    hosts: Vec::new(),
                },
                SecretInfo {
                    name: "B".into(),
                    source_kind: "file".into(),
                    hosts: Vec::new(),
                }
            ]
        );
        let v = values(&ws).unwrap();
        assert_eq!(v["B"], "from-a-file");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ws.join("secrets")), 0o700);
        assert_eq!(mode(&ws.join("secrets/A.secret")), 0o600);
        assert_eq!(mode(&ws.join("secrets/index.json")), 0o600);
        assert!(
            !String::from_utf8_lossy(&std::fs::read(ws.join("secrets/index.json")).unwrap())
                .contains("literal-value")
        );
    }
    #[test]
    fn mapped_redaction_maps_offsets_both_ways_and_holds_a_possible_value() {
        let values = vec!["SECRET".to_string()];
        let raw = b"ab SECRET cd SEC";
        let r = redact_mapped(raw, &values, true);
        assert_eq!(r.bytes, b"ab [REDACTED] cd ");
        assert_eq!(r.covered, 13);
        // Before, inside and after the replacement.
        assert_eq!(r.out_at_raw(1), 1);
        assert_eq!(r.out_at_raw(5), 3);
        assert_eq!(r.out_at_raw(9), 13);
        assert_eq!(r.raw_at_out(2), 2);
        assert_eq!(r.raw_at_out(3), 3);
        assert_eq!(r.raw_at_out(7), 9);
        assert_eq!(r.raw_at_out(14), 10);
        // A read starting inside a value (cursor 5) shows the marker, not the value's tail.
        let from = r.out_at_raw(5);
        assert_eq!(&r.bytes[from..from + REDACTED.len()], REDACTED.as_bytes());
        let end = redact_mapped(raw, &values, false);
        assert_eq!(end.covered, raw.len());
        assert_eq!(end.bytes, b"ab [REDACTED] cd SEC");
    }
    #[test]
    fn a_credential_gives_the_guest_a_placeholder_and_the_proxy_its_rule() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("wsid1");
        std::fs::create_dir(&ws).unwrap();
        let input = |hosts: &[&str], value: &str| SecretInput {
            name: "API_KEY".into(),
            source: SecretSource::Value(value.into()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        // Bad hosts and header-breaking values are refused before anything is written.
        assert!(resolve(&[input(&["not a host"], "v")]).is_err());
        let err = resolve(&[input(&["api.example.org"], "v\r\nX-Evil: 1")]).unwrap_err();
        assert!(!err.to_string().contains("X-Evil"), "{err}");
        let ok = resolve(&[input(&["API.example.org", "*.example.net"], "real-value-1")]).unwrap();
        assert_eq!(ok[0].0.hosts, ["api.example.org", "*.example.net"]);
        store(&ws, &ok).unwrap();

        let guest = guest_values(&ws).unwrap();
        assert!(
            pyro_net::proxy::creds::is_placeholder(&guest["API_KEY"]),
            "{guest:?}"
        );
        assert_eq!(values(&ws).unwrap()["API_KEY"], "real-value-1");
        let env = process_env(&ws, &[("API_KEY".to_string(), String::new())].into()).unwrap();
        assert_eq!(env["API_KEY"], guest["API_KEY"]);
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], GUEST_CA_PATH);
        let rules = credential_rules(&ws).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].value, "real-value-1");
        assert_eq!(rules[0].placeholder, guest["API_KEY"]);
        assert!(rules[0].applies_to("api.example.org") && rules[0].applies_to("x.example.net"));
        assert!(!rules[0].applies_to("example.org"));
        let ca = ca_dir(&ws).expect("a workspace CA");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.join(pyro_net::ca::CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ws.join(DIR).join("API_KEY.placeholder")), 0o600);
        pyro_net::ca::WorkspaceCa::load(&ca).unwrap();
        // An ordinary secret: no CA, its value in the environment.
        let plain = dir.path().join("wsid2");
        std::fs::create_dir(&plain).unwrap();
        store(&plain, &resolve(&[input(&[], "plain-value")]).unwrap()).unwrap();
        assert!(ca_dir(&plain).is_none());
        assert!(credential_rules(&plain).unwrap().is_empty());
        let env = process_env(&plain, &[("API_KEY".to_string(), String::new())].into()).unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["API_KEY"], "plain-value");
    }
}
