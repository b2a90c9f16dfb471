//! One worker thread: a current-thread tokio runtime driving one TURN core and the sockets
//! that feed it. Nothing here is shared with other workers except the read-mostly [`Shared`]
//! state inside the core and the metrics registry.
//!
//! [`Shared`]: crate::turn::Shared

use std::cell::{Cell, RefCell};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustc_hash::FxHashMap;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::metrics::WorkerMetrics;
use super::sockets;
use super::stream::{self, StreamOut};
use super::tls::ReloadableTls;
use crate::turn::{
    ClientAddr, Command, Family, RelayId, Server, ToPeer, Transport, HEADROOM, TAILROOM,
};

/// Datagrams taken per receive call (recvmmsg batch).
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Buffer per received datagram on the listener: large enough for GRO-coalesced segments.
const SLOT: usize = 64 * 1024;
/// Largest datagram accepted from a peer.
const MAX_PEER_DATAGRAM: usize = 65_535 - 64;
/// Datagrams a relay socket may take before yielding to other tasks.
const RELAY_BUDGET: usize = 64;

/// Where relay sockets bind and what they advertise.
#[derive(Debug, Clone, Copy)]
pub struct RelayBinding {
    pub v4: Option<(IpAddr, IpAddr)>,
    pub v6: Option<(IpAddr, IpAddr)>,
    pub port_min: u16,
    pub port_max: u16,
}

/// Messages from the node to a worker.
#[derive(Debug)]
pub enum Control {
    Drain,
    Stop,
}

/// What a worker is started with.
pub struct WorkerSetup {
    pub id: usize,
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
    pub tls: Vec<std::net::TcpListener>,
    pub tls_config: Option<ReloadableTls>,
    pub server: Server,
    pub relay: RelayBinding,
    pub control: mpsc::UnboundedReceiver<Control>,
}

struct UdpListener {
    sock: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

struct RelayEntry {
    sock: Rc<UdpSocket>,
    task: tokio::task::JoinHandle<()>,
}

pub(super) struct Worker {
    pub(super) core: RefCell<Server>,
    udp: Vec<UdpListener>,
    relays: RefCell<FxHashMap<RelayId, RelayEntry>>,
    pub(super) streams: RefCell<FxHashMap<ClientAddr, Rc<StreamOut>>>,
    relay: RelayBinding,
    peer_buf: RefCell<Vec<u8>>,
    pub(super) metrics: RefCell<WorkerMetrics>,
    busy: Cell<Duration>,
}

/// Starts a worker thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("meridian-w{}", setup.id))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = setup.id, "cannot start worker runtime: {e}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(setup));
        })
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        udp,
        tcp,
        tls,
        tls_config,
        server,
        relay,
        mut control,
    } = setup;
    let mut listeners = Vec::new();
    for s in udp {
        let local = match s.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(worker = id, "UDP listener: {e}");
                continue;
            }
        };
        let state = match UdpSocketState::new((&s).into()) {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(worker = id, %local, "UDP listener setup: {e}");
                continue;
            }
        };
        match UdpSocket::from_std(s) {
            Ok(sock) => listeners.push(UdpListener { sock, state, local }),
            Err(e) => tracing::error!(worker = id, %local, "UDP listener registration: {e}"),
        }
    }
    let w = Rc::new(Worker {
        core: RefCell::new(server),
        udp: listeners,
        relays: RefCell::new(FxHashMap::default()),
        streams: RefCell::new(FxHashMap::default()),
        relay,
        peer_buf: RefCell::new(vec![0u8; HEADROOM + MAX_PEER_DATAGRAM + TAILROOM]),
        metrics: RefCell::new(WorkerMetrics::new(id)),
        busy: Cell::new(Duration::ZERO),
    });
    register(&w);
    for i in 0..w.udp.len() {
        tokio::task::spawn_local(udp_listener_loop(w.clone(), i));
    }
    for l in tcp {
        stream::spawn_accept_loop(w.clone(), l, Transport::Tcp, None);
    }
    for l in tls {
        stream::spawn_accept_loop(w.clone(), l, Transport::Tls, tls_config.clone());
    }
    tokio::task::spawn_local(timer_loop(w.clone()));
    while let Some(c) = control.recv().await {
        match c {
            Control::Drain => w.core.borrow_mut().set_draining(true),
            Control::Stop => break,
        }
    }
    // Dropping the LocalSet ends every task and closes every socket of this worker.
}

async fn udp_listener_loop(w: Rc<Worker>, i: usize) {
    let mut storage = vec![0u8; BATCH * SLOT];
    let mut metas = [RecvMeta::default(); BATCH];
    let l = &w.udp[i];
    loop {
        if let Err(e) = l.sock.readable().await {
            tracing::error!(local = %l.local, "UDP listener failed: {e}");
            return;
        }
        loop {
            let res = {
                let mut chunks = storage.chunks_mut(SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                l.sock.try_io(Interest::READABLE, || {
                    l.state.recv((&l.sock).into(), &mut iovs, &mut metas)
                })
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(local = %l.local, "UDP receive error: {e}");
                    break;
                }
            };
            let now = Instant::now();
            for (meta, buf) in metas[..n].iter().zip(storage.chunks(SLOT)) {
                let client = ClientAddr {
                    transport: Transport::Udp,
                    local: l.local,
                    remote: meta.addr,
                };
                let stride = meta.stride.max(1);
                for seg in buf[..meta.len.min(SLOT)].chunks(stride) {
                    let fwd = w.core.borrow_mut().handle_client_packet(client, seg, now);
                    if let Some(to) = fwd {
                        w.send_to_peer(to);
                    }
                }
            }
            w.run_commands(now);
            w.busy.set(w.busy.get() + now.elapsed());
        }
    }
}

async fn relay_loop(w: Rc<Worker>, id: RelayId, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let start = Instant::now();
        let mut taken = 0;
        while taken < RELAY_BUDGET {
            let mut buf = w.peer_buf.borrow_mut();
            let (n, peer) =
                match sock.try_recv_from(&mut buf[HEADROOM..HEADROOM + MAX_PEER_DATAGRAM]) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                };
            taken += 1;
            let out = w.core.borrow_mut().handle_peer_packet(
                id,
                peer,
                &mut buf,
                HEADROOM..HEADROOM + n,
                start,
            );
            if let Some(out) = out {
                w.send_to_client(out.client, &buf[out.range]);
            }
        }
        w.busy.set(w.busy.get() + start.elapsed());
        if taken == RELAY_BUDGET {
            tokio::task::yield_now().await;
        }
    }
}

async fn timer_loop(w: Rc<Worker>) {
    let mut last_flush = Instant::now();
    loop {
        let deadline = w.core.borrow().poll_timeout();
        tokio::time::sleep_until(deadline.into()).await;
        let now = Instant::now();
        w.core.borrow_mut().handle_timeout(now);
        w.run_commands(now);
        let elapsed = now.duration_since(last_flush);
        if elapsed >= Duration::from_millis(900) {
            let busy = w.busy.replace(Duration::ZERO);
            let ratio = (busy.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
            let core = w.core.borrow();
            let streams = w.streams.borrow().len();
            w.metrics
                .borrow_mut()
                .flush(&core.stats, core.gauges(), streams, ratio);
            last_flush = now;
        }
    }
}

impl Worker {
    #[inline]
    pub(super) fn send_to_peer(&self, to: ToPeer<'_>) {
        let relays = self.relays.borrow();
        let Some(r) = relays.get(&to.relay) else {
            return;
        };
        if r.sock.try_send_to(to.payload, to.peer).is_err() {
            self.metrics.borrow_mut().send_dropped(Transport::Udp);
        }
    }

    /// Sends a framed message to a client over its transport.
    pub(super) fn send_to_client(&self, client: ClientAddr, bytes: &[u8]) {
        match client.transport {
            Transport::Udp => {
                let Some(l) = self.udp.iter().find(|l| l.local == client.local) else {
                    return;
                };
                let t = Transmit {
                    destination: client.remote,
                    ecn: None,
                    contents: bytes,
                    segment_size: None,
                    src_ip: None,
                };
                if l.state.try_send((&l.sock).into(), &t).is_err() {
                    self.metrics.borrow_mut().send_dropped(Transport::Udp);
                }
            }
            Transport::Tcp | Transport::Tls => {
                let out = self.streams.borrow().get(&client).cloned();
                if let Some(out) = out {
                    if !out.push(bytes) {
                        self.metrics.borrow_mut().send_dropped(client.transport);
                    }
                }
            }
        }
    }

    /// Executes everything the core asked for.
    pub(super) fn run_commands(&self, now: Instant) {
        loop {
            let Some(cmd) = self.core.borrow_mut().poll_command() else {
                return;
            };
            match cmd {
                Command::Send { to, bytes } => self.send_to_client(to, &bytes),
                Command::BindRelay { relay, family } => {
                    let bound = self.bind_relay(relay, family);
                    self.core.borrow_mut().relay_bound(relay, bound, now);
                }
                Command::CloseRelay { relay } => {
                    if let Some(e) = self.relays.borrow_mut().remove(&relay) {
                        e.task.abort();
                        drop(e.sock);
                    }
                }
            }
        }
    }

    fn bind_relay(&self, relay: RelayId, family: Family) -> Option<SocketAddr> {
        let (bind_ip, advertised) = match family {
            Family::V4 => self.relay.v4?,
            Family::V6 => self.relay.v6?,
        };
        let std_sock =
            match sockets::relay_socket(bind_ip, self.relay.port_min, self.relay.port_max) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%bind_ip, "cannot bind a relay socket: {e}");
                    return None;
                }
            };
        let port = std_sock.local_addr().ok()?.port();
        let sock = match UdpSocket::from_std(std_sock) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::warn!("cannot register a relay socket: {e}");
                return None;
            }
        };
        let me = self.self_rc();
        let task = tokio::task::spawn_local(relay_loop(me, relay, sock.clone()));
        self.relays
            .borrow_mut()
            .insert(relay, RelayEntry { sock, task });
        Some(SocketAddr::new(advertised, port))
    }

    fn self_rc(&self) -> Rc<Worker> {
        SELF.with(|s| s.borrow().as_ref().and_then(|w| w.upgrade()))
            .expect("worker registered itself")
    }
}

thread_local! {
    /// The worker of this thread (each worker thread runs exactly one).
    static SELF: RefCell<Option<std::rc::Weak<Worker>>> = const { RefCell::new(None) };
}

/// Registers `w` as this thread's worker so relay tasks can be spawned from `&Worker`.
pub(super) fn register(w: &Rc<Worker>) {
    SELF.with(|s| *s.borrow_mut() = Some(Rc::downgrade(w)));
}
