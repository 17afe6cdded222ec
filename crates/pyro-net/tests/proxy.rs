//! The egress proxy against the namespace-built world of `common/mod.rs`: a client in the
//! test's "host" namespace sends HTTP through the proxy (listening on that namespace's
//! 127.0.0.1, connecting upstream from it) to a server in the "internet" namespace. The
//! original destination comes from a closure, as no nft redirect is involved. Needs root,
//! `ip` and `nft`; skips with a printed reason without them. No packet leaves the
//! namespaces the test creates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pyro_net::proxy::{Denial, DenyReason, Passthrough, Proxy, ProxyConfig};
use pyro_net::{Allowlist, netns};

/// Answers each request head with `200` and the head it got, then closes.
fn http_server(ns: &str, stop: Arc<AtomicBool>, hits: Arc<AtomicUsize>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let listener = TcpListener::bind((PUBLIC, 80)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    hits.fetch_add(1, Ordering::Relaxed);
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                    let _ = conn.write_all(&head);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).expect("server started");
}

/// The proxy on its own thread and runtime; `stop` returns its denials.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: std::thread::JoinHandle<Vec<Denial>>,
}

fn start_proxy(ns: &str, allowlist: Allowlist, dst: SocketAddrV4) -> Running {
    let mut config = ProxyConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.listen_netns = Some(ns.to_owned());
    config.upstream_netns = Some(ns.to_owned());
    config.head_timeout = Duration::from_millis(300);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let proxy = Proxy::start(
                config,
                allowlist,
                Arc::new(move |_: &tokio::net::TcpStream| Ok(dst)),
                Arc::new(Passthrough),
            )
            .await
            .unwrap();
            addr_tx.send(proxy.local_addr()).unwrap();
            let _ = stopped.await;
            proxy.denials()
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    Running { addr, stop, handle }
}

/// Sends `request` from `ns` to the proxy and returns everything it answered.
fn exchange(ns: &str, proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    netns::run_in(ns, || {
        let mut conn = TcpStream::connect_timeout(&proxy, TIMEOUT).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        conn.write_all(request).unwrap();
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        reply
    })
    .unwrap()
}

#[test]
fn http_is_proxied_by_host_header_and_denials_are_recorded() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "px");
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    http_server(&world.internet.name, stop.clone(), hits.clone());
    let dst = SocketAddrV4::new(PUBLIC, 80);
    let allowlist = Allowlist::parse(["allowed.test"], [] as [&str; 0]).unwrap();
    let proxy = start_proxy(&world.host.name, allowlist, dst);
    let ns = &world.host.name;

    let allowed = b"GET /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    let reply = exchange(ns, proxy.addr, allowed);
    let mut want = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    want.extend_from_slice(allowed);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // Same address, another name: closed before anything reaches the server.
    let reply = exchange(
        ns,
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
    );
    assert!(reply.is_empty(), "{reply:?}");
    // Not HTTP, and silence past the timeout: both closed.
    assert!(exchange(ns, proxy.addr, b"\x16\x03\x01\x00\x05hello").is_empty());
    assert!(exchange(ns, proxy.addr, b"GET / HT").is_empty());
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    drop(proxy.stop);
    let denials = proxy.handle.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert_eq!(denials[0].host.as_deref(), Some("denied.test"));
    assert_eq!(denials[0].destination, Some(dst));
    assert_eq!(
        denials[0].reason,
        DenyReason::HostNotAllowed {
            host: "denied.test".to_owned()
        }
    );
    assert!(matches!(denials[1].reason, DenyReason::Http(_)));
    assert_eq!(denials[2].reason, DenyReason::Timeout);
}

// ---- Credential injection -------------------------------------------------------------

mod injection {
    use super::*;
    use std::sync::Mutex;

    use pyro_net::ca::{self, WorkspaceCa};
    use pyro_net::proxy::creds::{CredentialRule, Credentials};
    use pyro_net::proxy::{Injection, LeakPlace};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    const PLACEHOLDER: &str = "pyro-cred-00112233445566778899aabbccddeeff";
    const VALUE: &str = "sk-the-real-secret";

    /// A test CA (the "public" PKI of the test's internet) and a server certificate for
    /// `api.test` and `other.test` signed by it.
    struct TestPki {
        ca_pem: String,
        server_cert: CertificateDer<'static>,
        server_key: PrivateKeyDer<'static>,
    }

    fn test_pki() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["api.test".to_owned(), "other.test".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert: leaf.der().clone(),
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// Reads one request head (byte by byte: the stream may hold the next request).
    fn read_head(conn: &mut impl Read) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    fn header<'a>(head: &'a str, name: &str) -> &'a str {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .unwrap_or("")
    }

    /// Answers every request of a connection with its `Authorization` value as the body,
    /// and records it.
    fn serve(conn: &mut (impl Read + Write), seen: &Mutex<Vec<String>>) {
        while let Some(head) = read_head(conn) {
            let auth = header(&head, "authorization").to_owned();
            seen.lock().unwrap().push(auth.clone());
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{auth}",
                auth.len()
            );
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// HTTP on PUBLIC:80 and HTTPS on PUBLIC:443 in `ns`, recording `Authorization`.
    fn servers(ns: &str, pki: &TestPki, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<String>>>) {
        let config = rustls::ServerConfig::builder_with_provider(ca::tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
            .unwrap();
        let config = Arc::new(config);
        for port in [80u16, 443] {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (stop, seen, config) = (stop.clone(), seen.clone(), config.clone());
            netns::spawn_in(ns, move || {
                let listener = TcpListener::bind((PUBLIC, port)).unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((tcp, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    tcp.set_nonblocking(false).unwrap();
                    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
                    if port == 80 {
                        let mut tcp = tcp;
                        serve(&mut tcp, &seen);
                    } else {
                        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                        serve(&mut rustls::StreamOwned::new(conn, tcp), &seen);
                    }
                }
            });
            ready_rx.recv_timeout(TIMEOUT).expect("server started");
        }
    }

    /// Sends `requests` on one connection (TLS with SNI `sni` trusting `root`, or plain)
    /// and reads one response per request; what came back (bodies, or `Err` with the raw
    /// bytes of a response that was not 200).
    fn send(
        ns: &str,
        proxy: SocketAddr,
        tls: Option<(&str, &str)>,
        requests: &[String],
    ) -> Result<Vec<String>, String> {
        let (sni, root) = tls.map_or((None, None), |(s, r)| (Some(s), Some(r)));
        let (sni, root) = (sni.map(str::to_owned), root.map(str::to_owned));
        let requests = requests.to_vec();
        netns::run_in(ns, move || {
            let tcp = TcpStream::connect_timeout(&proxy, TIMEOUT).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut conn: Box<dyn ReadWrite> = match (sni, root) {
                (Some(sni), Some(root)) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let der =
                        rustls::pki_types::pem::PemObject::from_pem_slice(root.as_bytes()).unwrap();
                    roots.add(der).unwrap();
                    let config = rustls::ClientConfig::builder_with_provider(ca::tls_provider())
                        .with_safe_default_protocol_versions()
                        .unwrap()
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    let conn = rustls::ClientConnection::new(
                        Arc::new(config),
                        ServerName::try_from(sni).unwrap(),
                    )
                    .unwrap();
                    Box::new(rustls::StreamOwned::new(conn, tcp))
                }
                _ => Box::new(tcp),
            };
            let mut bodies = Vec::new();
            for request in &requests {
                conn.write_all(request.as_bytes())
                    .map_err(|e| e.to_string())?;
                let head = read_head(&mut conn).ok_or("no response")?;
                let len: usize = header(&head, "content-length").parse().unwrap_or(0);
                let mut body = vec![0u8; len];
                conn.read_exact(&mut body).map_err(|e| e.to_string())?;
                let body = String::from_utf8_lossy(&body).into_owned();
                if !head.starts_with("HTTP/1.1 200 ") {
                    return Err(format!("{head}{body}"));
                }
                bodies.push(body);
            }
            Ok(bodies)
        })
        .unwrap()
    }

    trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}

    fn get(host: &str, auth: &str) -> String {
        format!("GET /v1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {auth}\r\n\r\n")
    }

    #[test]
    fn credentials_are_injected_for_their_hosts_and_blocked_elsewhere() {
        let Some(tools) = tools() else { return };
        let world = World::new(&tools, "cred");
        let pki = test_pki();
        let (stop, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        );
        servers(&world.internet.name, &pki, stop.clone(), seen.clone());

        let dir = tempfile::tempdir().unwrap();
        let workspace_ca = WorkspaceCa::create(&dir.path().join("ca"), "ws-test").unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca").join(ca::CA_CERT_FILE)).unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, &pki.ca_pem).unwrap();
        let credentials = Credentials::new(vec![CredentialRule {
            name: "API_KEY".into(),
            placeholder: PLACEHOLDER.into(),
            value: VALUE.into(),
            hosts: vec!["api.test".parse().unwrap()],
        }])
        .unwrap();
        let injection = Injection::new(credentials, workspace_ca, None, Some(&roots)).unwrap();

        // One proxy; each connection's original destination is set before it is made.
        let dst = Arc::new(Mutex::new(SocketAddrV4::new(PUBLIC, 443)));
        let mut config = ProxyConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.listen_netns = Some(world.host.name.clone());
        config.upstream_netns = Some(world.host.name.clone());
        config.head_timeout = Duration::from_secs(2);
        config.injection = Some(Arc::new(injection));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_proxy, stopped) = tokio::sync::oneshot::channel::<()>();
        let d = dst.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let proxy = Proxy::start(
                    config,
                    Allowlist::default(),
                    Arc::new(move |_: &tokio::net::TcpStream| Ok(*d.lock().unwrap())),
                    Arc::new(Passthrough),
                )
                .await
                .unwrap();
                addr_tx.send(proxy.local_addr()).unwrap();
                let _ = stopped.await;
                (proxy.denials(), proxy.stats())
            })
        });
        let proxy = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let ns = world.host.name.clone();
        let to = |port| *dst.lock().unwrap() = SocketAddrV4::new(PUBLIC, port);
        let taken = || std::mem::take(&mut *seen.lock().unwrap());

        // HTTPS to the credential host, through the workspace CA: the server sees the value,
        // on every request of the connection; the guest only ever sends the placeholder.
        to(443);
        let plain = "GET /plain HTTP/1.1\r\nHost: api.test\r\n\r\n".to_owned();
        let bodies = send(
            &ns,
            proxy,
            Some(("api.test", &ca_pem)),
            &[
                get("api.test", PLACEHOLDER),
                plain,
                get("api.test", PLACEHOLDER),
            ],
        )
        .unwrap();
        let real = format!("Bearer {VALUE}");
        assert_eq!(bodies, vec![real.clone(), String::new(), real.clone()]);
        assert_eq!(taken(), vec![real.clone(), String::new(), real.clone()]);

        // Plain HTTP to the credential host: the same.
        to(80);
        let bodies = send(&ns, proxy, None, &[get("api.test", PLACEHOLDER)]).unwrap();
        assert_eq!(bodies, vec![real.clone()]);
        assert_eq!(taken(), vec![real.clone()]);

        // Plain HTTP to another (allowed) host with the placeholder: 403, nothing upstream.
        let refused = send(&ns, proxy, None, &[get("other.test", PLACEHOLDER)]).unwrap_err();
        assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
        assert!(refused.contains("credential_to_other_host"), "{refused}");
        assert!(!refused.contains(VALUE), "{refused}");
        // A later request on a good connection: the connection is cut.
        let cut = send(
            &ns,
            proxy,
            None,
            &[get("api.test", "x"), get("other.test", PLACEHOLDER)],
        );
        assert!(cut.is_err(), "{cut:?}");
        assert_eq!(taken(), vec!["Bearer x".to_owned()]);

        // Intercepted TLS asking for another host inside: refused.
        to(443);
        let mismatch = send(
            &ns,
            proxy,
            Some(("api.test", &ca_pem)),
            &[get("other.test", "x")],
        )
        .unwrap_err();
        assert!(mismatch.starts_with("HTTP/1.1 403 "), "{mismatch}");
        assert!(taken().is_empty());

        // TLS to a host no rule names is not intercepted: the guest talks to the real
        // server (its certificate, not the workspace CA's), and a placeholder sent there is
        // just the placeholder.
        let bodies = send(
            &ns,
            proxy,
            Some(("other.test", &pki.ca_pem)),
            &[get("other.test", PLACEHOLDER)],
        )
        .unwrap();
        assert_eq!(bodies, vec![format!("Bearer {PLACEHOLDER}")]);
        assert_eq!(taken(), vec![format!("Bearer {PLACEHOLDER}")]);
        // ...and a guest trusting only the workspace CA cannot reach it.
        assert!(
            send(
                &ns,
                proxy,
                Some(("other.test", &ca_pem)),
                &[get("other.test", "x")]
            )
            .is_err()
        );

        drop(stop_proxy);
        let (denials, stats) = handle.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(stats.credentials_injected, 3, "{denials:?}");
        assert_eq!(stats.credentials_blocked, 2, "{denials:?}");
        let reasons: Vec<_> = denials.iter().map(|d| d.reason.clone()).collect();
        let leak = DenyReason::Credential {
            rule: "API_KEY".into(),
            host: "other.test".into(),
            place: LeakPlace::OtherHost,
        };
        assert_eq!(reasons[0], leak);
        assert_eq!(reasons[1], leak);
        assert_eq!(
            reasons[2],
            DenyReason::HostMismatch {
                host: "other.test".into(),
                server_name: "api.test".into()
            }
        );
        assert_eq!(denials[0].host.as_deref(), Some("other.test"));
        assert_eq!(denials[0].destination, Some(SocketAddrV4::new(PUBLIC, 80)));
        assert!(
            denials
                .iter()
                .all(|d| !d.reason.to_string().contains(VALUE))
        );
    }
}
