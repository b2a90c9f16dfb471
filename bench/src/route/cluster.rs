//! A 3-region cluster on loopback for the route and directory benches: one real
//! `redis-server`, one `meridian serve` per region on 127.0.N.1, and (optionally) a delay shim
//! per region on 127.0.N.2 (same ports) that the node advertises, with a one-way delay per
//! client group chosen by the client's source address (group g binds 127.0.(10+g).1).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meridian_geo::testing::RedisServer;

use crate::shim::{self, delay::Path, Cut, Paths};
use crate::turn::servers::TempDir;

pub use crate::client::signal::{mint, API_KEY, API_SECRET};

/// The source address clients of group `g` bind.
pub fn group_ip(g: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 10 + g as u8, 1))
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub regions: Vec<String>,
    /// `delays[g][r]`: one-way delay, ms, between client group g and region r (both ways).
    /// Empty: no shims, clients reach the nodes directly.
    pub delays: Vec<Vec<f64>>,
    pub meridian_bin: PathBuf,
    /// Extra lines in every node's `[cluster]` section.
    pub cluster_extra: Vec<String>,
    /// Extra lines in every node's `[sfu]` section.
    pub sfu_extra: Vec<String>,
    pub log_level: String,
    /// Run the trunk between the nodes, each one's behind a shim on 127.0.N.3 adding this
    /// one-way delay (ms) both ways (`None`: no trunk).
    pub trunk_delay_ms: Option<f64>,
}

/// One region's node.
pub struct Region {
    pub region: String,
    pub id: String,
    pub node_ip: IpAddr,
    /// Where clients reach it: the shim when there is one, else the node itself.
    pub public_ip: IpAddr,
    pub http: u16,
    pub turn: u16,
    pub sfu: u16,
    pub admin: Option<SocketAddr>,
    /// Where other nodes reach its trunk (the trunk shim), when there is one.
    pub trunk: Option<SocketAddr>,
    /// The partition switch of its shims (clients' and trunk's).
    pub cut: Cut,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: i32,
}

impl Region {
    /// The signaling URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.public_ip, self.http)
    }

    /// The node's own signaling URL (not through the shim).
    pub fn direct_url(&self) -> String {
        format!("http://{}:{}", self.node_ip, self.http)
    }

    /// The SFU address clients send media to.
    pub fn sfu_addr(&self) -> SocketAddr {
        SocketAddr::new(self.public_ip, self.sfu)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|_| self.pid)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM: the node drains (it tells its sessions where to go and exits once they left,
    /// or at its 15 s drain deadline).
    pub fn terminate(&self) {
        if self.child.is_some() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid, libc::SIGTERM);
            }
        }
    }

    /// Whether the node has exited (then it is reaped, with its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Starts (or restarts) the node and waits for its ready file.
    pub fn start(&mut self, bin: &FsPath) -> anyhow::Result<()> {
        self.kill();
        let ready = self.config.with_extension("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                    self.admin = v["admin"].as_str().and_then(|a| a.parse().ok());
                    if let Some(p) = v["pid"].as_i64() {
                        self.pid = p as i32;
                    }
                    return Ok(());
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                bail!(
                    "node {} exited ({st}) before it was ready; its log:\n{}",
                    self.id,
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!("node {} was not ready within 20 s", self.id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file.
fn tail(p: &FsPath) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A running cluster; everything stops when it drops.
pub struct Cluster {
    pub redis: RedisServer,
    pub regions: Vec<Region>,
    pub bin: PathBuf,
    _dir: TempDir,
}

/// A port free on both addresses for TCP and UDP (so the shim can take the same one).
fn free_port(a: IpAddr, b: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind((a, 0))?;
        let port = l.local_addr()?.port();
        let ok = std::net::UdpSocket::bind((a, port)).is_ok()
            && (a == b
                || (std::net::TcpListener::bind((b, port)).is_ok()
                    && std::net::UdpSocket::bind((b, port)).is_ok()));
        if ok {
            return Ok(port);
        }
    }
    bail!("no free port on {a} and {b}")
}

impl Cluster {
    /// Starts Redis, the shims (on the current tokio runtime) and the nodes.
    pub async fn start(spec: &Spec) -> anyhow::Result<Cluster> {
        let redis = RedisServer::try_start().map_err(|e| anyhow!(e))?;
        let dir = TempDir::new("cluster")?;
        let shims = !spec.delays.is_empty();
        let ca = match spec.trunk_delay_ms {
            Some(_) => Some(meridian_trunk::tls::make_ca().map_err(|e| anyhow!("{e}"))?),
            None => None,
        };
        let mut regions = Vec::new();
        for (r, name) in spec.regions.iter().enumerate() {
            let n = r as u8 + 1;
            let node_ip = IpAddr::V4(Ipv4Addr::new(127, 0, n, 1));
            let public_ip = if shims {
                IpAddr::V4(Ipv4Addr::new(127, 0, n, 2))
            } else {
                node_ip
            };
            let (http, turn, sfu) = (
                free_port(node_ip, public_ip)?,
                free_port(node_ip, public_ip)?,
                free_port(node_ip, public_ip)?,
            );
            let id = format!("node-{name}");
            let config = dir.path().join(format!("{id}.toml"));
            let mut trunk_toml = String::new();
            let mut trunk_public = None;
            let cut = Cut::default();
            if let (Some(ca), Some(delay)) = (&ca, spec.trunk_delay_ms) {
                let shim_ip = IpAddr::V4(Ipv4Addr::new(127, 0, n, 3));
                let port = free_port(node_ip, shim_ip)?;
                let cert = meridian_trunk::tls::make_node_cert(&ca.key, &id, 1)
                    .map_err(|e| anyhow!("{e}"))?;
                let file = |ext: &str, text: &str| -> anyhow::Result<String> {
                    let p = dir.path().join(format!("{id}.{ext}"));
                    std::fs::write(&p, text)?;
                    Ok(format!("{:?}", p.display().to_string()))
                };
                trunk_toml = format!(
                    "[trunk]\nlisten = \"{node_ip}:{port}\"\npublic_addr = \"{shim_ip}:{port}\"\nca = {}\ncert = {}\nkey = {}\n",
                    file("ca.pem", &ca.cert)?,
                    file("pem", &cert.cert)?,
                    file("key", &cert.key)?,
                );
                let p = Path {
                    delay: Duration::from_secs_f64(delay / 1000.0),
                    ..Path::default()
                };
                let (listen, target) = (
                    SocketAddr::new(shim_ip, port),
                    SocketAddr::new(node_ip, port),
                );
                let paths = Paths {
                    cut: cut.clone(),
                    ..Paths::symmetric(p)
                };
                shim::start(&[(listen, target)], &[], paths)
                    .await
                    .with_context(|| format!("the trunk shim of region {name}"))?;
                trunk_public = Some(listen);
            }
            let extra = spec.cluster_extra.join("\n");
            let sfu_extra = spec.sfu_extra.join("\n");
            std::fs::write(
                &config,
                format!(
                    "[node]\nname = \"{id}\"\n[log]\nlevel = \"{level}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                     [turn]\nudp = [\"{node_ip}:{turn}\"]\ntcp = []\n\
                     [auth]\nrest_secrets = [\"bench-rest-secret\"]\n[drain]\ndeadline_secs = 15\n\
                     [signaling]\nlisten = \"{node_ip}:{http}\"\n\
                     api_keys = [{{ key = \"{API_KEY}\", secret = \"{API_SECRET}\" }}]\nmessages_per_sec = 1000\nmessage_burst = 1000\n\
                     [sfu]\nudp = \"{node_ip}:{sfu}\"\ntcp = []\npublic_ip = \"{public_ip}\"\n{sfu_extra}\n\
                     [cluster]\nregion = \"{name}\"\ndirectory = \"{redis}\"\nkey_prefix = \"bench\"\n\
                     public_signaling_url = \"http://{public_ip}:{http}\"\npublic_stun = [\"{public_ip}:{turn}\"]\n{extra}\n{trunk_toml}",
                    // MERIDIAN_BENCH_LOG overrides the nodes' log level (e.g. for a failing run).
                    level = std::env::var("MERIDIAN_BENCH_LOG").unwrap_or(spec.log_level.clone()),
                    redis = redis.url(),
                ),
            )?;
            if shims {
                let from = spec
                    .delays
                    .iter()
                    .enumerate()
                    .map(|(g, row)| {
                        let p = Path {
                            delay: Duration::from_secs_f64(row[r] / 1000.0),
                            ..Path::default()
                        };
                        (group_ip(g), p, p)
                    })
                    .collect();
                let paths = Paths {
                    from,
                    cut: cut.clone(),
                    ..Paths::default()
                };
                let map = |p: u16| (SocketAddr::new(public_ip, p), SocketAddr::new(node_ip, p));
                shim::start(&[map(turn), map(sfu)], &[map(http)], paths)
                    .await
                    .with_context(|| format!("the shim of region {name}"))?;
            }
            regions.push(Region {
                region: name.clone(),
                log: dir.path().join(format!("{id}.log")),
                id,
                node_ip,
                public_ip,
                http,
                turn,
                sfu,
                admin: None,
                trunk: trunk_public,
                cut,
                config,
                child: None,
                pid: 0,
            });
        }
        let mut c = Cluster {
            redis,
            regions,
            bin: spec.meridian_bin.clone(),
            _dir: dir,
        };
        for r in &mut c.regions {
            r.start(&spec.meridian_bin)?;
        }
        // Every node sees every region.
        let want = c.regions.len();
        for r in &c.regions {
            let url = r.direct_url();
            wait_until(Duration::from_secs(10), || async {
                regions_listed(&url).await.is_some_and(|v| v.len() == want)
            })
            .await
            .with_context(|| format!("node {} did not see all {want} regions", r.id))?;
        }
        Ok(c)
    }

    /// Cuts region `r` off: its shims (clients' and trunk's) forward nothing, and the other
    /// regions' trunk shims nothing from it. The directory still reaches it (Redis is not
    /// behind a shim), so it stays listed while nobody else can reach it.
    pub fn partition(&self, r: usize) {
        let from = self.regions[r].node_ip;
        for (i, region) in self.regions.iter().enumerate() {
            if i == r {
                region.cut.cut_all();
            } else {
                region.cut.cut_from(from);
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        for region in &self.regions {
            region.cut.heal();
        }
    }

    /// The region serving `base` (a signaling URL, through the shim or not).
    pub fn region_of(&self, base: &str) -> Option<usize> {
        let base = base.trim_end_matches('/');
        self.regions
            .iter()
            .position(|r| r.url() == base || r.direct_url() == base)
    }
}

/// The region names a node's `/v1/regions` lists, or `None` when it does not answer.
pub async fn regions_listed(base: &str) -> Option<Vec<String>> {
    let v = crate::client::signal::http_get_json(base, "/v1/regions")
        .await
        .ok()?;
    Some(
        v["regions"]
            .as_array()?
            .iter()
            .filter_map(|r| r["region"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Polls `cond` every 10 ms until it holds or `within` passed.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("not within {within:?}")
}
