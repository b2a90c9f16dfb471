//! A whole node: binds listeners, starts workers and the admin listener, handles signals
//! (SIGTERM/SIGINT drain, SIGHUP reloads TLS), and writes the ready file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_config::Config;
use tokio::sync::mpsc;

use super::handoff::Control;
use super::tls::ReloadableTls;
use super::worker::{self, RelayBinding, WorkerSetup};
use super::{admin, metrics, sockets};
use crate::turn::auth::{Credentials, NonceIssuer};
use crate::turn::policy::PeerPolicy;
use crate::turn::quota::AllocationLedger;
use crate::turn::{Clock, Server, ServerConfig, Shared};

/// What the node hands to the services layered on it (the signaling API) once its sockets are
/// bound. The service returns the addresses it listens on, for the ready file and logs.
pub type Attach = Box<
    dyn FnOnce(
        AttachContext,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<(String, SocketAddr)>, String>>>,
    >,
>;

pub struct AttachContext {
    pub sfu: super::SfuHandle,
    pub turn_udp: Vec<SocketAddr>,
    pub turn_tcp: Vec<SocketAddr>,
    pub turn_tls: Vec<SocketAddr>,
    /// False once the node drains.
    pub ready: Arc<AtomicBool>,
    /// Certificates SIGHUP reloads: a service adds its own (named, for the log).
    pub tls_reload: TlsReload,
    /// Lines a service adds to `/readyz`.
    pub status: admin::StatusBoard,
    /// Where TURN clients go while this node drains, when `turn.alternate_server` is not set:
    /// set by a service that knows the cluster, asked when the drain starts.
    pub alternate: Alternate,
    /// How many client sessions the services hold (signaling: WebSocket, WHIP, WHEP), set by
    /// them: a drain waits for these as well as for TURN allocations.
    pub sessions: SessionCount,
    /// Called once when the drain starts (`ready` is false by then), with the drain deadline:
    /// a service tells its sessions where to go.
    pub on_drain: DrainHook,
}

/// Told when the drain starts, with its deadline.
pub type DrainHook = Arc<std::sync::OnceLock<Box<dyn Fn(Duration) + Send + Sync>>>;

/// Counts the client sessions a service holds.
pub type SessionCount = Arc<std::sync::OnceLock<Box<dyn Fn() -> usize + Send + Sync>>>;
/// Chooses the TURN server new clients are sent to while this node drains.
pub type Alternate = Arc<std::sync::OnceLock<Box<dyn Fn() -> Option<SocketAddr> + Send + Sync>>>;

/// The node's reloadable certificates, by what serves them ("TURN", "signaling").
pub type TlsReload = Arc<std::sync::Mutex<Vec<(&'static str, ReloadableTls)>>>;

/// How the node is run, beyond its configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Where to write the bound addresses (JSON) once every listener is up.
    pub ready_file: Option<PathBuf>,
    /// The signaling API (or any service) to start on the node's runtime.
    pub attach: Option<Attach>,
}

/// What failed while starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {transport} {addr}: {source}")]
    Listen {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Service(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The addresses a running node listens on.
#[derive(Debug, Clone)]
pub struct Bound {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub sfu_udp: SocketAddr,
    pub services: Vec<(String, SocketAddr)>,
}

impl Bound {
    fn to_json(&self) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let services: String = self
            .services
            .iter()
            .map(|(k, a)| format!(",\"{k}\":\"{a}\""))
            .collect();
        format!(
            "{{\"turn_udp\":[{}],\"turn_tcp\":[{}],\"turn_tls\":[{}],\"admin\":\"{}\",\"sfu_udp\":\"{}\"{services},\"pid\":{}}}\n",
            list(&self.udp),
            list(&self.tcp),
            list(&self.tls),
            self.admin,
            self.sfu_udp,
            std::process::id()
        )
    }
}

/// How often the metrics recorder folds histogram samples into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Runs a node until it is told to stop (SIGTERM/SIGINT), then drains and returns.
pub fn run(config: Config, mut opts: RunOptions) -> Result<(), NodeError> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        // Per-room series disappear a while after the room does (bounded label sets).
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(Duration::from_secs(30)),
        )
        // A real histogram (not a summary) so that p99 can be computed over any window.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                "meridian_sfu_forward_latency_seconds".into(),
            ),
            metrics::FORWARD_LATENCY_BUCKETS,
        )
        .map_err(|e| NodeError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| NodeError::Metrics(e.to_string()))?;
    metrics::describe();
    let workers = config.worker_count();
    let t = &config.turn;

    let mut udp_sets = Vec::new();
    for addr in &t.udp {
        let set = sockets::reuseport_udp(*addr, workers).map_err(|source| NodeError::Listen {
            transport: "UDP",
            addr: *addr,
            source,
        })?;
        udp_sets.push(set);
    }
    let mut tcp_sets = Vec::new();
    for addr in &t.tcp {
        let set = sockets::reuseport_tcp(*addr, workers).map_err(|source| NodeError::Listen {
            transport: "TCP",
            addr: *addr,
            source,
        })?;
        tcp_sets.push(set);
    }
    let mut tls_sets = Vec::new();
    let tls = if t.tls.is_empty() {
        None
    } else {
        let (Some(cert), Some(key)) = (&t.tls_cert, &t.tls_key) else {
            return Err(NodeError::Tls(
                "TLS listeners need turn.tls_cert and turn.tls_key".into(),
            ));
        };
        for addr in &t.tls {
            let set =
                sockets::reuseport_tcp(*addr, workers).map_err(|source| NodeError::Listen {
                    transport: "TLS",
                    addr: *addr,
                    source,
                })?;
            tls_sets.push(set);
        }
        Some(ReloadableTls::load(cert, key).map_err(NodeError::Tls)?)
    };
    let local = |s: &std::net::UdpSocket| s.local_addr().ok();
    let bound_udp: Vec<SocketAddr> = udp_sets
        .iter()
        .filter_map(|s| s.first().and_then(local))
        .collect();
    let bound_tcp: Vec<SocketAddr> = tcp_sets
        .iter()
        .filter_map(|s| s.first().and_then(|l| l.local_addr().ok()))
        .collect();
    let bound_tls: Vec<SocketAddr> = tls_sets
        .iter()
        .filter_map(|s| s.first().and_then(|l| l.local_addr().ok()))
        .collect();

    let relay = RelayBinding {
        v4: t
            .relay_ipv4
            .map(|ip| (IpAddr::V4(ip), IpAddr::V4(t.external_ipv4.unwrap_or(ip)))),
        v6: t
            .relay_ipv6
            .map(|ip| (IpAddr::V6(ip), IpAddr::V6(t.external_ipv6.unwrap_or(ip)))),
        port_min: t.relay_port_min,
        port_max: t.relay_port_max,
    };
    // The SFU starts first: TURN clients may relay to it, in process.
    let sfu = start_sfu(&config)?;
    let mut sfu_addrs = vec![sfu.handle().udp];
    if sfu.handle().bound_udp != sfu.handle().udp {
        sfu_addrs.push(sfu.handle().bound_udp);
    }
    let strict = PeerPolicy::new(
        config.security.allow_peers.clone(),
        config.security.deny_peers.clone(),
        own_addresses(&config, &bound_udp, &bound_tcp, &bound_tls),
    );
    let mut guarded: Vec<IpAddr> = sfu_addrs
        .iter()
        .map(|a| a.ip())
        .filter(|ip| strict.check(*ip).is_err())
        .collect();
    guarded.dedup();
    let shared = Shared {
        credentials: Arc::new(Credentials::new(
            config
                .auth
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password.clone())),
            config.auth.rest_secrets.iter().cloned(),
        )),
        policy: Arc::new(
            PeerPolicy::new(
                config.security.allow_peers.clone(),
                config.security.deny_peers.clone(),
                own_addresses(&config, &bound_udp, &bound_tcp, &bound_tls),
            )
            .with_services(sfu_addrs.iter().map(|a| a.ip())),
        ),
        ledger: Arc::new(AllocationLedger::new(
            config.limits.max_allocations,
            config.limits.max_allocations_per_user,
        )),
        nonces: Arc::new(NonceIssuer::new(
            rand::random(),
            t.nonce_lifetime_secs as u64,
        )),
    };
    let server_cfg = ServerConfig {
        realm: t.realm.clone(),
        software: t
            .software
            .then(|| concat!("meridian/", env!("CARGO_PKG_VERSION")).to_string()),
        ipv4: relay.v4.is_some(),
        ipv6: relay.v6.is_some(),
        default_lifetime_secs: t.default_lifetime_secs,
        max_lifetime_secs: t.max_lifetime_secs,
        alternate_server: t.alternate_server,
        max_permissions: config.limits.max_permissions_per_allocation,
        max_channels: config.limits.max_channels_per_allocation,
        bandwidth_bytes_per_sec: config.limits.allocation_bandwidth_kbps * 1000 / 8,
        unauthenticated_rate: config.limits.unauthenticated_rate,
        unauthenticated_burst: config.limits.unauthenticated_burst,
    };
    let clock = Clock {
        start: Instant::now(),
        unix_at_start: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };

    let mut controls = Vec::new();
    let mut threads = Vec::new();
    for id in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        controls.push(tx);
        let setup = WorkerSetup {
            id,
            udp: take_one(&mut udp_sets),
            tcp: take_one(&mut tcp_sets),
            tls: take_one(&mut tls_sets),
            tls_config: tls.clone(),
            server: Server::new(server_cfg.clone(), shared.clone(), clock)
                .with_relay_id_base((id as u64) << 48),
            relay,
            unallocated_timeout: Duration::from_secs(
                config.limits.unallocated_connection_timeout_secs,
            ),
            control: rx,
            sfu: Some(worker::SfuLink {
                handle: sfu.handle(),
                addrs: sfu_addrs.clone(),
                guarded: guarded.clone(),
                me: controls[id].clone(),
            }),
        };
        threads.push(worker::spawn(setup)?);
    }

    let tls_reload: TlsReload = Arc::new(std::sync::Mutex::new(
        tls.iter().map(|t| ("TURN", t.clone())).collect(),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ready = Arc::new(AtomicBool::new(false));
    let attach = opts.attach.take();
    let result = rt.block_on(async {
        let signals = stop_signals()?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen).await.map_err(|source| NodeError::Listen { transport: "admin HTTP", addr: config.admin.listen, source })?;
        let admin_addr = admin_listener.local_addr()?;
        let status = admin::StatusBoard::default();
        let app = admin::router(prometheus.clone(), ready.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin_listener, app).await {
                tracing::error!("admin listener failed: {e}");
            }
        });
        // Histogram samples pile up in the recorder until upkeep folds them into buckets (a
        // scrape does it too, but nothing guarantees one).
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let alternate_slot: Alternate = Arc::default();
        let service_sessions: SessionCount = Arc::default();
        let drain_hook: DrainHook = Arc::default();
        let services = match attach {
            Some(attach) => attach(AttachContext {
                tls_reload: tls_reload.clone(),
                status: status.clone(),
                sfu: sfu.handle(),
                turn_udp: bound_udp.clone(),
                turn_tcp: bound_tcp.clone(),
                turn_tls: bound_tls.clone(),
                ready: ready.clone(),
                alternate: alternate_slot.clone(),
                sessions: service_sessions.clone(),
                on_drain: drain_hook.clone(),
            })
            .await
            .map_err(NodeError::Service)?,
            None => Vec::new(),
        };
        let bound = Bound { udp: bound_udp, tcp: bound_tcp, tls: bound_tls, admin: admin_addr, sfu_udp: sfu.handle().udp, services };
        if let Some(path) = &opts.ready_file {
            write_ready_file(path, &bound.to_json()).map_err(|source| NodeError::ReadyFile { path: path.clone(), source })?;
        }
        ready.store(true, Ordering::Relaxed);
        ::metrics::gauge!("meridian_ready").set(1.0);
        tracing::info!(workers, udp = ?bound.udp, tcp = ?bound.tcp, tls = ?bound.tls, admin = %bound.admin, sfu = %bound.sfu_udp, services = ?bound.services, "meridian node ready");
        wait_for_stop(signals, &tls_reload).await;
        ready.store(false, Ordering::Relaxed);
        ::metrics::gauge!("meridian_ready").set(0.0);
        // The configured alternate, else the one the cluster chose.
        let alternate = config
            .turn
            .alternate_server
            .or_else(|| alternate_slot.get().and_then(|choose| choose()));
        if let Some(a) = alternate {
            tracing::info!(%a, "draining: new TURN clients are sent to {a} (300 Try Alternate)");
        }
        for c in &controls {
            let _ = c.send(Control::Drain(alternate));
        }
        let deadline = Duration::from_secs(config.drain.deadline_secs);
        if let Some(tell) = drain_hook.get() {
            tell(deadline);
        }
        drain(
            &shared.ledger,
            &service_sessions,
            deadline,
        )
        .await;
        Ok(())
    });
    for c in &controls {
        let _ = c.send(Control::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    drop(rt);
    sfu.stop();
    tracing::info!("meridian node stopped");
    result
}

/// Waits for SIGTERM or SIGINT; reloads the TLS certificate on SIGHUP meanwhile.
/// SIGTERM, SIGINT and SIGHUP, caught from before the node reports ready (a signal sent as
/// soon as the ready file appears must drain, not kill).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

fn stop_signals() -> std::io::Result<StopSignals> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(StopSignals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
    })
}

async fn wait_for_stop(signals: StopSignals, tls: &TlsReload) {
    let StopSignals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); return; }
            _ = hup.recv() => {
                let all = tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if all.is_empty() {
                    tracing::info!("SIGHUP: nothing to reload (no TLS listener)");
                }
                for (what, t) in all {
                    match t.reload() {
                        Ok(()) => tracing::info!("SIGHUP: {what} TLS certificate reloaded"),
                        Err(e) => tracing::error!("SIGHUP: {what} TLS reload failed, keeping the previous certificate: {e}"),
                    }
                }
            }
        }
    }
}

/// Lets existing allocations and the services' sessions run until they end or the deadline
/// passes. A second SIGTERM or SIGINT ends the drain at once.
async fn drain(ledger: &AllocationLedger, sessions: &SessionCount, deadline: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let end = tokio::time::Instant::now() + deadline;
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    loop {
        let left = ledger.total();
        let clients = sessions.get().map_or(0, |count| count());
        if left == 0 && clients == 0 {
            tracing::info!("drained: no allocations or sessions left");
            return;
        }
        if tokio::time::Instant::now() >= end {
            tracing::info!(
                allocations = left,
                sessions = clients,
                "drain deadline reached"
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => { tracing::info!("second signal: stopping now"); return; }
            _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => { tracing::info!("second signal: stopping now"); return; }
        }
    }
}

/// One socket of each listener set, for one worker.
fn take_one<T>(sets: &mut [Vec<T>]) -> Vec<T> {
    sets.iter_mut().filter_map(Vec::pop).collect()
}

fn write_ready_file(path: &std::path::Path, json: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Addresses of this node that peers must not name (unless allow-listed): concrete listener
/// and relay addresses, advertised addresses, and every interface address.
fn own_addresses(
    config: &Config,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    tls: &[SocketAddr],
) -> Vec<IpAddr> {
    let t = &config.turn;
    let mut own: Vec<IpAddr> = udp
        .iter()
        .chain(tcp)
        .chain(tls)
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    own.extend(
        t.relay_ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(t.relay_ipv6.map(IpAddr::V6))
            .filter(|ip| !ip.is_unspecified()),
    );
    own.extend(
        t.external_ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(t.external_ipv6.map(IpAddr::V6)),
    );
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        own.extend(ifs.into_iter().map(|i| i.ip()));
    }
    own.sort();
    own.dedup();
    own
}

fn start_sfu(config: &Config) -> Result<super::SfuNode, NodeError> {
    let c = &config.sfu;
    let core = crate::sfu::SfuConfig {
        udp_candidates: Vec::new(),
        tcp_candidates: Vec::new(),
        keyframe_interval: Duration::from_millis(c.keyframe_interval_ms),
        stall_after: Duration::from_secs(c.stall_after_secs),
        message_log: c.message_log,
        max_message_bytes: c.max_data_message_bytes,
        rtx_cache_packets: c.rtx_cache_packets,
        initial_estimate_bps: c.initial_bitrate_kbps * 1000,
    };
    super::SfuNode::start(c.udp, &c.tcp, c.public_ip, config.sfu_worker_count(), core).map_err(
        |source| NodeError::Listen {
            transport: "SFU UDP",
            addr: c.udp,
            source,
        },
    )
}
