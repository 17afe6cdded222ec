//! The per-workspace certificate authority of credential injection.
//!
//! The egress proxy terminates the guest's TLS to a credential host (see
//! [`crate::proxy::creds`]) with a leaf certificate for that name, signed by a CA made for
//! the workspace alone. The guest trusts the CA (the core installs `ca.pem` in its trust
//! store); the host keeps its key: the guest never sees `ca.key`, so it can neither mint
//! certificates nor read another workspace's traffic.
//!
//! - [`WorkspaceCa::create`] makes the CA in a directory: an ECDSA P-256 key in `ca.key`
//!   (mode 0600 from the moment it is opened, `O_EXCL`: never readable by others, never
//!   over an existing file) and the certificate in `ca.pem` (0644): CN
//!   `pyro workspace CA <id>`, CA with path length 0, key usages `keyCertSign` and
//!   `cRLSign`, valid [`CA_VALIDITY`] from an hour ago.
//! - [`WorkspaceCa::load`] reads them back (checking that the key is the certificate's).
//! - [`WorkspaceCa::leaf`] mints a leaf for a server name on demand (ECDSA P-256, the name
//!   as its only SAN, `serverAuth`, valid [`LEAF_VALIDITY`] and never past the CA), cached
//!   in memory (at most [`MAX_CACHED_LEAVES`], the oldest forgotten first).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The CA certificate's file in the CA directory (PEM, 0644).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file in the CA directory (PKCS#8 PEM, 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How long a leaf is valid (at most; never past the CA).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most leaves kept in memory.
pub const MAX_CACHED_LEAVES: usize = 64;
/// How far back validity starts (clocks of guest and host may differ a little).
const BACKDATE: Duration = Duration::from_secs(3600);
/// Most bytes read from `ca.pem` or `ca.key`.
const MAX_PEM: u64 = 64 * 1024;
/// Longest workspace id in a CA's name.
pub const MAX_ID_LEN: usize = 64;
/// The common name's prefix.
const CN_PREFIX: &str = "pyro workspace CA ";

/// Why the CA could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The workspace id is not 1 to [`MAX_ID_LEN`] letters, digits, `-` or `_`.
    #[error("`{id}` is not a usable workspace id for a CA")]
    BadId {
        /// The id (cut to 80 characters).
        id: String,
    },
    /// A file could not be written or read.
    #[error("CA file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The files are not a CA this module made.
    #[error("CA files in {dir}: {reason}")]
    Invalid {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Key generation or signing failed.
    #[error("certificate generation failed")]
    Generate {
        /// Why.
        source: rcgen::Error,
    },
    /// A leaf's key could not be loaded for TLS.
    #[error("leaf key for TLS")]
    Key {
        /// Why.
        source: rustls::Error,
    },
}

fn generate(source: rcgen::Error) -> CaError {
    CaError::Generate { source }
}

/// A workspace's CA, loaded, with its cache of leaves.
pub struct WorkspaceCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
    leaves: Mutex<Leaves>,
}

impl std::fmt::Debug for WorkspaceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's own Debug elides the key.
        f.debug_struct("WorkspaceCa")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Leaves {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    order: VecDeque<String>,
}

fn ca_params(id: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{CN_PREFIX}{id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    params
}

fn check_id(id: &str) -> Result<(), CaError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CaError::BadId {
            id: id.chars().take(80).collect(),
        })
    }
}

impl WorkspaceCa {
    /// Makes a new CA for workspace `id` in `dir` (created if missing, 0700 when made):
    /// `ca.key` first, created exclusively with mode 0600, then `ca.pem`. Refuses to replace
    /// an existing key.
    pub fn create(dir: &Path, id: &str) -> Result<WorkspaceCa, CaError> {
        check_id(id)?;
        let file = |path: PathBuf| move |source| CaError::File { path, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(file(dir.to_owned()))?;
        let key = KeyPair::generate().map_err(generate)?;
        let params = ca_params(id, SystemTime::now());
        let cert = params.self_signed(&key).map_err(generate)?;

        let key_path = dir.join(CA_KEY_FILE);
        let mut key_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(file(key_path.clone()))?;
        key_file
            .write_all(key.serialize_pem().as_bytes())
            .and_then(|()| key_file.sync_all())
            .map_err(file(key_path.clone()))?;

        // The certificate through a temporary file and a rename: never half-written.
        let cert_path = dir.join(CA_CERT_FILE);
        let tmp = dir.join(format!(".{CA_CERT_FILE}.tmp"));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(cert.pem().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &cert_path)
        })();
        written.map_err(file(cert_path))?;
        Ok(WorkspaceCa {
            cert: cert.der().clone(),
            not_after: SystemTime::now() + CA_VALIDITY,
            issuer: Issuer::new(params, key),
            leaves: Mutex::default(),
        })
    }

    /// Reads the CA in `dir` ([`WorkspaceCa::create`]'s files) back.
    pub fn load(dir: &Path) -> Result<WorkspaceCa, CaError> {
        let invalid = |reason| CaError::Invalid {
            dir: dir.to_owned(),
            reason,
        };
        let cert_pem = read_small(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_small(&dir.join(CA_KEY_FILE))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| invalid("ca.key is not a key"))?;
        let cert = pem_certificate(&cert_pem).ok_or(invalid("ca.pem is not a certificate"))?;
        let fields = der::certificate_fields(&cert).ok_or(invalid("ca.pem cannot be read"))?;
        if fields.spki != key.subject_public_key_info().as_slice() {
            return Err(invalid("ca.key is not the key of ca.pem"));
        }
        let cn = der::common_name(fields.subject).ok_or(invalid("ca.pem has no pyro CA name"))?;
        let id = cn
            .strip_prefix(CN_PREFIX)
            .ok_or(invalid("ca.pem has no pyro CA name"))?;
        check_id(id)?;
        let mut params = ca_params(id, SystemTime::now());
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(cn.to_owned()));
        let not_after = fields
            .not_after
            .unwrap_or(SystemTime::now() + LEAF_VALIDITY);
        let subject = fields.subject.to_vec();
        let ca = WorkspaceCa {
            cert: CertificateDer::from(cert),
            not_after,
            issuer: Issuer::new(params, key),
            leaves: Mutex::default(),
        };
        // The rebuilt issuer name must be the certificate's, byte for byte, or no client
        // would chain a leaf to it.
        let probe = ca.sign_leaf("probe.invalid")?;
        let issuer = der::certificate_fields(probe.0.as_ref()).map(|f| f.issuer);
        if issuer != Some(subject.as_slice()) {
            return Err(invalid("ca.pem's name cannot be reproduced"));
        }
        Ok(ca)
    }

    /// The CA certificate (DER), for a trust store.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A leaf certificate and key for `name` (a DNS name), from the cache or minted now.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = name.to_ascii_lowercase();
        {
            let leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = leaves.by_name.get(&name) {
                return Ok(hit.clone());
            }
        }
        let (cert, key) = self.sign_leaf(&name)?;
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&key)
            .map_err(|source| CaError::Key { source })?;
        let certified = Arc::new(CertifiedKey::new(vec![cert], key));
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if !leaves.by_name.contains_key(&name) {
            if leaves.order.len() >= MAX_CACHED_LEAVES
                && let Some(old) = leaves.order.pop_front()
            {
                leaves.by_name.remove(&old);
            }
            leaves.order.push_back(name.clone());
        }
        leaves.by_name.insert(name, certified.clone());
        Ok(certified)
    }

    fn sign_leaf(
        &self,
        name: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate().map_err(generate)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            name.to_owned().try_into().map_err(generate)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

/// A TLS server certificate resolver minting leaves by the ClientHello's name.
impl rustls::server::ResolvesServerCert for WorkspaceCa {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.leaf(hello.server_name()?).ok()
    }
}

/// The TLS provider of the proxy's both sides: ring (not aws-lc, which needs cmake and builds
/// slowly), with its default suites and groups.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Deprecated since rustls 0.23.48 because ring offers no post-quantum key exchange;
    // the choice of ring is deliberate (see above), and X25519 and the NIST curves remain.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

fn read_small(path: &Path) -> Result<String, CaError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM).read_to_string(&mut text))
        .map_err(|source| CaError::File {
            path: path.to_owned(),
            source,
        })?;
    Ok(text)
}

/// The first `CERTIFICATE` block of a PEM text, decoded.
pub(crate) fn pem_certificate(text: &str) -> Option<Vec<u8>> {
    pem_certificates(text).into_iter().next()
}

/// Every `CERTIFICATE` block of a PEM text, decoded (others skipped).
pub(crate) fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (&mut body, line) {
            (None, "-----BEGIN CERTIFICATE-----") => body = Some(String::new()),
            (Some(b64), "-----END CERTIFICATE-----") => {
                if let Some(der) = base64_decode(b64) {
                    out.push(der);
                }
                body = None;
            }
            (Some(b64), line) => b64.push_str(line),
            (None, _) => {}
        }
    }
    out
}

/// Decodes standard base64 (RFC 4648; padding optional); `None` for any other character.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text.trim_end_matches('=').as_bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Just enough DER to find a certificate's names, key and expiry: bounded and safe on any
/// input (every length is checked against what is left).
mod der {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Parts of a certificate, as raw DER (tag and length included).
    pub(crate) struct Fields<'a> {
        pub(crate) issuer: &'a [u8],
        pub(crate) subject: &'a [u8],
        pub(crate) spki: &'a [u8],
        pub(crate) not_after: Option<SystemTime>,
    }

    /// One TLV: its tag, its content, the whole TLV, and what follows.
    type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// The TLV at the start of `buf`.
    fn tlv(buf: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = buf.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let header = buf.len() - rest.len();
        Some((tag, &rest[..len], &buf[..header + len], &rest[len..]))
    }

    pub(crate) fn certificate_fields(cert: &[u8]) -> Option<Fields<'_>> {
        let (0x30, cert, _, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, tbs, _, _) = tlv(cert)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // version
        }
        let (_, _, _, rest) = tlv(rest)?; // serial
        let (_, _, _, rest) = tlv(rest)?; // signature algorithm
        let (0x30, _, issuer, rest) = tlv(rest)? else {
            return None;
        };
        let (0x30, validity, _, rest) = tlv(rest)? else {
            return None;
        };
        let (0x30, _, subject, rest) = tlv(rest)? else {
            return None;
        };
        let (0x30, _, spki, _) = tlv(rest)? else {
            return None;
        };
        let (_, _, _, after_start) = tlv(validity)?;
        let not_after = tlv(after_start).and_then(|(tag, t, _, _)| time(tag, t));
        Some(Fields {
            issuer,
            subject,
            spki,
            not_after,
        })
    }

    /// The first common name (UTF8String or PrintableString) in a Name.
    pub(crate) fn common_name(name: &[u8]) -> Option<&str> {
        let (0x30, mut rdns, _, _) = tlv(name)? else {
            return None;
        };
        while !rdns.is_empty() {
            let (0x31, set, _, rest) = tlv(rdns)? else {
                return None;
            };
            rdns = rest;
            let (0x30, attr, _, _) = tlv(set)? else {
                return None;
            };
            let (0x06, oid, _, value) = tlv(attr)? else {
                return None;
            };
            if oid == [0x55, 0x04, 0x03] {
                let (tag, text, _, _) = tlv(value)?;
                if tag == 0x0c || tag == 0x13 {
                    return std::str::from_utf8(text).ok();
                }
                return None;
            }
        }
        None
    }

    /// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
    fn time(tag: u8, t: &[u8]) -> Option<SystemTime> {
        let t = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
        let (year, rest) = match (tag, t.len()) {
            (0x17, 12) => {
                let yy: i64 = t.get(..2)?.parse().ok()?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
            }
            (0x18, 14) => (t.get(..4)?.parse().ok()?, t.get(4..)?),
            _ => return None,
        };
        let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
        let (month, day) = (num(0..2)?, num(2..4)?);
        let (h, m, s) = (num(4..6)?, num(6..8)?, num(8..10)?);
        let days = days_from_civil(year, month, day);
        let secs = days * 86400 + h * 3600 + m * 60 + s;
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn civil_days() {
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(days_from_civil(2000, 3, 1), 11017);
            let t = time(0x17, b"000301000000Z").unwrap();
            assert_eq!(t, UNIX_EPOCH + Duration::from_secs(11017 * 86400));
        }

        #[test]
        fn hostile_der_never_panics() {
            for n in 0..64u8 {
                let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
                let _ = certificate_fields(&bytes);
                let _ = common_name(&bytes);
            }
            assert!(certificate_fields(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        }
    }
}

#[cfg(test)]
mod tests;
