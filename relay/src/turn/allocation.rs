//! One allocation: its relayed transport addresses, permissions and channel bindings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::ratelimit::TokenBucket;
use super::{ClientAddr, Family, RelayId};
use crate::stun::{LongTermKey, TransactionId};

/// A bound relayed transport address.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    pub id: RelayId,
    pub family: Family,
    /// The advertised address (XOR-RELAYED-ADDRESS).
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// What is still awaited before an Allocate can be answered.
#[derive(Debug)]
pub struct PendingAllocate {
    pub tid: TransactionId,
    pub fingerprint: bool,
    pub sha256: bool,
    /// Relays asked of the driver and not yet answered.
    pub outstanding: Vec<(RelayId, Family)>,
    /// Families whose relay could not be bound (for ADDRESS-ERROR-CODE).
    pub failed: Vec<Family>,
}

#[derive(Debug)]
pub struct Allocation {
    pub client: ClientAddr,
    pub username: Arc<str>,
    pub key: LongTermKey,
    /// Transaction of the Allocate that created it (retransmissions get the same answer).
    pub allocate_tid: TransactionId,
    pub lifetime_secs: u32,
    pub expires: Instant,
    pub relays: Vec<Relay>,
    pub pending: Option<PendingAllocate>,
    pub permissions: FxHashMap<IpAddr, Instant>,
    pub channels: FxHashMap<u16, Channel>,
    pub channel_by_peer: FxHashMap<SocketAddr, u16>,
    pub bandwidth: Option<TokenBucket>,
}

impl Allocation {
    pub fn relay(&self, family: Family) -> Option<&Relay> {
        self.relays.iter().find(|r| r.family == family)
    }

    #[inline]
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        matches!(self.permissions.get(&ip), Some(exp) if *exp > now)
    }

    /// Drops expired permissions and channels; returns how many of each went.
    pub fn expire(&mut self, now: Instant) -> (usize, usize) {
        let p0 = self.permissions.len();
        self.permissions.retain(|_, exp| *exp > now);
        let c0 = self.channels.len();
        let by_peer = &mut self.channel_by_peer;
        self.channels.retain(|_, c| {
            let keep = c.expires > now;
            if !keep {
                by_peer.remove(&c.peer);
            }
            keep
        });
        (p0 - self.permissions.len(), c0 - self.channels.len())
    }
}
