//! `meridian bench route`: a 3-region cluster on loopback (real `redis-server`, a node per
//! region, a delay shim per region placing each client group at its own distance from each
//! region), a device per group publishing, and N players per group that each measure the
//! regions, join, and wait for the first media packet — beside players of the same groups
//! that join their nearest region directly, in the same run. Reports where each session was
//! placed against the truly nearest region, and what measuring and redirecting cost on the
//! way to media.
//!
//! `meridian bench directory` (in [`directory`]) measures the directory's Redis load and
//! dead-node detection on the same cluster.

pub mod cluster;
pub mod directory;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::probe::{self, JoinOptions};
use crate::client::signal::Signal;
use crate::sfu::peer;
use cluster::{group_ip, mint, Cluster, Spec};
use meridian_signaling::token::Role;

pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

#[derive(clap::Args, Debug, Clone)]
pub struct RouteArgs {
    /// Players per client group that measure and are routed.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Players per client group that join their nearest region directly (the baseline).
    #[arg(long, default_value_t = 30)]
    pub direct: usize,
    /// Round-trip times from a client group to its own region, the next and the farthest, ms
    /// (group g is nearest to region g; the others follow in a ring).
    #[arg(long, default_value = "20,90,180", value_parser = parse_rtts)]
    pub rtt_ms: Vec3,
    /// The node a routed client asks first: a random region's, its nearest's (as GeoDNS or
    /// anycast would give), its farthest's, or none (`cached`: the client already has the
    /// region list, from an earlier visit or shipped with the application).
    #[arg(long, default_value = "random", value_parser = ["random", "nearest", "farthest", "cached"])]
    pub entry: String,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 12)]
    pub concurrency: usize,
    /// Devices per client group for each kind of player (routed, direct); players take them
    /// in turn, so fewer new subscribers share one device's keyframe requests.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Each device's video bitrate, kbit/s.
    #[arg(long, default_value_t = 300)]
    pub bitrate_kbps: u64,
    /// The meridian binary to start (default: this one).
    #[arg(long)]
    pub meridian_bin: Option<PathBuf>,
    /// Print the report (summary and every session) as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Three round-trip times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vec3(pub [f64; 3]);

fn parse_rtts(s: &str) -> Result<Vec3, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let [a, b, c] = v[..] else {
        return Err(format!("{s:?}: expected three RTTs in ms, e.g. 20,90,180"));
    };
    if [a, b, c]
        .iter()
        .any(|x| !x.is_finite() || !(0.0..=10_000.0).contains(x))
    {
        return Err(format!("{s:?}: each RTT must be 0..=10000 ms"));
    }
    Ok(Vec3([a, b, c]))
}

/// `rtt[g][r]`: the emulated RTT between client group g and region r.
pub fn rtt_matrix(rtts: Vec3) -> Vec<Vec<f64>> {
    (0..3)
        .map(|g| (0..3).map(|r| rtts.0[(r + 3 - g) % 3]).collect())
        .collect()
}

/// One player session.
#[derive(Serialize, Debug, Clone)]
pub struct Session {
    pub group: String,
    /// routed or direct.
    pub mode: String,
    /// The region first asked (none for direct and cached).
    pub entry: Option<String>,
    pub chosen: Option<String>,
    pub nearest: String,
    /// The RTT the client measured to the region it was placed on.
    pub measured_rtt_ms: Option<f64>,
    pub emulated_rtt_ms: Option<f64>,
    pub regions_ms: f64,
    pub measure_ms: f64,
    /// From the first request to the `joined` reply.
    pub joined_ms: Option<f64>,
    /// From the first request to the SDP answer (subscribe and offer answered).
    pub answered_ms: Option<f64>,
    /// From the first request to ICE + DTLS connected.
    pub connected_ms: Option<f64>,
    /// From the first request to the first media packet.
    pub to_media_ms: Option<f64>,
    pub redirects: u32,
    pub reason: Option<String>,
    pub error: Option<String>,
}

/// Per client group.
#[derive(Serialize, Debug, Clone)]
pub struct GroupSummary {
    pub group: String,
    pub nearest: String,
    pub nearest_rtt_ms: f64,
    pub routed: usize,
    pub failed: usize,
    pub on_nearest: usize,
    pub on_nearest_pct: f64,
    pub measured_rtt_ms_p50: Option<f64>,
    pub routed_to_media_ms_p50: Option<f64>,
    pub routed_to_media_ms_p99: Option<f64>,
    pub direct_to_media_ms_p50: Option<f64>,
    pub direct_to_media_ms_p99: Option<f64>,
    /// Median routed minus median direct.
    pub added_ms_p50: Option<f64>,
    /// 1 × the RTT to the nearest region + 50 ms.
    pub budget_ms: f64,
    pub redirects: u32,
}

/// Reads the time to one step from a session.
type StepTime = fn(&Session) -> Option<f64>;

/// Time from the first request to one step of a join, over every group's players of a mode.
#[derive(Serialize, Debug, Clone)]
pub struct Step {
    pub mode: String,
    /// regions, measured, joined, answered, connected, media.
    pub step: String,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct RouteReport {
    pub entry: String,
    pub rtt_ms: [f64; 3],
    pub groups: Vec<GroupSummary>,
    /// Where the time to media goes, per mode (p50 and p99 of the time to each step).
    pub steps: Vec<Step>,
    pub devices: Vec<Session>,
    pub sessions: Vec<Session>,
    pub on_nearest_pct: f64,
    pub added_within_budget: bool,
}

pub fn run(args: RouteArgs) -> anyhow::Result<()> {
    if args.clients == 0 && args.direct == 0 {
        bail!("--clients and --direct are both 0: nothing to measure");
    }
    if args.concurrency == 0 || args.concurrency > 256 {
        bail!("--concurrency {}: expected 1..=256", args.concurrency);
    }
    if !(1..=32).contains(&args.devices) {
        bail!("--devices {}: expected 1..=32", args.devices);
    }
    if !(50..=20_000).contains(&args.bitrate_kbps) {
        bail!("--bitrate-kbps {}: expected 50..=20000", args.bitrate_kbps);
    }
    let m = rtt_matrix(args.rtt_ms);
    let mut sorted = args.rtt_ms.0;
    sorted.sort_by(f64::total_cmp);
    if sorted[1] - sorted[0] < 10.0 {
        eprintln!("note: the two nearest RTTs differ by less than 10 ms; placement on the nearest is then not expected every time");
    }
    let _ = crate::turn::procfs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_async(&args, &m))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", markdown(&report));
    }
    Ok(())
}

fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    Some(v[i.min(v.len() - 1)])
}

fn meridian_bin(arg: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match arg {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    })
}

async fn run_async(args: &RouteArgs, m: &[Vec<f64>]) -> anyhow::Result<RouteReport> {
    let spec = Spec {
        regions: REGIONS.iter().map(|s| s.to_string()).collect(),
        delays: m
            .iter()
            .map(|row| row.iter().map(|rtt| rtt / 2.0).collect())
            .collect(),
        meridian_bin: meridian_bin(&args.meridian_bin)?,
        cluster_extra: vec![],
        // A new subscriber's keyframe request goes out within 100 ms (the least allowed), so
        // time to media measures the path more than the keyframe cadence.
        sfu_extra: vec!["keyframe_interval_ms = 100".into()],
        log_level: "warn".into(),
        trunk_delay_ms: None,
    };
    eprintln!("starting redis-server, 3 nodes and their delay shims ...");
    let cluster = Arc::new(Cluster::start(&spec).await?);
    let cached = if args.entry == "cached" {
        Some(
            crate::client::signal::http_get_json(&cluster.regions[0].direct_url(), "/v1/regions")
                .await?,
        )
    } else {
        None
    };
    let shared = peer::Shared::new();

    // Two devices per group (one watched by routed players, one by direct ones, so their
    // keyframe requests do not wait on each other), each placed by its own measurement,
    // entering at a random region.
    let mut devices = Vec::new();
    let mut tracks = Vec::new();
    let mut pubs = Vec::new();
    let k = args.devices;
    for d in 0..6 * k {
        // d = (kind × k + j) × 3 + g: routed kinds first.
        let g = d % 3;
        let routed = d / 3 / k == 0;
        let room = room_of(g, routed, d / 3 % k);
        let token = mint(&format!("device-{d}"), &room, Role::Device)?;
        let entry = rand::random_range(0..3usize);
        let t0 = Instant::now();
        let opts = JoinOptions {
            measure: true,
            nearest_only: true,
            local: Some(group_ip(g)),
            regions: cached.clone(),
            ..JoinOptions::default()
        };
        let routed = probe::join_measured(&cluster.regions[entry].url(), &token, &opts)
            .await
            .with_context(|| format!("device of group {}", REGIONS[g]))?;
        let at = cluster
            .region_of(&routed.base)
            .ok_or_else(|| anyhow!("device placed on an unknown node {}", routed.base))?;
        let mut s = session(&cluster, m, g, "routed", Some(entry), &routed);
        let (track, task) = peer::publisher_on(
            routed.signal,
            cluster.regions[at].sfu_addr(),
            Some(group_ip(g)),
            args.bitrate_kbps * 1000,
            1100,
            shared.clone(),
        )
        .await
        .with_context(|| format!("device of group {} publishing", REGIONS[g]))?;
        s.to_media_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        devices.push(s);
        tracks.push(track);
        pubs.push(task);
    }

    // The players: routed and direct interleaved, so both see the same load.
    let mut jobs = Vec::new();
    for i in 0..args.clients.max(args.direct) {
        for g in 0..3 {
            if i < args.clients {
                jobs.push((g, true, i));
            }
            if i < args.direct {
                jobs.push((g, false, i));
            }
        }
    }
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  players [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::new();
    for (g, routed, i) in jobs {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let cluster = Arc::clone(&cluster);
        let j = i % k;
        let track = tracks[(if routed { j } else { k + j }) * 3 + g].clone();
        let shared = shared.clone();
        let cached = cached.clone();
        let entry_mode = args.entry.clone();
        let m = m.to_vec();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let s = player(
                &cluster,
                &m,
                g,
                routed,
                i,
                k,
                &entry_mode,
                cached,
                track,
                shared,
            )
            .await;
            bar.inc(1);
            drop(permit);
            s
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await?);
    }
    bar.finish_and_clear();
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pubs {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    Ok(summarize(args, m, devices, sessions))
}

/// The room of group `g`'s routed or direct players.
fn room_of(g: usize, routed: bool, j: usize) -> String {
    format!(
        "route-{}-{}-{j}",
        REGIONS[g],
        if routed { "routed" } else { "direct" }
    )
}

/// The record of a routed join.
fn session(
    cluster: &Cluster,
    m: &[Vec<f64>],
    g: usize,
    mode: &str,
    entry: Option<usize>,
    routed: &probe::Routed,
) -> Session {
    let at = cluster.region_of(&routed.base);
    let chosen = at.map(|r| REGIONS[r].to_string());
    Session {
        group: REGIONS[g].into(),
        mode: mode.into(),
        entry: entry.map(|e| REGIONS[e].to_string()),
        measured_rtt_ms: chosen.as_ref().and_then(|c| {
            routed
                .measured
                .iter()
                .find(|x| &x.region == c)
                .map(|x| x.rtt_ms)
        }),
        emulated_rtt_ms: at.map(|r| m[g][r]),
        chosen,
        nearest: REGIONS[g].into(),
        regions_ms: routed.regions_time.as_secs_f64() * 1e3,
        measure_ms: routed.measure_time.as_secs_f64() * 1e3,
        joined_ms: None,
        answered_ms: None,
        connected_ms: None,
        to_media_ms: None,
        redirects: routed.redirects,
        reason: routed.signal.joined["route"]["reason"]
            .as_str()
            .map(str::to_string),
        error: None,
    }
}

/// How long a player may take from its first request to media.
const PLAYER_TIMEOUT: Duration = Duration::from_secs(20);

#[allow(clippy::too_many_arguments)]
async fn player(
    cluster: &Cluster,
    m: &[Vec<f64>],
    g: usize,
    routed: bool,
    i: usize,
    devices: usize,
    entry_mode: &str,
    cached: Option<Value>,
    track: String,
    shared: Arc<peer::Shared>,
) -> Session {
    let mode = if routed { "routed" } else { "direct" };
    let token = match mint(
        &format!("{mode}-{g}-{i}"),
        &room_of(g, routed, i % devices),
        Role::Player,
    ) {
        Ok(t) => t,
        Err(e) => return failed(g, mode, None, e),
    };
    let far = (0..3)
        .max_by(|&a, &b| m[g][a].total_cmp(&m[g][b]))
        .unwrap_or(g);
    let entry = match (routed, entry_mode) {
        (false, _) | (true, "cached") => None,
        (true, "nearest") => Some(g),
        (true, "farthest") => Some(far),
        _ => Some(rand::random_range(0..3usize)),
    };
    let t0 = Instant::now();
    let run = async {
        let (mut s, signal) = if routed {
            let opts = JoinOptions {
                measure: true,
                nearest_only: true,
                local: Some(group_ip(g)),
                regions: cached,
                ..JoinOptions::default()
            };
            // With a cached list the client asks no entry: it joins the one it measured best.
            let start = cluster.regions[entry.unwrap_or(g)].url();
            let r = probe::join_measured(&start, &token, &opts).await?;
            let s = session(cluster, m, g, mode, entry, &r);
            (s, r.signal)
        } else {
            let join = json!({"type": "join", "v": 1, "token": token});
            let (signal, base, redirects) =
                Signal::join_routed_on(&cluster.regions[g].url(), join, None, Some(group_ip(g)))
                    .await?;
            let at = cluster.region_of(&base);
            let s = Session {
                group: REGIONS[g].into(),
                mode: mode.into(),
                entry: None,
                chosen: at.map(|r| REGIONS[r].to_string()),
                nearest: REGIONS[g].into(),
                measured_rtt_ms: None,
                emulated_rtt_ms: at.map(|r| m[g][r]),
                regions_ms: 0.0,
                measure_ms: 0.0,
                joined_ms: None,
                answered_ms: None,
                connected_ms: None,
                to_media_ms: None,
                redirects,
                reason: signal.joined["route"]["reason"]
                    .as_str()
                    .map(str::to_string),
                error: None,
            };
            (s, signal)
        };
        s.joined_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        let at = cluster
            .region_of(&s.chosen_base(cluster))
            .ok_or_else(|| anyhow!("placed on an unknown node"))?;
        let res = peer::subscriber_on(
            signal,
            cluster.regions[at].sfu_addr(),
            Some(group_ip(g)),
            track,
            shared,
            t0,
            true,
        )
        .await?;
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        s.answered_ms = ms(res.answered);
        s.connected_ms = ms(res.connected);
        s.to_media_ms = ms(res.first_frame);
        if s.to_media_ms.is_none() {
            s.error = Some("no media".into());
        }
        anyhow::Ok(s)
    };
    match tokio::time::timeout(PLAYER_TIMEOUT, run).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => failed(g, mode, entry, e),
        Err(_) => failed(
            g,
            mode,
            entry,
            anyhow!("no media within {PLAYER_TIMEOUT:?}"),
        ),
    }
}

impl Session {
    /// The signaling URL of the region it was placed on.
    fn chosen_base(&self, cluster: &Cluster) -> String {
        self.chosen
            .as_ref()
            .and_then(|c| REGIONS.iter().position(|r| r == c))
            .map(|r| cluster.regions[r].url())
            .unwrap_or_default()
    }
}

fn failed(g: usize, mode: &str, entry: Option<usize>, e: anyhow::Error) -> Session {
    Session {
        group: REGIONS[g].into(),
        mode: mode.into(),
        entry: entry.map(|e| REGIONS[e].to_string()),
        chosen: None,
        nearest: REGIONS[g].into(),
        measured_rtt_ms: None,
        emulated_rtt_ms: None,
        regions_ms: 0.0,
        measure_ms: 0.0,
        joined_ms: None,
        answered_ms: None,
        connected_ms: None,
        to_media_ms: None,
        redirects: 0,
        reason: None,
        error: Some(format!("{e:#}")),
    }
}

fn summarize(
    args: &RouteArgs,
    m: &[Vec<f64>],
    devices: Vec<Session>,
    sessions: Vec<Session>,
) -> RouteReport {
    let mut groups = Vec::new();
    for (g, name) in REGIONS.iter().enumerate() {
        let routed: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.group == *name && s.mode == "routed")
            .collect();
        let direct: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.group == *name && s.mode == "direct")
            .collect();
        let ok: Vec<&&Session> = routed.iter().filter(|s| s.error.is_none()).collect();
        let on_nearest = ok
            .iter()
            .filter(|s| s.chosen.as_deref() == Some(*name))
            .count();
        let times =
            |v: &[&Session]| -> Vec<f64> { v.iter().filter_map(|s| s.to_media_ms).collect() };
        let rt = times(&routed);
        let dt = times(&direct);
        let (r50, d50) = (percentile(&rt, 0.5), percentile(&dt, 0.5));
        groups.push(GroupSummary {
            group: name.to_string(),
            nearest: name.to_string(),
            nearest_rtt_ms: m[g][g],
            routed: routed.len(),
            failed: routed.len() - ok.len(),
            on_nearest,
            on_nearest_pct: if routed.is_empty() {
                0.0
            } else {
                100.0 * on_nearest as f64 / routed.len() as f64
            },
            measured_rtt_ms_p50: percentile(
                &ok.iter()
                    .filter_map(|s| s.measured_rtt_ms)
                    .collect::<Vec<_>>(),
                0.5,
            ),
            routed_to_media_ms_p50: r50,
            routed_to_media_ms_p99: percentile(&rt, 0.99),
            direct_to_media_ms_p50: d50,
            direct_to_media_ms_p99: percentile(&dt, 0.99),
            added_ms_p50: r50.zip(d50).map(|(r, d)| r - d),
            budget_ms: m[g][g] + 50.0,
            redirects: routed.iter().map(|s| s.redirects).sum(),
        });
    }
    let mut steps = Vec::new();
    for mode in ["routed", "direct"] {
        let ok: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.mode == mode && s.error.is_none())
            .collect();
        let at: [(&str, StepTime); 6] = [
            ("regions", |s| Some(s.regions_ms)),
            ("measured", |s| Some(s.regions_ms + s.measure_ms)),
            ("joined", |s| s.joined_ms),
            ("answered", |s| s.answered_ms),
            ("connected", |s| s.connected_ms),
            ("media", |s| s.to_media_ms),
        ];
        for (step, get) in at {
            let v: Vec<f64> = ok.iter().filter_map(|s| get(s)).collect();
            steps.push(Step {
                mode: mode.into(),
                step: step.into(),
                p50_ms: percentile(&v, 0.5),
                p99_ms: percentile(&v, 0.99),
            });
        }
    }
    let routed_total: usize = groups.iter().map(|g| g.routed).sum();
    let on: usize = groups.iter().map(|g| g.on_nearest).sum();
    RouteReport {
        entry: args.entry.clone(),
        rtt_ms: args.rtt_ms.0,
        on_nearest_pct: if routed_total == 0 {
            0.0
        } else {
            100.0 * on as f64 / routed_total as f64
        },
        added_within_budget: groups
            .iter()
            .all(|g| g.added_ms_p50.is_some_and(|a| a <= g.budget_ms)),
        groups,
        steps,
        devices,
        sessions,
    }
}

fn f(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

pub fn markdown(r: &RouteReport) -> String {
    let mut s = format!(
        "bench route: 3 regions, client RTTs {}/{}/{} ms (own region / next / farthest), entry {}\n\n",
        r.rtt_ms[0], r.rtt_ms[1], r.rtt_ms[2], r.entry
    );
    s.push_str("| group | nearest (RTT) | routed | failed | on nearest | measured RTT p50 | to media routed p50/p99 ms | direct p50/p99 ms | added p50 ms | budget ms | redirects |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for g in &r.groups {
        s.push_str(&format!(
            "| {} | {} ({:.0} ms) | {} | {} | {} ({:.1} %) | {} | {}/{} | {}/{} | {} | {:.0} | {} |\n",
            g.group,
            g.nearest,
            g.nearest_rtt_ms,
            g.routed,
            g.failed,
            g.on_nearest,
            g.on_nearest_pct,
            g.measured_rtt_ms_p50.map_or("-".into(), |v| format!("{v:.1}")),
            f(g.routed_to_media_ms_p50),
            f(g.routed_to_media_ms_p99),
            f(g.direct_to_media_ms_p50),
            f(g.direct_to_media_ms_p99),
            f(g.added_ms_p50),
            g.budget_ms,
            g.redirects,
        ));
    }
    s.push_str("\nTime from the first request to each step, ms (p50 / p99, all groups):\n\n| mode | region list | measured | joined | SDP answer | ICE+DTLS connected | first media |\n|---|---|---|---|---|---|---|\n");
    for mode in ["routed", "direct"] {
        let cells: Vec<String> = r
            .steps
            .iter()
            .filter(|x| x.mode == mode)
            .map(|x| format!("{} / {}", f(x.p50_ms), f(x.p99_ms)))
            .collect();
        s.push_str(&format!("| {mode} | {} |\n", cells.join(" | ")));
    }
    s.push_str("\n| device | placed on | nearest | measured RTT ms | reason | to publishing ms |\n|---|---|---|---|---|---|\n");
    for d in &r.devices {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            d.group,
            d.chosen.as_deref().unwrap_or("-"),
            d.nearest,
            d.measured_rtt_ms.map_or("-".into(), |v| format!("{v:.1}")),
            d.reason.as_deref().unwrap_or("-"),
            f(d.to_media_ms),
        ));
    }
    let errors: Vec<&Session> = r.sessions.iter().filter(|s| s.error.is_some()).collect();
    if !errors.is_empty() {
        s.push_str(&format!(
            "\n{} session(s) failed, e.g.: {}\n",
            errors.len(),
            errors[0].error.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "\nrouted sessions on their nearest region: {:.1} %; measuring + routing within 1 × RTT + 50 ms of a direct join (medians): {}\n",
        r.on_nearest_pct,
        if r.added_within_budget { "yes" } else { "no" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtt_matrix_puts_each_group_nearest_its_own_region() {
        let m = rtt_matrix(Vec3([20.0, 90.0, 180.0]));
        assert_eq!(m[0], vec![20.0, 90.0, 180.0]);
        assert_eq!(m[1], vec![180.0, 20.0, 90.0]);
        assert_eq!(m[2], vec![90.0, 180.0, 20.0]);
    }

    #[test]
    fn rtts_parse_with_clear_errors() {
        assert_eq!(parse_rtts("1,2,3").unwrap(), Vec3([1.0, 2.0, 3.0]));
        assert!(parse_rtts("1,2").unwrap_err().contains("three RTTs"));
        assert!(parse_rtts("1,x,3").is_err());
        assert!(parse_rtts("1,-2,3").unwrap_err().contains("0..=10000"));
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.99), Some(3.0));
    }
}
