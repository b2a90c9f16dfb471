//! `meridian bench sfu`: R rooms × P publishers × S subscribers of real WebRTC clients (str0m,
//! DTLS-SRTP, TWCC) against a meridian node, with synthetic VP8 at a given bitrate; and, in the
//! same run, the kernel floor for the same fan-out (each packet sent with sendmmsg to as many
//! plain UDP sockets). Reports join-to-first-frame, delivered packets/s, loss, forwarding
//! latency (send time carried in the payload), and the server's CPU per forwarded packet and
//! RSS — as ratios to the floor.

pub mod floor;
pub mod peer;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::turn::procfs::ProcTarget;
use crate::turn::servers::TempDir;

#[derive(clap::Args, Debug, Clone)]
pub struct SfuArgs {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room (each subscriber watches the room's first publisher).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Video bitrate per publisher, kbit/s.
    #[arg(long, default_value_t = 1000)]
    pub bitrate_kbps: u64,
    /// RTP payload size, bytes.
    #[arg(long, default_value_t = 1100)]
    pub packet_size: usize,
    /// Measured seconds (after everyone receives media).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// What to measure: meridian, floor (repeat the flag, or use --compare for both).
    #[arg(long = "target", value_parser = ["meridian", "floor"])]
    pub targets: Vec<String>,
    /// Shorthand for --target floor --target meridian.
    #[arg(long)]
    pub compare: bool,
    /// The meridian binary to start (default: this one).
    #[arg(long)]
    pub meridian_bin: Option<PathBuf>,
    /// SFU shards in the node under test (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct SfuReport {
    pub target: String,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub bitrate_kbps: u64,
    pub window_secs: f64,
    pub sent_packets: u64,
    pub delivered_packets: u64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub join_to_first_frame_ms_p50: Option<f64>,
    pub join_to_first_frame_ms_p99: Option<f64>,
    pub cpu_ns_per_packet: Option<f64>,
    pub rss_mib: Option<f64>,
    pub idle_rss_mib: Option<f64>,
    pub rss_kib_per_subscriber: Option<f64>,
    pub failed_clients: usize,
}

pub fn run(args: SfuArgs) -> anyhow::Result<()> {
    let mut targets = args.targets.clone();
    if args.compare || targets.is_empty() {
        targets = vec!["floor".into(), "meridian".into()];
    }
    if args.rooms == 0 || args.subscribers == 0 || args.publishers == 0 {
        bail!("--rooms, --publishers and --subscribers must be at least 1");
    }
    if !(peer::HEADER + 16..=1200).contains(&args.packet_size) {
        bail!(
            "--packet-size {}: expected {}..=1200",
            args.packet_size,
            peer::HEADER + 16
        );
    }
    let _ = crate::turn::procfs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for t in &targets {
        let r = match t.as_str() {
            "floor" => rt.block_on(run_floor(&args))?,
            _ => rt.block_on(run_meridian(&args))?,
        };
        if !args.json {
            eprintln!("{}", row(&r));
        }
        reports.push(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!("{}", markdown(&reports));
    }
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e6
    }
}

fn row(r: &SfuReport) -> String {
    format!(
        "{}: {:.0} pkt/s delivered, loss {:.2} %, latency p50/p99/p999 {:.2}/{:.2}/{:.2} ms, CPU/pkt {}",
        r.target,
        r.delivered_pps,
        r.loss_pct,
        r.latency_ms_p50,
        r.latency_ms_p99,
        r.latency_ms_p999,
        r.cpu_ns_per_packet.map_or("-".into(), |c| format!("{c:.0} ns")),
    )
}

pub fn markdown(reports: &[SfuReport]) -> String {
    let mut s = String::from(
        "| target | rooms×pub×sub | kbps | delivered pkt/s | loss % | latency p50/p99/p999 ms | join→first frame p50/p99 ms | CPU/pkt ns | RSS MiB (idle) | KiB/subscriber |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {}×{}×{} | {} | {:.0} | {:.2} | {:.2}/{:.2}/{:.2} | {} | {} | {} | {} |\n",
            r.target,
            r.rooms,
            r.publishers,
            r.subscribers,
            r.bitrate_kbps,
            r.delivered_pps,
            r.loss_pct,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.latency_ms_p999,
            match (r.join_to_first_frame_ms_p50, r.join_to_first_frame_ms_p99) {
                (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
                _ => "-".into(),
            },
            r.cpu_ns_per_packet
                .map_or("-".into(), |c| format!("{c:.0}")),
            match (r.rss_mib, r.idle_rss_mib) {
                (Some(a), Some(b)) => format!("{a:.1} ({b:.1})"),
                _ => "-".into(),
            },
            r.rss_kib_per_subscriber
                .map_or("-".into(), |k| format!("{k:.0}")),
        ));
    }
    let floor = reports.iter().find(|r| r.target == "floor");
    let meridian = reports.iter().find(|r| r.target == "meridian");
    if let (Some(f), Some(m)) = (floor, meridian) {
        if let (Some(a), Some(b)) = (m.cpu_ns_per_packet, f.cpu_ns_per_packet) {
            s.push_str(&format!(
                "\nCPU per forwarded packet, meridian / kernel floor: {:.2}x\n",
                a / b
            ));
        }
    }
    s
}

/// The node under test: its process, signaling URL and SFU address.
struct Node {
    child: std::process::Child,
    pid: i32,
    http: SocketAddr,
    sfu: SocketAddr,
    _dir: TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

const API_KEY: &str = "bench";
const API_SECRET: &str = "bench-secret-0123456789abcdef";

fn start_node(args: &SfuArgs) -> anyhow::Result<Node> {
    let bin = match &args.meridian_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let dir = TempDir::new("bench-sfu")?;
    let config = dir.path().join("meridian.toml");
    let ready = dir.path().join("ready.json");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[turn]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n\
             [auth]\nrest_secrets = [\"bench-rest-secret\"]\n[signaling]\nlisten = \"127.0.0.1:0\"\n\
             api_keys = [{{ key = \"{API_KEY}\", secret = \"{API_SECRET}\" }}]\nmessages_per_sec = 1000\nmessage_burst = 1000\n\
             [sfu]\nudp = \"127.0.0.1:0\"\ntcp = []\nworkers = {}\n",
            args.workers
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("meridian.log"))?;
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id() as i32;
    let mut node = Node {
        child,
        pid,
        http: "127.0.0.1:0".parse()?,
        sfu: "127.0.0.1:0".parse()?,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                let addr = |k: &str| v[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                node.http = addr("http").ok_or_else(|| anyhow!("ready file has no http"))?;
                node.sfu = addr("sfu_udp").ok_or_else(|| anyhow!("ready file has no sfu_udp"))?;
                if let Some(p) = v["pid"].as_i64() {
                    node.pid = p as i32;
                }
                return Ok(node);
            }
        }
        if let Ok(Some(st)) = node.child.try_wait() {
            bail!("meridian exited ({st}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("meridian was not ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mint(
    identity: &str,
    room: &str,
    role: meridian_signaling::token::Role,
) -> anyhow::Result<String> {
    let issuer = meridian_signaling::token::TokenIssuer::new(API_KEY, API_SECRET.as_bytes())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(issuer.mint(identity, room, role, now, 3600)?)
}

fn progress(label: &str, secs: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(secs * 10);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {elapsed}/{duration} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

async fn run_meridian(args: &SfuArgs) -> anyhow::Result<SfuReport> {
    use meridian_signaling::token::Role;
    let node = start_node(args)?;
    let proc_ = ProcTarget::Process(node.pid);
    let idle_rss = proc_.rss_kib().map(|(_, cur)| cur);
    let base = format!("http://{}", node.http);
    let shared = peer::Shared::new();
    let mut pubs = Vec::new();
    let mut tracks = Vec::new();
    for r in 0..args.rooms {
        for p in 0..args.publishers {
            let token = mint(&format!("pub-{r}-{p}"), &format!("room-{r}"), Role::Device)?;
            let (track, task) = peer::publisher(
                base.clone(),
                token,
                node.sfu,
                args.bitrate_kbps * 1000,
                args.packet_size,
                shared.clone(),
            )
            .await
            .with_context(|| format!("publisher {p} in room {r}"))?;
            if p == 0 {
                tracks.push(track);
            }
            pubs.push(task);
        }
    }
    let bar = progress("joining", 1);
    let mut subs = Vec::new();
    for (r, track) in tracks.iter().enumerate() {
        for s in 0..args.subscribers {
            let token = mint(&format!("sub-{r}-{s}"), &format!("room-{r}"), Role::Viewer)?;
            subs.push(tokio::spawn(peer::subscriber(
                base.clone(),
                token,
                node.sfu,
                track.clone(),
                shared.clone(),
            )));
            // Joins are paced so signaling is not a thundering herd.
            if s % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    bar.finish_and_clear();
    // Let every subscriber reach its first frame (bounded), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = measure(args, &shared, Some(proc_)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3)?;
    let mut jtff = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
    let mut delivered = 0;
    let mut failed = 0;
    for s in subs {
        match tokio::time::timeout(Duration::from_secs(10), s).await {
            Ok(Ok(Ok(r))) => {
                delivered += r.received;
                latency.add(&r.latency_ns).ok();
                if let Some(f) = r.first_frame {
                    let _ = jtff.record(f.as_nanos() as u64);
                }
            }
            _ => failed += 1,
        }
    }
    for p in pubs {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), p).await,
            Ok(Ok(Ok(())))
        ) {
            failed += 1;
        }
    }
    let peak = proc_.rss_kib().map(|(_, cur)| cur).or(window.rss_kib);
    let mut rep = report("meridian", args, &window, delivered, &latency, failed);
    rep.join_to_first_frame_ms_p50 = (!jtff.is_empty()).then(|| ms(&jtff, 0.5));
    rep.join_to_first_frame_ms_p99 = (!jtff.is_empty()).then(|| ms(&jtff, 0.99));
    rep.rss_mib = window.rss_kib.or(peak).map(|k| k as f64 / 1024.0);
    rep.idle_rss_mib = idle_rss.map(|k| k as f64 / 1024.0);
    if let (Some(busy), Some(idle)) = (window.rss_kib, idle_rss) {
        let n = (args.rooms * (args.subscribers + args.publishers)) as f64;
        rep.rss_kib_per_subscriber = Some(busy.saturating_sub(idle) as f64 / n);
    }
    drop(node);
    Ok(rep)
}

/// What the measured window saw.
struct Window {
    secs: f64,
    sent: u64,
    cpu_ns: Option<u64>,
    rss_kib: Option<u64>,
}

async fn measure(args: &SfuArgs, shared: &peer::Shared, proc_: Option<ProcTarget>) -> Window {
    let bar = progress("measuring", args.duration);
    let cpu0 = proc_.and_then(|p| p.cpu_ns().ok());
    shared.sent.store(0, Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..args.duration * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.inc(1);
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = proc_.and_then(|p| p.cpu_ns().ok());
    bar.finish_and_clear();
    Window {
        secs,
        sent: shared.sent.load(Ordering::Relaxed),
        cpu_ns: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
        rss_kib: proc_.and_then(|p| p.rss_kib()).map(|(_, cur)| cur),
    }
}

fn report(
    target: &str,
    args: &SfuArgs,
    w: &Window,
    delivered: u64,
    latency: &Histogram<u64>,
    failed: usize,
) -> SfuReport {
    // Each packet a room's first publisher sends is due to every subscriber of the room.
    let per_room_pub = args.publishers as u64;
    let expected = w.sent / per_room_pub.max(1) * args.subscribers as u64;
    SfuReport {
        target: target.into(),
        rooms: args.rooms,
        publishers: args.publishers,
        subscribers: args.subscribers,
        bitrate_kbps: args.bitrate_kbps,
        window_secs: w.secs,
        sent_packets: w.sent,
        delivered_packets: delivered,
        delivered_pps: delivered as f64 / w.secs,
        loss_pct: if expected == 0 {
            100.0
        } else {
            (1.0 - delivered as f64 / expected as f64).max(0.0) * 100.0
        },
        latency_ms_p50: ms(latency, 0.5),
        latency_ms_p99: ms(latency, 0.99),
        latency_ms_p999: ms(latency, 0.999),
        cpu_ns_per_packet: w
            .cpu_ns
            .filter(|_| delivered > 0)
            .map(|c| c as f64 / delivered as f64),
        failed_clients: failed,
        ..Default::default()
    }
}

/// The floor: plain UDP publishers → one fan-out thread → plain UDP subscribers.
async fn run_floor(args: &SfuArgs) -> anyhow::Result<SfuReport> {
    let shared = peer::Shared::new();
    let mut floors = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..args.rooms {
        let mut addrs = Vec::new();
        for _ in 0..args.subscribers {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            match sock.local_addr()? {
                SocketAddr::V4(a) => addrs.push(a),
                _ => unreachable!(),
            }
            let sh = shared.clone();
            subs.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3)
                    .expect("histogram bounds");
                let mut n = 0u64;
                let mut buf = vec![0u8; 2048];
                while !sh.stop.load(Ordering::Relaxed) {
                    if let Ok(Ok(len)) =
                        tokio::time::timeout(Duration::from_millis(50), sock.recv(&mut buf)).await
                    {
                        if sh.measuring.load(Ordering::Relaxed) {
                            n += 1;
                            if let Some(s) = peer::sent_ns(&buf[..len]) {
                                let _ = h.record(peer::now_ns().saturating_sub(s).max(1_000));
                            }
                        }
                    }
                }
                (n, h)
            }));
        }
        floors.push(floor::FanoutFloor::start(addrs)?);
    }
    // Publishers: the same packets at the same rate, as plain UDP.
    let mut pubs = Vec::new();
    for f in &floors {
        let dest: SocketAddrV4 = f.addr;
        for _ in 0..args.publishers {
            let sh = shared.clone();
            let (bitrate, size) = (args.bitrate_kbps * 1000, args.packet_size);
            pubs.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                sock.connect(dest).await?;
                let fps = 30u64;
                let per_frame = (bitrate / 8 / fps)
                    .max(size as u64)
                    .div_ceil(size as u64)
                    .max(1);
                let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / fps));
                let mut payload = vec![0u8; size];
                while !sh.stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for i in 0..per_frame {
                        peer::fill(&mut payload, i == 0, false, peer::now_ns());
                        let _ = sock.send(&payload).await;
                        if sh.measuring.load(Ordering::Relaxed) {
                            sh.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // CPU of the floor threads (one per room).
    let cpu0: u64 = floors
        .iter()
        .filter_map(|f| ProcTarget::OwnThread(f.tid).cpu_ns().ok())
        .sum();
    let w0 = measure(args, &shared, None).await;
    let cpu1: u64 = floors
        .iter()
        .filter_map(|f| ProcTarget::OwnThread(f.tid).cpu_ns().ok())
        .sum();
    shared.stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3)?;
    let mut delivered = 0;
    for s in subs {
        if let Ok((n, h)) = s.await {
            delivered += n;
            latency.add(&h).ok();
        }
    }
    for p in pubs {
        let _ = p.await;
    }
    let w = Window {
        cpu_ns: Some(cpu1.saturating_sub(cpu0)),
        ..w0
    };
    Ok(report("floor", args, &w, delivered, &latency, 0))
}
