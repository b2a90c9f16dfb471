//! `meridian bench turn`: a TURN load generator.
//!
//! C clients allocate (UDP, TCP or TLS), bind a channel to an echo peer the bench runs
//! itself, and send ChannelData at a given rate (or flat out) and size for a duration. The
//! bench reports allocations/s, packets sent and received, relayed packets/s, loss, RTT
//! percentiles, and the server's CPU per relayed packet and RSS when it knows the server's
//! PID. `--compare` runs the same load against meridian, coturn and a kernel-floor forwarder
//! and prints the ratios. See bench/README.md.

pub mod bucket;
pub mod echo;
pub mod floor;
pub mod mmsg;
pub mod payload;
pub mod procfs;
pub mod proto;
pub mod report;
pub mod servers;
pub mod stream;
pub mod udp;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::echo::EchoPeer;
use self::payload::Tally;
use self::procfs::ProcTarget;
use self::proto::Creds;
use self::report::{Phase, TargetReport};
use self::servers::{ServerAuth, ServerGuard};
use self::udp::{Mode, PhaseResult, Progress, ShardCfg, UdpShard};

/// Transport between the clients and the TURN server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// What to load.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// An already running server (--server, optionally --server-pid).
    External,
    /// meridian, started by the bench (`<meridian-bin> serve`).
    Meridian,
    /// coturn (Debian's `turnserver`), started by the bench.
    Coturn,
    /// The in-bench kernel-floor forwarder (UDP only).
    Floor,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::External => "external",
            TargetKind::Meridian => "meridian",
            TargetKind::Coturn => "coturn",
            TargetKind::Floor => "floor",
        }
    }
}

/// `meridian bench turn`.
#[derive(clap::Args, Debug, Clone)]
pub struct TurnArgs {
    /// TURN server to load, HOST:PORT (already running; loopback). Implies --target external.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// PID of the --server process, to report its CPU per packet and RSS.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<i32>,
    /// Targets to measure, in order (repeatable): external, meridian, coturn, floor.
    #[arg(long = "target", value_enum, value_name = "TARGET")]
    pub targets: Vec<TargetKind>,
    /// Run the same load against floor, coturn and meridian in one run and print ratios.
    #[arg(long)]
    pub compare: bool,
    /// Client-to-server transport.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: Transport,
    /// Number of clients (one allocation and one channel each).
    #[arg(long, short = 'c', default_value_t = 100)]
    pub clients: u32,
    /// Total ChannelData packets per second over all clients; 0 = flat out.
    #[arg(long, short = 'r', default_value_t = 10_000)]
    pub rate: u64,
    /// Application data bytes per ChannelData message (at least 16: sequence and timestamp).
    #[arg(long, short = 's', default_value_t = 160)]
    pub size: usize,
    /// Seconds of sending (per rate step with --find-max-rate).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for the last echoes after sending stops.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Long-term credential username (with --password).
    #[arg(long)]
    pub user: Option<String>,
    /// Long-term credential password.
    #[arg(long)]
    pub password: Option<String>,
    /// TURN REST API shared secret: username "expiry:benchN", password
    /// base64(HMAC-SHA1(secret, username)).
    #[arg(long)]
    pub secret: Option<String>,
    /// For TLS: accept any server certificate (self-signed test servers).
    #[arg(long)]
    pub insecure: bool,
    /// For TLS: PEM file of CA certificates to trust.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// For TLS: server name to send and verify (default: "localhost").
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Print one JSON object instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Step the rate up (x1.5 from --rate, or 10000) until loss reaches 0.1 %; report the
    /// highest rate below it per target.
    #[arg(long)]
    pub find_max_rate: bool,
    /// meridian worker threads when the bench starts it (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// coturn relay threads when the bench starts it (0 = coturn's default).
    #[arg(long, default_value_t = 0)]
    pub coturn_threads: usize,
    /// Bench client threads (each owns a shard of the clients).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Echo peer sockets (one thread each).
    #[arg(long, default_value_t = 1)]
    pub echo_threads: usize,
    /// Allocations in flight at once during setup and teardown.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Give up on setup after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub setup_timeout: f64,
    /// Relay port range for servers the bench starts, MIN-MAX.
    #[arg(long, default_value = "40000-59999", value_name = "MIN-MAX")]
    pub relay_ports: String,
    /// meridian binary to start for --target meridian (default: this executable).
    #[arg(long, value_name = "PATH")]
    pub meridian_bin: Option<PathBuf>,
}

impl TurnArgs {
    /// Defaults as the CLI would set them, for tests and embedding.
    pub fn defaults() -> Self {
        TurnArgs {
            server: None,
            server_pid: None,
            targets: vec![],
            compare: false,
            transport: Transport::Udp,
            clients: 100,
            rate: 10_000,
            size: 160,
            duration: 10.0,
            drain: 2.0,
            user: None,
            password: None,
            secret: None,
            insecure: false,
            ca_file: None,
            tls_name: None,
            json: false,
            find_max_rate: false,
            workers: 0,
            coturn_threads: 0,
            threads: 1,
            echo_threads: 1,
            window: 512,
            setup_timeout: 60.0,
            relay_ports: "40000-59999".into(),
            meridian_bin: None,
        }
    }

    fn relay_range(&self) -> Result<(u16, u16)> {
        let (a, b) = self
            .relay_ports
            .split_once('-')
            .context("--relay-ports wants MIN-MAX")?;
        let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
        if a == 0 || a > b {
            bail!("--relay-ports: bad range {a}-{b}");
        }
        Ok((a, b))
    }

    fn target_list(&self) -> Result<Vec<TargetKind>> {
        let mut t = self.targets.clone();
        if self.compare {
            for k in [TargetKind::Floor, TargetKind::Coturn, TargetKind::Meridian] {
                if !t.contains(&k) {
                    t.push(k);
                }
            }
        }
        if self.server.is_some() && !t.contains(&TargetKind::External) {
            t.insert(0, TargetKind::External);
        }
        if t.is_empty() {
            bail!("nothing to measure: give --server HOST:PORT, --target ..., or --compare");
        }
        if t.contains(&TargetKind::External) && self.server.is_none() {
            bail!("--target external needs --server HOST:PORT");
        }
        Ok(t)
    }

    /// Credentials for servers the bench starts.
    fn server_auth(&self) -> ServerAuth {
        match &self.secret {
            Some(s) => ServerAuth::Rest { secret: s.clone() },
            None => ServerAuth::LongTerm {
                user: self.user.clone().unwrap_or_else(|| "bench".into()),
                pass: self
                    .password
                    .clone()
                    .unwrap_or_else(|| "bench-password".into()),
            },
        }
    }

    /// Client credentials for a target.
    fn creds(&self, kind: TargetKind) -> Creds {
        if let Some(s) = &self.secret {
            return Creds::Rest {
                secret: s.clone(),
                ttl_secs: 86_400,
            };
        }
        match (kind, &self.user, &self.password) {
            (_, Some(u), Some(p)) => Creds::LongTerm {
                user: u.clone(),
                pass: p.clone(),
            },
            (TargetKind::External, _, _) => Creds::None,
            _ => match self.server_auth() {
                ServerAuth::LongTerm { user, pass } => Creds::LongTerm { user, pass },
                ServerAuth::Rest { .. } => unreachable!("secret handled above"),
            },
        }
    }
}

/// Runs the bench and prints the report on stdout.
pub fn run(args: TurnArgs) -> Result<()> {
    let out = run_collect(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report::markdown(&out.results, &out.ratios));
    }
    if out.results.iter().all(|r| r.error.is_some()) {
        bail!("no target could be measured");
    }
    Ok(())
}

/// Settings echoed in the JSON output.
#[derive(serde::Serialize, Debug, Clone)]
pub struct RunConfig {
    pub transport: String,
    pub clients: u32,
    pub rate: u64,
    pub size: usize,
    pub duration_secs: f64,
    pub threads: usize,
    pub echo_threads: usize,
    pub window: usize,
    pub find_max_rate: bool,
    pub date_unix: u64,
}

/// Everything a run produced.
#[derive(serde::Serialize, Debug, Clone)]
pub struct RunOutput {
    pub config: RunConfig,
    pub results: Vec<TargetReport>,
    pub ratios: Vec<report::Ratio>,
    /// What is counted: see bench/README.md.
    pub notes: Vec<String>,
}

/// Runs the bench and returns the figures without printing them.
pub fn run_collect(args: &TurnArgs) -> Result<RunOutput> {
    if args.size < payload::PAYLOAD_MIN || args.size > 8192 {
        bail!(
            "--size must be between {} and 8192 bytes",
            payload::PAYLOAD_MIN
        );
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration <= 86_400.0) {
        bail!("--duration must be in (0, 86400] seconds");
    }
    let targets = args.target_list()?;
    if let Ok(n) = procfs::raise_nofile() {
        let need = args.clients as u64 * 2 + 1000;
        if args.transport != Transport::Udp && n < need {
            eprintln!(
                "warning: open-file limit {n} may be too low for {} stream clients",
                args.clients
            );
        }
    }
    let echo = EchoPeer::start(args.echo_threads).context("starting the echo peer")?;
    let mut results = Vec::new();
    for kind in targets {
        let mut r = match measure(args, kind, &echo) {
            Ok(r) => r,
            Err(e) => TargetReport {
                target: kind.name().into(),
                transport: args.transport.name().into(),
                clients: args.clients,
                size: args.size,
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        };
        r.target = kind.name().into();
        results.push(r);
    }
    let ratios = report::compare(&results);
    Ok(RunOutput {
        config: RunConfig {
            transport: args.transport.name().into(),
            clients: args.clients,
            rate: args.rate,
            size: args.size,
            duration_secs: args.duration,
            threads: args.threads,
            echo_threads: args.echo_threads,
            window: args.window,
            find_max_rate: args.find_max_rate,
            date_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
        results,
        ratios,
        notes: vec![
            "relayed_pps and server_cpu_ns_per_packet count relay traversals: each echoed packet crossed the relay twice (client->peer, peer->client), so traversals = 2 x received".into(),
            "server CPU is utime+stime from /proc/PID/stat (floor: /proc/self/task/TID/stat) over the measured window, at clock-tick resolution".into(),
            "RTT is measured by the bench from send to echo receipt, including the echo peer and the bench's own batching".into(),
        ],
    })
}

/// A running target: what to send to and what to sample.
struct Running {
    addr: SocketAddr,
    proc_: Option<ProcTarget>,
    mode: Mode,
    server_desc: String,
    _guard: Option<ServerGuard>,
    _floor: Option<floor::Floor>,
}

fn start_target(args: &TurnArgs, kind: TargetKind, echo: &EchoPeer) -> Result<Running> {
    let pick = |g: &ServerGuard| -> Result<SocketAddr> {
        Ok(match args.transport {
            Transport::Udp => g.udp,
            Transport::Tcp => g.tcp.context("the server has no TCP listener")?,
            Transport::Tls => g.tls.context(
                "the server the bench started has no TLS listener (use --server for TLS)",
            )?,
        })
    };
    match kind {
        TargetKind::External => {
            let s = args.server.as_deref().expect("checked in target_list");
            let addr = s
                .to_socket_addrs()
                .with_context(|| format!("resolving {s}"))?
                .find(|a| a.is_ipv4())
                .with_context(|| format!("{s} has no IPv4 address"))?;
            Ok(Running {
                addr,
                proc_: args.server_pid.map(ProcTarget::Process),
                mode: Mode::Turn,
                server_desc: s.to_string(),
                _guard: None,
                _floor: None,
            })
        }
        TargetKind::Floor => {
            if args.transport != Transport::Udp {
                bail!("the floor forwarder is UDP only");
            }
            let f = floor::Floor::start(echo.addrs()[0]).context("starting the floor forwarder")?;
            Ok(Running {
                addr: SocketAddr::V4(f.addr()),
                proc_: Some(ProcTarget::OwnThread(f.tid())),
                mode: Mode::Floor,
                server_desc: format!("in-bench floor forwarder {}", f.addr()),
                _guard: None,
                _floor: Some(f),
            })
        }
        TargetKind::Coturn => {
            let g = servers::start_coturn(
                &args.server_auth(),
                args.relay_range()?,
                args.coturn_threads,
            )?;
            let addr = pick(&g)?;
            Ok(Running {
                addr,
                proc_: Some(ProcTarget::Process(g.pid)),
                mode: Mode::Turn,
                server_desc: format!("coturn pid {} on {addr}", g.pid),
                _guard: Some(g),
                _floor: None,
            })
        }
        TargetKind::Meridian => {
            let bin = match &args.meridian_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("locating the meridian executable")?,
            };
            let g = servers::start_meridian(
                &bin,
                &args.server_auth(),
                args.relay_range()?,
                args.workers,
            )?;
            let addr = pick(&g)?;
            Ok(Running {
                addr,
                proc_: Some(ProcTarget::Process(g.pid)),
                mode: Mode::Turn,
                server_desc: format!("meridian pid {} on {addr}", g.pid),
                _guard: Some(g),
                _floor: None,
            })
        }
    }
}

/// The clients of one target, whatever the transport.
enum Load {
    Udp(Vec<UdpShard>),
    Stream {
        rt: tokio::runtime::Runtime,
        cfg: Arc<stream::StreamCfg>,
        clients: Vec<stream::StreamClient>,
    },
}

fn tls_connector(args: &TurnArgs) -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let path = args
            .ca_file
            .as_ref()
            .context("TLS needs --ca-file FILE or --insecure")?;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots.add(c?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts any certificate (--insecure), still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Live progress on stderr while `f` runs, if stderr is a terminal.
fn with_progress<T>(
    label: String,
    expect_secs: f64,
    progress: &Arc<Progress>,
    f: impl FnOnce() -> T,
) -> T {
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (progress.clone(), stop.clone());
    let total_ms = (expect_secs * 1000.0).max(1.0) as u64;
    let handle = std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new(total_ms);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(label);
        let t0 = Instant::now();
        // Bounded: stops with the phase, or after ten times the expected time.
        while !s.load(Ordering::Relaxed)
            && t0.elapsed().as_millis() < (total_ms as u128) * 10 + 600_000
        {
            bar.set_position((t0.elapsed().as_millis() as u64).min(total_ms));
            bar.set_message(format!(
                "ready {} failed {} sent {} received {}",
                p.ready.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed),
                p.sent.load(Ordering::Relaxed),
                p.received.load(Ordering::Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    r
}

impl Load {
    fn new(args: &TurnArgs, kind: TargetKind, run: &Running, echo: &EchoPeer) -> Result<Self> {
        let epoch = Instant::now();
        match args.transport {
            Transport::Udp => {
                let target = match run.addr {
                    SocketAddr::V4(a) => a,
                    SocketAddr::V6(_) => bail!("UDP clients are IPv4 only"),
                };
                if !target.ip().is_loopback() {
                    bail!("the UDP clients use 127.1.x.y source addresses: the server must be on loopback");
                }
                let cfg = ShardCfg {
                    target,
                    mode: run.mode,
                    peers: echo.addrs().to_vec(),
                    size: args.size,
                    epoch,
                };
                let threads = args.threads.clamp(1, 64).min(args.clients as usize);
                let creds = args.creds(kind);
                let mut shards = Vec::new();
                let per = args.clients / threads as u32;
                let mut first = 0;
                for k in 0..threads as u32 {
                    let n = if k + 1 == threads as u32 {
                        args.clients - first
                    } else {
                        per
                    };
                    shards.push(UdpShard::new(cfg.clone(), &creds, first, n)?);
                    first += n;
                }
                Ok(Load::Udp(shards))
            }
            Transport::Tcp | Transport::Tls => {
                let tls = if args.transport == Transport::Tls {
                    let name = args.tls_name.clone().unwrap_or_else(|| "localhost".into());
                    let sn = rustls_pki_types::ServerName::try_from(name)
                        .context("--tls-name is not a valid server name")?;
                    Some((tls_connector(args)?, sn))
                } else {
                    None
                };
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(args.threads.clamp(1, 64))
                    .enable_all()
                    .build()?;
                Ok(Load::Stream {
                    rt,
                    cfg: Arc::new(stream::StreamCfg {
                        target: run.addr,
                        tls,
                        peers: echo.addrs().to_vec(),
                        size: args.size,
                        epoch,
                        creds: args.creds(kind),
                    }),
                    clients: Vec::new(),
                })
            }
        }
    }

    fn setup(&mut self, args: &TurnArgs, progress: &Arc<Progress>) -> PhaseResult {
        let deadline = Instant::now() + Duration::from_secs_f64(args.setup_timeout);
        match self {
            Load::Udp(shards) => {
                let window = (args.window / shards.len()).max(1);
                on_shards(shards, |sh| sh.setup(window, deadline, progress))
            }
            Load::Stream { rt, cfg, clients } => {
                let (c, r) = rt.block_on(stream::setup(
                    cfg.clone(),
                    args.clients,
                    args.window,
                    progress.clone(),
                ));
                *clients = c;
                r
            }
        }
    }

    fn data(
        &mut self,
        args: &TurnArgs,
        rate: u64,
        progress: &Arc<Progress>,
    ) -> (Tally, PhaseResult) {
        let duration = Duration::from_secs_f64(args.duration);
        let drain = Duration::from_secs_f64(args.drain.clamp(0.0, 60.0));
        // Permissions live 300 s and are refreshed by ChannelBind; allocations 600 s by
        // default. Refresh both well before either expires.
        let maint_every = Duration::from_secs(240);
        match self {
            Load::Udp(shards) => {
                let total_clients: usize = shards.iter().map(|s| s.len()).sum();
                let mut tally = Tally::default();
                let mut res = PhaseResult::default();
                std::thread::scope(|s| {
                    let hs: Vec<_> = shards
                        .iter_mut()
                        .map(|sh| {
                            let share = rate as f64 * sh.len() as f64 / total_clients.max(1) as f64;
                            s.spawn(move || sh.data(share, duration, drain, maint_every, progress))
                        })
                        .collect();
                    for h in hs {
                        let (t, r) = h.join().expect("shard thread");
                        tally.merge(&t);
                        res.merge(&r);
                    }
                });
                (tally, res)
            }
            Load::Stream { rt, cfg, clients } => {
                let plan = stream::DataPlan {
                    rate: rate as f64,
                    duration,
                    drain,
                    maint_every,
                };
                let cs = std::mem::take(clients);
                let (back, t, r) =
                    rt.block_on(stream::data(cfg.clone(), cs, plan, progress.clone()));
                *clients = back;
                (t, r)
            }
        }
    }

    fn teardown(&mut self, args: &TurnArgs, progress: &Arc<Progress>) -> PhaseResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        match self {
            Load::Udp(shards) => {
                let window = (args.window / shards.len()).max(1);
                on_shards(shards, |sh| sh.teardown(window, deadline, progress))
            }
            Load::Stream { rt, cfg, clients } => {
                let cs = std::mem::take(clients);
                rt.block_on(stream::teardown(cfg.clone(), cs, args.window))
            }
        }
    }
}

fn sample_cpu(p: Option<ProcTarget>) -> Option<u64> {
    p.and_then(|p| p.cpu_ns().ok())
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

/// Loads one target: setup, data phase(s), teardown.
fn measure(args: &TurnArgs, kind: TargetKind, echo: &EchoPeer) -> Result<TargetReport> {
    let running = start_target(args, kind, echo)?;
    let mut rep = TargetReport {
        target: kind.name().into(),
        transport: args.transport.name().into(),
        server: Some(running.server_desc.clone()),
        clients: args.clients,
        size: args.size,
        ..Default::default()
    };
    let mut load = Load::new(args, kind, &running, echo)?;
    let progress = Arc::new(Progress::default());
    let cpu0 = sample_cpu(running.proc_);
    let t0 = Instant::now();
    let setup = with_progress(
        format!("{} setup", kind.name()),
        (args.clients as f64 / 5000.0).max(1.0),
        &progress,
        || load.setup(args, &progress),
    );
    rep.setup_secs = t0.elapsed().as_secs_f64();
    let cpu1 = sample_cpu(running.proc_);
    rep.allocations_ok = setup.ok;
    rep.allocations_failed = setup.failed;
    rep.allocations_per_sec = setup.ok as f64 / rep.setup_secs.max(1e-9);
    rep.setup_errors = setup.errors;
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if setup.ok > 0 {
            rep.server_cpu_us_per_allocation = Some((b - a) as f64 / 1000.0 / setup.ok as f64);
        }
    }
    if setup.ok == 0 {
        let why = rep
            .setup_errors
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| "unknown".into());
        bail!("no allocation succeeded (most common error: {why})");
    }

    let phase = |rate: u64, load: &mut Load| -> Phase {
        let progress = Arc::new(Progress::default());
        progress.ready.store(setup.ok, Ordering::Relaxed);
        let c0 = sample_cpu(running.proc_);
        let t0 = Instant::now();
        let label = if rate == 0 {
            format!("{} flat out", kind.name())
        } else {
            format!("{} {rate} pkt/s", kind.name())
        };
        let (tally, res) = with_progress(label, args.duration, &progress, || {
            load.data(args, rate, &progress)
        });
        let window = t0.elapsed().as_secs_f64();
        let c1 = sample_cpu(running.proc_);
        let cpu = match (c0, c1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let mut p = Phase::new(rate, &tally, window, cpu);
        p.errors = res.errors;
        p
    };

    if args.find_max_rate {
        let mut rate = if args.rate > 0 { args.rate } else { 10_000 };
        let mut best: Option<Phase> = None;
        for _ in 0..16 {
            let p = phase(rate, &mut load);
            let pass = p.loss_pct < 0.1 && p.sent > 0;
            let bench_short = p.rate_sent < 0.95 * rate as f64 * (args.duration / p.window_secs);
            rep.steps.push(p.clone());
            if !pass {
                break;
            }
            best = Some(p);
            rep.max_rate_pps = Some(rate);
            if bench_short {
                rep.bench_limited = true;
                break;
            }
            rate = rate * 3 / 2;
        }
        rep.result = best.or_else(|| rep.steps.first().cloned());
    } else {
        rep.result = Some(phase(args.rate, &mut load));
    }
    if let Some((_, rss)) = running.proc_.and_then(|p| p.rss_kib()) {
        rep.server_rss_mib = Some(kib_to_mib(rss));
    }
    let td = load.teardown(args, &progress);
    rep.released_ok = td.ok;
    rep.released_failed = td.failed;
    rep.teardown_errors = td.errors;
    if let Some((hwm, _)) = running.proc_.and_then(|p| p.rss_kib()) {
        rep.server_peak_rss_mib = Some(kib_to_mib(hwm));
    }
    drop(load);
    Ok(rep)
}

/// Runs one phase on every UDP shard, each on its own thread, and merges the results.
fn on_shards(
    shards: &mut [UdpShard],
    phase: impl Fn(&mut UdpShard) -> PhaseResult + Sync,
) -> PhaseResult {
    let mut total = PhaseResult::default();
    std::thread::scope(|s| {
        let phase = &phase;
        let hs: Vec<_> = shards
            .iter_mut()
            .map(|sh| s.spawn(move || phase(sh)))
            .collect();
        for h in hs {
            total.merge(&h.join().expect("shard thread"));
        }
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_documented_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: TurnArgs,
        }
        let c = Cli::try_parse_from([
            "x",
            "--server",
            "127.0.0.1:3478",
            "--transport",
            "tcp",
            "-c",
            "10",
            "--rate",
            "0",
            "--size",
            "100",
            "--duration",
            "1.5",
            "--user",
            "u",
            "--password",
            "p",
            "--json",
            "--target",
            "floor",
            "--target",
            "coturn",
            "--server-pid",
            "7",
        ])
        .unwrap();
        assert_eq!(c.a.transport, Transport::Tcp);
        assert_eq!(c.a.rate, 0);
        assert_eq!(
            c.a.target_list().unwrap(),
            vec![TargetKind::External, TargetKind::Floor, TargetKind::Coturn]
        );
        assert!(matches!(
            c.a.creds(TargetKind::External),
            Creds::LongTerm { .. }
        ));
        let d = TurnArgs::defaults();
        assert!(d.target_list().is_err());
        assert!(matches!(d.creds(TargetKind::External), Creds::None));
        assert!(matches!(
            d.creds(TargetKind::Coturn),
            Creds::LongTerm { .. }
        ));
        let mut cmp = TurnArgs::defaults();
        cmp.compare = true;
        cmp.secret = Some("s".into());
        assert_eq!(cmp.target_list().unwrap().len(), 3);
        assert!(matches!(
            cmp.creds(TargetKind::Meridian),
            Creds::Rest { .. }
        ));
        assert_eq!(cmp.relay_range().unwrap(), (40000, 59999));
    }
}
