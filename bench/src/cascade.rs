//! `meridian bench cascade`: a publisher on node A, S subscribers on node B, the room carried
//! over the trunk (behind a shim adding the inter-region delay); beside it, in the same run
//! and on the same node B, the same S subscribers of a publisher local to B. Reports, per S:
//! the latency the trunk hop adds over the emulated delay, B's CPU per forwarded packet for
//! trunked vs local media, and A's trunk egress per published packet (one copy per track per
//! remote node, whatever S).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::signal::{admin_metrics, mint, Signal};
use crate::route::cluster::{Cluster, Spec};
use crate::sfu::peer;
use crate::turn::procfs::ProcTarget;

#[derive(clap::Args, Debug, Clone)]
pub struct CascadeArgs {
    /// Subscribers on node B, one run per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    pub subscribers: Vec<usize>,
    /// One-way delay between the nodes, ms (the trunk shim).
    #[arg(long, default_value_t = 20.0)]
    pub delay_ms: f64,
    /// Video bitrate of the publisher, kbit/s.
    #[arg(long, default_value_t = 1000)]
    pub bitrate_kbps: u64,
    /// RTP payload size, bytes.
    #[arg(long, default_value_t = 1100)]
    pub packet_size: usize,
    /// Controls a player on B sends to a device on A (0: skip that phase).
    #[arg(long, default_value_t = 10_000)]
    pub controls: u64,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// The meridian binary to start (default: this one).
    #[arg(long)]
    pub meridian_bin: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, Clone)]
pub struct Phase {
    /// "local" (publisher on B) or "trunked" (publisher on A).
    pub mode: String,
    pub subscribers: usize,
    pub sent_packets: u64,
    pub delivered_packets: u64,
    pub loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    /// B's CPU over the window / packets B's subscribers received in it.
    pub b_cpu_ns_per_packet: Option<f64>,
    /// A's trunk datagrams to B / packets the publisher sent (trunked only).
    pub trunk_copies_per_packet: Option<f64>,
    pub failed_clients: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct Pair {
    pub subscribers: usize,
    pub local: Phase,
    pub trunked: Phase,
    /// trunked p99 − local p99 − the emulated one-way delay.
    pub added_latency_ms_p99: f64,
    pub added_latency_ms_p50: f64,
    /// B's CPU per forwarded packet, trunked / local.
    pub cpu_ratio: Option<f64>,
}

/// Controls from a player on B to a device (`meridian device`) on A, over the trunk.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Controls {
    pub sent: u64,
    /// Distinct ids acknowledged to the player.
    pub acked: u64,
    /// Acknowledged ids the device never printed.
    pub acked_lost: u64,
    /// Ids the device printed more than once.
    pub duplicated: u64,
    /// The device printed them in the order sent.
    pub in_order: bool,
    pub secs: f64,
    /// Send to acknowledgement, ms.
    pub ack_ms_p50: f64,
    pub ack_ms_p99: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct CascadeReport {
    pub delay_ms: f64,
    pub bitrate_kbps: u64,
    pub duration_secs: u64,
    pub runs: Vec<Pair>,
    pub controls: Option<Controls>,
}

pub fn run(args: CascadeArgs) -> anyhow::Result<()> {
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        bail!("--subscribers: give one or more counts >= 1, e.g. 10,100");
    }
    if !(0.0..=1000.0).contains(&args.delay_ms) {
        bail!("--delay-ms {}: expected 0..=1000", args.delay_ms);
    }
    if !(peer::HEADER + 16..=1200).contains(&args.packet_size) {
        bail!(
            "--packet-size {}: expected {}..=1200",
            args.packet_size,
            peer::HEADER + 16
        );
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1");
    }
    let _ = crate::turn::procfs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_async(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", markdown(&report));
    }
    Ok(())
}

async fn run_async(args: &CascadeArgs) -> anyhow::Result<CascadeReport> {
    let spec = Spec {
        regions: vec!["a".into(), "b".into()],
        delays: vec![],
        meridian_bin: match &args.meridian_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        },
        cluster_extra: vec![],
        sfu_extra: vec!["workers = 1".into()],
        log_level: "warn".into(),
        trunk_delay_ms: Some(args.delay_ms),
    };
    let cluster = Cluster::start(&spec).await?;
    let mut runs = Vec::new();
    for (i, &s) in args.subscribers.iter().enumerate() {
        let local = phase(args, &cluster, 1, s, &format!("local-{i}")).await?;
        let trunked = phase(args, &cluster, 0, s, &format!("trunked-{i}")).await?;
        eprintln!("{}", row(&local));
        eprintln!("{}", row(&trunked));
        runs.push(Pair {
            subscribers: s,
            added_latency_ms_p99: trunked.latency_ms_p99 - local.latency_ms_p99 - args.delay_ms,
            added_latency_ms_p50: trunked.latency_ms_p50 - local.latency_ms_p50 - args.delay_ms,
            cpu_ratio: trunked
                .b_cpu_ns_per_packet
                .zip(local.b_cpu_ns_per_packet)
                .map(|(t, l)| t / l),
            local,
            trunked,
        });
    }
    let controls = if args.controls > 0 {
        let c = controls(args, &cluster).await?;
        eprintln!(
            "controls: {} sent, {} acknowledged, {} acknowledged but lost, {} duplicated, in order {}",
            c.sent, c.acked, c.acked_lost, c.duplicated, c.in_order
        );
        Some(c)
    } else {
        None
    };
    Ok(CascadeReport {
        delay_ms: args.delay_ms,
        bitrate_kbps: args.bitrate_kbps,
        duration_secs: args.duration,
        runs,
        controls,
    })
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|w| rest.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(admin: Option<SocketAddr>) -> anyhow::Result<String> {
    let a = admin.ok_or_else(|| anyhow!("a node has no admin listener"))?;
    admin_metrics(a)
        .await
        .ok_or_else(|| anyhow!("GET /metrics on {a} failed"))
}

/// One phase: a publisher on region `home`, `subs` viewers on region 1 (B).
async fn phase(
    args: &CascadeArgs,
    cluster: &Cluster,
    home: usize,
    subs: usize,
    room: &str,
) -> anyhow::Result<Phase> {
    use meridian_signaling::token::Role;
    let (pub_node, edge) = (&cluster.regions[home], &cluster.regions[1]);
    let shared = peer::Shared::new();
    let token = mint("cam", room, Role::Device)?;
    let (track, publisher) = peer::publisher(
        pub_node.direct_url(),
        token,
        pub_node.sfu_addr(),
        args.bitrate_kbps * 1000,
        args.packet_size,
        shared.clone(),
    )
    .await
    .context("the publisher")?;
    // On B a remote track is named after its home; B mirrors it once a session of the room
    // is there: a probe session waits for it.
    let track = if home == 1 {
        track
    } else {
        format!("{}/{track}", pub_node.id)
    };
    if home != 1 {
        // B learns the room's home from the directory (a heartbeat or so).
        home_known(&edge.direct_url(), room, &pub_node.id).await?;
    }
    let mut probe = Signal::join(
        &edge.direct_url(),
        &mint("probe", room, Role::Viewer)?,
        None,
    )
    .await
    .context("the probe viewer on B")?;
    let listed = |v: &serde_json::Value| {
        v["tracks"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["id"] == track.as_str()))
    };
    if !listed(&probe.joined) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("B never listed track {track}");
            }
            match tokio::time::timeout(left, probe.next_json()).await {
                Ok(Ok(ev))
                    if ev["type"] == "track_published" && ev["track"]["id"] == track.as_str() =>
                {
                    break
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("the probe's signaling: {e}"),
                Err(_) => bail!("B never listed track {track}"),
            }
        }
    }
    let mut tasks = Vec::new();
    for i in 0..subs {
        let token = mint(&format!("v{i}"), room, Role::Viewer)?;
        tasks.push(tokio::spawn(peer::subscriber(
            edge.direct_url(),
            token,
            edge.sfu_addr(),
            track.clone(),
            shared.clone(),
        )));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_proc = edge.pid().map(ProcTarget::Process);
    let tx = [
        "direction=\"tx\"".to_string(),
        format!("peer=\"{}\"", edge.id),
    ];
    let tx: Vec<&str> = tx.iter().map(String::as_str).collect();
    // A exports its trunk counters every keepalive (500 ms): the window starts and ends on
    // an export, so the trunk's datagrams and the publisher's packets cover the same time.
    let trunk_tick = |last: f64| {
        let tx = tx.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let v = metric(
                    &scrape(pub_node.admin).await?,
                    "meridian_trunk_datagrams_total",
                    &tx,
                );
                if v != last || home == 1 || Instant::now() > deadline {
                    return anyhow::Ok(v);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let before = trunk_tick(-1.0).await?;
    let copies0 = trunk_tick(before).await?;
    let cpu0 = b_proc.and_then(|p| p.cpu_ns().ok());
    shared.sent.store(0, Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    let bar = indicatif::ProgressBar::new(args.duration * 10);
    bar.set_prefix(format!("{room} ×{subs}"));
    for _ in 0..args.duration * 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.inc(1);
    }
    let last = metric(
        &scrape(pub_node.admin).await?,
        "meridian_trunk_datagrams_total",
        &tx,
    );
    let copies1 = trunk_tick(last).await?;
    shared.measuring.store(false, Ordering::Relaxed);
    let cpu1 = b_proc.and_then(|p| p.cpu_ns().ok());
    bar.finish_and_clear();
    shared.stop.store(true, Ordering::Relaxed);
    let sent = shared.sent.load(Ordering::Relaxed);
    let copies = copies1 - copies0;
    let mut latency = Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3)?;
    let (mut delivered, mut failed) = (0u64, 0usize);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(r))) => {
                delivered += r.received;
                latency.add(&r.latency_ns).ok();
            }
            _ => failed += 1,
        }
    }
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), publisher).await,
        Ok(Ok(Ok(())))
    ) {
        failed += 1;
    }
    drop(probe);
    let q = |x: f64| {
        if latency.is_empty() {
            0.0
        } else {
            latency.value_at_quantile(x) as f64 / 1e6
        }
    };
    let expected = sent * subs as u64;
    Ok(Phase {
        mode: if home == 1 { "local" } else { "trunked" }.into(),
        subscribers: subs,
        sent_packets: sent,
        delivered_packets: delivered,
        loss_pct: if expected == 0 {
            0.0
        } else {
            100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
        },
        latency_ms_p50: q(0.5),
        latency_ms_p99: q(0.99),
        latency_ms_p999: q(0.999),
        // What B forwarded in the window is what its subscribers received in it.
        b_cpu_ns_per_packet: cpu0
            .zip(cpu1)
            .filter(|_| delivered > 0)
            .map(|(a, b)| b.saturating_sub(a) as f64 / delivered as f64),
        trunk_copies_per_packet: (home != 1 && sent > 0).then(|| copies / sent as f64),
        failed_clients: failed,
    })
}

/// Waits (bounded) until `node`'s room list shows `room` homed on `home`.
async fn home_known(node: &str, room: &str, home: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = crate::client::signal::http_get_json(node, "/v1/rooms").await;
        let known = rooms.is_ok_and(|v| {
            v["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["room"] == room && x["node"] == home))
        });
        if known {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{node} never learned that room {room} is homed on {home}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The controls phase: `meridian device` on A prints what it receives; a str0m player on B
/// sends `args.controls` controls on its controls channel and counts the acknowledgements.
async fn controls(args: &CascadeArgs, cluster: &Cluster) -> anyhow::Result<Controls> {
    use meridian_signaling::token::Role;
    use str0m::channel::{ChannelConfig, Reliability};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};
    use tokio::io::AsyncBufReadExt;
    let (a, b) = (&cluster.regions[0], &cluster.regions[1]);
    let room = "controls";
    let mut child = tokio::process::Command::new(&cluster.bin)
        .args([
            "device",
            "--url",
            &a.direct_url(),
            "--room",
            room,
            "--name",
            "rig",
        ])
        .args(["--bitrate-kbps", "200", "--size", "160x90", "--no-measure"])
        .arg("--token")
        .arg(mint("rig", room, Role::Device)?)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting meridian device")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no device stdout"))?;
    let printed = tokio::spawn(async move {
        let mut ns = Vec::new();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                if v["channel"] == "controls" {
                    if let Some(n) = v["message"]["data"]["n"].as_u64() {
                        ns.push(n);
                    }
                }
            }
        }
        ns
    });
    home_known(&b.direct_url(), room, &a.id).await?;
    let mut signal = Signal::join(&b.direct_url(), &mint("pat", room, Role::Player)?, None)
        .await
        .context("the player on B")?;
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_channel_with_config(ChannelConfig {
        label: "controls".into(),
        ordered: true,
        reliability: Reliability::Reliable,
        ..Default::default()
    });
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    let answer = signal
        .request(serde_json::json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await?;
    let sdp = answer["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no answer: {answer}"))?;
    rtc.sdp_api()
        .accept_answer(pending, str0m::change::SdpAnswer::from_sdp_string(sdp)?)?;
    let server = b.sfu_addr();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(server).await?;
    let local = sock.local_addr()?;
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let total = args.controls;
    let (mut channel, mut sent) = (None, 0u64);
    let mut sent_at: Vec<Option<Instant>> = vec![None; total as usize + 1];
    let mut acked = std::collections::BTreeSet::new();
    let mut ack_ns = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
    let mut buf = vec![0u8; 2048];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + total / 100);
    while Instant::now() < deadline && (acked.len() as u64) < total {
        if let (Some(ch), true) = (channel, sent < total) {
            if let Some(mut c) = rtc.channel(ch) {
                // A bounded burst per pass; SCTP paces the rest.
                for _ in 0..50 {
                    if sent >= total {
                        break;
                    }
                    let m = format!(r#"{{"id":{},"data":{{"n":{}}}}}"#, sent + 1, sent + 1);
                    match c.write(false, m.as_bytes()) {
                        Ok(true) => {
                            sent += 1;
                            sent_at[sent as usize] = Some(Instant::now());
                        }
                        _ => break,
                    }
                }
            }
        }
        let next = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send(&t.contents).await;
                }
                Output::Event(Event::ChannelOpen(id, label)) if label == "controls" => {
                    channel = Some(id)
                }
                Output::Event(Event::ChannelData(d)) => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&d.data) {
                        if let Some(id) = v["ack"].as_u64() {
                            if acked.insert(id) {
                                if let Some(Some(t)) = sent_at.get(id as usize) {
                                    let _ = ack_ns.record(t.elapsed().as_nanos() as u64);
                                }
                            }
                        }
                    }
                }
                Output::Event(_) => {}
            }
        };
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        let input = match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: server,
                    destination: local,
                    contents: buf[..n].try_into()?,
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input)?;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the device print what reached it, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let ns = tokio::time::timeout(Duration::from_secs(5), printed)
        .await
        .map_err(|_| anyhow!("the device's output did not end"))??;
    drop(signal);
    let mut count = std::collections::HashMap::new();
    for n in &ns {
        *count.entry(*n).or_insert(0u32) += 1;
    }
    let q = |x: f64| {
        if ack_ns.is_empty() {
            0.0
        } else {
            ack_ns.value_at_quantile(x) as f64 / 1e6
        }
    };
    Ok(Controls {
        sent,
        acked: acked.len() as u64,
        acked_lost: acked.iter().filter(|id| !count.contains_key(id)).count() as u64,
        duplicated: count.values().filter(|c| **c > 1).count() as u64,
        in_order: ns.windows(2).all(|w| w[1] > w[0]),
        secs,
        ack_ms_p50: q(0.5),
        ack_ms_p99: q(0.99),
    })
}

fn row(p: &Phase) -> String {
    format!(
        "{} ×{}: loss {:.2} %, latency p50/p99 {:.2}/{:.2} ms, B CPU/pkt {}, trunk copies/pkt {}",
        p.mode,
        p.subscribers,
        p.loss_pct,
        p.latency_ms_p50,
        p.latency_ms_p99,
        p.b_cpu_ns_per_packet
            .map_or("-".into(), |c| format!("{c:.0} ns")),
        p.trunk_copies_per_packet
            .map_or("-".into(), |c| format!("{c:.3}")),
    )
}

pub fn markdown(r: &CascadeReport) -> String {
    let mut s = format!(
        "Trunk delay {} ms one way, {} kbit/s, {} s per phase.\n\n| S | mode | loss % | latency p50/p99/p999 ms | B CPU/pkt ns | trunk copies/pkt | failed |\n|---|---|---|---|---|---|---|\n",
        r.delay_ms, r.bitrate_kbps, r.duration_secs
    );
    for p in &r.runs {
        for ph in [&p.local, &p.trunked] {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.2}/{:.2}/{:.2} | {} | {} | {} |\n",
                ph.subscribers,
                ph.mode,
                ph.loss_pct,
                ph.latency_ms_p50,
                ph.latency_ms_p99,
                ph.latency_ms_p999,
                ph.b_cpu_ns_per_packet
                    .map_or("-".into(), |c| format!("{c:.0}")),
                ph.trunk_copies_per_packet
                    .map_or("-".into(), |c| format!("{c:.3}")),
                ph.failed_clients,
            ));
        }
    }
    s.push('\n');
    if let Some(c) = &r.controls {
        s.push_str(&format!(
            "Controls B → A over the trunk: {} sent, {} acknowledged, {} acknowledged but lost, {} duplicated, in order: {}; ack p50/p99 {:.1}/{:.1} ms; {:.1} s\n",
            c.sent, c.acked, c.acked_lost, c.duplicated, c.in_order, c.ack_ms_p50, c.ack_ms_p99, c.secs
        ));
    }
    for p in &r.runs {
        s.push_str(&format!(
            "S={}: added by the trunk hop over the delay p50 {:.2} ms, p99 {:.2} ms; B CPU/pkt trunked / local {}\n",
            p.subscribers,
            p.added_latency_ms_p50,
            p.added_latency_ms_p99,
            p.cpu_ratio.map_or("-".into(), |c| format!("{c:.2}x")),
        ));
    }
    s
}
