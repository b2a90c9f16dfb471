//! `meridian bench failover`: failover drills on a 3-region cluster behind the delay shims
//! (eu, us, ap; the trunk between them), with D `meridian device` simulators streaming on eu
//! and P re-homing str0m players (half nearest us, half nearest ap) watching them and sending
//! controls. Each drill runs K times with fresh players:
//!
//! - `kill`: SIGKILL of node us, the players' nearest for half of them. Detection is the time
//!   until the surviving nodes' directory drops it; each affected player's media gap is from
//!   its last frame before to its first frame after the re-home, at the player.
//! - `partition`: the shims cut us off from its clients and the other regions for N seconds
//!   (the directory still reaches it, so it stays listed): its players' media stops without
//!   their connections closing. Detection is until each affected player gave up its leg
//!   there; the gap and recovery are as in `kill`.
//! - `directory`: Redis stops for N seconds and comes back. Nobody should re-home; the media
//!   gap is each player's longest time between frames over the run.
//!
//! Every drill also checks the controls: each one the room's home acknowledged must reach the
//! device exactly once (the devices print what they get).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meridian_geo::rehome::Known;
use meridian_signaling::token::Role;
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::client::player::{self, PlayerOptions, PlayerReport, Progress};
use crate::client::probe::{self, Until};
use crate::client::signal::http_get_json;
use crate::route::cluster::{group_ip, mint, regions_listed, wait_until, Cluster, Spec};

/// The drills this bench runs.
pub const DRILLS: [&str; 4] = ["kill", "drain", "partition", "directory"];

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Drills to run, comma-separated: kill, drain, partition, directory.
    #[arg(long, value_delimiter = ',', default_values_t = DRILLS.map(String::from))]
    pub drills: Vec<String>,
    /// Players (half nearest us, half nearest ap), fresh for every repetition.
    #[arg(long, default_value_t = 50)]
    pub players: usize,
    /// Devices streaming on eu (the players spread over their rooms).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Repetitions per drill.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// How long Redis stays stopped in the directory drill, seconds.
    #[arg(long, default_value_t = 30)]
    pub outage_secs: u64,
    /// How long the partition drill keeps us cut off, seconds.
    #[arg(long, default_value_t = 10)]
    pub partition_secs: u64,
    /// One controls message per player this often, ms.
    #[arg(long, default_value_t = 50)]
    pub control_every_ms: u64,
    /// One-way delay between the regions (the trunk shims), ms.
    #[arg(long, default_value_t = 20.0)]
    pub trunk_delay_ms: f64,
    /// Write an SVG plot of the gap distribution per drill here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The meridian binary to start (default: this one).
    #[arg(long)]
    pub meridian_bin: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// One repetition of a drill.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Rep {
    /// Kill: until the surviving nodes dropped the node; directory: until every node reported
    /// the directory unreachable.
    pub detection_ms: Option<f64>,
    /// Players the drill touched (kill: those on the killed node; directory: all).
    pub affected: usize,
    /// Affected players that had media again after the drill.
    pub recovered: usize,
    /// Players that re-homed (in the directory drill: dropped sessions).
    pub rehomed: usize,
    /// Per affected player: the media gap, ms.
    pub gaps_ms: Vec<f64>,
    /// Directory drill: per player, the longest time between two frames in a window as long
    /// as the outage's measured one (at most 10 s) just before Redis stopped, ms (100 when
    /// none was longer than 100 ms): what the same players see without a drill.
    pub baseline_ms: Vec<f64>,
    /// From the drill to every affected player receiving again (kill), or to every node
    /// reporting the directory reachable with every region listed (directory), ms.
    pub steady_ms: Option<f64>,
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged, never printed by the device.
    pub acked_lost: u64,
    /// Printed by the device more than once (or acknowledged with two sequence numbers).
    pub duplicated: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Drill {
    pub drill: String,
    pub reps: Vec<Rep>,
    pub detection_ms_p50: Option<f64>,
    pub detection_ms_max: Option<f64>,
    pub gap_ms_p50: Option<f64>,
    pub gap_ms_p99: Option<f64>,
    pub gap_ms_max: Option<f64>,
    /// Directory drill: the same quantiles of [`Rep::baseline_ms`].
    pub baseline_ms_p50: Option<f64>,
    pub baseline_ms_p99: Option<f64>,
    pub baseline_ms_max: Option<f64>,
    pub affected: usize,
    pub recovered: usize,
    pub rehomed: usize,
    pub steady_ms_p50: Option<f64>,
    pub steady_ms_max: Option<f64>,
    pub sent: u64,
    pub acked: u64,
    pub acked_lost: u64,
    pub duplicated: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct FailoverReport {
    pub players: usize,
    pub devices: usize,
    pub repeat: usize,
    pub outage_secs: u64,
    pub partition_secs: u64,
    pub drills: Vec<Drill>,
}

/// One-way delays, ms, from client group g to region r (eu, us, ap): group 1 is nearest us,
/// group 2 nearest ap; group 0 (unused by players) nearest eu.
const DELAYS: [[f64; 3]; 3] = [[5.0, 40.0, 80.0], [40.0, 5.0, 60.0], [80.0, 60.0, 5.0]];

pub fn run(args: FailoverArgs) -> anyhow::Result<()> {
    for d in &args.drills {
        if !DRILLS.contains(&d.as_str()) {
            bail!(
                "--drills: unknown drill {d:?}; this bench runs {}",
                DRILLS.join(", ")
            );
        }
    }
    if args.drills.is_empty() {
        bail!("--drills: name at least one of {}", DRILLS.join(", "));
    }
    if !(2..=400).contains(&args.players) {
        bail!("--players {}: expected 2..=400", args.players);
    }
    if !(1..=20).contains(&args.devices) {
        bail!("--devices {}: expected 1..=20", args.devices);
    }
    if !(1..=1000).contains(&args.repeat) {
        bail!("--repeat {}: expected 1..=1000", args.repeat);
    }
    if !(1..=600).contains(&args.outage_secs) {
        bail!("--outage-secs {}: expected 1..=600", args.outage_secs);
    }
    if !(1..=600).contains(&args.partition_secs) {
        bail!("--partition-secs {}: expected 1..=600", args.partition_secs);
    }
    if !(5..=10_000).contains(&args.control_every_ms) {
        bail!(
            "--control-every-ms {}: expected 5..=10000",
            args.control_every_ms
        );
    }
    if !(0.0..=1000.0).contains(&args.trunk_delay_ms) {
        bail!(
            "--trunk-delay-ms {}: expected 0..=1000",
            args.trunk_delay_ms
        );
    }
    let _ = crate::turn::procfs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_async(&args))?;
    if let Some(p) = &args.plot {
        std::fs::write(p, svg(&report)).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", markdown(&report));
    }
    Ok(())
}

/// What the devices printed: sender identity → the `n` of each control, in arrival order.
type Printed = Arc<Mutex<HashMap<String, Vec<u64>>>>;

async fn run_async(args: &FailoverArgs) -> anyhow::Result<FailoverReport> {
    let spec = Spec {
        regions: vec!["eu".into(), "us".into(), "ap".into()],
        delays: DELAYS.iter().map(|r| r.to_vec()).collect(),
        meridian_bin: match &args.meridian_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        },
        cluster_extra: vec![],
        sfu_extra: vec![],
        log_level: "warn".into(),
        trunk_delay_ms: Some(args.trunk_delay_ms),
    };
    let mut cluster = Cluster::start(&spec).await?;
    let printed: Printed = Arc::default();
    let mut devices = Vec::new();
    for d in 0..args.devices {
        devices.push(start_device(&cluster, d, &printed).await?);
    }
    // Each group's ranking, measured once through the shims from the group's address.
    let listing = http_get_json(&cluster.regions[0].direct_url(), "/v1/regions").await?;
    let mut known: Vec<Vec<Known>> = Vec::new();
    for g in 0..3 {
        let m = probe::measure_from(&listing, Some(group_ip(g)), Until::All).await;
        if m.len() < 3 {
            bail!("group {g} measured {} of 3 regions", m.len());
        }
        known.push(
            m.into_iter()
                .filter_map(|m| {
                    let url = m.signaling.clone()?;
                    Some(Known {
                        node: url.clone(),
                        region: m.region,
                        signaling: url,
                        rtt_ms: Some(m.rtt_ms),
                    })
                })
                .collect(),
        );
    }
    for (g, k) in known.iter().enumerate().skip(1) {
        let want = &cluster.regions[g].region;
        if k.first().map(|k| &k.region) != Some(want) {
            bail!(
                "group {g} measured {:?} nearest, not {want}",
                k.first().map(|k| &k.region)
            );
        }
    }
    let total = args.drills.len() * args.repeat;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut drills = Vec::new();
    let mut n = 0usize;
    for drill in &args.drills {
        bar.set_prefix(drill.clone());
        let mut reps = Vec::new();
        for k in 0..args.repeat {
            let tag = format!("{drill}{k}");
            let rep = match drill.as_str() {
                "kill" => kill_rep(args, &mut cluster, &known, &printed, &tag).await,
                "drain" => drain_rep(args, &mut cluster, &known, &printed, &tag).await,
                "partition" => partition_rep(args, &mut cluster, &known, &printed, &tag).await,
                _ => directory_rep(args, &mut cluster, &known, &printed, &tag).await,
            }
            .with_context(|| format!("{drill} drill, repetition {}", k + 1))?;
            bar.set_message(format!(
                "gap max {:.0} ms, recovered {}/{}, lost {}, dup {}",
                rep.gaps_ms.iter().copied().fold(0.0, f64::max),
                rep.recovered,
                rep.affected,
                rep.acked_lost,
                rep.duplicated
            ));
            reps.push(rep);
            n += 1;
            bar.set_position(n as u64);
        }
        drills.push(summarize(drill, reps));
    }
    bar.finish_and_clear();
    for d in devices.iter_mut() {
        let _ = d.start_kill();
    }
    Ok(FailoverReport {
        players: args.players,
        devices: args.devices,
        repeat: args.repeat,
        outage_secs: args.outage_secs,
        partition_secs: args.partition_secs,
        drills,
    })
}

/// A `meridian device` on eu for room `room-d`, its printed controls collected.
async fn start_device(
    cluster: &Cluster,
    d: usize,
    printed: &Printed,
) -> anyhow::Result<tokio::process::Child> {
    let room = format!("room-{d}");
    let name = format!("rig-{d}");
    let mut child = tokio::process::Command::new(&cluster.bin)
        .args([
            "device",
            "--url",
            &cluster.regions[0].direct_url(),
            "--room",
            &room,
            "--name",
            &name,
        ])
        .args(["--bitrate-kbps", "300", "--size", "160x90", "--no-measure"])
        .arg("--token")
        .arg(mint(&name, &room, Role::Device)?)
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
    let sink = Arc::clone(printed);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            if v["channel"] != "controls" {
                continue;
            }
            if let (Some(from), Some(n)) = (
                v["message"]["from"].as_str(),
                v["message"]["data"]["n"].as_u64(),
            ) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(from.to_string())
                    .or_default()
                    .push(n);
            }
        }
    });
    // Listed by every node before players come.
    for r in &cluster.regions {
        let url = r.direct_url();
        wait_until(Duration::from_secs(20), || async {
            http_get_json(&url, "/v1/rooms").await.is_ok_and(|v| {
                v["devices"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["device"] == name.as_str() && x["live"] == true)
                })
            })
        })
        .await
        .with_context(|| format!("{} never listed device {name} live", r.id))?;
    }
    Ok(child)
}

struct Running {
    group: usize,
    identity: String,
    progress: Arc<Progress>,
    task: tokio::task::JoinHandle<PlayerReport>,
}

/// Starts the players (alternating groups 1 and 2, spread over the rooms) and waits until
/// each receives media and has controls acknowledged.
async fn start_players(
    args: &FailoverArgs,
    known: &[Vec<Known>],
    tag: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Running>> {
    let mut out = Vec::new();
    for i in 0..args.players {
        let group = 1 + i % 2;
        let d = i % args.devices;
        let identity = format!("{tag}-p{i}");
        let progress = Arc::new(Progress::default());
        let opts = PlayerOptions {
            entry: known[group][0].signaling.clone(),
            token: mint(&identity, &format!("room-{d}"), Role::Player)?,
            watch: format!("rig-{d}"),
            known: known[group].clone(),
            controls: u64::MAX,
            control_every: Duration::from_millis(args.control_every_ms),
            silence: Duration::from_secs(1),
            run_for: Duration::from_secs(args.outage_secs.max(args.partition_secs) + 120),
            stop: Some(stop.clone()),
            done_after_frames: 0,
            local: Some(group_ip(group)),
            progress: Some(Arc::clone(&progress)),
        };
        out.push(Running {
            group,
            identity,
            progress,
            task: tokio::spawn(player::run(opts)),
        });
    }
    let all = wait_until(Duration::from_secs(30), || async {
        out.iter().all(|p| {
            p.progress.leg_frames.load(Ordering::Relaxed) >= 15
                && p.progress.acks.load(Ordering::Relaxed) >= 3
        })
    })
    .await;
    if all.is_err() {
        let slow: Vec<&Running> = out
            .iter()
            .filter(|p| {
                p.progress.leg_frames.load(Ordering::Relaxed) < 15
                    || p.progress.acks.load(Ordering::Relaxed) < 3
            })
            .collect();
        bail!(
            "{} of {} players did not get media and acknowledged controls within 30 s; {}",
            slow.len(),
            out.len(),
            stuck(&slow)
        );
    }
    Ok(out)
}

/// Why the first few stuck players are stuck: frames, acknowledgements, legs, last error.
fn stuck(players: &[&Running]) -> String {
    players
        .iter()
        .take(4)
        .map(|p| {
            let g = &p.progress;
            format!(
                "{}: {} frames in leg {}, {} acked, last: {}",
                p.identity,
                g.leg_frames.load(Ordering::Relaxed),
                g.legs.load(Ordering::Relaxed),
                g.acks.load(Ordering::Relaxed),
                g.last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_deref()
                    .unwrap_or("none")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Stops the players and checks their controls against what the devices printed.
async fn finish(
    players: Vec<Running>,
    stop: tokio::sync::watch::Sender<bool>,
    printed: &Printed,
    rep: &mut Rep,
) -> Vec<(usize, PlayerReport)> {
    let _ = stop.send(true);
    let mut reports = Vec::new();
    for p in players {
        if let Ok(r) = p.task.await {
            reports.push((p.group, p.identity, r));
        }
    }
    // The devices print what reached them; give the last acknowledged ones time to show.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let complete = {
            let got = printed.lock().unwrap_or_else(|e| e.into_inner());
            reports.iter().all(|(_, who, r)| {
                let seen = got.get(who).map_or(0, Vec::len);
                seen >= r.acks.len()
            })
        };
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = printed.lock().unwrap_or_else(|e| e.into_inner());
    for (_, who, r) in &reports {
        let seen = got.get(who).cloned().unwrap_or_default();
        let mut count: BTreeMap<u64, u64> = BTreeMap::new();
        for n in &seen {
            *count.entry(*n).or_default() += 1;
        }
        rep.sent += r.sent;
        rep.acked += r.acks.len() as u64;
        rep.acked_lost += r.acks.keys().filter(|id| !count.contains_key(id)).count() as u64;
        rep.duplicated += count.values().filter(|&&c| c > 1).count() as u64 + r.conflicting_acks;
    }
    drop(got);
    reports.into_iter().map(|(g, _, r)| (g, r)).collect()
}

async fn kill_rep(
    args: &FailoverArgs,
    cluster: &mut Cluster,
    known: &[Vec<Known>],
    printed: &Printed,
    tag: &str,
) -> anyhow::Result<Rep> {
    ensure_all_up(cluster).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let players = start_players(args, known, tag, &stop_rx).await?;
    let killed = 1; // us: the nearest region of group 1
    let t0 = Instant::now();
    cluster.regions[killed].kill();
    let dead = cluster.regions[killed].region.clone();
    // Detection: the survivors' listings drop it.
    let survivors: Vec<String> = [0usize, 2]
        .iter()
        .map(|&r| cluster.regions[r].direct_url())
        .collect();
    let detected = wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for u in &survivors {
            all &= regions_listed(u).await.is_some_and(|l| !l.contains(&dead));
        }
        all
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    let affected: Vec<usize> = (0..players.len())
        .filter(|&i| players[i].group == killed)
        .collect();
    let recovered = wait_until(Duration::from_secs(20), || async {
        affected.iter().all(|&i| {
            let p = &players[i].progress;
            p.legs.load(Ordering::Relaxed) >= 2 && p.leg_frames.load(Ordering::Relaxed) >= 5
        })
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    if recovered.is_none() {
        let slow: Vec<&Running> = affected.iter().map(|&i| &players[i]).collect();
        eprintln!(
            "{tag}: not every player recovered in 20 s: {}",
            stuck(&slow)
        );
    }
    // A little steady state after, for the controls sent across the re-home to settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rep = Rep {
        detection_ms: detected.map(ms),
        steady_ms: recovered.map(ms),
        affected: affected.len(),
        ..Rep::default()
    };
    let reports = finish(players, stop_tx, printed, &mut rep).await;
    for (group, r) in &reports {
        if r.legs.len() > 1 {
            rep.rehomed += 1;
        }
        if *group == killed {
            if r.gaps.len() == 1 && r.unrecovered == 0 {
                rep.recovered += 1;
            }
            rep.gaps_ms.extend(r.gaps.iter().map(|g| ms(*g)));
        }
    }
    Ok(rep)
}

/// The shims cut us (group 1's nearest) off for `--partition-secs`, then heal. Its players'
/// media and signaling stop without a close; each notices the silence, re-homes on its next
/// region, and its gap is measured as in `kill`.
async fn partition_rep(
    args: &FailoverArgs,
    cluster: &mut Cluster,
    known: &[Vec<Known>],
    printed: &Printed,
    tag: &str,
) -> anyhow::Result<Rep> {
    ensure_all_up(cluster).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let players = start_players(args, known, tag, &stop_rx).await?;
    let cut = 1;
    let affected: Vec<usize> = (0..players.len())
        .filter(|&i| players[i].group == cut)
        .collect();
    let t0 = Instant::now();
    cluster.partition(cut);
    // Detection: every affected player gave up its leg on the cut node.
    let detected = wait_until(Duration::from_secs(10), || async {
        affected
            .iter()
            .all(|&i| players[i].progress.ended.load(Ordering::Relaxed) >= 1)
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    let recovered = wait_until(Duration::from_secs(20), || async {
        affected.iter().all(|&i| {
            let p = &players[i].progress;
            p.legs.load(Ordering::Relaxed) >= 2 && p.leg_frames.load(Ordering::Relaxed) >= 5
        })
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    if recovered.is_none() {
        let slow: Vec<&Running> = affected.iter().map(|&i| &players[i]).collect();
        eprintln!(
            "{tag}: not every player recovered in 20 s: {}",
            stuck(&slow)
        );
    }
    let held = Duration::from_secs(args.partition_secs);
    tokio::time::sleep(held.saturating_sub(t0.elapsed())).await;
    cluster.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rep = Rep {
        detection_ms: detected.map(ms),
        steady_ms: recovered.map(ms),
        affected: affected.len(),
        ..Rep::default()
    };
    let reports = finish(players, stop_tx, printed, &mut rep).await;
    for (group, r) in &reports {
        if r.legs.len() > 1 {
            rep.rehomed += 1;
        }
        if *group == cut {
            if r.gaps.len() == 1 && r.unrecovered == 0 {
                rep.recovered += 1;
            }
            rep.gaps_ms.extend(r.gaps.iter().map(|g| ms(*g)));
        }
    }
    Ok(rep)
}

/// SIGTERM of us (group 1's nearest): its players are told to move, and each joins its next
/// region beside its current leg and switches once media flows there. The gap is from the
/// last frame of the old leg to the first after the switch, or the longest frame interval in
/// the new leg's first second when that is longer.
async fn drain_rep(
    args: &FailoverArgs,
    cluster: &mut Cluster,
    known: &[Vec<Known>],
    printed: &Printed,
    tag: &str,
) -> anyhow::Result<Rep> {
    ensure_all_up(cluster).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let players = start_players(args, known, tag, &stop_rx).await?;
    let drained = 1;
    let t0 = Instant::now();
    cluster.regions[drained].terminate();
    let gone = cluster.regions[drained].region.clone();
    // Detection: the others stop offering it (a draining node is not listed).
    let others: Vec<String> = [0usize, 2]
        .iter()
        .map(|&r| cluster.regions[r].direct_url())
        .collect();
    let detected = wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for u in &others {
            all &= regions_listed(u).await.is_some_and(|l| !l.contains(&gone));
        }
        all
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    let affected: Vec<usize> = (0..players.len())
        .filter(|&i| players[i].group == drained)
        .collect();
    // Steady: every affected player moved and receives on its new node, and the drained
    // node exited (its last session left).
    let region = &mut cluster.regions[drained];
    let mut status = None;
    let steady = wait_until(Duration::from_secs(20), || {
        if status.is_none() {
            status = region.exited();
        }
        let exited = status.is_some();
        let moved = affected.iter().all(|&i| {
            let p = &players[i].progress;
            p.legs.load(Ordering::Relaxed) >= 2 && p.leg_frames.load(Ordering::Relaxed) >= 5
        });
        async move { exited && moved }
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    if let Some(s) = status.filter(|s| !s.success()) {
        bail!("the drained node exited with {s}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rep = Rep {
        detection_ms: detected.map(ms),
        steady_ms: steady.map(ms),
        affected: affected.len(),
        ..Rep::default()
    };
    let reports = finish(players, stop_tx, printed, &mut rep).await;
    for (group, r) in &reports {
        if r.legs.len() > 1 {
            rep.rehomed += 1;
        }
        if *group != drained {
            continue;
        }
        if r.moves == 1 && r.gaps.is_empty() && r.unrecovered == 0 {
            rep.recovered += 1;
        }
        // The switch, and the new leg's first second.
        let moved = r.legs.iter().position(|l| l.ended.starts_with("moved"));
        if let (Some(i), Some(g)) = (moved, r.move_gaps.first()) {
            let after = r.legs.get(i + 1);
            let settle = after
                .and_then(|l| {
                    let first = l.first_frame?;
                    l.stalls
                        .iter()
                        .filter(|(t, _)| *t <= first + Duration::from_secs(1))
                        .map(|(_, d)| *d)
                        .max()
                })
                .unwrap_or_default();
            rep.gaps_ms.push(ms((*g).max(settle)));
        }
        rep.gaps_ms.extend(r.gaps.iter().map(|g| ms(*g)));
    }
    Ok(rep)
}

async fn directory_rep(
    args: &FailoverArgs,
    cluster: &mut Cluster,
    known: &[Vec<Known>],
    printed: &Printed,
    tag: &str,
) -> anyhow::Result<Rep> {
    ensure_all_up(cluster).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let players = start_players(args, known, tag, &stop_rx).await?;
    // The baseline: the same players, the same length of time, no drill.
    let window = Duration::from_secs(args.outage_secs.min(10));
    tokio::time::sleep(window).await;
    let t0 = Instant::now();
    cluster.redis.stop();
    let admins: Vec<_> = cluster.regions.iter().filter_map(|r| r.admin).collect();
    let detected = wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for a in &admins {
            all &= directory_up(*a).await == Some(false);
        }
        all
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    tokio::time::sleep(Duration::from_secs(args.outage_secs)).await;
    if !cluster.redis.restart() {
        bail!("redis-server did not restart");
    }
    let back = Instant::now();
    let want = cluster.regions.len();
    let urls: Vec<String> = cluster.regions.iter().map(|r| r.direct_url()).collect();
    let steady = wait_until(Duration::from_secs(20), || async {
        let mut all = true;
        for a in &admins {
            all &= directory_up(*a).await == Some(true);
        }
        for u in &urls {
            all &= regions_listed(u).await.is_some_and(|l| l.len() == want);
        }
        all
    })
    .await
    .ok()
    .map(|()| back.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rep = Rep {
        detection_ms: detected.map(ms),
        steady_ms: steady.map(ms),
        affected: players.len(),
        ..Rep::default()
    };
    let reports = finish(players, stop_tx, printed, &mut rep).await;
    // The outage's window: from the stop, as long as the baseline (the rest of the outage
    // and the return are in the steady-state figure and the re-home count).
    let longest_in = |r: &PlayerReport, from: Instant, to: Instant| {
        r.legs
            .iter()
            .flat_map(|l| l.stalls.iter())
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(Duration::from_millis(100))
    };
    for (_, r) in &reports {
        if r.legs.len() > 1 || r.unrecovered > 0 {
            rep.rehomed += 1;
        } else {
            rep.recovered += 1;
        }
        rep.gaps_ms.push(ms(longest_in(r, t0, t0 + window)));
        rep.baseline_ms.push(ms(longest_in(r, t0 - window, t0)));
    }
    Ok(rep)
}

/// The `meridian_directory_up` gauge of a node's admin listener.
async fn directory_up(admin: std::net::SocketAddr) -> Option<bool> {
    let text = crate::client::signal::admin_metrics(admin).await?;
    text.lines()
        .find(|l| l.starts_with("meridian_directory_up"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v > 0.5)
}

/// Restarts a killed node and waits until every node lists every region.
async fn ensure_all_up(cluster: &mut Cluster) -> anyhow::Result<()> {
    let bin = cluster.bin.clone();
    for r in cluster.regions.iter_mut() {
        if r.pid().is_none() {
            r.start(&bin)?;
        }
    }
    let want = cluster.regions.len();
    for r in &cluster.regions {
        let url = r.direct_url();
        wait_until(Duration::from_secs(20), || async {
            regions_listed(&url).await.is_some_and(|l| l.len() == want)
        })
        .await
        .with_context(|| format!("node {} did not list all {want} regions", r.id))?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

fn summarize(drill: &str, reps: Vec<Rep>) -> Drill {
    let gaps = sorted(reps.iter().flat_map(|r| r.gaps_ms.iter().copied()));
    let base = sorted(reps.iter().flat_map(|r| r.baseline_ms.iter().copied()));
    let det = sorted(reps.iter().filter_map(|r| r.detection_ms));
    let steady = sorted(reps.iter().filter_map(|r| r.steady_ms));
    Drill {
        drill: drill.to_string(),
        detection_ms_p50: quantile(&det, 0.5),
        detection_ms_max: det.last().copied(),
        gap_ms_p50: quantile(&gaps, 0.5),
        gap_ms_p99: quantile(&gaps, 0.99),
        gap_ms_max: gaps.last().copied(),
        baseline_ms_p50: quantile(&base, 0.5),
        baseline_ms_p99: quantile(&base, 0.99),
        baseline_ms_max: base.last().copied(),
        affected: reps.iter().map(|r| r.affected).sum(),
        recovered: reps.iter().map(|r| r.recovered).sum(),
        rehomed: reps.iter().map(|r| r.rehomed).sum(),
        steady_ms_p50: quantile(&steady, 0.5),
        steady_ms_max: steady.last().copied(),
        sent: reps.iter().map(|r| r.sent).sum(),
        acked: reps.iter().map(|r| r.acked).sum(),
        acked_lost: reps.iter().map(|r| r.acked_lost).sum(),
        duplicated: reps.iter().map(|r| r.duplicated).sum(),
        reps,
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

pub fn markdown(r: &FailoverReport) -> String {
    let mut s = format!(
        "failover: {} players, {} devices, {} repetitions per drill{}\n\n\
         | drill | detection ms p50 / max | media gap ms p50 / p99 / max | recovered | re-homed | steady ms p50 / max | acked | lost | duplicated |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        r.players,
        r.devices,
        r.repeat,
        [
            ("directory", format!(", Redis down {} s", r.outage_secs)),
            ("partition", format!(", us cut off {} s", r.partition_secs)),
        ]
        .into_iter()
        .filter(|(d, _)| r.drills.iter().any(|x| x.drill == *d))
        .map(|(_, t)| t)
        .collect::<String>()
    );
    for d in &r.drills {
        s += &format!(
            "| {} | {} / {} | {} / {} / {} | {}/{} | {} | {} / {} | {} | {} | {} |\n",
            d.drill,
            fmt(d.detection_ms_p50),
            fmt(d.detection_ms_max),
            fmt(d.gap_ms_p50),
            fmt(d.gap_ms_p99),
            fmt(d.gap_ms_max),
            d.recovered,
            d.affected,
            d.rehomed,
            fmt(d.steady_ms_p50),
            fmt(d.steady_ms_max),
            d.acked,
            d.acked_lost,
            d.duplicated
        );
    }
    for d in r.drills.iter().filter(|d| d.drill == "directory") {
        s += &format!(
            "\ndirectory baseline (same players, same window length, before Redis stopped): longest time between frames p50 / p99 / max {} / {} / {} ms\n",
            fmt(d.baseline_ms_p50),
            fmt(d.baseline_ms_p99),
            fmt(d.baseline_ms_max)
        );
    }
    s += "\nkill: gap = last frame before → first frame after the re-home, per player on the killed node.\n\
          drain: gap = last frame from the drained node → first from the next, or the longest frame interval in the new\n\
          leg's first second when longer, per player on the drained node (moved make-before-break).\n\
          partition: gap as in kill, per player on the cut-off node (its media and signaling stop without a close).\n\
          directory: gap = each player's longest time between two frames in the first min(outage, 10 s) of the outage\n\
          (100 when none was over 100 ms); no re-home is expected (one counts as a dropped session).\n";
    s
}

/// The gap distribution per drill as an SVG: one cumulative curve per drill.
pub fn svg(r: &FailoverReport) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let max = r
        .drills
        .iter()
        .flat_map(|d| d.reps.iter().flat_map(|x| x.gaps_ms.iter().copied()))
        .fold(1.0f64, f64::max);
    let xmax = (max * 1.1).max(10.0);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\">media gap per session (CDF), {} players × {} repetitions</text>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        w / 2.0,
        r.players,
        r.repeat,
        h - m,
        w - m,
        h - m,
        h - m
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let x = m + f * (w - 2.0 * m);
        let y = h - m - f * (h - 2.0 * m);
        s += &format!(
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0} ms</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
            h - m + 16.0,
            f * xmax,
            m - 4.0,
            y + 4.0,
            f * 100.0
        );
    }
    for (i, d) in r.drills.iter().enumerate() {
        let gaps = sorted(d.reps.iter().flat_map(|x| x.gaps_ms.iter().copied()));
        let color = colors[i % colors.len()];
        let n = gaps.len().max(1) as f64;
        let pts: Vec<String> = gaps
            .iter()
            .enumerate()
            .map(|(k, g)| {
                let x = m + g / xmax * (w - 2.0 * m);
                let y = h - m - (k as f64 + 1.0) / n * (h - 2.0 * m);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        if !pts.is_empty() {
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            );
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{} (n={}, p99 {} ms)</text>\n",
            w - m - 200.0,
            m + 16.0 * (i as f64 + 1.0),
            d.drill,
            gaps.len(),
            fmt(d.gap_ms_p99)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(gaps: &[f64], lost: u64) -> Rep {
        Rep {
            detection_ms: Some(900.0),
            affected: gaps.len(),
            recovered: gaps.len(),
            gaps_ms: gaps.to_vec(),
            steady_ms: Some(1200.0),
            acked: 10,
            acked_lost: lost,
            ..Rep::default()
        }
    }

    #[test]
    fn a_drill_summary_takes_quantiles_over_every_session_of_every_repetition() {
        let d = summarize(
            "kill",
            vec![rep(&[100.0, 300.0], 0), rep(&[200.0, 900.0], 1)],
        );
        assert_eq!(d.gap_ms_p50, Some(300.0));
        assert_eq!(d.gap_ms_max, Some(900.0));
        assert_eq!(
            (d.affected, d.recovered, d.acked, d.acked_lost),
            (4, 4, 20, 1)
        );
        let empty = summarize("kill", vec![]);
        assert_eq!(empty.gap_ms_p99, None);
        let r = FailoverReport {
            players: 2,
            devices: 1,
            repeat: 2,
            outage_secs: 3,
            partition_secs: 3,
            drills: vec![d],
        };
        let table = markdown(&r);
        assert!(
            table.contains("| kill | 900 / 900 | 300 / 900 / 900 | 4/4 |"),
            "{table}"
        );
        let plot = svg(&r);
        assert!(
            plot.starts_with("<svg") && plot.contains("polyline") && plot.contains("kill (n=4"),
            "{plot}"
        );
    }
}
