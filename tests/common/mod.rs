//! Shared support for the root crate's integration tests.
//!
//! [`Node::start`] writes a temporary config, spawns a TURN server and waits (bounded) until
//! it is ready; dropping the [`Node`] stops it (SIGTERM, then SIGKILL after a bounded wait)
//! and removes its files. When the test thread is panicking, the server's captured
//! stdout/stderr is printed so that the failure shows what the server said.
//!
//! The server is `meridian serve --config FILE --ready-file PATH` by default. Setting
//! `MERIDIAN_TEST_BACKEND=coturn` runs coturn's `turnserver` instead, with the same
//! credentials and peer policy, so the TURN test logic itself can be checked against a
//! reference implementation.

#![allow(dead_code)]

pub mod cluster;
pub mod str0m_peer;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Static user every test config carries.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland-pass";
/// Shared secret for TURN REST API credentials.
pub const REST_SECRET: &str = "rest-secret-for-tests";
/// The signaling API key every test node accepts tokens from.
pub const API_KEY: &str = "test-key";
pub const API_SECRET: &str = "test-api-secret-0123456789";
pub const REALM: &str = "meridian-test";

/// Which TURN server the tests talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Meridian,
    Coturn,
}

impl Backend {
    /// From `MERIDIAN_TEST_BACKEND` ("meridian", the default, or "coturn").
    pub fn from_env() -> Backend {
        match std::env::var("MERIDIAN_TEST_BACKEND").as_deref() {
            Ok("coturn") => Backend::Coturn,
            Ok("") | Ok("meridian") | Err(_) => Backend::Meridian,
            Ok(other) => panic!("MERIDIAN_TEST_BACKEND={other:?}: expected meridian or coturn"),
        }
    }
}

/// What a test wants from the server.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Allow relaying to loopback peers (127.0.0.0/8, ::1). Tests need this to reach their
    /// echo peers; negative tests turn it off.
    pub allow_loopback_peers: bool,
    pub users: Vec<(String, String)>,
    pub rest_secrets: Vec<String>,
    pub realm: String,
    /// `[drain] deadline_secs`.
    pub drain_secs: u64,
    /// PEM certificate and key: adds a TLS listener on an ephemeral port.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Appended verbatim to the generated meridian config (ignored for coturn).
    pub extra_toml: String,
    /// Lines added to the generated `[signaling]` section (which already sets an ephemeral
    /// `listen` and the test API key [`API_KEY`]/[`API_SECRET`]).
    pub signaling_toml: String,
    /// Lines added to the generated `[sfu]` section (ephemeral UDP port, one shard, no ICE-TCP
    /// unless set here).
    pub sfu_toml: String,
    /// coturn cannot accept static users and REST credentials at once (the shared secret
    /// overrides the users), so its backend runs with one of them; meridian gets both.
    pub coturn_auth: CoturnAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoturnAuth {
    StaticUsers,
    RestSecret,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            allow_loopback_peers: true,
            users: vec![(USER.into(), PASSWORD.into())],
            rest_secrets: vec![REST_SECRET.into()],
            realm: REALM.into(),
            drain_secs: 1,
            tls: None,
            extra_toml: String::new(),
            signaling_toml: String::new(),
            sfu_toml: String::new(),
            coturn_auth: CoturnAuth::StaticUsers,
        }
    }
}

/// The contents of meridian's ready file.
#[derive(Debug, Clone)]
pub struct Ready {
    pub turn_udp: Vec<SocketAddr>,
    pub turn_tcp: Vec<SocketAddr>,
    pub turn_tls: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The signaling API (HTTP/WebSocket).
    pub http: Option<SocketAddr>,
    /// The SFU's UDP port.
    pub sfu_udp: Option<SocketAddr>,
    pub pid: Option<u32>,
}

impl Ready {
    pub fn parse(text: &str) -> Result<Ready, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("ready file is not JSON: {e}: {text:?}"))?;
        let addrs = |key: &str| -> Result<Vec<SocketAddr>, String> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(vec![]),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .ok_or_else(|| format!("{key}: {i} is not a string"))?
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("{key}: {i}: {e}"))
                    })
                    .collect(),
                Some(other) => Err(format!("{key}: expected an array, found {other}")),
            }
        };
        let one = |key: &str| -> Result<Option<SocketAddr>, String> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(a) => Ok(Some(
                    a.as_str()
                        .ok_or_else(|| format!("{key}: {a} is not a string"))?
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("{key}: {a}: {e}"))?,
                )),
            }
        };
        let admin = one("admin")?;
        Ok(Ready {
            turn_udp: addrs("turn_udp")?,
            turn_tcp: addrs("turn_tcp")?,
            turn_tls: addrs("turn_tls")?,
            admin,
            http: one("http")?,
            sfu_udp: one("sfu_udp")?,
            pid: v.get("pid").and_then(|p| p.as_u64()).map(|p| p as u32),
        })
    }
}

/// A scratch directory under cargo's target tmpdir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed (SIGTERM, then SIGKILL) when dropped, and dies with the
/// thread that spawned it if the test runner itself is killed.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command, name: &str) -> ChildGuard {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child: Some(child),
            name: name.into(),
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status
    }

    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            if let Some(c) = self.child.as_ref() {
                // SAFETY: plain kill(2) on our own child's pid, which has not been reaped.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, sig);
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit; `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.try_wait().is_some() {
            return self.status;
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(timeout) {
            return Some(s);
        }
        eprintln!(
            "{} did not exit within {timeout:?} of SIGTERM; killing it",
            self.name
        );
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
        self.status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(STOP_TIMEOUT);
    }
}

/// A running TURN server.
pub struct Node {
    pub backend: Backend,
    pub ready: Ready,
    pub config_path: PathBuf,
    /// Private to the test that started the node.
    pub dir: TempDir,
    log_path: PathBuf,
    proc: ChildGuard,
}

impl Node {
    /// Starts the server chosen by `MERIDIAN_TEST_BACKEND`.
    pub fn start(opts: &NodeOptions) -> Node {
        Node::start_backend(Backend::from_env(), opts)
    }

    pub fn start_backend(backend: Backend, opts: &NodeOptions) -> Node {
        match backend {
            Backend::Meridian => Node::start_meridian(opts),
            Backend::Coturn => Node::start_coturn(opts),
        }
    }

    /// Starts `meridian serve` and waits for its ready file.
    pub fn start_meridian(opts: &NodeOptions) -> Node {
        let dir = TempDir::new("meridian");
        let config_path = dir.path().join("meridian.toml");
        fs::write(&config_path, meridian_config(opts)).expect("write config");
        let ready_path = dir.path().join("ready.json");
        let log_path = dir.path().join("node.log");
        let log = fs::File::create(&log_path).expect("create log");
        let mut cmd = meridian_command();
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let proc = ChildGuard::spawn(cmd, "meridian");
        let mut node = Node {
            backend: Backend::Meridian,
            ready: Ready {
                turn_udp: vec![],
                turn_tcp: vec![],
                turn_tls: vec![],
                admin: None,
                http: None,
                sfu_udp: None,
                pid: None,
            },
            config_path,
            dir,
            log_path,
            proc,
        };
        node.ready = node.wait_ready_file(&ready_path);
        assert_eq!(
            node.ready.pid,
            Some(node.proc.id()),
            "ready file pid is not the spawned process"
        );
        node
    }

    fn wait_ready_file(&mut self, path: &Path) -> Ready {
        let start = Instant::now();
        loop {
            if let Some(status) = self.proc.try_wait() {
                panic!(
                    "meridian exited before it was ready ({status}); its output:\n{}",
                    self.log()
                );
            }
            // The file is written atomically (tmp + rename), so a present file is complete.
            if let Ok(text) = fs::read_to_string(path) {
                match Ready::parse(&text) {
                    Ok(r) => return r,
                    Err(e) => panic!("bad ready file: {e}\nnode output:\n{}", self.log()),
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "meridian not ready after {READY_TIMEOUT:?}; its output:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts coturn's `turnserver` on free loopback ports.
    pub fn start_coturn(opts: &NodeOptions) -> Node {
        assert!(
            opts.tls.is_none(),
            "the coturn backend has no TLS listener in these tests"
        );
        // coturn cannot bind port 0; pick a port free on UDP and TCP and retry on a race.
        for attempt in 0..5 {
            let dir = TempDir::new("coturn");
            let log_path = dir.path().join("node.log");
            let port = free_port_udp_tcp();
            let relay_min = 20000 + (port % 20000) / 64 * 64;
            let log = fs::File::create(&log_path).expect("create log");
            let mut cmd = Command::new("turnserver");
            cmd.args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--log-file=stdout",
                "--simple-log",
            ])
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_min}"))
            .arg(format!("--max-port={}", relay_min + 63))
            .arg(format!("--realm={}", opts.realm))
            .arg(format!(
                "--pidfile={}",
                dir.path().join("turnserver.pid").display()
            ))
            .arg(format!("--userdb={}", dir.path().join("turndb").display()))
            .arg("--fingerprint")
            .arg("--lt-cred-mech");
            match opts.coturn_auth {
                CoturnAuth::StaticUsers => {
                    for (u, p) in &opts.users {
                        cmd.arg(format!("--user={u}:{p}"));
                    }
                }
                CoturnAuth::RestSecret => {
                    let secret = opts
                        .rest_secrets
                        .first()
                        .expect("CoturnAuth::RestSecret needs a secret");
                    cmd.arg("--use-auth-secret")
                        .arg(format!("--static-auth-secret={secret}"));
                }
            }
            if opts.allow_loopback_peers {
                cmd.arg("--allow-loopback-peers");
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            let proc = ChildGuard::spawn(cmd, "turnserver");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut node = Node {
                backend: Backend::Coturn,
                ready: Ready {
                    turn_udp: vec![addr],
                    turn_tcp: vec![addr],
                    turn_tls: vec![],
                    admin: None,
                    http: None,
                    sfu_udp: None,
                    pid: Some(0),
                },
                config_path: PathBuf::new(),
                dir,
                log_path: log_path.clone(),
                proc,
            };
            node.ready.pid = Some(node.proc.id());
            match node.wait_stun_ready(addr) {
                Ok(()) => return node,
                Err(e) if attempt < 4 => {
                    eprintln!(
                        "coturn on port {port} not ready ({e}); retrying on another port:\n{}",
                        node.log()
                    );
                    continue;
                }
                Err(e) => panic!("coturn not ready: {e}; its output:\n{}", node.log()),
            }
        }
        unreachable!()
    }

    /// Polls with STUN Binding requests over UDP and a TCP connect until both answer.
    fn wait_stun_ready(&mut self, addr: SocketAddr) -> Result<(), String> {
        let start = Instant::now();
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let mut udp_ok = false;
        let mut tcp_ok = false;
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.proc.try_wait() {
                return Err(format!("server exited ({status})"));
            }
            if !udp_ok {
                // Any Binding success on this private socket will do: a late answer to an
                // earlier probe (coturn is slow while it starts) is as good as a fresh one.
                let _ = sock.send_to(&stun_binding_request(), addr);
                let mut buf = [0u8; 1500];
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    udp_ok = n >= 20
                        && buf[0..2] == [0x01, 0x01]
                        && buf[4..8] == 0x2112_A442u32.to_be_bytes();
                }
            }
            if !tcp_ok {
                tcp_ok = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
            }
            if udp_ok && tcp_ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "no STUN answer from {addr} within {READY_TIMEOUT:?}"
        ))
    }

    pub fn turn_udp(&self) -> SocketAddr {
        *self
            .ready
            .turn_udp
            .first()
            .expect("node has no UDP listener")
    }

    pub fn turn_tcp(&self) -> SocketAddr {
        *self
            .ready
            .turn_tcp
            .first()
            .expect("node has no TCP listener")
    }

    pub fn admin(&self) -> SocketAddr {
        self.ready.admin.expect("node has no admin listener")
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let status = self.proc.stop(STOP_TIMEOUT);
        if std::thread::panicking() {
            eprintln!(
                "---- {:?} node output (exit: {status:?}) ----\n{}\n---- end of node output ----",
                self.backend,
                self.log()
            );
        }
    }
}

/// Path of the `meridian` binary cargo built for these tests.
pub fn meridian_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meridian")
}

/// A `meridian` command whose environment cannot add users or secrets behind the test's back.
pub fn meridian_command() -> Command {
    let mut cmd = Command::new(meridian_bin());
    cmd.env_remove("MERIDIAN_TURN_USERS")
        .env_remove("MERIDIAN_TURN_REST_SECRETS")
        .env_remove("RUST_LOG");
    cmd
}

/// A complete meridian config for `opts`, every listener on an ephemeral loopback port.
pub fn meridian_config(opts: &NodeOptions) -> String {
    let q = |s: &str| format!("{:?}", s); // TOML basic strings accept Rust's escapes for our inputs
    let mut c = String::new();
    c.push_str("[node]\nname = \"test-node\"\nregion = \"test\"\n\n");
    c.push_str("[log]\nlevel = \"debug\"\n\n");
    c.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n\n");
    c.push_str("[turn]\n");
    c.push_str(&format!("realm = {}\n", q(&opts.realm)));
    c.push_str("udp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\n");
    if let Some((cert, key)) = &opts.tls {
        c.push_str("tls = [\"127.0.0.1:0\"]\n");
        c.push_str(&format!("tls_cert = {}\n", q(&cert.display().to_string())));
        c.push_str(&format!("tls_key = {}\n", q(&key.display().to_string())));
    }
    c.push_str("relay_ipv4 = \"127.0.0.1\"\n\n");
    c.push_str("[auth]\nusers = [");
    let users: Vec<String> = opts
        .users
        .iter()
        .map(|(u, p)| format!("{{ username = {}, password = {} }}", q(u), q(p)))
        .collect();
    c.push_str(&users.join(", "));
    c.push_str("]\nrest_secrets = [");
    let secrets: Vec<String> = opts.rest_secrets.iter().map(|s| q(s)).collect();
    c.push_str(&secrets.join(", "));
    c.push_str("]\n\n");
    c.push_str("[security]\n");
    if opts.allow_loopback_peers {
        c.push_str("allow_peers = [\"127.0.0.0/8\", \"::1/128\"]\n\n");
    } else {
        c.push_str("allow_peers = []\n\n");
    }
    c.push_str(&format!("[drain]\ndeadline_secs = {}\n\n", opts.drain_secs));
    c.push_str("[signaling]\nlisten = \"127.0.0.1:0\"\n");
    c.push_str(&format!(
        "api_keys = [{{ key = {}, secret = {} }}]\n",
        q(API_KEY),
        q(API_SECRET)
    ));
    c.push_str(&opts.signaling_toml);
    c.push_str("\n[sfu]\nudp = \"127.0.0.1:0\"\n");
    if !opts.sfu_toml.contains("tcp") {
        c.push_str("tcp = []\n");
    }
    c.push_str(&opts.sfu_toml);
    c.push('\n');
    c.push_str(&opts.extra_toml);
    c
}

/// A TURN REST API credential: username "expiry:user", password
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_credential(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let username = format!("{expiry_unix}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A minimal STUN Binding request with a random-ish transaction id.
pub fn stun_binding_request() -> [u8; 20] {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    m[8..12].copy_from_slice(&nanos.to_be_bytes());
    m[12..16].copy_from_slice(&std::process::id().to_be_bytes());
    m[16..20].copy_from_slice(&SEQ.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    m
}

/// A loopback port that was free on both UDP and TCP a moment ago.
pub fn free_port_udp_tcp() -> u16 {
    for _ in 0..100 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free loopback port found in 100 tries");
}

/// A tiny blocking HTTP/1.1 GET against the admin listener: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    for _ in 0..100_000 {
        let Some((size, rest)) = s.split_once("\r\n") else {
            break;
        };
        let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` every few milliseconds until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- Signaling (WebSocket) and media-test helpers (tests/signaling_ws.rs, tests/sfu_interop.rs) ----

/// An access token for the test API key, valid for `ttl_secs` from now.
pub fn mint_token(
    identity: &str,
    room: &str,
    role: meridian_signaling::token::Role,
    ttl_secs: u64,
) -> String {
    meridian_signaling::token::TokenIssuer::new(API_KEY, API_SECRET.as_bytes())
        .expect("test API key")
        .mint(identity, room, role, unix_now(), ttl_secs)
        .expect("mint token")
}

/// What a [`WsClient`] received.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: its code and reason (`None` for a close frame without a code).
    Close(Option<(u16, String)>),
    /// The connection is gone (after a close, or an error: the text says which).
    Ended(String),
}

/// A WebSocket client usable from async tests without a futures crate: a thread owns a
/// blocking tungstenite socket (short read timeouts) and talks to the test over channels.
/// Dropping it ends the thread (which closes the socket).
pub struct WsClient {
    out: std::sync::mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<WsEvent>,
    /// Text frames read past while waiting for something else, oldest first.
    pub stash: std::collections::VecDeque<serde_json::Value>,
    next_req: u64,
}

impl WsClient {
    /// Connects to `ws://{addr}{path}`.
    pub fn connect(addr: SocketAddr, path: &str) -> Result<WsClient, String> {
        use tokio_tungstenite::tungstenite::{self, Message};
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut ws, _resp) = tungstenite::client::client(format!("ws://{addr}{path}"), tcp)
            .map_err(|e| format!("WebSocket handshake with {addr}{path}: {e}"))?;
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let (out, out_rx) = std::sync::mpsc::channel::<Message>();
        let (in_tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        // A send that fails (the server closed while we were still sending) ends sending
        // only: frames already received, such as the server's close frame, are still read
        // and delivered before `Ended`.
        std::thread::spawn(move || {
            let mut send_failed: Option<String> = None;
            let mut idle_reads_after_failure = 0u32;
            loop {
                loop {
                    match out_rx.try_recv() {
                        Ok(m) => {
                            if send_failed.is_none() {
                                if let Err(e) = ws.send(m) {
                                    send_failed = Some(e.to_string());
                                }
                            }
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            let _ = ws.close(None);
                            let _ = ws.flush();
                            return;
                        }
                    }
                }
                let ev = match ws.read() {
                    Ok(Message::Text(t)) => WsEvent::Text(t.to_string()),
                    Ok(Message::Binary(b)) => WsEvent::Binary(b.to_vec()),
                    Ok(Message::Close(f)) => {
                        WsEvent::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                    }
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if send_failed.is_some() {
                            idle_reads_after_failure += 1;
                            if idle_reads_after_failure > 200 {
                                let why = send_failed.take().unwrap_or_default();
                                let _ = in_tx.send(WsEvent::Ended(format!("send: {why}")));
                                return;
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        let why = match &send_failed {
                            Some(s) => format!("{e} (after a failed send: {s})"),
                            None => e.to_string(),
                        };
                        let _ = in_tx.send(WsEvent::Ended(why));
                        return;
                    }
                };
                if in_tx.send(ev).is_err() {
                    return;
                }
            }
        });
        Ok(WsClient {
            out,
            inbox,
            stash: std::collections::VecDeque::new(),
            next_req: 100,
        })
    }

    /// Connects to the signaling endpoint `/v1/ws` of `http`.
    pub fn signaling(http: SocketAddr) -> WsClient {
        WsClient::connect(http, "/v1/ws").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects and joins with `token`; panics unless the reply is `joined`.
    pub async fn join(http: SocketAddr, token: &str) -> (WsClient, serde_json::Value) {
        let mut c = WsClient::signaling(http);
        c.send_json(&serde_json::json!({"type": "join", "token": token, "v": 1, "req": 1}));
        let joined = c.next_json(Duration::from_secs(10)).await;
        assert_eq!(joined["type"], "joined", "join refused: {joined}");
        assert_eq!(joined["req"], 1, "{joined}");
        (c, joined)
    }

    pub fn send(&self, m: tokio_tungstenite::tungstenite::Message) {
        self.out.send(m).expect("WebSocket thread is gone");
    }

    pub fn send_text(&self, text: &str) {
        self.send(tokio_tungstenite::tungstenite::Message::text(text))
    }

    pub fn send_json(&self, v: &serde_json::Value) {
        self.send_text(&v.to_string())
    }

    /// The next thing received, bounded by `within`.
    pub async fn next_event(&mut self, within: Duration) -> WsEvent {
        match tokio::time::timeout(within, self.inbox.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => WsEvent::Ended("WebSocket thread ended".into()),
            Err(_) => panic!("nothing received on the WebSocket within {within:?}"),
        }
    }

    /// The next text frame as JSON (stashed frames first); panics on anything else.
    pub async fn next_json(&mut self, within: Duration) -> serde_json::Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        match self.next_event(within).await {
            WsEvent::Text(t) => serde_json::from_str(&t)
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}")),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Waits (bounded) for the first message `pred` accepts, stashing the others in order.
    pub async fn wait_for_json(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(i) = self.stash.iter().position(&mut pred) {
            return self.stash.remove(i).expect("index in range");
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => panic!("WebSocket thread ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {what}; received meanwhile: {:?}",
                    self.stash
                ),
            };
            match ev {
                WsEvent::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}"));
                    if pred(&v) {
                        return v;
                    }
                    self.stash.push_back(v);
                }
                other => panic!(
                    "waiting for {what}, got {other:?}; received before: {:?}",
                    self.stash
                ),
            }
        }
    }

    /// Waits for a server event of type `typ`.
    pub async fn wait_for_type(&mut self, typ: &str, within: Duration) -> serde_json::Value {
        self.wait_for_json(within, typ, |v| v["type"] == typ).await
    }

    /// Sends `msg` with a fresh `req` id and returns the reply carrying that id.
    pub async fn request(&mut self, mut msg: serde_json::Value) -> serde_json::Value {
        self.next_req += 1;
        let req = self.next_req;
        msg["req"] = req.into();
        self.send_json(&msg);
        let what = format!("the reply to {msg}");
        self.wait_for_json(Duration::from_secs(10), &what, |v| v["req"] == req)
            .await
    }

    /// Waits for the server to close the connection; returns the close frame's code and
    /// reason. Text frames before it are stashed.
    pub async fn expect_close(&mut self, within: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(WsEvent::Close(f))) => return f,
                Ok(Some(WsEvent::Text(t))) => self.stash.push_back(
                    serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}")),
                ),
                Ok(Some(WsEvent::Binary(b))) => panic!("unexpected binary frame {b:?}"),
                Ok(Some(WsEvent::Ended(why))) => {
                    panic!("connection ended without a close frame: {why}")
                }
                Ok(None) => panic!("WebSocket thread ended without a close frame"),
                Err(_) => panic!(
                    "no close within {within:?}; received meanwhile: {:?}",
                    self.stash
                ),
            }
        }
    }
}

/// [`http_get`] off the async runtime's threads.
pub async fn http_get_async(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(addr, &path))
        .await
        .map_err(|e| e.to_string())?
}

/// A webrtc-rs API that touches nothing but loopback: UDP over IPv4 from 127.0.0.1 only, no
/// mDNS, no STUN servers (the caller's `RTCConfiguration` has none), the default codecs and
/// interceptors (NACK, RTCP reports, TWCC).
pub fn webrtc_api() -> webrtc::api::API {
    use webrtc::api::interceptor_registry::register_default_interceptors;
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::api::APIBuilder;
    use webrtc::ice::mdns::MulticastDnsMode;
    use webrtc::ice::network_type::NetworkType;
    use webrtc::interceptor::registry::Registry;

    // webrtc-rs's DTLS uses rustls, which finds both ring and aws-lc-rs in this build and so
    // needs a process-wide provider; the node uses aws-lc-rs too. (Err: already installed.)
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut media = MediaEngine::default();
    media
        .register_default_codecs()
        .expect("register default codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("default interceptors");
    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip| {
        ip == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    }));
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

/// A new webrtc-rs peer connection on [`webrtc_api`], without ICE servers.
pub async fn new_peer_connection() -> std::sync::Arc<webrtc::peer_connection::RTCPeerConnection> {
    let pc = webrtc_api()
        .new_peer_connection(webrtc::peer_connection::configuration::RTCConfiguration::default())
        .await
        .expect("new peer connection");
    std::sync::Arc::new(pc)
}

/// Creates an offer on `pc`, sets it locally and waits (bounded) for ICE gathering so the
/// offer carries the host candidate; returns the SDP to send.
pub async fn local_offer(pc: &webrtc::peer_connection::RTCPeerConnection) -> String {
    let offer = pc.create_offer(None).await.expect("create offer");
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer)
        .await
        .expect("set local offer");
    tokio::time::timeout(Duration::from_secs(10), gathered.recv())
        .await
        .expect("ICE gathering did not complete within 10 s");
    pc.local_description()
        .await
        .expect("local description after gathering")
        .sdp
}

/// Sends `offer_sdp` over signaling and applies the node's answer to `pc`.
pub async fn apply_answer(
    sig: &mut WsClient,
    pc: &webrtc::peer_connection::RTCPeerConnection,
    offer_sdp: String,
) -> String {
    let reply = sig
        .request(serde_json::json!({"type": "offer", "sdp": offer_sdp}))
        .await;
    assert_eq!(reply["type"], "answer", "offer refused: {reply}");
    let sdp = reply["sdp"].as_str().expect("answer sdp").to_string();
    let answer = webrtc::peer_connection::sdp::session_description::RTCSessionDescription::answer(
        sdp.clone(),
    )
    .expect("answer description");
    pc.set_remote_description(answer)
        .await
        .unwrap_or_else(|e| panic!("set remote answer: {e}\n{sdp}"));
    sdp
}

/// An HTTP/1.1 response as the WHIP/WHEP tests read it.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parses a whole response read from a `Connection: close` exchange (status 0 when the
    /// status line is missing or malformed).
    pub fn parse(raw: &[u8]) -> HttpResponse {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        HttpResponse {
            status,
            headers,
            body: body.to_string(),
        }
    }
}

/// The bytes of an HTTP/1.1 request with `Connection: close` and a Content-Length.
pub fn http_request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}
