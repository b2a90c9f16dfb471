//! The `meridian` binary's process contract: ready file, admin endpoints, SIGTERM drain,
//! `check-config` and `credential`. Meridian-only: skipped when MERIDIAN_TEST_BACKEND=coturn.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, Node, NodeOptions, REST_SECRET};

fn meridian_only() -> bool {
    if Backend::from_env() != Backend::Meridian {
        eprintln!(
            "skipped: meridian-only test, backend is {:?}",
            Backend::from_env()
        );
        return false;
    }
    true
}

/// Runs the meridian binary with `args`, bounded in time: (exit code, stdout, stderr).
fn run_meridian(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = common::TempDir::new("cli");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = common::meridian_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = common::ChildGuard::spawn(cmd, "meridian");
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("meridian {args:?} did not finish within 30 s"));
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.code(), out, err)
}

fn write_config(dir: &common::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn ready_file_lists_bound_listeners() {
    if !meridian_only() {
        return;
    }
    let node = Node::start(&NodeOptions::default());
    let r = &node.ready;
    assert_eq!(r.turn_udp.len(), 1, "{r:?}");
    assert_eq!(r.turn_tcp.len(), 1, "{r:?}");
    assert!(r.turn_tls.is_empty(), "{r:?}");
    for a in r.turn_udp.iter().chain(&r.turn_tcp) {
        assert!(
            a.ip().is_loopback() && a.port() != 0,
            "ready file must list the bound port: {r:?}"
        );
    }
    let admin = node.admin();
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{r:?}");
    // The listed UDP port answers STUN Binding.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = common::stun_binding_request();
    let mut answered = false;
    for _ in 0..10 {
        sock.send_to(&req, node.turn_udp()).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            assert!(
                n >= 20 && buf[0..2] == [0x01, 0x01],
                "not a Binding success: {:02x?}",
                &buf[..n]
            );
            assert_eq!(buf[8..20], req[8..20], "transaction id");
            answered = true;
            break;
        }
    }
    assert!(answered, "no Binding response from {}", node.turn_udp());
    // The listed TCP port accepts connections.
    std::net::TcpStream::connect_timeout(&node.turn_tcp(), Duration::from_secs(5))
        .expect("connect TURN/TCP");
}

#[test]
fn admin_endpoints_answer() {
    if !meridian_only() {
        return;
    }
    let node = Node::start(&NodeOptions::default());
    let (s, body) = common::http_get(node.admin(), "/healthz").expect("GET /healthz");
    assert_eq!(s, 200, "/healthz: {body}");
    let (s, body) = common::http_get(node.admin(), "/readyz").expect("GET /readyz");
    assert_eq!(s, 200, "/readyz: {body}");
    let (s, body) = common::http_get(node.admin(), "/metrics").expect("GET /metrics");
    assert_eq!(s, 200, "/metrics: {body}");
    assert!(
        body.lines().any(|l| l.starts_with("# TYPE ")),
        "/metrics is not Prometheus text:\n{body}"
    );
    let (s, _) = common::http_get(node.admin(), "/no-such-page").expect("GET /no-such-page");
    assert_eq!(s, 404, "unknown admin path");
}

#[test]
fn sigterm_drains_then_exits_zero() {
    if !meridian_only() {
        return;
    }
    let mut node = Node::start(&NodeOptions {
        drain_secs: 2,
        ..NodeOptions::default()
    });
    // Keep a TCP connection open so the node has something to drain.
    let _conn = std::net::TcpStream::connect_timeout(&node.turn_tcp(), Duration::from_secs(5))
        .expect("connect");
    let admin = node.admin();
    node.signal(libc::SIGTERM);
    // While draining, /readyz must say 503 (or the node has already exited cleanly).
    let mut saw_503 = false;
    common::wait_for(
        Duration::from_secs(10),
        "/readyz 503 or exit after SIGTERM",
        || {
            match common::http_get(admin, "/readyz") {
                Ok((503, _)) => {
                    saw_503 = true;
                    Some(())
                }
                Ok(_) => None,
                Err(_) => Some(()), // listener closed: the node is exiting
            }
        },
    );
    let status = node
        .wait_timeout(Duration::from_secs(15))
        .expect("node still running 15 s after SIGTERM (drain deadline 2 s)");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        node.log()
    );
    eprintln!("SIGTERM: saw /readyz 503 while draining: {saw_503}");
}

#[test]
fn check_config_accepts_valid_and_rejects_invalid() {
    if !meridian_only() {
        return;
    }
    let dir = common::TempDir::new("check-config");
    let good = write_config(
        &dir,
        "good.toml",
        &common::meridian_config(&NodeOptions::default()),
    );
    let (code, out, err) = run_meridian(&["check-config", &good]);
    assert_eq!(
        code,
        Some(0),
        "valid config rejected\nstdout: {out}\nstderr: {err}"
    );

    for (name, text, must_mention) in [
        ("unknown-key.toml", "[turn]\nbogus_key = 1\n", "bogus_key"),
        (
            "bad-type.toml",
            "[turn]\nrelay_port_min = \"low\"\n",
            "relay_port_min",
        ),
        ("bad-syntax.toml", "[turn\nrealm = \"x\"\n", ""),
        (
            "bad-cidr.toml",
            "[security]\nallow_peers = [\"not-a-network\"]\n",
            "allow_peers",
        ),
    ] {
        let path = write_config(&dir, name, text);
        let (code, out, err) = run_meridian(&["check-config", &path]);
        assert_eq!(
            code,
            Some(1),
            "{name}: expected exit 1\nstdout: {out}\nstderr: {err}"
        );
        assert!(!err.trim().is_empty(), "{name}: no error on stderr");
        assert!(
            err.contains(must_mention),
            "{name}: stderr does not mention {must_mention:?}: {err}"
        );
    }

    let (code, _, err) = run_meridian(&[
        "check-config",
        &dir.path().join("missing.toml").display().to_string(),
    ]);
    assert_eq!(code, Some(1), "missing file: {err}");
}

/// The first JSON value in `text` that (somewhere inside) has "username" and "credential".
fn find_ice_server(text: &str) -> Option<serde_json::Value> {
    fn search(v: &serde_json::Value) -> Option<serde_json::Value> {
        match v {
            serde_json::Value::Object(m)
                if m.contains_key("username") && m.contains_key("credential") =>
            {
                Some(v.clone())
            }
            serde_json::Value::Object(m) => m.values().find_map(search),
            serde_json::Value::Array(a) => a.iter().find_map(search),
            _ => None,
        }
    }
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut it =
                serde_json::Deserializer::from_str(&text[i..]).into_iter::<serde_json::Value>();
            if let Some(Ok(v)) = it.next() {
                if let Some(found) = search(&v) {
                    return Some(found);
                }
            }
        }
    }
    None
}

#[test]
fn credential_prints_a_valid_rest_credential() {
    if !meridian_only() {
        return;
    }
    let dir = common::TempDir::new("credential");
    let cfg = write_config(
        &dir,
        "m.toml",
        &common::meridian_config(&NodeOptions::default()),
    );
    let before = common::unix_now();
    let (code, out, err) = run_meridian(&[
        "credential",
        "--config",
        &cfg,
        "--user",
        "carol",
        "--ttl",
        "600",
    ]);
    assert_eq!(
        code,
        Some(0),
        "credential failed\nstdout: {out}\nstderr: {err}"
    );
    let ice = find_ice_server(&out)
        .unwrap_or_else(|| panic!("no iceServers JSON with username/credential in:\n{out}"));
    let username = ice["username"].as_str().expect("username is a string");
    let credential = ice["credential"].as_str().expect("credential is a string");
    let (expiry, user) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("username {username:?} is not expiry:user"));
    assert_eq!(user, "carol");
    let expiry: u64 = expiry
        .parse()
        .unwrap_or_else(|_| panic!("expiry in {username:?} is not a number"));
    assert!(
        expiry >= before + 600 && expiry <= common::unix_now() + 600 + 5,
        "expiry {expiry} is not now+600 (now {before})"
    );
    let (_, expected) = common::rest_credential(REST_SECRET, "carol", expiry);
    assert_eq!(
        credential, expected,
        "credential is not base64(HMAC-SHA1(first rest secret, username))"
    );
    let urls = ice.get("urls").map(|u| u.to_string()).unwrap_or_default();
    assert!(
        urls.contains("turn:"),
        "iceServers entry has no turn: urls: {ice}"
    );
}
