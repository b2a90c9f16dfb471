//! STUN/TURN requests and indications: authentication, Allocate, Refresh, CreatePermission,
//! ChannelBind, Binding and Send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allocation::{Allocation, Channel, PendingAllocate, Relay};
use super::auth::{CredentialError, NonceCheck};
use super::quota::QuotaExceeded;
use super::ratelimit::TokenBucket;
use super::server::{Command, Server, ToPeer};
use super::stats::{AuthFailure, Drop, QuotaHit};
use super::{ClientAddr, Family, RelayId};
use crate::stun::{
    self, attr, channel_data, long_term_key, Class, LongTermKey, Message, MessageBuilder,
    MessageType, Method, PasswordAlgorithm,
};

/// IANA protocol number for UDP (REQUESTED-TRANSPORT).
const PROTO_UDP: u8 = 17;

/// A request that passed long-term authentication.
pub(super) struct Authenticated {
    username: Arc<str>,
    key: LongTermKey,
    /// Whether the request (and so the response) uses MESSAGE-INTEGRITY-SHA256.
    sha256: bool,
}

/// An error answer: code and reason phrase.
type Failure = (u16, &'static str);

impl Server {
    pub(super) fn handle_message<'a>(
        &mut self,
        client: ClientAddr,
        msg: &Message<'a>,
        now: Instant,
    ) -> Option<ToPeer<'a>> {
        let t = msg.message_type();
        match t.class {
            Class::Request => {
                self.handle_request(client, msg, now);
                None
            }
            Class::Indication if t.method == Method::SEND => self.handle_send(client, msg, now),
            Class::Indication => {
                self.stats.drop(Drop::BadIndication);
                None
            }
            Class::Success | Class::Error => {
                self.stats.drop(Drop::UnexpectedClass);
                None
            }
        }
    }

    fn handle_request(&mut self, client: ClientAddr, msg: &Message<'_>, now: Instant) {
        let unknown: Vec<u16> = msg.unknown_required().collect();
        if !unknown.is_empty() {
            self.respond(client, msg, Err((420, "Unknown Attribute")), None, |b| {
                b.unknown_attributes(&unknown);
            });
            return;
        }
        let method = msg.message_type().method;
        match method {
            Method::BINDING => {
                if !self.unauthenticated_allowed(client, now) {
                    return;
                }
                self.respond(client, msg, Ok(()), None, |b| {
                    b.xor_address(attr::XOR_MAPPED_ADDRESS, client.remote);
                });
            }
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => {
                if method == Method::ALLOCATE && self.draining {
                    match self.cfg.alternate_server {
                        Some(alt) => {
                            self.respond(client, msg, Err((300, "Try Alternate")), None, |b| {
                                b.address(attr::ALTERNATE_SERVER, alt);
                            })
                        }
                        None => self.respond(
                            client,
                            msg,
                            Err((508, "Insufficient Capacity: server draining")),
                            None,
                            |_| {},
                        ),
                    }
                    return;
                }
                let Some(auth) = self.authenticate(client, msg, now) else {
                    return;
                };
                let result = match method {
                    Method::ALLOCATE => self.allocate(client, msg, &auth, now),
                    Method::REFRESH => self.refresh(client, msg, &auth, now),
                    Method::CREATE_PERMISSION => self.create_permission(client, msg, now),
                    _ => self.channel_bind(client, msg, now),
                };
                match result {
                    Ok(Some(attrs)) => {
                        self.respond(client, msg, Ok(()), Some(&auth), |b| attrs.write(b, client))
                    }
                    Ok(None) => {} // answered later (Allocate waits for its relay sockets)
                    Err(f) => self.respond(client, msg, Err(f), Some(&auth), |_| {}),
                }
            }
            _ => self.respond(
                client,
                msg,
                Err((400, "Bad Request: unknown method")),
                None,
                |_| {},
            ),
        }
    }

    /// The per-source limiter for requests that are not (yet) authenticated. Returns false
    /// (and counts a drop) when the request must be ignored.
    fn unauthenticated_allowed(&mut self, client: ClientAddr, now: Instant) -> bool {
        if self.limiter.allow(client.remote.ip(), now) {
            true
        } else {
            self.stats.drop(Drop::RateLimited);
            false
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). Answers the failures itself.
    fn authenticate(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        now: Instant,
    ) -> Option<Authenticated> {
        if !msg.has_integrity() {
            self.stats.auth_failed(AuthFailure::Missing);
            if self.unauthenticated_allowed(client, now) {
                self.challenge(client, msg, 401, "Unauthenticated", now);
            }
            return None;
        }
        let (username, nonce) = match (
            msg.text(attr::USERNAME),
            msg.get(attr::REALM),
            msg.text(attr::NONCE),
        ) {
            (Some(Ok(u)), Some(_), Some(Ok(n))) => (u, n),
            _ => {
                self.stats.auth_failed(AuthFailure::Missing);
                self.respond(
                    client,
                    msg,
                    Err((400, "Bad Request: USERNAME, REALM and NONCE are required")),
                    None,
                    |_| {},
                );
                return None;
            }
        };
        let unix = self.unix(now);
        match self.shared.nonces.check(nonce, client.remote.ip(), unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.stats.auth_failed(AuthFailure::StaleNonce);
                if self.unauthenticated_allowed(client, now) {
                    self.challenge(client, msg, 438, "Stale Nonce", now);
                }
                return None;
            }
        }
        let algorithm = match password_algorithm(msg) {
            Ok(a) => a,
            Err(reason) => {
                self.stats.auth_failed(AuthFailure::BadAlgorithm);
                self.respond(client, msg, Err((400, reason)), None, |_| {});
                return None;
            }
        };
        let sha256 = msg.has_integrity_sha256();
        // Requests on an existing allocation must come from its user, with its key.
        if let Some(&idx) = self.by_client.get(&client) {
            if let Some(a) = self.allocs[idx as usize].as_ref() {
                if *a.username != *username {
                    self.stats.auth_failed(AuthFailure::WrongUser);
                    self.respond(client, msg, Err((441, "Wrong Credentials")), None, |_| {});
                    return None;
                }
                if a.key.algorithm == algorithm && msg.verify_integrity(a.key.as_bytes()) {
                    return Some(Authenticated {
                        username: a.username.clone(),
                        key: a.key.clone(),
                        sha256,
                    });
                }
            }
        }
        let passwords = match self.shared.credentials.passwords(username, unix) {
            Ok(p) => p,
            Err(e) => {
                self.stats.auth_failed(match e {
                    CredentialError::Expired => AuthFailure::Expired,
                    CredentialError::UnknownUser => AuthFailure::UnknownUser,
                });
                if self.unauthenticated_allowed(client, now) {
                    self.challenge(client, msg, 401, "Unauthenticated", now);
                }
                return None;
            }
        };
        for password in &passwords {
            let key = long_term_key(algorithm, username, &self.cfg.realm, password);
            if msg.verify_integrity(key.as_bytes()) {
                return Some(Authenticated {
                    username: Arc::from(username),
                    key,
                    sha256,
                });
            }
        }
        self.stats.auth_failed(AuthFailure::BadIntegrity);
        if self.unauthenticated_allowed(client, now) {
            self.challenge(client, msg, 401, "Unauthenticated", now);
        }
        None
    }

    /// 401/438 with REALM, a fresh NONCE and the password algorithms we offer.
    fn challenge(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        code: u16,
        reason: &'static str,
        now: Instant,
    ) {
        let nonce = self.shared.nonces.issue(client.remote.ip(), self.unix(now));
        let realm = self.cfg.realm.clone();
        self.respond(client, msg, Err((code, reason)), None, |b| {
            b.text(attr::REALM, &realm);
            b.text(attr::NONCE, &nonce);
            b.attribute(attr::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS);
        });
    }

    fn allocate(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
    ) -> Result<Option<Attrs>, Failure> {
        let tid = msg.transaction_id();
        if let Some(&idx) = self.by_client.get(&client) {
            let a = self.allocs[idx as usize]
                .as_ref()
                .ok_or((437, "Allocation Mismatch"))?;
            if a.allocate_tid != tid {
                return Err((437, "Allocation Mismatch"));
            }
            if a.pending.is_some() {
                return Ok(None); // retransmission while the relay is being bound
            }
            return Ok(Some(Attrs::Allocated {
                relays: a.relays.clone(),
                failed: vec![],
                lifetime: a.lifetime_secs,
            }));
        }
        match msg
            .get(attr::REQUESTED_TRANSPORT)
            .map(attr::decode_requested_transport)
        {
            None => return Err((400, "Bad Request: REQUESTED-TRANSPORT missing")),
            Some(Err(_)) => return Err((400, "Bad Request: malformed REQUESTED-TRANSPORT")),
            Some(Ok(PROTO_UDP)) => {}
            Some(Ok(_)) => return Err((442, "Unsupported Transport Protocol")),
        }
        let requested = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(v) => match attr::decode_family(attr::REQUESTED_ADDRESS_FAMILY, v) {
                Ok(attr::FAMILY_IPV4) => Some(Family::V4),
                Ok(attr::FAMILY_IPV6) => Some(Family::V6),
                Ok(_) => return Err((440, "Address Family not Supported")),
                Err(_) => return Err((400, "Bad Request: malformed REQUESTED-ADDRESS-FAMILY")),
            },
        };
        let additional = match msg.get(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some(v) => match attr::decode_family(attr::ADDITIONAL_ADDRESS_FAMILY, v) {
                Ok(attr::FAMILY_IPV6) if requested.is_none() => true,
                _ => return Err((400, "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6, without REQUESTED-ADDRESS-FAMILY")),
            },
        };
        let primary = requested.unwrap_or(Family::V4);
        if !self.family_enabled(primary) {
            return Err((440, "Address Family not Supported"));
        }
        let mut families = vec![primary];
        let mut failed = vec![];
        if additional {
            if self.family_enabled(Family::V6) {
                families.push(Family::V6);
            } else {
                failed.push(Family::V6);
            }
        }
        let lifetime = self
            .requested_lifetime(msg)?
            .min(self.cfg.max_lifetime_secs)
            .max(self.cfg.default_lifetime_secs);
        match self.shared.ledger.try_acquire(&auth.username) {
            Ok(()) => {}
            Err(QuotaExceeded::Total) => {
                self.stats.quota(QuotaHit::AllocationsTotal);
                return Err((486, "Allocation Quota Reached"));
            }
            Err(QuotaExceeded::PerUser) => {
                self.stats.quota(QuotaHit::AllocationsPerUser);
                return Err((486, "Allocation Quota Reached"));
            }
        }
        let mut outstanding = Vec::with_capacity(families.len());
        for f in &families {
            outstanding.push((self.new_relay_id(), *f));
        }
        let bandwidth = (self.cfg.bandwidth_bytes_per_sec > 0)
            .then(|| TokenBucket::full(self.cfg.bandwidth_bytes_per_sec as f64, now));
        let idx = self.insert_allocation(Allocation {
            client,
            username: auth.username.clone(),
            key: auth.key.clone(),
            allocate_tid: tid,
            lifetime_secs: lifetime,
            expires: now + Duration::from_secs(lifetime as u64),
            relays: Vec::with_capacity(families.len()),
            pending: Some(PendingAllocate {
                tid,
                fingerprint: msg.has_fingerprint(),
                sha256: auth.sha256,
                outstanding: outstanding.clone(),
                failed,
            }),
            permissions: Default::default(),
            channels: Default::default(),
            channel_by_peer: Default::default(),
            bandwidth,
        });
        for (relay, family) in outstanding {
            self.by_relay.insert(relay, idx);
            self.commands
                .push_back(Command::BindRelay { relay, family });
        }
        Ok(None)
    }

    /// Completes a pending Allocate once the driver reports on a relay socket.
    pub(super) fn finish_relay_bind(
        &mut self,
        idx: u32,
        relay: RelayId,
        bound: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(alloc) = self.allocs[idx as usize].as_mut() else {
            return;
        };
        let Some(pending) = alloc.pending.as_mut() else {
            return;
        };
        let Some(pos) = pending.outstanding.iter().position(|(r, _)| *r == relay) else {
            return;
        };
        let (_, family) = pending.outstanding.swap_remove(pos);
        match bound {
            Some(addr) => alloc.relays.push(Relay {
                id: relay,
                family,
                addr,
            }),
            None => {
                pending.failed.push(family);
                self.by_relay.remove(&relay);
            }
        }
        if !pending.outstanding.is_empty() {
            return;
        }
        let pending = alloc.pending.take().expect("checked above");
        let client = alloc.client;
        let key = alloc.key.clone();
        let username = alloc.username.clone();
        let lifetime = alloc.lifetime_secs;
        alloc.expires = now + Duration::from_secs(lifetime as u64);
        let relays = alloc.relays.clone();
        let auth = Authenticated {
            username,
            key,
            sha256: pending.sha256,
        };
        let typ = MessageType::new(Method::ALLOCATE, Class::Success);
        if relays.is_empty() {
            self.stats.quota(QuotaHit::RelayPorts);
            self.free(idx);
            let err = MessageType::new(Method::ALLOCATE, Class::Error);
            self.send_response(
                client,
                err,
                pending.tid,
                pending.fingerprint,
                Err((508, "Insufficient Capacity")),
                Some(&auth),
                |_| {},
            );
            return;
        }
        let attrs = Attrs::Allocated {
            relays,
            failed: pending.failed,
            lifetime,
        };
        self.send_response(
            client,
            typ,
            pending.tid,
            pending.fingerprint,
            Ok(()),
            Some(&auth),
            |b| attrs.write(b, client),
        );
    }

    fn refresh(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        _auth: &Authenticated,
        now: Instant,
    ) -> Result<Option<Attrs>, Failure> {
        let idx = *self
            .by_client
            .get(&client)
            .ok_or((437, "Allocation Mismatch"))?;
        let requested = self.requested_lifetime(msg)?;
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let fam = match attr::decode_family(attr::REQUESTED_ADDRESS_FAMILY, v) {
                Ok(attr::FAMILY_IPV4) => Family::V4,
                Ok(attr::FAMILY_IPV6) => Family::V6,
                _ => return Err((400, "Bad Request: malformed REQUESTED-ADDRESS-FAMILY")),
            };
            let alloc = self.allocs[idx as usize]
                .as_ref()
                .ok_or((437, "Allocation Mismatch"))?;
            if alloc.relay(fam).is_none() {
                return Err((443, "Peer Address Family Mismatch"));
            }
        }
        if requested == 0 {
            self.free(idx);
            return Ok(Some(Attrs::Lifetime(0)));
        }
        let lifetime = requested.min(self.cfg.max_lifetime_secs);
        let alloc = self.allocs[idx as usize]
            .as_mut()
            .ok_or((437, "Allocation Mismatch"))?;
        alloc.expires = now + Duration::from_secs(lifetime as u64);
        alloc.lifetime_secs = lifetime;
        Ok(Some(Attrs::Lifetime(lifetime)))
    }

    fn requested_lifetime(&self, msg: &Message<'_>) -> Result<u32, Failure> {
        match msg.get(attr::LIFETIME) {
            None => Ok(self.cfg.default_lifetime_secs),
            Some(v) => attr::decode_u32(attr::LIFETIME, v)
                .map_err(|_| (400, "Bad Request: malformed LIFETIME")),
        }
    }

    fn family_enabled(&self, f: Family) -> bool {
        match f {
            Family::V4 => self.cfg.ipv4,
            Family::V6 => self.cfg.ipv6,
        }
    }

    /// Checks a peer address for an allocation: family (443) and policy (403).
    fn check_peer(&mut self, idx: u32, peer: SocketAddr) -> Result<(), Failure> {
        let alloc = self.allocs[idx as usize]
            .as_ref()
            .ok_or((437, "Allocation Mismatch"))?;
        if alloc.relay(Family::of(&peer)).is_none() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        if let Err(r) = self.shared.policy.check(peer.ip()) {
            self.stats.refused(r);
            return Err((403, "Forbidden: peer address not allowed"));
        }
        Ok(())
    }

    fn active_allocation(&self, client: &ClientAddr) -> Result<u32, Failure> {
        match self.by_client.get(client) {
            Some(&idx)
                if self.allocs[idx as usize]
                    .as_ref()
                    .is_some_and(|a| a.pending.is_none()) =>
            {
                Ok(idx)
            }
            _ => Err((437, "Allocation Mismatch")),
        }
    }

    fn create_permission(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Option<Attrs>, Failure> {
        let idx = self.active_allocation(&client)?;
        let mut peers = Vec::new();
        for v in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let peer = attr::decode_xor_address(attr::XOR_PEER_ADDRESS, v, &msg.transaction_id())
                .map_err(|_| (400, "Bad Request: malformed XOR-PEER-ADDRESS"))?;
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err((400, "Bad Request: XOR-PEER-ADDRESS missing"));
        }
        for p in &peers {
            self.check_peer(idx, *p)?;
        }
        let max = self.cfg.max_permissions;
        let alloc = self.allocs[idx as usize]
            .as_mut()
            .ok_or((437, "Allocation Mismatch"))?;
        let new = peers
            .iter()
            .filter(|p| !alloc.permissions.contains_key(&p.ip()))
            .map(|p| p.ip())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if alloc.permissions.len() + new > max {
            self.stats.quota(QuotaHit::Permissions);
            return Err((508, "Insufficient Capacity: too many permissions"));
        }
        let expires = now + Server::permission_lifetime();
        for p in peers {
            alloc.permissions.insert(p.ip(), expires);
        }
        Ok(Some(Attrs::None))
    }

    fn channel_bind(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Option<Attrs>, Failure> {
        let idx = self.active_allocation(&client)?;
        let ch = match msg
            .get(attr::CHANNEL_NUMBER)
            .map(attr::decode_channel_number)
        {
            Some(Ok(ch)) if channel_data::is_valid_channel(ch) => ch,
            Some(Ok(_)) => return Err((400, "Bad Request: channel number outside 0x4000-0x4FFF")),
            _ => return Err((400, "Bad Request: CHANNEL-NUMBER missing or malformed")),
        };
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err((400, "Bad Request: XOR-PEER-ADDRESS missing or malformed")),
        };
        self.check_peer(idx, peer)?;
        let (max_ch, max_perm) = (self.cfg.max_channels, self.cfg.max_permissions);
        let alloc = self.allocs[idx as usize]
            .as_mut()
            .ok_or((437, "Allocation Mismatch"))?;
        if let Some(c) = alloc.channels.get(&ch) {
            if c.peer != peer {
                return Err((400, "Bad Request: channel bound to another peer"));
            }
        } else if alloc.channel_by_peer.contains_key(&peer) {
            return Err((400, "Bad Request: peer bound to another channel"));
        } else if alloc.channels.len() >= max_ch {
            self.stats.quota(QuotaHit::Channels);
            return Err((508, "Insufficient Capacity: too many channels"));
        }
        if !alloc.permissions.contains_key(&peer.ip()) && alloc.permissions.len() >= max_perm {
            self.stats.quota(QuotaHit::Permissions);
            return Err((508, "Insufficient Capacity: too many permissions"));
        }
        alloc.channels.insert(
            ch,
            Channel {
                peer,
                expires: now + Server::channel_lifetime(),
            },
        );
        alloc.channel_by_peer.insert(peer, ch);
        alloc
            .permissions
            .insert(peer.ip(), now + Server::permission_lifetime());
        Ok(Some(Attrs::None))
    }

    fn handle_send<'a>(
        &mut self,
        client: ClientAddr,
        msg: &Message<'a>,
        now: Instant,
    ) -> Option<ToPeer<'a>> {
        let Some(&idx) = self.by_client.get(&client) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let (Some(Ok(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.drop(Drop::BadIndication);
            return None;
        };
        let bw_rate = self.cfg.bandwidth_bytes_per_sec as f64;
        let alloc = self.allocs[idx as usize].as_mut()?;
        let Some(relay) = alloc.relay(Family::of(&peer)).map(|r| r.id) else {
            self.stats.drop(Drop::BadIndication);
            return None;
        };
        if !alloc.permitted(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        if let Some(b) = alloc.bandwidth.as_mut() {
            if !b.take(data.len() as f64, bw_rate, bw_rate, now) {
                self.stats.quota(QuotaHit::Bandwidth);
                return None;
            }
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        Some(ToPeer {
            relay,
            peer,
            payload: data,
        })
    }

    /// Answers `msg` (success or error), adding SOFTWARE, integrity when authenticated, and
    /// FINGERPRINT when the request carried one.
    fn respond(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        result: Result<(), Failure>,
        auth: Option<&Authenticated>,
        add: impl FnOnce(&mut MessageBuilder),
    ) {
        let method = msg.message_type().method;
        let class = if result.is_ok() {
            Class::Success
        } else {
            Class::Error
        };
        self.send_response(
            client,
            MessageType::new(method, class),
            msg.transaction_id(),
            msg.has_fingerprint(),
            result,
            auth,
            add,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send_response(
        &mut self,
        client: ClientAddr,
        typ: MessageType,
        tid: stun::TransactionId,
        fingerprint: bool,
        result: Result<(), Failure>,
        auth: Option<&Authenticated>,
        add: impl FnOnce(&mut MessageBuilder),
    ) {
        let mut b = MessageBuilder::new(typ, tid);
        let code = match result {
            Ok(()) => 200,
            Err((code, reason)) => {
                b.error_code(code, reason);
                code
            }
        };
        add(&mut b);
        if let Some(s) = &self.cfg.software {
            b.text(attr::SOFTWARE, s);
        }
        if let Some(a) = auth {
            b.integrity(a.key.as_bytes(), a.sha256);
        }
        let bytes = if fingerprint {
            b.finish_with_fingerprint()
        } else {
            b.finish()
        };
        self.stats.request(typ.method.name(), code);
        self.commands.push_back(Command::Send { to: client, bytes });
    }
}

/// PASSWORD-ALGORITHMS value we offer: SHA-256 first, then MD5 (each: 2-byte id, 2-byte
/// parameter length 0).
const OFFERED_ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

/// The key algorithm a request asks for (RFC 8489 §9.2.4): MD5 unless it carries
/// PASSWORD-ALGORITHM together with an unaltered copy of our PASSWORD-ALGORITHMS.
fn password_algorithm(msg: &Message<'_>) -> Result<PasswordAlgorithm, &'static str> {
    match (
        msg.get(attr::PASSWORD_ALGORITHMS),
        msg.get(attr::PASSWORD_ALGORITHM),
    ) {
        (None, None) => Ok(PasswordAlgorithm::Md5),
        (Some(list), Some(chosen)) => {
            if list != OFFERED_ALGORITHMS {
                return Err("Bad Request: PASSWORD-ALGORITHMS does not match the offer");
            }
            match attr::decode_password_algorithm(chosen) {
                Ok(attr::ALGORITHM_SHA256) => Ok(PasswordAlgorithm::Sha256),
                Ok(attr::ALGORITHM_MD5) => Ok(PasswordAlgorithm::Md5),
                _ => Err("Bad Request: unsupported PASSWORD-ALGORITHM"),
            }
        }
        _ => Err("Bad Request: PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS go together"),
    }
}

/// Attributes of a success response.
pub(super) enum Attrs {
    None,
    Lifetime(u32),
    Allocated {
        relays: Vec<Relay>,
        failed: Vec<Family>,
        lifetime: u32,
    },
}

impl Attrs {
    fn write(&self, b: &mut MessageBuilder, client: ClientAddr) {
        match self {
            Attrs::None => {}
            Attrs::Lifetime(l) => {
                b.u32(attr::LIFETIME, *l);
            }
            Attrs::Allocated {
                relays,
                failed,
                lifetime,
            } => {
                for r in relays {
                    b.xor_address(attr::XOR_RELAYED_ADDRESS, r.addr);
                }
                for f in failed {
                    b.error_code_attr(
                        attr::ADDRESS_ERROR_CODE,
                        f.code(),
                        440,
                        "Address Family not Supported",
                    );
                }
                b.u32(attr::LIFETIME, *lifetime);
                b.xor_address(attr::XOR_MAPPED_ADDRESS, client.remote);
            }
        }
    }
}
