//! The TURN core driven through its public surface with a fake clock and a fake driver.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{rest_password, Credentials, NonceIssuer};
use super::policy::{PeerPolicy, Refusal};
use super::quota::AllocationLedger;
use super::stats::{AuthFailure, Drop, QuotaHit};
use super::*;
use crate::stun::{
    attr, long_term_key, Class, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
    TransactionId,
};

const REALM: &str = "meridian";
const UNIX0: u64 = 1_800_000_000;

struct Harness {
    server: Server,
    now: Instant,
    next_port: u16,
    /// Answer BindRelay commands automatically (true) or leave them to the test.
    auto_bind: bool,
    bind_fails: bool,
    closed: Vec<RelayId>,
    pending_binds: Vec<(RelayId, Family)>,
}

fn cfg() -> ServerConfig {
    ServerConfig {
        ipv6: true,
        ..ServerConfig::default()
    }
}

fn harness_with(cfg: ServerConfig, ledger: AllocationLedger) -> Harness {
    let now = Instant::now();
    let shared = Shared {
        credentials: Arc::new(Credentials::new(
            [
                ("alice".into(), "secret-pw".into()),
                ("bob".into(), "bob-pw".into()),
            ],
            ["rest-secret".into()],
        )),
        policy: Arc::new(PeerPolicy::new(
            vec![],
            vec![],
            ["198.51.100.1".parse().unwrap()],
        )),
        ledger: Arc::new(ledger),
        nonces: Arc::new(NonceIssuer::new([7; 32], 600)),
    };
    let server = Server::new(
        cfg,
        shared,
        Clock {
            start: now,
            unix_at_start: UNIX0,
        },
    );
    Harness {
        server,
        now,
        next_port: 50000,
        auto_bind: true,
        bind_fails: false,
        closed: vec![],
        pending_binds: vec![],
    }
}

fn harness() -> Harness {
    harness_with(cfg(), AllocationLedger::new(100, 10))
}

fn udp_client(port: u16) -> ClientAddr {
    ClientAddr {
        transport: Transport::Udp,
        local: "192.0.2.100:3478".parse().unwrap(),
        remote: SocketAddr::new("203.0.113.5".parse().unwrap(), port),
    }
}

fn tcp_client(port: u16) -> ClientAddr {
    ClientAddr {
        transport: Transport::Tcp,
        ..udp_client(port)
    }
}

/// Credentials a test client uses.
#[derive(Clone)]
struct Creds {
    user: String,
    pass: String,
    algorithm: PasswordAlgorithm,
    sha256_integrity: bool,
}

fn alice() -> Creds {
    Creds {
        user: "alice".into(),
        pass: "secret-pw".into(),
        algorithm: PasswordAlgorithm::Md5,
        sha256_integrity: false,
    }
}

#[derive(Debug)]
struct Response {
    bytes: Vec<u8>,
}

impl Response {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("server sent a well-formed message")
    }
    fn code(&self) -> u16 {
        let m = self.msg();
        match m.message_type().class {
            Class::Success => 200,
            Class::Error => {
                attr::decode_error_code(m.get(attr::ERROR_CODE).expect("ERROR-CODE"))
                    .unwrap()
                    .0
            }
            c => panic!("unexpected class {c:?}"),
        }
    }
    fn text(&self, typ: u16) -> String {
        self.msg().text(typ).unwrap().unwrap().to_string()
    }
}

impl Harness {
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.drain_commands();
    }

    /// Runs the fake driver: answers binds, records closes, returns messages to clients.
    fn drain_commands(&mut self) -> Vec<(ClientAddr, Vec<u8>)> {
        let mut out = vec![];
        loop {
            while let Some(c) = self.server.poll_command() {
                match c {
                    Command::Send { to, bytes } => out.push((to, bytes)),
                    Command::BindRelay { relay, family } => {
                        self.pending_binds.push((relay, family))
                    }
                    Command::CloseRelay { relay } => self.closed.push(relay),
                }
            }
            if !self.auto_bind || self.pending_binds.is_empty() {
                return out;
            }
            for (relay, family) in std::mem::take(&mut self.pending_binds) {
                self.next_port += 1;
                let ip = match family {
                    Family::V4 => "192.0.2.100".parse().unwrap(),
                    Family::V6 => "2001:db8::100".parse().unwrap(),
                };
                let bound = (!self.bind_fails).then(|| SocketAddr::new(ip, self.next_port));
                self.server.relay_bound(relay, bound, self.now);
            }
        }
    }

    /// Sends `bytes` from `client`; returns the single response it got (if any).
    fn exchange(&mut self, client: ClientAddr, bytes: &[u8]) -> Option<Response> {
        let fwd = self.server.handle_client_packet(client, bytes, self.now);
        assert!(fwd.is_none(), "a request must not produce data for a peer");
        let mut msgs = self.drain_commands();
        assert!(
            msgs.len() <= 1,
            "one answer per request, got {}",
            msgs.len()
        );
        msgs.pop().map(|(to, bytes)| {
            assert_eq!(to, client);
            Response { bytes }
        })
    }

    /// A request with full long-term authentication after learning the nonce.
    fn authed(
        &mut self,
        client: ClientAddr,
        method: Method,
        creds: &Creds,
        add: impl Fn(&mut MessageBuilder),
    ) -> Response {
        let nonce = self.nonce(client, method);
        self.authed_with_nonce(client, method, creds, &nonce, TransactionId::random(), add)
    }

    fn nonce(&mut self, client: ClientAddr, method: Method) -> String {
        let b = MessageBuilder::new(
            MessageType::new(method, Class::Request),
            TransactionId::random(),
        );
        let r = self.exchange(client, &b.finish()).expect("challenge");
        assert_eq!(r.code(), 401);
        r.text(attr::NONCE)
    }

    fn authed_with_nonce(
        &mut self,
        client: ClientAddr,
        method: Method,
        creds: &Creds,
        nonce: &str,
        tid: TransactionId,
        add: impl Fn(&mut MessageBuilder),
    ) -> Response {
        let mut b = MessageBuilder::new(MessageType::new(method, Class::Request), tid);
        add(&mut b);
        b.text(attr::USERNAME, &creds.user)
            .text(attr::REALM, REALM)
            .text(attr::NONCE, nonce);
        if creds.algorithm == PasswordAlgorithm::Sha256 {
            b.attribute(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0]);
            b.attribute(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
        }
        let key = long_term_key(creds.algorithm, &creds.user, REALM, &creds.pass);
        b.integrity(key.as_bytes(), creds.sha256_integrity);
        let bytes = b.finish_with_fingerprint();
        let r = self.exchange(client, &bytes).expect("an answer");
        if r.msg().has_integrity() {
            assert!(
                r.msg().verify_integrity(key.as_bytes()),
                "response integrity verifies with the client's key"
            );
            assert_eq!(r.msg().has_integrity_sha256(), creds.sha256_integrity);
        }
        assert!(r.msg().has_fingerprint(), "FINGERPRINT echoed");
        r
    }

    fn allocate(&mut self, client: ClientAddr, creds: &Creds) -> SocketAddr {
        let r = self.authed(client, Method::ALLOCATE, creds, |b| {
            b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(
            r.code(),
            200,
            "allocate: {:?}",
            r.msg().text(attr::ERROR_CODE)
        );
        assert_eq!(
            r.msg()
                .xor_address(attr::XOR_MAPPED_ADDRESS)
                .unwrap()
                .unwrap(),
            client.remote
        );
        r.msg()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
    }

    fn bind_channel(&mut self, client: ClientAddr, ch: u16, peer: SocketAddr) -> Response {
        self.authed(client, Method::CHANNEL_BIND, &alice(), |b| {
            b.channel_number(ch)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn permit(&mut self, client: ClientAddr, peer: SocketAddr) -> Response {
        self.authed(client, Method::CREATE_PERMISSION, &alice(), |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn relay_of(&self, client: ClientAddr) -> RelayId {
        let idx = self.server.by_client[&client];
        self.server.allocs[idx as usize].as_ref().unwrap().relays[0].id
    }

    /// Peer data arriving on a relay, as the driver would hand it over.
    fn peer_sends(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<(ClientAddr, Vec<u8>)> {
        let mut buf = vec![0xAAu8; HEADROOM + payload.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let out = self.server.handle_peer_packet(
            relay,
            peer,
            &mut buf,
            HEADROOM..HEADROOM + payload.len(),
            self.now,
        )?;
        Some((out.client, buf[out.range].to_vec()))
    }
}

fn peer() -> SocketAddr {
    "8.8.8.8:9000".parse().unwrap()
}

fn channel_data(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    crate::stun::channel_data::write_header(&mut v, ch, data.len());
    v.extend_from_slice(data);
    v
}

#[test]
fn binding_answers_with_the_mapped_address() {
    let mut h = harness();
    let c = udp_client(1000);
    let b = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([1; 12]),
    );
    let r = h.exchange(c, &b.finish_with_fingerprint()).unwrap();
    assert_eq!(r.code(), 200);
    assert_eq!(
        r.msg()
            .xor_address(attr::XOR_MAPPED_ADDRESS)
            .unwrap()
            .unwrap(),
        c.remote
    );
    assert!(r.msg().has_fingerprint());
    assert!(r.text(attr::SOFTWARE).starts_with("meridian/"));
}

#[test]
fn unauthenticated_allocate_is_challenged() {
    let mut h = harness();
    let c = udp_client(1000);
    let mut b = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([1; 12]),
    );
    b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = h.exchange(c, &b.finish()).unwrap();
    assert_eq!(r.code(), 401);
    assert_eq!(r.text(attr::REALM), REALM);
    assert!(r.text(attr::NONCE).starts_with("obMatJos2"));
    assert_eq!(
        r.msg().get(attr::PASSWORD_ALGORITHMS).unwrap(),
        &[0, 2, 0, 0, 0, 1, 0, 0]
    );
    assert!(!r.msg().has_integrity());
    assert_eq!(
        h.server.stats.auth_failures[AuthFailure::Missing as usize],
        1
    );
}

#[test]
fn allocate_with_static_credentials_md5_and_sha256() {
    for (algorithm, sha256_integrity) in [
        (PasswordAlgorithm::Md5, false),
        (PasswordAlgorithm::Sha256, true),
        (PasswordAlgorithm::Md5, true),
        (PasswordAlgorithm::Sha256, false),
    ] {
        let mut h = harness();
        let c = udp_client(1000);
        let creds = Creds {
            algorithm,
            sha256_integrity,
            ..alice()
        };
        let relayed = h.allocate(c, &creds);
        assert_eq!(
            relayed.ip(),
            "192.0.2.100".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(h.server.allocation_count(), 1);
        assert_eq!(h.server.stats.requests_with("allocate", 200), 1);
    }
}

#[test]
fn wrong_password_unknown_user_and_expired_rest_credentials_get_401() {
    let mut h = harness();
    let c = udp_client(1000);
    let alloc = |b: &mut MessageBuilder| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let r = h.authed(
        c,
        Method::ALLOCATE,
        &Creds {
            pass: "nope".into(),
            ..alice()
        },
        alloc,
    );
    assert_eq!(r.code(), 401);
    assert_eq!(
        h.server.stats.auth_failures[AuthFailure::BadIntegrity as usize],
        1
    );
    let r = h.authed(
        c,
        Method::ALLOCATE,
        &Creds {
            user: "mallory".into(),
            ..alice()
        },
        alloc,
    );
    assert_eq!(r.code(), 401);
    assert_eq!(
        h.server.stats.auth_failures[AuthFailure::UnknownUser as usize],
        1
    );
    let expired = format!("{}:carol", UNIX0 - 1);
    let pass = rest_password(b"rest-secret", &expired);
    let r = h.authed(
        c,
        Method::ALLOCATE,
        &Creds {
            user: expired,
            pass,
            ..alice()
        },
        alloc,
    );
    assert_eq!(r.code(), 401);
    assert_eq!(
        h.server.stats.auth_failures[AuthFailure::Expired as usize],
        1
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn rest_credentials_allocate() {
    let mut h = harness();
    let user = format!("{}:carol", UNIX0 + 3600);
    let pass = rest_password(b"rest-secret", &user);
    h.allocate(
        udp_client(1000),
        &Creds {
            user,
            pass,
            ..alice()
        },
    );
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let mut h = harness();
    let c = udp_client(1000);
    let nonce = h.nonce(c, Method::ALLOCATE);
    h.advance(Duration::from_secs(601));
    let r = h.authed_with_nonce(
        c,
        Method::ALLOCATE,
        &alice(),
        &nonce,
        TransactionId::random(),
        |b| {
            b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
    );
    assert_eq!(r.code(), 438);
    let fresh = r.text(attr::NONCE);
    assert_ne!(fresh, nonce);
    let r = h.authed_with_nonce(
        c,
        Method::ALLOCATE,
        &alice(),
        &fresh,
        TransactionId::random(),
        |b| {
            b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
    );
    assert_eq!(r.code(), 200);
}

#[test]
fn missing_username_realm_or_nonce_is_400() {
    let mut h = harness();
    let mut b = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId::random(),
    );
    b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .text(attr::USERNAME, "alice")
        .integrity_sha1(b"k");
    assert_eq!(h.exchange(udp_client(1), &b.finish()).unwrap().code(), 400);
}

#[test]
fn allocate_errors_use_rfc_codes() {
    let mut h = harness();
    let c = udp_client(1000);
    let r = h.authed(c, Method::ALLOCATE, &alice(), |_| {});
    assert_eq!(r.code(), 400, "no REQUESTED-TRANSPORT");
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(r.code(), 442);
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0]);
    });
    assert_eq!(r.code(), 440);
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    });
    assert_eq!(r.code(), 400);
    // EVEN-PORT is comprehension-required and not supported: 420 listing it.
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    assert_eq!(r.code(), 420);
    assert_eq!(
        r.msg().get(attr::UNKNOWN_ATTRIBUTES).unwrap(),
        &attr::EVEN_PORT.to_be_bytes()
    );
    // Refresh / CreatePermission / ChannelBind without an allocation: 437.
    assert_eq!(h.authed(c, Method::REFRESH, &alice(), |_| {}).code(), 437);
    assert_eq!(h.permit(c, peer()).code(), 437);
    assert_eq!(h.bind_channel(c, 0x4000, peer()).code(), 437);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn second_allocate_is_437_but_a_retransmission_is_answered_again() {
    let mut h = harness();
    let c = udp_client(1000);
    let nonce = h.nonce(c, Method::ALLOCATE);
    let tid = TransactionId([4; 12]);
    let add = |b: &mut MessageBuilder| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let first = h.authed_with_nonce(c, Method::ALLOCATE, &alice(), &nonce, tid, add);
    assert_eq!(first.code(), 200);
    let again = h.authed_with_nonce(c, Method::ALLOCATE, &alice(), &nonce, tid, add);
    assert_eq!(again.code(), 200);
    assert_eq!(
        again.msg().xor_address(attr::XOR_RELAYED_ADDRESS),
        first.msg().xor_address(attr::XOR_RELAYED_ADDRESS)
    );
    let other = h.authed_with_nonce(
        c,
        Method::ALLOCATE,
        &alice(),
        &nonce,
        TransactionId([5; 12]),
        add,
    );
    assert_eq!(other.code(), 437);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn another_user_on_the_same_five_tuple_gets_441() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    let r = h.authed(
        c,
        Method::REFRESH,
        &Creds {
            user: "bob".into(),
            pass: "bob-pw".into(),
            ..alice()
        },
        |_| {},
    );
    assert_eq!(r.code(), 441);
}

#[test]
fn channel_data_flows_both_ways() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    assert_eq!(h.bind_channel(c, 0x4001, peer()).code(), 200);
    let msg = channel_data(0x4001, b"hello peer");
    let relay = h.relay_of(c);
    let fwd = h.server.handle_client_packet(c, &msg, h.now).unwrap();
    assert_eq!(
        fwd,
        ToPeer {
            relay,
            peer: peer(),
            payload: b"hello peer"
        }
    );
    let (to, bytes) = h.peer_sends(relay, peer(), b"hi client").unwrap();
    assert_eq!(to, c);
    assert_eq!(bytes, channel_data(0x4001, b"hi client"));
    assert_eq!(h.server.stats.channel_data_to_peer, 1);
    assert_eq!(h.server.stats.channel_data_to_client, 1);
}

#[test]
fn channel_data_to_stream_clients_is_padded() {
    let mut h = harness();
    let c = tcp_client(1000);
    h.allocate(c, &alice());
    h.bind_channel(c, 0x4001, peer());
    let relay = h.relay_of(c);
    let (_, bytes) = h.peer_sends(relay, peer(), b"abcde").unwrap();
    assert_eq!(bytes.len(), 4 + 8);
    assert_eq!(&bytes[..9], &channel_data(0x4001, b"abcde")[..]);
    assert_eq!(&bytes[9..], &[0, 0, 0]);
}

#[test]
fn send_and_data_indications_need_a_permission() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    let relay = h.relay_of(c);
    let send = |data: &[u8]| {
        let mut b = MessageBuilder::new(
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId::random(),
        );
        b.xor_address(attr::XOR_PEER_ADDRESS, peer())
            .attribute(attr::DATA, data);
        b.finish()
    };
    let m = send(b"no permission yet");
    assert!(h.server.handle_client_packet(c, &m, h.now).is_none());
    assert_eq!(h.server.stats.dropped(Drop::NoPermission), 1);
    assert!(h.peer_sends(relay, peer(), b"unsolicited").is_none());
    assert_eq!(h.server.stats.dropped(Drop::NoPermission), 2);

    assert_eq!(h.permit(c, peer()).code(), 200);
    let m = send(b"via send");
    let fwd = h.server.handle_client_packet(c, &m, h.now).unwrap();
    assert_eq!(fwd.payload, b"via send");
    assert_eq!(fwd.peer, peer());
    // Any port of the permitted IP may answer; without a channel it arrives as a Data indication.
    let other_port: SocketAddr = "8.8.8.8:9999".parse().unwrap();
    let (to, bytes) = h.peer_sends(relay, other_port, b"odd").unwrap();
    assert_eq!(to, c);
    let d = Message::parse(&bytes).unwrap();
    assert_eq!(
        d.message_type(),
        MessageType::new(Method::DATA, Class::Indication)
    );
    assert_eq!(
        d.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        other_port
    );
    assert_eq!(d.get(attr::DATA).unwrap(), b"odd");
    assert_eq!(bytes.len() % 4, 0);
    // IPv6 peers get a Data indication too (largest header: uses all of HEADROOM).
    let v6peer: SocketAddr = "[2606:4700::1111]:5000".parse().unwrap();
    let r = h.permit(c, v6peer);
    assert_eq!(r.code(), 443, "IPv4 allocation, IPv6 peer");
}

#[test]
fn refused_peers_get_403_and_are_counted() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    for (ip, reason) in [
        ("127.0.0.1:1", Refusal::Loopback),
        ("10.0.0.1:1", Refusal::Private),
        ("198.51.100.1:1", Refusal::OwnAddress),
        ("169.254.169.254:80", Refusal::LinkLocal),
    ] {
        assert_eq!(h.permit(c, ip.parse().unwrap()).code(), 403, "{ip}");
        assert_eq!(
            h.bind_channel(c, 0x4002, ip.parse().unwrap()).code(),
            403,
            "{ip}"
        );
        let i = Refusal::ALL.iter().position(|r| *r == reason).unwrap();
        assert_eq!(h.server.stats.refused_peers[i], 2, "{ip}");
    }
    // A request naming one allowed and one refused peer installs nothing.
    let r = h.authed(c, Method::CREATE_PERMISSION, &alice(), |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, peer())
            .xor_address(attr::XOR_PEER_ADDRESS, "10.1.1.1:1".parse().unwrap());
    });
    assert_eq!(r.code(), 403);
    assert_eq!(h.server.gauges().1, 0);
}

#[test]
fn channel_bind_conflicts_are_400() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    assert_eq!(h.bind_channel(c, 0x4001, peer()).code(), 200);
    assert_eq!(
        h.bind_channel(c, 0x4001, peer()).code(),
        200,
        "refresh is fine"
    );
    assert_eq!(
        h.bind_channel(c, 0x4001, "8.8.4.4:1".parse().unwrap())
            .code(),
        400
    );
    assert_eq!(h.bind_channel(c, 0x4002, peer()).code(), 400);
    assert_eq!(
        h.bind_channel(c, 0x3FFF, "8.8.4.4:1".parse().unwrap())
            .code(),
        400
    );
    assert_eq!(
        h.bind_channel(c, 0x5000, "8.8.4.4:1".parse().unwrap())
            .code(),
        400
    );
}

#[test]
fn refresh_zero_deletes_and_returns_quota() {
    let mut h = harness_with(cfg(), AllocationLedger::new(100, 1));
    let c = udp_client(1000);
    h.allocate(c, &alice());
    let relay = h.relay_of(c);
    let r = h.authed(udp_client(1001), Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(r.code(), 486, "one allocation per user");
    assert_eq!(
        h.server.stats.quota_hits[QuotaHit::AllocationsPerUser as usize],
        1
    );
    let r = h.authed(c, Method::REFRESH, &alice(), |b| {
        b.u32(attr::LIFETIME, 0);
    });
    assert_eq!(r.code(), 200);
    assert_eq!(
        attr::decode_u32(attr::LIFETIME, r.msg().get(attr::LIFETIME).unwrap()).unwrap(),
        0
    );
    assert_eq!(h.closed, vec![relay]);
    assert_eq!(h.server.allocation_count(), 0);
    h.allocate(udp_client(1001), &alice());
}

#[test]
fn lifetimes_are_clamped_and_refresh_extends() {
    let mut h = harness();
    let c = udp_client(1000);
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32(attr::LIFETIME, 999_999);
    });
    assert_eq!(
        attr::decode_u32(attr::LIFETIME, r.msg().get(attr::LIFETIME).unwrap()).unwrap(),
        3600
    );
    let r = h.authed(c, Method::REFRESH, &alice(), |b| {
        b.u32(attr::LIFETIME, 60);
    });
    assert_eq!(
        attr::decode_u32(attr::LIFETIME, r.msg().get(attr::LIFETIME).unwrap()).unwrap(),
        60
    );
    h.advance(Duration::from_secs(59));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0, "expired");
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.server.shared.ledger.total(), 0);
}

#[test]
fn permissions_and_channels_expire() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    let r = h.authed(c, Method::REFRESH, &alice(), |b| {
        b.u32(attr::LIFETIME, 3600);
    });
    assert_eq!(r.code(), 200);
    h.bind_channel(c, 0x4001, peer());
    let relay = h.relay_of(c);
    h.advance(Duration::from_secs(301));
    // The permission lapsed (5 min) though the channel (10 min) has not.
    assert!(h.peer_sends(relay, peer(), b"x").is_none());
    assert!(h
        .server
        .handle_client_packet(c, &channel_data(0x4001, b"x"), h.now)
        .is_none());
    assert_eq!(h.server.gauges(), (1, 0, 1));
    h.advance(Duration::from_secs(300));
    assert_eq!(h.server.gauges(), (1, 0, 0));
}

#[test]
fn draining_refuses_new_allocations_only() {
    let mut h = harness_with(
        ServerConfig {
            alternate_server: Some("192.0.2.200:3478".parse().unwrap()),
            ..cfg()
        },
        AllocationLedger::new(100, 10),
    );
    let c = udp_client(1000);
    h.allocate(c, &alice());
    h.server.set_draining(true);
    let mut b = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId::random(),
    );
    b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = h.exchange(udp_client(2000), &b.finish()).unwrap();
    assert_eq!(r.code(), 300);
    let alt = attr::decode_address(
        attr::ALTERNATE_SERVER,
        r.msg().get(attr::ALTERNATE_SERVER).unwrap(),
    )
    .unwrap();
    assert_eq!(alt, "192.0.2.200:3478".parse().unwrap());
    assert_eq!(
        h.authed(c, Method::REFRESH, &alice(), |_| {}).code(),
        200,
        "existing allocations carry on"
    );

    let mut h = harness();
    h.server.set_draining(true);
    let mut b = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId::random(),
    );
    b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert_eq!(
        h.exchange(udp_client(2000), &b.finish()).unwrap().code(),
        508
    );
}

#[test]
fn relay_bind_failure_is_508_and_releases_quota() {
    let mut h = harness();
    h.bind_fails = true;
    let r = h.authed(udp_client(1000), Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(r.code(), 508);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.shared.ledger.total(), 0);
    assert_eq!(h.server.stats.quota_hits[QuotaHit::RelayPorts as usize], 1);
}

#[test]
fn allocation_freed_while_binding_closes_the_late_socket() {
    let mut h = harness();
    h.auto_bind = false;
    let c = tcp_client(1000);
    let nonce = h.nonce(c, Method::ALLOCATE);
    let mut b = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId::random(),
    );
    b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .text(attr::USERNAME, "alice")
        .text(attr::REALM, REALM)
        .text(attr::NONCE, &nonce);
    b.integrity_sha1(long_term_key(PasswordAlgorithm::Md5, "alice", REALM, "secret-pw").as_bytes());
    assert!(
        h.exchange(c, &b.finish()).is_none(),
        "answer waits for the relay"
    );
    let (relay, _) = h.pending_binds[0];
    h.server.client_closed(c);
    h.server
        .relay_bound(relay, Some("192.0.2.100:50001".parse().unwrap()), h.now);
    h.drain_commands();
    assert_eq!(h.closed, vec![relay]);
    assert_eq!(h.server.shared.ledger.total(), 0);
}

#[test]
fn dual_allocation_gets_two_relays_or_an_address_error() {
    let mut h = harness();
    let c = udp_client(1000);
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), 200);
    let relays: Vec<_> = r.msg().get_all(attr::XOR_RELAYED_ADDRESS).collect();
    assert_eq!(relays.len(), 2);
    let v6peer: SocketAddr = "[2606:4700::1111]:5000".parse().unwrap();
    assert_eq!(h.permit(c, v6peer).code(), 200);

    let mut h = harness_with(
        ServerConfig {
            ipv6: false,
            ..cfg()
        },
        AllocationLedger::new(100, 10),
    );
    let r = h.authed(c, Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), 200);
    assert_eq!(r.msg().get_all(attr::XOR_RELAYED_ADDRESS).count(), 1);
    let e = r.msg().get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!((e[0], e[2] as u16 * 100 + e[3] as u16), (2, 440));
    let r = h.authed(udp_client(1001), Method::ALLOCATE, &alice(), |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), 440);
}

#[test]
fn unauthenticated_requests_are_rate_limited_per_source() {
    let mut h = harness_with(
        ServerConfig {
            unauthenticated_rate: 1,
            unauthenticated_burst: 3,
            ..cfg()
        },
        AllocationLedger::new(100, 10),
    );
    let c = udp_client(1000);
    let req = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId::random(),
    )
    .finish();
    let answered = (0..10).filter(|_| h.exchange(c, &req).is_some()).count();
    assert_eq!(answered, 3);
    assert_eq!(h.server.stats.dropped(Drop::RateLimited), 7);
    // Another source is unaffected.
    let other = ClientAddr {
        remote: "203.0.113.99:1".parse().unwrap(),
        ..c
    };
    assert!(h.exchange(other, &req).is_some());
    h.advance(Duration::from_secs(2));
    assert!(h.exchange(c, &req).is_some());
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut h = harness_with(
        ServerConfig {
            bandwidth_bytes_per_sec: 1000,
            ..cfg()
        },
        AllocationLedger::new(100, 10),
    );
    let c = udp_client(1000);
    h.allocate(c, &alice());
    h.bind_channel(c, 0x4001, peer());
    let m = channel_data(0x4001, &[0u8; 400]);
    let passed = (0..5)
        .filter(|_| h.server.handle_client_packet(c, &m, h.now).is_some())
        .count();
    assert_eq!(passed, 2);
    assert_eq!(h.server.stats.quota_hits[QuotaHit::Bandwidth as usize], 3);
}

#[test]
fn malformed_and_unexpected_input_is_counted_not_answered() {
    let mut h = harness();
    let c = udp_client(1000);
    for bytes in [
        &b""[..],
        &[0xFF; 30][..],
        &[0x00, 0x01, 0x00, 0x00][..],
        &[0x40, 0x00, 0x00, 0x10, 1][..],
    ] {
        assert!(h.server.handle_client_packet(c, bytes, h.now).is_none());
    }
    assert!(h.drain_commands().is_empty());
    assert_eq!(h.server.stats.dropped(Drop::Malformed), 4);
    let resp = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Success),
        TransactionId::random(),
    )
    .finish();
    assert!(h.exchange(c, &resp).is_none());
    assert_eq!(h.server.stats.dropped(Drop::UnexpectedClass), 1);
    // ChannelData before any allocation.
    assert!(h
        .server
        .handle_client_packet(c, &channel_data(0x4000, b"x"), h.now)
        .is_none());
    assert_eq!(h.server.stats.dropped(Drop::NoAllocation), 1);
}

#[test]
fn tcp_connection_close_frees_the_allocation() {
    let mut h = harness();
    let c = tcp_client(1000);
    h.allocate(c, &alice());
    let relay = h.relay_of(c);
    h.server.client_closed(c);
    h.drain_commands();
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.closed, vec![relay]);
}

// ---- allocation counting around the forward paths ----

struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

#[test]
fn channel_data_paths_do_not_allocate() {
    let mut h = harness();
    let c = udp_client(1000);
    h.allocate(c, &alice());
    h.bind_channel(c, 0x4001, peer());
    let relay = h.relay_of(c);
    let msg = channel_data(0x4001, &[7u8; 1000]);
    let mut buf = vec![0u8; HEADROOM + 1000 + TAILROOM];
    let now = h.now;
    // Warm up (first use of any lazily-initialised state), then count.
    assert!(h.server.handle_client_packet(c, &msg, now).is_some());
    assert!(h
        .server
        .handle_peer_packet(relay, peer(), &mut buf, HEADROOM..HEADROOM + 1000, now)
        .is_some());
    let before = allocations();
    for _ in 0..1000 {
        let fwd = h.server.handle_client_packet(c, &msg, now);
        assert!(fwd.is_some());
        let back =
            h.server
                .handle_peer_packet(relay, peer(), &mut buf, HEADROOM..HEADROOM + 1000, now);
        assert!(back.is_some());
    }
    assert_eq!(
        allocations() - before,
        0,
        "heap allocations on the ChannelData paths"
    );
    // The counter works: a Vec allocates.
    let before = allocations();
    let v: Vec<u8> = Vec::with_capacity(10);
    drop(v);
    assert!(allocations() > before);
}
