//! One worker thread: a current-thread tokio runtime driving one TURN core and the sockets
//! that feed it. Nothing here is shared with other workers except the read-mostly [`Shared`]
//! state inside the core and the metrics registry.
//!
//! UDP (listeners and relay sockets) is served by one dispatch task over the worker's own
//! epoll set ([`Poller`]): each pass reads every ready socket in batches (recvmmsg), hands
//! the datagrams to the core, and ends with one sendmmsg per listener for everything bound to
//! clients. TCP/TLS connections are tokio tasks (see `stream`).
//!
//! [`Shared`]: crate::turn::Shared

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::handoff::Control;
use super::metrics::WorkerMetrics;
use super::mmsg::{RecvBatch, SendQueue, RECV_BATCH, SEND_BATCH};
use super::poller::Poller;
use super::sockets;
use super::stream::{self, StreamOut};
use super::tls::ReloadableTls;
use crate::turn::{ClientAddr, Command, Family, RelayId, Server, ToPeer, Transport};

/// Datagrams taken per listener receive call (recvmmsg batch).
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Buffer per received datagram on a listener: room for GRO-coalesced segments.
const SLOT: usize = 64 * 1024;
/// Listener batches taken per readiness report (the level-triggered set reports it again).
const LISTENER_ROUNDS: usize = 4;
/// Ready sockets taken per epoll pass.
const EVENTS: usize = 256;
/// Dispatch passes before yielding to TCP/TLS tasks and timers.
const PASSES_BEFORE_YIELD: usize = 16;
/// Epoll tokens at and above this name listeners (relay ids are far below).
const LISTENER_TOKEN: u64 = u64::MAX - 1024;

/// Where relay sockets bind and what they advertise.
#[derive(Debug, Clone, Copy)]
pub struct RelayBinding {
    pub v4: Option<(IpAddr, IpAddr)>,
    pub v6: Option<(IpAddr, IpAddr)>,
    pub port_min: u16,
    pub port_max: u16,
}

/// The in-process SFU as a TURN worker sees it: datagrams a client relays to one of `addrs`
/// are handed to the SFU directly, with no loopback socket hop.
#[derive(Clone)]
pub struct SfuLink {
    pub handle: super::SfuHandle,
    /// The SFU's UDP addresses (bound and advertised).
    pub addrs: Vec<SocketAddr>,
    /// IPs permitted only because the SFU lives there (the node's own or loopback): other
    /// ports on them stay refused.
    pub guarded: Vec<IpAddr>,
    /// This worker's control channel, for the SFU's replies.
    pub me: mpsc::UnboundedSender<Control>,
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
    /// How long a TCP/TLS connection may hold no allocation before it is closed.
    pub unallocated_timeout: Duration,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub sfu: Option<SfuLink>,
}

struct UdpListener {
    sock: std::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    /// Datagrams for clients, flushed with sendmmsg at the end of a dispatch pass.
    out: RefCell<SendQueue>,
}

pub(super) struct Worker {
    pub(super) core: RefCell<Server>,
    poller: AsyncFd<Poller>,
    udp: Vec<UdpListener>,
    relays: RefCell<FxHashMap<RelayId, std::net::UdpSocket>>,
    pub(super) streams: RefCell<FxHashMap<ClientAddr, Rc<StreamOut>>>,
    relay: RelayBinding,
    pub(super) unallocated_timeout: Duration,
    peer_batch: RefCell<RecvBatch>,
    pub(super) metrics: RefCell<WorkerMetrics>,
    sfu: Option<SfuLink>,
    /// Advertised address of each relay socket (the source the SFU sees).
    relay_addrs: RefCell<FxHashMap<RelayId, SocketAddr>>,
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
            if let Err(e) = local.block_on(&rt, run(setup)) {
                tracing::error!("worker stopped: {e}");
            }
        })
}

async fn run(setup: WorkerSetup) -> std::io::Result<()> {
    let WorkerSetup {
        id,
        udp,
        tcp,
        tls,
        tls_config,
        server,
        relay,
        unallocated_timeout,
        mut control,
        sfu,
    } = setup;
    let poller = Poller::new()?;
    let mut listeners = Vec::new();
    for (i, sock) in udp.into_iter().enumerate() {
        let local = sock.local_addr()?;
        let state = UdpSocketState::new((&sock).into())?;
        poller.add(sock.as_raw_fd(), LISTENER_TOKEN + i as u64)?;
        listeners.push(UdpListener {
            sock,
            state,
            local,
            out: RefCell::new(SendQueue::default()),
        });
    }
    // SAFETY: the AsyncFd owns the poller, so the descriptor stays open while registered.
    let poller = unsafe { AsyncFd::register(poller) }.map_err(std::io::Error::from)?;
    let w = Rc::new(Worker {
        core: RefCell::new(server),
        poller,
        udp: listeners,
        relays: RefCell::new(FxHashMap::default()),
        streams: RefCell::new(FxHashMap::default()),
        relay,
        unallocated_timeout,
        peer_batch: RefCell::new(RecvBatch::default()),
        metrics: RefCell::new(WorkerMetrics::new(id)),
        sfu,
        relay_addrs: RefCell::new(FxHashMap::default()),
    });
    tokio::task::spawn_local(dispatch_loop(w.clone()));
    for l in tcp {
        stream::spawn_accept_loop(w.clone(), l, Transport::Tcp, None);
    }
    for l in tls {
        stream::spawn_accept_loop(w.clone(), l, Transport::Tls, tls_config.clone());
    }
    tokio::task::spawn_local(timer_loop(w.clone()));
    while let Some(c) = control.recv().await {
        match c {
            Control::Drain(alternate) => {
                let mut core = w.core.borrow_mut();
                if let Some(a) = alternate {
                    core.set_alternate(a);
                }
                core.set_draining(true);
            }
            Control::Stop => break,
            Control::FromSfu { relay, from, data } => w.relay_from_sfu(relay, from, &data),
        }
    }
    // Dropping the LocalSet ends every task and closes every socket of this worker.
    Ok(())
}

/// Serves every ready UDP socket of the worker, pass after pass, until none is ready.
async fn dispatch_loop(w: Rc<Worker>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut storage = vec![0u8; BATCH * SLOT];
    loop {
        let mut guard = match w.poller.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("UDP dispatch failed: {e}");
                return;
            }
        };
        for pass in 0.. {
            let n = match w.poller.get_ref().poll(&mut events) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("epoll_wait: {e}");
                    0
                }
            };
            if n == 0 {
                // Nothing ready: a socket becoming ready from now on raises a new readiness
                // event that `clear_ready` does not erase (tokio's readiness tick).
                guard.clear_ready();
                break;
            }
            let now = Instant::now();
            // Whether every socket served in this pass was read until the kernel had no more.
            let mut drained = n < events.len();
            for ev in &events[..n] {
                let token = ev.u64;
                drained &= if token >= LISTENER_TOKEN {
                    w.serve_listener((token - LISTENER_TOKEN) as usize, &mut storage, now)
                } else {
                    w.serve_relay(RelayId(token), now)
                };
            }
            w.flush_udp();
            if drained {
                // Everything reported was read dry, so an empty epoll_wait would follow; skip
                // it. Data arriving meanwhile wakes the set again with a newer readiness tick,
                // which this `clear_ready` leaves alone.
                guard.clear_ready();
                break;
            }
            if pass + 1 == PASSES_BEFORE_YIELD {
                drop(guard);
                tokio::task::yield_now().await;
                break;
            }
        }
    }
}

async fn timer_loop(w: Rc<Worker>) {
    let mut last_flush = Instant::now();
    let mut last_cpu = thread_cpu_time();
    loop {
        let deadline = w.core.borrow().poll_timeout();
        tokio::time::sleep_until(deadline.into()).await;
        let now = Instant::now();
        w.core.borrow_mut().handle_timeout(now);
        w.run_commands(now);
        w.flush_udp();
        let elapsed = now.duration_since(last_flush);
        if elapsed >= Duration::from_millis(900) {
            let cpu = thread_cpu_time();
            let ratio =
                (cpu.saturating_sub(last_cpu).as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
            last_cpu = cpu;
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
    /// Client datagrams on listener `i`: a few recvmmsg batches, each handed to the core.
    /// Returns whether the socket was read dry.
    fn serve_listener(&self, i: usize, storage: &mut [u8], now: Instant) -> bool {
        let Some(l) = self.udp.get(i) else {
            return true;
        };
        let mut metas = [RecvMeta::default(); BATCH];
        for _ in 0..LISTENER_ROUNDS {
            let res = {
                let mut chunks = storage.chunks_mut(SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                l.state.recv((&l.sock).into(), &mut iovs, &mut metas)
            };
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!(local = %l.local, "UDP receive error: {e}");
                    }
                    return true;
                }
            };
            for (meta, buf) in metas[..n].iter().zip(storage.chunks(SLOT)) {
                let client = ClientAddr {
                    transport: Transport::Udp,
                    local: l.local,
                    remote: meta.addr,
                };
                let stride = meta.stride.max(1);
                for seg in buf[..meta.len.min(SLOT)].chunks(stride) {
                    let fwd = self
                        .core
                        .borrow_mut()
                        .handle_client_packet(client, seg, now);
                    if let Some(to) = fwd {
                        self.send_to_peer(to);
                    }
                }
            }
            self.run_commands(now);
            if n < BATCH {
                return true;
            }
        }
        false
    }

    /// Peer datagrams on a relay socket: one recvmmsg batch, framed in place by the core.
    /// Returns whether the socket was read dry.
    fn serve_relay(&self, id: RelayId, now: Instant) -> bool {
        let fd = match self.relays.borrow().get(&id) {
            Some(s) => s.as_raw_fd(),
            None => return true, // closed earlier in this pass
        };
        let mut batch = self.peer_batch.borrow_mut();
        let Ok(n) = batch.recv(fd) else { return true };
        for k in 0..n {
            let Some(peer) = batch.peer(k) else {
                self.metrics.borrow_mut().oversized_dropped();
                continue;
            };
            let (buf, payload) = batch.slot(k);
            let out = self
                .core
                .borrow_mut()
                .handle_peer_packet(id, peer, buf, payload, now);
            if let Some(out) = out {
                self.send_to_client(out.client, &buf[out.range]);
            }
        }
        n < RECV_BATCH
    }

    /// Sends what is queued for UDP clients.
    pub(super) fn flush_udp(&self) {
        for l in &self.udp {
            let mut q = l.out.borrow_mut();
            if !q.is_empty() {
                let dropped = q.flush(l.sock.as_raw_fd());
                if dropped > 0 {
                    self.metrics
                        .borrow_mut()
                        .send_dropped_n(Transport::Udp, dropped);
                }
            }
        }
    }

    #[inline]
    pub(super) fn send_to_peer(&self, to: ToPeer<'_>) {
        if let Some(link) = &self.sfu {
            if link.addrs.contains(&to.peer) {
                // The in-process hand-off: the SFU sees the relay address as the source.
                if let Some(src) = self.relay_addrs.borrow().get(&to.relay) {
                    let back = super::handoff::TurnBack {
                        tx: link.me.clone(),
                        relay: to.relay,
                    };
                    if link
                        .handle
                        .handoff(*src, to.peer, to.payload.to_vec(), back)
                    {
                        ::metrics::counter!("meridian_sfu_turn_handoff_total", "direction" => "to_sfu").increment(1);
                    }
                }
                return;
            }
            if link.guarded.contains(&to.peer.ip()) {
                // Permitted for the SFU's port only.
                self.metrics.borrow_mut().send_dropped(Transport::Udp);
                return;
            }
        }
        let relays = self.relays.borrow();
        let Some(sock) = relays.get(&to.relay) else {
            return;
        };
        if sock.send_to(to.payload, to.peer).is_err() {
            self.metrics.borrow_mut().send_dropped(Transport::Udp);
        }
    }

    /// A datagram from the in-process SFU to a relay address: framed for the client by the
    /// core exactly as one read from the relay socket.
    fn relay_from_sfu(&self, relay: RelayId, from: SocketAddr, data: &[u8]) {
        use crate::turn::{HEADROOM, TAILROOM};
        let mut buf = vec![0u8; HEADROOM + data.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        let out = self.core.borrow_mut().handle_peer_packet(
            relay,
            from,
            &mut buf,
            HEADROOM..HEADROOM + data.len(),
            Instant::now(),
        );
        if let Some(out) = out {
            ::metrics::counter!("meridian_sfu_turn_handoff_total", "direction" => "to_client")
                .increment(1);
            self.send_to_client(out.client, &buf[out.range]);
            self.flush_udp();
        }
    }

    /// Queues (UDP) or writes (TCP/TLS) a framed message for a client.
    pub(super) fn send_to_client(&self, client: ClientAddr, bytes: &[u8]) {
        match client.transport {
            Transport::Udp => {
                let Some(l) = self.udp.iter().find(|l| l.local == client.local) else {
                    return;
                };
                let mut q = l.out.borrow_mut();
                q.push(client.remote, bytes);
                if q.len() >= SEND_BATCH {
                    let dropped = q.flush(l.sock.as_raw_fd());
                    if dropped > 0 {
                        self.metrics
                            .borrow_mut()
                            .send_dropped_n(Transport::Udp, dropped);
                    }
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

    /// Executes everything the core asked for. Datagrams for UDP clients are queued; callers
    /// outside the dispatch pass follow with [`Worker::flush_udp`].
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
                    self.relay_addrs.borrow_mut().remove(&relay);
                    if let Some(sock) = self.relays.borrow_mut().remove(&relay) {
                        self.poller.get_ref().delete(sock.as_raw_fd());
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
        let sock = match sockets::relay_socket(bind_ip, self.relay.port_min, self.relay.port_max) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%bind_ip, "cannot bind a relay socket: {e}");
                return None;
            }
        };
        let port = sock.local_addr().ok()?.port();
        if let Err(e) = self.poller.get_ref().add(sock.as_raw_fd(), relay.0) {
            tracing::warn!("cannot watch a relay socket: {e}");
            return None;
        }
        self.relays.borrow_mut().insert(relay, sock);
        let addr = SocketAddr::new(advertised, port);
        self.relay_addrs.borrow_mut().insert(relay, addr);
        Some(addr)
    }
}

/// CPU time used by the calling thread (user and system), for the busy ratio.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
