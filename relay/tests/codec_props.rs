//! Property tests for the STUN codec and the TURN core: encoding round-trips, and arbitrary
//! bytes never panic (they are answered or counted).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_relay::stun::{
    attr, channel_data, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use meridian_relay::turn::auth::{Credentials, NonceIssuer};
use meridian_relay::turn::policy::PeerPolicy;
use meridian_relay::turn::quota::AllocationLedger;
use meridian_relay::turn::{
    ClientAddr, Clock, Command, RelayId, Server, ServerConfig, Shared, Transport, HEADROOM,
    TAILROOM,
};
use proptest::prelude::*;

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

fn any_class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

proptest! {
    #[test]
    fn attributes_round_trip(
        method in 0u16..0x1000,
        class in any_class(),
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec((0x8030u16..0xFFFF, proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        addr in any_addr(),
        key in proptest::collection::vec(any::<u8>(), 1..40),
        sha256 in any::<bool>(),
        fingerprint in any::<bool>(),
    ) {
        let tid = TransactionId(tid);
        let typ = MessageType::new(Method(method), class);
        let mut b = MessageBuilder::new(typ, tid);
        for (t, v) in &attrs {
            b.attribute(*t, v);
        }
        b.xor_address(attr::XOR_PEER_ADDRESS, addr);
        b.integrity(&key, sha256);
        let bytes = if fingerprint { b.finish_with_fingerprint() } else { b.finish() };
        let m = Message::parse(&bytes).unwrap();
        prop_assert_eq!(m.message_type(), typ);
        prop_assert_eq!(m.transaction_id(), tid);
        prop_assert_eq!(m.has_fingerprint(), fingerprint);
        prop_assert!(m.verify_integrity(&key));
        let got: Vec<(u16, Vec<u8>)> = m.attributes().filter(|a| a.typ != attr::XOR_PEER_ADDRESS).map(|a| (a.typ, a.value.to_vec())).collect();
        prop_assert_eq!(got, attrs);
        prop_assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), addr);
    }

    #[test]
    fn flipping_any_bit_breaks_integrity_or_parsing(bit in 0usize..(8 * 60), key in proptest::collection::vec(any::<u8>(), 1..20)) {
        let mut b = MessageBuilder::new(MessageType::new(Method::ALLOCATE, Class::Request), TransactionId([3; 12]));
        b.text(attr::USERNAME, "someone").u32(attr::LIFETIME, 600);
        b.integrity_sha1(&key);
        let mut bytes = b.finish();
        let bit = bit % (8 * (bytes.len() - 24)); // anywhere before the MESSAGE-INTEGRITY attribute
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(m) = Message::parse(&bytes) {
            prop_assert!(!m.verify_integrity(&key));
        }
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(&bytes) {
            for a in m.attributes() {
                let _ = attr::decode_xor_address(a.typ, a.value, &m.transaction_id());
                let _ = attr::decode_error_code(a.value);
                let _ = attr::decode_u32(a.typ, a.value);
            }
            let _ = m.verify_integrity(b"k");
        }
        let _ = channel_data::parse(&bytes);
    }

    #[test]
    fn stun_shaped_garbage_never_panics(
        method in 0u16..0x1000,
        class in any_class(),
        attrs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..10),
    ) {
        let mut b = MessageBuilder::new(MessageType::new(Method(method), class), TransactionId([1; 12]));
        for (t, v) in &attrs {
            b.attribute(*t, v);
        }
        let bytes = b.finish();
        let mut core = server();
        let now = Instant::now();
        let client = ClientAddr { transport: Transport::Udp, local: "127.0.0.1:3478".parse().unwrap(), remote: "192.0.2.1:5000".parse().unwrap() };
        let _ = core.handle_client_packet(client, &bytes, now);
        while let Some(c) = core.poll_command() {
            if let Command::Send { bytes, .. } = c {
                prop_assert!(Message::parse(&bytes).is_ok(), "server answers are well-formed");
            }
        }
    }

    #[test]
    fn core_survives_arbitrary_client_and_peer_bytes(
        packets in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..30),
    ) {
        let mut core = server();
        let mut now = Instant::now();
        let client = ClientAddr { transport: Transport::Tcp, local: "127.0.0.1:3478".parse().unwrap(), remote: "192.0.2.1:5000".parse().unwrap() };
        let mut buf = vec![0u8; HEADROOM + 300 + TAILROOM];
        for (from_peer, bytes) in &packets {
            if *from_peer {
                buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
                let _ = core.handle_peer_packet(RelayId(1), "8.8.8.8:1".parse().unwrap(), &mut buf, HEADROOM..HEADROOM + bytes.len(), now);
            } else {
                let _ = core.handle_client_packet(client, bytes, now);
            }
            now += Duration::from_millis(100);
            core.handle_timeout(now);
            while let Some(c) = core.poll_command() {
                if let Command::BindRelay { relay, .. } = c {
                    core.relay_bound(relay, Some("127.0.0.1:50000".parse().unwrap()), now);
                }
            }
        }
    }
}

fn server() -> Server {
    let shared = Shared {
        credentials: Arc::new(Credentials::new(
            [("u".to_string(), "p".to_string())],
            ["s".to_string()],
        )),
        policy: Arc::new(PeerPolicy::default()),
        ledger: Arc::new(AllocationLedger::new(10, 10)),
        nonces: Arc::new(NonceIssuer::new([1; 32], 600)),
    };
    Server::new(
        ServerConfig::default(),
        shared,
        Clock {
            start: Instant::now(),
            unix_at_start: 1_800_000_000,
        },
    )
}
