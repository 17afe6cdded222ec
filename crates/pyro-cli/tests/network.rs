//! Networked sandboxes end to end: the real `pyro` binary boots real guests (QEMU/TCG here)
//! inside a small "internet" this test builds from network namespaces and veth pairs.
//!
//! The world of one test (`World`): a namespace playing the host (`<tag>-h`, address
//! 203.0.113.1, a service on 0.0.0.0:8080, default route into the internet), and one
//! playing the internet (`<tag>-i`): a web server on every address it has (198.51.100.10
//! and .11, "private" 10.9.9.9, "metadata" 169.254.169.254) serving a git repository over
//! dumb HTTP, and a DNS server on 198.51.100.53 that knows `repo.test` and `other.test`.
//! pyro runs with its network namespace switched to the host's (`setns`, no mount namespace
//! of its own, so the sandboxes' named namespaces are visible to every pyro process), and
//! `PYRO_NET_UPSTREAMS` points its resolver at the world's DNS server. No packet leaves the
//! namespaces the test creates.
//!
//! Needs root, `ip`, `nft` and `python3`; skips with a reason without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, text};

const HOST_WAN: &str = "203.0.113.1";
const REPO_IP: &str = "198.51.100.10";
const OTHER_IP: &str = "198.51.100.11";
const DNS_IP: &str = "198.51.100.53";
const PRIVATE_IP: &str = "10.9.9.9";
const METADATA_IP: &str = "169.254.169.254";

/// A fake DNS server: A records for two names, NXDOMAIN for the rest.
const DNS_SERVER: &str = r#"
import socket, struct, sys
table = {b"repo.test": "198.51.100.10", b"other.test": "198.51.100.11"}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, addr = s.recvfrom(512)
    try:
        qid, = struct.unpack(">H", q[:2])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
        qtype, = struct.unpack(">H", q[i + 1:i + 3])
        question = q[12:i + 5]
        ip = table.get(b".".join(labels).lower())
        if ip and qtype == 1:
            ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
            r = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + ans
        else:
            r = struct.pack(">HHHHHH", qid, 0x8180 | (0 if ip else 3), 1, 0, 0, 0) + question
        s.sendto(r, addr)
    except Exception:
        pass
"#;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `cmd` enter network namespace `ns` (only the network namespace, not a mount
/// namespace of its own, so that the sandboxes' named namespaces stay visible to every pyro
/// process) between fork and exec.
fn enter_on_spawn(cmd: &mut Command, ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns(2) between fork and exec on a descriptor the closure owns (open in the
    // parent until `cmd` is dropped, closed by exec in the child); no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor of a namespace file; the thread is ours alone.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

fn wait_listening(ns: &str, addr: &str) {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }) {
        assert!(Instant::now() < deadline, "{addr} in {ns} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test's world (see the module docs); removed on drop.
struct World {
    host: String,
    inet: String,
    _dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl World {
    /// The world, or `None` (with the reason printed) where it cannot be built.
    fn new(tag: &str) -> Option<World> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        for tool in ["ip", "nft", "python3", "git"] {
            if !have(tool) {
                eprintln!("skipped: needs {tool}");
                return None;
            }
        }
        let tag = format!("{tag}{}", std::process::id() % 10000);
        let (host, inet) = (format!("{tag}-h"), format!("{tag}-i"));
        for ns in [&host, &inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (hl, il) = (format!("{tag}h0"), format!("{tag}i0"));
        run(&[
            "ip", "-n", &host, "link", "add", &hl, "type", "veth", "peer", "name", &il, "netns",
            &inet,
        ]);
        run(&[
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            &format!("{HOST_WAN}/24"),
            "dev",
            &hl,
        ]);
        run(&["ip", "-n", &host, "link", "set", &hl, "up"]);
        run(&[
            "ip",
            "-n",
            &inet,
            "addr",
            "add",
            "203.0.113.254/24",
            "dev",
            &il,
        ]);
        run(&["ip", "-n", &inet, "link", "set", &il, "up"]);
        for a in [REPO_IP, OTHER_IP, DNS_IP, PRIVATE_IP, METADATA_IP] {
            run(&[
                "ip",
                "-n",
                &inet,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ]);
        }
        run(&[
            "ip",
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.254",
        ]);

        // A git repository served over dumb HTTP.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let www = dir.path().join("www");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&www).unwrap();
        let git = |cwd: &Path, args: &[&str]| {
            let out = Command::new("git")
                .args(args)
                .current_dir(cwd)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        };
        git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("README"), "hello from the world\n").unwrap();
        git(&src, &["add", "README"]);
        git(&src, &["commit", "-q", "-m", "first"]);
        git(
            dir.path(),
            &["clone", "-q", "--bare", "src", "www/repo.git"],
        );
        git(&www.join("repo.git"), &["update-server-info"]);
        let dns_script = dir.path().join("dns.py");
        std::fs::write(&dns_script, DNS_SERVER).unwrap();

        let spawn = |ns: &str, args: &[&str]| -> Child {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            Command::new("ip")
                .args(all)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let www_s = www.to_str().unwrap().to_string();
        let children = vec![
            spawn(
                &inet,
                &[
                    "python3",
                    "-m",
                    "http.server",
                    "80",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    &www_s,
                ],
            ),
            spawn(&inet, &["python3", dns_script.to_str().unwrap(), DNS_IP]),
            spawn(
                &host,
                &[
                    "python3",
                    "-m",
                    "http.server",
                    "8080",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    &www_s,
                ],
            ),
        ];
        let world = World {
            host,
            inet,
            _dir: dir,
            children,
        };
        wait_listening(&world.inet, &format!("{REPO_IP}:80"));
        wait_listening(&world.host, &format!("{HOST_WAN}:8080"));
        // Controls: what the guest must not reach is reachable from the host.
        for target in [PRIVATE_IP, METADATA_IP, REPO_IP] {
            wait_listening(&world.host, &format!("{target}:80"));
        }
        Some(world)
    }

    /// `pyro args` from the world's host namespace, with `env`'s state.
    fn pyro(&self, env: &Env, args: &[&str]) -> Output {
        let mut cmd = env.cmd();
        cmd.args(args)
            .env("PYRO_NET_UPSTREAMS", DNS_IP)
            .env("PYRO_BACKEND", "qemu");
        enter_on_spawn(&mut cmd, &self.host);
        cmd.output().unwrap()
    }

    /// `pyro args --json`, which must succeed.
    fn json(&self, env: &Env, args: &[&str]) -> serde_json::Value {
        let out = self.pyro(env, args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    }

    /// The host's links and nft tables of pyro (`pyro-*`), as one text.
    fn pyro_traces(&self) -> String {
        let links = Command::new("ip")
            .args(["-n", &self.host, "-o", "link"])
            .output()
            .unwrap();
        let tables = Command::new("ip")
            .args(["netns", "exec", &self.host, "nft", "list", "tables"])
            .output()
            .unwrap();
        let mut traces: Vec<String> = text(&links.stdout)
            .lines()
            .chain(text(&tables.stdout).lines())
            .filter(|l| l.contains("pyro-") && !l.contains("pyro-host"))
            .map(str::to_string)
            .collect();
        traces.sort();
        traces.join("\n")
    }
}

impl Drop for World {
    /// Also removes the networks of sandboxes this world's tests left (a failed test's):
    /// their uplinks are in the world's host namespace.
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(out) = Command::new("ip")
            .args(["-n", &self.host, "-o", "link"])
            .output()
        {
            for line in text(&out.stdout).lines() {
                let Some(name) = line.split(':').nth(1).map(str::trim) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                if name
                    .strip_prefix("pyro-")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                {
                    let _ = Command::new("ip").args(["netns", "del", name]).output();
                }
            }
        }
        for ns in [&self.host, &self.inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Sandbox namespaces (`pyro-N`) that exist now.
fn sandbox_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("pyro-")
                .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    names
}

/// A guest script that tries a TCP connection to `ip`:`port` (shell words, expanded) and
/// prints `LABEL: ok` or `LABEL: rc=N <error>`.
fn probe_as(label: &str, ip: &str, port: u16) -> String {
    format!(
        "if out=$(timeout 10 bash -c \"exec 3<>/dev/tcp/{ip}/{port}\" 2>&1); then echo '{label}: ok'; \
         else echo \"{label}: rc=$? $out\"; fi; "
    )
}

/// [`probe_as`] labelled `IP:PORT`.
fn probe(target: &str) -> String {
    let (ip, port) = target.split_once(':').unwrap();
    probe_as(target, ip, port.parse().unwrap())
}

fn line_for<'a>(stdout: &'a str, target: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{target}:")))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{stdout}"))
}

/// Builds (or finds) `environment` from this process's own namespace: the world has no
/// route to the package mirrors.
fn pull(env: &Env, environment: &str) {
    let out = env.pyro(&["env", "pull", environment]);
    assert!(out.status.success(), "env pull: {}", text(&out.stderr));
}

fn run_json(world: &World, env: &Env, extra: &[&str], script: &str) -> serde_json::Value {
    let mut args = vec!["run", "--network", "--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["debian:12", "--", "bash", "-c", script]);
    world.json(env, &args)
}

#[test]
fn egress_reaches_the_world_by_name_and_every_blocked_class_fails_fast() {
    let Some(world) = World::new("pne") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-egress");
    pull(&env, "debian:12");
    let mut script = String::from(
        "git ls-remote http://repo.test/repo.git; echo \"ls-remote rc=$?\"; \
         cat /sys/class/net/eth0/address; ",
    );
    // The issue's own check: the same git command against what must stay unreachable
    // fails at once with a clear error (not a timeout: rc 124).
    for (label, url) in [
        ("git-private", format!("http://{PRIVATE_IP}/repo.git")),
        ("git-metadata", format!("http://{METADATA_IP}/repo.git")),
        ("git-host", format!("http://{HOST_WAN}:8080/repo.git")),
    ] {
        script.push_str(&format!(
            "out=$(timeout 20 git ls-remote {url} 2>&1); echo \"{label}: rc=$? $out\"; "
        ));
    }
    let blocked = [
        "gateway:8080".to_string(),
        format!("{PRIVATE_IP}:80"),
        format!("{METADATA_IP}:80"),
        format!("{HOST_WAN}:8080"),
        format!("{DNS_IP}:53"),
        "10.201.0.1:8080".to_string(),
    ];
    for target in [format!("{REPO_IP}:80"), format!("{OTHER_IP}:80")]
        .iter()
        .chain(&blocked[1..])
    {
        script.push_str(&probe(target));
    }
    // The gateway (pyro's end of the link, in the sandbox's namespace) on a port other
    // than DNS.
    script.push_str(
        "gw=$(awk '$2==\"00000000\" {print $3}' /proc/net/route | head -1); \
         gw=$(printf '%d.%d.%d.%d' 0x${gw:6:2} 0x${gw:4:2} 0x${gw:2:2} 0x${gw:0:2}); \
         echo \"gateway $gw\"; ",
    );
    script.push_str(&probe_as("gateway:8080", "$gw", 8080));
    let r = run_json(&world, &env, &[], &script);
    let stdout = r["stdout"].as_str().unwrap();
    eprintln!("{stdout}");
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(stdout.contains("refs/heads/main"), "git by name: {stdout}");
    assert!(stdout.contains("ls-remote rc=0"), "{stdout}");
    assert_eq!(
        line_for(stdout, &format!("{REPO_IP}:80")),
        format!("{REPO_IP}:80: ok")
    );
    assert_eq!(
        line_for(stdout, &format!("{OTHER_IP}:80")),
        format!("{OTHER_IP}:80: ok")
    );
    for target in &blocked {
        let line = line_for(stdout, target);
        assert!(
            line.contains("No route to host") || line.contains("Connection refused"),
            "{target} must be refused at once (not time out, rc 124): {line}"
        );
    }
    assert!(stdout.contains("gateway 10.200."), "{stdout}");
    for label in ["git-private", "git-metadata", "git-host"] {
        let line = line_for(stdout, label);
        assert!(
            !line.contains("rc=0") && !line.contains("rc=124"),
            "{label} must fail, and fast: {line}"
        );
        assert!(
            line.contains("Couldn't connect to server"),
            "{label}: a clear error: {line}"
        );
    }
    // Nothing of the sandbox's network is left on the host.
    assert_eq!(world.pyro_traces(), "", "leftovers after a one-shot run");
}

/// A networked workspace's exec, which must succeed; its stdout.
fn ws_exec(world: &World, env: &Env, id: &str, script: &str) -> String {
    let r = world.json(
        env,
        &[
            "workspace",
            "exec",
            id,
            "--json",
            "--",
            "bash",
            "-c",
            script,
        ],
    );
    assert_eq!(r["exit_code"], 0, "{script}: {r}");
    r["stdout"].as_str().unwrap().to_string()
}

#[test]
fn an_allowlist_admits_only_allowed_names_and_every_refusal_is_shown() {
    let Some(world) = World::new("pna") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-allow");
    pull(&env, "debian:12");
    let info = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress",
            "--allow-host",
            "repo.test",
            "--json",
        ],
    );
    let id = info["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(info["network_policy"], "egress");
    assert_eq!(info["network_enabled"], true);
    let net = &info["network"];
    assert_eq!(net["allow_hosts"], serde_json::json!(["repo.test"]));
    let ns = net["namespace"].as_str().unwrap().to_string();
    assert!(
        sandbox_namespaces().contains(&ns),
        "{ns} exists while started"
    );
    assert_eq!(info["guest_ip"], net["guest_ip"]);

    // By name: allowed.
    let out = ws_exec(&world, &env, &id, "git ls-remote http://repo.test/repo.git");
    assert!(out.contains("refs/heads/main"), "{out}");
    // Other names: NXDOMAIN.
    let out = ws_exec(
        &world,
        &env,
        &id,
        "getent hosts other.test; echo \"getent rc=$?\"",
    );
    assert!(
        out.contains("getent rc=2"),
        "other.test must not resolve: {out}"
    );
    // An allowed address under another name (a shared CDN address), and a hard-coded
    // address: refused by the proxy; the allowed name still passes on the same address.
    let http = |host: &str, ip: &str| {
        format!(
            "exec 3<>/dev/tcp/{ip}/80 && printf 'GET /repo.git/info/refs HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 \
             && echo \"{host}@{ip}: $(timeout 10 head -c 15 <&3)\"; "
        )
    };
    let script = format!(
        "{}{}{}{}",
        http("repo.test", REPO_IP),
        http("other.test", REPO_IP),
        http(OTHER_IP, OTHER_IP),
        probe(&format!("{OTHER_IP}:8080"))
    );
    let out = ws_exec(&world, &env, &id, &script);
    assert!(
        out.contains(&format!("repo.test@{REPO_IP}: HTTP/1.0 200 OK")),
        "{out}"
    );
    assert!(out.contains(&format!("other.test@{REPO_IP}: \n")), "{out}");
    assert!(out.contains(&format!("{OTHER_IP}@{OTHER_IP}: \n")), "{out}");
    assert!(
        line_for(&out, &format!("{OTHER_IP}:8080")).contains("No route to host"),
        "an address no allowed name resolved to: {out}"
    );

    // Every refusal is counted and shown, with the name.
    let status = world.json(&env, &["workspace", "status", &id, "--json"]);
    let net = &status["network"];
    assert!(net["dns_denied"].as_u64().unwrap() >= 1, "{net}");
    assert!(net["connections_denied"].as_u64().unwrap() >= 2, "{net}");
    let denials = net["recent_denials"].as_array().unwrap();
    for name in ["other.test", OTHER_IP] {
        assert!(
            denials.iter().any(|d| d["name"] == name),
            "{name} in {denials:?}"
        );
    }

    // Stop removes the network; start makes one again with the same policy.
    world.json(&env, &["workspace", "stop", &id, "--json"]);
    assert!(!sandbox_namespaces().contains(&ns), "{ns} gone after stop");
    assert_eq!(
        world.pyro_traces(),
        "",
        "nothing left on the host after stop"
    );
    let started = world.json(&env, &["workspace", "start", &id, "--json"]);
    let ns = started["network"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        started["network"]["allow_hosts"],
        serde_json::json!(["repo.test"])
    );
    let out = ws_exec(&world, &env, &id, "git ls-remote http://repo.test/repo.git");
    assert!(out.contains("refs/heads/main"), "after a restart: {out}");
    // Reset keeps the policy too.
    world.json(&env, &["workspace", "reset", &id, "--json"]);
    let out = ws_exec(&world, &env, &id, "getent hosts other.test; echo rc=$?");
    assert!(out.contains("rc=2"), "after a reset: {out}");

    world.json(&env, &["workspace", "delete", &id, "--json"]);
    assert!(
        !sandbox_namespaces().contains(&ns),
        "{ns} gone after delete"
    );
    assert_eq!(
        world.pyro_traces(),
        "",
        "nothing left on the host after delete"
    );
}

#[test]
fn warm_clones_have_their_own_mac_and_address_and_cannot_reach_each_other() {
    let Some(world) = World::new("pnw") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-warm");
    pull(&env, "debian:12");
    let create = || {
        world.json(
            &env,
            &[
                "workspace",
                "create",
                "debian:12",
                "--network-policy",
                "egress",
                "--json",
            ],
        )
    };
    let (a, b) = (create(), create());
    let mut seen = Vec::new();
    for ws in [&a, &b] {
        let id = ws["workspace_id"].as_str().unwrap();
        assert_eq!(ws["metadata"]["boot_mode"], "warm", "{ws}");
        let out = ws_exec(
            &world,
            &env,
            id,
            "cat /sys/class/net/eth0/address; awk '/32 host/ {print f} {f=$2}' /proc/net/fib_trie | grep -v '^127' | sort -u",
        );
        let mut lines = out.lines();
        let mac = lines.next().unwrap().to_string();
        let ip = lines.next().unwrap_or_default().to_string();
        assert_eq!(mac, ws["network"]["mac_address"], "{out}");
        assert_eq!(ip, ws["network"]["guest_ip"], "{out}");
        seen.push((mac, ip));
    }
    assert_ne!(seen[0].0, seen[1].0, "MACs differ");
    assert_ne!(seen[0].1, seen[1].1, "addresses differ");
    // Each reaches the world, not the other.
    let a_id = a["workspace_id"].as_str().unwrap();
    let out = ws_exec(
        &world,
        &env,
        a_id,
        &format!(
            "git ls-remote http://repo.test/repo.git >/dev/null && echo world-ok; {}",
            probe(&format!("{}:9418", seen[1].1))
        ),
    );
    assert!(out.contains("world-ok"), "{out}");
    assert!(
        line_for(&out, &format!("{}:9418", seen[1].1)).contains("No route to host"),
        "{out}"
    );
    for ws in [&a, &b] {
        world.json(
            &env,
            &[
                "workspace",
                "delete",
                ws["workspace_id"].as_str().unwrap(),
                "--json",
            ],
        );
    }
    assert_eq!(world.pyro_traces(), "");
}

#[test]
fn a_killed_run_leaves_its_network_to_the_next_call() {
    let Some(world) = World::new("pnk") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-kill");
    pull(&env, "debian:12");
    let mut cmd = env.cmd();
    cmd.args(["run", "--network", "debian:12", "--", "sleep", "120"])
        .env("PYRO_NET_UPSTREAMS", DNS_IP)
        .env("PYRO_BACKEND", "qemu")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    enter_on_spawn(&mut cmd, &world.host);
    let mut child = cmd.spawn().unwrap();
    // This world's sandbox networks are those whose uplink is in its host namespace.
    let deadline = Instant::now() + Duration::from_secs(120);
    let made = loop {
        let mine: Vec<String> = sandbox_namespaces()
            .into_iter()
            .filter(|n| {
                world.pyro_traces().contains(&format!("{n}:"))
                    || world.pyro_traces().contains(&format!("{n}@"))
            })
            .collect();
        // Wait until the guest runs its command (the daemon is up by then).
        if !mine.is_empty()
            && std::fs::read_dir(env.state.path().join("vms")).is_ok_and(|d| d.count() > 0)
        {
            std::thread::sleep(Duration::from_secs(3));
            break mine;
        }
        assert!(Instant::now() < deadline, "no sandbox network appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // The next call reaps the orphan: its daemon, namespace, uplink and tables.
    let r = world.json(&env, &["run", "--json", "debian:12", "--", "true"]);
    assert_eq!(r["exit_code"], 0);
    for ns in &made {
        assert!(!sandbox_namespaces().contains(ns), "{ns} reaped");
    }
    assert_eq!(world.pyro_traces(), "", "nothing left after reaping");
}

#[test]
fn without_a_network_there_is_no_card_and_bad_network_input_changes_nothing() {
    let env = Env::with_prefix("pyro-net-off");
    // Invalid input is refused before anything is made (no world needed).
    for (args, needle) in [
        (
            vec![
                "workspace",
                "create",
                "debian:12",
                "--allow-host",
                "repo.test",
            ],
            "allow_hosts",
        ),
        (
            vec![
                "workspace",
                "create",
                "debian:12",
                "--network-policy",
                "bogus",
            ],
            "unknown network policy",
        ),
        (
            vec![
                "workspace",
                "create",
                "debian:12",
                "--network-policy",
                "egress",
                "--allow-cidr",
                "127.0.0.0/8",
            ],
            "never allowed",
        ),
        (
            vec![
                "workspace",
                "create",
                "debian:12",
                "--network-policy",
                "egress",
                "--allow-host",
                "bad name!",
            ],
            "bad name!",
        ),
    ] {
        let err = env.err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let listed = env.ok_json(&["workspace", "list", "--json"]);
    assert_eq!(listed["count"], 0, "nothing was created");
    let out = env.pyro(&[
        "run",
        "--allow-host",
        "repo.test",
        "debian:12",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2), "--allow-host needs --network");
    // `off`: only the loopback interface.
    let r = env.ok_json(&["run", "--json", "debian:12", "--", "cat", "/proc/net/dev"]);
    let stdout = r["stdout"].as_str().unwrap();
    assert!(stdout.contains("lo:"), "{stdout}");
    assert!(
        !stdout.contains("eth0"),
        "no card without a network: {stdout}"
    );
}

/// Whether `git ls-remote git://ADDR/x.git` succeeds from the world's host namespace.
fn git_ls_remote_from_host(world: &World, addr: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.host,
            "timeout",
            "10",
            "git",
            "ls-remote",
        ])
        .arg(format!("git://{addr}/x.git"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_published_port_answers_on_the_hosts_loopback_only_and_ends_with_the_workspace() {
    let Some(world) = World::new("pnp") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-ports");
    pull(&env, "debian:12");
    // Plain egress publishes nothing.
    let plain = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress",
            "--json",
        ],
    );
    let plain_id = plain["workspace_id"].as_str().unwrap();
    let out = world.pyro(&env, &["workspace", "publish", plain_id, "9418"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("egress+published-ports"),
        "{}",
        text(&out.stderr)
    );
    world.json(&env, &["workspace", "delete", plain_id, "--json"]);

    let ws = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress+published-ports",
            "--json",
        ],
    );
    let id = ws["workspace_id"].as_str().unwrap().to_string();
    let published = world.json(&env, &["workspace", "publish", &id, "9418", "--json"]);
    assert_eq!(published["host"], "127.0.0.1");
    assert_eq!(published["guest_port"], 9418);
    let port = published["host_port"].as_u64().unwrap();
    assert!(port > 0);
    // A git daemon in the guest, for 12 s, in the background of this test.
    let server = {
        let (world_host, env_state) = (world.host.clone(), env.state.path().to_path_buf());
        std::thread::spawn(move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_pyro"));
            cmd.env("PYRO_STATE_DIR", env_state)
                .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
                .args(["workspace", "exec", &id, "--", "bash", "-c"])
                .arg(
                    "mkdir -p /tmp/r && git init -q --bare /tmp/r/x.git && \
                     timeout 12 git daemon --export-all --base-path=/tmp/r --reuseaddr \
                     --listen=0.0.0.0 --port=9418; true",
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            enter_on_spawn(&mut cmd, &world_host);
            cmd.status().unwrap();
            id
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !git_ls_remote_from_host(&world, &format!("127.0.0.1:{port}")) {
        assert!(
            Instant::now() < deadline,
            "the published port never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Only on loopback: the host's own address does not answer on that port.
    assert!(!git_ls_remote_from_host(
        &world,
        &format!("{HOST_WAN}:{port}")
    ));
    let status = world.json(
        &env,
        &[
            "workspace",
            "status",
            ws["workspace_id"].as_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        status["network"]["published_ports"][0]["host_port"], port,
        "{status}"
    );
    let id = server.join().unwrap();
    // Stop ends the relay: the port is closed and no longer listed.
    world.json(&env, &["workspace", "stop", &id, "--json"]);
    let listening = in_ns(&world.host, move || {
        std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
    });
    assert!(!listening, "the relay ended with the workspace's stop");
    world.json(&env, &["workspace", "delete", &id, "--json"]);
    assert_eq!(world.pyro_traces(), "");
}

#[test]
fn a_networked_pool_hands_out_sandboxes_with_their_own_network() {
    use std::io::{BufRead, BufReader, Write};
    let Some(world) = World::new("pnl") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-pool");
    pull(&env, "debian:12");
    let mut cmd = env.cmd();
    cmd.args(["rpc", "--pool-size", "2", "--pool-network"])
        .env("PYRO_NET_UPSTREAMS", DNS_IP)
        .env("PYRO_BACKEND", "qemu")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    enter_on_spawn(&mut cmd, &world.host);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_id = 0;
    let mut call = |params: serde_json::Value| -> serde_json::Value {
        next_id += 1;
        let req = serde_json::json!({"jsonrpc": "2.0", "id": next_id, "method": "run_in_vm", "params": params});
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
        loop {
            let line = lines.next().unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["id"] == next_id {
                return v;
            }
        }
    };
    let script =
        "cat /sys/class/net/eth0/address; git ls-remote http://repo.test/repo.git | head -1";
    let networked =
        serde_json::json!({"environment": "debian:12", "command": script, "network": true});
    // Until both pooled sandboxes are ready, calls start their own; then two are pooled.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut pooled = Vec::new();
    while pooled.len() < 2 {
        assert!(Instant::now() < deadline, "never served from the pool");
        let r = call(networked.clone());
        let result = &r["result"];
        assert_eq!(result["exit_code"], 0, "{r}");
        let out = result["stdout"].as_str().unwrap().to_string();
        assert!(
            out.contains("refs/heads/main") || out.contains("HEAD"),
            "{out}"
        );
        if result["boot_mode"] == "pooled" {
            pooled.push(out.lines().next().unwrap().to_string());
        } else {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    assert_ne!(pooled[0], pooled[1], "pooled sandboxes have their own MACs");
    // A call with an allowlist is not served from the pool, and is narrowed.
    let r = call(serde_json::json!({
        "environment": "debian:12",
        "command": "getent hosts other.test; echo rc=$?",
        "network": true,
        "allow_hosts": ["repo.test"],
    }));
    assert_ne!(r["result"]["boot_mode"], "pooled", "{r}");
    assert!(
        r["result"]["stdout"].as_str().unwrap().contains("rc=2"),
        "{r}"
    );
    drop(stdin);
    child.wait().unwrap();
    // The pool's sandboxes went with the server: nothing left on the host.
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.pyro_traces() != "" {
        assert!(Instant::now() < deadline, "left: {}", world.pyro_traces());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_crashed_workspace_releases_its_published_ports_and_its_network() {
    let Some(world) = World::new("pnc") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-crash");
    pull(&env, "debian:12");
    let ws = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress+published-ports",
            "--json",
        ],
    );
    let id = ws["workspace_id"].as_str().unwrap().to_string();
    let ns = ws["network"]["namespace"].as_str().unwrap().to_string();
    let published = world.json(&env, &["workspace", "publish", &id, "9418", "--json"]);
    let port = published["host_port"].as_u64().unwrap() as u16;
    let listening = |world: &World| {
        in_ns(&world.host, move || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    };
    assert!(listening(&world), "the relay listens");

    // The VMM dies (kill -9); the next call finds it gone and releases what it held.
    let vm = env.state.path().join("workspaces").join(&id).join("vm");
    let qemu = pyro_core::host::processes_with_cwd_in(&vm)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .expect("the workspace's VMM");
    // SAFETY: kill(2) on this test's own workspace's VMM.
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = world.json(&env, &["workspace", "status", &id, "--json"]);
        if status["state"] == "stopped" {
            assert!(status["network"].is_null(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "never seen stopped: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!listening(&world), "the port relay ended with the machine");
    assert!(!sandbox_namespaces().contains(&ns), "{ns} removed");
    assert_eq!(world.pyro_traces(), "", "nothing left on the host");
    world.json(&env, &["workspace", "delete", &id, "--json"]);
}

#[test]
fn a_failed_networked_create_leaves_nothing_behind() {
    let Some(world) = World::new("pnf") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-fail");
    pull(&env, "debian:12");
    // An upstream the network daemon's spec refuses (port 0), found once the namespace,
    // rules and uplink were made.
    let mut cmd = env.cmd();
    cmd.args([
        "workspace",
        "create",
        "debian:12",
        "--network-policy",
        "egress",
        "--json",
    ])
    .env("PYRO_NET_UPSTREAMS", "198.51.100.53:0")
    .env("PYRO_BACKEND", "qemu");
    enter_on_spawn(&mut cmd, &world.host);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stdout) + &text(&out.stderr);
    assert!(err.contains("network daemon"), "a clear error: {err}");
    // No workspace, no machine, no namespace, link, table or helper left.
    let listed = world.json(&env, &["workspace", "list", "--json"]);
    assert_eq!(listed["count"], 0, "{listed}");
    assert!(
        pyro_core::host::processes_with_cwd_in(env.state.path()).is_empty(),
        "a process of the failed create is left"
    );
    assert_eq!(world.pyro_traces(), "", "nothing left on the host");
}

/// `GET /` on `127.0.0.1:port` from the world's host namespace: the status line, or the
/// error.
fn http_get_on_host(world: &World, port: u16) -> String {
    in_ns(&world.host, move || {
        use std::io::{Read, Write};
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => s,
            Err(e) => return format!("connect: {e}"),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        text(&buf).lines().next().unwrap_or("").to_string()
    })
}

#[test]
fn a_service_publishes_its_port_for_as_long_as_it_runs() {
    let Some(world) = World::new("svc") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-svc");
    pull(&env, "debian:12");
    let ws = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress+published-ports",
            "--json",
        ],
    );
    let id = ws["workspace_id"].as_str().unwrap().to_string();
    // python3 -m http.server, ready when it answers HTTP, published on the host.
    let svc = world.json(
        &env,
        &[
            "workspace",
            "service",
            "start",
            &id,
            "web",
            "--ready-http",
            "http://127.0.0.1:8000/",
            "--ready-timeout-seconds",
            "120",
            "--publish",
            "8000",
            "--json",
            "--",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    assert_eq!(svc["state"], "running", "{svc}");
    assert_eq!(svc["published_ports"][0]["guest_port"], 8000);
    let port = svc["published_ports"][0]["host_port"].as_u64().unwrap() as u16;
    assert!(
        http_get_on_host(&world, port).contains("200"),
        "curl from the host"
    );
    // Reading its logs leaves the port alone (the reference killed it).
    let logs = world.json(
        &env,
        &["workspace", "service", "logs", &id, "web", "--json"],
    );
    assert!(
        logs["stderr"].as_str().unwrap().contains("GET / HTTP"),
        "{logs}"
    );
    assert!(http_get_on_host(&world, port).contains("200"), "after logs");
    let listed = world.json(&env, &["workspace", "service", "list", &id, "--json"]);
    assert_eq!(
        listed["services"][0]["published_ports"][0]["host_port"],
        port
    );
    // Stopping the service closes its port.
    let stopped = world.json(
        &env,
        &["workspace", "service", "stop", &id, "web", "--json"],
    );
    assert_eq!(stopped["stop_reason"], "sigterm", "{stopped}");
    assert_eq!(stopped["published_ports"], serde_json::json!([]));
    let after = http_get_on_host(&world, port);
    assert!(
        after.starts_with("connect:"),
        "the port outlived its service: {after}"
    );
    // Without the policy, --publish is refused before anything runs.
    let plain = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress",
            "--json",
        ],
    );
    let plain_id = plain["workspace_id"].as_str().unwrap();
    let out = world.pyro(
        &env,
        &[
            "workspace",
            "service",
            "start",
            plain_id,
            "x",
            "--publish",
            "80",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("egress+published-ports"),
        "{}",
        text(&out.stderr)
    );
    world.json(&env, &["workspace", "delete", plain_id, "--json"]);
    world.json(&env, &["workspace", "delete", &id, "--json"]);
    assert_eq!(world.pyro_traces(), "");
}

/// An HTTPS (and HTTP) server that appends `Host Authorization` of each request to a file.
const RECORDING_SERVER: &str = r#"
import http.server, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(sys.argv[3], "a") as f:
            f.write("%s %s\n" % (self.headers.get("Host"), self.headers.get("Authorization")))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
tls = http.server.ThreadingHTTPServer((sys.argv[1], 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
plain = http.server.ThreadingHTTPServer((sys.argv[1], 8081), H)
threading.Thread(target=plain.serve_forever, daemon=True).start()
tls.serve_forever()
"#;

#[test]
fn a_credential_reaches_only_its_host_and_the_guest_sees_only_a_placeholder() {
    let Some(world) = World::new("crd") else {
        return;
    };
    if !have("openssl") {
        eprintln!("skipped: needs openssl");
        return;
    }
    let env = Env::with_prefix("pyro-net-cred");
    pull(&env, "debian:12");
    // A test CA and a certificate for repo.test, served with a recording server.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj /CN=pyro-test-ca 2>/dev/null",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key \
        -out srv.csr -subj /CN=repo.test 2>/dev/null && \
        printf 'subjectAltName=DNS:repo.test\\n' > ext && \
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem \
        -days 2 -extfile ext 2>/dev/null && cat srv.pem srv.key > chain.pem",
    );
    std::fs::write(d.join("server.py"), RECORDING_SERVER).unwrap();
    let seen = d.join("seen.txt");
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        Command::new("ip")
            .args(["netns", "exec", &world.inet, "python3"])
            .arg(d.join("server.py"))
            .arg(REPO_IP)
            .arg(d.join("chain.pem"))
            .arg(&seen)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&world.host, &format!("{REPO_IP}:443"));

    let secret = "real-key-7d41c0e9";
    let mut cmd = env.cmd();
    cmd.args([
        "workspace",
        "create",
        "debian:12",
        "--network-policy",
        "egress",
        "--secret",
        &format!("API_KEY={secret}"),
        "--secret-host",
        "API_KEY=repo.test",
        "--json",
    ])
    .env("PYRO_NET_UPSTREAMS", DNS_IP)
    .env("PYRO_BACKEND", "qemu")
    .env("PYRO_NET_EXTRA_ROOTS", d.join("ca.pem"));
    enter_on_spawn(&mut cmd, &world.host);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ws: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = ws["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(ws["secrets"][0]["hosts"][0], "repo.test", "{ws}");

    let exec = |script: &str| {
        world.json(
            &env,
            &[
                "workspace",
                "exec",
                &id,
                "--secret-env",
                "API_KEY",
                "--json",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
    };
    // HTTPS to its host: the server receives the real value, the guest printed the reply.
    let get = |url: &str| {
        format!(
            "python3 -c \"import os,urllib.request as u; r=u.Request('{url}', \
             headers={{'Authorization': 'Bearer '+os.environ['API_KEY']}}); \
             print(u.urlopen(r, timeout=20).read().decode())\""
        )
    };
    let r = exec(&get("https://repo.test/x"));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "ok\n");
    let recorded = std::fs::read_to_string(&seen).unwrap();
    assert!(
        recorded.contains(&format!("repo.test Bearer {secret}")),
        "{recorded}"
    );
    // The guest's own view: a placeholder in its environment, nothing of the value in the
    // process's environment or memory-visible files, nor on its disk.
    let r = exec(&format!(
        "echo \"$API_KEY\"; cat /proc/self/environ | tr '\\0' '\\n' | grep -c {secret}; \
         grep -rl {secret} /etc /workspace /root /tmp 2>/dev/null | wc -l"
    ));
    let stdout = r["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("pyro-cred-"), "{r}");
    assert!(stdout.ends_with("\n0\n0\n"), "{r}");
    // The placeholder to another host (plain HTTP, so the proxy sees it) is refused and
    // recorded; the server never gets it.
    let out = world.pyro(
        &env,
        &[
            "workspace",
            "exec",
            &id,
            "--secret-env",
            "API_KEY",
            "--json",
            "--",
            "sh",
            "-c",
            &get("http://other.test/leak"),
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(r["exit_code"], 0, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("403"), "{r}");
    let status = world.json(&env, &["workspace", "status", &id, "--json"]);
    let denials = status["network"]["recent_denials"].to_string();
    assert!(denials.contains("API_KEY"), "{status}");
    assert!(!denials.contains(secret), "{denials}");
    let recorded = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
    world.json(&env, &["workspace", "delete", &id, "--json"]);
    assert_eq!(world.pyro_traces(), "");
}

#[test]
fn forks_of_a_networked_workspace_have_their_own_mac_and_address() {
    let Some(world) = World::new("pnf") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-fork");
    pull(&env, "debian:12");
    let src = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress",
            "--json",
        ],
    );
    let src_id = src["workspace_id"].as_str().unwrap().to_string();
    let forked = world.json(
        &env,
        &["workspace", "fork", &src_id, "--count", "2", "--json"],
    );
    assert_eq!(forked["has_memory"], true, "{forked}");
    let mut all = vec![src.clone()];
    all.extend(forked["workspaces"].as_array().unwrap().iter().cloned());
    let mut seen = Vec::new();
    for ws in &all {
        let id = ws["workspace_id"].as_str().unwrap();
        let out = ws_exec(
            &world,
            &env,
            id,
            "cat /sys/class/net/eth0/address; awk '/32 host/ {print f} {f=$2}' /proc/net/fib_trie | grep -v '^127' | sort -u; git ls-remote http://repo.test/repo.git >/dev/null && echo world-ok",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], ws["network"]["mac_address"], "{out}");
        assert_eq!(lines[1], ws["network"]["guest_ip"], "{out}");
        assert_eq!(lines[2], "world-ok", "{out}");
        seen.push((lines[0].to_string(), lines[1].to_string()));
    }
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            assert_ne!(seen[i].0, seen[j].0, "MACs differ");
            assert_ne!(seen[i].1, seen[j].1, "addresses differ");
        }
    }
    for ws in &all {
        world.json(
            &env,
            &[
                "workspace",
                "delete",
                ws["workspace_id"].as_str().unwrap(),
                "--json",
            ],
        );
    }
    assert_eq!(world.pyro_traces(), "");
}

/// A service's published port comes back with a reset to a snapshot (the same host port), and
/// a fork's copy of the service gets one of its own; each record names its own workspace.
#[test]
fn published_ports_come_back_with_a_snapshot_and_forks_get_their_own() {
    let Some(world) = World::new("psn") else {
        return;
    };
    let env = Env::with_prefix("pyro-net-snapport");
    pull(&env, "debian:12");
    let ws = world.json(
        &env,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress+published-ports",
            "--json",
        ],
    );
    let id = ws["workspace_id"].as_str().unwrap().to_string();
    let svc = world.json(
        &env,
        &[
            "workspace",
            "service",
            "start",
            &id,
            "web",
            "--ready-tcp",
            "127.0.0.1:8000",
            "--publish",
            "8000",
            "--json",
            "--",
            "python3",
            "-m",
            "http.server",
            "8000",
        ],
    );
    let port = svc["published_ports"][0]["host_port"].as_u64().unwrap() as u16;
    assert!(http_get_on_host(&world, port).contains("200"), "before");
    world.json(
        &env,
        &["workspace", "snapshot", "create", &id, "s", "--json"],
    );
    world.json(
        &env,
        &["workspace", "reset", &id, "--snapshot", "s", "--json"],
    );
    let status = world.json(
        &env,
        &["workspace", "service", "status", &id, "web", "--json"],
    );
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["workspace_id"], id.as_str(), "{status}");
    assert_eq!(
        status["published_ports"][0]["host_port"].as_u64(),
        Some(u64::from(port)),
        "{status}"
    );
    assert!(
        http_get_on_host(&world, port).contains("200"),
        "after reset"
    );
    let forked = world.json(
        &env,
        &["workspace", "fork", &id, "--snapshot", "s", "--json"],
    );
    let fork = forked["workspaces"][0]["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let fsvc = world.json(
        &env,
        &["workspace", "service", "status", &fork, "web", "--json"],
    );
    assert_eq!(fsvc["workspace_id"], fork.as_str(), "{fsvc}");
    let fport = fsvc["published_ports"][0]["host_port"].as_u64().unwrap() as u16;
    assert_ne!(fport, port, "{fsvc}");
    assert!(
        http_get_on_host(&world, fport).contains("200"),
        "the fork's"
    );
    assert!(
        http_get_on_host(&world, port).contains("200"),
        "the source's"
    );
    for w in [&id, &fork] {
        world.json(&env, &["workspace", "delete", w, "--json"]);
    }
    assert!(http_get_on_host(&world, fport).starts_with("connect:"));
    assert_eq!(world.pyro_traces(), "");
}
