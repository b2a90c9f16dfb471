//! The trunk's quinn driver: one QUIC endpoint per node (listener and dialer on one UDP
//! socket), at most one connection per peer node, opened on demand and closed when idle.
//!
//! A connection starts with the TLS 1.3 handshake (mutual, under the cluster CA; see
//! [`crate::tls`]), then the dialer opens the one control stream and each side sends
//! [`Msg::Hello`] naming itself, which must match its certificate. A peer that fails any of
//! that, or is not on the allow-list, is refused and counted in
//! `meridian_trunk_refused_total{reason}`. Media goes as datagrams ([`Trunk::send_datagram`]),
//! control in order on the stream ([`Trunk::send`]). Everything that arrives is an [`Event`].
//!
//! If both nodes dial each other at once, the connection dialed by the lower node id is kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::tls::{self, TlsMaterial};
use crate::wire::{self, FrameReader, Msg, WireError, VERSION};

/// Messages queued for a peer while it is dialed, and frames queued for its stream.
const QUEUE: usize = 4096;
/// Events queued for the application.
const EVENTS: usize = 16_384;
/// How long a handshake and the Hello exchange may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The initial QUIC packet size: room for a full-size RTP packet in a datagram from the
/// start (MTU discovery raises it further where the path allows).
const INITIAL_MTU: u16 = 1400;

/// Application close codes.
const CODE_REFUSED: u32 = 1;
const CODE_IDLE: u32 = 2;
const CODE_DUPLICATE: u32 = 3;
const CODE_SHUTDOWN: u32 = 4;
const CODE_PROTOCOL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error("trunk listener {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("trunk.cert is for node {cert:?}, but this node is {node:?}")]
    WrongCert { cert: String, node: String },
    #[error("peer {0} is not on trunk.allow_peers")]
    NotAllowed(String),
    #[error("no trunk address known for node {0}")]
    NoAddress(String),
    #[error("the trunk to {0} is not up")]
    NotUp(String),
    #[error("the queue to {0} is full")]
    QueueFull(String),
    #[error("datagram of {size} bytes is over the trunk's limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// Resolves a node id to the "host:port" its trunk listens at (from the directory).
pub type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct TrunkSettings {
    pub node: String,
    pub listen: SocketAddr,
    pub tls: TlsMaterial,
    /// Node ids allowed; empty = every node with a certificate from the CA.
    pub allow: Vec<String>,
    pub idle_timeout: Duration,
    pub keepalive: Duration,
    pub resolve: Resolver,
}

/// What arrives on the trunk.
#[derive(Debug)]
pub enum Event {
    /// A connection to `peer` is up (either side dialed).
    Up {
        peer: String,
    },
    Msg {
        peer: String,
        msg: Msg,
    },
    Datagram {
        peer: String,
        flow: u32,
        packet: Bytes,
    },
    /// The connection to `peer` ended (idle, closed, lost); it is dialed again on demand.
    Down {
        peer: String,
        reason: String,
    },
}

/// A snapshot of one trunk, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStats {
    pub peer: String,
    pub remote: String,
    pub rtt_ms: f64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
    pub lost_packets: u64,
    pub dialed_by_us: bool,
}

struct Up {
    conn: quinn::Connection,
    ctrl: mpsc::Sender<Vec<u8>>,
    dialer: String,
    activity: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

struct Registration {
    dialer: String,
    ctrl_rx: mpsc::Receiver<Vec<u8>>,
    activity: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    tx_datagrams: AtomicU64,
    rx_datagrams: AtomicU64,
}

enum PeerState {
    Dialing(Vec<Msg>),
    Up(Up),
}

struct Inner {
    me: String,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    allow: Vec<String>,
    idle_timeout: Duration,
    keepalive: Duration,
    resolve: Resolver,
    peers: Mutex<HashMap<String, PeerState>>,
    events: mpsc::Sender<Event>,
    started: Instant,
    refusals: Mutex<HashMap<&'static str, u64>>,
}

/// A handle on the node's trunk endpoint (cheap to clone).
#[derive(Clone)]
pub struct Trunk {
    inner: Arc<Inner>,
}

fn transport(keepalive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keepalive));
    let idle = (keepalive * 4).max(Duration::from_secs(2));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.initial_mtu(INITIAL_MTU);
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9001 section 4.8).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn bad_input(reason: &'static str) {
    metrics::counter!("meridian_trunk_bad_input_total", "reason" => reason).increment(1);
}

impl Trunk {
    /// Binds the listener and starts accepting. Fails on a bad certificate (or one for
    /// another node) and when the port cannot be bound.
    pub fn start(s: TrunkSettings) -> Result<(Trunk, mpsc::Receiver<Event>), TrunkError> {
        match s.tls.own_node() {
            Some(id) if id.eq_ignore_ascii_case(&s.node) => {}
            Some(id) => {
                return Err(TrunkError::WrongCert {
                    cert: id,
                    node: s.node,
                })
            }
            None => {
                return Err(TrunkError::WrongCert {
                    cert: String::new(),
                    node: s.node,
                })
            }
        }
        let mut server = quinn::ServerConfig::with_crypto(s.tls.server_crypto()?);
        server.transport_config(transport(s.keepalive));
        let mut client = quinn::ClientConfig::new(s.tls.client_crypto()?);
        client.transport_config(transport(s.keepalive));
        let endpoint = quinn::Endpoint::server(server, s.listen).map_err(|e| TrunkError::Bind {
            addr: s.listen,
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel(EVENTS);
        let inner = Arc::new(Inner {
            me: s.node,
            endpoint,
            client,
            allow: s.allow,
            idle_timeout: s.idle_timeout,
            keepalive: s.keepalive,
            resolve: s.resolve,
            peers: Mutex::new(HashMap::new()),
            events: tx,
            started: Instant::now(),
            refusals: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&inner).accept_loop());
        Ok((Trunk { inner }, rx))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    pub fn node(&self) -> &str {
        &self.inner.me
    }

    /// Sends a control message to `peer`, dialing it if needed (messages wait, in order,
    /// until it is up).
    pub fn send(&self, peer: &str, msg: Msg) -> Result<(), TrunkError> {
        let inner = &self.inner;
        if !inner.allowed(peer) {
            return Err(TrunkError::NotAllowed(peer.into()));
        }
        let mut peers = inner.peers();
        match peers.get_mut(peer) {
            Some(PeerState::Up(up)) => {
                up.activity.store(inner.now_ms(), Ordering::Relaxed);
                metrics::counter!("meridian_trunk_messages_total", "peer" => peer.to_string(), "direction" => "tx").increment(1);
                up.ctrl
                    .try_send(wire::encode_frame(&msg))
                    .map_err(|_| TrunkError::QueueFull(peer.into()))
            }
            Some(PeerState::Dialing(q)) => {
                if q.len() >= QUEUE {
                    return Err(TrunkError::QueueFull(peer.into()));
                }
                q.push(msg);
                Ok(())
            }
            None => {
                let addr =
                    (inner.resolve)(peer).ok_or_else(|| TrunkError::NoAddress(peer.into()))?;
                peers.insert(peer.to_string(), PeerState::Dialing(vec![msg]));
                drop(peers);
                tokio::spawn(Arc::clone(inner).dial(peer.to_string(), addr));
                Ok(())
            }
        }
    }

    /// Sends one media packet on `flow` to `peer`. Never waits: a peer that is not up, or a
    /// full send buffer (quinn drops the oldest), loses the packet.
    pub fn send_datagram(&self, peer: &str, flow: u32, packet: &[u8]) -> Result<(), TrunkError> {
        let inner = &self.inner;
        let peers = inner.peers();
        let Some(PeerState::Up(up)) = peers.get(peer) else {
            metrics::counter!("meridian_trunk_datagrams_dropped_total", "reason" => "not_up")
                .increment(1);
            return Err(TrunkError::NotUp(peer.into()));
        };
        let mut buf = Vec::new();
        wire::encode_datagram(flow, packet, &mut buf);
        let size = buf.len();
        match up.conn.send_datagram(Bytes::from(buf)) {
            Ok(()) => {
                up.counters.tx_datagrams.fetch_add(1, Ordering::Relaxed);
                up.activity.store(inner.now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                metrics::counter!("meridian_trunk_datagrams_dropped_total", "reason" => "too_large").increment(1);
                Err(TrunkError::TooLarge {
                    size,
                    limit: up.conn.max_datagram_size().unwrap_or(0),
                })
            }
            Err(_) => {
                metrics::counter!("meridian_trunk_datagrams_dropped_total", "reason" => "not_up")
                    .increment(1);
                Err(TrunkError::NotUp(peer.into()))
            }
        }
    }

    pub fn is_up(&self, peer: &str) -> bool {
        matches!(self.inner.peers().get(peer), Some(PeerState::Up(_)))
    }

    /// The smoothed RTT of the trunk to `peer`.
    pub fn rtt(&self, peer: &str) -> Option<Duration> {
        match self.inner.peers().get(peer) {
            Some(PeerState::Up(up)) => Some(up.conn.rtt()),
            _ => None,
        }
    }

    /// Every trunk that is up.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers = self.inner.peers();
        let mut v: Vec<PeerStats> = peers
            .iter()
            .filter_map(|(id, p)| match p {
                PeerState::Up(up) => Some(peer_stats(&self.inner.me, id, up)),
                PeerState::Dialing(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    /// Peers refused so far, by reason ("handshake", "certificate", "not_allowed", "hello",
    /// "identity", "timeout").
    pub fn refusals(&self) -> HashMap<&'static str, u64> {
        self.inner
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every trunk and the listener.
    pub fn close(&self) {
        self.inner.endpoint.close(CODE_SHUTDOWN.into(), b"shutdown");
    }
}

fn peer_stats(me: &str, id: &str, up: &Up) -> PeerStats {
    let s = up.conn.stats();
    PeerStats {
        peer: id.to_string(),
        remote: up.conn.remote_address().to_string(),
        rtt_ms: up.conn.rtt().as_secs_f64() * 1e3,
        tx_bytes: s.udp_tx.bytes,
        rx_bytes: s.udp_rx.bytes,
        tx_datagrams: up.counters.tx_datagrams.load(Ordering::Relaxed),
        rx_datagrams: up.counters.rx_datagrams.load(Ordering::Relaxed),
        lost_packets: s.path.lost_packets,
        dialed_by_us: up.dialer == me,
    }
}

async fn read_hello(recv: &mut quinn::RecvStream, reader: &mut FrameReader) -> Option<String> {
    loop {
        match reader.next_msg() {
            Ok(Some(Msg::Hello { node, version })) if version == VERSION => return Some(node),
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        let chunk = recv.read_chunk(wire::MAX_FRAME, true).await.ok()??;
        reader.push(&chunk.bytes);
    }
}

impl Inner {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerState>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn refused(&self, reason: &'static str) {
        metrics::counter!("meridian_trunk_refused_total", "reason" => reason).increment(1);
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_insert(0) += 1;
    }

    fn allowed(&self, peer: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| a.eq_ignore_ascii_case(peer))
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            tokio::spawn(Arc::clone(&self).accept_one(incoming));
        }
    }

    async fn accept_one(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match tokio::time::timeout(SETUP_TIMEOUT, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // A TLS alert (either side's): the certificate was refused.
                let tls_alert = match &e {
                    quinn::ConnectionError::TransportError(t) => is_crypto(t.code),
                    quinn::ConnectionError::ConnectionClosed(c) => is_crypto(c.error_code),
                    _ => false,
                };
                self.refused(if tls_alert {
                    "certificate"
                } else {
                    "handshake"
                });
                tracing::warn!(%remote, "trunk handshake refused: {e}");
                return;
            }
            Err(_) => {
                self.refused("timeout");
                return;
            }
        };
        let Some(peer) = tls::peer_node(&conn) else {
            self.refused("certificate");
            tracing::warn!(%remote, "trunk peer's certificate names no node");
            conn.close(CODE_REFUSED.into(), b"certificate names no node");
            return;
        };
        if !self.allowed(&peer) {
            self.refused("not_allowed");
            tracing::warn!(%remote, peer, "trunk peer not on trunk.allow_peers");
            conn.close(CODE_REFUSED.into(), b"not allowed");
            return;
        }
        let setup = async {
            let (send, mut recv) = conn.accept_bi().await.ok()?;
            let mut reader = FrameReader::default();
            let said = read_hello(&mut recv, &mut reader).await?;
            Some((said, send, recv, reader))
        };
        let Ok(Some((said, mut send, recv, reader))) =
            tokio::time::timeout(SETUP_TIMEOUT, setup).await
        else {
            self.refused("hello");
            conn.close(CODE_PROTOCOL.into(), b"no hello");
            return;
        };
        if !said.eq_ignore_ascii_case(&peer) {
            self.refused("identity");
            tracing::warn!(%remote, peer, said, "trunk peer claims another node than its certificate");
            conn.close(CODE_REFUSED.into(), b"hello does not match the certificate");
            return;
        }
        let Some(reg) = self.register(&peer, &peer, &conn) else {
            conn.close(CODE_DUPLICATE.into(), b"duplicate");
            return;
        };
        let hello = wire::encode_frame(&Msg::Hello {
            node: self.me.clone(),
            version: VERSION,
        });
        if send.write_all(&hello).await.is_err() {
            // `run` notices the connection is gone and cleans up.
            tracing::debug!(peer, "trunk peer left during setup");
        }
        self.run(peer, reg, conn, send, recv, reader).await;
    }

    async fn dial(self: Arc<Self>, peer: String, addr: String) {
        let mut refused_as_duplicate = false;
        let result = async {
            let sock = tokio::net::lookup_host(&addr)
                .await
                .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to nothing"))?;
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), sock, &tls::node_name(&peer))
                .map_err(|e| e.to_string())?;
            let conn = tokio::time::timeout(SETUP_TIMEOUT, connecting)
                .await
                .map_err(|_| "handshake timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let setup = async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                let hello = wire::encode_frame(&Msg::Hello {
                    node: self.me.clone(),
                    version: VERSION,
                });
                send.write_all(&hello).await.ok()?;
                let mut reader = FrameReader::default();
                let said = read_hello(&mut recv, &mut reader).await?;
                Some((said, send, recv, reader))
            };
            let Ok(Some((said, send, recv, reader))) =
                tokio::time::timeout(SETUP_TIMEOUT, setup).await
            else {
                if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
                    refused_as_duplicate = c.error_code == CODE_DUPLICATE.into();
                    return Err(format!("refused: {}", String::from_utf8_lossy(&c.reason)));
                }
                return Err("no hello from the peer".to_string());
            };
            if !said.eq_ignore_ascii_case(&peer) {
                conn.close(CODE_REFUSED.into(), b"hello does not match");
                return Err(format!("peer says it is {said:?}"));
            }
            Ok((conn, send, recv, reader))
        }
        .await;
        match result {
            Ok((conn, send, recv, reader)) => {
                let me = self.me.clone();
                match self.register(&peer, &me, &conn) {
                    Some(reg) => self.run(peer, reg, conn, send, recv, reader).await,
                    None => conn.close(CODE_DUPLICATE.into(), b"duplicate"),
                }
            }
            Err(e) => {
                if refused_as_duplicate {
                    // The peer is dialing us (its dial wins): the queue moves onto that
                    // connection when it arrives.
                    for _ in 0..(SETUP_TIMEOUT.as_millis() / 10) {
                        if !matches!(self.peers().get(&peer), Some(PeerState::Dialing(_))) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                metrics::counter!("meridian_trunk_dial_failures_total").increment(1);
                tracing::warn!(peer, addr, "trunk dial failed: {e}");
                let dropped = {
                    let mut peers = self.peers();
                    match peers.remove(&peer) {
                        Some(PeerState::Dialing(q)) => q.len(),
                        Some(up @ PeerState::Up(_)) => {
                            // The peer dialed us meanwhile: keep that one.
                            peers.insert(peer.clone(), up);
                            return;
                        }
                        None => 0,
                    }
                };
                let _ = self
                    .events
                    .send(Event::Down {
                        peer,
                        reason: format!("dial failed ({dropped} messages dropped): {e}"),
                    })
                    .await;
            }
        }
    }

    /// Makes `conn` (dialed by `dialer`) the connection to `peer`, or refuses it as a
    /// duplicate. When both nodes dial at once, the lower node id's dial wins: the acceptor
    /// decides here, before it answers the Hello, and a dialer never replaces a connection.
    fn register(&self, peer: &str, dialer: &str, conn: &quinn::Connection) -> Option<Registration> {
        let mut peers = self.peers();
        let we_dialed = dialer == self.me;
        let we_win = self.me.to_ascii_lowercase() < peer.to_ascii_lowercase();
        match peers.get(peer) {
            Some(PeerState::Dialing(_)) if !we_dialed && we_win => return None,
            Some(PeerState::Up(up)) if !we_dialed && we_win && up.dialer == self.me => return None,
            Some(PeerState::Up(_)) if we_dialed => return None,
            _ => {}
        }
        let queued = match peers.remove(peer) {
            Some(PeerState::Dialing(q)) => q,
            Some(PeerState::Up(old)) => {
                // The peer dialed again: it lost the old connection (restarted, …).
                old.conn.close(CODE_DUPLICATE.into(), b"replaced");
                Vec::new()
            }
            None => Vec::new(),
        };
        let (ctrl_tx, ctrl_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        for m in queued {
            let _ = ctrl_tx.try_send(wire::encode_frame(&m));
        }
        let activity = Arc::new(AtomicU64::new(self.now_ms()));
        let counters = Arc::new(Counters::default());
        peers.insert(
            peer.to_string(),
            PeerState::Up(Up {
                conn: conn.clone(),
                ctrl: ctrl_tx,
                dialer: dialer.to_string(),
                activity: Arc::clone(&activity),
                counters: Arc::clone(&counters),
            }),
        );
        Some(Registration {
            dialer: dialer.to_string(),
            ctrl_rx,
            activity,
            counters,
        })
    }

    /// Runs an authenticated, registered connection until it ends.
    async fn run(
        self: Arc<Self>,
        peer: String,
        reg: Registration,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut reader: FrameReader,
    ) {
        let Registration {
            dialer,
            mut ctrl_rx,
            activity,
            counters,
        } = reg;
        metrics::gauge!("meridian_trunk_connections").increment(1.0);
        tracing::info!(peer, remote = %conn.remote_address(), dialed_by = dialer, "trunk up");
        let _ = self.events.send(Event::Up { peer: peer.clone() }).await;

        let writer = async {
            while let Some(frame) = ctrl_rx.recv().await {
                if send.write_all(&frame).await.is_err() {
                    break;
                }
            }
        };
        let control = async {
            loop {
                loop {
                    match reader.next_msg() {
                        Ok(Some(msg)) => {
                            activity.store(self.now_ms(), Ordering::Relaxed);
                            metrics::counter!("meridian_trunk_messages_total", "peer" => peer.clone(), "direction" => "rx").increment(1);
                            let ev = Event::Msg {
                                peer: peer.clone(),
                                msg,
                            };
                            if self.events.send(ev).await.is_err() {
                                return "the node stopped".to_string();
                            }
                        }
                        Ok(None) => break,
                        Err(WireError::BadFrame(e)) => {
                            bad_input("frame");
                            tracing::debug!(peer, "bad trunk frame skipped: {e}");
                        }
                        Err(e) => {
                            bad_input("frame_too_large");
                            conn.close(CODE_PROTOCOL.into(), b"frame too large");
                            return e.to_string();
                        }
                    }
                }
                match recv.read_chunk(wire::MAX_FRAME, true).await {
                    Ok(Some(chunk)) => reader.push(&chunk.bytes),
                    Ok(None) => return "control stream finished".to_string(),
                    Err(e) => return e.to_string(),
                }
            }
        };
        let datagrams = async {
            loop {
                let d = match conn.read_datagram().await {
                    Ok(d) => d,
                    Err(e) => return e.to_string(),
                };
                counters.rx_datagrams.fetch_add(1, Ordering::Relaxed);
                let (flow, len) = match wire::decode_datagram(&d) {
                    Ok((flow, packet)) => (flow, packet.len()),
                    Err(_) => {
                        bad_input("datagram");
                        continue;
                    }
                };
                let packet = d.slice(d.len() - len..);
                activity.store(self.now_ms(), Ordering::Relaxed);
                let ev = Event::Datagram {
                    peer: peer.clone(),
                    flow,
                    packet,
                };
                if self.events.try_send(ev).is_err() {
                    metrics::counter!("meridian_trunk_datagrams_dropped_total", "reason" => "events_full").increment(1);
                }
            }
        };
        let housekeeping = async {
            let mut tick = tokio::time::interval(self.keepalive);
            let mut last = quinn::ConnectionStats::default();
            let (mut last_tx, mut last_rx) = (0u64, 0u64);
            loop {
                tick.tick().await;
                let s = conn.stats();
                let p = peer.clone();
                metrics::gauge!("meridian_trunk_rtt_seconds", "peer" => p.clone())
                    .set(conn.rtt().as_secs_f64());
                metrics::counter!("meridian_trunk_bytes_total", "peer" => p.clone(), "direction" => "tx")
                    .increment(s.udp_tx.bytes.saturating_sub(last.udp_tx.bytes));
                metrics::counter!("meridian_trunk_bytes_total", "peer" => p.clone(), "direction" => "rx")
                    .increment(s.udp_rx.bytes.saturating_sub(last.udp_rx.bytes));
                metrics::counter!("meridian_trunk_lost_packets_total", "peer" => p.clone())
                    .increment(s.path.lost_packets.saturating_sub(last.path.lost_packets));
                let (tx, rx) = (
                    counters.tx_datagrams.load(Ordering::Relaxed),
                    counters.rx_datagrams.load(Ordering::Relaxed),
                );
                metrics::counter!("meridian_trunk_datagrams_total", "peer" => p.clone(), "direction" => "tx")
                    .increment(tx - last_tx);
                metrics::counter!("meridian_trunk_datagrams_total", "peer" => p, "direction" => "rx")
                    .increment(rx - last_rx);
                (last, last_tx, last_rx) = (s, tx, rx);
                let idle = self
                    .now_ms()
                    .saturating_sub(activity.load(Ordering::Relaxed));
                if Duration::from_millis(idle) >= self.idle_timeout {
                    conn.close(CODE_IDLE.into(), b"idle");
                    return "idle".to_string();
                }
            }
        };
        let reason = tokio::select! {
            _ = writer => "control stream closed".to_string(),
            r = control => r,
            r = datagrams => r,
            r = housekeeping => r,
        };
        let reason = match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                format!("closed: {}", String::from_utf8_lossy(&c.reason))
            }
            Some(quinn::ConnectionError::LocallyClosed) | None => reason,
            Some(e) => e.to_string(),
        };
        conn.close(CODE_SHUTDOWN.into(), b"closed");
        metrics::gauge!("meridian_trunk_connections").decrement(1.0);
        // Only this connection's entry goes (a duplicate may have replaced it).
        let ours = {
            let mut peers = self.peers();
            match peers.get(&peer) {
                Some(PeerState::Up(up)) if up.conn.stable_id() == conn.stable_id() => {
                    peers.remove(&peer);
                    true
                }
                _ => false,
            }
        };
        if ours {
            tracing::info!(peer, reason, "trunk down");
            let _ = self.events.send(Event::Down { peer, reason }).await;
        }
    }
}
