//! Starting the servers under test on loopback: coturn (Debian's `turnserver`) and meridian
//! (`meridian serve`), each behind a guard that stops it on drop.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_relay::stun::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "meridian-bench-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // MERIDIAN_BENCH_KEEP=1 keeps the servers' configs and logs for a look afterwards.
        if std::env::var_os("MERIDIAN_BENCH_KEEP").is_some_and(|v| v == "1") {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port on 127.0.0.1 free for both UDP and TCP right now.
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0")?;
        let port = u.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1")
}

/// Sends STUN Binding requests to `addr` until one is answered or `timeout` passes.
pub fn wait_stun(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let tid = TransactionId::random();
        let req = MessageBuilder::new(MessageType::new(Method::BINDING, Class::Request), tid)
            .finish_with_fingerprint();
        let _ = s.send_to(&req, addr);
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Ok(m) = Message::parse(&buf[..n]) {
                if m.transaction_id() == tid {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no STUN Binding answer from {addr} within {timeout:?}")
}

/// A child server process, terminated (SIGTERM, then SIGKILL) on drop.
pub struct ServerGuard {
    pub name: &'static str,
    pub child: Child,
    pub udp: SocketAddr,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub pid: i32,
    pub log: PathBuf,
    _dir: TempDir,
}

impl ServerGuard {
    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

fn log_tail(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Credentials the bench configures a server it starts with.
#[derive(Clone, Debug)]
pub enum ServerAuth {
    LongTerm { user: String, pass: String },
    Rest { secret: String },
}

/// Whether Debian's coturn `turnserver` is on PATH.
pub fn coturn_available() -> bool {
    Command::new("turnserver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts coturn on 127.0.0.1 with loopback peers allowed, TCP+UDP, no TLS/DTLS, no CLI.
pub fn start_coturn(
    auth: &ServerAuth,
    relay_ports: (u16, u16),
    threads: usize,
) -> Result<ServerGuard> {
    if !coturn_available() {
        bail!("`turnserver` not found: install coturn (Debian: apt-get install -y coturn)");
    }
    let dir = TempDir::new("coturn")?;
    let port = free_port()?;
    let log = dir.path().join("turnserver.log");
    let mut cmd = Command::new("turnserver");
    cmd.args([
        "-n",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
    ])
    .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
    .arg(format!("--listening-port={port}"))
    .arg(format!("--min-port={}", relay_ports.0))
    .arg(format!("--max-port={}", relay_ports.1))
    .args(["--realm", "meridian-bench", "--fingerprint"])
    .args(["--total-quota=0", "--user-quota=0", "--max-bps=0"])
    .args([
        "--no-multicast-peers",
        "--no-software-attribute",
        "--simple-log",
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(format!(
        "--pidfile={}",
        dir.path().join("turnserver.pid").display()
    ));
    if threads > 0 {
        cmd.arg(format!("--relay-threads={threads}"));
    }
    match auth {
        ServerAuth::LongTerm { user, pass } => {
            cmd.arg("--lt-cred-mech")
                .arg(format!("--user={user}:{pass}"));
        }
        ServerAuth::Rest { secret } => {
            cmd.arg("--use-auth-secret")
                .arg(format!("--static-auth-secret={secret}"));
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().context("spawning turnserver")?;
    let pid = child.id() as i32;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let mut g = ServerGuard {
        name: "coturn",
        child,
        udp: addr,
        tcp: Some(addr),
        tls: None,
        pid,
        log,
        _dir: dir,
    };
    if let Err(e) = wait_stun(addr, Duration::from_secs(10)) {
        let exited = g.child.try_wait().ok().flatten();
        bail!(
            "coturn did not become ready ({e}; exit status {exited:?}); log tail:\n{}",
            g.log_tail()
        );
    }
    Ok(g)
}

/// The meridian config the bench runs the node with.
pub fn meridian_config(auth: &ServerAuth, relay_ports: (u16, u16), workers: usize) -> String {
    let auth_toml = match auth {
        ServerAuth::LongTerm { user, pass } => format!(
            "users = [{{ username = {}, password = {} }}]",
            toml_str(user),
            toml_str(pass)
        ),
        ServerAuth::Rest { secret } => format!("rest_secrets = [{}]", toml_str(secret)),
    };
    format!(
        r#"# Written by `meridian bench turn`.
[node]
name = "bench"

[log]
level = "warn"

[admin]
listen = "127.0.0.1:0"

[turn]
realm = "meridian-bench"
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
workers = {workers}
relay_ipv4 = "127.0.0.1"
relay_port_min = {min}
relay_port_max = {max}

[auth]
{auth_toml}

[limits]
max_allocations = 1000000
max_allocations_per_user = 1000000
unauthenticated_rate = 1000000
unauthenticated_burst = 1000000

[security]
allow_peers = ["127.0.0.0/8"]

[signaling]
listen = "127.0.0.1:0"

[sfu]
udp = "127.0.0.1:0"
tcp = []
"#,
        min = relay_ports.0,
        max = relay_ports.1,
    )
}

fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// What `meridian serve --ready-file` writes once its listeners are bound.
#[derive(serde::Deserialize, Debug)]
pub struct ReadyFile {
    #[serde(default)]
    pub turn_udp: Vec<SocketAddr>,
    #[serde(default)]
    pub turn_tcp: Vec<SocketAddr>,
    #[serde(default)]
    pub turn_tls: Vec<SocketAddr>,
    pub pid: Option<i32>,
}

/// Starts `bin serve --config FILE --ready-file FILE` and waits (bounded) for the ready file.
pub fn start_meridian(
    bin: &Path,
    auth: &ServerAuth,
    relay_ports: (u16, u16),
    workers: usize,
) -> Result<ServerGuard> {
    let dir = TempDir::new("meridian")?;
    let config = dir.path().join("meridian.toml");
    let ready = dir.path().join("ready.json");
    std::fs::write(&config, meridian_config(auth, relay_ports, workers))?;
    let log = dir.path().join("meridian.log");
    let logf = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("spawning {} serve", bin.display()))?;
    let pid = child.id() as i32;
    let mut g = ServerGuard {
        name: "meridian",
        child,
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: None,
        tls: None,
        pid,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if let Ok(r) = serde_json::from_str::<ReadyFile>(&s) {
                g.udp = *r
                    .turn_udp
                    .first()
                    .context("meridian's ready file lists no UDP listener")?;
                g.tcp = r.turn_tcp.first().copied();
                g.tls = r.turn_tls.first().copied();
                if let Some(p) = r.pid {
                    g.pid = p;
                }
                break;
            }
        }
        if let Ok(Some(st)) = g.child.try_wait() {
            bail!(
                "meridian exited ({st}) before it was ready; log tail:\n{}",
                g.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "meridian wrote no ready file within 20 s; log tail:\n{}",
                g.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_stun(g.udp, Duration::from_secs(10))
        .with_context(|| format!("meridian log tail:\n{}", g.log_tail()))?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meridian_config_quotes_and_lists_what_the_bench_needs() {
        let c = meridian_config(
            &ServerAuth::LongTerm {
                user: "be\"nch".into(),
                pass: "p\\w".into(),
            },
            (40000, 49999),
            2,
        );
        assert!(
            c.contains(r#"users = [{ username = "be\"nch", password = "p\\w" }]"#),
            "{c}"
        );
        assert!(c.contains("relay_port_min = 40000"));
        assert!(c.contains("workers = 2"));
        assert!(c.contains(r#"allow_peers = ["127.0.0.0/8"]"#));
        let r = meridian_config(&ServerAuth::Rest { secret: "s".into() }, (1, 2), 0);
        assert!(r.contains(r#"rest_secrets = ["s"]"#));
    }

    #[test]
    fn ready_file_parses() {
        let r: ReadyFile = serde_json::from_str(
            r#"{"turn_udp":["127.0.0.1:4000"],"turn_tcp":["127.0.0.1:4001"],"turn_tls":[],"admin":"127.0.0.1:9","pid":42}"#,
        )
        .unwrap();
        assert_eq!(r.turn_udp[0].port(), 4000);
        assert_eq!(r.pid, Some(42));
    }

    #[test]
    fn free_port_is_bindable_and_stun_wait_is_bounded() {
        let p = free_port().unwrap();
        assert!(UdpSocket::bind(("127.0.0.1", p)).is_ok());
        let t0 = Instant::now();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(wait_stun(silent.local_addr().unwrap(), Duration::from_millis(300)).is_err());
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
