//! The SFU driver: shard threads around the sans-IO [`Sfu`] core, and the [`SfuHandle`]
//! signaling uses to reach them.
//!
//! Every shard is a thread with a current-thread tokio runtime, its own `SO_REUSEPORT` socket
//! on the SFU's one UDP port, and whole rooms (a room lives on `hash(room) % shards`), so a busy
//! room occupies one core and never stalls rooms on the others. The kernel spreads datagrams
//! over the shards by 4-tuple, which knows nothing of rooms: a datagram that lands on a shard
//! whose core does not know its source is routed by the ICE username (first STUN packet) or the
//! learned source address to the owning shard, which answers from its own socket on the same
//! port. Only that misrouted path touches shared state (the [`Router`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::handoff::TurnBack;
use crate::sfu::layer::LayerPrefs;
use crate::sfu::{
    DeviceSummary, JoinRequest, Notice, ParticipantId, ParticipantInfo, Protocol, Role, Sfu,
    SfuConfig, SfuError, TrackInfo,
};

/// Largest datagram read, and the largest ICE-TCP frame accepted.
const MTU: usize = 2048;
/// Queued outgoing datagrams that force a flush before the pass ends: a fan-out goes out in
/// chunks, so the first subscribers do not wait for the last ones to be encrypted.
const SEND_QUEUE_FLUSH: usize = 32;
/// Further datagrams taken from the socket in one pass once the first arrived.
const RECV_PER_PASS: usize = 16;
/// An ICE-TCP connection must send its first frame (a STUN binding request) within this.
const TCP_FIRST_FRAME: Duration = Duration::from_secs(10);
/// Frames queued for one ICE-TCP connection before newer ones are dropped.
const TCP_QUEUE: usize = 512;
/// ICE-TCP connections one shard keeps.
const MAX_TCP_CONNS: usize = 4096;
/// Shard ids live in the top bits of participant ids.
const SHARD_SHIFT: u32 = 48;

type Call = Box<dyn FnOnce(&mut Shard, Instant) + Send>;

enum Command {
    Call(Call),
    /// A datagram another shard received for one of ours.
    Datagram {
        source: SocketAddr,
        contents: Vec<u8>,
    },
    /// A datagram a client relayed through this node's TURN to the SFU (in-process hand-off).
    FromTurn {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
        back: TurnBack,
    },
    /// An ICE-TCP connection whose first frame names one of our sessions.
    TcpConn {
        stream: std::net::TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        first: Vec<u8>,
    },
    /// A frame read from one of our ICE-TCP connections.
    TcpFrame {
        peer: SocketAddr,
        local: SocketAddr,
        frame: Vec<u8>,
    },
    TcpClosed {
        peer: SocketAddr,
    },
    /// A media packet of a remote track, from the trunk.
    TrunkRtp {
        track: Arc<str>,
        layer: Option<String>,
        packet: bytes::Bytes,
    },
    Stop,
}

/// Which shard owns an ICE ufrag or a source address (the misrouted-datagram and TURN
/// hand-off paths only).
#[derive(Default)]
struct Router {
    ufrags: RwLock<HashMap<String, usize>>,
    addrs: RwLock<HashMap<SocketAddr, usize>>,
}

impl Router {
    /// The shard owning the session `source` belongs to, learning the address from the ICE
    /// ufrag of a STUN request.
    fn owner(&self, source: SocketAddr, contents: &[u8]) -> Option<usize> {
        if let Some(s) = self.addrs.read().ok()?.get(&source) {
            return Some(*s);
        }
        let ufrag = crate::sfu::stun_local_ufrag(contents)?;
        let owner = *self.ufrags.read().ok()?.get(ufrag)?;
        if let Ok(mut m) = self.addrs.write() {
            m.insert(source, owner);
        }
        Some(owner)
    }
}

struct Shard {
    id: usize,
    sfu: Sfu,
    notices: HashMap<ParticipantId, mpsc::UnboundedSender<Notice>>,
    router: Arc<Router>,
    /// Writers of this shard's ICE-TCP connections, by remote address.
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Each session's ICE ufrag, to drop its route when it goes.
    ufrags: HashMap<ParticipantId, String>,
    /// Relay addresses of sessions that come through this node's TURN.
    via_turn: HashMap<SocketAddr, TurnBack>,
    counters: super::metrics::ShardCounters,
    /// The trunk, once the node runs one.
    trunk: Option<Arc<super::trunk::Link>>,
}

/// A running SFU: its shards and the address sessions reach it on.
pub struct SfuNode {
    handle: SfuHandle,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How signaling reaches the SFU (cheap to clone).
#[derive(Clone)]
pub struct SfuHandle {
    shards: Arc<Vec<mpsc::UnboundedSender<Command>>>,
    /// The UDP address sessions connect to (as advertised in candidates).
    pub udp: SocketAddr,
    /// The UDP address as bound (differs from `udp` behind 1:1 NAT).
    pub bound_udp: SocketAddr,
    /// The ICE-TCP addresses (as advertised).
    pub tcp: Vec<SocketAddr>,
    router: Arc<Router>,
}

/// The SFU shut down (the node is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SFU is shutting down")]
pub struct Gone;

/// A joined session, as signaling holds it. Dropping it leaves the room.
pub struct Session {
    pub id: ParticipantId,
    shard: mpsc::UnboundedSender<Command>,
    /// Everyone else in the room at join time, and their tracks.
    pub participants: Vec<ParticipantInfo>,
    pub tracks: Vec<TrackInfo>,
    /// The room's last message sequence number at join time (0: none yet).
    pub last_seq: u64,
    /// Events for this session.
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl SfuNode {
    /// Binds the UDP port (`shards` sockets with SO_REUSEPORT) and starts the shards.
    /// `advertise` replaces the bound IP in ICE candidates (1:1 NAT); the port is the bound one.
    pub fn start(
        listen: SocketAddr,
        tcp_listen: &[SocketAddr],
        advertise: Option<std::net::IpAddr>,
        shards: usize,
        mut cfg: SfuConfig,
    ) -> std::io::Result<SfuNode> {
        let sockets = super::sockets::reuseport_udp(listen, shards.max(1))?;
        let bound = sockets[0].local_addr()?;
        let udp = SocketAddr::new(advertise.unwrap_or(bound.ip()), bound.port());
        cfg.udp_candidates = vec![udp];
        // Per configured ICE-TCP address, one SO_REUSEPORT listener per shard.
        let mut tcp_sets = Vec::new();
        cfg.tcp_candidates.clear();
        for addr in tcp_listen {
            let set = super::sockets::reuseport_tcp(*addr, sockets.len())?;
            let b = set[0].local_addr()?;
            cfg.tcp_candidates
                .push(SocketAddr::new(advertise.unwrap_or(b.ip()), b.port()));
            tcp_sets.push(set);
        }
        let tcp_addrs = cfg.tcp_candidates.clone();
        let router = Arc::new(Router::default());
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..sockets.len() {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let senders = Arc::new(senders);
        let mut threads = Vec::new();
        for (id, (sock, rx)) in sockets.into_iter().zip(receivers).enumerate() {
            let listeners: Vec<(std::net::TcpListener, SocketAddr)> = tcp_sets
                .iter_mut()
                .zip(&tcp_addrs)
                .filter_map(|(set, adv)| set.pop().map(|l| (l, *adv)))
                .collect();
            let sfu = Sfu::new(cfg.clone(), (id as u64) << SHARD_SHIFT, Instant::now())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let shard = Shard {
                id,
                sfu,
                notices: HashMap::new(),
                router: router.clone(),
                tcp: HashMap::new(),
                ufrags: HashMap::new(),
                via_turn: HashMap::new(),
                counters: Default::default(),
                trunk: None,
            };
            let peers = senders.clone();
            let t = std::thread::Builder::new()
                .name(format!("meridian-sfu-{id}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!("SFU shard {id}: cannot start runtime: {e}");
                            return;
                        }
                    };
                    rt.block_on(run_shard(shard, sock, udp, listeners, rx, peers));
                })?;
            threads.push(t);
        }
        Ok(SfuNode {
            handle: SfuHandle {
                shards: senders,
                udp,
                bound_udp: bound,
                tcp: tcp_addrs,
                router,
            },
            threads,
        })
    }

    pub fn handle(&self) -> SfuHandle {
        self.handle.clone()
    }

    /// Stops every shard and waits for them.
    pub fn stop(self) {
        for s in self.handle.shards.iter() {
            let _ = s.send(Command::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl SfuHandle {
    fn shard_for(&self, room: &str) -> &mpsc::UnboundedSender<Command> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    /// Joins `room` (on the shard that holds it).
    pub async fn join(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        resume_from: Option<u64>,
    ) -> Result<Session, Gone> {
        self.join_at(room, identity, role, resume_from, None).await
    }

    /// As [`SfuHandle::join`]; `edge_home` names the node a room served here over the trunk
    /// is homed on (its messages are sequenced there), `None` for a room homed here.
    pub async fn join_at(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        resume_from: Option<u64>,
        edge_home: Option<String>,
    ) -> Result<Session, Gone> {
        let shard = self.shard_for(room).clone();
        let (room, identity) = (room.to_string(), identity.to_string());
        let (ntx, nrx) = mpsc::unbounded_channel();
        let (id, participants, tracks, last_seq) = call(&shard, move |s, now| {
            let id = s.sfu.join(
                JoinRequest {
                    room: &room,
                    identity: &identity,
                    role,
                    resume_from,
                },
                now,
            );
            s.sfu.set_edge(&room, edge_home.as_deref());
            s.notices.insert(id, ntx);
            if let Some(u) = s.sfu.local_ufrag(id).map(str::to_string) {
                if let Ok(mut m) = s.router.ufrags.write() {
                    m.insert(u.clone(), s.id);
                }
                s.ufrags.insert(id, u);
            }
            let (p, t) = s.sfu.snapshot(id);
            let last_seq = s.sfu.room_last_seq(id);
            s.flush_notices();
            (id, p, t, last_seq)
        })
        .await?;
        Ok(Session {
            id,
            shard,
            participants,
            tracks,
            last_seq,
            notices: nrx,
        })
    }

    /// Hands a datagram a TURN client relayed to the SFU (`destination`) to the shard owning
    /// its session; the shard answers through `back`. False when no session claims it.
    pub fn handoff(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
        back: TurnBack,
    ) -> bool {
        let Some(owner) = self.router.owner(source, &contents) else {
            return false;
        };
        self.shards[owner]
            .send(Command::FromTurn {
                source,
                destination,
                contents,
                back,
            })
            .is_ok()
    }

    /// Connects every shard to the trunk.
    pub(super) async fn attach_trunk(&self, link: Arc<super::trunk::Link>) -> Result<(), Gone> {
        for shard in self.shards.iter() {
            let l = Arc::clone(&link);
            call(shard, move |s, _| s.trunk = Some(l)).await?;
        }
        Ok(())
    }

    /// Runs `f` on the shard holding `room` (the trunk driver's access to the core).
    pub(super) async fn on_room<R: Send + 'static>(
        &self,
        room: &str,
        f: impl FnOnce(&mut Sfu, Instant) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        call(self.shard_for(room), move |s, now| {
            let r = f(&mut s.sfu, now);
            s.flush_notices();
            r
        })
        .await
    }

    /// Hands a remote track's packet to the shard holding `room` (never waits).
    pub(super) fn trunk_rtp(
        &self,
        room: &str,
        track: Arc<str>,
        layer: Option<String>,
        packet: bytes::Bytes,
    ) -> bool {
        self.shard_for(room)
            .send(Command::TrunkRtp {
                track,
                layer,
                packet,
            })
            .is_ok()
    }

    /// Live devices across all shards.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, Gone> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(call(shard, |s, now| s.sfu.devices(now)).await?);
        }
        all.sort_by(|a, b| (&a.room, &a.identity).cmp(&(&b.room, &b.identity)));
        Ok(all)
    }
}

impl Session {
    async fn on<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sfu, ParticipantId, Instant) -> Result<R, SfuError> + Send + 'static,
    ) -> Result<R, SfuError> {
        let id = self.id;
        call(&self.shard, move |s, now| {
            let r = f(&mut s.sfu, id, now);
            s.flush_notices();
            r
        })
        .await
        .unwrap_or(Err(SfuError::UnknownParticipant))
    }

    pub async fn offer(&self, sdp: String) -> Result<String, SfuError> {
        self.on(move |sfu, id, now| sfu.offer(id, &sdp, now)).await
    }

    pub async fn candidate(&self, candidate: String) -> Result<(), SfuError> {
        self.on(move |sfu, id, now| sfu.remote_candidate(id, &candidate, now))
            .await
    }

    pub async fn publish(
        &self,
        mid: String,
        name: Option<String>,
        layers: Vec<(String, Option<u32>, Option<u32>)>,
    ) -> Result<(), SfuError> {
        self.on(move |sfu, id, _| sfu.publish(id, &mid, name, layers))
            .await
    }

    pub async fn unpublish(&self, track: String) -> Result<(), SfuError> {
        self.on(move |sfu, id, _| sfu.unpublish(id, &track)).await
    }

    pub async fn subscribe(
        &self,
        track: String,
        mid: String,
        prefs: LayerPrefs,
    ) -> Result<(), SfuError> {
        self.on(move |sfu, id, now| sfu.subscribe(id, &track, &mid, prefs, now))
            .await
    }

    /// Subscribes to the first track of `kind` ("video" or "audio") that the participant
    /// `identity` publishes in this session's room.
    pub async fn subscribe_publisher(
        &self,
        identity: String,
        kind: String,
        mid: String,
        prefs: LayerPrefs,
    ) -> Result<(), SfuError> {
        self.on(move |sfu, id, now| {
            let track = sfu.track_of(id, &identity, &kind)?;
            sfu.subscribe(id, &track, &mid, prefs, now)
        })
        .await
    }

    pub async fn unsubscribe(&self, track: String) -> Result<(), SfuError> {
        self.on(move |sfu, id, _| sfu.unsubscribe(id, &track)).await
    }

    pub async fn mute(&self, track: String, muted: bool) -> Result<(), SfuError> {
        self.on(move |sfu, id, now| sfu.mute(id, &track, muted, now))
            .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let id = self.id;
        let _ = self
            .shard
            .send(Command::Call(Box::new(move |s: &mut Shard, _| {
                s.forget(id);
                s.sfu.leave(id);
                s.flush_notices();
            })));
    }
}

async fn call<R: Send + 'static>(
    shard: &mpsc::UnboundedSender<Command>,
    f: impl FnOnce(&mut Shard, Instant) -> R + Send + 'static,
) -> Result<R, Gone> {
    let (tx, rx) = oneshot::channel();
    let c: Call = Box::new(move |s, now| {
        let _ = tx.send(f(s, now));
    });
    shard.send(Command::Call(c)).map_err(|_| Gone)?;
    rx.await.map_err(|_| Gone)
}

impl Shard {
    /// Hands queued notices to their sessions' signaling connections.
    fn flush_notices(&mut self) {
        let gone = self.sfu.take_departed_addrs();
        for a in &gone {
            self.via_turn.remove(a);
        }
        if !gone.is_empty() {
            if let Ok(mut m) = self.router.addrs.write() {
                for a in gone {
                    m.remove(&a);
                }
            }
        }
        while let Some((id, n)) = self.sfu.poll_notice() {
            let gone = matches!(n, Notice::Disconnected { .. });
            if let Some(tx) = self.notices.get(&id) {
                let _ = tx.send(n);
            }
            if gone {
                self.forget(id);
            }
        }
    }

    fn forget(&mut self, id: ParticipantId) {
        self.notices.remove(&id);
        if let Some(u) = self.ufrags.remove(&id) {
            if let Ok(mut m) = self.router.ufrags.write() {
                m.remove(&u);
            }
        }
    }

    /// The shard that owns a datagram this shard's core did not claim.
    fn owner_of(&self, source: SocketAddr, contents: &[u8]) -> Option<usize> {
        self.router.owner(source, contents)
    }
}

async fn run_shard(
    mut shard: Shard,
    sock: std::net::UdpSocket,
    local: SocketAddr,
    listeners: Vec<(std::net::TcpListener, SocketAddr)>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    peers: Arc<Vec<mpsc::UnboundedSender<Command>>>,
) {
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("SFU shard {}: {e}", shard.id);
            return;
        }
    };
    for (l, advertised) in listeners {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(accept_tcp(
                    l,
                    advertised,
                    shard.id,
                    shard.router.clone(),
                    peers.clone(),
                ));
            }
            Err(e) => tracing::error!("SFU shard {}: ICE-TCP listener: {e}", shard.id),
        }
    }
    let mut buf = vec![0u8; MTU];
    let mut export = super::metrics::SfuExport::default();
    let mut next_export = Instant::now() + Duration::from_secs(1);
    // What the SFU produces for UDP goes out with sendmmsg (a fan-out is one datagram per
    // subscriber, all to different addresses); see `Shard::send_out`.
    let mut queue = super::mmsg::SendQueue::default();
    let fd = sock.as_raw_fd();
    let forward_latency = metrics::histogram!("meridian_sfu_forward_latency_seconds");
    loop {
        let deadline = shard.sfu.poll_timeout().min(next_export);
        let forwarded_before = shard.sfu.stats().forwarded;
        // When the pass began handling input (None for a timer pass): media forwarded in the
        // pass has been inside the SFU from then until the flush below.
        let mut input_at = None;
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                match r {
                    Ok((n, source)) => {
                        // Whatever else is already queued is handled in the same pass (one
                        // timer computation), but each datagram's fan-out is sent before the
                        // next is read: a frame's packets arrive back to back, and the first
                        // one's subscribers must not wait for the others' encryption.
                        let mut next = Some((n, source));
                        let mut taken = 0;
                        while let Some((n, source)) = next.take() {
                            let now = Instant::now();
                            let before = shard.sfu.stats().forwarded;
                            shard.take_datagram(now, source, local, &buf[..n], &peers);
                            shard.send_out(&mut queue, fd);
                            let forwarded = shard.sfu.stats().forwarded - before;
                            if forwarded > 0 {
                                forward_latency.record_many(now.elapsed().as_secs_f64(), forwarded as usize);
                            }
                            taken += 1;
                            // Read the next one only if it will be handled in this pass.
                            if taken <= RECV_PER_PASS {
                                next = sock.try_recv_from(&mut buf).ok();
                            }
                        }
                    }
                    Err(e) => tracing::debug!("SFU shard {}: recv: {e}", shard.id),
                }
            }
            cmd = rx.recv() => {
                let now = Instant::now();
                input_at = Some(now);
                match cmd {
                    Some(Command::Call(f)) => f(&mut shard, now),
                    Some(Command::Datagram { source, contents }) => {
                        if !shard.sfu.handle_receive(now, Protocol::Udp, source, local, &contents) {
                            // Stale route: the session is gone. Never bounce it again.
                            shard.counters.unknown_source += 1;
                            if let Ok(mut m) = shard.router.addrs.write() {
                                m.remove(&source);
                            }
                        }
                    }
                    Some(Command::FromTurn { source, destination, contents, back }) => {
                        let _ = destination;
                        if shard.via_turn.len() < MAX_TCP_CONNS * 4 {
                            shard.via_turn.insert(source, back);
                        }
                        if !shard.sfu.handle_receive(now, Protocol::Udp, source, local, &contents) {
                            shard.via_turn.remove(&source);
                            shard.counters.unknown_source += 1;
                        }
                    }
                    Some(Command::TcpConn { stream, peer, local, first }) => {
                        shard.adopt_tcp(stream, peer, local, &first, &peers, now);
                    }
                    Some(Command::TcpFrame { peer, local, frame }) => {
                        shard.sfu.handle_receive(now, Protocol::Tcp, peer, local, &frame);
                    }
                    Some(Command::TcpClosed { peer }) => {
                        shard.tcp.remove(&peer);
                    }
                    Some(Command::TrunkRtp { track, layer, packet }) => {
                        shard.sfu.remote_rtp(&track, layer.as_deref(), &packet, now);
                    }
                    Some(Command::Stop) | None => break,
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                shard.sfu.handle_timeout(now);
                if now >= next_export {
                    next_export = now + Duration::from_secs(1);
                    export.export(shard.id, &mut shard.sfu, shard.counters);
                }
            }
        }
        shard.send_out(&mut queue, fd);
        shard.drain_trunk();
        if let Some(at) = input_at {
            let forwarded = shard.sfu.stats().forwarded - forwarded_before;
            if forwarded > 0 {
                forward_latency.record_many(at.elapsed().as_secs_f64(), forwarded as usize);
            }
        }
        while let Some((id, reason)) = shard.sfu.poll_failure() {
            tracing::info!(session = %id, "WebRTC failure: {reason}");
        }
        shard.flush_notices();
    }
}

impl Shard {
    /// Sends what the SFU produced: UDP in sendmmsg batches of [`SEND_QUEUE_FLUSH`] (a
    /// fan-out goes out in chunks, the first subscribers not waiting for the last), ICE-TCP to
    /// its connection, and sessions relayed by this node's TURN back through it.
    fn send_out(&mut self, queue: &mut super::mmsg::SendQueue, fd: std::os::fd::RawFd) {
        while let Some(t) = self.sfu.poll_transmit() {
            if t.proto == Protocol::Tcp {
                if let Some(w) = self.tcp.get(&t.destination) {
                    // A full queue means the connection cannot keep up: drop, like UDP would.
                    let _ = w.try_send(t.contents.into());
                }
                continue;
            }
            if t.proto != Protocol::Udp {
                continue;
            }
            if let Some(back) = self.via_turn.get(&t.destination) {
                let _ = back.tx.send(super::handoff::Control::FromSfu {
                    relay: back.relay,
                    from: t.source,
                    data: t.contents.into(),
                });
                continue;
            }
            queue.push(t.destination, &t.contents);
            self.sfu.recycle(t);
            if queue.len() >= SEND_QUEUE_FLUSH {
                self.counters.send_dropped += queue.flush(fd) as u64;
            }
        }
        if !queue.is_empty() {
            // A full socket buffer drops (real-time media: late is lost anyway), counted.
            self.counters.send_dropped += queue.flush(fd) as u64;
        }
    }

    /// What the SFU has for the trunk: packets of exported tracks go out at once, once per
    /// subscribed node; the rest to the trunk driver.
    fn drain_trunk(&mut self) {
        let Some(link) = self.trunk.clone() else {
            while self.sfu.poll_trunk().is_some() {}
            return;
        };
        while let Some(o) = self.sfu.poll_trunk() {
            match o {
                crate::sfu::TrunkOutput::Packet { track, layer, rtp } => {
                    link.send_packet(&track, layer, &rtp);
                }
                other => link.to_driver(other),
            }
        }
    }

    /// One datagram from the shard's socket: to our session, or routed to the shard that owns
    /// it.
    fn take_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        local: SocketAddr,
        contents: &[u8],
        peers: &Arc<Vec<mpsc::UnboundedSender<Command>>>,
    ) {
        if self
            .sfu
            .handle_receive(now, Protocol::Udp, source, local, contents)
        {
            return;
        }
        match self.owner_of(source, contents) {
            Some(owner) if owner != self.id => {
                self.counters.misrouted += 1;
                let _ = peers[owner].send(Command::Datagram {
                    source,
                    contents: contents.to_vec(),
                });
            }
            _ => self.counters.unknown_source += 1,
        }
    }

    /// Takes over an ICE-TCP connection whose first frame belongs to one of our sessions.
    fn adopt_tcp(
        &mut self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        first: &[u8],
        peers: &Arc<Vec<mpsc::UnboundedSender<Command>>>,
        now: Instant,
    ) {
        if self.tcp.len() >= MAX_TCP_CONNS {
            return;
        }
        let Ok(stream) = TcpStream::from_std(stream) else {
            return;
        };
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
        self.tcp.insert(peer, wtx);
        tokio::spawn(async move {
            while let Some(frame) = wrx.recv().await {
                let Ok(len) = u16::try_from(frame.len()) else {
                    continue;
                };
                let mut out = Vec::with_capacity(frame.len() + 2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&frame);
                if wr.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        let me = peers[self.id].clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MTU];
            while let Ok(Some(n)) = read_frame(&mut rd, &mut buf).await {
                let frame = buf[..n].to_vec();
                if me.send(Command::TcpFrame { peer, local, frame }).is_err() {
                    return;
                }
            }
            let _ = me.send(Command::TcpClosed { peer });
        });
        if !self
            .sfu
            .handle_receive(now, Protocol::Tcp, peer, local, first)
        {
            self.tcp.remove(&peer);
        }
    }
}

/// Reads one RFC 4571 frame (16-bit length, then the packet) into `buf`. `Ok(None)` at a clean
/// end; an error for a frame that is empty or larger than `buf`.
async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u16::from_be_bytes(len) as usize;
    if n == 0 || n > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("ICE-TCP frame of {n} bytes"),
        ));
    }
    r.read_exact(&mut buf[..n]).await?;
    Ok(Some(n))
}

/// Accepts ICE-TCP connections on one shard's listener and hands each to the shard that owns
/// the session named in its first frame (a STUN binding request carrying the ICE ufrag).
async fn accept_tcp(
    listener: tokio::net::TcpListener,
    advertised: SocketAddr,
    shard: usize,
    router: Arc<Router>,
    peers: Arc<Vec<mpsc::UnboundedSender<Command>>>,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("SFU shard {shard}: ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MTU];
            let first = match tokio::time::timeout(
                TCP_FIRST_FRAME,
                read_frame(&mut stream, &mut buf),
            )
            .await
            {
                Ok(Ok(Some(n))) => buf[..n].to_vec(),
                _ => return,
            };
            let owner = crate::sfu::stun_local_ufrag(&first)
                .and_then(|u| router.ufrags.read().ok()?.get(u).copied());
            let Some(owner) = owner else {
                tracing::debug!(%peer, "ICE-TCP connection for no known session");
                return;
            };
            let Ok(stream) = stream.into_std() else {
                return;
            };
            let _ = peers[owner].send(Command::TcpConn {
                stream,
                peer,
                local: advertised,
                first,
            });
        });
    }
}
