//! The TURN server state machine: state, the per-packet paths and timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::allocation::Allocation;
use super::auth::{Credentials, NonceIssuer};
use super::policy::PeerPolicy;
use super::quota::AllocationLedger;
use super::ratelimit::SourceLimiter;
use super::stats::{Drop, QuotaHit, Stats};
use super::{ClientAddr, Family, RelayId};
use crate::stun::{self, channel_data, FrameKind, Message};

/// Bytes a driver must leave free in front of a peer datagram in the buffer given to
/// [`Server::handle_peer_packet`]: room for a Data indication header with an IPv6 peer
/// (20 + 24 + 4); ChannelData needs 4.
pub const HEADROOM: usize = 48;
/// Bytes a driver must leave free after a peer datagram (padding to a multiple of 4).
pub const TAILROOM: usize = 3;

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on the per-source rate-limiter table.
const LIMITER_ENTRIES: usize = 65_536;

/// Behaviour knobs of the core (from the node configuration).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute value, if any.
    pub software: Option<String>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub default_lifetime_secs: u32,
    pub max_lifetime_secs: u32,
    pub alternate_server: Option<SocketAddr>,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Relayed bytes per second per allocation, both directions; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    pub unauthenticated_rate: u32,
    pub unauthenticated_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "meridian".into(),
            software: Some(concat!("meridian/", env!("CARGO_PKG_VERSION")).into()),
            ipv4: true,
            ipv6: false,
            default_lifetime_secs: 600,
            max_lifetime_secs: 3600,
            alternate_server: None,
            max_permissions: 64,
            max_channels: 64,
            bandwidth_bytes_per_sec: 0,
            unauthenticated_rate: 20,
            unauthenticated_burst: 40,
        }
    }
}

/// State shared (read-mostly) by every worker's core.
#[derive(Clone, Debug)]
pub struct Shared {
    pub credentials: Arc<Credentials>,
    pub policy: Arc<PeerPolicy>,
    pub ledger: Arc<AllocationLedger>,
    pub nonces: Arc<NonceIssuer>,
}

/// Maps the monotonic `Instant`s the core is given to unix seconds (for REST credential
/// expiry and nonces), from one anchor taken by the driver (or a test).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub unix_at_start: u64,
}

impl Clock {
    pub fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }
}

/// Work for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Send a STUN message to a client.
    Send { to: ClientAddr, bytes: Vec<u8> },
    /// Bind a relay socket of this family from the relay port range, then call
    /// [`Server::relay_bound`].
    BindRelay { relay: RelayId, family: Family },
    /// Close a relay socket.
    CloseRelay { relay: RelayId },
}

/// Client data to forward to a peer from a relay socket.
#[derive(Debug, PartialEq, Eq)]
pub struct ToPeer<'a> {
    pub relay: RelayId,
    pub peer: SocketAddr,
    pub payload: &'a [u8],
}

/// Peer data to forward to a client: `range` of the buffer given to
/// [`Server::handle_peer_packet`] now holds a complete ChannelData or Data indication.
#[derive(Debug, PartialEq, Eq)]
pub struct ToClient {
    pub client: ClientAddr,
    pub range: Range<usize>,
}

/// The TURN server core of one worker.
pub struct Server {
    pub(super) cfg: ServerConfig,
    pub(super) shared: Shared,
    pub(super) clock: Clock,
    pub(super) allocs: Vec<Option<Allocation>>,
    free_slots: Vec<u32>,
    pub(super) by_client: FxHashMap<ClientAddr, u32>,
    pub(super) by_relay: FxHashMap<RelayId, u32>,
    next_relay: u64,
    pub(super) commands: VecDeque<Command>,
    pub(super) limiter: SourceLimiter,
    pub(super) draining: bool,
    next_sweep: Instant,
    data_tid: u64,
    pub stats: Stats,
}

impl Server {
    pub fn new(cfg: ServerConfig, shared: Shared, clock: Clock) -> Self {
        let limiter = SourceLimiter::new(
            cfg.unauthenticated_rate,
            cfg.unauthenticated_burst,
            LIMITER_ENTRIES,
        );
        Server {
            cfg,
            shared,
            clock,
            allocs: Vec::new(),
            free_slots: Vec::new(),
            by_client: FxHashMap::default(),
            by_relay: FxHashMap::default(),
            next_relay: 0,
            commands: VecDeque::new(),
            limiter,
            draining: false,
            next_sweep: clock.start + SWEEP_INTERVAL,
            data_tid: rand::random(),
            stats: Stats::default(),
        }
    }

    /// Gives relay ids a worker-specific prefix so ids are unique across a node.
    pub fn with_relay_id_base(mut self, base: u64) -> Self {
        self.next_relay = base;
        self
    }

    /// The next piece of work for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Where new clients are sent (300 Try Alternate) while draining, instead of the
    /// configured `alternate_server`.
    pub fn set_alternate(&mut self, alternate: SocketAddr) {
        self.cfg.alternate_server = Some(alternate);
    }

    /// Stops taking new allocations (300 Try Alternate or 508) while existing ones carry on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether `client` holds an allocation (pending or active).
    pub fn has_allocation(&self, client: &ClientAddr) -> bool {
        self.by_client.contains_key(client)
    }

    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// (allocations, permissions, channels) currently held.
    pub fn gauges(&self) -> (usize, usize, usize) {
        let (mut p, mut c) = (0, 0);
        for a in self.allocs.iter().flatten() {
            p += a.permissions.len();
            c += a.channels.len();
        }
        (self.by_client.len(), p, c)
    }

    /// A client's TCP/TLS connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: ClientAddr) {
        if let Some(idx) = self.by_client.get(&client).copied() {
            self.free(idx);
        }
    }

    /// Handles one datagram (UDP) or frame (TCP/TLS) from a client. Returns data to relay to a
    /// peer, if any; responses and other work are queued as commands.
    #[inline]
    pub fn handle_client_packet<'a>(
        &mut self,
        client: ClientAddr,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<ToPeer<'a>> {
        match bytes.first().map(|b| stun::frame_kind(*b)) {
            Some(FrameKind::ChannelData) => self.channel_data_from_client(client, bytes, now),
            Some(FrameKind::Stun) => match Message::parse(bytes) {
                Ok(msg) => self.handle_message(client, &msg, now),
                Err(_) => {
                    self.stats.drop(Drop::Malformed);
                    None
                }
            },
            _ => {
                self.stats.drop(Drop::Malformed);
                None
            }
        }
    }

    #[inline]
    fn channel_data_from_client<'a>(
        &mut self,
        client: ClientAddr,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<ToPeer<'a>> {
        let Ok((ch, data)) = channel_data::parse(bytes) else {
            self.stats.drop(Drop::Malformed);
            return None;
        };
        let Some(&idx) = self.by_client.get(&client) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let Some(alloc) = self.allocs[idx as usize].as_mut() else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let peer = match alloc.channels.get(&ch) {
            Some(c) if c.expires > now => c.peer,
            _ => {
                self.stats.drop(Drop::NoChannel);
                return None;
            }
        };
        if !alloc.permitted(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let Some(relay) = alloc.relay(Family::of(&peer)).map(|r| r.id) else {
            self.stats.drop(Drop::NoChannel);
            return None;
        };
        if let Some(b) = alloc.bandwidth.as_mut() {
            let rate = self.cfg.bandwidth_bytes_per_sec as f64;
            if !b.take(data.len() as f64, rate, rate, now) {
                self.stats.quota(QuotaHit::Bandwidth);
                return None;
            }
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        self.stats.channel_data_to_peer += 1;
        Some(ToPeer {
            relay,
            peer,
            payload: data,
        })
    }

    /// Handles a datagram that arrived on relay socket `relay` from `peer`. The datagram is
    /// `buf[payload]`, with at least [`HEADROOM`] bytes before and [`TAILROOM`] after it.
    /// Returns what to send to the client, framed in place.
    #[inline]
    pub fn handle_peer_packet(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
        now: Instant,
    ) -> Option<ToClient> {
        debug_assert!(payload.start >= HEADROOM && payload.end + TAILROOM <= buf.len());
        if payload.start < HEADROOM
            || payload.end + TAILROOM > buf.len()
            || payload.len() > 0xFFFF - 64
        {
            self.stats.drop(Drop::Malformed);
            return None;
        }
        let Some(&idx) = self.by_relay.get(&relay) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let Some(alloc) = self.allocs[idx as usize].as_mut() else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        if !alloc.permitted(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let len = payload.len();
        if let Some(b) = alloc.bandwidth.as_mut() {
            let rate = self.cfg.bandwidth_bytes_per_sec as f64;
            if !b.take(len as f64, rate, rate, now) {
                self.stats.quota(QuotaHit::Bandwidth);
                return None;
            }
        }
        let client = alloc.client;
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        let channel = alloc
            .channel_by_peer
            .get(&peer)
            .copied()
            .filter(|ch| matches!(alloc.channels.get(ch), Some(c) if c.expires > now));
        if let Some(ch) = channel {
            self.stats.channel_data_to_client += 1;
            let start = payload.start - channel_data::HEADER_LEN;
            channel_data::write_header(&mut buf[start..], ch, len);
            let mut end = payload.end;
            if client.transport.is_stream() {
                let pad = (4 - len % 4) % 4;
                buf[end..end + pad].fill(0);
                end += pad;
            }
            return Some(ToClient {
                client,
                range: start..end,
            });
        }
        // No channel: a Data indication (RFC 8656 §11.3) built around the payload in place.
        self.data_tid = self.data_tid.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[4..].copy_from_slice(&self.data_tid.to_be_bytes());
        let tid = stun::TransactionId(tid);
        let mut addr = [0u8; 20];
        let alen = stun::attr::encode_xor_address(peer, &tid, &mut addr);
        let pad = (4 - len % 4) % 4;
        let start = payload.start - (stun::HEADER_LEN + 4 + alen + 4);
        let body_len = 4 + alen + 4 + len + pad;
        let h = &mut buf[start..];
        let typ = stun::MessageType::new(stun::Method::DATA, stun::Class::Indication).to_u16();
        h[0..2].copy_from_slice(&typ.to_be_bytes());
        h[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
        h[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(&tid.0);
        h[20..22].copy_from_slice(&stun::attr::XOR_PEER_ADDRESS.to_be_bytes());
        h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
        h[24..24 + alen].copy_from_slice(&addr[..alen]);
        let d = 24 + alen;
        h[d..d + 2].copy_from_slice(&stun::attr::DATA.to_be_bytes());
        h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
        buf[payload.end..payload.end + pad].fill(0);
        Some(ToClient {
            client,
            range: start..payload.end + pad,
        })
    }

    /// The driver's answer to [`Command::BindRelay`]: the advertised relayed address, or
    /// `None` if no port could be bound.
    pub fn relay_bound(&mut self, relay: RelayId, bound: Option<SocketAddr>, now: Instant) {
        let Some(&idx) = self.by_relay.get(&relay) else {
            // The allocation went away meanwhile.
            if bound.is_some() {
                self.commands.push_back(Command::CloseRelay { relay });
            }
            return;
        };
        self.finish_relay_bind(idx, relay, bound, now);
    }

    /// Time passes: expires allocations, permissions and channels; forgets idle sources.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let mut expired = Vec::new();
        for (i, slot) in self.allocs.iter_mut().enumerate() {
            if let Some(a) = slot {
                if a.expires <= now {
                    expired.push(i as u32);
                } else {
                    a.expire(now);
                }
            }
        }
        for idx in expired {
            self.free(idx);
        }
        self.limiter.sweep(now);
    }

    pub(super) fn insert_allocation(&mut self, alloc: Allocation) -> u32 {
        let client = alloc.client;
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.allocs[i as usize] = Some(alloc);
                i
            }
            None => {
                self.allocs.push(Some(alloc));
                (self.allocs.len() - 1) as u32
            }
        };
        self.by_client.insert(client, idx);
        idx
    }

    pub(super) fn new_relay_id(&mut self) -> RelayId {
        self.next_relay += 1;
        RelayId(self.next_relay)
    }

    /// Removes an allocation, closing its relays and returning its quota.
    pub(super) fn free(&mut self, idx: u32) {
        let Some(alloc) = self.allocs.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.by_client.remove(&alloc.client);
        for r in &alloc.relays {
            self.by_relay.remove(&r.id);
            self.commands.push_back(Command::CloseRelay { relay: r.id });
        }
        if let Some(p) = &alloc.pending {
            // Binds still under way are closed when they report back and find no owner.
            for (id, _) in &p.outstanding {
                self.by_relay.remove(id);
            }
        }
        self.shared.ledger.release(&alloc.username);
        self.free_slots.push(idx);
    }

    pub(super) fn unix(&self, now: Instant) -> u64 {
        self.clock.unix(now)
    }

    pub(super) fn permission_lifetime() -> Duration {
        PERMISSION_LIFETIME
    }

    pub(super) fn channel_lifetime() -> Duration {
        CHANNEL_LIFETIME
    }
}
