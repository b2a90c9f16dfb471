//! `meridian token`: mints tokens that verify with the configured key and carry the asked-for
//! claims; refuses bad input with a clear message.

mod common;

use std::process::Output;

use common::TempDir;
use meridian_signaling::token::{Role, TokenVerifier};

const SECRET: &str = "0123456789abcdef0123";

fn run(dir: &TempDir, config: &str, args: &[&str]) -> Output {
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = common::meridian_command();
    cmd.env_remove("MERIDIAN_API_KEYS")
        .arg("token")
        .arg("--config")
        .arg(&path)
        .args(args);
    cmd.output().expect("run meridian token")
}

fn config(with_key: bool) -> String {
    let keys = if with_key {
        format!("[[signaling.api_keys]]\nkey = \"app-1\"\nsecret = \"{SECRET}\"\n")
    } else {
        String::new()
    };
    format!("[auth]\nrest_secrets = [\"x\"]\n\n{keys}")
}

#[test]
fn minted_token_verifies_with_the_requested_claims() {
    let dir = TempDir::new("token-cli");
    let out = run(
        &dir,
        &config(true),
        &[
            "--room",
            "arcade-1",
            "--identity",
            "player-7",
            "--role",
            "player",
            "--ttl",
            "120",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(
        token.split('.').count(),
        3,
        "a JWT alone on stdout: {token:?}"
    );
    let now = common::unix_now();
    let claims = TokenVerifier::new([("app-1", SECRET.as_bytes())])
        .verify(token, now, Some("arcade-1"))
        .unwrap();
    assert_eq!(
        (
            claims.sub.as_str(),
            claims.room.as_str(),
            claims.role,
            claims.iss.as_str()
        ),
        ("player-7", "arcade-1", Role::Player, "app-1")
    );
    assert!(
        claims.exp >= now + 110 && claims.exp <= now + 130,
        "exp {} vs now {now}",
        claims.exp
    );
    // Another secret does not verify it.
    assert!(
        TokenVerifier::new([("app-1", &b"another-secret-value"[..])])
            .verify(token, now, None)
            .is_err()
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = TempDir::new("token-cli-bad");
    let out = run(
        &dir,
        &config(false),
        &["--room", "r", "--identity", "i", "--role", "viewer"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signaling.api_keys is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &dir,
        &config(true),
        &["--room", "no spaces", "--identity", "i", "--role", "viewer"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("room"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &dir,
        &config(true),
        &["--room", "r", "--identity", "i", "--role", "admin"],
    );
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown role");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected device, player or viewer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}
