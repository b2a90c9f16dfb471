//! Unit tests of parsing, validation, environment overrides and the shipped TOML files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::*;

const EXAMPLE: &str = include_str!("../meridian.example.toml");
const DOCS: &str = include_str!("../../docs/config.md");

/// A valid config without any file behind it.
fn valid() -> Config {
    let mut config = Config::default();
    config.auth.rest_secrets = vec!["s3cret".into()];
    config
}

/// Parses without validating.
fn parse(text: &str) -> Config {
    source::parse(text, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn err(text: &str) -> String {
    match Config::from_toml(text, "meridian.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `change` makes a valid config fail with an error about `key` whose message
/// contains `needle`.
#[track_caller]
fn rejects(change: impl FnOnce(&mut Config), key: &str, needle: &str) {
    let mut config = valid();
    change(&mut config);
    let e = config.validate().expect_err("expected a validation error");
    assert_eq!(e.key(), Some(key), "{e}");
    assert!(
        e.to_string().contains(needle),
        "{e:?} does not contain {needle:?}"
    );
    assert!(e.to_string().starts_with(key), "{e}");
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn user(name: &str, password: &str) -> StaticUser {
    StaticUser {
        username: name.into(),
        password: password.into(),
    }
}

/// A fresh path in the temp directory (not created).
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "meridian-config-test-{}-{name}",
        std::process::id()
    ))
}

// ---------------------------------------------------------------------------------------
// Defaults and the shipped files.

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.node.name, "meridian");
    assert_eq!(c.node.region, "local");
    assert_eq!(c.log.format, LogFormat::Human);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.admin.listen, sock("127.0.0.1:9478"));
    assert_eq!(c.turn.realm, "meridian");
    assert_eq!(c.turn.udp, vec![sock("127.0.0.1:3478")]);
    assert_eq!(c.turn.tcp, vec![sock("127.0.0.1:3478")]);
    assert!(c.turn.tls.is_empty());
    assert_eq!(c.turn.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
    assert_eq!(c.turn.relay_ipv6, None);
    assert_eq!(
        (c.turn.relay_port_min, c.turn.relay_port_max),
        (49152, 65535)
    );
    assert_eq!(c.turn.default_lifetime_secs, 600);
    assert_eq!(c.turn.max_lifetime_secs, 3600);
    assert_eq!(c.turn.nonce_lifetime_secs, 600);
    assert!(c.turn.software);
    assert!(c.auth.users.is_empty() && c.auth.rest_secrets.is_empty());
    assert_eq!(c.auth.credential_ttl_secs, 86400);
    assert_eq!(c.limits.max_allocations, 100_000);
    assert_eq!(c.limits.allocation_bandwidth_kbps, 0);
    assert!(c.security.allow_peers.is_empty() && c.security.deny_peers.is_empty());
    assert_eq!(c.drain.deadline_secs, 60);
    assert_eq!(c.signaling.listen, sock("127.0.0.1:7880"));
    assert_eq!(
        (&c.signaling.tls_cert, &c.signaling.tls_key),
        (&None, &None)
    );
    assert!(c.signaling.api_keys.is_empty());
    assert_eq!(c.signaling.token_ttl_secs, 3600);
    assert!(!c.signaling.dev_tokens && !c.signaling.dev_tokens_public);
    assert_eq!(c.signaling.max_message_bytes, 65536);
    assert_eq!(c.signaling.messages_per_sec, 50);
    assert_eq!(c.signaling.message_burst, 100);
    assert_eq!(c.signaling.join_timeout_secs, 10);
    assert_eq!(c.sfu.udp, sock("127.0.0.1:7882"));
    assert_eq!(c.sfu.tcp, vec![sock("127.0.0.1:7881")]);
    assert_eq!(c.sfu.public_ip, None);
    assert_eq!(c.sfu.workers, 0);
    assert_eq!(c.sfu.keyframe_interval_ms, 1000);
    assert_eq!(c.sfu.stall_after_secs, 5);
    assert_eq!(c.sfu.message_log, 1024);
    assert_eq!(c.sfu.max_data_message_bytes, 16384);
    assert_eq!(c.sfu.rtx_cache_packets, 256);
    assert_eq!(c.sfu.initial_bitrate_kbps, 1500);
    // An empty file is the defaults, and every section can be given empty.
    assert_eq!(parse(""), c);
    let sections = "[node]\n[log]\n[admin]\n[turn]\n[auth]\n[limits]\n[security]\n[drain]\n\
                    [signaling]\n[sfu]\n";
    assert_eq!(parse(sections), c);
    // The defaults plus a secret are valid.
    valid().validate().unwrap();
}

#[test]
fn embedded_default_is_the_defaults_plus_loopback_peers_and_dev_tokens() {
    // The two intentional differences: it listens on loopback only, so it relays to loopback
    // peers and hands out dev tokens to the demo pages.
    let mut expected = Config::default();
    expected.security.allow_peers =
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    expected.signaling.dev_tokens = true;
    assert_eq!(parse(EMBEDDED_DEFAULT), expected);
    for section in [
        "[node]",
        "[log]",
        "[admin]",
        "[turn]",
        "[auth]",
        "[limits]",
        "[security]",
        "[drain]",
        "[signaling]",
        "[sfu]",
        "[cluster]",
        "[trunk]",
    ] {
        assert!(
            EMBEDDED_DEFAULT.contains(section),
            "{section} missing from the embedded default"
        );
    }
}

#[test]
fn embedded_with_secret_validates() {
    let c = Config::embedded("generated".into());
    assert_eq!(c.auth.rest_secrets, vec!["generated".to_string()]);
    assert_eq!(c.turn.udp, vec![sock("127.0.0.1:3478")]);
    assert_eq!(c.turn.tcp, vec![sock("127.0.0.1:3478")]);
    assert_eq!(c.admin.listen, sock("127.0.0.1:9478"));
    assert_eq!(c.turn.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
    assert!(c
        .security
        .allow_peers
        .contains(&"127.0.0.0/8".parse().unwrap()));
    assert!(c.security.allow_peers.contains(&"::1/128".parse().unwrap()));
    assert_eq!(c.signaling.listen, sock("127.0.0.1:7880"));
    assert!(c.signaling.dev_tokens && !c.signaling.dev_tokens_public);
    assert_eq!(c.sfu.udp, sock("127.0.0.1:7882"));
    assert_eq!(c.sfu.tcp, vec![sock("127.0.0.1:7881")]);
    c.validate().unwrap();
    // Without the secret it is refused: nobody could allocate.
    let e = Config::from_toml(EMBEDDED_DEFAULT, "embedded default").unwrap_err();
    assert_eq!(e.key(), Some("auth"));
}

#[test]
#[should_panic(expected = "auth.rest_secrets[0]: empty secret")]
fn embedded_with_empty_secret_panics() {
    Config::embedded(String::new());
}

#[test]
fn example_validates() {
    let c = Config::from_toml(EXAMPLE, "meridian.example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.turn.udp, vec![sock("0.0.0.0:3478")]);
    assert_eq!(c.turn.tcp, vec![sock("0.0.0.0:3478")]);
    assert_eq!(c.turn.relay_ipv4, Some(Ipv4Addr::UNSPECIFIED));
    assert_eq!(c.turn.external_ipv4, Some(Ipv4Addr::new(203, 0, 113, 10)));
    assert_eq!(c.auth.users.len(), 1);
    assert_eq!(c.log.format, LogFormat::Json);
    // The commented-out TLS lines are what docs describe; enabling them needs the files.
    let tls = EXAMPLE
        .replace("# tls = [", "tls = [")
        .replace("# tls_cert", "tls_cert")
        .replace("# tls_key", "tls_key");
    let e = Config::from_toml(&tls, "meridian.example.toml").unwrap_err();
    assert_eq!(e.key(), Some("turn.tls_cert"));
    assert!(
        e.to_string()
            .contains("/etc/meridian/tls/fullchain.pem does not exist"),
        "{e}"
    );
    // The signaling API on a public address, without dev tokens, and the SFU on every
    // interface advertising its public address.
    assert_eq!(c.signaling.listen, sock("0.0.0.0:7880"));
    assert!(!c.signaling.dev_tokens);
    assert_eq!(c.sfu.udp, sock("0.0.0.0:7882"));
    assert_eq!(c.sfu.tcp, vec![sock("0.0.0.0:7881")]);
    assert_eq!(c.sfu.public_ip, Some(IpAddr::from([203, 0, 113, 10])));
    // Only the [signaling] TLS lines uncommented: they are checked too.
    let at = EXAMPLE.find("[signaling]").unwrap();
    let (head, tail) = EXAMPLE.split_at(at);
    let tail = tail
        .replace("# tls_cert", "tls_cert")
        .replace("# tls_key", "tls_key");
    let e = Config::from_toml(&format!("{head}{tail}"), "meridian.example.toml").unwrap_err();
    assert_eq!(e.key(), Some("signaling.tls_cert"));
    assert!(
        e.to_string()
            .contains("/etc/meridian/tls/fullchain.pem does not exist"),
        "{e}"
    );
    // Dev tokens on the public listener need the explicit opt-in.
    let dev = EXAMPLE.replace("dev_tokens = false", "dev_tokens = true");
    let e = Config::from_toml(&dev, "meridian.example.toml").unwrap_err();
    assert_eq!(e.key(), Some("signaling.dev_tokens"));
    let dev = dev.replace("dev_tokens_public = false", "dev_tokens_public = true");
    Config::from_toml(&dev, "meridian.example.toml").unwrap_or_else(|e| panic!("{e}"));
    // Without public_ip the wildcard SFU listener has nothing to advertise.
    let no_ip = EXAMPLE.replace("public_ip = ", "# public_ip = ");
    let e = Config::from_toml(&no_ip, "meridian.example.toml").unwrap_err();
    assert_eq!(e.key(), Some("sfu.udp"));
    // The commented-out trunk needs its certificate files.
    let at = EXAMPLE.find("[trunk]").unwrap();
    let (head, tail) = EXAMPLE.split_at(at);
    let tail = ["listen", "public_addr", "ca", "cert", "key"]
        .iter()
        .fold(tail.to_string(), |t, k| {
            t.replace(&format!("\n# {k} = "), &format!("\n{k} = "))
        });
    let e = Config::from_toml(&format!("{head}{tail}"), "meridian.example.toml").unwrap_err();
    assert_eq!(e.key(), Some("trunk.ca"), "{e}");
    assert!(
        e.to_string()
            .contains("/etc/meridian/trunk-ca.pem does not exist"),
        "{e}"
    );
}

#[test]
fn worker_count() {
    let mut c = valid();
    c.turn.workers = 3;
    assert_eq!(c.worker_count(), 3);
    c.turn.workers = 0;
    assert!(c.worker_count() >= 1);
}

#[test]
fn sfu_worker_count() {
    let mut c = valid();
    c.sfu.workers = 5;
    c.turn.workers = 2;
    assert_eq!(c.sfu_worker_count(), 5);
    c.sfu.workers = 0;
    assert!(c.sfu_worker_count() >= 1);
}

#[test]
fn secrets_are_redacted_in_debug() {
    let mut c = valid();
    c.auth.users.push(user("alice", "hunter2"));
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("s3cret"),
        "{debug}"
    );
}

// ---------------------------------------------------------------------------------------
// Parse errors: line, key, expected, found.

#[test]
fn unknown_key_names_line_and_key() {
    let text = "[node]\nname = \"a\"\n\n[turn]\nrealmm = \"x\"\n";
    let e = Config::from_toml(text, "meridian.toml").unwrap_err();
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.key(), Some("turn.realmm"));
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "meridian.toml line 5: unknown key turn.realmm (expected one of: realm, udp, tcp, "
        ),
        "{msg}"
    );
    assert!(msg.contains("alternate_server)"), "{msg}");

    assert!(err("\n\nfoo = 1\n")
        .starts_with("meridian.toml line 3: unknown key foo (expected one of: node, log, "));
    assert!(err("turn.realmm = 1\n").starts_with("meridian.toml line 1: unknown key turn.realmm "));
    let e = err("[auth]\nrest_secrets = [\"s\"]\n[[auth.users]]\nusername = \"a\"\npassword = \"b\"\nrole = \"x\"\n");
    assert_eq!(e, "meridian.toml line 6: unknown key auth.users[0].role (expected one of: username, password)");
}

#[test]
fn type_errors_name_line_key_expected_and_found() {
    assert_eq!(
        err("[turn]\nrealm = \"x\"\nrelay_port_min = 70000\n"),
        "meridian.toml line 3: turn.relay_port_min: expected 1..=65535, got 70000"
    );
    assert_eq!(
        err("[turn]\nworkers = \"four\"\n"),
        "meridian.toml line 2: turn.workers: expected 0..=256, got \"four\""
    );
    assert_eq!(
        err("[turn]\nworkers = -1\n"),
        "meridian.toml line 2: turn.workers: expected 0..=256, got -1"
    );
    assert_eq!(
        err("[turn]\nudp = [\n  \"127.0.0.1:3478\",\n  \"127.0.0.1\",\n]\n"),
        "meridian.toml line 4: turn.udp[1]: expected an \"ip:port\" socket address, got \"127.0.0.1\""
    );
    assert_eq!(
        err("[turn]\nudp = \"0.0.0.0:3478\"\n"),
        "meridian.toml line 2: turn.udp: expected an array of \"ip:port\" socket addresses, got \"0.0.0.0:3478\""
    );
    assert_eq!(
        err("[log]\nformat = \"xml\"\n"),
        "meridian.toml line 2: log.format: expected \"human\" or \"json\", got \"xml\""
    );
    assert_eq!(
        err("[turn]\nsoftware = \"yes\"\n"),
        "meridian.toml line 2: turn.software: expected true or false, got \"yes\""
    );
    assert_eq!(
        err("[turn]\nrelay_ipv4 = \"::1\"\n"),
        "meridian.toml line 2: turn.relay_ipv4: expected an IPv4 address, got \"::1\""
    );
    assert_eq!(
        err("[security]\ndeny_peers = [\"192.0.2.1\"]\n"),
        "meridian.toml line 2: security.deny_peers[0]: expected a network in CIDR notation such as \"10.0.0.0/8\", got \"192.0.2.1\""
    );
    assert_eq!(
        err("turn = 5\n"),
        "meridian.toml line 1: turn: expected a table, got 5"
    );
    assert_eq!(
        err("[limits]\nmax_allocations = 1.5\n"),
        "meridian.toml line 2: limits.max_allocations: expected an integer >= 1, got 1.5"
    );
}

#[test]
fn type_errors_never_echo_secrets() {
    let e = err("[[auth.users]]\nusername = \"a\"\npassword = 123456\n");
    assert_eq!(e, "meridian.toml line 3: auth.users[0].password: expected a string, got an integer (value not shown)");
    let e = err("[auth]\nrest_secrets = [\"ok\", 987654]\n");
    assert_eq!(e, "meridian.toml line 2: auth.rest_secrets[1]: expected a string, got an integer (value not shown)");
}

#[test]
fn missing_user_fields() {
    let e = Config::from_toml("[[auth.users]]\nusername = \"a\"\n", "meridian.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "meridian.toml line 1: auth.users[0].password: required key missing"
    );
    let e = err(
        "[[auth.users]]\nusername = \"a\"\npassword = \"b\"\n\n[[auth.users]]\npassword = \"c\"\n",
    );
    assert_eq!(
        e,
        "meridian.toml line 5: auth.users[1].username: required key missing"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = Config::from_toml("[node]\nname = \"a\"\n[turn\n", "meridian.toml").unwrap_err();
    assert!(
        matches!(e, ConfigError::Syntax { line: Some(3), .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("meridian.toml line 3: invalid TOML: "),
        "{e}"
    );
    let e = err("[node]\nname = \"a\"\nname = \"b\"\n");
    assert!(
        e.starts_with("meridian.toml line 3: invalid TOML: duplicate key"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Validation rules.

#[test]
fn validation_errors_carry_the_line_when_from_a_file() {
    let text =
        "[auth]\nrest_secrets = [\"s\"]\n\n[turn]\nrealm = \"x\"\ntls = [\"0.0.0.0:5349\"]\n";
    assert_eq!(
        err(text),
        "meridian.toml line 6: turn.tls: TLS listeners need turn.tls_cert and turn.tls_key"
    );
    // A key not written in the file: no line.
    assert_eq!(
        err("[node]\nname = \"a\"\n"),
        "meridian.toml: auth: no static users and no REST secrets; every allocation would be refused \
         (set auth.users or auth.rest_secrets, or MERIDIAN_TURN_REST_SECRETS)"
    );
    // A section header counts as the key.
    assert!(err("[node]\n[auth]\ncredential_ttl_secs = 600\n")
        .starts_with("meridian.toml line 2: auth: no static users"));
    assert_eq!(
        err("[auth]\nrest_secrets = [\"s\"]\n[turn]\nrelay_port_min = 0\n"),
        "meridian.toml line 4: turn.relay_port_min: expected 1..=65535, got 0"
    );
    assert_eq!(
        err("[auth]\nrest_secrets = [\"s\", \"\"]\n"),
        "meridian.toml line 2: auth.rest_secrets[1]: empty secret"
    );
    // Straight from validate(): no origin, no line.
    let mut c = valid();
    c.turn.relay_port_max = 1000;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "turn.relay_port_max: expected 49152..=65535 (at least turn.relay_port_min), got 1000"
    );
}

#[test]
fn rule_log_level() {
    rejects(
        |c| c.log.level = " ".into(),
        "log.level",
        "expected a tracing filter",
    );
}

#[test]
fn rule_realm() {
    rejects(
        |c| c.turn.realm = String::new(),
        "turn.realm",
        "expected a non-empty string of printable ASCII, got \"\"",
    );
    rejects(
        |c| c.turn.realm = "ex\u{e4}mple".into(),
        "turn.realm",
        "not printable ASCII",
    );
    rejects(
        |c| c.turn.realm = "a\tb".into(),
        "turn.realm",
        "not printable ASCII",
    );
    rejects(
        |c| c.turn.realm = "r".repeat(128),
        "turn.realm",
        "at most 127 characters",
    );
    let mut c = valid();
    c.turn.realm = "Example Realm (eu) ~1".into();
    c.validate().unwrap();
}

#[test]
fn rule_listeners() {
    rejects(
        |c| {
            c.turn.udp.clear();
            c.turn.tcp.clear();
        },
        "turn",
        "no listeners",
    );
    // Any one protocol is enough, and port 0 (ephemeral) is fine.
    let mut c = valid();
    c.turn.udp = vec![sock("127.0.0.1:0")];
    c.turn.tcp.clear();
    c.admin.listen = sock("127.0.0.1:0");
    c.validate().unwrap();
}

#[test]
fn rule_tls() {
    rejects(
        |c| c.turn.tls = vec![sock("0.0.0.0:5349")],
        "turn.tls",
        "TLS listeners need turn.tls_cert and turn.tls_key",
    );
    let cert = temp_path("cert.pem");
    let key = temp_path("key.pem");
    std::fs::write(&cert, "cert").unwrap();
    let _ = std::fs::remove_file(&key);
    let with_files = |c: &mut Config| {
        c.turn.tls = vec![sock("0.0.0.0:5349")];
        c.turn.tls_cert = Some(cert.clone());
        c.turn.tls_key = Some(key.clone());
    };
    rejects(
        with_files,
        "turn.tls_key",
        &format!("file {} does not exist", key.display()),
    );
    rejects(
        |c| {
            with_files(c);
            c.turn.tls_key = Some(std::env::temp_dir());
        },
        "turn.tls_key",
        "is a directory",
    );
    rejects(
        |c| {
            with_files(c);
            c.turn.tls_cert = Some(PathBuf::from("/nonexistent/meridian/cert.pem"));
        },
        "turn.tls_cert",
        "file /nonexistent/meridian/cert.pem does not exist",
    );
    std::fs::write(&key, "key").unwrap();
    let mut c = valid();
    with_files(&mut c);
    c.validate().unwrap();
    // Cert and key without TLS listeners are not checked.
    let mut c = valid();
    c.turn.tls_cert = Some(PathBuf::from("/nonexistent"));
    c.validate().unwrap();
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
}

#[test]
fn rule_ports() {
    rejects(
        |c| c.turn.relay_port_min = 0,
        "turn.relay_port_min",
        "expected 1..=65535, got 0",
    );
    rejects(
        |c| {
            c.turn.relay_port_min = 50000;
            c.turn.relay_port_max = 40000;
        },
        "turn.relay_port_max",
        "expected 50000..=65535 (at least turn.relay_port_min), got 40000",
    );
    let mut c = valid();
    c.turn.relay_port_min = 1;
    c.turn.relay_port_max = 1;
    c.validate().unwrap();
}

#[test]
fn rule_lifetimes() {
    rejects(
        |c| c.turn.default_lifetime_secs = 0,
        "turn.default_lifetime_secs",
        "expected 1..=3600",
    );
    rejects(
        |c| c.turn.default_lifetime_secs = 3601,
        "turn.default_lifetime_secs",
        "expected 1..=3600 (at most turn.max_lifetime_secs), got 3601",
    );
    rejects(
        |c| c.turn.max_lifetime_secs = 86401,
        "turn.max_lifetime_secs",
        "expected 1..=86400, got 86401",
    );
    rejects(
        |c| c.turn.nonce_lifetime_secs = 29,
        "turn.nonce_lifetime_secs",
        "expected 30..=86400, got 29",
    );
    rejects(
        |c| c.turn.nonce_lifetime_secs = 86401,
        "turn.nonce_lifetime_secs",
        "expected 30..=86400, got 86401",
    );
    let mut c = valid();
    c.turn.max_lifetime_secs = 86400;
    c.turn.default_lifetime_secs = 86400;
    c.turn.nonce_lifetime_secs = 30;
    c.validate().unwrap();
}

#[test]
fn rule_relay_addresses() {
    rejects(
        |c| c.turn.relay_ipv4 = None,
        "turn.relay_ipv4",
        "no relay address",
    );
    rejects(
        |c| {
            c.turn.relay_ipv4 = None;
            c.turn.relay_ipv6 = Some(Ipv6Addr::LOCALHOST);
            c.turn.external_ipv4 = Some(Ipv4Addr::new(203, 0, 113, 1));
        },
        "turn.external_ipv4",
        "set without turn.relay_ipv4",
    );
    rejects(
        |c| c.turn.external_ipv6 = Some("2001:db8::1".parse().unwrap()),
        "turn.external_ipv6",
        "set without turn.relay_ipv6",
    );
    rejects(
        |c| c.turn.relay_ipv4 = Some(Ipv4Addr::UNSPECIFIED),
        "turn.relay_ipv4",
        "set turn.external_ipv4",
    );
    rejects(
        |c| c.turn.relay_ipv6 = Some(Ipv6Addr::UNSPECIFIED),
        "turn.relay_ipv6",
        "set turn.external_ipv6",
    );
    rejects(
        |c| c.turn.relay_ipv4 = Some(Ipv4Addr::new(224, 0, 0, 1)),
        "turn.relay_ipv4",
        "expected a unicast IPv4 address, got 224.0.0.1",
    );
    rejects(
        |c| c.turn.relay_ipv6 = Some("ff02::1".parse().unwrap()),
        "turn.relay_ipv6",
        "expected a unicast IPv6 address",
    );
    rejects(
        |c| c.turn.external_ipv4 = Some(Ipv4Addr::UNSPECIFIED),
        "turn.external_ipv4",
        "expected a unicast IPv4 address, got 0.0.0.0",
    );
    rejects(
        |c| {
            c.turn.relay_ipv6 = Some(Ipv6Addr::LOCALHOST);
            c.turn.external_ipv6 = Some(Ipv6Addr::UNSPECIFIED);
        },
        "turn.external_ipv6",
        "expected a unicast IPv6 address, got ::",
    );
    // Wildcard relay addresses are fine with an advertised address; IPv6 alone is fine.
    let mut c = valid();
    c.turn.relay_ipv4 = Some(Ipv4Addr::UNSPECIFIED);
    c.turn.external_ipv4 = Some(Ipv4Addr::new(203, 0, 113, 10));
    c.turn.relay_ipv6 = Some(Ipv6Addr::UNSPECIFIED);
    c.turn.external_ipv6 = Some("2001:db8::10".parse().unwrap());
    c.validate().unwrap();
    c.turn.relay_ipv4 = None;
    c.turn.external_ipv4 = None;
    c.validate().unwrap();
}

#[test]
fn rule_alternate_server() {
    rejects(
        |c| c.turn.alternate_server = Some(sock("0.0.0.0:3478")),
        "turn.alternate_server",
        "got 0.0.0.0:3478",
    );
    rejects(
        |c| c.turn.alternate_server = Some(sock("192.0.2.1:0")),
        "turn.alternate_server",
        "got 192.0.2.1:0",
    );
    let mut c = valid();
    c.turn.alternate_server = Some(sock("192.0.2.1:3478"));
    c.validate().unwrap();
}

#[test]
fn rule_workers() {
    rejects(
        |c| c.turn.workers = 257,
        "turn.workers",
        "expected 0..=256 (0 = one per core), got 257",
    );
    let mut c = valid();
    c.turn.workers = 256;
    c.validate().unwrap();
}

#[test]
fn rule_limits() {
    rejects(
        |c| c.limits.max_allocations = 0,
        "limits.max_allocations",
        "expected an integer >= 1, got 0",
    );
    rejects(
        |c| c.limits.max_allocations_per_user = 0,
        "limits.max_allocations_per_user",
        "got 0",
    );
    rejects(
        |c| c.limits.max_permissions_per_allocation = 0,
        "limits.max_permissions_per_allocation",
        "got 0",
    );
    rejects(
        |c| c.limits.max_channels_per_allocation = 0,
        "limits.max_channels_per_allocation",
        "got 0",
    );
    rejects(
        |c| c.limits.unauthenticated_rate = 0,
        "limits.unauthenticated_rate",
        "got 0",
    );
    rejects(
        |c| c.limits.unauthenticated_burst = 0,
        "limits.unauthenticated_burst",
        "got 0",
    );
    rejects(
        |c| c.limits.max_allocations = 10,
        "limits.max_allocations_per_user",
        "expected 1..=10 (at most limits.max_allocations), got 100",
    );
    rejects(
        |c| c.limits.unauthenticated_burst = 19,
        "limits.unauthenticated_burst",
        "expected at least limits.unauthenticated_rate (20), got 19",
    );
    // 0 bandwidth means unlimited.
    let mut c = valid();
    c.limits.allocation_bandwidth_kbps = 0;
    c.limits.unauthenticated_burst = c.limits.unauthenticated_rate;
    c.validate().unwrap();
}

#[test]
fn rule_auth() {
    rejects(
        |c| c.auth.rest_secrets.clear(),
        "auth",
        "no static users and no REST secrets",
    );
    rejects(
        |c| c.auth.rest_secrets = vec!["a".into(), String::new()],
        "auth.rest_secrets[1]",
        "empty secret",
    );
    rejects(
        |c| c.auth.users = vec![user("", "pw")],
        "auth.users[0].username",
        "expected a non-empty string",
    );
    rejects(
        |c| c.auth.users = vec![user(&"u".repeat(513), "pw")],
        "auth.users[0].username",
        "at most 512 bytes",
    );
    rejects(
        |c| {
            c.auth.users = vec![
                user("alice", "pw1"),
                user("bob", "pw2"),
                user("alice", "pw3"),
            ]
        },
        "auth.users[2].username",
        "duplicate username \"alice\" (also auth.users[0])",
    );
    rejects(
        |c| c.auth.users = vec![user("alice", "")],
        "auth.users[0].password",
        "empty password for user \"alice\"",
    );
    rejects(
        |c| c.auth.credential_ttl_secs = 59,
        "auth.credential_ttl_secs",
        "expected 60..=31536000, got 59",
    );
    rejects(
        |c| c.auth.credential_ttl_secs = 31_536_001,
        "auth.credential_ttl_secs",
        "got 31536001",
    );
    // Static users alone are enough; ':' in a static username is allowed.
    let mut c = Config::default();
    c.auth.users = vec![user("probe:1", "pw")];
    c.validate().unwrap();
}

#[test]
fn rule_drain() {
    rejects(
        |c| c.drain.deadline_secs = 3601,
        "drain.deadline_secs",
        "expected 0..=3600, got 3601",
    );
    let mut c = valid();
    c.drain.deadline_secs = 0;
    c.validate().unwrap();
}

#[test]
fn validation_errors_never_echo_passwords() {
    let mut c = valid();
    c.auth.users = vec![user("alice", "hunter2"), user("alice", "hunter3")];
    let e = c.validate().unwrap_err().to_string();
    assert!(!e.contains("hunter"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Environment overrides.

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn env_rest_secrets_replace() {
    let mut c = valid();
    c.apply_env(env(&[("MERIDIAN_TURN_REST_SECRETS", " new , old,,")]))
        .unwrap();
    assert_eq!(
        c.auth.rest_secrets,
        vec!["new".to_string(), "old".to_string()]
    );
    // Set but empty: the file's secrets stay.
    let mut c = valid();
    c.apply_env(env(&[("MERIDIAN_TURN_REST_SECRETS", "")]))
        .unwrap();
    assert_eq!(c.auth.rest_secrets, vec!["s3cret".to_string()]);
    // Unset: nothing changes.
    let mut c = valid();
    c.apply_env(env(&[])).unwrap();
    assert_eq!(c, valid());
}

#[test]
fn env_users_append() {
    let mut c = valid();
    c.auth.users.push(user("file", "pw"));
    c.apply_env(env(&[("MERIDIAN_TURN_USERS", "alice:pa:ss, bob:pw2,")]))
        .unwrap();
    assert_eq!(
        c.auth.users,
        vec![
            user("file", "pw"),
            user("alice", "pa:ss"),
            user("bob", "pw2")
        ]
    );
    c.validate().unwrap();
    // Users from the environment alone satisfy the auth rule.
    let mut c = Config::default();
    c.apply_env(env(&[("MERIDIAN_TURN_USERS", "alice:pw")]))
        .unwrap();
    c.validate().unwrap();
    // So do secrets.
    let mut c = Config::default();
    c.apply_env(env(&[("MERIDIAN_TURN_REST_SECRETS", "k")]))
        .unwrap();
    c.validate().unwrap();
}

#[test]
fn env_users_malformed() {
    for (value, entry, what) in [
        ("alice:pw,topsecretpassword", 2, "no ':'"),
        (":topsecretpassword", 1, "an empty user"),
        ("alice:pw,bob:", 2, "an empty password"),
    ] {
        let mut c = valid();
        let e = c
            .apply_env(env(&[("MERIDIAN_TURN_USERS", value)]))
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            msg,
            format!(
                "MERIDIAN_TURN_USERS: entry {entry} (1-based): expected user:password, got {what}"
            )
        );
        assert!(
            !msg.contains("topsecret") && !msg.contains("alice"),
            "{msg}"
        );
        assert_eq!(c, valid(), "a failed override must not change the config");
    }
}

// ---------------------------------------------------------------------------------------
// Files.

#[test]
fn load_missing_file() {
    let e = Config::load(Path::new("/x/y.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot read /x/y.toml: No such file or directory"
    );
}

#[test]
fn load_reports_file_name_and_line() {
    let path = temp_path("bad.toml");
    std::fs::write(
        &path,
        "[auth]\nrest_secrets = [\"s\"]\n\n[turn]\nrelay_port_min = 70000\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{} line 5: turn.relay_port_min: expected 1..=65535, got 70000",
            path.display()
        )
    );

    let path = temp_path("good.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let loaded = Config::load(&path);
    let _ = std::fs::remove_file(&path);
    // The process environment may add users or secrets; the file itself must load.
    assert_eq!(
        loaded.unwrap_or_else(|e| panic!("{e}")).turn.external_ipv4,
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
}

// ---------------------------------------------------------------------------------------
// The key list and the documentation.

/// Field names of a section, as serde reports them for an unknown key (so they always match
/// the structs).
fn fields(prefix: &str) -> Vec<String> {
    let text = match prefix {
        "" => "zz_probe = 1\n".to_string(),
        "auth.users[0]" => "[[auth.users]]\nzz_probe = 1\n".to_string(),
        "signaling.api_keys[0]" => "[[signaling.api_keys]]\nzz_probe = 1\n".to_string(),
        section => format!("[{section}]\nzz_probe = 1\n"),
    };
    match source::parse(&text, "probe") {
        Err(ConfigError::UnknownKey { expected, .. }) => expected,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("probe key accepted"),
    }
}

fn all_sections() -> Vec<String> {
    let sections = fields("");
    assert_eq!(
        sections,
        [
            "node",
            "log",
            "admin",
            "turn",
            "auth",
            "limits",
            "security",
            "drain",
            "signaling",
            "sfu",
            "cluster",
            "trunk"
        ]
    );
    sections
}

#[test]
fn every_key_has_an_expected_description() {
    for section in all_sections() {
        assert!(source::KEYS.iter().any(|(k, _)| *k == section), "{section}");
        for field in fields(&section) {
            let key = format!("{section}.{field}");
            assert!(
                source::KEYS.iter().any(|(k, _)| *k == key),
                "{key} missing from source::KEYS"
            );
        }
    }
    for field in fields("auth.users[0]") {
        let key = format!("auth.users[].{field}");
        assert!(
            source::KEYS.iter().any(|(k, _)| *k == key),
            "{key} missing from source::KEYS"
        );
    }
}

/// The part of docs/config.md under the heading for `[section]`.
fn docs_section(section: &str) -> &'static str {
    let heading = format!("## `[{section}]`");
    let start = DOCS
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/config.md has no heading {heading}"));
    let rest = &DOCS[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn docs_describe_every_key() {
    for section in all_sections() {
        let text = docs_section(&section);
        for field in fields(&section) {
            assert!(
                text.contains(&format!("| `{field}` |")),
                "docs/config.md [{section}] does not document {field}"
            );
        }
    }
    let auth = docs_section("auth");
    for field in fields("auth.users[0]") {
        assert!(
            auth.contains(&format!("`{field}`")),
            "docs/config.md [auth] does not document users.{field}"
        );
    }
    let signaling = docs_section("signaling");
    for field in fields("signaling.api_keys[0]") {
        assert!(
            signaling.contains(&format!("`{field}`")),
            "docs/config.md [signaling] does not document api_keys.{field}"
        );
    }
    for var in [ENV_REST_SECRETS, ENV_USERS, ENV_API_KEYS] {
        assert!(DOCS.contains(var), "docs/config.md does not mention {var}");
    }
}

#[test]
fn docs_mention_every_default() {
    // A light check that the documented defaults follow the code: the default of each
    // scalar key appears in its row.
    let c = Config::default();
    let rows = [
        ("turn", "relay_port_min", c.turn.relay_port_min.to_string()),
        ("turn", "relay_port_max", c.turn.relay_port_max.to_string()),
        (
            "turn",
            "default_lifetime_secs",
            c.turn.default_lifetime_secs.to_string(),
        ),
        (
            "turn",
            "max_lifetime_secs",
            c.turn.max_lifetime_secs.to_string(),
        ),
        (
            "turn",
            "nonce_lifetime_secs",
            c.turn.nonce_lifetime_secs.to_string(),
        ),
        (
            "auth",
            "credential_ttl_secs",
            c.auth.credential_ttl_secs.to_string(),
        ),
        (
            "limits",
            "max_allocations",
            c.limits.max_allocations.to_string(),
        ),
        (
            "limits",
            "max_allocations_per_user",
            c.limits.max_allocations_per_user.to_string(),
        ),
        (
            "limits",
            "max_permissions_per_allocation",
            c.limits.max_permissions_per_allocation.to_string(),
        ),
        (
            "limits",
            "max_channels_per_allocation",
            c.limits.max_channels_per_allocation.to_string(),
        ),
        (
            "limits",
            "unauthenticated_rate",
            c.limits.unauthenticated_rate.to_string(),
        ),
        (
            "limits",
            "unauthenticated_burst",
            c.limits.unauthenticated_burst.to_string(),
        ),
        (
            "limits",
            "unallocated_connection_timeout_secs",
            c.limits.unallocated_connection_timeout_secs.to_string(),
        ),
        ("drain", "deadline_secs", c.drain.deadline_secs.to_string()),
        ("admin", "listen", c.admin.listen.to_string()),
        ("signaling", "listen", c.signaling.listen.to_string()),
        (
            "signaling",
            "token_ttl_secs",
            c.signaling.token_ttl_secs.to_string(),
        ),
        (
            "signaling",
            "dev_tokens",
            c.signaling.dev_tokens.to_string(),
        ),
        (
            "signaling",
            "dev_tokens_public",
            c.signaling.dev_tokens_public.to_string(),
        ),
        (
            "signaling",
            "max_message_bytes",
            c.signaling.max_message_bytes.to_string(),
        ),
        (
            "signaling",
            "messages_per_sec",
            c.signaling.messages_per_sec.to_string(),
        ),
        (
            "signaling",
            "message_burst",
            c.signaling.message_burst.to_string(),
        ),
        (
            "signaling",
            "join_timeout_secs",
            c.signaling.join_timeout_secs.to_string(),
        ),
        ("sfu", "udp", c.sfu.udp.to_string()),
        ("sfu", "workers", c.sfu.workers.to_string()),
        (
            "sfu",
            "keyframe_interval_ms",
            c.sfu.keyframe_interval_ms.to_string(),
        ),
        (
            "sfu",
            "stall_after_secs",
            c.sfu.stall_after_secs.to_string(),
        ),
        ("sfu", "message_log", c.sfu.message_log.to_string()),
        (
            "sfu",
            "max_data_message_bytes",
            c.sfu.max_data_message_bytes.to_string(),
        ),
        (
            "sfu",
            "rtx_cache_packets",
            c.sfu.rtx_cache_packets.to_string(),
        ),
        (
            "sfu",
            "initial_bitrate_kbps",
            c.sfu.initial_bitrate_kbps.to_string(),
        ),
    ];
    for (section, field, default) in rows {
        let text = docs_section(section);
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{field}` |")))
            .unwrap_or_else(|| panic!("no row for {section}.{field}"));
        assert!(
            row.contains(&format!("`{default}`")),
            "docs row for {section}.{field} lacks default `{default}`: {row}"
        );
    }
}

#[test]
fn unallocated_connection_timeout_is_bounded() {
    for bad in [0u64, 3601] {
        let mut c = Config::embedded("s".into());
        c.limits.unallocated_connection_timeout_secs = bad;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("limits.unallocated_connection_timeout_secs") && e.contains("1..=3600"),
            "{e}"
        );
    }
}

#[test]
fn signaling_api_keys_are_validated_and_never_echoed() {
    let base = "[signaling]\n";
    let ok = Config::from_toml(&format!("{base}api_keys = [{{ key = \"k1\", secret = \"0123456789abcdef\" }}]\n[auth]\nrest_secrets = [\"s\"]\n"), "m.toml").unwrap();
    assert_eq!(ok.signaling.api_keys[0].key, "k1");
    assert_eq!(ok.signaling.token_ttl_secs, 3600);
    let short = Config::from_toml(&format!("{base}api_keys = [{{ key = \"k1\", secret = \"tooshort-secret\" }}]\n[auth]\nrest_secrets = [\"s\"]\n"), "m.toml").unwrap_err().to_string();
    assert!(
        short.contains("signaling.api_keys[0].secret") && short.contains("at least 16 bytes"),
        "{short}"
    );
    assert!(
        !short.contains("tooshort-secret"),
        "the secret is not echoed: {short}"
    );
    let dup = Config::from_toml(&format!("{base}api_keys = [{{ key = \"k\", secret = \"0123456789abcdef\" }}, {{ key = \"k\", secret = \"0123456789abcdefg\" }}]\n[auth]\nrest_secrets = [\"s\"]\n"), "m.toml").unwrap_err().to_string();
    assert!(dup.contains("signaling.api_keys[1].key"), "{dup}");
    let wrong_type = Config::from_toml(
        &format!("{base}api_keys = [{{ key = \"k\", secret = 5 }}]\n"),
        "m.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(wrong_type.contains("value not shown"), "{wrong_type}");
    let ttl = Config::from_toml(
        &format!("{base}token_ttl_secs = 0\n[auth]\nrest_secrets = [\"s\"]\n"),
        "m.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        ttl.contains("signaling.token_ttl_secs") && ttl.contains("1..=2592000"),
        "{ttl}"
    );
}

#[test]
fn api_keys_from_the_environment() {
    let mut c = Config::embedded("s".into());
    c.apply_env(|v| {
        (v == ENV_API_KEYS).then(|| "a:0123456789abcdef, b:fedcba9876543210".to_string())
    })
    .unwrap();
    assert_eq!(
        c.signaling
            .api_keys
            .iter()
            .map(|k| k.key.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let mut c = Config::embedded("s".into());
    let e = c
        .apply_env(|v| {
            (v == ENV_API_KEYS).then(|| "a:0123456789abcdef,nocolon-secretvalue".to_string())
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("entry 2") && !e.contains("nocolon-secretvalue"),
        "{e}"
    );
    assert!(
        c.signaling.api_keys.is_empty(),
        "a failed override leaves the config unchanged"
    );
}

// ---------------------------------------------------------------------------------------
// [signaling] listener and limits, [sfu].

/// Two lines that make the rest of a test file valid: the section under test starts on line 3.
const WITH_SECRET: &str = "[auth]\nrest_secrets = [\"s\"]\n";

/// The error for `text` after [`WITH_SECRET`], from a file.
fn file_err(text: &str) -> String {
    err(&format!("{WITH_SECRET}{text}"))
}

/// `text` after [`WITH_SECRET`] is valid.
#[track_caller]
fn file_ok(text: &str) -> Config {
    Config::from_toml(&format!("{WITH_SECRET}{text}"), "meridian.toml")
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn signaling_new_keys_parse() {
    let c = file_ok(
        "[signaling]\nlisten = \"[::1]:0\"\ndev_tokens = true\nmax_message_bytes = 1024\n\
         messages_per_sec = 1\nmessage_burst = 1\njoin_timeout_secs = 300\n",
    );
    assert_eq!(c.signaling.listen, sock("[::1]:0"));
    assert!(c.signaling.dev_tokens);
    assert_eq!(c.signaling.max_message_bytes, 1024);
    assert_eq!(
        (c.signaling.messages_per_sec, c.signaling.message_burst),
        (1, 1)
    );
    assert_eq!(c.signaling.join_timeout_secs, 300);
    let c = file_ok("[signaling]\nmax_message_bytes = 1048576\njoin_timeout_secs = 1\n");
    assert_eq!(c.signaling.max_message_bytes, 1_048_576);
    // Type errors use the key descriptions.
    assert_eq!(
        file_err("[signaling]\nlisten = \"localhost\"\n"),
        "meridian.toml line 4: signaling.listen: expected an \"ip:port\" socket address, got \"localhost\""
    );
    assert_eq!(
        file_err("[signaling]\ndev_tokens = \"yes\"\n"),
        "meridian.toml line 4: signaling.dev_tokens: expected true or false, got \"yes\""
    );
    assert_eq!(
        file_err("[signaling]\nmessages_per_sec = -1\n"),
        "meridian.toml line 4: signaling.messages_per_sec: expected 1..=4294967295, got -1"
    );
}

#[test]
fn rule_signaling_tls_both_or_neither() {
    assert_eq!(
        file_err("[signaling]\nlisten = \"127.0.0.1:7880\"\ntls_cert = \"/x/cert.pem\"\n"),
        "meridian.toml line 5: signaling.tls_cert: set without signaling.tls_key; \
         HTTPS needs both (or neither, for plain HTTP)"
    );
    assert_eq!(
        file_err("[signaling]\ntls_key = \"/x/key.pem\"\n"),
        "meridian.toml line 4: signaling.tls_key: set without signaling.tls_cert; \
         HTTPS needs both (or neither, for plain HTTP)"
    );
    assert_eq!(
        file_err(
            "[signaling]\ntls_cert = \"/nonexistent/meridian/cert.pem\"\n\
             tls_key = \"/nonexistent/meridian/key.pem\"\n"
        ),
        "meridian.toml line 4: signaling.tls_cert: file /nonexistent/meridian/cert.pem does not exist"
    );
    let cert = temp_path("api-cert.pem");
    let key = temp_path("api-key.pem");
    std::fs::write(&cert, "cert").unwrap();
    let _ = std::fs::remove_file(&key);
    let both = format!(
        "[signaling]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    assert_eq!(
        file_err(&both),
        format!(
            "meridian.toml line 5: signaling.tls_key: file {} does not exist",
            key.display()
        )
    );
    std::fs::write(&key, "key").unwrap();
    let c = file_ok(&both);
    assert_eq!(c.signaling.tls_cert.as_deref(), Some(cert.as_path()));
    assert_eq!(c.signaling.tls_key.as_deref(), Some(key.as_path()));
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
}

#[test]
fn rule_signaling_dev_tokens_need_loopback_or_opt_in() {
    let needle = "which is not a loopback address; listen on loopback, or set \
                  signaling.dev_tokens_public = true to allow it";
    for listen in [
        "0.0.0.0:7880",
        "192.0.2.1:7880",
        "[::]:7880",
        "[2001:db8::1]:443",
    ] {
        let e = file_err(&format!(
            "[signaling]\nlisten = \"{listen}\"\ndev_tokens = true\n"
        ));
        assert!(
            e.starts_with(&format!(
                "meridian.toml line 5: signaling.dev_tokens: hands out tokens to anyone who can \
                 reach signaling.listen ({})",
                sock(listen)
            )),
            "{e}"
        );
        assert!(e.ends_with(needle), "{e}");
        // The explicit opt-in allows it; without dev tokens the listener is fine anyway.
        file_ok(&format!(
            "[signaling]\nlisten = \"{listen}\"\ndev_tokens = true\ndev_tokens_public = true\n"
        ));
        file_ok(&format!("[signaling]\nlisten = \"{listen}\"\n"));
    }
    for listen in ["127.0.0.1:7880", "127.1.2.3:0", "[::1]:7880"] {
        file_ok(&format!(
            "[signaling]\nlisten = \"{listen}\"\ndev_tokens = true\n"
        ));
    }
    // Straight from validate(): the default listener is loopback.
    let mut c = valid();
    c.signaling.dev_tokens = true;
    c.validate().unwrap();
    rejects(
        |c| {
            c.signaling.dev_tokens = true;
            c.signaling.listen = sock("10.0.0.1:7880");
        },
        "signaling.dev_tokens",
        "(10.0.0.1:7880), which is not a loopback address",
    );
}

#[test]
fn rule_signaling_limits() {
    for (text, message) in [
        (
            "max_message_bytes = 1023",
            "signaling.max_message_bytes: expected 1024..=1048576, got 1023",
        ),
        (
            "max_message_bytes = 1048577",
            "signaling.max_message_bytes: expected 1024..=1048576, got 1048577",
        ),
        (
            "messages_per_sec = 0",
            "signaling.messages_per_sec: expected an integer >= 1, got 0",
        ),
        (
            "message_burst = 0",
            "signaling.message_burst: expected an integer >= 1, got 0",
        ),
        (
            "join_timeout_secs = 0",
            "signaling.join_timeout_secs: expected 1..=300, got 0",
        ),
        (
            "join_timeout_secs = 301",
            "signaling.join_timeout_secs: expected 1..=300, got 301",
        ),
    ] {
        assert_eq!(
            file_err(&format!("[signaling]\ntoken_ttl_secs = 60\n{text}\n")),
            format!("meridian.toml line 5: {message}")
        );
    }
}

#[test]
fn sfu_keys_parse() {
    let c = file_ok(
        "[sfu]\nudp = \"[::1]:0\"\ntcp = []\npublic_ip = \"2001:db8::7\"\nworkers = 256\n\
         keyframe_interval_ms = 100\nstall_after_secs = 300\nmessage_log = 1\n\
         max_data_message_bytes = 262144\nrtx_cache_packets = 0\ninitial_bitrate_kbps = 50\n",
    );
    assert_eq!(c.sfu.udp, sock("[::1]:0"));
    assert!(c.sfu.tcp.is_empty(), "[] turns ICE-TCP off");
    assert_eq!(c.sfu.public_ip, Some("2001:db8::7".parse().unwrap()));
    assert_eq!(c.sfu.workers, 256);
    assert_eq!(c.sfu.keyframe_interval_ms, 100);
    assert_eq!(c.sfu.stall_after_secs, 300);
    assert_eq!(c.sfu.message_log, 1);
    assert_eq!(c.sfu.max_data_message_bytes, 262_144);
    assert_eq!(c.sfu.rtx_cache_packets, 0);
    assert_eq!(c.sfu.initial_bitrate_kbps, 50);
    let c = file_ok(
        "[sfu]\nkeyframe_interval_ms = 10000\nstall_after_secs = 1\nmessage_log = 1000000\n\
         max_data_message_bytes = 1\nrtx_cache_packets = 8192\ninitial_bitrate_kbps = 100000\n",
    );
    assert_eq!(c.sfu.initial_bitrate_kbps, 100_000);
    assert_eq!(
        file_err("[sfu]\npublic_ip = \"my.host\"\n"),
        "meridian.toml line 4: sfu.public_ip: expected an IP address, got \"my.host\""
    );
    assert_eq!(
        file_err("[sfu]\ntcp = [\"127.0.0.1:7881\", 7881]\n"),
        "meridian.toml line 4: sfu.tcp[1]: expected an \"ip:port\" socket address, got 7881"
    );
    assert_eq!(
        file_err("[sfu]\nudp = [\"127.0.0.1:7882\"]\n"),
        "meridian.toml line 4: sfu.udp: expected an \"ip:port\" socket address, got an array"
    );
}

#[test]
fn rule_sfu_wildcard_needs_public_ip() {
    let tail = "binds every interface, so ICE candidates have no concrete address to \
                advertise; set sfu.public_ip to the address clients reach this node on";
    assert_eq!(
        file_err("[sfu]\nudp = \"0.0.0.0:7882\"\n"),
        format!("meridian.toml line 4: sfu.udp: 0.0.0.0 {tail}")
    );
    assert_eq!(
        file_err("[sfu]\nudp = \"[::]:7882\"\n"),
        format!("meridian.toml line 4: sfu.udp: :: {tail}")
    );
    assert_eq!(
        file_err("[sfu]\ntcp = [\n  \"127.0.0.1:7881\",\n  \"0.0.0.0:7881\",\n]\n"),
        format!("meridian.toml line 6: sfu.tcp[1]: 0.0.0.0 {tail}")
    );
    let c = file_ok(
        "[sfu]\nudp = \"0.0.0.0:7882\"\ntcp = [\"[::]:7881\"]\npublic_ip = \"203.0.113.10\"\n",
    );
    assert_eq!(c.sfu.public_ip, Some(IpAddr::from([203, 0, 113, 10])));
    // A concrete listener needs no public_ip, but it may have one (1:1 NAT).
    file_ok("[sfu]\nudp = \"192.0.2.5:7882\"\ntcp = []\n");
    file_ok("[sfu]\nudp = \"10.0.0.5:7882\"\npublic_ip = \"203.0.113.10\"\n");
    for bad in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"] {
        assert_eq!(
            file_err(&format!("[sfu]\npublic_ip = \"{bad}\"\n")),
            format!(
                "meridian.toml line 4: sfu.public_ip: expected a unicast IP address, got {bad}"
            )
        );
    }
    rejects(
        |c| c.sfu.udp = sock("0.0.0.0:0"),
        "sfu.udp",
        "set sfu.public_ip",
    );
}

#[test]
fn rule_sfu_ranges() {
    for (text, message) in [
        (
            "workers = 257",
            "sfu.workers: expected 0..=256 (0 = one per core), got 257",
        ),
        (
            "keyframe_interval_ms = 99",
            "sfu.keyframe_interval_ms: expected 100..=10000, got 99",
        ),
        (
            "keyframe_interval_ms = 10001",
            "sfu.keyframe_interval_ms: expected 100..=10000, got 10001",
        ),
        (
            "stall_after_secs = 0",
            "sfu.stall_after_secs: expected 1..=300, got 0",
        ),
        (
            "stall_after_secs = 301",
            "sfu.stall_after_secs: expected 1..=300, got 301",
        ),
        (
            "message_log = 0",
            "sfu.message_log: expected 1..=1000000, got 0",
        ),
        (
            "message_log = 1000001",
            "sfu.message_log: expected 1..=1000000, got 1000001",
        ),
        (
            "max_data_message_bytes = 0",
            "sfu.max_data_message_bytes: expected 1..=262144, got 0",
        ),
        (
            "max_data_message_bytes = 262145",
            "sfu.max_data_message_bytes: expected 1..=262144, got 262145",
        ),
        (
            "rtx_cache_packets = 8193",
            "sfu.rtx_cache_packets: expected 0..=8192, got 8193",
        ),
        (
            "initial_bitrate_kbps = 49",
            "sfu.initial_bitrate_kbps: expected 50..=100000, got 49",
        ),
        (
            "initial_bitrate_kbps = 100001",
            "sfu.initial_bitrate_kbps: expected 50..=100000, got 100001",
        ),
    ] {
        assert_eq!(
            file_err(&format!("[sfu]\nudp = \"127.0.0.1:7882\"\n{text}\n")),
            format!("meridian.toml line 5: {message}")
        );
    }
}

#[test]
fn cluster_keys_parse() {
    let c = file_ok(
        "[cluster]\nnode_id = \"fra-1\"\nregion = \"eu\"\ndirectory = \"redis://127.0.0.1:6379/0\"\n\
         key_prefix = \"mer\"\npublic_signaling_url = \"https://fra.example.com\"\n\
         public_stun = [\"203.0.113.10:3478\"]\nheartbeat_interval_ms = 100\ndeath_timeout_ms = 500\n\
         max_sessions = 5000\n",
    );
    assert_eq!(c.node_id(), "fra-1");
    assert_eq!(c.region(), "eu");
    assert_eq!(c.cluster.directory, "redis://127.0.0.1:6379/0");
    assert_eq!(c.cluster.public_stun, vec!["203.0.113.10:3478".to_string()]);
    assert_eq!(
        (c.cluster.heartbeat_interval_ms, c.cluster.death_timeout_ms),
        (100, 500)
    );
    assert_eq!(c.cluster.max_sessions, 5000);
    // Without the section: the embedded directory, id and region from [node].
    let d = valid();
    assert_eq!(d.cluster.directory, "embedded");
    assert_eq!((d.node_id(), d.region()), ("meridian", "local"));
    let e = file_err("[cluster]\nheartbeat_interval_ms = \"fast\"\n");
    assert!(
        e.contains("line ") && e.contains("cluster.heartbeat_interval_ms: expected 20..=10000"),
        "{e}"
    );
}

#[test]
fn rule_cluster_values() {
    rejects(
        |c| c.cluster.node_id = Some("fra 1".into()),
        "cluster.node_id",
        "A-Z",
    );
    rejects(|c| c.node.region = String::new(), "node.region", "1..=64");
    rejects(
        |c| c.cluster.directory = "mysql://db".into(),
        "cluster.directory",
        "scheme \"mysql\"",
    );
    rejects(
        |c| c.cluster.directory = "localhost:6379".into(),
        "cluster.directory",
        "redis://",
    );
    rejects(
        |c| c.cluster.directory = "redis://:6379".into(),
        "cluster.directory",
        "no host",
    );
    rejects(
        |c| c.cluster.directory = "redis-sentinel://10.0.0.5:26379/0".into(),
        "cluster.directory",
        "sentinelServiceName",
    );
    // A password in the URL is never echoed.
    let mut c = valid();
    c.cluster.directory = "memcache://user:hunter2@db".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
    rejects(
        |c| c.cluster.heartbeat_interval_ms = 5,
        "cluster.heartbeat_interval_ms",
        "20..=10000",
    );
    rejects(
        |c| c.cluster.death_timeout_ms = 300,
        "cluster.death_timeout_ms",
        "at least twice",
    );
    rejects(
        |c| c.cluster.public_signaling_url = Some("fra.example.com".into()),
        "cluster.public_signaling_url",
        "http://",
    );
    rejects(
        |c| c.cluster.public_signaling_url = Some("https://fra.example.com/api".into()),
        "cluster.public_signaling_url",
        "no path",
    );
    rejects(
        |c| c.cluster.public_stun = vec!["203.0.113.10".into()],
        "cluster.public_stun[0]",
        "host:port",
    );
    rejects(
        |c| {
            c.cluster.directory = "redis://127.0.0.1".into();
            c.signaling.listen = sock("0.0.0.0:7880");
        },
        "cluster.public_signaling_url",
        "required with a Redis directory",
    );
    rejects(
        |c| {
            c.cluster.directory = "redis://127.0.0.1".into();
            c.turn.udp = vec![sock("0.0.0.0:3478")];
        },
        "cluster.public_stun",
        "required with a Redis directory",
    );
    // Every accepted form.
    for url in [
        "embedded",
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example.com:6380",
        "redis-sentinel://10.0.0.5:26379/0?sentinelServiceName=m&node=10.0.0.6:26379",
    ] {
        let mut c = valid();
        c.cluster.directory = url.into();
        c.cluster.public_signaling_url = Some("http://127.0.1.1:7880/".into());
        c.validate().unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn trunk_keys_parse_and_validate() {
    let d = Config::default();
    assert_eq!(d.trunk.listen, None);
    assert_eq!((d.trunk.idle_timeout_secs, d.trunk.keepalive_ms), (30, 500));
    let pem = temp_path("trunk.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = format!(
        "[auth]\nrest_secrets = [\"x\"]\n[trunk]\nlisten = \"127.0.0.1:7890\"\nca = {p:?}\ncert = {p:?}\nkey = {p:?}\nallow_peers = [\"sgp-1\"]\nkeepalive_ms = 250\n",
        p = pem.display().to_string()
    );
    let c = Config::from_toml(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.trunk.listen, Some(sock("127.0.0.1:7890")));
    assert_eq!(c.trunk.allow_peers, vec!["sgp-1".to_string()]);
    assert_eq!(c.trunk.keepalive_ms, 250);
    let with_files = |c: &mut Config| {
        c.trunk.listen = Some(sock("127.0.0.1:7890"));
        c.trunk.ca = Some(pem.clone());
        c.trunk.cert = Some(pem.clone());
        c.trunk.key = Some(pem.clone());
    };
    rejects(
        |c| c.trunk.ca = Some(pem.clone()),
        "trunk.ca",
        "without trunk.listen",
    );
    rejects(
        |c| c.trunk.listen = Some(sock("127.0.0.1:7890")),
        "trunk.ca",
        "mutual TLS",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.key = Some(temp_path("absent.key"));
        },
        "trunk.key",
        "does not exist",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.listen = Some(sock("0.0.0.0:7890"));
        },
        "trunk.public_addr",
        "required when trunk.listen is 0.0.0.0:7890",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.public_addr = Some("fra.example.com".into());
        },
        "trunk.public_addr",
        "host:port",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.allow_peers = vec!["bad id".into()];
        },
        "trunk.allow_peers[0]",
        "A-Z",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.keepalive_ms = 10;
        },
        "trunk.keepalive_ms",
        "50..=60000",
    );
    rejects(
        |c| {
            with_files(c);
            c.trunk.idle_timeout_secs = 0;
        },
        "trunk.idle_timeout_secs",
        "1..=86400",
    );
    let mut c = valid();
    with_files(&mut c);
    c.trunk.listen = Some(sock("0.0.0.0:7890"));
    c.trunk.public_addr = Some("[2001:db8::1]:7890".into());
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&pem);
}
