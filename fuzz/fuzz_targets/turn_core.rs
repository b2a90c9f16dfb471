//! The TURN core (bytes in, commands out) from a state with a live allocation and channel:
//! arbitrary client and peer packets, over UDP and TCP, with time passing. Never panics, and
//! everything it sends to clients is a well-formed STUN message.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meridian_relay::stun::{
    attr, long_term_key, Class, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
    TransactionId,
};
use meridian_relay::turn::auth::{Credentials, NonceIssuer};
use meridian_relay::turn::policy::PeerPolicy;
use meridian_relay::turn::quota::AllocationLedger;
use meridian_relay::turn::{
    ClientAddr, Clock, Command, RelayId, Server, ServerConfig, Shared, Transport, HEADROOM,
    TAILROOM,
};

fn drain(core: &mut Server, now: Instant, relays: &mut Vec<RelayId>) -> Vec<Vec<u8>> {
    let mut sent = vec![];
    while let Some(c) = core.poll_command() {
        match c {
            Command::Send { bytes, .. } => {
                assert!(Message::parse(&bytes).is_ok(), "answers are well-formed");
                sent.push(bytes);
            }
            Command::BindRelay { relay, .. } => {
                relays.push(relay);
                core.relay_bound(relay, Some("127.0.0.1:50000".parse().unwrap()), now);
            }
            Command::CloseRelay { relay } => relays.retain(|r| *r != relay),
        }
    }
    sent
}

fn request(
    core: &mut Server,
    client: ClientAddr,
    method: Method,
    nonce: Option<&str>,
    add: impl Fn(&mut MessageBuilder),
    now: Instant,
    relays: &mut Vec<RelayId>,
) -> Vec<u8> {
    let mut b = MessageBuilder::new(
        MessageType::new(method, Class::Request),
        TransactionId([9; 12]),
    );
    add(&mut b);
    if let Some(n) = nonce {
        b.text(attr::USERNAME, "u")
            .text(attr::REALM, "meridian")
            .text(attr::NONCE, n);
        b.integrity_sha1(long_term_key(PasswordAlgorithm::Md5, "u", "meridian", "p").as_bytes());
    }
    let bytes = b.finish();
    let _ = core.handle_client_packet(client, &bytes, now);
    drain(core, now, relays).pop().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let shared = Shared {
        credentials: Arc::new(Credentials::new(
            [("u".to_string(), "p".to_string())],
            ["s".to_string()],
        )),
        policy: Arc::new(PeerPolicy::default()),
        ledger: Arc::new(AllocationLedger::new(4, 4)),
        nonces: Arc::new(NonceIssuer::new([1; 32], 600)),
    };
    let mut core = Server::new(
        ServerConfig::default(),
        shared,
        Clock {
            start: t0,
            unix_at_start: 1_800_000_000,
        },
    );
    let udp = ClientAddr {
        transport: Transport::Udp,
        local: "127.0.0.1:3478".parse().unwrap(),
        remote: "192.0.2.1:5000".parse().unwrap(),
    };
    let tcp = ClientAddr {
        transport: Transport::Tcp,
        ..udp
    };
    let peer: SocketAddr = "8.8.8.8:9000".parse().unwrap();
    let mut relays = vec![];
    let mut now = t0;
    // Allocate and bind a channel for the UDP client so fuzzed bytes reach the data paths.
    let challenge = request(
        &mut core,
        udp,
        Method::ALLOCATE,
        None,
        |_| {},
        now,
        &mut relays,
    );
    let nonce = Message::parse(&challenge)
        .ok()
        .and_then(|m| m.text(attr::NONCE).and_then(Result::ok).map(str::to_string))
        .expect("401 carries a nonce");
    request(
        &mut core,
        udp,
        Method::ALLOCATE,
        Some(&nonce),
        |b| {
            b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
        now,
        &mut relays,
    );
    request(
        &mut core,
        udp,
        Method::CHANNEL_BIND,
        Some(&nonce),
        |b| {
            b.channel_number(0x4000)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        },
        now,
        &mut relays,
    );
    assert_eq!(core.allocation_count(), 1);

    // Then: [selector][len][bytes]... chunks.
    let mut rest = data;
    let mut buf = vec![0u8; HEADROOM + 512 + TAILROOM];
    while rest.len() >= 2 {
        let sel = rest[0];
        let len = (rest[1] as usize).min(rest.len() - 2);
        let chunk = &rest[2..2 + len];
        rest = &rest[2 + len..];
        match sel % 4 {
            0 => {
                let _ = core.handle_client_packet(udp, chunk, now);
            }
            1 => {
                let _ = core.handle_client_packet(tcp, chunk, now);
            }
            2 => {
                let relay = relays.first().copied().unwrap_or(RelayId(0));
                buf[HEADROOM..HEADROOM + len].copy_from_slice(chunk);
                let from = if sel & 0x80 != 0 {
                    peer
                } else {
                    "8.8.4.4:1".parse().unwrap()
                };
                if let Some(out) =
                    core.handle_peer_packet(relay, from, &mut buf, HEADROOM..HEADROOM + len, now)
                {
                    assert!(out.range.end <= buf.len());
                }
            }
            _ => {
                now += Duration::from_secs((sel >> 2) as u64 * 10);
                core.handle_timeout(now);
            }
        }
        drain(&mut core, now, &mut relays);
    }
});
