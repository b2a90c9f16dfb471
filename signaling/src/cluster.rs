//! This node in its cluster: its entry in the geo directory (from the config and the bound
//! listeners), the SFU's device list and the drain flag fed into it every heartbeat, and the
//! `/readyz` line about the directory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_config::Config;
use meridian_geo::{DeviceEntry, Directory, NodeInfo, Settings};
use meridian_relay::net::{SfuHandle, StatusBoard};

/// A host for a bound address: the address itself, `fallback` for a wildcard bind, IPv6 in
/// brackets.
fn host_of(addr: SocketAddr, fallback: Option<IpAddr>) -> String {
    let ip = if addr.ip().is_unspecified() {
        fallback.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        addr.ip()
    };
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
    }
}

/// This node's directory entry.
pub fn node_info(config: &Config, signaling: SocketAddr, turn_udp: &[SocketAddr]) -> NodeInfo {
    let c = &config.cluster;
    let scheme = if config.signaling.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let signaling_url = c
        .public_signaling_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("{scheme}://{}", host_of(signaling, None)));
    let stun = if c.public_stun.is_empty() {
        let ext = config.turn.external_ipv4.map(IpAddr::V4);
        turn_udp.iter().map(|a| host_of(*a, ext)).collect()
    } else {
        c.public_stun.clone()
    };
    NodeInfo {
        id: config.node_id().to_string(),
        region: config.region().to_string(),
        signaling: signaling_url,
        stun,
        sessions: 0,
        devices: 0,
        max_sessions: c.max_sessions,
        draining: false,
        heartbeat_ms: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
        trunk: None,
    }
}

/// Starts the directory client and the task that feeds it the SFU's devices and the drain
/// flag. A Redis that is away does not stop the node: it runs alone until Redis returns.
pub async fn start(
    config: &Config,
    info: NodeInfo,
    sfu: SfuHandle,
    ready: Arc<AtomicBool>,
    status: &StatusBoard,
    alternate: meridian_relay::net::Alternate,
) -> Result<Arc<Directory>, String> {
    let c = &config.cluster;
    let settings = Settings {
        heartbeat: Duration::from_millis(c.heartbeat_interval_ms),
        death_timeout: Duration::from_millis(c.death_timeout_ms),
    };
    // Commands give up well inside the death timeout: a slow Redis is an unreachable one.
    let timeout = (settings.death_timeout / 2).max(Duration::from_millis(100));
    let backend = meridian_geo::backend_for(&c.directory, &c.key_prefix, timeout)?;
    let kind = backend.kind();
    let dir = Directory::start(info, backend, settings).await;
    tracing::info!(
        node = dir.me(),
        directory = kind,
        "cluster directory started (heartbeat {:?}, death timeout {:?})",
        settings.heartbeat,
        settings.death_timeout
    );
    let feed = Arc::clone(&dir);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(settings.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Ok(list) = sfu.devices().await else {
                return; // the SFU stopped: the node is going away
            };
            feed.set_devices(
                list.into_iter()
                    .map(|d| DeviceEntry {
                        room: d.room,
                        identity: d.identity,
                        live: d.live,
                        viewers: d.viewers,
                        bitrate_bps: d.bitrate_bps,
                        tracks: d.tracks,
                        remote_nodes: d.remote_nodes,
                    })
                    .collect(),
            );
            feed.set_draining(!ready.load(Ordering::Relaxed));
        }
    });
    // A drain sends new TURN clients to another node's TURN server.
    let view = Arc::clone(&dir);
    let _ = alternate.set(Box::new(move || {
        view.with_view(|v| {
            meridian_geo::rehome::turn_alternate(v)
                .and_then(|n| n.stun.iter().find_map(|s| s.parse::<SocketAddr>().ok()))
        })
    }));
    let line = Arc::clone(&dir);
    if let Ok(mut board) = status.lock() {
        board.push(Arc::new(move || readyz_line(&line, Instant::now())));
    }
    Ok(dir)
}

/// The `/readyz` line about the directory.
fn readyz_line(dir: &Directory, now: Instant) -> String {
    let st = dir.status();
    let (nodes, regions) = dir.with_view(|v| (v.nodes().count(), v.regions().len()));
    if st.reachable {
        format!(
            "directory: {} reachable; {nodes} node(s) in {regions} region(s)",
            st.kind
        )
    } else {
        format!(
            "directory: {} UNREACHABLE for {:.1} s ({}); serving this node's own sessions",
            st.kind,
            now.saturating_duration_since(st.since).as_secs_f64(),
            st.error.as_deref().unwrap_or("no answer")
        )
    }
}

/// The trunk endpoint, bound before the directory entry is made (which carries its address).
pub struct BoundTrunk {
    pub trunk: meridian_trunk::Trunk,
    pub events: tokio::sync::mpsc::Receiver<meridian_trunk::Event>,
    /// "host:port" other nodes dial.
    pub public: String,
    /// Filled once the directory runs: peers' addresses are looked up there.
    pub directory: Arc<std::sync::OnceLock<Arc<Directory>>>,
}

/// Loads the trunk's certificates and binds its UDP listener.
pub fn bind_trunk(config: &Config) -> Result<BoundTrunk, String> {
    let t = &config.trunk;
    let (Some(listen), Some(ca), Some(cert), Some(key)) = (t.listen, &t.ca, &t.cert, &t.key) else {
        return Err("trunk.listen needs trunk.ca, trunk.cert and trunk.key".into());
    };
    let tls = meridian_trunk::tls::TlsMaterial::from_pem_files(ca, cert, key)
        .map_err(|e| e.to_string())?;
    let directory: Arc<std::sync::OnceLock<Arc<Directory>>> = Arc::default();
    let lookup = Arc::clone(&directory);
    let (trunk, events) = meridian_trunk::Trunk::start(meridian_trunk::TrunkSettings {
        node: config.node_id().to_string(),
        listen,
        tls,
        allow: t.allow_peers.clone(),
        idle_timeout: Duration::from_secs(t.idle_timeout_secs),
        keepalive: Duration::from_millis(t.keepalive_ms),
        resolve: Arc::new(move |node: &str| {
            let dir = lookup.get()?;
            dir.with_view(|v| v.node(node).and_then(|n| n.trunk.clone()))
        }),
    })
    .map_err(|e| e.to_string())?;
    let bound = trunk.local_addr().unwrap_or(listen);
    let public = t
        .public_addr
        .clone()
        .unwrap_or_else(|| host_of(bound, None));
    tracing::info!(%bound, public, "trunk listening");
    Ok(BoundTrunk {
        trunk,
        events,
        public,
        directory,
    })
}
