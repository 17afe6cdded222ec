use std::os::unix::fs::PermissionsExt;

use super::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    tls_provider()
}

/// A full handshake in memory: a client trusting `root` asks for `name`.
fn handshake(
    ca: Arc<WorkspaceCa>,
    root: &CertificateDer<'static>,
    name: &str,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(ca);
    let mut c = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(name.to_owned()).unwrap(),
    )?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn a_new_ca_is_private_loads_back_and_signs_leaves_a_client_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let made = WorkspaceCa::create(&ca_dir, "ws-1").unwrap();
    let mode = |f: &str| {
        std::fs::metadata(ca_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(CA_KEY_FILE), 0o600);
    assert_eq!(mode(CA_CERT_FILE), 0o644);
    assert_eq!(mode("."), 0o700);
    // Never over an existing key.
    assert!(matches!(
        WorkspaceCa::create(&ca_dir, "ws-1"),
        Err(CaError::File { .. })
    ));

    let loaded = Arc::new(WorkspaceCa::load(&ca_dir).unwrap());
    assert_eq!(loaded.certificate(), made.certificate());
    let pem = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap();
    let der = pem_certificate(&pem).unwrap();
    let fields = der::certificate_fields(&der).unwrap();
    assert_eq!(
        der::common_name(fields.subject),
        Some("pyro workspace CA ws-1")
    );
    let not_after = fields.not_after.unwrap();
    assert!(not_after > SystemTime::now() + CA_VALIDITY - Duration::from_secs(86400));
    assert!(not_after < SystemTime::now() + CA_VALIDITY + Duration::from_secs(86400));

    // Leaves from the loaded CA and the made one both chain to ca.pem.
    handshake(loaded.clone(), made.certificate(), "api.example.test").unwrap();
    handshake(Arc::new(made), loaded.certificate(), "Other.Example.Test").unwrap();
    let first = loaded.leaf("api.example.test").unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &loaded.leaf("API.example.test").unwrap()
    ));

    // Another workspace's CA is not trusted for this one's leaves.
    let other = WorkspaceCa::create(&dir.path().join("other"), "ws-2").unwrap();
    assert!(handshake(loaded, other.certificate(), "api.example.test").is_err());
}

#[test]
fn the_leaf_cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = WorkspaceCa::create(dir.path(), "ws").unwrap();
    let first = ca.leaf("n0.test").unwrap();
    for i in 1..=MAX_CACHED_LEAVES {
        ca.leaf(&format!("n{i}.test")).unwrap();
    }
    let leaves = ca.leaves.lock().unwrap();
    assert_eq!(leaves.by_name.len(), MAX_CACHED_LEAVES);
    assert_eq!(leaves.order.len(), MAX_CACHED_LEAVES);
    assert!(!leaves.by_name.contains_key("n0.test"));
    drop(leaves);
    assert!(!Arc::ptr_eq(&first, &ca.leaf("n0.test").unwrap()));
}

#[test]
fn bad_ids_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for id in ["", "a b", "../x", &"x".repeat(MAX_ID_LEN + 1)] {
        assert!(matches!(
            WorkspaceCa::create(dir.path(), id),
            Err(CaError::BadId { .. })
        ));
    }
    assert!(matches!(
        WorkspaceCa::load(dir.path()),
        Err(CaError::File { .. })
    ));
    // A key that is not the certificate's.
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    WorkspaceCa::create(&a, "a").unwrap();
    WorkspaceCa::create(&b, "b").unwrap();
    std::fs::copy(b.join(CA_KEY_FILE), a.join("other.key")).unwrap();
    std::fs::remove_file(a.join(CA_KEY_FILE)).unwrap();
    std::fs::rename(a.join("other.key"), a.join(CA_KEY_FILE)).unwrap();
    assert!(matches!(
        WorkspaceCa::load(&a),
        Err(CaError::Invalid {
            reason: "ca.key is not the key of ca.pem",
            ..
        })
    ));
    std::fs::write(b.join(CA_CERT_FILE), "not pem").unwrap();
    assert!(matches!(
        WorkspaceCa::load(&b),
        Err(CaError::Invalid { .. })
    ));
}
