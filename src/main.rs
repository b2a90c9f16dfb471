//! `meridian`: one binary per region — STUN/TURN relay today; SFU and signaling to come.
//! This file is CLI wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use meridian_config::{Config, LogFormat};

/// A self-hosted, geo-replicated media relay: STUN/TURN (UDP, TCP, TLS) in one binary.
///
/// Run `meridian serve` with no arguments for a single node on loopback (no config file
/// needed); it prints where it listens and a ready-to-use TURN credential. For a deployment,
/// write a config (see config/meridian.example.toml and docs/config.md), validate it with
/// `meridian check-config`, and run `meridian serve --config FILE`.
#[derive(Parser, Debug)]
#[command(name = "meridian", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. Without --config: the embedded single-node default on loopback
    /// (UDP/TCP 127.0.0.1:3478, admin http://127.0.0.1:9478), with a fresh REST secret.
    ///
    /// SIGTERM/SIGINT drain the node: new allocations are refused (300 Try Alternate when
    /// turn.alternate_server is set), existing ones keep relaying until they end or
    /// drain.deadline_secs pass, /readyz answers 503 meanwhile, then the node exits 0.
    /// SIGHUP reloads the TLS certificate and key.
    Serve {
        /// TOML configuration file (see docs/config.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the bound addresses as JSON to this file once every listener is up
        /// (for scripts and tests: {"turn_udp":[..],"turn_tcp":[..],"turn_tls":[..],"admin":"..","pid":N}).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a configuration file (and the MERIDIAN_TURN_* environment overrides); exits 1
    /// with the line, key, expected and found values on the first problem.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Print a TURN REST API credential and an `iceServers` snippet for WebRTC clients,
    /// signed with the first of the config's auth.rest_secrets.
    Credential {
        /// TOML configuration file (its REST secret and listeners are used).
        #[arg(long, short)]
        config: PathBuf,
        /// The user the credential is for (the part after "expiry:").
        #[arg(long, default_value = "user")]
        user: String,
        /// Lifetime in seconds (default: auth.credential_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
        /// Host name clients use to reach the node (default: the listener address).
        #[arg(long)]
        host: Option<String>,
    },
    /// Mint an access token (JWT, HS256) for the signaling API, signed with the first of the
    /// config's signaling.api_keys. Prints the token alone on stdout.
    Token {
        /// TOML configuration file (its signaling.api_keys are used).
        #[arg(long, short)]
        config: PathBuf,
        /// Room the token admits to (A-Z, a-z, 0-9, '_', '-', '.').
        #[arg(long)]
        room: String,
        /// Who the client is.
        #[arg(long)]
        identity: String,
        /// device (publishes, receives controls), player (watches, sends controls) or viewer
        /// (watches only).
        #[arg(long)]
        role: meridian_signaling::token::Role,
        /// Lifetime in seconds (default: signaling.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Make the trunk's certificates: the cluster CA in DIR (ca.pem, ca.key; an existing one
    /// is reused) and, for each --node, NODE.pem and NODE.key for `[trunk]` cert and key.
    /// Keep ca.key off the nodes.
    TrunkCert {
        /// Directory for the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// A node id to certify (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Validity of the node certificates, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Load generators and comparisons.
    #[command(subcommand)]
    Bench(Bench),
    /// Simulate a device: publish an H.264 test pattern (OpenH264) into a room at a given
    /// bitrate and print, one JSON line each, the controls and input players send it.
    Device(Box<meridian_bench::client::device::DeviceArgs>),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// TURN load: C clients allocate, bind a channel to an echo peer and relay ChannelData;
    /// reports rates, loss, RTT and the server's CPU per packet. See bench/README.md.
    Turn(Box<meridian_bench::turn::TurnArgs>),
    /// Cross-region rooms: a publisher on node A, S subscribers on node B over the trunk
    /// (behind a delay shim), beside S subscribers of a publisher local to B; reports the
    /// latency the trunk hop adds, B's CPU per packet trunked vs local, A's trunk copies per
    /// packet. See bench/README.md.
    Cascade(Box<meridian_bench::cascade::CascadeArgs>),
    /// Failover drills on a 3-region cluster behind delay shims: D devices streaming, P
    /// re-homing players watching and sending controls; `kill` (SIGKILL of the players' node),
    /// `drain` (SIGTERM), `partition` (the shims cut the node off) and `directory` (Redis
    /// stopped for N s), K times each; reports detection time, the
    /// media gap per session (p50/p99/max), sessions recovered, acknowledged controls lost and
    /// duplicated, time to steady state, and (--plot) an SVG of the gaps. See bench/README.md.
    Failover(Box<meridian_bench::failover::FailoverArgs>),
    /// SFU load: R rooms × P publishers × S subscribers (str0m WebRTC clients, synthetic VP8)
    /// against a node it starts, beside a kernel-floor fan-out; reports delivered packets/s,
    /// loss, forwarding latency, join-to-first-frame, CPU per forwarded packet and RSS.
    Sfu(Box<meridian_bench::sfu::SfuArgs>),
    /// A delay shim: forwards UDP and TCP to a node with emulated one-way delay, jitter and
    /// loss, as a 1:1 NAT in front of it would (this kernel has no netem). See bench/README.md.
    Shim(Box<meridian_bench::shim::ShimArgs>),
    /// Measured routing: a 3-region cluster (redis-server, a node and a delay shim per region)
    /// with a client group near each region; N players per group measure, join and wait for
    /// media beside players joining their nearest region directly. Reports each session's
    /// region against the truly nearest and the time to media. See bench/README.md.
    Route(Box<meridian_bench::route::RouteArgs>),
    /// The cluster directory: Redis commands per node per second with S sessions and D devices
    /// over 3 nodes (room lists included), and dead-node detection over K SIGKILLs.
    Directory(Box<meridian_bench::route::directory::DirectoryArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, ready_file } => serve(config, ready_file),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} UDP, {} TCP, {} TLS listener(s); {} static user(s), {} REST secret(s))",
                file.display(),
                cfg.turn.udp.len(),
                cfg.turn.tcp.len(),
                cfg.turn.tls.len(),
                cfg.auth.users.len(),
                cfg.auth.rest_secrets.len()
            );
            Ok(())
        }
        Command::Credential {
            config,
            user,
            ttl,
            host,
        } => {
            let cfg = Config::load(&config)?;
            let ttl = ttl.unwrap_or(cfg.auth.credential_ttl_secs);
            print!("{}", credential_text(&cfg, &user, ttl, host.as_deref())?);
            Ok(())
        }
        Command::Token {
            config,
            room,
            identity,
            role,
            ttl,
        } => {
            let cfg = Config::load(&config)?;
            let Some(key) = cfg.signaling.api_keys.first() else {
                bail!("signaling.api_keys is empty: add one to the config or set MERIDIAN_API_KEYS=\"key:secret\"");
            };
            let ttl = ttl.unwrap_or(cfg.signaling.token_ttl_secs);
            let issuer =
                meridian_signaling::token::TokenIssuer::new(&key.key, key.secret.as_bytes())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            let token = issuer.mint(&identity, &room, role, now, ttl)?;
            eprintln!(
                "meridian: token for {identity:?} as {} in room {room:?}, key {:?}, valid {ttl} s",
                role.as_str(),
                key.key
            );
            println!("{token}");
            Ok(())
        }
        Command::TrunkCert { dir, nodes, days } => trunk_cert(&dir, &nodes, days),
        Command::Bench(Bench::Turn(args)) => meridian_bench::turn::run(*args),
        Command::Bench(Bench::Sfu(args)) => meridian_bench::sfu::run(*args),
        Command::Bench(Bench::Shim(args)) => meridian_bench::shim::run(*args),
        Command::Bench(Bench::Route(args)) => meridian_bench::route::run(*args),
        Command::Bench(Bench::Cascade(args)) => meridian_bench::cascade::run(*args),
        Command::Bench(Bench::Failover(args)) => meridian_bench::failover::run(*args),
        Command::Bench(Bench::Directory(args)) => meridian_bench::route::directory::run(*args),
        Command::Device(args) => meridian_bench::client::device::run(*args),
    }
}

fn serve(config: Option<PathBuf>, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (cfg, embedded) = match &config {
        Some(path) => (Config::load(path)?, false),
        None => {
            let mut cfg = Config::embedded(random_secret());
            if cfg.signaling.api_keys.is_empty() {
                // Loopback dev node: a per-run key signs the pages' dev tokens.
                cfg.signaling.api_keys.push(meridian_config::ApiKey {
                    key: "dev".into(),
                    secret: random_secret(),
                });
            }
            (cfg, true)
        }
    };
    init_logging(&cfg)?;
    if embedded {
        eprintln!("meridian: no --config given: running the embedded single-node default (loopback only).");
        eprint!(
            "{}",
            credential_text(&cfg, "dev", cfg.auth.credential_ttl_secs, None)?
        );
        eprintln!(
            "  metrics: http://{}/metrics  readiness: http://{}/readyz",
            cfg.admin.listen, cfg.admin.listen
        );
        eprintln!(
            "  For a deployment: meridian serve --config FILE (see config/meridian.example.toml)."
        );
    }
    let signaling_cfg = cfg.clone();
    let attach: meridian_relay::net::Attach = Box::new(move |ctx| {
        Box::pin(async move {
            let addr = meridian_signaling::start(&signaling_cfg, ctx).await?;
            let scheme = if signaling_cfg.signaling.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            eprintln!(
                "meridian: signaling API on {scheme}://{addr} (WebSocket /v1/ws, rooms /v1/rooms)"
            );
            Ok(vec![("http".to_string(), addr)])
        })
    });
    meridian_relay::net::run(
        cfg,
        meridian_relay::net::RunOptions {
            ready_file,
            attach: Some(attach),
        },
    )?;
    Ok(())
}

/// A REST credential and the iceServers JSON for the node's listeners.
fn credential_text(
    cfg: &Config,
    user: &str,
    ttl: u64,
    host: Option<&str>,
) -> anyhow::Result<String> {
    if cfg.auth.rest_secrets.is_empty() {
        bail!("auth.rest_secrets is empty: set one in the config or MERIDIAN_TURN_REST_SECRETS to mint credentials");
    }
    if user.is_empty() || user.contains(':') {
        bail!("--user must be non-empty and must not contain ':' (got {user:?})");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let creds =
        meridian_relay::turn::auth::Credentials::new([], cfg.auth.rest_secrets.iter().cloned());
    let (username, password) = creds.mint(user, now, ttl).context("no REST secret")?;
    let host_of = |a: &std::net::SocketAddr| -> String {
        if let Some(h) = host {
            return h.to_string();
        }
        match (a.ip(), cfg.turn.external_ipv4) {
            (ip, Some(ext)) if ip.is_unspecified() => ext.to_string(),
            (std::net::IpAddr::V6(v6), _) => format!("[{v6}]"),
            (ip, _) => ip.to_string(),
        }
    };
    let mut urls = Vec::new();
    urls.extend(
        cfg.turn
            .udp
            .iter()
            .map(|a| format!("turn:{}:{}?transport=udp", host_of(a), a.port())),
    );
    urls.extend(
        cfg.turn
            .tcp
            .iter()
            .map(|a| format!("turn:{}:{}?transport=tcp", host_of(a), a.port())),
    );
    urls.extend(
        cfg.turn
            .tls
            .iter()
            .map(|a| format!("turns:{}:{}?transport=tcp", host_of(a), a.port())),
    );
    let ice = serde_json::json!({ "iceServers": [{ "urls": urls, "username": username, "credential": password }] });
    Ok(format!(
        "  TURN credential (valid {ttl} s):\n    username: {username}\n    password: {password}\n  {}\n",
        serde_json::to_string(&ice)?
    ))
}

fn random_secret() -> String {
    rand::random::<[u8; 24]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .with_context(|| format!("log.level {:?} is not a valid filter", cfg.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// `meridian trunk-cert`.
fn trunk_cert(dir: &std::path::Path, nodes: &[String], days: u32) -> anyhow::Result<()> {
    use meridian_trunk::tls;
    use std::io::Write;
    fn write(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        if secret {
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        }
        let mut f = o
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
    if !(1..=3650).contains(&days) {
        bail!("--days: expected 1..=3650, got {days}");
    }
    for n in nodes {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            bail!("--node {n:?}: expected 1..=64 characters of A-Z, a-z, 0-9, '_', '-', '.'");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let key_pem = if ca_key.exists() {
        eprintln!("meridian: using the CA in {}", dir.display());
        std::fs::read_to_string(&ca_key)
            .with_context(|| format!("cannot read {}", ca_key.display()))?
    } else {
        let ca = tls::make_ca()?;
        write(&ca_cert, &ca.cert, false)?;
        write(&ca_key, &ca.key, true)?;
        eprintln!("meridian: new cluster CA {}", ca_cert.display());
        ca.key
    };
    for n in nodes {
        let pem = tls::make_node_cert(&key_pem, n, days)?;
        let (c, k) = (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key")));
        write(&c, &pem.cert, false)?;
        write(&k, &pem.key, true)?;
        eprintln!(
            "meridian: {} and {} for node {n} ({}, {days} days)",
            c.display(),
            k.display(),
            tls::node_name(n)
        );
    }
    Ok(())
}
