//! `meridian bench sfu`: R rooms × P publishers × S subscribers of real WebRTC clients (str0m,
//! DTLS-SRTP, TWCC) against a meridian node, with synthetic VP8 at a given bitrate; and, in the
//! same run, the kernel floor for the same fan-out (each packet sent with sendmmsg to as many
//! plain UDP sockets). Reports join-to-first-frame, delivered packets/s, loss, forwarding
//! latency (send time carried in the payload), and the server's CPU per forwarded packet and
//! RSS — as ratios to the floor.

pub mod floor;
pub mod peer;

use crate::client::signal::{admin_metrics, mint, API_KEY, API_SECRET};
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
    /// The node's own `meridian_sfu_forward_latency_seconds` over the window: from a shard
    /// taking a datagram to the flush of what it forwarded (no client-side time in it).
    pub sfu_latency_ms_p50: Option<f64>,
    pub sfu_latency_ms_p99: Option<f64>,
    pub sfu_latency_ms_p999: Option<f64>,
    pub join_to_first_frame_ms_p50: Option<f64>,
    pub join_to_first_frame_ms_p99: Option<f64>,
    pub cpu_ns_per_packet: Option<f64>,
    pub rss_mib: Option<f64>,
    pub idle_rss_mib: Option<f64>,
    /// (RSS under load − idle RSS) / sessions: includes what the node allocates once traffic
    /// flows (socket buffers, runtime), whatever the number of subscribers.
    pub rss_kib_per_subscriber: Option<f64>,
    /// RSS growth per subscriber added after the window (a batch of `added_subscribers` per
    /// room, receiving media): the marginal cost of one more subscriber.
    pub rss_kib_per_added_subscriber: Option<f64>,
    pub added_subscribers: usize,
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
        "{}: {:.0} pkt/s delivered, loss {:.2} %, latency p50/p99/p999 {:.2}/{:.2}/{:.2} ms, in the SFU {}, CPU/pkt {}",
        r.target,
        r.delivered_pps,
        r.loss_pct,
        r.latency_ms_p50,
        r.latency_ms_p99,
        r.latency_ms_p999,
        sfu_latency(r),
        r.cpu_ns_per_packet.map_or("-".into(), |c| format!("{c:.0} ns")),
    )
}

/// The SFU-side latency quantiles, "p50/p99/p999" in ms, or "-".
fn sfu_latency(r: &SfuReport) -> String {
    match (
        r.sfu_latency_ms_p50,
        r.sfu_latency_ms_p99,
        r.sfu_latency_ms_p999,
    ) {
        (Some(a), Some(b), Some(c)) => format!("{a:.2}/{b:.2}/{c:.2}"),
        _ => "-".into(),
    }
}

pub fn markdown(reports: &[SfuReport]) -> String {
    let mut s = String::from(
        "| target | rooms×pub×sub | kbps | delivered pkt/s | loss % | latency p50/p99/p999 ms | in the SFU p50/p99/p999 ms | join→first frame p50/p99 ms | CPU/pkt ns | RSS MiB (idle) | KiB/subscriber (all / added) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {}×{}×{} | {} | {:.0} | {:.2} | {:.2}/{:.2}/{:.2} | {} | {} | {} | {} | {} |\n",
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
            sfu_latency(r),
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
            match (r.rss_kib_per_subscriber, r.rss_kib_per_added_subscriber) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                (Some(a), None) => format!("{a:.0}"),
                _ => "-".into(),
            },
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
    admin: Option<SocketAddr>,
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
        admin: None,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                let addr = |k: &str| v[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                node.http = addr("http").ok_or_else(|| anyhow!("ready file has no http"))?;
                node.sfu = addr("sfu_udp").ok_or_else(|| anyhow!("ready file has no sfu_udp"))?;
                node.admin = addr("admin");
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
    let join = |prefix: &'static str, count: usize| {
        spawn_subscribers(prefix, count, &tracks, &base, node.sfu, &shared)
    };
    let subs = join("sub", args.subscribers).await?;
    bar.finish_and_clear();
    // Let every subscriber reach its first frame (bounded), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fwd0 = match node.admin {
        Some(a) => forward_buckets(a).await,
        None => None,
    };
    let window = measure(args, &shared, Some(proc_)).await;
    let fwd1 = match node.admin {
        Some(a) => forward_buckets(a).await,
        None => None,
    };
    // The marginal memory of a subscriber: a further batch joins, starts receiving, and the
    // RSS growth is divided by its size (fixed costs that appear with traffic are already in).
    let added = (args.subscribers / 5).max(10);
    let extra = join("add", added).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let added_rss = proc_.rss_kib().map(|(_, cur)| cur);
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
    let mut extra_received = 0;
    for s in extra {
        match tokio::time::timeout(Duration::from_secs(10), s).await {
            Ok(Ok(Ok(r))) if r.first_frame.is_some() => extra_received += 1,
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
    if let (Some(a), Some(b)) = (fwd0, fwd1) {
        let window: Vec<(f64, u64)> = b
            .iter()
            .map(|&(le, n)| {
                let before = a.iter().find(|(l, _)| *l == le).map_or(0, |(_, c)| *c);
                (le, n.saturating_sub(before))
            })
            .collect();
        rep.sfu_latency_ms_p50 = bucket_quantile(&window, 0.5).map(|s| s * 1e3);
        rep.sfu_latency_ms_p99 = bucket_quantile(&window, 0.99).map(|s| s * 1e3);
        rep.sfu_latency_ms_p999 = bucket_quantile(&window, 0.999).map(|s| s * 1e3);
    }
    rep.join_to_first_frame_ms_p50 = (!jtff.is_empty()).then(|| ms(&jtff, 0.5));
    rep.join_to_first_frame_ms_p99 = (!jtff.is_empty()).then(|| ms(&jtff, 0.99));
    rep.rss_mib = window.rss_kib.or(peak).map(|k| k as f64 / 1024.0);
    rep.idle_rss_mib = idle_rss.map(|k| k as f64 / 1024.0);
    if let (Some(busy), Some(idle)) = (window.rss_kib, idle_rss) {
        let n = (args.rooms * (args.subscribers + args.publishers)) as f64;
        rep.rss_kib_per_subscriber = Some(busy.saturating_sub(idle) as f64 / n);
    }
    rep.added_subscribers = added;
    // Only when every added subscriber got media (else the batch did not cost a full session).
    if let (Some(busy), Some(more)) = (window.rss_kib, added_rss) {
        if extra_received == added * args.rooms {
            let n = (added * args.rooms) as f64;
            rep.rss_kib_per_added_subscriber = Some(more.saturating_sub(busy) as f64 / n);
        }
    }
    drop(node);
    Ok(rep)
}

/// Starts `count` subscribers (viewers) per room, one per track, joins paced so signaling is
/// not a thundering herd.
async fn spawn_subscribers(
    prefix: &str,
    count: usize,
    tracks: &[String],
    base: &str,
    sfu: SocketAddr,
    shared: &std::sync::Arc<peer::Shared>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<peer::SubResult>>>> {
    use meridian_signaling::token::Role;
    let mut subs = Vec::new();
    for (r, track) in tracks.iter().enumerate() {
        for s in 0..count {
            let token = mint(
                &format!("{prefix}-{r}-{s}"),
                &format!("room-{r}"),
                Role::Viewer,
            )?;
            subs.push(tokio::spawn(peer::subscriber(
                base.to_string(),
                token,
                sfu,
                track.clone(),
                shared.clone(),
            )));
            if s % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok(subs)
}

/// The cumulative buckets `(le, count)` of the node's forward-latency histogram, from its
/// admin listener's /metrics (one bounded HTTP/1.1 GET).
async fn forward_buckets(admin: SocketAddr) -> Option<Vec<(f64, u64)>> {
    let text = admin_metrics(admin).await?;
    Some(parse_buckets(&text, "meridian_sfu_forward_latency_seconds"))
}

/// Cumulative `(le, count)` pairs of one Prometheus histogram, summed over its label sets.
fn parse_buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, u64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some(e) => e.1 += n as u64,
            None => out.push((le, n as u64)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of cumulative buckets, linear inside the bucket it falls in (as
/// Prometheus' histogram_quantile does); None without observations. A quantile in the
/// open-ended bucket is reported as that bucket's lower bound.
fn bucket_quantile(cumulative: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, n) in cumulative {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = (n - lower.1) as f64;
            let frac = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, n);
    }
    Some(lower.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_parsed_summed_over_labels_and_sorted() {
        let text = "# TYPE meridian_sfu_forward_latency_seconds histogram\n\
            meridian_sfu_forward_latency_seconds_bucket{le=\"0.001\"} 5\n\
            meridian_sfu_forward_latency_seconds_bucket{le=\"+Inf\"} 9\n\
            meridian_sfu_forward_latency_seconds_bucket{le=\"0.0005\"} 2\n\
            meridian_sfu_forward_latency_seconds_bucket{shard=\"1\",le=\"0.001\"} 1\n\
            meridian_sfu_forward_latency_seconds_sum 0.01\n\
            other_bucket{le=\"0.001\"} 100\n";
        let b = parse_buckets(text, "meridian_sfu_forward_latency_seconds");
        assert_eq!(b, vec![(0.0005, 2), (0.001, 6), (f64::INFINITY, 9)]);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 100 observations: 50 at or below 1 ms, 49 more at or below 2 ms, 1 above.
        let b = [(0.001, 50), (0.002, 99), (f64::INFINITY, 100)];
        let p50 = bucket_quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p75 = bucket_quantile(&b, 0.75).unwrap();
        assert!(p75 > 0.001 && p75 < 0.002, "{p75}");
        // In the open-ended bucket: its lower bound.
        assert_eq!(bucket_quantile(&b, 0.999), Some(0.002));
        assert_eq!(
            bucket_quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5),
            None
        );
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }
}
