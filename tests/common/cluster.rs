//! Support for the multi-node tests: tokens, the trunk's certificates, a `meridian serve` node
//! in a cluster with a trunk, the device simulator, and reading metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use meridian_geo::testing::RedisServer;
use meridian_signaling::token::{Role, TokenIssuer};
use meridian_trunk::tls;

use super::{ChildGuard, Node, NodeOptions, API_KEY, API_SECRET};

/// A token for `identity` in `room`, valid for 10 minutes.
pub fn token(identity: &str, room: &str, role: Role) -> String {
    TokenIssuer::new(API_KEY, API_SECRET.as_bytes())
        .unwrap()
        .mint(identity, room, role, super::unix_now(), 600)
        .unwrap()
}

/// Writes the CA and a certificate for each node into `dir`; returns the CA's path.
pub fn pki(dir: &Path, nodes: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let ca = tls::make_ca().unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
    for n in nodes {
        let c = tls::make_node_cert(&ca.key, n, 1).unwrap();
        std::fs::write(dir.join(format!("{n}.pem")), &c.cert).unwrap();
        std::fs::write(dir.join(format!("{n}.key")), &c.key).unwrap();
    }
    dir.join("ca.pem")
}

/// A node `id` of region `region` in the cluster whose directory is `redis`, with a trunk
/// certified by the CA in `pki` (as [`pki`] wrote it), plus `extra_toml`.
pub fn start_trunk_node(
    redis: &RedisServer,
    pki: &Path,
    id: &str,
    region: &str,
    extra_toml: &str,
) -> Node {
    start_trunk_node_draining(redis, pki, id, region, extra_toml, 1)
}

/// [`start_trunk_node`] with a drain deadline of `drain_secs`.
pub fn start_trunk_node_draining(
    redis: &RedisServer,
    pki: &Path,
    id: &str,
    region: &str,
    extra_toml: &str,
    drain_secs: u64,
) -> Node {
    let file = |f: String| format!("{:?}", pki.join(f).display().to_string());
    Node::start_meridian(&NodeOptions {
        drain_secs,
        extra_toml: format!(
            "[cluster]\nnode_id = \"{id}\"\nregion = \"{region}\"\ndirectory = \"{}\"\nkey_prefix = \"tk\"\n\n\
             [trunk]\nlisten = \"127.0.0.1:0\"\nca = {}\ncert = {}\nkey = {}\nkeepalive_ms = 200\n{extra_toml}",
            redis.url(),
            file("ca.pem".into()),
            file(format!("{id}.pem")),
            file(format!("{id}.key")),
        ),
        ..NodeOptions::default()
    })
}

/// `meridian device` publishing into `room` as `name` through `http`, for up to `seconds`,
/// its stdout (the controls it receives, one JSON line each) written to `out`.
pub fn spawn_device(
    http: SocketAddr,
    room: &str,
    name: &str,
    seconds: u64,
    out: &Path,
) -> ChildGuard {
    let mut cmd = super::meridian_command();
    cmd.args([
        "device",
        "--url",
        &format!("http://{http}"),
        "--room",
        room,
        "--name",
        name,
    ])
    .args(["--bitrate-kbps", "600", "--size", "320x180", "--no-measure"])
    .args(["--seconds", &seconds.to_string()])
    .arg("--token")
    .arg(token(name, room, Role::Device))
    .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
    .stderr(Stdio::inherit());
    ChildGuard::spawn(cmd, "meridian device")
}

/// The controls a device simulator printed, per sender, as the `n` each carried.
pub fn device_controls(out: &Path) -> std::collections::HashMap<String, Vec<u64>> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["channel"] != "controls" {
            continue;
        }
        let (Some(from), Some(n)) = (
            v["message"]["from"].as_str(),
            v["message"]["data"]["n"].as_u64(),
        ) else {
            continue;
        };
        seen.entry(from.to_string()).or_default().push(n);
    }
    seen
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A node's `/metrics`.
pub async fn metrics(node: &Node) -> String {
    let (status, body) = super::http_get_async(node.admin(), "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    body
}
