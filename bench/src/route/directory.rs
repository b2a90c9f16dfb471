//! `meridian bench directory`: what the cluster directory costs and how fast it sees a death,
//! on a 3-node cluster with a real `redis-server` and the default heartbeat settings.
//!
//! - load: S signaling sessions, D of them devices in their own rooms (L of those streaming),
//!   spread over the nodes; in steady state, Redis commands per second per node (from
//!   `INFO commandstats` and from each node's own count), then again while every node serves
//!   room-list requests, which must not add Redis commands (they come from the local view);
//! - kills: K times, SIGKILL a node and time until both others stop listing its region, then
//!   restart it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use super::cluster::{mint, regions_listed, wait_until, Cluster, Spec};
use super::REGIONS;
use crate::client::signal::{http_get_json, Signal};
use crate::sfu::peer;
use meridian_signaling::token::Role;

#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryArgs {
    /// Signaling sessions in all (devices included), spread over the 3 nodes.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Device sessions among them, each in its own room.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Devices that also stream video (the others are connected and listed, not streaming).
    #[arg(long, default_value_t = 30)]
    pub live: usize,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 20)]
    pub window: u64,
    /// Room-list requests per node in the second window.
    #[arg(long, default_value_t = 300)]
    pub room_lists: usize,
    /// Node kills for the detection measurement (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Skip the load measurement.
    #[arg(long)]
    pub no_load: bool,
    /// The meridian binary to start (default: this one).
    #[arg(long)]
    pub meridian_bin: Option<std::path::PathBuf>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct LoadReport {
    pub sessions: usize,
    pub devices: usize,
    pub live: usize,
    pub window_secs: f64,
    /// Redis commands per second (all nodes), by command, in steady state.
    pub redis_commands_per_sec: BTreeMap<String, f64>,
    pub redis_per_node_per_sec: f64,
    /// Each node's own count of the commands it sent, per second.
    pub node_commands_per_sec: Vec<(String, f64)>,
    pub room_list_requests: usize,
    pub room_list_devices_listed: usize,
    pub redis_per_node_per_sec_with_room_lists: f64,
    /// (Commands in the room-list window − steady rate × its length) / requests.
    pub extra_commands_per_room_list: f64,
    pub failed_sessions: usize,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct KillReport {
    pub kills: usize,
    /// One sample per surviving node per kill: SIGKILL → the node no longer listed.
    pub detection_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub undetected: usize,
    pub poll_interval_ms: f64,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct DirectoryReport {
    pub load: Option<LoadReport>,
    pub kills: Option<KillReport>,
}

pub fn run(args: DirectoryArgs) -> anyhow::Result<()> {
    if args.devices > args.sessions {
        bail!(
            "--devices {} is more than --sessions {}",
            args.devices,
            args.sessions
        );
    }
    if args.live > args.devices {
        bail!(
            "--live {} is more than --devices {}",
            args.live,
            args.devices
        );
    }
    if args.sessions > 60_000 {
        bail!("--sessions {}: at most 60000 on one machine", args.sessions);
    }
    if args.window == 0 {
        bail!("--window must be at least 1 s");
    }
    if !args.no_load && args.devices == 0 {
        bail!("--devices 0: the load measurement needs rooms (or pass --no-load)");
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

async fn run_async(args: &DirectoryArgs) -> anyhow::Result<DirectoryReport> {
    let spec = Spec {
        regions: REGIONS.iter().map(|s| s.to_string()).collect(),
        delays: vec![],
        meridian_bin: match &args.meridian_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        },
        cluster_extra: vec![],
        sfu_extra: vec![],
        log_level: "warn".into(),
        trunk_delay_ms: None,
    };
    eprintln!("starting redis-server and 3 nodes ...");
    let mut cluster = Cluster::start(&spec).await?;
    let mut report = DirectoryReport::default();
    if !args.no_load {
        report.load = Some(load(args, &cluster).await?);
    }
    if args.kills > 0 {
        report.kills = Some(kills(args.kills, &mut cluster).await?);
    }
    Ok(report)
}

/// A counter or gauge summed over its label sets, from a node's admin `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let text = crate::client::signal::admin_metrics(admin).await?;
    let mut sum = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

fn bar(len: usize, label: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{label:>9} [{{bar:30}}] {{pos}}/{{len}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

async fn load(args: &DirectoryArgs, cluster: &Cluster) -> anyhow::Result<LoadReport> {
    let shared = peer::Shared::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let progress = bar(args.sessions, "sessions");
    let mut tasks = Vec::new();
    // Devices first (each claims its room on its node), then players in those rooms, on the
    // room's node; the connections stay open, their events read by a task each.
    for i in 0..args.sessions {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (room, node) = (i % args.devices, i % args.devices % 3);
        let device = i < args.devices;
        let live = device && i < args.live;
        let base = cluster.regions[node].direct_url();
        let sfu = cluster.regions[node].sfu_addr();
        let shared = shared.clone();
        let progress = progress.clone();
        let role = if device { Role::Device } else { Role::Player };
        tasks.push(tokio::spawn(async move {
            let r = async {
                let token = mint(&format!("s{i}"), &format!("dir-{room}"), role)?;
                let signal = Signal::join(&base, &token, None).await?;
                if live {
                    let (_, task) =
                        peer::publisher_on(signal, sfu, None, 100_000, 1000, shared).await?;
                    anyhow::Ok(Hold::Media(task))
                } else {
                    Ok(Hold::Events(signal.into_events()))
                }
            }
            .await;
            drop(permit);
            progress.inc(1);
            r
        }));
    }
    let mut held = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => held.push(h),
            _ => failed += 1,
        }
    }
    progress.finish_and_clear();
    eprintln!(
        "{} sessions open ({failed} failed); waiting for steady state ...",
        held.len()
    );
    // Steady state: every node lists every device.
    let want = args.devices;
    let first = cluster.regions[0].direct_url();
    let _ = wait_until(Duration::from_secs(30), || {
        let first = first.clone();
        async move {
            http_get_json(&first, "/v1/rooms")
                .await
                .ok()
                .and_then(|v| v["devices"].as_array().map(|a| a.len()))
                .is_some_and(|n| n >= want)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let window = Duration::from_secs(args.window);
    let node_counts = |c: &Cluster| {
        let admins: Vec<_> = c.regions.iter().map(|r| r.admin).collect();
        async move {
            let mut v = Vec::new();
            for a in admins {
                v.push(match a {
                    Some(a) => metric(a, "meridian_directory_commands").await,
                    None => None,
                });
            }
            v
        }
    };
    let before = cluster.redis.command_calls();
    let nodes_before = node_counts(cluster).await;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let after = cluster.redis.command_calls();
    let nodes_after = node_counts(cluster).await;
    let per_cmd: BTreeMap<String, f64> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0)) as f64 / secs,
            )
        })
        .filter(|(k, v)| *v > 0.0 && k != "info")
        .collect();
    let total: f64 = per_cmd.values().sum();
    let node_rates = cluster
        .regions
        .iter()
        .zip(nodes_before.iter().zip(&nodes_after))
        .map(|(r, (b, a))| {
            (
                r.id.clone(),
                a.zip(*b).map_or(f64::NAN, |(a, b)| (a - b) / secs),
            )
        })
        .collect();

    // The same window with room lists from every node.
    let before2 = cluster.redis.command_calls();
    let t1 = Instant::now();
    let per_node = args.room_lists;
    let mut listed = usize::MAX;
    let spacing = window / per_node.max(1) as u32;
    for k in 0..per_node {
        for r in &cluster.regions {
            let v = http_get_json(&r.direct_url(), "/v1/rooms").await?;
            let n = v["devices"].as_array().map_or(0, |a| a.len());
            listed = listed.min(n);
        }
        let next = t1 + spacing * (k as u32 + 1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
    let secs2 = t1.elapsed().as_secs_f64();
    let after2 = cluster.redis.command_calls();
    let sum = |m: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.as_str() != "info")
            .map(|(k, v)| (v - b.get(k).copied().unwrap_or(0)) as f64)
            .sum()
    };
    let cmds2 = sum(&after2, &before2);
    let requests = per_node * cluster.regions.len();
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(held);
    Ok(LoadReport {
        sessions: args.sessions,
        devices: args.devices,
        live: args.live,
        window_secs: secs,
        redis_per_node_per_sec: total / cluster.regions.len() as f64,
        redis_commands_per_sec: per_cmd,
        node_commands_per_sec: node_rates,
        room_list_requests: requests,
        room_list_devices_listed: if listed == usize::MAX { 0 } else { listed },
        redis_per_node_per_sec_with_room_lists: cmds2 / secs2 / cluster.regions.len() as f64,
        extra_commands_per_room_list: (cmds2 - total * secs2) / requests.max(1) as f64,
        failed_sessions: failed,
    })
}

/// What keeps a session open.
enum Hold {
    /// Held only to keep the connection (and its reading task) alive.
    Events(#[allow(dead_code)] tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>),
    Media(tokio::task::JoinHandle<anyhow::Result<()>>),
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Hold::Media(t) = self {
            t.abort();
        }
    }
}

/// How often the survivors are asked whether the dead node is still listed.
const POLL: Duration = Duration::from_millis(5);

async fn kills(k: usize, cluster: &mut Cluster) -> anyhow::Result<KillReport> {
    let progress = bar(k, "kills");
    let mut samples = Vec::new();
    let mut undetected = 0;
    let bin = cluster.bin.clone();
    for i in 0..k {
        let victim = i % cluster.regions.len();
        let name = cluster.regions[victim].region.clone();
        let observers: Vec<(usize, String)> = cluster
            .regions
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != victim)
            .map(|(j, r)| (j, r.direct_url()))
            .collect();
        let t0 = Instant::now();
        cluster.regions[victim].kill();
        let mut pending: Vec<(usize, String)> = observers.clone();
        let deadline = t0 + Duration::from_secs(5);
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for (j, url) in pending {
                let listed = regions_listed(&url).await;
                match listed {
                    Some(l) if !l.contains(&name) => {
                        samples.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => still.push((j, url)),
                }
            }
            pending = still;
            tokio::time::sleep(POLL).await;
        }
        undetected += pending.len();
        cluster.regions[victim]
            .start(&bin)
            .with_context(|| format!("restarting node {name}"))?;
        for (_, url) in &observers {
            let name = name.clone();
            wait_until(Duration::from_secs(10), || {
                let url = url.clone();
                let name = name.clone();
                async move {
                    regions_listed(&url)
                        .await
                        .is_some_and(|l| l.contains(&name))
                }
            })
            .await
            .map_err(|_| anyhow!("{url} did not list region {name} again after its restart"))?;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let p = |q| super::percentile(&samples, q);
    Ok(KillReport {
        kills: k,
        p50_ms: p(0.5),
        p99_ms: p(0.99),
        max_ms: samples.iter().copied().reduce(f64::max),
        detection_ms: samples,
        undetected,
        poll_interval_ms: POLL.as_secs_f64() * 1e3,
    })
}

pub fn markdown(r: &DirectoryReport) -> String {
    let mut s = String::new();
    if let Some(l) = &r.load {
        s.push_str(&format!(
            "directory load: {} sessions, {} devices ({} streaming) over 3 nodes, {:.0} s window\n\n",
            l.sessions, l.devices, l.live, l.window_secs
        ));
        s.push_str("| Redis command | calls/s (all nodes) |\n|---|---|\n");
        for (k, v) in &l.redis_commands_per_sec {
            s.push_str(&format!("| {k} | {v:.1} |\n"));
        }
        s.push_str(&format!(
            "\nRedis commands per node per second: {:.1} (each node's own count: {})\n",
            l.redis_per_node_per_sec,
            l.node_commands_per_sec
                .iter()
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.push_str(&format!(
            "with {} room-list requests (each listing {} devices): {:.1} per node per second, {:+.3} commands per request\n",
            l.room_list_requests,
            l.room_list_devices_listed,
            l.redis_per_node_per_sec_with_room_lists,
            l.extra_commands_per_room_list
        ));
        if l.failed_sessions > 0 {
            s.push_str(&format!(
                "{} session(s) failed to open\n",
                l.failed_sessions
            ));
        }
    }
    if let Some(k) = &r.kills {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        s.push_str(&format!(
            "\ndead-node detection over {} SIGKILLs ({} samples, polled every {:.0} ms): p50 {} ms, p99 {} ms, max {} ms; undetected within 5 s: {}\n",
            k.kills,
            k.detection_ms.len(),
            k.poll_interval_ms,
            f(k.p50_ms),
            f(k.p99_ms),
            f(k.max_ms),
            k.undetected
        ));
    }
    s
}
